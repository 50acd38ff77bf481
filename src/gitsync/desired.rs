//! The desired state kept in git: Flagr's JSON flag format (`{"Flags": [...]}`, as in Flagr's
//! `flagr_json_flag_spec` and its eval-cache export; ids optional), validated the way Flagr's
//! own validator does before anything is applied.
//!
//! In: the files under the watched folder at one commit. Out: the desired flags, or every
//! problem found, each naming file, flag and problem.
//! Never: accepts part of a commit: one problem refuses it all.

use std::collections::{BTreeMap, HashSet};

use serde::{Deserialize, Serialize};
use serde_json::Value;

use super::rules;

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default)]
pub struct File {
    #[serde(rename = "Flags", alias = "flags")]
    pub flags: Vec<DFlag>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, rename_all = "PascalCase")]
pub struct DFlag {
    #[serde(alias = "key")]
    pub key: String,
    #[serde(alias = "description")]
    pub description: String,
    #[serde(alias = "enabled")]
    pub enabled: bool,
    #[serde(alias = "notes")]
    pub notes: String,
    #[serde(alias = "dataRecordsEnabled")]
    pub data_records_enabled: bool,
    #[serde(alias = "entityType")]
    pub entity_type: String,
    #[serde(alias = "tags", deserialize_with = "null_default")]
    pub tags: Vec<DTag>,
    #[serde(alias = "variants", deserialize_with = "null_default")]
    pub variants: Vec<DVariant>,
    #[serde(alias = "segments", deserialize_with = "null_default")]
    pub segments: Vec<DSegment>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, rename_all = "PascalCase")]
pub struct DTag {
    #[serde(alias = "value")]
    pub value: String,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, rename_all = "PascalCase")]
pub struct DVariant {
    #[serde(alias = "key")]
    pub key: String,
    #[serde(alias = "attachment")]
    pub attachment: Value,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, rename_all = "PascalCase")]
pub struct DSegment {
    #[serde(alias = "description")]
    pub description: String,
    #[serde(alias = "rank")]
    pub rank: i64,
    #[serde(alias = "rolloutPercent")]
    pub rollout_percent: i64,
    #[serde(alias = "constraints", deserialize_with = "null_default")]
    pub constraints: Vec<DConstraint>,
    #[serde(alias = "distributions", deserialize_with = "null_default")]
    pub distributions: Vec<DDistribution>,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq, Eq, Hash, PartialOrd, Ord)]
#[serde(default, rename_all = "PascalCase")]
pub struct DConstraint {
    #[serde(alias = "property")]
    pub property: String,
    #[serde(alias = "operator")]
    pub operator: String,
    #[serde(alias = "value")]
    pub value: String,
}

#[derive(Clone, Debug, Default, Deserialize, Serialize, PartialEq)]
#[serde(default, rename_all = "PascalCase")]
pub struct DDistribution {
    #[serde(alias = "variantKey")]
    pub variant_key: String,
    #[serde(alias = "percent")]
    pub percent: i64,
}

fn null_default<'de, D, T>(d: D) -> Result<T, D::Error>
where
    D: serde::Deserializer<'de>,
    T: Default + Deserialize<'de>,
{
    Ok(Option::<T>::deserialize(d)?.unwrap_or_default())
}

/// One thing wrong with a commit.
#[derive(Clone, Debug, PartialEq, Eq, Serialize)]
pub struct Problem {
    pub file: String,
    pub flag: String,
    pub problem: String,
}

/// Parses and validates every file; the flags are keyed (and so sorted) by flag key.
pub fn load(files: &[(String, Vec<u8>)]) -> Result<BTreeMap<String, DFlag>, Vec<Problem>> {
    let mut problems = Vec::new();
    let mut out: BTreeMap<String, DFlag> = BTreeMap::new();
    let mut origin: BTreeMap<String, String> = BTreeMap::new();
    for (name, bytes) in files {
        let p = |flag: &str, problem: String| Problem {
            file: name.clone(),
            flag: flag.to_string(),
            problem,
        };
        let file: File = match serde_json::from_slice(bytes) {
            Ok(f) => f,
            Err(e) => {
                problems.push(p("", format!("not Flagr's JSON flag format: {e}")));
                continue;
            }
        };
        for f in file.flags {
            let mut bad = |m: String| problems.push(p(&f.key, m));
            for checked in [
                rules::key("key", &f.key),
                rules::description("the flag", &f.description),
                rules::entity_type(&f.entity_type),
            ] {
                if let Err(m) = checked {
                    bad(m);
                }
            }
            if let Some(first) = origin.get(&f.key) {
                bad(format!("key is defined twice (also in {first})"));
            }
            let mut vkeys = HashSet::new();
            for v in &f.variants {
                if let Err(m) = rules::key("variant key", &v.key) {
                    bad(m);
                }
                if !vkeys.insert(v.key.as_str()) {
                    bad(format!("variant `{}` is defined twice", v.key));
                }
                if !(v.attachment.is_object() || v.attachment.is_null()) {
                    bad(format!(
                        "variant `{}`: attachment must be a JSON object",
                        v.key
                    ));
                }
            }
            let mut tags = HashSet::new();
            for t in &f.tags {
                if let Err(m) = rules::tag(&t.value) {
                    bad(m);
                } else if !tags.insert(t.value.as_str()) {
                    bad(format!("tag `{}` is repeated", t.value));
                }
            }
            for (i, s) in f.segments.iter().enumerate() {
                let seg = format!("segment {} (`{}`)", i + 1, s.description);
                if let Err(m) = rules::description(&seg, &s.description) {
                    bad(m);
                }
                if !(0..=100).contains(&s.rollout_percent) {
                    bad(format!(
                        "{seg}: rolloutPercent {} is outside 0..100",
                        s.rollout_percent
                    ));
                }
                for c in &s.constraints {
                    let checked = rules::property(&c.property)
                        .and_then(|()| rules::value(&c.operator, &c.value));
                    if let Err(m) = checked {
                        bad(format!("{seg}: {m}"));
                    }
                }
                if !s.distributions.is_empty() {
                    let sum: i64 = s.distributions.iter().map(|d| d.percent).sum();
                    if sum != 100 {
                        bad(format!("{seg}: distributions sum to {sum}, not 100"));
                    }
                    for d in &s.distributions {
                        if !vkeys.contains(d.variant_key.as_str()) {
                            bad(format!("{seg}: distribution names variant `{}`, which the flag does not have", d.variant_key));
                        }
                        if !(0..=100).contains(&d.percent) {
                            bad(format!("{seg}: percent {} is outside 0..100", d.percent));
                        }
                    }
                }
            }
            origin.entry(f.key.clone()).or_insert_with(|| name.clone());
            out.entry(f.key.clone()).or_insert(f);
        }
    }
    if problems.is_empty() {
        Ok(out)
    } else {
        Err(problems)
    }
}

impl DFlag {
    /// Segments in the order Flagr evaluates them (by rank, then as written).
    pub fn ordered_segments(&self) -> Vec<&DSegment> {
        let mut v: Vec<(usize, &DSegment)> = self.segments.iter().enumerate().collect();
        v.sort_by_key(|(i, s)| (s.rank, *i));
        v.into_iter().map(|(_, s)| s).collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn f(name: &str, json: &str) -> (String, Vec<u8>) {
        (name.to_string(), json.as_bytes().to_vec())
    }

    #[test]
    fn reads_flagrs_format_with_and_without_ids() {
        let good = r#"{"Flags": [{"ID": 7, "Key": "checkout", "Description": "d", "Enabled": true,
            "Tags": [{"Value": "web"}],
            "Variants": [{"Key": "on", "Attachment": {"c": 1}}, {"Key": "off", "Attachment": null}],
            "Segments": [{"Description": "all", "Rank": 0, "RolloutPercent": 100,
                "Constraints": [{"Property": "state", "Operator": "EQ", "Value": "\"CA\""}],
                "Distributions": [{"VariantKey": "on", "Percent": 60}, {"VariantKey": "off", "Percent": 40}]}]}]}"#;
        let flags = load(&[
            f("flags/a.json", good),
            f(
                "flags/b.json",
                r#"{"Flags": [{"Key": "other", "Description": "o"}]}"#,
            ),
        ])
        .unwrap();
        assert_eq!(flags.len(), 2);
        assert_eq!(flags["checkout"].segments[0].distributions[1].percent, 40);
    }

    #[test]
    fn every_problem_names_file_flag_and_problem() {
        let bad = r#"{"Flags": [{"Key": "x", "Variants": [{"Key": "on"}, {"Key": "on", "Attachment": 5}],
            "Segments": [{"Description": "s", "RolloutPercent": 120,
              "Constraints": [{"Property": "p", "Operator": "LIKE", "Value": "1"}],
              "Distributions": [{"VariantKey": "on", "Percent": 50}, {"VariantKey": "ghost", "Percent": 40}]}]},
            {"Key": "bad key!"},
            {"Key": "caf\u00e9", "Description": "d", "Tags": [{"Value": "a,b"}],
             "Segments": [{"Description": "", "RolloutPercent": 1,
               "Constraints": [{"Property": "state", "Operator": "EQ", "Value": "CA"},
                               {"Property": "a b", "Operator": "EQ", "Value": "1"}]}]}]}"#;
        let e = load(&[
            f("a.json", bad),
            f("b.json", r#"{"Flags": [{"Key": "x"}]}"#),
            f("c.json", "{nope"),
        ])
        .unwrap_err();
        let text: Vec<String> = e
            .iter()
            .map(|p| format!("{}|{}|{}", p.file, p.flag, p.problem))
            .collect();
        let has = |s: &str| text.iter().any(|t| t.contains(s));
        assert!(has("a.json|x|variant `on` is defined twice"), "{text:#?}");
        assert!(has("attachment must be a JSON object"));
        assert!(has("rolloutPercent 120 is outside 0..100"));
        assert!(has("unknown constraint operator `LIKE`"));
        assert!(has("distributions sum to 90, not 100"));
        assert!(has("names variant `ghost`"));
        assert!(has("a.json|bad key!|key `bad key!`"));
        assert!(has("b.json|x|key is defined twice (also in a.json)"));
        assert!(has("c.json||not Flagr's JSON flag format"));
        assert!(has("a.json|x|the flag needs a description"));
        assert!(has("a.json|caf\u{e9}|key `caf\u{e9}` must be"));
        assert!(has("tag `a,b` must be"));
        assert!(has("segment 1 (``) needs a description"));
        assert!(has("constraint value `CA` is not a number"));
        assert!(has("constraint property `a b`"));
    }
}
