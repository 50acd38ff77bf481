//! What an endpoint needs to send: its webhook, the shared client and policy, its rules, the
//! outbox and the metrics.
//!
//! In: built by the fan-out when an endpoint is added or reconfigured. Out: shared, read-only,
//! by the worker and each attempt. Never: changes once built (a reconfiguration builds anew).

use std::sync::Arc;
use std::time::Duration;

use super::metrics::DeliveryMetrics;
use super::outbox::Outbox;
use super::policy::DeliveryPolicy;
use crate::config::{DeliveryConfig, WebhookConfig};

/// What an endpoint carries; its [`DeliveryPolicy`] is made from it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Kind {
    /// Change events.
    Events,
    /// Impression batches, with their retry delay and parking bound.
    Impressions {
        retry_delay: Duration,
        park_max_bytes: usize,
    },
}

/// What an endpoint needs to send: its config, the shared client, the shared policy.
pub struct EndpointCtx {
    /// Success, retries, and what comes after them: the only thing the worker asks about what
    /// the endpoint carries.
    pub rules: DeliveryPolicy,
    pub webhook: Arc<WebhookConfig>,
    pub url: reqwest::Url,
    /// The URL with its credentials masked, as the delivery log shows it.
    pub shown_url: Arc<str>,
    pub client: reqwest::Client,
    pub policy: Arc<DeliveryConfig>,
    pub metrics: Arc<DeliveryMetrics>,
    pub outbox: Outbox,
}
