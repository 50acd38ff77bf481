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

    /// The element's text, or None when there is no such element.
    async fn text(&self, css: &str) -> Option<String> {
        let e = self
            .cmd(
                "POST",
                "/element",
                json!({"using": "css selector", "value": css}),
            )
            .await;
        let id = e[ELEMENT].as_str()?;
        self.cmd("GET", &format!("/element/{id}/text"), json!({}))
            .await
            .as_str()
            .map(str::to_string)
    }

    async fn click(&self, css: &str) -> bool {
        let e = self
            .cmd(
                "POST",
                "/element",
                json!({"using": "css selector", "value": css}),
            )
            .await;
        let Some(id) = e[ELEMENT].as_str() else {
            return false;
        };
        self.cmd("POST", &format!("/element/{id}/click"), json!({}))
            .await;
        true
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
