//! The durable outbox as delivery sees it: a request is on disk before it is queued in memory,
//! rewritten when it waits for a retry or is parked, and removed when it is finished (delivered,
//! refused for good, or dropped and counted). A restart reads every endpoint's queue back.
//!
//! In: jobs and their attempt state from the endpoint workers. Out: rows in the store; the rows
//! back at start-up.
//! Never: blocks delivery on a failing disk: a write that fails is counted and logged, the
//! request stays queued in memory, and `/readyz` names the problem (the store's last error).

use std::sync::Arc;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use bytes::Bytes;
use serde::{Deserialize, Serialize};

use super::job::{static_label, Job};
use super::metrics::{DeliveryMetrics, OutboxOp};
use crate::store::{Cursor, Store};

/// The store when it is durable; with an in-memory store the outbox does nothing (the queues in
/// memory are all there is).
#[derive(Clone)]
pub struct Outbox {
    store: Option<Arc<Store>>,
    metrics: Arc<DeliveryMetrics>,
    /// Cluster mode: change events live in Redis streams, pause state and log there too.
    link: Option<Arc<super::link::Link>>,
}

/// A queued request read back from the store.
pub struct Stored {
    pub job: Job,
    pub attempts: usize,
    /// When the next attempt may go (a retry's delay outlives the restart).
    pub next_at: Option<SystemTime>,
    pub parked: bool,
}

#[derive(Serialize, Deserialize)]
struct Header {
    id: String,
    order_key: i64,
    label: String,
    encoding: Option<String>,
    records: usize,
    attempts: usize,
    next_at_ms: Option<u64>,
    parked: bool,
    #[serde(default)]
    flag_key: Option<String>,
}

/// The pause state kept for an endpoint.
#[derive(Clone, Debug, Default, PartialEq, Serialize, Deserialize)]
pub struct PauseState {
    /// Wall-clock end of an automatic pause, in ms since the epoch.
    pub until_ms: Option<u64>,
    pub cooldown_ms: u64,
    pub manual: bool,
    /// Disabled by a 410 Gone, until resumed by hand.
    #[serde(default)]
    pub disabled: bool,
}

impl Outbox {
    pub fn new(store: Arc<Store>, metrics: Arc<DeliveryMetrics>) -> Self {
        Self {
            store: store.durable().then_some(store),
            metrics,
            link: None,
        }
    }

    /// The same outbox in cluster mode.
    pub fn with_link(self, link: Arc<super::link::Link>) -> Self {
        Self {
            link: Some(link),
            ..self
        }
    }

    /// Cluster mode's part, when on.
    pub fn link(&self) -> Option<&Arc<super::link::Link>> {
        self.link.as_ref()
    }

    pub fn durable(&self) -> bool {
        self.store.is_some()
    }

    /// A sequence number for a new job (0 when nothing is kept).
    pub fn next_seq(&self) -> u64 {
        self.store.as_ref().map_or(0, |s| s.next_seq())
    }

    /// Counts and logs a failed write; true when it succeeded.
    fn result(&self, op: OutboxOp, r: Result<(), crate::store::StoreError>) -> bool {
        if let Err(e) = &r {
            self.metrics.outbox_failed(op, 1);
            tracing::error!(op = op.as_str(), error = %e, "outbox write failed; the request stays queued in memory only");
        }
        r.is_ok()
    }

    /// Writes new jobs, and the changelog cursor that derived them, in one transaction before
    /// the jobs are queued; true when they are on disk (their bodies need not stay in memory,
    /// and the cursor is saved).
    pub fn insert(&self, rows: &[(&str, &Job)], cursor: Option<(i64, &Cursor)>) -> bool {
        let Some(store) = &self.store else {
            return false;
        };
        let encoded: Vec<(&str, u64, Vec<u8>)> = rows
            .iter()
            .map(|(ep, job)| (*ep, job.seq, encode(job, 0, None, false)))
            .collect();
        let refs: Vec<(&str, u64, &[u8])> = encoded
            .iter()
            .map(|(e, s, r)| (*e, *s, r.as_slice()))
            .collect();
        self.result(OutboxOp::Insert, store.outbox_insert(&refs, cursor))
    }

    /// A queued request's body, read back for an attempt: `Ok(None)` when its row is gone,
    /// `Err` when the store cannot be read (counted).
    pub fn body(&self, endpoint: &str, seq: u64) -> Result<Option<Bytes>, String> {
        let Some(store) = self.store.as_ref() else {
            return Ok(None);
        };
        match store.outbox_get(endpoint, seq) {
            Ok(row) => Ok(row.and_then(|row| {
                let nl = row.iter().position(|b| *b == b'\n')?;
                Some(Bytes::copy_from_slice(&row[nl + 1..]))
            })),
            Err(e) => {
                let text = e.to_string();
                self.result(OutboxOp::Load, Err(e));
                Err(text)
            }
        }
    }

    /// Records an attempt that failed and when the next may go, or that the job is parked.
    pub fn update(
        &self,
        endpoint: &str,
        job: &Job,
        attempts: usize,
        delay: Option<Duration>,
        parked: bool,
    ) {
        let Some(store) = &self.store else { return };
        if self
            .link
            .as_ref()
            .is_some_and(|l| l.holds(endpoint, job.seq))
        {
            // A stream's request: Redis keeps it pending for this replica while it is renewed.
            return;
        }
        let next_at = delay.map(|d| SystemTime::now() + d);
        // The body in memory may be empty (it is on disk): only the header is rewritten.
        let head = header(job, attempts, next_at, parked);
        self.result(
            OutboxOp::Update,
            store.outbox_update_header(endpoint, job.seq, &head),
        );
    }

    /// Forgets finished jobs.
    pub fn remove(&self, endpoint: &str, seqs: &[u64]) {
        let Some(store) = &self.store else { return };
        let local = match &self.link {
            Some(l) => l.finish(endpoint, seqs),
            None => seqs.to_vec(),
        };
        if !local.is_empty() {
            self.result(OutboxOp::Remove, store.outbox_remove(endpoint, &local));
        }
    }

    /// Forgets an endpoint altogether (its webhook was deleted).
    pub fn clear(&self, endpoint: &str) {
        let Some(store) = &self.store else { return };
        self.result(OutboxOp::Remove, store.outbox_clear(endpoint));
    }

    /// Cluster mode: forgets a deleted endpoint's spill and what this replica held of its
    /// stream, at once (before a webhook made again under the same id can start).
    pub fn forget_shared(&self, endpoint: &str) {
        let (Some(store), Some(l)) = (&self.store, &self.link) else {
            return;
        };
        l.forget(endpoint);
        let spill = super::link::spill_key(endpoint);
        self.result(OutboxOp::Remove, store.outbox_clear(&spill));
    }

    /// Every job kept for the endpoint, oldest first, handed to `each`; unreadable rows are
    /// counted and removed.
    pub fn load(&self, endpoint: &str, mut each: impl FnMut(Stored)) -> bool {
        let Some(store) = &self.store else {
            return true;
        };
        let mut bad = Vec::new();
        let scanned =
            store.outbox_scan(endpoint, |seq, head, size| match decode(seq, head, size) {
                Some(s) => each(s),
                None => bad.push(seq),
            });
        let ok = scanned.is_ok();
        if let Err(e) = scanned {
            self.result(OutboxOp::Load, Err(e));
        }
        if !bad.is_empty() {
            tracing::error!(
                endpoint,
                rows = bad.len(),
                "outbox rows not readable; removed"
            );
            self.metrics.outbox_failed(OutboxOp::Load, bad.len() as u64);
            self.remove(endpoint, &bad);
        }
        ok
    }

    pub fn pause_state(&self, endpoint: &str) -> Option<PauseState> {
        let store = self.store.as_ref()?;
        let raw = match &self.link {
            Some(l) => l.pause_state(endpoint)?,
            None => store.endpoint_state(endpoint).ok()??,
        };
        serde_json::from_str(&raw).ok()
    }

    pub fn save_pause_state(&self, endpoint: &str, state: &PauseState) {
        let Some(store) = &self.store else { return };
        let raw = serde_json::to_string(state).unwrap_or_default();
        if let Some(l) = &self.link {
            l.save_pause_state(endpoint, raw);
            return;
        }
        self.result(OutboxOp::State, store.put_endpoint_state(endpoint, &raw));
    }

    /// Cluster mode: a parked impression batch goes to Redis (whichever replica sees the
    /// endpoint recover sends it); its local row goes once Redis has it. False when not in
    /// cluster mode (the worker keeps it) or its body cannot be read.
    pub fn park_shared(&self, endpoint: &str, job: &Job, max_bytes: usize) -> bool {
        let Some(link) = self.link.as_ref().filter(|l| l.cluster.up()) else {
            // Redis away: parked here, within the local bound (a restart moves it to Redis).
            return false;
        };
        let mut j = job.clone();
        if j.body.is_empty() && j.size > 0 {
            match self.body(endpoint, job.seq) {
                Ok(Some(b)) => j.body = b,
                _ => return false,
            }
        }
        link.park(endpoint, job.seq, encode(&j, 0, None, true), max_bytes);
        true
    }

    /// Cluster mode: whether a job came from a stream (Redis keeps it, not the store).
    pub fn holds(&self, endpoint: &str, seq: u64) -> bool {
        self.link.as_ref().is_some_and(|l| l.holds(endpoint, seq))
    }

    /// Cluster mode: whether a stream job may be sent now (see `Link::may_send`).
    pub fn may_send(&self, endpoint: &str, seq: u64) -> super::link::MaySend {
        let Some(l) = &self.link else {
            return super::link::MaySend::Yes;
        };
        let m = l.may_send(endpoint, seq);
        if m == super::link::MaySend::TakenOver {
            l.cluster.metrics.taken_over.inc();
        }
        m
    }

    /// Cluster mode: adds an attempt to the endpoint's shared log.
    pub fn log(&self, endpoint: &str, e: &super::LogEntry, policy: &crate::config::DeliveryConfig) {
        if let Some(l) = &self.link {
            l.log(endpoint, e, policy.log_size, policy.log_body_bytes);
        }
    }
}

fn ms(t: SystemTime) -> u64 {
    t.duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as u64)
        .unwrap_or(0)
}

/// One row: a JSON header line, then the body's exact bytes.
fn encode(job: &Job, attempts: usize, next_at: Option<SystemTime>, parked: bool) -> Vec<u8> {
    let mut out = header(job, attempts, next_at, parked);
    out.push(b'\n');
    out.extend_from_slice(&job.body);
    out
}

/// The header line of a row, without its newline.
fn header(job: &Job, attempts: usize, next_at: Option<SystemTime>, parked: bool) -> Vec<u8> {
    let h = Header {
        id: job.id.clone(),
        order_key: job.order_key,
        label: job.label.to_string(),
        encoding: job.encoding.map(str::to_string),
        records: job.records,
        attempts,
        next_at_ms: next_at.map(ms),
        parked,
        flag_key: job.flag_key.as_deref().map(str::to_string),
    };
    // A struct of strings and numbers always serialises.
    serde_json::to_vec(&h).unwrap_or_default()
}

/// A whole row (header line and body) as a job with its body.
pub(super) fn decode_row(row: &[u8]) -> Option<Job> {
    let nl = row.iter().position(|b| *b == b'\n')?;
    let mut job = decode(0, &row[..nl], row.len() - nl - 1)?.job;
    job.body = Bytes::copy_from_slice(&row[nl + 1..]);
    job.on_disk = false;
    Some(job)
}

/// A row read back: its header line and its body's length (the body stays on disk).
fn decode(seq: u64, head: &[u8], size: usize) -> Option<Stored> {
    let h: Header = serde_json::from_slice(head).ok()?;
    Some(Stored {
        job: Job {
            seq,
            // Read back per attempt (see `Outbox::body`).
            size,
            on_disk: true,
            id: h.id,
            order_key: h.order_key,
            body: Bytes::new(),
            label: static_label(&h.label),
            encoding: h.encoding.as_deref().map(|e| match e {
                "gzip" => "gzip",
                _ => "identity",
            }),
            records: h.records,
            flag_key: h.flag_key.map(Into::into),
        },
        attempts: h.attempts,
        next_at: h.next_at_ms.map(|m| UNIX_EPOCH + Duration::from_millis(m)),
        parked: h.parked,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rows_round_trip_with_their_state() {
        let job = Job {
            seq: 9,
            size: 8,
            on_disk: true,
            id: "evt_1".into(),
            order_key: 4,
            body: Bytes::from_static(b"{\"a\":\n1}"),
            label: "flag.updated",
            encoding: Some("gzip"),
            records: 3,
            flag_key: Some("checkout".into()),
        };
        let at = UNIX_EPOCH + Duration::from_millis(1_700_000_000_123);
        let row = encode(&job, 2, Some(at), true);
        let nl = row.iter().position(|b| *b == b'\n').unwrap();
        assert_eq!(&row[nl + 1..], &job.body[..]);
        let s = decode(9, &row[..nl], row.len() - nl - 1).unwrap();
        assert_eq!(s.job.id, "evt_1");
        assert_eq!(s.job.size, job.body.len());
        assert!(s.job.body.is_empty(), "bodies stay on disk");
        assert_eq!(s.job.label, "flag.updated");
        assert_eq!(s.job.flag_key.as_deref(), Some("checkout"));
        assert_eq!(s.job.encoding, Some("gzip"));
        assert_eq!((s.attempts, s.parked, s.job.records), (2, true, 3));
        assert_eq!(s.next_at, Some(at));
        assert!(decode(1, b"not a header", 0).is_none());
        assert_eq!(static_label("nonsense"), "event");
    }
}
