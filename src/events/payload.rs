//! Payloads: the JSON bodies receivers get, in the `flaghook` (seed), `flagr` and
//! `cloudevents` formats.
//!
//! In: a [`ChangeSet`] (one mutation's events with the flag before and after).
//! Out: serialised bodies, one per event (`flaghook`, `cloudevents`) or one per mutation
//! (`flagr`).
//! Never: renames a seed field (`event, flag_id, flag_key, timestamp, data`).

use std::sync::Arc;

use bytes::Bytes;
use serde::Serialize;
use serde_json::Value;

use super::FlagrNotice;

/// One event with its identity; `id` is the `webhook-id` of every attempt to deliver it.
#[derive(Clone, Debug)]
pub struct ChangeEvent {
    pub id: String,
    pub event: &'static str,
    pub changes: Value,
}

/// Everything one mutation produced.
#[derive(Clone, Debug)]
pub struct ChangeSet {
    /// Id of the `flagr`-format notification for this mutation.
    pub id: String,
    pub flag_id: i64,
    pub flag_key: String,
    pub tags: Vec<String>,
    /// RFC 3339, UTC, when Flagr answered.
    pub timestamp: String,
    pub actor: String,
    /// `api`, or `gitsync` for flaghook's own git sync.
    pub source: &'static str,
    /// The git commit, for `gitsync`.
    pub commit: Option<String>,
    pub events: Vec<ChangeEvent>,
    pub notice: FlagrNotice,
    /// The complete flag after the change (before it, for `flag.deleted`).
    pub data: Arc<Value>,
    /// The flag before the change, when known (for `pre_value` and `diff`).
    pub before: Option<Arc<Value>>,
}

/// The `webhook-id` of event `index` of snapshot `snapshot` of flag `flag`: the same whenever
/// that snapshot is derived again (after a crash, on another replica), so receivers de-duplicate.
pub fn event_id(flag: i64, snapshot: i64, index: usize) -> String {
    format!(
        "evt_{}",
        short_hash(&format!("event/{flag}/{snapshot}/{index}"))
    )
}

/// The id of a snapshot's `flagr`-format notification (one per mutation).
pub fn change_set_id(flag: i64, snapshot: i64) -> String {
    format!("msg_{}", short_hash(&format!("notice/{flag}/{snapshot}")))
}

fn short_hash(s: &str) -> String {
    use sha2::Digest;
    hex::encode(&sha2::Sha256::digest(s.as_bytes())[..16])
}

#[derive(Serialize)]
struct SeedPayload<'a> {
    id: &'a str,
    event: &'a str,
    flag_id: i64,
    flag_key: &'a str,
    timestamp: &'a str,
    actor: &'a str,
    source: &'a str,
    #[serde(skip_serializing_if = "Option::is_none")]
    commit: Option<&'a str>,
    changes: &'a Value,
    data: &'a Value,
}

/// The seed's payload for one event.
pub fn seed_body(set: &ChangeSet, ev: &ChangeEvent) -> Bytes {
    // Serialising a struct of strings and JSON values cannot fail.
    Bytes::from(serde_json::to_vec(&seed(set, ev)).unwrap_or_default())
}

/// The seed's payload for one event, as the variables of a template.
pub fn seed_value(set: &ChangeSet, ev: &ChangeEvent) -> Value {
    serde_json::to_value(seed(set, ev)).unwrap_or_default()
}

fn seed<'a>(set: &'a ChangeSet, ev: &'a ChangeEvent) -> SeedPayload<'a> {
    SeedPayload {
        id: &ev.id,
        event: ev.event,
        flag_id: set.flag_id,
        flag_key: &set.flag_key,
        timestamp: &set.timestamp,
        actor: &set.actor,
        source: set.source,
        commit: set.commit.as_deref(),
        changes: &ev.changes,
        data: &set.data,
    }
}

#[derive(Serialize)]
struct CloudEvent<'a> {
    specversion: &'static str,
    id: &'a str,
    #[serde(rename = "type")]
    kind: String,
    source: &'a str,
    subject: &'a str,
    time: &'a str,
    datacontenttype: &'static str,
    data: CloudEventData<'a>,
}

#[derive(Serialize)]
struct CloudEventData<'a> {
    changes: &'a Value,
    data: &'a Value,
}

/// One event as a CloudEvents 1.0 structured-mode JSON event: `id` is the `webhook-id`, `type`
/// the event name after `type_prefix`, `subject` the flag key, `data` the seed payload's
/// `changes` and `data`.
pub fn cloudevent_body(
    set: &ChangeSet,
    ev: &ChangeEvent,
    type_prefix: &str,
    source: &str,
) -> Bytes {
    let e = CloudEvent {
        specversion: "1.0",
        id: &ev.id,
        kind: format!("{type_prefix}{}", ev.event),
        source,
        subject: &set.flag_key,
        time: &set.timestamp,
        datacontenttype: "application/json",
        data: CloudEventData {
            changes: &ev.changes,
            data: &set.data,
        },
    };
    Bytes::from(serde_json::to_vec(&e).unwrap_or_default())
}

#[derive(Serialize)]
struct FlagrPayload<'a> {
    operation: &'a str,
    flag_id: i64,
    flag_key: &'a str,
    #[serde(skip_serializing_if = "str::is_empty")]
    component_type: &'a str,
    #[serde(skip_serializing_if = "is_zero")]
    component_id: i64,
    #[serde(skip_serializing_if = "str::is_empty")]
    component_key: &'a str,
    #[serde(skip_serializing_if = "String::is_empty")]
    pre_value: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    post_value: String,
    #[serde(skip_serializing_if = "String::is_empty")]
    diff: String,
    #[serde(skip_serializing_if = "str::is_empty")]
    user: &'a str,
    timestamp: &'a str,
}

fn is_zero(v: &i64) -> bool {
    *v == 0
}

/// Flagr's built-in notification body (`pkg/notification/notifier.go`) for the whole mutation.
/// With `detailed`, `pre_value`/`post_value` hold the flag JSON and `diff` a unified diff, as
/// Flagr's `FLAGR_NOTIFICATION_DETAILED_DIFF_ENABLED` does.
pub fn flagr_body(set: &ChangeSet, detailed: bool) -> Bytes {
    let (pre, post, diff) = if detailed {
        let post = set.data.to_string();
        let pre = set
            .before
            .as_ref()
            .map(|b| b.to_string())
            .unwrap_or_default();
        let diff = if pre.is_empty() {
            String::new()
        } else {
            unified_diff(&set.before, &set.data)
        };
        (pre, post, diff)
    } else {
        Default::default()
    };
    let p = FlagrPayload {
        operation: set.notice.operation,
        flag_id: set.flag_id,
        flag_key: &set.flag_key,
        component_type: set.notice.component_type,
        component_id: set.notice.component_id,
        component_key: &set.notice.component_key,
        pre_value: pre,
        post_value: post,
        diff,
        user: &set.actor,
        timestamp: &set.timestamp,
    };
    Bytes::from(serde_json::to_vec(&p).unwrap_or_default())
}

/// A unified diff of the pretty-printed JSON, headed `Previous` / `Current` like Flagr's.
fn unified_diff(before: &Option<Arc<Value>>, after: &Value) -> String {
    let pretty = |v: &Value| serde_json::to_string_pretty(v).unwrap_or_default() + "\n";
    let a = before.as_deref().map(pretty).unwrap_or_default();
    let b = pretty(after);
    similar::TextDiff::from_lines(&a, &b)
        .unified_diff()
        .context_radius(3)
        .header("Previous", "Current")
        .to_string()
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn set() -> ChangeSet {
        ChangeSet {
            id: "n1".into(),
            flag_id: 1,
            flag_key: "k".into(),
            tags: vec![],
            timestamp: "2024-03-21T12:00:00.000Z".into(),
            actor: "alice".into(),
            source: "api",
            commit: None,
            events: vec![ChangeEvent {
                id: "e1".into(),
                event: "flag.updated",
                changes: json!({"description": {"before": "a", "after": "b"}}),
            }],
            notice: FlagrNotice {
                operation: "update",
                component_type: "flag",
                component_id: 1,
                component_key: "k".into(),
            },
            data: Arc::new(json!({"id": 1, "key": "k", "description": "b"})),
            before: Some(Arc::new(json!({"id": 1, "key": "k", "description": "a"}))),
        }
    }

    #[test]
    fn seed_shape_has_exact_field_names() {
        let s = set();
        let v: Value = serde_json::from_slice(&seed_body(&s, &s.events[0])).unwrap();
        for k in [
            "event",
            "flag_id",
            "flag_key",
            "timestamp",
            "data",
            "id",
            "actor",
            "changes",
            "source",
        ] {
            assert!(v.get(k).is_some(), "missing {k}");
        }
        assert_eq!(v["event"], "flag.updated");
        assert_eq!(v["data"]["description"], "b");
    }

    #[test]
    fn flagr_shape_matches_flagrs_notifier() {
        let s = set();
        let v: Value = serde_json::from_slice(&flagr_body(&s, false)).unwrap();
        assert_eq!(
            v,
            json!({"operation": "update", "flag_id": 1, "flag_key": "k", "component_type": "flag",
                   "component_id": 1, "component_key": "k", "user": "alice",
                   "timestamp": "2024-03-21T12:00:00.000Z"})
        );
        let v: Value = serde_json::from_slice(&flagr_body(&s, true)).unwrap();
        let diff = v["diff"].as_str().unwrap();
        assert!(diff.starts_with("--- Previous\n+++ Current\n"), "{diff}");
        assert!(diff.contains("-  \"description\": \"a\","));
        assert!(diff.contains("+  \"description\": \"b\","));
        assert!(v["pre_value"].as_str().unwrap().contains("\"a\""));
    }
}
