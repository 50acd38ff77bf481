//! The admin listener: liveness, readiness and metrics (open, for probes and Prometheus), the
//! admin API under `/api` (bearer token) and the web page at `/`.
//!
//! In: HTTP requests on the admin port. Out: JSON, metrics text, the page.
//! Never: shares a port with the proxy, or shows a secret.

pub mod api;
pub mod store;

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
use crate::metrics::Metrics;

/// What the admin handlers read.
#[derive(Clone)]
pub struct AdminState {
    pub metrics: Arc<Metrics>,
    pub flagr: FlagrClient,
    pub deliveries: Arc<Deliveries>,
    pub token: Secret,
    pub store: Option<Arc<store::Store>>,
    pub delivery: Arc<DeliveryConfig>,
}

pub fn router(state: AdminState) -> Router {
    Router::new()
        .route("/healthz", get(healthz))
        .route("/readyz", get(readyz))
        .route("/metrics", get(metrics))
        .route("/", get(page))
        .route("/ui", get(page))
        .nest("/api", api::router(state.clone()))
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

async fn healthz() -> impl IntoResponse {
    Json(json!({"status": "ok"}))
}

/// Ready when config is loaded (it is, or we would not be serving) and Flagr answers its health
/// check: a sidecar whose upstream is down should not receive traffic.
async fn readyz(State(s): State<AdminState>) -> Response {
    if s.flagr.healthy().await {
        Json(json!({"status": "ready", "upstream": "ok"})).into_response()
    } else {
        (
            StatusCode::SERVICE_UNAVAILABLE,
            Json(json!({"status": "not ready", "upstream": "unreachable"})),
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
