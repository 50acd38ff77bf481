//! What a request carries down the stack besides itself: the client's address and its
//! connection's own connection to Flagr (put in by the listener's service) and the request's
//! route (put in by `Classify`). It lives beside the innermost service, which takes the own
//! connection out of it, so every layer above can read it without a cycle.
//!
//! In: one [`Carried`] per request, in place while the stack's `call`s run
//! ([`Carried::during`]); the route set once by `Classify`. Out: read by the layers below in
//! their `call`. Never: read from a future or a body (they run after it is gone: what they
//! need, they take at `call`; a layer that calls the next one from its future takes it all
//! along, [`Carried::take_along`]).
//!
//! A scoped thread-local, not one of `http`'s extensions: those box every value and hash it
//! into a map made per request, three allocations and their frees, about 3 % of the proxy's
//! instructions per request. A `call` runs to its end on the thread that made it, so the value
//! is there for every layer's `call` and for nothing after.

use std::cell::Cell;
use std::net::SocketAddr;
use std::sync::Arc;

use http::HeaderValue;

use super::wire::OwnConnection;
use crate::flagr::Route;

scoped_tls::scoped_thread_local!(static CARRIED: Carried);

/// The request's facts; none of them where nothing put one in (tests, a layer used on its own,
/// a call outside [`Carried::during`]).
#[derive(Default)]
pub struct Carried {
    peer: Option<Arc<PeerAddr>>,
    /// Only for a keep-alive HTTP/1.1 client (see the listener's service).
    own: Cell<Option<OwnConnection>>,
    route: Cell<Option<Route>>,
}

impl Carried {
    pub fn new(peer: Option<Arc<PeerAddr>>, own: Option<OwnConnection>) -> Self {
        Self {
            peer,
            own: Cell::new(own),
            route: Cell::new(None),
        }
    }

    /// Carrying `route` already, as `Classify` leaves it.
    #[cfg(test)]
    pub(crate) fn routed(route: Route) -> Self {
        let c = Self::default();
        c.route.set(Some(route));
        c
    }

    /// Runs `call` (the stack's `call` for the request) with `self` as what the request carries.
    pub fn during<R>(&self, call: impl FnOnce() -> R) -> R {
        CARRIED.set(self, call)
    }

    /// What the current request carries, taken along for a layer that calls the one below it
    /// later, from its future (the own connection moves with it).
    pub fn take_along() -> Carried {
        Self::with(|c| {
            Some(Carried {
                peer: c.peer.clone(),
                own: Cell::new(c.own.take()),
                route: Cell::new(c.route.get()),
            })
        })
        .unwrap_or_default()
    }

    fn with<R>(read: impl FnOnce(&Carried) -> Option<R>) -> Option<R> {
        if CARRIED.is_set() {
            CARRIED.with(read)
        } else {
            None
        }
    }

    /// The request's route, when `Classify` has put it in.
    pub fn route() -> Option<Route> {
        Self::with(|c| c.route.get())
    }

    /// Puts in the request's route (nothing outside [`Carried::during`]).
    pub fn set_route(route: Route) {
        Self::with(|c| {
            c.route.set(Some(route));
            Some(())
        });
    }

    /// The client connection's own connection to Flagr, taken: one request uses it.
    pub fn take_own() -> Option<OwnConnection> {
        Self::with(|c| c.own.take())
    }

    /// The client's IP as a header value.
    pub fn peer_ip() -> Option<HeaderValue> {
        Self::with(|c| c.peer.as_ref().map(|p| p.ip.clone()))
    }

    /// The client's address, or the unspecified address when the request carries none.
    pub fn peer_addr() -> SocketAddr {
        Self::with(|c| c.peer.as_ref().map(|p| p.addr)).unwrap_or_else(|| ([0, 0, 0, 0], 0).into())
    }
}

/// `svc`'s answer to `req` with `carried` in place during its `call`, as the listener's service
/// calls the stack.
#[cfg(test)]
pub(crate) async fn call_carrying<S, R>(
    mut svc: S,
    req: R,
    carried: Carried,
) -> Result<S::Response, S::Error>
where
    S: tower::Service<R>,
{
    std::future::poll_fn(|cx| svc.poll_ready(cx)).await?;
    carried.during(|| svc.call(req)).await
}

/// The client's address, with its IP as a header value made once per connection instead of
/// once per request.
#[derive(Clone, Debug)]
pub struct PeerAddr {
    pub addr: SocketAddr,
    pub ip: HeaderValue,
}

impl PeerAddr {
    pub fn new(addr: SocketAddr) -> Self {
        let ip = HeaderValue::try_from(addr.ip().to_string())
            .unwrap_or_else(|_| HeaderValue::from_static("unknown"));
        Self { addr, ip }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_request_reads_what_it_carries_and_only_during_its_call() {
        let peer = Arc::new(PeerAddr::new(([192, 0, 2, 7], 9).into()));
        let carried = Carried::new(Some(peer), Some(OwnConnection::default()));
        let seen = carried.during(|| {
            assert_eq!(Carried::route(), None);
            Carried::set_route(Route::Exposure);
            // The own connection goes to one taker only.
            let taken = (Carried::take_own().is_some(), Carried::take_own().is_some());
            (
                Carried::route(),
                Carried::peer_ip(),
                Carried::peer_addr(),
                taken,
            )
        });
        let (route, ip, addr, taken) = seen;
        assert_eq!(route, Some(Route::Exposure));
        assert_eq!(ip.unwrap(), "192.0.2.7");
        assert_eq!(addr, SocketAddr::from(([192, 0, 2, 7], 9)));
        assert_eq!(taken, (true, false));
        // After the call nothing is carried, and setting a route is harmless.
        Carried::set_route(Route::Passthrough);
        assert_eq!(Carried::route(), None);
        assert!(Carried::take_own().is_none() && Carried::peer_ip().is_none());
        assert_eq!(Carried::peer_addr(), SocketAddr::from(([0, 0, 0, 0], 0)));
        assert_eq!(carried.route.get(), Some(Route::Exposure));
    }

    /// A layer that calls the next one later takes everything along, the own connection moved.
    #[test]
    fn what_is_taken_along_is_carried_again_later() {
        let peer = Arc::new(PeerAddr::new(([192, 0, 2, 8], 9).into()));
        let carried = Carried::new(Some(peer), Some(OwnConnection::default()));
        let along = carried.during(|| {
            Carried::set_route(Route::Exposure);
            Carried::take_along()
        });
        assert!(carried.during(Carried::take_own).is_none());
        let later = along.during(|| (Carried::route(), Carried::peer_ip(), Carried::take_own()));
        assert_eq!(later.0, Some(Route::Exposure));
        assert_eq!(later.1.unwrap(), "192.0.2.8");
        assert!(later.2.is_some());
        assert!(Carried::take_along().peer.is_none());
    }
}
