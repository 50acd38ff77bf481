//! Cluster mode against its real parts: Flagr replicas on one PostgreSQL 15, a flaghook beside
//! each, one Redis 7 between them, receivers on loopback. Every change is delivered once per
//! endpoint, under one id, in its flag's order, whichever replica proxied it, whichever
//! replica dies, and across a Redis restart.

use std::collections::BTreeSet;
use std::time::Duration;

use serde_json::{json, Value};

use super::durability::{assert_once_each_in_order, wait_for_changes, PATIENT};
use super::gitsync::{flag, flags, github_push, send_push, status, Repos, TOKEN};
use crate::parts::{Postgres, Redis};
use crate::support::*;

/// Cluster settings for tests: a short lease, so a takeover takes about a second.
fn cluster_cfg(redis: &Redis, replica: usize) -> String {
    // The password, when Redis has one, comes from the environment (as a Kubernetes Secret
    // would give it); a TLS Redis's CA from a file.
    let mut cfg = format!(
        "[cluster]\nredis_url = \"{}\"\nreplica_id = \"r{replica}\"\nlease_ttl = \"1s\"\nreclaim_idle = \"4s\"\n",
        redis.url()
    );
    if redis.password.is_some() {
        cfg.push_str("password = \"env:REDIS_PASSWORD\"\n");
    }
    if let Some(ca) = &redis.ca {
        cfg.push_str(&format!("tls_ca_file = \"{}\"\n", ca.display()));
    }
    cfg + &format!("[admin]\ntoken = \"{TOKEN}\"\n")
}

/// Flagr replicas on one PostgreSQL, each with a flaghook in front, sharing `redis`.
pub(crate) struct Replicas {
    pub(crate) flagrs: Vec<Flagr>,
    pub(crate) hooks: Vec<Flaghook>,
    _pg: Postgres,
}

pub(crate) async fn replicas(n: usize, redis: &Redis, extra: &str) -> Replicas {
    let pg = Postgres::start();
    let env = pg.flagr_env();
    let env: Vec<(&str, &str)> = env.iter().map(|(k, v)| (*k, v.as_str())).collect();
    let mut flagrs = Vec::new();
    // One at a time: the first migrates the schema.
    for _ in 0..n {
        flagrs.push(flagr(&env).await);
    }
    let mut hooks = Vec::new();
    let env: Vec<(&str, &str)> = redis
        .password
        .iter()
        .map(|p| ("REDIS_PASSWORD", p.as_str()))
        .collect();
    for (i, f) in flagrs.iter().enumerate() {
        let cfg = format!("{extra}{}", cluster_cfg(redis, i));
        hooks.push(Flaghook::start_with_env(&f.url(), &cfg, &env).await);
    }
    Replicas {
        flagrs,
        hooks,
        _pg: pg,
    }
}

/// `/readyz` of a replica.
async fn ready(fh: &Flaghook) -> (u16, Value) {
    call("GET", &format!("{}/readyz", fh.admin), None).await
}

/// The replica holding the lease (waits for one).
async fn leader(hooks: &[&Flaghook]) -> usize {
    let deadline = std::time::Instant::now() + Duration::from_secs(20);
    loop {
        for (i, h) in hooks.iter().enumerate() {
            if ready(h).await.1["cluster"]["leader"] == true {
                return i;
            }
        }
        assert!(
            std::time::Instant::now() < deadline,
            "no replica took the lease"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// Creates flags `k0..k{n}` through the given proxies in turn; their ids.
async fn create_flags(apis: &[String], n: usize) -> Vec<i64> {
    let mut ids = Vec::new();
    for i in 0..n {
        let (s, v) = call(
            "POST",
            &format!("{}/flags", apis[i % apis.len()]),
            Some(json!({"description": "start", "key": format!("k{i}")})),
        )
        .await;
        assert_eq!(s, 200, "{v}");
        ids.push(v["id"].as_i64().unwrap());
    }
    ids
}

/// Changes each flag `per_flag` times (descriptions `p{from}`, `p{from + 1}`, ... in order),
/// flags in parallel, the calls spread over `apis` in turn; the changes made.
async fn change_flags(
    apis: &[String],
    flags: &[i64],
    from: usize,
    per_flag: usize,
) -> BTreeSet<(i64, String)> {
    let mut tasks = Vec::new();
    for (fi, flag) in flags.iter().enumerate() {
        let (apis, flag) = (apis.to_vec(), *flag);
        tasks.push(tokio::spawn(async move {
            let mut made = Vec::new();
            for i in 0..per_flag {
                let api = &apis[(fi + i) % apis.len()];
                let d = format!("p{}", from + i);
                let (s, v) = call(
                    "PUT",
                    &format!("{api}/flags/{flag}"),
                    Some(json!({"description": d})),
                )
                .await;
                assert_eq!(s, 200, "{v}");
                made.push((flag, d));
            }
            made
        }));
    }
    let mut all = BTreeSet::new();
    for t in tasks {
        all.extend(t.await.unwrap());
    }
    all
}

/// The delivery ids an endpoint's log shows on a replica's admin API.
async fn logged_ids(fh: &Flaghook, endpoint: &str) -> BTreeSet<String> {
    let (s, v) = admin_call(
        fh,
        "GET",
        &format!("/webhooks/{endpoint}/deliveries"),
        None,
        Some(TOKEN),
    )
    .await;
    assert_eq!(s, 200, "{v}");
    v["deliveries"]
        .as_array()
        .unwrap()
        .iter()
        .map(|e| e["delivery_id"].as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_thousand_changes_across_three_replicas_arrive_once_each_in_flag_order() {
    let redis = Redis::start().await;
    let fast = Receiver::start(vec![]).await;
    let slow = Receiver::start(vec![]).await;
    slow.slow(Duration::from_millis(25));
    let hooks = format!(
        "{PATIENT}{}{}",
        webhook("fast", &fast, ""),
        webhook("slow", &slow, "")
    );
    let site = replicas(3, &redis, &hooks).await;
    let apis: Vec<String> = site.hooks.iter().map(|h| h.api()).collect();
    leader(&site.hooks.iter().collect::<Vec<_>>()).await;

    let flags = create_flags(&apis, 10).await;
    let want = change_flags(&apis, &flags, 0, 100).await;
    assert_eq!(want.len(), 1000);
    for r in [&fast, &slow] {
        wait_for_changes(r, &want).await;
    }
    // A request sent twice would come a little later: the counts are read once the streams
    // are empty.
    let settled = wait_until(Duration::from_secs(20), || async {
        let mut empty = true;
        for h in &site.hooks {
            let (_, v) = admin_call(h, "GET", "/webhooks/slow", None, Some(TOKEN)).await;
            empty &= v["cluster"]["backlog"] == 0;
        }
        empty
    })
    .await;
    assert!(settled, "the streams never emptied");
    for r in [&fast, &slow] {
        let got = wait_for_changes(r, &want).await;
        assert_once_each_in_order(&r.hits(), &got);
        let updates = r
            .hits()
            .iter()
            .filter(|h| h.json()["event"] == "flag.updated")
            .count();
        assert_eq!(updates, 1000, "every change once, no request twice");
    }
    // Changes proxied by the other replicas reached the leader as hints through Redis.
    let lead = leader(&site.hooks.iter().collect::<Vec<_>>()).await;
    let hints = metric_in(
        &site.hooks[lead].metrics().await,
        "flaghook_cluster_hints_total{direction=\"received\"}",
    );
    assert!(hints > 0.0, "no hint reached the leader");
    // The slow receiver's work was shared: more than one replica sent to it.
    let mut senders = 0;
    for h in &site.hooks {
        let sent = metric_value(
            &h.metrics().await,
            "flaghook_deliveries_total{endpoint=\"slow\",outcome=\"success\"}",
        )
        .unwrap_or(0.0);
        if sent > 0.0 {
            senders += 1;
        }
    }
    assert!(
        senders >= 2,
        "only {senders} replica sent to the slow receiver"
    );

    // Every replica's page shows the same deliveries (once the last log writes landed).
    let same = wait_until(Duration::from_secs(10), || async {
        let first = logged_ids(&site.hooks[0], "fast").await;
        let mut all_same = !first.is_empty();
        for h in &site.hooks[1..] {
            all_same &= logged_ids(h, "fast").await == first;
        }
        all_same
    })
    .await;
    assert!(same, "the replicas' logs differ");

    // A webhook made on one replica's page runs on every replica.
    let extra = Receiver::start(vec![]).await;
    let (s, v) = admin_call(
        &site.hooks[0],
        "POST",
        "/webhooks",
        Some(json!({"id": "added", "url": extra.url, "events": ["flag.updated"]})),
        Some(TOKEN),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    let everywhere = wait_until(Duration::from_secs(10), || async {
        let mut all = true;
        for h in &site.hooks {
            all &= admin_call(h, "GET", "/webhooks/added", None, Some(TOKEN))
                .await
                .0
                == 200;
        }
        all
    })
    .await;
    assert!(everywhere, "the new webhook did not reach every replica");
    let more = change_flags(&apis[2..], &flags[..1], 1000, 1).await;
    let got = wait_for_changes(&extra, &more).await;
    assert_eq!(got.len(), 1);
    let drained = wait_until(Duration::from_secs(10), || async {
        admin_call(&site.hooks[0], "GET", "/webhooks/added", None, Some(TOKEN))
            .await
            .1["cluster"]["backlog"]
            == 0
    })
    .await;
    assert!(drained, "the new webhook's stream never emptied");
    assert_eq!(extra.hits().len(), 1, "sent once, by one replica");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_leader_killed_mid_burst_another_takes_over_without_loss_or_second_ids() {
    // Redis as production runs it: TLS with a private CA, and a password.
    let redis = Redis::start_with(Some("s3cret-redis"), true).await;
    let r = Receiver::start(vec![]).await;
    let mut site = replicas(2, &redis, &format!("{PATIENT}{}", webhook("w", &r, ""))).await;
    let lead = leader(&site.hooks.iter().collect::<Vec<_>>()).await;
    let other = 1 - lead;
    // Changes through the surviving replica's proxy and straight into a Flagr (its UI, a
    // script): the follower finds both.
    let apis = vec![site.hooks[other].api(), site.flagrs[lead].api()];
    let flags = create_flags(&apis, 4).await;
    // Deliveries take a little while, so some are in flight when the leader dies.
    r.slow(Duration::from_millis(10));
    let burst = tokio::spawn({
        let (apis, flags) = (apis.clone(), flags.clone());
        async move { change_flags(&apis, &flags, 0, 50).await }
    });
    let started = wait_until(Duration::from_secs(30), || async { r.hits().len() >= 20 }).await;
    assert!(started, "the burst is not being delivered");
    let mid_burst = !burst.is_finished();
    site.hooks[lead].kill();
    assert!(mid_burst, "the burst was over before the leader was killed");
    let first = burst.await.unwrap();
    let second = change_flags(&apis, &flags, 100, 20).await;
    // The survivor holds the lease now (`leader` waits for it).
    leader(&[&site.hooks[other]]).await;
    let mut want = first;
    want.extend(second);
    let got = wait_for_changes(&r, &want).await;
    assert_once_each_in_order(&r.hits(), &got);
    let log = site.hooks[other].log();
    assert!(log.contains("took the lease"), "{log}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn redis_stopped_for_thirty_seconds_and_started_again_loses_nothing() {
    let mut redis = Redis::start().await;
    let r = Receiver::start(vec![]).await;
    // A spill bound of a few events: past it the leader stops reading the changelog, which
    // keeps the rest until Redis is back.
    let cfg = format!(
        "{PATIENT}{}[cluster]\nspill_max_bytes = 4000\n",
        webhook("w", &r, "")
    );
    let site = replicas(2, &redis, &cfg).await;
    let (a, b) = (&site.hooks[0], &site.hooks[1]);
    leader(&[a, b]).await;
    let apis = vec![a.api(), b.api()];
    let flags = create_flags(&apis, 3).await;
    let mut want = change_flags(&apis, &flags, 0, 10).await;
    wait_for_changes(&r, &want).await;

    redis.stop();
    // The proxy keeps serving, and says it is degraded (still ready: it stays in the Service).
    let degraded = wait_until(Duration::from_secs(15), || async {
        let (s, v) = ready(a).await;
        s == 200 && v["status"] == "degraded"
    })
    .await;
    assert!(degraded, "{:?}", ready(a).await);
    // The page's changelog panel says so too.
    let (_, view) = admin_call(a, "GET", "/changelog", None, Some(TOKEN)).await;
    assert_eq!(view["cluster"]["redis"], "unreachable", "{view}");
    assert_eq!(view["cluster"]["replica"], "r0");
    let down_since = std::time::Instant::now();
    let during = change_flags(&apis, &flags, 100, 20).await;
    // The changes made meanwhile wait in the leader's local store.
    let waiting = wait_until(Duration::from_secs(15), || async {
        metric_in(&a.metrics().await, "flaghook_cluster_spill_events")
            + metric_in(&b.metrics().await, "flaghook_cluster_spill_events")
            > 0.0
    })
    .await;
    assert!(waiting, "nothing waits in a local store");
    let bounded = wait_until(Duration::from_secs(15), || async {
        metric_in(&a.metrics().await, "flaghook_cluster_spill_full_total")
            + metric_in(&b.metrics().await, "flaghook_cluster_spill_full_total")
            > 0.0
    })
    .await;
    assert!(bounded, "the spill bound never held the follower back");
    let away = Duration::from_secs(30).saturating_sub(down_since.elapsed());
    tokio::time::sleep(away).await;
    redis.start_again().await;
    want.extend(during);
    let got = wait_for_changes(&r, &want).await;
    assert_once_each_in_order(&r.hits(), &got);
    let back = wait_until(Duration::from_secs(15), || async {
        ready(a).await.1["status"] == "ready"
    })
    .await;
    assert!(back, "{:?}", ready(a).await);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn git_sync_runs_on_the_lease_holder_and_pushes_to_any_replica_reach_it() {
    let redis = Redis::start().await;
    let repos = Repos::new(true);
    let c1 = repos.commit(&[("flagr/flags.json", flags(false, 50))], true);
    let r = Receiver::start(vec![]).await;
    let git = format!(
        "[[git_repositories]]\nid = \"flags\"\nurl = \"{}\"\nfolder = \"flagr\"\npoll_interval = \"1h\"\nfetch_interval = \"300ms\"\nsecrets = {{ github = \"gh-secret\" }}\n",
        repos.url
    );
    let mut site = replicas(
        2,
        &redis,
        &format!("{PATIENT}{}{git}", webhook("w", &r, "")),
    )
    .await;
    let lead = leader(&site.hooks.iter().collect::<Vec<_>>()).await;
    let other = 1 - lead;
    // The lease holder syncs as it takes the lease; the other replica applies nothing.
    let synced = wait_until(Duration::from_secs(30), || async {
        status(&site.hooks[lead]).await["last_synced_commit"] == c1
    })
    .await;
    assert!(synced, "{}", status(&site.hooks[lead]).await);
    assert!(
        flag(&site.flagrs[other], "checkout").await.is_some(),
        "one database"
    );
    assert_eq!(status(&site.hooks[other]).await["last_synced_commit"], "");

    // A push to the replica that does not hold the lease is synced by the one that does.
    let c2 = repos.commit(&[("flagr/flags.json", flags(true, 50))], true);
    let (h, b) = github_push(
        "gh-secret",
        &repos.url,
        &c1,
        &c2,
        &["flagr/flags.json"],
        "d-2",
    );
    assert_eq!(send_push(&site.hooks[other], "github", h, b).await.0, 202);
    let applied = wait_until(Duration::from_secs(30), || async {
        status(&site.hooks[lead]).await["last_synced_commit"] == c2
    })
    .await;
    assert!(applied, "{}", status(&site.hooks[lead]).await);
    assert_eq!(
        flag(&site.flagrs[0], "checkout").await.unwrap()["enabled"],
        true
    );
    assert_eq!(status(&site.hooks[other]).await["last_synced_commit"], "");

    // The holder dies: the other takes the lease and syncs what was pushed since.
    site.hooks[lead].kill();
    let c3 = repos.commit(&[("flagr/flags.json", flags(true, 80))], true);
    leader(&[&site.hooks[other]]).await;
    let (h, b) = github_push(
        "gh-secret",
        &repos.url,
        &c2,
        &c3,
        &["flagr/flags.json"],
        "d-3",
    );
    assert_eq!(send_push(&site.hooks[other], "github", h, b).await.0, 202);
    let taken_over = wait_until(Duration::from_secs(30), || async {
        status(&site.hooks[other]).await["last_synced_commit"] == c3
    })
    .await;
    assert!(taken_over, "{}", status(&site.hooks[other]).await);
    let checkout = flag(&site.flagrs[other], "checkout").await.unwrap();
    assert_eq!(checkout["segments"][0]["rolloutPercent"], 80);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_impression_batch_parked_by_one_replica_is_sent_by_the_one_that_sees_recovery() {
    use super::impressions::{imp_webhook, records, seed, ENV};
    let redis = Redis::start().await;
    let r = Receiver::start(vec![Reply::Status(500), Reply::Status(500)]).await;
    let cfg = format!(
        "{ENV}{FAST_DELIVERY}{}",
        imp_webhook("imp", &r, "flush_interval = \"1h\"\nmax_records = 2")
    );
    let site = replicas(2, &redis, &cfg).await;
    seed(&site.flagrs[0].api()).await;
    let eval = |fh: &Flaghook, e: &'static str| {
        let url = format!("{}/evaluation", fh.api());
        async move {
            let body = json!({"entityID": e, "flagKey": "always-on"});
            assert_eq!(call("POST", &url, Some(body)).await.0, 200);
        }
    };
    // Replica 0's batch fails twice (one retry) and is parked, in Redis.
    eval(&site.hooks[0], "p1").await;
    eval(&site.hooks[0], "p2").await;
    r.wait_for(2).await;
    site.hooks[0]
        .wait_metric("flaghook_impressions_parked_total", 2.0)
        .await;
    // Every replica's admin API shows the batch parked in Redis.
    let shown = wait_until(Duration::from_secs(10), || async {
        let (_, v) = admin_call(&site.hooks[1], "GET", "/webhooks/imp", None, Some(TOKEN)).await;
        v["cluster"]["parked_batches"] == 1
    })
    .await;
    assert!(
        shown,
        "{}",
        admin_call(&site.hooks[1], "GET", "/webhooks/imp", None, Some(TOKEN))
            .await
            .1
    );
    // Replica 1 sees the receiver work again and sends what replica 0 parked.
    eval(&site.hooks[1], "p3").await;
    eval(&site.hooks[1], "p4").await;
    let hits = r.wait_for(4).await;
    let keys: BTreeSet<String> = hits[2..]
        .iter()
        .flat_map(records)
        .map(|v| v["key"].as_str().unwrap().to_string())
        .collect();
    let want: BTreeSet<String> = ["p1", "p2", "p3", "p4"]
        .iter()
        .map(|s| s.to_string())
        .collect();
    assert_eq!(keys, want, "{} requests", hits.len());
    site.hooks[1]
        .wait_metric("flaghook_impressions_delivered_total", 4.0)
        .await;
    // Nothing parked is left to send twice.
    let (_, v) = admin_call(&site.hooks[0], "GET", "/webhooks/imp", None, Some(TOKEN)).await;
    assert_eq!(v["cluster"]["parked_batches"], 0, "{v}");
    assert_eq!(
        site.hooks[0]
            .metric("flaghook_impressions_delivered_total")
            .await,
        0.0
    );
    assert_eq!(
        r.hits().len(),
        4,
        "each batch sent once after the receiver recovered"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_replica_frozen_while_sending_is_taken_over_and_sends_nothing_out_of_order() {
    let redis = Redis::start().await;
    let r = Receiver::start(vec![]).await;
    // A slow receiver: each replica holds requests in its worker's queue for a while.
    r.slow(Duration::from_millis(200));
    let mut site = replicas(2, &redis, &format!("{PATIENT}{}", webhook("w", &r, ""))).await;
    let lead = leader(&site.hooks.iter().collect::<Vec<_>>()).await;
    let other = 1 - lead;
    let apis: Vec<String> = site.hooks.iter().map(|h| h.api()).collect();
    let flags = create_flags(&apis, 4).await;
    let want = change_flags(&apis, &flags, 0, 10).await;
    let sending = wait_until(Duration::from_secs(30), || async { r.hits().len() >= 8 }).await;
    assert!(sending, "nothing is being delivered");
    // The leader freezes (a node's long pause) past the lease and the reclaim time: the other
    // replica takes the lease and what the frozen one held.
    site.hooks[lead].signal("STOP");
    tokio::time::sleep(Duration::from_secs(7)).await;
    site.hooks[lead].signal("CONT");
    let got = wait_for_changes(&r, &want).await;
    assert_once_each_in_order(&r.hits(), &got);
    let reclaimed = metric_in(
        &site.hooks[other].metrics().await,
        "flaghook_cluster_reclaimed_total",
    );
    assert!(
        reclaimed > 0.0,
        "nothing was taken over from the frozen replica"
    );
    // Both run on: changes after the thaw arrive once each too.
    let more = change_flags(&apis, &flags, 100, 3).await;
    let got = wait_for_changes(&r, &more).await;
    assert_once_each_in_order(&r.hits(), &got);
    site.hooks[lead].kill();
}

/// Waits (bounded) until webhook `again` is there on every replica (`there`), or on none.
async fn on_every_replica(hooks: &[Flaghook], there: bool) -> bool {
    wait_until(Duration::from_secs(10), || async {
        let mut all = true;
        for h in hooks {
            let (s, _) = admin_call(h, "GET", "/webhooks/again", None, Some(TOKEN)).await;
            all &= (s == 200) == there;
        }
        all
    })
    .await
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_webhook_deleted_and_made_again_under_its_id_starts_afresh_on_every_replica() {
    let redis = Redis::start().await;
    let site = replicas(2, &redis, PATIENT).await;
    let apis: Vec<String> = site.hooks.iter().map(|h| h.api()).collect();
    let flags = create_flags(&apis, 2).await;
    let make = |url: String| json!({"id": "again", "url": url, "events": ["flag.updated"]});
    let first = Receiver::start(vec![]).await;
    let (s, v) = admin_call(
        &site.hooks[0],
        "POST",
        "/webhooks",
        Some(make(first.url.clone())),
        Some(TOKEN),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    assert!(on_every_replica(&site.hooks, true).await);
    let before = change_flags(&apis, &flags, 0, 5).await;
    wait_for_changes(&first, &before).await;

    // Deleted on one replica, made again at once on the other, to another receiver.
    let (s, _) = admin_call(
        &site.hooks[1],
        "DELETE",
        "/webhooks/again",
        None,
        Some(TOKEN),
    )
    .await;
    assert_eq!(s, 204);
    assert!(
        on_every_replica(&site.hooks, false).await,
        "the delete did not reach every replica"
    );
    let second = Receiver::start(vec![]).await;
    let (s, v) = admin_call(
        &site.hooks[0],
        "POST",
        "/webhooks",
        Some(make(second.url.clone())),
        Some(TOKEN),
    )
    .await;
    assert_eq!(s, 201, "{v}");
    assert!(on_every_replica(&site.hooks, true).await);
    // Its stream starts afresh: every change arrives, none taken for delivered by the old one.
    let after = change_flags(&apis, &flags, 100, 5).await;
    let got = wait_for_changes(&second, &after).await;
    assert_once_each_in_order(&second.hits(), &got);
    assert!(
        second
            .hits()
            .iter()
            .all(|h| h.json()["changes"]["description"]["after"]
                .as_str()
                .is_some_and(|d| d.starts_with("p1"))),
        "the new webhook got changes from before it was made"
    );
}
