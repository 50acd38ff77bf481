//! The plan: the ordered Flagr API calls that make Flagr's flags match the desired ones.
//!
//! In: desired flags (from git) and actual flags (`GET /flags?preload=true`). Out: [`Op`]s, in an
//! order Flagr accepts (variants exist before distributions name them; distributions move away
//! from a variant before it is deleted).
//! Never: does I/O. Entities are matched by natural keys: flag and variant by key, tag by value,
//! constraint by (property, operator, value), distribution by variant key, segment by position.

use std::collections::BTreeMap;

use serde::Serialize;
use serde_json::Value;

use super::desired::{DFlag, DSegment};
use crate::flagr::model::{Flag, Segment};

/// A flag: one that exists, or one the plan creates.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum FlagRef {
    Id(i64),
    New(String),
}

/// A segment: one that exists, or the n-th one the plan creates on its flag.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(untagged)]
pub enum SegRef {
    Id(i64),
    New(usize),
}

/// One Flagr API call.
#[derive(Clone, Debug, PartialEq, Serialize)]
#[serde(tag = "op", rename_all = "snake_case")]
pub enum Op {
    CreateFlag {
        key: String,
        description: String,
    },
    UpdateFlag {
        flag: FlagRef,
        key: String,
        body: Value,
    },
    AddTag {
        flag: FlagRef,
        key: String,
        value: String,
    },
    RemoveTag {
        flag: i64,
        key: String,
        tag: i64,
        value: String,
    },
    CreateVariant {
        flag: FlagRef,
        key: String,
        variant: String,
        attachment: Value,
    },
    UpdateVariant {
        flag: i64,
        key: String,
        variant_id: i64,
        variant: String,
        attachment: Value,
    },
    DeleteVariant {
        flag: i64,
        key: String,
        variant_id: i64,
        variant: String,
    },
    CreateSegment {
        flag: FlagRef,
        key: String,
        new: usize,
        description: String,
        rollout: i64,
    },
    UpdateSegment {
        flag: i64,
        key: String,
        segment: i64,
        description: String,
        rollout: i64,
    },
    DeleteSegment {
        flag: i64,
        key: String,
        segment: i64,
    },
    CreateConstraint {
        flag: FlagRef,
        key: String,
        segment: SegRef,
        property: String,
        operator: String,
        value: String,
    },
    DeleteConstraint {
        flag: i64,
        key: String,
        segment: i64,
        constraint: i64,
    },
    SetDistributions {
        flag: FlagRef,
        key: String,
        segment: SegRef,
        percents: Vec<(String, i64)>,
    },
    ReorderSegments {
        flag: FlagRef,
        key: String,
        order: Vec<SegRef>,
    },
    SetEnabled {
        flag: FlagRef,
        key: String,
        enabled: bool,
    },
    DeleteFlag {
        flag: i64,
        key: String,
    },
}

fn norm_attachment(v: &Value) -> Value {
    match v {
        Value::Null => Value::Object(Default::default()),
        other => other.clone(),
    }
}

fn ordered(f: &Flag) -> Vec<&Segment> {
    let mut v: Vec<&Segment> = f.segments.iter().collect();
    v.sort_by_key(|s| (s.rank, s.id));
    v
}

/// Everything to do; `delete_missing` also deletes flags that git does not have.
pub fn plan(desired: &BTreeMap<String, DFlag>, actual: &[Flag], delete_missing: bool) -> Vec<Op> {
    let by_key: BTreeMap<&str, &Flag> = actual.iter().map(|f| (f.key.as_str(), f)).collect();
    let mut ops = Vec::new();
    for (key, d) in desired {
        match by_key.get(key.as_str()) {
            Some(a) => flag_ops(&mut ops, FlagRef::Id(a.id), key, d, Some(a)),
            None => {
                ops.push(Op::CreateFlag {
                    key: key.clone(),
                    description: d.description.clone(),
                });
                flag_ops(&mut ops, FlagRef::New(key.clone()), key, d, None);
            }
        }
    }
    if delete_missing {
        for a in actual {
            if !desired.contains_key(&a.key) {
                ops.push(Op::DeleteFlag {
                    flag: a.id,
                    key: a.key.clone(),
                });
            }
        }
    }
    ops
}

fn flag_ops(ops: &mut Vec<Op>, fr: FlagRef, key: &str, d: &DFlag, a: Option<&Flag>) {
    let k = || key.to_string();
    let empty = Flag::default();
    let a_ = a.unwrap_or(&empty);
    // Flag attributes. A new flag gets its description at creation.
    let mut body = serde_json::Map::new();
    if a.is_some() && a_.description != d.description {
        body.insert("description".into(), Value::from(d.description.clone()));
    }
    if a_.notes != d.notes {
        body.insert("notes".into(), Value::from(d.notes.clone()));
    }
    if a_.data_records_enabled != d.data_records_enabled {
        body.insert(
            "dataRecordsEnabled".into(),
            Value::from(d.data_records_enabled),
        );
    }
    if a_.entity_type != d.entity_type {
        body.insert("entityType".into(), Value::from(d.entity_type.clone()));
    }
    if !body.is_empty() {
        ops.push(Op::UpdateFlag {
            flag: fr.clone(),
            key: k(),
            body: Value::Object(body),
        });
    }
    for t in &d.tags {
        if !a_.tags.iter().any(|x| x.value == t.value) {
            ops.push(Op::AddTag {
                flag: fr.clone(),
                key: k(),
                value: t.value.clone(),
            });
        }
    }
    for t in &a_.tags {
        if !d.tags.iter().any(|x| x.value == t.value) {
            ops.push(Op::RemoveTag {
                flag: a_.id,
                key: k(),
                tag: t.id,
                value: t.value.clone(),
            });
        }
    }
    // Variants first: distributions name them.
    for v in &d.variants {
        match a_.variants.iter().find(|x| x.key == v.key) {
            None => ops.push(Op::CreateVariant {
                flag: fr.clone(),
                key: k(),
                variant: v.key.clone(),
                attachment: norm_attachment(&v.attachment),
            }),
            Some(x) if norm_attachment(&x.attachment) != norm_attachment(&v.attachment) => ops
                .push(Op::UpdateVariant {
                    flag: a_.id,
                    key: k(),
                    variant_id: x.id,
                    variant: v.key.clone(),
                    attachment: norm_attachment(&v.attachment),
                }),
            Some(_) => {}
        }
    }
    // Segments, matched by position in evaluation order.
    let want: Vec<&DSegment> = d.ordered_segments();
    let have = ordered(a_);
    let mut order = Vec::new();
    let mut new_count = 0;
    for (i, s) in want.iter().enumerate() {
        let sref = match have.get(i) {
            Some(h) => {
                if h.description != s.description || h.rollout_percent != s.rollout_percent {
                    ops.push(Op::UpdateSegment {
                        flag: a_.id,
                        key: k(),
                        segment: h.id,
                        description: s.description.clone(),
                        rollout: s.rollout_percent,
                    });
                }
                for c in &h.constraints {
                    if !s.constraints.iter().any(|x| {
                        x.property == c.property && x.operator == c.operator && x.value == c.value
                    }) {
                        ops.push(Op::DeleteConstraint {
                            flag: a_.id,
                            key: k(),
                            segment: h.id,
                            constraint: c.id,
                        });
                    }
                }
                SegRef::Id(h.id)
            }
            None => {
                new_count += 1;
                ops.push(Op::CreateSegment {
                    flag: fr.clone(),
                    key: k(),
                    new: new_count,
                    description: s.description.clone(),
                    rollout: s.rollout_percent,
                });
                SegRef::New(new_count)
            }
        };
        let existing = have.get(i).map(|h| h.constraints.as_slice()).unwrap_or(&[]);
        for c in &s.constraints {
            if !existing
                .iter()
                .any(|x| x.property == c.property && x.operator == c.operator && x.value == c.value)
            {
                ops.push(Op::CreateConstraint {
                    flag: fr.clone(),
                    key: k(),
                    segment: sref.clone(),
                    property: c.property.clone(),
                    operator: c.operator.clone(),
                    value: c.value.clone(),
                });
            }
        }
        let mut want_d: Vec<(String, i64)> = s
            .distributions
            .iter()
            .map(|x| (x.variant_key.clone(), x.percent))
            .collect();
        want_d.sort();
        let mut have_d: Vec<(String, i64)> = have
            .get(i)
            .map(|h| {
                h.distributions
                    .iter()
                    .map(|x| (x.variant_key.clone(), x.percent))
                    .collect()
            })
            .unwrap_or_default();
        have_d.sort();
        // Flagr cannot store an empty set (the sum must be 100): an empty desired set on an
        // existing segment is left as it is.
        if want_d != have_d && !want_d.is_empty() {
            ops.push(Op::SetDistributions {
                flag: fr.clone(),
                key: k(),
                segment: sref.clone(),
                percents: want_d,
            });
        }
        order.push(sref);
    }
    for h in have.iter().skip(want.len()) {
        ops.push(Op::DeleteSegment {
            flag: a_.id,
            key: k(),
            segment: h.id,
        });
    }
    // Flagr ranks new segments 999 and keeps old ranks: set the order when it is not already it.
    let ranks_right = want.len() <= have.len()
        && have
            .iter()
            .take(want.len())
            .enumerate()
            .all(|(i, h)| h.rank == i as i64);
    if !order.is_empty() && (new_count > 0 || !ranks_right) {
        ops.push(Op::ReorderSegments {
            flag: fr.clone(),
            key: k(),
            order,
        });
    }
    // Variants git no longer has go last, after distributions moved away from them.
    for x in &a_.variants {
        if !d.variants.iter().any(|v| v.key == x.key) {
            ops.push(Op::DeleteVariant {
                flag: a_.id,
                key: k(),
                variant_id: x.id,
                variant: x.key.clone(),
            });
        }
    }
    if a_.enabled != d.enabled {
        ops.push(Op::SetEnabled {
            flag: fr,
            key: k(),
            enabled: d.enabled,
        });
    }
}

#[cfg(test)]
mod tests {
    use super::super::desired;
    use super::*;

    fn desired(json: &str) -> BTreeMap<String, DFlag> {
        desired::load(&[("f.json".into(), json.as_bytes().to_vec())]).unwrap()
    }

    fn names(ops: &[Op]) -> Vec<String> {
        ops.iter()
            .map(|o| {
                serde_json::to_value(o).unwrap()["op"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    }

    const D: &str = r#"{"Flags": [{"Key": "k", "Description": "d", "Enabled": true, "Tags": [{"Value": "web"}],
        "Variants": [{"Key": "on"}, {"Key": "off"}],
        "Segments": [{"Description": "all", "Rank": 0, "RolloutPercent": 100,
          "Constraints": [{"Property": "s", "Operator": "EQ", "Value": "1"}],
          "Distributions": [{"VariantKey": "on", "Percent": 100}]}]}]}"#;

    #[test]
    fn a_new_flag_is_built_in_order() {
        let ops = plan(&desired(D), &[], false);
        assert_eq!(
            names(&ops),
            [
                "create_flag",
                "add_tag",
                "create_variant",
                "create_variant",
                "create_segment",
                "create_constraint",
                "set_distributions",
                "reorder_segments",
                "set_enabled"
            ]
        );
    }

    #[test]
    fn a_matching_flag_needs_nothing_and_drift_is_set_back() {
        let actual: Flag = serde_json::from_value(serde_json::json!({
            "id": 3, "key": "k", "description": "d", "enabled": true, "tags": [{"id": 1, "value": "web"}],
            "variants": [{"id": 1, "key": "on", "attachment": {}}, {"id": 2, "key": "off", "attachment": null}],
            "segments": [{"id": 5, "description": "all", "rank": 0, "rolloutPercent": 100,
                "constraints": [{"id": 9, "property": "s", "operator": "EQ", "value": "1"}],
                "distributions": [{"id": 4, "variantID": 1, "variantKey": "on", "percent": 100}]}]
        })).unwrap();
        assert!(plan(&desired(D), std::slice::from_ref(&actual), false).is_empty());
        let mut drifted = actual.clone();
        drifted.enabled = false;
        drifted.segments[0].rollout_percent = 10;
        drifted.variants.push(crate::flagr::model::Variant {
            id: 7,
            key: "extra".into(),
            attachment: Value::Null,
        });
        let ops = plan(&desired(D), &[drifted], false);
        assert_eq!(
            names(&ops),
            ["update_segment", "delete_variant", "set_enabled"]
        );
        let other = Flag {
            id: 8,
            key: "not-in-git".into(),
            ..Default::default()
        };
        assert_eq!(
            names(&plan(&desired(D), &[actual.clone(), other.clone()], true)),
            ["delete_flag"]
        );
        assert!(plan(&desired(D), &[actual, other], false).is_empty());
    }
}
