//! Impressions: evaluation and exposure traffic mapped to impression records (seed 002).
//!
//! In: an evaluation response (single or batch) or an exposure request with Flagr's answer,
//! plus what the proxy knew of the client. Out: records as JSON ([`Encoded`]), field names
//! exact; [`Impression`] is their typed form for tests and tools.
//! Never: does I/O; a row it cannot read is skipped and counted by the caller, never guessed.

mod answer;
pub mod batcher;
mod record;
mod scan;

#[cfg(fuzzing)]
pub use answer::check_against_serde as check_answer_reader;
#[cfg(fuzzing)]
pub use record::check_context_as_sent;
pub use record::Encoded;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use crate::flagr::KnownFlags;

/// One impression, exactly the seed's fields.
#[derive(Clone, Debug, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "camelCase")]
pub struct Impression {
    pub key: String,
    pub split: String,
    pub environment_id: String,
    pub environment_name: String,
    pub treatment: String,
    /// Epoch milliseconds.
    pub time: i64,
    pub bucketing_key: String,
    pub label: String,
    pub machine_name: String,
    pub machine_ip: String,
    /// Flagr's `flagSnapshotID`: the flag's version when it was evaluated.
    pub split_version_number: i64,
    pub sdk: String,
    pub sdk_version: String,
    /// Flagr's extra context as a JSON string (the seed reserves this field as a string).
    pub properties: String,
}

/// What is the same for every record of one call.
#[derive(Clone, Debug, Default)]
pub struct Context {
    pub environment_id: String,
    pub environment_name: String,
    pub machine_name: String,
    pub machine_ip: String,
    pub sdk: String,
    pub sdk_version: String,
    /// When Flagr answered, epoch ms: more precise than Flagr's 1 s `timestamp`.
    pub time_ms: i64,
}

/// Which results become records: those of flags whose recording switch
/// (`dataRecordsEnabled`) is on, as Flagr's own recorder decides, or all of them.
pub struct Gate<'a> {
    all: bool,
    known: Option<&'a KnownFlags>,
    skipped: std::cell::Cell<u64>,
}

impl<'a> Gate<'a> {
    /// Every result is recorded.
    pub fn all() -> Self {
        Self {
            all: true,
            known: None,
            skipped: Default::default(),
        }
    }

    /// Flagr's switch as `known` has it; a flag it does not know yet is recorded when Flagr's
    /// own answer says `dataRecordsEnabled` (1.2.x answers carry it).
    pub fn recording(all: bool, known: &'a KnownFlags) -> Self {
        Self {
            all,
            known: Some(known),
            skipped: Default::default(),
        }
    }

    /// Results passed over so far because their flag does not record.
    pub fn skipped(&self) -> u64 {
        self.skipped.get()
    }

    /// `None`: not recorded. `Some(t)`: recorded, with the flag's `entityType` override if set.
    fn pass(&self, id: i64, key: &str, answer_says: Option<bool>) -> Option<Option<String>> {
        let known = self.known.and_then(|k| {
            k.with(id, key, |f| {
                let over = (!f.entity_type.is_empty()).then(|| f.entity_type.clone());
                (f.data_records_enabled, over)
            })
        });
        let record = self.all
            || match &known {
                Some((on, _)) => *on,
                None => answer_says == Some(true),
            };
        if !record {
            self.skipped.set(self.skipped.get() + 1);
            return None;
        }
        Some(known.and_then(|(_, over)| over))
    }
}

/// The treatment recorded when Flagr assigned no variant (Split's convention).
pub const NO_TREATMENT: &str = "control";

/// `sdk` and `sdkVersion` from a User-Agent: the first product token (`pyflagr/1.1.0`,
/// `Swagger-Codegen/1.0.0/go`), else `flagr-http`.
pub fn sdk_from_user_agent(ua: Option<&str>) -> (String, String) {
    let Some(first) = ua.and_then(|u| u.split_whitespace().next()) else {
        return ("flagr-http".into(), String::new());
    };
    let mut parts = first.split('/');
    let name = parts.next().unwrap_or("").to_string();
    let version = parts.next().unwrap_or("").to_string();
    // Flagr's generated clients say `Swagger-Codegen/<version>/<language>`.
    match (name.as_str(), parts.next()) {
        ("Swagger-Codegen" | "OpenAPI-Generator", Some(lang)) => (format!("{lang}flagr"), version),
        ("", _) => ("flagr-http".into(), String::new()),
        _ => (name, version),
    }
}

/// The client's address: the first `X-Forwarded-For` entry, else the peer.
pub fn client_ip(forwarded_for: Option<&str>, peer: std::net::IpAddr) -> String {
    forwarded_for
        .and_then(|v| v.split(',').next())
        .map(str::trim)
        .filter(|s| !s.is_empty())
        .map(str::to_string)
        .unwrap_or_else(|| peer.to_string())
}

/// Records from `POST/GET /evaluation` (one result) or `/evaluation/batch` (`evaluationResults`),
/// appended to `out`; an answer that is not Flagr's shape is an error and adds nothing.
pub fn encode_evaluation(
    raw: &[u8],
    ctx: &Context,
    gate: &Gate<'_>,
    out: &mut Encoded,
) -> Result<(), serde_json::Error> {
    let results = answer::parse(raw)?;
    // Records run about twice the size of Flagr's results: one allocation instead of a
    // dozen copies while growing.
    out.bytes.reserve(raw.len() * 2);
    out.ends.reserve(results.len());
    let mut w = record::Writer::new(ctx, out);
    for r in &results {
        w.evaluation(r, gate)?;
    }
    Ok(())
}

/// [`encode_evaluation`] as typed records (none when the answer is not readable).
pub fn from_evaluation(raw: &[u8], ctx: &Context, gate: &Gate<'_>) -> Vec<Impression> {
    let mut out = Encoded::default();
    match encode_evaluation(raw, ctx, gate, &mut out) {
        Ok(()) => typed(&out),
        Err(_) => Vec::new(),
    }
}

/// Encoded records read back (they are always valid JSON records).
fn typed(e: &Encoded) -> Vec<Impression> {
    serde_json::from_slice(&e.to_array()).unwrap_or_default()
}

fn str_of<'a>(v: &'a Value, k: &str) -> &'a str {
    v.get(k).and_then(Value::as_str).unwrap_or("")
}

fn int_of(v: &Value, k: &str) -> i64 {
    v.get(k).and_then(Value::as_i64).unwrap_or(0)
}

/// Flagr's `entityContext` without the keys Flagr injects (`@ts`, `@http_*`).
fn user_context(ec: Option<&Value>) -> Value {
    match ec {
        Some(Value::Object(m)) => Value::Object(
            m.iter()
                .filter(|(k, _)| !k.starts_with('@'))
                .map(|(k, v)| (k.clone(), v.clone()))
                .collect::<Map<String, Value>>(),
        ),
        _ => Value::Object(Map::new()),
    }
}

/// Records from `POST /exposures`: the request's rows that Flagr accepted (rows named in the
/// response's `errors` are left out), appended to `out`.
pub fn encode_exposures(
    request: &Value,
    response: &Value,
    ctx: &Context,
    gate: &Gate<'_>,
    out: &mut Encoded,
) -> Result<(), serde_json::Error> {
    let Some(rows) = request.get("exposures").and_then(Value::as_array) else {
        return Ok(());
    };
    let rejected: std::collections::HashSet<i64> = response
        .get("errors")
        .and_then(Value::as_array)
        .map(|e| {
            e.iter()
                .filter_map(|x| x.get("index").and_then(Value::as_i64))
                .collect()
        })
        .unwrap_or_default();
    let mut w = record::Writer::new(ctx, out);
    for (i, row) in rows.iter().enumerate() {
        if rejected.contains(&(i as i64)) {
            continue;
        }
        let entity = str_of(row, "entityID");
        if entity.is_empty() {
            continue;
        }
        let flag_id = int_of(row, "flagID");
        let by_id;
        let split = match str_of(row, "flagKey") {
            "" if flag_id == 0 => continue,
            "" => {
                by_id = flag_id.to_string();
                by_id.as_str()
            }
            k => k,
        };
        let time = row
            .get("timestamp")
            .and_then(Value::as_str)
            .and_then(|t| chrono::DateTime::parse_from_rfc3339(t).ok())
            .map(|t| t.timestamp_millis())
            .unwrap_or(ctx.time_ms);
        let treatment = match str_of(row, "variantKey") {
            "" => NO_TREATMENT,
            v => v,
        };
        // Flagr records a client's exposure under the flag's `entityType` when it has one.
        let Some(over) = gate.pass(flag_id, str_of(row, "flagKey"), None) else {
            continue;
        };
        let properties = serde_json::json!({
            "flagID": flag_id,
            "entityType": over.as_deref().unwrap_or(str_of(row, "entityType")),
            "entityContext": user_context(row.get("entityContext")),
            "variantID": int_of(row, "variantID"),
        })
        .to_string();
        w.push(
            &record::Row {
                key: entity,
                split,
                treatment,
                time,
                label: "exposure",
                split_version_number: int_of(row, "flagSnapshotID"),
            },
            &properties,
        );
    }
    Ok(())
}

/// [`encode_exposures`] as typed records.
pub fn from_exposures(
    request: &Value,
    response: &Value,
    ctx: &Context,
    gate: &Gate<'_>,
) -> Vec<Impression> {
    let mut out = Encoded::default();
    match encode_exposures(request, response, ctx, gate, &mut out) {
        Ok(()) => typed(&out),
        Err(_) => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn bytes(v: &Value) -> Vec<u8> {
        serde_json::to_vec(v).unwrap()
    }

    fn ctx() -> Context {
        Context {
            environment_id: "env-1".into(),
            environment_name: "production".into(),
            machine_name: "host-a".into(),
            machine_ip: "10.0.0.7".into(),
            sdk: "pyflagr".into(),
            sdk_version: "1.1.0".into(),
            time_ms: 1_700_000_000_123,
        }
    }

    #[test]
    fn single_evaluation_maps_field_by_field() {
        let r = json!({
            "evalContext": {"entityContext": {"state": "CA", "@ts": 1}, "entityID": "user-42", "entityType": "user", "flagID": 1},
            "evalDebugLog": {"segmentDebugLogs": null},
            "flagID": 1, "flagKey": "checkout-button", "flagSnapshotID": 57, "flagTags": ["web"],
            "segmentID": 4, "timestamp": "2026-08-07T10:00:00Z",
            "variantAttachment": {"color": "green"}, "variantID": 2, "variantKey": "treatment"
        });
        let v = from_evaluation(&bytes(&r), &ctx(), &Gate::all());
        assert_eq!(v.len(), 1);
        let i = &v[0];
        assert_eq!(
            (i.key.as_str(), i.split.as_str(), i.treatment.as_str()),
            ("user-42", "checkout-button", "treatment")
        );
        assert_eq!(
            (i.bucketing_key.as_str(), i.label.as_str()),
            ("user-42", "segment:4")
        );
        assert_eq!(i.split_version_number, 57);
        assert_eq!(i.time, 1_700_000_000_123);
        let p: Value = serde_json::from_str(&i.properties).unwrap();
        assert_eq!(p["entityContext"], json!({"state": "CA"}));
        assert_eq!(p["flagTags"], json!(["web"]));
        let wire = serde_json::to_value(i).unwrap();
        let keys: Vec<&str> = wire
            .as_object()
            .unwrap()
            .keys()
            .map(String::as_str)
            .collect();
        let mut want = vec![
            "key",
            "split",
            "environmentId",
            "environmentName",
            "treatment",
            "time",
            "bucketingKey",
            "label",
            "machineName",
            "machineIp",
            "splitVersionNumber",
            "sdk",
            "sdkVersion",
            "properties",
        ];
        let mut got = keys.clone();
        got.sort();
        want.sort();
        assert_eq!(got, want);
        assert!(wire["time"].is_i64() && wire["splitVersionNumber"].is_i64());
    }

    #[test]
    fn no_variant_is_control_with_flagrs_reason() {
        let r = json!({"evalContext": {"entityID": "u"}, "evalDebugLog": {"msg": "flagID 1 is not enabled"},
                       "flagID": 1, "flagKey": "k"});
        let i = &from_evaluation(&bytes(&r), &ctx(), &Gate::all())[0];
        assert_eq!(i.treatment, "control");
        assert_eq!(i.label, "flagID 1 is not enabled");
        assert_eq!(i.split_version_number, 0);
        let r = json!({"evalContext": {"entityID": "u"}, "flagID": 1, "flagKey": "k"});
        assert_eq!(
            from_evaluation(&bytes(&r), &ctx(), &Gate::all())[0].label,
            "no rule matched"
        );
    }

    #[test]
    fn batch_and_garbage() {
        let r = json!({"evaluationResults": [
            {"evalContext": {"entityID": "a"}, "flagID": 1, "flagKey": "k", "variantKey": "on"},
            {"evalContext": {"entityID": "b"}, "flagID": 1, "flagKey": "k"},
            {"no": "context"}
        ]});
        let v = from_evaluation(&bytes(&r), &ctx(), &Gate::all());
        assert_eq!(
            v.iter().map(|i| i.key.as_str()).collect::<Vec<_>>(),
            ["a", "b"]
        );
        assert!(from_evaluation(
            &bytes(&json!({"evaluationResults": 5})),
            &ctx(),
            &Gate::all()
        )
        .is_empty());
        assert!(from_evaluation(&bytes(&json!([1, 2])), &ctx(), &Gate::all()).is_empty());
        assert!(from_evaluation(&bytes(&json!("x")), &ctx(), &Gate::all()).is_empty());
    }

    #[test]
    fn exposures_leave_out_rejected_rows() {
        let req = json!({"exposures": [
            {"flagKey": "k", "variantKey": "on", "entityID": "a", "timestamp": "2026-08-07T10:00:05Z", "flagSnapshotID": 9},
            {"flagKey": "missing", "entityID": "b"},
            {"flagID": 3, "entityID": "c"},
            {"flagKey": "k"}
        ]});
        let resp = json!({"errors": [{"index": 1, "message": "flag not found"}], "loggedCount": 2});
        let v = from_exposures(&req, &resp, &ctx(), &Gate::all());
        assert_eq!(
            v.iter()
                .map(|i| (i.key.as_str(), i.split.as_str()))
                .collect::<Vec<_>>(),
            [("a", "k"), ("c", "3")]
        );
        assert_eq!(v[0].time, 1_786_096_805_000);
        assert_eq!(v[0].label, "exposure");
        assert_eq!(v[0].split_version_number, 9);
        assert_eq!(v[1].treatment, "control");
    }

    #[test]
    fn user_agents() {
        assert_eq!(
            sdk_from_user_agent(Some("pyflagr/1.1.0 python/3.11")),
            ("pyflagr".into(), "1.1.0".into())
        );
        assert_eq!(
            sdk_from_user_agent(Some("Swagger-Codegen/1.0.0/go")),
            ("goflagr".into(), "1.0.0".into())
        );
        assert_eq!(
            sdk_from_user_agent(None),
            ("flagr-http".into(), String::new())
        );
        assert_eq!(
            sdk_from_user_agent(Some("curl/8.0")),
            ("curl".into(), "8.0".into())
        );
        assert_eq!(
            client_ip(Some("203.0.113.9, 10.0.0.1"), [127, 0, 0, 1].into()),
            "203.0.113.9"
        );
        assert_eq!(client_ip(None, [127, 0, 0, 1].into()), "127.0.0.1");
    }
}
