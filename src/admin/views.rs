//! Read-only views for the admin page: the event vocabulary, the changelog follower's
//! position and its last events, and the impression endpoints' traffic.
//!
//! In: the follower's metrics and recent events; the endpoints' status; in cluster mode, this
//! replica's part. Out: JSON.
//! Never: calls Flagr (the page polls these every few seconds).

use std::sync::atomic::Ordering;

use axum::extract::State;
use axum::response::IntoResponse;
use axum::Json;
use serde_json::{json, Value};

use super::api::ApiResult;
use super::AdminState;
use crate::delivery::Kind;
use crate::events::EVENT_NAMES;
use crate::window::{minute_rfc3339, now_minute};

pub(super) async fn event_types() -> ApiResult {
    Ok(Json(json!({
        "event_types": EVENT_NAMES,
        "patterns": ["*", "flag.*", "segment.*", "variant.*", "constraint.*", "distribution.*"],
    }))
    .into_response())
}

/// Where the follower is, how far behind Flagr, and what it derived lately.
pub(super) async fn changelog(State(s): State<AdminState>) -> ApiResult {
    let m = &s.follower.metrics;
    let (recent, minutes) = m.recent.read();
    let (cursor, max_id) = (m.cursor.get(), m.max_id.get());
    // Cluster mode: only the lease holder's cursor moves; the page says which replica this is.
    let cluster = s.cluster.as_ref().map(|c| {
        json!({
            "replica": c.replica,
            "leader": c.is_leader(),
            "redis": if c.up() { "ok" } else { "unreachable" },
        })
    });
    Ok(Json(json!({
        "cluster": cluster,
        "legacy": s.follower.legacy.load(Ordering::Relaxed),
        "ready": s.changelog_ready.load(Ordering::Relaxed),
        "cursor": cursor,
        "max_id": max_id,
        "lag": (max_id - cursor).max(0),
        "minutes": minutes,
        "recent": recent,
    }))
    .into_response())
}

/// Per impression endpoint: records handed to it and delivered, batches sent, what is parked.
pub(super) async fn impressions(State(s): State<AdminState>) -> ApiResult {
    let now = now_minute();
    let endpoints: Vec<Value> = s
        .deliveries
        .list()
        .iter()
        .filter(|ep| matches!(ep.kind, Kind::Impressions { .. }))
        .filter_map(|ep| {
            let st = ep.status.lock().ok()?;
            let minutes: Vec<Value> = st
                .records
                .window(now)
                .into_iter()
                .map(|(t, n)| json!({"t": minute_rfc3339(t), "records": n}))
                .collect();
            Some(json!({
                "id": ep.webhook.id,
                "records_batched": st.records_batched,
                "records_delivered": st.records_delivered,
                "batches_sent": st.batches_sent,
                "parked_batches": st.parked_batches,
                "parked_bytes": st.parked_bytes,
                "queue_depth": st.queue_depth,
                "minutes": minutes,
            }))
        })
        .collect();
    Ok(Json(json!({"endpoints": endpoints})).into_response())
}
