//! The delivery log through the API: attempts filtered by event, flag, status class and time;
//! one delivery's whole story (request as sent, answer, every try); replays.
//!
//! In: the endpoint's in-memory log. Out: JSON; a replayed job to the endpoint's worker.
//! Never: shows a configured header's value (masked when the attempt was made) or the URL's
//! credentials; reads a kept body past `MAX_SHOWN_BODY`.

use std::io::Read;

use axum::extract::{Path, Query, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::Json;
use serde::Deserialize;
use serde_json::{json, Value};

use super::api::{endpoint, ApiError, ApiResult};
use super::AdminState;
use crate::delivery::{Job, LogEntry};
use crate::events::event_matches;

/// A kept body shown beyond this is cut (a gzipped batch can be many times its size).
const MAX_SHOWN_BODY: u64 = 4 << 20;

#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(super) struct Filter {
    /// An event name, `prefix.*` or `*`.
    event: Option<String>,
    /// A flag key, exactly.
    flag: Option<String>,
    /// `2xx`, `3xx`, `4xx`, `5xx`, or `error` (no answer).
    status: Option<String>,
    /// RFC 3339: attempts at or after it.
    since: Option<String>,
    limit: Option<usize>,
}

impl Filter {
    fn check(&self) -> Result<Option<chrono::DateTime<chrono::FixedOffset>>, ApiError> {
        let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, "invalid", m);
        if let Some(s) = self.status.as_deref() {
            if !matches!(s, "2xx" | "3xx" | "4xx" | "5xx" | "error" | "") {
                return Err(bad(format!(
                    "status: `{s}` is not one of 2xx, 3xx, 4xx, 5xx, error"
                )));
            }
        }
        self.since
            .as_deref()
            .filter(|s| !s.is_empty())
            .map(|s| {
                chrono::DateTime::parse_from_rfc3339(s)
                    .map_err(|e| bad(format!("since: not an RFC 3339 time: {e}")))
            })
            .transpose()
    }

    fn wants(&self, e: &LogEntry, since: Option<&chrono::DateTime<chrono::FixedOffset>>) -> bool {
        let event = self.event.as_deref().filter(|s| !s.is_empty());
        if event.is_some_and(|p| !event_matches(p, e.event)) {
            return false;
        }
        let flag = self.flag.as_deref().filter(|s| !s.is_empty());
        if flag.is_some_and(|f| e.flag_key.as_deref() != Some(f)) {
            return false;
        }
        let class_ok = match self.status.as_deref() {
            None | Some("") => true,
            Some("error") => e.status.is_none(),
            Some(c) => e
                .status
                .is_some_and(|s| c.as_bytes().first() == Some(&(b'0' + (s / 100) as u8))),
        };
        if !class_ok {
            return false;
        }
        since.is_none_or(|t| chrono::DateTime::parse_from_rfc3339(&e.at).is_ok_and(|at| at >= *t))
    }
}

/// An endpoint's log, oldest first: in cluster mode every replica's attempts (from Redis;
/// this replica's own while Redis is away), else this replica's.
async fn entries(s: &AdminState, ep: &crate::delivery::Endpoint) -> Vec<LogEntry> {
    if let Some(Ok(shared)) = s.deliveries.shared_log(&ep.webhook.id).await {
        return shared;
    }
    ep.status
        .lock()
        .map(|st| st.log.iter().cloned().collect())
        .unwrap_or_default()
}

/// The log of one endpoint, newest first, filtered.
pub(super) async fn deliveries(
    State(s): State<AdminState>,
    Path(id): Path<String>,
    q: Result<Query<Filter>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let Query(f) =
        q.map_err(|e| ApiError::new(StatusCode::BAD_REQUEST, "invalid", e.body_text()))?;
    let since = f.check()?;
    let ep = endpoint(&s, &id)?;
    let limit = f.limit.unwrap_or(usize::MAX);
    let log: Vec<Value> = entries(&s, &ep)
        .await
        .iter()
        .rev()
        .filter(|e| f.wants(e, since.as_ref()))
        .take(limit)
        .map(|e| serde_json::to_value(e).unwrap_or_default())
        .collect();
    Ok(Json(json!({"webhook": id, "deliveries": log})).into_response())
}

/// The attempts of one delivery id, oldest first, with what was sent and what came back.
pub(super) async fn delivery(
    State(s): State<AdminState>,
    Path((id, delivery)): Path<(String, String)>,
) -> ApiResult {
    let ep = endpoint(&s, &id)?;
    let attempts: Vec<LogEntry> = entries(&s, &ep)
        .await
        .into_iter()
        .filter(|e| e.delivery_id == delivery)
        .collect();
    let Some(first) = attempts.first() else {
        return Err(not_in_log(&id, &delivery));
    };
    let current_url = crate::redact::url(&ep.webhook.url);
    // Every attempt of one delivery carries the same body: decoded once.
    let mut decoded: Option<(bytes::Bytes, String)> = None;
    let shown: Vec<Value> = attempts
        .iter()
        .map(|e| {
            let body = e.body_kept.then(|| match &decoded {
                Some((b, text)) if *b == e.body => text.clone(),
                _ => {
                    let text = shown_body(&e.body, e.encoding);
                    decoded = Some((e.body.clone(), text.clone()));
                    text
                }
            });
            let url = e.url.as_deref().unwrap_or(&current_url);
            json!({
                "at": e.at,
                "attempt": e.attempt,
                "probe": e.probe,
                "status": e.status,
                "latency_ms": e.latency_ms,
                "error": e.error,
                "request": {
                    "method": "POST",
                    "url": url,
                    "headers": e.request_headers,
                    "body": body,
                    "body_kept": e.body_kept,
                    "encoding": e.encoding,
                },
                "response": {
                    "status": e.status,
                    "headers": e.response_headers,
                    "excerpt": e.response,
                },
            })
        })
        .collect();
    Ok(Json(json!({
        "webhook": id,
        "delivery_id": delivery,
        "event": first.event,
        "flag_key": first.flag_key,
        "attempts": shown,
    }))
    .into_response())
}

/// The body as text: gunzipped when it was sent gzipped; cut at `MAX_SHOWN_BODY`.
fn shown_body(body: &[u8], encoding: Option<&str>) -> String {
    let mut out = Vec::new();
    if encoding == Some("gzip") {
        let mut d = flate2::read::GzDecoder::new(body).take(MAX_SHOWN_BODY);
        if d.read_to_end(&mut out).is_err() {
            return format!("({} bytes of gzip that do not decode)", body.len());
        }
    } else {
        out.extend_from_slice(&body[..body.len().min(MAX_SHOWN_BODY as usize)]);
    }
    String::from_utf8_lossy(&out).into_owned()
}

fn not_in_log(id: &str, delivery: &str) -> ApiError {
    ApiError::new(
        StatusCode::NOT_FOUND,
        "not_found",
        format!("no delivery `{delivery}` in the log of `{id}`"),
    )
}

/// Sends a logged delivery again, same id and body.
pub(super) async fn replay(
    State(s): State<AdminState>,
    Path((id, delivery)): Path<(String, String)>,
) -> ApiResult {
    let ep = endpoint(&s, &id)?;
    let entry = entries(&s, &ep)
        .await
        .into_iter()
        .rev()
        .find(|e| e.delivery_id == delivery)
        .ok_or_else(|| not_in_log(&id, &delivery))?;
    if !entry.body_kept {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "body_not_kept",
            format!(
                "the body of `{delivery}` is no longer kept (delivery.log_body_bytes); it cannot be replayed"
            ),
        ));
    }
    s.deliveries.send_to(
        &id,
        Job {
            seq: 0,
            size: 0,
            on_disk: false,
            id: entry.delivery_id.clone(),
            order_key: entry.order_key,
            body: entry.body.clone(),
            label: entry.event,
            encoding: entry.encoding,
            records: entry.records,
            flag_key: entry.flag_key.clone(),
        },
    )?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"queued": entry.delivery_id})),
    )
        .into_response())
}
