//! Configuration: the whole tree, read from `config/flaghook.toml`-shaped TOML, then `FLAGHOOK_*`
//! environment overrides, then command-line flags.
//!
//! In: a file path (or none: built-in defaults), the process environment, CLI overrides.
//! Out: a validated [`Config`] with secrets resolved, or one [`ConfigError`] naming the key.
//! Never: logs or prints a secret; never reads the environment after start-up.

mod cluster;
mod delivery;
mod flagr;
pub mod flagr_env;
mod gitsync;
mod listeners;
mod secret;
mod webhook;

use std::collections::HashSet;
use std::net::SocketAddr;
use std::path::Path;

use figment::providers::{Format, Json, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

pub use cluster::ClusterConfig;
pub use delivery::{DeliveryConfig, Protection};
pub use flagr::{ChangelogConfig, DeriveConfig, FlagrConfig, Follow, SnapshotMode, StoreConfig};
pub use gitsync::{GitRepoConfig, GitSyncConfig};
pub use listeners::{AdminConfig, ProxyConfig};
pub use secret::Secret;
pub use webhook::{
    CloudEventsConfig, Compression, ImpressionWebhookConfig, ImpressionsConfig, PayloadFormat,
    RecordedFlags, WebhookConfig,
};

/// The built-in defaults, as documented in `config/flaghook.toml`.
pub const DEFAULT_TOML: &str = include_str!("../../config/flaghook.toml");

/// The configuration as a whole. Every section has defaults, so an empty file is valid.
#[derive(Clone, Debug, Default, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct Config {
    pub proxy: ProxyConfig,
    pub admin: AdminConfig,
    pub flagr: FlagrConfig,
    pub derive: DeriveConfig,
    pub changelog: ChangelogConfig,
    pub store: StoreConfig,
    pub delivery: DeliveryConfig,
    pub log: LogConfig,
    pub runtime: RuntimeConfig,
    pub webhooks: Vec<WebhookConfig>,
    pub impressions: ImpressionsConfig,
    pub impression_webhooks: Vec<ImpressionWebhookConfig>,
    pub gitsync: GitSyncConfig,
    pub git_repositories: Vec<GitRepoConfig>,
    pub cluster: ClusterConfig,
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct LogConfig {
    /// A `tracing` filter, e.g. `info` or `flaghook=debug`.
    pub level: String,
    /// `text` or `json`.
    pub format: String,
}

impl Default for LogConfig {
    fn default() -> Self {
        Self {
            level: "info".into(),
            format: "text".into(),
        }
    }
}

/// The async runtime.
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct RuntimeConfig {
    /// Threads running everything but the proxy (derivation, impressions, delivery, the
    /// changelog, the admin API); 0: one per CPU.
    pub worker_threads: usize,
    /// Threads serving the proxy listener, each with its own runtime and connections to Flagr
    /// (a request never leaves the thread that accepted its connection); 0: one per CPU.
    /// At most 256. One by default, as nginx's one worker: two threads sharing the same load
    /// each handle fewer requests per wake-up and cost about a sixth more CPU per request
    /// (BENCHMARKS.md); more are for where flaghook's one thread is the bottleneck.
    pub proxy_threads: usize,
}

impl Default for RuntimeConfig {
    fn default() -> Self {
        Self {
            worker_threads: 0,
            proxy_threads: 1,
        }
    }
}

impl RuntimeConfig {
    /// `proxy_threads`, with 0 resolved to the CPUs this process may use.
    pub fn proxy_threads(&self) -> usize {
        match self.proxy_threads {
            0 => std::thread::available_parallelism().map_or(1, |n| n.get()),
            n => n,
        }
    }
}

/// Overrides from the command line; they win over file and environment.
#[derive(Clone, Debug, Default)]
pub struct Overrides {
    /// Check `env:`/`file:` secret references without reading them.
    pub skip_secrets: bool,
    pub upstream: Option<String>,
    pub listen: Option<SocketAddr>,
    pub admin_listen: Option<SocketAddr>,
}

/// A configuration problem, always naming the key it is about.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    #[error("config: {0}")]
    Parse(String),
    #[error("config: key `{key}`: {problem}")]
    Invalid { key: String, problem: String },
}

impl ConfigError {
    pub(crate) fn invalid(key: impl Into<String>, problem: impl Into<String>) -> Self {
        Self::Invalid {
            key: key.into(),
            problem: problem.into(),
        }
    }
}

impl Config {
    /// Loads the file (or the built-in defaults), applies `FLAGHOOK_*` from `env`, then `overrides`,
    /// validates, and resolves secrets.
    pub fn load(
        path: Option<&Path>,
        env: &[(String, String)],
        overrides: &Overrides,
    ) -> Result<Self, ConfigError> {
        let text = match path {
            Some(p) => std::fs::read_to_string(p)
                .map_err(|e| ConfigError::Parse(format!("cannot read {}: {e}", p.display())))?,
            None => DEFAULT_TOML.to_string(),
        };
        // JSON is accepted too: Helm renders numbers as floats in TOML but not in JSON.
        let json = path.is_some_and(|p| p.extension().is_some_and(|e| e == "json"));
        let base = Figment::from(Serialized::defaults(Config::default()));
        let mut fig = if json {
            base.merge(Json::string(&text))
        } else {
            base.merge(Toml::string(&text))
        };
        // `FLAGHOOK_PROXY__UPSTREAM=...` sets `proxy.upstream`. The variables are passed in (not
        // read here) so tests never touch the process environment.
        let env_pairs: Vec<(String, String)> = env
            .iter()
            .filter(|(k, _)| k.starts_with("FLAGHOOK_") && k.contains("__"))
            .cloned()
            .collect();
        for (k, v) in &env_pairs {
            let key = k["FLAGHOOK_".len()..]
                .to_ascii_lowercase()
                .replace("__", ".");
            let value = parse_env_value(v);
            fig = fig.merge(Serialized::global(&key, value));
        }
        let mut cfg: Config = fig
            .extract()
            .map_err(|e| ConfigError::Parse(describe(&e)))?;
        if let Some(u) = &overrides.upstream {
            cfg.proxy.upstream = u.clone();
        }
        if let Some(l) = overrides.listen {
            cfg.proxy.listen = l;
        }
        if let Some(l) = overrides.admin_listen {
            cfg.admin.listen = l;
        }
        // Flagr's own notifier settings, moved to flaghook's environment.
        if let Some(w) = flagr_env::webhook(env)? {
            cfg.webhooks.push(w);
        }
        cfg.validate((!overrides.skip_secrets).then_some(env))?;
        cfg.delivery.upstream = cfg.proxy.upstream.clone();
        cfg.delivery.ui_url = cfg.flagr.ui_url.clone();
        Ok(cfg)
    }

    /// Checks values that serde cannot, section by section, and resolves every secret.
    fn validate(&mut self, env: Option<&[(String, String)]>) -> Result<(), ConfigError> {
        self.proxy.validate()?;
        if self.runtime.proxy_threads > 256 {
            return Err(ConfigError::invalid(
                "runtime.proxy_threads",
                "at most 256 (0: one per CPU)",
            ));
        }
        self.admin.validate(env)?;
        self.derive.validate()?;
        self.changelog.validate()?;
        self.store.validate()?;
        self.delivery.validate()?;
        self.log.validate()?;
        self.impressions.validate()?;
        self.gitsync.validate()?;
        self.cluster.validate(env)?;
        if self.cluster.enabled() && self.store.path.is_empty() {
            // Events wait there while Redis is unreachable: an in-memory store would lose them.
            return Err(ConfigError::invalid(
                "store.path",
                "cluster mode needs a store on disk",
            ));
        }
        // Webhook ids share one namespace (metric labels, store keys, URLs).
        let mut ids = HashSet::new();
        for (i, w) in self.webhooks.iter_mut().enumerate() {
            w.validate(i, env, &self.delivery)?;
            if !ids.insert(w.id.clone()) {
                return Err(ConfigError::invalid(
                    format!("webhooks[{i}].id"),
                    format!("`{}` is used twice", w.id),
                ));
            }
        }
        for (i, w) in self.impression_webhooks.iter_mut().enumerate() {
            w.validate(i, env, &self.delivery)?;
            if !ids.insert(w.id.clone()) {
                return Err(ConfigError::invalid(
                    format!("impression_webhooks[{i}].id"),
                    format!("`{}` is used twice", w.id),
                ));
            }
        }
        let mut repo_ids = HashSet::new();
        for (i, r) in self.git_repositories.iter_mut().enumerate() {
            r.validate(i, env, &mut repo_ids)?;
        }
        Ok(())
    }
}

impl LogConfig {
    fn validate(&self) -> Result<(), ConfigError> {
        if !matches!(self.format.as_str(), "text" | "json") {
            return Err(ConfigError::invalid(
                "log.format",
                "must be `text` or `json`",
            ));
        }
        tracing_subscriber::EnvFilter::try_new(&self.level)
            .map_err(|e| ConfigError::invalid("log.level", e.to_string()))?;
        Ok(())
    }
}

/// A list of durations written as `"5s"`, `"2m"`, ...
mod durations {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serialize, Serializer};

    pub(super) fn serialize<S: Serializer>(v: &[Duration], s: S) -> Result<S::Ok, S::Error> {
        v.iter()
            .map(|d| humantime::format_duration(*d).to_string())
            .collect::<Vec<_>>()
            .serialize(s)
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(d: D) -> Result<Vec<Duration>, D::Error> {
        Vec::<String>::deserialize(d)?
            .iter()
            .map(|s| humantime::parse_duration(s).map_err(serde::de::Error::custom))
            .collect()
    }
}

/// An optional list of durations (a per-webhook override).
mod durations_opt {
    use std::time::Duration;

    use serde::{Deserialize, Deserializer, Serializer};

    pub(super) fn serialize<S: Serializer>(
        v: &Option<Vec<Duration>>,
        s: S,
    ) -> Result<S::Ok, S::Error> {
        match v {
            Some(v) => super::durations::serialize(v, s),
            None => s.serialize_none(),
        }
    }

    pub(super) fn deserialize<'de, D: Deserializer<'de>>(
        d: D,
    ) -> Result<Option<Vec<Duration>>, D::Error> {
        Option::<Vec<String>>::deserialize(d)?
            .map(|v| {
                v.iter()
                    .map(|s| humantime::parse_duration(s).map_err(serde::de::Error::custom))
                    .collect()
            })
            .transpose()
    }
}

/// What an id (webhook, repository) may be, in words.
pub const ID_RULE: &str =
    "1..64 characters of letters, digits, '-', '_' or '.', and not '.' or '..'";

/// Ids name files, metric labels and URL segments: a safe alphabet, and never `.` or `..`
/// (a repository id `..` would put its cache in the workdir's parent).
pub fn valid_id(id: &str) -> bool {
    !id.is_empty()
        && id.len() <= 64
        && id != "."
        && id != ".."
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
}

fn positive(key: &str, v: usize) -> Result<(), ConfigError> {
    if v == 0 {
        return Err(ConfigError::invalid(key, "must be above 0"));
    }
    Ok(())
}

/// Environment values are typed the way TOML would type them (`true`, `12`, `"30s"`), so
/// `FLAGHOOK_DELIVERY__ALLOW_LOOPBACK=true` is a boolean and `FLAGHOOK_PROXY__LISTEN=...` a string.
fn parse_env_value(v: &str) -> figment::value::Value {
    v.parse::<figment::value::Value>()
        .unwrap_or_else(|_| figment::value::Value::from(v.to_string()))
}

/// figment's message plus the key path it is about, on one line.
fn describe(e: &figment::Error) -> String {
    let mut parts = Vec::new();
    for err in e.clone() {
        let key = err.path.join(".");
        if key.is_empty() {
            parts.push(err.kind.to_string());
        } else {
            parts.push(format!("key `{key}`: {}", err.kind));
        }
    }
    parts.join("; ")
}

#[cfg(test)]
mod tests;
