//! Applies a plan through flaghook's own proxy, so every change becomes change events like any
//! other edit (with `source: gitsync` and the commit).
//!
//! In: [`Op`]s. Out: Flagr changed, or the first call Flagr refused.
//! Never: talks to Flagr around the proxy for writes; stops at the first refusal (the next sync
//! starts from whatever state Flagr then has).

use std::collections::HashMap;

use serde_json::{json, Value};

use super::plan::{FlagRef, Op, SegRef};
use crate::flagr::model::Flag;

/// Where and how to send the calls.
#[derive(Clone)]
pub struct Applier {
    pub client: reqwest::Client,
    /// `http://127.0.0.1:<proxy port><prefix>/api/v1`
    pub api: String,
    /// Proves to the proxy that the call is git sync's own.
    pub token: String,
}

impl Applier {
    /// Calls through flaghook's own proxy at `proxy` (an unspecified listen address means
    /// this host), under Flagr's `api_root`, proving themselves with `token`.
    pub fn new(
        proxy: std::net::SocketAddr,
        api_root: &str,
        token: String,
        timeout: std::time::Duration,
    ) -> Result<Self, reqwest::Error> {
        let host = match proxy.ip() {
            ip if ip.is_unspecified() && ip.is_ipv6() => "[::1]".to_string(),
            ip if ip.is_unspecified() => "127.0.0.1".to_string(),
            std::net::IpAddr::V6(ip) => format!("[{ip}]"),
            ip => ip.to_string(),
        };
        Ok(Self {
            client: reqwest::Client::builder()
                .timeout(timeout)
                .no_proxy()
                .build()?,
            api: format!("http://{host}:{}{api_root}", proxy.port()),
            token,
        })
    }
}

/// Ids of what this run created, for the later calls that refer to it.
#[derive(Default)]
struct Created {
    flags: HashMap<String, i64>,
    segments: HashMap<(String, usize), i64>,
}

/// A run stopped at a call Flagr refused: what was done, what was not, and why. The rest is
/// left for the next sync, which plans again from the state Flagr then has.
#[derive(Clone, Debug, PartialEq, Eq, serde::Serialize, thiserror::Error)]
#[error("stopped after {applied} of {planned} changes at {call}: {error}")]
pub struct Stopped {
    pub commit: String,
    pub applied: usize,
    pub planned: usize,
    pub call: String,
    pub error: String,
}

#[derive(Debug, thiserror::Error)]
#[error("{call}: {message}")]
pub struct ApplyError {
    pub call: String,
    pub message: String,
}

impl Applier {
    async fn call(
        &self,
        commit: &str,
        method: &str,
        path: &str,
        body: Option<Value>,
    ) -> Result<Value, ApplyError> {
        let call = format!("{method} {path}");
        let mut req = self
            .client
            .request(
                method.parse().unwrap_or(reqwest::Method::GET),
                format!("{}{path}", self.api),
            )
            .header("x-flaghook-source", "gitsync")
            .header("x-flaghook-commit", commit)
            .header("x-flaghook-gitsync", &self.token);
        if let Some(b) = body {
            req = req
                .header("content-type", "application/json")
                .body(b.to_string());
        }
        let resp = req.send().await.map_err(|e| ApplyError {
            call: call.clone(),
            message: e.to_string(),
        })?;
        let status = resp.status();
        let text = resp.text().await.unwrap_or_default();
        if status != reqwest::StatusCode::OK {
            return Err(ApplyError {
                call,
                message: format!(
                    "Flagr answered {status}: {}",
                    text.chars().take(300).collect::<String>()
                ),
            });
        }
        Ok(serde_json::from_str(&text).unwrap_or(Value::Null))
    }

    async fn flag(&self, commit: &str, id: i64) -> Result<Flag, ApplyError> {
        let v = self
            .call(commit, "GET", &format!("/flags/{id}"), None)
            .await?;
        serde_json::from_value(v).map_err(|e| ApplyError {
            call: format!("GET /flags/{id}"),
            message: e.to_string(),
        })
    }

    /// Runs the plan in order; returns how many calls changed something, or where it stopped.
    pub async fn apply(&self, commit: &str, ops: &[Op]) -> Result<usize, Stopped> {
        let mut created = Created::default();
        for (i, op) in ops.iter().enumerate() {
            if let Err(e) = self.apply_one(commit, op, &mut created).await {
                return Err(Stopped {
                    commit: commit.to_string(),
                    applied: i,
                    planned: ops.len(),
                    call: e.call,
                    error: e.message,
                });
            }
        }
        Ok(ops.len())
    }

    async fn apply_one(
        &self,
        commit: &str,
        op: &Op,
        created: &mut Created,
    ) -> Result<(), ApplyError> {
        let new_flags = &mut created.flags;
        let new_segments = &mut created.segments;
        let flag_id = |r: &FlagRef, new_flags: &HashMap<String, i64>| -> Result<i64, ApplyError> {
            match r {
                FlagRef::Id(id) => Ok(*id),
                FlagRef::New(k) => new_flags.get(k).copied().ok_or_else(|| ApplyError {
                    call: format!("flag {k}"),
                    message: "was not created".into(),
                }),
            }
        };
        let seg_id = |key: &str, r: &SegRef, new_segments: &HashMap<(String, usize), i64>| match r {
            SegRef::Id(id) => Ok(*id),
            SegRef::New(n) => new_segments
                .get(&(key.to_string(), *n))
                .copied()
                .ok_or_else(|| ApplyError {
                    call: format!("segment {n} of {key}"),
                    message: "was not created".into(),
                }),
        };
        match op {
            Op::CreateFlag { key, description } => {
                let v = self
                    .call(
                        commit,
                        "POST",
                        "/flags",
                        Some(json!({"key": key, "description": description})),
                    )
                    .await?;
                let id = v["id"].as_i64().ok_or_else(|| ApplyError {
                    call: "POST /flags".into(),
                    message: "no id in Flagr's answer".into(),
                })?;
                new_flags.insert(key.clone(), id);
            }
            Op::UpdateFlag { flag, body, .. } => {
                let id = flag_id(flag, new_flags)?;
                self.call(commit, "PUT", &format!("/flags/{id}"), Some(body.clone()))
                    .await?;
            }
            Op::AddTag { flag, value, .. } => {
                let id = flag_id(flag, new_flags)?;
                self.call(
                    commit,
                    "POST",
                    &format!("/flags/{id}/tags"),
                    Some(json!({"value": value})),
                )
                .await?;
            }
            Op::RemoveTag { flag, tag, .. } => {
                self.call(commit, "DELETE", &format!("/flags/{flag}/tags/{tag}"), None)
                    .await?;
            }
            Op::CreateVariant {
                flag,
                variant,
                attachment,
                ..
            } => {
                let id = flag_id(flag, new_flags)?;
                self.call(
                    commit,
                    "POST",
                    &format!("/flags/{id}/variants"),
                    Some(json!({"key": variant, "attachment": attachment})),
                )
                .await?;
            }
            Op::UpdateVariant {
                flag,
                variant_id,
                variant,
                attachment,
                ..
            } => {
                self.call(
                    commit,
                    "PUT",
                    &format!("/flags/{flag}/variants/{variant_id}"),
                    Some(json!({"key": variant, "attachment": attachment})),
                )
                .await?;
            }
            Op::DeleteVariant {
                flag, variant_id, ..
            } => {
                self.call(
                    commit,
                    "DELETE",
                    &format!("/flags/{flag}/variants/{variant_id}"),
                    None,
                )
                .await?;
            }
            Op::CreateSegment {
                flag,
                key,
                new,
                description,
                rollout,
            } => {
                let id = flag_id(flag, new_flags)?;
                let v = self
                    .call(
                        commit,
                        "POST",
                        &format!("/flags/{id}/segments"),
                        Some(json!({"description": description, "rolloutPercent": rollout})),
                    )
                    .await?;
                let sid = v["id"].as_i64().ok_or_else(|| ApplyError {
                    call: format!("POST /flags/{id}/segments"),
                    message: "no id in Flagr's answer".into(),
                })?;
                new_segments.insert((key.clone(), *new), sid);
            }
            Op::UpdateSegment {
                flag,
                segment,
                description,
                rollout,
                ..
            } => {
                self.call(
                    commit,
                    "PUT",
                    &format!("/flags/{flag}/segments/{segment}"),
                    Some(json!({"description": description, "rolloutPercent": rollout})),
                )
                .await?;
            }
            Op::DeleteSegment { flag, segment, .. } => {
                self.call(
                    commit,
                    "DELETE",
                    &format!("/flags/{flag}/segments/{segment}"),
                    None,
                )
                .await?;
            }
            Op::CreateConstraint {
                flag,
                key,
                segment,
                property,
                operator,
                value,
            } => {
                let id = flag_id(flag, new_flags)?;
                let sid = seg_id(key, segment, new_segments)?;
                self.call(
                    commit,
                    "POST",
                    &format!("/flags/{id}/segments/{sid}/constraints"),
                    Some(json!({"property": property, "operator": operator, "value": value})),
                )
                .await?;
            }
            Op::DeleteConstraint {
                flag,
                segment,
                constraint,
                ..
            } => {
                self.call(
                    commit,
                    "DELETE",
                    &format!("/flags/{flag}/segments/{segment}/constraints/{constraint}"),
                    None,
                )
                .await?;
            }
            Op::SetDistributions {
                flag,
                key,
                segment,
                percents,
            } => {
                let id = flag_id(flag, new_flags)?;
                let sid = seg_id(key, segment, new_segments)?;
                // Variant ids are only known now (some were just created).
                let f = self.flag(commit, id).await?;
                let mut ds = Vec::new();
                for (vk, p) in percents {
                    let v = f
                        .variants
                        .iter()
                        .find(|v| &v.key == vk)
                        .ok_or_else(|| ApplyError {
                            call: format!("PUT /flags/{id}/segments/{sid}/distributions"),
                            message: format!("variant `{vk}` not found"),
                        })?;
                    ds.push(json!({"variantID": v.id, "variantKey": vk, "percent": p}));
                }
                self.call(
                    commit,
                    "PUT",
                    &format!("/flags/{id}/segments/{sid}/distributions"),
                    Some(json!({"distributions": ds})),
                )
                .await?;
            }
            Op::ReorderSegments { flag, key, order } => {
                let id = flag_id(flag, new_flags)?;
                let ids = order
                    .iter()
                    .map(|s| seg_id(key, s, new_segments))
                    .collect::<Result<Vec<_>, _>>()?;
                self.call(
                    commit,
                    "PUT",
                    &format!("/flags/{id}/segments/reorder"),
                    Some(json!({"segmentIDs": ids})),
                )
                .await?;
            }
            Op::SetEnabled { flag, enabled, .. } => {
                let id = flag_id(flag, new_flags)?;
                self.call(
                    commit,
                    "PUT",
                    &format!("/flags/{id}/enabled"),
                    Some(json!({"enabled": enabled})),
                )
                .await?;
            }
            Op::DeleteFlag { flag, .. } => {
                self.call(commit, "DELETE", &format!("/flags/{flag}"), None)
                    .await?;
            }
        }
        Ok(())
    }
}
