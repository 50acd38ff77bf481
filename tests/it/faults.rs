//! Faults and abuse without a Flagr: scripted upstreams and receivers that misbehave on purpose.
//! Each case asserts what the client, the receiver and the metrics see.

use std::io::{Read, Write};
use std::net::TcpStream;
use std::sync::Arc;
use std::time::Duration;

use serde_json::json;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

use crate::support::*;

/// An upstream that answers every request with `reply` (raw HTTP bytes), then does `after`.
async fn scripted_upstream(reply: &'static [u8], close_after: bool) -> std::net::SocketAddr {
    let l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = l.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                loop {
                    let n = match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(n) => n,
                    };
                    // Wait for the end of the request headers (bodies here are small).
                    if !buf[..n].windows(4).any(|w| w == b"\r\n\r\n") {
                        continue;
                    }
                    let _ = s.write_all(reply).await;
                    if close_after {
                        // Close with the body short of its Content-Length.
                        return;
                    }
                }
            });
        }
    });
    addr
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn truncated_json_from_upstream_reaches_the_client_as_is_and_derives_nothing() {
    const REPLY: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 20\r\n\r\n{\"id\": 1, \"key\": \"tr";
    let up = scripted_upstream(REPLY, false).await;
    let r = Receiver::start(vec![]).await;
    let fh = Flaghook::start(
        &format!("http://{up}"),
        &format!(
            "[flagr]\nsnapshot_mode = \"snapshots\"\n{FAST_DELIVERY}{}",
            webhook("w", &r, "")
        ),
    )
    .await;
    let resp = client()
        .post(format!("{}/flags", fh.api()))
        .header("content-type", "application/json")
        .body("{\"description\": \"x\"}")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
    assert_eq!(&resp.bytes().await.unwrap()[..], &REPLY[REPLY.len() - 20..]);
    fh.wait_metric("flaghook_derive_errors_total{reason=\"no_flag_id\"}", 1.0)
        .await;
    assert_eq!(
        fh.metric("flaghook_derive_errors_total{reason=\"no_flag_id\"}")
            .await,
        1.0
    );
    assert!(r.hits().is_empty());
    // Malformed JSON from a client is Flagr's business: passed on untouched.
    let resp = client()
        .post(format!("{}/flags", fh.api()))
        .header("content-type", "application/json")
        .body("{nope")
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn upstream_reset_mid_body_cuts_the_client_and_nothing_else() {
    // Announces 100 bytes, sends 10, resets.
    const REPLY: &[u8] = b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 100\r\n\r\n{\"id\": 1, ";
    let up = scripted_upstream(REPLY, true).await;
    let fh = Flaghook::start(&format!("http://{up}"), "").await;
    // The client sees the answer cut short (at the headers or in the body), never a complete one.
    let cut = match client()
        .post(format!("{}/flags", fh.api()))
        .body("{}")
        .send()
        .await
    {
        Err(_) => true,
        Ok(resp) => resp.bytes().await.is_err(),
    };
    assert!(cut);
    fh.wait_metric(
        "flaghook_tap_uninspected_total{direction=\"response\",reason=\"incomplete\"}",
        1.0,
    )
    .await;
    assert_eq!(
        client()
            .get(format!("{}/healthz", fh.admin))
            .send()
            .await
            .unwrap()
            .status(),
        200
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn slow_stalled_and_vanishing_clients() {
    let echo = Receiver::start(vec![]).await;
    let fh = Flaghook::start(
        &format!("http://{}", echo.addr),
        "[proxy]\nupstream_timeout = \"2s\"\nheader_read_timeout = \"1s\"\n",
    )
    .await;
    let addr = fh.proxy.trim_start_matches("http://").to_string();
    // A slow client: the body trickles in; the request still completes.
    let a2 = addr.clone();
    let slow = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(&a2).unwrap();
        s.write_all(b"POST /slow HTTP/1.1\r\nHost: x\r\nContent-Length: 10\r\n\r\n")
            .unwrap();
        for b in b"0123456789" {
            std::thread::sleep(Duration::from_millis(50));
            s.write_all(&[*b]).unwrap();
        }
        let mut out = String::new();
        s.set_read_timeout(Some(Duration::from_secs(10))).unwrap();
        let mut buf = [0u8; 1024];
        let n = s.read(&mut buf).unwrap();
        out.push_str(&String::from_utf8_lossy(&buf[..n]));
        out
    });
    assert!(slow.await.unwrap().starts_with("HTTP/1.1 200"));
    assert_eq!(
        &echo.hits().iter().find(|h| h.path == "/slow").unwrap().body[..],
        b"0123456789"
    );
    // A client that stalls in its headers is cut at header_read_timeout.
    let a3 = addr.clone();
    let stalled = tokio::task::spawn_blocking(move || {
        let mut s = TcpStream::connect(&a3).unwrap();
        s.write_all(b"GET /stall HTTP/1.1\r\nHost: x\r\n").unwrap();
        s.set_read_timeout(Some(Duration::from_secs(20))).unwrap();
        let mut buf = [0u8; 1024];
        // flaghook closes the connection (0) or answers an error; what must not happen is the
        // read timing out because the connection is still held open.
        match s.read(&mut buf) {
            Ok(n) => Ok(String::from_utf8_lossy(&buf[..n]).to_string()),
            Err(e) => Err(e.kind()),
        }
    });
    let stalled = stalled.await.unwrap();
    assert!(
        !matches!(
            stalled,
            Err(std::io::ErrorKind::WouldBlock | std::io::ErrorKind::TimedOut)
        ),
        "a client stalled in its headers was held open: {stalled:?}"
    );
    // No request reached the upstream from the stalled client.
    assert!(echo.hits().iter().all(|h| h.path != "/stall"));
    // Clients that hang up mid-request.
    for _ in 0..10 {
        let mut s = TcpStream::connect(&addr).unwrap();
        s.write_all(b"POST /gone HTTP/1.1\r\nHost: x\r\nContent-Length: 1000\r\n\r\npartial")
            .unwrap();
        drop(s);
    }
    let r = client()
        .get(format!("{}/after", fh.proxy))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn receivers_that_are_slow_garbage_closing_or_bad_tls() {
    let echo = Receiver::start(vec![]).await;
    // Slow but within the timeout: delivered.
    let slow_l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let slow_addr = slow_l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = slow_l.accept().await {
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                let _ = s.read(&mut buf).await;
                tokio::time::sleep(Duration::from_millis(800)).await;
                let _ = s
                    .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 2\r\n\r\nok")
                    .await;
            });
        }
    });
    // Not HTTP at all.
    let garbage = scripted_upstream(b"\x00\x01garbage that is not HTTP\r\n\r\n", true).await;
    // Accepts and closes at once.
    let closing_l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let closing = closing_l.local_addr().unwrap();
    tokio::spawn(async move {
        while let Ok((s, _)) = closing_l.accept().await {
            drop(s);
        }
    });
    // https with a self-signed certificate made here.
    let cert = rcgen::generate_simple_self_signed(vec!["localhost".to_string()]).unwrap();
    let key = rustls_key(&cert);
    let tls_cfg = tokio_rustls::rustls::ServerConfig::builder_with_provider(Arc::new(
        tokio_rustls::rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()
    .unwrap()
    .with_no_client_auth()
    .with_single_cert(vec![cert.cert.der().clone()], key)
    .unwrap();
    let acceptor = tokio_rustls::TlsAcceptor::from(Arc::new(tls_cfg));
    let tls_l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let tls_addr = tls_l.local_addr().unwrap();
    let tls_hits = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let th = tls_hits.clone();
    tokio::spawn(async move {
        while let Ok((s, _)) = tls_l.accept().await {
            let acceptor = acceptor.clone();
            let th = th.clone();
            tokio::spawn(async move {
                if let Ok(mut t) = acceptor.accept(s).await {
                    th.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    let _ = t
                        .write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                        .await;
                }
            });
        }
    });
    let hooks = [
        ("slow", format!("http://{slow_addr}/h")),
        ("garbage", format!("http://{garbage}/h")),
        ("closing", format!("http://{closing}/h")),
        ("badtls", format!("https://localhost:{}/h", tls_addr.port())),
        ("echo", echo.url.clone()),
    ];
    let mut cfg = String::from("[admin]\ntoken = \"t\"\n[delivery]\nallow_loopback = true\ntimeout = \"2s\"\nretry_schedule = [\"0s\", \"100ms\"]\n");
    for (id, url) in &hooks {
        cfg.push_str(&format!("[[webhooks]]\nid = \"{id}\"\nurl = \"{url}\"\n"));
    }
    let fh = Flaghook::start(&format!("http://{}", echo.addr), &cfg).await;
    for (id, _) in &hooks {
        let r = client()
            .post(format!("{}/api/webhooks/{id}/test", fh.admin))
            .bearer_auth("t")
            .send()
            .await
            .unwrap();
        assert_eq!(r.status(), 202);
    }
    let fh2 = &fh;
    let outcome = |id: &'static str, o: &'static str| async move {
        fh2.metric(&format!(
            "flaghook_deliveries_total{{endpoint=\"{id}\",outcome=\"{o}\"}}"
        ))
        .await
    };
    assert!(
        wait_until(Duration::from_secs(20), || async {
            outcome("slow", "success").await == 1.0
                && outcome("echo", "success").await == 1.0
                && outcome("garbage", "error_retryable").await == 2.0
                && outcome("closing", "error_retryable").await == 2.0
                && outcome("badtls", "error_retryable").await == 2.0
        })
        .await,
        "{}",
        fh.metrics().await
    );
    for id in ["garbage", "closing", "badtls"] {
        assert_eq!(
            fh.metric(&format!(
                "flaghook_dropped_total{{endpoint=\"{id}\",reason=\"retries_exhausted\"}}"
            ))
            .await,
            1.0,
            "{id}"
        );
    }
    assert_eq!(
        tls_hits.load(std::sync::atomic::Ordering::Relaxed),
        0,
        "a request went over an untrusted certificate"
    );
    let log = fh.log();
    assert!(
        log.to_lowercase().contains("certificate"),
        "the TLS failure is logged with its reason"
    );
}

fn rustls_key(
    cert: &rcgen::CertifiedKey<rcgen::KeyPair>,
) -> tokio_rustls::rustls::pki_types::PrivateKeyDer<'static> {
    tokio_rustls::rustls::pki_types::PrivateKeyDer::Pkcs8(cert.signing_key.serialize_der().into())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_dead_receiver_and_100k_events_stay_within_the_bound() {
    let dead = format!("http://127.0.0.1:{}/gone", free_port());
    let echo = Receiver::start(vec![]).await;
    let cfg = format!("[admin]\ntoken = \"t\"\n[delivery]\nallow_loopback = true\nqueue_max_events = 1000\n[[webhooks]]\nid = \"dead\"\nurl = \"{dead}\"\n");
    let fh = Arc::new(Flaghook::start(&format!("http://{}", echo.addr), &cfg).await);
    let mut tasks = Vec::new();
    for _ in 0..8 {
        let fh = fh.clone();
        tasks.push(tokio::spawn(async move {
            let c = client();
            let mut ok = 0u64;
            for _ in 0..12_500 {
                let r = c
                    .post(format!("{}/api/webhooks/dead/test", fh.admin))
                    .bearer_auth("t")
                    .send()
                    .await
                    .unwrap();
                ok += (r.status() == 202) as u64;
            }
            ok
        }));
    }
    let mut accepted = 0;
    for t in tasks {
        accepted += t.await.unwrap();
    }
    // Events accepted last may still be on their way from the API to the endpoint's worker
    // (a bounded channel): read until they are accounted for, at most for 10 s.
    let (mut m, mut depth, mut dropped) = (String::new(), 0.0, 0.0);
    for _ in 0..100 {
        m = fh.metrics().await;
        depth = metric_in(&m, "flaghook_queue_depth{endpoint=\"dead\"}");
        dropped = metric_in(
            &m,
            "flaghook_dropped_total{endpoint=\"dead\",reason=\"queue_full\"}",
        );
        if depth + dropped >= accepted as f64 - 20.0 {
            break;
        }
        tokio::time::sleep(std::time::Duration::from_millis(100)).await;
    }
    let attempts: f64 = ["success", "error_retryable", "error_final"]
        .iter()
        .map(|o| {
            metric_in(
                &m,
                &format!("flaghook_deliveries_total{{endpoint=\"dead\",outcome=\"{o}\"}}"),
            )
        })
        .sum();
    assert!(depth <= 1000.0, "queue depth {depth} over its bound");
    // Every event is accounted for: queued, dropped (counted) or in an attempt.
    assert!(accepted >= 99_000, "{accepted}");
    assert!(
        depth + dropped >= accepted as f64 - 20.0,
        "depth {depth} + dropped {dropped} vs {accepted} (attempts {attempts})"
    );
    assert!(fh
        .log()
        .contains("queue full: dropped the oldest undelivered request"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn secrets_never_appear_in_logs_metrics_or_the_admin_api() {
    let r = Receiver::start(vec![Reply::Status(500), Reply::Status(500)]).await;
    let secrets = [
        "wh-secret-111",
        "wh-old-secret-222",
        "admin-token-333",
        "forge-secret-444",
        "imp-secret-555",
        "header-secret-666",
    ];
    let cfg = format!(
        "[admin]\ntoken = \"env:TOK\"\n[log]\nlevel = \"debug\"\n{FAST_DELIVERY}\
         [[webhooks]]\nid = \"w\"\nurl = \"{}\"\nsecret = \"{}\"\nprevious_secret = \"{}\"\nheaders = {{ Authorization = \"Bearer {}\" }}\n\
         [[impression_webhooks]]\nid = \"imp\"\nurl = \"{}\"\nsecret = \"{}\"\n\
         [[git_repositories]]\nid = \"repo\"\nurl = \"file:///nonexistent/repo.git\"\npoll_interval = \"1h\"\nsecrets = {{ github = \"{}\" }}\n",
        r.url, secrets[0], secrets[1], secrets[5], r.url, secrets[4], secrets[3]
    );
    let fh =
        Flaghook::start_with_env(&format!("http://{}", r.addr), &cfg, &[("TOK", secrets[2])]).await;
    let c = client();
    let mut seen = String::new();
    for path in [
        "/api/webhooks",
        "/api/webhooks/w",
        "/api/webhooks/imp",
        "/api/gitsync",
        "/api/webhooks/w/deliveries",
    ] {
        seen.push_str(
            &c.get(format!("{}{path}", fh.admin))
                .bearer_auth(secrets[2])
                .send()
                .await
                .unwrap()
                .text()
                .await
                .unwrap(),
        );
    }
    c.post(format!("{}/api/webhooks/w/test", fh.admin))
        .bearer_auth(secrets[2])
        .send()
        .await
        .unwrap();
    c.post(format!("{}/api/webhooks/w/test", fh.admin))
        .bearer_auth("wrong")
        .send()
        .await
        .unwrap();
    r.wait_for(2).await;
    // A push with a wrong signature, so the forge path logs too.
    c.post(format!("{}/hooks/git/github", fh.admin))
        .header("x-github-event", "push")
        .header("x-hub-signature-256", "sha256=00")
        .body(json!({"ref": "refs/heads/main", "after": "a", "repository": {"clone_url": "file:///nonexistent/repo.git"}}).to_string())
        .send().await.unwrap();
    tokio::time::sleep(Duration::from_millis(500)).await;
    seen.push_str(&fh.metrics().await);
    seen.push_str(&fh.log());
    assert!(fh.log().contains("DEBUG"), "the log ran at debug level");
    for s in secrets {
        assert!(!seen.contains(s), "secret {s} leaked");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_delivers_what_is_queued_and_reports_what_is_not() {
    // A receiver that takes its time: the queue is not empty at SIGTERM.
    let slow_l = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let slow_addr = slow_l.local_addr().unwrap();
    let got = Arc::new(std::sync::atomic::AtomicUsize::new(0));
    let g2 = got.clone();
    tokio::spawn(async move {
        while let Ok((mut s, _)) = slow_l.accept().await {
            let g2 = g2.clone();
            tokio::spawn(async move {
                let mut buf = vec![0u8; 65536];
                loop {
                    match s.read(&mut buf).await {
                        Ok(0) | Err(_) => return,
                        Ok(_) => {}
                    }
                    tokio::time::sleep(Duration::from_millis(100)).await;
                    g2.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                    if s.write_all(b"HTTP/1.1 200 OK\r\nContent-Length: 0\r\n\r\n")
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
            });
        }
    });
    let dead = format!("http://127.0.0.1:{}/gone", free_port());
    let echo = Receiver::start(vec![]).await;
    let cfg = format!(
        "[admin]\ntoken = \"t\"\n[store]\npath = \"\"\n[delivery]\nallow_loopback = true\nmax_in_flight = 1\nshutdown_deadline = \"5s\"\n\
         [[webhooks]]\nid = \"slow\"\nurl = \"http://{slow_addr}/h\"\n[[webhooks]]\nid = \"dead\"\nurl = \"{dead}\"\n"
    );
    let mut fh = Flaghook::start(&format!("http://{}", echo.addr), &cfg).await;
    for _ in 0..10 {
        for id in ["slow", "dead"] {
            client()
                .post(format!("{}/api/webhooks/{id}/test", fh.admin))
                .bearer_auth("t")
                .send()
                .await
                .unwrap();
        }
    }
    let (status, log) = tokio::task::spawn_blocking(move || (fh.terminate(), fh.log()))
        .await
        .unwrap();
    assert!(status.success(), "{status:?}\n{log}");
    assert_eq!(
        got.load(std::sync::atomic::Ordering::Relaxed),
        10,
        "every queued event reached the slow receiver"
    );
    assert!(log.contains("requests left undelivered"), "{log}");
    assert!(log.contains("endpoint=dead undelivered=10"), "{log}");
}
