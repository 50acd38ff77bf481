//! Git sync's own calls: flaghook's git sync sends its Flagr writes through the proxy with
//! marker headers and a per-process token, so their change events say `source: gitsync` and
//! the commit.
//!
//! In: a request, maybe with `X-Flaghook-Gitsync`, `-Source`, `-Commit`. Out: the request
//! without them, and for an authentic mutation a [`GitSyncCommit`] extension.
//! Never: lets the marker headers reach Flagr, or believes them without the token.

use std::sync::Arc;
use std::task::{Context, Poll};

use http::header::{HeaderMap, HeaderName};
use http::Request;

use super::upstream::Carried;
use crate::flagr::Route;

const X_FLAGHOOK_SOURCE: HeaderName = HeaderName::from_static("x-flaghook-source");
const X_FLAGHOOK_COMMIT: HeaderName = HeaderName::from_static("x-flaghook-commit");
const X_FLAGHOOK_GITSYNC: HeaderName = HeaderName::from_static("x-flaghook-gitsync");

/// The commit an authenticated git sync call applies.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct GitSyncCommit(pub String);

/// Applies [`GitSyncMark`].
#[derive(Clone, Debug)]
pub struct GitSyncMarkLayer {
    token: Arc<str>,
}

impl GitSyncMarkLayer {
    /// `token`: what git sync's calls carry; empty, no call is ever taken for git sync's.
    pub fn new(token: &str) -> Self {
        Self {
            token: Arc::from(token),
        }
    }
}

impl<S> tower::Layer<S> for GitSyncMarkLayer {
    type Service = GitSyncMark<S>;
    fn layer(&self, inner: S) -> GitSyncMark<S> {
        GitSyncMark {
            inner,
            token: self.token.clone(),
        }
    }
}

/// Takes the marker headers off; marks authentic git sync mutations.
#[derive(Clone, Debug)]
pub struct GitSyncMark<S> {
    inner: S,
    token: Arc<str>,
}

impl<S, B> tower::Service<Request<B>> for GitSyncMark<S>
where
    S: tower::Service<Request<B>>,
{
    type Response = S::Response;
    type Error = S::Error;
    type Future = S::Future;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), S::Error>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, mut req: Request<B>) -> S::Future {
        let mutation = matches!(Carried::route(), Some(Route::Mutation(_)));
        if let Some(commit) = take(req.headers_mut(), &self.token) {
            if mutation {
                req.extensions_mut().insert(GitSyncCommit(commit));
            }
        }
        self.inner.call(req)
    }
}

/// The commit of a call carrying the right token; the marker headers are removed either way.
fn take(h: &mut HeaderMap, token: &str) -> Option<String> {
    // One pass over the names (there are few) instead of three removals that each hash.
    if !h.keys().any(|n| n.as_str().starts_with("x-flaghook-")) {
        return None;
    }
    let given = h.remove(X_FLAGHOOK_GITSYNC);
    h.remove(X_FLAGHOOK_SOURCE);
    let commit = h.remove(X_FLAGHOOK_COMMIT);
    let ok = !token.is_empty()
        && given.is_some_and(|g| {
            bool::from(subtle::ConstantTimeEq::ct_eq(
                g.as_bytes(),
                token.as_bytes(),
            ))
        });
    ok.then(|| {
        commit
            .and_then(|c| c.to_str().ok().map(str::to_string))
            .unwrap_or_default()
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::upstream::call_carrying;
    use std::convert::Infallible;
    use tower::Layer;

    async fn seen(token_sent: &str, route: Route) -> (Option<GitSyncCommit>, bool) {
        let inner = tower::service_fn(|req: Request<()>| async move {
            let marked = req.extensions().get::<GitSyncCommit>().cloned();
            let leaked = req
                .headers()
                .keys()
                .any(|k| k.as_str().starts_with("x-flaghook"));
            Ok::<_, Infallible>((marked, leaked))
        });
        let req = Request::post("/api/v1/flags")
            .header("x-flaghook-gitsync", token_sent)
            .header("x-flaghook-source", "gitsync")
            .header("x-flaghook-commit", "abc123")
            .body(())
            .unwrap();
        let svc = GitSyncMarkLayer::new("the-token").layer(inner);
        call_carrying(svc, req, Carried::routed(route))
            .await
            .unwrap()
    }

    #[tokio::test]
    async fn only_the_token_marks_and_no_marker_reaches_flagr() {
        let m = Route::Mutation(crate::flagr::Mutation::CreateFlag);
        assert_eq!(
            seen("the-token", m).await,
            (Some(GitSyncCommit("abc123".into())), false)
        );
        assert_eq!(seen("a-guess", m).await, (None, false));
        assert_eq!(seen("the-token", Route::Passthrough).await, (None, false));
    }
}
