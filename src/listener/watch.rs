//! One client connection's watch: the header-read timeout and the listener's shutdown, at no
//! cost per request beyond two counter increments and a reference count.
//!
//! In: a served connection (hyper's), its service (wrapped in [`Tracked`], which counts the
//! requests it begins and ends), the listener's [`Closing`] and the timeout.
//! Out: the connection's outcome; a graceful close when it has idled (no request in flight and
//! none begun or ended) for the timeout or the listener closes, a cut when a gracefully closed
//! one still idles half a timeout later (a client stalled in a request head, or one that stopped
//! reading an answer hyper has already taken whole, as nginx's `send_timeout`).
//! Never: closes a connection while its service is still answering a request (Flagr slow, a
//! body still streaming from it) for idling, holds a lock or a timer per
//! request (hyper's own header timer allocated, registered and dropped one for every request:
//! about 5 % of the proxy's instructions per request), or wakes a connection that has nothing
//! to do.

use std::future::Future;
use std::pin::Pin;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::task::{Context, Poll, Waker};
use std::time::Duration;

use futures_util::task::AtomicWaker;
use http::{Request, Response};
use http_body::{Body, Frame, SizeHint};
use prometheus::IntCounter;
use tokio::time::{Instant, Sleep};

/// What one connection's requests have done, and how to wake it.
#[derive(Default)]
pub(super) struct Activity {
    begun: AtomicU64,
    ended: AtomicU64,
    waker: AtomicWaker,
}

/// One request begun on the connection, until its response body is done or dropped (or it
/// failed before answering).
struct InFlight(Arc<Activity>);

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.ended.fetch_add(1, Ordering::Relaxed);
    }
}

/// A connection's service, counting the requests it begins and ends.
pub(super) struct Tracked<S> {
    inner: S,
    activity: Arc<Activity>,
}

impl<S> Tracked<S> {
    pub(super) fn new(inner: S, activity: Arc<Activity>) -> Self {
        Self { inner, activity }
    }
}

impl<S, Req, B> hyper::service::Service<Request<Req>> for Tracked<S>
where
    S: hyper::service::Service<Request<Req>, Response = Response<B>>,
{
    type Response = Response<Ended<B>>;
    type Error = S::Error;
    type Future = Answering<S::Future>;

    fn call(&self, req: Request<Req>) -> Self::Future {
        self.activity.begun.fetch_add(1, Ordering::Relaxed);
        Answering {
            inner: self.inner.call(req),
            in_flight: Some(InFlight(self.activity.clone())),
        }
    }
}

pin_project_lite::pin_project! {
    /// A request being answered; its [`InFlight`] moves into the response body.
    pub(super) struct Answering<F> {
        #[pin]
        inner: F,
        in_flight: Option<InFlight>,
    }
}

impl<F, B, E> Future for Answering<F>
where
    F: Future<Output = Result<Response<B>, E>>,
{
    type Output = Result<Response<Ended<B>>, E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let this = self.project();
        let res = std::task::ready!(this.inner.poll(cx));
        // An error drops the guard here: the request has ended.
        let in_flight = this.in_flight.take();
        Poll::Ready(res.map(|r| {
            r.map(|body| Ended {
                body,
                _in_flight: in_flight,
            })
        }))
    }
}

pin_project_lite::pin_project! {
    /// A response body; its request ends when hyper has sent it whole or dropped it.
    pub(super) struct Ended<B> {
        #[pin]
        body: B,
        _in_flight: Option<InFlight>,
    }
}

impl<B: Body> Body for Ended<B> {
    type Data = B::Data;
    type Error = B::Error;

    fn poll_frame(
        self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Self::Data>, Self::Error>>> {
        self.project().body.poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.body.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.body.size_hint()
    }
}

/// A listener's open connections, told to finish together: one flag read on each poll, one
/// wake-up each when it is set.
#[derive(Default)]
pub(super) struct Closing {
    flag: AtomicBool,
    open: Mutex<Vec<Weak<Activity>>>,
}

impl Closing {
    /// A new connection's activity, to be woken on [`Closing::close_all`].
    pub(super) fn activity(&self) -> Arc<Activity> {
        let a = Arc::new(Activity::default());
        let mut open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        // Ended connections are swept only when the list would grow, and the list keeps room
        // for as many again as are open after a sweep: amortised O(1) per connection.
        if open.len() == open.capacity() {
            open.retain(|w| w.strong_count() > 0);
            let room = open.len().max(16);
            open.reserve(room);
        }
        open.push(Arc::downgrade(&a));
        a
    }

    /// Every connection, open now or polled later, closes gracefully.
    pub(super) fn close_all(&self) {
        self.flag.store(true, Ordering::Release);
        let open = self.open.lock().unwrap_or_else(|e| e.into_inner());
        for a in open.iter().filter_map(Weak::upgrade) {
            a.waker.wake();
        }
    }
}

/// How a watched connection ended.
pub(super) enum Outcome<E> {
    /// It finished by itself, or after the listener asked it to.
    Done(Result<(), E>),
    /// Closed for idling (gracefully, or cut when it idled on after that).
    Idle,
    /// Asked by the listener to close, it idled on: cut.
    Cut,
}

/// What a tick of the watch decided.
enum Verdict {
    Busy,
    Close,
    Cut,
}

pin_project_lite::pin_project! {
    /// A connection under watch. `close` asks it to finish gracefully (hyper's
    /// `graceful_shutdown`).
    pub(super) struct Watched<C, F> {
        #[pin]
        conn: C,
        #[pin]
        tick: Sleep,
        close: F,
        activity: Arc<Activity>,
        closing: Arc<Closing>,
        // The waker the timer and `Activity`'s waker (the listener's close) hold: they are
        // registered again only when the connection is polled with one that would wake
        // something else.
        waker: Option<Waker>,
        period: Duration,
        seen: u64,
        quiet: u8,
        // Asked to close (by the listener or for idling), and whether for idling.
        asked: bool,
        idled: bool,
        timed_out: IntCounter,
    }
}

impl<C, F: FnMut(Pin<&mut C>)> Watched<C, F> {
    /// Watches `conn`: with no request in flight for `timeout` (checked every half of it, so
    /// closed between 1 and 1.5 times it after its last request ended, or after it opened),
    /// it is closed gracefully and counted in `timed_out`.
    pub(super) fn new(
        conn: C,
        close: F,
        activity: Arc<Activity>,
        closing: Arc<Closing>,
        timeout: Duration,
        timed_out: IntCounter,
    ) -> Self {
        let period = (timeout / 2).max(Duration::from_millis(1));
        Self {
            conn,
            tick: tokio::time::sleep(period),
            close,
            activity,
            closing,
            waker: None,
            period,
            seen: 0,
            quiet: 0,
            asked: false,
            idled: false,
            timed_out,
        }
    }
}

impl Activity {
    /// One tick: busy when a request is in flight or one began or ended since the last tick;
    /// two quiet ticks in a row close the connection, a third cuts it.
    fn tick(&self, seen: &mut u64, quiet: &mut u8) -> Verdict {
        let begun = self.begun.load(Ordering::Relaxed);
        let ended = self.ended.load(Ordering::Relaxed);
        let progress = begun.wrapping_add(ended);
        if begun != ended || progress != *seen {
            *seen = progress;
            *quiet = 0;
            return Verdict::Busy;
        }
        *quiet = quiet.saturating_add(1);
        match *quiet {
            1 => Verdict::Busy,
            2 => Verdict::Close,
            _ => Verdict::Cut,
        }
    }
}

impl<C, F, E> Future for Watched<C, F>
where
    C: Future<Output = Result<(), E>>,
    F: FnMut(Pin<&mut C>),
{
    type Output = Outcome<E>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let mut this = self.project();
        // The connection first: a request that arrived with the tick is read (and counted)
        // before the tick is judged.
        if let Poll::Ready(r) = this.conn.as_mut().poll(cx) {
            return Poll::Ready(if *this.idled {
                Outcome::Idle
            } else {
                Outcome::Done(r)
            });
        }
        let fresh = !this.waker.as_ref().is_some_and(|w| w.will_wake(cx.waker()));
        if fresh {
            *this.waker = Some(cx.waker().clone());
            this.activity.waker.register(cx.waker());
        }
        let mut asked_now = false;
        if !*this.asked && this.closing.flag.load(Ordering::Acquire) {
            *this.asked = true;
            asked_now = true;
            (this.close)(this.conn.as_mut());
        }
        // Polling the timer registers the waker (only needed when it changed) and tells a
        // tick; every Ready is a tick, also one that fired again while it was being reset.
        if fresh || this.tick.is_elapsed() {
            while poll_tick(this.tick.as_mut(), cx).is_ready() {
                match this.activity.tick(this.seen, this.quiet) {
                    Verdict::Busy => {}
                    Verdict::Close if !*this.asked => {
                        *this.asked = true;
                        *this.idled = true;
                        asked_now = true;
                        this.timed_out.inc();
                        (this.close)(this.conn.as_mut());
                    }
                    Verdict::Close => {}
                    Verdict::Cut if *this.idled => return Poll::Ready(Outcome::Idle),
                    Verdict::Cut => return Poll::Ready(Outcome::Cut),
                }
                this.tick.as_mut().reset(Instant::now() + *this.period);
            }
        }
        if asked_now {
            // A graceful close may end an idle connection at once.
            if let Poll::Ready(r) = this.conn.as_mut().poll(cx) {
                return Poll::Ready(if *this.idled {
                    Outcome::Idle
                } else {
                    Outcome::Done(r)
                });
            }
        }
        Poll::Pending
    }
}

/// Polls the watch's timer outside the task's cooperative budget: a poll refused for want of
/// budget would register no waker, and with the waker unchanged the timer is not polled again
/// until it has fired, which nothing would then report.
fn poll_tick(tick: Pin<&mut Sleep>, cx: &mut Context<'_>) -> Poll<()> {
    std::pin::pin!(tokio::task::coop::unconstrained(tick)).poll(cx)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A connection that stays open until asked to close, or (`deaf`) for ever.
    struct Open {
        deaf: bool,
        closed: bool,
    }

    impl Future for Open {
        type Output = Result<(), ()>;
        fn poll(self: Pin<&mut Self>, _: &mut Context<'_>) -> Poll<Self::Output> {
            if self.closed {
                Poll::Ready(Ok(()))
            } else {
                Poll::Pending
            }
        }
    }

    type Watch = tokio::task::JoinHandle<Outcome<()>>;

    /// A watched connection with a 10 s timeout, its activity, the listener's closing and the
    /// idle counter.
    fn watch(deaf: bool) -> (Watch, Arc<Activity>, Arc<Closing>, IntCounter) {
        let closing = Arc::new(Closing::default());
        let activity = closing.activity();
        let counter = IntCounter::new("t", "t").unwrap();
        let w = Watched::new(
            Open {
                deaf,
                closed: false,
            },
            |mut c: Pin<&mut Open>| c.closed = !c.deaf,
            activity.clone(),
            closing.clone(),
            Duration::from_secs(10),
            counter.clone(),
        );
        (tokio::spawn(w), activity, closing, counter)
    }

    async fn at(start: Instant, secs: f64) {
        tokio::time::sleep_until(start + Duration::from_secs_f64(secs)).await;
    }

    #[tokio::test(start_paused = true)]
    async fn an_idle_connection_is_closed_after_the_timeout_and_not_before() {
        let start = Instant::now();
        let (w, _, _, counter) = watch(false);
        at(start, 9.9).await;
        assert!(!w.is_finished(), "closed before the timeout");
        at(start, 10.1).await;
        assert!(matches!(w.await.unwrap(), Outcome::Idle));
        assert_eq!(counter.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn requests_keep_it_open_and_the_timeout_counts_from_the_last_one() {
        let start = Instant::now();
        let (w, a, _, counter) = watch(false);
        // A request every 6 s (under the timeout) for a minute.
        for i in 1..=10 {
            at(start, 6.0 * i as f64).await;
            a.begun.fetch_add(1, Ordering::Relaxed);
            a.ended.fetch_add(1, Ordering::Relaxed);
        }
        // One in flight for a minute and a half, far past the timeout.
        a.begun.fetch_add(1, Ordering::Relaxed);
        at(start, 150.0).await;
        assert!(!w.is_finished(), "closed with requests coming or in flight");
        a.ended.fetch_add(1, Ordering::Relaxed);
        // Idle from 150 s: not closed before 160 s, closed by 165 s.
        at(start, 159.9).await;
        assert!(
            !w.is_finished(),
            "closed before a whole timeout after the last request"
        );
        at(start, 165.1).await;
        assert!(matches!(w.await.unwrap(), Outcome::Idle));
        assert_eq!(counter.get(), 1);
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_that_ignores_the_graceful_close_is_cut() {
        let start = Instant::now();
        let (w, _, _, counter) = watch(true);
        at(start, 14.9).await;
        assert!(!w.is_finished());
        assert_eq!(counter.get(), 1, "asked to close at 10 s");
        at(start, 15.1).await;
        assert!(matches!(w.await.unwrap(), Outcome::Idle));
    }

    #[tokio::test(start_paused = true)]
    async fn the_listener_closing_reaches_an_idle_connection_at_once() {
        let start = Instant::now();
        let (w, _, closing, counter) = watch(false);
        at(start, 1.0).await;
        closing.close_all();
        at(start, 1.001).await;
        assert!(w.is_finished());
        assert!(matches!(w.await.unwrap(), Outcome::Done(Ok(()))));
        assert_eq!(counter.get(), 0);
    }
}
