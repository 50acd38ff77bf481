//! The body tap: copies the bytes of an inspected exchange while they stream, and hands the
//! finished exchange to derivation when the response body ends.
//!
//! In: request and response bodies as hyper streams them. Out: the same frames, untouched, and
//! one [`Exchange`] per inspected call through the [`TapSender`].
//! Never: waits, alters a frame, or copies more than the cap. Copies hold bytes of one shared
//! [`ByteBudget`] (`proxy.tap_max_bytes`), every byte allocated for them (room included), from
//! the first byte copied until derivation drops the exchange, so what waits between the proxy
//! and derivation is bounded in bytes, not only in count; a copy the budget cannot take is not
//! made (counted).

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll};

use bytes::Bytes;
use http_body::{Body, Frame, SizeHint};
use pin_project_lite::pin_project;

use super::{Captured, Direction, Exchange, TapSender, Uninspected};

/// Bytes every copy in flight or waiting for derivation shares (`proxy.tap_max_bytes`).
#[derive(Debug)]
pub struct ByteBudget {
    used: AtomicUsize,
    max: usize,
}

impl ByteBudget {
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            used: AtomicUsize::new(0),
            max,
        })
    }

    /// Bytes held right now.
    pub fn used(&self) -> usize {
        self.used.load(Ordering::Relaxed)
    }

    fn take(&self, n: usize) -> bool {
        self.used
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |u| {
                u.checked_add(n).filter(|&t| t <= self.max)
            })
            .is_ok()
    }

    fn give(&self, n: usize) {
        self.used.fetch_sub(n, Ordering::AcqRel);
    }
}

/// Bytes taken from a [`ByteBudget`], given back when dropped (with the exchange that holds it).
#[derive(Debug, Default)]
pub struct Held {
    budget: Option<Arc<ByteBudget>>,
    n: usize,
}

impl Held {
    fn new(budget: &Arc<ByteBudget>) -> Self {
        Self {
            budget: Some(budget.clone()),
            n: 0,
        }
    }

    /// Takes `n` more bytes; false (and nothing taken) when the budget cannot give them.
    fn grow(&mut self, n: usize) -> bool {
        match &self.budget {
            Some(b) if b.take(n) => {
                self.n += n;
                true
            }
            Some(_) => false,
            None => true,
        }
    }

    /// Gives everything back now (the copy is abandoned).
    fn release(&mut self) {
        if let Some(b) = &self.budget {
            b.give(std::mem::take(&mut self.n));
        }
    }

    /// One holding for both bodies of an exchange.
    fn join(mut self, mut other: Held) -> Held {
        if self.budget.is_none() {
            return other;
        }
        self.n += std::mem::take(&mut other.n);
        self
    }

    pub fn bytes(&self) -> usize {
        self.n
    }
}

impl Drop for Held {
    fn drop(&mut self) {
        self.release();
    }
}

/// Shared between the request tap (which fills it) and the response tap (which reads it).
pub type RequestSlot = Arc<Mutex<(Captured, Held)>>;

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
    /// A Vec, not a BytesMut: its room grows exactly as asked, so the budget counts what is
    /// allocated, not only what is used.
    buf: Vec<u8>,
    cap: usize,
    /// Why copying stopped, when it did.
    stopped: Option<Captured>,
    held: Held,
    sink: Sink,
}

impl Capture {
    fn new(cap: usize, budget: &Arc<ByteBudget>, sink: Sink) -> Self {
        Self {
            buf: Vec::new(),
            cap,
            stopped: None,
            held: Held::new(budget),
            sink,
        }
    }

    fn push(&mut self, data: &Bytes) {
        if self.stopped.is_some() {
            return;
        }
        let need = self.buf.len() + data.len();
        if need > self.cap {
            self.stop(Captured::TooLarge);
            return;
        }
        let had = self.buf.capacity();
        if need > had {
            // Room doubles (up to the cap), so a body in many small frames is not copied over
            // and over; all of it is taken from the budget before it is allocated.
            let room = need.max(had.saturating_mul(2)).min(self.cap);
            if !self.held.grow(room - had) {
                self.stop(Captured::OverBudget);
                return;
            }
            self.buf.reserve_exact(room - self.buf.len());
        }
        self.buf.extend_from_slice(data);
    }

    fn stop(&mut self, why: Captured) {
        self.stopped = Some(why);
        self.buf = Vec::new();
        self.held.release();
    }

    fn finish(mut self, complete: bool) {
        let captured = match (complete, self.stopped.take()) {
            (_, Some(why)) => why,
            (true, None) => Captured::Complete(Bytes::from(std::mem::take(&mut self.buf))),
            (false, None) => Captured::Incomplete,
        };
        let held = std::mem::take(&mut self.held);
        match self.sink {
            Sink::Request(slot) => {
                // Counted with the response, when the exchange is complete.
                if let Ok(mut s) = slot.lock() {
                    *s = (captured, held);
                }
            }
            Sink::Response(p) => {
                let Pending {
                    mut exchange,
                    request,
                    sender,
                } = *p;
                let (request_body, request_held) = request
                    .lock()
                    .map(|mut s| std::mem::take(&mut *s))
                    .unwrap_or_default();
                exchange.request_body = request_body;
                exchange.held = request_held.join(held);
                if let Some(why) = exchange_reason(&exchange.request_body) {
                    sender.metrics.uninspected(Direction::Request, why);
                }
                if let Some(why) = exchange_reason(&captured) {
                    sender.metrics.uninspected(Direction::Response, why);
                }
                exchange.response_body = captured;
                sender.send(exchange);
            }
        }
    }
}

fn exchange_reason(c: &Captured) -> Option<Uninspected> {
    match c {
        Captured::Complete(_) | Captured::Skipped => None,
        Captured::TooLarge => Some(Uninspected::TooLarge),
        Captured::OverBudget => Some(Uninspected::OverBudget),
        Captured::Incomplete => Some(Uninspected::Incomplete),
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
        // Boxed: a body moves with its request or answer through every layer's future, and
        // most are not tapped, so the copy's state is a pointer until one is.
        capture: Option<Box<Capture>>,
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
    pub fn request(inner: B, slot: RequestSlot, sender: &TapSender) -> Self {
        Self {
            inner,
            capture: Some(Box::new(Capture::new(
                sender.cap,
                &sender.budget,
                Sink::Request(slot),
            ))),
        }
    }

    /// Taps a response body and sends the finished exchange.
    pub fn response(inner: B, pending: Pending) -> Self {
        let (cap, budget) = (pending.sender.cap, pending.sender.budget.clone());
        Self {
            inner,
            capture: Some(Box::new(Capture::new(
                cap,
                &budget,
                Sink::Response(Box::new(pending)),
            ))),
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
    use crate::flagr::Route;
    use crate::metrics::Registry;
    use crate::proxy::tap::RequestMeta;
    use crate::proxy::tap::TapMetrics;
    use http::StatusCode;
    use http_body_util::{BodyExt, Full, StreamBody};
    use std::time::SystemTime;
    use tokio::sync::mpsc;

    fn sender(cap: usize) -> (TapSender, mpsc::Receiver<Exchange>) {
        budgeted(cap, usize::MAX).0
    }

    /// A sender with a byte budget; also its budget and metrics.
    #[allow(clippy::type_complexity)]
    fn budgeted(
        cap: usize,
        max: usize,
    ) -> (
        (TapSender, mpsc::Receiver<Exchange>),
        Arc<ByteBudget>,
        Arc<TapMetrics>,
    ) {
        let (tx, rx) = mpsc::channel(4);
        let budget = ByteBudget::new(max);
        let metrics = Arc::new(TapMetrics::new(&Registry::default()));
        (
            (TapSender::new(tx, metrics.clone(), cap, budget.clone()), rx),
            budget,
            metrics,
        )
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
                held: Held::default(),
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
            &s,
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
        slot.lock().unwrap().0 = Captured::Complete(Bytes::new());
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
        let metrics = Arc::new(TapMetrics::new(&Registry::default()));
        let s = TapSender::new(tx, metrics.clone(), 16, ByteBudget::new(1 << 20));
        for _ in 0..3 {
            let b = TapBody::response(
                Full::new(Bytes::new()),
                pending(s.clone(), RequestSlot::default()),
            );
            drop(b.collect().await);
        }
        assert_eq!(metrics.dropped.with_label_values(&["tap"]).get(), 2);
    }

    /// Copies waiting for derivation hold the budget; one that does not fit is not made (the
    /// bytes still pass), and the budget comes back when derivation drops the exchange.
    #[tokio::test]
    async fn copies_share_one_byte_budget_until_derivation_drops_them() {
        let ((s, mut rx), budget, metrics) = budgeted(1024, 10);
        let respond = |body: &'static [u8]| {
            TapBody::response(
                Full::new(Bytes::from_static(body)),
                pending(s.clone(), RequestSlot::default()),
            )
            .collect()
        };
        assert_eq!(respond(b"123456").await.unwrap().to_bytes(), "123456");
        let first = rx.try_recv().unwrap();
        assert_eq!(first.response_body.bytes().unwrap(), "123456");
        assert_eq!((first.held.bytes(), budget.used()), (6, 6));
        // 6 + 5 > 10: passed through, not copied, counted; nothing more is held.
        assert_eq!(respond(b"abcde").await.unwrap().to_bytes(), "abcde");
        let second = rx.try_recv().unwrap();
        assert!(matches!(second.response_body, Captured::OverBudget));
        assert_eq!(budget.used(), 6);
        assert_eq!(
            metrics
                .uninspected
                .with_label_values(&["response", "over_budget"])
                .get(),
            1
        );
        // Derivation is done with the first: its bytes are free again.
        drop(first);
        assert_eq!(budget.used(), 0);
        respond(b"abcde").await.unwrap();
        let third = rx.try_recv().unwrap();
        assert_eq!(third.response_body.bytes().unwrap(), "abcde");
        // Request and response copies are held together by the exchange.
        let slot = RequestSlot::default();
        let req = TapBody::request(Full::new(Bytes::from_static(b"xyz")), slot.clone(), &s);
        req.collect().await.unwrap();
        assert_eq!(budget.used(), 8);
        drop(third);
        TapBody::response(
            Full::new(Bytes::from_static(b"12")),
            pending(s.clone(), slot),
        )
        .collect()
        .await
        .unwrap();
        let fourth = rx.try_recv().unwrap();
        assert_eq!((fourth.held.bytes(), budget.used()), (5, 5));
        drop(fourth);
        assert_eq!(budget.used(), 0);
    }

    /// A body in many small frames holds the room its copy grew to, not only the bytes in it:
    /// the budget counts what is allocated.
    #[tokio::test]
    async fn the_budget_counts_the_room_a_copy_grew_to() {
        let ((s, mut rx), budget, _) = budgeted(1024, 100);
        let frames = (0..10)
            .map(|i| Ok::<_, std::convert::Infallible>(Frame::data(Bytes::from(vec![b'a' + i]))));
        let body = http_body_util::StreamBody::new(futures_util::stream::iter(frames));
        let copied = TapBody::response(body, pending(s.clone(), RequestSlot::default()))
            .collect()
            .await
            .unwrap()
            .to_bytes();
        assert_eq!(copied, "abcdefghij");
        let ex = rx.try_recv().unwrap();
        assert_eq!(ex.response_body.bytes().unwrap(), "abcdefghij");
        // Room 1, 2, 4, 8, 16: ten bytes used, sixteen allocated and held.
        assert_eq!((ex.held.bytes(), budget.used()), (16, 16));
        drop(ex);
        assert_eq!(budget.used(), 0);
    }
}
