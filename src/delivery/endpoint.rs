//! One endpoint's delivery worker: the loop that joins the queue's bookkeeping (`queue`), the
//! attempts (`attempt`), the endpoint's policy (`policy`), delivery protection (`breaker`) and
//! the outbox, and keeps the delivery log.
//!
//! In: [`Job`]s and [`Control`] messages on channels. Out: signed POSTs to the endpoint, the
//! endpoint's [`Status`] for the admin API, metrics, logs.
//! Never: sends two requests for the same order key at once (events of one flag keep their
//! order), sends while paused (except the one probe), holds more than its bounds (the oldest
//! unsent job is dropped and counted), or blocks another endpoint.

use std::collections::VecDeque;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tokio::sync::mpsc;
use tokio::task::JoinSet;
use tokio::time::Instant;

pub use super::ctx::{EndpointCtx, Kind};
pub use super::job::{Attempt, Job, LogEntry};

use super::attempt;
use super::breaker::{Breaker, Permit, State, Transition};
use super::link::MaySend;
use super::metrics::DropReason;
use super::outbox::PauseState;
use super::queue::{Bounds, Queue};
use super::retry::Verdict;

/// How soon a stream job that may not go yet (cluster mode, renewals failing) is looked at
/// again.
const NOT_NOW_DELAY: Duration = Duration::from_millis(250);
use crate::window::{Latencies, Minutes};

/// Operator commands for a worker.
pub enum Control {
    Pause,
    Resume,
    /// New URL, secret, headers, ...: the queue is kept.
    Reconfigure(Arc<EndpointCtx>),
    /// The webhook was deleted: drop the queue (counted) and stop.
    Stop,
}

/// What the admin API shows of an endpoint; updated by the worker.
#[derive(Clone, Debug, Default, Serialize)]
pub struct Status {
    /// `active`, `paused`, `probing`, or `disabled` (the receiver answered 410 Gone).
    pub state: &'static str,
    /// RFC 3339: when the next probe may go (automatic pauses only).
    pub paused_until: Option<String>,
    pub paused_by_operator: bool,
    pub queue_depth: usize,
    pub queue_bytes: usize,
    pub last_success: Option<String>,
    pub last_failure: Option<String>,
    pub last_error: Option<String>,
    /// When what waits goes next: the end of a retry delay or of a pause.
    pub next_attempt_at: Option<String>,
    /// Successes, failures and latencies per minute over the last hour.
    #[serde(skip)]
    pub stats: Minutes<Latencies>,
    /// Impression endpoints: batches waiting for the endpoint to recover.
    pub parked_batches: usize,
    pub parked_bytes: usize,
    /// Impression endpoints: records handed to this endpoint, and delivered.
    pub records_batched: u64,
    pub records_delivered: u64,
    pub batches_sent: u64,
    /// Impression records handed to this endpoint per minute.
    #[serde(skip)]
    pub records: Minutes<u64>,
    #[serde(skip)]
    pub log: VecDeque<LogEntry>,
    /// Body bytes the log holds (bounded by `delivery.log_body_bytes`).
    #[serde(skip)]
    pub log_body_bytes: usize,
}

/// The status shared between the worker (writer) and the admin API (reader).
pub type SharedStatus = Arc<Mutex<Status>>;

fn instant_rfc3339(t: Instant) -> String {
    let wall = chrono::Utc::now()
        + chrono::Duration::from_std(t.saturating_duration_since(Instant::now()))
            .unwrap_or_default();
    wall.to_rfc3339_opts(chrono::SecondsFormat::Millis, true)
}

/// The worker's mutable world, apart from the channels.
struct Worker {
    ctx: Arc<EndpointCtx>,
    status: SharedStatus,
    breaker: Breaker,
    queue: Queue,
    tasks: JoinSet<Attempt>,
    /// When a pause ends and a probe may go.
    wake: Option<Instant>,
    /// Impression batches that failed their retry, oldest first, for when the endpoint recovers.
    parked: VecDeque<Job>,
    parked_bytes: usize,
    /// Requests given up on because the shutdown deadline came first.
    lost_at_shutdown: usize,
    /// The pause state last written to the outbox.
    saved_pause: Option<PauseState>,
    /// The receiver answered 410 Gone: nothing is sent until an operator resumes it.
    disabled: bool,
}

impl Worker {
    fn id(&self) -> &str {
        &self.ctx.webhook.id
    }

    /// Impression records handed to this endpoint, for the admin page.
    fn count_records(&self, job: &Job) {
        if job.records == 0 {
            return;
        }
        if let Ok(mut s) = self.status.lock() {
            s.records_batched += job.records as u64;
            *s.records.now() += job.records as u64;
        }
    }

    fn enqueue(&mut self, job: Job) {
        self.enqueue_with(job, 0, None);
    }

    fn enqueue_with(&mut self, job: Job, attempts: usize, not_before: Option<SystemTime>) {
        for d in self.queue.push(job, attempts, not_before) {
            tracing::warn!(endpoint = %self.ctx.webhook.id, delivery_id = %d.id, "queue full: dropped the oldest undelivered request");
            give_up(&self.ctx, &d, DropReason::QueueFull);
            self.ctx.outbox.remove(&self.ctx.webhook.id, &[d.seq]);
        }
    }

    /// Starts what may start: one in flight per key, a bounded number per endpoint, nothing
    /// while paused but the one probe.
    fn launch(&mut self) {
        self.wake = None;
        if self.disabled {
            return;
        }
        while self.tasks.len() < self.ctx.policy.max_in_flight {
            let Some(key) = self.queue.pop_ready() else {
                break;
            };
            let probe = match self.breaker.permit(Instant::now()) {
                Permit::Send => false,
                Permit::Probe => {
                    tracing::info!(endpoint = %self.id(), "cooldown over: probing with one delivery");
                    true
                }
                Permit::Wait(until) => {
                    self.queue.unpop(key);
                    self.wake = until;
                    break;
                }
            };
            let Some((job, attempt)) = self.queue.start(key) else {
                continue;
            };
            match self.ctx.outbox.may_send(&self.ctx.webhook.id, job.seq) {
                MaySend::Yes => {}
                // Cluster mode: another replica holds it now and sends it.
                MaySend::TakenOver => {
                    self.queue.complete(key);
                    self.ctx.outbox.remove(&self.ctx.webhook.id, &[job.seq]);
                    continue;
                }
                // Cluster mode, renewals failing: it may be taken over any moment.
                MaySend::NotNow => {
                    self.queue.not_now(key, NOT_NOW_DELAY);
                    continue;
                }
            }
            let ctx = self.ctx.clone();
            self.tasks
                .spawn(async move { attempt::send(&ctx, key, &job, attempt, probe).await });
        }
    }

    fn finish(&mut self, a: Attempt, draining: bool) {
        let failure = matches!(a.verdict, Verdict::Retry { .. });
        match self.breaker.record(Instant::now(), failure, a.probe) {
            Some(Transition::Paused { until }) => {
                tracing::warn!(endpoint = %self.id(), until = %instant_rfc3339(until), "endpoint keeps failing: paused");
            }
            Some(Transition::ProbeFailed { until }) => {
                tracing::warn!(endpoint = %self.id(), until = %instant_rfc3339(until), "probe failed: pause extended");
            }
            Some(Transition::Resumed) => {
                tracing::info!(endpoint = %self.id(), "probe succeeded: endpoint resumed; everything waiting goes now");
                self.release_waiting();
            }
            None => {}
        }
        if a.verdict == Verdict::Gone && !self.disabled {
            self.disabled = true;
            tracing::warn!(endpoint = %self.id(), delivery_id = %a.entry.delivery_id, "receiver answered 410 Gone: endpoint disabled until resumed by hand");
        }
        self.save_pause();
        self.log(a.entry.clone());
        let id = self.ctx.webhook.id.clone();
        if a.verdict == Verdict::Gone
            || (failure && self.breaker.state() != State::Active && !draining)
        {
            // Not the request's fault: the endpoint is paused (this failure may have paused
            // it, or it was the probe) or disabled. It waits, with its attempt given back.
            self.queue.give_back(a.key);
            return;
        }
        let Some(front) = self.queue.front(a.key) else {
            return;
        };
        if draining && self.ctx.outbox.durable() && matches!(a.verdict, Verdict::Retry { .. }) {
            // Shutting down: the request stays in the outbox for the next start, its attempt
            // counted; it is not tried again now.
            self.ctx
                .outbox
                .update(&id, &front.job, front.attempts, None, false);
            self.queue.hold(a.key);
            return;
        }
        let retry_delay = match &a.verdict {
            Verdict::Retry { retry_after } if !draining => {
                self.ctx
                    .rules
                    .retry_delay(front.attempts, *retry_after, fastrand::f64())
            }
            _ => None,
        };
        if let Some(delay) = retry_delay {
            self.ctx.metrics.retry(&id);
            tracing::info!(endpoint = %id, delivery_id = %front.job.id, attempt = front.attempts, status = ?a.entry.status, error = ?a.entry.error, ?delay, "delivery failed; will retry");
            self.ctx
                .outbox
                .update(&id, &front.job, front.attempts, Some(delay), false);
            self.queue.retry_later(a.key, delay);
            return;
        }
        let Some(done) = self.queue.complete(a.key) else {
            return;
        };
        // Parked batches keep their row (rewritten as parked); everything else is finished.
        let parks = matches!(a.verdict, Verdict::Retry { .. })
            && !draining
            && self.ctx.rules.park_max_bytes().is_some();
        if !parks {
            self.ctx.outbox.remove(&id, &[done.job.seq]);
        }
        match a.verdict {
            Verdict::Success => {
                if let (Some(link), Some(_)) =
                    (self.ctx.outbox.link(), self.ctx.rules.park_max_bytes())
                {
                    // Cluster mode: the endpoint answers again; batches parked in Redis come back.
                    super::relay::recovered(link, &id, self.ctx.outbox.clone());
                }
                if done.job.records > 0 {
                    if let Ok(mut s) = self.status.lock() {
                        s.records_delivered += done.job.records as u64;
                        s.batches_sent += 1;
                    }
                    self.ctx
                        .metrics
                        .impressions_delivered(done.job.records as u64);
                }
                // The endpoint answers again: what was parked goes back in the queue.
                if !self.parked.is_empty() {
                    tracing::info!(endpoint = %id, batches = self.parked.len(), "endpoint recovered: sending parked batches");
                    self.parked_bytes = 0;
                    for job in std::mem::take(&mut self.parked) {
                        self.ctx.outbox.update(&id, &job, 0, None, false);
                        self.enqueue(job);
                    }
                }
            }
            Verdict::Retry { .. } if parks => self.park(done.job),
            Verdict::Final | Verdict::Gone => {
                give_up(&self.ctx, &done.job, DropReason::Rejected);
                tracing::warn!(endpoint = %id, delivery_id = %done.job.id, status = ?a.entry.status, "receiver rejected the request; not retried");
            }
            Verdict::Retry { .. } => {
                let reason = if draining {
                    self.lost_at_shutdown += 1;
                    DropReason::Shutdown
                } else {
                    DropReason::RetriesExhausted
                };
                tracing::warn!(endpoint = %id, delivery_id = %done.job.id, attempts = done.attempts, status = ?a.entry.status, error = ?a.entry.error, reason = reason.as_str(), "gave up on a request");
                give_up(&self.ctx, &done.job, reason);
            }
        }
    }

    /// Keeps a failed impression batch for later; beyond the bound the oldest is dropped.
    fn park(&mut self, job: Job) {
        let Some(park_max_bytes) = self.ctx.rules.park_max_bytes() else {
            return;
        };
        let id = self.ctx.webhook.id.clone();
        self.ctx.metrics.impressions_parked(job.records as u64);
        tracing::warn!(endpoint = %id, delivery_id = %job.id, records = job.records, "batch failed its retry: parked until the endpoint recovers");
        self.ctx.outbox.update(&id, &job, 0, None, true);
        if self.ctx.outbox.park_shared(&id, &job, park_max_bytes) {
            // Cluster mode: Redis keeps it, within the same bound.
            return;
        }
        self.parked_bytes += job.size;
        self.parked.push_back(job);
        while self.parked_bytes > park_max_bytes {
            let Some(old) = self.parked.pop_front() else {
                break;
            };
            self.parked_bytes -= old.size;
            give_up(&self.ctx, &old, DropReason::ParkedOverflow);
            self.ctx.outbox.remove(&id, &[old.seq]);
            tracing::warn!(endpoint = %id, delivery_id = %old.id, records = old.records, "parking bound reached: dropped the oldest parked batch");
        }
    }

    /// Keeps the pause state in the outbox, so a restart does not hammer a dead receiver.
    fn save_pause(&mut self) {
        if !self.ctx.outbox.durable() {
            return;
        }
        let state = match self.breaker.state() {
            State::Paused {
                until,
                cooldown,
                manual,
            } => PauseState {
                until_ms: (!manual).then(|| {
                    let left = until.saturating_duration_since(Instant::now());
                    (SystemTime::now() + left)
                        .duration_since(SystemTime::UNIX_EPOCH)
                        .map(|d| d.as_millis() as u64)
                        .unwrap_or(0)
                }),
                cooldown_ms: cooldown.as_millis() as u64,
                manual,
                disabled: false,
            },
            // A probe in flight: after a restart the endpoint is probed again at once.
            State::Probing { cooldown } => PauseState {
                until_ms: Some(0),
                cooldown_ms: cooldown.as_millis() as u64,
                manual: false,
                disabled: false,
            },
            State::Active => PauseState::default(),
        };
        let state = PauseState {
            disabled: self.disabled,
            ..state
        };
        if self.saved_pause.as_ref() != Some(&state) {
            self.ctx.outbox.save_pause_state(self.id(), &state);
            self.saved_pause = Some(state);
        }
    }

    /// Reads the endpoint's queue and pause state back from the outbox.
    fn restore(&mut self) {
        let id = self.ctx.webhook.id.clone();
        if let Some(p) = self.ctx.outbox.pause_state(&id) {
            self.disabled = p.disabled;
            if p.manual {
                self.breaker.pause(Instant::now());
            } else if let Some(until_ms) = p.until_ms {
                let until = SystemTime::UNIX_EPOCH + Duration::from_millis(until_ms);
                // Capped: a clock far off must not pause an endpoint for years.
                let left = until
                    .duration_since(SystemTime::now())
                    .unwrap_or(Duration::ZERO)
                    .min(Duration::from_millis(p.cooldown_ms.max(1000)) * 2);
                self.breaker
                    .restore_pause(Instant::now() + left, Duration::from_millis(p.cooldown_ms));
            }
            self.saved_pause = Some(p);
        }
        let mut n = 0;
        let outbox = self.ctx.outbox.clone();
        let park_max = self.ctx.rules.park_max_bytes().unwrap_or(0);
        outbox.load(&id, |s| {
            n += 1;
            if s.parked && outbox.park_shared(&id, &s.job, park_max) {
                // Cluster mode: parked batches left by a crash go to Redis now.
            } else if s.parked {
                self.parked_bytes += s.job.size;
                self.parked.push_back(s.job);
            } else {
                self.enqueue_with(s.job, s.attempts, s.next_at);
            }
        });
        if n == 0 {
            return;
        }
        // A retry's delay outlives the restart: the key waits out what is left of it.
        self.queue.resume_waits(SystemTime::now());
        tracing::info!(endpoint = %id, requests = n, "outbox read back: resuming delivery");
    }

    /// Requests waiting out a retry delay go at once (the endpoint is back).
    fn release_waiting(&mut self) {
        self.queue.release_waiting();
    }

    fn log(&mut self, e: LogEntry) {
        self.ctx.outbox.log(self.id(), &e, &self.ctx.policy);
        let max = self.ctx.policy.log_size;
        if let Ok(mut s) = self.status.lock() {
            s.stats.now().record(e.error.is_none(), e.latency_ms);
            if e.error.is_none() {
                s.last_success = Some(e.at.clone());
            } else {
                s.last_failure = Some(e.at.clone());
                s.last_error = e.error.clone();
            }
            s.log_body_bytes += e.body.len();
            s.log.push_back(e);
            while s.log.len() > max {
                if let Some(old) = s.log.pop_front() {
                    s.log_body_bytes -= old.body.len();
                }
            }
            // Over the byte budget: the oldest entries give up their bodies first.
            let budget = self.ctx.policy.log_body_bytes;
            let Status {
                log,
                log_body_bytes,
                ..
            } = &mut *s;
            for entry in log.iter_mut() {
                if *log_body_bytes <= budget {
                    break;
                }
                *log_body_bytes -= std::mem::take(&mut entry.body).len();
                entry.body_kept = false;
            }
        }
    }

    /// Publishes queue sizes and breaker state to metrics and the admin API.
    fn publish(&self) {
        let id = &self.ctx.webhook.id;
        let (state, until, manual) = match self.breaker.state() {
            State::Active => ("active", None, false),
            State::Paused { until, manual, .. } => {
                ("paused", (!manual).then(|| instant_rfc3339(until)), manual)
            }
            State::Probing { .. } => ("probing", None, false),
        };
        let state = if self.disabled { "disabled" } else { state };
        let next = match state {
            "paused" => until.clone(),
            "disabled" => None,
            _ => self.queue.next_due_at().map(instant_rfc3339),
        };
        self.ctx.metrics.endpoint_state(
            id,
            self.queue.len(),
            self.queue.bytes(),
            state == "paused" || state == "probing",
            self.disabled,
        );
        if let Ok(mut s) = self.status.lock() {
            s.state = state;
            s.paused_until = until;
            s.paused_by_operator = manual;
            s.next_attempt_at = next;
            s.parked_batches = self.parked.len();
            s.parked_bytes = self.parked_bytes;
            s.queue_depth = self.queue.len();
            s.queue_bytes = self.queue.bytes();
        }
    }
}

/// Runs until `shutdown` (or until its job channel closes), then delivers what it can within
/// the shutdown deadline. Returns the number of jobs left undelivered.
pub async fn run(
    ctx: Arc<EndpointCtx>,
    status: SharedStatus,
    mut rx: mpsc::Receiver<Job>,
    mut ctl: mpsc::Receiver<Control>,
    shutdown: super::Stop,
) -> usize {
    let breaker = Breaker::new(ctx.policy.protection.clone());
    ctx.metrics
        .init_endpoint(&ctx.webhook.id, ctx.rules.park_max_bytes().is_some());
    let mut w = Worker {
        status,
        breaker,
        queue: Queue::new(Bounds {
            max_events: ctx.policy.queue_max_events,
            max_bytes: ctx.policy.queue_max_bytes,
            memory_bytes: ctx.policy.queue_memory_bytes,
        }),
        ctx,
        tasks: JoinSet::new(),
        wake: None,
        parked: VecDeque::new(),
        parked_bytes: 0,
        lost_at_shutdown: 0,
        saved_pause: None,
        disabled: false,
    };
    w.restore();
    let mut deadline: Option<Instant> = None;
    let mut stopped = false;
    w.publish();
    loop {
        w.launch();
        w.publish();
        let durable = w.ctx.outbox.durable();
        if deadline.is_some()
            && w.tasks.is_empty()
            && (w.queue.is_empty()
                || w.queue.nothing_ready()
                || (durable && (w.disabled || w.breaker.state() != State::Active)))
        {
            break;
        }
        tokio::select! {
            job = rx.recv(), if deadline.is_none() => match job {
                Some(job) => {
                    w.count_records(&job);
                    w.enqueue(job);
                }
                None => deadline = Some(shutdown.deadline(w.ctx.policy.shutdown_deadline)),
            },
            Some(c) = ctl.recv() => match c {
                Control::Pause => {
                    w.breaker.pause(Instant::now());
                    w.save_pause();
                    tracing::warn!(endpoint = %w.id(), "paused by an operator");
                }
                Control::Resume => {
                    w.breaker.resume();
                    w.disabled = false;
                    w.save_pause();
                    tracing::info!(endpoint = %w.id(), "resumed by an operator");
                    w.release_waiting();
                }
                Control::Reconfigure(new) => w.ctx = new,
                Control::Stop => {
                    stopped = true;
                    break;
                }
            },
            Some(done) = w.tasks.join_next() => {
                if let Ok(a) = done {
                    w.finish(a, deadline.is_some());
                }
            }
            _ = w.queue.next_due() => {}
            () = sleep_until(w.wake), if w.wake.is_some() && deadline.is_none() => {}
            () = shutdown.cancelled(), if deadline.is_none() => {
                // Take what is already queued, then stop accepting.
                rx.close();
                while let Ok(job) = rx.try_recv() {
                    w.enqueue(job);
                }
                deadline = Some(shutdown.deadline(w.ctx.policy.shutdown_deadline));
            }
            () = sleep_until(deadline) => break,
        }
        if deadline.is_some() && !w.ctx.outbox.durable() {
            // Draining with nothing kept on disk: waiting retries go now, once, and a pause no
            // longer holds them back.
            w.queue.release_waiting();
            w.breaker.resume();
        }
    }
    w.tasks.abort_all();
    if stopped {
        w.ctx.outbox.clear(w.id());
    } else if w.ctx.outbox.durable() {
        // Everything left is in the outbox (or, in cluster mode, pending in Redis) and goes
        // out after the next start.
        let volatile = w.queue.not_on_disk(|seq| w.ctx.outbox.holds(w.id(), seq));
        let kept = w.queue.len() + w.parked.len() - volatile;
        if kept > 0 {
            tracing::info!(endpoint = %w.id(), kept, "requests kept in the outbox for the next start");
        }
        if volatile > 0 {
            // Their outbox write had failed (a full disk): they end with the process.
            w.ctx
                .metrics
                .dropped(w.id(), DropReason::Shutdown, volatile as u64, 0);
            tracing::warn!(endpoint = %w.id(), undelivered = volatile, "requests that never reached the outbox are lost at shutdown");
        }
        w.queue.clear();
        w.publish();
        return kept;
    }
    let parked = std::mem::take(&mut w.parked);
    for job in &parked {
        w.ctx
            .metrics
            .impressions_dropped_records(w.id(), DropReason::Shutdown, job.records as u64);
    }
    let left = w.queue.len() + parked.len() + w.lost_at_shutdown;
    if left > 0 {
        let reason = if stopped {
            DropReason::Deleted
        } else {
            DropReason::Shutdown
        };
        // Those given up on while draining were counted one by one already.
        w.ctx
            .metrics
            .dropped(w.id(), reason, (left - w.lost_at_shutdown) as u64, 0);
        tracing::warn!(endpoint = %w.id(), undelivered = left, reason = reason.as_str(), "requests left undelivered");
    }
    w.queue.clear();
    w.publish();
    left
}

/// Counts one request given up on, with the impression records it carried (the caller logs
/// why, with what it knows of the attempt).
fn give_up(ctx: &EndpointCtx, job: &Job, reason: DropReason) {
    ctx.metrics
        .dropped(&ctx.webhook.id, reason, 1, job.records as u64);
}

async fn sleep_until(deadline: Option<Instant>) {
    match deadline {
        Some(d) => tokio::time::sleep_until(d).await,
        None => std::future::pending().await,
    }
}
