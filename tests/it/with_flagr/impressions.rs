//! Impressions end to end: evaluations through flaghook in front of a real Flagr become
//! gzipped batches at real receivers.

use std::collections::HashSet;
use std::io::Read;
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::*;

pub(crate) fn records(h: &Hit) -> Vec<Value> {
    let raw = if h.header("content-encoding") == "gzip" {
        let mut s = Vec::new();
        flate2::read::GzDecoder::new(&h.body[..])
            .read_to_end(&mut s)
            .unwrap();
        s
    } else {
        h.body.to_vec()
    };
    serde_json::from_slice::<Vec<Value>>(&raw).expect("a JSON array")
}

/// Two enabled flags: one with a 100 % variant, one with a segment nobody matches.
pub(crate) async fn seed(api: &str) {
    calls(
        api,
        &[
            (
                "POST",
                "/flags",
                json!({"description": "a", "key": "always-on", "template": "simple_boolean_flag"}),
            ),
            ("PUT", "/flags/1/enabled", json!({"enabled": true})),
            (
                "POST",
                "/flags",
                json!({"description": "b", "key": "ca-only"}),
            ),
            ("POST", "/flags/2/variants", json!({"key": "blue"})),
            (
                "POST",
                "/flags/2/segments",
                json!({"description": "CA", "rolloutPercent": 100}),
            ),
            (
                "POST",
                "/flags/2/segments/2/constraints",
                json!({"property": "state", "operator": "EQ", "value": "\"CA\""}),
            ),
            (
                "PUT",
                "/flags/2/segments/2/distributions",
                json!({"distributions": [{"variantID": 2, "variantKey": "blue", "percent": 100}]}),
            ),
            ("PUT", "/flags/2/enabled", json!({"enabled": true})),
        ],
    )
    .await;
    let url = format!("{api}/evaluation");
    assert!(wait_until(Duration::from_secs(20), || async {
        call("POST", &url, Some(json!({"entityID": "probe", "entityContext": {"state": "CA"}, "flagKey": "ca-only"}))).await.1["variantKey"] == "blue"
    }).await);
}

pub(crate) fn imp_webhook(id: &str, r: &Receiver, extra: &str) -> String {
    format!(
        "[[impression_webhooks]]\nid = \"{id}\"\nurl = \"{}\"\n{extra}\n",
        r.url
    )
}

/// The mapping tests record every flag; Flagr's recording switch has its own test.
pub(crate) const ENV: &str =
    "[impressions]\nenvironment_id = \"env-7\"\nenvironment_name = \"staging\"\nflags = \"all\"\n";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn evaluations_become_gzipped_batches_matching_flagrs_answers() {
    let f = flagr(&[]).await;
    seed(&f.api()).await;
    let r = Receiver::start(vec![]).await;
    let cfg = format!(
        "{ENV}{FAST_DELIVERY}{}",
        imp_webhook(
            "imp",
            &r,
            "secret = \"imp-secret\"\nflush_interval = \"300ms\""
        )
    );
    // Two more endpoints: one for this environment by id, one for another environment.
    let by_id = Receiver::start(vec![]).await;
    let elsewhere = Receiver::start(vec![]).await;
    let cfg = format!(
        "{cfg}{}{}",
        imp_webhook(
            "by-id",
            &by_id,
            "environments = [\"env-7\"]\nflush_interval = \"300ms\""
        ),
        imp_webhook(
            "elsewhere",
            &elsewhere,
            "environments = [\"production\"]\nflush_interval = \"300ms\""
        )
    );
    let fh = Flaghook::start(&f.url(), &cfg).await;
    let mut answers = Vec::new();
    for (entity, state, flag) in [
        ("u1", "CA", "always-on"),
        ("u2", "NY", "ca-only"),
        ("u3", "CA", "ca-only"),
        ("u4", "TX", "missing-flag"),
    ] {
        let resp = client()
            .post(format!("{}/evaluation", fh.api()))
            .header("content-type", "application/json")
            .header("user-agent", "pyflagr/1.1.0")
            .header("x-forwarded-for", "203.0.113.5")
            .body(
                json!({"entityID": entity, "entityContext": {"state": state}, "flagKey": flag})
                    .to_string(),
            )
            .send()
            .await
            .unwrap();
        answers.push(resp.json::<Value>().await.unwrap());
    }
    let hits = r.wait_for(1).await;
    let h = &hits[0];
    assert_eq!(h.header("content-type"), "application/json");
    assert_eq!(h.header("content-encoding"), "gzip");
    // The signature covers the bytes on the wire: the gzipped ones.
    assert_eq!(
        h.header("x-flagr-signature"),
        hmac_hex("imp-secret", &h.body)
    );
    let mut got: Vec<Value> = hits.iter().flat_map(records).collect();
    got.sort_by_key(|v| v["key"].as_str().unwrap().to_string());
    assert_eq!(got.len(), 4);
    for (rec, ans) in got.iter().zip(&answers) {
        assert_eq!(rec["key"], ans["evalContext"]["entityID"]);
        assert_eq!(rec["bucketingKey"], ans["evalContext"]["entityID"]);
        assert_eq!(rec["split"], ans["flagKey"]);
        assert_eq!(
            rec["treatment"],
            ans.get("variantKey").cloned().unwrap_or(json!("control"))
        );
        assert_eq!(
            rec["splitVersionNumber"],
            ans.get("flagSnapshotID").cloned().unwrap_or(json!(0))
        );
        assert_eq!(
            (
                rec["environmentId"].as_str(),
                rec["environmentName"].as_str()
            ),
            (Some("env-7"), Some("staging"))
        );
        assert_eq!(
            (
                rec["machineIp"].as_str(),
                rec["sdk"].as_str(),
                rec["sdkVersion"].as_str()
            ),
            (Some("203.0.113.5"), Some("pyflagr"), Some("1.1.0"))
        );
        let flagr_time = chrono::DateTime::parse_from_rfc3339(ans["timestamp"].as_str().unwrap())
            .unwrap()
            .timestamp();
        assert!(
            (rec["time"].as_i64().unwrap() / 1000 - flagr_time).abs() <= 1,
            "{rec} vs {ans}"
        );
        let props: Value = serde_json::from_str(rec["properties"].as_str().unwrap()).unwrap();
        assert_eq!(
            props["segmentID"],
            ans.get("segmentID").cloned().unwrap_or(json!(0))
        );
    }
    assert_eq!(
        got[0]["label"],
        format!("segment:{}", answers[0]["segmentID"])
    );
    assert_eq!(got[1]["label"], "no rule matched");
    assert_eq!(got[2]["treatment"], "blue");
    assert!(got[3]["label"].as_str().unwrap().contains("not found"));
    let m = fh.metrics().await;
    assert_eq!(metric_in(&m, "flaghook_impressions_derived_total"), 4.0);
    // Delivered twice: to `imp` and to `by-id`; `elsewhere` wants another environment.
    fh.wait_metric("flaghook_impressions_delivered_total", 8.0)
        .await;
    assert_eq!(
        by_id
            .hits()
            .iter()
            .map(records)
            .map(|r| r.len())
            .sum::<usize>(),
        4
    );
    assert!(elsewhere.hits().is_empty());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_evaluation_exposures_and_a_flush_by_size() {
    let f = flagr(&[]).await;
    seed(&f.api()).await;
    let r = Receiver::start(vec![]).await;
    // An hour-long interval: only the size bound can flush.
    let cfg = format!(
        "{ENV}{FAST_DELIVERY}{}",
        imp_webhook(
            "imp",
            &r,
            "flush_interval = \"1h\"\nmax_records = 6\ncompression = \"off\""
        )
    );
    let fh = Flaghook::start(&f.url(), &cfg).await;
    let (s, batch) = call("POST", &format!("{}/evaluation/batch", fh.api()), Some(json!({
        "entities": [{"entityID": "a", "entityContext": {"state": "CA"}}, {"entityID": "b", "entityContext": {"state": "NY"}}],
        "flagKeys": ["always-on", "ca-only"]}))).await;
    assert_eq!(s, 200);
    assert_eq!(batch["evaluationResults"].as_array().unwrap().len(), 4);
    let (s, exp) = call("POST", &format!("{}/exposures", fh.api()), Some(json!({"exposures": [
        {"flagKey": "always-on", "variantKey": "on", "entityID": "x1", "timestamp": "2026-08-07T10:00:05Z"},
        {"flagKey": "no-such-flag", "entityID": "x2"},
        {"flagKey": "ca-only", "entityID": "x3"}]}))).await;
    assert_eq!(s, 200, "{exp}");
    assert_eq!(exp["errors"].as_array().map(Vec::len), Some(1), "{exp}");
    let hits = r.wait_for(1).await;
    assert_eq!(
        hits[0].header("content-encoding"),
        "",
        "compression off: plain JSON"
    );
    let recs = records(&hits[0]);
    assert_eq!(recs.len(), 6);
    let keys: HashSet<String> = recs
        .iter()
        .map(|v| {
            format!(
                "{}:{}",
                v["key"].as_str().unwrap(),
                v["split"].as_str().unwrap()
            )
        })
        .collect();
    let want: HashSet<String> = [
        "a:always-on",
        "a:ca-only",
        "b:always-on",
        "b:ca-only",
        "x1:always-on",
        "x3:ca-only",
    ]
    .iter()
    .map(|s| s.to_string())
    .collect();
    assert_eq!(keys, want);
    let x1 = recs.iter().find(|v| v["key"] == "x1").unwrap();
    assert_eq!(
        (
            x1["label"].as_str(),
            x1["treatment"].as_str(),
            x1["time"].as_i64()
        ),
        (Some("exposure"), Some("on"), Some(1_786_096_805_000))
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_receiver_gets_one_retry_then_the_batch_is_parked_and_delivered_later() {
    let f = flagr(&[]).await;
    seed(&f.api()).await;
    let r = Receiver::start(vec![Reply::Status(500), Reply::Status(500)]).await;
    let cfg = format!(
        "{ENV}{FAST_DELIVERY}{}",
        imp_webhook("imp", &r, "flush_interval = \"1h\"\nmax_records = 2")
    );
    let fh = Flaghook::start(&f.url(), &cfg).await;
    let eval = |e: &'static str| {
        let url = format!("{}/evaluation", fh.api());
        async move {
            call(
                "POST",
                &url,
                Some(json!({"entityID": e, "flagKey": "always-on"})),
            )
            .await
        }
    };
    eval("p1").await;
    eval("p2").await;
    let hits = r.wait_for(2).await;
    assert_eq!(
        hits[0].header("webhook-id"),
        hits[1].header("webhook-id"),
        "the retry is the same batch"
    );
    fh.wait_metric("flaghook_impressions_parked_total", 2.0)
        .await;
    assert_eq!(fh.metric("flaghook_impressions_parked_total").await, 2.0);
    fh.wait_settled(&f).await;
    assert_eq!(r.hits().len(), 2, "exactly one retry");
    // The receiver works again: the next batch succeeds and the parked one follows.
    eval("p3").await;
    eval("p4").await;
    let hits = r.wait_for(4).await;
    let keys: Vec<String> = hits[2..]
        .iter()
        .flat_map(records)
        .map(|v| v["key"].as_str().unwrap().to_string())
        .collect();
    let set: HashSet<&String> = keys.iter().collect();
    assert_eq!(keys.len(), 4, "no record duplicated: {keys:?}");
    assert_eq!(set.len(), 4);
    fh.wait_settled(&f).await;
    assert_eq!(r.hits().len(), 4);
    assert_eq!(fh.metric("flaghook_impressions_delivered_total").await, 4.0);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn without_impression_webhooks_nothing_is_derived() {
    let f = flagr(&[]).await;
    seed(&f.api()).await;
    let fh = Flaghook::start(&f.url(), "").await;
    call(
        "POST",
        &format!("{}/evaluation", fh.api()),
        Some(json!({"entityID": "u", "flagKey": "always-on"})),
    )
    .await;
    assert_eq!(fh.metric("flaghook_impressions_derived_total").await, 0.0);
}

/// Impression records an endpoint gave up on, for every reason.
fn impressions_dropped(m: &str, endpoint: &str) -> f64 {
    [
        "queue_full",
        "parked_overflow",
        "retries_exhausted",
        "shutdown",
    ]
    .iter()
    .map(|r| {
        metric_in(
            m,
            &format!(
                "flaghook_impressions_dropped_total{{endpoint=\"{endpoint}\",reason=\"{r}\"}}"
            ),
        )
    })
    .sum()
}

/// Flagr's answer to one batch evaluation (which must succeed).
async fn batch_answer(url: &str, body: &str) -> bytes::Bytes {
    let r = client()
        .post(url)
        .header("content-type", "application/json")
        .body(body.to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    r.bytes().await.unwrap()
}

/// 300 KB batch answers arriving from many clients at once, one mapping worker, a small tap
/// budget: memory stays under the chart's limit, and every record is delivered or counted.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn large_batch_answers_under_load_stay_within_memory_and_are_all_accounted_for() {
    const CHART_MEMORY_LIMIT: u64 = 256 << 20;
    let f = flagr(&[]).await;
    seed(&f.api()).await;
    let r = Receiver::start(vec![]).await;
    let cfg = format!(
        "{ENV}workers = 1\n[proxy]\ntap_max_bytes = 4194304\n{FAST_DELIVERY}{}",
        imp_webhook("imp", &r, "flush_interval = \"200ms\"")
    );
    let fh = Flaghook::start(&f.url(), &cfg).await;
    let entities: Vec<Value> = (0..480)
        .map(|i| json!({"entityID": format!("user-{i}"), "entityContext": {"state": "CA"}}))
        .collect();
    let body = json!({"entities": entities, "flagKeys": ["always-on", "ca-only"]}).to_string();
    let url = format!("{}/evaluation/batch", fh.api());
    let first = batch_answer(&url, &body).await;
    assert!(first.len() > 290_000, "answer of {} bytes", first.len());
    let per_request = 480 * 2;
    let (clients, each) = (12, 60);
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (url, body) = (url.clone(), body.clone());
        tasks.push(tokio::spawn(async move {
            for _ in 0..each {
                assert!(batch_answer(&url, &body).await.len() > 290_000);
            }
        }));
    }
    for t in tasks {
        t.await.unwrap();
    }
    let requests = 1 + clients * each;
    // Every answer: mapped into records, or counted as unreadable (not copied: over the
    // budget) or dropped before mapping.
    let accounted = || async {
        let m = fh.metrics().await;
        let v = |s: &str| metric_in(&m, s);
        let answers = v("flaghook_impressions_derived_total") / per_request as f64
            + v("flaghook_derive_errors_total{reason=\"impressions_unreadable\"}")
            + v("flaghook_tap_dropped_total{stage=\"tap\"}")
            + v("flaghook_tap_dropped_total{stage=\"impressions\"}");
        (answers, m)
    };
    let done = wait_until(Duration::from_secs(60), || async {
        accounted().await.0 >= requests as f64
    })
    .await;
    let (answers, m) = accounted().await;
    assert!(done, "answers unaccounted for:\n{m}");
    assert_eq!(answers, requests as f64, "{m}");
    let v = |s: &str| metric_in(&m, s);
    let derived = v("flaghook_impressions_derived_total");
    let skipped =
        v("flaghook_tap_uninspected_total{direction=\"response\",reason=\"over_budget\"}");
    assert_eq!(
        v("flaghook_derive_errors_total{reason=\"impressions_unreadable\"}"),
        skipped,
        "only the budget made answers unreadable"
    );
    assert_eq!(
        v("flaghook_tap_uninspected_total{direction=\"request\",reason=\"over_budget\"}"),
        0.0,
        "evaluation requests are not copied"
    );
    // What was derived reaches the receiver (it answers 200) or is counted as dropped.
    let delivered = wait_until(Duration::from_secs(60), || async {
        let m = fh.metrics().await;
        metric_in(&m, "flaghook_impressions_delivered_total") + impressions_dropped(&m, "imp")
            >= derived
    })
    .await;
    assert!(delivered, "{}", fh.metrics().await);
    let received: usize = r.hits().iter().map(|h| records(h).len()).sum();
    let dropped = impressions_dropped(&fh.metrics().await, "imp");
    assert_eq!(received as f64 + dropped, derived);
    let peak = fh.peak_rss();
    eprintln!(
        "peak RSS {:.1} MiB; {requests} answers of {} bytes; {derived} records derived, {skipped} answers not inspected",
        peak as f64 / 1048576.0,
        first.len()
    );
    assert!(peak < CHART_MEMORY_LIMIT, "peak RSS {peak} bytes");
}

/// The splits of every record the receiver got so far.
fn splits(r: &Receiver) -> Vec<String> {
    r.hits()
        .iter()
        .flat_map(records)
        .map(|v| {
            format!(
                "{}:{}",
                v["key"].as_str().unwrap(),
                v["split"].as_str().unwrap()
            )
        })
        .collect()
}

/// The seeded flags (switch off) and flaghook with the default `impressions.flags`: Flagr's
/// own switch, polled every 200 ms.
async fn switch_setup(f: &Flagr) -> (Receiver, Flaghook) {
    seed(&f.api()).await;
    let r = Receiver::start(vec![]).await;
    let cfg = format!(
        "[admin]\ntoken = \"imp-token\"\n[changelog]\npoll_interval = \"200ms\"\n{FAST_DELIVERY}{}",
        imp_webhook(
            "imp",
            &r,
            "flush_interval = \"100ms\"\ncompression = \"off\""
        )
    );
    let fh = Flaghook::start(&f.url(), &cfg).await;
    (r, fh)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn impressions_follow_flagrs_recording_switch_and_entity_type() {
    let f = flagr(&[]).await;
    let (r, fh) = switch_setup(&f).await;
    let api = fh.api();
    // Through the proxy: recording on for always-on, with an entityType override.
    let (s, _) = call(
        "PUT",
        &format!("{api}/flags/1"),
        Some(json!({"dataRecordsEnabled": true, "entityType": "account"})),
    )
    .await;
    assert_eq!(s, 200);
    fh.wait_settled(&f).await;
    // Flagr's answers carry the override once its evaluation cache has the change.
    let direct = format!("{}/evaluation", f.api());
    assert!(
        wait_until(Duration::from_secs(20), || async {
            call(
                "POST",
                &direct,
                Some(json!({"entityID": "probe", "flagKey": "always-on"})),
            )
            .await
            .1["evalContext"]["entityType"]
                == "account"
        })
        .await
    );
    let batch = |entity: &'static str| {
        let url = format!("{api}/evaluation/batch");
        async move {
            let (s, _) = call(
                "POST",
                &url,
                Some(json!({
                "entities": [{"entityID": entity, "entityContext": {"state": "CA"}}],
                "flagKeys": ["always-on", "ca-only"]})),
            )
            .await;
            assert_eq!(s, 200);
        }
    };
    batch("e1").await;
    let (s, exp) = call(
        "POST",
        &format!("{api}/exposures"),
        Some(json!({"exposures": [
        {"flagKey": "always-on", "variantKey": "on", "entityID": "x1", "entityType": "user"},
        {"flagKey": "ca-only", "entityID": "x2"}]})),
    )
    .await;
    assert_eq!(s, 200, "{exp}");
    fh.wait_metric("flaghook_impressions_delivered_total", 2.0)
        .await;
    let mut got = splits(&r);
    got.sort();
    assert_eq!(got, ["e1:always-on", "x1:always-on"]);
    // Left out, and counted: ca-only's evaluation and exposure.
    assert_eq!(
        fh.metric("flaghook_impressions_not_recorded_total").await,
        2.0
    );
    // Flagr records a client's exposure under the flag's entityType, and so do impressions;
    // an evaluation is recorded as Flagr answered it (the override applied by Flagr).
    let recs: Vec<Value> = r.hits().iter().flat_map(records).collect();
    let props = |key: &str| -> Value {
        let rec = recs.iter().find(|v| v["key"] == key).unwrap();
        serde_json::from_str(rec["properties"].as_str().unwrap()).unwrap()
    };
    assert_eq!(props("x1")["entityType"], "account");
    assert_eq!(props("e1")["entityType"], "account");

    // Directly at Flagr, not through the proxy: the follower's poll sees it.
    let switched = std::time::Instant::now();
    let (s, _) = call(
        "PUT",
        &format!("{}/flags/2", f.api()),
        Some(json!({"dataRecordsEnabled": true})),
    )
    .await;
    assert_eq!(s, 200);
    let mut n = 0;
    let arrived = wait_until(Duration::from_secs(15), || {
        n += 1;
        let entity = format!("p{n}");
        let url = format!("{api}/evaluation");
        let r = &r;
        async move {
            call("POST", &url, Some(json!({"entityID": entity, "entityContext": {"state": "CA"}, "flagKey": "ca-only"}))).await;
            tokio::time::sleep(Duration::from_millis(150)).await;
            splits(r).iter().any(|s| s.ends_with(":ca-only"))
        }
    })
    .await;
    assert!(
        arrived,
        "no ca-only impression after the switch was turned on"
    );
    println!(
        "recording switch turned on at Flagr: first impression after {:?}",
        switched.elapsed()
    );

    // Off again through the proxy: once the follower has walked it, nothing more is recorded.
    let (s, _) = call(
        "PUT",
        &format!("{api}/flags/2"),
        Some(json!({"dataRecordsEnabled": false})),
    )
    .await;
    assert_eq!(s, 200);
    fh.wait_settled(&f).await;
    let before = fh.metric("flaghook_impressions_not_recorded_total").await;
    batch("e2").await;
    fh.wait_metric("flaghook_impressions_not_recorded_total", before + 1.0)
        .await;
    // Both results came in one answer: once always-on's record is here, ca-only's was left out.
    let e2 = wait_until(Duration::from_secs(15), || async {
        splits(&r).iter().any(|s| s == "e2:always-on")
    })
    .await;
    assert!(e2, "always-on still records: {:?}", splits(&r));
    assert!(!splits(&r).contains(&"e2:ca-only".to_string()));

    // The page's view of the endpoint: what it was handed, what arrived.
    fh.wait_settled(&f).await;
    let (s, v) = admin_call(&fh, "GET", "/impressions", None, Some("imp-token")).await;
    assert_eq!(s, 200);
    let ep = &v["endpoints"][0];
    assert_eq!(ep["id"], "imp");
    let received = splits(&r).len() as u64;
    assert_eq!(ep["records_delivered"].as_u64(), Some(received), "{v}");
    assert_eq!(ep["records_batched"].as_u64(), Some(received), "{v}");
    assert_eq!(ep["batches_sent"].as_u64(), Some(r.hits().len() as u64));
    assert_eq!(ep["parked_bytes"], 0);
    let per_minute: u64 = ep["minutes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["records"].as_u64().unwrap())
        .sum();
    assert_eq!(per_minute, received);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn legacy_flagr_1_1_20_follows_the_switch_from_flag_listings() {
    let f = flagr_legacy(&[]).await;
    // 1.1.20's answers do not carry dataRecordsEnabled: only the listings can tell.
    let (r, fh) = switch_setup(&f).await;
    fh.wait_metric("flaghook_upstream_legacy", 1.0).await;
    let (s, _) = call(
        "PUT",
        &format!("{}/flags/2", fh.api()),
        Some(json!({"dataRecordsEnabled": true})),
    )
    .await;
    assert_eq!(s, 200);
    let url = format!("{}/evaluation/batch", fh.api());
    let mut n = 0;
    let arrived = wait_until(Duration::from_secs(15), || {
        n += 1;
        let entity = format!("l{n}");
        let (url, r) = (&url, &r);
        async move {
            call(
                "POST",
                url,
                Some(json!({
                "entities": [{"entityID": entity, "entityContext": {"state": "CA"}}],
                "flagKeys": ["always-on", "ca-only"]})),
            )
            .await;
            tokio::time::sleep(Duration::from_millis(150)).await;
            splits(r).iter().any(|s| s.ends_with(":ca-only"))
        }
    })
    .await;
    assert!(arrived, "no ca-only impression: {:?}", splits(&r));
    // always-on never records; every batch left it out and counted it.
    assert!(!splits(&r).iter().any(|s| s.ends_with(":always-on")));
    assert!(fh.metric("flaghook_impressions_not_recorded_total").await >= n as f64);
}
