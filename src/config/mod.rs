//! Configuration: the whole tree, read from `config/flaghook.toml`-shaped TOML, then `FLAGHOOK_*`
//! environment overrides, then command-line flags.
//!
//! In: a file path (or none: built-in defaults), the process environment, CLI overrides.
//! Out: a validated [`Config`] with secrets resolved, or one [`ConfigError`] naming the key.
//! Never: logs or prints a secret; never reads the environment after start-up.

mod secret;
mod webhook;

use std::net::SocketAddr;
use std::path::Path;
use std::time::Duration;

use figment::providers::{Format, Json, Serialized, Toml};
use figment::Figment;
use serde::{Deserialize, Serialize};

pub use secret::Secret;
pub use webhook::{
    Compression, ImpressionWebhookConfig, ImpressionsConfig, PayloadFormat, WebhookConfig,
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
    pub webhooks: Vec<WebhookConfig>,
    pub impressions: ImpressionsConfig,
    pub impression_webhooks: Vec<ImpressionWebhookConfig>,
    pub gitsync: GitSyncConfig,
    pub git_repositories: Vec<GitRepoConfig>,
}

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
}

impl Default for GitSyncConfig {
    fn default() -> Self {
        Self {
            workdir: String::new(),
            git_timeout: Duration::from_secs(60),
            max_file_bytes: 8 << 20,
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

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// Address clients connect to.
    pub listen: SocketAddr,
    /// Flagr's base URL (scheme, host, port; no path).
    pub upstream: String,
    /// Flagr's `FLAGR_WEB_PREFIX`, e.g. `/flagr`. Empty for none.
    pub path_prefix: String,
    /// How long to wait for Flagr's response headers before answering 504.
    #[serde(with = "humantime_serde")]
    pub upstream_timeout: Duration,
    /// How long to wait for a TCP connection to Flagr before answering 502.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Idle keep-alive connections kept per upstream host.
    pub pool_max_idle: usize,
    /// How long an idle upstream connection is kept.
    #[serde(with = "humantime_serde")]
    pub pool_idle_timeout: Duration,
    /// Bodies larger than this are streamed but not inspected (counted).
    pub inspect_max_bytes: usize,
    /// Bytes of copied bodies in flight or waiting for derivation, all exchanges together;
    /// a copy beyond it is not made (the request passes, counted as not inspected).
    pub tap_max_bytes: usize,
    /// Capacity of the channel between the proxy and the derive worker; full = dropped, counted.
    pub tap_capacity: usize,
    /// A client must send its request headers within this time.
    #[serde(with = "humantime_serde")]
    pub header_read_timeout: Duration,
    /// Open client connections at most; more are closed at once (counted).
    pub max_connections: usize,
    /// On SIGTERM, in-flight requests get this long to finish.
    #[serde(with = "humantime_serde")]
    pub shutdown_grace: Duration,
}

impl Default for ProxyConfig {
    fn default() -> Self {
        Self {
            listen: ([0, 0, 0, 0], 18080).into(),
            upstream: "http://127.0.0.1:18000".into(),
            path_prefix: String::new(),
            upstream_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            pool_max_idle: 256,
            pool_idle_timeout: Duration::from_secs(90),
            inspect_max_bytes: 1 << 20,
            tap_max_bytes: 32 << 20,
            tap_capacity: 8192,
            header_read_timeout: Duration::from_secs(30),
            max_connections: 16384,
            shutdown_grace: Duration::from_secs(20),
        }
    }
}

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct AdminConfig {
    pub listen: SocketAddr,
    /// Bearer token for the admin API: a literal, `env:NAME` or `file:/path`. Empty: API disabled.
    pub token: Secret,
    /// Timeout of the upstream health probe behind `/readyz`.
    #[serde(with = "humantime_serde")]
    pub ready_timeout: Duration,
    /// Largest request body the admin listener accepts (API calls, forge pushes).
    pub max_body_bytes: usize,
    /// Open connections at most (the page, probes, scrapes, pushes); more are closed at once.
    /// The header-read timeout and the shutdown grace are the proxy's.
    pub max_connections: usize,
}

impl Default for AdminConfig {
    fn default() -> Self {
        Self {
            listen: ([0, 0, 0, 0], 18081).into(),
            token: Secret::default(),
            ready_timeout: Duration::from_secs(2),
            max_body_bytes: 4 << 20,
            max_connections: 64,
        }
    }
}

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
}

impl Default for FlagrConfig {
    fn default() -> Self {
        Self {
            snapshot_mode: SnapshotMode::Auto,
            api_timeout: Duration::from_secs(5),
            user_header: "X-Email".into(),
            jwt_user_claim: "sub".into(),
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
    /// Only changes this flaghook proxied (one replica of several on one database, until
    /// cluster mode shares one follower).
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
    pub protection: crate::delivery::breaker::Policy,
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
        }
    }
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
        cfg.validate((!overrides.skip_secrets).then_some(env))?;
        Ok(cfg)
    }

    /// Checks values that serde cannot, and resolves every secret.
    fn validate(&mut self, env: Option<&[(String, String)]>) -> Result<(), ConfigError> {
        let up = http::Uri::try_from(self.proxy.upstream.as_str())
            .map_err(|e| ConfigError::invalid("proxy.upstream", format!("not a URL: {e}")))?;
        if up.scheme_str() != Some("http") {
            return Err(ConfigError::invalid(
                "proxy.upstream",
                "must be an http:// URL (Flagr beside flaghook speaks plain HTTP)",
            ));
        }
        if up.authority().is_none() {
            return Err(ConfigError::invalid("proxy.upstream", "has no host"));
        }
        if up.path() != "/" && !up.path().is_empty() {
            return Err(ConfigError::invalid(
                "proxy.upstream",
                "must not have a path; use proxy.path_prefix",
            ));
        }
        let p = &self.proxy.path_prefix;
        if !p.is_empty() && (!p.starts_with('/') || p.ends_with('/')) {
            return Err(ConfigError::invalid(
                "proxy.path_prefix",
                "must start with '/' and not end with '/' (or be empty)",
            ));
        }
        positive("proxy.inspect_max_bytes", self.proxy.inspect_max_bytes)?;
        positive("proxy.tap_capacity", self.proxy.tap_capacity)?;
        positive("derive.lanes", self.derive.lanes)?;
        positive("store.cache_bytes", self.store.cache_bytes)?;
        positive(
            "delivery.queue_memory_bytes",
            self.delivery.queue_memory_bytes,
        )?;
        for (key, d) in [
            ("changelog.poll_interval", self.changelog.poll_interval),
            ("changelog.rescan_interval", self.changelog.rescan_interval),
        ] {
            if d.is_zero() {
                return Err(ConfigError::invalid(key, "must be longer than 0s"));
            }
        }
        positive("derive.lane_capacity", self.derive.lane_capacity)?;
        positive("delivery.queue_max_events", self.delivery.queue_max_events)?;
        positive("delivery.queue_max_bytes", self.delivery.queue_max_bytes)?;
        positive("delivery.max_in_flight", self.delivery.max_in_flight)?;
        positive("delivery.log_size", self.delivery.log_size)?;
        positive("admin.max_body_bytes", self.admin.max_body_bytes)?;
        positive("admin.max_connections", self.admin.max_connections)?;
        positive("proxy.tap_max_bytes", self.proxy.tap_max_bytes)?;
        if let Some(p) = &self.delivery.egress_proxy {
            let ok = url::Url::parse(p)
                .is_ok_and(|u| matches!(u.scheme(), "http" | "https") && u.host().is_some());
            if !ok {
                return Err(ConfigError::invalid(
                    "delivery.egress_proxy",
                    "must be an http(s)://host:port URL",
                ));
            }
        }
        positive("proxy.max_connections", self.proxy.max_connections)?;
        positive(
            "gitsync.max_file_bytes",
            self.gitsync.max_file_bytes as usize,
        )?;
        let pr = &self.delivery.protection;
        positive(
            "delivery.protection.consecutive_failures",
            pr.consecutive_failures as usize,
        )?;
        positive("delivery.protection.min_attempts", pr.min_attempts)?;
        if !(pr.failure_ratio > 0.0 && pr.failure_ratio <= 1.0) {
            return Err(ConfigError::invalid(
                "delivery.protection.failure_ratio",
                "must be above 0 and at most 1",
            ));
        }
        if pr.cooldown.is_zero() || pr.max_cooldown < pr.cooldown {
            return Err(ConfigError::invalid(
                "delivery.protection.max_cooldown",
                "cooldown must be above 0 and max_cooldown at least cooldown",
            ));
        }
        if self.delivery.retry_schedule.is_empty() {
            return Err(ConfigError::invalid(
                "delivery.retry_schedule",
                "needs at least one entry (the first attempt)",
            ));
        }
        if !(0.0..1.0).contains(&self.delivery.jitter) {
            return Err(ConfigError::invalid(
                "delivery.jitter",
                "must be at least 0 and below 1",
            ));
        }
        if self.delivery.timeout.is_zero() {
            return Err(ConfigError::invalid("delivery.timeout", "must be above 0"));
        }
        if !matches!(self.log.format.as_str(), "text" | "json") {
            return Err(ConfigError::invalid(
                "log.format",
                "must be `text` or `json`",
            ));
        }
        tracing_subscriber::EnvFilter::try_new(&self.log.level)
            .map_err(|e| ConfigError::invalid("log.level", e.to_string()))?;
        self.admin.token.resolve("admin.token", env)?;
        let mut ids = std::collections::HashSet::new();
        for (i, w) in self.webhooks.iter_mut().enumerate() {
            w.validate(i, env, &self.delivery)?;
            if !ids.insert(w.id.clone()) {
                return Err(ConfigError::invalid(
                    format!("webhooks[{i}].id"),
                    format!("`{}` is used twice", w.id),
                ));
            }
        }
        positive("impressions.workers", self.impressions.workers)?;
        positive("impressions.queue", self.impressions.queue)?;
        let mut repo_ids = std::collections::HashSet::new();
        for (i, r) in self.git_repositories.iter_mut().enumerate() {
            let key = |k: &str| format!("git_repositories[{i}].{k}");
            if !valid_id(&r.id) || !repo_ids.insert(r.id.clone()) {
                return Err(ConfigError::invalid(
                    key("id"),
                    format!("must be unique; {ID_RULE}"),
                ));
            }
            if r.url.trim().is_empty() {
                return Err(ConfigError::invalid(key("url"), "is empty"));
            }
            if r.branch.is_empty() {
                return Err(ConfigError::invalid(key("branch"), "is empty"));
            }
            if r.poll_interval.is_zero() || r.fetch_attempts == 0 {
                return Err(ConfigError::invalid(
                    key("poll_interval"),
                    "poll_interval and fetch_attempts must be above 0",
                ));
            }
            for (forge, secret) in r.secrets.iter_mut() {
                if !matches!(forge.as_str(), "github" | "gitlab" | "gitea" | "generic") {
                    return Err(ConfigError::invalid(
                        key("secrets"),
                        format!("unknown forge `{forge}` (github, gitlab, gitea, generic)"),
                    ));
                }
                secret.resolve(&key(&format!("secrets.{forge}")), env)?;
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
