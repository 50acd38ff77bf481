use serde_json::json;

use super::*;

fn flag(v: Value) -> Flag {
    serde_json::from_value(v).unwrap()
}

fn base() -> Value {
    json!({
        "id": 1, "key": "k", "description": "d", "enabled": false,
        "tags": [{"id": 1, "value": "web"}],
        "variants": [{"id": 1, "key": "on", "attachment": {}}, {"id": 2, "key": "off", "attachment": null}],
        "segments": [{
            "id": 10, "description": "all", "rank": 0, "rolloutPercent": 50,
            "constraints": [{"id": 100, "property": "state", "operator": "EQ", "value": "\"CA\""}],
            "distributions": [{"id": 7, "percent": 100, "variantID": 1, "variantKey": "on"}]
        }, {
            "id": 11, "description": "rest", "rank": 1, "rolloutPercent": 100,
            "constraints": [], "distributions": []
        }]
    })
}

fn names(d: &[Draft]) -> Vec<&'static str> {
    d.iter().map(|d| d.event).collect()
}

fn with(f: impl FnOnce(&mut Value)) -> Flag {
    let mut v = base();
    f(&mut v);
    flag(v)
}

#[test]
fn no_change_no_event() {
    let b = flag(base());
    assert!(diff(&b, &b).is_empty());
    // null and {} attachments are the same to a user.
    let a = with(|v| v["variants"][1]["attachment"] = json!({}));
    assert!(diff(&b, &a).is_empty());
}

#[test]
fn enabled_and_disabled() {
    let b = flag(base());
    let a = with(|v| v["enabled"] = json!(true));
    let d = derive(&Mutation::SetEnabled { flag: 1 }, Some(&b), &a);
    assert_eq!(names(&d), ["flag.enabled"]);
    assert_eq!(
        d[0].changes["enabled"],
        json!({"before": false, "after": true})
    );
    assert_eq!(names(&diff(&a, &b)), ["flag.disabled"]);
    // Setting the same value is a no-op Flagr still records: no event.
    assert!(derive(&Mutation::SetEnabled { flag: 1 }, Some(&b), &b).is_empty());
}

#[test]
fn flag_fields_and_tags_are_flag_updated() {
    let b = flag(base());
    let a = with(|v| {
        v["description"] = json!("new");
        v["tags"] = json!([{"id": 1, "value": "web"}, {"id": 2, "value": "beta"}]);
    });
    let d = diff(&b, &a);
    assert_eq!(names(&d), ["flag.updated"]);
    assert_eq!(
        d[0].changes["description"],
        json!({"before": "d", "after": "new"})
    );
    assert_eq!(d[0].changes["tags"]["after"], json!(["beta", "web"]));
}

#[test]
fn segment_description_and_rollout_give_two_events() {
    let b = flag(base());
    let a = with(|v| {
        v["segments"][0]["description"] = json!("some");
        v["segments"][0]["rolloutPercent"] = json!(70);
    });
    let d = derive(
        &Mutation::PutSegment {
            flag: 1,
            segment: 10,
        },
        Some(&b),
        &a,
    );
    assert_eq!(
        names(&d),
        ["segment.updated", "segment.rollout_percent.updated"]
    );
    assert_eq!(
        d[1].changes["rolloutPercent"],
        json!({"before": 50, "after": 70})
    );
    assert_eq!(d[1].changes["segment_id"], 10);
    let only_rollout = with(|v| v["segments"][0]["rolloutPercent"] = json!(70));
    assert_eq!(
        names(&diff(&b, &only_rollout)),
        ["segment.rollout_percent.updated"]
    );
}

#[test]
fn reorder_is_segment_updated_per_moved_segment() {
    let b = flag(base());
    let a = with(|v| {
        v["segments"][0]["rank"] = json!(1);
        v["segments"][1]["rank"] = json!(0);
    });
    let d = diff(&b, &a);
    assert_eq!(names(&d), ["segment.updated", "segment.updated"]);
    assert_eq!(d[0].changes["rank"], json!({"before": 0, "after": 1}));
}

#[test]
fn variant_rename_cascades_to_distributions() {
    let b = flag(base());
    let a = with(|v| {
        v["variants"][0]["key"] = json!("enabled");
        v["segments"][0]["distributions"][0]["variantKey"] = json!("enabled");
    });
    let d = diff(&b, &a);
    assert_eq!(names(&d), ["variant.updated", "distribution.updated"]);
    let att = with(|v| v["variants"][0]["attachment"] = json!({"color": "blue"}));
    assert_eq!(names(&diff(&b, &att)), ["variant.attachment.updated"]);
    let both = with(|v| {
        v["variants"][1]["key"] = json!("x");
        v["variants"][1]["attachment"] = json!({"a": 1});
    });
    assert_eq!(
        names(&diff(&b, &both)),
        ["variant.updated", "variant.attachment.updated"]
    );
}

#[test]
fn creates_and_deletes_of_children() {
    let b = flag(base());
    let a = with(|v| {
        v["variants"]
            .as_array_mut()
            .unwrap()
            .push(json!({"id": 3, "key": "new"}));
        v["segments"][0]["constraints"]
            .as_array_mut()
            .unwrap()
            .push(json!({"id": 101, "property": "age", "operator": "GT", "value": "18"}));
        v["segments"]
            .as_array_mut()
            .unwrap()
            .push(json!({"id": 12, "description": "x", "rank": 999, "rolloutPercent": 0}));
    });
    assert_eq!(
        names(&diff(&b, &a)),
        ["variant.created", "segment.created", "constraint.created"]
    );
    assert_eq!(
        names(&diff(&a, &b)),
        ["variant.deleted", "segment.deleted", "constraint.deleted"]
    );
    let c = with(|v| v["segments"][0]["constraints"][0]["value"] = json!("\"NY\""));
    let d = diff(&b, &c);
    assert_eq!(names(&d), ["constraint.updated"]);
    assert_eq!(d[0].changes["constraint"]["after"]["value"], "\"NY\"");
}

#[test]
fn distributions_compare_by_variant_not_row_id() {
    let b = flag(base());
    let same_new_rows = with(|v| v["segments"][0]["distributions"][0]["id"] = json!(99));
    assert!(diff(&b, &same_new_rows).is_empty());
    let split = with(|v| {
        v["segments"][0]["distributions"] = json!([
            {"id": 20, "percent": 60, "variantID": 1, "variantKey": "on"},
            {"id": 21, "percent": 40, "variantID": 2, "variantKey": "off"}]);
    });
    let d = diff(&b, &split);
    assert_eq!(names(&d), ["distribution.updated"]);
    assert_eq!(d[0].changes["segment_id"], 10);
}

#[test]
fn lifecycle_routes() {
    let f = flag(base());
    assert_eq!(
        names(&derive(&Mutation::CreateFlag, None, &f)),
        ["flag.created"]
    );
    assert_eq!(
        names(&derive(&Mutation::DeleteFlag { flag: 1 }, Some(&f), &f)),
        ["flag.deleted"]
    );
    let r = derive(&Mutation::RestoreFlag { flag: 1 }, None, &f);
    assert_eq!(names(&r), ["flag.created"]);
    assert_eq!(r[0].changes["restored"], true);
    let on = with(|v| v["enabled"] = json!(true));
    assert_eq!(
        names(&derive(&Mutation::DuplicateFlag { flag: 1 }, None, &on)),
        ["flag.created", "flag.enabled"]
    );
    assert_eq!(
        names(&derive(&Mutation::DuplicateFlag { flag: 1 }, None, &f)),
        ["flag.created"]
    );
}

#[test]
fn without_before_the_route_decides() {
    let f = flag(base());
    assert_eq!(
        names(&derive(&Mutation::PutFlag { flag: 1 }, None, &f)),
        ["flag.updated"]
    );
    assert_eq!(
        names(&derive(&Mutation::SetEnabled { flag: 1 }, None, &f)),
        ["flag.disabled"]
    );
    assert_eq!(
        names(&derive(
            &Mutation::PutDistributions {
                flag: 1,
                segment: 10
            },
            None,
            &f
        )),
        ["distribution.updated"]
    );
}

#[test]
fn flagr_notice_matches_crud_go() {
    let f = flag(base());
    let n = flagr_notice(
        &Mutation::PutVariant {
            flag: 1,
            variant: 2,
        },
        &f,
        None,
    );
    assert_eq!(
        (
            n.operation,
            n.component_type,
            n.component_id,
            n.component_key.as_str()
        ),
        ("update", "variant", 2, "off")
    );
    let tag = json!({"id": 5, "value": "beta"});
    let n = flagr_notice(&Mutation::CreateTag { flag: 1 }, &f, Some(&tag));
    assert_eq!(
        (
            n.operation,
            n.component_type,
            n.component_id,
            n.component_key.as_str()
        ),
        ("create", "tag", 5, "beta")
    );
    let n = flagr_notice(&Mutation::ReorderSegments { flag: 1 }, &f, None);
    assert_eq!(
        (n.operation, n.component_type, n.component_id),
        ("update", "segment", 0)
    );
    let n = flagr_notice(&Mutation::RestoreFlag { flag: 1 }, &f, None);
    assert_eq!((n.operation, n.component_key.as_str()), ("restore", "k"));
}

#[test]
fn every_event_name_is_reachable_and_listed() {
    for n in EVENT_NAMES {
        assert!(n
            .chars()
            .all(|c| c.is_ascii_lowercase() || c == '.' || c == '_'));
    }
    assert_eq!(EVENT_NAMES.len(), 17);
}
