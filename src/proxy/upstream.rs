//! The innermost service: sends the request to Flagr over pooled keep-alive connections.
//!
//! In: a request whose headers the outer layers have settled. Out: Flagr's response, or a short
//! JSON 502 (Flagr refused or broke the connection), 504 (no answer in time) or 400 (a URI
//! that cannot be aimed at Flagr), each counted.
//! Never: retries (a mutation might apply twice), or fails: every error is a response.

use std::convert::Infallible;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body::Body;
use http_body_util::Either;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioTimer};

use super::answer::{error_response, BoxFuture, UpstreamBody};
use super::metrics::{ProxyMetrics, UpstreamFailure};
use crate::config::ProxyConfig;

/// Why the upstream client could not be set up.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    #[error("proxy.upstream: not a URL")]
    Uri(#[source] http::uri::InvalidUri),
    #[error("proxy.upstream: no host")]
    NoHost,
}

/// Flagr behind a connection pool. Cheap to clone.
pub struct Upstream<B> {
    inner: Arc<Inner<B>>,
}

impl<B> Clone for Upstream<B> {
    fn clone(&self) -> Self {
        Self {
            inner: self.inner.clone(),
        }
    }
}

struct Inner<B> {
    client: Client<HttpConnector, B>,
    authority: Authority,
    timeout: Duration,
    metrics: Arc<ProxyMetrics>,
}

impl<B> Upstream<B>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    pub fn new(cfg: &ProxyConfig, metrics: Arc<ProxyMetrics>) -> Result<Self, UpstreamError> {
        let uri: Uri = cfg.upstream.parse().map_err(UpstreamError::Uri)?;
        let authority = uri.authority().cloned().ok_or(UpstreamError::NoHost)?;
        let mut conn = HttpConnector::new();
        conn.set_nodelay(true);
        conn.set_connect_timeout(Some(cfg.connect_timeout));
        conn.set_keepalive(Some(Duration::from_secs(60)));
        let client = Client::builder(TokioExecutor::new())
            .pool_max_idle_per_host(cfg.pool_max_idle)
            .pool_idle_timeout(cfg.pool_idle_timeout)
            .pool_timer(TokioTimer::new())
            .http1_writev(false)
            .timer(TokioTimer::new())
            .build(conn);
        Ok(Self {
            inner: Arc::new(Inner {
                client,
                authority,
                timeout: cfg.upstream_timeout,
                metrics,
            }),
        })
    }
}

impl<B> tower::Service<Request<B>> for Upstream<B>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    type Response = Response<UpstreamBody>;
    type Error = Infallible;
    type Future = BoxFuture<Result<Self::Response, Infallible>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        // The pool grows as needed; there is nothing to wait for.
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let me = self.inner.clone();
        Box::pin(async move { Ok(me.send(req).await) })
    }
}

impl<B> Inner<B>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    async fn send(&self, req: Request<B>) -> Response<UpstreamBody> {
        let (mut parts, body) = req.into_parts();
        let path_and_query = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        if !parts.headers.contains_key(header::HOST) {
            // HTTP/2 clients send :authority instead of Host; Flagr over HTTP/1.1 needs Host.
            if let Some(a) = parts.uri.authority() {
                if let Ok(v) = HeaderValue::from_str(a.as_str()) {
                    parts.headers.insert(header::HOST, v);
                }
            }
        }
        parts.version = Version::HTTP_11;
        parts.uri = match Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(self.authority.clone())
            .path_and_query(path_and_query)
            .build()
        {
            Ok(u) => u,
            Err(_) => {
                return error_response(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "invalid request URI",
                )
            }
        };
        let result = tokio::time::timeout(
            self.timeout,
            self.client.request(Request::from_parts(parts, body)),
        )
        .await;
        match result {
            Ok(Ok(resp)) => resp.map(Either::Left),
            Ok(Err(e)) => {
                let why = if e.is_connect() {
                    UpstreamFailure::Connect
                } else {
                    UpstreamFailure::Other
                };
                self.metrics.upstream_failed(why);
                tracing::warn!(error = %e, kind = why.as_str(), "flagr did not answer");
                error_response(
                    StatusCode::BAD_GATEWAY,
                    "upstream_unavailable",
                    "flaghook could not reach Flagr",
                )
            }
            Err(_) => {
                self.metrics.upstream_failed(UpstreamFailure::Timeout);
                tracing::warn!(timeout = ?self.timeout, "flagr timed out");
                error_response(
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream_timeout",
                    "Flagr did not answer in time",
                )
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::Full;
    use tower::ServiceExt;

    fn upstream(addr: std::net::SocketAddr, timeout: Duration) -> Upstream<Full<Bytes>> {
        let cfg = ProxyConfig {
            upstream: format!("http://{addr}"),
            upstream_timeout: timeout,
            ..ProxyConfig::default()
        };
        let r = crate::metrics::Registry::default();
        Upstream::new(&cfg, Arc::new(ProxyMetrics::new(&r))).unwrap()
    }

    fn get() -> Request<Full<Bytes>> {
        Request::get("/api/v1/health")
            .body(Full::new(Bytes::new()))
            .unwrap()
    }

    #[tokio::test]
    async fn refused_is_a_502_and_silent_is_a_504() {
        // A port nobody listens on: bound, then closed.
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        let dead = l.local_addr().unwrap();
        drop(l);
        let r = upstream(dead, Duration::from_secs(5))
            .oneshot(get())
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(r.headers()["x-flaghook-error"], "1");
        // Accepts, never answers.
        let silent = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = silent.local_addr().unwrap();
        let held = tokio::spawn(async move {
            let mut open = Vec::new();
            while let Ok((s, _)) = silent.accept().await {
                open.push(s);
            }
        });
        let r = upstream(addr, Duration::from_millis(200))
            .oneshot(get())
            .await
            .unwrap();
        assert_eq!(r.status(), StatusCode::GATEWAY_TIMEOUT);
        held.abort();
    }
}
