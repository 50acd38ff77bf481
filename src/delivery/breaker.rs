//! Delivery protection: the per-endpoint state machine that pauses an endpoint which keeps
//! failing, probes it after a cooldown, and resumes it when a probe succeeds.
//!
//! In: attempt outcomes and the time. Out: whether the next request may go, and the state.
//! Never: does I/O or reads the clock itself; sporadic errors never pause (SPEC §5).

use std::collections::VecDeque;
use std::time::Duration;

use tokio::time::Instant;

use crate::config::Protection;

/// Where an endpoint stands.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum State {
    Active,
    /// Nothing is sent until `until`; then one probe.
    Paused {
        until: Instant,
        cooldown: Duration,
        manual: bool,
    },
    /// One real delivery is testing the endpoint.
    Probing {
        cooldown: Duration,
    },
}

/// What the worker may do now.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Permit {
    /// Send as usual.
    Send,
    /// Send exactly one request: the probe.
    Probe,
    /// Send nothing until then (`None`: until resumed by hand, or until the probe answers).
    Wait(Option<Instant>),
}

/// A change worth logging.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Transition {
    Paused { until: Instant },
    ProbeFailed { until: Instant },
    Resumed,
}

#[derive(Debug)]
pub struct Breaker {
    policy: Protection,
    state: State,
    consecutive: u32,
    recent: VecDeque<(Instant, bool)>,
}

impl Breaker {
    pub fn new(policy: Protection) -> Self {
        Self {
            policy,
            state: State::Active,
            consecutive: 0,
            recent: VecDeque::new(),
        }
    }

    pub fn state(&self) -> State {
        self.state
    }

    /// May a request go now? A pause that has run out turns into a probe.
    pub fn permit(&mut self, now: Instant) -> Permit {
        match self.state {
            State::Active => Permit::Send,
            State::Probing { .. } => Permit::Wait(None),
            State::Paused { manual: true, .. } => Permit::Wait(None),
            State::Paused {
                until, cooldown, ..
            } if now >= until => {
                self.state = State::Probing { cooldown };
                Permit::Probe
            }
            State::Paused { until, .. } => Permit::Wait(Some(until)),
        }
    }

    /// Records an attempt's outcome. `failure` means the endpoint misbehaved (network error,
    /// timeout, 408, 429, 5xx); a final 4xx is the request's problem, not the endpoint's.
    pub fn record(&mut self, now: Instant, failure: bool, probe: bool) -> Option<Transition> {
        if probe {
            if let State::Probing { cooldown } = self.state {
                return Some(if failure {
                    let next = (cooldown * 2).min(self.policy.max_cooldown);
                    let until = now + next;
                    self.state = State::Paused {
                        until,
                        cooldown: next,
                        manual: false,
                    };
                    Transition::ProbeFailed { until }
                } else {
                    self.reset();
                    Transition::Resumed
                });
            }
        }
        // Answers of requests sent before a pause still count towards the window, but cannot
        // change a pause that is already in place.
        self.recent.push_back((now, failure));
        while let Some(&(t, _)) = self.recent.front() {
            if now.duration_since(t) > self.policy.window {
                self.recent.pop_front();
            } else {
                break;
            }
        }
        self.consecutive = if failure { self.consecutive + 1 } else { 0 };
        if self.state != State::Active || !failure {
            return None;
        }
        let failures = self.recent.iter().filter(|(_, f)| *f).count();
        let sustained = self.consecutive >= self.policy.consecutive_failures
            || (self.recent.len() >= self.policy.min_attempts
                && failures as f64 >= self.policy.failure_ratio * self.recent.len() as f64);
        if !sustained {
            return None;
        }
        let until = now + self.policy.cooldown;
        self.state = State::Paused {
            until,
            cooldown: self.policy.cooldown,
            manual: false,
        };
        Some(Transition::Paused { until })
    }

    /// An operator's pause: holds until [`Breaker::resume`].
    pub fn pause(&mut self, now: Instant) {
        self.state = State::Paused {
            until: now,
            cooldown: self.policy.cooldown,
            manual: true,
        };
    }

    /// A pause read back after a restart: paused until `until`, then a probe.
    pub fn restore_pause(&mut self, until: Instant, cooldown: Duration) {
        self.state = State::Paused {
            until,
            cooldown,
            manual: false,
        };
    }

    /// An operator's resume: active at once, history forgotten.
    pub fn resume(&mut self) {
        self.reset();
    }

    fn reset(&mut self) {
        self.state = State::Active;
        self.consecutive = 0;
        self.recent.clear();
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn fast() -> Protection {
        Protection {
            cooldown: Duration::from_secs(30),
            max_cooldown: Duration::from_secs(120),
            ..Protection::default()
        }
    }

    #[tokio::test(start_paused = true)]
    async fn sporadic_errors_never_pause() {
        let mut b = Breaker::new(fast());
        for i in 0..200 {
            let now = Instant::now();
            // Every third fails: 33 % failures, never 5 in a row.
            assert_eq!(b.record(now, i % 3 == 0, false), None);
            assert_eq!(b.permit(now), Permit::Send);
            tokio::time::advance(Duration::from_secs(1)).await;
        }
    }

    #[tokio::test(start_paused = true)]
    async fn five_in_a_row_pause_then_probe_then_resume() {
        let mut b = Breaker::new(fast());
        for _ in 0..4 {
            assert_eq!(b.record(Instant::now(), true, false), None);
        }
        let t = b.record(Instant::now(), true, false);
        let until = Instant::now() + Duration::from_secs(30);
        assert_eq!(t, Some(Transition::Paused { until }));
        assert_eq!(b.permit(Instant::now()), Permit::Wait(Some(until)));
        tokio::time::advance(Duration::from_secs(29)).await;
        assert_eq!(b.permit(Instant::now()), Permit::Wait(Some(until)));
        tokio::time::advance(Duration::from_secs(1)).await;
        assert_eq!(b.permit(Instant::now()), Permit::Probe);
        // Only one probe at a time.
        assert_eq!(b.permit(Instant::now()), Permit::Wait(None));
        assert_eq!(
            b.record(Instant::now(), false, true),
            Some(Transition::Resumed)
        );
        assert_eq!(b.permit(Instant::now()), Permit::Send);
    }

    #[tokio::test(start_paused = true)]
    async fn failed_probes_double_the_cooldown_up_to_the_cap() {
        let mut b = Breaker::new(fast());
        for _ in 0..5 {
            b.record(Instant::now(), true, false);
        }
        let mut expected = [60u64, 120, 120].into_iter();
        for _ in 0..3 {
            let State::Paused { until, .. } = b.state() else {
                panic!()
            };
            tokio::time::advance(until - Instant::now()).await;
            assert_eq!(b.permit(Instant::now()), Permit::Probe);
            let next = Duration::from_secs(expected.next().unwrap());
            assert_eq!(
                b.record(Instant::now(), true, true),
                Some(Transition::ProbeFailed {
                    until: Instant::now() + next
                })
            );
        }
    }

    #[tokio::test(start_paused = true)]
    async fn seventy_percent_over_ten_in_the_window_pauses() {
        let mut b = Breaker::new(fast());
        // F F S F F S F F S F: 7 of 10 failed, never 5 in a row.
        let pattern = [
            true, true, false, true, true, false, true, true, false, true,
        ];
        let mut last = None;
        for f in pattern {
            last = b.record(Instant::now(), f, false);
            tokio::time::advance(Duration::from_secs(10)).await;
        }
        assert!(matches!(last, Some(Transition::Paused { .. })));
    }

    #[tokio::test(start_paused = true)]
    async fn old_failures_leave_the_window() {
        let mut b = Breaker::new(fast());
        let pattern = [true, true, false, true, true, false, true, true, false];
        for f in pattern {
            b.record(Instant::now(), f, false);
            // 9 attempts spread over 9 minutes: the 5-minute window never holds 10.
            tokio::time::advance(Duration::from_secs(60)).await;
        }
        assert_eq!(b.record(Instant::now(), true, false), None);
        assert_eq!(b.state(), State::Active);
    }

    #[tokio::test(start_paused = true)]
    async fn manual_pause_holds_until_resumed() {
        let mut b = Breaker::new(fast());
        b.pause(Instant::now());
        tokio::time::advance(Duration::from_secs(3600)).await;
        assert_eq!(b.permit(Instant::now()), Permit::Wait(None));
        b.resume();
        assert_eq!(b.permit(Instant::now()), Permit::Send);
    }
}
