//! The admin API (JSON, bearer token): webhooks and their state and hour stats, secret rotation,
//! test events, previews, pause and resume, and webhooks created, changed and deleted at runtime;
//! the routes of the delivery log (`log`) and the page's read-only views (`views`).
//!
//! In: authenticated HTTP requests. Out: JSON answers; commands to the delivery workers; writes
//! to the webhook store.
//! Never: shows a stored secret or a header value (a rotation's new secret is answered once, to
//! the caller who asked for it); compares the token in anything but constant time.

use std::collections::BTreeMap;
use std::sync::Arc;

use axum::extract::rejection::JsonRejection;
use axum::extract::{Path, Request, State};
use axum::http::StatusCode;
use axum::middleware::Next;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::{Deserialize, Serialize};
use serde_json::{json, Value};
use sha2::Digest;
use subtle::ConstantTimeEq;

use super::{log, views, AdminState};
use crate::config::{CloudEventsConfig, ConfigError, PayloadFormat, Secret, WebhookConfig};
use crate::delivery::{Control, DeliveryError, Endpoint, Job, Kind, Origin};

/// A webhook as the API takes it (and as the store keeps it).
#[derive(Clone, Debug, Deserialize, Serialize)]
#[serde(deny_unknown_fields)]
pub struct WebhookInput {
    #[serde(default)]
    pub id: String,
    pub url: String,
    #[serde(default = "all_events")]
    pub events: Vec<String>,
    /// Omitted on update: keep the current secret. Empty: unsigned.
    #[serde(default)]
    pub secret: Option<String>,
    #[serde(default)]
    pub previous_secret: Option<String>,
    /// Set by a rotation: when the previous secret stops signing.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub previous_secret_until: Option<String>,
    #[serde(default)]
    pub format: PayloadFormat,
    #[serde(default)]
    pub detailed_diff: bool,
    #[serde(default)]
    pub cloudevents: CloudEventsConfig,
    /// With `format = "template"` (a file path is for the config file only).
    #[serde(default)]
    pub template: String,
    #[serde(default)]
    pub content_type: String,
    #[serde(default)]
    pub description: String,
    #[serde(default)]
    pub flag_keys: Vec<String>,
    #[serde(default)]
    pub tags: Vec<String>,
    #[serde(default)]
    pub headers: BTreeMap<String, String>,
    #[serde(default)]
    pub final_statuses: Vec<u16>,
}

fn all_events() -> Vec<String> {
    vec!["*".into()]
}

impl WebhookInput {
    /// The webhook this input describes (secrets as literals), not yet validated.
    pub fn to_config(&self) -> WebhookConfig {
        let secret = |s: &Option<String>| match s.as_deref() {
            Some(v) if !v.is_empty() => Secret::literal(v),
            _ => Secret::default(),
        };
        WebhookConfig {
            id: self.id.clone(),
            url: self.url.clone(),
            events: self.events.clone(),
            secret: secret(&self.secret),
            previous_secret: secret(&self.previous_secret),
            previous_secret_until: self.previous_secret_until.clone(),
            format: self.format,
            detailed_diff: self.detailed_diff,
            cloudevents: self.cloudevents.clone(),
            template: self.template.clone(),
            template_file: String::new(),
            content_type: self.content_type.clone(),
            description: self.description.clone(),
            flag_keys: self.flag_keys.clone(),
            tags: self.tags.clone(),
            headers: self.headers.clone(),
            final_statuses: self.final_statuses.clone(),
            timeout: None,
            retry_schedule: None,
        }
    }
}

/// An API error: status, a stable code, a message for people.
pub(super) struct ApiError {
    status: StatusCode,
    code: &'static str,
    message: String,
    /// The input field at fault, for the page to show the message next to it.
    field: Option<&'static str>,
}

impl ApiError {
    pub(super) fn new(status: StatusCode, code: &'static str, message: String) -> Self {
        Self {
            status,
            code,
            message,
            field: None,
        }
    }

    /// Names the input field at fault (one of the webhook input's keys).
    fn at(mut self, field: &str) -> Self {
        self.field = INPUT_FIELDS.iter().find(|f| **f == field).copied();
        self
    }
}

/// The input fields an error can name: the page shows the message next to that field.
const INPUT_FIELDS: [&str; 13] = [
    "id",
    "url",
    "events",
    "secret",
    "previous_secret",
    "format",
    "template",
    "content_type",
    "description",
    "flag_keys",
    "tags",
    "headers",
    "final_statuses",
];

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let body = match self.field {
            Some(f) => json!({"error": self.code, "message": self.message, "field": f}),
            None => json!({"error": self.code, "message": self.message}),
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<DeliveryError> for ApiError {
    fn from(e: DeliveryError) -> Self {
        let (s, c) = match &e {
            DeliveryError::NotFound(_) => (StatusCode::NOT_FOUND, "not_found"),
            DeliveryError::Exists(_) => (StatusCode::CONFLICT, "exists"),
            DeliveryError::ReadOnly(_) => (StatusCode::CONFLICT, "read_only"),
            DeliveryError::Url(_) | DeliveryError::Template(_) => {
                (StatusCode::BAD_REQUEST, "invalid")
            }
            DeliveryError::Full(_) => (StatusCode::SERVICE_UNAVAILABLE, "queue_full"),
            DeliveryError::EgressProxy(_) | DeliveryError::Client(_) => {
                (StatusCode::INTERNAL_SERVER_ERROR, "internal")
            }
        };
        let field = match &e {
            DeliveryError::Url(_) => "url",
            DeliveryError::Template(_) => "template",
            _ => "",
        };
        ApiError::new(s, c, e.to_string()).at(field)
    }
}

impl From<JsonRejection> for ApiError {
    fn from(e: JsonRejection) -> Self {
        ApiError::new(StatusCode::BAD_REQUEST, "bad_request", e.body_text())
    }
}

impl From<ConfigError> for ApiError {
    fn from(e: ConfigError) -> Self {
        // `webhooks[0].url: problem` → `url: problem`: the API has no index.
        match e {
            ConfigError::Invalid { key, problem } => {
                let field = key.rsplit('.').next().unwrap_or(&key);
                ApiError::new(
                    StatusCode::BAD_REQUEST,
                    "invalid",
                    format!("{field}: {problem}"),
                )
                .at(field)
            }
            other => ApiError::new(StatusCode::BAD_REQUEST, "invalid", other.to_string()),
        }
    }
}

pub(super) type ApiResult = Result<Response, ApiError>;

pub fn router(state: AdminState) -> Router<AdminState> {
    Router::new()
        .route("/webhooks", get(list).post(create))
        .route("/webhooks/{id}", get(one).put(update).delete(remove))
        .route("/webhooks/{id}/deliveries", get(log::deliveries))
        .route("/webhooks/{id}/deliveries/{delivery}", get(log::delivery))
        .route(
            "/webhooks/{id}/deliveries/{delivery}/replay",
            post(log::replay),
        )
        .route("/webhooks/{id}/rotate-secret", post(rotate_secret))
        .route("/event-types", get(views::event_types))
        .route("/changelog", get(views::changelog))
        .route("/impressions", get(views::impressions))
        .route("/webhooks/{id}/test", post(test_event))
        .route("/webhooks/{id}/preview", post(preview))
        .route("/webhooks/{id}/pause", post(pause))
        .route("/webhooks/{id}/resume", post(resume))
        .route("/webhooks/{id}/backfill", post(backfill))
        .route("/gitsync", get(gitsync_status))
        .route("/gitsync/{id}/sync", post(gitsync_trigger))
        .fallback(|| async {
            ApiError::new(
                StatusCode::NOT_FOUND,
                "not_found",
                "no such API route".into(),
            )
        })
        .layer(axum::middleware::from_fn_with_state(state, auth))
}

/// Bearer-token guard. With no token configured the API is closed.
async fn auth(State(s): State<AdminState>, req: Request, next: Next) -> Response {
    let expected = s.token.expose().unwrap_or("");
    let given = req
        .headers()
        .get(axum::http::header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer "))
        .unwrap_or("");
    // Digests are compared, so neither the token's length nor its content leaks through timing.
    let digest = |t: &str| sha2::Sha256::digest(t.as_bytes());
    let ok = !expected.is_empty() && bool::from(digest(given).ct_eq(&digest(expected)));
    if !ok {
        return ApiError::new(
            StatusCode::UNAUTHORIZED,
            "unauthorized",
            if expected.is_empty() {
                "the admin API is closed: set admin.token".into()
            } else {
                "missing or wrong bearer token".into()
            },
        )
        .into_response();
    }
    next.run(req).await
}

/// One webhook as the API shows it: its settings (URL credentials masked, header names only),
/// its state, and the last hour's successes, failures and latencies.
fn describe(ep: &Endpoint) -> Value {
    let w = &ep.webhook;
    let mut v = json!({
        "id": w.id,
        "url": crate::redact::url(&w.url),
        "description": w.description,
        "kind": match ep.kind {
            Kind::Events => "events",
            Kind::Impressions { .. } => "impressions",
        },
        "events": w.events,
        "format": w.format,
        "detailed_diff": w.detailed_diff,
        "cloudevents": w.cloudevents,
        "flag_keys": w.flag_keys,
        "tags": w.tags,
        "headers": w.headers.keys().collect::<Vec<_>>(),
        "signed": !w.secret.is_empty(),
        "rotating": !w.previous_secret.is_empty()
            && w.previous_secret_valid(std::time::SystemTime::now()),
        "previous_secret_until": w.previous_secret_until,
        "has_template": ep.template.is_some(),
        "origin": ep.origin,
    });
    // Read under the lock without copying the log.
    let Ok(st) = ep.status.lock() else {
        return v;
    };
    let state = json!({
        "state": if st.state.is_empty() { "active" } else { st.state },
        "paused_until": st.paused_until,
        "paused_by_operator": st.paused_by_operator,
        "queue_depth": st.queue_depth,
        "queue_bytes": st.queue_bytes,
        "next_attempt_at": st.next_attempt_at,
        "last_success": st.last_success,
        "last_failure": st.last_failure,
        "last_error": st.last_error,
        "stats": hour_stats(&st.stats),
    });
    if let (Value::Object(a), Value::Object(b)) = (&mut v, state) {
        a.extend(b);
    }
    v
}

/// The last hour per minute, and summed.
fn hour_stats(m: &crate::window::Minutes<crate::window::Latencies>) -> Value {
    use crate::window::{minute_rfc3339, now_minute, Latencies, MINUTES};
    let mut total = Latencies::default();
    let minutes: Vec<Value> = m
        .window(now_minute())
        .into_iter()
        .map(|(t, l)| {
            total.add(&l);
            json!({"t": minute_rfc3339(t), "ok": l.ok, "failed": l.failed,
                   "p50_ms": l.quantile(0.5), "p99_ms": l.quantile(0.99)})
        })
        .collect();
    let sent = total.ok + total.failed;
    json!({
        "window_minutes": MINUTES,
        "ok": total.ok,
        "failed": total.failed,
        "success_rate": (sent > 0).then(|| total.ok as f64 / sent as f64),
        "p50_ms": total.quantile(0.5),
        "p99_ms": total.quantile(0.99),
        "minutes": minutes,
    })
}

pub(super) fn endpoint(s: &AdminState, id: &str) -> Result<Arc<Endpoint>, ApiError> {
    s.deliveries
        .get(id)
        .ok_or_else(|| DeliveryError::NotFound(id.into()).into())
}

async fn list(State(s): State<AdminState>) -> ApiResult {
    let mut v = Vec::new();
    for e in s.deliveries.list().iter() {
        v.push(described(&s, e).await);
    }
    Ok(Json(json!({"webhooks": v})).into_response())
}

async fn one(State(s): State<AdminState>, Path(id): Path<String>) -> ApiResult {
    let ep = endpoint(&s, &id)?;
    Ok(Json(described(&s, &ep).await).into_response())
}

/// [`describe`], with what Redis holds for the endpoint cluster-wide in cluster mode: the
/// requests in its stream, or its parked impression batches (absent while Redis is away).
async fn described(s: &AdminState, ep: &Endpoint) -> Value {
    let mut v = describe(ep);
    // Redis away: said once by /readyz, not waited for per webhook here.
    let Some(c) = s.cluster.as_ref().filter(|c| c.up()) else {
        return v;
    };
    let id = &ep.webhook.id;
    v["cluster"] = match ep.kind {
        Kind::Events => match c.backlog(id).await {
            Ok(n) => json!({"backlog": n}),
            Err(_) => Value::Null,
        },
        Kind::Impressions { .. } => match c.parked(id).await {
            Ok((n, bytes)) => json!({"parked_batches": n, "parked_bytes": bytes}),
            Err(_) => Value::Null,
        },
    };
    v
}

/// Renders a template webhook's body for the last event sent to it (or a sample), unsent.
async fn preview(State(s): State<AdminState>, Path(id): Path<String>) -> ApiResult {
    let ep = endpoint(&s, &id)?;
    let Some(t) = ep.template.as_ref() else {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "no_template",
            format!("`{id}` has no template (formats template, slack, teams and discord do)"),
        ));
    };
    let last = ep
        .last_vars
        .lock()
        .unwrap_or_else(std::sync::PoisonError::into_inner)
        .clone();
    let (vars, sample) = match last {
        Some(v) => (v, false),
        None => (sample_vars(&s.delivery.ui_url), true),
    };
    let body = t.render(&vars).map_err(|e| {
        ApiError::new(
            StatusCode::UNPROCESSABLE_ENTITY,
            "render_failed",
            e.to_string(),
        )
    })?;
    Ok(Json(json!({
        "webhook": id,
        "sample": sample,
        "content_type": ep.webhook.content_type(),
        "body": body,
    }))
    .into_response())
}

/// A made-up event to preview a template with before any real one was sent.
fn sample_vars(ui_url: &str) -> Value {
    let payload = json!({
        "id": "evt_sample", "event": "segment.rollout_percent.updated", "flag_id": 1,
        "flag_key": "checkout-button", "timestamp": "2026-01-01T00:00:00.000Z",
        "actor": "alice@example.com", "source": "api",
        "changes": {"segment_id": 1, "rolloutPercent": {"before": 20, "after": 100}},
        "data": {"id": 1, "key": "checkout-button", "description": "the new checkout button",
            "enabled": true, "segments": [{"id": 1, "description": "beta", "rolloutPercent": 100}]}
    });
    crate::events::template::variables(&payload, ui_url)
}

async fn test_event(State(s): State<AdminState>, Path(id): Path<String>) -> ApiResult {
    endpoint(&s, &id)?;
    let msg_id = format!("ping_{}", uuid::Uuid::now_v7().simple());
    let body = json!({
        "id": msg_id,
        "event": "ping",
        "flag_id": 0,
        "flag_key": "",
        "timestamp": chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
        "actor": "",
        "source": "test",
        "changes": {},
        "data": {},
    });
    let body = bytes::Bytes::from(body.to_string());
    s.deliveries
        .send_to(&id, Job::change(msg_id.clone(), 0, None, body, "ping"))?;
    Ok((StatusCode::ACCEPTED, Json(json!({"queued": msg_id}))).into_response())
}

async fn pause(State(s): State<AdminState>, Path(id): Path<String>) -> ApiResult {
    s.deliveries.control(&id, Control::Pause)?;
    tell_replicas(&s, "pause", &id).await?;
    Ok(Json(json!({"webhook": id, "requested": "pause"})).into_response())
}

async fn resume(State(s): State<AdminState>, Path(id): Path<String>) -> ApiResult {
    s.deliveries.control(&id, Control::Resume)?;
    tell_replicas(&s, "resume", &id).await?;
    Ok(Json(json!({"webhook": id, "requested": "resume"})).into_response())
}

/// Cluster mode: an operator command goes to every replica's worker.
async fn tell_replicas(s: &AdminState, op: &str, id: &str) -> Result<(), ApiError> {
    let Some(c) = &s.cluster else { return Ok(()) };
    c.broadcast(op, id).await.map_err(unshared)
}

fn unshared(e: redis::RedisError) -> ApiError {
    ApiError::new(
        StatusCode::SERVICE_UNAVAILABLE,
        "cluster",
        format!("redis: {e}: not applied on the other replicas"),
    )
}

/// Saves a runtime webhook: in Redis first in cluster mode (every replica then takes it),
/// and in the local store.
async fn save(s: &AdminState, input: &WebhookInput) -> Result<(), ApiError> {
    if let Some(c) = &s.cluster {
        let json = serde_json::to_string(input).map_err(|e| {
            ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "store", e.to_string())
        })?;
        c.put_webhook(&input.id, &json).await.map_err(unshared)?;
    }
    s.store
        .put(&input.id, input)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "store", e.to_string()))
}

fn validated(s: &AdminState, input: &WebhookInput) -> Result<WebhookConfig, ApiError> {
    let mut cfg = input.to_config();
    cfg.validate(0, Some(&[]), &s.delivery)?;
    Ok(cfg)
}

async fn create(
    State(s): State<AdminState>,
    body: Result<Json<WebhookInput>, JsonRejection>,
) -> ApiResult {
    let Json(mut input) = body?;
    if input.id.is_empty() {
        input.id = format!("wh_{}", &uuid::Uuid::now_v7().simple().to_string()[20..]);
    }
    let cfg = validated(&s, &input)?;
    if s.deliveries.get(&input.id).is_some() {
        return Err(DeliveryError::Exists(input.id).into());
    }
    save(&s, &input).await?;
    s.deliveries.add(cfg, Origin::Runtime)?;
    let ep = endpoint(&s, &input.id)?;
    Ok((StatusCode::CREATED, Json(describe(&ep))).into_response())
}

async fn update(
    State(s): State<AdminState>,
    Path(id): Path<String>,
    body: Result<Json<WebhookInput>, JsonRejection>,
) -> ApiResult {
    let Json(mut input) = body?;
    let ep = endpoint(&s, &id)?;
    if ep.origin == Origin::Config {
        return Err(DeliveryError::ReadOnly(id).into());
    }
    let store = &s.store;
    if !input.id.is_empty() && input.id != id {
        return Err(ApiError::new(
            StatusCode::BAD_REQUEST,
            "invalid",
            "id: cannot be changed".into(),
        )
        .at("id"));
    }
    input.id = id.clone();
    // Secrets are never shown, so an edit that does not mention them keeps them.
    let stored = store
        .all::<WebhookInput>()
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "store", e.to_string()))?
        .into_iter()
        .find(|w| w.id == id);
    if let Some(old) = stored {
        // URLs are shown with their credentials masked: sending the masked one back keeps the
        // real one (a GET-then-PUT must not save `?token=***`).
        if input.url == crate::redact::url(&old.url) {
            input.url = old.url.clone();
        }
        if input.secret.is_none() {
            input.secret = old.secret;
        }
        if input.previous_secret.is_none() {
            input.previous_secret = old.previous_secret;
            // The rotation's end goes with the secret it ends.
            if input.previous_secret_until.is_none() {
                input.previous_secret_until = old.previous_secret_until;
            }
        }
    }
    let cfg = validated(&s, &input)?;
    save(&s, &input).await?;
    s.deliveries.update(cfg)?;
    let ep = endpoint(&s, &id)?;
    Ok(Json(describe(&ep)).into_response())
}

/// A rotation: the new secret (or one generated) signs from now on; the current one keeps
/// signing alongside it for `keep_previous_for` (0s: not at all).
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RotateInput {
    #[serde(default)]
    secret: Option<String>,
    #[serde(default, with = "humantime_serde")]
    keep_previous_for: Option<std::time::Duration>,
}

/// A Standard Webhooks secret: `whsec_` and 24 random bytes in base64.
fn generate_secret() -> String {
    use base64::Engine;
    let mut bytes = Vec::with_capacity(32);
    bytes.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
    bytes.extend_from_slice(uuid::Uuid::new_v4().as_bytes());
    // Version and variant bits are fixed in a v4 UUID: drop those bytes.
    let random: Vec<u8> = bytes
        .iter()
        .enumerate()
        .filter(|(i, _)| !matches!(i % 16, 6 | 8))
        .map(|(_, b)| *b)
        .take(24)
        .collect();
    format!(
        "whsec_{}",
        base64::engine::general_purpose::STANDARD.encode(random)
    )
}

async fn rotate_secret(
    State(s): State<AdminState>,
    Path(id): Path<String>,
    body: Result<Json<RotateInput>, JsonRejection>,
) -> ApiResult {
    let Json(r) = body?;
    let ep = endpoint(&s, &id)?;
    if ep.origin == Origin::Config {
        return Err(DeliveryError::ReadOnly(id).into());
    }
    let store = &s.store;
    let mut input = store
        .all::<WebhookInput>()
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "store", e.to_string()))?
        .into_iter()
        .find(|w| w.id == id)
        .ok_or_else(|| DeliveryError::NotFound(id.clone()))?;
    let new = match r.secret {
        Some(v) if !v.trim().is_empty() => v,
        _ => generate_secret(),
    };
    let keep = r.keep_previous_for.unwrap_or(std::time::Duration::ZERO);
    let old = input.secret.take().filter(|v| !v.is_empty());
    let until = match (old.is_some() && !keep.is_zero()).then(|| {
        chrono::Duration::from_std(keep)
            .ok()
            .and_then(|d| chrono::Utc::now().checked_add_signed(d))
    }) {
        None => None,
        Some(Some(t)) => Some(t.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)),
        Some(None) => {
            return Err(ApiError::new(
                StatusCode::BAD_REQUEST,
                "invalid",
                "keep_previous_for: too long".into(),
            ))
        }
    };
    input.previous_secret = until.as_ref().and(old);
    input.previous_secret_until = until.clone();
    input.secret = Some(new.clone());
    let cfg = validated(&s, &input)?;
    save(&s, &input).await?;
    s.deliveries.update(cfg)?;
    Ok(Json(json!({
        "webhook": id,
        "secret": new,
        "previous_secret_until": until,
    }))
    .into_response())
}

async fn remove(State(s): State<AdminState>, Path(id): Path<String>) -> ApiResult {
    let ep = endpoint(&s, &id)?;
    if ep.origin == Origin::Config {
        return Err(DeliveryError::ReadOnly(id).into());
    }
    if let Some(c) = &s.cluster {
        c.delete_webhook(&id).await.map_err(unshared)?;
    }
    s.store
        .delete(&id)
        .map_err(|e| ApiError::new(StatusCode::INTERNAL_SERVER_ERROR, "store", e.to_string()))?;
    s.deliveries.remove(&id)?;
    Ok(StatusCode::NO_CONTENT.into_response())
}

#[derive(Deserialize)]
struct BackfillQuery {
    since_snapshot: Option<i64>,
    since: Option<String>,
}

/// Re-derives Flagr's history since a snapshot id or a time and queues it for this endpoint
/// only; answers when everything is queued, with what was.
async fn backfill(
    State(s): State<AdminState>,
    Path(id): Path<String>,
    q: Result<axum::extract::Query<BackfillQuery>, axum::extract::rejection::QueryRejection>,
) -> ApiResult {
    let bad = |m: String| ApiError::new(StatusCode::BAD_REQUEST, "invalid", m);
    let axum::extract::Query(q) = q.map_err(|e| bad(e.body_text()))?;
    let ep = endpoint(&s, &id)?;
    if ep.kind != crate::delivery::Kind::Events {
        return Err(bad("backfill is for change-event webhooks".into()));
    }
    let since = match (q.since_snapshot, q.since.as_deref()) {
        (Some(n), None) => crate::changelog::Since::Snapshot(n),
        (None, Some(t)) => crate::changelog::Since::Time(
            chrono::DateTime::parse_from_rfc3339(t)
                .map_err(|e| bad(format!("since: not an RFC 3339 time: {e}")))?
                .with_timezone(&chrono::Utc),
        ),
        _ => {
            return Err(bad(
                "give exactly one of since_snapshot=<id> or since=<RFC 3339 time>".into(),
            ))
        }
    };
    if s.follower.legacy.load(std::sync::atomic::Ordering::Relaxed) {
        return Err(ApiError::new(
            StatusCode::CONFLICT,
            "no_changelog",
            "Flagr 1.1.x keeps no snapshot history to backfill from".into(),
        ));
    }
    let report = s
        .follower
        .backfill(&id, &since)
        .await
        .map_err(|e| ApiError::new(StatusCode::BAD_GATEWAY, "flagr", e.to_string()))?;
    Ok((
        StatusCode::ACCEPTED,
        Json(json!({"webhook": id, "queued": report})),
    )
        .into_response())
}

#[derive(Deserialize)]
struct SyncQuery {
    #[serde(default)]
    dry_run: bool,
}

async fn gitsync_status(State(s): State<AdminState>) -> ApiResult {
    let repos = s.gitsync.as_ref().map(|g| g.statuses()).unwrap_or_default();
    Ok(Json(json!({"repositories": repos})).into_response())
}

/// Syncs now and answers with the report (with `?dry_run=true`: the plan, nothing applied).
async fn gitsync_trigger(
    State(s): State<AdminState>,
    Path(id): Path<String>,
    axum::extract::Query(q): axum::extract::Query<SyncQuery>,
) -> ApiResult {
    let g = s.gitsync.as_ref().ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            "git sync is not configured".into(),
        )
    })?;
    let report = g.trigger(&id, q.dry_run).await.ok_or_else(|| {
        ApiError::new(
            StatusCode::NOT_FOUND,
            "not_found",
            format!("no repository `{id}`"),
        )
    })?;
    Ok(Json(report).into_response())
}
