//! Change events end to end: real Flagr, the real binary, real receivers.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::*;

struct Step {
    method: &'static str,
    path: &'static str,
    body: Option<Value>,
    events: &'static [&'static str],
}

fn step(
    method: &'static str,
    path: &'static str,
    body: Option<Value>,
    events: &'static [&'static str],
) -> Step {
    Step {
        method,
        path,
        body,
        events,
    }
}

/// All 19 mutating endpoints, each with the events it must give.
fn all_mutations() -> Vec<Step> {
    vec![
        step(
            "POST",
            "/flags",
            Some(json!({"description": "checkout", "key": "checkout"})),
            &["flag.created"],
        ),
        step(
            "PUT",
            "/flags/1",
            Some(json!({"description": "checkout v2"})),
            &["flag.updated"],
        ),
        step(
            "POST",
            "/flags/1/tags",
            Some(json!({"value": "web"})),
            &["flag.updated"],
        ),
        step(
            "POST",
            "/flags/1/tags",
            Some(json!({"value": "beta"})),
            &["flag.updated"],
        ),
        step("DELETE", "/flags/1/tags/2", None, &["flag.updated"]),
        step(
            "POST",
            "/flags/1/variants",
            Some(json!({"key": "control"})),
            &["variant.created"],
        ),
        step(
            "POST",
            "/flags/1/variants",
            Some(json!({"key": "treatment", "attachment": {"color": "green"}})),
            &["variant.created"],
        ),
        step(
            "PUT",
            "/flags/1/variants/2",
            Some(json!({"key": "treatment", "attachment": {"color": "blue"}})),
            &["variant.attachment.updated"],
        ),
        step(
            "POST",
            "/flags/1/segments",
            Some(json!({"description": "CA", "rolloutPercent": 100})),
            &["segment.created"],
        ),
        step(
            "POST",
            "/flags/1/segments",
            Some(json!({"description": "rest", "rolloutPercent": 10})),
            &["segment.created"],
        ),
        step(
            "PUT",
            "/flags/1/segments/reorder",
            Some(json!({"segmentIDs": [2, 1]})),
            &["segment.updated", "segment.updated"],
        ),
        step(
            "PUT",
            "/flags/1/segments/1",
            Some(json!({"description": "California", "rolloutPercent": 90})),
            &["segment.updated", "segment.rollout_percent.updated"],
        ),
        step(
            "PUT",
            "/flags/1/segments/1",
            Some(json!({"description": "California", "rolloutPercent": 80})),
            &["segment.rollout_percent.updated"],
        ),
        step(
            "POST",
            "/flags/1/segments/1/constraints",
            Some(json!({"property": "state", "operator": "EQ", "value": "\"CA\""})),
            &["constraint.created"],
        ),
        step(
            "PUT",
            "/flags/1/segments/1/constraints/1",
            Some(json!({"property": "state", "operator": "IN", "value": "[\"CA\",\"NV\"]"})),
            &["constraint.updated"],
        ),
        step(
            "DELETE",
            "/flags/1/segments/1/constraints/1",
            None,
            &["constraint.deleted"],
        ),
        step(
            "PUT",
            "/flags/1/segments/1/distributions",
            Some(
                json!({"distributions": [{"variantID": 1, "variantKey": "control", "percent": 100}]}),
            ),
            &["distribution.updated"],
        ),
        step(
            "PUT",
            "/flags/1/variants/1",
            Some(json!({"key": "ctrl"})),
            &["variant.updated", "distribution.updated"],
        ),
        step(
            "PUT",
            "/flags/1/enabled",
            Some(json!({"enabled": true})),
            &["flag.enabled"],
        ),
        // The same value again: Flagr records it, but nothing changed, so no event.
        step(
            "PUT",
            "/flags/1/enabled",
            Some(json!({"enabled": true})),
            &[],
        ),
        step(
            "PUT",
            "/flags/1/enabled",
            Some(json!({"enabled": false})),
            &["flag.disabled"],
        ),
        step("DELETE", "/flags/1/segments/2", None, &["segment.deleted"]),
        step("DELETE", "/flags/1/variants/2", None, &["variant.deleted"]),
        // Failures change nothing: no event.
        step(
            "PUT",
            "/flags/999/enabled",
            Some(json!({"enabled": true})),
            &[],
        ),
        step(
            "POST",
            "/flags/1/segments",
            Some(json!({"description": "bad", "rolloutPercent": 101})),
            &[],
        ),
        step(
            "POST",
            "/flags/1/duplicate",
            Some(json!({"key": "checkout-copy"})),
            &["flag.created"],
        ),
        step("DELETE", "/flags/1", None, &["flag.deleted"]),
        step("PUT", "/flags/1/restore", None, &["flag.created"]),
        step(
            "POST",
            "/flags",
            Some(
                json!({"description": "templated", "key": "tmpl", "template": "simple_boolean_flag"}),
            ),
            &["flag.created"],
        ),
    ]
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mutation_gives_its_events_with_the_whole_flag() {
    all_mutations_in_mode("auto").await;
}

/// Legacy Flagr 1.1.x keeps no snapshot history: flaghook then reads the flag before forwarding
/// each mutation. The same workflow must give the same events that way.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mutation_gives_its_events_in_prefetch_mode() {
    all_mutations_in_mode("prefetch").await;
}

/// Makes each call through flaghook and checks the events it gives, one step at a time;
/// returns how many events arrived in all.
async fn run_steps(fh: &Flaghook, r: &Receiver, steps: Vec<Step>) -> usize {
    let mut seen = 0;
    for s in steps {
        let (status, _) = call_as(
            s.method,
            &format!("{}{}", fh.api(), s.path),
            s.body.clone(),
            Some("alice@example.com"),
        )
        .await;
        if !s.events.is_empty() {
            assert_eq!(status, 200, "{} {}", s.method, s.path);
        }
        seen += s.events.len();
        // Events of one flag arrive in order, so waiting for the count is enough.
        let hits = r.wait_for(seen).await;
        let got: Vec<String> = hits[seen - s.events.len()..]
            .iter()
            .map(|h| h.json()["event"].as_str().unwrap().to_string())
            .collect();
        assert_eq!(got, s.events, "{} {}", s.method, s.path);
    }
    seen
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_mutation_gives_its_events_on_legacy_flagr_1_1_20() {
    let f = flagr_legacy(&[]).await;
    let r = Receiver::start(vec![]).await;
    let fh = Flaghook::start(
        &f.url(),
        &format!("{FAST_DELIVERY}{}", webhook("all", &r, "")),
    )
    .await;
    // Found out by itself: 1.1.20 has no changelog.
    fh.wait_metric("flaghook_upstream_legacy", 1.0).await;
    // 1.1.20 has no duplicate call.
    let steps = all_mutations()
        .into_iter()
        .filter(|s| !s.path.contains("duplicate"))
        .collect();
    let seen = run_steps(&fh, &r, steps).await;
    fh.wait_settled(&f).await;
    assert_eq!(r.hits().len(), seen, "{:?}", r.events());
    let created = r.hits()[0].json();
    assert_eq!(created["data"]["key"], "checkout");
    assert_eq!(created["actor"], "alice@example.com");
}

async fn all_mutations_in_mode(mode: &str) {
    let f = flagr(&[]).await;
    let r = Receiver::start(vec![]).await;
    let cfg = format!(
        "[flagr]\nsnapshot_mode = \"{mode}\"\n{FAST_DELIVERY}{}",
        webhook("all", &r, "secret = \"s3cret\"\nprevious_secret = \"old\"")
    );
    let fh = Flaghook::start(&f.url(), &cfg).await;
    let seen = run_steps(&fh, &r, all_mutations()).await;
    // Nothing beyond what was expected (a no-op or a failure produced nothing).
    fh.wait_settled(&f).await;
    let hits = r.hits();
    assert_eq!(hits.len(), seen, "{:?}", r.events());

    let by_event = |i: usize| hits[i].json();
    // flag.created: seed shape, exact field names, the whole flag.
    let created = by_event(0);
    for k in [
        "event",
        "flag_id",
        "flag_key",
        "timestamp",
        "data",
        "id",
        "actor",
        "changes",
        "source",
    ] {
        assert!(created.get(k).is_some(), "missing {k}: {created}");
    }
    assert_eq!(created["flag_id"], 1);
    assert_eq!(created["flag_key"], "checkout");
    assert_eq!(created["actor"], "alice@example.com");
    assert_eq!(created["source"], "api");
    assert!(created["timestamp"].as_str().unwrap().ends_with('Z'));
    assert_eq!(created["data"]["key"], "checkout");
    let ids: std::collections::HashSet<String> = hits
        .iter()
        .map(|h| h.json()["id"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(ids.len(), hits.len(), "event ids are unique");

    let find = |name: &str, nth: usize| {
        hits.iter()
            .map(|h| h.json())
            .filter(|v| v["event"] == name)
            .nth(nth)
            .unwrap()
    };
    let rollout = find("segment.rollout_percent.updated", 0);
    assert_eq!(
        rollout["changes"]["rolloutPercent"],
        json!({"before": 100, "after": 90})
    );
    assert_eq!(rollout["changes"]["segment_id"], 1);
    // data carries segments with constraints and distributions, variants and tags.
    let dist = find("distribution.updated", 0);
    assert_eq!(
        dist["data"]["segments"][1]["distributions"][0]["variantKey"],
        "control"
    );
    assert_eq!(dist["data"]["variants"].as_array().unwrap().len(), 2);
    assert_eq!(dist["data"]["tags"][0]["value"], "web");
    let renamed = find("distribution.updated", 1);
    assert_eq!(
        renamed["changes"]["distributions"]["after"][0]["variantKey"],
        "ctrl"
    );
    let att = find("variant.attachment.updated", 0);
    assert_eq!(
        att["changes"]["attachment"],
        json!({"before": {"color": "green"}, "after": {"color": "blue"}})
    );
    let constraint = find("constraint.created", 0);
    assert_eq!(
        constraint["data"]["segments"][1]["constraints"][0]["property"],
        "state"
    );
    let reorder = find("segment.updated", 0);
    assert!(reorder["changes"]["rank"].is_object());
    let dup = find("flag.created", 1);
    assert_eq!(dup["flag_id"], 2);
    assert_eq!(dup["flag_key"], "checkout-copy");
    assert_eq!(dup["changes"]["duplicated_from"], 1);
    assert_eq!(dup["data"]["segments"].as_array().unwrap().len(), 1);
    let deleted = find("flag.deleted", 0);
    assert_eq!(deleted["flag_key"], "checkout");
    assert_eq!(
        deleted["data"]["segments"].as_array().unwrap().len(),
        1,
        "data of flag.deleted is the flag as it was"
    );
    let restored = find("flag.created", 2);
    assert_eq!(restored["changes"]["restored"], true);
    assert_eq!(
        restored["data"]["segments"].as_array().unwrap().len(),
        1,
        "restore carries the whole flag"
    );
    let tmpl = find("flag.created", 3);
    assert_eq!(tmpl["data"]["variants"][0]["key"], "on");

    // Signatures: X-Flagr-Signature is the hex HMAC of the exact body; webhook-signature carries
    // one v1 signature per active secret over id.timestamp.body.
    for h in &hits {
        assert_eq!(h.header("x-flagr-signature"), hmac_hex("s3cret", &h.body));
        assert_ne!(h.header("x-flagr-signature"), hmac_hex("wrong", &h.body));
        let id = h.header("webhook-id");
        let ts = h.header("webhook-timestamp");
        assert_eq!(id, h.json()["id"].as_str().unwrap());
        let mut msg = format!("{id}.{ts}.").into_bytes();
        msg.extend_from_slice(&h.body);
        let sigs: Vec<String> = h
            .header("webhook-signature")
            .split(' ')
            .map(str::to_string)
            .collect();
        assert_eq!(
            sigs,
            vec![
                format!("v1,{}", hmac_b64("s3cret", &msg)),
                format!("v1,{}", hmac_b64("old", &msg))
            ]
        );
        assert_eq!(h.header("content-type"), "application/json");
    }
    let m = fh.metrics().await;
    assert_eq!(
        metric_in(&m, "flaghook_events_derived_total{event=\"flag.created\"}"),
        4.0
    );
    assert_eq!(
        metric_in(
            &m,
            "flaghook_deliveries_total{endpoint=\"all\",outcome=\"success\"}"
        ),
        seen as f64
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn wildcards_and_filters_choose_the_events() {
    let f = flagr(&[]).await;
    let (all, flags, rollout, keyed, tagged) = (
        Receiver::start(vec![]).await,
        Receiver::start(vec![]).await,
        Receiver::start(vec![]).await,
        Receiver::start(vec![]).await,
        Receiver::start(vec![]).await,
    );
    let cfg = [
        FAST_DELIVERY.to_string(),
        webhook("all", &all, "events = [\"*\"]"),
        webhook("flags", &flags, "events = [\"flag.*\"]"),
        webhook(
            "rollout",
            &rollout,
            "events = [\"segment.rollout_percent.updated\"]",
        ),
        webhook("keyed", &keyed, "flag_keys = [\"check*\"]"),
        webhook("tagged", &tagged, "tags = [\"web\"]"),
    ]
    .concat();
    let fh = Flaghook::start(&f.url(), &cfg).await;
    let api = fh.api();
    calls(
        &api,
        &[
            (
                "POST",
                "/flags",
                json!({"description": "a", "key": "checkout"}),
            ),
            (
                "POST",
                "/flags",
                json!({"description": "b", "key": "other"}),
            ),
            ("POST", "/flags/2/tags", json!({"value": "web"})),
            (
                "POST",
                "/flags/1/segments",
                json!({"description": "s", "rolloutPercent": 5}),
            ),
            (
                "PUT",
                "/flags/1/segments/1",
                json!({"description": "s", "rolloutPercent": 50}),
            ),
            ("PUT", "/flags/2/enabled", json!({"enabled": true})),
        ],
    )
    .await;
    all.wait_for(6).await;
    flags.wait_for(4).await;
    rollout.wait_for(1).await;
    keyed.wait_for(3).await;
    tagged.wait_for(2).await;
    fh.wait_settled(&f).await;
    let sorted = |r: &Receiver| {
        let mut v = r.events();
        v.sort();
        v
    };
    assert_eq!(
        sorted(&flags),
        [
            "flag.created",
            "flag.created",
            "flag.enabled",
            "flag.updated"
        ]
    );
    assert_eq!(rollout.events(), ["segment.rollout_percent.updated"]);
    assert_eq!(
        keyed.events(),
        [
            "flag.created",
            "segment.created",
            "segment.rollout_percent.updated"
        ]
    );
    assert_eq!(tagged.events(), ["flag.updated", "flag.enabled"]);
    assert_eq!(all.hits().len(), 6);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_hundred_rapid_changes_arrive_in_order() {
    let f = flagr(&[]).await;
    let r = Receiver::start(vec![]).await;
    let fh = Flaghook::start(
        &f.url(),
        &format!("{FAST_DELIVERY}{}", webhook("w", &r, "")),
    )
    .await;
    let api = fh.api();
    call(
        "POST",
        &format!("{api}/flags"),
        Some(json!({"description": "d-1", "key": "k"})),
    )
    .await;
    call(
        "POST",
        &format!("{api}/flags"),
        Some(json!({"description": "e-1", "key": "k2"})),
    )
    .await;
    // Two flags changed in an interleaved burst: each flag's events must stay in order.
    for i in 0..100 {
        let (s, _) = call(
            "PUT",
            &format!("{api}/flags/1"),
            Some(json!({"description": format!("d{i}")})),
        )
        .await;
        assert_eq!(s, 200);
        if i % 2 == 0 {
            call(
                "PUT",
                &format!("{api}/flags/2"),
                Some(json!({"description": format!("e{i}")})),
            )
            .await;
        }
    }
    let complete = wait_until(Duration::from_secs(30), || async { r.hits().len() >= 152 }).await;
    assert!(
        complete,
        "got {} of 152; flaghook's log:\n{}\n{}",
        r.hits().len(),
        fh.log(),
        fh.metrics().await
    );
    let hits = r.hits();
    let of = |flag: i64| -> Vec<String> {
        hits.iter()
            .map(|h| h.json())
            .filter(|v| v["flag_id"] == flag && v["event"] == "flag.updated")
            .map(|v| {
                v["changes"]["description"]["after"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect()
    };
    assert_eq!(of(1), (0..100).map(|i| format!("d{i}")).collect::<Vec<_>>());
    assert_eq!(
        of(2),
        (0..100)
            .step_by(2)
            .map(|i| format!("e{i}"))
            .collect::<Vec<_>>()
    );
    // Each change's before is the previous change's after.
    let befores: Vec<String> = hits
        .iter()
        .map(|h| h.json())
        .filter(|v| v["flag_id"] == 1 && v["event"] == "flag.updated")
        .map(|v| {
            v["changes"]["description"]["before"]
                .as_str()
                .unwrap_or_else(|| panic!("{v}"))
                .to_string()
        })
        .collect();
    assert_eq!(befores[0], "d-1");
    assert_eq!(befores[50], "d49");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn retries_then_success_same_id_and_no_more() {
    let f = flagr(&[]).await;
    let r = Receiver::start(vec![Reply::Status(503), Reply::RetryAfter(503, 0)]).await;
    let gone = Receiver::start(vec![Reply::Status(404)]).await;
    let fh = Flaghook::start(
        &f.url(),
        &format!(
            "{FAST_DELIVERY}{}{}",
            webhook("flaky", &r, ""),
            webhook("gone", &gone, "final_statuses = [404]")
        ),
    )
    .await;
    call(
        "POST",
        &format!("{}/flags", fh.api()),
        Some(json!({"description": "x", "key": "k"})),
    )
    .await;
    let hits = r.wait_for(3).await;
    fh.wait_metric(
        "flaghook_deliveries_total{endpoint=\"flaky\",outcome=\"success\"}",
        1.0,
    )
    .await;
    assert_eq!(
        fh.metric("flaghook_deliveries_total{endpoint=\"flaky\",outcome=\"success\"}")
            .await,
        1.0
    );
    let ids: Vec<String> = hits.iter().map(|h| h.header("webhook-id")).collect();
    assert_eq!(ids, vec![ids[0].clone(); 3]);
    assert_eq!(
        hits.iter()
            .map(|h| h.header("x-flaghook-attempt"))
            .collect::<Vec<_>>(),
        ["1", "2", "3"]
    );
    gone.wait_for(1).await;
    // Past the whole retry schedule, nothing more arrives at either.
    fh.wait_settled(&f).await;
    assert_eq!(r.hits().len(), 3);
    assert_eq!(gone.hits().len(), 1, "404 is final for this webhook");
    let m = fh.metrics().await;
    assert_eq!(
        metric_in(
            &m,
            "flaghook_deliveries_total{endpoint=\"flaky\",outcome=\"error_retryable\"}"
        ),
        2.0
    );
    assert_eq!(
        metric_in(&m, "flaghook_delivery_retries_total{endpoint=\"flaky\"}"),
        2.0
    );
    assert_eq!(
        metric_in(
            &m,
            "flaghook_dropped_total{endpoint=\"gone\",reason=\"rejected\"}"
        ),
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn hanging_receiver_is_cut_at_the_timeout_and_redirects_are_not_followed() {
    let f = flagr(&[]).await;
    let target = Receiver::start(vec![]).await;
    let hang = Receiver::start(vec![Reply::Hang]).await;
    let redirect = Receiver::start(vec![Reply::Redirect(target.url.clone())]).await;
    let cfg = format!(
        "[delivery]\nallow_loopback = true\ntimeout = \"1s\"\nretry_schedule = [\"0s\", \"100ms\"]\n{}{}",
        webhook("hang", &hang, ""),
        webhook("redirect", &redirect, "")
    );
    let fh = Flaghook::start(&f.url(), &cfg).await;
    call(
        "POST",
        &format!("{}/flags", fh.api()),
        Some(json!({"description": "x", "key": "k"})),
    )
    .await;
    hang.wait_for(2).await;
    fh.wait_metric(
        "flaghook_deliveries_total{endpoint=\"hang\",outcome=\"success\"}",
        1.0,
    )
    .await;
    assert_eq!(
        fh.metric("flaghook_deliveries_total{endpoint=\"hang\",outcome=\"success\"}")
            .await,
        1.0
    );
    assert_eq!(
        fh.metric("flaghook_deliveries_total{endpoint=\"hang\",outcome=\"error_retryable\"}")
            .await,
        1.0
    );
    // A redirect is an answer like any other non-2xx: retried, never followed.
    redirect.wait_for(2).await;
    fh.wait_settled(&f).await;
    assert!(target.hits().is_empty(), "redirect was followed");
    assert_eq!(redirect.hits().len(), 2);
    assert!(fh.log().contains("timeout"), "the timeout is logged");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn dead_receivers_change_nothing_for_clients() {
    let a = flagr(&[]).await;
    let b = flagr(&[]).await;
    let dead = format!("http://127.0.0.1:{}/hook", free_port());
    let cfg = format!("{FAST_DELIVERY}[[webhooks]]\nid = \"dead\"\nurl = \"{dead}\"\n");
    let fh = Flaghook::start(&a.url(), &cfg).await;
    for s in all_mutations() {
        let (s1, mut v1) = call(s.method, &format!("{}{}", fh.api(), s.path), s.body.clone()).await;
        let (s2, mut v2) = call(s.method, &format!("{}{}", b.api(), s.path), s.body).await;
        for v in [&mut v1, &mut v2] {
            if let Some(o) = v.as_object_mut() {
                o.remove("updatedAt");
            }
        }
        assert_eq!((s1, v1), (s2, v2), "{} {}", s.method, s.path);
    }
    fh.wait_metric(
        "flaghook_deliveries_total{endpoint=\"dead\",outcome=\"error_retryable\"}",
        1.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flagrs_notifier_variables_moved_to_flaghook_give_the_same_notifications() {
    // The same FLAGR_NOTIFICATION_* variables for both; only the URL differs. flaghook's config
    // has no webhook of its own.
    let native = Receiver::start(vec![]).await;
    let ours = Receiver::start(vec![]).await;
    let vars = |url: &str| {
        vec![
            ("FLAGR_NOTIFICATION_WEBHOOK_ENABLED", "true".to_string()),
            ("FLAGR_NOTIFICATION_WEBHOOK_URL", url.to_string()),
            (
                "FLAGR_NOTIFICATION_WEBHOOK_HEADERS",
                "X-Token: abc, ignored-without-colon".to_string(),
            ),
            (
                "FLAGR_NOTIFICATION_DETAILED_DIFF_ENABLED",
                "true".to_string(),
            ),
            ("FLAGR_NOTIFICATION_MAX_RETRIES", "2".to_string()),
            ("FLAGR_NOTIFICATION_RETRY_BASE", "100ms".to_string()),
        ]
    };
    let native_vars = vars(&native.url);
    let f = flagr(&str_pairs(&native_vars)).await;
    let our_vars = vars(&ours.url);
    let fh = Flaghook::start_with_env(
        &f.url(),
        &format!("[admin]\ntoken = \"t\"\n{FAST_DELIVERY}"),
        &str_pairs(&our_vars),
    )
    .await;
    // A webhook like any from the config file: in the API, read-only.
    let (s, w) = call_auth(
        "GET",
        &format!("{}/api/webhooks/flagr-notification", fh.admin),
        "t",
    )
    .await;
    assert_eq!(s, 200, "{w}");
    assert_eq!(
        (w["format"].as_str(), w["origin"].as_str()),
        (Some("flagr"), Some("config")),
        "{w}"
    );
    // The workflow without no-ops (flaghook sends nothing for a change that changed nothing).
    let steps: Vec<Step> = all_mutations()
        .into_iter()
        .filter(|s| !s.events.is_empty())
        .collect();
    for s in &steps {
        call_as(
            s.method,
            &format!("{}{}", fh.api(), s.path),
            s.body.clone(),
            Some("bob@example.com"),
        )
        .await;
    }
    let n = steps.len();
    let a = native.wait_for(n).await;
    let b = ours.wait_for(n).await;
    let key = |v: &Value| {
        format!(
            "{} {} flag={} id={} key={} user={}",
            v["operation"].as_str().unwrap_or(""),
            v["component_type"].as_str().unwrap_or(""),
            v["flag_id"],
            v["component_id"].as_i64().unwrap_or(0),
            v["component_key"].as_str().unwrap_or(""),
            v["user"].as_str().unwrap_or("")
        )
    };
    // Flagr sends from goroutines, so its arrival order is not guaranteed: compare as sorted lists,
    // and flaghook's own order against the order of the calls.
    let mut na: Vec<String> = a.iter().map(|h| key(&h.json())).collect();
    let ob: Vec<String> = b.iter().map(|h| key(&h.json())).collect();
    let mut sb = ob.clone();
    na.sort();
    sb.sort();
    assert_eq!(na, sb);
    assert!(ob[0].starts_with("create flag flag=1"));
    assert!(ob.last().unwrap().starts_with("create flag flag=3"));
    for h in &b {
        let v = h.json();
        assert!(v.get("timestamp").is_some());
        assert!(v.get("event").is_none(), "flagr format has no seed fields");
    }
    // The headers variable and the detailed diff, read the same way by both.
    for h in a.iter().chain(&b) {
        assert_eq!(h.header("x-token"), "abc");
        assert!(
            h.json()["post_value"].is_string(),
            "detailed diff: {}",
            h.json()
        );
    }
    let updates_with_diff = |hits: &[Hit]| {
        hits.iter()
            .filter(|h| h.json()["operation"] == "update" && h.json()["diff"].is_string())
            .count()
    };
    assert_eq!(updates_with_diff(&a), updates_with_diff(&b));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gone_disables_the_endpoint_until_resumed_and_other_answers_are_retried() {
    let f = flagr(&[]).await;
    let lost = Receiver::start(vec![Reply::Status(410)]).await;
    let flaky = Receiver::start(vec![Reply::Status(400), Reply::Status(404)]).await;
    let fh = Flaghook::start(
        &f.url(),
        &format!(
            "[admin]\ntoken = \"t\"\n{FAST_DELIVERY}{}{}",
            webhook("lost", &lost, ""),
            webhook("flaky", &flaky, "")
        ),
    )
    .await;
    let change = |d: &'static str| {
        let api = fh.api();
        async move {
            call(
                "PUT",
                &format!("{api}/flags/1"),
                Some(json!({"description": d})),
            )
            .await
        }
    };
    call(
        "POST",
        &format!("{}/flags", fh.api()),
        Some(json!({"description": "x", "key": "k"})),
    )
    .await;
    // 400 and 404 are retried (the receiver may be mid-deploy): the third attempt succeeds.
    let hits = flaky.wait_for(3).await;
    assert!(hits
        .iter()
        .all(|h| h.header("webhook-id") == hits[0].header("webhook-id")));
    fh.wait_metric("flaghook_endpoint_disabled{endpoint=\"lost\"}", 1.0)
        .await;
    let (_, w) = call_auth("GET", &format!("{}/api/webhooks/lost", fh.admin), "t").await;
    assert_eq!(w["state"], "disabled", "{w}");
    change("y").await;
    flaky.wait_for(4).await;
    // Both changes wait in the disabled endpoint's queue, unsent.
    fh.wait_metric("flaghook_queue_depth{endpoint=\"lost\"}", 2.0)
        .await;
    assert_eq!(
        lost.hits().len(),
        1,
        "nothing is sent to a disabled endpoint"
    );
    // Enabled again by hand: what waited goes, in order, the first under its first id.
    let first_id = lost.hits()[0].header("webhook-id");
    let (s, _) = call_auth(
        "POST",
        &format!("{}/api/webhooks/lost/resume", fh.admin),
        "t",
    )
    .await;
    assert_eq!(s, 200);
    let hits = lost.wait_for(3).await;
    assert_eq!(hits[1].header("webhook-id"), first_id);
    assert_eq!(hits[1].json()["event"], "flag.created");
    assert_eq!(hits[2].json()["event"], "flag.updated");
    fh.wait_metric(
        "flaghook_deliveries_total{endpoint=\"lost\",outcome=\"success\"}",
        2.0,
    )
    .await;
    assert_eq!(
        fh.metric("flaghook_endpoint_disabled{endpoint=\"lost\"}")
            .await,
        0.0
    );
}

/// `(event, before, after)` of a description change, or the event name alone.
fn summary(h: &Hit) -> (String, String) {
    let v = h.json();
    let c = &v["changes"]["description"];
    let what = if c.is_null() {
        String::new()
    } else {
        format!(
            "{}->{}",
            c["before"].as_str().unwrap(),
            c["after"].as_str().unwrap()
        )
    };
    (
        format!("{}#{}", v["event"].as_str().unwrap(), v["flag_id"]),
        what,
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn changes_made_straight_to_flagr_become_events_in_snapshot_order() {
    let f = flagr(&[]).await;
    let r = Receiver::start(vec![]).await;
    let fh = Flaghook::start(
        &f.url(),
        &format!(
            "{FAST_DELIVERY}[changelog]\npoll_interval = \"200ms\"\nhint_wait = \"300ms\"\n{}",
            webhook("w", &r, "")
        ),
    )
    .await;
    let put = |base: String, d: &'static str| async move {
        let (s, _) = call_as(
            "PUT",
            &format!("{base}/flags/1"),
            Some(json!({"description": d})),
            Some("direct@example.com"),
        )
        .await;
        assert_eq!(s, 200);
    };
    call(
        "POST",
        &format!("{}/flags", fh.api()),
        Some(json!({"description": "start", "key": "k"})),
    )
    .await;
    // Proxied and straight-to-Flagr changes interleaved, without waiting in between.
    put(fh.api(), "a").await;
    put(f.api(), "b").await;
    put(fh.api(), "c").await;
    put(f.api(), "d").await;
    r.wait_for(5).await;
    // Straight to Flagr only, while nothing goes through the proxy: found by polling.
    assert_eq!(
        call("DELETE", &format!("{}/flags/1", f.api()), None)
            .await
            .0,
        200
    );
    r.wait_for(6).await;
    assert_eq!(
        call("PUT", &format!("{}/flags/1/restore", f.api()), None)
            .await
            .0,
        200
    );
    r.wait_for(7).await;
    call(
        "POST",
        &format!("{}/flags", f.api()),
        Some(json!({"description": "made elsewhere", "key": "elsewhere"})),
    )
    .await;
    let hits = r.wait_for(8).await;
    let got: Vec<(String, String)> = hits.iter().map(summary).collect();
    let want: Vec<(String, String)> = [
        ("flag.created#1", ""),
        ("flag.updated#1", "start->a"),
        ("flag.updated#1", "a->b"),
        ("flag.updated#1", "b->c"),
        ("flag.updated#1", "c->d"),
        ("flag.deleted#1", ""),
        ("flag.created#1", ""),
        ("flag.created#2", ""),
    ]
    .iter()
    .map(|(a, b)| (a.to_string(), b.to_string()))
    .collect();
    assert_eq!(got, want);
    assert_eq!(hits[6].json()["changes"]["restored"], true);
    assert_eq!(hits[2].json()["actor"], "direct@example.com");
    // Every event under its own id, and nothing more arrives.
    let ids: std::collections::HashSet<String> =
        hits.iter().map(|h| h.header("webhook-id")).collect();
    assert_eq!(ids.len(), 8);
    fh.wait_settled(&f).await;
    assert_eq!(r.hits().len(), 8, "no event twice");
    assert!(
        fh.metric("flaghook_changelog_hints_total{outcome=\"matched\"}")
            .await
            >= 3.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn path_variants_flagr_accepts_are_recognised_as_the_calls_they_are() {
    let f = flagr(&[]).await;
    let r = Receiver::start(vec![]).await;
    // Only proxied changes become events here, so each event below proves the route matched.
    let fh = Flaghook::start(
        &f.url(),
        &format!(
            "{FAST_DELIVERY}[changelog]\nfollow = \"proxied\"\nhint_wait = \"300ms\"\n{}",
            webhook("w", &r, "")
        ),
    )
    .await;
    let base = fh.proxy.clone();
    let (s, _) = call(
        "POST",
        &format!("{base}/api/v1/flags/"),
        Some(json!({"description": "d", "key": "k"})),
    )
    .await;
    assert_eq!(s, 200);
    for (i, path) in [
        "/api/v1/flags/1/enabled/",
        "/api/v1//flags/1/enabled",
        "/api/v1/flags/%31/enabled",
    ]
    .iter()
    .enumerate()
    {
        let (s, body) = call(
            "PUT",
            &format!("{base}{path}"),
            Some(json!({"enabled": i % 2 == 0})),
        )
        .await;
        assert_eq!(s, 200, "{path}: {body}");
    }
    let hits = r.wait_for(4).await;
    let events: Vec<String> = hits
        .iter()
        .map(|h| h.json()["event"].as_str().unwrap().to_string())
        .collect();
    assert_eq!(
        events,
        [
            "flag.created",
            "flag.enabled",
            "flag.disabled",
            "flag.enabled"
        ]
    );
    // A change made straight to Flagr is not this replica's to send in "proxied" mode.
    call(
        "PUT",
        &format!("{}/flags/1", f.api()),
        Some(json!({"description": "x"})),
    )
    .await;
    fh.wait_settled(&f).await;
    assert_eq!(r.hits().len(), 4);
    fh.wait_metric(
        "flaghook_changelog_snapshots_total{outcome=\"not_proxied\"}",
        1.0,
    )
    .await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn fifty_concurrent_clients_each_flag_matches_its_snapshot_history() {
    let f = flagr(&[]).await;
    let r = Receiver::start(vec![]).await;
    let fh = Flaghook::start(
        &f.url(),
        &format!("{FAST_DELIVERY}{}", webhook("w", &r, "")),
    )
    .await;
    let api = fh.api();
    for i in 1..=10 {
        call(
            "POST",
            &format!("{api}/flags"),
            Some(json!({"description": "start", "key": format!("c{i}")})),
        )
        .await;
    }
    // SQLite refuses some concurrent writes (500, "database is locked"): a refused change
    // writes no snapshot and must give no event, nor shift the others.
    let mut tasks = Vec::new();
    for c in 0..50 {
        let api = api.clone();
        tasks.push(tokio::spawn(async move {
            let mut ok = 0;
            for k in 0..4 {
                let flag = (c * 7 + k * 3) % 10 + 1;
                // A refused change is tried again (a few times, bounded), so enough apply
                // however busy the machine is; every refusal stays in the stream's test.
                for _ in 0..5 {
                    let (s, _) = call(
                        "PUT",
                        &format!("{api}/flags/{flag}"),
                        Some(json!({"description": format!("c{c}k{k}")})),
                    )
                    .await;
                    if s == 200 {
                        ok += 1;
                        break;
                    }
                }
            }
            ok
        }));
    }
    let mut applied = 0;
    for t in tasks {
        applied += t.await.unwrap();
    }
    assert!(applied >= 20, "only {applied} of 200 changes applied");
    let hits = r.wait_for(10 + applied).await;
    for flag in 1..=10 {
        // Flagr's own history of the flag, oldest first.
        let (_, snaps) = call(
            "GET",
            &format!("{}/flags/{flag}/snapshots?sort=ASC", f.api()),
            None,
        )
        .await;
        let mut snaps = snaps.as_array().unwrap().clone();
        snaps.sort_by_key(|s| s["id"].as_i64().unwrap());
        let history: Vec<String> = snaps[1..]
            .iter()
            .map(|s| s["flag"]["description"].as_str().unwrap().to_string())
            .collect();
        let delivered: Vec<String> = hits
            .iter()
            .map(|h| h.json())
            .filter(|v| v["flag_id"] == flag && v["event"] == "flag.updated")
            .map(|v| {
                v["changes"]["description"]["after"]
                    .as_str()
                    .unwrap()
                    .to_string()
            })
            .collect();
        assert_eq!(delivered, history, "flag {flag}");
    }
}

/// Borrowed `(name, value)` pairs, as the process starters take them.
fn str_pairs<'a>(v: &'a [(&'static str, String)]) -> Vec<(&'static str, &'a str)> {
    v.iter().map(|(k, v)| (*k, v.as_str())).collect()
}

/// The CloudEvents SDK's reading of a structured-mode body: its attributes, or why it refused.
fn parsed_by_the_cloudevents_sdk(body: &[u8]) -> Value {
    let python = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join(".cache/venv/bin/python");
    let script = "import sys, json\n\
        from cloudevents.http import from_json\n\
        e = from_json(sys.stdin.buffer.read())\n\
        print(json.dumps({**e.get_attributes(), 'data': e.get_data()}))\n";
    let mut child = std::process::Command::new(&python)
        .args(["-c", script])
        .stdin(std::process::Stdio::piped())
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .unwrap_or_else(|e| panic!("{}: {e} (run scripts/install-test-deps)", python.display()));
    use std::io::Write;
    child.stdin.take().unwrap().write_all(body).unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "the SDK refused the event: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    serde_json::from_slice(&out.stdout).unwrap()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn cloudevents_bodies_are_read_by_the_sdk_with_ids_equal_to_webhook_id() {
    let f = flagr(&[]).await;
    let plain = Receiver::start(vec![]).await;
    let custom = Receiver::start(vec![]).await;
    let cfg = format!(
        "{FAST_DELIVERY}{}{}",
        webhook("ce", &plain, "format = \"cloudevents\"\nsecret = \"s3cret\""),
        webhook(
            "ce-custom",
            &custom,
            "format = \"cloudevents\"\nevents = [\"flag.created\"]\n\
             cloudevents = { type_prefix = \"com.example.flags.\", source = \"https://flags.example.com\" }"
        )
    );
    let fh = Flaghook::start(&f.url(), &cfg).await;
    call_as(
        "POST",
        &format!("{}/flags", fh.api()),
        Some(json!({"description": "checkout button", "key": "checkout"})),
        Some("alice@example.com"),
    )
    .await;
    let hit = plain.wait_for(1).await.remove(0);
    assert_eq!(hit.header("content-type"), "application/cloudevents+json");
    assert!(
        hit.header("webhook-signature").starts_with("v1,"),
        "signed like the other formats"
    );
    let e = parsed_by_the_cloudevents_sdk(&hit.body);
    assert_eq!(e["specversion"], "1.0");
    assert_eq!(e["id"], hit.header("webhook-id").as_str());
    assert_eq!(e["type"], "io.flagr.flag.created");
    assert_eq!(
        e["source"],
        f.url().as_str(),
        "the default source is the upstream"
    );
    assert_eq!(e["subject"], "checkout");
    assert_eq!(e["data"]["data"]["key"], "checkout");
    assert!(e["data"]["changes"].is_object(), "{e}");
    let time = e["time"].as_str().expect("time");
    assert!(chrono::DateTime::parse_from_rfc3339(time).is_ok(), "{time}");
    let hit = custom.wait_for(1).await.remove(0);
    let e = parsed_by_the_cloudevents_sdk(&hit.body);
    assert_eq!(
        (e["type"].as_str(), e["source"].as_str()),
        (
            Some("com.example.flags.flag.created"),
            Some("https://flags.example.com")
        )
    );
    assert_eq!(e["id"], hit.header("webhook-id").as_str());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn templates_and_chat_presets_read_as_sentences_and_bad_templates_are_refused() {
    let f = flagr(&[]).await;
    let tpl = Receiver::start(vec![]).await;
    let slack = Receiver::start(vec![]).await;
    let teams = Receiver::start(vec![]).await;
    let discord = Receiver::start(vec![]).await;
    let cfg = format!(
        "[admin]\ntoken = \"t\"\n[flagr]\nui_url = \"https://flagr.example.com\"\n{FAST_DELIVERY}{}{}{}{}",
        webhook(
            "tpl",
            &tpl,
            "format = \"template\"\ncontent_type = \"text/plain\"\nevents = [\"flag.created\"]\n\
             template = \"{{ summary }} | {{ data.description }} | {{ flag_url }}\""
        ),
        webhook("slack", &slack, "format = \"slack\"\nevents = [\"flag.created\"]"),
        webhook("teams", &teams, "format = \"teams\"\nevents = [\"flag.created\"]"),
        webhook("discord", &discord, "format = \"discord\"\nevents = [\"flag.created\"]"),
    );
    let fh = Flaghook::start(&f.url(), &cfg).await;
    let (_, flag) = call_as(
        "POST",
        &format!("{}/flags", fh.api()),
        Some(json!({"description": "checkout button", "key": "checkout"})),
        Some("alice@example.com"),
    )
    .await;
    let link = format!("https://flagr.example.com/#/flags/{}", flag["id"]);
    let sentence = "alice@example.com created flag checkout";
    let hit = tpl.wait_for(1).await.remove(0);
    assert_eq!(hit.header("content-type"), "text/plain");
    assert_eq!(
        String::from_utf8_lossy(&hit.body),
        format!("{sentence} | checkout button | {link}")
    );
    // Slack: `text` and `blocks`; Teams: a message with an Adaptive Card; Discord: `content`
    // and an embed. Each says what happened, by whom, to which flag, with the link.
    let s = slack.wait_for(1).await.remove(0).json();
    assert_eq!(s["text"], sentence);
    assert_eq!(s["blocks"][0]["type"], "section");
    assert!(
        s["blocks"][0]["text"]["text"]
            .as_str()
            .unwrap()
            .contains(&link),
        "{s}"
    );
    let t = teams.wait_for(1).await.remove(0).json();
    assert_eq!(t["type"], "message");
    let card = &t["attachments"][0];
    assert_eq!(
        card["contentType"],
        "application/vnd.microsoft.card.adaptive"
    );
    assert_eq!(card["content"]["type"], "AdaptiveCard");
    assert_eq!(card["content"]["body"][0]["text"], sentence);
    assert_eq!(card["content"]["actions"][0]["url"], link.as_str());
    let d = discord.wait_for(1).await.remove(0).json();
    assert_eq!(d["content"], sentence);
    assert_eq!(d["embeds"][0]["title"], "checkout");
    assert_eq!(d["embeds"][0]["url"], link.as_str());

    // The preview renders the last event sent, without sending it.
    let (s, p) = call_auth(
        "POST",
        &format!("{}/api/webhooks/tpl/preview", fh.admin),
        "t",
    )
    .await;
    assert_eq!(s, 200, "{p}");
    assert_eq!(p["sample"], false);
    assert_eq!(p["content_type"], "text/plain");
    assert_eq!(p["body"], format!("{sentence} | checkout button | {link}"));
    fh.wait_settled(&f).await;
    assert_eq!(tpl.hits().len(), 1, "a preview is not sent");

    // A template that does not parse is refused by the API with the line; one that parses but
    // names an unknown variable is previewed with the reason.
    let (s, e) = admin_call(
        &fh,
        "POST",
        "/webhooks",
        Some(json!({"id": "bad", "url": tpl.url, "format": "template",
            "template": "{{ summary }}\n{{ flag_key }"})),
        Some("t"),
    )
    .await;
    assert_eq!(s, 400, "{e}");
    assert!(e["message"].as_str().unwrap().contains("line 2"), "{e}");
    let (s, e) = admin_call(
        &fh,
        "POST",
        "/webhooks",
        Some(json!({"id": "typo", "url": tpl.url, "format": "template",
            "template": "{{ sumary }}"})),
        Some("t"),
    )
    .await;
    assert_eq!(s, 201, "{e}");
    let (s, p) = call_auth(
        "POST",
        &format!("{}/api/webhooks/typo/preview", fh.admin),
        "t",
    )
    .await;
    assert_eq!(
        (s, p["error"].as_str()),
        (422, Some("render_failed")),
        "{p}"
    );
}
