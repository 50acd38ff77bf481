//! `[gitsync]` and `[[git_repositories]]`: where flags kept in git come from.
//!
//! In: the sections as deserialised. Out: the values, checked, with forge secrets resolved.
//! Never: imports a module that is not a leaf.

use std::collections::HashSet;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{positive, valid_id, ConfigError, Secret, ID_RULE};

/// Git sync as a whole.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct GitSyncConfig {
    /// Where the bare caches of watched repositories live. Empty: the system temp folder.
    pub workdir: String,
    /// Longest a single git command may take.
    #[serde(with = "humantime_serde")]
    pub git_timeout: Duration,
    /// Largest flag file read from git; a commit with a larger one is refused, not read.
    pub max_file_bytes: u64,
    /// Largest total of a commit's flag files; above it the commit is refused, nothing read.
    pub max_total_bytes: u64,
}

impl Default for GitSyncConfig {
    fn default() -> Self {
        Self {
            workdir: String::new(),
            git_timeout: Duration::from_secs(60),
            max_file_bytes: 8 << 20,
            max_total_bytes: 64 << 20,
        }
    }
}

/// One repository whose flags Flagr must match.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct GitRepoConfig {
    pub id: String,
    /// A local path, `file://`, `git://` or `http(s)://` URL; also how pushes are matched.
    pub url: String,
    #[serde(default = "main_branch")]
    pub branch: String,
    /// Only `*.json` files under this folder; empty: the whole repository.
    #[serde(default)]
    pub folder: String,
    #[serde(default = "five_minutes", with = "humantime_serde")]
    pub poll_interval: Duration,
    /// After a push, how often to try fetching its commit, and how far apart.
    #[serde(default = "ten")]
    pub fetch_attempts: u32,
    #[serde(default = "half_second", with = "humantime_serde")]
    pub fetch_interval: Duration,
    /// Delete flags that git does not have (default: leave them alone).
    #[serde(default)]
    pub delete_missing: bool,
    /// Push webhook secrets by forge: `github`, `gitlab` (the token), `gitea` (also Forgejo),
    /// `generic`. A forge without a secret cannot trigger syncs (the poller still runs).
    #[serde(default)]
    pub secrets: std::collections::BTreeMap<String, Secret>,
}

fn main_branch() -> String {
    "main".into()
}
fn five_minutes() -> Duration {
    Duration::from_secs(300)
}
fn ten() -> u32 {
    10
}
fn half_second() -> Duration {
    Duration::from_millis(500)
}

impl GitSyncConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        positive("gitsync.max_file_bytes", self.max_file_bytes as usize)?;
        positive("gitsync.max_total_bytes", self.max_total_bytes as usize)
    }
}

impl GitRepoConfig {
    /// Checks the `i`th repository; `ids` holds the ids seen before it.
    pub(crate) fn validate(
        &mut self,
        i: usize,
        env: Option<&[(String, String)]>,
        ids: &mut HashSet<String>,
    ) -> Result<(), ConfigError> {
        let key = |k: &str| format!("git_repositories[{i}].{k}");
        if !valid_id(&self.id) || !ids.insert(self.id.clone()) {
            return Err(ConfigError::invalid(
                key("id"),
                format!("must be unique; {ID_RULE}"),
            ));
        }
        if self.url.trim().is_empty() {
            return Err(ConfigError::invalid(key("url"), "is empty"));
        }
        if self.branch.is_empty() {
            return Err(ConfigError::invalid(key("branch"), "is empty"));
        }
        if self.poll_interval.is_zero() || self.fetch_attempts == 0 {
            return Err(ConfigError::invalid(
                key("poll_interval"),
                "poll_interval and fetch_attempts must be above 0",
            ));
        }
        for (forge, secret) in self.secrets.iter_mut() {
            if !matches!(forge.as_str(), "github" | "gitlab" | "gitea" | "generic") {
                return Err(ConfigError::invalid(
                    key("secrets"),
                    format!("unknown forge `{forge}` (github, gitlab, gitea, generic)"),
                ));
            }
            secret.resolve(&key(&format!("secrets.{forge}")), env)?;
        }
        Ok(())
    }
}
