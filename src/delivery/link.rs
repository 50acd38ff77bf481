//! Cluster mode as delivery sees it: what this replica holds of each endpoint's stream (so a
//! finished request is finished in Redis, and one another replica took over is not sent), the
//! spill's size, the shared pause state and delivery log, and parked impression batches on
//! their way to Redis.
//!
//! In: the workers' finished jobs, log entries, pause state and parked batches (through the
//! outbox); what the consumers hand over (from `relay`). Out: finish and park requests for the
//! tasks in `relay`; whether a job may be sent; the shared log and pause state.
//! Never: waits on Redis (everything that needs it is queued for a task); reads the store.

use std::collections::{HashMap, HashSet};
use std::sync::{Arc, Mutex, PoisonError};

use bytes::Bytes;
use dashmap::DashMap;
use serde::{Deserialize, Serialize};
use tokio::sync::{mpsc, Notify};
use tokio::time::Instant;

use super::job::{static_label, Job, LogEntry};
use crate::cluster::Cluster;

/// The spill rows of an endpoint: a name no webhook id can have.
pub fn spill_key(endpoint: &str) -> String {
    format!("~{endpoint}")
}

/// Whether a worker may send a job now (see [`Link::may_send`]).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MaySend {
    Yes,
    /// Another replica holds it now: dropped unsent.
    TakenOver,
    /// Renewals are failing: asked again shortly.
    NotNow,
}

/// A request this replica holds from a stream.
#[derive(Clone, Debug)]
pub(super) struct Held {
    pub(super) entry: String,
    pub(super) flag: i64,
    pub(super) n: u64,
}

/// What this replica holds of one endpoint's stream.
pub(super) struct Hand {
    /// When Redis last confirmed this replica still holds what it holds.
    pub(super) renewed: Instant,
    /// By the worker's job sequence number.
    pub(super) by_seq: HashMap<u64, Held>,
    /// Handed to the worker: (flag, number).
    pub(super) released: HashSet<(i64, u64)>,
    /// Every entry held, handed over or not.
    pub(super) entries: HashSet<String>,
    /// Handed over, then taken over by another replica (this one was cut off or slow): the
    /// worker does not send them, and finishing them here does nothing.
    pub(super) taken: HashSet<u64>,
}

impl Default for Hand {
    fn default() -> Self {
        Self {
            renewed: Instant::now(),
            by_seq: HashMap::new(),
            released: HashSet::new(),
            entries: HashSet::new(),
            taken: HashSet::new(),
        }
    }
}

impl Hand {
    /// Lets go of entries another replica took over.
    pub(super) fn let_go(&mut self, lost: &HashSet<String>) {
        self.entries.retain(|e| !lost.contains(e));
        let seqs: Vec<u64> = self
            .by_seq
            .iter()
            .filter(|(_, h)| lost.contains(&h.entry))
            .map(|(s, _)| *s)
            .collect();
        for seq in seqs {
            if let Some(h) = self.by_seq.remove(&seq) {
                self.released.remove(&(h.flag, h.n));
                self.taken.insert(seq);
            }
        }
    }
}

/// Cluster mode as delivery sees it.
pub struct Link {
    pub cluster: Arc<Cluster>,
    pub(super) hands: DashMap<String, Arc<Mutex<Hand>>>,
    /// Per endpoint: its consumer is woken when requests it held are finished (room in its
    /// hand, and maybe the next request of a flag may go).
    pub(super) wakes: DashMap<String, Arc<Notify>>,
    pub(super) finished: mpsc::UnboundedSender<(String, Held)>,
    pub(super) spilled: Notify,
    pub(super) pauses: DashMap<String, String>,
    pub(super) parks: mpsc::UnboundedSender<Park>,
    /// Impression endpoints' job channels, for batches coming back from Redis.
    pub(super) senders: DashMap<String, mpsc::Sender<Job>>,
    /// When each impression endpoint last asked for its parked batches back.
    pub(super) unparked: DashMap<String, Instant>,
}

/// What the workers hand to `relay`'s tasks: finished stream requests, parked batches.
pub struct Queues {
    pub(super) finished: mpsc::UnboundedReceiver<(String, Held)>,
    pub(super) parks: mpsc::UnboundedReceiver<Park>,
}

/// A parked impression batch on its way to Redis.
pub(super) struct Park {
    pub(super) endpoint: String,
    pub(super) seq: u64,
    pub(super) row: Vec<u8>,
    pub(super) max_bytes: usize,
}

/// A delivery log entry as Redis keeps it (every replica's page reads the same).
#[derive(Serialize, Deserialize)]
struct SharedEntry {
    at: String,
    delivery_id: String,
    event: String,
    flag_key: Option<String>,
    attempt: usize,
    probe: bool,
    status: Option<u16>,
    latency_ms: f64,
    error: Option<String>,
    response: String,
    records: usize,
    body_kept: bool,
    /// Base64 of the body, when kept.
    body: String,
    order_key: i64,
    encoding: Option<String>,
    request_headers: Vec<(String, String)>,
    response_headers: Vec<(String, String)>,
    url: Option<String>,
    /// The replica that sent it.
    replica: String,
}

impl Link {
    /// The link, and the queues its tasks in `relay` carry out (finishing, parking).
    pub fn new(cluster: Arc<Cluster>) -> (Arc<Self>, Queues) {
        let (finished, finished_rx) = mpsc::unbounded_channel();
        let (parks, parks_rx) = mpsc::unbounded_channel();
        let link = Arc::new(Self {
            cluster,
            hands: DashMap::new(),
            wakes: DashMap::new(),
            finished,
            spilled: Notify::new(),
            pauses: DashMap::new(),
            parks,
            senders: DashMap::new(),
            unparked: DashMap::new(),
        });
        (
            link,
            Queues {
                finished: finished_rx,
                parks: parks_rx,
            },
        )
    }

    pub(super) fn wake(&self, endpoint: &str) -> Arc<Notify> {
        self.wakes.entry(endpoint.to_string()).or_default().clone()
    }

    pub(super) fn hand(&self, endpoint: &str) -> Arc<Mutex<Hand>> {
        self.hands.entry(endpoint.to_string()).or_default().clone()
    }

    /// Requests were written to the spill: the relay moves them now.
    pub fn spilled(&self, bytes: u64) {
        self.cluster.metrics.spill_bytes.add(bytes as i64);
        self.spilled.notify_one();
    }

    /// Whether the spill reached its bound: the follower waits (Flagr keeps the changes).
    pub fn full(&self) -> bool {
        // The gauge is the count: the relay sets it after each pass, spills add to it.
        self.cluster.metrics.spill_bytes.get() as u64 >= self.cluster.cfg.spill_max_bytes
    }

    /// Finishes the held requests among `seqs` in Redis; returns the others (local rows).
    pub fn finish(&self, endpoint: &str, seqs: &[u64]) -> Vec<u64> {
        let Some(hand) = self.hands.get(endpoint).map(|h| h.clone()) else {
            return seqs.to_vec();
        };
        let mut h = hand.lock().unwrap_or_else(PoisonError::into_inner);
        let mut local = Vec::new();
        for seq in seqs {
            if h.taken.remove(seq) {
                // Another replica holds it now: its finish is that replica's.
                continue;
            }
            match h.by_seq.remove(seq) {
                // Forgotten from the hand only once Redis has it finished (see `run_finisher`).
                Some(held) => {
                    let _ = self.finished.send((endpoint.to_string(), held));
                }
                None => local.push(*seq),
            }
        }
        local
    }

    /// Whether a job came from a stream (its state lives in Redis, not in the local store).
    pub fn holds(&self, endpoint: &str, seq: u64) -> bool {
        self.hands.get(endpoint).is_some_and(|h| {
            let h = h.lock().unwrap_or_else(PoisonError::into_inner);
            h.by_seq.contains_key(&seq) || h.taken.contains(&seq)
        })
    }

    /// Whether a job may be sent now: a stream job another replica took over is not sent at
    /// all, and none is sent while this replica's renewals are failing (it may be taken over
    /// any moment; the next successful renewal says).
    pub fn may_send(&self, endpoint: &str, seq: u64) -> MaySend {
        let Some(hand) = self.hands.get(endpoint).map(|h| h.clone()) else {
            return MaySend::Yes;
        };
        let h = hand.lock().unwrap_or_else(PoisonError::into_inner);
        if h.taken.contains(&seq) {
            MaySend::TakenOver
        } else if h.by_seq.contains_key(&seq)
            && h.renewed.elapsed() >= self.cluster.cfg.reclaim_idle * 3 / 4
        {
            MaySend::NotNow
        } else {
            MaySend::Yes
        }
    }

    /// The endpoint is gone from this replica: what it held stays pending in Redis (another
    /// replica, or this one later, takes it over).
    pub fn forget(&self, endpoint: &str) {
        self.hands.remove(endpoint);
        self.senders.remove(endpoint);
    }

    /// An impression endpoint's job channel, for its parked batches coming back.
    pub fn register(&self, endpoint: &str, tx: mpsc::Sender<Job>) {
        self.senders.insert(endpoint.to_string(), tx);
    }

    /// Sends a parked batch (a whole outbox row) to Redis; its local row `seq` goes once
    /// Redis has it.
    pub fn park(&self, endpoint: &str, seq: u64, row: Vec<u8>, max_bytes: usize) {
        let _ = self.parks.send(Park {
            endpoint: endpoint.to_string(),
            seq,
            row,
            max_bytes,
        });
    }

    /// Loads every endpoint's shared pause state (at start, before the workers).
    pub async fn load_pauses(&self) {
        if let Ok(all) = self.cluster.pause_states().await {
            for (k, v) in all {
                self.pauses.insert(k, v);
            }
        }
    }

    pub fn pause_state(&self, endpoint: &str) -> Option<String> {
        self.pauses.get(endpoint).map(|v| v.clone())
    }

    pub fn save_pause_state(&self, endpoint: &str, json: String) {
        self.cluster.save_pause(endpoint, &json);
        self.pauses.insert(endpoint.to_string(), json);
    }

    /// Adds an attempt to the endpoint's shared log; a body beyond its share of
    /// `log_body_bytes` is left out (the entry then cannot be replayed).
    pub fn log(&self, endpoint: &str, e: &LogEntry, log_size: usize, log_body_bytes: usize) {
        use base64::Engine;
        let keep = e.body_kept && e.body.len() <= log_body_bytes / log_size.max(1);
        let s = SharedEntry {
            at: e.at.clone(),
            delivery_id: e.delivery_id.clone(),
            event: e.event.to_string(),
            flag_key: e.flag_key.as_deref().map(str::to_string),
            attempt: e.attempt,
            probe: e.probe,
            status: e.status,
            latency_ms: e.latency_ms,
            error: e.error.clone(),
            response: e.response.clone(),
            records: e.records,
            body_kept: keep,
            body: if keep {
                base64::engine::general_purpose::STANDARD.encode(&e.body)
            } else {
                String::new()
            },
            order_key: e.order_key,
            encoding: e.encoding.map(str::to_string),
            request_headers: e.request_headers.clone(),
            response_headers: e.response_headers.clone(),
            url: e.url.as_deref().map(str::to_string),
            replica: self.cluster.replica.clone(),
        };
        if let Ok(json) = serde_json::to_string(&s) {
            self.cluster.push_log(endpoint, json, log_size);
        }
    }

    /// The endpoint's shared log, oldest first (as a worker's own log is kept).
    pub async fn shared_log(&self, endpoint: &str) -> Result<Vec<LogEntry>, String> {
        use base64::Engine;
        let raw = self
            .cluster
            .log(endpoint)
            .await
            .map_err(|e| e.to_string())?;
        let mut out: Vec<LogEntry> = raw
            .iter()
            .filter_map(|j| serde_json::from_str::<SharedEntry>(j).ok())
            .map(|s| LogEntry {
                at: s.at,
                delivery_id: s.delivery_id,
                event: static_label(&s.event),
                flag_key: s.flag_key.map(Into::into),
                attempt: s.attempt,
                probe: s.probe,
                status: s.status,
                latency_ms: s.latency_ms,
                error: s.error,
                response: s.response,
                records: s.records,
                body_kept: s.body_kept,
                body: base64::engine::general_purpose::STANDARD
                    .decode(s.body)
                    .map(Bytes::from)
                    .unwrap_or_default(),
                order_key: s.order_key,
                encoding: s
                    .encoding
                    .map(|e| if e == "gzip" { "gzip" } else { "identity" }),
                request_headers: s.request_headers,
                response_headers: s.response_headers,
                url: s.url.map(Into::into),
            })
            .collect();
        out.reverse();
        Ok(out)
    }
}
