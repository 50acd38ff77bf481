//! Flagr's REST shapes (reference §2), read leniently: unknown fields are ignored, missing ones
//! default, so a newer or older Flagr never breaks derivation.
//!
//! In: JSON from Flagr. Out: typed views used to compare two states of a flag.
//! Never: re-serialises a flag for payloads; the raw JSON Flagr sent is what receivers get.

use serde::{Deserialize, Serialize};
use serde_json::Value;

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct Flag {
    pub id: i64,
    pub key: String,
    pub description: String,
    pub enabled: bool,
    pub notes: String,
    pub data_records_enabled: bool,
    pub entity_type: String,
    #[serde(deserialize_with = "null_as_default")]
    pub segments: Vec<Segment>,
    #[serde(deserialize_with = "null_as_default")]
    pub variants: Vec<Variant>,
    #[serde(deserialize_with = "null_as_default")]
    pub tags: Vec<Tag>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct Segment {
    pub id: i64,
    pub description: String,
    pub rank: i64,
    pub rollout_percent: i64,
    #[serde(deserialize_with = "null_as_default")]
    pub constraints: Vec<Constraint>,
    #[serde(deserialize_with = "null_as_default")]
    pub distributions: Vec<Distribution>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct Constraint {
    pub id: i64,
    pub property: String,
    pub operator: String,
    pub value: String,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, rename_all = "camelCase")]
pub struct Distribution {
    pub id: i64,
    pub percent: i64,
    #[serde(rename = "variantID")]
    pub variant_id: i64,
    pub variant_key: String,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct Variant {
    pub id: i64,
    pub key: String,
    /// `{}` or `null` both mean "no attachment" in Flagr; compared as JSON values.
    pub attachment: Value,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct Tag {
    pub id: i64,
    pub value: String,
}

/// One row of `GET /flags/{id}/snapshots`.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct Snapshot {
    pub id: i64,
    pub flag: Value,
    pub updated_by: String,
    pub updated_at: String,
}

/// One row of `GET /flags` (or `?deleted=true`): what the changelog follower compares.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(default, rename_all = "camelCase")]
pub struct ListedFlag {
    pub id: i64,
    pub key: String,
    /// Flagr's recording switch: impressions follow it by default.
    pub data_records_enabled: bool,
    pub entity_type: String,
    /// Moved by every mutation of the flag (Flagr saves the flag with each snapshot).
    pub updated_at: String,
    /// Set by the caller from the list it came from.
    #[serde(skip)]
    pub deleted: bool,
}

/// A flag's state: the typed view for comparing plus the raw JSON for payloads.
#[derive(Clone, Debug, Default)]
pub struct FlagState {
    pub flag: Flag,
    pub raw: Value,
}

impl FlagState {
    pub fn from_value(raw: Value) -> Result<Self, serde_json::Error> {
        Ok(Self {
            flag: Flag::deserialize(&raw)?,
            raw,
        })
    }

    pub fn tag_values(&self) -> Vec<String> {
        self.flag.tags.iter().map(|t| t.value.clone()).collect()
    }
}

impl Variant {
    /// Flagr stores "no attachment" as `{}` or `null`; they are the same to a user.
    pub fn attachment_normalised(&self) -> &Value {
        static EMPTY: std::sync::OnceLock<Value> = std::sync::OnceLock::new();
        match &self.attachment {
            Value::Null => EMPTY.get_or_init(|| Value::Object(Default::default())),
            v => v,
        }
    }
}

fn null_as_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_reference_flag_and_tolerates_nulls() {
        let v: Value = serde_json::json!({
            "id": 1, "key": "k", "description": "d", "enabled": true, "extra": 5,
            "segments": [{"id": 4, "rank": 0, "rolloutPercent": 100, "constraints": null,
                          "distributions": [{"id": 7, "percent": 50, "variantID": 1, "variantKey": "c"}]}],
            "variants": [{"id": 1, "key": "c", "attachment": null}],
            "tags": null
        });
        let s = FlagState::from_value(v).unwrap();
        assert_eq!(s.flag.segments[0].distributions[0].variant_id, 1);
        assert!(s.flag.segments[0].constraints.is_empty());
        assert!(s.flag.tags.is_empty());
        assert_eq!(
            s.flag.variants[0].attachment_normalised(),
            &serde_json::json!({})
        );
    }
}
