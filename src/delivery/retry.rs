//! Retry timing: how long to wait before the next attempt, and what an answer's `Retry-After`
//! says. (Which answers are final is the endpoint's [`super::policy::DeliveryPolicy`].)
//!
//! In: a status code or transport error, the attempt number, the schedule, a random number.
//! Out: success, retry after a delay, or give up. Never: does I/O or reads the clock.

use std::time::{Duration, SystemTime};

/// What one attempt's answer means.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Verdict {
    Success,
    /// Worth another try; the receiver may have said when (`Retry-After`).
    Retry {
        retry_after: Option<Duration>,
    },
    /// The webhook says another try would get the same answer (a status in its
    /// `final_statuses`).
    Final,
    /// 410 Gone: the receiver is gone for good; the endpoint is disabled until re-enabled by
    /// hand (Standard Webhooks).
    Gone,
}

/// The delay before attempt `next` (0-based), or `None` when the schedule is used up.
/// `rand` is uniform in [0, 1); the delay moves by up to ±`jitter`. A `Retry-After` replaces the
/// scheduled delay, capped at `max_retry_after`.
pub fn delay_before(
    schedule: &[Duration],
    next: usize,
    jitter: f64,
    rand: f64,
    retry_after: Option<Duration>,
    max_retry_after: Duration,
) -> Option<Duration> {
    let base = *schedule.get(next)?;
    if let Some(ra) = retry_after {
        return Some(ra.min(max_retry_after));
    }
    let factor = 1.0 + jitter * (2.0 * rand - 1.0);
    Some(base.mul_f64(factor.max(0.0)))
}

/// Parses `Retry-After`: delta-seconds or an HTTP date (RFC 9110 §10.2.3).
pub fn parse_retry_after(value: &str, now: SystemTime) -> Option<Duration> {
    let v = value.trim();
    if let Ok(secs) = v.parse::<u64>() {
        return Some(Duration::from_secs(secs));
    }
    let when = chrono::DateTime::parse_from_rfc2822(v).ok()?;
    let when = SystemTime::UNIX_EPOCH + Duration::from_secs(when.timestamp().max(0) as u64);
    Some(when.duration_since(now).unwrap_or(Duration::ZERO))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_with_jitter_and_retry_after() {
        let s = [
            Duration::ZERO,
            Duration::from_secs(5),
            Duration::from_secs(30),
        ];
        let max = Duration::from_secs(3600);
        assert_eq!(
            delay_before(&s, 1, 0.2, 0.5, None, max),
            Some(Duration::from_secs(5))
        );
        assert_eq!(
            delay_before(&s, 1, 0.2, 0.0, None, max),
            Some(Duration::from_secs(4))
        );
        let hi = delay_before(&s, 2, 0.2, 0.999_999, None, max).unwrap();
        assert!(hi > Duration::from_secs(35) && hi <= Duration::from_secs(36));
        assert_eq!(delay_before(&s, 3, 0.2, 0.5, None, max), None);
        assert_eq!(
            delay_before(&s, 1, 0.2, 0.5, Some(Duration::from_secs(90)), max),
            Some(Duration::from_secs(90))
        );
        assert_eq!(
            delay_before(&s, 1, 0.2, 0.5, Some(Duration::from_secs(9000)), max),
            Some(max)
        );
    }

    #[test]
    fn retry_after_forms() {
        let now = SystemTime::UNIX_EPOCH + Duration::from_secs(1_445_412_480);
        assert_eq!(
            parse_retry_after("120", now),
            Some(Duration::from_secs(120))
        );
        // 2015-10-21 07:28:00 GMT is now; 30 s later:
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:28:30 GMT", now),
            Some(Duration::from_secs(30))
        );
        assert_eq!(
            parse_retry_after("Wed, 21 Oct 2015 07:00:00 GMT", now),
            Some(Duration::ZERO)
        );
        assert_eq!(parse_retry_after("soon", now), None);
    }
}
