//! Flagr's own notifier settings (`FLAGR_NOTIFICATION_*`), read as Flagr 1.2.3 reads them, so an
//! operator can move them from Flagr's container to flaghook's: they become one webhook,
//! `flagr-notification`, in Flagr's notification format.
//!
//! In: the process environment (passed in). Out: that webhook, or none when
//! `FLAGR_NOTIFICATION_WEBHOOK_ENABLED` is not true or there is no URL.
//! Never: guesses. Flagr turns a value it cannot parse into zero and carries on (a zero timeout
//! fails every send; a zero retry base crashes it); flaghook refuses such a value at start,
//! naming the variable.

use std::collections::BTreeMap;
use std::time::Duration;

use super::{CloudEventsConfig, ConfigError, PayloadFormat, Secret, WebhookConfig};

/// The webhook's id in the API, the page, metrics and logs.
pub const ID: &str = "flagr-notification";

/// The `flagr-notification` webhook the environment asks for, if any.
pub(crate) fn webhook(env: &[(String, String)]) -> Result<Option<WebhookConfig>, ConfigError> {
    let get = |k: &str| env.iter().find(|(n, _)| n == k).map(|(_, v)| v.as_str());
    let enabled = match get("FLAGR_NOTIFICATION_WEBHOOK_ENABLED") {
        None | Some("") => false,
        Some(v) => go_bool(v).ok_or_else(|| {
            bad(
                "FLAGR_NOTIFICATION_WEBHOOK_ENABLED",
                v,
                "a boolean (true, false, 1, 0, t, f)",
            )
        })?,
    };
    let url = get("FLAGR_NOTIFICATION_WEBHOOK_URL").unwrap_or("");
    if !enabled || url.is_empty() {
        return Ok(None);
    }
    let duration = |k: &str, default: Duration| -> Result<Duration, ConfigError> {
        match get(k) {
            None => Ok(default),
            Some(v) => go_duration(v)
                .filter(|d| !d.is_zero())
                .ok_or_else(|| bad(k, v, "a Go duration above 0 (500ms, 10s, 1m30s)")),
        }
    };
    let timeout = duration("FLAGR_NOTIFICATION_TIMEOUT", Duration::from_secs(10))?;
    let base = duration("FLAGR_NOTIFICATION_RETRY_BASE", Duration::from_secs(1))?;
    let max = duration("FLAGR_NOTIFICATION_RETRY_MAX", Duration::from_secs(10))?;
    let retries = match get("FLAGR_NOTIFICATION_MAX_RETRIES") {
        None => 3,
        Some(v) => v
            .parse::<i32>()
            .ok()
            .and_then(|n| u32::try_from(n).ok())
            .ok_or_else(|| {
                bad(
                    "FLAGR_NOTIFICATION_MAX_RETRIES",
                    v,
                    "a whole number, 0 or more",
                )
            })?,
    };
    let detailed = match get("FLAGR_NOTIFICATION_DETAILED_DIFF_ENABLED") {
        None | Some("") => false,
        Some(v) => go_bool(v)
            .ok_or_else(|| bad("FLAGR_NOTIFICATION_DETAILED_DIFF_ENABLED", v, "a boolean"))?,
    };
    Ok(Some(WebhookConfig {
        id: ID.into(),
        url: url.into(),
        events: vec!["*".into()],
        secret: Secret::default(),
        previous_secret: Secret::default(),
        previous_secret_until: None,
        format: PayloadFormat::Flagr,
        detailed_diff: detailed,
        cloudevents: CloudEventsConfig::default(),
        template: String::new(),
        template_file: String::new(),
        content_type: String::new(),
        description: "Flagr's notifier, from FLAGR_NOTIFICATION_*".into(),
        flag_keys: Vec::new(),
        tags: Vec::new(),
        headers: headers(get("FLAGR_NOTIFICATION_WEBHOOK_HEADERS").unwrap_or("")),
        // Flagr retries network errors and 5xx only; every other answer is final (a 410
        // disables the endpoint here, as for any webhook).
        final_statuses: (300..500).filter(|s| *s != 410).collect(),
        timeout: Some(timeout),
        retry_schedule: Some(schedule(retries, base, max)),
    }))
}

fn bad(key: &str, value: &str, want: &str) -> ConfigError {
    ConfigError::invalid(key, format!("`{value}` is not {want}"))
}

/// Go's `strconv.ParseBool`.
fn go_bool(v: &str) -> Option<bool> {
    match v {
        "1" | "t" | "T" | "TRUE" | "true" | "True" => Some(true),
        "0" | "f" | "F" | "FALSE" | "false" | "False" => Some(false),
        _ => None,
    }
}

/// Go's `time.ParseDuration`: `[-+]?([0-9]*(\.[0-9]*)?[a-z]+)+`, or `0`; negatives refused.
fn go_duration(v: &str) -> Option<Duration> {
    if v == "0" {
        return Some(Duration::ZERO);
    }
    let mut rest = v.strip_prefix('+').unwrap_or(v);
    if rest.is_empty() || rest.starts_with('-') {
        return None;
    }
    let mut total = 0f64;
    while !rest.is_empty() {
        let num_len = rest
            .find(|c: char| !(c.is_ascii_digit() || c == '.'))
            .unwrap_or(rest.len());
        let (num, tail) = rest.split_at(num_len);
        if num.is_empty() || num == "." {
            return None;
        }
        let n: f64 = num.parse().ok()?;
        let unit_len = tail
            .find(|c: char| c.is_ascii_digit() || c == '.')
            .unwrap_or(tail.len());
        let (unit, tail) = tail.split_at(unit_len);
        let scale = match unit {
            "ns" => 1e-9,
            "us" | "µs" | "μs" => 1e-6,
            "ms" => 1e-3,
            "s" => 1.0,
            "m" => 60.0,
            "h" => 3600.0,
            _ => return None,
        };
        total += n * scale;
        rest = tail;
    }
    Duration::try_from_secs_f64(total).ok()
}

/// Flagr's `util.ParseHeaders`: `Key: Value, Key2: Value2`; pieces without `:` or with an empty
/// key are dropped, keys and values trimmed, extra colons kept in the value, the last of a
/// repeated key wins.
fn headers(s: &str) -> BTreeMap<String, String> {
    let mut out = BTreeMap::new();
    for piece in s.split(',') {
        if let Some((k, v)) = piece.split_once(':') {
            let k = k.trim();
            if !k.is_empty() {
                out.insert(k.to_string(), v.trim().to_string());
            }
        }
    }
    out
}

/// Flagr's backoff without its jitter: the first try at once, then `min(2 × previous, max)`
/// from `base`, `retries` times.
fn schedule(retries: u32, base: Duration, max: Duration) -> Vec<Duration> {
    let mut out = vec![Duration::ZERO];
    let mut prev = base;
    for _ in 0..retries {
        prev = prev.checked_mul(2).unwrap_or(max).min(max);
        out.push(prev);
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    fn env(pairs: &[(&str, &str)]) -> Vec<(String, String)> {
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    }

    #[test]
    fn read_as_flagr_reads_them() {
        let w = webhook(&env(&[
            ("FLAGR_NOTIFICATION_WEBHOOK_ENABLED", "True"),
            (
                "FLAGR_NOTIFICATION_WEBHOOK_URL",
                "https://hooks.example.com/flagr",
            ),
            (
                "FLAGR_NOTIFICATION_WEBHOOK_HEADERS",
                " X-Token : abc ,Broken,:x, Trace: 1:2:3,X-Token: def",
            ),
            ("FLAGR_NOTIFICATION_TIMEOUT", "1m30s"),
            ("FLAGR_NOTIFICATION_MAX_RETRIES", "4"),
            ("FLAGR_NOTIFICATION_RETRY_BASE", "500ms"),
            ("FLAGR_NOTIFICATION_RETRY_MAX", "3s"),
            ("FLAGR_NOTIFICATION_DETAILED_DIFF_ENABLED", "1"),
        ]))
        .unwrap()
        .expect("enabled");
        assert_eq!((w.id.as_str(), w.format), (ID, PayloadFormat::Flagr));
        assert!(w.detailed_diff);
        assert_eq!(
            w.headers["X-Token"], "def",
            "the last of a repeated key wins"
        );
        assert_eq!(w.headers["Trace"], "1:2:3");
        assert_eq!(w.headers.len(), 2);
        assert_eq!(w.timeout, Some(Duration::from_secs(90)));
        let s: Vec<u64> = w
            .retry_schedule
            .unwrap()
            .iter()
            .map(|d| d.as_millis() as u64)
            .collect();
        assert_eq!(s, [0, 1000, 2000, 3000, 3000]);
        assert!(w.final_statuses.contains(&404) && !w.final_statuses.contains(&410));
    }

    #[test]
    fn off_without_the_switch_or_the_url_and_refused_when_flagr_would_break() {
        let on = ("FLAGR_NOTIFICATION_WEBHOOK_ENABLED", "true");
        let url = ("FLAGR_NOTIFICATION_WEBHOOK_URL", "https://h.example.com/");
        assert!(webhook(&env(&[url])).unwrap().is_none());
        assert!(webhook(&env(&[on])).unwrap().is_none());
        assert!(webhook(&env(&[
            ("FLAGR_NOTIFICATION_WEBHOOK_ENABLED", "false"),
            url
        ]))
        .unwrap()
        .is_none());
        for (k, v) in [
            ("FLAGR_NOTIFICATION_WEBHOOK_ENABLED", "yes"),
            ("FLAGR_NOTIFICATION_TIMEOUT", "10"),
            ("FLAGR_NOTIFICATION_TIMEOUT", ""),
            ("FLAGR_NOTIFICATION_RETRY_BASE", "0s"),
            ("FLAGR_NOTIFICATION_RETRY_MAX", "-1s"),
            ("FLAGR_NOTIFICATION_MAX_RETRIES", "-1"),
            ("FLAGR_NOTIFICATION_MAX_RETRIES", "0x3"),
        ] {
            let mut e = env(&[on, url]);
            e.retain(|(n, _)| n != k);
            e.push((k.to_string(), v.to_string()));
            let err = webhook(&e).unwrap_err().to_string();
            assert!(err.contains(k), "{k}={v}: {err}");
        }
        assert_eq!(go_duration("1.5s"), Some(Duration::from_millis(1500)));
        assert_eq!(go_duration("2h45m"), Some(Duration::from_secs(9900)));
        assert_eq!(go_duration("3d"), None);
        assert_eq!(
            go_duration("99999999999999999999h"),
            None,
            "no panic on a huge value"
        );
        assert_eq!(
            schedule(2, Duration::MAX / 2, Duration::MAX).len(),
            3,
            "no overflow on a huge base"
        );
    }
}
