//! `[proxy]` and `[admin]`: the two listeners, their addresses, limits and timeouts.
//!
//! In: the sections as deserialised. Out: the values, checked, and the admin token resolved.
//! Never: imports a module that is not a leaf.

use std::net::SocketAddr;
use std::time::Duration;

use serde::{Deserialize, Serialize};

use super::{positive, ConfigError, Secret};

#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields, default)]
pub struct ProxyConfig {
    /// Address clients connect to.
    pub listen: SocketAddr,
    /// Flagr's base URL (scheme, host, port; no path).
    pub upstream: String,
    /// A Unix socket Flagr listens on (`flagr --scheme http --scheme unix --socket-path ...`):
    /// proxied requests go there instead of over TCP, which costs both sides less CPU.
    /// `upstream` still names Flagr (the Host of flaghook's own calls, which stay on TCP).
    /// Empty: TCP.
    pub upstream_socket: String,
    /// Flagr's `FLAGR_WEB_PREFIX`, e.g. `/flagr`. Empty for none.
    pub path_prefix: String,
    /// How long to wait for Flagr's response headers before answering 504, and the longest
    /// Flagr may go silent within an answer it has begun before the answer is cut.
    #[serde(with = "humantime_serde")]
    pub upstream_timeout: Duration,
    /// How long to wait for a TCP connection to Flagr before answering 502.
    #[serde(with = "humantime_serde")]
    pub connect_timeout: Duration,
    /// Idle keep-alive connections to Flagr kept per proxy thread: as many in hyper's pool,
    /// and as many among those closed client connections left (each holds only its socket).
    pub pool_max_idle: usize,
    /// How long an idle upstream connection is kept.
    #[serde(with = "humantime_serde")]
    pub pool_idle_timeout: Duration,
    /// Bodies larger than this are streamed but not inspected (counted).
    pub inspect_max_bytes: usize,
    /// A keep-alive HTTP/1.1 client's request whose body is at most this long (and of known
    /// length) is read whole and sent with its head in one write over the client connection's
    /// own connection to Flagr, the cheapest way through; larger or streamed ones, h2 and
    /// closing clients go through the shared pool. Memory: up to this per client connection
    /// with a request in flight. 0: only bodiless requests.
    pub inline_body_max_bytes: usize,
    /// Bytes allocated for copied bodies in flight or waiting for derivation, all exchanges together;
    /// a copy beyond it is not made (the request passes, counted as not inspected).
    pub tap_max_bytes: usize,
    /// Capacity of the channel between the proxy and the derive worker (flag changes;
    /// evaluations go to `impressions.queue`); full = dropped, counted.
    pub tap_capacity: usize,
    /// A client connection with no request in flight for this long (silent, idle between
    /// requests, stalled in a request head or not reading its answer) is closed: checked every
    /// half of it, so gracefully 1 to 1.5 times it after its last request ended, cut by 2 times
    /// it. At least 10 ms.
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
            upstream_socket: String::new(),
            path_prefix: String::new(),
            upstream_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(5),
            pool_max_idle: 256,
            // Flagr closes connections idle for 10 s (its --cleanup-timeout): letting go
            // sooner means a kept connection is never reused just as Flagr closes it.
            pool_idle_timeout: Duration::from_secs(8),
            inspect_max_bytes: 1 << 20,
            inline_body_max_bytes: 64 << 10,
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

impl ProxyConfig {
    pub(crate) fn validate(&self) -> Result<(), ConfigError> {
        let up = http::Uri::try_from(self.upstream.as_str())
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
        // sockaddr_un holds 108 bytes with the closing NUL.
        if self.upstream_socket.len() > 107 {
            return Err(ConfigError::invalid(
                "proxy.upstream_socket",
                "longer than a Unix socket path may be (107 bytes)",
            ));
        }
        let p = &self.path_prefix;
        if !p.is_empty() && (!p.starts_with('/') || p.ends_with('/')) {
            return Err(ConfigError::invalid(
                "proxy.path_prefix",
                "must start with '/' and not end with '/' (or be empty)",
            ));
        }
        // Flagr's router matches cleaned paths: a prefix that cleaning changes would be matched
        // by neither Flagr nor the route table's quick comparisons.
        if crate::flagr::routes::cleaned(p) != p.as_str() {
            return Err(ConfigError::invalid(
                "proxy.path_prefix",
                "must be a clean path: no '//', '.' or '..' segments, no %-escapes",
            ));
        }
        if self.header_read_timeout < Duration::from_millis(10) {
            // Below this a connection would be closed before a client on another host could
            // send its next request.
            return Err(ConfigError::invalid(
                "proxy.header_read_timeout",
                "must be at least 10ms",
            ));
        }
        positive("proxy.inspect_max_bytes", self.inspect_max_bytes)?;
        positive("proxy.tap_capacity", self.tap_capacity)?;
        positive("proxy.tap_max_bytes", self.tap_max_bytes)?;
        positive("proxy.max_connections", self.max_connections)
    }
}

impl AdminConfig {
    pub(crate) fn validate(&mut self, env: Option<&[(String, String)]>) -> Result<(), ConfigError> {
        positive("admin.max_body_bytes", self.max_body_bytes)?;
        positive("admin.max_connections", self.max_connections)?;
        self.token.resolve("admin.token", env)
    }
}
