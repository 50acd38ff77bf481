//! One flag's walk: its snapshots after its cursor, in id order, each consecutive pair turned
//! into events, hints paired with the snapshots they wrote.
//!
//! In: the flag, its cursor, its waiting hints, what the flag lists last showed of it.
//! Out: its change sets and its advanced cursor, to the outbox in one transaction.
//! Never: moves the cursor past a snapshot it did not derive or count.

use std::sync::Arc;

use serde_json::json;
use tokio::time::Instant;

use super::{
    ChangelogMetrics, FailStage, FollowError, Follower, Hint, HintOutcome, SnapshotOutcome, State,
};
use crate::config::Follow;
use crate::events::payload::{change_set_id, event_id, ChangeEvent, ChangeSet};
use crate::events::{self, Draft};
use crate::flagr::{FlagState, Known, ListedFlag, Mutation, Snapshot};

/// Most snapshots read per request while walking back to the cursor (pages start smaller and
/// grow fourfold: each snapshot carries the whole flag).
const PAGE: usize = 100;
/// A walk reads at most this many snapshots of one flag; older ones are counted as passed over.
const MAX_WALK: usize = 10_000;

impl Follower {
    /// Turns the flag's snapshots after its cursor into events and commits the new cursor.
    /// `listed` is the flag as the last listing showed it (deleted or not, `updatedAt`).
    pub(super) async fn walk(
        &self,
        st: &mut State,
        flag: i64,
        listed: Option<&ListedFlag>,
    ) -> Result<(), FollowError> {
        let cur = st.cursors.get(&flag).cloned().unwrap_or_default();
        let floor = if cur.snapshot > 0 {
            cur.snapshot
        } else {
            st.baseline
        };
        // Usually only the hinted changes are new: read that many (and the one before them),
        // then further back only if the floor is not reached yet.
        let expect = st.hints.get(&flag).map_or(0, |q| q.len()) + 2;
        let (snaps, complete) = self.read_back_to(flag, floor, expect).await?;
        let split = snaps.partition_point(|s| s.id <= floor);
        let mut prev: Option<FlagState> = snaps[..split]
            .last()
            .and_then(|s| FlagState::from_value(s.flag.clone()).ok());
        let new = &snaps[split..];
        // A flag with nothing at or below the floor was created after it: its first snapshot
        // is its creation. If the walk stopped early, the oldest snapshot read stands in as
        // "before" instead (counted).
        let mut skip_first = false;
        if prev.is_none() && !complete && !new.is_empty() {
            skip_first = true;
        }
        let states: Vec<Option<FlagState>> = new
            .iter()
            .map(|s| FlagState::from_value(s.flag.clone()).ok())
            .collect();
        let plain = plain_drafts(prev.as_ref(), &states);
        // The listing says the flag was deleted (or restored) since the cursor, and a delete's
        // snapshot holds the same flag as the one before it: the last snapshot that changed
        // nothing is taken for it, unless a hint names the call.
        let mut deleted = cur.deleted;
        let flip_at = listed
            .filter(|l| l.deleted != cur.deleted)
            .and_then(|_| flip_index(&plain, prev.is_some()));
        let mut cursor = cur.clone();
        let mut deferred = false;
        // Published together after the walk: one outbox transaction for all of them.
        let mut sets = Vec::new();
        for (i, snap) in new.iter().enumerate() {
            let Some(after) = &states[i] else {
                self.metrics.snapshot(SnapshotOutcome::Unreadable);
                tracing::warn!(
                    flag,
                    snapshot = snap.id,
                    "changelog: snapshot not readable; passed over"
                );
                cursor.snapshot = snap.id;
                st.walked_above.insert(snap.id);
                continue;
            };
            if i == 0 && skip_first {
                self.metrics.snapshot(SnapshotOutcome::BeyondWalk);
                prev = Some(after.clone());
                cursor.snapshot = snap.id;
                continue;
            }
            let first_snapshot = prev.is_none();
            let hint = take_hint(st, flag, first_snapshot, &plain[i], &self.metrics);
            if hint.is_none() {
                // A proxied call's note may still be on its way: wait for it a little, once for
                // everything this walk found without one (a catch-up waits once, not per change).
                let since = st
                    .waiting
                    .entry(flag)
                    .or_insert((snap.id, Instant::now()))
                    .1;
                if since.elapsed() < self.cfg.hint_wait {
                    deferred = true;
                    break;
                }
            }
            cursor.snapshot = snap.id;
            st.walked_above.insert(snap.id);
            if self.cfg.follow == Follow::Proxied && hint.is_none() {
                self.metrics.snapshot(SnapshotOutcome::NotProxied);
                prev = Some(after.clone());
                continue;
            }
            if self.too_old(snap) {
                self.metrics.snapshot(SnapshotOutcome::TooOld);
                tracing::info!(flag, snapshot = snap.id, at = %snap.updated_at, "changelog: change older than catch_up_max_age; not sent");
                prev = Some(after.clone());
                continue;
            }
            let drafts = match hint.as_ref().map(|h| h.mutation) {
                Some(
                    m @ (Mutation::CreateFlag
                    | Mutation::DuplicateFlag { .. }
                    | Mutation::DeleteFlag { .. }
                    | Mutation::RestoreFlag { .. }),
                ) => {
                    deleted = matches!(m, Mutation::DeleteFlag { .. });
                    events::derive(&m, prev.as_ref().map(|p| &p.flag), &after.flag)
                }
                _ if flip_at == Some(i) && listed.is_some_and(|l| l.deleted != deleted) => {
                    deleted = !deleted;
                    let m = if deleted {
                        Mutation::DeleteFlag { flag }
                    } else {
                        Mutation::RestoreFlag { flag }
                    };
                    events::derive(&m, prev.as_ref().map(|p| &p.flag), &after.flag)
                }
                _ => plain[i].clone(),
            };
            if drafts.is_empty() {
                self.metrics.snapshot(SnapshotOutcome::NoChange);
            } else {
                self.metrics.snapshot(SnapshotOutcome::Events);
                let set = self.change_set(flag, snap, prev.as_ref(), after, drafts, hint.as_ref());
                self.metrics.derived(&set);
                sets.push(set);
            }
            prev = Some(after.clone());
        }
        if !deferred {
            st.waiting.remove(&flag);
            if let Some(l) = listed {
                if l.deleted != deleted {
                    // The listing shows a delete (or restore) whose snapshot went by as a change
                    // of nothing (another call's note was paired with it): it is sent now, on
                    // that snapshot.
                    let last = snaps.iter().find(|s| s.id == cursor.snapshot);
                    if let (Some(snap), Some(state)) = (last, prev.as_ref()) {
                        let m = if l.deleted {
                            Mutation::DeleteFlag { flag }
                        } else {
                            Mutation::RestoreFlag { flag }
                        };
                        let drafts = events::derive(&m, Some(&state.flag), &state.flag);
                        self.metrics.snapshot(SnapshotOutcome::Events);
                        sets.push(self.change_set(flag, snap, Some(state), state, drafts, None));
                    }
                }
                // Only a walk that reached the newest snapshot may record what the listing
                // showed; otherwise the next poll must walk this flag again.
                cursor.updated_at = l.updated_at.clone();
                deleted = l.deleted;
            }
        }
        cursor.deleted = deleted;
        if let Some(known) = &self.known {
            // The newest state read, events or not: the recording switch follows Flagr at once.
            match states.iter().rev().flatten().next() {
                _ if deleted => known.remove(flag),
                Some(s) => known.set(flag, Known::from(&s.flag)),
                None => {}
            }
        }
        st.highest = st.highest.max(cursor.snapshot);
        let moved = cursor != cur;
        // The events and the cursor that says they were derived go to disk in one transaction.
        let written = self
            .deliveries
            .publish_all(&sets, moved.then_some((flag, &cursor)));
        if !written && self.deliveries.outbox.link().is_some() && (moved || !sets.is_empty()) {
            // Cluster mode queues nothing in memory: events the store refused exist nowhere,
            // so the cursor stays where it was and the flag is walked again.
            return Err(FollowError::NotQueued);
        }
        if moved {
            // With an in-memory store the cursor is saved apart. On a disk that refused the
            // transaction it is not saved at all: a cursor must never be on disk without the
            // events it stands for (after a restart they are derived again).
            if !written && !self.store.durable() {
                if let Err(e) = self.store.save_changelog(&[(flag, &cursor)], None, None) {
                    self.failed(
                        FailStage::Store,
                        &format!("cursor of flag {flag} not saved"),
                        &e,
                    );
                }
            }
            // Kept in memory even when the disk refuses it: walking again would send the same
            // events again. The next successful save carries it.
            st.cursors.insert(flag, cursor);
        }
        Ok(())
    }

    /// The flag's snapshots after `floor` plus the newest one at or below it, oldest first;
    /// and whether the history was read back far enough (to the floor, or to its start).
    pub(super) async fn read_back_to(
        &self,
        flag: i64,
        floor: i64,
        first_page: usize,
    ) -> Result<(Vec<Snapshot>, bool), FollowError> {
        let mut snaps: Vec<Snapshot> = Vec::new();
        let mut offset = 0;
        let mut limit = first_page.clamp(1, PAGE);
        let complete = loop {
            let page = self.flagr.snapshots_page(flag, limit, offset).await?;
            let n = page.len();
            let reached = page.last().is_some_and(|s| s.id <= floor);
            snaps.extend(page);
            if reached || n < limit {
                break true;
            }
            offset += n;
            limit = (limit * 4).min(PAGE);
            if offset >= MAX_WALK {
                break false;
            }
        };
        snaps.sort_by_key(|s| s.id);
        snaps.dedup_by_key(|s| s.id);
        Ok((snaps, complete))
    }

    fn too_old(&self, snap: &Snapshot) -> bool {
        let Ok(at) = chrono::DateTime::parse_from_rfc3339(&snap.updated_at) else {
            return false;
        };
        let age = chrono::Utc::now().signed_duration_since(at);
        age.to_std().is_ok_and(|a| a > self.cfg.catch_up_max_age)
    }

    pub(super) fn change_set(
        &self,
        flag: i64,
        snap: &Snapshot,
        before: Option<&FlagState>,
        after: &FlagState,
        drafts: Vec<Draft>,
        hint: Option<&Hint>,
    ) -> ChangeSet {
        let notice = match hint {
            Some(h) => events::flagr_notice(&h.mutation, &after.flag, h.response.as_ref()),
            None => events::notice_of(&drafts, &after.flag),
        };
        let timestamp = chrono::DateTime::parse_from_rfc3339(&snap.updated_at)
            .map(|t| t.with_timezone(&chrono::Utc))
            .unwrap_or_else(|_| chrono::Utc::now())
            .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
        let actor = if snap.updated_by.is_empty() {
            hint.map(|h| h.actor.clone()).unwrap_or_default()
        } else {
            snap.updated_by.clone()
        };
        let commit = hint.and_then(|h| h.commit.clone());
        ChangeSet {
            id: change_set_id(flag, snap.id),
            flag_id: flag,
            flag_key: after.flag.key.clone(),
            tags: after.tag_values(),
            timestamp,
            actor,
            source: if commit.is_some() { "gitsync" } else { "api" },
            commit,
            events: drafts
                .into_iter()
                .enumerate()
                .map(|(i, d)| ChangeEvent {
                    id: event_id(flag, snap.id, i),
                    event: d.event,
                    changes: d.changes,
                })
                .collect(),
            notice,
            data: Arc::new(after.raw.clone()),
            before: before.map(|b| Arc::new(b.raw.clone())),
        }
    }
}

/// What each snapshot changed against the one before it (the first against `prev`, or its
/// creation when there is none), before any hint is applied. Unreadable snapshots change nothing.
pub(super) fn plain_drafts(
    prev: Option<&FlagState>,
    states: &[Option<FlagState>],
) -> Vec<Vec<Draft>> {
    let mut out = Vec::with_capacity(states.len());
    let mut last = prev.map(|p| &p.flag);
    for s in states {
        out.push(match (last, s) {
            (Some(b), Some(a)) => events::diff(b, &a.flag),
            (None, Some(_)) => vec![events::Draft {
                event: "flag.created",
                changes: json!({}),
            }],
            (_, None) => Vec::new(),
        });
        if let Some(a) = s {
            last = Some(&a.flag);
        }
    }
    out
}

/// The snapshot taken for a delete or restore the flag lists show but no hint names: the last
/// one that changed nothing (and is not the flag's creation).
pub(super) fn flip_index(plain: &[Vec<Draft>], has_prev: bool) -> Option<usize> {
    plain
        .iter()
        .enumerate()
        .rposition(|(i, d)| d.is_empty() && (i > 0 || has_prev))
}

/// The first waiting hint of the flag that can have written this snapshot; hints queued before
/// it belong to snapshots already passed and are let go (counted).
fn take_hint(
    st: &mut State,
    flag: i64,
    first_snapshot: bool,
    drafts: &[Draft],
    metrics: &ChangelogMetrics,
) -> Option<Hint> {
    let q = st.hints.get_mut(&flag)?;
    let pos = q
        .iter()
        .position(|p| events::could_be(&p.hint.mutation, first_snapshot, drafts))?;
    for _ in 0..pos {
        q.pop_front();
        metrics.hint(HintOutcome::Unmatched);
    }
    let p = q.pop_front()?;
    metrics.hint(HintOutcome::Matched);
    if q.is_empty() {
        st.hints.remove(&flag);
    }
    Some(p.hint)
}
