//! The body tap: copies the bytes of an inspected exchange while they stream, and hands the
//! finished exchange to derivation.
//!
//! In: request and response bodies as hyper streams them. Out: the same frames, untouched, and
//! one [`Exchange`] per inspected call through a bounded channel (`try_send`).
//! Never: waits, alters a frame, or copies more than the cap; a full channel drops and counts.

use std::pin::Pin;
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};
use std::time::SystemTime;

use bytes::{Bytes, BytesMut};
use http::{HeaderValue, StatusCode};
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;
use tokio::sync::mpsc;

use crate::flagr::{FlagState, Route};
use crate::metrics::Metrics;

/// What the tap saw of one body.
#[derive(Clone, Debug, Default)]
pub enum Captured {
    /// The whole body, as sent on the wire (possibly gzip-encoded).
    Complete(Bytes),
    /// Larger than the cap: passed through, not inspected.
    TooLarge,
    /// The stream ended early (client or Flagr hung up, or an error).
    #[default]
    Incomplete,
}

impl Captured {
    pub fn bytes(&self) -> Option<&Bytes> {
        match self {
            Captured::Complete(b) => Some(b),
            _ => None,
        }
    }
}

/// Request headers derivation needs; copied so the request itself can move on.
#[derive(Clone, Debug, Default)]
pub struct RequestMeta {
    pub content_encoding: Option<HeaderValue>,
    pub user_agent: Option<HeaderValue>,
    pub authorization: Option<HeaderValue>,
    pub user: Option<HeaderValue>,
    pub forwarded_for: Option<HeaderValue>,
    /// The commit, on flaghook's own git sync calls (`source: gitsync`).
    pub gitsync_commit: Option<String>,
}

/// One inspected call, as the proxy saw it.
#[derive(Debug)]
pub struct Exchange {
    pub route: Route,
    pub peer: std::net::SocketAddr,
    pub meta: RequestMeta,
    pub request_body: Captured,
    pub status: StatusCode,
    pub response_encoding: Option<HeaderValue>,
    pub response_body: Captured,
    /// When Flagr's response headers arrived.
    pub responded_at: SystemTime,
    /// Legacy servers: the flag as it was before the call.
    pub prefetched: Option<FlagState>,
    /// Legacy servers: the flag right after the call, read before the client got its answer.
    pub postfetched: Option<FlagState>,
}

/// The sending half, shared by every connection.
#[derive(Clone)]
pub struct TapSender {
    tx: mpsc::Sender<Exchange>,
    metrics: Arc<Metrics>,
    cap: usize,
}

impl TapSender {
    pub fn new(tx: mpsc::Sender<Exchange>, metrics: Arc<Metrics>, cap: usize) -> Self {
        Self { tx, metrics, cap }
    }

    fn send(&self, ex: Exchange) {
        if self.tx.try_send(ex).is_err() {
            self.metrics.tap_dropped.with_label_values(&["tap"]).inc();
        }
    }
}

/// Shared between the request tap (which fills it) and the response tap (which reads it).
pub type RequestSlot = Arc<Mutex<Captured>>;

/// The exchange minus the response body, waiting for that body to end.
pub struct Pending {
    pub exchange: Exchange,
    pub request: RequestSlot,
    pub sender: TapSender,
}

enum Sink {
    Request(RequestSlot),
    Response(Box<Pending>),
}

struct Capture {
    buf: BytesMut,
    cap: usize,
    over: bool,
    sink: Sink,
}

impl Capture {
    fn push(&mut self, data: &Bytes) {
        if self.over {
            return;
        }
        if self.buf.len() + data.len() > self.cap {
            self.over = true;
            self.buf = BytesMut::new();
        } else {
            self.buf.extend_from_slice(data);
        }
    }

    fn finish(self, complete: bool) {
        let captured = match (complete, self.over) {
            (_, true) => Captured::TooLarge,
            (true, false) => Captured::Complete(self.buf.freeze()),
            (false, false) => Captured::Incomplete,
        };
        match self.sink {
            Sink::Request(slot) => {
                // Counted with the response, when the exchange is complete.
                if let Ok(mut s) = slot.lock() {
                    *s = captured;
                }
            }
            Sink::Response(p) => {
                let Pending {
                    mut exchange,
                    request,
                    sender,
                } = *p;
                exchange.request_body = request
                    .lock()
                    .map(|mut s| std::mem::take(&mut *s))
                    .unwrap_or_default();
                if let Some(reason) = exchange_reason(&exchange.request_body) {
                    sender
                        .metrics
                        .tap_uninspected
                        .with_label_values(&["request", reason])
                        .inc();
                }
                if let Some(reason) = exchange_reason(&captured) {
                    sender
                        .metrics
                        .tap_uninspected
                        .with_label_values(&["response", reason])
                        .inc();
                }
                exchange.response_body = captured;
                sender.send(exchange);
            }
        }
    }
}

fn exchange_reason(c: &Captured) -> Option<&'static str> {
    match c {
        Captured::Complete(_) => None,
        Captured::TooLarge => Some("too_large"),
        Captured::Incomplete => Some("incomplete"),
    }
}

pin_project! {
    /// A body that passes every frame through and, when tapping, keeps a capped copy.
    pub struct TapBody<B>
    where
        B: Body,
    {
        #[pin]
        inner: B,
        capture: Option<Capture>,
    }

    impl<B> PinnedDrop for TapBody<B>
    where
        B: Body,
    {
        fn drop(this: Pin<&mut Self>) {
            let this = this.project();
            // hyper may stop polling once `is_end_stream` is true, so ending there is complete.
            if let Some(c) = this.capture.take() {
                let done = this.inner.is_end_stream();
                c.finish(done);
            }
        }
    }
}

impl<B: Body> TapBody<B> {
    /// No tap: frames pass through, nothing is copied.
    pub fn passthrough(inner: B) -> Self {
        Self {
            inner,
            capture: None,
        }
    }

    /// Taps a request body into `slot`.
    pub fn request(inner: B, slot: RequestSlot, cap: usize) -> Self {
        Self {
            inner,
            capture: Some(Capture {
                buf: BytesMut::new(),
                cap,
                over: false,
                sink: Sink::Request(slot),
            }),
        }
    }

    /// Taps a response body and sends the finished exchange.
    pub fn response(inner: B, pending: Pending) -> Self {
        let cap = pending.sender.cap;
        Self {
            inner,
            capture: Some(Capture {
                buf: BytesMut::new(),
                cap,
                over: false,
                sink: Sink::Response(Box::new(pending)),
            }),
        }
    }
}

impl<B> Body for TapBody<B>
where
    B: Body<Data = Bytes>,
{
    type Data = Bytes;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        let mut this = self.project();
        let res = std::task::ready!(this.inner.as_mut().poll_frame(cx));
        if this.capture.is_some() {
            match &res {
                Some(Ok(frame)) => {
                    if let (Some(data), Some(c)) = (frame.data_ref(), this.capture.as_mut()) {
                        c.push(data);
                    }
                    if this.inner.is_end_stream() {
                        if let Some(c) = this.capture.take() {
                            c.finish(true);
                        }
                    }
                }
                None => {
                    if let Some(c) = this.capture.take() {
                        c.finish(true);
                    }
                }
                Some(Err(_)) => {
                    if let Some(c) = this.capture.take() {
                        c.finish(false);
                    }
                }
            }
        }
        Poll::Ready(res)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use http_body_util::{BodyExt, Full, StreamBody};

    fn sender(cap: usize) -> (TapSender, mpsc::Receiver<Exchange>) {
        let (tx, rx) = mpsc::channel(4);
        (TapSender::new(tx, Arc::new(Metrics::new()), cap), rx)
    }

    fn pending(sender: TapSender, slot: RequestSlot) -> Pending {
        Pending {
            exchange: Exchange {
                route: Route::Passthrough,
                peer: ([127, 0, 0, 1], 1).into(),
                meta: RequestMeta::default(),
                request_body: Captured::Incomplete,
                status: StatusCode::OK,
                response_encoding: None,
                response_body: Captured::Incomplete,
                responded_at: SystemTime::now(),
                prefetched: None,
                postfetched: None,
            },
            request: slot,
            sender,
        }
    }

    #[tokio::test]
    async fn copies_while_passing_bytes_through() {
        let (s, mut rx) = sender(1024);
        let slot = RequestSlot::default();
        let req = TapBody::request(
            Full::new(Bytes::from_static(b"{\"a\":1}")),
            slot.clone(),
            1024,
        );
        assert_eq!(req.collect().await.unwrap().to_bytes(), "{\"a\":1}");
        let chunks: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = vec![
            Ok(Frame::data(Bytes::from_static(b"he"))),
            Ok(Frame::data(Bytes::from_static(b"llo"))),
        ];
        let resp = TapBody::response(
            StreamBody::new(futures_util::stream::iter(chunks)),
            pending(s, slot),
        );
        assert_eq!(resp.collect().await.unwrap().to_bytes(), "hello");
        let ex = rx.try_recv().unwrap();
        assert_eq!(ex.request_body.bytes().unwrap(), "{\"a\":1}");
        assert_eq!(ex.response_body.bytes().unwrap(), "hello");
    }

    #[tokio::test]
    async fn over_the_cap_passes_but_is_not_inspected() {
        let (s, mut rx) = sender(3);
        let slot = RequestSlot::default();
        *slot.lock().unwrap() = Captured::Complete(Bytes::new());
        let resp = TapBody::response(Full::new(Bytes::from_static(b"hello")), pending(s, slot));
        assert_eq!(resp.collect().await.unwrap().to_bytes(), "hello");
        assert!(matches!(
            rx.try_recv().unwrap().response_body,
            Captured::TooLarge
        ));
    }

    #[tokio::test]
    async fn dropped_mid_stream_is_incomplete_and_still_sent() {
        let (s, mut rx) = sender(1024);
        let chunks: Vec<Result<Frame<Bytes>, std::convert::Infallible>> = vec![
            Ok(Frame::data(Bytes::from_static(b"he"))),
            Ok(Frame::data(Bytes::from_static(b"llo"))),
        ];
        let mut resp = TapBody::response(
            StreamBody::new(futures_util::stream::iter(chunks)),
            pending(s, RequestSlot::default()),
        );
        let first = resp.frame().await.unwrap().unwrap();
        assert_eq!(first.data_ref().unwrap(), "he");
        drop(resp);
        assert!(matches!(
            rx.try_recv().unwrap().response_body,
            Captured::Incomplete
        ));
    }

    #[tokio::test]
    async fn full_channel_drops_and_counts() {
        let (tx, _rx) = mpsc::channel(1);
        let metrics = Arc::new(Metrics::new());
        let s = TapSender::new(tx, metrics.clone(), 16);
        for _ in 0..3 {
            let b = TapBody::response(
                Full::new(Bytes::new()),
                pending(s.clone(), RequestSlot::default()),
            );
            drop(b.collect().await);
        }
        assert_eq!(metrics.tap_dropped.with_label_values(&["tap"]).get(), 2);
    }
}
