//! `[delivery]`: how webhooks are sent: timeouts, retries, queues, the SSRF allowances and
//! the protection that pauses failing endpoints.
//!
//! In: the section as deserialised. Out: the values, checked. Never: imports a module that is
//! not a leaf (delivery reads these; this reads nothing of delivery).

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{durations, positive, ConfigError};

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeliveryConfig {
    /// Whole-request timeout per attempt: connect, send, response.
    #[serde(with = "humantime_serde")]
    pub timeout: Duration,
    /// Delay before each attempt; the first is normally 0. Its length is the attempt limit.
    #[serde(with = "durations")]
    pub retry_schedule: Vec<Duration>,
    /// ± fraction applied to every retry delay.
    pub jitter: f64,
    /// Upper bound for a receiver's `Retry-After`.
    #[serde(with = "humantime_serde")]
    pub max_retry_after: Duration,
    /// Per endpoint: queued requests at most; the oldest is dropped beyond it.
    pub queue_max_events: usize,
    /// Per endpoint: queued body bytes at most; the oldest is dropped beyond it.
    pub queue_max_bytes: usize,
    /// Per endpoint: queued bodies kept in memory at most; beyond it (with a store on disk) a
    /// body stays in the outbox until it is sent.
    pub queue_memory_bytes: usize,
    /// Per endpoint: requests in flight at once (one per flag at most, to keep order).
    pub max_in_flight: usize,
    /// Allow destinations on loopback addresses (refused by default: SSRF guard).
    pub allow_loopback: bool,
    /// Allow destinations on private, link-local and metadata addresses.
    pub allow_private: bool,
    /// On shutdown, queued deliveries get this long.
    #[serde(with = "humantime_serde")]
    pub shutdown_deadline: Duration,
    /// Response body bytes kept for errors and the delivery log.
    pub response_excerpt_bytes: usize,
    /// Attempts kept in each endpoint's delivery log.
    pub log_size: usize,
    /// Request bodies the delivery log keeps for replay, per endpoint; beyond it the oldest
    /// entries keep their metadata but lose their body (they can no longer be replayed).
    pub log_body_bytes: usize,
    /// Allow destinations in these networks (CIDR), e.g. `10.1.0.0/16`.
    pub allow_cidrs: Vec<ipnet::IpNet>,
    /// Allow these host names whatever they resolve to.
    pub allow_hosts: Vec<String>,
    /// Refuse `http://` webhook URLs.
    pub require_https: bool,
    /// Send webhooks through this HTTP proxy (`http://host:port`). The environment's
    /// `HTTP_PROXY`/`HTTPS_PROXY` are never used. Behind a proxy the guard checks literal
    /// addresses in URLs only: the proxy resolves names.
    pub egress_proxy: Option<String>,
    /// Pausing endpoints that keep failing.
    pub protection: Protection,
    /// `proxy.upstream`, set at load: the default CloudEvents `source`.
    #[serde(skip)]
    pub upstream: String,
    /// `flagr.ui_url`, set at load: where templates' `flag_url` points.
    #[serde(skip)]
    pub ui_url: String,
}

impl DeliveryConfig {
    /// The destinations the operator allows beyond public addresses.
    pub fn allow(&self) -> crate::ssrf::Allow<'_> {
        crate::ssrf::Allow {
            loopback: self.allow_loopback,
            private: self.allow_private,
            cidrs: &self.allow_cidrs,
            hosts: &self.allow_hosts,
            require_https: self.require_https,
        }
    }
}

impl Default for DeliveryConfig {
    fn default() -> Self {
        let m = |s: u64| Duration::from_secs(60 * s);
        Self {
            timeout: Duration::from_secs(10),
            // About 27 hours in all, as Svix and Standard Webhooks do: a receiver down for a
            // day loses nothing.
            retry_schedule: vec![
                Duration::ZERO,
                Duration::from_secs(5),
                Duration::from_secs(30),
                m(2),
                m(5),
                m(30),
                m(120),
                m(300),
                m(600),
                m(600),
            ],
            jitter: 0.2,
            max_retry_after: Duration::from_secs(3600),
            queue_max_events: 10_000,
            queue_max_bytes: 64 << 20,
            queue_memory_bytes: 8 << 20,
            max_in_flight: 16,
            allow_loopback: false,
            allow_private: false,
            shutdown_deadline: Duration::from_secs(20),
            response_excerpt_bytes: 4096,
            log_size: 100,
            log_body_bytes: 1 << 20,
            allow_cidrs: Vec::new(),
            allow_hosts: Vec::new(),
            require_https: false,
            egress_proxy: None,
            protection: Default::default(),
            upstream: super::ProxyConfig::default().upstream,
            ui_url: String::new(),
        }
    }
}

/// The numbers of SPEC §5, all configurable (`[delivery.protection]`).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Protection {
    /// This many failures in a row pause the endpoint.
    pub consecutive_failures: u32,
    /// Or: at least this share of failures ...
    pub failure_ratio: f64,
    /// ... over at least this many attempts ...
    pub min_attempts: usize,
    /// ... within this window.
    #[serde(with = "humantime_serde")]
    pub window: Duration,
    /// The first pause; each failed probe doubles it ...
    #[serde(with = "humantime_serde")]
    pub cooldown: Duration,
    /// ... up to this.
    #[serde(with = "humantime_serde")]
    pub max_cooldown: Duration,
}

impl Default for Protection {
    fn default() -> Self {
        Self {
            consecutive_failures: 5,
            failure_ratio: 0.7,
            min_attempts: 10,
            window: Duration::from_secs(300),
            cooldown: Duration::from_secs(30),
            max_cooldown: Duration::from_secs(600),
        }
    }
}

impl DeliveryConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        positive("delivery.queue_memory_bytes", self.queue_memory_bytes)?;
        positive("delivery.queue_max_events", self.queue_max_events)?;
        positive("delivery.queue_max_bytes", self.queue_max_bytes)?;
        positive("delivery.max_in_flight", self.max_in_flight)?;
        positive("delivery.log_size", self.log_size)?;
        if let Some(p) = &self.egress_proxy {
            let ok = url::Url::parse(p)
                .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
            if !ok {
                return Err(ConfigError::invalid(
                    "delivery.egress_proxy",
                    "must be an http(s)://host:port URL",
                ));
            }
        }
        self.protection.validate()?;
        if self.retry_schedule.is_empty() {
            return Err(ConfigError::invalid(
                "delivery.retry_schedule",
                "needs at least one entry (the first attempt)",
            ));
        }
        if !(0.0..1.0).contains(&self.jitter) {
            return Err(ConfigError::invalid(
                "delivery.jitter",
                "must be at least 0 and below 1",
            ));
        }
        if self.timeout.is_zero() {
            return Err(ConfigError::invalid("delivery.timeout", "must be above 0"));
        }
        Ok(())
    }
}

impl Protection {
    fn validate(&self) -> Result<(), ConfigError> {
        positive(
            "delivery.protection.consecutive_failures",
            self.consecutive_failures as usize,
        )?;
        positive("delivery.protection.min_attempts", self.min_attempts)?;
        if !(self.failure_ratio > 0.0 && self.failure_ratio <= 1.0) {
            return Err(ConfigError::invalid(
                "delivery.protection.failure_ratio",
                "must be above 0 and at most 1",
            ));
        }
        if self.cooldown.is_zero() || self.max_cooldown < self.cooldown {
            return Err(ConfigError::invalid(
                "delivery.protection.max_cooldown",
                "cooldown must be above 0 and max_cooldown at least cooldown",
            ));
        }
        Ok(())
    }
}
