//! The proxy's request handler: classify, forward to Flagr, tap inspected routes, answer.
//!
//! In: a client request and the peer address. Out: Flagr's response, byte for byte (minus
//! hop-by-hop headers), or a short JSON 502/504 when Flagr cannot answer.
//! Never: awaits derivation or delivery, panics, or changes a body.

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::{TokioExecutor, TokioTimer};
use tokio::time::Instant;

use super::tap::{Captured, Exchange, Pending, RequestMeta, RequestSlot, TapBody, TapSender};
use crate::config::ProxyConfig;
use crate::flagr::{FlagrClient, Mutation, Route, RouteTable};
use crate::metrics::{method_label, status_class, Metrics};

// Built once: parsing a header name from a string on every request shows up in profiles.
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");
const X_FLAGHOOK_SOURCE: HeaderName = HeaderName::from_static("x-flaghook-source");
const X_FLAGHOOK_COMMIT: HeaderName = HeaderName::from_static("x-flaghook-commit");
const X_FLAGHOOK_GITSYNC: HeaderName = HeaderName::from_static("x-flaghook-gitsync");

/// What the proxy answers with: Flagr's body (tapped or not) or a short error of its own.
pub type ProxyBody = Either<TapBody<Incoming>, Full<Bytes>>;

/// The proxy. Cheap to clone: one per connection.
#[derive(Clone)]
pub struct Proxy {
    inner: Arc<Inner>,
}

struct Inner {
    client: Client<HttpConnector, TapBody<Incoming>>,
    authority: Authority,
    routes: RouteTable,
    timeout: Duration,
    tap: TapSender,
    metrics: Arc<Metrics>,
    /// True on Flagr 1.1.x: mutations need the flag fetched before they are forwarded.
    prefetch: Arc<AtomicBool>,
    flagr: FlagrClient,
    user_header: HeaderName,
    /// Evaluations and exposures are copied only when an impression webhook wants them.
    inspect_impressions: bool,
    /// Git sync's calls carry this; nobody else knows it.
    gitsync_token: String,
}

impl Proxy {
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        cfg: &ProxyConfig,
        user_header: &str,
        inspect_impressions: bool,
        gitsync_token: String,
        tap: TapSender,
        metrics: Arc<Metrics>,
        prefetch: Arc<AtomicBool>,
        flagr: FlagrClient,
    ) -> Result<Self, String> {
        let uri: Uri = cfg
            .upstream
            .parse()
            .map_err(|e| format!("proxy.upstream: {e}"))?;
        let authority = uri.authority().cloned().ok_or("proxy.upstream: no host")?;
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
                routes: RouteTable::new(&cfg.path_prefix),
                timeout: cfg.upstream_timeout,
                tap,
                metrics,
                prefetch,
                flagr,
                user_header: HeaderName::try_from(user_header)
                    .map_err(|e| format!("flagr.user_header: {e}"))?,
                inspect_impressions,
                gitsync_token,
            }),
        })
    }

    /// Handles one request. Infallible: every failure becomes a response.
    pub async fn handle(&self, req: Request<Incoming>, peer: SocketAddr) -> Response<ProxyBody> {
        let me = &*self.inner;
        let started = Instant::now();
        me.metrics.proxy_in_flight.inc();
        let route = me.routes.classify(req.method(), req.uri().path());
        let method = method_label(req.method());
        let resp = self.forward(req, route, peer).await;
        me.metrics.proxy_in_flight.dec();
        me.metrics
            .proxy_requests
            .with_label_values(&[route.class(), method, status_class(resp.status().as_u16())])
            .inc();
        me.metrics
            .proxy_duration
            .with_label_values(&[route.class()])
            .observe(started.elapsed().as_secs_f64());
        resp
    }

    async fn forward(
        &self,
        req: Request<Incoming>,
        route: Route,
        peer: SocketAddr,
    ) -> Response<ProxyBody> {
        let me = &*self.inner;
        let (mut parts, body) = req.into_parts();
        let path_and_query = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));

        // Only inspected routes pay for copies of headers and bodies.
        let inspect = match route {
            Route::Mutation(_) => true,
            Route::Evaluation(_) | Route::Exposure => me.inspect_impressions,
            Route::Passthrough => false,
        };
        let gitsync_commit = match route {
            Route::Mutation(_) => me.take_gitsync(&mut parts.headers),
            _ => None,
        };
        let tapped = inspect.then(|| {
            let h = &parts.headers;
            let meta = RequestMeta {
                content_encoding: h.get(header::CONTENT_ENCODING).cloned(),
                user_agent: h.get(header::USER_AGENT).cloned(),
                authorization: h.get(header::AUTHORIZATION).cloned(),
                user: h.get(&me.user_header).cloned(),
                forwarded_for: h.get(X_FORWARDED_FOR).cloned(),
                gitsync_commit,
            };
            (meta, RequestSlot::default())
        });

        let mut prefetched = None;
        if let Route::Mutation(m) = route {
            if me.prefetch.load(Ordering::Relaxed) {
                if let Some(flag) = m.path_flag() {
                    // Legacy Flagr keeps no history: the state before must be read now. A failure
                    // costs the event its "before", never the request.
                    prefetched = me.flagr.flag(flag).await.ok().flatten();
                }
            }
        }

        strip_hop_by_hop(&mut parts.headers);
        add_forwarded(&mut parts.headers, peer);
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
            .authority(me.authority.clone())
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
        let body = match &tapped {
            // Evaluations become impressions from Flagr's answer alone: their requests (batch
            // requests can be large) are not copied.
            Some((_, slot)) if matches!(route, Route::Evaluation(_)) => {
                if let Ok(mut s) = slot.lock() {
                    s.0 = Captured::Skipped;
                }
                TapBody::passthrough(body)
            }
            Some((_, slot)) => TapBody::request(body, slot.clone(), &me.tap),
            None => TapBody::passthrough(body),
        };
        let upstream_req = Request::from_parts(parts, body);

        let result = tokio::time::timeout(me.timeout, me.client.request(upstream_req)).await;
        let resp = match result {
            Ok(Ok(resp)) => resp,
            Ok(Err(e)) => {
                let kind = if e.is_connect() { "connect" } else { "other" };
                me.metrics
                    .proxy_upstream_errors
                    .with_label_values(&[kind])
                    .inc();
                tracing::warn!(error = %e, kind, "flagr did not answer");
                return error_response(
                    StatusCode::BAD_GATEWAY,
                    "upstream_unavailable",
                    "flaghook could not reach Flagr",
                );
            }
            Err(_) => {
                me.metrics
                    .proxy_upstream_errors
                    .with_label_values(&["timeout"])
                    .inc();
                tracing::warn!(timeout = ?me.timeout, "flagr timed out");
                return error_response(
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream_timeout",
                    "Flagr did not answer in time",
                );
            }
        };
        let (mut parts, body) = resp.into_parts();
        strip_hop_by_hop(&mut parts.headers);
        // Legacy Flagr: read "after" before the client gets its answer, so a client's next call
        // cannot slip into it. Only mutations on legacy servers pay this read.
        let mut postfetched = None;
        if let (Route::Mutation(m), Some(_)) = (route, &prefetched) {
            if parts.status == StatusCode::OK
                && !m.creates_flag()
                && !matches!(m, Mutation::DeleteFlag { .. })
            {
                if let Some(flag) = m.path_flag() {
                    postfetched = me.flagr.flag(flag).await.ok().flatten();
                }
            }
        }
        let body = match tapped {
            Some((meta, slot)) => {
                let exchange = Exchange {
                    route,
                    peer,
                    meta,
                    request_body: Captured::Incomplete,
                    status: parts.status,
                    response_encoding: parts.headers.get(header::CONTENT_ENCODING).cloned(),
                    response_body: Captured::Incomplete,
                    responded_at: SystemTime::now(),
                    prefetched,
                    postfetched,
                    held: Default::default(),
                };
                TapBody::response(
                    body,
                    Pending {
                        exchange,
                        request: slot,
                        sender: me.tap.clone(),
                    },
                )
            }
            None => TapBody::passthrough(body),
        };
        Response::from_parts(parts, Either::Left(body))
    }
}

impl Inner {
    /// The commit of an authenticated git sync call; the marker headers never reach Flagr.
    fn take_gitsync(&self, h: &mut HeaderMap) -> Option<String> {
        let token = h.remove(X_FLAGHOOK_GITSYNC)?;
        h.remove(X_FLAGHOOK_SOURCE);
        let commit = h.remove(X_FLAGHOOK_COMMIT);
        let ok = !self.gitsync_token.is_empty()
            && bool::from(subtle::ConstantTimeEq::ct_eq(
                token.as_bytes(),
                self.gitsync_token.as_bytes(),
            ));
        ok.then(|| {
            commit
                .and_then(|c| c.to_str().ok().map(str::to_string))
                .unwrap_or_default()
        })
    }
}

/// Removes hop-by-hop headers (RFC 9110 §7.6.1): `Connection` and every header it names, and
/// the fixed set below. End-to-end headers pass untouched.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    if let Some(conn) = h.get(header::CONNECTION) {
        // Only allocate when the peer actually named headers.
        let named: Vec<HeaderName> = conn
            .to_str()
            .unwrap_or("")
            .split(',')
            .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
            .collect();
        for n in named {
            h.remove(n);
        }
    }
    for n in [
        header::CONNECTION,
        header::TE,
        header::TRAILER,
        header::TRANSFER_ENCODING,
        header::UPGRADE,
    ] {
        h.remove(n);
    }
    h.remove(KEEP_ALIVE);
    h.remove(PROXY_CONNECTION);
}

/// Appends the peer to `X-Forwarded-For` and sets `X-Forwarded-Proto` unless an outer proxy did.
fn add_forwarded(h: &mut HeaderMap, peer: SocketAddr) {
    let ip = peer.ip().to_string();
    let xff = match h.get(X_FORWARDED_FOR).and_then(|v| v.to_str().ok()) {
        Some(prev) if !prev.is_empty() => format!("{prev}, {ip}"),
        _ => ip,
    };
    if let Ok(v) = HeaderValue::from_str(&xff) {
        h.insert(X_FORWARDED_FOR, v);
    }
    if !h.contains_key(X_FORWARDED_PROTO) {
        h.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    }
}

/// A short JSON error of flaghook's own.
pub fn error_response(status: StatusCode, code: &str, message: &str) -> Response<ProxyBody> {
    let body = serde_json::json!({"error": code, "message": message}).to_string();
    let mut r = Response::new(Either::Right(Full::new(Bytes::from(body))));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut()
        .insert("x-flaghook-error", HeaderValue::from_static("1"));
    r
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strips_connection_listed_and_fixed_hop_by_hop() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Secret-Hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer x"));
        strip_hop_by_hop(&mut h);
        let mut left: Vec<_> = h.keys().map(|k| k.as_str().to_string()).collect();
        left.sort();
        assert_eq!(left, vec!["authorization", "content-type"]);
    }

    #[test]
    fn forwarded_headers_append_and_keep_outer_proto() {
        let peer: SocketAddr = ([10, 1, 2, 3], 5000).into();
        let mut h = HeaderMap::new();
        add_forwarded(&mut h, peer);
        assert_eq!(h["x-forwarded-for"], "10.1.2.3");
        assert_eq!(h["x-forwarded-proto"], "http");
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("1.1.1.1"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        add_forwarded(&mut h, peer);
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 10.1.2.3");
        assert_eq!(h["x-forwarded-proto"], "https");
    }
}
