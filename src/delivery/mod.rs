//! Delivery: fans change events out to the webhooks that want them and runs one worker per
//! endpoint. Endpoints come from config or, at runtime, from the admin API.
//!
//! In: [`ChangeSet`]s from derivation; operator commands. Out: signed HTTP requests to webhook
//! URLs; each endpoint's status and delivery log.
//! Never: blocks the caller (`publish` uses `try_send`; a full queue drops and counts), follows a
//! redirect, or lets one endpoint's trouble delay another.

mod attempt;
pub mod breaker;
mod ctx;
pub mod endpoint;
pub mod guard;
mod job;
pub mod link;
pub mod metrics;
pub mod outbox;
pub mod policy;
pub mod queue;
pub mod relay;
pub mod retry;
pub mod sign;

use std::sync::{Arc, Mutex, PoisonError, RwLock};

use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use endpoint::{Control, Job, Kind, LogEntry, SharedStatus, Status};

use crate::config::{DeliveryConfig, PayloadFormat, WebhookConfig};
use crate::events::payload::{cloudevent_body, flagr_body, seed_body, seed_value, ChangeSet};
use crate::events::template::{self, Template, TemplateError};
use crate::store::Cursor;
pub use metrics::{DeliveryMetrics, DropReason, OutboxOp, Outcome};

/// Where an endpoint was defined.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Origin {
    /// The config file: read-only at runtime.
    Config,
    /// The admin API or the web page: stored, editable.
    Runtime,
}

/// One endpoint as delivery and the admin API see it.
pub struct Endpoint {
    pub webhook: Arc<WebhookConfig>,
    pub kind: Kind,
    pub origin: Origin,
    pub status: SharedStatus,
    /// The parsed template of a `template` or chat-preset webhook.
    pub template: Option<Arc<Template>>,
    /// The variables of the last event rendered for it, for previews.
    pub last_vars: Arc<Mutex<Option<serde_json::Value>>>,
    tx: mpsc::Sender<Job>,
    ctl: mpsc::Sender<Control>,
}

/// Why an operator command could not be carried out.
#[derive(Debug, thiserror::Error)]
pub enum DeliveryError {
    #[error("no webhook `{0}`")]
    NotFound(String),
    #[error("webhook `{0}` exists already")]
    Exists(String),
    #[error("webhook `{0}` comes from the config file and is read-only")]
    ReadOnly(String),
    #[error("url: {0}")]
    Url(#[source] crate::ssrf::GuardError),
    #[error("the queue of `{0}` is full")]
    Full(String),
    #[error("delivery.egress_proxy")]
    EgressProxy(#[source] reqwest::Error),
    #[error("cannot build the webhook HTTP client")]
    Client(#[source] reqwest::Error),
    #[error("template: {0}")]
    Template(#[source] TemplateError),
}

/// The template an endpoint renders with, if its format has one.
fn template_of(w: &WebhookConfig) -> Result<Option<Arc<Template>>, DeliveryError> {
    if let Some(name) = w.format.preset() {
        return Ok(Template::preset(name).map(Arc::new));
    }
    if w.format == PayloadFormat::Template {
        return Template::compile(&w.template)
            .map(|t| Some(Arc::new(t)))
            .map_err(DeliveryError::Template);
    }
    Ok(None)
}

/// The fan-out in front of the endpoint workers.
pub struct Deliveries {
    endpoints: RwLock<Arc<Vec<Arc<Endpoint>>>>,
    client: reqwest::Client,
    policy: Arc<DeliveryConfig>,
    metrics: Arc<DeliveryMetrics>,
    shutdown: Stop,
    tasks: Mutex<JoinSet<usize>>,
    pub outbox: outbox::Outbox,
    /// Cluster mode: each change-event endpoint's consumer of its stream.
    consumers: Mutex<std::collections::HashMap<String, CancellationToken>>,
}

/// When delivery stops, and by when it must be done: one deadline for every worker, so the
/// whole shutdown stays within the grace period plus `delivery.shutdown_deadline`.
#[derive(Clone, Default)]
pub struct Stop {
    token: CancellationToken,
    by: Arc<std::sync::OnceLock<tokio::time::Instant>>,
}

impl Stop {
    /// Workers stop taking jobs and deliver what they hold until `by`.
    pub fn at(&self, by: tokio::time::Instant) {
        let _ = self.by.set(by);
        self.token.cancel();
    }

    pub async fn cancelled(&self) {
        self.token.cancelled().await;
    }

    /// The deadline set by [`Stop::at`], or `default` from now when none was (a channel closed).
    pub fn deadline(&self, default: std::time::Duration) -> tokio::time::Instant {
        self.by
            .get()
            .copied()
            .unwrap_or_else(|| tokio::time::Instant::now() + default)
    }
}

/// The HTTP client every endpoint shares: no redirects, the SSRF guard as resolver, rustls.
pub fn http_client(policy: &Arc<DeliveryConfig>) -> Result<reqwest::Client, DeliveryError> {
    // HTTP_PROXY and friends are ignored: behind a proxy the guard would only see the proxy's
    // address while the proxy resolved the real name. An egress proxy is configured instead.
    let builder = match &policy.egress_proxy {
        Some(p) => reqwest::Client::builder()
            .proxy(reqwest::Proxy::all(p).map_err(DeliveryError::EgressProxy)?),
        None => reqwest::Client::builder().no_proxy(),
    };
    builder
        .redirect(reqwest::redirect::Policy::none())
        .timeout(policy.timeout)
        .connect_timeout(policy.timeout)
        .pool_idle_timeout(std::time::Duration::from_secs(60))
        .user_agent(concat!("flaghook/", env!("CARGO_PKG_VERSION")))
        .dns_resolver(Arc::new(guard::GuardedResolver::new(policy.clone())))
        .build()
        .map_err(DeliveryError::Client)
}

impl Deliveries {
    /// Starts one worker per configured webhook.
    pub fn start(
        webhooks: &[WebhookConfig],
        policy: Arc<DeliveryConfig>,
        metrics: Arc<DeliveryMetrics>,
        outbox: outbox::Outbox,
    ) -> Result<Self, DeliveryError> {
        let d = Self {
            outbox,
            endpoints: RwLock::new(Arc::new(Vec::new())),
            client: http_client(&policy)?,
            policy,
            metrics,
            shutdown: Stop::default(),
            tasks: Mutex::new(JoinSet::new()),
            consumers: Mutex::default(),
        };
        for w in webhooks {
            d.add(w.clone(), Origin::Config)?;
        }
        Ok(d)
    }

    fn ctx(
        &self,
        w: Arc<WebhookConfig>,
        kind: Kind,
    ) -> Result<Arc<endpoint::EndpointCtx>, DeliveryError> {
        let url =
            crate::ssrf::check_url(&w.url, &self.policy.allow()).map_err(DeliveryError::Url)?;
        let rules = match kind {
            Kind::Events => policy::DeliveryPolicy::change_events(&self.policy, &w),
            Kind::Impressions {
                retry_delay,
                park_max_bytes,
            } => policy::DeliveryPolicy::impressions(retry_delay, park_max_bytes),
        };
        Ok(Arc::new(endpoint::EndpointCtx {
            rules,
            shown_url: crate::redact::url(&w.url).into(),
            webhook: w,
            url,
            client: self.client.clone(),
            policy: self.policy.clone(),
            metrics: self.metrics.clone(),
            outbox: self.outbox.clone(),
        }))
    }

    /// Delivery's metrics, for what is given up on before it reaches an endpoint.
    pub fn metrics(&self) -> &DeliveryMetrics {
        &self.metrics
    }

    /// The endpoints now (a snapshot; cheap).
    pub fn list(&self) -> Arc<Vec<Arc<Endpoint>>> {
        self.endpoints
            .read()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }

    pub fn get(&self, id: &str) -> Option<Arc<Endpoint>> {
        self.list().iter().find(|e| e.webhook.id == id).cloned()
    }

    fn swap(&self, f: impl FnOnce(&mut Vec<Arc<Endpoint>>)) {
        let mut g = self
            .endpoints
            .write()
            .unwrap_or_else(PoisonError::into_inner);
        let mut v: Vec<Arc<Endpoint>> = g.as_ref().clone();
        f(&mut v);
        self.metrics.webhooks(v.len());
        *g = Arc::new(v);
    }

    /// Adds a change-event endpoint and starts its worker.
    pub fn add(&self, w: WebhookConfig, origin: Origin) -> Result<(), DeliveryError> {
        self.add_kind(w, origin, Kind::Events)
    }

    /// Adds an endpoint of either kind and starts its worker.
    pub fn add_kind(
        &self,
        w: WebhookConfig,
        origin: Origin,
        kind: Kind,
    ) -> Result<(), DeliveryError> {
        if self.get(&w.id).is_some() {
            return Err(DeliveryError::Exists(w.id));
        }
        let webhook = Arc::new(w);
        let ctx = self.ctx(webhook.clone(), kind)?;
        let (tx, rx) = mpsc::channel(self.policy.queue_max_events);
        let (ctl, ctl_rx) = mpsc::channel(16);
        let status = SharedStatus::default();
        // A panic elsewhere must not leave an endpoint registered without its worker: the
        // set of tasks is still sound after one, so a poisoned lock is taken as it is.
        self.tasks
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .spawn(endpoint::run(
                ctx,
                status.clone(),
                rx,
                ctl_rx,
                self.shutdown.clone(),
            ));
        if let (Some(link), Kind::Impressions { .. }) = (self.outbox.link(), kind) {
            link.register(&webhook.id, tx.clone());
        }
        if let (Some(link), Kind::Events) = (self.outbox.link(), kind) {
            let stop = CancellationToken::new();
            tokio::spawn(relay::run_consumer(
                link.clone(),
                webhook.id.clone(),
                tx.clone(),
                self.outbox.clone(),
                stop.clone(),
            ));
            if let Some(old) = self
                .consumers
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .insert(webhook.id.clone(), stop)
            {
                old.cancel();
            }
        }
        let ep = Arc::new(Endpoint {
            template: template_of(&webhook)?,
            webhook,
            kind,
            origin,
            status,
            last_vars: Arc::default(),
            tx,
            ctl,
        });
        self.swap(|v| v.push(ep));
        Ok(())
    }

    /// Cluster mode: whether the local spill reached its bound (the follower then waits; the
    /// changes stay in Flagr's changelog).
    pub fn held_back(&self) -> bool {
        self.outbox.link().is_some_and(|l| {
            let full = l.full();
            if full {
                l.cluster.metrics.spill_full.inc();
            }
            full
        })
    }

    /// Cluster mode: the endpoint's log as every replica sees it (oldest first); `None` when
    /// not in cluster mode.
    pub async fn shared_log(&self, id: &str) -> Option<Result<Vec<LogEntry>, String>> {
        let link = self.outbox.link()?;
        Some(link.shared_log(id).await)
    }

    /// Adds an impression webhook's endpoint (from the config file) and starts its worker.
    pub fn add_impressions(
        &self,
        w: &crate::config::ImpressionWebhookConfig,
    ) -> Result<(), DeliveryError> {
        self.add_kind(
            w.as_webhook(),
            Origin::Config,
            Kind::Impressions {
                retry_delay: w.retry_delay,
                park_max_bytes: w.park_max_bytes,
            },
        )
    }

    /// Replaces a runtime endpoint's settings; its queue and state are kept.
    pub fn update(&self, w: WebhookConfig) -> Result<(), DeliveryError> {
        let old = self
            .get(&w.id)
            .ok_or_else(|| DeliveryError::NotFound(w.id.clone()))?;
        if old.origin == Origin::Config {
            return Err(DeliveryError::ReadOnly(w.id));
        }
        let webhook = Arc::new(w);
        let ctx = self.ctx(webhook.clone(), old.kind)?;
        let _ = old.ctl.try_send(Control::Reconfigure(ctx));
        let ep = Arc::new(Endpoint {
            template: template_of(&webhook)?,
            last_vars: old.last_vars.clone(),
            webhook,
            kind: old.kind,
            origin: old.origin,
            status: old.status.clone(),
            tx: old.tx.clone(),
            ctl: old.ctl.clone(),
        });
        self.swap(|v| {
            if let Some(slot) = v.iter_mut().find(|e| e.webhook.id == ep.webhook.id) {
                *slot = ep;
            }
        });
        Ok(())
    }

    /// Removes a runtime endpoint; what it had queued is dropped and counted.
    pub fn remove(&self, id: &str) -> Result<(), DeliveryError> {
        let old = self
            .get(id)
            .ok_or_else(|| DeliveryError::NotFound(id.into()))?;
        if old.origin == Origin::Config {
            return Err(DeliveryError::ReadOnly(id.into()));
        }
        if let Some(c) = self
            .consumers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .remove(id)
        {
            c.cancel();
        }
        let _ = old.ctl.try_send(Control::Stop);
        self.outbox.forget_shared(id);
        self.swap(|v| v.retain(|e| e.webhook.id != id));
        Ok(())
    }

    /// Sends an operator command to an endpoint's worker.
    pub fn control(&self, id: &str, c: Control) -> Result<(), DeliveryError> {
        let ep = self
            .get(id)
            .ok_or_else(|| DeliveryError::NotFound(id.into()))?;
        ep.ctl
            .try_send(c)
            .map_err(|_| DeliveryError::Full(id.into()))
    }

    /// Queues a request for one endpoint, whatever its filters (test events, replays).
    pub fn send_to(&self, id: &str, job: Job) -> Result<(), DeliveryError> {
        let ep = self
            .get(id)
            .ok_or_else(|| DeliveryError::NotFound(id.into()))?;
        let mut batch = vec![(ep, job)];
        match self.enqueue_with(&mut batch, false, false, None).0 {
            0 => Ok(()),
            _ => Err(DeliveryError::Full(id.into())),
        }
    }

    /// Queues the change set for every webhook that wants any of its events: on disk first
    /// (one transaction for the whole set), then in each endpoint's queue.
    pub fn publish(&self, set: &ChangeSet) {
        self.publish_all(std::slice::from_ref(set), None);
    }

    /// Queues several change sets, in order, with one outbox transaction for all of them and
    /// for `cursor`, the changelog's note that they were derived (a walk over many changes of a
    /// flag pays for one disk flush). Returns whether that transaction was written (false with
    /// an in-memory store, or when the disk refused it: the caller saves the cursor itself).
    pub fn publish_all(&self, sets: &[ChangeSet], cursor: Option<(i64, &Cursor)>) -> bool {
        let mut batch = Vec::new();
        for set in sets {
            self.jobs_for(set, |_| true, &mut batch);
        }
        self.enqueue_with(&mut batch, true, true, cursor).1
    }

    /// Queues the change set for one endpoint only (a backfill), within its filters.
    pub fn publish_to(&self, id: &str, set: &ChangeSet) {
        let mut batch = Vec::new();
        self.jobs_for(set, |ep| ep.webhook.id == id, &mut batch);
        // A backfill sends history again on purpose: never through the claims of cluster mode.
        self.enqueue_with(&mut batch, true, false, None);
    }

    /// The requests a change set makes for the endpoints `pick` chooses and whose filters want it.
    fn jobs_for(
        &self,
        set: &ChangeSet,
        pick: impl Fn(&Endpoint) -> bool,
        batch: &mut Vec<(Arc<Endpoint>, Job)>,
    ) {
        let flag_key: Arc<str> = set.flag_key.as_str().into();
        // Seed bodies are the same for every endpoint: build each at most once.
        let mut seed: Vec<Option<bytes::Bytes>> = vec![None; set.events.len()];
        for ep in self.list().iter() {
            if ep.kind != Kind::Events || !pick(ep) {
                continue;
            }
            let w = &ep.webhook;
            if w.format == PayloadFormat::Flagr {
                // One notification per mutation, as Flagr's notifier sends.
                if set
                    .events
                    .iter()
                    .any(|ev| w.wants(ev.event, &set.flag_key, &set.tags))
                {
                    let body = flagr_body(set, w.detailed_diff);
                    let job = Job::change(
                        set.id.clone(),
                        set.flag_id,
                        Some(flag_key.clone()),
                        body,
                        set.notice.operation,
                    );
                    batch.push((ep.clone(), job));
                }
                continue;
            }
            // The configured source, else Flagr's URL (a CloudEvents source is never empty).
            let source = [w.cloudevents.source.as_str(), &self.policy.upstream]
                .into_iter()
                .find(|s| !s.is_empty())
                .unwrap_or("urn:flaghook");
            for (i, ev) in set.events.iter().enumerate() {
                if !w.wants(ev.event, &set.flag_key, &set.tags) {
                    continue;
                }
                let body = match (&ep.template, w.format) {
                    (Some(t), _) => match self.render(ep, t, set, ev) {
                        Some(b) => b,
                        None => continue,
                    },
                    (None, PayloadFormat::CloudEvents) => {
                        cloudevent_body(set, ev, &w.cloudevents.type_prefix, source)
                    }
                    (None, _) => seed[i].get_or_insert_with(|| seed_body(set, ev)).clone(),
                };
                let job = Job::change(
                    ev.id.clone(),
                    set.flag_id,
                    Some(flag_key.clone()),
                    body,
                    ev.event,
                );
                batch.push((ep.clone(), job));
            }
        }
    }

    /// One event through an endpoint's template; a template that fails is counted and logged
    /// (the event is not sent to that endpoint).
    fn render(
        &self,
        ep: &Endpoint,
        t: &Template,
        set: &ChangeSet,
        ev: &crate::events::payload::ChangeEvent,
    ) -> Option<bytes::Bytes> {
        let vars = template::variables(&seed_value(set, ev), &self.policy.ui_url);
        let out = t.render(&vars);
        *ep.last_vars.lock().unwrap_or_else(PoisonError::into_inner) = Some(vars);
        match out {
            Ok(body) => Some(bytes::Bytes::from(body)),
            Err(e) => {
                self.metrics
                    .dropped(&ep.webhook.id, DropReason::Unrenderable, 1, 0);
                tracing::error!(endpoint = %ep.webhook.id, event = ev.event, error = %e, "template did not render; event not sent to this endpoint");
                None
            }
        }
    }

    /// Writes the jobs (and `cursor`) to the outbox, then queues each; returns how many could
    /// not be queued (their rows are removed again; counted here when `count` is set, else by
    /// the caller) and whether the write went to disk. In cluster mode, `shared` jobs go to the
    /// spill instead, for the relay to move into the streams.
    fn enqueue_with(
        &self,
        batch: &mut [(Arc<Endpoint>, Job)],
        count: bool,
        shared: bool,
        cursor: Option<(i64, &Cursor)>,
    ) -> (usize, bool) {
        if batch.is_empty() && cursor.is_none() {
            return (0, false);
        }
        for (_, job) in batch.iter_mut() {
            job.seq = self.outbox.next_seq();
            job.size = job.body.len();
        }
        if let (Some(link), true) = (self.outbox.link(), shared) {
            let keys: Vec<String> = batch
                .iter()
                .map(|(ep, _)| link::spill_key(&ep.webhook.id))
                .collect();
            let rows: Vec<(&str, &Job)> = keys
                .iter()
                .zip(batch.iter())
                .map(|(k, (_, job))| (k.as_str(), job))
                .collect();
            // A store that refuses them (counted as an outbox error) saved no cursor either:
            // the changes are derived again after a restart or by the next leader.
            let written = self.outbox.insert(&rows, cursor);
            if written {
                link.spilled(batch.iter().map(|(_, j)| j.size as u64).sum());
            }
            return (if written { 0 } else { batch.len() }, written);
        }
        let rows: Vec<(&str, &Job)> = batch
            .iter()
            .map(|(ep, job)| (ep.webhook.id.as_str(), job))
            .collect();
        let written = self.outbox.insert(&rows, cursor);
        if written {
            // On disk now: a worker with a long queue may let go of the body.
            for (_, job) in batch.iter_mut() {
                job.on_disk = true;
            }
        }
        let mut failed = 0;
        for (ep, job) in batch.iter() {
            if let Err(e) = ep.tx.try_send(job.clone()) {
                failed += 1;
                // A worker that stopped (shutting down) leaves the row for the next start.
                let closed = matches!(e, mpsc::error::TrySendError::Closed(_));
                if !(closed && written) {
                    self.outbox.remove(&ep.webhook.id, &[job.seq]);
                }
                if !count {
                    continue;
                }
                let reason = match e {
                    mpsc::error::TrySendError::Full(_) => DropReason::QueueFull,
                    mpsc::error::TrySendError::Closed(_) => DropReason::Shutdown,
                };
                self.metrics.dropped(&ep.webhook.id, reason, 1, 0);
                tracing::warn!(endpoint = %ep.webhook.id, reason = reason.as_str(), "request not queued");
            }
        }
        (failed, written)
    }

    /// Stops every worker (they deliver within the shutdown deadline) and returns how many
    /// requests were left undelivered.
    pub async fn shutdown(&self, by: tokio::time::Instant) -> usize {
        for c in self
            .consumers
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .values()
        {
            c.cancel();
        }
        self.shutdown.at(by);
        let mut tasks =
            std::mem::take(&mut *self.tasks.lock().unwrap_or_else(PoisonError::into_inner));
        let mut left = 0;
        while let Some(r) = tasks.join_next().await {
            left += r.unwrap_or(0);
        }
        left
    }
}
