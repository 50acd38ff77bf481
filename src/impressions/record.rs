//! Impression records written straight to JSON, one after the other into one buffer: the
//! batcher copies each record's bytes into every endpoint's batch without parsing again.
//!
//! In: the fields of one record, borrowed from Flagr's answer and the call's [`Context`].
//! Out: [`Encoded`]: the records' JSON and where each ends.
//! Never: allocates per record beyond the label of a matched segment.

use std::collections::BTreeMap;

use serde::ser::SerializeMap;
use serde::Serialize;
use serde_json::value::RawValue;

use super::answer::{context_map, EvalResult, Text};
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

/// The seed's record, field names and order exact, every string borrowed.
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
    pub properties: &'a str,
}

/// `properties` of an evaluation, keys in the order a JSON object map sorts them.
#[derive(Serialize)]
struct EvalProps<'a> {
    #[serde(rename = "entityContext")]
    entity_context: UserContext<'a>,
    #[serde(rename = "entityType")]
    entity_type: &'a str,
    #[serde(rename = "flagID")]
    flag_id: i64,
    #[serde(rename = "flagTags")]
    flag_tags: Tags<'a>,
    #[serde(rename = "segmentID")]
    segment_id: i64,
    #[serde(rename = "variantID")]
    variant_id: i64,
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

/// The flag's tags as Flagr sent them; `[]` when it sent none.
struct Tags<'a>(Option<&'a RawValue>);

impl Serialize for Tags<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        match self.0 {
            Some(raw) => raw.serialize(s),
            None => s.collect_seq(std::iter::empty::<()>()),
        }
    }
}

/// Writes records into one [`Encoded`], reusing its scratch buffers.
pub(super) struct Writer<'c> {
    ctx: &'c Context,
    out: &'c mut Encoded,
    props: Vec<u8>,
    label: String,
}

impl<'c> Writer<'c> {
    pub(super) fn new(ctx: &'c Context, out: &'c mut Encoded) -> Self {
        Self {
            ctx,
            out,
            props: Vec::with_capacity(256),
            label: String::new(),
        }
    }

    /// One record with the call's context filled in.
    pub(super) fn push(&mut self, rec: Out<'_>) -> Result<(), serde_json::Error> {
        serde_json::to_writer(&mut self.out.bytes, &rec)?;
        self.out.ends.push(self.out.bytes.len());
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
        let msg = r
            .debug
            .as_ref()
            .and_then(|d| d.msg.as_deref())
            .unwrap_or("");
        let label: &str = if !msg.is_empty() {
            msg
        } else if segment > 0 {
            use std::fmt::Write;
            self.label.clear();
            let _ = write!(self.label, "segment:{segment}");
            &self.label
        } else {
            "no rule matched"
        };
        self.props.clear();
        serde_json::to_writer(
            &mut self.props,
            &EvalProps {
                entity_context: UserContext(context_map(ec.entity_context)),
                entity_type: ec.entity_type.as_deref().unwrap_or(""),
                flag_id,
                flag_tags: Tags(r.tags),
                segment_id: segment,
                variant_id: r.variant.unwrap_or(0),
            },
        )?;
        // serde_json writes valid UTF-8.
        let properties = std::str::from_utf8(&self.props).unwrap_or("{}");
        let entity = ec.entity_id.as_deref().unwrap_or("");
        let treatment = match r.variant_key.as_deref() {
            None | Some("") => NO_TREATMENT,
            Some(v) => v,
        };
        let c = self.ctx;
        let rec = Out {
            key: entity,
            split,
            environment_id: &c.environment_id,
            environment_name: &c.environment_name,
            treatment,
            time: c.time_ms,
            bucketing_key: entity,
            label,
            machine_name: &c.machine_name,
            machine_ip: &c.machine_ip,
            split_version_number: r.snapshot.unwrap_or(0),
            sdk: &c.sdk,
            sdk_version: &c.sdk_version,
            properties,
        };
        serde_json::to_writer(&mut self.out.bytes, &rec)?;
        self.out.ends.push(self.out.bytes.len());
        Ok(())
    }
}
