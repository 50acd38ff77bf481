//! Flagr's evaluation answers, read in place: strings borrowed from the answer's bytes (copied
//! only when they carry escapes), the flag's tags and the entity's context kept as raw JSON.
//!
//! In: the bytes of a `POST /evaluation` or `/evaluation/batch` answer. Out: [`EvalResult`]s.
//! Never: builds a `serde_json::Value` of the answer (the debug logs are skipped unread).

use std::borrow::Cow;
use std::collections::BTreeMap;

use serde::Deserialize;
use serde_json::value::RawValue;

/// One result; a batch answer is a result whose `evaluationResults` holds the others.
#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct EvalResult<'a> {
    #[serde(rename = "evaluationResults", borrow)]
    pub(super) results: Option<Vec<EvalResult<'a>>>,
    #[serde(rename = "evalContext", borrow)]
    pub(super) context: Option<EvalContext<'a>>,
    #[serde(rename = "evalDebugLog", borrow)]
    pub(super) debug: Option<DebugLog<'a>>,
    #[serde(rename = "flagID")]
    pub(super) flag_id: Option<i64>,
    #[serde(rename = "flagKey", borrow)]
    pub(super) flag_key: Option<Text<'a>>,
    #[serde(rename = "flagSnapshotID")]
    pub(super) snapshot: Option<i64>,
    #[serde(rename = "segmentID")]
    pub(super) segment: Option<i64>,
    #[serde(rename = "variantID")]
    pub(super) variant: Option<i64>,
    #[serde(rename = "variantKey", borrow)]
    pub(super) variant_key: Option<Text<'a>>,
    #[serde(rename = "flagTags", borrow)]
    pub(super) tags: Option<&'a RawValue>,
    #[serde(rename = "dataRecordsEnabled")]
    pub(super) data_records_enabled: Option<bool>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct EvalContext<'a> {
    #[serde(rename = "entityID", borrow)]
    pub(super) entity_id: Option<Text<'a>>,
    #[serde(rename = "entityType", borrow)]
    pub(super) entity_type: Option<Text<'a>>,
    /// Raw: Flagr echoes whatever the client sent (`[]` from some clients), and one odd
    /// context must not make the whole answer unreadable.
    #[serde(rename = "entityContext", borrow)]
    pub(super) entity_context: Option<&'a RawValue>,
}

#[derive(Deserialize, Default)]
#[serde(default)]
pub(super) struct DebugLog<'a> {
    #[serde(borrow)]
    pub(super) msg: Option<Text<'a>>,
}

/// An entity context's keys, sorted (as records have always shown them); empty when it is not
/// a JSON object.
pub(super) fn context_map<'a>(raw: Option<&'a RawValue>) -> BTreeMap<Text<'a>, &'a RawValue> {
    raw.and_then(|r| serde_json::from_str(r.get()).ok())
        .unwrap_or_default()
}

/// The answer's results: the batch's, or the single one.
pub(super) fn parse(raw: &[u8]) -> Result<Vec<EvalResult<'_>>, serde_json::Error> {
    // UTF-8 checked once for the whole answer: reading from a `str`, serde_json does not check
    // each string (and each key) again, as it does reading from bytes.
    let text = std::str::from_utf8(raw).map_err(serde::de::Error::custom)?;
    let mut top: EvalResult<'_> = serde_json::from_str(text)?;
    Ok(match top.results.take() {
        Some(v) => v,
        None => vec![top],
    })
}

/// A string borrowed from the answer's bytes, or owned when it carried escapes.
#[derive(Debug, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Text<'a>(pub(super) Cow<'a, str>);

impl std::ops::Deref for Text<'_> {
    type Target = str;
    fn deref(&self) -> &str {
        &self.0
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Text<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        struct V;
        impl<'de> serde::de::Visitor<'de> for V {
            type Value = Text<'de>;
            fn expecting(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
                f.write_str("a string")
            }
            fn visit_borrowed_str<E>(self, v: &'de str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Borrowed(v)))
            }
            fn visit_str<E>(self, v: &str) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v.to_string())))
            }
            fn visit_string<E>(self, v: String) -> Result<Self::Value, E> {
                Ok(Text(Cow::Owned(v)))
            }
        }
        d.deserialize_str(V)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strings_are_borrowed_unless_escaped_and_batches_unwrap() {
        let raw = br#"{"evaluationResults": [
            {"flagKey": "plain", "evalContext": {"entityID": "a\"b", "entityContext": {"z": 1, "a": [2]}}},
            {"flagKey": "two", "flagTags": null, "evalDebugLog": {"segmentDebugLogs": [{"msg": "x"}]}}
        ]}"#;
        let v = parse(raw).unwrap();
        assert_eq!(v.len(), 2);
        assert!(matches!(
            v[0].flag_key.as_ref().unwrap().0,
            Cow::Borrowed("plain")
        ));
        let ctx = v[0].context.as_ref().unwrap();
        assert!(matches!(ctx.entity_id.as_ref().unwrap().0, Cow::Owned(ref s) if s == "a\"b"));
        let map = context_map(ctx.entity_context);
        let keys: Vec<&str> = map.keys().map(|k| &**k).collect();
        assert_eq!(keys, ["a", "z"]);
        // Whatever else a client sent as its context: no keys, and the answer still reads.
        let odd = parse(br#"{"evalContext": {"entityID": "x", "entityContext": []}, "flagID": 1}"#)
            .unwrap();
        assert!(context_map(odd[0].context.as_ref().unwrap().entity_context).is_empty());
        assert!(v[1].tags.is_none() && v[1].debug.as_ref().unwrap().msg.is_none());
        let single = parse(br#"{"flagID": 3, "variantKey": "on"}"#).unwrap();
        assert_eq!((single.len(), single[0].flag_id), (1, Some(3)));
        assert!(parse(b"[1, 2]").is_err());
        assert!(parse(b"{\"flagKey\": \"\xff\"}").is_err(), "not UTF-8");
        assert!(parse(br#"{"evaluationResults": 5}"#).is_err());
    }
}
