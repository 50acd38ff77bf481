//! flaghook: a reverse-proxy sidecar for Flagr that turns flag changes into signed webhooks.
//!
//! [`App`] wires the pieces exactly as `main` runs them, so integration tests start the same
//! thing operators do. Data flows one way:
//! proxy → (tap) → derive → (hints) → changelog ← Flagr's snapshots; changelog → delivery →
//! webhooks; admin reads metrics, the store and delivery status. In cluster mode, `cluster`
//! (Redis) sits under delivery and the changelog: the lease picks the one follower, and
//! delivery's spill, streams and shared state go through it.

pub mod admin;
pub mod changelog;
pub mod cluster;
pub mod config;
pub mod delivery;
pub mod derive;
pub mod events;
pub mod flagr;
pub mod gitsync;
pub mod impressions;
pub mod listener;
pub mod metrics;
pub mod proxy;
pub mod redact;
pub mod ssrf;
pub mod store;
pub mod window;

use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use tokio::net::TcpListener;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

use crate::config::{Config, SnapshotMode};
use crate::flagr::{FlagrClient, RouteTable};

/// The running application: bound listeners and the tasks behind them.
pub struct App {
    pub proxy_addr: SocketAddr,
    pub admin_addr: SocketAddr,
    pub metrics: Arc<Metrics>,
    shutdown: CancellationToken,
    proxy_task: tokio::task::JoinHandle<bool>,
    admin_task: tokio::task::JoinHandle<bool>,
    derive_task: tokio::task::JoinHandle<()>,
    follower_task: tokio::task::JoinHandle<()>,
    flusher_stop: CancellationToken,
    flusher_task: Option<tokio::task::JoinHandle<()>>,
    deliveries: Arc<delivery::Deliveries>,
    shutdown_deadline: Duration,
    /// Cluster mode's background tasks (lease, relay, finisher, writer, subscription).
    cluster_stop: CancellationToken,
    lease_stop: CancellationToken,
    cluster_tasks: Vec<tokio::task::JoinHandle<()>>,
}

/// Every module's metrics, in the one registry `/metrics` exports.
pub struct Metrics {
    pub registry: Arc<metrics::Registry>,
    pub listeners: listener::ListenerMetrics,
    pub proxy: Arc<proxy::ProxyMetrics>,
    pub tap: Arc<proxy::TapMetrics>,
    pub derive: Arc<derive::DeriveMetrics>,
    pub changelog: Arc<changelog::ChangelogMetrics>,
    pub delivery: Arc<delivery::DeliveryMetrics>,
    pub impressions: Arc<impressions::batcher::ImpressionMetrics>,
    pub gitsync: Arc<gitsync::GitSyncMetrics>,
}

impl Metrics {
    pub fn new() -> Self {
        let r = metrics::Registry::default();
        let tap = Arc::new(proxy::TapMetrics::new(&r));
        let changelog = Arc::new(changelog::ChangelogMetrics::new(&r));
        Self {
            listeners: listener::ListenerMetrics::new(&r),
            proxy: Arc::new(proxy::ProxyMetrics::new(&r)),
            derive: Arc::new(derive::DeriveMetrics::new(
                &r,
                tap.clone(),
                changelog.clone(),
            )),
            tap,
            changelog,
            delivery: Arc::new(delivery::DeliveryMetrics::new(&r)),
            impressions: Arc::new(impressions::batcher::ImpressionMetrics::new(&r)),
            gitsync: Arc::new(gitsync::GitSyncMetrics::new(&r)),
            registry: Arc::new(r),
        }
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// Why flaghook could not start.
#[derive(Debug, thiserror::Error)]
pub enum StartError {
    #[error("store.path ({path}): {source}")]
    Store {
        path: String,
        #[source]
        source: store::StoreError,
    },
    #[error("webhooks")]
    Delivery(#[from] delivery::DeliveryError),
    #[error("the proxy")]
    Proxy(#[from] proxy::ProxyError),
    #[error("git sync")]
    GitSync(#[from] gitsync::GitSyncError),
    #[error("cluster")]
    Cluster(#[from] cluster::ClusterError),
    #[error("cannot start the proxy threads (runtime.proxy_threads): {0}")]
    ProxyThreads(#[source] std::io::Error),
    #[error("cannot listen on {addr} ({key}): {source}")]
    Listen {
        key: &'static str,
        addr: SocketAddr,
        #[source]
        source: std::io::Error,
    },
}

impl StartError {
    /// A failure the operator must fix in the configuration or on disk (exit 64), as opposed
    /// to one that may pass (a port in use).
    pub fn is_setup(&self) -> bool {
        matches!(
            self,
            StartError::Store { .. } | StartError::Delivery(_) | StartError::Cluster(_)
        )
    }
}

/// What a shutdown left behind.
#[derive(Debug, Default)]
pub struct ShutdownReport {
    /// False when in-flight requests were cut at the grace period.
    pub requests_drained: bool,
    /// Webhook requests still undelivered at the deadline.
    pub undelivered: usize,
}

impl App {
    /// Binds both listeners and starts every task, each module from its own constructor.
    pub async fn start(cfg: Config) -> Result<Self, StartError> {
        let metrics = Arc::new(Metrics::new());
        let shutdown = CancellationToken::new();
        let routes = RouteTable::new(&cfg.proxy.path_prefix);
        let flagr = FlagrClient::new(
            &cfg.proxy.upstream,
            routes.api_root(),
            cfg.flagr.api_timeout,
        );
        // Shared by the follower (which detects legacy Flagr) and the proxy (which pre-fetches).
        let legacy = Arc::new(AtomicBool::new(
            cfg.flagr.snapshot_mode == SnapshotMode::Prefetch,
        ));
        metrics
            .changelog
            .upstream_legacy
            .set(legacy.load(Ordering::Relaxed) as i64);
        let store = Arc::new(
            store::Store::open(&cfg.store.path, cfg.store.cache_bytes).map_err(|source| {
                StartError::Store {
                    path: cfg.store.path.clone(),
                    source,
                }
            })?,
        );
        if !store.durable() {
            tracing::warn!(
                "store.path is empty: cursors and runtime webhooks are kept in memory only; changes made while flaghook is down will never be sent"
            );
        }

        let (cluster, writes) = match cfg.cluster.enabled() {
            true => {
                let (c, w) = cluster::Cluster::new(
                    &cfg.cluster,
                    cluster::ClusterMetrics::new(&metrics.registry),
                )?;
                (Some(c), Some(w))
            }
            false => (None, None),
        };
        let (link, queues) = match cluster.clone().map(delivery::link::Link::new) {
            Some((l, q)) => (Some(l), Some(q)),
            None => (None, None),
        };
        let mut outbox = delivery::outbox::Outbox::new(store.clone(), metrics.delivery.clone());
        if let Some(l) = &link {
            // Shared pause state before the workers start (Redis away: none, as after a
            // first start).
            let _ = tokio::time::timeout(Duration::from_secs(3), l.load_pauses()).await;
            outbox = outbox.with_link(l.clone());
        }
        let policy = Arc::new(cfg.delivery.clone());
        let deliveries = Arc::new(delivery::Deliveries::start(
            &cfg.webhooks,
            policy.clone(),
            metrics.delivery.clone(),
            outbox,
        )?);
        if let Some(c) = &cluster {
            // The shared runtime webhooks replace the local copies (Redis away: the local
            // copies start, and the subscription brings them up to date).
            let first = async {
                seed_webhooks(c, &store).await;
                sync_webhooks(&cfg, c, &store, &deliveries).await;
            };
            let _ = tokio::time::timeout(Duration::from_secs(3), first).await;
        }
        start_stored_webhooks(&cfg, &store, &deliveries)?;
        for w in &cfg.impression_webhooks {
            deliveries.add_impressions(w)?;
        }
        let impression_sink =
            derive::ImpressionSink::new(&cfg, deliveries.clone(), metrics.impressions.clone());

        let (tap_tx, tap_rx) = mpsc::channel(cfg.proxy.tap_capacity);
        let (impression_tx, impression_rx) = impression_sink
            .as_ref()
            .map(|s| derive::impression_queue(s.cfg.queue))
            .unzip();
        let (hint_tx, hint_rx) = mpsc::channel(cfg.derive.lane_capacity);
        let follower = changelog::Follower::new(
            &cfg,
            flagr.clone(),
            deliveries.clone(),
            metrics.changelog.clone(),
            store.clone(),
            legacy.clone(),
            impression_sink.as_ref().map(|s| s.known.clone()),
        );
        let cluster_stop = CancellationToken::new();
        // The lease goes as soon as the follower has stopped, before delivery drains.
        let lease_stop = CancellationToken::new();
        let mut cluster_tasks = Vec::new();
        // Git sync starts after the proxy; messages for it wait for it here.
        let git_pokes: Arc<std::sync::OnceLock<Arc<gitsync::GitSync>>> = Arc::default();
        let follower_task = match (&cluster, &link, writes, queues) {
            (Some(c), Some(l), Some(writes), Some(queues)) => {
                // Ready at once: whichever replica leads follows from the shared cursors.
                follower.ready.store(true, Ordering::Relaxed);
                // Every other replica's hints come through here: room for their bursts.
                let (remote_tx, remote_rx) = mpsc::channel(cfg.derive.lane_capacity * 4);
                cluster_tasks.push(tokio::spawn(cluster::lease::run(
                    c.clone(),
                    lease_stop.clone(),
                )));
                cluster_tasks.push(tokio::spawn(cluster::shared::run_writer(
                    c.clone(),
                    writes,
                    cluster_stop.clone(),
                )));
                cluster_tasks.extend(delivery::relay::start(
                    l.clone(),
                    queues,
                    deliveries.clone(),
                    store.clone(),
                    cluster_stop.clone(),
                ));
                // One task applies the shared webhooks, one sync at a time (two at once could
                // act on an older read after a newer one).
                let webhooks_changed = Arc::new(tokio::sync::Notify::new());
                cluster_tasks.push(tokio::spawn(follow_webhooks(
                    cfg.clone(),
                    c.clone(),
                    store.clone(),
                    deliveries.clone(),
                    webhooks_changed.clone(),
                    cluster_stop.clone(),
                )));
                let on_message = messages(
                    c.clone(),
                    deliveries.clone(),
                    remote_tx,
                    git_pokes.clone(),
                    webhooks_changed,
                );
                cluster_tasks.push(tokio::spawn(cluster::shared::subscribe(
                    c.clone(),
                    on_message,
                    cluster_stop.clone(),
                )));
                tokio::spawn(changelog::lead::run(
                    follower.clone(),
                    c.clone(),
                    hint_rx,
                    remote_rx,
                    cfg.derive.lane_capacity,
                ))
            }
            _ => {
                // Before the proxy serves: on a first start, the baseline precedes every
                // proxied change.
                let early = follower.start_early(Duration::from_secs(3)).await;
                tokio::spawn(follower.clone().run(hint_rx, early))
            }
        };
        let deriver = derive::Deriver::new(
            &cfg,
            impression_sink.clone(),
            flagr.clone(),
            deliveries.clone(),
            metrics.derive.clone(),
            legacy.clone(),
            hint_tx,
        );
        let flusher_stop = CancellationToken::new();
        let flusher_task = impression_sink
            .as_ref()
            .map(|s| tokio::spawn(s.batchers.clone().run(flusher_stop.clone())));
        let derive_task = tokio::spawn(derive::run(
            deriver,
            tap_rx,
            impression_rx,
            cfg.derive.lanes,
            cfg.derive.lane_capacity,
        ));

        // Git sync's calls through the proxy prove themselves with this; nobody else has it.
        let gitsync_token = uuid::Uuid::new_v4().simple().to_string();
        let mut tap = proxy::TapSender::new(
            tap_tx,
            metrics.tap.clone(),
            cfg.proxy.inspect_max_bytes,
            proxy::tap::ByteBudget::new(cfg.proxy.tap_max_bytes),
        );
        if let Some(tx) = impression_tx {
            tap = tap.with_impressions(tx);
        }
        // One stack per proxy thread: each keeps its own upstream pool on its own thread.
        let threads = cfg.runtime.proxy_threads();
        let stacks = (0..threads)
            .map(|_| {
                proxy::Proxy::stack(proxy::ProxyParts {
                    cfg: &cfg.proxy,
                    user_header: &cfg.flagr.user_header,
                    inspect_impressions: impression_sink.is_some(),
                    gitsync_token: &gitsync_token,
                    tap: tap.clone(),
                    metrics: metrics.proxy.clone(),
                    legacy: legacy.clone(),
                    // The legacy layer's reads stay on the thread (and runtime) of the request.
                    flagr: flagr.with_own_pool(),
                })
            })
            .collect::<Result<Vec<_>, _>>()?;
        drop(tap);

        let bind = |key: &'static str, addr: SocketAddr| async move {
            TcpListener::bind(addr)
                .await
                .and_then(|l| l.local_addr().map(|a| (l, a)))
                .map_err(|source| StartError::Listen { key, addr, source })
        };
        let proxy_listeners =
            proxy::bind(cfg.proxy.listen, threads).map_err(|source| StartError::Listen {
                key: "proxy.listen",
                addr: cfg.proxy.listen,
                source,
            })?;
        let proxy_addr = proxy_listeners[0]
            .local_addr()
            .map_err(|source| StartError::Listen {
                key: "proxy.listen",
                addr: cfg.proxy.listen,
                source,
            })?;
        let (admin_listener, admin_addr) = bind("admin.listen", cfg.admin.listen).await?;
        let limits = |max_connections| listener::Limits {
            header_read_timeout: cfg.proxy.header_read_timeout,
            slots: Arc::new(tokio::sync::Semaphore::new(max_connections)),
            grace: cfg.proxy.shutdown_grace,
            share: None,
        };

        let gitsync = gitsync::GitSync::start(
            &cfg,
            proxy_addr,
            gitsync_token,
            flagr.clone(),
            metrics.gitsync.clone(),
            cluster.clone(),
            shutdown.clone(),
        )?;
        if let Some(g) = &gitsync {
            let _ = git_pokes.set(g.clone());
        }
        let admin = admin::router(admin::AdminState {
            metrics: metrics.registry.clone(),
            flagr,
            deliveries: deliveries.clone(),
            token: cfg.admin.token.clone(),
            store,
            changelog_ready: follower.ready.clone(),
            follower,
            delivery: policy,
            gitsync,
            max_body_bytes: cfg.admin.max_body_bytes,
            cluster,
        });
        // Last: nothing after it can fail and leave the proxy threads serving.
        let proxy_task = proxy::start(
            proxy_listeners.into_iter().zip(stacks).collect(),
            limits(cfg.proxy.max_connections),
            metrics.listeners.counters(listener::Listener::Proxy),
            shutdown.clone(),
        )
        .map_err(StartError::ProxyThreads)?;
        let admin_task = tokio::spawn(listener::serve(
            admin_listener,
            move |_| hyper_util::service::TowerToHyperService::new(admin.clone()),
            limits(cfg.admin.max_connections),
            metrics.listeners.counters(listener::Listener::Admin),
            shutdown.clone(),
        ));
        tracing::info!(%proxy_addr, %admin_addr, upstream = %cfg.proxy.upstream, webhooks = cfg.webhooks.len(), "flaghook started");
        Ok(Self {
            proxy_addr,
            admin_addr,
            metrics,
            shutdown,
            proxy_task,
            admin_task,
            derive_task,
            follower_task,
            flusher_stop,
            flusher_task,
            deliveries,
            shutdown_deadline: cfg.delivery.shutdown_deadline,
            cluster_stop,
            lease_stop,
            cluster_tasks,
        })
    }

    /// Stops accepting, lets requests finish, derives what was tapped, delivers within the
    /// deadline, and reports what was left.
    pub async fn shutdown(self) -> ShutdownReport {
        let mut report = ShutdownReport::default();
        // Stop the proxy first so nothing new is tapped; the tap channel then closes and the
        // derive task finishes what it holds before delivery starts its deadline.
        self.shutdown.cancel();
        let (proxy, admin) = tokio::join!(self.proxy_task, self.admin_task);
        report.requests_drained = proxy.unwrap_or(false) && admin.unwrap_or(false);
        // One deadline for everything after the drain: deriving, following, delivering.
        let end = tokio::time::Instant::now() + self.shutdown_deadline;
        let _ = tokio::time::timeout_at(end, self.derive_task).await;
        // The tap is closed, so the follower sees the last hints, derives them and returns.
        let follower = self.follower_task;
        let abort = follower.abort_handle();
        if tokio::time::timeout_at(end, follower).await.is_err() {
            // Nothing it derives after this could be delivered; the cursor it did not save
            // makes the next start derive it again.
            abort.abort();
        }
        // Cluster mode: another replica takes the changelog over at once.
        self.lease_stop.cancel();
        // The last impression batches go out before delivery starts its deadline.
        self.flusher_stop.cancel();
        if let Some(t) = self.flusher_task {
            // It hands its open batches to delivery and returns: quick, and not to be cut.
            let _ = t.await;
        }
        report.undelivered = self.deliveries.shutdown(end).await;
        // After delivery: the finisher tells Redis what the workers finished while draining.
        self.cluster_stop.cancel();
        for t in self.cluster_tasks {
            let _ = tokio::time::timeout(Duration::from_secs(3), t).await;
        }
        tracing::info!(
            undelivered = report.undelivered,
            drained = report.requests_drained,
            "flaghook stopped"
        );
        report
    }
}

/// Starts the webhooks kept in the store (created through the admin API).
fn start_stored_webhooks(
    cfg: &Config,
    store: &store::Store,
    deliveries: &delivery::Deliveries,
) -> Result<(), StartError> {
    let stored: Vec<admin::api::WebhookInput> =
        store.all().map_err(|source| StartError::Store {
            path: cfg.store.path.clone(),
            source,
        })?;
    for w in stored {
        if deliveries.get(&w.id).is_some() {
            // Cluster mode started it already from the shared copy.
            continue;
        }
        let id = w.id.clone();
        let mut wc = w.to_config();
        let started = wc
            .validate(0, Some(&[]), &cfg.delivery)
            .map_err(|e| e.to_string())
            .and_then(|()| {
                deliveries
                    .add(wc, delivery::Origin::Runtime)
                    .map_err(|e| e.to_string())
            });
        if let Err(e) = started {
            // A stored webhook that no longer validates (a tightened SSRF guard, an id now
            // taken by the config file) is kept in the store but not started.
            tracing::error!(webhook = %id, error = %e, "stored webhook not started");
        }
    }
    Ok(())
}

/// Cluster mode: applies the shared webhooks whenever another replica changed them or the
/// subscription was made again (messages may have been missed), until `stop`.
async fn follow_webhooks(
    cfg: Config,
    c: Arc<cluster::Cluster>,
    store: Arc<store::Store>,
    deliveries: Arc<delivery::Deliveries>,
    changed: Arc<tokio::sync::Notify>,
    stop: CancellationToken,
) {
    loop {
        tokio::select! {
            () = changed.notified() => {}
            () = stop.cancelled() => return,
        }
        // A Redis that lost its data (no AOF) is seeded again from this replica's copies
        // instead of having every replica delete its webhooks.
        seed_webhooks(&c, &store).await;
        sync_webhooks(&cfg, &c, &store, &deliveries).await;
        sync_pauses(&deliveries).await;
    }
}

/// Cluster mode: an operator's pause this replica missed (cut off from the messages) is
/// applied from the shared pause state. A missed resume is not: the shared state may lag a
/// pause just made, and a replica left paused loses nothing (an operator resumes it).
async fn sync_pauses(deliveries: &delivery::Deliveries) {
    let Some(link) = deliveries.outbox.link() else {
        return;
    };
    link.load_pauses().await;
    for ep in deliveries.list().iter() {
        let Some(shared) = deliveries.outbox.pause_state(&ep.webhook.id) else {
            continue;
        };
        let here = ep
            .status
            .lock()
            .map(|s| s.paused_by_operator)
            .unwrap_or(shared.manual);
        if shared.manual && !here {
            let _ = deliveries.control(&ep.webhook.id, delivery::Control::Pause);
        }
    }
}

/// Cluster mode: what to do with a message from another replica.
fn messages(
    c: Arc<cluster::Cluster>,
    deliveries: Arc<delivery::Deliveries>,
    hints: mpsc::Sender<changelog::Hint>,
    git: Arc<std::sync::OnceLock<Arc<gitsync::GitSync>>>,
    webhooks_changed: Arc<tokio::sync::Notify>,
) -> impl Fn(cluster::shared::Message) + Send + Sync + 'static {
    move |m| match m.op.as_str() {
        "webhooks" | "resync" => webhooks_changed.notify_one(),
        "pause" | "resume" => {
            let cmd = match m.op.as_str() {
                "pause" => delivery::Control::Pause,
                _ => delivery::Control::Resume,
            };
            let _ = deliveries.control(&m.id, cmd);
        }
        "hint" => match m.body.map(serde_json::from_value::<changelog::Hint>) {
            Some(Ok(h)) => {
                if hints.try_send(h).is_err() {
                    c.metrics.dropped.with_label_values(&["hint"]).inc();
                }
            }
            _ => tracing::warn!(from = %m.from, "unreadable hint from another replica"),
        },
        "git" => {
            if c.is_leader() {
                if let Some(g) = git.get() {
                    g.poke(&m.id);
                }
            }
        }
        other => tracing::debug!(op = other, "message from a newer replica ignored"),
    }
}

/// Cluster mode's first start on a Redis that never held webhooks: the runtime webhooks of
/// this replica's store become the shared ones (an upgrade from one replica loses none).
async fn seed_webhooks(c: &cluster::Cluster, store: &store::Store) {
    let local: Vec<(String, String)> = store
        .all::<admin::api::WebhookInput>()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|w| Some((w.id.clone(), serde_json::to_string(&w).ok()?)))
        .collect();
    if let Ok(true) = c.seed_webhooks(&local).await {
        if !local.is_empty() {
            tracing::info!(
                webhooks = local.len(),
                "cluster: this replica's runtime webhooks are now shared"
            );
        }
    }
}

/// Cluster mode: makes this replica's runtime webhooks those kept in Redis (added, changed,
/// removed), keeping the local store's copy the same.
async fn sync_webhooks(
    cfg: &Config,
    c: &cluster::Cluster,
    store: &store::Store,
    deliveries: &delivery::Deliveries,
) {
    let Ok(shared) = c.webhooks().await else {
        return;
    };
    let local: std::collections::HashMap<String, String> = store
        .all::<admin::api::WebhookInput>()
        .unwrap_or_default()
        .into_iter()
        .filter_map(|w| Some((w.id.clone(), serde_json::to_string(&w).ok()?)))
        .collect();
    for id in local.keys() {
        if !shared.iter().any(|(k, _)| k == id) {
            let _ = store.delete(id);
            if deliveries
                .get(id)
                .is_some_and(|e| e.origin == delivery::Origin::Runtime)
            {
                let _ = deliveries.remove(id);
            }
        }
    }
    for (id, json) in &shared {
        let Ok(w) = serde_json::from_str::<admin::api::WebhookInput>(json) else {
            tracing::error!(webhook = %id, "shared webhook not readable; not started");
            continue;
        };
        let running = deliveries.get(id);
        if local.get(id) == Some(json) && running.is_some() {
            continue;
        }
        let _ = store.put(id, &w);
        let mut wc = w.to_config();
        let r = wc
            .validate(0, Some(&[]), &cfg.delivery)
            .map_err(|e| e.to_string())
            .and_then(|()| match &running {
                Some(e) if e.origin == delivery::Origin::Runtime => {
                    deliveries.update(wc).map_err(|e| e.to_string())
                }
                Some(_) => Err("the id is taken by the config file".into()),
                None => deliveries
                    .add(wc, delivery::Origin::Runtime)
                    .map_err(|e| e.to_string()),
            });
        if let Err(e) = r {
            tracing::error!(webhook = %id, error = %e, "shared webhook not started");
        }
    }
}
