//! Nothing lost across crashes and restarts: the changelog cursor and the outbox on disk.

use std::collections::{BTreeMap, BTreeSet};
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::*;

/// Retries for as long as these tests run, a short pause, and a quick poll.
pub(crate) const PATIENT: &str = "[delivery]\nallow_loopback = true\ntimeout = \"2s\"\n\
    retry_schedule = [\"0s\", \"300ms\", \"300ms\", \"300ms\", \"300ms\", \"300ms\", \"300ms\", \"300ms\", \"300ms\", \"300ms\", \"300ms\", \"300ms\", \"300ms\", \"300ms\", \"300ms\", \"300ms\", \"300ms\", \"300ms\", \"300ms\", \"300ms\", \"300ms\", \"300ms\", \"300ms\", \"300ms\", \"300ms\", \"300ms\", \"300ms\", \"300ms\", \"300ms\", \"300ms\", \"300ms\", \"300ms\", \"300ms\", \"300ms\", \"300ms\", \"300ms\", \"300ms\", \"300ms\", \"300ms\", \"300ms\", \"300ms\", \"300ms\", \"300ms\", \"300ms\", \"300ms\", \"300ms\", \"300ms\", \"300ms\", \"300ms\", \"300ms\", \"300ms\", \"300ms\", \"300ms\", \"300ms\", \"300ms\", \"300ms\", \"300ms\", \"300ms\", \"300ms\", \"300ms\"]\n\
    [delivery.protection]\ncooldown = \"300ms\"\nmax_cooldown = \"600ms\"\n\
    [changelog]\npoll_interval = \"200ms\"\nhint_wait = \"300ms\"\n";

/// No body kept in memory: every attempt reads its body back from the outbox.
const LEAN: &str = "[delivery]\nqueue_memory_bytes = 1\n";

/// Waits until every `(flag, description)` change has arrived with a 2xx answer; returns, per
/// change, the set of `webhook-id`s it was sent under.
pub(crate) async fn wait_for_changes(
    r: &Receiver,
    want: &BTreeSet<(i64, String)>,
) -> BTreeMap<(i64, String), BTreeSet<String>> {
    let got = || {
        let mut m: BTreeMap<(i64, String), BTreeSet<String>> = BTreeMap::new();
        for h in r.hits() {
            let v = h.json();
            if v["event"] != "flag.updated" {
                continue;
            }
            let after = v["changes"]["description"]["after"]
                .as_str()
                .unwrap_or("")
                .to_string();
            m.entry((v["flag_id"].as_i64().unwrap(), after))
                .or_default()
                .insert(h.header("webhook-id"));
        }
        m
    };
    let ok = wait_until(Duration::from_secs(60), || async {
        want.iter().all(|k| got().contains_key(k))
    })
    .await;
    let m = got();
    let missing: Vec<(i64, String)> = want
        .iter()
        .filter(|k| !m.contains_key(*k))
        .map(|(f, d)| (*f, d.chars().take(12).collect()))
        .collect();
    assert!(ok, "{} never arrived: {missing:?}", missing.len());
    m
}

/// Each change under one id, no id for two changes, and each flag's changes in the order
/// they were made (`p{n}` rising), as a receiver that skips ids it has seen sees them (a request
/// sent again after a replica died mid-delivery comes under its id, possibly after later ones).
pub(crate) fn assert_once_each_in_order(
    hits: &[Hit],
    got: &BTreeMap<(i64, String), BTreeSet<String>>,
) {
    for (change, ids) in got {
        assert_eq!(
            ids.len(),
            1,
            "{change:?} arrived under several ids: {ids:?}"
        );
    }
    let all_ids: BTreeSet<&String> = got.values().flatten().collect();
    assert_eq!(all_ids.len(), got.len(), "two changes shared an id");
    let mut last: BTreeMap<i64, i64> = BTreeMap::new();
    let mut seen = BTreeSet::new();
    for h in hits {
        let v = h.json();
        if v["event"] != "flag.updated" || !seen.insert(h.header("webhook-id")) {
            continue;
        }
        let Some(n) = v["changes"]["description"]["after"]
            .as_str()
            .and_then(|d| d.strip_prefix('p'))
            .and_then(|n| n.parse::<i64>().ok())
        else {
            continue;
        };
        let flag = v["flag_id"].as_i64().unwrap();
        if let Some(prev) = last.get(&flag) {
            assert!(
                n > *prev,
                "flag {flag}: p{n} arrived after p{prev}: {:?}",
                arrivals(hits, flag)
            );
        }
        last.insert(flag, n);
    }
}

/// A flag's changes as they arrived: (description, webhook-id).
fn arrivals(hits: &[Hit], flag: i64) -> Vec<(String, String)> {
    hits.iter()
        .filter(|h| h.json()["flag_id"] == flag && h.json()["event"] == "flag.updated")
        .map(|h| {
            let d = h.json()["changes"]["description"]["after"]
                .as_str()
                .unwrap_or("")
                .to_string();
            (d, h.header("webhook-id"))
        })
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn kill_9_mid_burst_and_changes_while_down_lose_nothing() {
    let f = flagr(&[]).await;
    let r = Receiver::start(vec![]).await;
    r.answer(503);
    let mut fh = Flaghook::start(
        &f.url(),
        &format!("{PATIENT}{LEAN}{}", webhook("w", &r, "")),
    )
    .await;
    for i in 1..=5 {
        let (s, _) = call(
            "POST",
            &format!("{}/flags", fh.api()),
            Some(json!({"description": "start", "key": format!("f{i}")})),
        )
        .await;
        assert_eq!(s, 200);
    }
    let mut want = BTreeSet::new();
    // A burst of 100 changes through flaghook while the receiver fails; SIGKILL at the 60th.
    for i in 0..100 {
        let flag = (i % 5 + 1) as i64;
        let d = format!("p{i}");
        if i == 60 {
            fh.kill();
        }
        // While flaghook is down the changes go straight to Flagr (its UI, a script).
        let base = if i < 60 { fh.api() } else { f.api() };
        let (s, _) = call(
            "PUT",
            &format!("{base}/flags/{flag}"),
            Some(json!({"description": d})),
        )
        .await;
        assert_eq!(s, 200);
        want.insert((flag, d));
        if i == 80 {
            break;
        }
    }
    fh.restart().await;
    // Everything before this answered 503; from here on each request succeeds at once.
    let failed_before = r.hits().len();
    r.answer(200);
    let got = wait_for_changes(&r, &want).await;
    // Each flag's changes arrived in the order Flagr made them.
    assert_once_each_in_order(&r.hits()[failed_before..], &got);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn sigterm_with_the_receiver_down_keeps_everything_for_the_next_start() {
    let f = flagr(&[]).await;
    let r = Receiver::start(vec![]).await;
    r.answer(503);
    let mut fh = Flaghook::start(&f.url(), &format!("{PATIENT}{}", webhook("w", &r, ""))).await;
    call(
        "POST",
        &format!("{}/flags", fh.api()),
        Some(json!({"description": "start", "key": "k"})),
    )
    .await;
    let mut want = BTreeSet::new();
    for i in 0..10 {
        let d = format!("s{i}");
        call(
            "PUT",
            &format!("{}/flags/1", fh.api()),
            Some(json!({"description": d})),
        )
        .await;
        want.insert((1, d));
    }
    // Some attempts fail before the signal.
    r.wait_for(2).await;
    let (status, log) = {
        let st = tokio::task::block_in_place(|| fh.terminate());
        (st, fh.log())
    };
    assert!(status.success(), "{log}");
    assert!(log.contains("kept in the outbox"), "{log}");
    r.answer(200);
    fh.restart().await;
    let got = wait_for_changes(&r, &want).await;
    assert_eq!(got.len(), 10);
    assert!(got.values().all(|ids| ids.len() == 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_corrupt_store_stops_start_up_with_exit_64() {
    let f = flagr(&[]).await;
    let dir = tempfile::tempdir().unwrap();
    let store = dir.path().join("flaghook.redb");
    std::fs::write(&store, vec![0x5a; 16 * 1024]).unwrap();
    let cfg = dir.path().join("c.toml");
    std::fs::write(
        &cfg,
        format!(
            "[proxy]\nlisten = \"127.0.0.1:{}\"\nupstream = \"{}\"\n[admin]\nlisten = \"127.0.0.1:{}\"\n[store]\npath = \"{}\"\n",
            free_port(),
            f.url(),
            free_port(),
            store.display()
        ),
    )
    .unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flaghook"))
        .arg("--config")
        .arg(&cfg)
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(
        err.contains("store.path") && err.contains("not a readable store"),
        "{err}"
    );
    // A folder where the file should be: the same, with the reason.
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flaghook"))
        .arg("--config")
        .arg(&cfg)
        .env("FLAGHOOK_STORE__PATH", dir.path())
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(64));
    assert!(String::from_utf8_lossy(&out.stderr).contains("store.path"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn backfill_sends_the_past_to_one_endpoint_under_the_original_ids() {
    let f = flagr(&[]).await;
    let live = Receiver::start(vec![]).await;
    let audit = Receiver::start(vec![]).await;
    let fh = Flaghook::start(
        &f.url(),
        &format!(
            "[admin]\ntoken = \"t\"\n{FAST_DELIVERY}{}",
            webhook("live", &live, "")
        ),
    )
    .await;
    let api = fh.api();
    calls(
        &api,
        &[
            ("POST", "/flags", json!({"description": "a", "key": "one"})),
            ("PUT", "/flags/1", json!({"description": "b"})),
            ("PUT", "/flags/1/enabled", json!({"enabled": true})),
            ("POST", "/flags", json!({"description": "x", "key": "two"})),
            ("DELETE", "/flags/2", Value::Null),
        ],
    )
    .await;
    let live_hits = live.wait_for(5).await;
    // A new audit sink, added at runtime, asks for everything.
    let resp = client()
        .post(format!("{}/api/webhooks", fh.admin))
        .bearer_auth("t")
        .json(&json!({"id": "audit", "url": audit.url}))
        .send()
        .await
        .unwrap();
    assert_eq!(resp.status(), 201);
    let (s, e) = call_auth(
        "POST",
        &format!("{}/api/webhooks/audit/backfill", fh.admin),
        "t",
    )
    .await;
    assert_eq!(s, 400, "{e}");
    let (s, rep) = call_auth(
        "POST",
        &format!("{}/api/webhooks/audit/backfill?since_snapshot=0", fh.admin),
        "t",
    )
    .await;
    assert_eq!(s, 202, "{rep}");
    assert_eq!(rep["queued"]["events"], 5, "{rep}");
    let hits = audit.wait_for(5).await;
    let ids =
        |hs: &[Hit]| -> BTreeSet<String> { hs.iter().map(|h| h.header("webhook-id")).collect() };
    assert_eq!(
        ids(&hits),
        ids(&live_hits),
        "the same ids as when the changes happened"
    );
    // Each flag's events in snapshot order (flags go concurrently).
    let of = |flag: i64| -> Vec<String> {
        hits.iter()
            .map(|h| h.json())
            .filter(|v| v["flag_id"] == flag)
            .map(|v| v["event"].as_str().unwrap().to_string())
            .collect()
    };
    assert_eq!(of(1), ["flag.created", "flag.updated", "flag.enabled"]);
    assert_eq!(of(2), ["flag.created", "flag.deleted"]);
    // From a snapshot on: only what came after it. Snapshot ids are global: flag 1's second
    // snapshot is id 2.
    let (s, rep) = call_auth(
        "POST",
        &format!("{}/api/webhooks/audit/backfill?since_snapshot=2", fh.admin),
        "t",
    )
    .await;
    assert_eq!(s, 202);
    assert_eq!(rep["queued"]["events"], 3, "{rep}");
    audit.wait_for(8).await;
    fh.wait_settled(&f).await;
    assert_eq!(live.hits().len(), 5, "a backfill goes to its endpoint only");
}

/// A tmpfs of a few MiB, unmounted on drop: a disk that really fills up.
struct SmallDisk {
    path: std::path::PathBuf,
    _dir: tempfile::TempDir,
}

impl SmallDisk {
    fn mount(size: &str) -> SmallDisk {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("disk");
        std::fs::create_dir(&path).unwrap();
        let out = std::process::Command::new("mount")
            .args(["-t", "tmpfs", "-o", &format!("size={size}"), "tmpfs"])
            .arg(&path)
            .output()
            .expect("mount runs");
        assert!(
            out.status.success(),
            "mounting a small tmpfs needs root: {}",
            String::from_utf8_lossy(&out.stderr)
        );
        SmallDisk { path, _dir: dir }
    }
}

impl Drop for SmallDisk {
    fn drop(&mut self) {
        let _ = std::process::Command::new("umount")
            .arg("-l")
            .arg(&self.path)
            .status();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_disk_keeps_the_proxy_serving_and_says_why() {
    let disk = SmallDisk::mount("3m");
    let f = flagr(&[]).await;
    let r = Receiver::start(vec![]).await;
    r.answer(503);
    let mut fh = Flaghook::start(
        &f.url(),
        &format!(
            "[store]\npath = \"{}\"\n{PATIENT}{}",
            disk.path.join("flaghook.redb").display(),
            webhook("w", &r, "")
        ),
    )
    .await;
    call(
        "POST",
        &format!("{}/flags", fh.api()),
        Some(json!({"description": "start", "key": "big"})),
    )
    .await;
    // Each change queues an event carrying the flag before and after: ~120 KiB apiece.
    let filler = "x".repeat(40 * 1024);
    let mut want = BTreeSet::new();
    let mut full = false;
    for i in 0..80 {
        let d = format!("{i}{filler}");
        let (s, _) = call(
            "PUT",
            &format!("{}/flags/1", fh.api()),
            Some(json!({"description": d})),
        )
        .await;
        assert_eq!(s, 200, "the proxy keeps serving on a full disk");
        want.insert((1, d));
        if fh
            .metric("flaghook_outbox_errors_total{op=\"insert\"}")
            .await
            >= 1.0
        {
            full = true;
            break;
        }
    }
    assert!(full, "the disk never filled:\n{}", fh.metrics().await);
    let (s, ready) = call("GET", &format!("{}/readyz", fh.admin), None).await;
    assert_eq!(
        s, 200,
        "a full disk does not take the proxy out of service: {ready}"
    );
    assert!(
        ready["store"].as_str().unwrap().starts_with("failing"),
        "{ready}"
    );
    let (s, _) = call("GET", &format!("{}/flags/1", fh.api()), None).await;
    assert_eq!(s, 200);
    // While the process lives, what could not be written is still delivered.
    r.answer(200);
    let got = wait_for_changes(&r, &want).await;
    assert_eq!(got.len(), want.len());
    fh.kill();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_new_flagr_database_is_followed_from_its_own_start() {
    let mut f = flagr(&[]).await;
    let r = Receiver::start(vec![]).await;
    let fh = Flaghook::start(&f.url(), &format!("{PATIENT}{}", webhook("w", &r, ""))).await;
    let api = fh.api();
    calls(
        &api,
        &[
            ("POST", "/flags", json!({"description": "a", "key": "one"})),
            ("PUT", "/flags/1", json!({"description": "b"})),
            ("PUT", "/flags/1", json!({"description": "c"})),
        ],
    )
    .await;
    r.wait_for(3).await;
    // Flagr comes back on an empty database: its snapshot ids start again below the cursor.
    f.restart_empty().await;
    tokio::time::sleep(Duration::from_millis(600)).await;
    calls(
        &api,
        &[(
            "POST",
            "/flags",
            json!({"description": "x", "key": "fresh"}),
        )],
    )
    .await;
    let ok = wait_until(Duration::from_secs(10), || async { r.hits().len() >= 4 }).await;
    assert!(ok, "{}", fh.log());
    let hits = r.hits();
    assert_eq!(hits[3].json()["event"], "flag.created");
    assert_eq!(hits[3].json()["flag_key"], "fresh");
}
