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

/// The calls the page is built on: stats, filtered log, the inspector, replay, changelog,
/// event types, field errors and secret rotation.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_pages_api_inspects_filters_rotates_and_reports() {
    let f = flagr(&[]).await;
    let live = Receiver::start(vec![]).await;
    let dead = Receiver::start(vec![]).await;
    dead.answer(500);
    // Asks for an hour's wait: its one request waits with a known next attempt.
    let later = Receiver::start(vec![Reply::RetryAfter(503, 3600); 4]).await;
    let cfg = format!(
        "[admin]\ntoken = \"{TOKEN}\"\n{FAST_DELIVERY}{}{}{}",
        webhook(
            "live",
            &live,
            "secret = \"s1\"\nheaders = { Authorization = \"Bearer receiver-credential\" }"
        ),
        webhook("dead", &dead, ""),
        webhook(
            "later",
            &later,
            "events = [\"flag.created\"]\nflag_keys = [\"alpha\"]"
        )
    );
    let fh = Flaghook::start(&f.url(), &cfg).await;
    let api = fh.api();
    calls(
        &api,
        &[
            (
                "POST",
                "/flags",
                json!({"description": "a", "key": "alpha"}),
            ),
            ("POST", "/flags", json!({"description": "b", "key": "beta"})),
            ("PUT", "/flags/2", json!({"description": "b2"})),
        ],
    )
    .await;
    live.wait_for(3).await;
    // Caught up with Flagr (the dead endpoint's queue never empties, so not `wait_settled`).
    assert!(
        wait_until(Duration::from_secs(20), || async {
            let c = admin(&fh, "GET", "/changelog", None).await.1;
            c["lag"] == 0 && c["cursor"].as_i64().unwrap_or(0) >= 3
        })
        .await
    );
    // The dead endpoint used its retries on something: at least one failure is in its log.
    assert!(
        wait_until(Duration::from_secs(20), || async {
            admin(&fh, "GET", "/webhooks/dead", None).await.1["stats"]["failed"]
                .as_u64()
                .unwrap_or(0)
                >= 1
        })
        .await
    );

    // Stats: 60 minutes, the live endpoint all successes with latencies.
    let (s, w) = admin(&fh, "GET", "/webhooks/live", None).await;
    assert_eq!(s, 200);
    let st = &w["stats"];
    assert_eq!(st["minutes"].as_array().unwrap().len(), 60);
    assert_eq!(st["ok"], 3, "{st}");
    assert_eq!(st["success_rate"], 1.0);
    assert!(st["p50_ms"].as_f64().unwrap() > 0.0);
    assert!(st["p99_ms"].as_f64().unwrap() >= st["p50_ms"].as_f64().unwrap());
    let this_minute = &st["minutes"][59];
    assert!(this_minute["ok"].as_u64().unwrap() + st["minutes"][58]["ok"].as_u64().unwrap() >= 3);
    assert_eq!(w["kind"], "events");
    let (_, d) = admin(&fh, "GET", "/webhooks/dead", None).await;
    assert_eq!(d["stats"]["ok"], 0);
    assert_eq!(d["stats"]["success_rate"], 0.0);
    // What waits says when it goes next: the receiver's Retry-After, an hour away.
    later.wait_for(1).await;
    let next = wait_until(Duration::from_secs(10), || async {
        admin(&fh, "GET", "/webhooks/later", None).await.1["next_attempt_at"].is_string()
    })
    .await;
    let (_, l) = admin(&fh, "GET", "/webhooks/later", None).await;
    assert!(next, "{l}");
    let at = chrono::DateTime::parse_from_rfc3339(l["next_attempt_at"].as_str().unwrap()).unwrap();
    let ahead = at.timestamp() - chrono::Utc::now().timestamp();
    assert!((3000..=3700).contains(&ahead), "{ahead} s ahead: {l}");
    assert_eq!(l["queue_depth"], 1);

    // Filters.
    let log = |q: &'static str| {
        let fh = &fh;
        async move {
            let (s, v) = admin(fh, "GET", &format!("/webhooks/live/deliveries{q}"), None).await;
            assert_eq!(s, 200, "{v}");
            v["deliveries"].as_array().unwrap().clone()
        }
    };
    assert_eq!(log("").await.len(), 3);
    let beta = log("?flag=beta").await;
    assert_eq!(beta.len(), 2);
    assert!(beta.iter().all(|e| e["flag_key"] == "beta"));
    assert_eq!(log("?event=flag.created&flag=beta").await.len(), 1);
    assert_eq!(log("?event=segment.*").await.len(), 0);
    assert_eq!(log("?status=2xx").await.len(), 3);
    assert_eq!(log("?status=5xx").await.len(), 0);
    assert_eq!(log("?since=2999-01-01T00:00:00Z").await.len(), 0);
    assert_eq!(log("?limit=1").await.len(), 1);
    let (s, v) = admin(&fh, "GET", "/webhooks/live/deliveries?status=7xx", None).await;
    assert_eq!((s, v["error"].as_str()), (400, Some("invalid")), "{v}");
    let (_, v) = admin(&fh, "GET", "/webhooks/dead/deliveries?status=5xx", None).await;
    assert!(!v["deliveries"].as_array().unwrap().is_empty());

    // The inspector: what was sent, byte for byte as the receiver got it, and the answer.
    let first = &beta[1];
    let id = first["delivery_id"].as_str().unwrap();
    let (s, one) = admin(&fh, "GET", &format!("/webhooks/live/deliveries/{id}"), None).await;
    assert_eq!(s, 200, "{one}");
    assert_eq!(one["event"], "flag.created");
    let a = &one["attempts"][0];
    assert_eq!(a["response"]["status"], 200);
    let got = live
        .hits()
        .into_iter()
        .find(|h| h.header("webhook-id") == id)
        .unwrap();
    assert_eq!(
        a["request"]["body"].as_str().unwrap().as_bytes(),
        &got.body[..]
    );
    let header = |name: &str| -> Option<String> {
        a["request"]["headers"]
            .as_array()
            .unwrap()
            .iter()
            .find(|h| h[0] == name)
            .map(|h| h[1].as_str().unwrap().to_string())
    };
    assert_eq!(
        header("webhook-signature"),
        Some(got.header("webhook-signature"))
    );
    assert_eq!(
        header("x-flagr-signature"),
        Some(got.header("x-flagr-signature"))
    );
    assert_eq!(header("webhook-id").as_deref(), Some(id));
    // A configured header's value is a credential: never shown.
    assert_eq!(header("authorization").as_deref(), Some("••••••"));
    assert!(!one.to_string().contains("receiver-credential"));
    assert!(a["response"]["headers"]
        .as_array()
        .unwrap()
        .iter()
        .any(|h| h[0] == "content-length"));
    let (s, _) = admin(&fh, "GET", "/webhooks/live/deliveries/evt_nope", None).await;
    assert_eq!(s, 404);

    // A replay is a new attempt of the same id.
    let (s, _) = admin(
        &fh,
        "POST",
        &format!("/webhooks/live/deliveries/{id}/replay"),
        None,
    )
    .await;
    assert_eq!(s, 202);
    assert!(
        wait_until(Duration::from_secs(10), || async {
            admin(&fh, "GET", &format!("/webhooks/live/deliveries/{id}"), None)
                .await
                .1["attempts"]
                .as_array()
                .map(Vec::len)
                == Some(2)
        })
        .await
    );

    // The changelog: position, per-minute counts, the last events with their changes.
    let (s, c) = admin(&fh, "GET", "/changelog", None).await;
    assert_eq!(s, 200);
    assert_eq!(c["legacy"], false);
    assert_eq!(c["lag"], 0, "{c}");
    assert!(c["cursor"].as_i64().unwrap() >= 3);
    assert_eq!(c["minutes"].as_array().unwrap().len(), 60);
    let total: u64 = c["minutes"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["events"].as_u64().unwrap())
        .sum();
    assert_eq!(total, 3);
    let newest = &c["recent"][0];
    assert_eq!(
        (newest["event"].as_str(), newest["flag_key"].as_str()),
        (Some("flag.updated"), Some("beta"))
    );
    assert_eq!(
        newest["changes"]["description"],
        json!({"before": "b", "after": "b2"})
    );
    let (_, t) = admin(&fh, "GET", "/event-types", None).await;
    assert_eq!(t["event_types"].as_array().unwrap().len(), 17);

    // A bad field is named, so the page can show the message next to it.
    let (s, v) = admin(
        &fh,
        "POST",
        "/webhooks",
        Some(json!({"id": "bad", "url": "not a url"})),
    )
    .await;
    assert_eq!((s, v["field"].as_str()), (400, Some("url")), "{v}");
    let (s, v) = admin(
        &fh,
        "POST",
        "/webhooks",
        Some(json!({"id": "bad", "url": live.url, "events": ["nope.*"]})),
    )
    .await;
    assert_eq!((s, v["field"].as_str()), (400, Some("events")), "{v}");

    // Rotation: the old secret signs alongside the new one for the grace period, then not.
    let rot = Receiver::start(vec![]).await;
    let (s, _) = admin(
        &fh,
        "POST",
        "/webhooks",
        Some(json!({"id": "rot", "url": rot.url, "secret": "old-secret"})),
    )
    .await;
    assert_eq!(s, 201);
    let (s, v) = admin(
        &fh,
        "POST",
        "/webhooks/config-only/rotate-secret",
        Some(json!({})),
    )
    .await;
    assert_eq!(s, 404, "{v}");
    let (s, v) = admin(&fh, "POST", "/webhooks/live/rotate-secret", Some(json!({}))).await;
    assert_eq!((s, v["error"].as_str()), (409, Some("read_only")));
    let (s, v) = admin(
        &fh,
        "POST",
        "/webhooks/rot/rotate-secret",
        Some(json!({"keep_previous_for": "1h"})),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    let new = v["secret"].as_str().unwrap().to_string();
    assert!(new.starts_with("whsec_") && new.len() > 30, "{new}");
    assert!(v["previous_secret_until"].is_string());
    let (_, w) = admin(&fh, "GET", "/webhooks/rot", None).await;
    assert_eq!(w["rotating"], true);
    assert!(!w.to_string().contains(&new));
    // An edit that does not mention secrets keeps the rotation, end included.
    let (s, edited) = admin(
        &fh,
        "PUT",
        "/webhooks/rot",
        Some(json!({"url": rot.url, "description": "edited"})),
    )
    .await;
    assert_eq!(s, 200, "{edited}");
    assert_eq!(edited["previous_secret_until"], v["previous_secret_until"]);
    assert_eq!(edited["rotating"], true);
    let signatures = |n: usize| {
        let rot = &rot;
        let fh = &fh;
        async move {
            admin(fh, "POST", "/webhooks/rot/test", None).await;
            let h = rot.wait_for(n).await[n - 1].clone();
            let msg = format!(
                "{}.{}.{}",
                h.header("webhook-id"),
                h.header("webhook-timestamp"),
                String::from_utf8_lossy(&h.body)
            );
            (h.header("webhook-signature"), msg)
        }
    };
    let (sig, msg) = signatures(1).await;
    use base64::Engine;
    let key = base64::engine::general_purpose::STANDARD
        .decode(new.trim_start_matches("whsec_"))
        .unwrap();
    let with_new = hmac_b64_bytes(&key, msg.as_bytes());
    let with_old = hmac_b64("old-secret", msg.as_bytes());
    assert_eq!(sig, format!("v1,{with_new} v1,{with_old}"));
    // No grace: the previous secret stops signing at once.
    let (s, v) = admin(
        &fh,
        "POST",
        "/webhooks/rot/rotate-secret",
        Some(json!({"secret": "third-secret", "keep_previous_for": "0s"})),
    )
    .await;
    assert_eq!(
        (s, v["previous_secret_until"].is_null()),
        (200, true),
        "{v}"
    );
    let (sig, msg) = signatures(2).await;
    assert_eq!(
        sig,
        format!("v1,{}", hmac_b64("third-secret", msg.as_bytes()))
    );
}
