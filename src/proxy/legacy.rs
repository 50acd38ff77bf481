//! Legacy Flagr (1.1.x keeps no snapshot history): a mutation's flag is read before the call
//! is forwarded and again before the client gets its answer, so derivation knows what changed.
//!
//! In: a mutation (its [`Route`] from what the request carries) while legacy mode is on. Out: Flagr's
//! response with a [`LegacyStates`] extension. Never: costs anything on Flagr 1.2.x or on other
//! routes; a failed read costs the event its before or after, never the request.

use std::convert::Infallible;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::task::{Context, Poll};

use futures_util::future::Either;
use http::{Request, Response, StatusCode};

use super::answer::BoxFuture;
use super::upstream::Carried;
use crate::flagr::{FlagState, FlagrClient, Mutation, Route};

/// The flag before and after a legacy mutation, as far as they could be read.
#[derive(Clone, Debug, Default)]
pub struct LegacyStates {
    pub before: Option<FlagState>,
    pub after: Option<FlagState>,
}

/// Applies [`Legacy`].
#[derive(Clone)]
pub struct LegacyLayer {
    on: Arc<AtomicBool>,
    // Shared: the stack is cloned for every request, and a client's clone copies its base URL.
    flagr: Arc<FlagrClient>,
}

impl LegacyLayer {
    /// `on`: true while the upstream is a legacy Flagr (detection may change it at run time).
    pub fn new(on: Arc<AtomicBool>, flagr: FlagrClient) -> Self {
        Self {
            on,
            flagr: Arc::new(flagr),
        }
    }
}

impl<S> tower::Layer<S> for LegacyLayer {
    type Service = Legacy<S>;
    fn layer(&self, inner: S) -> Legacy<S> {
        Legacy {
            inner,
            on: self.on.clone(),
            flagr: self.flagr.clone(),
        }
    }
}

/// Reads a legacy mutation's flag around the call.
#[derive(Clone)]
pub struct Legacy<S> {
    inner: S,
    on: Arc<AtomicBool>,
    flagr: Arc<FlagrClient>,
}

impl<S, B, RB> tower::Service<Request<B>> for Legacy<S>
where
    S: tower::Service<Request<B>, Response = Response<RB>, Error = Infallible>
        + Clone
        + Send
        + 'static,
    S::Future: Send,
    B: Send + 'static,
    RB: Send + 'static,
{
    type Response = Response<RB>;
    type Error = Infallible;
    // Requests that are not legacy mutations go on as they are, without a box of their own.
    type Future = Either<S::Future, BoxFuture<Result<Response<RB>, Infallible>>>;

    fn poll_ready(&mut self, cx: &mut Context<'_>) -> Poll<Result<(), Infallible>> {
        self.inner.poll_ready(cx)
    }

    fn call(&mut self, req: Request<B>) -> Self::Future {
        let mutation = match Carried::route() {
            Some(Route::Mutation(m)) if self.on.load(Ordering::Relaxed) => m,
            _ => return Either::Left(self.inner.call(req)),
        };
        // The ready clone goes into the future; this one waits for the next poll_ready.
        let clone = self.inner.clone();
        let mut inner = std::mem::replace(&mut self.inner, clone);
        let flagr = self.flagr.clone();
        // The layers below are called from the future, after this call: they get what the
        // request carries (its peer for X-Forwarded-For, its own connection) from here.
        let carried = Carried::take_along();
        Either::Right(Box::pin(async move {
            let flag = mutation.path_flag();
            let before = match flag {
                Some(f) => flagr.flag(f).await.ok().flatten(),
                None => None,
            };
            let mut resp = carried.during(|| inner.call(req)).await?;
            // Without a "before" there is nothing to compare "after" with.
            let after = match flag {
                Some(f)
                    if before.is_some()
                        && resp.status() == StatusCode::OK
                        && !mutation.creates_flag()
                        && !matches!(mutation, Mutation::DeleteFlag { .. }) =>
                {
                    flagr.flag(f).await.ok().flatten()
                }
                _ => None,
            };
            resp.extensions_mut().insert(LegacyStates { before, after });
            Ok(resp)
        }))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::proxy::upstream::{call_carrying, OwnConnection, PeerAddr};
    use std::time::Duration;
    use tower::Layer;

    /// On a legacy Flagr a mutation reaches the layers below from Legacy's future, after the
    /// flag was read: they still see the client's address and its own connection.
    #[tokio::test]
    async fn the_layers_below_a_legacy_mutation_see_what_it_carries() {
        // Nothing listens there: the flag is not read, and the mutation goes on regardless.
        let flagr = FlagrClient::new("http://127.0.0.1:9", "/api/v1", Duration::from_secs(2));
        let inner = tower::service_fn(|_: Request<()>| {
            let seen = (Carried::peer_ip(), Carried::take_own().is_some());
            std::future::ready(Ok::<_, Infallible>(Response::new(seen)))
        });
        let svc = LegacyLayer::new(Arc::new(AtomicBool::new(true)), flagr).layer(inner);
        let peer = Arc::new(PeerAddr::new(([192, 0, 2, 9], 1).into()));
        let carried = Carried::new(Some(peer), Some(OwnConnection::default()));
        carried.during(|| Carried::set_route(Route::Mutation(Mutation::PutFlag { flag: 1 })));
        let req = Request::put("/api/v1/flags/1").body(()).unwrap();
        let resp = call_carrying(svc, req, carried).await.unwrap();
        assert!(resp.extensions().get::<LegacyStates>().is_some());
        let (ip, own) = resp.into_body();
        assert_eq!(ip.unwrap(), "192.0.2.9");
        assert!(own);
    }
}
