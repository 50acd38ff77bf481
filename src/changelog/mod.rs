//! The changelog follower: Flagr's `flag_snapshot` table (one row per mutation, global increasing
//! ids) turned into change events, each snapshot once, whoever made the change.
//!
//! In: [`Hint`]s from the proxy (a flag was changed, by which call); Flagr's `max_id`, its flag
//! lists and each flag's snapshots. Out: [`ChangeSet`]s, with ids derived from (flag, snapshot,
//! index), published to delivery; each flag's cursor committed to the store after its events.
//! Never: runs on the request path; sends one snapshot's events under two ids; passes a snapshot
//! by without counting why (no change, too old, not proxied, unreadable).

mod backfill;
pub mod lead;
pub mod metrics;
mod walk;

pub use backfill::{Report as BackfillReport, Since};

use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use serde_json::Value;
use tokio::sync::mpsc;
use tokio::time::Instant;

pub use metrics::{ChangelogMetrics, FailStage, HintOutcome, SnapshotOutcome};

use crate::config::{ChangelogConfig, SnapshotMode};
use crate::delivery::Deliveries;
use crate::flagr::client::FlagrError;
use crate::flagr::{FlagrClient, KnownFlags, ListedFlag, Mutation};

use crate::store::{Cursor, Store, StoreError};

/// What the proxy saw of one successful mutation: which flag, which call, who, and from where.
#[derive(Clone, Debug, serde::Serialize, serde::Deserialize)]
pub struct Hint {
    pub flag: i64,
    pub mutation: Mutation,
    /// The caller by Flagr's rules (JWT claim or user header), for snapshots that name nobody.
    pub actor: String,
    /// Set when flaghook's git sync made the call.
    pub commit: Option<String>,
    /// Flagr's answer (the created object's id and key, for the `flagr` format).
    pub response: Option<Value>,
}

/// A hint waiting for its snapshot.
struct Pending {
    hint: Hint,
    at: Instant,
}

/// Hints that never find their snapshot (Flagr failed to write it) are let go after this.
const HINT_TTL: Duration = Duration::from_secs(30);
/// `max_id` gaps larger than this are not checked id by id; the flags are listed instead.
const MAX_ACCOUNTED_GAP: i64 = 4096;

#[derive(Debug, thiserror::Error)]
pub enum FollowError {
    #[error(transparent)]
    Flagr(#[from] FlagrError),
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error("cluster mode: the store refused the flag's events; walked again")]
    NotQueued,
}

/// Shared, read-only parts of the follower.
pub struct Follower {
    pub flagr: FlagrClient,
    pub deliveries: Arc<Deliveries>,
    pub metrics: Arc<ChangelogMetrics>,
    pub store: Arc<Store>,
    pub cfg: ChangelogConfig,
    pub snapshot_mode: SnapshotMode,
    /// Set here when Flagr turns out to have no changelog (1.1.x); the proxy then pre-fetches.
    pub legacy: Arc<AtomicBool>,
    /// Set once the baseline is known: `/readyz` waits for it, so no proxied change can come
    /// before the point the follower starts from.
    pub ready: Arc<AtomicBool>,
    /// Kept current for the impression workers (Flagr's recording switch); `None` when
    /// nothing reads it.
    pub known: Option<Arc<KnownFlags>>,
}

impl Follower {
    /// A follower of `flagr`'s changelog into `deliveries`, not started; `legacy` is shared
    /// with the proxy, which pre-fetches while it is set.
    pub fn new(
        cfg: &crate::config::Config,
        flagr: FlagrClient,
        deliveries: Arc<Deliveries>,
        metrics: Arc<ChangelogMetrics>,
        store: Arc<Store>,
        legacy: Arc<AtomicBool>,
        known: Option<Arc<KnownFlags>>,
    ) -> Arc<Self> {
        Arc::new(Self {
            flagr,
            deliveries,
            metrics,
            store,
            cfg: cfg.changelog.clone(),
            snapshot_mode: cfg.flagr.snapshot_mode,
            legacy,
            ready: Arc::new(AtomicBool::new(false)),
            known,
        })
    }
}

/// The follower's working state; the durable part is mirrored in the store.
pub struct State {
    baseline: i64,
    seen_max: i64,
    cursors: HashMap<i64, Cursor>,
    hints: HashMap<i64, VecDeque<Pending>>,
    /// Snapshot ids above `seen_max` already walked: when they fill the gap up to `max_id`,
    /// nothing changed around the proxy and no listing is needed.
    walked_above: BTreeSet<i64>,
    /// Flags whose newest snapshot waits for its hint: flag → (snapshot, first seen).
    waiting: HashMap<i64, (i64, Instant)>,
    /// The highest snapshot id walked or stored: a `max_id` below it means a new database.
    highest: i64,
    last_rescan: Instant,
}

impl Follower {
    /// Reads the starting point before the proxy serves, when Flagr answers within `limit`:
    /// on a first start no proxied change can then land before the baseline.
    pub async fn start_early(&self, limit: Duration) -> Option<State> {
        match tokio::time::timeout(limit, self.init()).await {
            Ok(Ok(Some(st))) => Some(st),
            _ => None,
        }
    }

    /// Follows until the hint channel closes (the proxy stopped), then walks what the last
    /// hints point at and returns. `early` is the state [`Follower::start_early`] read.
    pub async fn run(self: Arc<Self>, mut hints: mpsc::Receiver<Hint>, early: Option<State>) {
        let mut early = early;
        let mut st = loop {
            if let Some(st) = early.take() {
                break st;
            }
            match self.init().await {
                Ok(Some(st)) => break st,
                Ok(None) => {
                    // Legacy Flagr: derivation pre-fetches; hints have nothing to follow.
                    self.list_only(hints).await;
                    return;
                }
                Err(e) => {
                    tracing::debug!(error = %e, "changelog: Flagr not answering yet");
                    tokio::select! {
                        () = tokio::time::sleep(Duration::from_millis(500)) => {}
                        h = hints.recv() => if h.is_none() { return },
                    }
                }
            }
        };
        self.ready.store(true, Ordering::Relaxed);
        let mut tick = tokio::time::interval(self.cfg.poll_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                h = hints.recv() => {
                    let Some(h) = h else { break };
                    st.add_hint(h);
                    while let Ok(h) = hints.try_recv() {
                        st.add_hint(h);
                    }
                    self.walk_hinted(&mut st).await;
                }
                _ = tick.tick() => self.poll(&mut st).await,
            }
        }
        self.walk_hinted(&mut st).await;
    }

    /// Reads where to start. `None` on legacy Flagr.
    async fn init(&self) -> Result<Option<State>, FollowError> {
        if self.snapshot_mode == SnapshotMode::Prefetch {
            return Ok(None);
        }
        let Some(max) = self.flagr.max_snapshot_id().await? else {
            if self.snapshot_mode == SnapshotMode::Snapshots {
                return Err(FlagrError::Status {
                    status: http::StatusCode::NOT_FOUND,
                    path: "/flags/snapshots/max_id (flagr.snapshot_mode = \"snapshots\")".into(),
                }
                .into());
            }
            self.legacy.store(true, Ordering::Relaxed);
            self.metrics.upstream_legacy.set(1);
            tracing::info!("flagr has no changelog (1.1.x): pre-fetching flags around mutations");
            return Ok(None);
        };
        self.legacy.store(false, Ordering::Relaxed);
        self.metrics.upstream_legacy.set(0);
        let mut saved = self.store.changelog()?;
        let highest = saved
            .cursors
            .values()
            .map(|c| c.snapshot)
            .max()
            .unwrap_or(0)
            .max(saved.seen_max);
        if saved.baseline.is_some() && max < highest {
            tracing::warn!(
                flagr_max_id = max,
                cursor = saved.seen_max,
                "Flagr's changelog is behind the stored cursor (a new or restored database): starting again from Flagr's max_id"
            );
            self.store.reset_changelog()?;
            saved = Default::default();
        }
        let (baseline, seen_max) = match saved.baseline {
            Some(b) => (b, saved.seen_max),
            None => {
                // First start: listed before max_id is read, so a change in between is history
                // (at or below the baseline) and its flag is walked on the next poll anyway.
                let listed = self.list_all().await?;
                let max = self.flagr.max_snapshot_id().await?.unwrap_or(max);
                for f in &listed {
                    saved.cursors.insert(
                        f.id,
                        Cursor {
                            snapshot: 0,
                            deleted: f.deleted,
                            updated_at: f.updated_at.clone(),
                        },
                    );
                }
                let rows: Vec<(i64, &Cursor)> =
                    saved.cursors.iter().map(|(k, v)| (*k, v)).collect();
                self.store.save_changelog(&rows, Some(max), Some(max))?;
                tracing::info!(
                    max_id = max,
                    flags = listed.len(),
                    durable = self.store.durable(),
                    "changelog: first start, following from Flagr's current max_id"
                );
                (max, max)
            }
        };
        if seen_max < max {
            tracing::info!(
                from = seen_max,
                to = max,
                "changelog: catching up with changes made while flaghook was away"
            );
        }
        if self.known.is_some() {
            let live = self.flagr.listed_flags(false).await?;
            self.know(&live);
        }
        self.metrics.cursor.set(seen_max);
        self.metrics.max_id.set(max);
        Ok(Some(State {
            baseline,
            seen_max,
            cursors: saved.cursors,
            hints: HashMap::new(),
            walked_above: BTreeSet::new(),
            waiting: HashMap::new(),
            highest: if saved.baseline.is_some() {
                highest.max(seen_max)
            } else {
                seen_max
            },
            last_rescan: Instant::now(),
        }))
    }

    /// Legacy Flagr has no changelog: a listing at each poll keeps what impressions need of
    /// flags changed around the proxy (legacy derivation updates the flags it pre-fetches).
    /// Ready once the first listing was tried. Returns when the hint channel closes.
    async fn list_only(&self, mut hints: mpsc::Receiver<Hint>) {
        let Some(known) = &self.known else {
            self.ready.store(true, Ordering::Relaxed);
            while hints.recv().await.is_some() {}
            return;
        };
        let mut tick = tokio::time::interval(self.cfg.poll_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tokio::select! {
                h = hints.recv() => {
                    if h.is_none() {
                        return;
                    }
                    while hints.try_recv().is_ok() {}
                }
                _ = tick.tick() => {}
            }
            match self.flagr.listed_flags(false).await {
                Ok(live) => known.replace_all(&live),
                Err(e) => self.failed(FailStage::Flagr, "flag list not readable", &e),
            }
            self.ready.store(true, Ordering::Relaxed);
        }
    }

    /// Cluster mode, on a replica that does not lead: a listing keeps what this replica's
    /// impression workers need to know of flags (the leader's follower keeps its own).
    pub async fn refresh_known(&self) {
        let Some(known) = &self.known else { return };
        match self.flagr.listed_flags(false).await {
            Ok(live) => known.replace_all(&live),
            Err(e) => self.failed(FailStage::Flagr, "flag list not readable", &e),
        }
    }

    /// A full listing (live and deleted flags) tells the impression workers what is live.
    fn know(&self, listed: &[ListedFlag]) {
        if let Some(known) = &self.known {
            known.replace_all(listed.iter().filter(|f| !f.deleted));
        }
    }

    async fn list_all(&self) -> Result<Vec<ListedFlag>, FlagrError> {
        let mut v = self.flagr.listed_flags(false).await?;
        v.extend(self.flagr.listed_flags(true).await?);
        Ok(v)
    }

    /// Walks every flag a hint points at.
    async fn walk_hinted(&self, st: &mut State) {
        if self.deliveries.held_back() {
            // Cluster mode with Redis away and the spill full: Flagr keeps the changes.
            return;
        }
        let flags: Vec<i64> = st
            .hints
            .iter()
            .filter(|(_, q)| !q.is_empty())
            .map(|(f, _)| *f)
            .collect();
        for flag in flags {
            self.walk_counted(st, flag, None).await;
        }
    }

    /// One poll: `max_id`; when it moved past what the hints explained (or a change waits, or
    /// the periodic rescan is due), the flag lists, and a walk of each flag that moved.
    async fn poll(&self, st: &mut State) {
        st.expire_hints(&self.metrics);
        if self.deliveries.held_back() {
            return;
        }
        let max = match self.flagr.max_snapshot_id().await {
            Ok(Some(m)) => m,
            Ok(None) => return,
            Err(e) => {
                self.failed(FailStage::Flagr, "max_id not readable", &e);
                return;
            }
        };
        self.metrics.max_id.set(max);
        let rescan = st.last_rescan.elapsed() >= self.cfg.rescan_interval;
        if max < st.seen_max.max(st.highest) {
            tracing::warn!(
                flagr_max_id = max,
                cursor = st.seen_max,
                "Flagr's changelog went backwards (a new or restored database): following from its max_id"
            );
            // Every cursor belongs to the old database: start over as on a first start, keeping
            // the hints that are waiting (their changes are in the new database).
            if let Err(e) = self.store.reset_changelog() {
                self.failed(FailStage::Store, "cursors not reset", &e);
            }
            match self.init().await {
                Ok(Some(fresh)) => {
                    let hints = std::mem::take(&mut st.hints);
                    *st = fresh;
                    st.hints = hints;
                }
                Ok(None) => {}
                Err(e) => self.failed(FailStage::Flagr, "no new starting point yet", &e),
            }
            return;
        }
        if !rescan && st.waiting.is_empty() {
            if max == st.seen_max {
                return;
            }
            // Every id up to max_id was walked: nothing happened around the proxy.
            if max - st.seen_max <= MAX_ACCOUNTED_GAP
                && (st.seen_max + 1..=max).all(|id| st.walked_above.contains(&id))
            {
                st.advance_seen(max);
                self.save_seen(st);
                self.metrics.cursor.set(st.seen_max);
                return;
            }
        }
        let listed = match self.list_all().await {
            Ok(l) => l,
            Err(e) => {
                self.failed(FailStage::Flagr, "flag list not readable", &e);
                return;
            }
        };
        self.know(&listed);
        for f in &listed {
            let moved = match st.cursors.get(&f.id) {
                None => true,
                Some(c) => c.updated_at != f.updated_at || c.deleted != f.deleted,
            };
            if moved || st.waiting.contains_key(&f.id) {
                self.walk_counted(st, f.id, Some(f)).await;
            }
        }
        if rescan {
            st.last_rescan = Instant::now();
        }
        st.advance_seen(max);
        self.save_seen(st);
        self.metrics.cursor.set(st.seen_max);
    }

    /// Counts a failure by stage and logs it; the follower tries again.
    fn failed(&self, stage: FailStage, what: &str, e: &dyn std::fmt::Display) {
        self.metrics.failed(stage, what, e);
    }

    fn save_seen(&self, st: &State) {
        if let Err(e) = self.store.save_changelog(&[], None, Some(st.seen_max)) {
            self.failed(FailStage::Store, "cursor not saved", &e);
        }
    }

    async fn walk_counted(&self, st: &mut State, flag: i64, listed: Option<&ListedFlag>) {
        if let Err(e) = self.walk(st, flag, listed).await {
            let stage = match e {
                FollowError::Flagr(_) => FailStage::Flagr,
                FollowError::Store(_) | FollowError::NotQueued => FailStage::Store,
            };
            self.failed(stage, &format!("flag {flag} not followed this time"), &e);
            // Walked again at the next poll.
            st.waiting.entry(flag).or_insert((0, Instant::now()));
        }
    }
}

impl State {
    fn add_hint(&mut self, hint: Hint) {
        self.hints.entry(hint.flag).or_default().push_back(Pending {
            hint,
            at: Instant::now(),
        });
    }

    fn expire_hints(&mut self, metrics: &ChangelogMetrics) {
        for q in self.hints.values_mut() {
            while q.front().is_some_and(|p| p.at.elapsed() > HINT_TTL) {
                q.pop_front();
                metrics.hint(HintOutcome::Expired);
            }
        }
        self.hints.retain(|_, q| !q.is_empty());
    }

    fn advance_seen(&mut self, max: i64) {
        self.seen_max = self.seen_max.max(max);
        let keep = self.walked_above.split_off(&(self.seen_max + 1));
        self.walked_above = keep;
    }
}
