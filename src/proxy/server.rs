//! The proxy's listener: [`crate::listener::serve`] with a [`Proxy`] behind every connection.
//!
//! In: a bound listener and a shutdown token. Out: connections served by [`Proxy`].
//! Never: lets one connection's error or panic reach another, or the loop.

use std::convert::Infallible;

use hyper::service::service_fn;
use tokio::net::TcpListener;
use tokio_util::sync::CancellationToken;

use super::service::Proxy;
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
        service_fn(move |req| {
            let proxy = proxy.clone();
            async move { Ok::<_, Infallible>(proxy.handle(req, peer).await) }
        })
    };
    crate::listener::serve(listener, make, limits, counters, shutdown).await
}
