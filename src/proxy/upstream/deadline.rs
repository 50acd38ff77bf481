//! A request's time limit for Flagr's answer, on one timer a client connection keeps.
//!
//! In: a future, the instant it must be done by, and the connection's timer. Out: the
//! future's output, or [`TimedOut`] once its own deadline has passed.
//! Never: ends a wait before that deadline, or lets it run past it.
//!
//! Why one timer: arming a timer per request (putting it in tokio's timer wheel, taking it out
//! again) cost about 700 instructions of an evaluation's 23,000. A client connection's requests
//! come one after another, each due later than the one before, and tokio's `Sleep::reset` to a
//! later instant only records it (one atomic exchange; the wheel files the timer again when the
//! old instant comes), so one timer reset per request serves them all.

use std::future::Future;
use std::pin::Pin;
use std::task::{ready, Context, Poll};

use tokio::time::{Instant, Sleep};

/// The deadline passed before the future was done.
#[derive(Debug)]
pub(super) struct TimedOut;

/// A timer for [`within`], set for `due`.
pub(super) fn timer(due: Instant) -> Pin<Box<Sleep>> {
    Box::pin(tokio::time::sleep_until(due))
}

pin_project_lite::pin_project! {
    /// `fut`, unless the timer goes off first. A future of its own, not an async fn, so `fut`
    /// is held once (an async fn holds its arguments twice).
    pub(super) struct Within<'a, F> {
        timer: &'a mut Pin<Box<Sleep>>,
        #[pin]
        fut: F,
    }
}

/// `fut`, unless `due` passes first; `timer` is reset to `due`, whatever it was set for.
pub(super) fn within<F: Future>(
    timer: &mut Pin<Box<Sleep>>,
    due: Instant,
    fut: F,
) -> Within<'_, F> {
    timer.as_mut().reset(due);
    Within { timer, fut }
}

impl<F: Future> Future for Within<'_, F> {
    type Output = Result<F::Output, TimedOut>;

    fn poll(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let me = self.project();
        // The future first, as tokio's timeout: an answer that is there wins over the timer.
        if let Poll::Ready(v) = me.fut.poll(cx) {
            return Poll::Ready(Ok(v));
        }
        ready!(me.timer.as_mut().poll(cx));
        Poll::Ready(Err(TimedOut))
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::time::Duration;

    /// A timer set for an earlier deadline neither cuts a later one short nor lets it run on.
    #[tokio::test(start_paused = true)]
    async fn an_earlier_timer_waits_for_the_later_deadline() {
        let start = Instant::now();
        let mut t = timer(start + Duration::from_secs(1));
        let due = start + Duration::from_secs(5);
        let never = std::future::pending::<()>();
        assert!(within(&mut t, due, never).await.is_err());
        assert_eq!(Instant::now(), due);
        // Done in time on the same timer, set for a deadline long past.
        let due = Instant::now() + Duration::from_secs(5);
        let quick = tokio::time::sleep(Duration::from_secs(4));
        assert!(within(&mut t, due, quick).await.is_ok());
        assert_eq!(Instant::now(), due - Duration::from_secs(1));
        // Set for later than a request is due: brought forward to it.
        let mut t = timer(Instant::now() + Duration::from_secs(60));
        let due = Instant::now() + Duration::from_secs(2);
        assert!(within(&mut t, due, std::future::pending::<()>())
            .await
            .is_err());
        assert_eq!(Instant::now(), due);
    }
}
