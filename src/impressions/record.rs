//! Impression records written straight to JSON, one after the other into one buffer: the
//! batcher copies each record's bytes into every endpoint's batch without parsing again.
//!
//! In: the fields of one record, borrowed from Flagr's answer and the call's [`Context`].
//! Out: [`Encoded`]: the records' JSON and where each ends.
//! Never: allocates per record beyond the label of a matched segment.
//!
//! `properties` is JSON inside a JSON string. It is written escaped in one pass, and its
//! entity half (`entityContext`, `entityType`) is made once per entity: a batch evaluation's
//! results come entity by entity, so consecutive records share it.

use std::collections::BTreeMap;

use serde::ser::SerializeMap;
use serde::Serialize;
use serde_json::value::RawValue;

use super::answer::{context_map, writes_back_unchanged, EvalContext, EvalResult, Raw, Text};
use super::scan::next_escape;
use super::{Context, Gate, NO_TREATMENT};

/// Records as JSON objects, back to back; record `i` is `bytes[ends[i-1]..ends[i]]`.
#[derive(Default, Debug)]
pub struct Encoded {
    pub bytes: Vec<u8>,
    pub ends: Vec<usize>,
}

impl Encoded {
    pub fn len(&self) -> usize {
        self.ends.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ends.is_empty()
    }

    /// Each record's JSON.
    pub fn records(&self) -> impl Iterator<Item = &[u8]> {
        let starts = std::iter::once(0).chain(self.ends.iter().copied());
        starts
            .zip(self.ends.iter())
            .map(|(s, e)| &self.bytes[s..*e])
    }

    /// The records as one JSON array (for tests and tools).
    pub fn to_array(&self) -> Vec<u8> {
        let mut v = Vec::with_capacity(self.bytes.len() + self.len() + 2);
        v.push(b'[');
        for (i, r) in self.records().enumerate() {
            if i > 0 {
                v.push(b',');
            }
            v.extend_from_slice(r);
        }
        v.push(b']');
        v
    }
}

/// The seed's record as serde writes it, without `properties` (the last field): the
/// reference [`Writer`]'s hand-written records are checked against.
#[cfg(test)]
#[derive(Serialize)]
#[serde(rename_all = "camelCase")]
pub(super) struct Out<'a> {
    pub key: &'a str,
    pub split: &'a str,
    pub environment_id: &'a str,
    pub environment_name: &'a str,
    pub treatment: &'a str,
    pub time: i64,
    pub bucketing_key: &'a str,
    pub label: &'a str,
    pub machine_name: &'a str,
    pub machine_ip: &'a str,
    pub split_version_number: i64,
    pub sdk: &'a str,
    pub sdk_version: &'a str,
}

/// A record's own values (the call's come from [`Fixed`]).
pub(super) struct Row<'a> {
    pub key: &'a str,
    pub split: &'a str,
    pub treatment: &'a str,
    pub time: i64,
    pub label: &'a str,
    pub split_version_number: i64,
}

/// JSON text (valid UTF-8) as the content of a JSON string, escaped as serde_json would.
fn push_escaped(out: &mut Vec<u8>, json: &[u8]) {
    out.reserve(json.len() + json.len() / 4);
    let mut run = 0;
    let mut i = next_escape(json, 0);
    while let Some(&b) = json.get(i) {
        out.extend_from_slice(&json[run..i]);
        run = i + 1;
        match b {
            b'"' => out.extend_from_slice(b"\\\""),
            b'\\' => out.extend_from_slice(b"\\\\"),
            b'\n' => out.extend_from_slice(b"\\n"),
            b'\r' => out.extend_from_slice(b"\\r"),
            b'\t' => out.extend_from_slice(b"\\t"),
            0x08 => out.extend_from_slice(b"\\b"),
            0x0c => out.extend_from_slice(b"\\f"),
            _ => out.extend_from_slice(format!("\\u{b:04x}").as_bytes()),
        }
        i = next_escape(json, run);
    }
    out.extend_from_slice(&json[run..]);
}

/// The entity half of an evaluation's `properties` (its keys sort first).
#[derive(Serialize)]
struct EntityProps<'a> {
    #[serde(rename = "entityContext")]
    entity_context: UserContext<'a>,
    #[serde(rename = "entityType")]
    entity_type: &'a str,
}

/// Flagr's `entityContext` without the keys Flagr injects (`@ts`, `@http_*`).
struct UserContext<'a>(BTreeMap<Text<'a>, &'a RawValue>);

impl Serialize for UserContext<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let mut m = s.serialize_map(None)?;
        for (k, v) in &self.0 {
            if !k.starts_with('@') {
                m.serialize_entry(&**k, v)?;
            }
        }
        m.end()
    }
}

/// The entity half of an evaluation's `properties`, without its closing brace (the flag half
/// follows). The context goes in as Flagr echoed it when serde_json would write it back the
/// same (`as_sent`, and [`super::answer::writes_back_unchanged`]), else rebuilt: its keys sorted,
/// Flagr's `@` keys left out.
fn entity_props(
    out: &mut Vec<u8>,
    raw: Option<Raw<'_>>,
    kind: &str,
    as_sent: bool,
) -> Result<(), serde_json::Error> {
    match raw.map(Raw::get) {
        Some(context) if as_sent && writes_back_unchanged(context) => {
            out.extend_from_slice(br#"{"entityContext":"#);
            out.extend_from_slice(context.as_bytes());
            out.extend_from_slice(br#","entityType":"#);
            serde_json::to_writer(&mut *out, kind)?;
        }
        _ => {
            serde_json::to_writer(
                &mut *out,
                &EntityProps {
                    entity_context: UserContext(context_map(raw)),
                    entity_type: kind,
                },
            )?;
            out.pop();
        }
    }
    Ok(())
}

/// Fuzzing: a context kept as sent is byte for byte the one rebuilt.
#[cfg(fuzzing)]
pub fn check_context_as_sent(raw: &[u8]) {
    let Ok(text) = std::str::from_utf8(raw) else {
        return;
    };
    // What the answer reader hands over: one whole value, nothing around it.
    if serde_json::from_str::<&RawValue>(text).is_err() || text.trim() != text {
        return;
    }
    if writes_back_unchanged(text) {
        let (mut sent, mut rebuilt) = (Vec::new(), Vec::new());
        let sent_ok = entity_props(&mut sent, Some(Raw(text)), "user", true).is_ok();
        let rebuilt_ok = entity_props(&mut rebuilt, Some(Raw(text)), "user", false).is_ok();
        assert!(sent_ok && rebuilt_ok);
        assert_eq!(sent, rebuilt, "{text}");
    }
}

/// The flag half of an evaluation's `properties` (keys in the order a JSON object map sorts
/// them), written escaped as it goes into the string: only the tags, as Flagr sent them (`[]`
/// when it sent none), can hold anything to escape.
fn flag_half(b: &mut Vec<u8>, flag_id: i64, tags: Option<Raw<'_>>, segment: i64, variant: i64) {
    let mut n = itoa::Buffer::new();
    b.extend_from_slice(br#",\"flagID\":"#);
    b.extend_from_slice(n.format(flag_id).as_bytes());
    b.extend_from_slice(br#",\"flagTags\":"#);
    push_escaped(b, tags.map_or("[]", |t| t.get()).as_bytes());
    b.extend_from_slice(br#",\"segmentID\":"#);
    b.extend_from_slice(n.format(segment).as_bytes());
    b.extend_from_slice(br#",\"variantID\":"#);
    b.extend_from_slice(n.format(variant).as_bytes());
    b.push(b'}');
}

/// The JSON between a record's own values, with the call's context in it: the same for every
/// record of one answer.
struct Fixed {
    /// From the end of `split` to the start of `treatment`'s value.
    environment: Vec<u8>,
    /// From the end of `label` to the start of `splitVersionNumber`'s value.
    machine: Vec<u8>,
    /// From the end of `splitVersionNumber` to the start of `properties`' value.
    sdk: Vec<u8>,
}

impl Fixed {
    fn new(c: &Context) -> Self {
        // `before` "a":"…","b":"…" `after`, the values escaped; built for every answer, so
        // without `format!`.
        let two = |before: &str, a: (&str, &str), b: (&str, &str), after: &str| {
            let mut out = Vec::with_capacity(before.len() + after.len() + 64);
            out.extend_from_slice(before.as_bytes());
            for (i, (name, v)) in [a, b].into_iter().enumerate() {
                if i > 0 {
                    out.push(b',');
                }
                out.push(b'"');
                out.extend_from_slice(name.as_bytes());
                out.extend_from_slice(b"\":\"");
                push_escaped(&mut out, v.as_bytes());
                out.push(b'"');
            }
            out.extend_from_slice(after.as_bytes());
            out
        };
        Self {
            environment: two(
                "\",",
                ("environmentId", &c.environment_id),
                ("environmentName", &c.environment_name),
                ",\"treatment\":\"",
            ),
            machine: two(
                "\",",
                ("machineName", &c.machine_name),
                ("machineIp", &c.machine_ip),
                ",\"splitVersionNumber\":",
            ),
            sdk: two(
                ",",
                ("sdk", &c.sdk),
                ("sdkVersion", &c.sdk_version),
                ",\"properties\":\"",
            ),
        }
    }
}

/// A record's fields in the seed's order up to the opening quote of `properties`' value.
fn head(b: &mut Vec<u8>, f: &Fixed, r: &Row<'_>) {
    let mut n = itoa::Buffer::new();
    b.extend_from_slice(b"{\"key\":\"");
    push_escaped(b, r.key.as_bytes());
    b.extend_from_slice(b"\",\"split\":\"");
    push_escaped(b, r.split.as_bytes());
    b.extend_from_slice(&f.environment);
    push_escaped(b, r.treatment.as_bytes());
    b.extend_from_slice(b"\",\"time\":");
    b.extend_from_slice(n.format(r.time).as_bytes());
    b.extend_from_slice(b",\"bucketingKey\":\"");
    push_escaped(b, r.key.as_bytes());
    b.extend_from_slice(b"\",\"label\":\"");
    push_escaped(b, r.label.as_bytes());
    b.extend_from_slice(&f.machine);
    b.extend_from_slice(n.format(r.split_version_number).as_bytes());
    b.extend_from_slice(&f.sdk);
}

/// Writes records into one [`Encoded`], reusing its scratch buffers.
pub(super) struct Writer<'c> {
    fixed: Fixed,
    /// When Flagr answered (an evaluation's records carry it).
    time_ms: i64,
    out: &'c mut Encoded,
    props: Vec<u8>,
    label: String,
    /// The last entity (its raw context, a NUL, its type) and its half of `properties`,
    /// escaped, without the closing brace.
    entity_key: Vec<u8>,
    entity_part: Vec<u8>,
}

impl<'c> Writer<'c> {
    pub(super) fn new(ctx: &'c Context, out: &'c mut Encoded) -> Self {
        Self {
            fixed: Fixed::new(ctx),
            time_ms: ctx.time_ms,
            out,
            props: Vec::with_capacity(256),
            label: String::new(),
            entity_key: Vec::new(),
            entity_part: Vec::new(),
        }
    }

    /// One record with the call's context filled in; `properties` is JSON text.
    pub(super) fn push(&mut self, row: &Row<'_>, properties: &str) {
        head(&mut self.out.bytes, &self.fixed, row);
        push_escaped(&mut self.out.bytes, properties.as_bytes());
        self.end();
    }

    /// Closes `properties` and the record.
    fn end(&mut self) {
        self.out.bytes.extend_from_slice(b"\"}");
        self.out.ends.push(self.out.bytes.len());
    }

    /// Makes the entity half of `properties` unless the previous record had this entity.
    fn entity(&mut self, ec: &EvalContext<'_>) -> Result<(), serde_json::Error> {
        let raw = ec.entity_context.map_or("", |r| r.get()).as_bytes();
        let kind = ec.entity_type.as_deref().unwrap_or("");
        let same = self.entity_key.len() == raw.len() + 1 + kind.len()
            && self.entity_key.starts_with(raw)
            && self.entity_key.ends_with(kind.as_bytes())
            && self.entity_key[raw.len()] == 0;
        if same && !self.entity_part.is_empty() {
            return Ok(());
        }
        self.entity_key.clear();
        self.entity_key.extend_from_slice(raw);
        self.entity_key.push(0);
        self.entity_key.extend_from_slice(kind.as_bytes());
        self.props.clear();
        entity_props(&mut self.props, ec.entity_context, kind, true)?;
        self.entity_part.clear();
        push_escaped(&mut self.entity_part, &self.props);
        Ok(())
    }

    /// The record of one evaluation result, unless it names no flag or no entity context, or
    /// its flag does not record.
    pub(super) fn evaluation(
        &mut self,
        r: &EvalResult<'_>,
        gate: &Gate<'_>,
    ) -> Result<(), serde_json::Error> {
        let Some(ec) = &r.context else {
            return Ok(());
        };
        let split = r.flag_key.as_deref().unwrap_or("");
        let flag_id = r.flag_id.unwrap_or(0);
        if split.is_empty() && flag_id == 0 {
            return Ok(());
        }
        // Flagr's answer already carries the flag's `entityType` override (it applies it before
        // evaluating, and its recorder records the answer), so only the switch is asked here.
        if gate.pass(flag_id, split, r.data_records_enabled).is_none() {
            return Ok(());
        }
        let segment = r.segment.unwrap_or(0);
        self.entity(ec)?;
        let msg = r
            .debug
            .as_ref()
            .and_then(|d| d.msg.as_deref())
            .unwrap_or("");
        let label: &str = if !msg.is_empty() {
            msg
        } else if segment > 0 {
            self.label.clear();
            self.label.push_str("segment:");
            self.label.push_str(itoa::Buffer::new().format(segment));
            &self.label
        } else {
            "no rule matched"
        };
        let entity = ec.entity_id.as_deref().unwrap_or("");
        let treatment = match r.variant_key.as_deref() {
            None | Some("") => NO_TREATMENT,
            Some(v) => v,
        };
        let row = Row {
            key: entity,
            split,
            treatment,
            time: self.time_ms,
            label,
            split_version_number: r.snapshot.unwrap_or(0),
        };
        head(&mut self.out.bytes, &self.fixed, &row);
        self.out.bytes.extend_from_slice(&self.entity_part);
        let variant = r.variant.unwrap_or(0);
        flag_half(&mut self.out.bytes, flag_id, r.tags, segment, variant);
        self.end();
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::super::{encode_evaluation, Context, Encoded, Gate};
    use serde_json::{json, Value};

    /// Byte for byte what serializing the whole record with serde_json gives, for a batch whose
    /// entities repeat, differ in one byte, need escaping, and carry Flagr's `@` keys.
    #[test]
    fn records_match_serde_json_byte_for_byte_across_a_batch() {
        let contexts = [
            json!({"state": "CA", "note": "say \"hi\"\\ \n\t\u{1}é", "@ts": 1}),
            json!({"state": "CA", "note": "say \"hi\"\\ \n\t\u{1}é", "@ts": 1}),
            json!({"state": "CB", "note": "say \"hi\"\\ \n\t\u{1}é", "@ts": 1}),
            json!([]),
            json!({"z": {"nested": [1, "x\"y"]}, "a": null}),
        ];
        let results: Vec<Value> = contexts
            .iter()
            .enumerate()
            .flat_map(|(e, c)| {
                (0..2).map(move |f| {
                    json!({
                        "evalContext": {"entityContext": c, "entityID": format!("u{e}"),
                                        "entityType": if e == 1 { "team" } else { "user" }},
                        "flagID": f + 1, "flagKey": format!("f{f}"), "flagSnapshotID": 7,
                        "flagTags": if f == 0 { json!(["a\"b"]) } else { Value::Null },
                        "segmentID": f, "variantID": 2, "variantKey": "on"
                    })
                })
            })
            .collect();
        let raw = serde_json::to_vec(&json!({ "evaluationResults": results })).unwrap();
        let ctx = Context {
            environment_id: "env\"1".into(),
            time_ms: 5,
            ..Context::default()
        };
        let mut out = Encoded::default();
        encode_evaluation(&raw, &ctx, &Gate::all(), &mut out).unwrap();
        assert_eq!(out.len(), results.len());
        for (got, r) in out.records().zip(&results) {
            let ec = &r["evalContext"];
            let user: serde_json::Map<String, Value> = ec["entityContext"]
                .as_object()
                .map(|m| {
                    m.iter()
                        .filter(|(k, _)| !k.starts_with('@'))
                        .map(|(k, v)| (k.clone(), v.clone()))
                        .collect()
                })
                .unwrap_or_default();
            let tags = match &r["flagTags"] {
                Value::Null => json!([]),
                t => t.clone(),
            };
            let props = json!({
                "entityContext": user, "entityType": ec["entityType"], "flagID": r["flagID"],
                "flagTags": tags, "segmentID": r["segmentID"], "variantID": r["variantID"],
            });
            let segment = r["segmentID"].as_i64().unwrap();
            let label = if segment > 0 {
                format!("segment:{segment}")
            } else {
                "no rule matched".into()
            };
            let want = super::Out {
                key: ec["entityID"].as_str().unwrap(),
                split: r["flagKey"].as_str().unwrap(),
                environment_id: &ctx.environment_id,
                environment_name: "",
                treatment: "on",
                time: 5,
                bucketing_key: ec["entityID"].as_str().unwrap(),
                label: &label,
                machine_name: "",
                machine_ip: "",
                split_version_number: 7,
                sdk: "",
                sdk_version: "",
            };
            // The head's fields in order, then `properties` as serde_json escapes a string.
            let mut want = serde_json::to_string(&want).unwrap();
            want.pop();
            want.push_str(",\"properties\":");
            want.push_str(&serde_json::to_string(&props.to_string()).unwrap());
            want.push('}');
            assert_eq!(std::str::from_utf8(got).unwrap(), want);
        }
    }

    /// A context as Flagr echoed it goes into `properties` as it came only where rebuilding it
    /// (sorted, `@` keys left out) gives the same bytes; everywhere else it is rebuilt.
    #[test]
    fn a_context_is_kept_as_sent_only_where_rebuilding_gives_the_same_bytes() {
        use super::super::answer::{writes_back_unchanged, Raw};
        let cases = [
            (r#"{}"#, true),
            (r#"{"age":30,"state":"CA"}"#, true),
            (r#"{"":1,"a":{"z":1,"b":[1.5e3, "x\"y"]},"b":null}"#, true),
            (r#"{"state":"CA","age":30}"#, false),
            (r#"{"age":30,"age":31}"#, false),
            (r#"{"@ts":1,"age":30}"#, false),
            (r#"{"a\u0062":1}"#, false),
            (r#"{ "age":30}"#, false),
            (r#"{"age": 30}"#, false),
            (r#"{"age":30 }"#, false),
            (r#"{"age":30,"state":"CA"} "#, false),
            (r#"[]"#, false),
            (r#"null"#, false),
        ];
        for (raw, kept) in cases {
            assert_eq!(writes_back_unchanged(raw), kept, "{raw}");
            let (mut sent, mut rebuilt) = (Vec::new(), Vec::new());
            super::entity_props(&mut sent, Some(Raw(raw)), "us\"er", true).unwrap();
            super::entity_props(&mut rebuilt, Some(Raw(raw)), "us\"er", false).unwrap();
            if kept {
                assert_eq!(
                    String::from_utf8(sent).unwrap(),
                    String::from_utf8(rebuilt).unwrap()
                );
            }
        }
    }

    /// The escape, checked against serde_json's on every byte value at every place in and
    /// around an eight-byte word, and on text that mixes escapes, UTF-8 and long clean runs.
    #[test]
    fn escaping_matches_serde_json_wherever_the_byte_falls() {
        let check = |text: &str| {
            let mut out = b"x".to_vec();
            super::push_escaped(&mut out, text.as_bytes());
            let want = serde_json::to_string(text).unwrap();
            assert_eq!(&out[1..], &want.as_bytes()[1..want.len() - 1], "{text:?}");
        };
        for c in (0u8..0x80).map(char::from).chain(['é', '€', '𝄞']) {
            for at in 0..20 {
                for len in [at + 1, at + 3, 24] {
                    let mut t: String = "abcdefghijklmnopqrstuvwx".chars().take(len).collect();
                    t.insert(at.min(t.len()), c);
                    check(&t);
                }
            }
        }
        check("");
        check(r#"{"entityContext":{"a":"say \"hi\"\n"},"entityType":"user","flagID":1}"#);
        check(&"plain-and-long-".repeat(40));
        check("\u{1}\u{1f}\u{7f} é\"\\");
    }
}
