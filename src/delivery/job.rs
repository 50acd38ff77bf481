//! What one request to an endpoint is ([`Job`]), and what one attempt at it gave ([`Attempt`],
//! [`LogEntry`]).
//!
//! In: nothing but their fields. Out: the types the queue, the outbox, the attempt and the
//! worker share. Never: does anything: data only.

use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;

use super::retry::Verdict;

/// One request to deliver: the same body and id on every attempt.
#[derive(Clone, Debug)]
pub struct Job {
    /// Its row in the outbox (0 until queued, or when nothing is kept on disk).
    pub seq: u64,
    /// The body's length (`body` may be empty: see `on_disk`).
    pub size: usize,
    /// The row is in the outbox. Beyond `delivery.queue_memory_bytes` of bodies in memory, a
    /// worker keeps only the job's metadata and reads the body back for each attempt, so a large
    /// backlog costs disk, not memory.
    pub on_disk: bool,
    /// `webhook-id`: stable across retries.
    pub id: String,
    /// Jobs with the same key are delivered one after the other, in order (the flag id).
    pub order_key: i64,
    pub body: Bytes,
    /// What it carries, for logs and the `X-Flaghook-Event` header.
    pub label: &'static str,
    /// `Content-Encoding` of the body (impression batches: `gzip`).
    pub encoding: Option<&'static str>,
    /// Impression records in the body (0 for change events).
    pub records: usize,
    /// The flag a change event is about, for the log's filters.
    pub flag_key: Option<Arc<str>>,
}

impl Job {
    /// A change event or notification, not yet queued: `order_key` is its flag.
    pub fn change(
        id: String,
        flag: i64,
        flag_key: Option<Arc<str>>,
        body: Bytes,
        label: &'static str,
    ) -> Self {
        Self {
            seq: 0,
            size: 0,
            on_disk: false,
            id,
            order_key: flag,
            body,
            label,
            encoding: None,
            records: 0,
            flag_key,
        }
    }
}

/// One delivery attempt as the log keeps it.
#[derive(Clone, Debug, Serialize)]
pub struct LogEntry {
    /// RFC 3339, UTC.
    pub at: String,
    /// The `webhook-id` of the request.
    pub delivery_id: String,
    pub event: &'static str,
    pub flag_key: Option<Arc<str>>,
    pub attempt: usize,
    pub probe: bool,
    pub status: Option<u16>,
    pub latency_ms: f64,
    pub error: Option<String>,
    /// The first bytes of the receiver's answer.
    pub response: String,
    /// Impression records in the request (0 for change events).
    pub records: usize,
    /// False once the log's byte budget dropped the body: the entry can no longer be replayed.
    pub body_kept: bool,
    #[serde(skip)]
    pub body: Bytes,
    #[serde(skip)]
    pub order_key: i64,
    #[serde(skip)]
    pub encoding: Option<&'static str>,
    /// The request's headers as sent, custom header values masked (they may be credentials).
    #[serde(skip)]
    pub request_headers: Vec<(String, String)>,
    /// The receiver's answer headers (bounded in number and length).
    #[serde(skip)]
    pub response_headers: Vec<(String, String)>,
    /// Where it went, credentials masked (the webhook's URL may have changed since).
    #[serde(skip)]
    pub url: Option<Arc<str>>,
}

/// The result of one attempt, as the worker needs it.
pub struct Attempt {
    pub key: i64,
    pub probe: bool,
    pub verdict: Verdict,
    pub entry: LogEntry,
}

/// Now, as the log and the API show times.
pub(super) fn now_rfc3339() -> String {
    chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// Labels are a closed set (event names, Flagr operations, a few kinds): read back as the same
/// static strings, so a label never allocates on the hot path.
pub(crate) fn static_label(s: &str) -> &'static str {
    const OTHERS: [&str; 7] = [
        "create",
        "update",
        "delete",
        "restore",
        "impressions",
        "ping",
        "event",
    ];
    crate::events::EVENT_NAMES
        .iter()
        .chain(OTHERS.iter())
        .find(|l| **l == s)
        .copied()
        .unwrap_or("event")
}
