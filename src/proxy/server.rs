//! The proxy's listener: [`crate::listener::serve`] with the [`Proxy`] stack behind every
//! connection, and the peer's address in each request's extensions.
//!
//! In: a bound listener and a shutdown token. Out: connections served by the stack.
//! Never: lets one connection's error or panic reach another, or the loop.

use hyper::service::service_fn;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;
use tower::ServiceExt;

use super::{PeerAddr, Proxy};
use crate::listener::{Counters, Limits};

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
        service_fn(move |mut req: http::Request<hyper::body::Incoming>| {
            req.extensions_mut().insert(PeerAddr(peer));
            proxy.clone().oneshot(req)
        })
    };
    crate::listener::serve(listener, make, limits, counters, shutdown).await
}
