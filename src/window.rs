//! Per-minute buckets over the last hour, for the admin page's charts.
//!
//! In: values added at "now" (wall-clock minutes). Out: the last 60 minutes, oldest first, a
//! minute with nothing in it as the default value.
//! Never: grows: 60 slots, reused as the minutes turn.

/// Minutes kept.
pub const MINUTES: usize = 60;

/// 60 slots indexed by epoch minute modulo 60; a slot holding an older minute counts as empty.
#[derive(Clone, Debug)]
pub struct Minutes<T> {
    slots: Vec<(i64, T)>,
}

impl<T: Clone + Default> Default for Minutes<T> {
    fn default() -> Self {
        Self {
            slots: vec![(-1, T::default()); MINUTES],
        }
    }
}

/// The current epoch minute.
pub fn now_minute() -> i64 {
    chrono::Utc::now().timestamp().div_euclid(60)
}

/// A minute's start as the API shows times.
pub fn minute_rfc3339(minute: i64) -> String {
    chrono::DateTime::from_timestamp(minute * 60, 0)
        .unwrap_or_default()
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

impl<T: Clone + Default> Minutes<T> {
    /// The slot of `minute`, emptied first if it held an older minute.
    pub fn at(&mut self, minute: i64) -> &mut T {
        let i = minute.rem_euclid(MINUTES as i64) as usize;
        let slot = &mut self.slots[i];
        if slot.0 != minute {
            *slot = (minute, T::default());
        }
        &mut slot.1
    }

    /// The slot of the current minute.
    pub fn now(&mut self) -> &mut T {
        self.at(now_minute())
    }

    /// The 60 minutes up to and including `last`, oldest first, with their minute.
    pub fn window(&self, last: i64) -> Vec<(i64, T)> {
        (last - MINUTES as i64 + 1..=last)
            .map(|m| {
                let slot = &self.slots[m.rem_euclid(MINUTES as i64) as usize];
                let v = if slot.0 == m {
                    slot.1.clone()
                } else {
                    T::default()
                };
                (m, v)
            })
            .collect()
    }
}

/// Geometric latency buckets from 0.25 ms (factor 1.25 up to about 60 s): quantiles within 12 %.
const LAT_BUCKETS: usize = 56;
const LAT_BASE_MS: f64 = 0.25;
const LAT_FACTOR: f64 = 1.25;

/// Successes, failures and a latency histogram for one minute (or a sum of minutes).
#[derive(Clone, Debug)]
pub struct Latencies {
    pub ok: u32,
    pub failed: u32,
    buckets: [u32; LAT_BUCKETS],
}

impl Default for Latencies {
    fn default() -> Self {
        Self {
            ok: 0,
            failed: 0,
            buckets: [0; LAT_BUCKETS],
        }
    }
}

impl Latencies {
    pub fn record(&mut self, ok: bool, latency_ms: f64) {
        if ok {
            self.ok += 1;
        } else {
            self.failed += 1;
        }
        let i = if latency_ms <= LAT_BASE_MS {
            0
        } else {
            ((latency_ms / LAT_BASE_MS).ln() / LAT_FACTOR.ln()).ceil() as usize
        };
        self.buckets[i.min(LAT_BUCKETS - 1)] += 1;
    }

    pub fn add(&mut self, other: &Latencies) {
        self.ok += other.ok;
        self.failed += other.failed;
        for (a, b) in self.buckets.iter_mut().zip(other.buckets.iter()) {
            *a += b;
        }
    }

    /// The `q` quantile (0..1) in ms: the upper bound of its bucket; `None` when empty.
    pub fn quantile(&self, q: f64) -> Option<f64> {
        let n: u64 = self.buckets.iter().map(|&b| b as u64).sum();
        if n == 0 {
            return None;
        }
        let rank = ((q * n as f64).ceil() as u64).max(1);
        let mut seen = 0u64;
        for (i, &b) in self.buckets.iter().enumerate() {
            seen += b as u64;
            if seen >= rank {
                let upper = LAT_BASE_MS * LAT_FACTOR.powi(i as i32);
                return Some((upper * 100.0).round() / 100.0);
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn old_minutes_read_as_empty_and_slots_are_reused() {
        let mut m: Minutes<u32> = Minutes::default();
        *m.at(1000) += 3;
        *m.at(1059) += 1;
        let w = m.window(1059);
        assert_eq!(w.len(), MINUTES);
        assert_eq!(w[0], (1000, 3));
        assert_eq!(w[59], (1059, 1));
        // An hour later slot 1000 % 60 holds minute 1060: 1000 is gone.
        *m.at(1060) += 5;
        let w = m.window(1060);
        assert_eq!(w[0], (1001, 0));
        assert_eq!(w[59], (1060, 5));
        assert!(m.window(2000).iter().all(|(_, v)| *v == 0));
    }

    #[test]
    fn latency_quantiles_are_within_a_bucket() {
        let mut l = Latencies::default();
        assert_eq!(l.quantile(0.5), None);
        for ms in 1..=100 {
            l.record(ms % 10 != 0, ms as f64);
        }
        assert_eq!((l.ok, l.failed), (90, 10));
        let p50 = l.quantile(0.5).unwrap();
        let p99 = l.quantile(0.99).unwrap();
        assert!((50.0..=50.0 * 1.25).contains(&p50), "{p50}");
        assert!((99.0..=99.0 * 1.25).contains(&p99), "{p99}");
        let mut sum = Latencies::default();
        sum.add(&l);
        sum.add(&l);
        assert_eq!(sum.ok, 180);
        assert_eq!(sum.quantile(0.5), l.quantile(0.5));
    }
}
