//! flaghook's own read calls to Flagr: health, snapshots, a flag, the snapshot counter.
//!
//! In: paths under the API root. Out: parsed JSON or a [`FlagrError`].
//! Never: retries on its own, or waits longer than the configured API timeout.

use std::time::Duration;

use bytes::Bytes;
use http::{Request, StatusCode, Uri};
use http_body_util::{BodyExt, Empty};
use hyper_util::client::legacy::{connect::HttpConnector, Client};
use hyper_util::rt::TokioExecutor;
use serde_json::Value;

use super::model::{FlagState, ListedFlag, Snapshot};

#[derive(Debug, thiserror::Error)]
pub enum FlagrError {
    #[error("flagr request failed: {0}")]
    Transport(String),
    #[error("flagr timed out after {0:?}")]
    Timeout(Duration),
    #[error("flagr answered {status} for {path}")]
    Status { status: StatusCode, path: String },
    #[error("flagr sent JSON flaghook cannot read for {path}: {error}")]
    Json { path: String, error: String },
}

fn pool(timeout: Duration) -> Client<HttpConnector, Empty<Bytes>> {
    let mut conn = HttpConnector::new();
    conn.set_nodelay(true);
    conn.set_connect_timeout(Some(timeout));
    Client::builder(TokioExecutor::new())
        .pool_max_idle_per_host(8)
        .build(conn)
}

/// A small GET-only client for Flagr's API, with its own connection pool.
#[derive(Clone, Debug)]
pub struct FlagrClient {
    client: Client<HttpConnector, Empty<Bytes>>,
    /// `http://host:port{prefix}/api/v1`
    base: String,
    timeout: Duration,
}

impl FlagrClient {
    pub fn new(upstream: &str, api_root: &str, timeout: Duration) -> Self {
        Self {
            client: pool(timeout),
            base: format!("{}{}", upstream.trim_end_matches('/'), api_root),
            timeout,
        }
    }

    /// The same client with a pool of its own, for a runtime of its own (a proxy thread):
    /// pooled connections are driven by the runtime that made them.
    pub fn with_own_pool(&self) -> Self {
        Self {
            client: pool(self.timeout),
            base: self.base.clone(),
            timeout: self.timeout,
        }
    }

    /// GETs `path` (below the API root) and returns status and body.
    pub async fn get(&self, path: &str) -> Result<(StatusCode, Bytes), FlagrError> {
        let uri: Uri = format!("{}{}", self.base, path)
            .parse()
            .map_err(|e: http::uri::InvalidUri| FlagrError::Transport(e.to_string()))?;
        let req = Request::get(uri)
            .header(http::header::ACCEPT, "application/json")
            .header(
                http::header::USER_AGENT,
                concat!("flaghook/", env!("CARGO_PKG_VERSION")),
            )
            .body(Empty::new())
            .map_err(|e| FlagrError::Transport(e.to_string()))?;
        let fut = async {
            let resp = self
                .client
                .request(req)
                .await
                .map_err(|e| FlagrError::Transport(e.to_string()))?;
            let status = resp.status();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| FlagrError::Transport(e.to_string()))?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(self.timeout, fut)
            .await
            .map_err(|_| FlagrError::Timeout(self.timeout))?
    }

    async fn get_json<T: serde::de::DeserializeOwned>(&self, path: &str) -> Result<T, FlagrError> {
        let (status, body) = self.get(path).await?;
        if status != StatusCode::OK {
            return Err(FlagrError::Status {
                status,
                path: path.to_string(),
            });
        }
        serde_json::from_slice(&body).map_err(|e| FlagrError::Json {
            path: path.to_string(),
            error: e.to_string(),
        })
    }

    /// True when `GET /health` answers 200.
    pub async fn healthy(&self) -> bool {
        matches!(self.get("/health").await, Ok((StatusCode::OK, _)))
    }

    /// `Some(max_id)` on Flagr 1.2.x, `None` when the route does not exist (legacy 1.1.x).
    pub async fn max_snapshot_id(&self) -> Result<Option<i64>, FlagrError> {
        match self.get("/flags/snapshots/max_id").await? {
            (StatusCode::OK, body) => {
                let v: Value = serde_json::from_slice(&body).map_err(|e| FlagrError::Json {
                    path: "/flags/snapshots/max_id".into(),
                    error: e.to_string(),
                })?;
                Ok(Some(v.get("maxID").and_then(Value::as_i64).unwrap_or(0)))
            }
            // The router answers 404 "path not found" or, on some versions, 405 (it then reads
            // `snapshots` as a flag id): both mean the route is missing.
            (StatusCode::NOT_FOUND | StatusCode::METHOD_NOT_ALLOWED, _) => Ok(None),
            // A legacy router sends `snapshots` to `GET /flags/{id}`, which rejects the id.
            (StatusCode::UNPROCESSABLE_ENTITY | StatusCode::BAD_REQUEST, _) => Ok(None),
            (status, _) => Err(FlagrError::Status {
                status,
                path: "/flags/snapshots/max_id".into(),
            }),
        }
    }

    /// One page of a flag's snapshots, newest first (sorted here, whatever Flagr's order).
    pub async fn snapshots_page(
        &self,
        flag: i64,
        limit: usize,
        offset: usize,
    ) -> Result<Vec<Snapshot>, FlagrError> {
        let mut v: Vec<Snapshot> = self
            .get_json(&format!(
                "/flags/{flag}/snapshots?limit={limit}&offset={offset}&sort=DESC"
            ))
            .await?;
        v.sort_by_key(|s| std::cmp::Reverse(s.id));
        Ok(v)
    }

    /// Every live flag (`deleted = false`) or every soft-deleted one, with its `updatedAt`.
    pub async fn listed_flags(&self, deleted: bool) -> Result<Vec<ListedFlag>, FlagrError> {
        let path = if deleted {
            "/flags?deleted=true"
        } else {
            "/flags"
        };
        let mut v: Vec<ListedFlag> = self.get_json(path).await?;
        for f in &mut v {
            f.deleted = deleted;
        }
        Ok(v)
    }

    /// The flag as Flagr has it now; `Ok(None)` when Flagr says 404 (deleted or never existed).
    pub async fn flag(&self, flag: i64) -> Result<Option<FlagState>, FlagrError> {
        let path = format!("/flags/{flag}");
        match self.get(&path).await? {
            (StatusCode::OK, body) => {
                let v: Value = serde_json::from_slice(&body).map_err(|e| FlagrError::Json {
                    path: path.clone(),
                    error: e.to_string(),
                })?;
                FlagState::from_value(v)
                    .map(Some)
                    .map_err(|e| FlagrError::Json {
                        path,
                        error: e.to_string(),
                    })
            }
            (StatusCode::NOT_FOUND, _) => Ok(None),
            (status, _) => Err(FlagrError::Status { status, path }),
        }
    }
}
