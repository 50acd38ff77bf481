//! What the proxy answers with when Flagr does not: a short JSON error of flaghook's own; and
//! the boxed future of the few paths that cannot name their future.
//!
//! In: nothing. Out: the shared types and [`error_response`]. Never: depends on a layer.

use std::future::Future;
use std::pin::Pin;

use bytes::Bytes;
use http::header::{self, HeaderValue};
use http::{Response, StatusCode};
use http_body_util::Full;

/// Marks an answer of flaghook's own (not Flagr's): nothing of it is tapped or derived.
#[derive(Clone, Copy, Debug)]
pub struct OwnAnswer;

/// What a path that cannot name its future returns (kept rare: each costs an allocation).
pub(crate) type BoxFuture<T> = Pin<Box<dyn Future<Output = T> + Send>>;

/// A short JSON error of flaghook's own, marked `X-Flaghook-Error: 1`.
pub fn error_response(status: StatusCode, code: &str, message: &str) -> Response<Full<Bytes>> {
    let body = serde_json::json!({"error": code, "message": message}).to_string();
    let mut r = Response::new(Full::new(Bytes::from(body)));
    *r.status_mut() = status;
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("application/json"),
    );
    r.headers_mut()
        .insert("x-flaghook-error", HeaderValue::from_static("1"));
    r.extensions_mut().insert(OwnAnswer);
    r
}
