//! Tests that need no Flagr: an upstream written in the test, or none at all.

use std::time::Duration;

use serde_json::json;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_down_is_a_prompt_502_and_not_ready() {
    let dead = format!("http://127.0.0.1:{}", free_port());
    let fh = Flaghook::start(&dead, "").await;
    let (s, v) = call(
        "POST",
        &format!("{}/flags", fh.api()),
        Some(json!({"description": "x"})),
    )
    .await;
    assert_eq!(s, 502);
    assert_eq!(v["error"], "upstream_unavailable");
    let r = client()
        .get(format!("{}/readyz", fh.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 503);
    // One proxied request, one refused connection (flaghook's own reads of Flagr are not
    // proxied requests).
    assert_eq!(
        fh.metric("flaghook_proxy_upstream_errors_total{kind=\"connect\"}")
            .await,
        1.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_that_never_answers_is_a_504() {
    // Accepts connections, reads, never answers.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        let mut held = vec![];
        while let Ok((s, _)) = l.accept().await {
            held.push(s);
        }
    });
    let fh = Flaghook::start(
        &format!("http://{addr}"),
        "[proxy]\nupstream_timeout = \"1s\"\n",
    )
    .await;
    let (s, v) = call("GET", &format!("{}/flags", fh.api()), None).await;
    assert_eq!(s, 504);
    assert_eq!(v["error"], "upstream_timeout");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn headers_hop_by_hop_and_forwarded() {
    // An upstream that echoes what it received.
    let echo = Receiver::start(vec![]).await;
    let fh = Flaghook::start(&format!("http://{}", echo.addr), "").await;
    let r = client()
        .post(format!("{}/anything?q=1", fh.proxy))
        .header("connection", "x-hop")
        .header("x-hop", "secret")
        .header("x-end", "kept")
        .header("x-forwarded-for", "203.0.113.9")
        .body("payload")
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    // flaghook's own probe for snapshot support also lands here; pick the client's request
    // (its query string forwarded as it was).
    let hits = echo.hits();
    let hit = hits
        .iter()
        .find(|h| h.path == "/anything?q=1")
        .expect("request forwarded");
    assert_eq!(hit.header("x-end"), "kept");
    assert_eq!(hit.header("x-hop"), "");
    assert_eq!(hit.header("x-forwarded-for"), "203.0.113.9, 127.0.0.1");
    assert_eq!(hit.header("x-forwarded-proto"), "http");
    assert_eq!(&hit.body[..], b"payload");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_finishes_in_flight_requests_and_exits_zero() {
    // An upstream that answers after a pause, so a request is in flight at SIGTERM.
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                use tokio::io::{AsyncReadExt, AsyncWriteExt};
                let mut buf = [0u8; 1024];
                let _ = s.read(&mut buf).await;
                tokio::time::sleep(Duration::from_millis(1500)).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 4\r\n\r\ndone")
                    .await;
            });
        }
    });
    let mut fh = Flaghook::start(&format!("http://{addr}"), "").await;
    let url = format!("{}/slow", fh.proxy);
    let pending = tokio::spawn(async move {
        client()
            .get(url)
            .send()
            .await
            .unwrap()
            .text()
            .await
            .unwrap()
    });
    // Let the request reach the upstream before the signal.
    tokio::time::sleep(Duration::from_millis(500)).await;
    let status = tokio::task::spawn_blocking(move || {
        let s = fh.terminate();
        (s, fh.log())
    })
    .await
    .unwrap();
    assert!(status.0.success(), "exit {:?}\n{}", status.0, status.1);
    assert_eq!(pending.await.unwrap(), "done");
    assert!(status.1.contains("flaghook stopped"));
}

#[test]
fn bad_config_exits_64_naming_the_key() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("bad.toml");
    std::fs::write(&p, "[proxy]\nupstream = \"not a url\"\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flaghook"))
        .arg("--config")
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("proxy.upstream"), "{err}");
    assert_eq!(err.trim().lines().count(), 1, "{err}");

    std::fs::write(&p, "[proxy]\nlisten = \"127.0.0.1:1\"\n[nope]\nx = 1\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flaghook"))
        .args(["check-config"])
        .arg(&p)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("nope"));

    let shipped = concat!(env!("CARGO_MANIFEST_DIR"), "/config/flaghook.toml");
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flaghook"))
        .args(["check-config", shipped])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flaghook"))
        .args(["check-config", shipped])
        .env("FLAGHOOK_PROXY__UPSTREAM_TIMEOUT", "soon")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("upstream_timeout"));
}

#[test]
fn ids_dot_and_dot_dot_are_refused() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("ids.toml");
    for (cfg, key) in [
        (
            "[[webhooks]]\nid = \"..\"\nurl = \"https://hooks.example.com/a\"\n",
            "webhooks[0].id",
        ),
        (
            "[[git_repositories]]\nid = \"..\"\nurl = \"file:///tmp/flags.git\"\n",
            "git_repositories[0].id",
        ),
        (
            "[[webhooks]]\nid = \".\"\nurl = \"https://hooks.example.com/a\"\n",
            "webhooks[0].id",
        ),
    ] {
        std::fs::write(&p, cfg).unwrap();
        let out = std::process::Command::new(env!("CARGO_BIN_EXE_flaghook"))
            .args(["check-config"])
            .arg(&p)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(64), "{cfg}");
        assert!(String::from_utf8_lossy(&out.stderr).contains(key), "{cfg}");
    }
    std::fs::write(
        &p,
        "[[webhooks]]\nid = \"a.b\"\nurl = \"https://hooks.example.com/a\"\n",
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flaghook"))
        .args(["check-config"])
        .arg(&p)
        .output()
        .unwrap();
    assert!(out.status.success(), "a dot inside an id is fine");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_bodies_up_to_the_configured_limit_are_taken() {
    // One limit: admin.max_body_bytes (4 MiB by default), not axum's 2 MB.
    let upstream = format!("http://127.0.0.1:{}", free_port());
    let fh = Flaghook::start(&upstream, "[admin]\ntoken = \"t\"\n").await;
    let big = "d".repeat(3 << 20);
    let send = |body: serde_json::Value| {
        client()
            .post(format!("{}/api/webhooks", fh.admin))
            .bearer_auth("t")
            .json(&body)
            .send()
    };
    let r = send(
        serde_json::json!({"id": "big", "url": "https://hooks.example.com/a", "description": big}),
    )
    .await
    .unwrap();
    assert_eq!(r.status(), 201, "{}", r.text().await.unwrap_or_default());
    let too_big = "d".repeat(5 << 20);
    // Refused: 413, or the connection closed while the body was still being sent.
    match send(serde_json::json!({"id": "bigger", "url": "https://hooks.example.com/a", "description": too_big})).await {
        Ok(r) => assert_eq!(r.status(), 413),
        Err(e) => assert!(e.is_request(), "{e}"),
    }
}

/// A connection to the admin listener that sent half a request and holds on.
async fn half_request(admin: &str) -> tokio::net::TcpStream {
    use tokio::io::AsyncWriteExt;
    let mut s = tokio::net::TcpStream::connect(admin.trim_start_matches("http://"))
        .await
        .unwrap();
    s.write_all(b"GET /healthz HTTP/1.1\r\nHost: x\r\n")
        .await
        .unwrap();
    s
}

/// Sends a whole request on a new connection; returns what came back before the close.
async fn whole_request(admin: &str, path: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut s = tokio::net::TcpStream::connect(admin.trim_start_matches("http://"))
        .await
        .unwrap();
    let req = format!("GET {path} HTTP/1.1\r\nHost: x\r\nConnection: close\r\n\r\n");
    let _ = s.write_all(req.as_bytes()).await;
    let mut out = Vec::new();
    let _ = tokio::time::timeout(Duration::from_secs(20), s.read_to_end(&mut out)).await;
    String::from_utf8_lossy(&out).into_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn idle_admin_clients_can_neither_hold_shutdown_nor_fill_the_listener() {
    use tokio::io::AsyncReadExt;
    let dead = format!("http://127.0.0.1:{}", free_port());
    // A header timeout longer than the test waits: the bound on shutdown must come from the
    // grace period, not from the timeout cutting the clients first.
    let mut fh = Flaghook::start(
        &dead,
        "[proxy]\nheader_read_timeout = \"10m\"\nshutdown_grace = \"1s\"\n\
         [admin]\nmax_connections = 2\n[delivery]\nshutdown_deadline = \"1s\"\n",
    )
    .await;
    // The start-up probes' connections are gone before the test takes the two places; every
    // refusal is counted, so the count is known exactly.
    let refusals = std::cell::Cell::new(0);
    let quiet = wait_until(Duration::from_secs(20), || async {
        let m = whole_request(&fh.admin, "/metrics").await;
        if m.is_empty() {
            refusals.set(refusals.get() + 1);
        }
        metric_value(&m, "flaghook_connections_open{listener=\"admin\"}") == Some(1.0)
    })
    .await;
    assert!(quiet, "admin connections left open by the start-up probes");
    let _a = half_request(&fh.admin).await;
    let b = half_request(&fh.admin).await;
    // The listener holds its two: a third is closed without an answer.
    assert_eq!(whole_request(&fh.admin, "/healthz").await, "");
    // One leaves; the next request is served once the listener has seen it go. Every refusal
    // on the way is counted, so the count is known exactly.
    drop(b);
    let mut refused = refusals.get() + 1;
    let mut metrics = String::new();
    for _ in 0..200 {
        let got = whole_request(&fh.admin, "/metrics").await;
        if got.starts_with("HTTP/1.1 200") {
            metrics = got;
            break;
        }
        refused += 1;
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        metric_in(
            &metrics,
            "flaghook_connections_refused_total{listener=\"admin\"}"
        ),
        refused as f64,
        "{metrics}"
    );
    // SIGTERM with two clients stuck in their headers: the process still exits.
    let mut c = half_request(&fh.admin).await;
    let (status, log) = tokio::task::spawn_blocking(move || (fh.terminate(), fh.log()))
        .await
        .unwrap();
    assert!(status.success(), "exit {status:?}\n{log}");
    assert!(log.contains("flaghook stopped"), "{log}");
    let mut rest = Vec::new();
    let _ = c.read_to_end(&mut rest).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_admin_listener_cuts_clients_that_stall_in_their_headers() {
    use tokio::io::AsyncReadExt;
    let dead = format!("http://127.0.0.1:{}", free_port());
    let fh = Flaghook::start(&dead, "[proxy]\nheader_read_timeout = \"1s\"\n").await;
    let mut c = half_request(&fh.admin).await;
    let mut got = Vec::new();
    let closed = tokio::time::timeout(Duration::from_secs(30), c.read_to_end(&mut got)).await;
    assert!(closed.is_ok(), "the stalled admin client was never cut");
    let got = String::from_utf8_lossy(&got);
    assert!(got.is_empty() || got.starts_with("HTTP/1.1 408"), "{got}");
}

/// A listener that counts the connections it is offered (and answers none).
async fn connection_trap() -> (String, std::sync::Arc<std::sync::atomic::AtomicUsize>) {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", l.local_addr().unwrap());
    let seen = std::sync::Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let count = seen.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = l.accept().await {
            count.fetch_add(1, std::sync::atomic::Ordering::SeqCst);
            drop(s);
        }
    });
    (url, seen)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn allowed_hosts_connect_proxy_variables_are_ignored_and_url_secrets_stay_hidden() {
    let r = Receiver::start(vec![]).await;
    let (trap, trapped) = connection_trap().await;
    let live = format!(
        "{}?token=s3cr3t-live",
        r.url.replace("127.0.0.1", "localhost")
    );
    let dead = format!("http://localhost:{}/x?token=s3cr3t-dead", free_port());
    // A git remote with a password, on a port where nothing listens.
    let remote = format!("http://user:s3cr3t-git@127.0.0.1:{}/flags.git", free_port());
    let cfg = format!(
        "[admin]\ntoken = \"t\"\n\
         [delivery]\nallow_hosts = [\"localhost\"]\nretry_schedule = [\"0s\"]\ntimeout = \"2s\"\n\
         [[webhooks]]\nid = \"live\"\nurl = \"{live}\"\n\
         [[webhooks]]\nid = \"dead\"\nurl = \"{dead}\"\n\
         [[git_repositories]]\nid = \"flags\"\nurl = \"{remote}\"\npoll_interval = \"1h\"\n"
    );
    let proxy_env = [
        ("HTTP_PROXY", trap.as_str()),
        ("http_proxy", trap.as_str()),
        ("HTTPS_PROXY", trap.as_str()),
        ("ALL_PROXY", trap.as_str()),
        // git may use the proxy (its remotes are the operator's); only the git remote is
        // exempted, so a webhook sent through the proxy would still show in the trap.
        ("NO_PROXY", "127.0.0.1"),
        ("no_proxy", "127.0.0.1"),
    ];
    let upstream = format!("http://127.0.0.1:{}", free_port());
    let fh = Flaghook::start_with_env(&upstream, &cfg, &proxy_env).await;
    for id in ["live", "dead"] {
        let (s, v) = call_auth("POST", &format!("{}/api/webhooks/{id}/test", fh.admin), "t").await;
        assert_eq!(s, 202, "{v}");
    }
    // Allowed by name, though it resolves to loopback; reached directly, not via the proxy.
    r.wait_for(1).await;
    let failed = wait_until(Duration::from_secs(20), || async {
        let (_, v) = call_auth("GET", &format!("{}/api/webhooks/dead", fh.admin), "t").await;
        !v["last_error"].is_null()
    })
    .await;
    assert!(failed, "the dead endpoint never failed");
    let git_failed = wait_until(Duration::from_secs(20), || async {
        let (_, v) = call_auth("GET", &format!("{}/api/gitsync", fh.admin), "t").await;
        !v["repositories"][0]["last_error"].is_null()
    })
    .await;
    assert!(git_failed, "the git fetch never failed");
    let mut shown = vec![fh.log()];
    for path in [
        "/api/webhooks",
        "/api/webhooks/dead",
        "/api/webhooks/dead/deliveries",
        "/api/webhooks/live/deliveries",
        "/api/gitsync",
    ] {
        shown.push(
            call_auth("GET", &format!("{}{path}", fh.admin), "t")
                .await
                .1
                .to_string(),
        );
    }
    shown.push(fh.metrics().await);
    for text in &shown {
        assert!(
            !text.contains("s3cr3t"),
            "a URL credential is shown:\n{text}"
        );
    }
    // Neither webhook, nor the git remote, went through the environment's proxy.
    assert_eq!(trapped.load(std::sync::atomic::Ordering::SeqCst), 0);
    let (_, v) = call_auth("GET", &format!("{}/api/webhooks/dead", fh.admin), "t").await;
    assert!(v["url"].as_str().unwrap().ends_with("token=***"), "{v}");
    assert!(v["last_error"].as_str().unwrap().contains("connect"), "{v}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn webhooks_go_through_the_configured_egress_proxy() {
    let (trap, trapped) = connection_trap().await;
    let cfg = format!(
        "[admin]\ntoken = \"t\"\n[delivery]\negress_proxy = \"{trap}\"\nretry_schedule = [\"0s\"]\n\
         [[webhooks]]\nid = \"out\"\nurl = \"http://receiver.example.com/hook\"\n"
    );
    let upstream = format!("http://127.0.0.1:{}", free_port());
    let fh = Flaghook::start(&upstream, &cfg).await;
    let (s, v) = call_auth("POST", &format!("{}/api/webhooks/out/test", fh.admin), "t").await;
    assert_eq!(s, 202, "{v}");
    let reached = wait_until(Duration::from_secs(20), || async {
        trapped.load(std::sync::atomic::Ordering::SeqCst) > 0
    })
    .await;
    assert!(reached, "the egress proxy saw no connection:\n{}", fh.log());
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_delivery_log_keeps_bodies_within_its_byte_budget() {
    let r = Receiver::start(vec![]).await;
    let cfg = format!(
        "[admin]\ntoken = \"t\"\n{FAST_DELIVERY}log_body_bytes = 300\n{}",
        webhook("w", &r, "")
    );
    let upstream = format!("http://127.0.0.1:{}", free_port());
    let fh = Flaghook::start(&upstream, &cfg).await;
    let mut sizes = Vec::new();
    for n in 1..=3 {
        call_auth("POST", &format!("{}/api/webhooks/w/test", fh.admin), "t").await;
        sizes.push(r.wait_for(n).await[n - 1].body.len());
    }
    // Each ping is a few hundred bytes: two do not fit in 300, so only the newest keeps its body.
    assert!(sizes.iter().all(|s| *s <= 300 && s * 2 > 300), "{sizes:?}");
    let log = wait_until(Duration::from_secs(10), || async {
        let (_, v) = call_auth(
            "GET",
            &format!("{}/api/webhooks/w/deliveries", fh.admin),
            "t",
        )
        .await;
        v["deliveries"].as_array().is_some_and(|d| d.len() == 3)
    })
    .await;
    assert!(log);
    let (_, v) = call_auth(
        "GET",
        &format!("{}/api/webhooks/w/deliveries", fh.admin),
        "t",
    )
    .await;
    let d = v["deliveries"].as_array().unwrap().clone();
    let kept: Vec<bool> = d.iter().map(|e| e["body_kept"] == true).collect();
    assert_eq!(kept, [true, false, false], "{v}");
    let replay = |id: &serde_json::Value| {
        format!(
            "{}/api/webhooks/w/deliveries/{}/replay",
            fh.admin,
            id.as_str().unwrap()
        )
    };
    let (s, body) = call_auth("POST", &replay(&d[2]["delivery_id"]), "t").await;
    assert_eq!(
        (s, body["error"].as_str()),
        (409, Some("body_not_kept")),
        "{body}"
    );
    let (s, _) = call_auth("POST", &replay(&d[0]["delivery_id"]), "t").await;
    assert_eq!(s, 202);
    r.wait_for(4).await;
}

/// Starts the binary on `cfg`, which it must refuse with exit 64; returns what it said.
fn refused_config(cfg: &str) -> String {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("refused.toml");
    std::fs::write(&p, cfg).unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flaghook"))
        .arg("--config")
        .arg(&p)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr).into_owned();
    assert_eq!(out.status.code(), Some(64), "{err}");
    err
}

#[test]
fn a_template_that_does_not_parse_stops_start_up_naming_the_webhook_and_the_line() {
    let hook = "[[webhooks]]\nid = \"chat\"\nurl = \"https://hooks.example.com/a\"\nformat = \"template\"\n";
    let err = refused_config(&format!(
        "{hook}template = \"\"\"\n{{{{ summary }}}}\n{{% if %}}\n\"\"\"\n"
    ));
    assert!(
        err.contains("webhooks[0].template") && err.contains("line 2"),
        "{err}"
    );
    // A template file that is not there is named too.
    let err = refused_config(&format!("{hook}template_file = \"/nonexistent/chat.j2\"\n"));
    assert!(
        err.contains("webhooks[0].template_file") && err.contains("/nonexistent/chat.j2"),
        "{err}"
    );
}
