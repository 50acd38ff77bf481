//! Git sync with real git (a bare repository behind `git daemon` on loopback, and `file://`),
//! the real binary and a real Flagr.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::Duration;

use serde_json::{json, Value};

use crate::support::*;

pub(crate) const TOKEN: &str = "git-admin";

fn git(dir: &Path, args: &[&str]) -> String {
    let out = Command::new("git")
        .arg("-C")
        .arg(dir)
        .args(args)
        .env("GIT_AUTHOR_NAME", "t")
        .env("GIT_AUTHOR_EMAIL", "t@example.com")
        .env("GIT_COMMITTER_NAME", "t")
        .env("GIT_COMMITTER_EMAIL", "t@example.com")
        .output()
        .expect("git runs");
    assert!(
        out.status.success(),
        "git {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

/// A bare "remote" and a working clone to commit from.
pub(crate) struct Repos {
    _dir: tempfile::TempDir,
    bare: PathBuf,
    work: PathBuf,
    daemon: Option<Child>,
    pub url: String,
}

impl Repos {
    pub(crate) fn new(served: bool) -> Repos {
        let dir = tempfile::tempdir().unwrap();
        let bare = dir.path().join("flags.git");
        let work = dir.path().join("work");
        std::fs::create_dir_all(&bare).unwrap();
        git(&bare, &["init", "--bare", "--quiet", "-b", "main"]);
        std::fs::create_dir_all(&work).unwrap();
        git(&work, &["init", "--quiet", "-b", "main"]);
        git(&work, &["remote", "add", "origin", bare.to_str().unwrap()]);
        let (daemon, url) = if served {
            let port = free_port();
            // git-daemon itself, not `git daemon`: killing the `git` wrapper would leave the
            // daemon it started running.
            let exec_path = git(&bare, &["--exec-path"]);
            let child = Command::new(Path::new(exec_path.trim()).join("git-daemon"))
                .args(["--reuseaddr", "--export-all", "--listen=127.0.0.1"])
                .arg(format!("--port={port}"))
                .arg(format!("--base-path={}", dir.path().display()))
                .arg(dir.path())
                .stdout(Stdio::null())
                .stderr(Stdio::null())
                .spawn()
                .expect("git daemon");
            (Some(child), format!("git://127.0.0.1:{port}/flags.git"))
        } else {
            (None, format!("file://{}", bare.display()))
        };
        Repos {
            _dir: dir,
            bare,
            work,
            daemon,
            url,
        }
    }

    /// Writes the files, commits, and (with `push`) pushes. Returns the new commit.
    pub(crate) fn commit(&self, files: &[(&str, Value)], push: bool) -> String {
        for (name, content) in files {
            let p = self.work.join(name);
            std::fs::create_dir_all(p.parent().unwrap()).unwrap();
            std::fs::write(p, serde_json::to_string_pretty(content).unwrap()).unwrap();
        }
        git(&self.work, &["add", "-A"]);
        git(
            &self.work,
            &["commit", "--quiet", "--allow-empty", "-m", "change"],
        );
        if push {
            self.push();
        }
        git(&self.work, &["rev-parse", "HEAD"])
    }

    fn push(&self) {
        git(&self.work, &["push", "--quiet", "origin", "main"]);
    }

    /// Moves the branch back to `commit`, commits `files` on it and force-pushes.
    fn force_push_from(&self, commit: &str, files: &[(&str, Value)]) -> String {
        git(&self.work, &["reset", "--quiet", "--hard", commit]);
        let head = self.commit(files, false);
        git(
            &self.work,
            &["push", "--quiet", "--force", "origin", "main"],
        );
        head
    }

    fn head_of_remote(&self) -> String {
        git(&self.bare, &["rev-parse", "main"])
    }
}

impl Drop for Repos {
    fn drop(&mut self) {
        if let Some(mut c) = self.daemon.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub(crate) fn flags(enabled: bool, rollout: i64) -> Value {
    json!({"Flags": [
        {"Key": "checkout", "Description": "checkout button", "Enabled": enabled,
         "Tags": [{"Value": "web"}],
         "Variants": [{"Key": "blue", "Attachment": {"color": "#00f"}}, {"Key": "green", "Attachment": null}],
         "Segments": [
            {"Description": "CA", "Rank": 0, "RolloutPercent": rollout,
             "Constraints": [{"Property": "state", "Operator": "EQ", "Value": "\"CA\""}],
             "Distributions": [{"VariantKey": "blue", "Percent": 50}, {"VariantKey": "green", "Percent": 50}]},
            {"Description": "everyone", "Rank": 1, "RolloutPercent": 10,
             "Distributions": [{"VariantKey": "green", "Percent": 100}]}]},
        {"Key": "search-v2", "Description": "new search", "Enabled": false}
    ]})
}

pub(crate) fn github_push(
    secret: &str,
    url: &str,
    before: &str,
    after: &str,
    files: &[&str],
    delivery: &str,
) -> (Vec<(String, String)>, String) {
    let body = json!({"ref": "refs/heads/main", "before": before, "after": after,
        "repository": {"clone_url": url},
        "commits": [{"added": files, "modified": [], "removed": []}]})
    .to_string();
    let sig = format!("sha256={}", hmac_hex(secret, body.as_bytes()));
    (
        vec![
            ("x-github-event".into(), "push".into()),
            ("x-github-delivery".into(), delivery.into()),
            ("x-hub-signature-256".into(), sig),
        ],
        body,
    )
}

pub(crate) async fn send_push(
    fh: &Flaghook,
    forge: &str,
    headers: Vec<(String, String)>,
    body: String,
) -> (u16, Value) {
    let mut req = client()
        .post(format!("{}/hooks/git/{forge}", fh.admin))
        .body(body);
    for (k, v) in headers {
        req = req.header(k, v);
    }
    let r = req.send().await.unwrap();
    let s = r.status().as_u16();
    (s, r.json().await.unwrap_or(Value::Null))
}

async fn flagr_flags(f: &Flagr) -> Vec<Value> {
    call("GET", &format!("{}/flags?preload=true", f.api()), None)
        .await
        .1
        .as_array()
        .cloned()
        .unwrap_or_default()
}

pub(crate) async fn flag(f: &Flagr, key: &str) -> Option<Value> {
    flagr_flags(f).await.into_iter().find(|v| v["key"] == key)
}

/// Waits (bounded) until the repository's last synced commit is `commit`.
async fn wait_synced(fh: &Flaghook, commit: &str) {
    let ok = wait_until(Duration::from_secs(30), || async {
        status(fh).await["last_synced_commit"] == commit
    })
    .await;
    assert!(ok, "never synced {commit}: {}", status(fh).await);
}

/// Sends a push that must be accepted, waits (bounded) for its commit to be refused, and
/// returns the repository's status.
async fn push_refused(fh: &Flaghook, h: Vec<(String, String)>, b: String) -> Value {
    assert_eq!(send_push(fh, "github", h, b).await.0, 202);
    let refused = wait_until(Duration::from_secs(20), || async {
        status(fh).await["last_problems"]
            .as_array()
            .is_some_and(|p| !p.is_empty())
    })
    .await;
    assert!(refused, "not refused: {}", status(fh).await);
    status(fh).await
}

pub(crate) async fn status(fh: &Flaghook) -> Value {
    admin_call(fh, "GET", "/gitsync", None, Some(TOKEN)).await.1["repositories"][0].clone()
}

fn cfg(url: &str, poll: &str, extra: &str, r: &Receiver) -> String {
    format!(
        "[admin]\ntoken = \"{TOKEN}\"\n{FAST_DELIVERY}{}[[git_repositories]]\nid = \"flags\"\nurl = \"{url}\"\nfolder = \"flagr\"\npoll_interval = \"{poll}\"\nfetch_attempts = 10\nfetch_interval = \"300ms\"\nsecrets = {{ github = \"gh-secret\" }}\n{extra}\n",
        webhook("events", r, "")
    )
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn pushes_sync_flagr_refuse_bad_commits_and_check_signatures() {
    let f = flagr(&[]).await;
    let repos = Repos::new(true);
    let c1 = repos.commit(
        &[
            ("flagr/flags.json", flags(false, 50)),
            ("README.md", json!("docs")),
        ],
        true,
    );
    let r = Receiver::start(vec![]).await;
    let fh = Flaghook::start(&f.url(), &cfg(&repos.url, "1h", "", &r)).await;
    // The first sync runs at start.
    wait_synced(&fh, &c1).await;
    let checkout = flag(&f, "checkout").await.expect("created from git");
    assert_eq!(checkout["segments"].as_array().unwrap().len(), 2);
    assert_eq!(
        checkout["segments"][0]["constraints"][0]["property"],
        "state"
    );
    assert_eq!(
        checkout["segments"][0]["distributions"]
            .as_array()
            .unwrap()
            .len(),
        2
    );
    assert_eq!(checkout["tags"][0]["value"], "web");
    assert_eq!(checkout["variants"][0]["attachment"]["color"], "#00f");
    assert!(flag(&f, "search-v2").await.is_some());
    // Its changes were events with source gitsync and the commit.
    let hits = r.wait_for(1).await;
    let first = hits[0].json();
    assert_eq!(first["source"], "gitsync");
    assert_eq!(first["commit"], c1.as_str());

    // A signed GitHub push: Flagr follows.
    let c2 = repos.commit(&[("flagr/flags.json", flags(true, 100))], true);
    let (h, b) = github_push(
        "gh-secret",
        &repos.url,
        &c1,
        &c2,
        &["flagr/flags.json"],
        "d-1",
    );
    let (s, v) = send_push(&fh, "github", h.clone(), b.clone()).await;
    assert_eq!(s, 202, "{v}");
    assert_eq!(v["accepted"], "flags");
    assert!(
        wait_until(Duration::from_secs(20), || async {
            flag(&f, "checkout")
                .await
                .is_some_and(|v| v["enabled"] == true && v["segments"][0]["rolloutPercent"] == 100)
        })
        .await
    );
    assert!(
        wait_until(Duration::from_secs(10), || async {
            r.hits().iter().any(|h| {
                let v = h.json();
                v["event"] == "flag.enabled" && v["commit"] == c2.as_str()
            })
        })
        .await
    );
    // The same delivery again is a duplicate and does nothing.
    let (s, v) = send_push(&fh, "github", h, b).await;
    assert_eq!(
        (s, v["ignored"].as_str()),
        (202, Some("duplicate delivery"))
    );

    // Wrong signature: 401, nothing happens.
    let c3 = repos.commit(&[("flagr/flags.json", flags(false, 100))], true);
    let (h, b) = github_push(
        "not-the-secret",
        &repos.url,
        &c2,
        &c3,
        &["flagr/flags.json"],
        "d-2",
    );
    assert_eq!(send_push(&fh, "github", h, b).await.0, 401);
    // Malformed: 400 with the reason; unwatched repository or branch: 202 and nothing else.
    assert_eq!(
        send_push(
            &fh,
            "github",
            vec![("x-github-event".into(), "push".into())],
            "{nope".into()
        )
        .await
        .0,
        400
    );
    let (h, b) = github_push(
        "gh-secret",
        "https://elsewhere.example.com/x.git",
        &c2,
        &c3,
        &[],
        "d-3",
    );
    let (s, v) = send_push(&fh, "github", h, b).await;
    assert_eq!(
        (s, v["ignored"].as_str()),
        (202, Some("repository not watched"))
    );
    assert_eq!(
        send_push(&fh, "bitbucket", vec![], "{}".into()).await.0,
        404
    );
    fh.wait_settled(&f).await;
    assert_eq!(
        flag(&f, "checkout").await.unwrap()["enabled"],
        true,
        "unsigned push was not applied"
    );

    // An invalid commit is refused as a whole; Flagr keeps its last good state.
    let mut bad = flags(false, 30);
    bad["Flags"][0]["Segments"][0]["Distributions"][0]["Percent"] = json!(70);
    let c4 = repos.commit(&[("flagr/flags.json", bad)], true);
    let (h, b) = github_push(
        "gh-secret",
        &repos.url,
        &c2,
        &c4,
        &["flagr/flags.json"],
        "d-4",
    );
    let st = push_refused(&fh, h, b).await;
    let p = &st["last_problems"][0];
    assert_eq!(
        (p["file"].as_str(), p["flag"].as_str()),
        (Some("flagr/flags.json"), Some("checkout"))
    );
    assert!(
        p["problem"].as_str().unwrap().contains("sum to 120"),
        "{st}"
    );
    assert_eq!(st["last_synced_commit"], c2.as_str());
    // For the page: the refused commit with its report, and the good one still shown as synced.
    assert_eq!(st["last_refused"]["commit"], c4.as_str());
    assert_eq!(st["last_refused"]["short"], &c4[..7]);
    assert_eq!(st["last_refused"]["problems"], st["last_problems"]);
    assert_eq!(st["last_commit"]["id"], c2.as_str());
    assert_eq!(
        (
            st["last_commit"]["message"].as_str(),
            st["last_commit"]["author"].as_str()
        ),
        (Some("change"), Some("t"))
    );
    assert!(st["last_commit"]["time"].as_str().unwrap().ends_with('Z'));
    assert!(!st["last_plan"].as_array().unwrap().is_empty(), "{st}");
    let now = flag(&f, "checkout").await.unwrap();
    assert_eq!(
        (
            now["enabled"].as_bool(),
            now["segments"][0]["rolloutPercent"].as_i64()
        ),
        (Some(true), Some(100))
    );

    // A push that does not follow the last synced commit: full reconcile to the branch head.
    let c5 = repos.commit(&[("flagr/flags.json", flags(false, 40))], true);
    let (h, b) = github_push(
        "gh-secret",
        &repos.url,
        "0000000000000000000000000000000000000000",
        &c5,
        &["flagr/flags.json"],
        "d-5",
    );
    assert_eq!(send_push(&fh, "github", h, b).await.0, 202);
    wait_synced(&fh, &c5).await;
    assert_eq!(
        flag(&f, "checkout").await.unwrap()["segments"][0]["rolloutPercent"],
        40
    );

    // A push that touches no flag file is recorded without touching Flagr.
    let c6 = repos.commit(&[("README.md", json!("more docs"))], true);
    let before = r.hits().len();
    let (h, b) = github_push("gh-secret", &repos.url, &c5, &c6, &["README.md"], "d-6");
    assert_eq!(send_push(&fh, "github", h, b).await.0, 202);
    wait_synced(&fh, &c6).await;
    fh.wait_settled(&f).await;
    assert_eq!(r.hits().len(), before);

    // A flag edited in Flagr by hand is set back on the next sync; a dry run shows the plan first.
    call(
        "PUT",
        &format!("{}/flags/{}", f.api(), now["id"]),
        Some(json!({"description": "edited by hand"})),
    )
    .await;
    let (_, dry) = admin_call(
        &fh,
        "POST",
        "/gitsync/flags/sync?dry_run=true",
        None,
        Some(TOKEN),
    )
    .await;
    assert_eq!(dry["dry_run"], true);
    assert_eq!(dry["plan"][0]["op"], "update_flag", "{dry}");
    assert_eq!(
        flag(&f, "checkout").await.unwrap()["description"],
        "edited by hand"
    );
    let (_, done) = admin_call(&fh, "POST", "/gitsync/flags/sync", None, Some(TOKEN)).await;
    assert_eq!(done["applied"], 1, "{done}");
    assert_eq!(
        flag(&f, "checkout").await.unwrap()["description"],
        "checkout button"
    );
    // c1 at start, c2, the reconcile to c5, and the manual sync; c4 refused; c6 needed no run.
    let m = fh.metrics().await;
    let runs = |outcome: &str| {
        metric_in(
            &m,
            &format!("flaghook_gitsync_runs_total{{outcome=\"{outcome}\",repository=\"flags\"}}"),
        )
    };
    assert_eq!((runs("success"), runs("invalid")), (4.0, 1.0), "{m}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn poller_syncs_without_webhooks_and_late_commits_are_retried() {
    let f = flagr(&[]).await;
    let repos = Repos::new(false);
    let c1 = repos.commit(&[("flagr/flags.json", flags(false, 50))], true);
    let r = Receiver::start(vec![]).await;
    let fh = Flaghook::start(&f.url(), &cfg(&repos.url, "400ms", "", &r)).await;
    wait_synced(&fh, &c1).await;
    // No webhook at all: the poller notices the moved head.
    let c2 = repos.commit(&[("flagr/flags.json", flags(true, 75))], true);
    assert!(
        wait_until(Duration::from_secs(20), || async {
            flag(&f, "checkout")
                .await
                .is_some_and(|v| v["enabled"] == true && v["segments"][0]["rolloutPercent"] == 75)
        })
        .await
    );
    assert_eq!(status(&fh).await["last_synced_commit"], c2.as_str());
    assert_eq!(repos.head_of_remote(), c2);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_commit_announced_before_it_can_be_fetched_is_picked_up_by_the_retries() {
    let f = flagr(&[]).await;
    let repos = Repos::new(true);
    let c1 = repos.commit(&[("flagr/flags.json", flags(false, 50))], true);
    let r = Receiver::start(vec![]).await;
    // An hour between polls: only the fetch retries can find the late commit.
    let fh = Flaghook::start(&f.url(), &cfg(&repos.url, "1h", "", &r)).await;
    wait_synced(&fh, &c1).await;
    let c2 = repos.commit(&[("flagr/flags.json", flags(true, 60))], false);
    let (h, b) = github_push(
        "gh-secret",
        &repos.url,
        &c1,
        &c2,
        &["flagr/flags.json"],
        "late-1",
    );
    assert_eq!(send_push(&fh, "github", h, b).await.0, 202);
    // The commit reaches the remote a second later.
    tokio::time::sleep(Duration::from_millis(1000)).await;
    repos.push();
    wait_synced(&fh, &c2).await;
    assert_eq!(
        flag(&f, "checkout").await.unwrap()["segments"][0]["rolloutPercent"],
        60
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn gitlab_gitea_forgejo_and_generic_pushes_sync_too() {
    let f = flagr(&[]).await;
    let repos = Repos::new(false);
    let mut prev = repos.commit(&[("flagr/flags.json", flags(false, 10))], true);
    let r = Receiver::start(vec![]).await;
    let cfg = format!(
        "[admin]\ntoken = \"{TOKEN}\"\n{FAST_DELIVERY}{}[[git_repositories]]\nid = \"flags\"\nurl = \"{}\"\nfolder = \"flagr\"\npoll_interval = \"1h\"\n\
         secrets = {{ gitlab = \"gl-token\", gitea = \"gt-secret\", generic = \"gen-secret\" }}\n",
        webhook("events", &r, ""),
        repos.url
    );
    let fh = Flaghook::start(&f.url(), &cfg).await;
    wait_synced(&fh, &prev).await;
    for (i, forge) in ["gitlab", "gitea", "forgejo", "generic"].iter().enumerate() {
        let rollout = 20 + 10 * i as i64;
        let next = repos.commit(&[("flagr/flags.json", flags(false, rollout))], true);
        let (headers, body): (Vec<(String, String)>, String) = match *forge {
            "gitlab" => {
                let body = json!({"ref": "refs/heads/main", "before": prev, "after": next, "total_commits_count": 1,
                    "project": {"git_http_url": repos.url}, "commits": [{"added": [], "modified": ["flagr/flags.json"], "removed": []}]}).to_string();
                (
                    vec![
                        ("x-gitlab-event".into(), "Push Hook".into()),
                        ("x-gitlab-token".into(), "gl-token".into()),
                    ],
                    body,
                )
            }
            "gitea" | "forgejo" => {
                let body = json!({"ref": "refs/heads/main", "before": prev, "after": next,
                    "repository": {"clone_url": repos.url}, "commits": [{"added": [], "modified": ["flagr/flags.json"], "removed": []}]}).to_string();
                let sig = hmac_hex("gt-secret", body.as_bytes());
                (
                    vec![
                        (format!("x-{forge}-event"), "push".into()),
                        (format!("x-{forge}-signature"), sig),
                    ],
                    body,
                )
            }
            _ => {
                let body = json!({"repository": repos.url, "ref": "refs/heads/main", "before": prev, "after": next}).to_string();
                let sig = format!("sha256={}", hmac_hex("gen-secret", body.as_bytes()));
                (vec![("x-flaghook-signature".into(), sig)], body)
            }
        };
        let (s, v) = send_push(&fh, forge, headers, body).await;
        assert_eq!(
            (s, v["accepted"].as_str()),
            (202, Some("flags")),
            "{forge}: {v}"
        );
        assert!(
            wait_until(Duration::from_secs(20), || async {
                flag(&f, "checkout")
                    .await
                    .is_some_and(|v| v["segments"][0]["rolloutPercent"] == rollout)
            })
            .await,
            "{forge} push did not sync"
        );
        prev = next;
    }
    // A forge without a configured secret cannot trigger a sync.
    let (h, b) = github_push(
        "anything",
        &repos.url,
        &prev,
        &prev,
        &["flagr/flags.json"],
        "gh-1",
    );
    assert_eq!(send_push(&fh, "github", h, b).await.0, 401);
}

/// Non-ASCII file names, force pushes that drop a flag commit, oversized files and unsigned
/// probes: each once did the wrong thing quietly.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn odd_names_force_pushes_huge_files_and_probes() {
    let f = flagr(&[]).await;
    let repos = Repos::new(false);
    let accents = |enabled: bool| json!({"Flags": [{"Key": "accents", "Description": "drapeau", "Enabled": enabled}]});
    // A name git would C-quote without -z; with delete_missing a skipped file deletes its flags.
    let c1 = repos.commit(&[("flagr/drapeaux-\u{e9}.json", accents(true))], true);
    let r = Receiver::start(vec![]).await;
    let extra = "delete_missing = true\n[gitsync]\nmax_file_bytes = 4096\nmax_total_bytes = 9000\n";
    let fh = Flaghook::start(&f.url(), &cfg(&repos.url, "1h", extra, &r)).await;
    wait_synced(&fh, &c1).await;
    assert_eq!(
        flag(&f, "accents")
            .await
            .expect("read from the non-ASCII file")["enabled"],
        true
    );

    // c2 disables the flag; a force push then drops c2 and adds a README commit whose payload
    // lists only README.md. Flagr must follow the tree (enabled again), not the file list.
    let c2 = repos.commit(&[("flagr/drapeaux-\u{e9}.json", accents(false))], true);
    let (h, b) = github_push("gh-secret", &repos.url, &c1, &c2, &[], "d-1");
    assert_eq!(send_push(&fh, "github", h, b).await.0, 202);
    wait_synced(&fh, &c2).await;
    assert_eq!(flag(&f, "accents").await.unwrap()["enabled"], false);
    let c3 = repos.force_push_from(&c1, &[("README.md", json!("docs"))]);
    let (h, b) = github_push("gh-secret", &repos.url, &c2, &c3, &["README.md"], "d-2");
    assert_eq!(send_push(&fh, "github", h, b).await.0, 202);
    wait_synced(&fh, &c3).await;
    assert!(
        wait_until(Duration::from_secs(20), || async {
            flag(&f, "accents")
                .await
                .is_some_and(|v| v["enabled"] == true)
        })
        .await,
        "the force push's tree was not applied: {}",
        status(&fh).await
    );

    // A file above gitsync.max_file_bytes refuses the commit without being read.
    let big = json!({"Flags": [{"Key": "big", "Description": "x".repeat(8000)}]});
    let c4 = repos.commit(&[("flagr/big.json", big)], true);
    let (h, b) = github_push(
        "gh-secret",
        &repos.url,
        &c3,
        &c4,
        &["flagr/big.json"],
        "d-3",
    );
    let st = push_refused(&fh, h, b).await;
    assert_eq!(st["last_problems"][0]["file"], "flagr/big.json", "{st}");
    assert!(
        st["last_problems"][0]["problem"]
            .as_str()
            .unwrap()
            .contains("above gitsync.max_file_bytes (4096)"),
        "{st}"
    );
    assert_eq!(st["last_synced_commit"], c3.as_str());
    assert!(flag(&f, "big").await.is_none());
    assert!(flag(&f, "accents").await.is_some());

    // Files each under the bound but too many together: refused, none read.
    git(&repos.work, &["rm", "-q", "flagr/big.json"]);
    let part = |n: usize| json!({"Flags": [{"Key": format!("part-{n}"), "Description": "y".repeat(3400)}]});
    let c5 = repos.commit(
        &[
            ("flagr/part-1.json", part(1)),
            ("flagr/part-2.json", part(2)),
            ("flagr/part-3.json", part(3)),
        ],
        true,
    );
    let (h, b) = github_push("gh-secret", &repos.url, &c3, &c5, &[], "d-total");
    assert_eq!(send_push(&fh, "github", h, b).await.0, 202);
    let total_refused = wait_until(Duration::from_secs(20), || async {
        status(&fh).await["last_problems"][0]["problem"]
            .as_str()
            .is_some_and(|p| p.contains("above gitsync.max_total_bytes (9000)"))
    })
    .await;
    assert!(total_refused, "{}", status(&fh).await);
    assert!(flag(&f, "part-1").await.is_none());
    assert_eq!(status(&fh).await["last_synced_commit"], c3.as_str());

    // Unsigned pushes get 401 whether the repository is watched or not, and an unsigned
    // delivery id does not make the signed delivery that follows a duplicate.
    let unsigned = |url: &str, id: &str| {
        let (h, b) = github_push("", url, &c3, &c4, &[], id);
        let h = h
            .into_iter()
            .filter(|(k, _)| k != "x-hub-signature-256")
            .collect::<Vec<_>>();
        (h, b)
    };
    let (h, b) = unsigned("https://elsewhere.example.com/x.git", "d-4");
    assert_eq!(send_push(&fh, "github", h, b).await.0, 401);
    let (h, b) = unsigned(&repos.url, "d-5");
    assert_eq!(send_push(&fh, "github", h, b).await.0, 401);
    let (h, b) = github_push("gh-secret", &repos.url, &c3, &c4, &[], "d-5");
    let (s, v) = send_push(&fh, "github", h, b).await;
    assert_eq!((s, v["accepted"].as_str()), (202, Some("flags")), "{v}");
}

/// A commit Flagr would refuse halfway is refused whole before the first call; a refusal only
/// Flagr's state can cause stops the run where it happened and says exactly how far it got.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn what_flagr_would_refuse_is_refused_whole_and_a_mid_plan_refusal_is_reported() {
    let f = flagr(&[]).await;
    // A flag deleted by hand keeps its key taken in Flagr (soft delete).
    let (_, ghost) = call(
        "POST",
        &format!("{}/flags", f.api()),
        Some(json!({"key": "ghost", "description": "deleted by hand"})),
    )
    .await;
    call(
        "DELETE",
        &format!("{}/flags/{}", f.api(), ghost["id"]),
        None,
    )
    .await;
    let repos = Repos::new(false);
    let c0 = repos.commit(&[("README.md", json!("no flags yet"))], true);
    let r = Receiver::start(vec![]).await;
    let fh = Flaghook::start(&f.url(), &cfg(&repos.url, "1h", "", &r)).await;
    wait_synced(&fh, &c0).await;

    // An unquoted string is a value Flagr's parser refuses: before, the flag was created and
    // the constraint call failed, leaving half a commit in Flagr.
    let unquoted = json!({"Flags": [{"Key": "bad-value", "Description": "d",
        "Segments": [{"Description": "CA", "RolloutPercent": 100,
            "Constraints": [{"Property": "state", "Operator": "EQ", "Value": "CA"}]}]}]});
    let c1 = repos.commit(&[("flagr/flags.json", unquoted)], true);
    let (h, b) = github_push("gh-secret", &repos.url, &c0, &c1, &[], "d-1");
    let st = push_refused(&fh, h, b).await;
    assert!(
        st["last_problems"][0]["problem"]
            .as_str()
            .unwrap()
            .contains("constraint value `CA`"),
        "{st}"
    );
    assert!(flag(&f, "bad-value").await.is_none(), "half applied");

    // Valid everywhere but in Flagr's state: `ghost` cannot be created again.
    let three = json!({"Flags": [
        {"Key": "aaa", "Description": "first", "Enabled": true},
        {"Key": "ghost", "Description": "again"},
        {"Key": "zzz", "Description": "last"}]});
    let c2 = repos.commit(&[("flagr/flags.json", three)], true);
    let (_, dry) = call_auth(
        "POST",
        &format!("{}/api/gitsync/flags/sync?dry_run=true", fh.admin),
        TOKEN,
    )
    .await;
    let plan = dry["plan"].as_array().expect("a plan").clone();
    let at = plan
        .iter()
        .position(|op| op["op"] == "create_flag" && op["key"] == "ghost")
        .expect("ghost is created in the plan");
    let (h, b) = github_push("gh-secret", &repos.url, &c0, &c2, &[], "d-2");
    assert_eq!(send_push(&fh, "github", h, b).await.0, 202);
    let stopped = wait_until(Duration::from_secs(20), || async {
        !status(&fh).await["last_stopped"].is_null()
    })
    .await;
    assert!(stopped, "{}", status(&fh).await);
    let st = status(&fh).await;
    let s = &st["last_stopped"];
    assert_eq!(s["commit"], c2.as_str(), "{st}");
    assert_eq!(s["applied"], at, "{st}");
    assert_eq!(s["planned"], plan.len(), "{st}");
    assert_eq!(s["call"], "POST /flags", "{st}");
    assert!(s["error"].as_str().unwrap().contains("400"), "{st}");
    // Done before the refusal stays done; nothing after it ran; the commit is not synced.
    assert_eq!(flag(&f, "aaa").await.expect("applied")["enabled"], true);
    assert!(flag(&f, "zzz").await.is_none());
    assert_eq!(st["last_synced_commit"], c0.as_str());
}
