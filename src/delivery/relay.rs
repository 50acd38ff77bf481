//! Delivery's tasks in cluster mode: change events go from the local store's spill into one
//! Redis stream per endpoint (the relay), every replica's consumer takes its share from the
//! group and hands it to its endpoint worker, the finisher finishes in Redis what the worker
//! finished, the parker moves parked impression batches to Redis and `recovered` brings them
//! back. What they share with the workers is in `link`.
//!
//! In: spilled requests (the leader's derivations, on disk first); stream entries; finished
//! and parked requests queued by `link`. Out: queued entries, jobs for the local workers,
//! acknowledgements, parked batches in Redis and back, the changelog's cursors in Redis.
//! Never: hands a worker a request before the earlier request of its flag to that endpoint is
//! finished, already with the same worker, or gone from the stream (order per flag holds
//! cluster-wide); removes a spilled request before Redis has it, or saves a cursor ahead of
//! one; reads more than `hand_max_events` new requests per endpoint at a time (what it takes
//! over from a dead replica comes on top, a few at a time).

use std::collections::{HashMap, HashSet, VecDeque};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

use bytes::Bytes;
use tokio::sync::mpsc;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::job::{static_label, Job};
use super::link::{spill_key, Hand, Held, Link, Park, Queues};
use super::outbox::Outbox;
use crate::cluster::stream::{Queued, Read};
use crate::cluster::Cluster;
use crate::store::{Cursor, Store};

/// Requests moved to Redis per call.
const MOVE_BATCH: usize = 256;
/// Bytes of bodies moved to Redis per call.
const MOVE_BYTES: usize = 4 << 20;

/// How often one endpoint's recovery asks Redis for parked batches.
const UNPARK_EVERY: Duration = Duration::from_secs(2);
/// Parked batches taken back per call.
const UNPARK_BATCH: usize = 16;

/// The endpoint answered: its batches parked in Redis come back to this replica's worker
/// (at most every [`UNPARK_EVERY`]).
pub fn recovered(link: &Arc<Link>, endpoint: &str, outbox: Outbox) {
    let now = Instant::now();
    let due = link
        .unparked
        .get(endpoint)
        .is_none_or(|t| now.duration_since(*t) >= UNPARK_EVERY);
    if !due {
        return;
    }
    link.unparked.insert(endpoint.to_string(), now);
    let Some(tx) = link.senders.get(endpoint).map(|t| t.clone()) else {
        return;
    };
    let (link, endpoint) = (link.clone(), endpoint.to_string());
    tokio::spawn(async move {
        loop {
            let Ok(rows) = link.cluster.unpark(&endpoint, UNPARK_BATCH).await else {
                return;
            };
            if rows.is_empty() {
                return;
            }
            tracing::info!(endpoint = %endpoint, batches = rows.len(), "endpoint recovered: sending batches parked in redis");
            // All of them on disk before any is queued, as every request is: a worker that
            // stopped meanwhile finds them at the next start.
            let mut jobs = Vec::new();
            for row in rows {
                let Some(mut job) = super::outbox::decode_row(&row) else {
                    link.cluster
                        .metrics
                        .unreadable
                        .with_label_values(&["parked"])
                        .inc();
                    tracing::error!(endpoint = %endpoint, "parked batch not readable; dropped");
                    continue;
                };
                job.seq = outbox.next_seq();
                job.size = job.body.len();
                jobs.push(job);
            }
            let rows: Vec<(&str, &Job)> = jobs.iter().map(|j| (endpoint.as_str(), j)).collect();
            let on_disk = outbox.insert(&rows, None);
            for mut job in jobs {
                job.on_disk = on_disk;
                if tx.send(job).await.is_err() {
                    return;
                }
            }
        }
    });
}

/// Starts the finisher, the parker and the relay, until `stop`.
pub fn start(
    link: Arc<Link>,
    queues: Queues,
    deliveries: Arc<super::Deliveries>,
    store: Arc<Store>,
    stop: CancellationToken,
) -> Vec<tokio::task::JoinHandle<()>> {
    let outbox = deliveries.outbox.clone();
    let metrics = deliveries.metrics.clone();
    vec![
        tokio::spawn(run_finisher(link.clone(), queues.finished, stop.clone())),
        tokio::spawn(run_parker(
            link.clone(),
            queues.parks,
            outbox,
            metrics,
            stop.clone(),
        )),
        tokio::spawn(run_relay(link, deliveries, store, stop)),
    ]
}

/// Finishes in Redis what the workers finished, in batches; a failed call is tried again
/// (the requests stay held meanwhile, and renewed, so nobody takes them over).
async fn run_finisher(
    link: Arc<Link>,
    mut rx: mpsc::UnboundedReceiver<(String, Held)>,
    stop: CancellationToken,
) {
    let mut waiting: HashMap<String, Vec<Held>> = HashMap::new();
    let mut last = false;
    loop {
        if waiting.is_empty() && !last {
            tokio::select! {
                m = rx.recv() => match m {
                    Some((ep, h)) => waiting.entry(ep).or_default().push(h),
                    None => return,
                },
                // What the workers finished while draining is finished once more, then done.
                () = stop.cancelled() => last = true,
            }
        }
        while let Ok((ep, h)) = rx.try_recv() {
            waiting.entry(ep).or_default().push(h);
        }
        let mut failed = false;
        for (ep, held) in std::mem::take(&mut waiting) {
            let done: Vec<(String, i64, u64)> = held
                .iter()
                .map(|h| (h.entry.clone(), h.flag, h.n))
                .collect();
            if link.cluster.finish(&ep, &done).await.is_ok() {
                if let Some(hand) = link.hands.get(&ep).map(|h| h.clone()) {
                    let mut g = hand.lock().unwrap_or_else(PoisonError::into_inner);
                    for h in &held {
                        g.entries.remove(&h.entry);
                        g.released.remove(&(h.flag, h.n));
                    }
                }
                if let Some(w) = link.wakes.get(&ep) {
                    w.notify_one();
                }
            } else {
                failed = true;
                waiting.insert(ep, held);
            }
        }
        if last || (failed && stop.is_cancelled()) {
            return;
        }
        if failed && !crate::cluster::pause(Duration::from_millis(500), &stop).await {
            // Stopping: one more try of what waits, then done.
            last = true;
        }
    }
}

/// Moves parked impression batches to Redis, removing each local row once Redis has it; a
/// failed call is tried again (the rows stay on disk meanwhile). Batches dropped beyond the
/// bound are counted.
async fn run_parker(
    link: Arc<Link>,
    mut rx: mpsc::UnboundedReceiver<Park>,
    outbox: Outbox,
    metrics: Arc<super::DeliveryMetrics>,
    stop: CancellationToken,
) {
    let mut waiting: Vec<Park> = Vec::new();
    loop {
        if waiting.is_empty() {
            tokio::select! {
                p = rx.recv() => match p { Some(p) => waiting.push(p), None => return },
                () = stop.cancelled() => return,
            }
        }
        while let Ok(p) = rx.try_recv() {
            waiting.push(p);
        }
        let mut by_endpoint: HashMap<String, Vec<Park>> = HashMap::new();
        for p in waiting.drain(..) {
            by_endpoint.entry(p.endpoint.clone()).or_default().push(p);
        }
        for (ep, parks) in by_endpoint {
            let rows: Vec<Vec<u8>> = parks.iter().map(|p| p.row.clone()).collect();
            let max = parks.iter().map(|p| p.max_bytes).max().unwrap_or(0);
            match link.cluster.park(&ep, &rows, max).await {
                Ok(dropped) => {
                    let seqs: Vec<u64> = parks.iter().map(|p| p.seq).collect();
                    outbox.remove(&ep, &seqs);
                    if !dropped.is_empty() {
                        let records: u64 = dropped.iter().sum();
                        metrics.dropped(
                            &ep,
                            super::DropReason::ParkedOverflow,
                            dropped.len() as u64,
                            records,
                        );
                        tracing::warn!(endpoint = %ep, batches = dropped.len(), records, "parking bound reached in redis: dropped the oldest parked batches");
                    }
                }
                Err(_) => waiting.extend(parks),
            }
        }
        if !waiting.is_empty() && !crate::cluster::pause(Duration::from_secs(1), &stop).await {
            return;
        }
    }
}

/// Moves spilled requests into the streams, and the changelog's cursors after them, whenever
/// something is spilled (and every second, for what waited while Redis was away).
async fn run_relay(
    link: Arc<Link>,
    deliveries: Arc<super::Deliveries>,
    store: Arc<Store>,
    stop: CancellationToken,
) {
    let mut saved: HashMap<i64, Cursor> = HashMap::new();
    let mut saved_meta: (Option<i64>, i64) = (None, i64::MIN);
    let mut idle_passes = 0u64;
    loop {
        tokio::select! {
            () = link.spilled.notified() => {}
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            () = stop.cancelled() => return,
        }
        // Redis away: the spill is read again only every few seconds (it may be large).
        if !link.cluster.up() {
            idle_passes += 1;
            if idle_passes % 5 != 0 {
                continue;
            }
        }
        // Read before the spill: every cursor in it stands for requests already spilled.
        let state = if link.cluster.is_leader() {
            store.changelog().ok()
        } else {
            None
        };
        let all_moved = relay_pass(&link, &deliveries).await;
        let Some(state) = state.filter(|s| all_moved && s.baseline.is_some()) else {
            continue;
        };
        if saved_meta.0 != state.baseline {
            // A new baseline replaces the shared state whole: every cursor goes again.
            saved.clear();
        }
        let changed: Vec<(i64, String, i64)> = state
            .cursors
            .iter()
            .filter(|(f, c)| saved.get(f) != Some(c))
            .filter_map(|(f, c)| Some((*f, serde_json::to_string(c).ok()?, c.snapshot)))
            .collect();
        if changed.is_empty() && saved_meta == (state.baseline, state.seen_max) {
            continue;
        }
        if link
            .cluster
            .save_cursors(state.baseline, state.seen_max, &changed)
            .await
            .is_ok()
        {
            saved_meta = (state.baseline, state.seen_max);
            for (f, _, _) in &changed {
                if let Some(c) = state.cursors.get(f) {
                    saved.insert(*f, c.clone());
                }
            }
        }
    }
}

/// One pass over every endpoint's spill; true when everything in it reached Redis.
async fn relay_pass(link: &Link, deliveries: &super::Deliveries) -> bool {
    let outbox = &deliveries.outbox;
    let mut all = true;
    let mut left_rows = 0u64;
    let mut left_bytes = 0u64;
    for ep in deliveries.list().iter() {
        if ep.kind != super::Kind::Events {
            continue;
        }
        let id = ep.webhook.id.as_str();
        let key = spill_key(id);
        let mut jobs = Vec::new();
        if !outbox.load(&key, |s| jobs.push(s.job)) {
            // Not read whole: the cursors must not pass what may be in it.
            all = false;
        }
        let mut rest = jobs.as_slice();
        while !rest.is_empty() && all {
            let mut take = 0;
            let mut bytes = 0;
            while take < rest.len()
                && take < MOVE_BATCH
                && (take == 0 || bytes + rest[take].size <= MOVE_BYTES)
            {
                bytes += rest[take].size;
                take += 1;
            }
            let (chunk, tail) = rest.split_at(take);
            let bodies: Option<Vec<Bytes>> = chunk
                .iter()
                .map(|j| outbox.body(&key, j.seq).ok().flatten())
                .collect();
            let Some(bodies) = bodies else {
                // A body the store cannot give back now (counted there): tried again.
                all = false;
                break;
            };
            let reqs: Vec<Queued<'_>> = chunk
                .iter()
                .zip(&bodies)
                .map(|(j, b)| Queued {
                    id: &j.id,
                    flag: j.order_key,
                    flag_key: j.flag_key.as_deref().unwrap_or(""),
                    label: j.label,
                    records: j.records,
                    encoding: j.encoding.unwrap_or(""),
                    body: b,
                })
                .collect();
            if link.cluster.queue(id, &reqs).await.is_ok() {
                let seqs: Vec<u64> = chunk.iter().map(|j| j.seq).collect();
                outbox.remove(&key, &seqs);
                rest = tail;
            } else {
                all = false;
            }
        }
        left_rows += rest.len() as u64;
        left_bytes += rest.iter().map(|j| j.size as u64).sum::<u64>();
    }
    link.cluster.metrics.spill_bytes.set(left_bytes as i64);
    link.cluster.metrics.spill_events.set(left_rows as i64);
    all
}

/// A request held but not yet handed to the worker.
struct Gated {
    read: Read,
    /// Counted once in `order_waits`.
    waited: bool,
    /// When it was last seen waiting; after a while its predecessor is looked up.
    since: Instant,
    /// When it was read.
    read_at: Instant,
}

/// Takes this replica's share of an endpoint's stream and hands it to the endpoint's worker,
/// keeping each flag's order cluster-wide, until `stop` or the worker stops taking jobs.
pub async fn run_consumer(
    link: Arc<Link>,
    endpoint: String,
    tx: mpsc::Sender<Job>,
    outbox: Outbox,
    stop: CancellationToken,
) {
    let c = link.cluster.clone();
    let hand = link.hand(&endpoint);
    let wake = link.wake(&endpoint);
    let max = c.cfg.hand_max_events;
    let renew_every = c.cfg.reclaim_idle / 4;
    let mut conn = None;
    let mut own_read = false;
    let mut gated: VecDeque<Gated> = VecDeque::new();
    let mut last_renew = Instant::now();
    let mut renewed = Instant::now();
    let mut reclaim_from = "0-0".to_string();
    // How long a read waits while requests wait for another replica's: short at first, longer
    // while nothing moves (a finish on this replica wakes the consumer at once).
    let mut gated_wait = GATED_WAIT_MIN;
    loop {
        if stop.is_cancelled() || tx.is_closed() {
            return;
        }
        let held = hand
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .entries
            .len();
        // Requests that wait for another replica's are looked at again every 10 ms at first
        // (a flag's changes often alternate between replicas), less often once the oldest has
        // waited a while (its predecessor is slow: a retry, a receiver down).
        let block = match gated.iter().map(|g| g.read_at).min() {
            None => Duration::from_secs(1),
            Some(t) if t.elapsed() < GATED_FAST_FOR => GATED_WAIT_MIN,
            Some(_) => gated_wait,
        };
        let mut fresh = Vec::new();
        let mut gone = Vec::new();
        if held < max || !own_read {
            if conn.is_none() {
                match c.dedicated(Duration::from_secs(1)).await {
                    Ok(mut k) => {
                        if c.ensure_group(&mut k, &endpoint).await.is_ok() {
                            conn = Some(k);
                        }
                    }
                    Err(e) => c.failed("connect", &e),
                }
                if conn.is_none() {
                    if !crate::cluster::pause(Duration::from_secs(1), &stop).await {
                        return;
                    }
                    continue;
                }
            }
            let Some(k) = conn.as_mut() else { continue };
            let count = if own_read { max - held } else { max };
            let read = tokio::select! {
                r = c.read(k, &endpoint, count, !own_read, block) => r,
                () = stop.cancelled() => return,
            };
            match read {
                Ok(b) => {
                    own_read = true;
                    fresh = b.reads;
                    gone = b.gone;
                }
                Err(_) => {
                    // A reply lost to a timeout may have handed entries to this consumer: its
                    // own pending list is read again first.
                    own_read = false;
                    conn = None;
                    if !crate::cluster::pause(Duration::from_millis(500), &stop).await {
                        return;
                    }
                    continue;
                }
            }
        } else {
            // The hand is full: wait for the worker to finish something.
            tokio::select! {
                () = wake.notified() => {}
                () = tokio::time::sleep(block) => {}
                () = stop.cancelled() => return,
            }
        }
        if last_renew.elapsed() >= renew_every {
            last_renew = Instant::now();
            let mine: Vec<String> = hand
                .lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entries
                .iter()
                .cloned()
                .collect();
            if let Ok(lost) = c.renew(&endpoint, &mine).await {
                renewed = Instant::now();
                let lost: HashSet<String> = lost.into_iter().collect();
                gated.retain(|g| !lost.contains(&g.read.entry));
                let mut h = hand.lock().unwrap_or_else(PoisonError::into_inner);
                h.let_go(&lost);
                h.renewed = renewed;
            }
            if let Ok((b, next)) = c.reclaim(&endpoint, &reclaim_from, 16).await {
                reclaim_from = next;
                fresh.extend(b.reads);
                gone.extend(b.gone);
            }
        }
        if !gone.is_empty() {
            let done: Vec<(String, i64, u64)> = gone.into_iter().map(|e| (e, 0, 0)).collect();
            let _ = c.finish(&endpoint, &done).await;
        }
        {
            let mut h = hand.lock().unwrap_or_else(PoisonError::into_inner);
            for r in fresh {
                if h.entries.insert(r.entry.clone()) {
                    gated.push_back(Gated {
                        read: r,
                        waited: false,
                        since: Instant::now(),
                        read_at: Instant::now(),
                    });
                }
            }
        }
        // Renewals failing for three quarters of the reclaim time: another replica may take what is held
        // over soon, so nothing more is handed to the worker until one succeeds.
        if renewed.elapsed() >= c.cfg.reclaim_idle * 3 / 4 {
            continue;
        }
        let before = gated.len();
        match release(&c, &endpoint, &hand, &mut gated, &tx, &outbox).await {
            None => return,
            Some(()) if gated.len() < before => gated_wait = GATED_WAIT_MIN,
            Some(()) => gated_wait = (gated_wait * 2).min(GATED_WAIT_MAX),
        }
    }
}

/// The first wait of a read while requests wait for another replica's; it doubles up to
/// [`GATED_WAIT_MAX`] while nothing moves.
const GATED_WAIT_MIN: Duration = Duration::from_millis(10);
const GATED_WAIT_MAX: Duration = Duration::from_millis(500);
/// How long requests wait at the shortest interval before it grows.
const GATED_FAST_FOR: Duration = Duration::from_secs(2);
/// A request waiting this long has its predecessor looked up: one that is no longer in the
/// stream without its flag's mark having moved (lost with a Redis that had no AOF, or deleted)
/// no longer holds it back.
const PREDECESSOR_CHECK: Duration = Duration::from_secs(5);

/// Hands over the held requests whose flag's earlier request is finished or already with the
/// worker, in stream order; `None` when the worker stopped taking jobs.
async fn release(
    c: &Cluster,
    endpoint: &str,
    hand: &Mutex<Hand>,
    gated: &mut VecDeque<Gated>,
    tx: &mpsc::Sender<Job>,
    outbox: &Outbox,
) -> Option<()> {
    if gated.is_empty() {
        return Some(());
    }
    // Where each flag stands in Redis: what is finished is not sent again (a request taken
    // over from a replica that was only slow, and finished it meanwhile), and what comes
    // next may go.
    let mut ask: Vec<i64> = gated.iter().map(|g| g.read.flag).collect();
    ask.sort_unstable();
    ask.dedup();
    let Ok(n) = c.finished(endpoint, &ask).await else {
        // Redis away: nothing is handed over until it answers.
        return Some(());
    };
    let finished: HashMap<i64, u64> = ask.into_iter().zip(n).collect();
    let mut done_elsewhere = Vec::new();
    let mut keep = VecDeque::new();
    while let Some(mut g) = gated.pop_front() {
        let r = &g.read;
        if finished.get(&r.flag).is_some_and(|d| *d >= r.n) {
            c.metrics.finished_elsewhere.inc();
            hand.lock()
                .unwrap_or_else(PoisonError::into_inner)
                .entries
                .remove(&r.entry);
            done_elsewhere.push((r.entry.clone(), r.flag, r.n));
            continue;
        }
        let mut go = {
            let h = hand.lock().unwrap_or_else(PoisonError::into_inner);
            r.n <= 1
                || h.released.contains(&(r.flag, r.n - 1))
                || finished.get(&r.flag).is_some_and(|d| *d + 1 >= r.n)
        };
        if !go && !r.prev.is_empty() && g.since.elapsed() >= PREDECESSOR_CHECK {
            g.since = Instant::now();
            if let Ok(false) = c.present(endpoint, &r.prev).await {
                // Re-read: it may have been finished between the two calls.
                let moved = c
                    .finished(endpoint, &[r.flag])
                    .await
                    .ok()
                    .and_then(|v| v.first().copied())
                    .is_some_and(|d| d + 1 >= r.n);
                if !moved {
                    tracing::warn!(endpoint, delivery_id = %r.id, flag = r.flag, "the earlier request of this flag is gone from the stream without finishing: this one goes on");
                }
                go = true;
            }
        }
        if !go {
            if !g.waited {
                g.waited = true;
                c.metrics.order_waits.inc();
            }
            keep.push_back(g);
            continue;
        }
        let r = g.read;
        let seq = outbox.next_seq();
        let job = Job {
            seq,
            size: r.body.len(),
            on_disk: false,
            id: r.id,
            order_key: r.flag,
            body: Bytes::from(r.body),
            label: static_label(&r.label),
            encoding: (r.encoding == "gzip").then_some("gzip"),
            records: r.records,
            flag_key: (!r.flag_key.is_empty()).then(|| r.flag_key.as_str().into()),
        };
        {
            let mut h = hand.lock().unwrap_or_else(PoisonError::into_inner);
            h.released.insert((r.flag, r.n));
            h.by_seq.insert(
                seq,
                Held {
                    entry: r.entry,
                    flag: r.flag,
                    n: r.n,
                },
            );
        }
        if tx.send(job).await.is_err() {
            return None;
        }
    }
    *gated = keep;
    let _ = c.finish(endpoint, &done_elsewhere).await;
    Some(())
}
