//! Git sync (seed 000): flags kept in git repositories, applied to Flagr on push, with a poller
//! behind the webhooks.
//!
//! In: forge push webhooks, poll ticks, manual triggers. Out: Flagr made to match the flags at
//! the branch head (through the proxy, so change events follow), and a status per repository.
//! Never: applies part of an invalid commit, or runs two syncs of one repository at once (one
//! task per repository handles every trigger in turn).

pub mod apply;
pub mod desired;
pub mod forge;
pub mod git;
pub mod plan;
pub mod rules;

use std::collections::{HashSet, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::time::Instant;

use serde::Serialize;
use tokio::sync::{mpsc, oneshot};
use tokio_util::sync::CancellationToken;

use crate::config::GitRepoConfig;
use crate::flagr::model::Flag;
use crate::flagr::FlagrClient;
use crate::metrics::{labels, latency_buckets, Registry};

/// What a sync did (or would do, for a dry run).
#[derive(Clone, Debug, Default, Serialize)]
pub struct Report {
    pub repository: String,
    pub commit: String,
    pub dry_run: bool,
    pub plan: Vec<plan::Op>,
    pub applied: usize,
    pub problems: Vec<desired::Problem>,
    pub error: Option<String>,
    /// Set when Flagr refused a call: the changes before it are applied, the rest are not.
    pub stopped: Option<apply::Stopped>,
    pub duration_ms: u64,
}

/// A repository's status for the admin API.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Status {
    pub id: String,
    pub url: String,
    pub branch: String,
    pub folder: String,
    pub last_synced_commit: String,
    pub last_sync_at: Option<String>,
    pub last_duration_ms: u64,
    pub last_changes: usize,
    pub last_error: Option<String>,
    /// The problems of the last refused commit.
    pub last_problems: Vec<desired::Problem>,
    /// The last sync that Flagr refused part of: how far it got (cleared by a full sync).
    pub last_stopped: Option<apply::Stopped>,
    pub syncs: u64,
    /// The commit last synced: id, subject, author, time.
    pub last_commit: Option<git::CommitInfo>,
    /// What the last applied sync changed.
    pub last_plan: Vec<plan::Op>,
    /// The last commit refused as invalid, with its report (kept after later good syncs).
    pub last_refused: Option<Refused>,
}

/// A commit refused as a whole, and why.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Refused {
    pub commit: String,
    pub short: String,
    /// RFC 3339: when it was refused.
    pub at: String,
    pub problems: Vec<desired::Problem>,
}

enum Trigger {
    Push(forge::Push),
    Poll,
    Manual {
        dry_run: bool,
        reply: oneshot::Sender<Report>,
    },
}

struct RepoHandle {
    cfg: GitRepoConfig,
    tx: mpsc::Sender<Trigger>,
    status: Arc<Mutex<Status>>,
}

impl RepoHandle {
    fn secret(&self, forge: forge::Forge) -> Option<&str> {
        self.cfg
            .secrets
            .get(forge.secret_key())
            .and_then(|s| s.expose())
    }
}

/// Every watched repository.
pub struct GitSync {
    repos: Vec<RepoHandle>,
    /// Recent delivery ids, for de-duplication (bounded).
    seen: Mutex<(HashSet<String>, VecDeque<String>)>,
}

labels! {
    /// How one sync ended.
    pub enum SyncOutcome {
        Success => "success",
        Invalid => "invalid",
        ApplyFailed => "apply_failed",
        Error => "error",
    }
}

/// Git sync's metrics, by repository.
pub struct GitSyncMetrics {
    runs: prometheus::IntCounterVec,
    duration: prometheus::HistogramVec,
    last_success: prometheus::IntGaugeVec,
}

impl GitSyncMetrics {
    pub fn new(r: &Registry) -> Self {
        Self {
            runs: r.counter_vec(
                "flaghook_gitsync_runs_total",
                "Git syncs, by repository and outcome (success, invalid, apply_failed, error).",
                &["repository", "outcome"],
            ),
            duration: r.histogram_vec(
                "flaghook_gitsync_duration_seconds",
                "Time to read, plan and apply one git sync.",
                &["repository"],
                latency_buckets(),
            ),
            last_success: r.gauge_vec(
                "flaghook_gitsync_last_success_timestamp_seconds",
                "Unix time of the last successful git sync, by repository.",
                &["repository"],
            ),
        }
    }

    fn init(&self, repository: &str) {
        for o in SyncOutcome::ALL {
            self.runs.with_label_values(&[repository, o.as_str()]);
        }
    }

    fn run(&self, repository: &str, o: SyncOutcome) {
        self.runs.with_label_values(&[repository, o.as_str()]).inc();
        if o == SyncOutcome::Success {
            self.last_success
                .with_label_values(&[repository])
                .set(chrono::Utc::now().timestamp());
        }
    }
}

/// Why git sync could not start.
#[derive(Debug, thiserror::Error)]
pub enum GitSyncError {
    #[error("cannot build git sync's HTTP client")]
    Client(#[source] reqwest::Error),
}

/// What the push endpoint answers.
#[derive(Debug, PartialEq, Eq)]
pub enum PushOutcome {
    Accepted(String),
    Ignored(&'static str),
    Duplicate,
}

const SEEN_MAX: usize = 4096;

struct Worker {
    cfg: GitRepoConfig,
    repo: git::Repo,
    flagr: FlagrClient,
    applier: Arc<apply::Applier>,
    metrics: Arc<GitSyncMetrics>,
    status: Arc<Mutex<Status>>,
    max_file_bytes: u64,
    max_total_bytes: u64,
    /// A commit refused as invalid: the poller does not try it again.
    refused: String,
    /// After a failure that may pass (Flagr or the remote not up yet), try again this soon.
    retry_at: Option<tokio::time::Instant>,
    /// Cluster mode: only the lease holder syncs; the others pass pushes on to it.
    cluster: Option<Arc<crate::cluster::Cluster>>,
}

/// How soon a sync that failed (not refused) is tried again, at most.
const RETRY_AFTER_FAILURE: Duration = Duration::from_secs(10);

impl GitSync {
    /// Starts one task per repository, when any is configured. Git sync's writes go through
    /// the proxy listening on `proxy`, marked with `token`.
    pub fn start(
        cfg: &crate::config::Config,
        proxy: std::net::SocketAddr,
        token: String,
        flagr: FlagrClient,
        metrics: Arc<GitSyncMetrics>,
        cluster: Option<Arc<crate::cluster::Cluster>>,
        shutdown: CancellationToken,
    ) -> Result<Option<Arc<Self>>, GitSyncError> {
        if cfg.git_repositories.is_empty() {
            return Ok(None);
        }
        let api_root = crate::flagr::RouteTable::new(&cfg.proxy.path_prefix)
            .api_root()
            .to_string();
        let applier = Arc::new(
            apply::Applier::new(proxy, &api_root, token, cfg.flagr.api_timeout * 2)
                .map_err(GitSyncError::Client)?,
        );
        let (repos, settings) = (&cfg.git_repositories, &cfg.gitsync);
        let workdir = if settings.workdir.is_empty() {
            std::env::temp_dir().join("flaghook-git")
        } else {
            std::path::PathBuf::from(&settings.workdir)
        };
        let mut handles = Vec::new();
        for cfg in repos {
            let (tx, rx) = mpsc::channel(64);
            let status = Arc::new(Mutex::new(Status {
                id: cfg.id.clone(),
                url: crate::redact::url(&cfg.url),
                branch: cfg.branch.clone(),
                folder: cfg.folder.clone(),
                ..Default::default()
            }));
            metrics.init(&cfg.id);
            let w = Worker {
                cfg: cfg.clone(),
                repo: git::Repo::new(
                    &cfg.url,
                    &cfg.branch,
                    &workdir.join(&cfg.id),
                    settings.git_timeout,
                ),
                max_file_bytes: settings.max_file_bytes,
                max_total_bytes: settings.max_total_bytes,
                flagr: flagr.clone(),
                applier: applier.clone(),
                metrics: metrics.clone(),
                status: status.clone(),
                refused: String::new(),
                retry_at: None,
                cluster: cluster.clone(),
            };
            tokio::spawn(w.run(rx, shutdown.clone()));
            handles.push(RepoHandle {
                cfg: cfg.clone(),
                tx,
                status,
            });
        }
        Ok(Some(Arc::new(Self {
            repos: handles,
            seen: Mutex::new((HashSet::new(), VecDeque::new())),
        })))
    }

    /// Cluster mode: another replica was pushed to; the lease holder fetches now.
    pub fn poke(&self, id: &str) {
        if let Some(r) = self.repos.iter().find(|r| r.cfg.id == id) {
            let _ = r.tx.try_send(Trigger::Poll);
        }
    }

    pub fn statuses(&self) -> Vec<Status> {
        self.repos
            .iter()
            .filter_map(|r| r.status.lock().ok().map(|s| s.clone()))
            .collect()
    }

    /// Runs a sync now and waits for its report.
    pub async fn trigger(&self, id: &str, dry_run: bool) -> Option<Report> {
        let r = self.repos.iter().find(|r| r.cfg.id == id)?;
        let (reply, rx) = oneshot::channel();
        r.tx.send(Trigger::Manual { dry_run, reply }).await.ok()?;
        rx.await.ok()
    }

    /// A push from a forge: parse, find the repository, verify, de-duplicate, queue.
    pub fn push(
        &self,
        forge: forge::Forge,
        headers: &http::HeaderMap,
        body: &[u8],
    ) -> Result<PushOutcome, forge::PushError> {
        let p = forge::parse(forge, headers, body)?;
        let Some(r) = self
            .repos
            .iter()
            .find(|r| p.repo_urls.iter().any(|u| forge::same_repo(u, &r.cfg.url)))
        else {
            // Answered like a watched repository's push: signed with one of this forge's
            // secrets, or refused, so an unsigned probe cannot tell which are watched.
            let signed = self
                .repos
                .iter()
                .any(|r| forge::verify(forge, r.secret(forge), headers, body).is_ok());
            return if signed {
                Ok(PushOutcome::Ignored("repository not watched"))
            } else {
                Err(forge::PushError::Unauthorized)
            };
        };
        forge::verify(forge, r.secret(forge), headers, body)?;
        if p.branch != r.cfg.branch {
            return Ok(PushOutcome::Ignored("branch not watched"));
        }
        if !p.delivery.is_empty() {
            let Ok(mut seen) = self.seen.lock() else {
                return Ok(PushOutcome::Duplicate);
            };
            if !seen.0.insert(p.delivery.clone()) {
                return Ok(PushOutcome::Duplicate);
            }
            seen.1.push_back(p.delivery.clone());
            if seen.1.len() > SEEN_MAX {
                if let Some(old) = seen.1.pop_front() {
                    seen.0.remove(&old);
                }
            }
        }
        let id = r.cfg.id.clone();
        if r.tx.try_send(Trigger::Push(p)).is_err() {
            // A full queue means syncs are already pending; the poller catches up regardless.
            tracing::warn!(repository = %id, "push queue full; the poller will catch up");
        }
        Ok(PushOutcome::Accepted(id))
    }
}

impl Worker {
    async fn run(mut self, mut rx: mpsc::Receiver<Trigger>, shutdown: CancellationToken) {
        if let Err(e) = self.repo.init().await {
            self.fail(&e.to_string());
        }
        // The first tick is immediate: sync on start.
        let mut tick = tokio::time::interval(self.cfg.poll_interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut leading = self.cluster.as_ref().map(|c| c.watch_leader());
        loop {
            let retry = self.retry_at;
            let t = tokio::select! {
                t = rx.recv() => match t { Some(t) => t, None => return },
                _ = tick.tick() => Trigger::Poll,
                () = async { if let Some(r) = retry { tokio::time::sleep_until(r).await } }, if retry.is_some() => Trigger::Poll,
                // A new lease holder syncs at once (the last one may have left a push behind).
                Some(true) = async {
                    match leading.as_mut() {
                        Some(l) => l.changed().await.ok().map(|()| *l.borrow_and_update()),
                        None => std::future::pending().await,
                    }
                } => Trigger::Poll,
                () = shutdown.cancelled() => return,
            };
            self.retry_at = None;
            if let Some(c) = self.cluster.clone().filter(|c| !c.confirmed_leader()) {
                match t {
                    // The lease holder fetches and syncs: told here, it does so now.
                    Trigger::Push(_) => {
                        let _ = c.broadcast("git", &self.cfg.id).await;
                    }
                    Trigger::Manual { dry_run, reply } if !dry_run => {
                        let r = self.failed_report(
                            String::new(),
                            false,
                            "cluster mode: another replica holds the lease and runs git sync"
                                .into(),
                        );
                        let _ = reply.send(r);
                    }
                    Trigger::Manual { reply, .. } => {
                        let report = match self.repo.fetch().await {
                            Ok(head) => self.sync(&head, true, true).await,
                            Err(e) => self.failed_report(String::new(), true, e.to_string()),
                        };
                        let _ = reply.send(report);
                    }
                    Trigger::Poll => {}
                }
                continue;
            }
            match t {
                Trigger::Poll => self.poll().await,
                Trigger::Push(p) => self.on_push(p).await,
                Trigger::Manual { dry_run, reply } => {
                    let report = match self.repo.fetch().await {
                        Ok(head) => self.sync(&head, dry_run, true).await,
                        Err(e) => self.failed_report(String::new(), dry_run, e.to_string()),
                    };
                    let _ = reply.send(report);
                }
            }
        }
    }

    fn last(&self) -> String {
        self.status
            .lock()
            .map(|s| s.last_synced_commit.clone())
            .unwrap_or_default()
    }

    async fn poll(&mut self) {
        match self.repo.fetch().await {
            Ok(head) if head != self.last() && head != self.refused => {
                tracing::info!(repository = %self.cfg.id, %head, "poller: branch moved");
                self.sync(&head, false, false).await;
            }
            Ok(_) => {}
            Err(e) => self.fail(&e.to_string()),
        }
    }

    async fn on_push(&mut self, p: forge::Push) {
        let last = self.last();
        if last.is_empty() || p.before != last {
            // Not the commit we know: no partial trust, compare everything.
            tracing::info!(repository = %self.cfg.id, before = %p.before, %last, "push does not follow the last synced commit: full reconcile");
            match self.repo.fetch().await {
                Ok(head) => {
                    self.sync(&head, false, true).await;
                }
                Err(e) => self.fail(&e.to_string()),
            }
            return;
        }
        // The forge may announce a commit before it can be fetched.
        let mut found = false;
        for attempt in 0..self.cfg.fetch_attempts {
            if attempt > 0 {
                tokio::time::sleep(self.cfg.fetch_interval).await;
            }
            if let Err(e) = self.repo.fetch().await {
                tracing::debug!(repository = %self.cfg.id, error = %e, "fetch failed");
            }
            if self.repo.has(&p.after).await {
                found = true;
                break;
            }
        }
        if !found {
            tracing::warn!(repository = %self.cfg.id, after = %p.after, attempts = self.cfg.fetch_attempts, "pushed commit not fetchable yet; the poller will pick it up");
            return;
        }
        // Decided from git, not from the payload's file lists: a force push can drop a flag
        // commit while listing only the README it adds.
        match self
            .repo
            .changed_files(&last, &p.after, &self.cfg.folder)
            .await
        {
            Ok(changed) if changed.is_empty() => {
                tracing::info!(repository = %self.cfg.id, after = %p.after, "push changes no flag file: recorded as synced");
                if let Ok(mut s) = self.status.lock() {
                    s.last_synced_commit = p.after.clone();
                }
                self.note_commit(&p.after).await;
                return;
            }
            Ok(_) => {}
            Err(e) => {
                tracing::debug!(repository = %self.cfg.id, error = %e, "cannot compare trees: full sync")
            }
        }
        self.sync(&p.after, false, true).await;
    }

    /// Shows the synced commit's subject, author and time (a failure to read them only leaves
    /// them out).
    async fn note_commit(&self, commit: &str) {
        let info = self.repo.commit_info(commit).await;
        if let (Ok(info), Ok(mut s)) = (info, self.status.lock()) {
            s.last_commit = Some(info);
        }
    }

    /// An invalid commit: nothing of it is applied, and the poller does not try it again.
    fn refuse(
        &mut self,
        commit: &str,
        problems: Vec<desired::Problem>,
        mut report: Report,
    ) -> Report {
        let id = &self.cfg.id;
        tracing::error!(repository = %id, %commit, problems = problems.len(), first = ?problems.first(), "commit refused: invalid flags; Flagr keeps its last good state");
        self.metrics.run(id, SyncOutcome::Invalid);
        self.refused = commit.to_string();
        if let Ok(mut s) = self.status.lock() {
            s.last_error = Some(format!(
                "commit {commit} refused: {} problem(s)",
                problems.len()
            ));
            s.last_problems = problems.clone();
            s.last_refused = Some(Refused {
                commit: commit.to_string(),
                short: commit.chars().take(7).collect(),
                at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                problems: problems.clone(),
            });
        }
        report.problems = problems;
        report.error = Some("invalid flags".into());
        report
    }

    fn fail(&mut self, e: &str) {
        self.retry_at =
            Some(tokio::time::Instant::now() + RETRY_AFTER_FAILURE.min(self.cfg.poll_interval));
        tracing::warn!(repository = %self.cfg.id, error = %e, "git sync failed; will try again");
        self.metrics.run(&self.cfg.id, SyncOutcome::Error);
        if let Ok(mut s) = self.status.lock() {
            s.last_error = Some(e.to_string());
        }
    }

    fn failed_report(&mut self, commit: String, dry_run: bool, error: String) -> Report {
        self.fail(&error);
        Report {
            repository: self.cfg.id.clone(),
            commit,
            dry_run,
            error: Some(error),
            ..Default::default()
        }
    }

    async fn actual(&self) -> Result<Vec<Flag>, String> {
        let (status, body) = self
            .flagr
            .get("/flags?preload=true")
            .await
            .map_err(|e| e.to_string())?;
        if status != http::StatusCode::OK {
            return Err(format!("GET /flags?preload=true answered {status}"));
        }
        serde_json::from_slice(&body).map_err(|e| e.to_string())
    }

    /// Makes Flagr match `commit` (or, dry, says how). `force` also re-applies a refused commit.
    async fn sync(&mut self, commit: &str, dry_run: bool, force: bool) -> Report {
        let started = Instant::now();
        let id = self.cfg.id.clone();
        let mut report = Report {
            repository: id.clone(),
            commit: commit.to_string(),
            dry_run,
            ..Default::default()
        };
        if !force && commit == self.refused {
            return report;
        }
        let files = match self
            .repo
            .files(
                commit,
                &self.cfg.folder,
                self.max_file_bytes,
                self.max_total_bytes,
            )
            .await
        {
            Ok(f) => f,
            Err(e) => return self.failed_report(commit.into(), dry_run, e.to_string()),
        };
        let mut problems = Vec::new();
        let mut readable = Vec::with_capacity(files.len());
        for (name, content) in files {
            match content {
                git::FileContent::Bytes(b) => readable.push((name, b)),
                git::FileContent::TooLarge(size) => problems.push(desired::Problem {
                    file: name,
                    flag: String::new(),
                    problem: format!(
                        "{size} bytes, above gitsync.max_file_bytes ({}): not read",
                        self.max_file_bytes
                    ),
                }),
                git::FileContent::TotalTooLarge(total) => problems.push(desired::Problem {
                    file: name,
                    flag: String::new(),
                    problem: format!(
                        "the flag files total {total} bytes, above gitsync.max_total_bytes ({}): none read",
                        self.max_total_bytes
                    ),
                }),
            }
        }
        let desired = match desired::load(&readable) {
            Ok(d) if problems.is_empty() => d,
            Ok(_) => return self.refuse(commit, problems, report),
            Err(more) => {
                problems.extend(more);
                return self.refuse(commit, problems, report);
            }
        };
        let actual = match self.actual().await {
            Ok(a) => a,
            Err(e) => return self.failed_report(commit.into(), dry_run, e),
        };
        report.plan = plan::plan(&desired, &actual, self.cfg.delete_missing);
        if dry_run {
            report.duration_ms = started.elapsed().as_millis() as u64;
            return report;
        }
        let result = self.applier.apply(commit, &report.plan).await;
        let elapsed = started.elapsed();
        report.duration_ms = elapsed.as_millis() as u64;
        self.metrics
            .duration
            .with_label_values(&[&id])
            .observe(elapsed.as_secs_f64());
        match result {
            Ok(n) => {
                report.applied = n;
                self.metrics.run(&id, SyncOutcome::Success);
                tracing::info!(repository = %id, %commit, changes = n, ?elapsed, "git sync applied");
                if let Ok(mut s) = self.status.lock() {
                    s.last_synced_commit = commit.to_string();
                    s.last_sync_at = Some(
                        chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Millis, true),
                    );
                    s.last_duration_ms = report.duration_ms;
                    s.last_changes = n;
                    s.last_error = None;
                    s.last_problems.clear();
                    s.last_stopped = None;
                    s.last_plan = report.plan.clone();
                    s.syncs += 1;
                }
                self.note_commit(commit).await;
            }
            Err(stopped) => {
                self.metrics.run(&id, SyncOutcome::ApplyFailed);
                tracing::error!(repository = %id, %commit, applied = stopped.applied, planned = stopped.planned, call = %stopped.call, error = %stopped.error, "git sync stopped at a call Flagr refused; the next sync plans the rest again");
                report.applied = stopped.applied;
                report.error = Some(stopped.to_string());
                if let Ok(mut s) = self.status.lock() {
                    s.last_error = Some(stopped.to_string());
                    s.last_stopped = Some(stopped.clone());
                }
                report.stopped = Some(stopped);
            }
        }
        report
    }
}
