//! The admin web page in headless Chromium (through chromedriver's WebDriver API), against
//! flaghook in front of a real Flagr.

use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::*;

const TOKEN: &str = "page-token";
/// The W3C WebDriver element reference key.
const ELEMENT: &str = "element-6066-11e4-a52e-4f735466cecf";

struct Driver {
    child: Child,
    base: String,
    session: String,
    _profile: tempfile::TempDir,
}

impl Driver {
    async fn start() -> Driver {
        let port = free_port();
        let child = Command::new("chromedriver")
            .arg(format!("--port={port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect(
                "chromedriver (Debian chromium-driver) is installed by scripts/install-test-deps",
            );
        let base = format!("http://127.0.0.1:{port}");
        let status = format!("{base}/status");
        assert!(
            wait_until(Duration::from_secs(20), || async {
                client().get(&status).send().await.is_ok()
            })
            .await
        );
        let profile = tempfile::tempdir().unwrap();
        let caps = json!({"capabilities": {"alwaysMatch": {"goog:chromeOptions": {
            "binary": "/usr/bin/chromium",
            "args": ["--headless", "--no-sandbox", "--disable-gpu", "--disable-dev-shm-usage",
                     "--disable-quic", "--no-first-run", "--disable-background-networking",
                     "--disable-component-update", "--disable-sync",
                     format!("--user-data-dir={}", profile.path().display())]
        }}}});
        let r: Value = client()
            .post(format!("{base}/session"))
            .json(&caps)
            .send()
            .await
            .unwrap()
            .json()
            .await
            .unwrap();
        let session = r["value"]["sessionId"]
            .as_str()
            .unwrap_or_else(|| panic!("{r}"))
            .to_string();
        Driver {
            child,
            base,
            session,
            _profile: profile,
        }
    }

    async fn cmd(&self, method: &str, path: &str, body: Value) -> Value {
        let url = format!("{}/session/{}{path}", self.base, self.session);
        let req = client().request(method.parse().unwrap(), url);
        let req = if method == "GET" {
            req
        } else {
            req.json(&body)
        };
        req.send().await.unwrap().json::<Value>().await.unwrap()["value"].clone()
    }

    /// Ends the browser session (and so the browser) before chromedriver is stopped.
    async fn quit(self) {
        let url = format!("{}/session/{}", self.base, self.session);
        let _ = client().delete(url).send().await;
    }

    async fn go(&self, url: &str) {
        self.cmd("POST", "/url", json!({"url": url})).await;
    }

    /// The WebDriver id of the first element matching `css`.
    async fn find(&self, css: &str) -> Option<String> {
        let e = self
            .cmd(
                "POST",
                "/element",
                json!({"using": "css selector", "value": css}),
            )
            .await;
        e[ELEMENT].as_str().map(str::to_string)
    }

    /// The element's text, or None when there is no such element.
    async fn text(&self, css: &str) -> Option<String> {
        let id = self.find(css).await?;
        self.cmd("GET", &format!("/element/{id}/text"), json!({}))
            .await
            .as_str()
            .map(str::to_string)
    }

    /// Clicks the element, scrolled to the middle of the window first (a sticky bar at the top
    /// would otherwise take the click).
    async fn click(&self, css: &str) -> bool {
        let Some(id) = self.find(css).await else {
            return false;
        };
        self.cmd(
            "POST",
            "/execute/sync",
            json!({"script": "arguments[0].scrollIntoView({block: 'center'});",
                   "args": [{ELEMENT: id}]}),
        )
        .await;
        self.cmd("POST", &format!("/element/{id}/click"), json!({}))
            .await;
        true
    }

    /// Runs `script` in the page; its return value.
    async fn exec(&self, script: &str) -> Value {
        self.cmd(
            "POST",
            "/execute/sync",
            json!({"script": script, "args": []}),
        )
        .await
    }

    /// How many elements match.
    async fn count(&self, css: &str) -> usize {
        self.cmd(
            "POST",
            "/elements",
            json!({"using": "css selector", "value": css}),
        )
        .await
        .as_array()
        .map_or(0, Vec::len)
    }

    async fn type_into(&self, css: &str, text: &str) -> bool {
        let Some(id) = self.find(css).await else {
            return false;
        };
        self.cmd("POST", &format!("/element/{id}/clear"), json!({}))
            .await;
        self.cmd(
            "POST",
            &format!("/element/{id}/value"),
            json!({"text": text}),
        )
        .await;
        true
    }

    async fn window(&self, width: u32, height: u32) {
        self.cmd(
            "POST",
            "/window/rect",
            json!({"width": width, "height": height}),
        )
        .await;
    }

    /// Saves a screenshot as `<FLAGHOOK_SCREENSHOT_DIR>/<name>.png` when that is set.
    async fn screenshot(&self, name: &str) {
        let Ok(dir) = std::env::var("FLAGHOOK_SCREENSHOT_DIR") else {
            return;
        };
        use base64::Engine;
        let png = self.cmd("GET", "/screenshot", json!({})).await;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(png.as_str().unwrap_or(""))
            .unwrap();
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(format!("{dir}/{name}.png"), bytes).unwrap();
    }

    async fn wait_count(&self, css: &str, n: usize) -> bool {
        wait_until(Duration::from_secs(20), || async {
            self.count(css).await == n
        })
        .await
    }

    async fn wait_text(&self, css: &str, want: &str) -> bool {
        wait_until(Duration::from_secs(20), || async {
            self.text(css).await.is_some_and(|t| t.contains(want))
        })
        .await
    }
}

impl Drop for Driver {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn page_shows_deliveries_and_resume_button_works() {
    let f = flagr(&[]).await;
    let r = Receiver::start(vec![]).await;
    let cfg = format!(
        "[admin]\ntoken = \"{TOKEN}\"\n{FAST_DELIVERY}{}",
        webhook("audit", &r, "description = \"audit trail\"")
    );
    let fh = Flaghook::start(&f.url(), &cfg).await;
    call(
        "POST",
        &format!("{}/flags", fh.api()),
        Some(json!({"description": "d", "key": "from-the-page"})),
    )
    .await;
    r.wait_for(1).await;

    let d = Driver::start().await;
    d.go(&format!("{}/#token={TOKEN}", fh.admin)).await;
    assert!(d.wait_text("#webhook-audit", "audit trail").await);
    assert!(d.wait_text("#webhook-audit", "active").await);
    // The delivery that really happened is listed.
    assert!(d.wait_text("#deliveries", "flag.created").await);

    // Pause through the API; the page shows it; a click on Resume makes it active again.
    let pause = client()
        .post(format!("{}/api/webhooks/audit/pause", fh.admin))
        .bearer_auth(TOKEN)
        .send()
        .await
        .unwrap();
    assert_eq!(pause.status(), 200);
    assert!(d.wait_text("#webhook-audit", "paused").await);
    assert!(wait_until(Duration::from_secs(10), || d.click("#resume-audit")).await);
    let fh2 = &fh;
    assert!(
        wait_until(Duration::from_secs(10), || async move {
            let v: Value = client()
                .get(format!("{}/api/webhooks/audit", fh2.admin))
                .bearer_auth(TOKEN)
                .send()
                .await
                .unwrap()
                .json()
                .await
                .unwrap();
            v["state"] == "active"
        })
        .await,
        "the resume click did not resume the endpoint"
    );
    assert!(d.wait_text("#webhook-audit", "active").await);
    // Send a test event from the page.
    assert!(d.click("#test-audit").await);
    let ping = wait_until(Duration::from_secs(20), || async {
        r.hits()
            .iter()
            .any(|h| h.header("x-flaghook-event") == "ping")
    })
    .await;
    let seen: Vec<(String, String, usize)> = r
        .hits()
        .iter()
        .map(|h| {
            (
                h.header("x-flaghook-event"),
                h.header("webhook-id"),
                h.body.len(),
            )
        })
        .collect();
    assert!(ping, "no ping arrived: {seen:?}\n{}", fh.log());
    let hits = r.hits();
    let ping = hits
        .iter()
        .find(|h| h.header("x-flaghook-event") == "ping")
        .expect("the ping");
    assert_eq!(ping.json()["event"], "ping", "{seen:?}");
    d.quit().await;
}

/// An operator's afternoon: a live and a dead endpoint, a refused git commit; the inspector
/// shows what was sent and what came back, a replay adds an attempt, a bad URL is refused at
/// its field, and the page fits a phone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn inspector_replay_git_report_and_field_errors_in_the_browser() {
    use super::gitsync::{flags, Repos};
    let f = flagr(&[]).await;
    let live = Receiver::start(vec![]).await;
    let dead = Receiver::start(vec![]).await;
    dead.answer(503);
    let chat = Receiver::start(vec![]).await;
    let repos = Repos::new(false);
    let mut bad = flags(true, 30);
    bad["Flags"][0]["Segments"][0]["Distributions"][0]["Percent"] = json!(70);
    repos.commit(&[("flagr/flags.json", bad)], true);
    let cfg = format!(
        "[admin]\ntoken = \"{TOKEN}\"\n{FAST_DELIVERY}{}{}\
         [[git_repositories]]\nid = \"flags\"\nurl = \"{}\"\nfolder = \"flagr\"\npoll_interval = \"1h\"\n",
        webhook("live", &live, "description = \"audit trail\"\nsecret = \"whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw\""),
        [
            webhook("dead", &dead, "description = \"old sink\""),
            webhook("chat", &chat, "format = \"slack\""),
        ]
        .concat(),
        repos.url
    );
    let fh = Flaghook::start(&f.url(), &cfg).await;
    call(
        "POST",
        &format!("{}/flags", fh.api()),
        Some(json!({"description": "d", "key": "inspected"})),
    )
    .await;
    live.wait_for(1).await;
    chat.wait_for(1).await;
    // The bad commit is refused as a whole, with its report.
    let (s, report) = admin_call(&fh, "POST", "/gitsync/flags/sync", None, Some(TOKEN)).await;
    assert_eq!(s, 200, "{report}");
    assert!(
        !report["problems"].as_array().unwrap().is_empty(),
        "{report}"
    );

    let d = Driver::start().await;
    d.window(1280, 800).await;
    d.go(&format!("{}/#token={TOKEN}", fh.admin)).await;
    assert!(d.wait_text("#webhook-live", "audit trail").await);
    assert!(d.wait_text("#webhook-dead", "old sink").await);
    // The dead endpoint shows its failure.
    assert!(
        d.wait_text("#webhook-dead", "503").await,
        "{:?}",
        d.text("#webhook-dead").await
    );
    assert!(d.count("#webhook-live svg.endpoint-chart").await == 1);
    d.screenshot("overview").await;

    // The inspector: the body as sent and the receiver's answer, read from the DOM.
    assert!(d.click("#log-live").await);
    assert!(d.wait_text("#deliveries-for", "live").await);
    assert!(d.wait_text("#deliveries", "flag.created").await);
    assert!(d.click("#deliveries tr.delivery").await);
    assert!(d.wait_text("#inspector-response-status", "200").await);
    let body = d.text("#inspector-request-body").await.unwrap_or_default();
    let sent: Value = serde_json::from_str(&body).unwrap_or_else(|e| panic!("{e}: {body}"));
    let got = live.hits()[0].json();
    assert_eq!(sent, got, "the page shows the body the receiver got");
    let headers = d
        .text("#inspector-request-headers")
        .await
        .unwrap_or_default();
    assert!(headers.contains("webhook-signature"), "{headers}");
    assert!(
        headers.contains(&live.hits()[0].header("webhook-id")),
        "{headers}"
    );
    assert!(d.wait_count("#inspector-attempts tr.attempt", 1).await);
    d.screenshot("inspector").await;
    // Replay: the same id goes again and the new attempt appears.
    assert!(d.click("#inspector-replay").await);
    assert!(
        d.wait_count("#inspector-attempts tr.attempt", 2).await,
        "no second attempt in the inspector"
    );
    assert!(live.wait_for(2).await[1].header("webhook-id") == live.hits()[0].header("webhook-id"));
    assert!(d.click("#inspector-close").await);

    // Git sync: the refused commit's report, file, flag and problem.
    assert!(
        d.wait_text("#repo-flags-problems", "flagr/flags.json")
            .await
    );
    assert!(d.wait_text("#repo-flags-problems", "checkout").await);
    assert!(d.wait_text("#repo-flags-problems", "sum to 120").await);

    // A chat preset's preview: the message its last event made, unsent.
    assert!(d.click("#preview-chat").await);
    assert!(d.wait_text("#pv-body", "inspected").await);
    assert_eq!(chat.hits().len(), 1);
    assert!(d.click("#pv-dialog [data-close]").await);

    // A bad URL: the API's message next to the URL field; nothing added.
    assert!(d.type_into("#create input[name=url]", "not a url").await);
    assert!(d.click("#create button[type=submit]").await);
    let (s, refused) = admin_call(
        &fh,
        "POST",
        "/webhooks",
        Some(json!({"url": "not a url"})),
        Some(TOKEN),
    )
    .await;
    assert_eq!(s, 400);
    let message = refused["message"].as_str().unwrap();
    assert!(
        d.wait_text("#create-error-url", message).await,
        "field error {:?}, form result {:?}",
        d.text("#create-error-url").await,
        d.text("#create-result").await
    );
    let (_, list) = admin_call(&fh, "GET", "/webhooks", None, Some(TOKEN)).await;
    assert_eq!(list["webhooks"].as_array().unwrap().len(), 3);

    // A phone: nothing wider than the screen.
    d.window(390, 844).await;
    let fits = d
        .exec("return document.documentElement.scrollWidth <= window.innerWidth + 1;")
        .await;
    assert_eq!(fits, json!(true), "the page scrolls sideways on a phone");
    d.screenshot("phone").await;
    d.quit().await;
}

/// Cluster mode in the browser: either replica's page lists the deliveries every replica made,
/// says which replica it is, and a pause clicked on one pauses the webhook on the other.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_page_on_either_replica_shows_the_same_deliveries_and_pauses_both() {
    use super::cluster::replicas;
    use super::gitsync::TOKEN as CLUSTER_TOKEN;
    use crate::parts::Redis;
    let redis = Redis::start().await;
    let r = Receiver::start(vec![]).await;
    let site = replicas(
        2,
        &redis,
        &format!("{FAST_DELIVERY}{}", webhook("audit", &r, "")),
    )
    .await;
    let (a, b) = (&site.hooks[0], &site.hooks[1]);
    for i in 0..6 {
        let api = if i % 2 == 0 { a.api() } else { b.api() };
        let (s, _) = call(
            "POST",
            &format!("{api}/flags"),
            Some(json!({"description": "d", "key": format!("page-{i}")})),
        )
        .await;
        assert_eq!(s, 200);
    }
    let hits = r.wait_for(6).await;
    let ids: Vec<String> = hits.iter().map(|h| h.header("webhook-id")).collect();

    let d = Driver::start().await;
    d.go(&format!("{}/#token={CLUSTER_TOKEN}", b.admin)).await;
    assert!(d.wait_text("#changelog-cluster", "replica r1").await);
    assert!(d.wait_text("#webhook-audit", "active").await);
    let all_listed = wait_until(Duration::from_secs(20), || async {
        let shown = d.text("#deliveries").await.unwrap_or_default();
        ids.iter().all(|id| shown.contains(id.as_str()))
    })
    .await;
    assert!(all_listed, "{:?}\n{ids:?}", d.text("#deliveries").await);

    // Paused on replica 1's page: replica 0 pauses too.
    assert!(wait_until(Duration::from_secs(10), || d.click("#pause-audit")).await);
    let both = wait_until(Duration::from_secs(10), || async {
        let mut paused = true;
        for h in [a, b] {
            let (_, v) = admin_call(h, "GET", "/webhooks/audit", None, Some(CLUSTER_TOKEN)).await;
            paused &= v["state"] == "paused";
        }
        paused
    })
    .await;
    assert!(both, "the pause did not reach both replicas");
    d.quit().await;
}
