//! The outer layers: which of Flagr's routes a request is ([`Classify`]), and the proxy's own
//! metrics for it ([`Measure`]: in flight, count by route class, method and status class, and
//! time to Flagr's response headers).
//!
//! In: the client's request. Out: the same request with its [`Route`](crate::flagr::Route) in what it [`Carried`], and
//! the response untouched. Never: reads a body, or waits on anything but the inner service.

use std::convert::Infallible;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{ready, Context, Poll};

use http::{Request, Response};
use tokio::time::Instant;

use super::metrics::ProxyMetrics;
use super::upstream::Carried;
use crate::flagr::RouteTable;
use crate::metrics::method_label;

/// Applies [`Classify`].
#[derive(Clone, Debug)]
pub struct ClassifyLayer {
    routes: Arc<RouteTable>,
}

impl ClassifyLayer {
    pub fn new(routes: RouteTable) -> Self {
        Self {
            routes: Arc::new(routes),
        }
    }
}

impl<S> tower::Layer<S> for ClassifyLayer {
    type Service = Classify<S>;
    fn layer(&self, inner: S) -> Classify<S> {
        Classify {
            inner,
            routes: self.routes.clone(),
        }
    }
}

/// Puts the request's [`Route`](crate::flagr::Route) in what it [`Carried`], for every layer below.
#[derive(Clone, Debug)]
pub struct Classify<S> {
    inner: S,
    routes: Arc<RouteTable>,
}

impl<S, B> tower::Service<Request<B>> for Classify<S>
where
    S: tower::Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> S::Future {
        let route = self.routes.classify(req.method(), req.uri().path());
        Carried::set_route(route);
        self.inner.call(req)
    }
}

/// Applies [`Measure`].
#[derive(Clone)]
pub struct MeasureLayer {
    metrics: Arc<ProxyMetrics>,
}

impl MeasureLayer {
    pub fn new(metrics: Arc<ProxyMetrics>) -> Self {
        Self { metrics }
    }
}

impl<S> tower::Layer<S> for MeasureLayer {
    type Service = Measure<S>;
    fn layer(&self, inner: S) -> Measure<S> {
        Measure {
            inner,
            metrics: self.metrics.clone(),
        }
    }
}

/// Counts and times every request by route class (from [`Classify`]).
#[derive(Clone)]
pub struct Measure<S> {
    inner: S,
    metrics: Arc<ProxyMetrics>,
}

impl<S, B, RB> tower::Service<Request<B>> for Measure<S>
where
    S: tower::Service<Request<B>, Response = Response<RB>, Error = Infallible>,
    S::Future: Send + 'static,
{
    type Response = Response<RB>;
    type Error = Infallible;
    // A named future, not a boxed one: no allocation per request for counting it.
    type Future = Measured<S::Future>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let started = Instant::now();
        let class = Carried::route().map_or("passthrough", |r| r.class());
        let method = method_label(req.method());
        self.metrics.in_flight.inc();
        Measured {
            inner: self.inner.call(req),
            count: Some(Count {
                metrics: self.metrics.clone(),
                started,
                class,
                method,
            }),
        }
    }
}

pin_project_lite::pin_project! {
    /// [`Measure`]'s future: the inner one, counted when it is ready (or dropped unfinished,
    /// so `in_flight` never stays up for a client that went away).
    pub struct Measured<F> {
        #[pin]
        inner: F,
        count: Option<Count>,
    }

    impl<F> PinnedDrop for Measured<F> {
        fn drop(this: Pin<&mut Self>) {
            if let Some(c) = this.project().count.take() {
                c.metrics.in_flight.dec();
            }
        }
    }
}

/// What a request is counted under, until its answer is ready.
struct Count {
    metrics: Arc<ProxyMetrics>,
    started: Instant,
    class: &'static str,
    method: &'static str,
}

impl<F, RB> Future for Measured<F>
where
    F: Future<Output = Result<Response<RB>, Infallible>>,
{
    type Output = F::Output;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<F::Output> {
        let me = self.project();
        // The error is Infallible: every request gets an answer with a status.
        let Ok(resp) = ready!(me.inner.poll(cx));
        if let Some(c) = me.count.take() {
            c.metrics.in_flight.dec();
            c.metrics.answered(
                c.class,
                c.method,
                resp.status().as_u16(),
                c.started.elapsed(),
            );
        }
        Poll::Ready(Ok(resp))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flagr::Route;
    use crate::metrics::Registry;
    use crate::proxy::upstream::call_carrying;
    use tower::{Layer, Service};

    #[tokio::test]
    async fn classifies_then_counts_by_route_class() {
        let metrics = Arc::new(ProxyMetrics::new(&Registry::default()));
        // The route is read at call, as the layers below read it.
        let inner = tower::service_fn(|_: Request<()>| {
            let route = Carried::route().unwrap();
            let status = if matches!(route, Route::Mutation(_)) {
                200
            } else {
                404
            };
            std::future::ready(Ok::<_, Infallible>(
                Response::builder().status(status).body(()).unwrap(),
            ))
        });
        let svc = ClassifyLayer::new(RouteTable::new(""))
            .layer(MeasureLayer::new(metrics.clone()).layer(inner));
        let status = |req| async {
            let r = call_carrying(svc.clone(), req, Carried::default()).await;
            r.unwrap().status()
        };
        let post = Request::post("/api/v1/flags").body(()).unwrap();
        assert_eq!(status(post).await, 200);
        let get = Request::get("/nothing").body(()).unwrap();
        assert_eq!(status(get).await, 404);
        let count = |labels: &[&str]| metrics.requests.with_label_values(labels).get();
        assert_eq!(count(&["mutation", "POST", "2xx"]), 1);
        assert_eq!(count(&["passthrough", "GET", "4xx"]), 1);
        assert_eq!(metrics.in_flight.get(), 0);
        // A request whose client went away before the answer is not in flight any more.
        let pending = tower::service_fn(|_: Request<()>| {
            std::future::pending::<Result<Response<()>, Infallible>>()
        });
        let mut svc = MeasureLayer::new(metrics.clone()).layer(pending);
        let fut = svc.call(Request::get("/").body(()).unwrap());
        assert_eq!(metrics.in_flight.get(), 1);
        drop(fut);
        assert_eq!(metrics.in_flight.get(), 0);
    }
}
