//! Helpers for `scripts/bench`: seed Flagr, count what a webhook receives, time change events.
//!
//! ```text
//! bench_tool seed <flagr-api> <flags>            create flags with segments, constraints, distributions,
//!                                                recording on (dataRecordsEnabled)
//! bench_tool sink <addr>                         a receiver that answers 200 and counts; GET /count
//! bench_tool events <api> <listen> <n> <mode>    n changes through <api>; a receiver on <listen>
//!                                                timing each event (mode: flaghook | flagr)
//! bench_tool micro <records>                     one core: map, serialise, batch and gzip records
//! bench_tool rate <url> <per-sec> <seconds> [fresh] POST /evaluation at a fixed rate; latency from
//!                                                each request's scheduled time (no coordinated
//!                                                omission); prints p50/p99/max. `fresh`: each
//!                                                request on a connection of its own, closed
//!                                                after its answer
//! bench_tool changes <api> <flags> <n> <clients>  n description changes over flags 1..=flags,
//!                                                from <clients> concurrent clients; prints how
//!                                                many Flagr applied and how long it took
//! ```
//! Everything talks to loopback only, in bounded loops.

// A benchmark measures wall time, and a tool that cannot do its job should stop loudly.
#![allow(clippy::disallowed_types, clippy::unwrap_used)]

use std::collections::HashMap;
use std::io::Read;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::HeaderMap;
use serde_json::{json, Value};

#[tokio::main(flavor = "multi_thread", worker_threads = 2)]
async fn main() {
    let args: Vec<String> = std::env::args().skip(1).collect();
    match args.first().map(String::as_str) {
        Some("seed") => seed(&args[1], args[2].parse().expect("flag count")).await,
        Some("sink") => sink(&args[1]).await,
        Some("events") => events(&args[1], &args[2], args[3].parse().expect("n"), &args[4]).await,
        Some("micro") => micro(args[1].parse().expect("records")),
        Some("rate") => {
            rate(
                &args[1],
                args[2].parse().expect("requests per second"),
                args[3].parse().expect("seconds"),
                args.get(4).is_some_and(|a| a == "fresh"),
            )
            .await
        }
        Some("changes") => {
            changes(
                &args[1],
                args[2].parse().expect("flags"),
                args[3].parse().expect("n"),
                args[4].parse().expect("clients"),
            )
            .await
        }
        _ => eprintln!("usage: see the module docs"),
    }
}

fn http() -> reqwest::Client {
    reqwest::Client::builder()
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

async fn post(c: &reqwest::Client, url: String, body: Value) -> Value {
    let r = c
        .request(reqwest::Method::POST, url)
        .json(&body)
        .send()
        .await
        .expect("flagr answers");
    r.json().await.unwrap_or(Value::Null)
}

async fn put(c: &reqwest::Client, url: String, body: Value) -> Value {
    let r = c.put(url).json(&body).send().await.expect("flagr answers");
    r.json().await.unwrap_or(Value::Null)
}

/// Realistic flags: three variants, two segments (one constrained), distributions, a tag.
async fn seed(api: &str, n: usize) {
    let c = http();
    for i in 0..n {
        let f = post(
            &c,
            format!("{api}/flags"),
            json!({"key": format!("flag-{i}"), "description": format!("benchmark flag {i}")}),
        )
        .await;
        let id = f["id"].as_i64().expect("flag id");
        let mut variants = vec![];
        for k in ["control", "treatment-a", "treatment-b"] {
            let v = post(
                &c,
                format!("{api}/flags/{id}/variants"),
                json!({"key": k, "attachment": {"color": k}}),
            )
            .await;
            variants.push((v["id"].as_i64().expect("variant id"), k));
        }
        for (j, (desc, rollout)) in [("CA and NY users", 100), ("everyone else", 50)]
            .iter()
            .enumerate()
        {
            let s = post(
                &c,
                format!("{api}/flags/{id}/segments"),
                json!({"description": desc, "rolloutPercent": rollout}),
            )
            .await;
            let sid = s["id"].as_i64().expect("segment id");
            if j == 0 {
                post(
                    &c,
                    format!("{api}/flags/{id}/segments/{sid}/constraints"),
                    json!({"property": "state", "operator": "IN", "value": "[\"CA\",\"NY\"]"}),
                )
                .await;
                post(
                    &c,
                    format!("{api}/flags/{id}/segments/{sid}/constraints"),
                    json!({"property": "age", "operator": "GTE", "value": "18"}),
                )
                .await;
            }
            let d: Vec<Value> = variants
                .iter()
                .zip([34, 33, 33])
                .map(|((vid, k), p)| json!({"variantID": vid, "variantKey": k, "percent": p}))
                .collect();
            put(
                &c,
                format!("{api}/flags/{id}/segments/{sid}/distributions"),
                json!({"distributions": d}),
            )
            .await;
        }
        post(
            &c,
            format!("{api}/flags/{id}/tags"),
            json!({"value": "bench"}),
        )
        .await;
        put(
            &c,
            format!("{api}/flags/{id}/enabled"),
            json!({"enabled": true}),
        )
        .await;
        // Flagr's recording switch: impressions follow it.
        put(
            &c,
            format!("{api}/flags/{id}"),
            json!({"dataRecordsEnabled": true}),
        )
        .await;
    }
    println!("seeded {n} flags");
}

/// Counts requests and impression records; answers 200 at once.
async fn sink(addr: &str) {
    let requests = Arc::new(AtomicU64::new(0));
    let records = Arc::new(AtomicU64::new(0));
    let (rq, rc) = (requests.clone(), records.clone());
    let app = axum::Router::new()
        .route(
            "/count",
            axum::routing::get(move || {
                let (rq, rc) = (rq.clone(), rc.clone());
                async move {
                    axum::Json(json!({"requests": rq.load(Ordering::Relaxed), "records": rc.load(Ordering::Relaxed)}))
                }
            }),
        )
        .fallback(move |headers: HeaderMap, body: Bytes| {
            let (rq, rc) = (requests.clone(), records.clone());
            async move {
                rq.fetch_add(1, Ordering::Relaxed);
                let raw = if headers.get("content-encoding").is_some_and(|v| v == "gzip") {
                    let mut out = Vec::new();
                    let _ = flate2::read::GzDecoder::new(&body[..]).read_to_end(&mut out);
                    out
                } else {
                    body.to_vec()
                };
                // Each record is checked to be JSON but no tree is built: the receiver shares the
                // two cores with Flagr here, and in production it runs elsewhere.
                if let Ok(a) = serde_json::from_slice::<Vec<serde::de::IgnoredAny>>(&raw) {
                    rc.fetch_add(a.len() as u64, Ordering::Relaxed);
                }
                "ok"
            }
        });
    let l = tokio::net::TcpListener::bind(addr).await.expect("bind");
    axum::serve(l, app).await.expect("serve");
}

fn percentile(sorted: &[f64], p: f64) -> f64 {
    if sorted.is_empty() {
        return f64::NAN;
    }
    let i = ((sorted.len() as f64 - 1.0) * p).round() as usize;
    sorted[i]
}

/// `n` description changes through `api`; the receiver on `listen` takes the time each event
/// arrives, and the latency is measured from the moment the client had Flagr's answer.
async fn events(api: &str, listen: &str, n: usize, mode: &str) {
    let arrived: Arc<Mutex<HashMap<String, Instant>>> = Arc::default();
    let a2 = arrived.clone();
    let mode_s = mode.to_string();
    let app = axum::Router::new().fallback(move |body: Bytes| {
        let a2 = a2.clone();
        let mode = mode_s.clone();
        async move {
            let now = Instant::now();
            let v: Value = serde_json::from_slice(&body).unwrap_or_default();
            // flaghook: the change is in `changes`; Flagr's notifier: in `post_value` (detailed diff).
            let desc = if mode == "flagr" {
                v["post_value"]
                    .as_str()
                    .and_then(|p| serde_json::from_str::<Value>(p).ok())
                    .and_then(|p| p["Description"].as_str().map(str::to_string))
            } else {
                v["changes"]["description"]["after"]
                    .as_str()
                    .map(str::to_string)
            };
            if let Some(d) = desc {
                a2.lock().expect("lock").entry(d).or_insert(now);
            }
            "ok"
        }
    });
    let l = tokio::net::TcpListener::bind(listen).await.expect("bind");
    tokio::spawn(async move {
        let _ = axum::serve(l, app).await;
    });
    let c = http();
    let flag = post(
        &c,
        format!("{api}/flags"),
        json!({"key": format!("latency-{mode}-{}", std::process::id()), "description": "start"}),
    )
    .await;
    let id = flag["id"].as_i64().expect("flag id");
    let mut answered = HashMap::new();
    for i in 0..n {
        let d = format!("change-{i}");
        let r = c
            .put(format!("{api}/flags/{id}"))
            .json(&json!({"description": d}))
            .send()
            .await
            .expect("answer");
        let _ = r.bytes().await;
        answered.insert(d, Instant::now());
        // About 200 changes a second: a busy admin, not a flood.
        tokio::time::sleep(Duration::from_millis(5)).await;
    }
    let deadline = Instant::now() + Duration::from_secs(30);
    while arrived.lock().expect("lock").len() < n && Instant::now() < deadline {
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let got = arrived.lock().expect("lock").clone();
    let mut lat: Vec<f64> = answered
        .iter()
        .filter_map(|(d, t0)| {
            got.get(d)
                .map(|t1| t1.saturating_duration_since(*t0).as_secs_f64() * 1000.0)
        })
        .collect();
    lat.sort_by(f64::total_cmp);
    println!(
        "{{\"mode\":\"{mode}\",\"changes\":{n},\"received\":{},\"p50_ms\":{:.2},\"p99_ms\":{:.2},\"max_ms\":{:.2}}}",
        lat.len(),
        percentile(&lat, 0.5),
        percentile(&lat, 0.99),
        lat.last().copied().unwrap_or(f64::NAN)
    );
}

async fn changes(api: &str, flags: usize, n: usize, clients: usize) {
    let c = http();
    let started = Instant::now();
    let next = Arc::new(AtomicU64::new(0));
    let applied = Arc::new(AtomicU64::new(0));
    let mut tasks = Vec::new();
    for _ in 0..clients {
        let (c, next, applied, api) = (c.clone(), next.clone(), applied.clone(), api.to_string());
        tasks.push(tokio::spawn(async move {
            loop {
                let i = next.fetch_add(1, Ordering::Relaxed) as usize;
                if i >= n {
                    return;
                }
                let flag = i % flags + 1;
                let r = c
                    .put(format!("{api}/flags/{flag}"))
                    .json(&json!({"description": format!("bench-{i}")}))
                    .send()
                    .await;
                if matches!(r, Ok(ref r) if r.status() == 200) {
                    applied.fetch_add(1, Ordering::Relaxed);
                }
            }
        }));
    }
    for t in tasks {
        let _ = t.await;
    }
    println!(
        "{{\"changes\":{n},\"applied\":{},\"seconds\":{:.3}}}",
        applied.load(Ordering::Relaxed),
        started.elapsed().as_secs_f64()
    );
}

/// The impression path on one core: read Flagr's answers, write the records, batch, gzip. Prints records per second.
fn micro(n: usize) {
    let ctx = flaghook::impressions::Context {
        environment_id: "env".into(),
        environment_name: "production".into(),
        machine_name: "10.0.0.1".into(),
        machine_ip: "10.0.0.1".into(),
        sdk: "goflagr".into(),
        sdk_version: "1.0.0".into(),
        time_ms: 1_700_000_000_000,
    };
    // Flagr 1.2.3's batch answers as scripts/bench asks for them: 10 entities x 5 flags, the
    // results entity by entity, every field Flagr writes.
    let states = ["CA", "NY", "TX", "WA"];
    let answers: Vec<Vec<u8>> = (0..100)
        .map(|i| {
            let results = (0..50).map(|k| {
                let (e, f) = (k / 5, i % 45 + k % 5);
                json!({
                    "evalContext": {"entityContext": {"age": 10 + (i + e) % 70, "state": states[(i + e) % 4]},
                        "entityID": format!("user-{}", i * 10 + e), "entityType": "user", "flagKey": format!("flag-{f}")},
                    "evalDebugLog": {"segmentDebugLogs": null},
                    "flagID": f + 1, "flagKey": format!("flag-{f}"), "flagSnapshotID": 2 * f + 2,
                    "recordSource": "evaluation", "segmentID": f + 1, "timestamp": "2026-12-03T22:23:10Z",
                    "variantAttachment": null, "variantID": f + 1, "variantKey": "on"
                })
            });
            serde_json::to_vec(&json!({"evaluationResults": results.collect::<Vec<_>>()}))
                .expect("json")
        })
        .collect();
    let started = Instant::now();
    let (mut records, mut raw, mut gz, mut batch, mut batch_records) =
        (0usize, 0usize, 0usize, b"[".to_vec(), 0usize);
    let mut gzip_time = Duration::ZERO;
    let mut i = 0;
    let mut encoded = flaghook::impressions::Encoded::default();
    let gate = flaghook::impressions::Gate::all();
    while records < n {
        encoded.bytes.clear();
        encoded.ends.clear();
        flaghook::impressions::encode_evaluation(
            &answers[i % answers.len()],
            &ctx,
            &gate,
            &mut encoded,
        )
        .expect("json");
        i += 1;
        for r in encoded.records() {
            if batch_records > 0 {
                batch.push(b',');
            }
            batch.extend_from_slice(r);
            batch_records += 1;
            records += 1;
            if batch_records == 5000 {
                batch.push(b']');
                let t = Instant::now();
                let out = flaghook::impressions::batcher::gzip(&batch).expect("gzip");
                gzip_time += t.elapsed();
                raw += batch.len();
                gz += out.len();
                // As the batcher does: the next batch sized like the last.
                batch = Vec::with_capacity(batch.len());
                batch.push(b'[');
                batch_records = 0;
            }
        }
    }
    let secs = started.elapsed().as_secs_f64();
    println!(
        "{{\"records\":{records},\"seconds\":{secs:.3},\"records_per_sec\":{:.0},\"gzip_share\":{:.3},\"compression_ratio\":{:.3}}}",
        records as f64 / secs,
        gzip_time.as_secs_f64() / secs,
        gz as f64 / raw.max(1) as f64
    );
}

/// Evaluations at a fixed rate for `secs` seconds. Each request is timed from when it was due,
/// so a stall counts against every request it delayed. `fresh`: no connection is kept, so each
/// request opens one and closes it after its answer (clients that do not keep theirs).
async fn rate(base: &str, per_sec: u64, secs: u64, fresh: bool) {
    let client = reqwest::Client::builder()
        .no_proxy()
        .pool_max_idle_per_host(if fresh { 0 } else { 256 })
        .build()
        .unwrap();
    let url = format!("{base}/api/v1/evaluation");
    let n = per_sec * secs;
    let every = Duration::from_secs_f64(1.0 / per_sec as f64);
    // Paced by a thread of its own: tokio's timer ticks by the millisecond, which would send
    // the requests in bursts (five at a time at 5,000/s) instead of one every 200 µs.
    let (tx, mut due_rx) = tokio::sync::mpsc::unbounded_channel();
    let start = Instant::now() + Duration::from_millis(50);
    std::thread::spawn(move || {
        for i in 0..n {
            let due = start + every * i as u32;
            let now = Instant::now();
            if due > now {
                std::thread::sleep(due - now);
            }
            if tx.send((i, due)).is_err() {
                return;
            }
        }
    });
    let mut tasks = Vec::with_capacity(n as usize);
    while let Some((i, due)) = due_rx.recv().await {
        let (client, url) = (client.clone(), url.clone());
        tasks.push(tokio::spawn(async move {
            let body = format!(
                r#"{{"entityID":"user-{i}","entityType":"user","entityContext":{{"state":"CA"}},"flagKey":"flag-{}"}}"#,
                i % 50
            );
            let ok = client
                .post(&url)
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .map(|r| r.status().is_success())
                .unwrap_or(false);
            (ok, due.elapsed())
        }));
    }
    let mut lat = Vec::with_capacity(tasks.len());
    let mut failed = 0;
    for t in tasks {
        let (ok, d) = t.await.unwrap();
        if !ok {
            failed += 1;
        }
        lat.push(d.as_secs_f64() * 1000.0);
    }
    lat.sort_by(|a, b| a.partial_cmp(b).unwrap());
    let q = |p: f64| lat[((lat.len() as f64 * p) as usize).min(lat.len() - 1)];
    println!(
        "{{\"requests\":{},\"failed\":{failed},\"p50_ms\":{:.3},\"p99_ms\":{:.3},\"max_ms\":{:.3}}}",
        lat.len(),
        q(0.5),
        q(0.99),
        lat[lat.len() - 1]
    );
}
