//! The admin listener: liveness, readiness and metrics (open, for probes and Prometheus), the
//! admin API under `/api` (bearer token) and the web page at `/`.
//!
//! In: HTTP requests on the admin port. Out: JSON, metrics text, the page.
//! Never: shares a port with the proxy, or shows a secret.

pub mod api;
mod log;
mod views;

use std::sync::Arc;

use axum::extract::State;
use axum::http::{header, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

use crate::config::{DeliveryConfig, Secret};
use crate::delivery::Deliveries;
use crate::flagr::FlagrClient;
use crate::gitsync::forge::{Forge, PushError};
use crate::gitsync::{GitSync, PushOutcome};
use crate::metrics::Registry;

/// What the admin handlers read.
#[derive(Clone)]
pub struct AdminState {
    pub metrics: Arc<Registry>,
    pub flagr: FlagrClient,
    pub deliveries: Arc<Deliveries>,
    pub token: Secret,
    pub store: Arc<crate::store::Store>,
    /// Set once the changelog follower knows where it starts.
    pub changelog_ready: Arc<std::sync::atomic::AtomicBool>,
    /// For backfills.
    pub follower: Arc<crate::changelog::Follower>,
    pub delivery: Arc<DeliveryConfig>,
    pub gitsync: Option<Arc<GitSync>>,
    /// Largest request body the admin listener takes (forge pushes can list many commits).
    pub max_body_bytes: usize,
    /// Cluster mode: runtime webhooks and operator commands go to every replica.
    pub cluster: Option<Arc<crate::cluster::Cluster>>,
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/", get(page))
        .route("/ui", get(page))
        .route("/hooks/git/{forge}", axum::routing::post(git_push))
        .nest("/api", api::router(state.clone()))
        // Push bodies and API bodies are small; a bound keeps a bad client from filling memory.
        // One limit, the configured one: axum's own 2 MB default would cut bodies below it.
        .layer(tower_http::limit::RequestBodyLimitLayer::new(
            state.max_body_bytes,
        ))
        .layer(axum::extract::DefaultBodyLimit::disable())
        // A 503 from /readyz is an answer, not a failure of the admin listener: logged at debug.
        .layer(
            tower_http::trace::TraceLayer::new_for_http().on_failure(
                tower_http::trace::DefaultOnFailure::new().level(tracing::Level::DEBUG),
            ),
        )
        .with_state(state)
}

/// The web page: one self-contained file, no build step.
async fn page() -> impl IntoResponse {
    (
        [
            (header::CONTENT_TYPE, "text/html; charset=utf-8"),
            (header::CACHE_CONTROL, "no-store"),
        ],
        include_str!("page.html"),
    )
}

/// Push webhooks from forges. Open (forges sign instead); answers at once, syncs in the background.
async fn git_push(
    State(s): State<AdminState>,
    axum::extract::Path(forge): axum::extract::Path<String>,
    headers: axum::http::HeaderMap,
    body: axum::body::Bytes,
) -> Response {
    let (Some(g), Some(forge)) = (s.gitsync.as_ref(), Forge::parse(&forge)) else {
        return (
            StatusCode::NOT_FOUND,
            Json(json!({"error": "not_found", "message": "no git sync for this forge"})),
        )
            .into_response();
    };
    match g.push(forge, &headers, &body) {
        Ok(PushOutcome::Accepted(id)) => {
            (StatusCode::ACCEPTED, Json(json!({"accepted": id}))).into_response()
        }
        Ok(PushOutcome::Ignored(why)) => {
            (StatusCode::ACCEPTED, Json(json!({"ignored": why}))).into_response()
        }
        Ok(PushOutcome::Duplicate) => (
            StatusCode::ACCEPTED,
            Json(json!({"ignored": "duplicate delivery"})),
        )
            .into_response(),
        Err(PushError::Malformed(m)) => (
            StatusCode::BAD_REQUEST,
            Json(json!({"error": "malformed", "message": m})),
        )
            .into_response(),
        Err(PushError::Unauthorized) => (
            StatusCode::UNAUTHORIZED,
            Json(json!({"error": "unauthorized", "message": "signature missing or wrong"})),
        )
            .into_response(),
    }
}

async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

/// Ready when config is loaded (it is, or we would not be serving) and Flagr answers its health
/// check: a sidecar whose upstream is down should not receive traffic.
async fn readyz(State(s): State<AdminState>) -> Response {
    if !s.flagr.healthy().await {
        return (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not ready", "upstream": "unreachable"})),
        )
            .into_response();
    }
    // Traffic before the follower knows its starting point could change flags it then takes
    // for history.
    // A failing outbox does not take the proxy out of service (clients would lose Flagr); it
    // is said here and counted in flaghook_outbox_errors_total.
    let store = s
        .store
        .last_error()
        .map_or_else(|| "ok".to_string(), |e| format!("failing: {e}"));
    if let Some(c) = &s.cluster {
        // Redis away is degraded, not unready: the proxy stays in the Service and events wait
        // in the local store.
        let up = c.up();
        let redis = match (up, c.last_error()) {
            (true, _) => "ok".to_string(),
            (false, Some(e)) => format!("unreachable: {e}"),
            (false, None) => "connecting".to_string(),
        };
        return Json(json!({
            "status": if up { "ready" } else { "degraded" },
            "upstream": "ok",
            "store": store,
            "cluster": {
                "redis": redis,
                "replica": c.replica,
                "leader": c.is_leader(),
                "spill_bytes": c.metrics.spill_bytes.get(),
            },
        }))
        .into_response();
    }
    if s.changelog_ready.load(std::sync::atomic::Ordering::Relaxed) {
        Json(json!({"status": "ready", "upstream": "ok", "store": store})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not ready", "upstream": "ok", "changelog": "starting"})),
        )
            .into_response()
    }
}

async fn metrics(State(s): State<AdminState>) -> Response {
    (
        [(
            header::CONTENT_TYPE,
            "text/plain; version=0.0.4; charset=utf-8",
        )],
        s.metrics.encode(),
    )
        .into_response()
}
