//! Cluster mode's metrics: whether Redis answers, leadership, what moved through Redis and
//! what the claims kept from being queued twice.
//!
//! In: counts from the cluster pieces. Out: series in the one registry. Never: labels anything
//! with an event id or a flag.

use crate::metrics::Registry;

pub struct ClusterMetrics {
    pub up: prometheus::IntGauge,
    pub leader: prometheus::IntGauge,
    pub leader_changes: prometheus::IntCounter,
    pub errors: prometheus::IntCounterVec,
    pub queued: prometheus::IntCounter,
    pub duplicates: prometheus::IntCounter,
    pub finished_elsewhere: prometheus::IntCounter,
    pub taken_over: prometheus::IntCounter,
    pub spill_events: prometheus::IntGauge,
    pub spill_bytes: prometheus::IntGauge,
    pub spill_full: prometheus::IntCounter,
    pub reclaimed: prometheus::IntCounter,
    pub order_waits: prometheus::IntCounter,
    pub hints: prometheus::IntCounterVec,
    pub dropped: prometheus::IntCounterVec,
    pub unreadable: prometheus::IntCounterVec,
    pub deleted_unsent: prometheus::IntCounter,
}

impl ClusterMetrics {
    pub fn new(r: &Registry) -> Self {
        let m = Self {
            up: r.gauge(
                "flaghook_cluster_redis_up",
                "1 while the shared Redis answers (cluster mode).",
            ),
            leader: r.gauge(
                "flaghook_cluster_leader",
                "1 while this replica holds the lease: it follows the changelog and runs git sync.",
            ),
            leader_changes: r.counter(
                "flaghook_cluster_leader_changes_total",
                "Times this replica took or lost the lease.",
            ),
            errors: r.counter_vec(
                "flaghook_cluster_redis_errors_total",
                "Redis calls that failed, by operation (each is tried again).",
                &["op"],
            ),
            queued: r.counter(
                "flaghook_cluster_events_queued_total",
                "Requests moved from the local store into the shared streams.",
            ),
            duplicates: r.counter(
                "flaghook_cluster_duplicates_total",
                "Requests not queued because their event id was claimed already (a re-derivation after a takeover or a restart).",
            ),
            finished_elsewhere: r.counter(
                "flaghook_cluster_finished_elsewhere_total",
                "Requests taken over from a replica that finished them meanwhile: not sent again.",
            ),
            taken_over: r.counter(
                "flaghook_cluster_taken_over_total",
                "Requests this replica held that another replica took over (this one was cut off from Redis or slow to renew): let go unsent.",
            ),
            spill_events: r.gauge(
                "flaghook_cluster_spill_events",
                "Requests waiting in the local store for Redis.",
            ),
            spill_bytes: r.gauge(
                "flaghook_cluster_spill_bytes",
                "Bytes of requests waiting in the local store for Redis (bounded by cluster.spill_max_bytes).",
            ),
            spill_full: r.counter(
                "flaghook_cluster_spill_full_total",
                "Times the changelog follower waited because the local spill was at cluster.spill_max_bytes (Flagr's changelog keeps the changes meanwhile).",
            ),
            reclaimed: r.counter(
                "flaghook_cluster_reclaimed_total",
                "Requests taken over from a replica that stopped renewing them.",
            ),
            order_waits: r.counter(
                "flaghook_cluster_order_waits_total",
                "Requests that waited for an earlier request of their flag held by another replica (each counted once).",
            ),
            hints: r.counter_vec(
                "flaghook_cluster_hints_total",
                "Proxied changes' hints queued for publishing to the leader (sent; one that cannot be written is counted in flaghook_cluster_writes_dropped_total) or received from another replica (received).",
                &["direction"],
            ),
            dropped: r.counter_vec(
                "flaghook_cluster_writes_dropped_total",
                "Best-effort writes to Redis given up (log entries, pause state, hints), by kind.",
                &["kind"],
            ),
            unreadable: r.counter_vec(
                "flaghook_cluster_unreadable_total",
                "Requests found in Redis that could not be read and were dropped: a stream entry (entry) or a parked impression batch (parked).",
                &["what"],
            ),
            deleted_unsent: r.counter(
                "flaghook_cluster_deleted_unsent_total",
                "Requests still waiting in a webhook's stream, read by no replica, when the webhook was deleted (those replicas held are counted as dropped{reason=\"deleted\"} by each).",
            ),
        };
        for w in ["entry", "parked"] {
            m.unreadable.with_label_values(&[w]);
        }
        for d in ["sent", "received"] {
            m.hints.with_label_values(&[d]);
        }
        m
    }
}
