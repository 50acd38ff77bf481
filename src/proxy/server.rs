//! The proxy's listeners: [`crate::listener::serve`] with the [`Proxy`] stack behind every
//! connection, and the peer's address (and its own connection to Flagr) in what each request
//! [`Carried`], on threads of its own.
//!
//! In: bound listeners (one per thread, one address), a stack per thread, a shutdown token.
//! Out: connections served by the stack; a task that ends when every thread has drained.
//! Never: lets one connection's error or panic reach another, or the loop; moves a request to
//! another thread (each thread reads, forwards and answers its connections itself).
//!
//! Each thread runs a current-thread runtime accepting on the one listening socket (a duplicate
//! of it registered with its own event loop; a thread with more connections open than another
//! leaves it the next one, [`crate::listener::Share`]) with its own upstream connections, as
//! nginx's workers do: no wake-ups or work stealing across threads on the request path, which costs a multi-threaded runtime about an eighth of the
//! proxy's CPU per request (BENCHMARKS.md). Not `SO_REUSEPORT`: with it, another process of
//! the same user could bind the port too and be handed a share of the clients.

use std::convert::Infallible;
use std::future::Ready;
use std::net::SocketAddr;
use std::sync::Arc;
use std::task::{Context, Poll, Waker};

use futures_util::future::Either;
use hyper::body::Incoming;
use hyper::service::service_fn;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower::Service;

use super::{error_response, Carried, OwnConnection, PeerAddr, Proxy, TapBody, UpstreamBody};
use crate::listener::{Counters, Limits, Share};

/// One listening socket on `addr` (an address in use is an error, as for any listener), and
/// `n - 1` duplicates of it, nonblocking, ready for [`start`].
pub fn bind(addr: SocketAddr, n: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    let first = std::net::TcpListener::bind(addr)?;
    first.set_nonblocking(true)?;
    let mut out = Vec::with_capacity(n.max(1));
    for _ in 1..n.max(1) {
        out.push(first.try_clone()?);
    }
    out.push(first);
    Ok(out)
}

/// Serves each listener with its stack on a thread of its own until `shutdown` fires, then
/// lets in-flight requests finish for up to the grace period. The task's answer is false when
/// some thread ran out of grace with connections still open.
pub fn start(
    listeners: Vec<(std::net::TcpListener, Proxy)>,
    limits: Limits,
    counters: Counters,
    shutdown: CancellationToken,
) -> std::io::Result<JoinHandle<bool>> {
    // Every runtime first: a failure then leaves nothing running.
    let runtimes = listeners
        .iter()
        .map(|_| {
            tokio::runtime::Builder::new_current_thread()
                .enable_all()
                // Only a host name in proxy.upstream uses it (resolving on each new connection).
                .max_blocking_threads(4)
                .build()
        })
        .collect::<std::io::Result<Vec<_>>>()?;
    let mut done = Vec::with_capacity(listeners.len());
    let n = listeners.len();
    let shares = Share::split(n);
    for (i, (((listener, proxy), rt), share)) in
        listeners.into_iter().zip(runtimes).zip(shares).enumerate()
    {
        let (tx, rx) = tokio::sync::oneshot::channel();
        let limits = Limits {
            // One loop alone has no one to take turns with.
            share: (n > 1).then_some(share),
            ..limits.clone()
        };
        let (counters, stop) = (counters.clone(), shutdown.clone());
        let spawned = std::thread::Builder::new()
            .name(format!("flaghook-proxy-{i}"))
            .spawn(move || {
                let drained = rt.block_on(async move {
                    match TcpListener::from_std(listener) {
                        Ok(l) => serve(l, proxy, limits, counters, stop).await,
                        Err(e) => {
                            tracing::error!(error = %e, "proxy thread cannot use its listener");
                            if let Some(s) = &limits.share {
                                s.retire();
                            }
                            false
                        }
                    }
                });
                // Drained only once the runtime is gone: connection tasks outside the accept
                // loop (h2 streams, connections to Flagr) may still hold tapped bodies. A name
                // lookup still running in its blocking pool is not waited for past a second.
                rt.shutdown_timeout(std::time::Duration::from_secs(1));
                let _ = tx.send(drained);
            });
        if let Err(e) = spawned {
            // The threads already running stop with everything else.
            shutdown.cancel();
            return Err(e);
        }
        done.push(rx);
    }
    Ok(tokio::spawn(async move {
        let mut drained = true;
        for rx in done {
            // A thread that died without answering did not drain.
            drained &= rx.await.unwrap_or(false);
        }
        drained
    }))
}

/// Serves until `shutdown` fires, then lets in-flight requests finish for up to the grace
/// period. Returns false when it ran out with connections still open.
pub async fn serve(
    listener: TcpListener,
    proxy: Proxy,
    limits: Limits,
    counters: Counters,
    shutdown: CancellationToken,
) -> bool {
    let make = move |peer| {
        let proxy = proxy.clone();
        let peer = Arc::new(PeerAddr::new(peer));
        let own = OwnConnection::default();
        service_fn(move |req: http::Request<Incoming>| {
            // Only a client that keeps its connection gets one to Flagr to keep: h2 requests
            // overlap (and HTTP/1.0 or `Connection: close` ones end theirs), so they use the pool.
            let keeps = req.version() == http::Version::HTTP_11 && !closes(req.headers());
            let carried = Carried::new(Some(peer.clone()), keeps.then(|| own.clone()));
            let mut proxy = proxy.clone();
            carried.during(|| call_ready(&mut proxy, req))
        })
    };
    crate::listener::serve(listener, make, limits, counters, shutdown).await
}

/// What the stack answers a request with.
type Answer = Result<http::Response<TapBody<UpstreamBody>>, Infallible>;

/// The stack's answer to `req`, called at once so every layer's `call` runs while the request's
/// [`Carried`] is in place. No layer holds a limit, so the stack is always ready; that is
/// checked without a waker, and a stack that is not (a layer that waits, added later) answers
/// 503 rather than calling before it is ready.
fn call_ready(
    proxy: &mut Proxy,
    req: http::Request<Incoming>,
) -> Either<<Proxy as Service<http::Request<Incoming>>>::Future, Ready<Answer>> {
    match proxy.poll_ready(&mut Context::from_waker(Waker::noop())) {
        Poll::Ready(Ok(())) => Either::Left(proxy.call(req)),
        Poll::Pending => {
            tracing::error!("the proxy stack was not ready for a request");
            let busy = error_response(
                http::StatusCode::SERVICE_UNAVAILABLE,
                "not_ready",
                "flaghook could not take the request",
            );
            let answer = busy.map(|b| TapBody::passthrough(http_body_util::Either::Right(b)));
            Either::Right(std::future::ready(Ok(answer)))
        }
    }
}

/// True when the client said this is its last request (`Connection: close`).
fn closes(h: &http::HeaderMap) -> bool {
    h.get_all(http::header::CONNECTION).iter().any(|v| {
        v.to_str()
            .is_ok_and(|v| v.split(',').any(|t| t.trim().eq_ignore_ascii_case("close")))
    })
}

#[cfg(test)]
mod tests {
    #[test]
    fn a_closing_client_is_seen_in_any_connection_token() {
        let mut h = http::HeaderMap::new();
        assert!(!super::closes(&h));
        h.append("connection", "keep-alive".parse().unwrap());
        assert!(!super::closes(&h));
        h.append("connection", "x-hop, Close".parse().unwrap());
        assert!(super::closes(&h));
    }

    /// Every thread accepts on the one socket; the address stays exclusive, as for any listener.
    #[test]
    fn the_threads_share_one_socket_and_the_port_stays_exclusive() {
        let ls = super::bind(([127, 0, 0, 1], 0).into(), 3).unwrap();
        assert_eq!(ls.len(), 3);
        let at = ls[0].local_addr().unwrap();
        assert_ne!(at.port(), 0);
        for l in &ls {
            assert_eq!(l.local_addr().unwrap(), at);
        }
        let e = super::bind(at, 2).unwrap_err();
        assert_eq!(e.kind(), std::io::ErrorKind::AddrInUse);
        // A connection to the port is there for whichever duplicate accepts first.
        let _client = std::net::TcpStream::connect(at).unwrap();
        let accepted = (0..1000).any(|_| {
            let ok = ls[2].accept().is_ok();
            if !ok {
                std::thread::sleep(std::time::Duration::from_millis(10));
            }
            ok
        });
        assert!(accepted, "nothing accepted within 10 s");
    }
}
