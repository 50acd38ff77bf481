//! One delivery attempt, in three steps: prepare (the body, read back from the outbox when it
//! is not in memory; signatures; headers), call, classify (by the endpoint's policy). Also the
//! log entry the attempt leaves.
//!
//! In: a job and its endpoint. Out: an [`Attempt`] for the worker.
//! Never: retries or sleeps (the worker decides what comes next), or logs a secret.

use std::time::{Duration, SystemTime};

use bytes::Bytes;
use tokio::time::Instant;

use super::ctx::EndpointCtx;
use super::job::{now_rfc3339, Attempt, Job, LogEntry};
use super::metrics::Outcome;
use super::retry::{parse_retry_after, Verdict};
use super::sign;

/// One attempt: prepare (body, signature, headers), call, classify; with its log entry.
pub(super) async fn send(
    ctx: &EndpointCtx,
    key: i64,
    job: &Job,
    attempt: usize,
    probe: bool,
) -> Attempt {
    let w = &ctx.webhook;
    let at = now_rfc3339();
    let loaded;
    let job = if job.body.is_empty() && job.size > 0 {
        match ctx.outbox.body(&w.id, job.seq) {
            Ok(Some(body)) => {
                loaded = Job {
                    body,
                    ..job.clone()
                };
                &loaded
            }
            other => return unreadable(ctx, key, job, attempt, probe, at, other.err()),
        }
    } else {
        job
    };
    let (req, request_headers) = prepare(ctx, job, attempt);
    let started = Instant::now();
    let (verdict, status, error, response, response_headers) = classify(ctx, call(req).await).await;
    let elapsed = started.elapsed();
    let outcome = match verdict {
        Verdict::Success => Outcome::Success,
        Verdict::Retry { .. } => Outcome::Retryable,
        Verdict::Final | Verdict::Gone => Outcome::Final,
    };
    ctx.metrics.attempt(&w.id, outcome, elapsed.as_secs_f64());
    tracing::debug!(endpoint = %w.id, delivery_id = %job.id, attempt, probe, ?status, ?elapsed, outcome = outcome.as_str(), "delivery attempt");
    Attempt {
        key,
        probe,
        verdict,
        entry: LogEntry {
            status,
            latency_ms: elapsed.as_secs_f64() * 1000.0,
            error,
            response,
            body: job.body.clone(),
            body_kept: true,
            request_headers,
            response_headers,
            url: Some(ctx.shown_url.clone()),
            ..LogEntry::of(job, at, attempt, probe)
        },
    }
}

/// Shown in place of a configured header's value: it may be a credential.
const MASKED: &str = "••••••";

/// The signed request for one attempt, and its headers as the log shows them.
fn prepare(
    ctx: &EndpointCtx,
    job: &Job,
    attempt: usize,
) -> (reqwest::RequestBuilder, Vec<(String, String)>) {
    let w = &ctx.webhook;
    let ts = SystemTime::now()
        .duration_since(SystemTime::UNIX_EPOCH)
        .map(|d| d.as_secs() as i64)
        .unwrap_or(0);
    let mut headers: Vec<(String, String)> = vec![
        ("content-type".into(), w.content_type().to_string()),
        ("webhook-id".into(), job.id.clone()),
        ("webhook-timestamp".into(), ts.to_string()),
        ("x-flaghook-event".into(), job.label.to_string()),
        ("x-flaghook-attempt".into(), attempt.to_string()),
    ];
    if let Some(enc) = job.encoding {
        headers.push(("content-encoding".into(), enc.to_string()));
    }
    if let Some(secret) = w.secret.expose() {
        headers.push((
            "x-flagr-signature".into(),
            sign::flagr_signature(secret, &job.body),
        ));
        let mut secrets = vec![secret];
        if w.previous_secret_valid(SystemTime::now()) {
            secrets.extend(w.previous_secret.expose());
        }
        headers.push((
            "webhook-signature".into(),
            sign::standard_signature(&secrets, &job.id, ts, &job.body),
        ));
    }
    let mut req = ctx
        .client
        .post(ctx.url.clone())
        .timeout(w.timeout.unwrap_or(ctx.policy.timeout));
    for (k, v) in &headers {
        req = req.header(k.as_str(), v.as_str());
    }
    for (k, v) in &w.headers {
        req = req.header(k.as_str(), v.as_str());
        headers.push((k.to_ascii_lowercase(), MASKED.to_string()));
    }
    (req.body(job.body.clone()), headers)
}

/// Sends the request (the client's timeout bounds it).
async fn call(req: reqwest::RequestBuilder) -> Result<reqwest::Response, reqwest::Error> {
    req.send().await
}

/// What the answer (or its absence) means by the endpoint's policy: verdict, status, error text
/// and the first bytes of the answer (read, so the connection can be reused).
async fn classify(
    ctx: &EndpointCtx,
    result: Result<reqwest::Response, reqwest::Error>,
) -> (
    Verdict,
    Option<u16>,
    Option<String>,
    String,
    Vec<(String, String)>,
) {
    match result {
        Ok(resp) => {
            let status = resp.status().as_u16();
            let headers = response_headers(resp.headers());
            let retry_after = resp
                .headers()
                .get(http::header::RETRY_AFTER)
                .and_then(|v| v.to_str().ok())
                .and_then(|v| parse_retry_after(v, SystemTime::now()));
            let excerpt = read_excerpt(resp, ctx.policy.response_excerpt_bytes).await;
            let verdict = ctx.rules.judge(status, retry_after);
            let error = (verdict != Verdict::Success).then(|| format!("HTTP {status}"));
            (verdict, Some(status), error, excerpt, headers)
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
                // Without the URL: its query may carry a token.
                Some(format!("{kind}: {}", error_chain(&e.without_url()))),
                String::new(),
                Vec::new(),
            )
        }
    }
}

impl LogEntry {
    /// An attempt of `job` with nothing known yet of its outcome.
    fn of(job: &Job, at: String, attempt: usize, probe: bool) -> Self {
        LogEntry {
            at,
            delivery_id: job.id.clone(),
            event: job.label,
            flag_key: job.flag_key.clone(),
            attempt,
            probe,
            status: None,
            latency_ms: 0.0,
            error: None,
            response: String::new(),
            records: job.records,
            body_kept: false,
            body: Bytes::new(),
            order_key: job.order_key,
            encoding: job.encoding,
            request_headers: Vec::new(),
            response_headers: Vec::new(),
            url: None,
        }
    }
}

/// Headers kept of a receiver's answer: a receiver must not make the log grow. Each name and
/// value is cut at `MAX_HEADER_TEXT` characters, and at most `MAX_RESPONSE_HEADERS` are kept
/// (4 KiB per attempt at most).
const MAX_RESPONSE_HEADERS: usize = 16;
const MAX_HEADER_TEXT: usize = 128;

fn response_headers(h: &http::HeaderMap) -> Vec<(String, String)> {
    let cut = |b: &[u8]| -> String {
        String::from_utf8_lossy(b)
            .chars()
            .take(MAX_HEADER_TEXT)
            .collect()
    };
    h.iter()
        .take(MAX_RESPONSE_HEADERS)
        .map(|(k, v)| (cut(k.as_str().as_bytes()), cut(v.as_bytes())))
        .collect()
}

/// The body of a queued request could not be read back. A read error (a failing disk) is tried
/// again on the schedule; a row that is gone (the file was replaced under flaghook) cannot be
/// sent at all and is finished as refused. Both are logged.
fn unreadable(
    ctx: &EndpointCtx,
    key: i64,
    job: &Job,
    attempt: usize,
    probe: bool,
    at: String,
    error: Option<String>,
) -> Attempt {
    let (verdict, error) = match error {
        Some(e) => (
            Verdict::Retry { retry_after: None },
            format!("outbox not readable: {e}"),
        ),
        None => (Verdict::Final, "body not found in the outbox".to_string()),
    };
    tracing::error!(endpoint = %ctx.webhook.id, delivery_id = %job.id, error, "request's body not read back");
    Attempt {
        key,
        probe,
        verdict,
        entry: LogEntry {
            error: Some(error),
            ..LogEntry::of(job, at, attempt, probe)
        },
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
