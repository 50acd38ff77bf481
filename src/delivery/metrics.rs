//! Delivery's metrics: attempts, retries, queues, endpoint states, drops, the outbox, and the
//! fate of impression records in batches (delivered, parked, dropped).
//!
//! In: counts from the workers, the fan-out and the outbox. Out: series in the one registry,
//! every endpoint's starting at 0 (`init_endpoint`). Never: labels anything but configured ids.

use crate::metrics::{labels, latency_buckets, Registry};

labels! {
    /// How one delivery attempt ended.
    pub enum Outcome { Success => "success", Retryable => "error_retryable", Final => "error_final" }
}

labels! {
    /// Why requests were given up on.
    pub enum DropReason {
        QueueFull => "queue_full",
        Rejected => "rejected",
        RetriesExhausted => "retries_exhausted",
        Shutdown => "shutdown",
        Deleted => "deleted",
        ParkedOverflow => "parked_overflow",
        Unrenderable => "unrenderable",
    }
}

labels! {
    /// Which outbox operation failed.
    pub enum OutboxOp { Insert => "insert", Update => "update", Remove => "remove", Load => "load", State => "state" }
}

/// Why impression records in a batch can be given up on.
const IMPRESSION_DROPS: [DropReason; 4] = [
    DropReason::QueueFull,
    DropReason::ParkedOverflow,
    DropReason::RetriesExhausted,
    DropReason::Shutdown,
];

pub struct DeliveryMetrics {
    deliveries: prometheus::IntCounterVec,
    duration: prometheus::HistogramVec,
    retries: prometheus::IntCounterVec,
    queue_depth: prometheus::IntGaugeVec,
    queue_bytes: prometheus::IntGaugeVec,
    dropped: prometheus::IntCounterVec,
    paused: prometheus::IntGaugeVec,
    disabled: prometheus::IntGaugeVec,
    outbox_errors: prometheus::IntCounterVec,
    webhooks: prometheus::IntGauge,
    impressions_delivered: prometheus::IntCounter,
    impressions_parked: prometheus::IntCounter,
    impressions_dropped: prometheus::IntCounterVec,
}

impl DeliveryMetrics {
    pub fn new(r: &Registry) -> Self {
        let m = Self {
            deliveries: r.counter_vec(
                "flaghook_deliveries_total",
                "Delivery attempts, by endpoint and outcome.",
                &["endpoint", "outcome"],
            ),
            duration: r.histogram_vec(
                "flaghook_delivery_duration_seconds",
                "Duration of one delivery attempt, by endpoint.",
                &["endpoint"],
                latency_buckets(),
            ),
            retries: r.counter_vec(
                "flaghook_delivery_retries_total",
                "Retries scheduled, by endpoint.",
                &["endpoint"],
            ),
            queue_depth: r.gauge_vec(
                "flaghook_queue_depth",
                "Requests queued or in flight, by endpoint.",
                &["endpoint"],
            ),
            queue_bytes: r.gauge_vec(
                "flaghook_queue_bytes",
                "Body bytes queued or in flight, by endpoint.",
                &["endpoint"],
            ),
            dropped: r.counter_vec(
                "flaghook_dropped_total",
                "Requests given up on, by endpoint and reason.",
                &["endpoint", "reason"],
            ),
            paused: r.gauge_vec(
                "flaghook_endpoint_paused",
                "1 while an endpoint is paused or being probed, by endpoint.",
                &["endpoint"],
            ),
            disabled: r.gauge_vec(
                "flaghook_endpoint_disabled",
                "1 while an endpoint is disabled because its receiver answered 410 Gone.",
                &["endpoint"],
            ),
            outbox_errors: r.counter_vec(
                "flaghook_outbox_errors_total",
                "Outbox reads and writes that failed (disk full, unwritable); the request stays queued in memory.",
                &["op"],
            ),
            webhooks: r.gauge(
                "flaghook_webhooks",
                "Webhook endpoints running (change events and impressions).",
            ),
            impressions_delivered: r.counter(
                "flaghook_impressions_delivered_total",
                "Impression records in batches an endpoint accepted with 200.",
            ),
            impressions_parked: r.counter(
                "flaghook_impressions_parked_total",
                "Impression records in batches parked after their retry failed.",
            ),
            impressions_dropped: r.counter_vec(
                "flaghook_impressions_dropped_total",
                "Impression records given up on, by endpoint and reason.",
                &["endpoint", "reason"],
            ),
        };
        for op in OutboxOp::ALL {
            m.outbox_errors.with_label_values(&[op.as_str()]);
        }
        m
    }

    /// Creates an endpoint's series at 0 (every outcome and drop reason).
    pub fn init_endpoint(&self, endpoint: &str, impressions: bool) {
        for o in Outcome::ALL {
            self.deliveries.with_label_values(&[endpoint, o.as_str()]);
        }
        for r in DropReason::ALL {
            if *r != DropReason::ParkedOverflow || impressions {
                self.dropped.with_label_values(&[endpoint, r.as_str()]);
            }
        }
        self.retries.with_label_values(&[endpoint]);
        self.disabled.with_label_values(&[endpoint]);
        if impressions {
            for r in IMPRESSION_DROPS {
                self.impressions_dropped
                    .with_label_values(&[endpoint, r.as_str()]);
            }
        }
    }

    /// One attempt and how long it took.
    pub fn attempt(&self, endpoint: &str, outcome: Outcome, seconds: f64) {
        self.duration
            .with_label_values(&[endpoint])
            .observe(seconds);
        self.deliveries
            .with_label_values(&[endpoint, outcome.as_str()])
            .inc();
    }

    pub fn retry(&self, endpoint: &str) {
        self.retries.with_label_values(&[endpoint]).inc();
    }

    /// Requests given up on, and the impression records they carried.
    pub fn dropped(&self, endpoint: &str, reason: DropReason, requests: u64, records: u64) {
        self.dropped
            .with_label_values(&[endpoint, reason.as_str()])
            .inc_by(requests);
        self.impressions_dropped_records(endpoint, reason, records);
    }

    /// Impression records given up on before they became a request.
    pub fn impressions_dropped_records(&self, endpoint: &str, reason: DropReason, records: u64) {
        if records > 0 {
            self.impressions_dropped
                .with_label_values(&[endpoint, reason.as_str()])
                .inc_by(records);
        }
    }

    pub fn impressions_delivered(&self, records: u64) {
        self.impressions_delivered.inc_by(records);
    }

    pub fn impressions_parked(&self, records: u64) {
        self.impressions_parked.inc_by(records);
    }

    /// An endpoint's queue and state, as the worker publishes them.
    pub fn endpoint_state(
        &self,
        endpoint: &str,
        depth: usize,
        bytes: usize,
        paused: bool,
        disabled: bool,
    ) {
        self.queue_depth
            .with_label_values(&[endpoint])
            .set(depth as i64);
        self.queue_bytes
            .with_label_values(&[endpoint])
            .set(bytes as i64);
        self.paused
            .with_label_values(&[endpoint])
            .set(paused as i64);
        self.disabled
            .with_label_values(&[endpoint])
            .set(disabled as i64);
    }

    pub fn outbox_failed(&self, op: OutboxOp, n: u64) {
        self.outbox_errors
            .with_label_values(&[op.as_str()])
            .inc_by(n);
    }

    pub fn webhooks(&self, n: usize) {
        self.webhooks.set(n as i64);
    }
}
