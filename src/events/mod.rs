//! Change events: what one Flagr mutation means, as event names and before/after changes.
//!
//! In: the mutation (from the route table), the flag before and after it, Flagr's response.
//! Out: [`Draft`] events in a fixed order, and Flagr's own notification fields for the `flagr`
//! payload format.
//! Never: does I/O; never emits an event for something that did not change (a no-op PUT).

pub mod names;
pub mod payload;
pub mod recent;
pub mod summary;
pub mod template;

pub use names::{event_matches, EVENT_NAMES};

use std::collections::BTreeMap;

use serde_json::{json, Value};

use crate::flagr::model::{Flag, Segment};
use crate::flagr::Mutation;

/// One event before it gets an id and a payload.
#[derive(Clone, Debug, PartialEq)]
pub struct Draft {
    pub event: &'static str,
    /// `{"<what>": {"before": .., "after": ..}, ...}` plus the ids of the thing that changed.
    pub changes: Value,
}

fn draft(event: &'static str, changes: Value) -> Draft {
    Draft { event, changes }
}

fn ba(before: impl serde::Serialize, after: impl serde::Serialize) -> Value {
    json!({"before": before, "after": after})
}

/// The events of one successful mutation.
///
/// `before` is `None` when the state before could not be read (first snapshot of a flag, legacy
/// prefetch failed): the event the route implies is emitted, with empty `changes`.
pub fn derive(m: &Mutation, before: Option<&Flag>, after: &Flag) -> Vec<Draft> {
    use Mutation::*;
    match m {
        CreateFlag => vec![draft("flag.created", json!({}))],
        DuplicateFlag { flag } => {
            let mut v = vec![draft("flag.created", json!({"duplicated_from": flag}))];
            // The clone copies `enabled`: a subscriber to flag.enabled must learn it is live.
            if after.enabled {
                v.push(draft("flag.enabled", json!({"enabled": ba(false, true)})));
            }
            v
        }
        DeleteFlag { .. } => vec![draft("flag.deleted", json!({}))],
        // A restored flag reappears for every consumer that removed it on flag.deleted.
        RestoreFlag { .. } => vec![draft("flag.created", json!({"restored": true}))],
        _ => match before {
            Some(b) => diff(b, after),
            None => vec![draft(implied_event(m, after), json!({}))],
        },
    }
}

/// The event a route stands for when no "before" is known.
fn implied_event(m: &Mutation, after: &Flag) -> &'static str {
    use Mutation::*;
    match m {
        SetEnabled { .. } if after.enabled => "flag.enabled",
        SetEnabled { .. } => "flag.disabled",
        CreateVariant { .. } => "variant.created",
        PutVariant { .. } => "variant.updated",
        DeleteVariant { .. } => "variant.deleted",
        CreateSegment { .. } => "segment.created",
        ReorderSegments { .. } | PutSegment { .. } => "segment.updated",
        DeleteSegment { .. } => "segment.deleted",
        CreateConstraint { .. } => "constraint.created",
        PutConstraint { .. } => "constraint.updated",
        DeleteConstraint { .. } => "constraint.deleted",
        PutDistributions { .. } => "distribution.updated",
        CreateFlag | DuplicateFlag { .. } | RestoreFlag { .. } => "flag.created",
        DeleteFlag { .. } => "flag.deleted",
        PutFlag { .. } | CreateTag { .. } | DeleteTag { .. } => "flag.updated",
    }
}

/// Everything that differs between two states of one flag, as events, in a fixed order:
/// flag, enabled, variants, segments, constraints, distributions.
pub fn diff(b: &Flag, a: &Flag) -> Vec<Draft> {
    let mut out = Vec::new();

    let mut flag_changes = serde_json::Map::new();
    let mut field = |name: &str, before: Value, after: Value| {
        if before != after {
            flag_changes.insert(name.into(), ba(before, after));
        }
    };
    field("key", json!(b.key), json!(a.key));
    field("description", json!(b.description), json!(a.description));
    field("notes", json!(b.notes), json!(a.notes));
    field(
        "dataRecordsEnabled",
        json!(b.data_records_enabled),
        json!(a.data_records_enabled),
    );
    field("entityType", json!(b.entity_type), json!(a.entity_type));
    field("tags", json!(sorted_tags(b)), json!(sorted_tags(a)));
    if !flag_changes.is_empty() {
        out.push(draft("flag.updated", Value::Object(flag_changes)));
    }
    if b.enabled != a.enabled {
        let name = if a.enabled {
            "flag.enabled"
        } else {
            "flag.disabled"
        };
        out.push(draft(name, json!({"enabled": ba(b.enabled, a.enabled)})));
    }

    let bv: BTreeMap<i64, _> = b.variants.iter().map(|v| (v.id, v)).collect();
    let av: BTreeMap<i64, _> = a.variants.iter().map(|v| (v.id, v)).collect();
    for (id, v) in &av {
        match bv.get(id) {
            None => out.push(draft(
                "variant.created",
                json!({"variant": ba(None::<()>, v)}),
            )),
            Some(old) => {
                if old.key != v.key {
                    out.push(draft(
                        "variant.updated",
                        json!({"variant_id": id, "key": ba(&old.key, &v.key)}),
                    ));
                }
                if old.attachment_normalised() != v.attachment_normalised() {
                    out.push(draft(
                        "variant.attachment.updated",
                        json!({"variant_id": id, "attachment": ba(&old.attachment, &v.attachment)}),
                    ));
                }
            }
        }
    }
    for (id, old) in &bv {
        if !av.contains_key(id) {
            out.push(draft(
                "variant.deleted",
                json!({"variant": ba(old, None::<()>)}),
            ));
        }
    }

    let bs: BTreeMap<i64, &Segment> = b.segments.iter().map(|s| (s.id, s)).collect();
    let as_: BTreeMap<i64, &Segment> = a.segments.iter().map(|s| (s.id, s)).collect();
    let mut constraint_events = Vec::new();
    let mut distribution_events = Vec::new();
    for (id, s) in &as_ {
        let Some(old) = bs.get(id) else {
            out.push(draft(
                "segment.created",
                json!({"segment": ba(None::<()>, s)}),
            ));
            continue;
        };
        let mut seg = serde_json::Map::new();
        seg.insert("segment_id".into(), json!(id));
        if old.description != s.description {
            seg.insert("description".into(), ba(&old.description, &s.description));
        }
        if old.rank != s.rank {
            seg.insert("rank".into(), ba(old.rank, s.rank));
        }
        if seg.len() > 1 {
            out.push(draft("segment.updated", Value::Object(seg)));
        }
        if old.rollout_percent != s.rollout_percent {
            out.push(draft(
                "segment.rollout_percent.updated",
                json!({"segment_id": id, "rolloutPercent": ba(old.rollout_percent, s.rollout_percent)}),
            ));
        }
        let bc: BTreeMap<i64, _> = old.constraints.iter().map(|c| (c.id, c)).collect();
        let ac: BTreeMap<i64, _> = s.constraints.iter().map(|c| (c.id, c)).collect();
        for (cid, c) in &ac {
            match bc.get(cid) {
                None => constraint_events.push(draft(
                    "constraint.created",
                    json!({"segment_id": id, "constraint": ba(None::<()>, c)}),
                )),
                Some(oc) if oc != c => constraint_events.push(draft(
                    "constraint.updated",
                    json!({"segment_id": id, "constraint": ba(oc, c)}),
                )),
                Some(_) => {}
            }
        }
        for (cid, oc) in &bc {
            if !ac.contains_key(cid) {
                constraint_events.push(draft(
                    "constraint.deleted",
                    json!({"segment_id": id, "constraint": ba(oc, None::<()>)}),
                ));
            }
        }
        // Flagr replaces the whole set with new row ids, so compare what a user sees.
        let dist = |s: &Segment| {
            let mut v: Vec<Value> = s
                .distributions
                .iter()
                .map(|d| json!({"variantID": d.variant_id, "variantKey": d.variant_key, "percent": d.percent}))
                .collect();
            v.sort_by_key(|d| d["variantID"].as_i64());
            v
        };
        let (od, nd) = (dist(old), dist(s));
        if od != nd {
            distribution_events.push(draft(
                "distribution.updated",
                json!({"segment_id": id, "distributions": ba(od, nd)}),
            ));
        }
    }
    for (id, old) in &bs {
        if !as_.contains_key(id) {
            out.push(draft(
                "segment.deleted",
                json!({"segment": ba(old, None::<()>)}),
            ));
        }
    }
    out.extend(constraint_events);
    out.extend(distribution_events);
    out
}

fn sorted_tags(f: &Flag) -> Vec<&str> {
    let mut v: Vec<&str> = f.tags.iter().map(|t| t.value.as_str()).collect();
    v.sort_unstable();
    v
}

/// Flagr's own notification fields for one mutation (`pkg/handler/crud.go`, `commitFlagMutation`).
#[derive(Clone, Debug, PartialEq)]
pub struct FlagrNotice {
    pub operation: &'static str,
    pub component_type: &'static str,
    pub component_id: i64,
    pub component_key: String,
}

/// What Flagr's built-in notifier would say for this mutation. `response` is Flagr's answer body.
pub fn flagr_notice(m: &Mutation, after: &Flag, response: Option<&Value>) -> FlagrNotice {
    use Mutation::*;
    let rid = || {
        response
            .and_then(|r| r.get("id"))
            .and_then(Value::as_i64)
            .unwrap_or(0)
    };
    let rstr = |k: &str| {
        response
            .and_then(|r| r.get(k))
            .and_then(Value::as_str)
            .unwrap_or("")
            .to_string()
    };
    let n = |operation, component_type, component_id, component_key: String| FlagrNotice {
        operation,
        component_type,
        component_id,
        component_key,
    };
    match *m {
        CreateFlag | DuplicateFlag { .. } => n("create", "flag", after.id, after.key.clone()),
        PutFlag { flag } | SetEnabled { flag } => n("update", "flag", flag, after.key.clone()),
        DeleteFlag { flag } => n("delete", "flag", flag, after.key.clone()),
        RestoreFlag { flag } => n("restore", "flag", flag, after.key.clone()),
        CreateTag { .. } => n("create", "tag", rid(), rstr("value")),
        DeleteTag { tag, .. } => n("delete", "tag", tag, String::new()),
        CreateVariant { .. } => n("create", "variant", rid(), rstr("key")),
        PutVariant { variant, .. } => {
            let key = after
                .variants
                .iter()
                .find(|v| v.id == variant)
                .map(|v| v.key.clone())
                .unwrap_or_else(|| rstr("key"));
            n("update", "variant", variant, key)
        }
        DeleteVariant { variant, .. } => n("delete", "variant", variant, String::new()),
        CreateSegment { .. } => n("create", "segment", rid(), String::new()),
        ReorderSegments { .. } => n("update", "segment", 0, String::new()),
        PutSegment { segment, .. } => n("update", "segment", segment, String::new()),
        DeleteSegment { segment, .. } => n("delete", "segment", segment, String::new()),
        CreateConstraint { .. } => n("create", "constraint", rid(), String::new()),
        PutConstraint { constraint, .. } => n("update", "constraint", constraint, String::new()),
        DeleteConstraint { constraint, .. } => n("delete", "constraint", constraint, String::new()),
        PutDistributions { .. } => n("update", "distribution", 0, String::new()),
    }
}

/// Flagr's notification fields when the call is not known (a change made around the proxy):
/// read from the first event, which names the component the way Flagr's handler would.
pub fn notice_of(drafts: &[Draft], after: &Flag) -> FlagrNotice {
    let n = |operation, component_type, component_id, component_key: String| FlagrNotice {
        operation,
        component_type,
        component_id,
        component_key,
    };
    let Some(first) = drafts.first() else {
        return n("update", "flag", after.id, after.key.clone());
    };
    let c = &first.changes;
    let id_at = |thing: &str, side: &str| c[thing][side]["id"].as_i64().unwrap_or(0);
    let id_of = |k: &str| c[k].as_i64().unwrap_or(0);
    let variant_key = |id: i64| {
        after
            .variants
            .iter()
            .find(|v| v.id == id)
            .map(|v| v.key.clone())
            .unwrap_or_default()
    };
    match first.event {
        "flag.created" if c.get("restored").is_some() => {
            n("restore", "flag", after.id, after.key.clone())
        }
        "flag.created" => n("create", "flag", after.id, after.key.clone()),
        "flag.deleted" => n("delete", "flag", after.id, after.key.clone()),
        "variant.created" => {
            let id = id_at("variant", "after");
            n("create", "variant", id, variant_key(id))
        }
        "variant.updated" | "variant.attachment.updated" => {
            let id = id_of("variant_id");
            n("update", "variant", id, variant_key(id))
        }
        "variant.deleted" => n(
            "delete",
            "variant",
            id_at("variant", "before"),
            String::new(),
        ),
        "segment.created" => n(
            "create",
            "segment",
            id_at("segment", "after"),
            String::new(),
        ),
        "segment.updated" | "segment.rollout_percent.updated" => {
            n("update", "segment", id_of("segment_id"), String::new())
        }
        "segment.deleted" => n(
            "delete",
            "segment",
            id_at("segment", "before"),
            String::new(),
        ),
        "constraint.created" => n(
            "create",
            "constraint",
            id_at("constraint", "after"),
            String::new(),
        ),
        "constraint.updated" => n(
            "update",
            "constraint",
            id_at("constraint", "after"),
            String::new(),
        ),
        "constraint.deleted" => n(
            "delete",
            "constraint",
            id_at("constraint", "before"),
            String::new(),
        ),
        "distribution.updated" => n("update", "distribution", 0, String::new()),
        _ => n("update", "flag", after.id, after.key.clone()),
    }
}

/// Whether the events of one snapshot can be what mutation `m` did: how the changelog follower
/// pairs the proxy's note of a call with the snapshot it wrote. Every call may change nothing
/// (a no-op still writes a snapshot).
pub fn could_be(m: &Mutation, first_snapshot: bool, drafts: &[Draft]) -> bool {
    use Mutation::*;
    if matches!(m, CreateFlag | DuplicateFlag { .. }) || first_snapshot {
        return matches!(m, CreateFlag | DuplicateFlag { .. }) && first_snapshot;
    }
    let family: &[&str] = match m {
        DeleteFlag { .. } | RestoreFlag { .. } => &[],
        PutFlag { .. } | CreateTag { .. } | DeleteTag { .. } => &["flag.updated"],
        SetEnabled { .. } => &["flag.enabled", "flag.disabled"],
        CreateVariant { .. } | PutVariant { .. } | DeleteVariant { .. } => {
            &["variant.", "distribution.updated"]
        }
        CreateSegment { .. }
        | ReorderSegments { .. }
        | PutSegment { .. }
        | DeleteSegment { .. } => &["segment."],
        CreateConstraint { .. } | PutConstraint { .. } | DeleteConstraint { .. } => {
            &["constraint."]
        }
        PutDistributions { .. } => &["distribution.updated"],
        CreateFlag | DuplicateFlag { .. } => &[],
    };
    drafts
        .iter()
        .all(|d| family.iter().any(|f| d.event.starts_with(f)))
}

#[cfg(test)]
mod tests;
