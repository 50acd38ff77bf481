//! `[cluster]`: several flaghook replicas (beside Flagr replicas on one database) acting as one
//! system through one Redis.
//!
//! In: the section as deserialised. Out: the values, checked, with the URL and password
//! resolved. Never: shows the URL's password (it lives in a [`Secret`]); imports a module that
//! is not a leaf.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{positive, ConfigError, Secret};

/// Cluster mode; off while `redis_url` is empty.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ClusterConfig {
    /// `redis://` or `rediss://` (TLS); a secret reference (`env:`, `file:`) or a literal.
    pub redis_url: Secret,
    /// Wins over a password in the URL.
    pub password: Secret,
    /// `rediss://` only: a PEM file of the CA that signed Redis's certificate (a private CA);
    /// empty: the public roots.
    pub tls_ca_file: String,
    /// Every key is `{<prefix>}:...` (one hash slot); several flaghook clusters can share a Redis.
    pub key_prefix: String,
    /// Names this replica's consumer; empty: `HOSTNAME` (the pod name), else a random id.
    pub replica_id: String,
    /// The changelog and git-sync lease: another replica takes over this long after the
    /// holder's death.
    #[serde(with = "humantime_serde")]
    pub lease_ttl: Duration,
    /// How long an event's claim (its id, per endpoint) is remembered: a re-derivation within
    /// it is never queued twice.
    #[serde(with = "humantime_serde")]
    pub claim_ttl: Duration,
    /// A request held this long by a replica that stopped renewing it is taken over.
    #[serde(with = "humantime_serde")]
    pub reclaim_idle: Duration,
    /// Requests one replica takes from an endpoint's stream at a time (the rest stay for the
    /// others).
    pub hand_max_events: usize,
    /// Events waiting in the local store while Redis is unreachable; beyond it the follower
    /// stops reading Flagr's changelog (which keeps them) until Redis is back.
    pub spill_max_bytes: u64,
}

impl Default for ClusterConfig {
    fn default() -> Self {
        Self {
            redis_url: Secret::default(),
            password: Secret::default(),
            tls_ca_file: String::new(),
            key_prefix: "flaghook".into(),
            replica_id: String::new(),
            lease_ttl: Duration::from_secs(5),
            claim_ttl: Duration::from_secs(7 * 24 * 3600),
            reclaim_idle: Duration::from_secs(30),
            hand_max_events: 64,
            spill_max_bytes: 256 << 20,
        }
    }
}

impl ClusterConfig {
    /// True when a Redis is configured.
    pub fn enabled(&self) -> bool {
        !self.redis_url.is_empty()
    }

    pub(super) fn validate(&mut self, env: Option<&[(String, String)]>) -> Result<(), ConfigError> {
        self.redis_url.resolve("cluster.redis_url", env)?;
        self.password.resolve("cluster.password", env)?;
        if !self.enabled() {
            return Ok(());
        }
        if let Some(url) = self.redis_url.expose() {
            let scheme = url.split("://").next().unwrap_or_default();
            if !matches!(scheme, "redis" | "rediss") || !url.contains("://") {
                return Err(ConfigError::invalid(
                    "cluster.redis_url",
                    "must start with redis:// or rediss:// (TLS)",
                ));
            }
        }
        if !self.tls_ca_file.is_empty() {
            if !self
                .redis_url
                .expose()
                .is_some_and(|u| u.starts_with("rediss://"))
            {
                return Err(ConfigError::invalid(
                    "cluster.tls_ca_file",
                    "only with a rediss:// (TLS) redis_url",
                ));
            }
            if env.is_some() && std::fs::metadata(&self.tls_ca_file).is_err() {
                return Err(ConfigError::invalid(
                    "cluster.tls_ca_file",
                    format!("{}: not readable", self.tls_ca_file),
                ));
            }
        }
        if self.key_prefix.is_empty()
            || !self
                .key_prefix
                .chars()
                .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.' | ':'))
        {
            return Err(ConfigError::invalid(
                "cluster.key_prefix",
                "letters, digits, '-', '_', '.' or ':', not empty",
            ));
        }
        if self.lease_ttl < Duration::from_secs(1) {
            return Err(ConfigError::invalid("cluster.lease_ttl", "at least 1s"));
        }
        if self.reclaim_idle < self.lease_ttl {
            return Err(ConfigError::invalid(
                "cluster.reclaim_idle",
                "at least cluster.lease_ttl",
            ));
        }
        if self.claim_ttl < Duration::from_secs(60) {
            return Err(ConfigError::invalid("cluster.claim_ttl", "at least 1m"));
        }
        positive("cluster.hand_max_events", self.hand_max_events)?;
        positive("cluster.spill_max_bytes", self.spill_max_bytes as usize)?;
        Ok(())
    }
}
