//! The proxy against a real Flagr: transparency, streaming, hang-ups, admin endpoints.

use std::io::{Read, Write};
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::*;

/// Removes what differs between two Flagr servers doing the same thing (clock readings).
fn normalise(v: &mut Value) {
    match v {
        Value::Object(m) => {
            for k in ["updatedAt", "createdAt", "timestamp"] {
                m.remove(k);
            }
            m.values_mut().for_each(normalise);
        }
        Value::Array(a) => a.iter_mut().for_each(normalise),
        _ => {}
    }
}

/// The admin workflow of the issue, as (method, path, body).
fn workflow() -> Vec<(&'static str, &'static str, Option<Value>)> {
    vec![
        (
            "POST",
            "/flags",
            Some(json!({"description": "checkout button", "key": "checkout"})),
        ),
        (
            "POST",
            "/flags",
            Some(
                json!({"description": "templated", "key": "tmpl", "template": "simple_boolean_flag"}),
            ),
        ),
        ("POST", "/flags", Some(json!({"key": "no-description"}))),
        (
            "PUT",
            "/flags/1",
            Some(json!({"description": "checkout button v2", "notes": "owner: growth"})),
        ),
        ("POST", "/flags/1/tags", Some(json!({"value": "web"}))),
        ("POST", "/flags/1/tags", Some(json!({"value": "beta"}))),
        ("GET", "/flags/1/tags", None),
        ("DELETE", "/flags/1/tags/2", None),
        ("POST", "/flags/1/variants", Some(json!({"key": "control"}))),
        (
            "POST",
            "/flags/1/variants",
            Some(json!({"key": "treatment", "attachment": {"color": "green"}})),
        ),
        (
            "PUT",
            "/flags/1/variants/3",
            Some(json!({"key": "treatment", "attachment": {"color": "blue"}})),
        ),
        (
            "POST",
            "/flags/1/segments",
            Some(json!({"description": "CA users", "rolloutPercent": 100})),
        ),
        (
            "POST",
            "/flags/1/segments",
            Some(json!({"description": "everyone", "rolloutPercent": 20})),
        ),
        (
            "PUT",
            "/flags/1/segments/reorder",
            Some(json!({"segmentIDs": [3, 2]})),
        ),
        (
            "PUT",
            "/flags/1/segments/2",
            Some(json!({"description": "CA users", "rolloutPercent": 90})),
        ),
        (
            "POST",
            "/flags/1/segments/2/constraints",
            Some(json!({"property": "state", "operator": "EQ", "value": "\"CA\""})),
        ),
        (
            "PUT",
            "/flags/1/segments/2/constraints/1",
            Some(json!({"property": "state", "operator": "IN", "value": "[\"CA\",\"NY\"]"})),
        ),
        (
            "POST",
            "/flags/1/segments/2/constraints",
            Some(json!({"property": "age", "operator": "GT", "value": "18"})),
        ),
        ("DELETE", "/flags/1/segments/2/constraints/2", None),
        (
            "PUT",
            "/flags/1/segments/2/distributions",
            Some(json!({"distributions": [
            {"variantID": 2, "variantKey": "control", "percent": 50},
            {"variantID": 3, "variantKey": "treatment", "percent": 50}]})),
        ),
        (
            "PUT",
            "/flags/1/segments/3/distributions",
            Some(json!({"distributions": [
            {"variantID": 2, "variantKey": "control", "percent": 100}]})),
        ),
        ("PUT", "/flags/1/enabled", Some(json!({"enabled": true}))),
        ("GET", "/flags/1", None),
        ("GET", "/flags?preload=true", None),
        ("GET", "/flags/snapshots/max_id", None),
        ("GET", "/flags/1/snapshots?limit=2", None),
        ("PUT", "/flags/999/enabled", Some(json!({"enabled": true}))),
        (
            "PUT",
            "/flags/1/segments/2/distributions",
            Some(json!({"distributions": [
            {"variantID": 2, "variantKey": "control", "percent": 10}]})),
        ),
        (
            "POST",
            "/flags/1/duplicate",
            Some(json!({"key": "checkout-copy"})),
        ),
        ("DELETE", "/flags/1/segments/3", None),
        ("DELETE", "/flags/4", None),
        ("PUT", "/flags/4/restore", None),
        ("DELETE", "/flags/2", None),
        ("GET", "/flags/2", None),
        ("GET", "/flags?deleted=true", None),
        ("GET", "/nope", None),
    ]
}

async fn eval_ready(api: &String) -> bool {
    let (s, v) = call(
        "POST",
        &format!("{api}/evaluation"),
        Some(json!({"entityID": "u1", "entityContext": {"state": "CA"}, "flagKey": "checkout"})),
    )
    .await;
    s == 200 && v["variantKey"].is_string()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn admin_workflow_is_identical_through_flaghook() {
    let a = flagr(&[]).await;
    let b = flagr(&[]).await;
    let fh = Flaghook::start(&a.url(), "").await;
    for (method, path, body) in workflow() {
        let (s1, mut v1) = call(method, &format!("{}{path}", fh.api()), body.clone()).await;
        let (s2, mut v2) = call(method, &format!("{}{path}", b.api()), body).await;
        normalise(&mut v1);
        normalise(&mut v2);
        assert_eq!(s1, s2, "{method} {path}");
        assert_eq!(v1, v2, "{method} {path}");
    }
    // Evaluations once both eval caches have the enabled flag.
    let (fa, ba) = (fh.api(), b.api());
    assert!(wait_until(Duration::from_secs(20), || eval_ready(&fa)).await);
    assert!(wait_until(Duration::from_secs(20), || eval_ready(&ba)).await);
    let single = json!({"entityID": "u1", "entityContext": {"state": "CA"}, "flagKey": "checkout"});
    let batch = json!({"entities": [{"entityID": "u1", "entityContext": {"state": "CA"}},
                                    {"entityID": "u2", "entityContext": {"state": "TX"}}],
                       "flagKeys": ["checkout", "checkout-copy"]});
    for (path, body) in [("/evaluation", single), ("/evaluation/batch", batch)] {
        let (s1, mut v1) = call("POST", &format!("{}{path}", fh.api()), Some(body.clone())).await;
        let (s2, mut v2) = call("POST", &format!("{}{path}", b.api()), Some(body)).await;
        normalise(&mut v1);
        normalise(&mut v2);
        assert_eq!((s1, &v1), (s2, &v2), "{path}");
    }
    let m = fh.metrics().await;
    assert!(metric_in(&m, "flaghook_proxy_requests_total{method=\"POST\",route_class=\"mutation\",status_class=\"2xx\"}") >= 10.0, "{m}");
    assert!(metric_in(&m, "flaghook_proxy_requests_total{method=\"POST\",route_class=\"evaluation\",status_class=\"2xx\"}") >= 2.0);
    assert!(metric_in(&m, "flaghook_proxy_requests_total{method=\"GET\",route_class=\"passthrough\",status_class=\"4xx\"}") >= 1.0);
    assert!(m.contains("flaghook_proxy_request_duration_seconds_bucket{route_class=\"evaluation\""));
}

/// Flags f0 to f29, straight at Flagr; listed with their segments they come back chunked.
async fn thirty_flags(f: &Flagr) {
    for i in 0..30 {
        let description = format!("flag number {i} {}", "x".repeat(100));
        call(
            "POST",
            &format!("{}/flags", f.api()),
            Some(json!({"description": description, "key": format!("f{i}")})),
        )
        .await;
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gzip_bodies_arrive_byte_for_byte() {
    let f = flagr(&[]).await;
    let fh = Flaghook::start(&f.url(), "").await;
    thirty_flags(&f).await;
    let get = |base: String| async move {
        let r = client()
            .get(format!("{base}/flags?preload=true"))
            .header("accept-encoding", "gzip")
            .send()
            .await
            .unwrap();
        let enc = r
            .headers()
            .get("content-encoding")
            .map(|v| v.to_str().unwrap().to_string());
        (enc, r.bytes().await.unwrap())
    };
    let (e1, b1) = get(fh.api()).await;
    let (e2, b2) = get(f.api()).await;
    assert_eq!(e1.as_deref(), Some("gzip"));
    assert_eq!(e1, e2);
    let gunzip = |b: &[u8]| {
        let mut s = String::new();
        flate2::read::GzDecoder::new(b)
            .read_to_string(&mut s)
            .unwrap();
        s
    };
    assert_eq!(gunzip(&b1), gunzip(&b2));
    // A gzipped mutation response is decoded on the copy: the event derivation still sees it.
    let r = client()
        .post(format!("{}/flags", fh.api()))
        .header("accept-encoding", "gzip")
        .header("content-type", "application/json")
        .body(json!({"description": "zipped", "key": "zipped"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.headers()["content-encoding"], "gzip");
    let v: Value = serde_json::from_str(&gunzip(&r.bytes().await.unwrap())).unwrap();
    assert_eq!(v["key"], "zipped");
}

/// A keep-alive client's requests go over one connection of its own to Flagr, read and
/// written by flaghook itself on whichever proxy thread took the connection: a chunked list of
/// 30 flags arrives byte for byte, a HEAD answer without its body, a 404 and an evaluation
/// after them, and still one connection.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn one_keep_alive_client_one_connection_every_answer_whole() {
    let f = flagr(&[]).await;
    // Two proxy threads taking turns at the socket (the default is one).
    let fh = Flaghook::start(&f.url(), "[runtime]\nproxy_threads = 2\n").await;
    thirty_flags(&f).await;
    let dials = "flaghook_proxy_upstream_connections_total";
    let before = fh.metric(dials).await;
    // One client, one request at a time: reqwest keeps the one connection.
    let c = client();
    let list = |base: String| {
        let c = c.clone();
        async move {
            let r = c
                .get(format!("{base}/flags?preload=true"))
                .send()
                .await
                .unwrap();
            let chunked = r.headers().get("transfer-encoding").is_some();
            (r.status(), chunked, r.bytes().await.unwrap())
        }
    };
    let (s1, chunked, via) = list(fh.api()).await;
    let (s2, _, direct) = list(f.api()).await;
    assert_eq!((s1.as_u16(), s2.as_u16()), (200, 200));
    assert!(chunked, "Flagr's list of 30 flags comes chunked");
    assert!(via.len() > 4096, "{}", via.len());
    assert_eq!(via, direct);
    let head = |base: String| {
        let c = c.clone();
        async move {
            let r = c.head(format!("{base}/flags/1")).send().await.unwrap();
            (r.status(), r.bytes().await.unwrap().len())
        }
    };
    assert_eq!(head(fh.api()).await, head(f.api()).await);
    let r = c
        .get(format!("{}/flags/999999", fh.api()))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 404);
    let r = c
        .post(format!("{}/evaluation", fh.api()))
        .json(&json!({"entityID": "u1", "flagKey": "f1"}))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let v: Value = r.json().await.unwrap();
    assert_eq!(v["flagKey"], "f1");
    let (_, again, _) = list(fh.api()).await;
    assert!(again);
    assert_eq!(fh.metric(dials).await - before, 1.0);
}

/// Clients that close their connection after one change each share one connection to Flagr:
/// each leaves it to the next, and every change is applied once, through it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn clients_that_close_leave_their_connection_to_flagr_to_the_next() {
    let f = flagr(&[]).await;
    let fh = Flaghook::start(&f.url(), "").await;
    let dials = "flaghook_proxy_upstream_connections_total";
    let open = "flaghook_connections_open{listener=\"proxy\"}";
    let before = fh.metric(dials).await;
    for i in 0..4 {
        let addr = fh.proxy.trim_start_matches("http://").to_string();
        let (status, body) = tokio::task::spawn_blocking(move || {
            let mut s = std::net::TcpStream::connect(addr).unwrap();
            let body = format!(r#"{{"description":"spare {i}","key":"spare-{i}"}}"#);
            exchange(&mut s, "POST", "/api/v1/flags", &body)
        })
        .await
        .unwrap();
        assert_eq!(status, 200, "{body}");
        assert_eq!(
            serde_json::from_str::<Value>(&body).unwrap()["key"],
            format!("spare-{i}")
        );
        // The client has closed; once flaghook has seen that, its connection is a spare.
        let closed = wait_until(Duration::from_secs(15), || async {
            metric_value(&fh.metrics().await, open) == Some(0.0)
        })
        .await;
        assert!(closed, "flaghook never saw the client close");
    }
    assert_eq!(fh.metric(dials).await - before, 1.0);
    let (status, flags) = call("GET", &format!("{}/flags", f.api()), None).await;
    assert_eq!(status, 200);
    let keys: Vec<_> = flags
        .as_array()
        .unwrap()
        .iter()
        .map(|f| f["key"].clone())
        .collect();
    assert_eq!(
        keys,
        (0..4)
            .map(|i| json!(format!("spare-{i}")))
            .collect::<Vec<_>>()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn five_mib_request_passes_and_is_counted_uninspected() {
    let f = flagr(&[]).await;
    // An impression webhook makes evaluations inspected routes.
    let r = Receiver::start(vec![]).await;
    let cfg = format!(
        "{FAST_DELIVERY}[[impression_webhooks]]\nid = \"imp\"\nurl = \"{}\"\n",
        r.url
    );
    let fh = Flaghook::start(&f.url(), &cfg).await;
    let big = "x".repeat(5 << 20);
    let body =
        json!({"entityID": "u1", "entityContext": {"blob": big}, "flagKey": "missing"}).to_string();
    assert!(body.len() > 5 << 20);
    let send = |url: String, body: String| async move {
        let r = client()
            .post(url)
            .header("content-type", "application/json")
            .body(body)
            .send()
            .await
            .unwrap();
        let s = r.status().as_u16();
        let mut v: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap_or(Value::Null);
        normalise(&mut v);
        (s, v)
    };
    let via = send(format!("{}/evaluation", fh.api()), body.clone()).await;
    let direct = send(format!("{}/evaluation", f.api()), body).await;
    assert_eq!(via, direct);
    assert_eq!(via.0, 200);
    assert_eq!(
        via.1["evalContext"]["entityContext"]["blob"]
            .as_str()
            .map(str::len),
        Some(5 << 20)
    );
    // Flagr echoes the context, so its answer is over the cap too; the request of an
    // evaluation is not copied at all.
    fh.wait_metric(
        "flaghook_tap_uninspected_total{direction=\"response\",reason=\"too_large\"}",
        1.0,
    )
    .await;
    let m = fh.metrics().await;
    for (series, want) in [
        ("{direction=\"response\",reason=\"too_large\"}", 1.0),
        ("{direction=\"request\",reason=\"too_large\"}", 0.0),
    ] {
        let got = metric_in(&m, &format!("flaghook_tap_uninspected_total{series}"));
        assert_eq!(got, want, "{series}\n{m}");
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn client_hanging_up_mid_response_harms_nothing() {
    let f = flagr(&[]).await;
    let fh = Flaghook::start(&f.url(), "").await;
    for i in 0..200 {
        call(
            "POST",
            &format!("{}/flags", f.api()),
            Some(
                json!({"description": format!("{i} {}", "d".repeat(200)), "key": format!("h{i}")}),
            ),
        )
        .await;
    }
    let addr = fh.proxy.trim_start_matches("http://").to_string();
    for _ in 0..20 {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        s.write_all(b"GET /api/v1/flags?preload=true HTTP/1.1\r\nHost: x\r\n\r\n")
            .unwrap();
        let mut buf = [0u8; 512];
        let n = s.read(&mut buf).unwrap();
        assert!(n > 0);
        drop(s);
    }
    // Mutations too: the client leaves before reading the answer.
    for i in 0..5 {
        let mut s = std::net::TcpStream::connect(&addr).unwrap();
        let body = json!({"description": "left early", "key": format!("early{i}")}).to_string();
        write!(s, "POST /api/v1/flags HTTP/1.1\r\nHost: x\r\nContent-Type: application/json\r\nContent-Length: {}\r\n\r\n{body}", body.len()).unwrap();
        drop(s);
    }
    let (s, v) = call("GET", &format!("{}/flags?preload=true", fh.api()), None).await;
    assert_eq!(s, 200);
    assert!(v.as_array().unwrap().len() >= 200);
    let h = client()
        .get(format!("{}/healthz", fh.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(h.status(), 200);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn h2c_clients_are_served() {
    let f = flagr(&[]).await;
    let fh = Flaghook::start(&f.url(), "").await;
    let h2 = reqwest::Client::builder()
        .http2_prior_knowledge()
        .build()
        .unwrap();
    let r = h2.get(format!("{}/health", fh.api())).send().await.unwrap();
    assert_eq!(r.version(), reqwest::Version::HTTP_2);
    assert_eq!(r.status(), 200);
    let v: Value = serde_json::from_slice(&r.bytes().await.unwrap()).unwrap();
    assert_eq!(v["status"], "OK");
    let r = h2
        .post(format!("{}/flags", fh.api()))
        .header("content-type", "application/json")
        .body(json!({"description": "over h2"}).to_string())
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
    let r = client()
        .get(format!("{}/readyz", fh.admin))
        .send()
        .await
        .unwrap();
    assert_eq!(r.status(), 200);
}

/// One HTTP/1.1 request on an open connection, and the status and body of its answer.
fn exchange(s: &mut std::net::TcpStream, method: &str, path: &str, body: &str) -> (u16, String) {
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nHost: flagr\r\nContent-Type: application/json\r\n\
         Content-Length: {}\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut head = Vec::new();
    let mut b = [0u8; 1];
    while !head.ends_with(b"\r\n\r\n") {
        s.read_exact(&mut b).unwrap();
        head.push(b[0]);
    }
    let head = String::from_utf8(head).unwrap();
    let status = head[9..12].parse().unwrap();
    let len: usize = head
        .lines()
        .find_map(|l| {
            let (k, v) = l.split_once(':')?;
            k.eq_ignore_ascii_case("content-length")
                .then(|| v.trim().parse().unwrap())
        })
        .expect("Flagr's answers carry Content-Length");
    let mut body = vec![0u8; len];
    s.read_exact(&mut body).unwrap();
    (status, String::from_utf8(body).unwrap())
}

/// `proxy.upstream_socket`: proxied requests reach Flagr over its Unix socket (Flagr logs them
/// from `@`), each HTTP/1 client connection keeps one connection of its own to Flagr, and
/// change events are derived as over TCP.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn over_flagrs_unix_socket_one_connection_per_client_connection() {
    let f = flagr_with_socket(&[]).await;
    let r = Receiver::start(vec![]).await;
    let cfg = format!(
        "[proxy]\nupstream_socket = \"{}\"\n{FAST_DELIVERY}{}",
        f.socket().display(),
        webhook("all", &r, "")
    );
    let fh = Flaghook::start(&f.url(), &cfg).await;
    let dials = "flaghook_proxy_upstream_connections_total";
    let before = fh.metric(dials).await;
    let addr = fh.proxy.trim_start_matches("http://").to_string();
    let (created, answers) = tokio::task::spawn_blocking(move || {
        let mut s = std::net::TcpStream::connect(addr).unwrap();
        let created = exchange(
            &mut s,
            "POST",
            "/api/v1/flags",
            r#"{"description":"over the socket","key":"via-socket"}"#,
        );
        let answers: Vec<_> = (0..5)
            .map(|i| exchange(&mut s, "GET", &format!("/api/v1/flags/{}", 900_000 + i), ""))
            .collect();
        (created, answers)
    })
    .await
    .unwrap();
    assert_eq!(created.0, 200, "{}", created.1);
    for (status, _) in &answers {
        assert_eq!(*status, 404);
    }
    // Six requests on one client connection: one connection to Flagr.
    assert_eq!(fh.metric(dials).await - before, 1.0);
    let log = f.log();
    for i in 0..5 {
        let path = format!("/api/v1/flags/{}", 900_000 + i);
        assert!(
            log.lines()
                .any(|l| l.contains("remote=@") && l.contains(&path)),
            "{path} did not come over the socket:\n{log}"
        );
    }
    let hits = r.wait_for(1).await;
    assert_eq!(hits[0].json()["event"], "flag.created");
    assert_eq!(hits[0].json()["data"]["key"], "via-socket");
}
