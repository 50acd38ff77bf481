//! Metrics for real: promtool on flaghook's /metrics after traffic of every kind, a real
//! Prometheus server scraping flaghook, and the Grafana dashboard's queries against real names.

use std::collections::BTreeSet;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::*;

/// Traffic of every kind: mutations with events delivered and rejected, evaluations with
/// impressions, passthrough reads, a 404 from Flagr.
async fn traffic(fh: &Flaghook, ok: &Receiver) {
    let api = fh.api();
    calls(
        &api,
        &[
            (
                "POST",
                "/flags",
                json!({"description": "m", "key": "metrics", "template": "simple_boolean_flag"}),
            ),
            ("PUT", "/flags/1/enabled", json!({"enabled": true})),
            (
                "PUT",
                "/flags/1/segments/1",
                json!({"description": "all", "rolloutPercent": 50}),
            ),
        ],
    )
    .await;
    call("GET", &format!("{api}/flags?preload=true"), None).await;
    call("GET", &format!("{api}/flags/999"), None).await;
    for i in 0..5 {
        call(
            "POST",
            &format!("{api}/evaluation"),
            Some(json!({"entityID": format!("u{i}"), "flagKey": "metrics"})),
        )
        .await;
    }
    call(
        "POST",
        &format!("{api}/evaluation/batch"),
        Some(json!({"entities": [{"entityID": "b"}], "flagKeys": ["metrics"]})),
    )
    .await;
    ok.wait_for(3).await;
    let fh2 = fh;
    assert!(
        wait_until(Duration::from_secs(10), || async move {
            fh2.metric("flaghook_impressions_delivered_total").await >= 1.0
                && fh2
                    .metric(
                        "flaghook_deliveries_total{endpoint=\"rejecting\",outcome=\"error_final\"}",
                    )
                    .await
                    >= 1.0
        })
        .await
    );
}

async fn setup() -> (Flagr, Flaghook, Receiver) {
    let f = flagr(&[]).await;
    let ok = Receiver::start(vec![]).await;
    let rejecting = Receiver::start(vec![Reply::Status(404); 100]).await;
    let sink = Receiver::start(vec![]).await;
    let cfg = format!(
        "[impressions]\nflags = \"all\"\n{FAST_DELIVERY}{}{}[[impression_webhooks]]\nid = \"imp\"\nurl = \"{}\"\nflush_interval = \"200ms\"\n",
        webhook("ok", &ok, ""),
        webhook("rejecting", &rejecting, "final_statuses = [404]"),
        sink.url
    );
    let fh = Flaghook::start(&f.url(), &cfg).await;
    traffic(&fh, &ok).await;
    (f, fh, ok)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn promtool_accepts_the_metrics_and_the_dashboard_uses_real_names() {
    let (_f, fh, _ok) = setup().await;
    let text = fh.metrics().await;
    let mut child = Command::new("promtool")
        .args(["check", "metrics"])
        .stdin(Stdio::piped())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("promtool (Debian prometheus) is installed by scripts/install-test-deps");
    child
        .stdin
        .take()
        .unwrap()
        .write_all(text.as_bytes())
        .unwrap();
    let out = child.wait_with_output().unwrap();
    assert!(
        out.status.success(),
        "promtool: {}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
    for family in [
        "flaghook_proxy_requests_total",
        "flaghook_proxy_request_duration_seconds_bucket",
        "flaghook_events_derived_total",
        "flaghook_deliveries_total",
        "flaghook_delivery_duration_seconds_bucket",
        "flaghook_queue_depth",
        "flaghook_queue_bytes",
        "flaghook_endpoint_paused",
        "flaghook_dropped_total",
        "flaghook_impressions_derived_total",
        "flaghook_impressions_delivered_total",
        "flaghook_impression_batch_records_bucket",
    ] {
        assert!(text.contains(&format!("\n{family}")), "missing {family}");
    }

    // Every metric a dashboard query names exists.
    let dash: Value = serde_json::from_str(
        &std::fs::read_to_string(concat!(
            env!("CARGO_MANIFEST_DIR"),
            "/charts/flaghook/dashboards/flaghook.json"
        ))
        .unwrap(),
    )
    .unwrap();
    let mut names = BTreeSet::new();
    for p in dash["panels"].as_array().unwrap() {
        for t in p["targets"].as_array().unwrap() {
            let expr = t["expr"].as_str().unwrap();
            let mut rest = expr;
            while let Some(i) = rest.find("flaghook_") {
                let tail = &rest[i..];
                let end = tail
                    .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                    .unwrap_or(tail.len());
                names.insert(tail[..end].to_string());
                rest = &tail[end..];
            }
        }
    }
    assert!(names.len() >= 10, "{names:?}");
    for n in &names {
        assert!(
            text.contains(&format!("\n{n}{{")) || text.contains(&format!("\n{n} ")),
            "dashboard uses {n}, which flaghook does not export"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_real_prometheus_scrapes_flaghook() {
    let (_f, fh, _ok) = setup().await;
    let dir = tempfile::tempdir().unwrap();
    let target = fh.admin.trim_start_matches("http://");
    std::fs::write(
        dir.path().join("prometheus.yml"),
        format!("global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: flaghook\n    static_configs:\n      - targets: ['{target}']\n"),
    )
    .unwrap();
    let port = free_port();
    let mut prom = Command::new("prometheus")
        .arg(format!(
            "--config.file={}",
            dir.path().join("prometheus.yml").display()
        ))
        .arg(format!(
            "--storage.tsdb.path={}",
            dir.path().join("data").display()
        ))
        .arg(format!("--web.listen-address=127.0.0.1:{port}"))
        .stdout(Stdio::null())
        .stderr(Stdio::null())
        .spawn()
        .expect("prometheus (Debian) is installed by scripts/install-test-deps");
    let query = |q: &'static str| async move {
        let r = client()
            .get(format!("http://127.0.0.1:{port}/api/v1/query"))
            .query(&[("query", q)])
            .send()
            .await;
        match r {
            Ok(r) => r.json::<Value>().await.unwrap_or(Value::Null),
            Err(_) => Value::Null,
        }
    };
    let found = wait_until(Duration::from_secs(60), || async {
        let a = query("sum(flaghook_proxy_requests_total{route_class=\"mutation\"})").await;
        let b = query("sum(flaghook_deliveries_total{endpoint=\"ok\",outcome=\"success\"})").await;
        let v = |x: &Value| {
            x["data"]["result"][0]["value"][1]
                .as_str()
                .and_then(|s| s.parse::<f64>().ok())
                .unwrap_or(0.0)
        };
        v(&a) >= 3.0 && v(&b) >= 3.0
    })
    .await;
    let _ = prom.kill();
    let _ = prom.wait();
    assert!(found, "Prometheus never saw flaghook's series");
}
