//! Backfill: Flagr's snapshot history re-derived for one endpoint (a new audit sink that wants
//! the past), with the same event ids as when the changes happened.
//!
//! In: an endpoint id and where to start. Out: change sets queued for that endpoint alone.
//! Never: touches the follower's cursors or another endpoint's queue.

use serde::Serialize;

use super::walk::{flip_index, plain_drafts};
use super::{FollowError, Follower};
use crate::events::{self};
use crate::flagr::{FlagState, Mutation};

/// Where the history starts.
#[derive(Clone, Debug)]
pub enum Since {
    /// Snapshots with a larger id.
    Snapshot(i64),
    /// Snapshots written at or after this time.
    Time(chrono::DateTime<chrono::Utc>),
}

/// What a backfill queued.
#[derive(Debug, Default, Serialize)]
pub struct Report {
    pub flags: usize,
    pub snapshots: usize,
    pub change_sets: usize,
    pub events: usize,
}

impl Follower {
    /// Derives every flag's history since `since` and queues it for endpoint `id` only (within
    /// its filters), flag by flag in snapshot order. Deletes and restores are told apart only for
    /// the newest state (the snapshots do not say which call made them).
    pub async fn backfill(&self, id: &str, since: &Since) -> Result<Report, FollowError> {
        let mut listed = self.flagr.listed_flags(false).await?;
        listed.extend(self.flagr.listed_flags(true).await?);
        listed.sort_by_key(|f| f.id);
        let mut report = Report::default();
        for f in &listed {
            // The whole history: floor 0 reads back to the flag's first snapshot.
            let (snaps, _) = self.read_back_to(f.id, 0, 100).await?;
            let states: Vec<Option<FlagState>> = snaps
                .iter()
                .map(|s| FlagState::from_value(s.flag.clone()).ok())
                .collect();
            let plain = plain_drafts(None, &states);
            let flip_at = f.deleted.then(|| flip_index(&plain, false)).flatten();
            report.flags += 1;
            let mut prev: Option<&FlagState> = None;
            for (i, snap) in snaps.iter().enumerate() {
                let Some(after) = &states[i] else { continue };
                let wanted = match since {
                    Since::Snapshot(n) => snap.id > *n,
                    Since::Time(t) => chrono::DateTime::parse_from_rfc3339(&snap.updated_at)
                        .is_ok_and(|at| at >= *t),
                };
                if wanted {
                    report.snapshots += 1;
                    let drafts = if flip_at == Some(i) {
                        let m = Mutation::DeleteFlag { flag: f.id };
                        events::derive(&m, prev.map(|p| &p.flag), &after.flag)
                    } else {
                        plain[i].clone()
                    };
                    if !drafts.is_empty() {
                        let set = self.change_set(f.id, snap, prev, after, drafts, None);
                        report.change_sets += 1;
                        report.events += set.events.len();
                        self.deliveries.publish_to(id, &set);
                    }
                }
                prev = Some(after);
            }
        }
        tracing::info!(
            endpoint = id,
            ?since,
            flags = report.flags,
            snapshots = report.snapshots,
            events = report.events,
            "backfill queued"
        );
        Ok(report)
    }
}
