//! One event as a sentence a person wants in a chat channel, e.g. "alice@example.com rolled out
//! segment “beta” of checkout-button from 20 % to 100 %".
//!
//! In: the event name, its `changes`, the whole flag after it, the actor. Out: the sentence.
//! Never: fails: a field it cannot find is left out of the sentence, not guessed.

use serde_json::Value;

/// The sentence for one event.
pub fn sentence(event: &str, changes: &Value, flag: &Value, actor: &str, flag_key: &str) -> String {
    let who = if actor.is_empty() { "someone" } else { actor };
    let key = if flag_key.is_empty() {
        flag["key"].as_str().unwrap_or("a flag")
    } else {
        flag_key
    };
    let ba = |field: &str, side: &str| &changes[field][side];
    let segment = || segment_name(changes, flag);
    let what = match event {
        "flag.created" => format!("created flag {key}"),
        "flag.deleted" => format!("deleted flag {key}"),
        "flag.enabled" => format!("enabled {key}"),
        "flag.disabled" => format!("disabled {key}"),
        "flag.updated" => {
            let fields: Vec<&str> = changes
                .as_object()
                .map(|m| m.keys().map(String::as_str).collect())
                .unwrap_or_default();
            format!("changed the {} of {key}", list(&fields))
        }
        "variant.created" => format!(
            "added variant “{}” to {key}",
            text(&ba("variant", "after")["key"])
        ),
        "variant.updated" => format!(
            "renamed variant “{}” of {key} to “{}”",
            text(ba("key", "before")),
            text(ba("key", "after"))
        ),
        "variant.attachment.updated" => format!(
            "changed the attachment of variant {} of {key}",
            variant_name(changes, flag)
        ),
        "variant.deleted" => format!(
            "removed variant “{}” from {key}",
            text(&ba("variant", "before")["key"])
        ),
        "segment.created" => format!(
            "added segment “{}” to {key}",
            text(&ba("segment", "after")["description"])
        ),
        "segment.updated" => format!("changed segment {} of {key}", segment()),
        "segment.rollout_percent.updated" => format!(
            "rolled out segment {} of {key} from {} % to {} %",
            segment(),
            text(ba("rolloutPercent", "before")),
            text(ba("rolloutPercent", "after"))
        ),
        "segment.deleted" => format!(
            "removed segment “{}” from {key}",
            text(&ba("segment", "before")["description"])
        ),
        "constraint.created" => format!(
            "added the constraint {} to segment {} of {key}",
            constraint(ba("constraint", "after")),
            segment()
        ),
        "constraint.updated" => format!(
            "changed a constraint of segment {} of {key} from {} to {}",
            segment(),
            constraint(ba("constraint", "before")),
            constraint(ba("constraint", "after"))
        ),
        "constraint.deleted" => format!(
            "removed the constraint {} from segment {} of {key}",
            constraint(ba("constraint", "before")),
            segment()
        ),
        "distribution.updated" => format!(
            "set the distribution of segment {} of {key} to {}",
            segment(),
            distribution(ba("distributions", "after"))
        ),
        other => format!("made a change to {key} ({other})"),
    };
    format!("{who} {what}")
}

/// A JSON value as text: strings without quotes, anything else as JSON.
fn text(v: &Value) -> String {
    match v {
        Value::String(s) => s.clone(),
        Value::Null => "?".into(),
        v => v.to_string(),
    }
}

fn list(items: &[&str]) -> String {
    match items {
        [] => "settings".into(),
        [one] => (*one).to_string(),
        [init @ .., last] => format!("{} and {last}", init.join(", ")),
    }
}

/// “description” of the segment the change names, or its id.
fn segment_name(changes: &Value, flag: &Value) -> String {
    named(flag, "segments", &changes["segment_id"], "description")
}

/// “key” of the variant the change names, or its id.
fn variant_name(changes: &Value, flag: &Value) -> String {
    named(flag, "variants", &changes["variant_id"], "key")
}

/// The `field` of the item of `flag[list]` whose id is `id`, quoted; else `#id`.
fn named(flag: &Value, list: &str, id: &Value, field: &str) -> String {
    let found = flag[list]
        .as_array()
        .and_then(|items| items.iter().find(|i| &i["id"] == id))
        .and_then(|i| i[field].as_str());
    match found {
        Some(name) => format!("“{name}”"),
        None => format!("#{}", text(id)),
    }
}

fn constraint(c: &Value) -> String {
    format!(
        "{} {} {}",
        text(&c["property"]),
        text(&c["operator"]),
        text(&c["value"])
    )
}

fn distribution(d: &Value) -> String {
    let parts: Vec<String> = d
        .as_array()
        .map(|a| {
            a.iter()
                .map(|x| format!("{} {} %", text(&x["variantKey"]), text(&x["percent"])))
                .collect()
        })
        .unwrap_or_default();
    if parts.is_empty() {
        "nothing".into()
    } else {
        parts.join(", ")
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn sentences_people_want_in_a_channel() {
        let flag = json!({"key": "checkout-button", "segments": [{"id": 3, "description": "beta"}],
            "variants": [{"id": 9, "key": "blue"}]});
        let s = |event: &str, changes: Value| {
            sentence(
                event,
                &changes,
                &flag,
                "alice@example.com",
                "checkout-button",
            )
        };
        assert_eq!(
            s(
                "segment.rollout_percent.updated",
                json!({"segment_id": 3, "rolloutPercent": {"before": 20, "after": 100}})
            ),
            "alice@example.com rolled out segment “beta” of checkout-button from 20 % to 100 %"
        );
        assert_eq!(
            s("constraint.created", json!({"segment_id": 3, "constraint": {"before": null, "after": {"property": "state", "operator": "EQ", "value": "\"CA\""}}})),
            "alice@example.com added the constraint state EQ \"CA\" to segment “beta” of checkout-button"
        );
        assert_eq!(
            s("distribution.updated", json!({"segment_id": 3, "distributions": {"before": [], "after": [{"variantKey": "blue", "percent": 100}]}})),
            "alice@example.com set the distribution of segment “beta” of checkout-button to blue 100 %"
        );
        assert_eq!(
            s("flag.updated", json!({"description": {}, "notes": {}})),
            "alice@example.com changed the description and notes of checkout-button"
        );
        assert_eq!(
            sentence("flag.enabled", &json!({}), &flag, "", ""),
            "someone enabled checkout-button"
        );
        for name in crate::events::EVENT_NAMES {
            assert!(
                !s(name, json!({})).contains("made a change"),
                "{name} has its own sentence"
            );
        }
    }
}
