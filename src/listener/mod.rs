//! HTTP listeners: the one accept loop the proxy and the admin listener both run on.
//!
//! In: a bound TCP listener, a service per connection, [`Limits`] and a shutdown token.
//! Out: connections served as HTTP/1.1 or h2c, each client held to the header-read timeout,
//! at most `max_connections` open at once (more are closed at once and counted), and a
//! graceful shutdown bounded by `grace`.
//! Never: lets one connection's error reach another or the loop, or waits for a client past
//! the grace period.

mod watch;

use std::error::Error as StdError;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use http::{Request, Response};
use hyper::body::Incoming;
use hyper_util::rt::{TokioExecutor, TokioIo, TokioTimer};
use hyper_util::server::conn::auto;
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
    timed_out: prometheus::IntCounterVec,
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
            timed_out: r.counter_vec(
                "flaghook_connections_timed_out_total",
                "Client connections closed because no request was in flight for \
                 header_read_timeout (idle, silent, or stalled in a request head; HTTP/1.1 and \
                 h2), by listener.",
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
            timed_out: self.timed_out.with_label_values(&[l.as_str()]),
        }
    }
}

/// What a listener counts.
#[derive(Clone)]
pub struct Counters {
    pub open: IntGauge,
    pub refused: IntCounter,
    pub timed_out: IntCounter,
}

/// What bounds one listener.
#[derive(Clone, Debug)]
pub struct Limits {
    /// A connection with no request in flight for this long (silent, idle between requests,
    /// or stalled in a request head) is closed: checked every half of it, gracefully 1 to 1.5
    /// times it after the connection's last request ended (or it opened), cut by 2 times it
    /// if it does not go then.
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
    // No timer and no header timeout for HTTP/1.1: hyper would arm a timer per request for
    // it (and with a timer it defaults to 30 s); the connection's watch keeps that timeout
    // instead (see `watch`).
    builder
        .http1()
        .header_read_timeout(None)
        .keep_alive(true)
        // A client that sent its whole request gets its answer even if it closes its side
        // meanwhile, and hyper does not read ahead while a request is in flight: that read
        // needed a new read buffer every time (the request in flight still holds the old one),
        // about 5 % of the proxy's instructions per request.
        .half_close(true)
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
    let closing = Arc::new(watch::Closing::default());
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
        let activity = closing.activity();
        let service = watch::Tracked::new(make_service(peer), activity.clone());
        let conn = builder
            .serve_connection(TokioIo::new(stream), service)
            .into_owned();
        // Until its first bytes tell HTTP/1.1 from h2 hyper holds no timer on a connection,
        // and an HTTP/1.1 one holds none at all: the watch closes it when it idles.
        let conn = watch::Watched::new(
            conn,
            |c| c.graceful_shutdown(),
            activity,
            closing.clone(),
            limits.header_read_timeout,
            counters.timed_out.clone(),
        );
        let open = counters.open.clone();
        open.inc();
        let held = limits.share.as_ref().map(Share::hold);
        tasks.spawn(async move {
            match conn.await {
                watch::Outcome::Done(Ok(())) => {}
                watch::Outcome::Done(Err(e)) => {
                    tracing::debug!(error = %e, %peer, "client connection ended with an error");
                }
                watch::Outcome::Idle => {
                    tracing::debug!(%peer, "client connection closed: no request in time");
                }
                watch::Outcome::Cut => {
                    tracing::debug!(%peer, "client connection cut: it idled on after shutdown began");
                }
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
    closing.close_all();
    let drained = tokio::time::timeout(limits.grace, async {
        while tasks.join_next().await.is_some() {}
    })
    .await
    .is_ok();
    // Past the grace period: what is still open is cut.
    tasks.abort_all();
    while tasks.join_next().await.is_some() {}
    drained
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

    /// A listener whose clients must send a request head within `timeout`, answering each
    /// request after `delay`; its counters and the task (true: drained within `grace`).
    fn watched(
        timeout: Duration,
        grace: Duration,
        delay: Duration,
        stop: &CancellationToken,
    ) -> (SocketAddr, Counters, tokio::task::JoinHandle<bool>) {
        let l = socket();
        let addr = l.local_addr().unwrap();
        let counters =
            ListenerMetrics::new(&crate::metrics::Registry::default()).counters(Listener::Proxy);
        let limits = Limits {
            header_read_timeout: timeout,
            slots: Arc::new(Semaphore::new(8)),
            grace,
            share: None,
        };
        let make = move |_| {
            hyper::service::service_fn(move |_req: Request<Incoming>| async move {
                tokio::time::sleep(delay).await;
                Ok::<_, std::convert::Infallible>(Response::new(http_body_util::Full::new(
                    bytes::Bytes::from_static(b"answer"),
                )))
            })
        };
        let task = tokio::spawn(serve(
            TcpListener::from_std(l).unwrap(),
            make,
            limits,
            counters.clone(),
            stop.clone(),
        ));
        (addr, counters, task)
    }

    /// Sends `bytes` on `s` and reads what comes back until the answer's body ("answer") or
    /// the end of the connection; the text read and whether the connection ended.
    fn exchange(s: &mut std::net::TcpStream, bytes: &[u8]) -> (String, bool) {
        use std::io::{Read, Write};
        s.write_all(bytes).unwrap();
        // A connection held open past any timeout here fails the test instead of hanging it.
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let (mut got, mut buf) = (Vec::new(), [0u8; 1024]);
        loop {
            match s.read(&mut buf) {
                Ok(0) => return (String::from_utf8_lossy(&got).into_owned(), true),
                Ok(n) => {
                    got.extend_from_slice(&buf[..n]);
                    if got.ends_with(b"answer") {
                        return (String::from_utf8_lossy(&got).into_owned(), false);
                    }
                }
                Err(e)
                    if matches!(
                        e.kind(),
                        std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut
                    ) =>
                {
                    panic!("connection held open: {e}")
                }
                // Reset by the server: closed too.
                Err(_) => return (String::from_utf8_lossy(&got).into_owned(), true),
            }
        }
    }

    const GET: &[u8] = b"GET / HTTP/1.1\r\nhost: x\r\n\r\n";

    /// The header timeout cuts a client stalled in its head and a kept-alive client that
    /// idles, each counted, but never a request whose answer takes longer than the timeout.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn idle_and_stalled_clients_are_closed_but_slow_answers_are_not() {
        let stop = CancellationToken::new();
        // Long enough that a slow machine's client thread sends its request in time; the
        // bounds themselves are checked with paused time in `watch`'s tests.
        let timeout = Duration::from_secs(1);
        let (addr, counters, task) = watched(timeout, Duration::from_secs(5), timeout * 3, &stop);
        let (answer, idled, stalled) = tokio::task::spawn_blocking(move || {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            let answer = exchange(&mut s, GET);
            // Kept alive, then silent: closed.
            let idled = exchange(&mut s, b"");
            let mut h = std::net::TcpStream::connect(addr).unwrap();
            let stalled = exchange(&mut h, b"GET / HTTP/1.1\r\nhost: x\r\n");
            (answer, idled, stalled)
        })
        .await
        .unwrap();
        assert!(
            answer.0.starts_with("HTTP/1.1 200") && !answer.1,
            "{answer:?}"
        );
        assert_eq!(idled, (String::new(), true));
        assert_eq!(stalled, (String::new(), true));
        assert_eq!(counters.timed_out.get(), 2);
        stop.cancel();
        assert!(task.await.unwrap());
    }

    /// A connection that never sends a byte is closed and counted too (before its first
    /// bytes hyper does not know its protocol and holds no timer of its own).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_silent_connection_is_closed_and_counted() {
        let stop = CancellationToken::new();
        let (addr, counters, task) = watched(
            Duration::from_millis(200),
            Duration::from_secs(5),
            Duration::ZERO,
            &stop,
        );
        let silent = tokio::task::spawn_blocking(move || {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            exchange(&mut s, b"")
        })
        .await
        .unwrap();
        assert_eq!(silent, (String::new(), true));
        assert_eq!(counters.timed_out.get(), 1);
        stop.cancel();
        assert!(task.await.unwrap());
    }

    /// A client that closes its side once its request is sent (half-close) still gets the
    /// answer, even one slower than the header timeout.
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn a_half_closed_client_gets_its_answer() {
        let stop = CancellationToken::new();
        let timeout = Duration::from_secs(1);
        let (addr, counters, task) = watched(timeout, Duration::from_secs(5), timeout * 2, &stop);
        let got = tokio::task::spawn_blocking(move || {
            use std::io::{Read, Write};
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            s.write_all(GET).unwrap();
            s.shutdown(std::net::Shutdown::Write).unwrap();
            s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
            let mut out = String::new();
            s.read_to_string(&mut out).map(|_| out)
        })
        .await
        .unwrap()
        .unwrap();
        assert!(
            got.starts_with("HTTP/1.1 200") && got.ends_with("answer"),
            "{got}"
        );
        assert_eq!(counters.timed_out.get(), 0);
        stop.cancel();
        assert!(task.await.unwrap());
    }

    /// On shutdown an idle kept-alive connection is closed at once, not held for the grace
    /// period (the header timeout is far longer than the grace here).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn shutdown_closes_idle_connections_within_the_grace_period() {
        let stop = CancellationToken::new();
        let (addr, counters, task) = watched(
            Duration::from_secs(600),
            Duration::from_secs(10),
            Duration::ZERO,
            &stop,
        );
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        let (_s, answer) = tokio::task::spawn_blocking(move || {
            let a = exchange(&mut s, GET);
            (s, a)
        })
        .await
        .unwrap();
        assert!(answer.0.starts_with("HTTP/1.1 200"), "{answer:?}");
        stop.cancel();
        // Without the listener's close reaching it, the idle connection would hold the drain
        // past the grace period (false).
        assert!(task.await.unwrap(), "the idle connection held the drain");
        assert_eq!(counters.timed_out.get(), 0);
    }
}
