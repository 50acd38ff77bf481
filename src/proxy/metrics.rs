//! The proxy's own metrics: requests by route class, method and status class, their time to
//! Flagr's response headers, those in flight, and Flagr's failures to answer.
//!
//! In: counts from [`super::Measure`] and [`super::Upstream`]. Out: series in the one registry.
//! Never: labels a request by anything unbounded (a path, a flag key).

use crate::metrics::{labels, latency_buckets, Registry};

labels! {
    /// Why Flagr gave no answer.
    pub enum UpstreamFailure {
        Connect => "connect",
        Timeout => "timeout",
        BodyTimeout => "body_timeout",
        Other => "other",
    }
}

/// The proxy's own metrics.
pub struct ProxyMetrics {
    pub(super) requests: prometheus::IntCounterVec,
    pub(super) duration: prometheus::HistogramVec,
    pub(super) upstream_errors: prometheus::IntCounterVec,
    pub(super) in_flight: prometheus::IntGauge,
    pub(super) dials: prometheus::IntCounter,
}

impl ProxyMetrics {
    pub fn new(r: &Registry) -> Self {
        let m = Self {
            requests: r.counter_vec(
                "flaghook_proxy_requests_total",
                "Requests proxied to Flagr, by route class, method and status class.",
                &["route_class", "method", "status_class"],
            ),
            duration: r.histogram_vec(
                "flaghook_proxy_request_duration_seconds",
                "Time from request to Flagr's response headers, by route class.",
                &["route_class"],
                latency_buckets(),
            ),
            upstream_errors: r.counter_vec(
                "flaghook_proxy_upstream_errors_total",
                "Requests Flagr did not answer, or stopped answering, by kind (connect, timeout, \
                 body_timeout: nothing more of a begun answer for upstream_timeout, other).",
                &["kind"],
            ),
            in_flight: r.gauge(
                "flaghook_proxy_in_flight_requests",
                "Requests being proxied right now.",
            ),
            dials: r.counter(
                "flaghook_proxy_upstream_connections_total",
                "Connections made to Flagr for HTTP/1 client connections (each keeps its own; \
                 h2 clients share a pool, not counted here).",
            ),
        };
        for f in UpstreamFailure::ALL {
            m.upstream_errors.with_label_values(&[f.as_str()]);
        }
        m
    }

    /// Flagr did not answer a request: counted here, logged by the caller with its details.
    pub fn upstream_failed(&self, why: UpstreamFailure) {
        self.upstream_errors
            .with_label_values(&[why.as_str()])
            .inc();
    }
}
