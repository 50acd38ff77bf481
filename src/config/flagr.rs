//! `[flagr]`, `[derive]`, `[changelog]` and `[store]`: how changes are read from Flagr, turned
//! into events and remembered.
//!
//! In: the sections as deserialised. Out: the values, checked. Never: imports a module that
//! is not a leaf.

use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{positive, ConfigError};

/// How to find out what a mutation changed.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum SnapshotMode {
    /// Probe `GET /flags/snapshots/max_id`: 404 means legacy.
    Auto,
    /// Flagr 1.2.x: read `GET /flags/{id}/snapshots` after the mutation.
    Snapshots,
    /// Legacy 1.1.x: fetch the flag before forwarding the mutation and after it.
    Prefetch,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct FlagrConfig {
    pub snapshot_mode: SnapshotMode,
    /// Timeout of flaghook's own calls to Flagr (snapshots, prefetch, detection).
    #[serde(with = "humantime_serde")]
    pub api_timeout: Duration,
    /// Header Flagr reads the user from (`FLAGR_HEADER_AUTH_USER_FIELD`).
    pub user_header: String,
    /// JWT claim Flagr reads the user from (`FLAGR_JWT_AUTH_USER_CLAIM`).
    pub jwt_user_claim: String,
    /// Flagr's UI as people open it (e.g. `https://flagr.example.com`): chat messages and
    /// templates link to the flag there (`flag_url`). Empty: no link.
    pub ui_url: String,
}

impl Default for FlagrConfig {
    fn default() -> Self {
        Self {
            snapshot_mode: SnapshotMode::Auto,
            api_timeout: Duration::from_secs(5),
            user_header: "X-Email".into(),
            jwt_user_claim: "sub".into(),
            ui_url: String::new(),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct DeriveConfig {
    /// Parallel derivation lanes; one flag always stays on one lane, so its events keep order.
    pub lanes: usize,
    /// Mutations waiting per lane; full = dropped, counted.
    pub lane_capacity: usize,
}

impl Default for DeriveConfig {
    fn default() -> Self {
        Self {
            lanes: 4,
            lane_capacity: 1024,
        }
    }
}

/// Which changes the changelog follower turns into events.
#[derive(Clone, Copy, Debug, Deserialize, Serialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Follow {
    /// Every change in Flagr's changelog, whoever made it.
    All,
    /// Only changes this flaghook proxied: one replica of several on one database without a
    /// shared Redis (with one, `[cluster]` shares one follower instead).
    Proxied,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ChangelogConfig {
    pub follow: Follow,
    /// How often Flagr's `max_id` is read when no proxied change wakes the follower.
    #[serde(with = "humantime_serde")]
    pub poll_interval: Duration,
    /// Changes older than this when first seen (after a long downtime) are counted, not sent.
    #[serde(with = "humantime_serde")]
    pub catch_up_max_age: Duration,
    /// A change found by polling waits this long for the proxy's hint (which names the call:
    /// restore, duplicate, git sync) before its events go without it.
    #[serde(with = "humantime_serde")]
    pub hint_wait: Duration,
    /// Every flag's `updatedAt` is compared this often even when `max_id` did not move (a
    /// transaction that committed after a later id was read).
    #[serde(with = "humantime_serde")]
    pub rescan_interval: Duration,
}

impl Default for ChangelogConfig {
    fn default() -> Self {
        Self {
            follow: Follow::All,
            poll_interval: Duration::from_secs(1),
            catch_up_max_age: Duration::from_secs(24 * 3600),
            hint_wait: Duration::from_secs(1),
            rescan_interval: Duration::from_secs(60),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct StoreConfig {
    /// The embedded store's file (runtime webhooks, changelog cursors, the outbox). Empty: in
    /// memory, nothing survives a restart.
    pub path: String,
    /// Memory the store may use to cache its file's pages.
    pub cache_bytes: usize,
}

impl Default for StoreConfig {
    fn default() -> Self {
        Self {
            path: "data/flaghook.redb".into(),
            cache_bytes: 16 << 20,
        }
    }
}

impl DeriveConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        positive("derive.lanes", self.lanes)?;
        positive("derive.lane_capacity", self.lane_capacity)
    }
}

impl ChangelogConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        for (key, d) in [
            ("changelog.poll_interval", self.poll_interval),
            ("changelog.rescan_interval", self.rescan_interval),
        ] {
            if d.is_zero() {
                return Err(ConfigError::invalid(key, "must be longer than 0s"));
            }
        }
        Ok(())
    }
}

impl StoreConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        positive("store.cache_bytes", self.cache_bytes)
    }
}
