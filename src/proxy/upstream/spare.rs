//! The connections to Flagr that closed client connections left behind, for new client
//! connections' first requests: one proxy thread's keep-alive pool for own connections.
//!
//! In: an own connection, idle and sound, whose client connection has gone ([`Spares::park`],
//! from the client connection's drop). Out: of those still open and not idle too long, the one
//! whose last answer ended most recently ([`Spares::take`]); the others closed, by a sweep when
//! nothing else comes.
//! Never: holds more than `proxy.pool_max_idle` connections, or one idle longer than
//! `proxy.pool_idle_timeout` (counted from its last answer: Flagr's own idle limit must not
//! close one under a request); hands out one whose socket already says Flagr closed it; keeps
//! a parked connection's read buffer (it holds its socket only, so the count bounds its memory).
//!
//! Why: without it each new client connection dialed Flagr for its first request, where nginx
//! takes one from its keep-alive pool; the dial and Flagr's accept then lie on that request's
//! path, and a client that keeps no connection paid them on every request (BENCHMARKS.md).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use tokio::time::Instant;

use super::wire::Conn;

/// Spare connections of one upstream (one per proxy thread), in the order their last answers
/// ended: the most recent at the back.
pub(super) struct Spares {
    state: Mutex<State>,
    max: usize,
    max_idle: Duration,
}

#[derive(Default)]
struct State {
    conns: VecDeque<Box<Conn>>,
    /// When the live sweep wakes next; None when no sweep is waiting.
    sweep_at: Option<Instant>,
    /// Which sweep is the live one: one started for an earlier instant retires the one before.
    sweep_id: u64,
}

impl Spares {
    pub(super) fn new(max: usize, max_idle: Duration) -> Arc<Self> {
        Arc::new(Self {
            state: Mutex::default(),
            max,
            max_idle,
        })
    }

    fn lock(&self) -> MutexGuard<'_, State> {
        self.state.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// The spare whose last answer ended most recently, of those still usable; the ones found
    /// closed or idle too long are closed on the way.
    pub(super) fn take(&self) -> Option<Box<Conn>> {
        let mut s = self.lock();
        // The newest first: the least likely to have been closed by Flagr.
        while let Some(c) = s.conns.pop_back() {
            // It waited unwatched: its socket is asked, not the event loop's last word.
            if c.idle_within(self.max_idle) && !c.closed_now() {
                return Some(c);
            }
        }
        None
    }

    /// Keeps `c` for a later client connection, unless it has been idle too long already; at
    /// the bound, the one idle longest is closed.
    pub(super) fn park(self: &Arc<Self>, mut c: Box<Conn>) {
        // Its idle time goes on from when its last answer ended, not from now: a client
        // connection that sat idle before closing has used some of it up.
        if self.max == 0 || !c.usable(self.max_idle) {
            return;
        }
        c.shed_buffer();
        let mut s = self.lock();
        self.expire(&mut s);
        let at = s
            .conns
            .partition_point(|o| o.idle_since() <= c.idle_since());
        s.conns.insert(at, c);
        if s.conns.len() > self.max {
            s.conns.pop_front();
        }
        // The front may now be due before the live sweep wakes: a client connection idle for a
        // while before it closed.
        if let Some(due) = self.due(&s) {
            if s.sweep_at.is_none_or(|at| due < at) {
                s.sweep_id += 1;
                s.sweep_at = self.start_sweep(due, s.sweep_id);
            }
        }
    }

    /// When the front spare is past its idle limit, if there is one.
    fn due(&self, s: &State) -> Option<Instant> {
        // Just past the limit, so the front is then over it.
        let front = s.conns.front()?;
        Some(front.idle_since() + self.max_idle + Duration::from_millis(1))
    }

    /// Closes the spares idle too long: they are at the front.
    fn expire(&self, s: &mut State) {
        while s
            .conns
            .front()
            .is_some_and(|c| !c.idle_within(self.max_idle))
        {
            s.conns.pop_front();
        }
    }

    /// Starts sweep `id`: at `due`, and after that whenever the front spare's time is up, it
    /// closes those idle too long; it ends when none is left or a later sweep took over. None
    /// outside a runtime (then `park` expires them, and `take` never hands one out).
    fn start_sweep(self: &Arc<Self>, due: Instant, id: u64) -> Option<Instant> {
        let rt = tokio::runtime::Handle::try_current().ok()?;
        // Weak: the sweep must not keep the spares (and their sockets) after the upstream.
        let me: Weak<Self> = Arc::downgrade(self);
        rt.spawn(async move {
            let mut wake = due;
            loop {
                tokio::time::sleep_until(wake).await;
                let Some(spares) = me.upgrade() else { return };
                let mut s = spares.lock();
                if s.sweep_id != id {
                    return;
                }
                spares.expire(&mut s);
                s.sweep_at = spares.due(&s);
                match s.sweep_at {
                    Some(next) => wake = next,
                    None => return,
                }
            }
        });
        Some(due)
    }

    #[cfg(test)]
    pub(super) fn len(&self) -> usize {
        self.lock().conns.len()
    }
}

#[cfg(test)]
mod tests {
    use super::super::wire::tests::pair;
    use super::*;
    use tokio::io::AsyncReadExt;

    /// Flagr's side sees its connection end (read gives nothing more) within a minute (of
    /// paused time, where a test pauses it): a bound, so a connection left open fails the
    /// test instead of hanging it.
    async fn closed(flagr: &mut tokio::net::TcpStream) -> bool {
        let mut b = [0u8; 16];
        let read = tokio::time::timeout(Duration::from_secs(60), flagr.read(&mut b)).await;
        matches!(read, Ok(Ok(0) | Err(_)))
    }

    /// The newest comes back first; at the bound the one idle longest is closed, even when it
    /// is the one coming in; one Flagr closed is passed over, before the event loop has looked.
    #[tokio::test]
    async fn the_newest_open_spare_comes_back_and_the_bound_closes_the_oldest() {
        let spares = Spares::new(2, Duration::from_secs(60));
        let (oldest, mut f_oldest) = pair().await;
        let (a, mut fa) = pair().await;
        let (b, fb) = pair().await;
        let (c, _fc) = pair().await;
        let (bp, newest) = (b.local_port(), c.local_port());
        spares.park(a);
        spares.park(b);
        spares.park(c);
        assert_eq!(spares.len(), 2);
        assert!(
            closed(&mut fa).await,
            "the spare idle longest was not closed"
        );
        // Idle longer than both kept ones: it is the one closed.
        spares.park(oldest);
        assert!(
            closed(&mut f_oldest).await,
            "a newer spare was closed instead"
        );
        assert_eq!(spares.take().unwrap().local_port(), newest);
        assert_eq!(spares.len(), 1);
        // Flagr closes b. No await from here on: the event loop cannot have seen it, so only
        // asking the socket finds it (loopback delivers the close at once; the wait is bounded).
        drop(fb);
        let closed_now = (0..100_000).any(|_| {
            std::thread::yield_now();
            spares.lock().conns.front().is_some_and(|b| b.closed_now())
        });
        assert!(closed_now, "the socket never said Flagr closed it");
        assert!(
            !spares.lock().conns.front().unwrap().stale(),
            "seen by the event loop already"
        );
        assert_eq!(spares.lock().conns.front().unwrap().local_port(), bp);
        assert!(spares.take().is_none());
        assert_eq!(spares.len(), 0);
    }

    /// A spare idle past the limit is closed by the sweep, with nothing else happening.
    #[tokio::test(start_paused = true)]
    async fn the_sweep_closes_spares_idle_too_long() {
        let spares = Spares::new(4, Duration::from_secs(8));
        let (a, mut fa) = pair().await;
        spares.park(a);
        assert!(closed(&mut fa).await);
        assert_eq!(spares.len(), 0);
        // The sweep has ended; the next spare gets a new one.
        let (b, mut fb) = pair().await;
        spares.park(b);
        assert!(closed(&mut fb).await);
        // Not taken once idle too long, even before the sweep comes (it comes 1 ms later).
        let (c, _fc) = pair().await;
        spares.park(c);
        tokio::time::advance(Duration::from_micros(8_000_500)).await;
        assert_eq!(spares.len(), 1);
        assert!(spares.take().is_none());
        // Idle too long before its client connection closed: not kept (its idle time counts
        // from its last answer).
        let (e, mut fe) = pair().await;
        tokio::time::advance(Duration::from_secs(9)).await;
        spares.park(e);
        assert_eq!(spares.len(), 0);
        assert!(closed(&mut fe).await);
        // None kept at all when the bound is zero.
        let spares = Spares::new(0, Duration::from_secs(8));
        let (d, mut fd) = pair().await;
        spares.park(d);
        assert!(closed(&mut fd).await);
    }

    /// One whose last answer came earlier than every kept one's, parked while the sweep waits
    /// for those: closed at its own time, not at theirs.
    #[tokio::test(start_paused = true)]
    async fn a_spare_due_before_the_others_is_swept_at_its_own_time() {
        let spares = Spares::new(4, Duration::from_secs(8));
        let (early, mut f_early) = pair().await;
        tokio::time::advance(Duration::from_secs(5)).await;
        let (late, mut f_late) = pair().await;
        spares.park(late);
        spares.park(early);
        assert!(closed(&mut f_early).await);
        // The later one is still kept: the sweep came at 8 s, not at 13.
        assert_eq!(spares.len(), 1);
        assert!(closed(&mut f_late).await);
        assert_eq!(spares.len(), 0);
    }
}
