//! What differs between change events and impression batches, as one value: which answers
//! succeed, which are final, how retries are spaced, and what happens once they are used up.
//!
//! In: the delivery config and the endpoint's own settings. Out: verdicts and retry delays.
//! Never: does I/O or reads the clock (the random number for jitter is passed in).

use std::time::Duration;

use super::retry::{delay_before, Verdict};
use crate::config::{DeliveryConfig, WebhookConfig};

/// Which answers are a success.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Success {
    /// Any 2xx (change events).
    Any2xx,
    /// Only 200 (impression batches, seed 002).
    Only200,
}

/// How failed attempts are tried again.
#[derive(Clone, Debug, PartialEq)]
pub enum Retries {
    /// The delays before each attempt (the first is normally 0), jittered, or a receiver's
    /// `Retry-After` up to a bound.
    Schedule {
        delays: Vec<Duration>,
        jitter: f64,
        max_retry_after: Duration,
    },
    /// One more attempt after a fixed delay.
    Once(Duration),
}

/// What happens to a request whose retries are used up.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Exhausted {
    /// Dropped and counted.
    Drop,
    /// Parked (up to this many bytes, oldest dropped beyond) until the endpoint accepts a
    /// request again.
    Park { max_bytes: usize },
}

/// One endpoint's delivery rules.
#[derive(Clone, Debug, PartialEq)]
pub struct DeliveryPolicy {
    pub success: Success,
    /// Answers that are final for this receiver; 410 always disables the endpoint.
    pub final_statuses: Vec<u16>,
    pub retries: Retries,
    pub exhausted: Exhausted,
}

impl DeliveryPolicy {
    /// Change events: 2xx succeeds, the configured schedule, then dropped.
    pub fn change_events(cfg: &DeliveryConfig, webhook: &WebhookConfig) -> Self {
        Self {
            success: Success::Any2xx,
            final_statuses: webhook.final_statuses.clone(),
            retries: Retries::Schedule {
                delays: webhook
                    .retry_schedule
                    .clone()
                    .unwrap_or_else(|| cfg.retry_schedule.clone()),
                jitter: cfg.jitter,
                max_retry_after: cfg.max_retry_after,
            },
            exhausted: Exhausted::Drop,
        }
    }

    /// Impression batches (seed 002): only 200 succeeds, one retry after `retry_delay`, then
    /// parked up to `park_max_bytes`.
    pub fn impressions(retry_delay: Duration, park_max_bytes: usize) -> Self {
        Self {
            success: Success::Only200,
            final_statuses: Vec::new(),
            retries: Retries::Once(retry_delay),
            exhausted: Exhausted::Park {
                max_bytes: park_max_bytes,
            },
        }
    }

    /// What an answer means: 410 disables the endpoint; success by the policy; a status the
    /// receiver's settings make final; anything else is worth another try.
    pub fn judge(&self, status: u16, retry_after: Option<Duration>) -> Verdict {
        let ok = match self.success {
            Success::Any2xx => (200..=299).contains(&status),
            Success::Only200 => status == 200,
        };
        match status {
            410 => Verdict::Gone,
            _ if ok => Verdict::Success,
            s if self.final_statuses.contains(&s) => Verdict::Final,
            _ => Verdict::Retry {
                retry_after: match self.retries {
                    Retries::Schedule { .. } => retry_after,
                    // A batch's one retry keeps its own timing.
                    Retries::Once(_) => None,
                },
            },
        }
    }

    /// The delay before the next attempt after `attempts` attempts, or `None` when the retries
    /// are used up. `rand` is uniform in [0, 1).
    pub fn retry_delay(
        &self,
        attempts: usize,
        retry_after: Option<Duration>,
        rand: f64,
    ) -> Option<Duration> {
        match &self.retries {
            Retries::Schedule {
                delays,
                jitter,
                max_retry_after,
            } => delay_before(
                delays,
                attempts,
                *jitter,
                rand,
                retry_after,
                *max_retry_after,
            ),
            Retries::Once(d) => (attempts < 2).then_some(*d),
        }
    }

    /// The parking bound, when exhausted requests are parked.
    pub fn park_max_bytes(&self) -> Option<usize> {
        match self.exhausted {
            Exhausted::Park { max_bytes } => Some(max_bytes),
            Exhausted::Drop => None,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn change_events_retry_everything_but_2xx_410_and_final_statuses() {
        let cfg = DeliveryConfig {
            retry_schedule: vec![Duration::ZERO, Duration::from_secs(5)],
            jitter: 0.0,
            ..Default::default()
        };
        let w = WebhookConfig {
            final_statuses: vec![422],
            ..serde_json::from_str(r#"{"id": "a", "url": "https://x.example/h"}"#).unwrap()
        };
        let p = DeliveryPolicy::change_events(&cfg, &w);
        assert_eq!(p.judge(204, None), Verdict::Success);
        assert_eq!(p.judge(410, None), Verdict::Gone);
        assert_eq!(p.judge(422, None), Verdict::Final);
        let ra = Some(Duration::from_secs(9));
        assert_eq!(p.judge(503, ra), Verdict::Retry { retry_after: ra });
        assert!(matches!(p.judge(302, None), Verdict::Retry { .. }));
        assert_eq!(p.retry_delay(1, None, 0.5), Some(Duration::from_secs(5)));
        assert_eq!(p.retry_delay(1, ra, 0.5), ra);
        assert_eq!(p.retry_delay(2, None, 0.5), None);
        assert_eq!(p.park_max_bytes(), None);
    }

    #[test]
    fn impression_batches_need_200_retry_once_then_park() {
        let p = DeliveryPolicy::impressions(Duration::from_millis(300), 1024);
        assert_eq!(p.judge(200, None), Verdict::Success);
        assert_eq!(p.judge(204, None), Verdict::Retry { retry_after: None });
        let ra = Some(Duration::from_secs(60));
        assert_eq!(p.judge(503, ra), Verdict::Retry { retry_after: None });
        assert_eq!(p.judge(410, None), Verdict::Gone);
        assert_eq!(
            p.retry_delay(1, None, 0.9),
            Some(Duration::from_millis(300))
        );
        assert_eq!(p.retry_delay(2, None, 0.9), None);
        assert_eq!(p.park_max_bytes(), Some(1024));
    }
}
