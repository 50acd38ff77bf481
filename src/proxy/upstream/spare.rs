//! The connections to Flagr that closed client connections left behind, for new client
//! connections' first requests: one proxy thread's keep-alive pool for own connections.
//!
//! In: an own connection, idle and sound, whose client connection has gone ([`Spares::park`],
//! from the client connection's drop). Out: the most recently parked one that is still open
//! and not idle too long ([`Spares::take`]); the others closed, by a sweep when nothing else
//! comes.
//! Never: holds more than `proxy.pool_max_idle` connections or one idle longer than
//! `proxy.pool_idle_timeout` (Flagr's own idle limit must not close one under a request);
//! hands out one Flagr closed; keeps a parked connection's read buffer (it holds its socket
//! only, so the count bounds its memory).
//!
//! Why: without it each new client connection dialed Flagr for its first request, where nginx
//! takes one from its keep-alive pool; the dial and Flagr's accept then lie on that request's
//! path, and a load tool opening connections by the hundred saw them in its tail
//! (BENCHMARKS.md).

use std::collections::VecDeque;
use std::sync::{Arc, Mutex, MutexGuard, Weak};
use std::time::Duration;

use super::wire::Conn;

/// Spare connections of one upstream (one per proxy thread), in the order they went idle: the
/// most recent at the back.
pub(super) struct Spares {
    state: Mutex<State>,
    max: usize,
    max_idle: Duration,
}

#[derive(Default)]
struct State {
    conns: VecDeque<Box<Conn>>,
    /// A sweep task is waiting to close the oldest when it has been idle too long.
    sweeping: bool,
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

    /// The newest spare still usable; the ones found closed or idle too long are dropped on
    /// the way.
    pub(super) fn take(&self) -> Option<Box<Conn>> {
        let mut s = self.lock();
        // The newest first: the least likely to have been closed by Flagr.
        while let Some(c) = s.conns.pop_back() {
            if c.usable(self.max_idle) {
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
        if s.conns.len() >= self.max {
            s.conns.pop_front();
        }
        let at = s
            .conns
            .partition_point(|o| o.idle_since() <= c.idle_since());
        s.conns.insert(at, c);
        if !s.sweeping {
            s.sweeping = self.sweep_later();
        }
    }

    /// Closes the spares idle too long: they are at the front.
    fn expire(&self, s: &mut State) {
        while s
            .conns
            .front()
            .is_some_and(|c| c.idle_since().elapsed() > self.max_idle)
        {
            s.conns.pop_front();
        }
    }

    /// Starts a task that closes each spare once it has been idle too long, and ends when
    /// none is left. False outside a runtime (then `park` and `take` expire them).
    fn sweep_later(self: &Arc<Self>) -> bool {
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return false;
        };
        // Weak: the sweep must not keep the spares (and their sockets) after the upstream.
        let me: Weak<Self> = Arc::downgrade(self);
        rt.spawn(async move {
            loop {
                let next = {
                    let Some(spares) = me.upgrade() else { return };
                    let mut s = spares.lock();
                    spares.expire(&mut s);
                    match s.conns.front() {
                        Some(c) => c.idle_since() + spares.max_idle,
                        None => {
                            s.sweeping = false;
                            return;
                        }
                    }
                };
                // Just past the limit, so the oldest is then over it.
                tokio::time::sleep_until(next + Duration::from_millis(1)).await;
            }
        });
        true
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

    /// The newest comes back first; at the bound the oldest is closed; one Flagr closed is
    /// passed over.
    #[tokio::test]
    async fn the_newest_open_spare_comes_back_and_the_bound_closes_the_oldest() {
        let spares = Spares::new(2, Duration::from_secs(60));
        let (a, mut fa) = pair().await;
        let (b, fb) = pair().await;
        let (c, _fc) = pair().await;
        let newest = c.local_port();
        spares.park(a);
        spares.park(b);
        spares.park(c);
        assert_eq!(spares.len(), 2);
        assert!(closed(&mut fa).await, "the oldest spare was not closed");
        assert_eq!(spares.take().unwrap().local_port(), newest);
        // Flagr closes b: once the event loop has seen that, b is not handed out.
        drop(fb);
        let mut seen = false;
        for _ in 0..1000 {
            tokio::time::sleep(Duration::from_millis(5)).await;
            if spares.lock().conns.front().is_some_and(|b| b.stale()) {
                seen = true;
                break;
            }
        }
        assert!(seen, "the closed spare was never seen as closed");
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
        // Not taken once idle too long, even before the sweep comes.
        let spares = Spares::new(4, Duration::ZERO);
        let (c, _fc) = pair().await;
        spares.park(c);
        tokio::time::advance(Duration::from_millis(1)).await;
        assert!(spares.take().is_none());
        // Idle too long before its client connection closed: not kept (its idle time counts
        // from its last answer).
        let spares = Spares::new(4, Duration::from_secs(8));
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
}
