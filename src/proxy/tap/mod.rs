//! The tap: the tower layer that copies what derivation needs of the calls flaghook cares
//! about (mutations; evaluations and exposures when an impression webhook wants them), while
//! every frame passes through untouched.
//!
//! In: a request (its [`Route`] from what it carries, or classified here when the layer is used
//! alone) and the inner service's response. Out: the same response, its body wrapped in a
//! [`TapBody`], and when that body ends one [`Exchange`] on the tap channel.
//! Never: waits for derivation; a full channel or a spent byte budget drops the copy (counted),
//! never the request.

mod body;

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::Bytes;
use futures_util::future::{Either, FutureExt, Map};
use http::header::{self, HeaderName, HeaderValue};
use http::{Request, Response, StatusCode};
use tokio::sync::mpsc;

pub use body::{ByteBudget, Held, Pending, RequestSlot, TapBody};

use super::answer::{BoxFuture, OwnAnswer};
use super::headers::X_FORWARDED_FOR;
use super::legacy::LegacyStates;
use super::marks::GitSyncCommit;
use super::upstream::Carried;
use crate::flagr::{FlagState, Route, RouteTable};
use crate::metrics::{labels, Registry};

/// What the tap saw of one body.
#[derive(Clone, Debug, Default)]
pub enum Captured {
    /// The whole body, as sent on the wire (possibly gzip-encoded).
    Complete(Bytes),
    /// Larger than the cap: passed through, not inspected.
    TooLarge,
    /// The tap's byte budget was spent by copies still waiting: passed through, not inspected.
    OverBudget,
    /// The stream ended early (client or Flagr hung up, or an error).
    #[default]
    Incomplete,
    /// Not copied: derivation needs only the other body of this route.
    Skipped,
}

impl Captured {
    pub fn bytes(&self) -> Option<&Bytes> {
        match self {
            Captured::Complete(b) => Some(b),
            _ => None,
        }
    }
}

/// Request headers derivation needs; copied so the request itself can move on.
#[derive(Clone, Debug, Default)]
pub struct RequestMeta {
    pub content_encoding: Option<HeaderValue>,
    pub user_agent: Option<HeaderValue>,
    pub authorization: Option<HeaderValue>,
    pub user: Option<HeaderValue>,
    pub forwarded_for: Option<HeaderValue>,
    /// The commit, on flaghook's own git sync calls (`source: gitsync`).
    pub gitsync_commit: Option<String>,
}

/// One inspected call, as the proxy saw it.
#[derive(Debug)]
pub struct Exchange {
    pub route: Route,
    pub peer: std::net::SocketAddr,
    pub meta: RequestMeta,
    pub request_body: Captured,
    pub status: StatusCode,
    pub response_encoding: Option<HeaderValue>,
    pub response_body: Captured,
    /// When Flagr's response headers arrived.
    pub responded_at: SystemTime,
    /// Legacy servers: the flag as it was before the call.
    pub prefetched: Option<FlagState>,
    /// Legacy servers: the flag right after the call, read before the client got its answer.
    pub postfetched: Option<FlagState>,
    /// The budget bytes the copied bodies hold, until this exchange is dropped.
    pub held: Held,
}

labels! {
    /// Which body of an exchange.
    pub enum Direction { Request => "request", Response => "response" }
}

labels! {
    /// Why a body of an inspected route was not inspected.
    pub enum Uninspected { TooLarge => "too_large", OverBudget => "over_budget", Incomplete => "incomplete" }
}

labels! {
    /// Where an exchange was dropped on its way to derivation (every channel is bounded).
    pub enum DropStage { Tap => "tap", Lane => "lane", Hint => "hint", Impressions => "impressions" }
}

/// The tap's metrics, and derivation's drops of what it handed over.
pub struct TapMetrics {
    uninspected: prometheus::IntCounterVec,
    dropped: prometheus::IntCounterVec,
}

impl TapMetrics {
    pub fn new(r: &Registry) -> Self {
        let m = Self {
            uninspected: r.counter_vec(
                "flaghook_tap_uninspected_total",
                "Bodies of inspected routes that were not inspected (too_large: over the cap; over_budget: proxy.tap_max_bytes held by waiting copies; incomplete).",
                &["direction", "reason"],
            ),
            dropped: r.counter_vec(
                "flaghook_tap_dropped_total",
                "Exchanges not handed to derivation because a channel was full.",
                &["stage"],
            ),
        };
        for d in Direction::ALL {
            for u in Uninspected::ALL {
                m.uninspected.with_label_values(&[d.as_str(), u.as_str()]);
            }
        }
        for s in DropStage::ALL {
            m.dropped.with_label_values(&[s.as_str()]);
        }
        m
    }

    /// A body that was not inspected: counted (a full copy or a log line per request would
    /// cost more than the request).
    pub fn uninspected(&self, d: Direction, why: Uninspected) {
        self.uninspected
            .with_label_values(&[d.as_str(), why.as_str()])
            .inc();
    }

    /// An exchange dropped at a full channel: counted, and logged at debug (it can happen
    /// thousands of times a second under overload).
    pub fn dropped(&self, stage: DropStage) {
        self.dropped.with_label_values(&[stage.as_str()]).inc();
        tracing::debug!(stage = stage.as_str(), "exchange dropped: channel full");
    }
}

/// The sending half, shared by every connection.
#[derive(Clone)]
pub struct TapSender {
    tx: mpsc::Sender<Exchange>,
    /// Evaluations and exposures go straight to the impression workers' queue: one hand-over
    /// (and one wake-up) per call instead of two through the mutation deriver.
    impressions: Option<mpsc::Sender<Exchange>>,
    metrics: Arc<TapMetrics>,
    cap: usize,
    budget: Arc<ByteBudget>,
}

impl TapSender {
    pub fn new(
        tx: mpsc::Sender<Exchange>,
        metrics: Arc<TapMetrics>,
        cap: usize,
        budget: Arc<ByteBudget>,
    ) -> Self {
        Self {
            tx,
            impressions: None,
            metrics,
            cap,
            budget,
        }
    }

    /// Where evaluation and exposure exchanges go (without it, to the tap channel as the rest).
    pub fn with_impressions(mut self, tx: mpsc::Sender<Exchange>) -> Self {
        self.impressions = Some(tx);
        self
    }

    fn send(&self, ex: Exchange) {
        let (tx, stage) = match (&ex.route, &self.impressions) {
            (Route::Evaluation(_) | Route::Exposure, Some(imp)) => (imp, DropStage::Impressions),
            _ => (&self.tx, DropStage::Tap),
        };
        if tx.try_send(ex).is_err() {
            self.metrics.dropped(stage);
        }
    }
}

/// What the tap copies, and where it sends the copies.
struct TapShared {
    sender: TapSender,
    routes: RouteTable,
    inspect_impressions: bool,
    user_header: HeaderName,
}

/// Applies [`Tap`]. Usable on its own in any tower stack in front of Flagr:
/// `ServiceBuilder::new().layer(TapLayer::new(..)).service(flagr_client)`.
#[derive(Clone)]
pub struct TapLayer {
    shared: Arc<TapShared>,
}

impl TapLayer {
    /// `routes`: Flagr's route table (with its path prefix); `inspect_impressions`: copy
    /// evaluations and exposures too; `user_header`: the header Flagr reads the user from.
    pub fn new(
        sender: TapSender,
        routes: RouteTable,
        inspect_impressions: bool,
        user_header: HeaderName,
    ) -> Self {
        Self {
            shared: Arc::new(TapShared {
                sender,
                routes,
                inspect_impressions,
                user_header,
            }),
        }
    }
}

impl<S> tower::Layer<S> for TapLayer {
    type Service = Tap<S>;
    fn layer(&self, inner: S) -> Tap<S> {
        Tap {
            inner,
            shared: self.shared.clone(),
        }
    }
}

/// Wraps request and response bodies of inspected routes in [`TapBody`]s.
#[derive(Clone)]
pub struct Tap<S> {
    inner: S,
    shared: Arc<TapShared>,
}

impl<S, B, RB> tower::Service<Request<B>> for Tap<S>
where
    S: tower::Service<Request<TapBody<B>>, Response = Response<RB>, Error = Infallible>,
    S::Future: Send + 'static,
    B: http_body::Body<Data = Bytes>,
    RB: http_body::Body<Data = Bytes> + Send + 'static,
{
    type Response = Response<TapBody<RB>>;
    type Error = Infallible;
    // Routes that are not inspected pass without a box of their own.
    type Future = Either<
        Map<S::Future, PassAnswer<RB>>,
        BoxFuture<Result<Response<TapBody<RB>>, Infallible>>,
    >;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let me = &self.shared;
        let route = match Carried::route() {
            Some(r) => r,
            None => me.routes.classify(req.method(), req.uri().path()),
        };
        // Only inspected routes pay for copies of headers and bodies.
        let inspect = match route {
            Route::Mutation(_) => true,
            Route::Evaluation(_) | Route::Exposure => me.inspect_impressions,
            Route::Passthrough => false,
        };
        if !inspect {
            let fut = self.inner.call(req.map(TapBody::passthrough));
            return Either::Left(fut.map(pass_answer::<RB>));
        }
        let h = req.headers();
        let meta = RequestMeta {
            content_encoding: h.get(header::CONTENT_ENCODING).cloned(),
            user_agent: h.get(header::USER_AGENT).cloned(),
            authorization: h.get(header::AUTHORIZATION).cloned(),
            user: h.get(&me.user_header).cloned(),
            forwarded_for: h.get(X_FORWARDED_FOR).cloned(),
            gitsync_commit: req.extensions().get::<GitSyncCommit>().map(|c| c.0.clone()),
        };
        let peer = Carried::peer_addr();
        let slot = RequestSlot::default();
        let req = if matches!(route, Route::Evaluation(_)) {
            // Evaluations become impressions from Flagr's answer alone: their requests (batch
            // requests can be large) are not copied.
            if let Ok(mut s) = slot.lock() {
                s.0 = Captured::Skipped;
            }
            req.map(TapBody::passthrough)
        } else {
            let (slot, sender) = (slot.clone(), &me.sender);
            req.map(|b| TapBody::request(b, slot, sender))
        };
        let fut = self.inner.call(req);
        let sender = me.sender.clone();
        Either::Right(Box::pin(async move {
            let mut resp = fut.await?;
            if resp.extensions().get::<OwnAnswer>().is_some() {
                // flaghook's own 502/504: Flagr answered nothing, so there is nothing to derive.
                return Ok(resp.map(TapBody::passthrough));
            }
            let legacy = resp
                .extensions_mut()
                .remove::<LegacyStates>()
                .unwrap_or_default();
            let exchange = Exchange {
                route,
                peer,
                meta,
                request_body: Captured::Incomplete,
                status: resp.status(),
                response_encoding: resp.headers().get(header::CONTENT_ENCODING).cloned(),
                response_body: Captured::Incomplete,
                responded_at: SystemTime::now(),
                prefetched: legacy.before,
                postfetched: legacy.after,
                held: Held::default(),
            };
            Ok(resp.map(|b| {
                TapBody::response(
                    b,
                    Pending {
                        exchange,
                        request: slot,
                        sender,
                    },
                )
            }))
        }))
    }
}

/// What [`Tap`] does to an answer it does not inspect, as a function its future can name.
pub type PassAnswer<RB> =
    fn(Result<Response<RB>, Infallible>) -> Result<Response<TapBody<RB>>, Infallible>;

fn pass_answer<RB: http_body::Body<Data = Bytes>>(
    resp: Result<Response<RB>, Infallible>,
) -> Result<Response<TapBody<RB>>, Infallible> {
    resp.map(|r| r.map(TapBody::passthrough))
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full};
    use tower::{Layer, ServiceExt};

    /// A fake Flagr: reads the request body whole and answers with it, wrapped.
    async fn echo(req: Request<TapBody<Full<Bytes>>>) -> Result<Response<Full<Bytes>>, Infallible> {
        let body = req
            .into_body()
            .collect()
            .await
            .map_or_else(|_| Bytes::new(), |b| b.to_bytes());
        let answer = format!("{{\"echo\":{}}}", String::from_utf8_lossy(&body));
        let mut resp = Response::new(Full::new(Bytes::from(answer)));
        resp.extensions_mut().insert(LegacyStates {
            before: Some(FlagState::default()),
            after: None,
        });
        Ok(resp)
    }

    fn layer(impressions: bool) -> (TapLayer, mpsc::Receiver<Exchange>) {
        let (l, rx, _) = layer_with(impressions, None);
        (l, rx)
    }

    /// A tap layer, its tap channel and metrics; `queue`: the impression workers' queue.
    fn layer_with(
        impressions: bool,
        queue: Option<mpsc::Sender<Exchange>>,
    ) -> (TapLayer, mpsc::Receiver<Exchange>, Arc<TapMetrics>) {
        let (tx, rx) = mpsc::channel(8);
        let metrics = Arc::new(TapMetrics::new(&Registry::default()));
        let mut sender = TapSender::new(tx, metrics.clone(), 1 << 20, ByteBudget::new(1 << 20));
        if let Some(queue) = queue {
            sender = sender.with_impressions(queue);
        }
        let l = TapLayer::new(
            sender,
            RouteTable::new(""),
            impressions,
            HeaderName::from_static("x-email"),
        );
        (l, rx, metrics)
    }

    async fn call(l: &TapLayer, method: &str, path: &str, body: &'static str) -> Bytes {
        let mut req = Request::builder()
            .method(method)
            .uri(path)
            .header("x-email", "alice@example.com")
            .body(Full::new(Bytes::from_static(body.as_bytes())))
            .unwrap();
        req.extensions_mut().insert(GitSyncCommit("c0ffee".into()));
        let svc = l.layer(tower::service_fn(echo));
        let resp = svc.oneshot(req).await.unwrap();
        resp.into_body().collect().await.unwrap().to_bytes()
    }

    #[tokio::test]
    async fn a_mutation_is_copied_both_ways_and_handed_over_when_its_answer_ends() {
        let (l, mut rx) = layer(false);
        let answer = call(&l, "POST", "/api/v1/flags", r#"{"key":"k"}"#).await;
        assert_eq!(answer, r#"{"echo":{"key":"k"}}"#, "bytes pass untouched");
        let ex = rx.try_recv().expect("an exchange");
        assert!(matches!(ex.route, Route::Mutation(_)));
        assert_eq!(ex.request_body.bytes().unwrap(), r#"{"key":"k"}"#);
        assert_eq!(ex.response_body.bytes().unwrap(), r#"{"echo":{"key":"k"}}"#);
        assert_eq!(ex.meta.user.unwrap(), "alice@example.com");
        assert_eq!(ex.meta.gitsync_commit.as_deref(), Some("c0ffee"));
        assert!(
            ex.prefetched.is_some(),
            "legacy states come from the inner service"
        );
    }

    #[tokio::test]
    async fn other_routes_pass_and_evaluations_only_when_impressions_are_wanted() {
        let (l, mut rx) = layer(false);
        call(&l, "GET", "/api/v1/flags", "").await;
        call(&l, "POST", "/api/v1/evaluation", r#"{"flagKey":"k"}"#).await;
        assert!(rx.try_recv().is_err(), "nothing inspected");
        let (l, mut rx) = layer(true);
        let answer = call(&l, "POST", "/api/v1/evaluation", r#"{"flagKey":"k"}"#).await;
        assert_eq!(answer, r#"{"echo":{"flagKey":"k"}}"#);
        let ex = rx.try_recv().expect("an evaluation exchange");
        assert!(matches!(ex.request_body, Captured::Skipped));
        assert!(ex.response_body.bytes().is_some());
    }

    #[tokio::test]
    async fn evaluations_go_to_the_impression_queue_when_given_one_and_mutations_do_not() {
        let (imp_tx, mut imp_rx) = mpsc::channel(2);
        let (l, mut rx, metrics) = layer_with(true, Some(imp_tx));
        call(&l, "POST", "/api/v1/exposures", r#"[{"flagKey":"k"}]"#).await;
        call(
            &l,
            "POST",
            "/api/v1/evaluation/batch",
            r#"{"flagKeys":["k"]}"#,
        )
        .await;
        // The queue holds two: a third is dropped and counted at the impression stage.
        call(&l, "POST", "/api/v1/evaluation", r#"{"flagKey":"k"}"#).await;
        call(&l, "POST", "/api/v1/flags", r#"{"key":"k"}"#).await;
        let first = imp_rx
            .try_recv()
            .expect("the exposure on the impression queue");
        assert!(matches!(first.route, Route::Exposure));
        let second = imp_rx
            .try_recv()
            .expect("the batch on the impression queue");
        assert!(matches!(second.route, Route::Evaluation(_)));
        assert!(imp_rx.try_recv().is_err(), "the mutation went elsewhere");
        let dropped = |stage: &str| metrics.dropped.with_label_values(&[stage]).get();
        assert_eq!((dropped("impressions"), dropped("tap")), (1, 0));
        let ex = rx.try_recv().expect("the mutation on the tap channel");
        assert!(matches!(ex.route, Route::Mutation(_)));
        assert!(rx.try_recv().is_err(), "no evaluation on the tap channel");
    }
}
