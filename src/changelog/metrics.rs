//! The changelog follower's metrics: snapshots walked, hints paired, errors, how far it got,
//! and the events derived (by name, every name at 0 from the start).
//!
//! In: counts from the follower (and the legacy derivation, which also derives events).
//! Out: series in the one registry. Never: labels anything with a flag key or an id.

use crate::events::payload::ChangeSet;
use crate::events::recent::RecentEvents;
use crate::events::EVENT_NAMES;
use crate::metrics::{labels, Registry};

labels! {
    /// What became of one walked snapshot.
    pub enum SnapshotOutcome {
        Events => "events",
        NoChange => "no_change",
        TooOld => "too_old",
        NotProxied => "not_proxied",
        Unreadable => "unreadable",
        BeyondWalk => "beyond_walk",
    }
}

labels! {
    /// What became of a proxied call's hint.
    pub enum HintOutcome { Matched => "matched", Unmatched => "unmatched", Expired => "expired" }
}

labels! {
    /// Where the follower failed (it tries again).
    pub enum FailStage { Flagr => "flagr", Store => "store" }
}

pub struct ChangelogMetrics {
    snapshots: prometheus::IntCounterVec,
    hints: prometheus::IntCounterVec,
    errors: prometheus::IntCounterVec,
    events: prometheus::IntCounterVec,
    pub cursor: prometheus::IntGauge,
    pub max_id: prometheus::IntGauge,
    pub upstream_legacy: prometheus::IntGauge,
    /// The last events, for the admin page.
    pub recent: RecentEvents,
}

impl ChangelogMetrics {
    pub fn new(r: &Registry) -> Self {
        let m = Self {
            snapshots: r.counter_vec(
                "flaghook_changelog_snapshots_total",
                "Flagr snapshots walked by the changelog follower, by outcome (events, no_change, too_old, not_proxied, unreadable, beyond_walk).",
                &["outcome"],
            ),
            hints: r.counter_vec(
                "flaghook_changelog_hints_total",
                "Proxied calls' notes paired with their snapshot (matched) or let go (unmatched, expired).",
                &["outcome"],
            ),
            errors: r.counter_vec(
                "flaghook_changelog_errors_total",
                "Changelog follower errors, by stage (flagr, store); the follower tries again.",
                &["stage"],
            ),
            events: r.counter_vec(
                "flaghook_events_derived_total",
                "Change events derived, by event name.",
                &["event"],
            ),
            cursor: r.gauge(
                "flaghook_changelog_cursor",
                "Every Flagr snapshot up to this id has been turned into events.",
            ),
            max_id: r.gauge(
                "flaghook_changelog_max_id",
                "Flagr's newest snapshot id, as last read.",
            ),
            upstream_legacy: r.gauge(
                "flaghook_upstream_legacy",
                "1 when Flagr has no snapshot history (1.1.x) and flags are pre-fetched.",
            ),
            recent: RecentEvents::default(),
        };
        for o in SnapshotOutcome::ALL {
            m.snapshots.with_label_values(&[o.as_str()]);
        }
        for o in HintOutcome::ALL {
            m.hints.with_label_values(&[o.as_str()]);
        }
        for s in FailStage::ALL {
            m.errors.with_label_values(&[s.as_str()]);
        }
        for e in EVENT_NAMES {
            m.events.with_label_values(&[e]);
        }
        m
    }

    pub fn snapshot(&self, o: SnapshotOutcome) {
        self.snapshots.with_label_values(&[o.as_str()]).inc();
    }

    pub fn hint(&self, o: HintOutcome) {
        self.hints.with_label_values(&[o.as_str()]).inc();
    }

    /// A failure: counted and logged together; the follower tries again.
    pub fn failed(&self, stage: FailStage, what: &str, e: &dyn std::fmt::Display) {
        self.errors.with_label_values(&[stage.as_str()]).inc();
        tracing::warn!(stage = stage.as_str(), error = %e, "changelog: {what}");
    }

    /// A change set's events: counted by name and kept among the recent ones.
    pub fn derived(&self, set: &ChangeSet) {
        for e in &set.events {
            self.events.with_label_values(&[e.event]).inc();
        }
        self.recent.record(set);
    }
}
