//! The last change events and a per-minute count of them, for the admin page.
//!
//! In: every [`ChangeSet`] derived (from the changelog follower or the legacy derivation).
//! Out: the newest events first, and 60 minute counts.
//! Never: holds more than `RECENT` events; holds a flag's whole state (changes only).

use std::collections::VecDeque;
use std::sync::Mutex;

use serde::Serialize;
use serde_json::Value;

use super::payload::ChangeSet;
use crate::window::{minute_rfc3339, now_minute, Minutes};

/// Events kept.
pub const RECENT: usize = 50;

/// One event as the page lists it.
#[derive(Clone, Debug, Serialize)]
pub struct Recent {
    pub id: String,
    pub event: &'static str,
    pub flag_id: i64,
    pub flag_key: String,
    pub actor: String,
    pub source: &'static str,
    pub timestamp: String,
    pub changes: Value,
}

#[derive(Default)]
struct Inner {
    events: VecDeque<Recent>,
    minutes: Minutes<u64>,
}

#[derive(Default)]
pub struct RecentEvents {
    inner: Mutex<Inner>,
}

/// Events per minute, as the API shows them.
#[derive(Serialize)]
pub struct MinuteCount {
    pub t: String,
    pub events: u64,
}

impl RecentEvents {
    pub fn record(&self, set: &ChangeSet) {
        let Ok(mut g) = self.inner.lock() else { return };
        *g.minutes.now() += set.events.len() as u64;
        for ev in &set.events {
            g.events.push_front(Recent {
                id: ev.id.clone(),
                event: ev.event,
                flag_id: set.flag_id,
                flag_key: set.flag_key.clone(),
                actor: set.actor.clone(),
                source: set.source,
                timestamp: set.timestamp.clone(),
                changes: ev.changes.clone(),
            });
        }
        g.events.truncate(RECENT);
    }

    /// Newest first, and the last hour's counts, oldest first.
    pub fn read(&self) -> (Vec<Recent>, Vec<MinuteCount>) {
        let Ok(g) = self.inner.lock() else {
            return (Vec::new(), Vec::new());
        };
        let minutes = g
            .minutes
            .window(now_minute())
            .into_iter()
            .map(|(m, events)| MinuteCount {
                t: minute_rfc3339(m),
                events,
            })
            .collect();
        (g.events.iter().cloned().collect(), minutes)
    }
}
