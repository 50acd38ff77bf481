//! What a request carries down the stack besides itself, as one extension: the client's
//! address and its connection's own connection to Flagr (put in by the listener's service) and
//! the request's route (put in by `Classify`). It lives beside the innermost service, which
//! takes the own connection out of it, so every layer above can read it without a cycle.
//!
//! In: set once per request by the listener and `Classify`. Out: read by the layers below.
//! Never: holds more than the three, each a copy or a reference count. `http`'s extensions box
//! every value and hash it into a map made per request, so one value beats three.

use std::net::SocketAddr;

use http::{HeaderValue, Request};

use super::wire::OwnConnection;
use crate::flagr::Route;

/// The request's facts; `None` where nothing put one in (tests, a layer used on its own).
#[derive(Clone, Default)]
pub struct Carried {
    pub peer: Option<PeerAddr>,
    /// Only for a keep-alive HTTP/1.1 client (see the listener's service).
    pub own: Option<OwnConnection>,
    pub route: Option<Route>,
}

impl Carried {
    /// What `req` carries, if anything.
    pub fn of<B>(req: &Request<B>) -> Option<&Carried> {
        req.extensions().get::<Carried>()
    }

    /// What `req` carries, put in empty when it carried nothing.
    pub fn of_mut<B>(req: &mut Request<B>) -> &mut Carried {
        req.extensions_mut().get_or_insert_default::<Carried>()
    }

    /// The request's route, when `Classify` has put it in.
    pub fn route_of<B>(req: &Request<B>) -> Option<Route> {
        Self::of(req).and_then(|c| c.route)
    }
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

/// Peer of a request, or the unspecified address when it carries none.
pub(crate) fn peer_of<B>(req: &Request<B>) -> SocketAddr {
    Carried::of(req)
        .and_then(|c| c.peer.as_ref())
        .map_or(([0, 0, 0, 0], 0).into(), |p| p.addr)
}
