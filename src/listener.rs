//! HTTP listeners: the one accept loop the proxy and the admin listener both run on.
//!
//! In: a bound TCP listener, a service per connection, [`Limits`] and a shutdown token.
//! Out: connections served as HTTP/1.1 or h2c, each client held to the header-read timeout,
//! at most `max_connections` open at once (more are closed at once and counted), and a
//! graceful shutdown bounded by `grace`.
//! Never: lets one connection's error reach another or the loop, or waits for a client past
//! the grace period.

use std::error::Error as StdError;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use prometheus::{IntCounter, IntGauge};
use tokio::net::TcpListener;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

type BoxError = Box<dyn StdError + Send + Sync>;

crate::metrics::labels! {
    /// Which listener.
    pub enum Listener { Proxy => "proxy", Admin => "admin" }
}

/// Both listeners' connection metrics.
pub struct ListenerMetrics {
    open: prometheus::IntGaugeVec,
    refused: prometheus::IntCounterVec,
}

impl ListenerMetrics {
    pub fn new(r: &crate::metrics::Registry) -> Self {
        let m = Self {
            open: r.gauge_vec(
                "flaghook_connections_open",
                "Client connections open right now, by listener.",
                &["listener"],
            ),
            refused: r.counter_vec(
                "flaghook_connections_refused_total",
                "Connections closed at once because the listener held its maximum, by listener.",
                &["listener"],
            ),
        };
        for l in Listener::ALL {
            m.counters(*l);
        }
        m
    }

    /// One listener's handles, resolved once.
    pub fn counters(&self, l: Listener) -> Counters {
        Counters {
            open: self.open.with_label_values(&[l.as_str()]),
            refused: self.refused.with_label_values(&[l.as_str()]),
        }
    }
}

/// What a listener counts.
#[derive(Clone)]
pub struct Counters {
    pub open: IntGauge,
    pub refused: IntCounter,
}

/// What bounds one listener.
#[derive(Clone, Debug)]
pub struct Limits {
    /// A client must send its request headers within this time (also between keep-alive
    /// requests), or its connection is closed.
    pub header_read_timeout: Duration,
    /// Open connections at most; further ones are closed as soon as they are accepted.
    pub max_connections: usize,
    /// On shutdown, open connections get this long to finish their requests.
    pub grace: Duration,
}

/// Serves until `shutdown` fires, then lets in-flight requests finish for up to `grace`.
/// Returns false when the grace period ran out with connections still open.
pub async fn serve<F, S, B>(
    listener: TcpListener,
    make_service: F,
    limits: Limits,
    counters: Counters,
    shutdown: CancellationToken,
) -> bool
where
    F: Fn(SocketAddr) -> S,
    S: hyper::service::Service<Request<Incoming>, Response = Response<B>> + Send + 'static,
    S::Future: Send + 'static,
    S::Error: Into<BoxError>,
    B: http_body::Body + Send + 'static,
    B::Data: Send,
    B::Error: Into<BoxError>,
{
    let mut builder = auto::Builder::new(TokioExecutor::new());
    builder
        .http1()
        .timer(TokioTimer::new())
        .header_read_timeout(limits.header_read_timeout)
        .keep_alive(true)
        // One write per response instead of a writev of headers and body: fewer syscalls.
        .writev(false);
    builder.http2().timer(TokioTimer::new());
    let open = Arc::new(Semaphore::new(limits.max_connections));
    let graceful = GracefulShutdown::new();
    loop {
        let (stream, peer) = tokio::select! {
            r = listener.accept() => match r {
                Ok(x) => x,
                Err(e) => {
                    // EMFILE and friends: back off briefly instead of spinning.
                    tracing::warn!(error = %e, "accept failed");
                    tokio::time::sleep(Duration::from_millis(50)).await;
                    continue;
                }
            },
            () = shutdown.cancelled() => break,
        };
        let Ok(permit) = open.clone().try_acquire_owned() else {
            // Closing at once keeps the backlog moving; waiting would let idle clients hold
            // everyone else out.
            counters.refused.inc();
            tracing::debug!(%peer, "connection refused: listener at max_connections");
            continue;
        };
        let _ = stream.set_nodelay(true);
        let conn = builder
            .serve_connection(TokioIo::new(stream), make_service(peer))
            .into_owned();
        let conn = graceful.watch(conn);
        let open = counters.open.clone();
        open.inc();
        tokio::spawn(async move {
            if let Err(e) = conn.await {
                tracing::debug!(error = %e, %peer, "client connection ended with an error");
            }
            open.dec();
            drop(permit);
        });
    }
    drop(listener);
    tokio::time::timeout(limits.grace, graceful.shutdown())
        .await
        .is_ok()
}
