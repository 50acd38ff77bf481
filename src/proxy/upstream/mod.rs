//! The innermost service: sends the request to Flagr, TCP or (`proxy.upstream_socket`) a Unix
//! socket Flagr listens on beside it. A keep-alive HTTP/1.1 client's requests with a body of
//! known, bounded size go over that client connection's own connection to Flagr, spoken by
//! the request's task (wire.rs); the rest over hyper's pooled client.
//!
//! In: a request whose headers the outer layers have settled, and what it carries (its peer,
//! its connection's own connection). Out: the request to Flagr with `X-Forwarded-For`,
//! `X-Forwarded-Proto` (headers.rs) and, when it had none, `Host` added; Flagr's response, or
//! a short JSON 502 (Flagr refused or broke the connection), 504 (no answer in time) or 400 (a
//! URI that cannot be aimed at Flagr), each counted.
//! Never: sends a request twice when it may have reached Flagr (a mutation might apply twice):
//! only one hyper hands back unwritten, or an idempotent one (RFC 9110 §9.2.2) to which a
//! reused connection gave back not a byte, goes out again, once, on a new connection. Never
//! fails: every error is a response.

mod carried;
mod deadline;
mod quiet;
mod spare;
mod wire;

use std::convert::Infallible;
use std::path::Path;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::uri::{Authority, PathAndQuery, Scheme};
use http::{Request, Response, StatusCode, Uri, Version};
use http_body::Body;
use http_body_util::{Either, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::{Connected, Connection, HttpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use tokio::net::UnixStream;

use tower::Service;

use super::answer::{error_response, BoxFuture};
use super::headers::add_forwarded;
use super::metrics::{ProxyMetrics, UpstreamFailure};
use crate::config::ProxyConfig;
#[cfg(test)]
pub(crate) use carried::call_carrying;
pub use carried::{Carried, PeerAddr};
pub use quiet::Quiet;
#[cfg(fuzzing)]
pub use wire::fuzz_answer;
pub use wire::{OwnConnection, WireBody};

/// Flagr's body (from the pool or an own connection, its silence bounded), or flaghook's own
/// short error.
pub type UpstreamBody = Either<Quiet<Either<Incoming, WireBody>>, Full<Bytes>>;

/// An answer of flaghook's own, as the proxy's body type.
fn own_answer(status: StatusCode, code: &str, message: &str) -> Response<UpstreamBody> {
    error_response(status, code, message).map(Either::Right)
}

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
    flagr: Flagr<B>,
    authority: Authority,
    timeout: Duration,
    /// Requests with a body up to this size go over an own connection (`proxy.inline_body_max_bytes`).
    inline_max: u64,
    /// An own connection idle longer than this is closed, as the pool's are.
    max_idle: Duration,
    /// Own connections closed client connections left, for new ones.
    spares: Arc<spare::Spares>,
    /// Flagr's silence within a begun answer, bounded by the same timeout.
    quiet: Arc<quiet::Bound>,
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
        // An absurd timeout would overflow a timer's deadline; a year is never.
        let never = Duration::from_secs(365 * 24 * 3600);
        let timeout = cfg.upstream_timeout.min(never);
        let max_idle = cfg.pool_idle_timeout.min(never);
        let mut builder = Client::builder(TokioExecutor::new());
        builder
            .pool_max_idle_per_host(cfg.pool_max_idle)
            .pool_idle_timeout(max_idle)
            .pool_timer(TokioTimer::new())
            .http1_writev(false)
            .timer(TokioTimer::new());
        let flagr = if cfg.upstream_socket.is_empty() {
            let mut dial = HttpConnector::new();
            dial.set_nodelay(true);
            dial.set_connect_timeout(Some(cfg.connect_timeout));
            dial.set_keepalive(Some(Duration::from_secs(60)));
            Flagr::Tcp {
                pool: builder.build(dial.clone()),
                dial,
                at: uri,
            }
        } else {
            let dial = UnixConnector {
                path: Path::new(&cfg.upstream_socket).into(),
                timeout: cfg.connect_timeout,
            };
            Flagr::Unix {
                pool: builder.build(dial.clone()),
                dial,
            }
        };
        Ok(Self {
            inner: Arc::new(Inner {
                flagr,
                authority,
                timeout,
                inline_max: cfg.inline_body_max_bytes as u64,
                max_idle,
                spares: spare::Spares::new(cfg.pool_max_idle, max_idle),
                quiet: Arc::new(quiet::Bound {
                    limit: timeout,
                    metrics: metrics.clone(),
                }),
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
        // A future per way, each holding only what its way needs: a request's future is
        // moved whole between the layers, so every byte of it is copied a few times.
        match me.prepare(req) {
            Way::Own {
                own,
                mut request,
                method,
                mut body,
                mut room,
            } => Box::pin(async move {
                // One block holding each part once, the steps below only borrowing them: the
                // whole future is copied into its box, and an async fn's arguments are held
                // twice (as given and as moved in).
                let due = tokio::time::Instant::now() + me.timeout;
                let mut timer = own.timer(due);
                let sent = async {
                    wire::add_body(&mut request, &mut body)
                        .await
                        .map_err(Failure::other)?;
                    me.exchange_own(&own, &request, &method, &mut room).await
                };
                let r = deadline::within(&mut timer, due, sent).await;
                own.keep_timer(timer);
                Ok(me.answer(r.map(|r| r.map(|r| r.map(Either::Right)))))
            }),
            Way::Pooled(req) => Box::pin(async move {
                let r = tokio::time::timeout(me.timeout, me.send_pooled(req)).await;
                let r = r.map_err(|_| deadline::TimedOut);
                Ok(me.answer(r.map(|r| r.map(|r| r.map(Either::Left)))))
            }),
            Way::Answered(resp) => Box::pin(std::future::ready(Ok(resp))),
        }
    }
}

/// How a request goes to Flagr, settled before anything is awaited.
enum Way<B> {
    /// Over the client connection's own connection: the request's head already encoded.
    Own {
        own: OwnConnection,
        request: Vec<u8>,
        method: http::Method,
        body: B,
        /// The request's header map, emptied (its headers are in `request`): Flagr's answer's
        /// go in it, so the map's allocation serves both.
        room: http::HeaderMap,
    },
    Pooled(Request<B>),
    /// Not sent: flaghook's own answer.
    Answered(Response<UpstreamBody>),
}

impl<B> Inner<B>
where
    B: Body<Data = Bytes> + Send + Unpin + 'static,
    B::Error: Into<Box<dyn std::error::Error + Send + Sync>>,
{
    fn prepare(&self, req: Request<B>) -> Way<B> {
        let (mut parts, body) = req.into_parts();
        let own = Carried::take_own().filter(|_| wire::fits(&parts.method, &body, self.inline_max));
        let peer = Carried::peer_ip().unwrap_or_else(|| HeaderValue::from_static("0.0.0.0"));
        // HTTP/2 clients send :authority instead of Host; Flagr over HTTP/1.1 needs Host.
        let authority = parts.uri.authority().unwrap_or(&self.authority);
        if let Some(own) = own {
            // Origin form: the connection already leads to Flagr.
            let path = parts.uri.path_and_query().map_or("/", |p| p.as_str());
            let request = wire::encode_head(
                &parts.method,
                path,
                &parts.headers,
                authority.as_str(),
                &peer,
                &body,
            );
            let mut room = parts.headers;
            room.clear();
            return Way::Own {
                own,
                request,
                method: parts.method,
                body,
                room,
            };
        }
        if !parts.headers.contains_key(header::HOST) {
            if let Ok(v) = HeaderValue::from_str(authority.as_str()) {
                parts.headers.insert(header::HOST, v);
            }
        }
        add_forwarded(&mut parts.headers, &peer);
        let path_and_query = parts
            .uri
            .path_and_query()
            .cloned()
            .unwrap_or_else(|| PathAndQuery::from_static("/"));
        parts.version = Version::HTTP_11;
        parts.uri = match Uri::builder()
            .scheme(Scheme::HTTP)
            .authority(self.authority.clone())
            .path_and_query(path_and_query)
            .build()
        {
            Ok(u) => u,
            Err(_) => {
                return Way::Answered(own_answer(
                    StatusCode::BAD_REQUEST,
                    "bad_request",
                    "invalid request URI",
                ))
            }
        };
        Way::Pooled(Request::from_parts(parts, body))
    }

    /// Flagr's answer as the client gets it, or flaghook's own 502 or 504, each counted.
    fn answer(
        &self,
        result: Result<Result<Response<Either<Incoming, WireBody>>, Failure>, deadline::TimedOut>,
    ) -> Response<UpstreamBody> {
        match result {
            Ok(Ok(resp)) => resp.map(|b| Either::Left(Quiet::new(b, self.quiet.clone()))),
            Ok(Err(Failure(why, e))) => {
                self.metrics.upstream_failed(why);
                tracing::warn!(error = %e, kind = why.as_str(), "flagr did not answer");
                own_answer(
                    StatusCode::BAD_GATEWAY,
                    "upstream_unavailable",
                    "flaghook could not reach Flagr",
                )
            }
            Err(_) => {
                self.metrics.upstream_failed(UpstreamFailure::Timeout);
                tracing::warn!(timeout = ?self.timeout, "flagr timed out");
                own_answer(
                    StatusCode::GATEWAY_TIMEOUT,
                    "upstream_timeout",
                    "Flagr did not answer in time",
                )
            }
        }
    }

    async fn send_pooled(&self, req: Request<B>) -> Result<Response<Incoming>, Failure> {
        let r = match &self.flagr {
            Flagr::Tcp { pool, .. } => pool.request(req).await,
            Flagr::Unix { pool, .. } => pool.request(req).await,
        };
        r.map_err(|e| {
            let why = if e.is_connect() {
                UpstreamFailure::Connect
            } else {
                UpstreamFailure::Other
            };
            Failure(why, e.into())
        })
    }

    /// Over the client connection's own connection to Flagr: on its first request one a closed
    /// client connection left, or a new one (and a new one once Flagr closed it).
    async fn exchange_own(
        &self,
        own: &OwnConnection,
        request: &[u8],
        method: &http::Method,
        room: &mut http::HeaderMap,
    ) -> Result<Response<WireBody>, Failure> {
        let kept = own.take(self.max_idle).or_else(|| self.spares.take());
        let (mut conn, mut reused) = match kept {
            Some(c) => (c, true),
            None => (self.dial().await?, false),
        };
        loop {
            match wire::exchange(conn, request, method, own, room).await {
                Ok(r) => return Ok(r),
                // Flagr closed the kept connection just as the request went out: it never read
                // it, most likely; but only a request that changes nothing goes again (a PUT or
                // DELETE Flagr did apply would be applied, or fail, a second time).
                Err((_, e)) if reused && e.nothing_back() && method.is_safe() => {
                    conn = self.dial().await?;
                    reused = false;
                }
                Err((_, e)) => return Err(Failure::other(Box::new(e))),
            }
        }
    }

    async fn dial(&self) -> Result<Box<wire::Conn>, Failure> {
        self.metrics.dials.inc();
        let connect =
            |e: Box<dyn std::error::Error + Send + Sync>| Failure(UpstreamFailure::Connect, e);
        let stream = match &self.flagr {
            Flagr::Tcp { dial, at, .. } => {
                let io = dial.clone().call(at.clone()).await;
                wire::Stream::Tcp(io.map_err(|e| connect(e.into()))?.into_inner())
            }
            Flagr::Unix { dial, .. } => {
                let io = dial.clone().call(Uri::default()).await;
                wire::Stream::Unix(io.map_err(|e| connect(e.into()))?.0.into_inner())
            }
        };
        Ok(wire::Conn::new(stream, Arc::downgrade(&self.spares)))
    }
}

/// Why Flagr gave no answer, and what said so.
struct Failure(UpstreamFailure, Box<dyn std::error::Error + Send + Sync>);

impl Failure {
    fn other(e: Box<dyn std::error::Error + Send + Sync>) -> Self {
        Self(UpstreamFailure::Other, e)
    }
}

/// How Flagr is reached: a shared pool (the request's URI names Flagr, the pool's key) and
/// a way to make a connection of one's own.
enum Flagr<B> {
    Tcp {
        pool: Client<HttpConnector, B>,
        dial: HttpConnector,
        at: Uri,
    },
    Unix {
        pool: Client<UnixConnector, B>,
        dial: UnixConnector,
    },
}

/// Connects every pooled connection to one Unix socket, whatever the URI says.
#[derive(Clone)]
struct UnixConnector {
    path: Arc<Path>,
    timeout: Duration,
}

impl tower::Service<Uri> for UnixConnector {
    type Response = UnixIo;
    type Error = std::io::Error;
    type Future = BoxFuture<Result<UnixIo, std::io::Error>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    fn call(&mut self, _: Uri) -> Self::Future {
        let (path, timeout) = (self.path.clone(), self.timeout);
        Box::pin(async move {
            match tokio::time::timeout(timeout, UnixStream::connect(&*path)).await {
                Ok(s) => Ok(UnixIo(TokioIo::new(s?))),
                Err(_) => Err(std::io::ErrorKind::TimedOut.into()),
            }
        })
    }
}

/// A Unix stream as hyper's client wants it.
struct UnixIo(TokioIo<UnixStream>);

impl Connection for UnixIo {
    fn connected(&self) -> Connected {
        Connected::new()
    }
}

impl hyper::rt::Read for UnixIo {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: hyper::rt::ReadBufCursor<'_>,
    ) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_read(cx, buf)
    }
}

impl hyper::rt::Write for UnixIo {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<std::io::Result<usize>> {
        Pin::new(&mut self.0).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<std::io::Result<()>> {
        Pin::new(&mut self.0).poll_shutdown(cx)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http::Method;
    use http_body_util::Full;
    use std::sync::atomic::{AtomicUsize, Ordering};
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

    /// Answers every request with its path, closing after each answer when `close`; counts the
    /// connections it accepted.
    fn answer_paths<I>(
        accept: impl Fn() -> BoxFuture<std::io::Result<I>> + Send + 'static,
        close: bool,
    ) -> Arc<std::sync::atomic::AtomicUsize>
    where
        I: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin + Send + 'static,
    {
        let accepted = Arc::new(std::sync::atomic::AtomicUsize::new(0));
        let count = accepted.clone();
        tokio::spawn(async move {
            while let Ok(io) = accept().await {
                count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
                let svc = hyper::service::service_fn(move |req: Request<Incoming>| async move {
                    let mut r = Response::new(Full::new(Bytes::from(req.uri().to_string())));
                    if close {
                        r.headers_mut()
                            .insert(header::CONNECTION, HeaderValue::from_static("close"));
                    }
                    Ok::<_, Infallible>(r)
                });
                tokio::spawn(
                    hyper::server::conn::http1::Builder::new()
                        .serve_connection(TokioIo::new(io), svc),
                );
            }
        });
        accepted
    }

    /// [`answer_paths`] on a loopback port.
    async fn answer_paths_on_tcp(close: bool) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let l = Arc::new(l);
        let accept = move || -> BoxFuture<std::io::Result<tokio::net::TcpStream>> {
            let l = l.clone();
            Box::pin(async move { l.accept().await.map(|(s, _)| s) })
        };
        (addr, answer_paths(accept, close))
    }

    async fn text(r: Response<UpstreamBody>) -> String {
        use http_body_util::BodyExt;
        let b = r.into_body().collect().await.unwrap().to_bytes();
        String::from_utf8(b.to_vec()).unwrap()
    }

    /// Requests of one client connection go over one connection to Flagr, made on the first;
    /// one Flagr closed is made again; without the connection's mark they use the pool.
    #[tokio::test]
    async fn a_client_connection_keeps_its_own_connection_to_flagr() {
        for close in [false, true] {
            let (addr, accepted) = answer_paths_on_tcp(close).await;
            let up = upstream(addr, Duration::from_secs(5));
            let own = OwnConnection::default();
            for i in 0..3 {
                let req = Request::get(format!("/api/v1/flags/{i}?a=b"))
                    .body(Full::new(Bytes::new()))
                    .unwrap();
                let carried = Carried::new(None, Some(own.clone()));
                let r = call_carrying(up.clone(), req, carried).await.unwrap();
                assert_eq!(r.status(), StatusCode::OK);
                assert_eq!(text(r).await, format!("/api/v1/flags/{i}?a=b"));
            }
            let want = if close { 3 } else { 1 };
            assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), want);
            assert_eq!(up.inner.metrics.dials.get(), want as u64);
            // Unmarked (h2 clients): the pool, which the own connection does not serve.
            let r = up.clone().oneshot(get()).await.unwrap();
            assert_eq!(text(r).await, "/api/v1/health");
            assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), want + 1);
        }
    }

    /// A client connection that closes leaves its connection to Flagr to the next new one,
    /// which dials no connection of its own; two open at once each have one.
    #[tokio::test]
    async fn a_new_client_connection_takes_the_one_a_closed_client_left() {
        let (addr, accepted) = answer_paths_on_tcp(false).await;
        let up = upstream(addr, Duration::from_secs(5));
        let ask = |own: &OwnConnection, path: &str| {
            let req = Request::get(path).body(Full::new(Bytes::new())).unwrap();
            let carried = Carried::new(None, Some(own.clone()));
            let up = up.clone();
            async move { text(call_carrying(up, req, carried).await.unwrap()).await }
        };
        for i in 0..3 {
            let client = OwnConnection::default();
            assert_eq!(ask(&client, &format!("/{i}")).await, format!("/{i}"));
            drop(client);
        }
        assert_eq!(accepted.load(Ordering::SeqCst), 1);
        assert_eq!(up.inner.metrics.dials.get(), 1);
        // Two clients at once: the second finds no spare while the first holds it.
        let (one, two) = (OwnConnection::default(), OwnConnection::default());
        assert_eq!(ask(&one, "/a").await, "/a");
        assert_eq!(ask(&two, "/b").await, "/b");
        assert_eq!(up.inner.metrics.dials.get(), 2);
        drop((one, two));
        assert_eq!(up.inner.spares.len(), 2);
        let three = OwnConnection::default();
        assert_eq!(ask(&three, "/c").await, "/c");
        assert_eq!(accepted.load(Ordering::SeqCst), 2);
        assert_eq!(up.inner.spares.len(), 1);
    }

    /// A bare HTTP/1.1 server: on each connection reads a request whole (head and
    /// Content-Length body) for each of `answers` and writes that answer (nothing when empty),
    /// then closes without saying so. Counts the requests it read.
    async fn answer_then_close(
        answers: &'static [&'static [u8]],
    ) -> (std::net::SocketAddr, Arc<AtomicUsize>) {
        use tokio::io::{AsyncReadExt, AsyncWriteExt};
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let read = Arc::new(AtomicUsize::new(0));
        let count = read.clone();
        tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let mut buf = Vec::new();
                for answer in answers {
                    let mut chunk = [0u8; 1024];
                    let whole = loop {
                        let Ok(n) = s.read(&mut chunk).await else {
                            break false;
                        };
                        if n == 0 {
                            break false;
                        }
                        buf.extend_from_slice(&chunk[..n]);
                        let Some(end) = buf.windows(4).position(|w| w == b"\r\n\r\n") else {
                            continue;
                        };
                        let head = String::from_utf8_lossy(&buf[..end]).to_lowercase();
                        let len: usize = head
                            .lines()
                            .find_map(|l| l.strip_prefix("content-length:"))
                            .map_or(0, |v| v.trim().parse().unwrap());
                        if buf.len() >= end + 4 + len {
                            buf.drain(..end + 4 + len);
                            break true;
                        }
                    };
                    if !whole {
                        break;
                    }
                    count.fetch_add(1, Ordering::SeqCst);
                    let _ = s.write_all(answer).await;
                }
            }
        });
        (addr, read)
    }

    /// Flagr read the request and hung up without answering: a 502, and the request is not
    /// sent again (it may have applied).
    #[tokio::test]
    async fn a_request_flagr_may_have_read_is_never_sent_again() {
        let (addr, read) = answer_then_close(&[b""]).await;
        let up = upstream(addr, Duration::from_secs(5));
        let req = Request::post("/api/v1/flags")
            .body(Full::new(Bytes::from_static(b"{\"key\":\"k1\"}")))
            .unwrap();
        let carried = Carried::new(None, Some(OwnConnection::default()));
        let r = call_carrying(up, req, carried).await.unwrap();
        assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
        assert_eq!(read.load(Ordering::SeqCst), 1);
    }

    /// Flagr closed the connection after answering, without saying so: the next request of the
    /// client connection goes out on a new one.
    #[tokio::test]
    async fn a_connection_flagr_closed_is_replaced() {
        let (addr, read) = answer_then_close(&[OK]).await;
        let up = upstream(addr, Duration::from_secs(5));
        let own = OwnConnection::default();
        for _ in 0..3 {
            let req = get();
            let carried = Carried::new(None, Some(own.clone()));
            let r = call_carrying(up.clone(), req, carried).await.unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            assert_eq!(text(r).await, "ok");
        }
        assert_eq!(read.load(Ordering::SeqCst), 3);
    }

    const OK: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok";

    /// On a kept connection Flagr read the next request and hung up without answering: a GET
    /// goes again on a new connection; a POST, PUT or DELETE does not (Flagr may have applied
    /// it), and the client gets a 502.
    #[tokio::test]
    async fn only_requests_that_change_nothing_go_again_on_a_new_connection() {
        for (method, again) in [
            (Method::GET, true),
            (Method::POST, false),
            (Method::PUT, false),
            (Method::DELETE, false),
        ] {
            let (addr, read) = answer_then_close(&[OK, b""]).await;
            let up = upstream(addr, Duration::from_secs(5));
            let own = OwnConnection::default();
            let req = get();
            let carried = Carried::new(None, Some(own.clone()));
            assert_eq!(
                text(call_carrying(up.clone(), req, carried).await.unwrap()).await,
                "ok"
            );
            let req = Request::builder()
                .method(method.clone())
                .uri("/api/v1/flags/1")
                .body(Full::new(Bytes::from_static(b"{}")))
                .unwrap();
            let carried = Carried::new(None, Some(own.clone()));
            let r = call_carrying(up.clone(), req, carried).await.unwrap();
            let want = if again {
                (StatusCode::OK, 3)
            } else {
                (StatusCode::BAD_GATEWAY, 2)
            };
            assert_eq!((r.status(), read.load(Ordering::SeqCst)), want, "{method}");
        }
    }

    /// `proxy.upstream_socket`: both the own connections and the pool reach Flagr over it.
    #[tokio::test]
    async fn a_unix_socket_reaches_flagr() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("flagr.sock");
        let l = Arc::new(tokio::net::UnixListener::bind(&path).unwrap());
        let accepted = answer_paths(
            move || {
                let l = l.clone();
                Box::pin(async move { l.accept().await.map(|(s, _)| s) })
            },
            false,
        );
        let cfg = ProxyConfig {
            // Nothing listens there: every byte must go over the socket.
            upstream: "http://127.0.0.1:1".into(),
            upstream_socket: path.display().to_string(),
            ..ProxyConfig::default()
        };
        let r = crate::metrics::Registry::default();
        let up = Upstream::new(&cfg, Arc::new(ProxyMetrics::new(&r))).unwrap();
        let req = get();
        let carried = Carried::new(None, Some(OwnConnection::default()));
        assert_eq!(
            text(call_carrying(up.clone(), req, carried).await.unwrap()).await,
            "/api/v1/health"
        );
        assert_eq!(
            text(up.clone().oneshot(get()).await.unwrap()).await,
            "/api/v1/health"
        );
        assert_eq!(accepted.load(std::sync::atomic::Ordering::SeqCst), 2);
        // No socket there (its connections already made stay usable): a 502 of flaghook's own,
        // counted as a failure to connect.
        drop(dir);
        let metrics = Arc::new(ProxyMetrics::new(&crate::metrics::Registry::default()));
        let up = Upstream::new(&cfg, metrics.clone()).unwrap();
        let r = up.oneshot(get()).await.unwrap();
        assert_eq!(r.status(), StatusCode::BAD_GATEWAY);
        let connect = metrics
            .upstream_errors
            .with_label_values(&["connect"])
            .get();
        assert_eq!(connect, 1);
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

    /// A loopback stand-in for a Flagr that misbehaves: every request head read on every
    /// connection goes to `answer` with the connection, which it hands back to read the next
    /// request on, or not, to end it. Requests without a body only.
    async fn flagr_by_heads<F, Fut>(
        answer: F,
    ) -> (std::net::SocketAddr, tokio::task::JoinHandle<()>)
    where
        F: Fn(tokio::net::TcpStream, Vec<u8>) -> Fut + Clone + Send + 'static,
        Fut: std::future::Future<Output = Option<tokio::net::TcpStream>> + Send,
    {
        use tokio::io::AsyncReadExt;
        let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = l.local_addr().unwrap();
        let server = tokio::spawn(async move {
            while let Ok((mut s, _)) = l.accept().await {
                let answer = answer.clone();
                tokio::spawn(async move {
                    let mut got = Vec::new();
                    let mut buf = [0u8; 4096];
                    loop {
                        while let Some(end) = got.windows(4).position(|w| w == b"\r\n\r\n") {
                            let head: Vec<u8> = got.drain(..end + 4).collect();
                            match answer(s, head).await {
                                Some(next) => s = next,
                                None => return,
                            }
                        }
                        match s.read(&mut buf).await {
                            Ok(0) | Err(_) => return,
                            Ok(n) => got.extend_from_slice(&buf[..n]),
                        }
                    }
                });
            }
        });
        (addr, server)
    }

    /// Both ways to Flagr, an own connection and the pool, write the same forwarding headers
    /// and `Host`, from the peer the request carries.
    #[tokio::test]
    async fn both_ways_forward_the_peer_and_name_the_host() {
        use tokio::io::AsyncWriteExt;
        // Answers with the head's Host and X-Forwarded-* lines, sorted.
        let (addr, server) = flagr_by_heads(|mut s, head| async move {
            let head = String::from_utf8_lossy(&head).to_ascii_lowercase();
            let mut seen: Vec<&str> = head
                .lines()
                .filter(|l| l.starts_with("x-forwarded-") || l.starts_with("host:"))
                .collect();
            seen.sort();
            let body = seen.join("|");
            let ok = format!(
                "HTTP/1.1 200 OK\r\ncontent-length: {}\r\n\r\n{body}",
                body.len()
            );
            s.write_all(ok.as_bytes()).await.ok().map(|()| s)
        })
        .await;
        let up = upstream(addr, Duration::from_secs(5));
        let peer = Arc::new(PeerAddr::new(([192, 0, 2, 7], 1).into()));
        for own in [true, false] {
            let req = Request::get("/x")
                .header("x-forwarded-for", "203.0.113.9")
                .header("x-forwarded-for", "198.51.100.1")
                .body(Full::new(Bytes::new()))
                .unwrap();
            let carried = Carried::new(Some(peer.clone()), own.then(OwnConnection::default));
            let r = call_carrying(up.clone(), req, carried).await.unwrap();
            assert_eq!(
                text(r).await,
                format!(
                    "host: {addr}|x-forwarded-for: 203.0.113.9, 198.51.100.1, 192.0.2.7|\
                     x-forwarded-proto: http"
                ),
                "own connection: {own}"
            );
        }
        // The first went over a connection of its own, the second through the pool.
        assert_eq!(up.inner.metrics.dials.get(), 1);
        server.abort();
    }

    /// One client connection's requests, answered or not, each get the whole timeout from
    /// their own start, and a silent Flagr is a 504 over an own connection as over the pool.
    #[tokio::test]
    async fn each_request_on_an_own_connection_gets_its_own_deadline() {
        use tokio::io::AsyncWriteExt;
        // Answers requests for /answer (after 150 ms: most of the timeout), never /silent ones.
        let (addr, server) = flagr_by_heads(|mut s, head| async move {
            if head.starts_with(b"GET /silent") {
                tokio::time::sleep(Duration::from_secs(30)).await;
                return None;
            }
            tokio::time::sleep(Duration::from_millis(150)).await;
            let ok = b"HTTP/1.1 200 OK\r\ncontent-length: 2\r\n\r\nok";
            s.write_all(ok).await.ok().map(|()| s)
        })
        .await;
        let up = upstream(addr, Duration::from_millis(400));
        let own = OwnConnection::default();
        let mut statuses = Vec::new();
        for path in [
            "/answer", "/answer", "/silent", "/answer", "/silent", "/answer",
        ] {
            let req = Request::get(path).body(Full::new(Bytes::new())).unwrap();
            let carried = Carried::new(None, Some(own.clone()));
            let r = call_carrying(up.clone(), req, carried).await.unwrap();
            statuses.push(r.status().as_u16());
            if r.status() == StatusCode::OK {
                assert_eq!(text(r).await, "ok");
            }
        }
        assert_eq!(statuses, [200, 200, 504, 200, 504, 200]);
        let timeouts = up
            .inner
            .metrics
            .upstream_errors
            .with_label_values(&["timeout"]);
        assert_eq!(timeouts.get(), 2);
        // Three connections: a timed-out answer's connection is never used again.
        assert_eq!(up.inner.metrics.dials.get(), 3);
        server.abort();
    }

    /// Flagr stalling in a body it has begun: the answer is cut after `upstream_timeout` of
    /// silence and counted, over an own connection and a pooled one; a body that keeps coming,
    /// though it takes longer than the timeout in all, is not cut.
    #[tokio::test]
    async fn a_body_flagr_stalls_in_is_cut_after_the_timeout_of_silence() {
        use http_body_util::BodyExt;
        use tokio::io::AsyncWriteExt;
        let (addr, server) = flagr_by_heads(|mut s, _| async move {
            let head = b"HTTP/1.1 200 OK\r\ncontent-length: 20\r\n\r\n";
            s.write_all(head).await.unwrap();
            // 12 of the 20 bytes, one every 100 ms (1.2 s in all), then silence.
            for _ in 0..12 {
                s.write_all(b"x").await.unwrap();
                tokio::time::sleep(Duration::from_millis(100)).await;
            }
            tokio::time::sleep(Duration::from_secs(30)).await;
            None
        })
        .await;
        let up = upstream(addr, Duration::from_secs(1));
        for own in [true, false] {
            let carried = Carried::new(None, own.then(OwnConnection::default));
            let r = call_carrying(up.clone(), get(), carried).await.unwrap();
            assert_eq!(r.status(), StatusCode::OK);
            let mut body = r.into_body();
            let mut got = 0;
            let read = async {
                loop {
                    match body.frame().await {
                        Some(Ok(f)) => got += f.into_data().map_or(0, |d| d.len()),
                        Some(Err(e)) => return e.to_string(),
                        None => return "ended".to_string(),
                    }
                }
            };
            let why = tokio::time::timeout(Duration::from_secs(10), read)
                .await
                .expect("a stalled body is never cut");
            assert!(why.contains("nothing more"), "own {own}: {why}");
            assert_eq!(got, 12, "own {own}");
        }
        let cut = up
            .inner
            .metrics
            .upstream_errors
            .with_label_values(&["body_timeout"]);
        assert_eq!(cut.get(), 2);
        server.abort();
    }
}
