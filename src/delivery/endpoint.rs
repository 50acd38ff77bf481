//! One endpoint's delivery worker: a bounded queue, per-flag ordering, concurrent flags, retries.
//!
//! In: [`Job`]s on a channel. Out: signed POSTs to the endpoint, metrics, logs.
//! Never: sends two requests for the same order key at once (events of one flag keep their
//! order), holds more than its bounds (the oldest unsent job is dropped and counted), or blocks
//! another endpoint.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::StreamExt;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;
use tokio_util::sync::CancellationToken;
use tokio_util::time::DelayQueue;

use super::retry::{classify, delay_before, parse_retry_after, Verdict};
use super::sign;
use crate::config::{DeliveryConfig, WebhookConfig};
use crate::metrics::Metrics;

/// One request to deliver: the same body and id on every attempt.
#[derive(Clone, Debug)]
pub struct Job {
    /// `webhook-id`: stable across retries.
    pub id: String,
    /// Jobs with the same key are delivered one after the other, in order (the flag id).
    pub order_key: i64,
    pub body: Bytes,
    /// What it carries, for logs and the `X-Flaghook-Event` header.
    pub label: &'static str,
}

struct Queued {
    job: Job,
    seq: u64,
    attempts: usize,
}

/// The result of one attempt, as the worker needs it.
struct Attempt {
    key: i64,
    verdict: Verdict,
    status: Option<u16>,
    error: Option<String>,
}

/// What an endpoint needs to send: its config, the shared client, the shared policy.
pub struct EndpointCtx {
    pub webhook: Arc<WebhookConfig>,
    pub url: reqwest::Url,
    pub client: reqwest::Client,
    pub policy: Arc<DeliveryConfig>,
    pub metrics: Arc<Metrics>,
}

/// Runs until `shutdown`, then delivers what it can within the shutdown deadline.
/// Returns the number of jobs left undelivered.
pub async fn run(
    ctx: Arc<EndpointCtx>,
    mut rx: mpsc::Receiver<Job>,
    shutdown: CancellationToken,
) -> usize {
    let id = ctx.webhook.id.clone();
    let policy = ctx.policy.clone();
    let mut queues: HashMap<i64, VecDeque<Queued>> = HashMap::new();
    // Unsent jobs by arrival, for dropping the oldest when a bound is hit.
    let mut unsent: BTreeMap<u64, i64> = BTreeMap::new();
    let mut in_flight: HashSet<i64> = HashSet::new();
    let mut waiting: HashSet<i64> = HashSet::new();
    let mut ready: VecDeque<i64> = VecDeque::new();
    let mut delays: DelayQueue<i64> = DelayQueue::new();
    let mut tasks: JoinSet<Attempt> = JoinSet::new();
    let (mut count, mut bytes, mut seq) = (0usize, 0usize, 0u64);
    let mut deadline: Option<Instant> = None;
    let gauge = |count: usize, bytes: usize| {
        ctx.metrics
            .queue_depth
            .with_label_values(&[&id])
            .set(count as i64);
        ctx.metrics
            .queue_bytes
            .with_label_values(&[&id])
            .set(bytes as i64);
    };
    gauge(0, 0);

    loop {
        // Start what may start: one in flight per key, a bounded number per endpoint.
        while tasks.len() < policy.max_in_flight {
            let Some(key) = ready.pop_front() else { break };
            if in_flight.contains(&key) || waiting.contains(&key) {
                continue;
            }
            let Some(q) = queues.get_mut(&key).and_then(|q| q.front_mut()) else {
                continue;
            };
            unsent.remove(&q.seq);
            q.attempts += 1;
            in_flight.insert(key);
            let (ctx, job, attempt) = (ctx.clone(), q.job.clone(), q.attempts);
            tasks.spawn(async move { send(&ctx, key, &job, attempt).await });
        }
        if deadline.is_some() && tasks.is_empty() && (count == 0 || ready.is_empty()) {
            break;
        }

        tokio::select! {
            job = rx.recv(), if deadline.is_none() => {
                let Some(job) = job else {
                    deadline = Some(Instant::now() + policy.shutdown_deadline);
                    continue;
                };
                seq += 1;
                count += 1;
                bytes += job.body.len();
                let key = job.order_key;
                unsent.insert(seq, key);
                let q = queues.entry(key).or_default();
                q.push_back(Queued { job, seq, attempts: 0 });
                if q.len() == 1 {
                    ready.push_back(key);
                }
                // Over a bound: drop the oldest job not yet attempted.
                while count > policy.queue_max_events || bytes > policy.queue_max_bytes {
                    let Some((old_seq, old_key)) = unsent.pop_first() else { break };
                    if let Some(q) = queues.get_mut(&old_key) {
                        if let Some(pos) = q.iter().position(|j| j.seq == old_seq) {
                            if let Some(d) = q.remove(pos) {
                                count -= 1;
                                bytes -= d.job.body.len();
                                ctx.metrics.dropped.with_label_values(&[&id, "queue_full"]).inc();
                                tracing::warn!(endpoint = %id, event_id = %d.job.id, "queue full: dropped the oldest undelivered request");
                            }
                        }
                        if q.is_empty() {
                            queues.remove(&old_key);
                        }
                    }
                }
                gauge(count, bytes);
            }
            Some(done) = tasks.join_next() => {
                let Ok(a) = done else { continue };
                in_flight.remove(&a.key);
                let Some(q) = queues.get_mut(&a.key) else { continue };
                let Some(front) = q.front() else { continue };
                let retry_delay = match &a.verdict {
                    Verdict::Retry { retry_after } if deadline.is_none() => delay_before(
                        &policy.retry_schedule,
                        front.attempts,
                        policy.jitter,
                        fastrand::f64(),
                        *retry_after,
                        policy.max_retry_after,
                    ),
                    _ => None,
                };
                if let Some(delay) = retry_delay {
                    ctx.metrics.delivery_retries.with_label_values(&[&id]).inc();
                    tracing::info!(endpoint = %id, event_id = %front.job.id, attempt = front.attempts, status = ?a.status, error = ?a.error, ?delay, "delivery failed; will retry");
                    waiting.insert(a.key);
                    delays.insert(a.key, delay);
                    continue;
                }
                let Some(done) = q.pop_front() else { continue };
                count -= 1;
                bytes -= done.job.body.len();
                match a.verdict {
                    Verdict::Success => {}
                    Verdict::Final => {
                        ctx.metrics.dropped.with_label_values(&[&id, "rejected"]).inc();
                        tracing::warn!(endpoint = %id, event_id = %done.job.id, status = ?a.status, "receiver rejected the request; not retried");
                    }
                    Verdict::Retry { .. } => {
                        let reason = if deadline.is_some() { "shutdown" } else { "retries_exhausted" };
                        ctx.metrics.dropped.with_label_values(&[&id, reason]).inc();
                        tracing::warn!(endpoint = %id, event_id = %done.job.id, attempts = done.attempts, status = ?a.status, error = ?a.error, reason, "gave up on a request");
                    }
                }
                if q.is_empty() {
                    queues.remove(&a.key);
                } else {
                    ready.push_back(a.key);
                }
                gauge(count, bytes);
            }
            Some(expired) = delays.next(), if !delays.is_empty() => {
                let key = expired.into_inner();
                waiting.remove(&key);
                ready.push_front(key);
            }
            () = shutdown.cancelled(), if deadline.is_none() => {
                // Take what is already queued, then stop accepting.
                rx.close();
                deadline = Some(Instant::now() + policy.shutdown_deadline);
            }
            () = sleep_until(deadline) => break,
        }
        if deadline.is_some() {
            // Draining: waiting retries go now, once.
            for key in waiting.drain() {
                ready.push_back(key);
            }
            delays.clear();
        }
    }
    tasks.abort_all();
    if count > 0 {
        ctx.metrics
            .dropped
            .with_label_values(&[&id, "shutdown"])
            .inc_by(count as u64);
        tracing::warn!(endpoint = %id, undelivered = count, "shutdown deadline: requests left undelivered");
    }
    gauge(0, 0);
    count
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}

/// One attempt: sign, POST, classify.
async fn send(ctx: &EndpointCtx, key: i64, job: &Job, attempt: usize) -> Attempt {
    let w = &ctx.webhook;
    let ts = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let mut req = ctx
        .client
        .post(ctx.url.clone())
        .timeout(ctx.policy.timeout)
        .header(http::header::CONTENT_TYPE, "application/json")
        .header("webhook-id", &job.id)
        .header("webhook-timestamp", ts.to_string())
        .header("x-flaghook-event", job.label)
        .header("x-flaghook-attempt", attempt.to_string());
    for (k, v) in &w.headers {
        req = req.header(k.as_str(), v.as_str());
    }
    if let Some(secret) = w.secret.expose() {
        req = req.header(
            "x-flagr-signature",
            sign::flagr_signature(secret, &job.body),
        );
        let mut secrets = vec![secret];
        secrets.extend(w.previous_secret.expose());
        req = req.header(
            "webhook-signature",
            sign::standard_signature(&secrets, &job.id, ts, &job.body),
        );
    }
    let started = Instant::now();
    let result = req.body(job.body.clone()).send().await;
    let elapsed = started.elapsed();
    ctx.metrics
        .delivery_duration
        .with_label_values(&[&w.id])
        .observe(elapsed.as_secs_f64());
    let (verdict, status, error) = match result {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let retry_after = resp
                .headers()
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, SystemTime::now()));
            // Read (a bounded part of) the answer so the connection can be reused.
            let excerpt = read_excerpt(resp, ctx.policy.response_excerpt_bytes).await;
            let verdict = classify(status, retry_after);
            let error = (verdict != Verdict::Success).then(|| format!("HTTP {status}: {excerpt}"));
            (verdict, Some(status), error)
        }
        Err(e) => {
            let kind = if e.is_timeout() {
                "timeout"
            } else if e.is_connect() {
                "connect error"
            } else {
                "request error"
            };
            (
                Verdict::Retry { retry_after: None },
                None,
                Some(format!("{kind}: {}", error_chain(&e))),
            )
        }
    };
    let outcome = match verdict {
        Verdict::Success => "success",
        Verdict::Retry { .. } => "error_retryable",
        Verdict::Final => "error_final",
    };
    ctx.metrics.delivery(&w.id, outcome);
    tracing::debug!(endpoint = %w.id, event_id = %job.id, attempt, ?status, ?elapsed, outcome, "delivery attempt");
    Attempt {
        key,
        verdict,
        status,
        error,
    }
}

async fn read_excerpt(mut resp: reqwest::Response, max: usize) -> String {
    let mut buf = Vec::new();
    while buf.len() < max {
        match tokio::time::timeout(Duration::from_secs(2), resp.chunk()).await {
            Ok(Ok(Some(c))) => buf.extend_from_slice(&c[..c.len().min(max - buf.len())]),
            _ => break,
        }
    }
    String::from_utf8_lossy(&buf).into_owned()
}

fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
