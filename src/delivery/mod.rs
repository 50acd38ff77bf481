//! Delivery: fans change events out to the webhooks that want them and runs one worker per
//! endpoint.
//!
//! In: [`ChangeSet`]s from derivation. Out: signed HTTP requests to webhook URLs.
//! Never: blocks the caller (`publish` uses `try_send`; a full queue drops and counts), follows a
//! redirect, or lets one endpoint's trouble delay another.

pub mod endpoint;
pub mod guard;
pub mod retry;
pub mod sign;

use std::sync::Arc;

use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio_util::sync::CancellationToken;

pub use endpoint::Job;

use crate::config::{DeliveryConfig, PayloadFormat, WebhookConfig};
use crate::events::payload::{flagr_body, seed_body, ChangeSet};
use crate::metrics::Metrics;

struct Endpoint {
    webhook: Arc<WebhookConfig>,
    tx: mpsc::Sender<Job>,
}

/// The fan-out in front of the endpoint workers.
pub struct Deliveries {
    endpoints: Vec<Endpoint>,
    metrics: Arc<Metrics>,
}

/// The HTTP client every endpoint shares: no redirects, the SSRF guard as resolver, rustls.
pub fn http_client(policy: &Arc<DeliveryConfig>) -> Result<reqwest::Client, String> {
    reqwest::Client::builder()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(policy.timeout)
        .connect_timeout(policy.timeout)
        .pool_idle_timeout(std::time::Duration::from_secs(60))
        .user_agent(concat!("flaghook/", env!("CARGO_PKG_VERSION")))
        .dns_resolver(Arc::new(guard::GuardedResolver {
            cfg: policy.clone(),
        }))
        .build()
        .map_err(|e| format!("cannot build the webhook HTTP client: {e}"))
}

impl Deliveries {
    /// Starts one worker per webhook on `tasks`; each returns how many requests it left behind.
    pub fn start(
        webhooks: &[WebhookConfig],
        policy: Arc<DeliveryConfig>,
        metrics: Arc<Metrics>,
        shutdown: CancellationToken,
        tasks: &mut JoinSet<usize>,
    ) -> Result<Self, String> {
        let client = http_client(&policy)?;
        let mut endpoints = Vec::new();
        for w in webhooks {
            let url = guard::check_url(&w.url, &policy).map_err(|e| e.to_string())?;
            let webhook = Arc::new(w.clone());
            let (tx, rx) = mpsc::channel(policy.queue_max_events);
            let ctx = Arc::new(endpoint::EndpointCtx {
                webhook: webhook.clone(),
                url,
                client: client.clone(),
                policy: policy.clone(),
                metrics: metrics.clone(),
            });
            tasks.spawn(endpoint::run(ctx, rx, shutdown.clone()));
            endpoints.push(Endpoint { webhook, tx });
        }
        metrics.config_webhooks.set(endpoints.len() as i64);
        Ok(Self { endpoints, metrics })
    }

    /// Queues the change set for every webhook that wants any of its events.
    pub fn publish(&self, set: &ChangeSet) {
        // Seed bodies are the same for every endpoint: build each at most once.
        let mut seed: Vec<Option<bytes::Bytes>> = vec![None; set.events.len()];
        for ep in &self.endpoints {
            let w = &ep.webhook;
            match w.format {
                PayloadFormat::Flaghook => {
                    for (i, ev) in set.events.iter().enumerate() {
                        if !w.wants(ev.event, &set.flag_key, &set.tags) {
                            continue;
                        }
                        let body = seed[i].get_or_insert_with(|| seed_body(set, ev)).clone();
                        self.enqueue(
                            ep,
                            Job {
                                id: ev.id.clone(),
                                order_key: set.flag_id,
                                body,
                                label: ev.event,
                            },
                        );
                    }
                }
                PayloadFormat::Flagr => {
                    if set
                        .events
                        .iter()
                        .any(|ev| w.wants(ev.event, &set.flag_key, &set.tags))
                    {
                        self.enqueue(
                            ep,
                            Job {
                                id: set.id.clone(),
                                order_key: set.flag_id,
                                body: flagr_body(set, w.detailed_diff),
                                label: set.notice.operation,
                            },
                        );
                    }
                }
            }
        }
    }

    fn enqueue(&self, ep: &Endpoint, job: Job) {
        if let Err(e) = ep.tx.try_send(job) {
            let reason = match e {
                mpsc::error::TrySendError::Full(_) => "queue_full",
                mpsc::error::TrySendError::Closed(_) => "shutdown",
            };
            self.metrics
                .dropped
                .with_label_values(&[&ep.webhook.id, reason])
                .inc();
            tracing::warn!(endpoint = %ep.webhook.id, reason, "request not queued");
        }
    }

    pub fn is_empty(&self) -> bool {
        self.endpoints.is_empty()
    }
}
