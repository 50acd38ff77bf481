//! One change-event webhook as configured: where, which events, how it is signed and shaped.
//!
//! In: a `[[webhooks]]` table. Out: a validated [`WebhookConfig`] with secrets resolved.
//! Never: accepts an event name or wildcard that cannot match anything.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{ConfigError, DeliveryConfig, Secret};
use crate::events::EVENT_NAMES;

/// The body a webhook receives.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum PayloadFormat {
    /// The seed's shape: `event, flag_id, flag_key, timestamp, data` plus `id, actor, changes, source`.
    #[default]
    Flaghook,
    /// Flagr's built-in notification body (`operation`, `component_type`, ...), one per mutation.
    Flagr,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookConfig {
    /// Stable identifier: used in metrics labels, logs and the admin API.
    pub id: String,
    pub url: String,
    /// Event names or wildcards (`flag.*`, `*`).
    #[serde(default = "all_events")]
    pub events: Vec<String>,
    /// Signing secret (literal, `env:NAME` or `file:/path`). Empty: unsigned.
    #[serde(default)]
    pub secret: Secret,
    /// The previous secret while receivers rotate; requests carry signatures for both.
    #[serde(default)]
    pub previous_secret: Secret,
    #[serde(default)]
    pub format: PayloadFormat,
    /// With `format = "flagr"`: include `pre_value`, `post_value` and `diff`.
    #[serde(default)]
    pub detailed_diff: bool,
    #[serde(default)]
    pub description: String,
    /// Only flags whose key matches one of these globs (`*`, `?`). Empty: all flags.
    #[serde(default)]
    pub flag_keys: Vec<String>,
    /// Only flags carrying at least one of these tags. Empty: all flags.
    #[serde(default)]
    pub tags: Vec<String>,
    /// Extra request headers, e.g. an `Authorization` the receiver wants.
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

fn all_events() -> Vec<String> {
    vec!["*".into()]
}

/// True when `pattern` (an event name, `prefix.*` or `*`) matches `event`.
pub fn event_matches(pattern: &str, event: &str) -> bool {
    if pattern == "*" {
        return true;
    }
    match pattern.strip_suffix(".*") {
        Some(prefix) => event
            .strip_prefix(prefix)
            .is_some_and(|rest| rest.starts_with('.')),
        None => pattern == event,
    }
}

impl WebhookConfig {
    pub fn validate(
        &mut self,
        i: usize,
        env: &[(String, String)],
        delivery: &DeliveryConfig,
    ) -> Result<(), ConfigError> {
        let key = |k: &str| format!("webhooks[{i}].{k}");
        if self.id.is_empty()
            || !self
                .id
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
            || self.id.len() > 64
        {
            return Err(ConfigError::invalid(
                key("id"),
                "must be 1..64 characters of letters, digits, '-', '_' or '.'",
            ));
        }
        crate::delivery::guard::check_url(&self.url, delivery)
            .map_err(|e| ConfigError::invalid(key("url"), e.to_string()))?;
        if self.events.is_empty() {
            return Err(ConfigError::invalid(key("events"), "subscribes to nothing"));
        }
        for e in &self.events {
            if !EVENT_NAMES.iter().any(|n| event_matches(e, n)) {
                return Err(ConfigError::invalid(
                    key("events"),
                    format!("`{e}` matches no event (known: {})", EVENT_NAMES.join(", ")),
                ));
            }
        }
        self.secret.resolve(&key("secret"), env)?;
        self.previous_secret.resolve(&key("previous_secret"), env)?;
        if self.secret.is_empty() && !self.previous_secret.is_empty() {
            return Err(ConfigError::invalid(
                key("previous_secret"),
                "set without `secret`",
            ));
        }
        for g in &self.flag_keys {
            if g.is_empty() {
                return Err(ConfigError::invalid(key("flag_keys"), "empty pattern"));
            }
        }
        for (name, value) in &self.headers {
            http::HeaderName::try_from(name.as_str())
                .map_err(|_| ConfigError::invalid(key("headers"), format!("bad name `{name}`")))?;
            http::HeaderValue::try_from(value.as_str()).map_err(|_| {
                ConfigError::invalid(key("headers"), format!("bad value for `{name}`"))
            })?;
        }
        Ok(())
    }

    /// True when this webhook wants `event` for a flag with this key and these tags.
    pub fn wants(&self, event: &str, flag_key: &str, tags: &[String]) -> bool {
        self.events.iter().any(|p| event_matches(p, event))
            && (self.flag_keys.is_empty()
                || self
                    .flag_keys
                    .iter()
                    .any(|g| wildmatch::WildMatch::new(g).matches(flag_key)))
            && (self.tags.is_empty() || self.tags.iter().any(|t| tags.contains(t)))
    }
}
