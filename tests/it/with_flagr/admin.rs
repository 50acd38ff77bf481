//! Delivery protection, the admin API and runtime webhooks, against a real Flagr.

use std::time::Duration;

use serde_json::{json, Value};

use crate::support::*;

const TOKEN: &str = "t0ken-for-tests";

async fn admin(fh: &Flaghook, method: &str, path: &str, body: Option<Value>) -> (u16, Value) {
    admin_call(fh, method, path, body, Some(TOKEN)).await
}

async fn state(fh: &Flaghook, id: &str) -> String {
    admin(fh, "GET", &format!("/webhooks/{id}"), None).await.1["state"]
        .as_str()
        .unwrap_or("")
        .to_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failing_endpoint_pauses_probes_resumes_and_loses_nothing() {
    let f = flagr(&[]).await;
    // Fails 8 times (a sustained pattern), then recovers.
    let flaky = Receiver::start(vec![Reply::Status(503); 8]).await;
    let healthy = Receiver::start(vec![]).await;
    let cfg = format!(
        "[admin]\ntoken = \"{TOKEN}\"\n\
         [delivery]\nallow_loopback = true\ntimeout = \"2s\"\n\
         retry_schedule = [\"0s\", \"50ms\", \"50ms\"]\n\
         [delivery.protection]\nconsecutive_failures = 3\ncooldown = \"400ms\"\nmax_cooldown = \"800ms\"\n{}{}",
        webhook("flaky", &flaky, ""),
        webhook("healthy", &healthy, "")
    );
    let fh = Flaghook::start(&f.url(), &cfg).await;
    let api = fh.api();
    call(
        "POST",
        &format!("{api}/flags"),
        Some(json!({"description": "d", "key": "k"})),
    )
    .await;
    for i in 0..4 {
        call(
            "PUT",
            &format!("{api}/flags/1"),
            Some(json!({"description": format!("d{i}")})),
        )
        .await;
    }
    // The healthy endpoint is not held back by the other one's trouble.
    healthy.wait_for(5).await;
    let fh2 = &fh;
    assert!(
        wait_until(Duration::from_secs(20), || async move {
            state(fh2, "flaky").await == "paused"
        })
        .await,
        "flaky endpoint never paused"
    );
    // While paused, nothing is sent: the failures stop at the trip point until a probe.
    let seen = flaky.hits().len();
    assert!(seen >= 3, "{seen}");
    // Eventually: probes, one fails, one succeeds, everything is delivered in order.
    let hits = flaky.wait_for(8 + 5).await;
    assert!(
        wait_until(Duration::from_secs(20), || async move {
            state(fh2, "flaky").await == "active"
        })
        .await
    );
    let delivered: Vec<String> = hits[8..]
        .iter()
        .map(|h| {
            h.json()["changes"]["description"]["after"]
                .as_str()
                .unwrap_or("created")
                .to_string()
        })
        .collect();
    assert_eq!(
        delivered,
        ["created", "d0", "d1", "d2", "d3"],
        "nothing lost, order kept"
    );
    let log = fh.log();
    assert!(log.contains("endpoint keeps failing: paused"), "{log}");
    assert!(log.contains("probe failed: pause extended"), "{log}");
    assert!(log.contains("probe succeeded: endpoint resumed"), "{log}");
    let m = fh.metrics().await;
    assert_eq!(
        metric_in(
            &m,
            "flaghook_dropped_total{endpoint=\"flaky\",reason=\"retries_exhausted\"}"
        ),
        0.0
    );
    assert_eq!(
        metric_in(&m, "flaghook_endpoint_paused{endpoint=\"flaky\"}"),
        0.0
    );
    assert_eq!(
        metric_in(
            &m,
            "flaghook_deliveries_total{endpoint=\"flaky\",outcome=\"success\"}"
        ),
        5.0
    );
    // The delivery log shows the probes.
    let (_, d) = admin(&fh, "GET", "/webhooks/flaky/deliveries", None).await;
    let entries = d["deliveries"].as_array().unwrap();
    assert!(entries
        .iter()
        .any(|e| e["probe"] == true && e["status"] == 503));
    assert!(entries
        .iter()
        .any(|e| e["probe"] == true && e["status"] == 200));
    assert_eq!(entries.len(), 13);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_api_guards_lists_and_steers() {
    let f = flagr(&[]).await;
    let r = Receiver::start(vec![]).await;
    let cfg = format!(
        "[admin]\ntoken = \"env:ADMIN_TOKEN\"\n{FAST_DELIVERY}{}",
        webhook("cfg", &r, "secret = \"super-secret-value\"\nheaders = { Authorization = \"Bearer header-secret\" }")
    );
    let fh = Flaghook::start_with_env(&f.url(), &cfg, &[("ADMIN_TOKEN", TOKEN)]).await;
    // Token: missing or wrong is 401; probes and metrics stay open.
    assert_eq!(admin_call(&fh, "GET", "/webhooks", None, None).await.0, 401);
    assert_eq!(
        admin_call(&fh, "GET", "/webhooks", None, Some("nope"))
            .await
            .0,
        401
    );
    assert_eq!(
        client()
            .get(format!("{}/healthz", fh.admin))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    assert_eq!(
        client()
            .get(format!("{}/metrics", fh.admin))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
    let (s, list) = admin(&fh, "GET", "/webhooks", None).await;
    assert_eq!(s, 200);
    let w = &list["webhooks"][0];
    assert_eq!(w["id"], "cfg");
    assert_eq!(w["origin"], "config");
    assert_eq!(w["state"], "active");
    assert_eq!(w["signed"], true);
    let text = list.to_string();
    assert!(
        !text.contains("super-secret-value") && !text.contains("header-secret"),
        "{text}"
    );
    assert_eq!(admin(&fh, "GET", "/webhooks/nope", None).await.0, 404);
    assert_eq!(admin(&fh, "POST", "/webhooks/nope/test", None).await.0, 404);
    assert_eq!(
        admin(&fh, "POST", "/webhooks/nope/pause", None).await.0,
        404
    );
    // Config webhooks are read-only.
    assert_eq!(admin(&fh, "DELETE", "/webhooks/cfg", None).await.0, 409);

    // Test event, then replay it: the same webhook-id twice.
    let (s, t) = admin(&fh, "POST", "/webhooks/cfg/test", None).await;
    assert_eq!(s, 202);
    let ping_id = t["queued"].as_str().unwrap().to_string();
    let hits = r.wait_for(1).await;
    assert_eq!(hits[0].json()["event"], "ping");
    assert_eq!(hits[0].header("webhook-id"), ping_id);
    let fh2 = &fh;
    assert!(
        wait_until(Duration::from_secs(10), || async move {
            admin(fh2, "GET", "/webhooks/cfg/deliveries", None).await.1["deliveries"]
                .as_array()
                .is_some_and(|a| !a.is_empty())
        })
        .await
    );
    let (_, log) = admin(&fh, "GET", "/webhooks/cfg/deliveries", None).await;
    let e = &log["deliveries"][0];
    assert_eq!(e["delivery_id"], ping_id.as_str());
    assert_eq!(e["status"], 200);
    assert_eq!(e["attempt"], 1);
    assert_eq!(e["response"], "ok");
    assert!(e["latency_ms"].as_f64().is_some());
    assert_eq!(
        admin(
            &fh,
            "POST",
            &format!("/webhooks/cfg/deliveries/{ping_id}/replay"),
            None
        )
        .await
        .0,
        202
    );
    assert_eq!(
        admin(&fh, "POST", "/webhooks/cfg/deliveries/unknown/replay", None)
            .await
            .0,
        404
    );
    let hits = r.wait_for(2).await;
    assert_eq!(hits[1].header("webhook-id"), ping_id);
    assert_eq!(hits[1].body, hits[0].body);

    // Pause by hand: events wait; resume: they arrive.
    assert_eq!(admin(&fh, "POST", "/webhooks/cfg/pause", None).await.0, 200);
    assert!(
        wait_until(Duration::from_secs(10), || async move {
            state(fh2, "cfg").await == "paused"
        })
        .await
    );
    call(
        "POST",
        &format!("{}/flags", fh.api()),
        Some(json!({"description": "d", "key": "k"})),
    )
    .await;
    assert!(
        wait_until(Duration::from_secs(10), || async move {
            admin(fh2, "GET", "/webhooks/cfg", None).await.1["queue_depth"] == 1
        })
        .await
    );
    assert_eq!(r.hits().len(), 2);
    assert_eq!(
        admin(&fh, "POST", "/webhooks/cfg/resume", None).await.0,
        200
    );
    let hits = r.wait_for(3).await;
    assert_eq!(hits[2].json()["event"], "flag.created");
    assert!(!fh.log().contains("super-secret-value"));
    assert!(!fh.log().contains(TOKEN));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn runtime_webhooks_are_validated_persisted_and_live() {
    let f = flagr(&[]).await;
    let r = Receiver::start(vec![]).await;
    let r2 = Receiver::start(vec![]).await;
    let store_dir = tempfile::tempdir().unwrap();
    let store = store_dir.path().join("webhooks.redb");
    let cfg = format!(
        "[admin]\ntoken = \"{TOKEN}\"\n[store]\npath = \"{}\"\n{FAST_DELIVERY}",
        store.display()
    );
    let mut fh = Flaghook::start(&f.url(), &cfg).await;
    // Bad input: 400 with the reason.
    let (s, e) = admin_call(&fh, "POST", "/webhooks", None, Some(TOKEN)).await;
    assert_eq!(s, 400, "{e}");
    let bad = client()
        .post(format!("{}/api/webhooks", fh.admin))
        .bearer_auth(TOKEN)
        .header("content-type", "application/json")
        .body("{not json")
        .send()
        .await
        .unwrap();
    assert_eq!(bad.status(), 400);
    for (body, needle) in [
        (json!({"url": "ftp://x"}), "url"),
        (json!({"url": "http://169.254.169.254/latest"}), "url"),
        (json!({"url": r.url, "events": ["flag.nope"]}), "events"),
        (json!({"url": r.url, "events": ["*"], "bogus": 1}), "bogus"),
        (json!({"url": r.url, "id": "has space"}), "id"),
    ] {
        let (s, e) = admin(&fh, "POST", "/webhooks", Some(body.clone())).await;
        assert_eq!(s, 400, "{body}: {e}");
        assert!(
            e["message"].as_str().unwrap().contains(needle),
            "{body}: {e}"
        );
    }
    // Create: picked up at once, signed with the given secret, never shown.
    let (s, w) = admin(
        &fh,
        "POST",
        "/webhooks",
        Some(json!({"id": "rt", "url": r.url, "events": ["flag.*"], "secret": "rt-secret", "description": "runtime"})),
    )
    .await;
    assert_eq!(s, 201, "{w}");
    assert_eq!(w["origin"], "runtime");
    assert!(!w.to_string().contains("rt-secret"));
    assert_eq!(
        admin(
            &fh,
            "POST",
            "/webhooks",
            Some(json!({"id": "rt", "url": r.url}))
        )
        .await
        .0,
        409
    );
    call(
        "POST",
        &format!("{}/flags", fh.api()),
        Some(json!({"description": "d", "key": "k"})),
    )
    .await;
    let hits = r.wait_for(1).await;
    assert_eq!(hits[0].json()["event"], "flag.created");
    assert!(!hits[0].header("x-flagr-signature").is_empty());
    // Update: new URL; the secret is kept because the edit did not mention it.
    let (s, w) = admin(
        &fh,
        "PUT",
        "/webhooks/rt",
        Some(json!({"url": r2.url, "events": ["*"], "description": "moved"})),
    )
    .await;
    assert_eq!(s, 200, "{w}");
    assert_eq!(w["signed"], true);
    call(
        "PUT",
        &format!("{}/flags/1/enabled", fh.api()),
        Some(json!({"enabled": true})),
    )
    .await;
    let hits2 = r2.wait_for(1).await;
    assert_eq!(hits2[0].json()["event"], "flag.enabled");
    // A token in the URL is shown masked; sending the masked URL back keeps the real one.
    let with_token = format!("{}?token=s3cr3t", r2.url);
    let (s, w) = admin(
        &fh,
        "PUT",
        "/webhooks/rt",
        Some(json!({"url": with_token, "events": ["*"], "description": "moved"})),
    )
    .await;
    assert_eq!(s, 200, "{w}");
    assert!(w["url"].as_str().unwrap().ends_with("?token=***"), "{w}");
    let (s, w) = admin(
        &fh,
        "PUT",
        "/webhooks/rt",
        Some(json!({"url": w["url"], "events": ["*"], "description": "moved"})),
    )
    .await;
    assert_eq!(s, 200, "{w}");
    call(
        "PUT",
        &format!("{}/flags/1", fh.api()),
        Some(json!({"description": "round trip"})),
    )
    .await;
    let hits2 = r2.wait_for(2).await;
    assert!(
        hits2[1].path.ends_with("?token=s3cr3t"),
        "{}",
        hits2[1].path
    );
    // Survives a restart.
    assert!(fh.terminate().success());
    let fh = Flaghook::start(&f.url(), &cfg).await;
    let (_, w) = admin(&fh, "GET", "/webhooks/rt", None).await;
    assert_eq!(w["description"], "moved");
    call(
        "PUT",
        &format!("{}/flags/1/enabled", fh.api()),
        Some(json!({"enabled": false})),
    )
    .await;
    let hits2 = r2.wait_for(3).await;
    assert_eq!(hits2[2].json()["event"], "flag.disabled");
    // Delete: gone, and nothing more arrives.
    assert_eq!(admin(&fh, "DELETE", "/webhooks/rt", None).await.0, 204);
    assert_eq!(admin(&fh, "GET", "/webhooks/rt", None).await.0, 404);
    call(
        "PUT",
        &format!("{}/flags/1/enabled", fh.api()),
        Some(json!({"enabled": true})),
    )
    .await;
    fh.wait_settled(&f).await;
    assert_eq!(r2.hits().len(), 3);
}
