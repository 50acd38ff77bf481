//! The proxy's own metrics: requests by route class, method and status class, their time to
//! Flagr's response headers, those in flight, and Flagr's failures to answer.
//!
//! In: counts from [`super::Measure`] and [`super::Upstream`]. Out: series in the one registry.
//! Never: labels a request by anything unbounded (a path, a flag key).

use std::sync::OnceLock;
use std::time::Duration;

use prometheus::{Histogram, IntCounter};

use crate::metrics::{labels, latency_buckets, status_class, Registry};

/// Route classes, methods and status classes as counted (`Route::class`, `method_label`,
/// `status_class`): a request's series are found by position, not by hashing its labels.
const CLASSES: [&str; 4] = ["mutation", "evaluation", "exposure", "passthrough"];
const METHODS: [&str; 8] = [
    "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "other",
];
const STATUSES: [&str; 5] = ["1xx", "2xx", "3xx", "4xx", "5xx"];

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
    /// Each series of `requests` and `duration`, looked up once, at its first request (so the
    /// export shows only series that were used, as before).
    counted: Box<[OnceLock<IntCounter>]>,
    timed: [OnceLock<Histogram>; CLASSES.len()],
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
            counted: (0..CLASSES.len() * METHODS.len() * STATUSES.len())
                .map(|_| OnceLock::new())
                .collect(),
            timed: Default::default(),
        };
        for f in UpstreamFailure::ALL {
            m.upstream_errors.with_label_values(&[f.as_str()]);
        }
        m
    }

    /// A request answered (by Flagr or by flaghook), with the time to its response headers.
    pub(super) fn answered(&self, class: &str, method: &str, status: u16, took: Duration) {
        let c = position(&CLASSES, class);
        let m = position(&METHODS, method);
        let s = position(&STATUSES, status_class(status));
        self.counted[(c * METHODS.len() + m) * STATUSES.len() + s]
            .get_or_init(|| {
                self.requests
                    .with_label_values(&[CLASSES[c], METHODS[m], STATUSES[s]])
            })
            .inc();
        self.timed[c]
            .get_or_init(|| self.duration.with_label_values(&[CLASSES[c]]))
            .observe(took.as_secs_f64());
    }

    /// Flagr did not answer a request: counted here, logged by the caller with its details.
    pub fn upstream_failed(&self, why: UpstreamFailure) {
        self.upstream_errors
            .with_label_values(&[why.as_str()])
            .inc();
    }
}

/// Where `label` is in `list`; the last place (`other`, `passthrough`, `5xx`) for anything
/// not there.
fn position(list: &[&str], label: &str) -> usize {
    list.iter()
        .position(|l| *l == label)
        .unwrap_or(list.len() - 1)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::flagr::Route;
    use crate::metrics::method_label;

    /// Every label the proxy counts under has a place of its own, and a request lands in the
    /// series its labels name.
    #[test]
    fn answered_counts_in_the_series_its_labels_name() {
        let routes = [
            Route::Mutation(crate::flagr::Mutation::CreateFlag),
            Route::Evaluation(crate::flagr::Evaluation::Single),
            Route::Exposure,
            Route::Passthrough,
        ];
        for r in &routes {
            assert_eq!(CLASSES[position(&CLASSES, r.class())], r.class());
        }
        let methods = [
            "GET", "POST", "PUT", "DELETE", "HEAD", "OPTIONS", "PATCH", "TRACE",
        ];
        for m in methods {
            let label = method_label(&http::Method::from_bytes(m.as_bytes()).unwrap());
            assert_eq!(METHODS[position(&METHODS, label)], label);
        }
        let m = ProxyMetrics::new(&Registry::default());
        for (status, n) in [(99, 1), (204, 2), (302, 1), (404, 1), (503, 1), (200, 2)] {
            for _ in 0..n {
                m.answered("evaluation", "POST", status, Duration::from_millis(3));
            }
        }
        for (status, want) in [(200, 4), (302, 1), (404, 1), (503, 2)] {
            let series = ["evaluation", "POST", status_class(status)];
            assert_eq!(
                m.requests.with_label_values(&series).get(),
                want,
                "{status}"
            );
        }
        let timed = m.duration.with_label_values(&["evaluation"]);
        assert_eq!(timed.get_sample_count(), 8);
        // Nothing is counted under a series no request had.
        assert_eq!(
            m.requests
                .with_label_values(&["mutation", "GET", "2xx"])
                .get(),
            0
        );
    }
}
