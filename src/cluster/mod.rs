//! Cluster mode: the flaghook replicas beside Flagr replicas on one database act as one system
//! through one Redis.
//!
//! In: `[cluster]`; commands and reads from delivery (streams, claims, acks), the changelog's
//! supervisor (the lease) and the admin API (shared webhooks, pause state, the delivery log).
//! Out: Redis commands; whether this replica leads; whether Redis answers, for `/readyz`.
//! Never: sits on the proxy path (nothing here is awaited by a proxied request); imports
//! delivery or the changelog (they call in, this answers); hides a failed Redis call (each
//! is counted by operation and named in `/readyz`).

pub mod lease;
pub mod metrics;
pub mod shared;
pub mod stream;

use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use redis::aio::ConnectionManager;
use redis::{IntoConnectionInfo, RedisError};
use tokio::sync::watch;
use tokio::time::Instant;

pub use metrics::ClusterMetrics;

use crate::config::ClusterConfig;

/// How long one Redis call may take before it counts as failed: the callers retry, and a Redis
/// that went away must not hold a task for longer.
const CALL_TIMEOUT: Duration = Duration::from_secs(2);

/// Best-effort writes waiting for Redis; beyond this they are dropped and counted.
const WRITE_QUEUE: usize = 4096;

/// The consumer group every replica's delivery shares.
pub const GROUP: &str = "delivery";

/// A Redis that flaghook shares with its other replicas.
pub struct Cluster {
    pub cfg: ClusterConfig,
    /// This replica's name (its consumer in every stream's group).
    pub replica: String,
    /// This process's lease value: its name and a random part, so two processes that were
    /// given one name never both hold the lease.
    lease_value: String,
    client: redis::Client,
    conn: tokio::sync::Mutex<Option<ConnectionManager>>,
    pub metrics: ClusterMetrics,
    up: AtomicBool,
    last_error: Mutex<Option<String>>,
    leader: watch::Sender<bool>,
    /// Until when the lease is known to be ours (renewed in Redis); git sync runs only then.
    confirmed_until: Mutex<Option<Instant>>,
    /// Best-effort writes (log entries, pause state, hints), done by [`shared::run_writer`].
    writes: tokio::sync::mpsc::Sender<(&'static str, redis::Pipeline)>,
}

/// The queue of best-effort writes, for [`shared::run_writer`].
pub type Writes = tokio::sync::mpsc::Receiver<(&'static str, redis::Pipeline)>;

#[derive(Debug, thiserror::Error)]
pub enum ClusterError {
    #[error("cluster.redis_url: {0}")]
    Url(#[source] RedisError),
    #[error("cluster.tls_ca_file ({path}): {source}")]
    CaFile {
        path: String,
        #[source]
        source: std::io::Error,
    },
}

impl Cluster {
    /// A handle on the configured Redis, and the queue its writer task carries out; nothing is
    /// connected yet (Redis may be away at start: the proxy serves anyway).
    pub fn new(
        cfg: &ClusterConfig,
        metrics: ClusterMetrics,
    ) -> Result<(Arc<Self>, Writes), ClusterError> {
        let url = cfg.redis_url.expose().unwrap_or_default();
        let mut info = url.into_connection_info().map_err(ClusterError::Url)?;
        if let Some(p) = cfg.password.expose().filter(|p| !p.is_empty()) {
            info.redis.password = Some(p.to_string());
        }
        let client = if cfg.tls_ca_file.is_empty() {
            redis::Client::open(info)
        } else {
            let ca = std::fs::read(&cfg.tls_ca_file).map_err(|e| ClusterError::CaFile {
                path: cfg.tls_ca_file.clone(),
                source: e,
            })?;
            redis::Client::build_with_tls(
                info,
                redis::TlsCertificates {
                    client_tls: None,
                    root_cert: Some(ca),
                },
            )
        }
        .map_err(ClusterError::Url)?;
        let replica = if !cfg.replica_id.is_empty() {
            cfg.replica_id.clone()
        } else {
            std::env::var("HOSTNAME")
                .ok()
                .filter(|h| !h.is_empty())
                .unwrap_or_else(|| {
                    format!("r-{}", &uuid::Uuid::new_v4().simple().to_string()[..12])
                })
        };
        let (leader, _) = watch::channel(false);
        let (writes, writes_rx) = tokio::sync::mpsc::channel(WRITE_QUEUE);
        let lease_value = format!("{replica}/{}", uuid::Uuid::new_v4().simple());
        let c = Arc::new(Self {
            lease_value,
            writes,
            cfg: cfg.clone(),
            replica,
            client,
            conn: tokio::sync::Mutex::new(None),
            metrics,
            up: AtomicBool::new(false),
            last_error: Mutex::new(None),
            leader,
            confirmed_until: Mutex::new(None),
        });
        Ok((c, writes_rx))
    }

    /// A key of this cluster: `{prefix}:rest` (one hash slot for all of them).
    pub fn key(&self, rest: &str) -> String {
        format!("{{{}}}:{rest}", self.cfg.key_prefix)
    }

    /// The shared connection (reconnecting by itself once made).
    pub async fn conn(&self) -> Result<ConnectionManager, RedisError> {
        let mut g = self.conn.lock().await;
        if let Some(c) = g.as_ref() {
            return Ok(c.clone());
        }
        let cfg = redis::aio::ConnectionManagerConfig::new()
            .set_connection_timeout(CALL_TIMEOUT)
            .set_response_timeout(CALL_TIMEOUT)
            .set_number_of_retries(1)
            .set_max_delay(1000);
        let c = self.client.get_connection_manager_with_config(cfg).await?;
        *g = Some(c.clone());
        Ok(c)
    }

    /// A connection of its own, for blocking reads (`XREADGROUP ... BLOCK` would hold up every
    /// other call on a shared one).
    pub async fn dedicated(
        &self,
        block: Duration,
    ) -> Result<redis::aio::MultiplexedConnection, RedisError> {
        let cfg = redis::AsyncConnectionConfig::new()
            .set_connection_timeout(CALL_TIMEOUT)
            .set_response_timeout(block + CALL_TIMEOUT);
        self.client
            .get_multiplexed_async_connection_with_config(&cfg)
            .await
    }

    /// A connection for subscriptions.
    pub async fn pubsub(&self) -> Result<redis::aio::PubSub, RedisError> {
        self.client.get_async_pubsub().await
    }

    /// Runs one command or script on the shared connection, counting its failure under `op`.
    pub async fn call<T: redis::FromRedisValue>(
        &self,
        op: &'static str,
        cmd: &redis::Cmd,
    ) -> Result<T, RedisError> {
        let r = match self.conn().await {
            Ok(mut c) => cmd.query_async(&mut c).await,
            Err(e) => Err(e),
        };
        self.note(op, r)
    }

    /// Runs a pipeline (a transaction when it is atomic), counting its failure under `op`.
    pub async fn pipeline<T: redis::FromRedisValue>(
        &self,
        op: &'static str,
        p: &redis::Pipeline,
    ) -> Result<T, RedisError> {
        let r = match self.conn().await {
            Ok(mut c) => p.query_async(&mut c).await,
            Err(e) => Err(e),
        };
        self.note(op, r)
    }

    /// Runs a script with its arguments, counting its failure under `op`.
    pub async fn script<T: redis::FromRedisValue>(
        &self,
        op: &'static str,
        script: &redis::Script,
        keys: &[String],
        args: &[&[u8]],
    ) -> Result<T, RedisError> {
        let r = match self.conn().await {
            Ok(mut c) => {
                let mut inv = script.prepare_invoke();
                for k in keys {
                    inv.key(k);
                }
                for a in args {
                    inv.arg(*a);
                }
                inv.invoke_async(&mut c).await
            }
            Err(e) => Err(e),
        };
        self.note(op, r)
    }

    /// Records whether Redis answered.
    pub fn note<T>(&self, op: &'static str, r: Result<T, RedisError>) -> Result<T, RedisError> {
        match &r {
            Ok(_) => {
                if !self.up.swap(true, Ordering::Relaxed) {
                    tracing::info!("redis answers");
                }
                self.metrics.up.set(1);
            }
            Err(e) => self.failed(op, e),
        }
        r
    }

    /// Counts and remembers a failed call.
    pub fn failed(&self, op: &'static str, e: &RedisError) {
        self.metrics.errors.with_label_values(&[op]).inc();
        self.metrics.up.set(0);
        if self.up.swap(false, Ordering::Relaxed) {
            tracing::warn!(op, error = %e, "redis not answering: events wait in the local store");
        } else {
            tracing::debug!(op, error = %e, "redis call failed");
        }
        *self
            .last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = Some(format!("{op}: {e}"));
    }

    /// Whether the last call answered.
    pub fn up(&self) -> bool {
        self.up.load(Ordering::Relaxed)
    }

    pub fn last_error(&self) -> Option<String> {
        self.last_error
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    /// Whether this replica follows the changelog now.
    pub fn is_leader(&self) -> bool {
        *self.leader.borrow()
    }

    /// Changes of leadership, for the changelog's supervisor.
    pub fn watch_leader(&self) -> watch::Receiver<bool> {
        self.leader.subscribe()
    }

    /// Leading, and the lease renewed in Redis within its time to live: what git sync needs (a
    /// replica cut off from Redis keeps deriving into its local store, but applies nothing).
    pub fn confirmed_leader(&self) -> bool {
        self.is_leader()
            && self
                .confirmed_until
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .is_some_and(|t| t > Instant::now())
    }

    /// Queues a best-effort write; counted under `kind` when the queue is full.
    pub fn write(&self, kind: &'static str, p: redis::Pipeline) {
        if self.writes.try_send((kind, p)).is_err() {
            self.metrics.dropped.with_label_values(&[kind]).inc();
        }
    }

    fn set_leader(&self, leading: bool, confirmed: Option<Instant>) {
        *self
            .confirmed_until
            .lock()
            .unwrap_or_else(PoisonError::into_inner) = confirmed;
        self.leader.send_if_modified(|l| {
            let changed = *l != leading;
            *l = leading;
            changed
        });
        self.metrics.leader.set(leading as i64);
    }
}

/// One entry read from a stream: its id and fields (`None` when it was deleted meanwhile).
pub type Entry = (String, Option<std::collections::HashMap<String, Vec<u8>>>);

/// The entries of an `XREADGROUP` (one stream) or `XAUTOCLAIM` reply.
pub fn entries(v: &redis::Value) -> Vec<Entry> {
    use redis::Value;
    fn text(v: &Value) -> Option<String> {
        match v {
            Value::BulkString(b) => Some(String::from_utf8_lossy(b).into_owned()),
            Value::SimpleString(s) => Some(s.clone()),
            _ => None,
        }
    }
    fn bytes(v: &Value) -> Vec<u8> {
        match v {
            Value::BulkString(b) => b.clone(),
            Value::SimpleString(s) => s.clone().into_bytes(),
            Value::Int(i) => i.to_string().into_bytes(),
            _ => Vec::new(),
        }
    }
    fn list(v: &Value) -> &[Value] {
        match v {
            Value::Array(a) => a,
            _ => &[],
        }
    }
    let mut out = Vec::new();
    let mut each_entry = |e: &Value| {
        let parts = list(e);
        let Some(id) = parts.first().and_then(text) else {
            return;
        };
        let fields = match parts.get(1) {
            Some(Value::Array(kv)) => Some(
                kv.chunks(2)
                    .filter_map(|p| Some((text(p.first()?)?, bytes(p.get(1)?))))
                    .collect(),
            ),
            _ => None,
        };
        out.push((id, fields));
    };
    match v {
        // XAUTOCLAIM: [next, entries, deleted] (Redis 6.2: [next, entries]).
        Value::Array(a) if a.len() >= 2 && text(&a[0]).is_some() => {
            a[1..2].iter().flat_map(list).for_each(&mut each_entry);
        }
        // XREADGROUP: [[stream, entries], ...]
        Value::Array(a) => {
            for s in a {
                list(s)
                    .get(1)
                    .map(list)
                    .unwrap_or(&[])
                    .iter()
                    .for_each(&mut each_entry);
            }
        }
        // RESP3 map form of XREADGROUP.
        Value::Map(m) => {
            for (_, es) in m {
                list(es).iter().for_each(&mut each_entry);
            }
        }
        _ => {}
    }
    out
}

/// Waits `d`, or less when `stop` comes first; false when stopped.
pub async fn pause(d: Duration, stop: &tokio_util::sync::CancellationToken) -> bool {
    tokio::select! {
        () = tokio::time::sleep(d) => true,
        () = stop.cancelled() => false,
    }
}
