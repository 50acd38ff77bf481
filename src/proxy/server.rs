//! The proxy's listeners: [`crate::listener::serve`] with the [`Proxy`] stack behind every
//! connection, and the peer's address in each request's extensions, on threads of its own.
//!
//! In: bound listeners (one per thread, one address), a stack per thread, a shutdown token.
//! Out: connections served by the stack; a task that ends when every thread has drained.
//! Never: lets one connection's error or panic reach another, or the loop; moves a request to
//! another thread (each thread reads, forwards and answers its connections itself).
//!
//! Each thread runs a current-thread runtime with its own listener (`SO_REUSEPORT`: the kernel
//! spreads connections over them) and its own upstream pool, as nginx's workers do: no
//! wake-ups or work stealing across threads on the request path, which costs a multi-threaded
//! runtime about an eighth of the proxy's CPU per request (BENCHMARKS.md).

use std::net::SocketAddr;

use hyper::body::Incoming;
use hyper::service::service_fn;
use tokio::net::TcpListener;
use tokio::task::JoinHandle;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::{OwnConnection, PeerAddr, Proxy, TapBody};
use crate::listener::{Counters, Limits};

/// `n` listening sockets on `addr`, sharing its port (the first one's, when `addr` asks for
/// any). Nonblocking, ready for [`start`].
pub fn bind(addr: SocketAddr, n: usize) -> std::io::Result<Vec<std::net::TcpListener>> {
    let mut out: Vec<std::net::TcpListener> = Vec::with_capacity(n);
    let mut at = addr;
    for _ in 0..n.max(1) {
        let s = socket2::Socket::new(
            socket2::Domain::for_address(at),
            socket2::Type::STREAM,
            Some(socket2::Protocol::TCP),
        )?;
        // As tokio's bind does: a restart need not wait out TIME_WAIT.
        s.set_reuse_address(true)?;
        s.set_reuse_port(true)?;
        s.set_nonblocking(true)?;
        s.bind(&at.into())?;
        s.listen(1024)?;
        let l: std::net::TcpListener = s.into();
        at = l.local_addr()?;
        out.push(l);
    }
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
    let mut done = Vec::with_capacity(listeners.len());
    for (i, (listener, proxy)) in listeners.into_iter().enumerate() {
        let rt = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()?;
        let (tx, rx) = tokio::sync::oneshot::channel();
        let (limits, counters, shutdown) = (limits.clone(), counters.clone(), shutdown.clone());
        std::thread::Builder::new()
            .name(format!("flaghook-proxy-{i}"))
            .spawn(move || {
                let drained = rt.block_on(async move {
                    match TcpListener::from_std(listener) {
                        Ok(l) => serve(l, proxy, limits, counters, shutdown).await,
                        Err(e) => {
                            tracing::error!(error = %e, "proxy thread cannot use its listener");
                            false
                        }
                    }
                });
                let _ = tx.send(drained);
            })?;
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
        let peer = PeerAddr::new(peer);
        let own = OwnConnection::<TapBody<Incoming>>::default();
        service_fn(move |mut req: http::Request<Incoming>| {
            req.extensions_mut().insert(peer.clone());
            // h2 requests overlap on one connection: they share the pool instead.
            if req.version() != http::Version::HTTP_2 {
                req.extensions_mut().insert(own.clone());
            }
            proxy.clone().oneshot(req)
        })
    };
    crate::listener::serve(listener, make, limits, counters, shutdown).await
}

#[cfg(test)]
mod tests {
    /// Every thread's socket listens on the one port the first was given, and each accepts.
    #[test]
    fn the_threads_share_one_port() {
        let ls = super::bind(([127, 0, 0, 1], 0).into(), 3).unwrap();
        let at = ls[0].local_addr().unwrap();
        assert_ne!(at.port(), 0);
        for l in &ls {
            assert_eq!(l.local_addr().unwrap(), at);
        }
        // Connections are spread over the sockets; each takes what reaches it.
        let clients: Vec<_> = (0..64)
            .map(|_| std::net::TcpStream::connect(at).unwrap())
            .collect();
        let mut accepted = 0;
        for l in &ls {
            while l.accept().is_ok() {
                accepted += 1;
            }
        }
        assert_eq!(accepted, clients.len());
    }
}
