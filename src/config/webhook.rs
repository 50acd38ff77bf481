//! One change-event webhook as configured: where, which events, how it is signed and shaped.
//!
//! In: a `[[webhooks]]` table. Out: a validated [`WebhookConfig`] with secrets resolved.
//! Never: accepts an event name or wildcard that cannot match anything.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use super::{positive, ConfigError, DeliveryConfig, Secret};
use crate::events::names::{event_matches, EVENT_NAMES};

/// The body a webhook receives.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq, Hash)]
#[serde(rename_all = "lowercase")]
pub enum PayloadFormat {
    /// The seed's shape: `event, flag_id, flag_key, timestamp, data` plus `id, actor, changes, source`.
    #[default]
    Flaghook,
    /// Flagr's built-in notification body (`operation`, `component_type`, ...), one per mutation.
    Flagr,
    /// CloudEvents 1.0, structured JSON (`application/cloudevents+json`), one per event.
    #[serde(rename = "cloudevents")]
    CloudEvents,
    /// A Slack incoming-webhook message (`text` and `blocks`), one per event.
    Slack,
    /// A Teams Workflows message carrying an Adaptive Card, one per event.
    Teams,
    /// A Discord webhook message (`content` and an embed), one per event.
    Discord,
    /// The webhook's own `template` (Jinja syntax), one per event.
    Template,
}

impl PayloadFormat {
    /// The request's `Content-Type`.
    pub fn content_type(self) -> &'static str {
        match self {
            PayloadFormat::CloudEvents => "application/cloudevents+json",
            _ => "application/json",
        }
    }

    /// The built-in template of a chat preset.
    pub fn preset(self) -> Option<&'static str> {
        match self {
            PayloadFormat::Slack => Some("slack"),
            PayloadFormat::Teams => Some("teams"),
            PayloadFormat::Discord => Some("discord"),
            _ => None,
        }
    }
}

/// With `format = "cloudevents"`: how `type` and `source` are written.
#[derive(Clone, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(deny_unknown_fields, default)]
pub struct CloudEventsConfig {
    /// `type` is this prefix and the event name, e.g. `io.flagr.flag.updated`.
    pub type_prefix: String,
    /// `source`; empty: the upstream's URL (`proxy.upstream`).
    pub source: String,
}

impl Default for CloudEventsConfig {
    fn default() -> Self {
        Self {
            type_prefix: "io.flagr.".into(),
            source: String::new(),
        }
    }
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
    /// RFC 3339: after this, only `secret` signs (a rotation's grace period). None: no end.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_secret_until: Option<String>,
    #[serde(default)]
    pub format: PayloadFormat,
    /// With `format = "flagr"`: include `pre_value`, `post_value` and `diff`.
    #[serde(default)]
    pub detailed_diff: bool,
    /// With `format = "cloudevents"`: the `type` prefix and the `source`.
    #[serde(default)]
    pub cloudevents: CloudEventsConfig,
    /// With `format = "template"`: the template (Jinja syntax) ...
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub template: String,
    /// ... or the file it is read from at start.
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub template_file: String,
    /// With `format = "template"`: the body's `Content-Type` (default `application/json`).
    #[serde(default, skip_serializing_if = "String::is_empty")]
    pub content_type: String,
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
    /// Answers that are final for this receiver (not retried), e.g. `[400, 422]`. Every other
    /// non-2xx answer is retried; 410 disables the endpoint.
    #[serde(default)]
    pub final_statuses: Vec<u16>,
    /// This receiver's own attempt timeout; none: `delivery.timeout`.
    #[serde(
        default,
        with = "humantime_serde",
        skip_serializing_if = "Option::is_none"
    )]
    pub timeout: Option<std::time::Duration>,
    /// This receiver's own retry schedule; none: `delivery.retry_schedule`.
    #[serde(
        default,
        with = "super::durations_opt",
        skip_serializing_if = "Option::is_none"
    )]
    pub retry_schedule: Option<Vec<std::time::Duration>>,
}

fn all_events() -> Vec<String> {
    vec!["*".into()]
}

impl WebhookConfig {
    /// True while the previous secret still signs.
    pub fn previous_secret_valid(&self, now: std::time::SystemTime) -> bool {
        match self.previous_secret_until.as_deref() {
            None => true,
            Some(t) => chrono::DateTime::parse_from_rfc3339(t)
                .is_ok_and(|until| chrono::DateTime::<chrono::Utc>::from(now) < until),
        }
    }

    /// The request's `Content-Type`.
    pub fn content_type(&self) -> &str {
        match self.format {
            PayloadFormat::Template if !self.content_type.is_empty() => &self.content_type,
            f => f.content_type(),
        }
    }

    /// `format = "template"`: one template, read (from its file) and parsed now, so a bad one
    /// stops start-up (or an API call) naming the line.
    fn check_template(&mut self, key: &dyn Fn(&str) -> String) -> Result<(), ConfigError> {
        let has_template = !self.template.is_empty() || !self.template_file.is_empty();
        if self.format.preset().is_some() && self.final_statuses.is_empty() {
            // Chat services answer 400 to a message they will never take, and 403/404 to a
            // revoked hook: retrying those for a day would only hold the flag's later messages.
            self.final_statuses = vec![400, 403, 404];
        }
        if self.format != PayloadFormat::Template {
            if has_template || !self.content_type.is_empty() {
                return Err(ConfigError::invalid(
                    key("format"),
                    "template, template_file and content_type need format = \"template\"",
                ));
            }
            return Ok(());
        }
        match (self.template.is_empty(), self.template_file.is_empty()) {
            (true, true) | (false, false) => {
                return Err(ConfigError::invalid(
                    key("template"),
                    "format = \"template\" needs exactly one of template and template_file",
                ))
            }
            (true, false) => {
                self.template = std::fs::read_to_string(&self.template_file).map_err(|e| {
                    ConfigError::invalid(
                        key("template_file"),
                        format!("cannot read {}: {e}", self.template_file),
                    )
                })?;
            }
            (false, true) => {}
        }
        if !self.content_type.is_empty() && http::HeaderValue::from_str(&self.content_type).is_err()
        {
            return Err(ConfigError::invalid(
                key("content_type"),
                "is not a valid header value",
            ));
        }
        crate::events::template::Template::compile(&self.template)
            .map(|_| ())
            .map_err(|e| ConfigError::invalid(key("template"), e.to_string()))
    }

    pub fn validate(
        &mut self,
        i: usize,
        env: Option<&[(String, String)]>,
        delivery: &DeliveryConfig,
    ) -> Result<(), ConfigError> {
        let key = |k: &str| format!("webhooks[{i}].{k}");
        if !super::valid_id(&self.id) {
            return Err(ConfigError::invalid(key("id"), super::ID_RULE));
        }
        crate::ssrf::check_url(&self.url, &delivery.allow())
            .map_err(|e| ConfigError::invalid(key("url"), e.to_string()))?;
        if self.events.is_empty() {
            return Err(ConfigError::invalid(key("events"), "subscribes to nothing"));
        }
        self.check_template(&key)?;
        if self.timeout.is_some_and(|t| t.is_zero()) {
            return Err(ConfigError::invalid(key("timeout"), "must be above 0"));
        }
        if self.retry_schedule.as_ref().is_some_and(Vec::is_empty) {
            return Err(ConfigError::invalid(
                key("retry_schedule"),
                "needs at least one entry (the first attempt)",
            ));
        }
        if let Some(s) = self
            .final_statuses
            .iter()
            .find(|s| !(300..=599).contains(*s) || **s == 410)
        {
            return Err(ConfigError::invalid(
                key("final_statuses"),
                format!("{s}: only 3xx, 4xx and 5xx answers can be final (410 always disables)"),
            ));
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
        if let Some(t) = &self.previous_secret_until {
            if chrono::DateTime::parse_from_rfc3339(t).is_err() {
                return Err(ConfigError::invalid(
                    key("previous_secret_until"),
                    format!("`{t}` is not an RFC 3339 time"),
                ));
            }
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

/// Whether impression batches are gzipped.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// gzip, except for Slack and Fivetran webhooks.
    #[default]
    Auto,
    On,
    Off,
}

/// Where this flaghook's impressions come from, for every record.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ImpressionsConfig {
    /// `environmentId` of every record (Flagr has no environments; this sidecar is one).
    pub environment_id: String,
    /// `environmentName` of every record.
    pub environment_name: String,
    /// `machineName`; empty: the client's address.
    pub machine_name: String,
    /// Parallel workers mapping evaluations to records (off the request path).
    pub workers: usize,
    /// Evaluations waiting for mapping; when full, dropped and counted.
    pub queue: usize,
    /// Which flags' evaluations become impressions.
    pub flags: RecordedFlags,
}

/// `impressions.flags`: Flagr's recording switch, or every flag.
#[derive(Clone, Copy, Debug, Default, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "snake_case")]
pub enum RecordedFlags {
    /// Only flags with `dataRecordsEnabled`, as Flagr's own recorder.
    #[default]
    DataRecordsEnabled,
    All,
}

impl ImpressionsConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        positive("impressions.workers", self.workers)?;
        positive("impressions.queue", self.queue)
    }
}

impl Default for ImpressionsConfig {
    fn default() -> Self {
        Self {
            environment_id: "default".into(),
            environment_name: "default".into(),
            machine_name: String::new(),
            workers: 2,
            queue: 8192,
            flags: RecordedFlags::default(),
        }
    }
}

/// One impressions webhook (seed 002).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct ImpressionWebhookConfig {
    pub id: String,
    pub url: String,
    #[serde(default)]
    pub secret: Secret,
    /// Only impressions of these environments (`impressions.environment_name` or `_id`); empty: all.
    #[serde(default)]
    pub environments: Vec<String>,
    #[serde(default = "ten_seconds", with = "humantime_serde")]
    pub flush_interval: std::time::Duration,
    /// A batch is flushed early at this many records ...
    #[serde(default = "max_records")]
    pub max_records: usize,
    /// ... or this many bytes of JSON.
    #[serde(default = "max_bytes")]
    pub max_bytes: usize,
    #[serde(default)]
    pub compression: Compression,
    /// Wait before the one retry of a failed batch.
    #[serde(default = "retry_delay", with = "humantime_serde")]
    pub retry_delay: std::time::Duration,
    /// Failed batches kept for when the endpoint recovers; beyond it the oldest is dropped.
    #[serde(default = "park_max_bytes")]
    pub park_max_bytes: usize,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
}

fn ten_seconds() -> std::time::Duration {
    std::time::Duration::from_secs(10)
}
fn max_records() -> usize {
    5000
}
fn max_bytes() -> usize {
    4 << 20
}
fn retry_delay() -> std::time::Duration {
    std::time::Duration::from_millis(300)
}
fn park_max_bytes() -> usize {
    64 << 20
}

impl ImpressionWebhookConfig {
    pub(crate) fn validate(
        &mut self,
        i: usize,
        env: Option<&[(String, String)]>,
        delivery: &DeliveryConfig,
    ) -> Result<(), ConfigError> {
        let key = |k: &str| format!("impression_webhooks[{i}].{k}");
        // The id, URL, secret and header rules are those of change-event webhooks.
        let mut as_webhook = self.as_webhook();
        as_webhook.validate(i, env, delivery).map_err(|e| match e {
            ConfigError::Invalid { key: k, problem } => {
                ConfigError::invalid(k.replace("webhooks[", "impression_webhooks["), problem)
            }
            other => other,
        })?;
        self.secret = as_webhook.secret;
        for (k, v) in [
            ("max_records", self.max_records),
            ("max_bytes", self.max_bytes),
            ("park_max_bytes", self.park_max_bytes),
        ] {
            if v == 0 {
                return Err(ConfigError::invalid(key(k), "must be above 0"));
            }
        }
        if self.flush_interval.is_zero() {
            return Err(ConfigError::invalid(
                key("flush_interval"),
                "must be above 0",
            ));
        }
        Ok(())
    }

    /// The signing and addressing part, shaped like a change-event webhook.
    pub fn as_webhook(&self) -> WebhookConfig {
        WebhookConfig {
            id: self.id.clone(),
            url: self.url.clone(),
            events: all_events(),
            secret: self.secret.clone(),
            previous_secret: Secret::default(),
            previous_secret_until: None,
            format: PayloadFormat::Flaghook,
            detailed_diff: false,
            cloudevents: CloudEventsConfig::default(),
            template: String::new(),
            template_file: String::new(),
            content_type: String::new(),
            description: "impressions".into(),
            flag_keys: vec![],
            tags: vec![],
            headers: self.headers.clone(),
            final_statuses: vec![],
            timeout: None,
            retry_schedule: None,
        }
    }
}
