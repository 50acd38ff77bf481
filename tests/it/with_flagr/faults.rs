//! Faults with the real Flagr: restarted under load, and clients sending bad JSON.

use std::time::Duration;

use serde_json::json;

use crate::support::*;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn flagr_restarted_under_load_gives_502s_then_recovers() {
    let mut f = flagr(&[]).await;
    call(
        "POST",
        &format!("{}/flags", f.api()),
        Some(json!({"description": "d", "key": "k"})),
    )
    .await;
    let fh = Flaghook::start(&f.url(), "").await;
    let api = fh.api();
    let load = tokio::spawn(async move {
        let c = client();
        let mut statuses = std::collections::BTreeMap::new();
        for _ in 0..3000 {
            let s = match c
                .post(format!("{api}/evaluation"))
                .header("content-type", "application/json")
                .body(json!({"entityID": "u", "flagKey": "k"}).to_string())
                .send()
                .await
            {
                Ok(r) => r.status().as_u16(),
                Err(_) => 0,
            };
            *statuses.entry(s).or_insert(0u32) += 1;
        }
        statuses
    });
    tokio::time::sleep(Duration::from_millis(300)).await;
    f.kill();
    tokio::time::sleep(Duration::from_millis(500)).await;
    f.restart();
    let statuses = load.await.unwrap();
    // Only Flagr's answers or flaghook's own 502 while Flagr was down; never a dropped connection.
    assert!(
        statuses.keys().all(|s| *s == 200 || *s == 502),
        "{statuses:?}"
    );
    assert!(statuses.get(&502).copied().unwrap_or(0) > 0, "{statuses:?}");
    let health = format!("{}/health", fh.api());
    assert!(
        wait_until(Duration::from_secs(30), || async {
            call("GET", &health, None).await.0 == 200
        })
        .await
    );
    let (s, _) = call(
        "POST",
        &format!("{}/evaluation", fh.api()),
        Some(json!({"entityID": "u", "flagKey": "k"})),
    )
    .await;
    assert_eq!(s, 200);
    assert!(
        fh.metric("flaghook_proxy_upstream_errors_total{kind=\"connect\"}")
            .await
            > 0.0
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_json_from_clients_gets_flagrs_own_answer_and_no_event() {
    let f = flagr(&[]).await;
    let r = Receiver::start(vec![]).await;
    let fh = Flaghook::start(
        &f.url(),
        &format!("{FAST_DELIVERY}{}", webhook("w", &r, "")),
    )
    .await;
    for body in ["{nope", "{\"description\": ", "[]", "\"x\"", ""] {
        let send = |base: String| async move {
            let r = client()
                .post(format!("{base}/flags"))
                .header("content-type", "application/json")
                .body(body)
                .send()
                .await
                .unwrap();
            (r.status().as_u16(), r.bytes().await.unwrap())
        };
        assert_eq!(send(fh.api()).await, send(f.api()).await, "{body:?}");
    }
    fh.wait_settled(&f).await;
    assert!(r.hits().is_empty());
}
