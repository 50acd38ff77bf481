//! The worker behind the tap: turns tapped exchanges into hints for the changelog follower
//! (Flagr 1.2.x), change sets (legacy 1.1.x, from the pre-fetched states) and impression records.
//!
//! In: mutation [`Exchange`]s on the tap channel; evaluations and exposures on the impression
//! workers' queue ([`impression_queue`], which the tap fills). Out: [`Hint`]s to the follower; on legacy Flagr,
//! [`ChangeSet`]s published to [`Deliveries`]; impression records to the batchers.
//! Never: runs on the request path; on legacy Flagr one flag's mutations are handled by one
//! lane, in the order Flagr answered them, so its events keep their order.

use std::io::Read;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;

use base64::Engine;
use bytes::Bytes;
use serde_json::Value;
use tokio::sync::mpsc;

use crate::changelog::ChangelogMetrics;
use crate::changelog::Hint;
use crate::config::{FlagrConfig, ImpressionsConfig, RecordedFlags};
use crate::delivery::Deliveries;
use crate::events::payload::{ChangeEvent, ChangeSet};
use crate::events::{self};
use crate::flagr::client::FlagrError;
use crate::flagr::{FlagState, FlagrClient, Known, KnownFlags, Mutation, Route};
use crate::impressions::batcher::Batchers;
use crate::impressions::batcher::ImpressionMetrics;
use crate::impressions::{self, Encoded, Gate};
use crate::metrics::{labels, status_class, Registry};
use crate::proxy::tap::RequestMeta;
use crate::proxy::{Captured, Exchange};
use crate::proxy::{DropStage, TapMetrics};

labels! {
    /// Why a mutation or an answer gave nothing.
    pub enum DeriveError {
        NoFlagId => "no_flag_id",
        FlagrRead => "flagr_read",
        ImpressionsUnreadable => "impressions_unreadable",
    }
}

/// Derivation's metrics, and the handles of the stages it feeds.
pub struct DeriveMetrics {
    errors: prometheus::IntCounterVec,
    mutations: prometheus::IntCounterVec,
    /// Drops on the way to a lane, to the follower or to the impression workers.
    pub tap: Arc<TapMetrics>,
    /// Events the legacy lanes derive.
    pub changelog: Arc<ChangelogMetrics>,
}

impl DeriveMetrics {
    pub fn new(r: &Registry, tap: Arc<TapMetrics>, changelog: Arc<ChangelogMetrics>) -> Self {
        let m = Self {
            errors: r.counter_vec(
                "flaghook_derive_errors_total",
                "Mutations whose events could not be derived, by reason.",
                &["reason"],
            ),
            mutations: r.counter_vec(
                "flaghook_mutations_total",
                "Mutating calls seen, by Flagr status class.",
                &["status_class"],
            ),
            tap,
            changelog,
        };
        for e in DeriveError::ALL {
            m.errors.with_label_values(&[e.as_str()]);
        }
        m
    }

    fn failed(&self, e: DeriveError) {
        self.errors.with_label_values(&[e.as_str()]).inc();
    }
}

/// Where evaluations and exposures go: the mapping config and the batchers.
pub struct ImpressionSink {
    pub cfg: ImpressionsConfig,
    pub batchers: Arc<Batchers>,
    /// Flagr's recording switch per flag, kept current by the changelog follower.
    pub known: Arc<KnownFlags>,
}

impl ImpressionSink {
    /// The impression pipeline's end, when impression webhooks are configured (their endpoints
    /// must be in `deliveries` already).
    pub fn new(
        cfg: &crate::config::Config,
        deliveries: Arc<Deliveries>,
        metrics: Arc<ImpressionMetrics>,
    ) -> Option<Arc<Self>> {
        (!cfg.impression_webhooks.is_empty()).then(|| {
            Arc::new(Self {
                known: Arc::new(KnownFlags::new()),
                cfg: cfg.impressions.clone(),
                batchers: Arc::new(Batchers::new(
                    &cfg.impression_webhooks,
                    &cfg.impressions,
                    deliveries,
                    metrics,
                )),
            })
        })
    }
}

/// Shared by the dispatcher and its lanes.
pub struct Deriver {
    pub impressions: Option<Arc<ImpressionSink>>,
    pub flagr: FlagrClient,
    pub deliveries: Arc<Deliveries>,
    pub metrics: Arc<DeriveMetrics>,
    pub flagr_cfg: FlagrConfig,
    /// True on legacy Flagr: read states from the prefetch and a GET, not from snapshots.
    pub legacy: Arc<AtomicBool>,
    pub inspect_cap: usize,
    /// To the changelog follower (Flagr 1.2.x); full = dropped and counted: the follower's
    /// poll finds the change anyway, only the call's details are lost.
    pub hints: mpsc::Sender<Hint>,
}

impl Deriver {
    pub fn new(
        cfg: &crate::config::Config,
        impressions: Option<Arc<ImpressionSink>>,
        flagr: FlagrClient,
        deliveries: Arc<Deliveries>,
        metrics: Arc<DeriveMetrics>,
        legacy: Arc<AtomicBool>,
        hints: mpsc::Sender<Hint>,
    ) -> Arc<Self> {
        Arc::new(Self {
            impressions,
            flagr,
            deliveries,
            metrics,
            flagr_cfg: cfg.flagr.clone(),
            legacy,
            inspect_cap: cfg.proxy.inspect_max_bytes,
            hints,
        })
    }
}

/// One mutation, ready for a lane.
struct Work {
    mutation: Mutation,
    flag: i64,
    ex: Exchange,
    response: Option<Value>,
}

/// Reads the tap until it closes, dispatching mutations to `lanes` lanes by flag id.
pub async fn run(
    deriver: Arc<Deriver>,
    mut rx: mpsc::Receiver<Exchange>,
    impressions: Option<ImpressionReceiver>,
    lanes: usize,
    lane_capacity: usize,
) {
    let mut senders = Vec::with_capacity(lanes);
    let mut handles = Vec::with_capacity(lanes);
    for _ in 0..lanes {
        let (tx, rx) = mpsc::channel(lane_capacity);
        senders.push(tx);
        handles.push(tokio::spawn(lane(deriver.clone(), rx)));
    }
    // Impression mapping is CPU work: a small pool shares one queue, which the tap fills.
    if let (Some(sink), Some(queue)) = (&deriver.impressions, impressions) {
        for _ in 0..sink.cfg.workers {
            handles.push(tokio::spawn(impression_worker(
                deriver.clone(),
                sink.clone(),
                queue.clone(),
            )));
        }
    }
    while let Some(ex) = rx.recv().await {
        let Route::Mutation(mutation) = ex.route else {
            // Evaluations and exposures go from the tap to the impression workers' queue; one
            // here came from a tap given none, so no impression is made of it.
            deriver.metrics.tap.dropped(DropStage::Impressions);
            continue;
        };
        deriver
            .metrics
            .mutations
            .with_label_values(&[status_class(ex.status.as_u16())])
            .inc();
        // Flagr answers 200 for every success; anything else changed nothing.
        if ex.status != http::StatusCode::OK {
            continue;
        }
        let response = json_of(
            &ex.response_body,
            ex.response_encoding.as_ref(),
            deriver.inspect_cap,
        );
        // Create and duplicate: the new flag's id is in the response, and events belong to it.
        let flag = if mutation.creates_flag() {
            response
                .as_ref()
                .and_then(|r| r.get("id"))
                .and_then(Value::as_i64)
        } else {
            mutation.path_flag()
        };
        let Some(flag) = flag else {
            deriver.metrics.failed(DeriveError::NoFlagId);
            tracing::warn!(
                mutation = mutation.name(),
                "flag id not readable from Flagr's response; no event"
            );
            continue;
        };
        if !deriver.legacy.load(Ordering::Relaxed) {
            let hint = Hint {
                flag,
                mutation,
                actor: actor_from_request(&ex.meta, &deriver.flagr_cfg),
                commit: ex.meta.gitsync_commit.clone(),
                response,
            };
            if deriver.hints.try_send(hint).is_err() {
                deriver.metrics.tap.dropped(DropStage::Hint);
            }
            continue;
        }
        let lane = (flag.unsigned_abs() as usize) % senders.len();
        let work = Work {
            mutation,
            flag,
            ex,
            response,
        };
        if senders[lane].try_send(work).is_err() {
            deriver.metrics.tap.dropped(DropStage::Lane);
            tracing::warn!(flag, "derivation lane full: mutation dropped");
        }
    }
    drop(senders);
    for h in handles {
        let _ = h.await;
    }
}

/// The impression workers' queue, bounded (full: dropped and counted): the sending half for
/// the tap, which hands evaluations and exposures over; the receiving half behind a mutex, so
/// that the workers take turns. The workers end once every sender is gone and the queue is empty.
pub fn impression_queue(cap: usize) -> (mpsc::Sender<Exchange>, ImpressionReceiver) {
    let (tx, rx) = mpsc::channel(cap);
    (tx, Arc::new(tokio::sync::Mutex::new(rx)))
}

pub type ImpressionReceiver = Arc<tokio::sync::Mutex<mpsc::Receiver<Exchange>>>;

/// How long a worker that has emptied the queue waits before it sleeps on it. A hand-over to a
/// sleeping worker wakes a thread (a system call on the proxy thread, a context switch on the
/// worker's): at thousands of evaluations a second that cost more than mapping them. A worker
/// that gathers for 2 ms wakes at most 500 times a second; records wait far longer in batches.
const GATHER: std::time::Duration = std::time::Duration::from_millis(2);

async fn impression_worker(d: Arc<Deriver>, sink: Arc<ImpressionSink>, rx: ImpressionReceiver) {
    // Set by each exchange taken; cleared by the one gathering pause that follows.
    let mut busy = false;
    loop {
        let mut queue = rx.lock().await;
        let ex = match queue.try_recv() {
            Ok(ex) => ex,
            Err(mpsc::error::TryRecvError::Disconnected) => return,
            Err(mpsc::error::TryRecvError::Empty) if busy => {
                drop(queue);
                busy = false;
                tokio::time::sleep(GATHER).await;
                continue;
            }
            Err(mpsc::error::TryRecvError::Empty) => match queue.recv().await {
                Some(ex) => ex,
                None => return,
            },
        };
        drop(queue);
        busy = true;
        let gate = Gate::recording(sink.cfg.flags == RecordedFlags::All, &sink.known);
        let records = impressions_of(&ex, &sink.cfg, &gate, d.inspect_cap);
        sink.batchers.not_recorded(gate.skipped());
        match records {
            Some(records) => sink.batchers.add(&records),
            None => d.metrics.failed(DeriveError::ImpressionsUnreadable),
        }
    }
}

/// The impression records of one evaluation or exposure call (none unless Flagr said 200);
/// `None` when a 200 answer could not be read (over the cap, cut short, not Flagr's JSON).
pub fn impressions_of(
    ex: &Exchange,
    cfg: &ImpressionsConfig,
    gate: &Gate<'_>,
    cap: usize,
) -> Option<Encoded> {
    let mut out = Encoded::default();
    if ex.status != http::StatusCode::OK {
        return Some(out);
    }
    let response = raw_of(&ex.response_body, ex.response_encoding.as_ref(), cap)?;
    let header = |v: &Option<http::HeaderValue>| {
        v.as_ref().and_then(|h| h.to_str().ok()).map(str::to_string)
    };
    let ip = impressions::client_ip(header(&ex.meta.forwarded_for).as_deref(), ex.peer.ip());
    let (sdk, sdk_version) =
        impressions::sdk_from_user_agent(header(&ex.meta.user_agent).as_deref());
    let time_ms = ex
        .responded_at
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0);
    let ctx = impressions::Context {
        environment_id: cfg.environment_id.clone(),
        environment_name: cfg.environment_name.clone(),
        machine_name: if cfg.machine_name.is_empty() {
            ip.clone()
        } else {
            cfg.machine_name.clone()
        },
        machine_ip: ip,
        sdk,
        sdk_version,
        time_ms,
    };
    let done = match ex.route {
        Route::Evaluation(_) => impressions::encode_evaluation(&response, &ctx, gate, &mut out),
        Route::Exposure => {
            let request = json_of(&ex.request_body, ex.meta.content_encoding.as_ref(), cap)?;
            let response: Value = serde_json::from_slice(&response).ok()?;
            impressions::encode_exposures(&request, &response, &ctx, gate, &mut out)
        }
        _ => Ok(()),
    };
    done.ok().map(|()| out)
}

/// A lane (legacy Flagr): handles its flags' mutations one at a time.
async fn lane(d: Arc<Deriver>, mut rx: mpsc::Receiver<Work>) {
    while let Some(w) = rx.recv().await {
        match derive_one(&d, &w).await {
            Ok(Some(set)) => {
                d.metrics.changelog.derived(&set);
                d.deliveries.publish(&set);
            }
            Ok(None) => {}
            Err(e) => {
                d.metrics.failed(DeriveError::FlagrRead);
                tracing::warn!(flag = w.flag, mutation = w.mutation.name(), error = %e, "could not read the flag's state; no event");
            }
        }
    }
}

/// Legacy Flagr: the events of one mutation from the states read around it. There is no
/// snapshot id to derive ids from, so they are random (a crash before delivery loses them).
async fn derive_one(d: &Deriver, w: &Work) -> Result<Option<ChangeSet>, FlagrError> {
    let (before, after) = states_by_fetch(d, w).await?;
    // Flagr 1.1.x has no changelog: what impressions know of the flag follows from here at
    // once (the periodic listing covers changes made around the proxy).
    if let Some(sink) = &d.impressions {
        match w.mutation {
            Mutation::DeleteFlag { .. } => sink.known.remove(after.flag.id),
            _ => sink.known.set(after.flag.id, Known::from(&after.flag)),
        }
    }
    let drafts = events::derive(&w.mutation, before.as_ref().map(|b| &b.flag), &after.flag);
    if drafts.is_empty() {
        return Ok(None);
    }
    let actor = actor_from_request(&w.ex.meta, &d.flagr_cfg);
    let timestamp = chrono::DateTime::<chrono::Utc>::from(w.ex.responded_at)
        .to_rfc3339_opts(chrono::SecondsFormat::Millis, true);
    let notice = events::flagr_notice(&w.mutation, &after.flag, w.response.as_ref());
    let events = drafts
        .into_iter()
        .map(|dr| ChangeEvent {
            id: format!("evt_{}", uuid::Uuid::now_v7().simple()),
            event: dr.event,
            changes: dr.changes,
        })
        .collect();
    Ok(Some(ChangeSet {
        id: format!("msg_{}", uuid::Uuid::now_v7().simple()),
        flag_id: after.flag.id,
        flag_key: after.flag.key.clone(),
        tags: after.tag_values(),
        timestamp,
        actor,
        source: if w.ex.meta.gitsync_commit.is_some() {
            "gitsync"
        } else {
            "api"
        },
        commit: w.ex.meta.gitsync_commit.clone(),
        events,
        notice,
        data: Arc::new(after.raw),
        before: before.map(|b| Arc::new(b.raw)),
    }))
}

/// Legacy Flagr: "before" and "after" were read by the proxy around the call; "after" is read
/// now only when that read failed or the flag is new.
async fn states_by_fetch(
    d: &Deriver,
    w: &Work,
) -> Result<(Option<FlagState>, FlagState), FlagrError> {
    let before = w.ex.prefetched.clone();
    if let Mutation::DeleteFlag { .. } = w.mutation {
        // The flag is gone; what it was is what the event carries.
        return match before {
            Some(b) => Ok((Some(b.clone()), b)),
            None => Err(FlagrError::Status {
                status: http::StatusCode::NOT_FOUND,
                path: format!("/flags/{}", w.flag),
            }),
        };
    }
    if let Some(a) = w.ex.postfetched.clone() {
        return Ok((before, a));
    }
    match d.flagr.flag(w.flag).await? {
        Some(a) => Ok((before, a)),
        None => Err(FlagrError::Status {
            status: http::StatusCode::NOT_FOUND,
            path: format!("/flags/{}", w.flag),
        }),
    }
}

/// Flagr's identity for the call when the snapshot does not carry one: the JWT claim, else the
/// user header (reference §0).
pub fn actor_from_request(meta: &RequestMeta, cfg: &FlagrConfig) -> String {
    if let Some(sub) = meta
        .authorization
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .and_then(|t| jwt_claim(t, &cfg.jwt_user_claim))
    {
        return sub;
    }
    meta.user
        .as_ref()
        .and_then(|v| v.to_str().ok())
        .unwrap_or("")
        .to_string()
}

/// Reads a claim from a JWT's payload. Flagr verified the token; flaghook only reads it.
fn jwt_claim(token: &str, claim: &str) -> Option<String> {
    let payload = token.split('.').nth(1)?;
    let bytes = base64::engine::general_purpose::URL_SAFE_NO_PAD
        .decode(payload.trim_end_matches('='))
        .ok()?;
    let v: Value = serde_json::from_slice(&bytes).ok()?;
    v.get(claim)?.as_str().map(str::to_string)
}

/// A copied body's bytes, gunzipped when the message says gzip; `None` when the copy is
/// incomplete, empty, or inflates past `cap`.
pub fn raw_of<'c>(
    c: &'c Captured,
    encoding: Option<&http::HeaderValue>,
    cap: usize,
) -> Option<std::borrow::Cow<'c, [u8]>> {
    let raw: &Bytes = c.bytes()?;
    if raw.is_empty() {
        return None;
    }
    let gz = encoding
        .and_then(|e| e.to_str().ok())
        .is_some_and(|e| e.trim().eq_ignore_ascii_case("gzip"));
    if !gz {
        return Some(std::borrow::Cow::Borrowed(&raw[..]));
    }
    let mut out = Vec::new();
    flate2::read::GzDecoder::new(&raw[..])
        .take(cap as u64 + 1)
        .read_to_end(&mut out)
        .ok()?;
    (out.len() <= cap).then_some(std::borrow::Cow::Owned(out))
}

/// A copied body as JSON (see [`raw_of`]).
pub fn json_of(c: &Captured, encoding: Option<&http::HeaderValue>, cap: usize) -> Option<Value> {
    serde_json::from_slice(&raw_of(c, encoding, cap)?).ok()
}

#[cfg(test)]
mod tests {
    use super::*;
    use std::io::Write;

    #[test]
    fn json_of_gunzips_the_copy_and_bounds_it() {
        let mut enc = flate2::write::GzEncoder::new(Vec::new(), flate2::Compression::fast());
        enc.write_all(br#"{"id": 5}"#).unwrap();
        let gz = Bytes::from(enc.finish().unwrap());
        let h = http::HeaderValue::from_static("gzip");
        let v = json_of(&Captured::Complete(gz.clone()), Some(&h), 1024).unwrap();
        assert_eq!(v["id"], 5);
        assert!(json_of(&Captured::Complete(gz), Some(&h), 4).is_none());
        assert!(json_of(
            &Captured::Complete(Bytes::from_static(b"{not json")),
            None,
            64
        )
        .is_none());
        assert!(json_of(&Captured::TooLarge, None, 64).is_none());
    }

    #[test]
    fn actor_prefers_jwt_claim_then_header() {
        let cfg = FlagrConfig::default();
        // {"sub":"jwt-user"}
        let payload =
            base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(br#"{"sub":"jwt-user"}"#);
        let meta = RequestMeta {
            authorization: Some(format!("Bearer h.{payload}.s").parse().unwrap()),
            user: Some("alice@example.com".parse().unwrap()),
            ..Default::default()
        };
        assert_eq!(actor_from_request(&meta, &cfg), "jwt-user");
        let meta = RequestMeta {
            user: Some("alice@example.com".parse().unwrap()),
            ..Default::default()
        };
        assert_eq!(actor_from_request(&meta, &cfg), "alice@example.com");
        assert_eq!(actor_from_request(&RequestMeta::default(), &cfg), "");
    }
}
