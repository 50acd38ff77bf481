//! The Prometheus registry: every metric flaghook exports, in one place, all prefixed `flaghook_`.
//!
//! In: increments from every module. Out: the text exposition format for `/metrics`.
//! Never: uses an unbounded label value (URLs, error texts); endpoint labels are configured ids.

use prometheus::{
    exponential_buckets, Encoder, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGauge,
    IntGaugeVec, Opts, Registry, TextEncoder,
};

/// All metrics. Cheap to share (`Arc`), lock-free to update.
pub struct Metrics {
    registry: Registry,
    pub proxy_requests: IntCounterVec,
    pub proxy_duration: HistogramVec,
    pub proxy_upstream_errors: IntCounterVec,
    pub proxy_in_flight: IntGauge,
    pub connections_refused: IntCounterVec,
    pub connections_open: IntGaugeVec,
    pub tap_uninspected: IntCounterVec,
    pub tap_dropped: IntCounterVec,
    pub derive_errors: IntCounterVec,
    pub mutations_seen: IntCounterVec,
    pub events_derived: IntCounterVec,
    pub deliveries: IntCounterVec,
    pub delivery_duration: HistogramVec,
    pub delivery_retries: IntCounterVec,
    pub queue_depth: IntGaugeVec,
    pub queue_bytes: IntGaugeVec,
    pub dropped: IntCounterVec,
    pub endpoint_paused: IntGaugeVec,
    pub endpoint_disabled: IntGaugeVec,
    pub impressions_derived: IntCounter,
    pub impressions_batched: IntCounter,
    pub impressions_delivered: IntCounter,
    pub impressions_parked: IntCounter,
    pub impressions_dropped: IntCounterVec,
    pub impression_batch_records: prometheus::Histogram,
    pub impression_compression_ratio: prometheus::Histogram,
    pub gitsync_runs: IntCounterVec,
    pub gitsync_duration: HistogramVec,
    pub gitsync_last_success: IntGaugeVec,
    pub upstream_legacy: IntGauge,
    pub changelog_snapshots: IntCounterVec,
    pub changelog_hints: IntCounterVec,
    pub changelog_errors: IntCounterVec,
    pub changelog_cursor: IntGauge,
    pub outbox_errors: IntCounterVec,
    pub changelog_max_id: IntGauge,
    pub config_webhooks: IntGauge,
    pub build_info: IntGauge,
}

impl Metrics {
    pub fn new() -> Self {
        let registry = Registry::new();
        let r = &registry;
        fn reg<C: prometheus::core::Collector + Clone + 'static>(r: &Registry, c: C) -> C {
            // Names are static and unique, so registration cannot fail at runtime.
            r.register(Box::new(c.clone()))
                .expect("metric names are unique");
            c
        }
        let counter_vec = |name: &str, help: &str, labels: &[&str]| {
            reg(
                r,
                IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        let gauge_vec = |name: &str, help: &str, labels: &[&str]| {
            reg(
                r,
                IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric"),
            )
        };
        // 100 µs .. ~13 s: covers loopback proxying and webhook round trips alike.
        let buckets = exponential_buckets(0.0001, 2.0, 18).expect("valid buckets");
        let m = Self {
            proxy_requests: counter_vec(
                "flaghook_proxy_requests_total",
                "Requests proxied to Flagr, by route class, method and status class.",
                &["route_class", "method", "status_class"],
            ),
            proxy_duration: reg(
                r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "flaghook_proxy_request_duration_seconds",
                        "Time from request to Flagr's response headers, by route class.",
                    )
                    .buckets(buckets.clone()),
                    &["route_class"],
                )
                .expect("valid metric"),
            ),
            proxy_upstream_errors: counter_vec(
                "flaghook_proxy_upstream_errors_total",
                "Requests Flagr did not answer, by kind (connect, timeout, other).",
                &["kind"],
            ),
            proxy_in_flight: reg(
                r,
                IntGauge::new(
                    "flaghook_proxy_in_flight_requests",
                    "Requests being proxied right now.",
                )
                .expect("valid metric"),
            ),
            connections_refused: counter_vec(
                "flaghook_connections_refused_total",
                "Connections closed at once because the listener held its maximum, by listener.",
                &["listener"],
            ),
            connections_open: gauge_vec(
                "flaghook_connections_open",
                "Client connections open right now, by listener.",
                &["listener"],
            ),
            tap_uninspected: counter_vec(
                "flaghook_tap_uninspected_total",
                "Bodies of inspected routes that were not inspected (too_large: over the cap; over_budget: proxy.tap_max_bytes held by waiting copies; incomplete).",
                &["direction", "reason"],
            ),
            tap_dropped: counter_vec(
                "flaghook_tap_dropped_total",
                "Exchanges not handed to derivation because a channel was full.",
                &["stage"],
            ),
            derive_errors: counter_vec(
                "flaghook_derive_errors_total",
                "Mutations whose events could not be derived, by reason.",
                &["reason"],
            ),
            mutations_seen: counter_vec(
                "flaghook_mutations_total",
                "Mutating calls seen, by Flagr status class.",
                &["status_class"],
            ),
            events_derived: counter_vec(
                "flaghook_events_derived_total",
                "Change events derived, by event name.",
                &["event"],
            ),
            deliveries: counter_vec(
                "flaghook_deliveries_total",
                "Delivery attempts, by endpoint and outcome.",
                &["endpoint", "outcome"],
            ),
            delivery_duration: reg(
                r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "flaghook_delivery_duration_seconds",
                        "Duration of one delivery attempt, by endpoint.",
                    )
                    .buckets(buckets),
                    &["endpoint"],
                )
                .expect("valid metric"),
            ),
            delivery_retries: counter_vec(
                "flaghook_delivery_retries_total",
                "Retries scheduled, by endpoint.",
                &["endpoint"],
            ),
            queue_depth: gauge_vec(
                "flaghook_queue_depth",
                "Requests queued or in flight, by endpoint.",
                &["endpoint"],
            ),
            queue_bytes: gauge_vec(
                "flaghook_queue_bytes",
                "Body bytes queued or in flight, by endpoint.",
                &["endpoint"],
            ),
            dropped: counter_vec(
                "flaghook_dropped_total",
                "Requests given up on, by endpoint and reason.",
                &["endpoint", "reason"],
            ),
            endpoint_paused: gauge_vec(
                "flaghook_endpoint_paused",
                "1 while an endpoint is paused or being probed, by endpoint.",
                &["endpoint"],
            ),
            endpoint_disabled: gauge_vec(
                "flaghook_endpoint_disabled",
                "1 while an endpoint is disabled because its receiver answered 410 Gone.",
                &["endpoint"],
            ),
            impressions_derived: reg(
                r,
                IntCounter::new(
                    "flaghook_impressions_derived_total",
                    "Impression records derived from evaluations and exposures.",
                )
                .expect("valid metric"),
            ),
            impressions_batched: reg(
                r,
                IntCounter::new(
                    "flaghook_impressions_batched_total",
                    "Impression records put into a batch (once per endpoint).",
                )
                .expect("valid metric"),
            ),
            impressions_delivered: reg(
                r,
                IntCounter::new(
                    "flaghook_impressions_delivered_total",
                    "Impression records in batches an endpoint accepted with 200.",
                )
                .expect("valid metric"),
            ),
            impressions_parked: reg(
                r,
                IntCounter::new(
                    "flaghook_impressions_parked_total",
                    "Impression records in batches parked after their retry failed.",
                )
                .expect("valid metric"),
            ),
            impressions_dropped: counter_vec(
                "flaghook_impressions_dropped_total",
                "Impression records given up on, by endpoint and reason.",
                &["endpoint", "reason"],
            ),
            impression_batch_records: reg(
                r,
                prometheus::Histogram::with_opts(
                    HistogramOpts::new(
                        "flaghook_impression_batch_records",
                        "Records per impression batch.",
                    )
                    .buckets(exponential_buckets(1.0, 4.0, 9).expect("valid buckets")),
                )
                .expect("valid metric"),
            ),
            impression_compression_ratio: reg(
                r,
                prometheus::Histogram::with_opts(
                    HistogramOpts::new(
                        "flaghook_impression_compression_ratio",
                        "Compressed size over JSON size of gzipped impression batches.",
                    )
                    .buckets(vec![0.02, 0.05, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1.0]),
                )
                .expect("valid metric"),
            ),
            gitsync_runs: counter_vec(
                "flaghook_gitsync_runs_total",
                "Git syncs, by repository and outcome (success, invalid, apply_failed, error).",
                &["repository", "outcome"],
            ),
            gitsync_duration: reg(
                r,
                HistogramVec::new(
                    HistogramOpts::new(
                        "flaghook_gitsync_duration_seconds",
                        "Time to read, plan and apply one git sync.",
                    )
                    .buckets(exponential_buckets(0.01, 2.0, 14).expect("valid buckets")),
                    &["repository"],
                )
                .expect("valid metric"),
            ),
            gitsync_last_success: gauge_vec(
                "flaghook_gitsync_last_success_timestamp_seconds",
                "Unix time of the last successful git sync, by repository.",
                &["repository"],
            ),
            upstream_legacy: reg(
                r,
                IntGauge::new(
                    "flaghook_upstream_legacy",
                    "1 when Flagr has no snapshot history (1.1.x) and flags are pre-fetched.",
                )
                .expect("valid metric"),
            ),
            changelog_snapshots: counter_vec(
                "flaghook_changelog_snapshots_total",
                "Flagr snapshots walked by the changelog follower, by outcome (events, no_change, too_old, not_proxied, unreadable, beyond_walk).",
                &["outcome"],
            ),
            changelog_hints: counter_vec(
                "flaghook_changelog_hints_total",
                "Proxied calls' notes paired with their snapshot (matched) or let go (unmatched, expired).",
                &["outcome"],
            ),
            changelog_errors: counter_vec(
                "flaghook_changelog_errors_total",
                "Changelog follower errors, by stage (flagr, store); the follower tries again.",
                &["stage"],
            ),
            outbox_errors: counter_vec(
                "flaghook_outbox_errors_total",
                "Outbox reads and writes that failed (disk full, unwritable); the request stays queued in memory.",
                &["op"],
            ),
            changelog_cursor: reg(
                r,
                IntGauge::new(
                    "flaghook_changelog_cursor",
                    "Every Flagr snapshot up to this id has been turned into events.",
                )
                .expect("valid metric"),
            ),
            changelog_max_id: reg(
                r,
                IntGauge::new(
                    "flaghook_changelog_max_id",
                    "Flagr's newest snapshot id, as last read.",
                )
                .expect("valid metric"),
            ),
            config_webhooks: reg(
                r,
                IntGauge::new(
                    "flaghook_webhooks",
                    "Webhook endpoints running (change events and impressions).",
                )
                .expect("valid metric"),
            ),
            build_info: reg(
                r,
                IntGauge::with_opts(
                    Opts::new("flaghook_build_info", "Always 1; the version is a label.")
                        .const_label("version", env!("CARGO_PKG_VERSION")),
                )
                .expect("valid metric"),
            ),
            registry,
        };
        m.build_info.set(1);
        // Known label values start at 0, so rate() and dashboards see the series from the start.
        for direction in ["request", "response"] {
            for reason in ["too_large", "over_budget", "incomplete"] {
                m.tap_uninspected.with_label_values(&[direction, reason]);
            }
        }
        for listener in ["proxy", "admin"] {
            m.connections_refused.with_label_values(&[listener]);
            m.connections_open.with_label_values(&[listener]);
        }
        for stage in ["tap", "lane", "hint", "impressions"] {
            m.tap_dropped.with_label_values(&[stage]);
        }
        for outcome in [
            "events",
            "no_change",
            "too_old",
            "not_proxied",
            "unreadable",
            "beyond_walk",
        ] {
            m.changelog_snapshots.with_label_values(&[outcome]);
        }
        for outcome in ["matched", "unmatched", "expired"] {
            m.changelog_hints.with_label_values(&[outcome]);
        }
        for stage in ["flagr", "store"] {
            m.changelog_errors.with_label_values(&[stage]);
        }
        for op in ["insert", "update", "remove", "load", "state"] {
            m.outbox_errors.with_label_values(&[op]);
        }

        m
    }

    /// Creates an endpoint's series at 0 (every outcome and drop reason).
    pub fn init_endpoint(&self, endpoint: &str, impressions: bool) {
        for outcome in ["success", "error_retryable", "error_final"] {
            self.deliveries.with_label_values(&[endpoint, outcome]);
        }
        for reason in [
            "queue_full",
            "rejected",
            "retries_exhausted",
            "shutdown",
            "deleted",
        ] {
            self.dropped.with_label_values(&[endpoint, reason]);
        }
        self.delivery_retries.with_label_values(&[endpoint]);
        self.endpoint_disabled.with_label_values(&[endpoint]);
        if impressions {
            self.dropped
                .with_label_values(&[endpoint, "parked_overflow"]);
            for reason in [
                "queue_full",
                "parked_overflow",
                "retries_exhausted",
                "shutdown",
            ] {
                self.impressions_dropped
                    .with_label_values(&[endpoint, reason]);
            }
        }
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut buf = Vec::new();
        // Encoding into a Vec cannot fail for well-formed metrics.
        let _ = TextEncoder::new().encode(&self.registry.gather(), &mut buf);
        String::from_utf8(buf).unwrap_or_default()
    }

    /// Counts a delivery attempt's outcome.
    pub fn delivery(&self, endpoint: &str, outcome: &str) {
        self.deliveries
            .with_label_values(&[endpoint, outcome])
            .inc();
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

/// `2xx`, `4xx`, ...: a bounded label for a status code.
pub fn status_class(status: u16) -> &'static str {
    match status {
        100..=199 => "1xx",
        200..=299 => "2xx",
        300..=399 => "3xx",
        400..=499 => "4xx",
        _ => "5xx",
    }
}

/// The method as a bounded label.
pub fn method_label(m: &http::Method) -> &'static str {
    match *m {
        http::Method::GET => "GET",
        http::Method::POST => "POST",
        http::Method::PUT => "PUT",
        http::Method::DELETE => "DELETE",
        http::Method::HEAD => "HEAD",
        http::Method::OPTIONS => "OPTIONS",
        http::Method::PATCH => "PATCH",
        _ => "other",
    }
}
