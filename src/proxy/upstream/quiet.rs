//! A bound on Flagr's silence once its answer has begun: a body that brings nothing for
//! `proxy.upstream_timeout` while it is being read ends in an error (the client's answer is
//! cut, as one Flagr broke off), so a stalled Flagr cannot hold a request, and with it a
//! client connection, open forever.
//!
//! In: Flagr's answer body. Out: the same frames, or after the silence an error, counted in
//! `flaghook_proxy_upstream_errors_total{kind="body_timeout"}`.
//! Never: counts a client that is not reading as Flagr's silence (the body is only polled when
//! the client takes more); arms a timer for a body that is there when asked for, as an
//! evaluation's answer is. Silence is counted in frames: chunk-size lines trickling in without
//! data would not restart it (Flagr, in Go, writes each chunk whole).

use std::error::Error as StdError;
use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use tokio::time::{Instant, Sleep};

use super::super::metrics::{ProxyMetrics, UpstreamFailure};

type BoxError = Box<dyn StdError + Send + Sync>;

/// The bound, made once per proxy and shared by every answer.
pub(super) struct Bound {
    pub(super) limit: Duration,
    pub(super) metrics: Arc<ProxyMetrics>,
}

/// `inner`, cut once Flagr is silent for the bound's limit while it is read. Two words beside
/// the body (answers move through every layer's future, so their size costs copies); the
/// timer is made on the first wait only.
pub struct Quiet<B> {
    inner: B,
    bound: Arc<Bound>,
    wait: Option<Box<Wait>>,
}

struct Wait {
    timer: Pin<Box<Sleep>>,
    /// True while the timer runs for the present wait (false again once bytes come).
    waiting: bool,
    /// Cut: nothing more is read.
    cut: bool,
}

impl<B> Quiet<B> {
    pub(super) fn new(inner: B, bound: Arc<Bound>) -> Self {
        Self {
            inner,
            bound,
            wait: None,
        }
    }
}

/// The error a cut answer ends with.
#[derive(Debug, thiserror::Error)]
#[error("flagr sent nothing more of its answer for {0:?}")]
pub(super) struct BodyTimeout(Duration);

impl<B> Body for Quiet<B>
where
    B: Body<Data = Bytes> + Unpin,
    B::Error: Into<BoxError>,
{
    type Data = Bytes;
    type Error = BoxError;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, BoxError>>> {
        let me = &mut *self;
        if me.wait.as_ref().is_some_and(|w| w.cut) {
            return Poll::Ready(None);
        }
        if let Poll::Ready(frame) = Pin::new(&mut me.inner).poll_frame(cx) {
            if let Some(w) = me.wait.as_mut() {
                w.waiting = false;
            }
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let limit = me.bound.limit;
        let w = me.wait.get_or_insert_with(|| {
            Box::new(Wait {
                timer: Box::pin(tokio::time::sleep(limit)),
                waiting: true,
                cut: false,
            })
        });
        if !w.waiting {
            w.waiting = true;
            w.timer.as_mut().reset(Instant::now() + limit);
        }
        if w.timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        w.cut = true;
        me.bound
            .metrics
            .upstream_failed(UpstreamFailure::BodyTimeout);
        tracing::warn!(timeout = ?limit, "flagr stalled in its answer's body; cut");
        Poll::Ready(Some(Err(Box::new(BodyTimeout(limit)))))
    }

    fn is_end_stream(&self) -> bool {
        self.wait.as_ref().is_some_and(|w| w.cut) || self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
