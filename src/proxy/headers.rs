//! Headers on the way through. The [`Forwarded`] layer drops hop-by-hop headers both ways
//! (RFC 9110 §7.6.1) and nothing else. What `X-Forwarded-For` and `X-Forwarded-Proto` become
//! is decided here too, but applied by the upstream as it writes the request
//! ([`add_forwarded`] into the map for hyper's client, [`write_forwarded`] straight into the
//! bytes on an own connection: two map insertions cost more than writing the lines).
//!
//! In: the client's request and Flagr's response; for the helpers, a request's headers and
//! its peer. Out: the same, with only those headers changed.
//! Never: touches a body or another header.

use std::convert::Infallible;
use std::task::{Context, Poll};

use futures_util::future::{FutureExt, Map};
use http::header::{self, HeaderMap, HeaderName, HeaderValue};
use http::{Request, Response};

#[cfg(test)]
use super::upstream::{call_carrying, Carried, PeerAddr};

// Built once: parsing a header name from a string on every request shows up in profiles.
const KEEP_ALIVE: HeaderName = HeaderName::from_static("keep-alive");
const PROXY_CONNECTION: HeaderName = HeaderName::from_static("proxy-connection");
pub(crate) const X_FORWARDED_FOR: HeaderName = HeaderName::from_static("x-forwarded-for");
pub(crate) const X_FORWARDED_PROTO: HeaderName = HeaderName::from_static("x-forwarded-proto");

/// Applies [`Forwarded`].
#[derive(Clone, Copy, Debug, Default)]
pub struct ForwardedLayer;

impl<S> tower::Layer<S> for ForwardedLayer {
    type Service = Forwarded<S>;
    fn layer(&self, inner: S) -> Forwarded<S> {
        Forwarded { inner }
    }
}

/// Drops hop-by-hop headers both ways.
#[derive(Clone, Debug)]
pub struct Forwarded<S> {
    inner: S,
}

impl<S, B, RB> tower::Service<Request<B>> for Forwarded<S>
where
    S: tower::Service<Request<B>, Response = Response<RB>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    B: Send + 'static,
{
    type Response = Response<RB>;
    type Error = Infallible;
    // A named future, not a boxed one: no allocation per request for a header pass.
    type Future = Map<S::Future, StripAnswer<RB>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> Self::Future {
        strip_hop_by_hop(req.headers_mut());
        self.inner.call(req).map(strip_answer::<RB>)
    }
}

/// What [`Forwarded`] does to the answer, as a function its future can name.
pub type StripAnswer<RB> = fn(Result<Response<RB>, Infallible>) -> Result<Response<RB>, Infallible>;

fn strip_answer<RB>(resp: Result<Response<RB>, Infallible>) -> Result<Response<RB>, Infallible> {
    resp.map(|mut r| {
        strip_hop_by_hop(r.headers_mut());
        r
    })
}

/// Removes hop-by-hop headers (RFC 9110 §7.6.1): `Connection` and every header it names, and
/// the fixed set below. End-to-end headers pass untouched.
pub fn strip_hop_by_hop(h: &mut HeaderMap) {
    // One pass over the names (there are few); a removal hashes, so none is tried in vain.
    if !h.keys().any(|n| HOP_BY_HOP.contains(n)) {
        return;
    }
    if let Some(conn) = h.get(header::CONNECTION) {
        // Only allocate when the peer actually named headers.
        let named: Vec<HeaderName> = conn
            .to_str()
            .unwrap_or("")
            .split(',')
            .filter_map(|n| HeaderName::from_bytes(n.trim().as_bytes()).ok())
            .collect();
        for n in named {
            h.remove(n);
        }
    }
    for n in HOP_BY_HOP {
        h.remove(n);
    }
}

/// Hop-by-hop whether `Connection` names them or not.
const HOP_BY_HOP: [HeaderName; 7] = [
    header::CONNECTION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
    KEEP_ALIVE,
    PROXY_CONNECTION,
];

/// Appends the peer to `X-Forwarded-For` (its fields joined into one, RFC 9110 §5.3) and sets
/// `X-Forwarded-Proto` unless an outer proxy did. [`write_forwarded`] does the same in bytes.
pub(crate) fn add_forwarded(h: &mut HeaderMap, ip: &HeaderValue) {
    // One pass over the names tells which are there; a lookup by name hashes it.
    let (mut has_for, mut has_proto) = (false, false);
    for n in h.keys() {
        has_for |= *n == X_FORWARDED_FOR;
        has_proto |= *n == X_FORWARDED_PROTO;
    }
    let xff = if has_for {
        let mut v = Vec::new();
        forwarded_for(&mut v, h, ip);
        HeaderValue::from_bytes(&v).ok()
    } else {
        Some(ip.clone())
    };
    if let Some(v) = xff {
        h.insert(X_FORWARDED_FOR, v);
    }
    if !has_proto {
        h.insert(X_FORWARDED_PROTO, HeaderValue::from_static("http"));
    }
}

/// [`add_forwarded`] for a request written as bytes, after its other headers: `has_for` and
/// `proto` say whether `h` has `X-Forwarded-For` (left out of what was written) and
/// `X-Forwarded-Proto`.
pub(crate) fn write_forwarded(
    out: &mut Vec<u8>,
    h: &HeaderMap,
    has_for: bool,
    proto: bool,
    ip: &HeaderValue,
) {
    out.extend_from_slice(b"x-forwarded-for: ");
    if has_for {
        forwarded_for(out, h, ip);
    } else {
        out.extend_from_slice(ip.as_bytes());
    }
    out.extend_from_slice(b"\r\n");
    if !proto {
        out.extend_from_slice(b"x-forwarded-proto: http\r\n");
    }
}

/// The value `X-Forwarded-For` goes on with: every non-empty value it came with, then the peer.
fn forwarded_for(out: &mut Vec<u8>, h: &HeaderMap, ip: &HeaderValue) {
    for prev in h.get_all(X_FORWARDED_FOR).iter().filter(|v| !v.is_empty()) {
        out.extend_from_slice(prev.as_bytes());
        out.extend_from_slice(b", ");
    }
    out.extend_from_slice(ip.as_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;
    use tower::Layer;

    #[test]
    fn strips_connection_listed_and_fixed_hop_by_hop() {
        let mut h = HeaderMap::new();
        h.insert(
            header::CONNECTION,
            HeaderValue::from_static("keep-alive, X-Secret-Hop"),
        );
        h.insert("x-secret-hop", HeaderValue::from_static("1"));
        h.insert("keep-alive", HeaderValue::from_static("timeout=5"));
        h.insert(
            header::TRANSFER_ENCODING,
            HeaderValue::from_static("chunked"),
        );
        h.insert(header::TE, HeaderValue::from_static("trailers"));
        h.insert(header::UPGRADE, HeaderValue::from_static("h2c"));
        h.insert("proxy-connection", HeaderValue::from_static("keep-alive"));
        h.insert(
            header::CONTENT_TYPE,
            HeaderValue::from_static("application/json"),
        );
        h.insert(header::AUTHORIZATION, HeaderValue::from_static("Bearer x"));
        strip_hop_by_hop(&mut h);
        let mut left: Vec<_> = h.keys().map(|k| k.as_str().to_string()).collect();
        left.sort();
        assert_eq!(left, vec!["authorization", "content-type"]);
        // Without any, nothing moves.
        let before = h.clone();
        strip_hop_by_hop(&mut h);
        assert_eq!(h, before);
    }

    #[test]
    fn forwarded_headers_append_and_keep_outer_proto() {
        let peer = PeerAddr::new(([10, 1, 2, 3], 5000).into()).ip;
        let mut h = HeaderMap::new();
        add_forwarded(&mut h, &peer);
        assert_eq!(h["x-forwarded-for"], "10.1.2.3");
        assert_eq!(h["x-forwarded-proto"], "http");
        let mut h = HeaderMap::new();
        h.insert("x-forwarded-for", HeaderValue::from_static("1.1.1.1"));
        h.insert("x-forwarded-proto", HeaderValue::from_static("https"));
        add_forwarded(&mut h, &peer);
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 10.1.2.3");
        assert_eq!(h["x-forwarded-proto"], "https");
        // Several fields are one list (RFC 9110 §5.3); empty ones add nothing.
        let mut h = HeaderMap::new();
        for v in ["1.1.1.1", "", "2.2.2.2, 3.3.3.3"] {
            h.append("x-forwarded-for", HeaderValue::from_static(v));
        }
        add_forwarded(&mut h, &peer);
        assert_eq!(h.get_all("x-forwarded-for").iter().count(), 1);
        assert_eq!(h["x-forwarded-for"], "1.1.1.1, 2.2.2.2, 3.3.3.3, 10.1.2.3");
    }

    /// The layer over a fake inner service: what reaches it, and what comes back.
    #[tokio::test]
    async fn the_layer_rewrites_both_ways_and_nothing_else() {
        let inner = tower::service_fn(|req: Request<()>| async move {
            let seen = format!(
                "{}|{}|{}",
                req.headers().contains_key("x-forwarded-for"),
                req.headers().contains_key("x-hop"),
                req.headers()["x-end-to-end"].to_str().unwrap(),
            );
            let resp = Response::builder()
                .header("connection", "close")
                .header("x-seen", seen)
                .body(())
                .unwrap();
            Ok::<_, Infallible>(resp)
        });
        let req = Request::builder()
            .header("connection", "x-hop")
            .header("x-hop", "1")
            .header("x-end-to-end", "kept")
            .body(())
            .unwrap();
        let peer = std::sync::Arc::new(PeerAddr::new(([192, 0, 2, 7], 1).into()));
        let carried = Carried::new(Some(peer), None);
        let resp = call_carrying(ForwardedLayer.layer(inner), req, carried)
            .await
            .unwrap();
        // The forwarding headers are the upstream's to write, as it writes the request.
        assert_eq!(resp.headers()["x-seen"], "false|false|kept");
        assert!(!resp.headers().contains_key("connection"));
    }
}
