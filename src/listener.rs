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
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
use hyper_util::server::graceful::GracefulShutdown;
use prometheus::{IntCounter, IntGauge};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{Notify, Semaphore};
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
    /// Open connections at most, shared by every accept loop of the listener; further ones are
    /// closed as soon as they are accepted.
    pub slots: Arc<Semaphore>,
    /// On shutdown, open connections get this long to finish their requests.
    pub grace: Duration,
    /// This loop's place among the loops accepting on one socket, if there are several.
    pub share: Option<Share>,
}

/// The accept loops of one socket, each with its count of open connections. A loop with more
/// open than another does not wait for the next connection until that is no longer so: new
/// connections go to the loops with the fewest (nginx's workers balance through their accept
/// mutex; `SO_REUSEPORT`, which would let the kernel spread them, is not used). Without this
/// the first loop awake takes whole bursts of connections and the other threads stay idle.
#[derive(Clone, Debug)]
pub struct Share {
    me: usize,
    open: Arc<[AtomicUsize]>,
    changed: Arc<Notify>,
}

/// A loop that has stopped: never the one with the fewest.
const RETIRED: usize = usize::MAX / 2;

impl Share {
    /// One share for each of `n` loops.
    pub fn split(n: usize) -> Vec<Share> {
        let open: Arc<[AtomicUsize]> = (0..n).map(|_| AtomicUsize::new(0)).collect();
        let changed = Arc::new(Notify::new());
        (0..n)
            .map(|me| Share {
                me,
                open: open.clone(),
                changed: changed.clone(),
            })
            .collect()
    }

    /// True when another loop has fewer connections open than this one.
    fn ahead(&self) -> bool {
        let mine = self.open[self.me].load(Ordering::Relaxed);
        self.open
            .iter()
            .enumerate()
            .any(|(i, o)| i != self.me && o.load(Ordering::Relaxed) < mine)
    }

    /// Counts a connection of this loop's until the guard is dropped.
    fn hold(&self) -> ShareHeld {
        self.open[self.me].fetch_add(1, Ordering::Relaxed);
        self.changed.notify_waiters();
        ShareHeld(self.clone())
    }

    /// This loop takes no more connections (it stopped, or could not start): the others stop
    /// leaving them to it.
    pub fn retire(&self) {
        self.open[self.me].store(RETIRED, Ordering::Relaxed);
        self.changed.notify_waiters();
    }
}

struct ShareHeld(Share);

impl Drop for ShareHeld {
    fn drop(&mut self) {
        self.0.open[self.0.me].fetch_sub(1, Ordering::Relaxed);
        self.0.changed.notify_waiters();
    }
}

/// Accepts on the listening socket (or its duplicate), once it is this loop's turn.
struct Acceptor {
    listener: TcpListener,
    share: Option<Share>,
}

impl Acceptor {
    async fn accept(&self) -> std::io::Result<(TcpStream, SocketAddr)> {
        let Some(s) = &self.share else {
            return self.listener.accept().await;
        };
        loop {
            let changed = s.changed.notified();
            let mut changed = std::pin::pin!(changed);
            // Listening before looking: a change in between is not missed.
            changed.as_mut().enable();
            if s.ahead() {
                changed.await;
                continue;
            }
            // Waiting for a connection stops when the counts change (a connection of another
            // loop ended): whose turn it is may have changed too. Accepting is cancel-safe.
            tokio::select! {
                biased;
                () = changed => continue,
                r = self.listener.accept() => return r,
            }
        }
    }
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
    // An h2 client that stops answering pings is let go.
    builder
        .http2()
        .timer(TokioTimer::new())
        .keep_alive_interval(Some(limits.header_read_timeout))
        .keep_alive_timeout(limits.header_read_timeout);
    let builder = Arc::new(builder);
    let open = limits.slots.clone();
    let graceful = GracefulShutdown::new();
    // Every connection's task, so the ones still open when the grace period ends can be cut:
    // they hold the service (and through it the tap), which must close for the drain to end.
    let mut tasks = tokio::task::JoinSet::new();
    let acceptor = Acceptor {
        listener,
        share: limits.share.clone(),
    };
    // One accept at a time, kept across the loop's turns (a connection ending is no reason to
    // start waiting again).
    let mut accept = Box::pin(acceptor.accept());
    loop {
        let (stream, peer) = tokio::select! {
            r = &mut accept => {
                accept.set(acceptor.accept());
                match r {
                    Ok(x) => x,
                    Err(e) => {
                        // EMFILE and friends: back off briefly instead of spinning.
                        tracing::warn!(error = %e, "accept failed");
                        tokio::time::sleep(Duration::from_millis(50)).await;
                        continue;
                    }
                }
            },
            Some(_) = tasks.join_next(), if !tasks.is_empty() => continue,
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
        let service = make_service(peer);
        let (builder, watcher, open, timeout) = (
            builder.clone(),
            graceful.watcher(),
            counters.open.clone(),
            limits.header_read_timeout,
        );
        open.inc();
        let held = limits.share.as_ref().map(Share::hold);
        tasks.spawn(async move {
            // Until its first bytes tell HTTP/1.1 from h2, hyper holds no timer on a connection:
            // a client that sends nothing would keep its place for ever.
            if first_bytes(&stream, timeout).await {
                let conn = builder
                    .serve_connection(TokioIo::new(stream), service)
                    .into_owned();
                if let Err(e) = watcher.watch(conn).await {
                    tracing::debug!(error = %e, %peer, "client connection ended with an error");
                }
            } else {
                tracing::debug!(%peer, "client sent no request in time: closed");
            }
            open.dec();
            drop((permit, held));
        });
    }
    drop(accept);
    if let Some(s) = &acceptor.share {
        s.retire();
    }
    drop(acceptor);
    let drained = tokio::time::timeout(limits.grace, graceful.shutdown())
        .await
        .is_ok();
    // Past the grace period: what is still open is cut.
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    drained
}

/// The h2 preface; a client that sends a prefix of it has not yet said which protocol it speaks.
const H2_PREFACE: &[u8] = b"PRI * HTTP/2.0\r\n\r\nSM\r\n\r\n";

/// True once the client has sent enough to choose HTTP/1.1 or h2, false when it has not within
/// `timeout` (or hung up).
async fn first_bytes(stream: &tokio::net::TcpStream, timeout: Duration) -> bool {
    let decided = async {
        let mut buf = [0u8; 24];
        loop {
            let n = stream.peek(&mut buf).await.unwrap_or(0);
            if n == 0 {
                return false;
            }
            if n >= H2_PREFACE.len() || !H2_PREFACE.starts_with(&buf[..n]) {
                return true;
            }
            // A partial h2 preface: wait for the rest (peek returns what is there at once).
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
    };
    tokio::time::timeout(timeout, decided)
        .await
        .unwrap_or(false)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_loop_with_more_connections_than_another_is_ahead() {
        let s = Share::split(3);
        assert!(!s[0].ahead());
        let a = s[0].hold();
        assert!(s[0].ahead());
        assert!(!s[1].ahead());
        let (b, c) = (s[1].hold(), s[2].hold());
        assert!(!s[0].ahead(), "level");
        drop(b);
        assert!(s[0].ahead() && s[2].ahead() && !s[1].ahead());
        drop((a, c));
        assert!(s.iter().all(|x| !x.ahead()));
        let _a = s[0].hold();
        s[1].retire();
        s[2].retire();
        assert!(!s[0].ahead(), "retired loops are never the ones with fewer");
    }

    /// A loop answering every request with `name`, on `listener`, counted in `share`.
    fn serving(
        listener: std::net::TcpListener,
        share: Share,
        name: &'static str,
        stop: &CancellationToken,
    ) -> tokio::task::JoinHandle<bool> {
        let r = crate::metrics::Registry::default();
        let counters = ListenerMetrics::new(&r).counters(Listener::Proxy);
        let limits = Limits {
            header_read_timeout: Duration::from_secs(5),
            slots: Arc::new(Semaphore::new(8)),
            grace: Duration::from_secs(1),
            share: Some(share),
        };
        let make = move |_| {
            hyper::service::service_fn(move |_req: Request<Incoming>| async move {
                Ok::<_, std::convert::Infallible>(Response::new(http_body_util::Full::new(
                    bytes::Bytes::from_static(name.as_bytes()),
                )))
            })
        };
        let listener = TcpListener::from_std(listener).unwrap();
        tokio::spawn(serve(listener, make, limits, counters, stop.clone()))
    }

    /// One request on a new connection that the client closes; the answer's body.
    async fn ask(addr: SocketAddr) -> String {
        tokio::task::spawn_blocking(move || {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            // A loop that never took it would leave this read waiting: fail instead.
            s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
            s.write_all(b"GET / HTTP/1.1\r\nhost: x\r\nconnection: close\r\n\r\n")
                .unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).unwrap();
            out.rsplit("\r\n\r\n")
                .next()
                .unwrap_or_default()
                .to_string()
        })
        .await
        .unwrap()
    }

    fn socket() -> std::net::TcpListener {
        let l = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
        l.set_nonblocking(true).unwrap();
        l
    }

    /// Two loops on one socket: a new connection goes to the one with fewer open (the one
    /// ahead does not wait for it).
    #[tokio::test]
    async fn a_new_connection_goes_to_the_loop_with_fewer_open() {
        let shares = Share::split(2);
        let _held = shares[0].hold();
        let (l, stop) = (socket(), CancellationToken::new());
        let addr = l.local_addr().unwrap();
        let dup = l.try_clone().unwrap();
        let a = serving(l, shares[0].clone(), "busy", &stop);
        let b = serving(dup, shares[1].clone(), "idle", &stop);
        for _ in 0..5 {
            assert_eq!(ask(addr).await, "idle");
        }
        stop.cancel();
        assert!(a.await.unwrap() && b.await.unwrap());
    }

    /// A loop that stopped (or never started) is not left connections: the others take them.
    #[tokio::test]
    async fn a_retired_loop_is_not_waited_for() {
        let shares = Share::split(2);
        // Loop 0 holds a connection, loop 1 none, but loop 1 is gone.
        let _held = shares[0].hold();
        shares[1].retire();
        let (l, stop) = (socket(), CancellationToken::new());
        let addr = l.local_addr().unwrap();
        let served = serving(l, shares[0].clone(), "served", &stop);
        assert_eq!(ask(addr).await, "served");
        stop.cancel();
        assert!(served.await.unwrap());
    }
}
