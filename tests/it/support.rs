//! Real parts for the integration tests: a real Flagr, the real flaghook binary, real HTTP
//! receivers. Everything listens on 127.0.0.1 and every wait is bounded.

#![allow(dead_code)]

use std::collections::VecDeque;
use std::net::{SocketAddr, TcpListener as StdListener};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, ExitStatus, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use axum::body::Bytes;
use axum::http::{HeaderMap, StatusCode};
use axum::response::IntoResponse;
use serde_json::Value;

/// A free loopback port (bound and released), below the kernel's ephemeral range (32768 and
/// up), so that no outgoing connection of the processes under test takes it between this check
/// and the bind of whoever it is for; another test may still (see `Flaghook::start_with_env`).
pub fn free_port() -> u16 {
    for _ in 0..200 {
        let port = fastrand::u16(20_000..32_000);
        if StdListener::bind(("127.0.0.1", port)).is_ok() {
            return port;
        }
    }
    StdListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .map(|a| a.port())
        .expect("a free port")
}

/// Where the Flagr binary is: `FLAGHOOK_FLAGR_BIN`, the project's `.cache/bin`, or `PATH`.
pub fn flagr_bin() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("FLAGHOOK_FLAGR_BIN") {
        return Some(PathBuf::from(p));
    }
    let cached = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".cache/bin/flagr-server");
    if cached.exists() {
        return Some(cached);
    }
    std::env::var_os("PATH").and_then(|paths| {
        std::env::split_paths(&paths)
            .map(|d| d.join("flagr-server"))
            .find(|p| p.exists())
    })
}

/// The legacy Flagr 1.1.20 (no changelog): `FLAGHOOK_FLAGR_LEGACY_BIN` or the project's cache.
pub fn flagr_legacy_bin() -> Option<PathBuf> {
    if let Ok(p) = std::env::var("FLAGHOOK_FLAGR_LEGACY_BIN") {
        return Some(PathBuf::from(p));
    }
    let cached = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join(".cache/bin/flagr-server-1.1.20");
    cached.exists().then_some(cached)
}

/// A real Flagr 1.1.20, like [`flagr`].
pub async fn flagr_legacy(extra_env: &[(&str, &str)]) -> Flagr {
    let bin = flagr_legacy_bin().expect(
        "no flagr-server-1.1.20: run scripts/install-flagr 1.1.20 or set FLAGHOOK_FLAGR_LEGACY_BIN",
    );
    flagr_from(bin, extra_env).await
}

/// A real Flagr on SQLite in a temporary folder; killed on drop.
pub struct Flagr {
    child: Child,
    pub port: u16,
    _dir: tempfile::TempDir,
    cmd: Vec<(String, String)>,
    bin: PathBuf,
    /// Also listening on this Unix socket (`flagr_with_socket`).
    socket: Option<PathBuf>,
}

/// Starts a Flagr. A missing binary fails the test: `scripts/test` leaves the `with_flagr::` tests
/// out, and says so, only when `scripts/install-test-deps` could not install it.
pub async fn flagr(extra_env: &[(&str, &str)]) -> Flagr {
    let bin = flagr_bin()
        .expect("no flagr-server: run scripts/install-test-deps or set FLAGHOOK_FLAGR_BIN");
    flagr_from(bin, extra_env).await
}

/// Starts a Flagr that also listens on a Unix socket in its folder ([`Flagr::socket`]).
pub async fn flagr_with_socket(extra_env: &[(&str, &str)]) -> Flagr {
    let bin = flagr_bin()
        .expect("no flagr-server: run scripts/install-test-deps or set FLAGHOOK_FLAGR_BIN");
    flagr_started(bin, extra_env, true).await
}

async fn flagr_from(bin: PathBuf, extra_env: &[(&str, &str)]) -> Flagr {
    flagr_started(bin, extra_env, false).await
}

async fn flagr_started(bin: PathBuf, extra_env: &[(&str, &str)], socket: bool) -> Flagr {
    let dir = tempfile::tempdir().expect("tempdir");
    let socket = socket.then(|| dir.path().join("flagr.sock"));
    let port = free_port();
    let env: Vec<(String, String)> = extra_env
        .iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let log = std::fs::File::create(dir.path().join("flagr.log")).expect("log file");
    let child = flagr_command(&bin, port, dir.path(), socket.as_deref(), &env)
        .stdout(Stdio::from(log.try_clone().expect("log file")))
        .stderr(Stdio::from(log))
        .spawn()
        .expect("flagr starts");
    let f = Flagr {
        child,
        port,
        cmd: env,
        bin,
        _dir: dir,
        socket,
    };
    let health = format!("{}/api/v1/health", f.url());
    assert!(
        wait_until(Duration::from_secs(30), || async {
            matches!(client().get(&health).send().await, Ok(r) if r.status() == 200)
        })
        .await,
        "flagr did not become healthy"
    );
    f
}

/// Flagr on `port` with its database (and socket) in `dir`.
fn flagr_command(
    bin: &Path,
    port: u16,
    dir: &Path,
    socket: Option<&Path>,
    env: &[(String, String)],
) -> Command {
    let mut cmd = Command::new(bin);
    cmd.args(["--host", "127.0.0.1", "--port", &port.to_string()])
        .env("FLAGR_DB_DBDRIVER", "sqlite3")
        .env("FLAGR_DB_DBCONNECTIONSTR", dir.join("flagr.sqlite"))
        .env("FLAGR_UI_ENABLED", "false")
        .env("FLAGR_EVALCACHE_REFRESHINTERVAL", "200ms")
        .env("FLAGR_HEADER_AUTH_ENABLED", "true")
        .env("FLAGR_PPROF_ENABLED", "false");
    if let Some(sock) = socket {
        // A killed Flagr leaves its socket behind, and Flagr will not listen over it.
        let _ = std::fs::remove_file(sock);
        cmd.args(["--scheme", "http", "--scheme", "unix", "--socket-path"])
            .arg(sock);
    }
    for (k, v) in env {
        cmd.env(k, v);
    }
    cmd
}

impl Flagr {
    /// Kills Flagr (as a crash would).
    pub fn kill(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }

    /// Starts it again on the same port and database.
    pub fn restart(&mut self) {
        self.kill();
        let (dir, sock) = (self._dir.path(), self.socket.as_deref());
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(dir.join("flagr.log"))
            .expect("log file");
        self.child = flagr_command(&self.bin, self.port, dir, sock, &self.cmd)
            .stdout(Stdio::from(log.try_clone().expect("log file")))
            .stderr(Stdio::from(log))
            .spawn()
            .expect("flagr restarts");
    }

    /// The Unix socket it listens on, when started with one.
    pub fn socket(&self) -> &Path {
        self.socket
            .as_deref()
            .expect("started by flagr_with_socket")
    }

    /// What it logged so far (one line per request, `remote=@` when it came over the socket).
    pub fn log(&self) -> String {
        std::fs::read_to_string(self._dir.path().join("flagr.log")).unwrap_or_default()
    }

    /// Starts it again on the same port with a new, empty database (a restored or replaced
    /// database, as far as clients can tell).
    pub async fn restart_empty(&mut self) {
        self.kill();
        self._dir = tempfile::tempdir().expect("tempdir");
        if self.socket.is_some() {
            self.socket = Some(self._dir.path().join("flagr.sock"));
        }
        self.restart();
        let health = format!("{}/api/v1/health", self.url());
        assert!(
            wait_until(Duration::from_secs(30), || async {
                matches!(client().get(&health).send().await, Ok(r) if r.status() == 200)
            })
            .await,
            "flagr did not come back"
        );
    }

    pub fn url(&self) -> String {
        format!("http://127.0.0.1:{}", self.port)
    }
    pub fn api(&self) -> String {
        format!("{}/api/v1", self.url())
    }
}

impl Drop for Flagr {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

/// The real flaghook binary with a config written for the test.
pub struct Flaghook {
    child: Option<Child>,
    pub proxy: String,
    pub admin: String,
    pub dir: tempfile::TempDir,
    env: Vec<(String, String)>,
}

impl Flaghook {
    /// Starts flaghook in front of `upstream`; `extra` is appended to the config (webhooks, ...).
    pub async fn start(upstream: &str, extra: &str) -> Flaghook {
        Self::start_with_env(upstream, extra, &[]).await
    }

    pub async fn start_with_env(upstream: &str, extra: &str, env: &[(&str, &str)]) -> Flaghook {
        // A port found free can still be taken before flaghook binds it (another test's process):
        // such a start is tried again on other ports, a few times.
        for attempt in 1.. {
            let mut fh = Self::configured(upstream, extra, env);
            if fh.try_spawn().await {
                return fh;
            }
            if attempt == 5 || !fh.log().contains("Address already in use") {
                panic!("flaghook did not start:\n{}", fh.log());
            }
            fh.kill();
        }
        unreachable!("the attempts end in a return or a panic")
    }

    /// A config on two free ports, not yet started.
    fn configured(upstream: &str, extra: &str, env: &[(&str, &str)]) -> Flaghook {
        let dir = tempfile::tempdir().expect("tempdir");
        let (pp, ap) = (free_port(), free_port());
        // Each flaghook keeps its store in its own folder unless the test names one.
        let store = if extra.contains("[store]") {
            String::new()
        } else {
            format!(
                "[store]\npath = \"{}\"\n",
                dir.path().join("flaghook.redb").display()
            )
        };
        let cfg = format!(
            "[proxy]\nlisten = \"127.0.0.1:{pp}\"\nupstream = \"{upstream}\"\n\
             [admin]\nlisten = \"127.0.0.1:{ap}\"\n{store}{extra}\n"
        );
        let cfg = merge_sections(&cfg);
        std::fs::write(dir.path().join("flaghook.toml"), cfg).expect("config written");
        Flaghook {
            child: None,
            proxy: format!("http://127.0.0.1:{pp}"),
            admin: format!("http://127.0.0.1:{ap}"),
            dir,
            env: env
                .iter()
                .map(|(k, v)| (k.to_string(), v.to_string()))
                .collect(),
        }
    }

    /// Starts the binary on this instance's config, store and log (appended to).
    async fn spawn(&mut self) {
        let ok = self.try_spawn().await;
        assert!(ok, "flaghook did not start:\n{}", self.log());
    }

    /// Starts the binary; true once it answers its health check.
    async fn try_spawn(&mut self) -> bool {
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("flaghook.log"))
            .expect("log");
        let mut cmd = Command::new(env!("CARGO_BIN_EXE_flaghook"));
        cmd.arg("--config")
            .arg(self.dir.path().join("flaghook.toml"))
            .env("FLAGHOOK_LOG__LEVEL", "flaghook=debug,info")
            .stdout(Stdio::null())
            .stderr(Stdio::from(log));
        for (k, v) in &self.env {
            cmd.env(k, v);
        }
        self.child = Some(cmd.spawn().expect("flaghook starts"));
        let health = format!("{}/healthz", self.admin);
        let child = self.child.as_mut().expect("just started");
        let mut exited = false;
        let answered = wait_until(Duration::from_secs(20), || {
            // One that exited (a port taken) is not waited for.
            exited = matches!(child.try_wait(), Ok(Some(_)));
            let (gone, health) = (exited, &health);
            async move {
                gone || matches!(client().get(health).send().await, Ok(r) if r.status() == 200)
            }
        })
        .await;
        answered && !exited
    }

    /// The process's peak resident memory (VmHWM), in bytes.
    pub fn peak_rss(&self) -> u64 {
        let pid = self.child.as_ref().expect("running").id();
        let status = std::fs::read_to_string(format!("/proc/{pid}/status")).expect("status");
        status
            .lines()
            .find_map(|l| l.strip_prefix("VmHWM:"))
            .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<u64>().ok())
            .expect("VmHWM")
            * 1024
    }

    /// SIGKILL, as an OOM kill or a node loss would.
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }

    /// Sends a signal to the process (`STOP`, `CONT`: a replica frozen, as by a long pause of
    /// its node, and thawed).
    pub fn signal(&self, sig: &str) {
        let pid = self.child.as_ref().expect("running").id();
        let ok = Command::new("kill")
            .args([&format!("-{sig}"), &pid.to_string()])
            .status()
            .map(|s| s.success())
            .unwrap_or(false);
        assert!(ok, "kill -{sig} {pid}");
    }

    /// Starts it again on the same config and store (after `kill` or `terminate`).
    pub async fn restart(&mut self) {
        self.kill();
        self.spawn().await;
    }

    pub fn api(&self) -> String {
        format!("{}/api/v1", self.proxy)
    }

    pub fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("flaghook.log")).unwrap_or_default()
    }

    pub async fn metrics(&self) -> String {
        client()
            .get(format!("{}/metrics", self.admin))
            .send()
            .await
            .expect("metrics")
            .text()
            .await
            .expect("metrics text")
    }

    /// The value of one series, e.g. `flaghook_deliveries_total{endpoint="a",outcome="success"}`.
    pub async fn metric(&self, series: &str) -> f64 {
        metric_in(&self.metrics().await, series)
    }

    /// Waits (bounded) until a counter or gauge reaches at least `min`; fails the test with the
    /// whole metrics text otherwise.
    pub async fn wait_metric(&self, series: &str, min: f64) {
        // A series made on first use (a route's first request) is not there yet: not reached.
        let ok = wait_until(Duration::from_secs(15), || async {
            metric_value(&self.metrics().await, series).is_some_and(|v| v >= min)
        })
        .await;
        assert!(
            ok,
            "{series} never reached {min}:\n{}",
            self.metrics().await
        );
    }

    /// Waits (bounded) until nothing more can arrive: every change Flagr has is turned into
    /// events (the changelog cursor is at Flagr's newest snapshot; legacy Flagr has none), and
    /// every endpoint has sent or given up on all it had (queues empty).
    pub async fn wait_settled(&self, flagr: &Flagr) {
        let (status, max) = call(
            "GET",
            &format!("{}/flags/snapshots/max_id", flagr.api()),
            None,
        )
        .await;
        let max = if status == 200 { max.as_f64() } else { None };
        let settled = wait_until(Duration::from_secs(30), || async {
            let m = self.metrics().await;
            let caught_up = max.is_none_or(|max| {
                metric_value(&m, "flaghook_changelog_cursor").is_some_and(|c| c >= max)
            });
            let queued: f64 = m
                .lines()
                .filter(|l| l.starts_with("flaghook_queue_depth{"))
                .filter_map(|l| l.rsplit(' ').next()?.parse::<f64>().ok())
                .sum();
            caught_up && queued == 0.0
        })
        .await;
        assert!(settled, "never settled:\n{}", self.metrics().await);
    }

    /// Sends SIGTERM and waits (bounded) for the exit.
    pub fn terminate(&mut self) -> ExitStatus {
        let mut child = self.child.take().expect("running");
        let _ = Command::new("kill")
            .args(["-TERM", &child.id().to_string()])
            .status();
        let deadline = Instant::now() + Duration::from_secs(60);
        loop {
            if let Some(s) = child.try_wait().expect("wait") {
                return s;
            }
            if Instant::now() > deadline {
                let _ = child.kill();
                panic!("flaghook did not exit after SIGTERM");
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Flaghook {
    fn drop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

/// TOML forbids a table twice; tests append `[delivery]` etc., so fold repeated headers.
fn merge_sections(cfg: &str) -> String {
    let mut sections: Vec<(String, Vec<String>)> = vec![(String::new(), vec![])];
    for line in cfg.lines() {
        let t = line.trim();
        if t.starts_with('[') && !t.starts_with("[[") {
            if let Some(pos) = sections.iter().position(|(h, _)| h == t) {
                let s = sections.remove(pos);
                sections.push(s);
            } else {
                sections.push((t.to_string(), vec![]));
            }
            continue;
        }
        if t.starts_with("[[") {
            sections.push((t.to_string(), vec![]));
            continue;
        }
        sections
            .last_mut()
            .expect("one section")
            .1
            .push(line.to_string());
    }
    let mut out = String::new();
    for (h, lines) in sections {
        if !h.is_empty() {
            out.push_str(&h);
            out.push('\n');
        }
        for l in lines {
            out.push_str(&l);
            out.push('\n');
        }
    }
    out
}

/// The value of one series in a metrics text; `None` when the series is not there.
pub fn metric_value(text: &str, series: &str) -> Option<f64> {
    text.lines()
        .find_map(|l| l.strip_prefix(series).and_then(|r| r.strip_prefix(' ')))
        .and_then(|v| v.trim().parse().ok())
}

/// The value of a series that must be there: a renamed or missing metric fails the test
/// instead of reading as 0.
pub fn metric_in(text: &str, series: &str) -> f64 {
    metric_value(text, series)
        .unwrap_or_else(|| panic!("no series {series} in the metrics:\n{text}"))
}

/// A client that never decompresses, never follows redirects, and talks to loopback only.
pub fn client() -> reqwest::Client {
    reqwest::Client::builder()
        .no_gzip()
        .redirect(reqwest::redirect::Policy::none())
        .timeout(Duration::from_secs(30))
        .build()
        .expect("client")
}

/// Polls `f` until it is true or `limit` passes. Returns whether it became true.
pub async fn wait_until<F, Fut>(limit: Duration, mut f: F) -> bool
where
    F: FnMut() -> Fut,
    Fut: std::future::Future<Output = bool>,
{
    let deadline = Instant::now() + limit;
    loop {
        if f().await {
            return true;
        }
        if Instant::now() > deadline {
            return false;
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// A JSON call; returns status and parsed body (Null when empty or not JSON).
pub async fn call(method: &str, url: &str, body: Option<Value>) -> (u16, Value) {
    call_as(method, url, body, None).await
}

/// A JSON call as a user (Flagr's `X-Email`).
pub async fn call_as(
    method: &str,
    url: &str,
    body: Option<Value>,
    user: Option<&str>,
) -> (u16, Value) {
    let headers: Vec<(&str, &str)> = user.map(|u| ("X-Email", u)).into_iter().collect();
    request(method, url, body, &headers).await
}

/// A call to the admin API with a bearer token; status and parsed body.
pub async fn call_auth(method: &str, url: &str, token: &str) -> (u16, Value) {
    let auth = format!("Bearer {token}");
    request(method, url, None, &[("Authorization", &auth)]).await
}

/// A call to `path` under the admin API (`/api`), with a body and, when given, a token.
pub async fn admin_call(
    fh: &Flaghook,
    method: &str,
    path: &str,
    body: Option<Value>,
    token: Option<&str>,
) -> (u16, Value) {
    let auth = token.map(|t| format!("Bearer {t}"));
    let headers: Vec<(&str, &str)> = auth
        .as_deref()
        .map(|a| ("Authorization", a))
        .into_iter()
        .collect();
    request(method, &format!("{}/api{path}", fh.admin), body, &headers).await
}

/// The one JSON call every helper above makes: status, and the body parsed (Null when empty
/// or not JSON).
async fn request(
    method: &str,
    url: &str,
    body: Option<Value>,
    headers: &[(&str, &str)],
) -> (u16, Value) {
    let mut req = client().request(method.parse().expect("method"), url);
    if let Some(b) = body {
        req = req
            .header("content-type", "application/json")
            .body(b.to_string());
    }
    for (k, v) in headers {
        req = req.header(*k, *v);
    }
    let resp = req.send().await.expect("request");
    let status = resp.status().as_u16();
    let bytes = resp.bytes().await.expect("body");
    (
        status,
        serde_json::from_slice(&bytes).unwrap_or(Value::Null),
    )
}

/// Several JSON calls in order against `base` (an API root); each must succeed (200).
pub async fn calls(base: &str, steps: &[(&str, &str, Value)]) {
    for (method, path, body) in steps {
        let body = (!body.is_null()).then(|| body.clone());
        let (status, answer) = call(method, &format!("{base}{path}"), body).await;
        assert_eq!(status, 200, "{method} {path}: {answer}");
    }
}

/// How a receiver answers one request.
#[derive(Clone, Debug)]
pub enum Reply {
    Status(u16),
    /// Status with a `Retry-After` header.
    RetryAfter(u16, u64),
    /// Never answers (until the test ends).
    Hang,
    /// A 302 to another URL.
    Redirect(String),
}

/// One request a receiver got.
#[derive(Clone, Debug)]
pub struct Hit {
    pub headers: HeaderMap,
    pub body: Bytes,
    pub path: String,
}

impl Hit {
    pub fn json(&self) -> Value {
        serde_json::from_slice(&self.body).expect("receiver got JSON")
    }
    pub fn header(&self, name: &str) -> String {
        self.headers
            .get(name)
            .and_then(|v| v.to_str().ok())
            .unwrap_or("")
            .to_string()
    }
}

#[derive(Default)]
struct RecvState {
    hits: Vec<Hit>,
    script: VecDeque<Reply>,
    otherwise: u16,
    /// How long each answer takes (a slow receiver).
    delay: Duration,
}

/// A real HTTP receiver on loopback that records every request and answers from a script
/// (then 200).
#[derive(Clone)]
pub struct Receiver {
    pub url: String,
    pub addr: SocketAddr,
    state: Arc<Mutex<RecvState>>,
}

impl Receiver {
    pub async fn start(script: Vec<Reply>) -> Receiver {
        let state = Arc::new(Mutex::new(RecvState {
            hits: vec![],
            script: script.into(),
            otherwise: 200,
            delay: Duration::ZERO,
        }));
        let st = state.clone();
        let app = axum::Router::new().fallback(
            move |uri: axum::http::Uri, headers: HeaderMap, body: Bytes| {
                let st = st.clone();
                async move {
                    let (reply, delay) = {
                        let mut s = st.lock().expect("lock");
                        s.hits.push(Hit {
                            headers,
                            body,
                            path: uri
                                .path_and_query()
                                .map_or_else(|| uri.path().to_string(), |p| p.to_string()),
                        });
                        let otherwise = Reply::Status(s.otherwise);
                        (s.script.pop_front().unwrap_or(otherwise), s.delay)
                    };
                    if !delay.is_zero() {
                        tokio::time::sleep(delay).await;
                    }
                    match reply {
                        Reply::Status(c) => {
                            (StatusCode::from_u16(c).expect("status"), "ok").into_response()
                        }
                        Reply::RetryAfter(c, s) => (
                            StatusCode::from_u16(c).expect("status"),
                            [("retry-after", s.to_string())],
                            "later",
                        )
                            .into_response(),
                        Reply::Redirect(to) => {
                            (StatusCode::FOUND, [("location", to)], "moved").into_response()
                        }
                        Reply::Hang => {
                            tokio::time::sleep(Duration::from_secs(3600)).await;
                            StatusCode::OK.into_response()
                        }
                    }
                }
            },
        );
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let addr = listener.local_addr().expect("addr");
        tokio::spawn(async move {
            let _ = axum::serve(listener, app).await;
        });
        Receiver {
            url: format!("http://{addr}/hook"),
            addr,
            state,
        }
    }

    /// Each answer takes this long from now on.
    pub fn slow(&self, d: Duration) {
        self.state.lock().expect("lock").delay = d;
    }

    /// The status answered once the script is used up (200 unless set).
    pub fn answer(&self, status: u16) {
        self.state.lock().expect("lock").otherwise = status;
    }

    pub fn hits(&self) -> Vec<Hit> {
        self.state.lock().expect("lock").hits.clone()
    }

    /// Waits (bounded) until at least `n` requests arrived; returns them all.
    pub async fn wait_for(&self, n: usize) -> Vec<Hit> {
        let ok = wait_until(Duration::from_secs(30), || async { self.hits().len() >= n }).await;
        let hits = self.hits();
        assert!(ok, "receiver got {} of {n} requests", hits.len());
        hits
    }

    /// Events (the `event` field) received so far, in arrival order.
    pub fn events(&self) -> Vec<String> {
        self.hits()
            .iter()
            .map(|h| h.json()["event"].as_str().unwrap_or("").to_string())
            .collect()
    }
}

/// Config for one webhook pointing at `r`.
pub fn webhook(id: &str, r: &Receiver, extra: &str) -> String {
    format!(
        "[[webhooks]]\nid = \"{id}\"\nurl = \"{}\"\n{extra}\n",
        r.url
    )
}

/// Delivery settings for tests: loopback allowed, short retries.
pub const FAST_DELIVERY: &str = "[delivery]\nallow_loopback = true\nretry_schedule = [\"0s\", \"200ms\", \"200ms\", \"200ms\"]\ntimeout = \"2s\"\n";

/// Lowercase hex HMAC-SHA256 of `body` (flaghook's `X-Flagr-Signature`, forge signatures).
pub fn hmac_hex(secret: &str, body: &[u8]) -> String {
    hex::encode(hmac_sha256(secret, body))
}

/// Base64 HMAC-SHA256 of `msg` (Standard Webhooks' `webhook-signature`).
pub fn hmac_b64(secret: &str, msg: &[u8]) -> String {
    use base64::Engine;
    base64::engine::general_purpose::STANDARD.encode(hmac_sha256(secret, msg))
}

/// Base64 HMAC-SHA256 of `msg` under raw key bytes (a decoded `whsec_` secret).
pub fn hmac_b64_bytes(key: &[u8], msg: &[u8]) -> String {
    use base64::Engine;
    use hmac::{Hmac, Mac};
    let mut m = Hmac::<sha2::Sha256>::new_from_slice(key).expect("any key length");
    m.update(msg);
    base64::engine::general_purpose::STANDARD.encode(m.finalize().into_bytes())
}

fn hmac_sha256(secret: &str, msg: &[u8]) -> Vec<u8> {
    use hmac::{Hmac, Mac};
    let mut m = Hmac::<sha2::Sha256>::new_from_slice(secret.as_bytes()).expect("any key length");
    m.update(msg);
    m.finalize().into_bytes().to_vec()
}
