//! One endpoint's queue as bookkeeping only: each flag's requests in order, one in flight per
//! flag, retry waits, the bounds (the oldest request never attempted goes first), and how many
//! bodies stay in memory.
//!
//! In: jobs, and the worker's decisions (start, wait, retry later, give back, done).
//! Out: the next job to send, the jobs a bound pushed out, the flags whose wait is over.
//! Never: does I/O, counts metrics or logs: the worker does that with what this returns.

use std::collections::{BTreeMap, HashMap, HashSet, VecDeque};
use std::time::{Duration, SystemTime};

use bytes::Bytes;
use futures_util::StreamExt;
use tokio_util::time::DelayQueue;

use super::job::Job;

/// The longest a retry delay read back from the outbox is honoured.
const MAX_WAIT: Duration = Duration::from_secs(24 * 3600);

/// A queued job and how often it was tried.
#[derive(Debug)]
pub struct Queued {
    pub job: Job,
    seq: u64,
    pub attempts: usize,
    /// Read back from the outbox: the retry delay it was waiting out.
    not_before: Option<SystemTime>,
}

/// The limits a queue keeps to.
#[derive(Clone, Copy, Debug)]
pub struct Bounds {
    pub max_events: usize,
    pub max_bytes: usize,
    /// Bodies kept in memory at most; beyond it, a job already in the outbox keeps no body.
    pub memory_bytes: usize,
}

pub struct Queue {
    bounds: Bounds,
    queues: HashMap<i64, VecDeque<Queued>>,
    /// Jobs never attempted, by arrival: the oldest is dropped when a bound is hit.
    unsent: BTreeMap<u64, i64>,
    in_flight: HashSet<i64>,
    waiting: HashSet<i64>,
    ready: VecDeque<i64>,
    delays: DelayQueue<i64>,
    count: usize,
    bytes: usize,
    body_bytes: usize,
    seq: u64,
}

impl Queue {
    pub fn new(bounds: Bounds) -> Self {
        Self {
            bounds,
            queues: HashMap::new(),
            unsent: BTreeMap::new(),
            in_flight: HashSet::new(),
            waiting: HashSet::new(),
            ready: VecDeque::new(),
            delays: DelayQueue::new(),
            count: 0,
            bytes: 0,
            body_bytes: 0,
            seq: 0,
        }
    }

    /// Queued jobs (in flight included).
    pub fn len(&self) -> usize {
        self.count
    }

    pub fn is_empty(&self) -> bool {
        self.count == 0
    }

    /// Their bodies' bytes (whether held in memory or not).
    pub fn bytes(&self) -> usize {
        self.bytes
    }

    /// Bytes of bodies held in memory.
    pub fn body_bytes(&self) -> usize {
        self.body_bytes
    }

    /// True when no flag's job could start now (all waiting, in flight, or none queued).
    pub fn nothing_ready(&self) -> bool {
        self.ready.is_empty()
    }

    /// Adds a job behind its flag's others; returns the jobs the bounds pushed out, oldest
    /// first.
    pub fn push(
        &mut self,
        mut job: Job,
        attempts: usize,
        not_before: Option<SystemTime>,
    ) -> Vec<Job> {
        if job.on_disk
            && !job.body.is_empty()
            && self.body_bytes + job.size > self.bounds.memory_bytes
        {
            job.body = Bytes::new();
        }
        self.body_bytes += job.body.len();
        self.seq += 1;
        self.count += 1;
        self.bytes += job.size;
        let key = job.order_key;
        self.unsent.insert(self.seq, key);
        let q = self.queues.entry(key).or_default();
        q.push_back(Queued {
            job,
            seq: self.seq,
            attempts,
            not_before,
        });
        if q.len() == 1 {
            self.ready.push_back(key);
        }
        let mut dropped = Vec::new();
        while self.count > self.bounds.max_events || self.bytes > self.bounds.max_bytes {
            let Some((old_seq, old_key)) = self.unsent.pop_first() else {
                break;
            };
            let Some(q) = self.queues.get_mut(&old_key) else {
                continue;
            };
            if let Some(pos) = q.iter().position(|j| j.seq == old_seq) {
                if let Some(d) = q.remove(pos) {
                    self.count -= 1;
                    self.bytes -= d.job.size;
                    self.body_bytes -= d.job.body.len();
                    dropped.push(d.job);
                }
            }
            if q.is_empty() {
                self.queues.remove(&old_key);
            }
        }
        dropped
    }

    /// A flag whose front job may start now (none of its jobs in flight or waiting).
    pub fn pop_ready(&mut self) -> Option<i64> {
        while let Some(key) = self.ready.pop_front() {
            if !self.in_flight.contains(&key)
                && !self.waiting.contains(&key)
                && self.queues.get(&key).is_some_and(|q| !q.is_empty())
            {
                return Some(key);
            }
        }
        None
    }

    /// Puts a flag back at the head of the line (the endpoint said wait).
    pub fn unpop(&mut self, key: i64) {
        self.ready.push_front(key);
    }

    /// Starts the flag's front job: in flight, one attempt more. Returns it and its attempt.
    pub fn start(&mut self, key: i64) -> Option<(Job, usize)> {
        let q = self.queues.get_mut(&key)?.front_mut()?;
        self.unsent.remove(&q.seq);
        q.attempts += 1;
        self.in_flight.insert(key);
        Some((q.job.clone(), q.attempts))
    }

    /// The flag's front job, as it stands.
    pub fn front(&self, key: i64) -> Option<&Queued> {
        self.queues.get(&key)?.front()
    }

    /// The attempt did not count against the job (the endpoint was paused or disabled): its
    /// attempt is given back and it goes again when the endpoint allows.
    pub fn give_back(&mut self, key: i64) {
        self.in_flight.remove(&key);
        if let Some(f) = self.queues.get_mut(&key).and_then(|q| q.front_mut()) {
            f.attempts = f.attempts.saturating_sub(1);
        }
        self.ready.push_back(key);
    }

    /// Not started after all (it may not go yet): its attempt is given back and it is looked
    /// at again after `delay`.
    pub fn not_now(&mut self, key: i64, delay: Duration) {
        if let Some(f) = self.queues.get_mut(&key).and_then(|q| q.front_mut()) {
            f.attempts = f.attempts.saturating_sub(1);
        }
        self.retry_later(key, delay);
    }

    /// The flag's front job goes again after `delay`.
    pub fn retry_later(&mut self, key: i64, delay: Duration) {
        self.in_flight.remove(&key);
        self.waiting.insert(key);
        self.delays.insert(key, delay);
    }

    /// The flag's jobs stay queued but none starts until `release_waiting` (shutting down).
    pub fn hold(&mut self, key: i64) {
        self.in_flight.remove(&key);
        self.waiting.insert(key);
    }

    /// The flag's front job is finished (delivered, refused, given up): returns it; the
    /// flag's next job may start.
    pub fn complete(&mut self, key: i64) -> Option<Queued> {
        self.in_flight.remove(&key);
        let q = self.queues.get_mut(&key)?;
        let done = q.pop_front()?;
        self.count -= 1;
        self.bytes -= done.job.size;
        self.body_bytes -= done.job.body.len();
        if q.is_empty() {
            self.queues.remove(&key);
        } else {
            self.ready.push_back(key);
        }
        Some(done)
    }

    /// Every flag waiting out a retry delay goes now.
    pub fn release_waiting(&mut self) {
        for key in self.waiting.drain() {
            self.ready.push_back(key);
        }
        self.delays.clear();
    }

    /// After a restart: flags whose front job was waiting out a retry delay wait out the rest.
    pub fn resume_waits(&mut self, now: SystemTime) {
        let later: Vec<(i64, Duration)> = self
            .queues
            .iter()
            .filter_map(|(key, q)| {
                let left = q.front()?.not_before?.duration_since(now).ok()?;
                Some((*key, left))
            })
            .collect();
        for (key, left) in later {
            // Capped: a clock far off must not hold a request for years (or overflow the timer).
            let left = left.min(MAX_WAIT);
            self.ready.retain(|k| *k != key);
            self.waiting.insert(key);
            self.delays.insert(key, left);
        }
    }

    /// When the first retry delay ends; `None` while none waits.
    pub fn next_due_at(&self) -> Option<tokio::time::Instant> {
        self.delays.peek().map(|k| self.delays.deadline(&k))
    }

    /// Resolves when a flag's retry delay is over, and lets it go; pends while none waits.
    pub async fn next_due(&mut self) -> i64 {
        loop {
            if self.delays.is_empty() {
                std::future::pending::<()>().await;
            }
            if let Some(e) = self.delays.next().await {
                let key = e.into_inner();
                self.waiting.remove(&key);
                self.ready.push_front(key);
                return key;
            }
        }
    }

    /// Queued jobs whose outbox write failed (they live only in memory).
    pub fn not_on_disk(&self, kept_elsewhere: impl Fn(u64) -> bool) -> usize {
        self.queues
            .values()
            .flatten()
            .filter(|q| !q.job.on_disk && !kept_elsewhere(q.job.seq))
            .count()
    }

    /// Empties the queue (the worker is done with it).
    pub fn clear(&mut self) {
        *self = Queue::new(self.bounds);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn job(key: i64, id: &str, size: usize) -> Job {
        Job {
            seq: 0,
            size,
            on_disk: false,
            id: id.into(),
            order_key: key,
            body: Bytes::from(vec![b'x'; size]),
            label: "flag.updated",
            encoding: None,
            records: 0,
            flag_key: None,
        }
    }

    fn bounds(max_events: usize) -> Bounds {
        Bounds {
            max_events,
            max_bytes: 1 << 20,
            memory_bytes: 1 << 20,
        }
    }

    #[test]
    fn one_in_flight_per_flag_in_order_flags_side_by_side() {
        let mut q = Queue::new(bounds(10));
        for (k, id) in [(1, "a1"), (1, "a2"), (2, "b1")] {
            assert!(q.push(job(k, id, 1), 0, None).is_empty());
        }
        let k1 = q.pop_ready().unwrap();
        let (j, attempt) = q.start(k1).unwrap();
        assert_eq!((j.id.as_str(), attempt), ("a1", 1));
        let k2 = q.pop_ready().unwrap();
        assert_eq!(q.start(k2).unwrap().0.id, "b1");
        // Flag 1 is in flight: nothing else may start.
        assert_eq!(q.pop_ready(), None);
        assert_eq!(q.complete(1).unwrap().job.id, "a1");
        let k = q.pop_ready().unwrap();
        assert_eq!(q.start(k).unwrap().0.id, "a2");
        assert_eq!(q.len(), 2);
    }

    #[test]
    fn bounds_drop_the_oldest_never_attempted() {
        let mut q = Queue::new(bounds(2));
        q.push(job(1, "a", 1), 0, None);
        let k = q.pop_ready().unwrap();
        q.start(k);
        q.push(job(2, "b", 1), 0, None);
        // "a" is in flight, so "b" is the oldest never attempted.
        let dropped = q.push(job(3, "c", 1), 0, None);
        assert_eq!(
            dropped.iter().map(|j| j.id.as_str()).collect::<Vec<_>>(),
            ["b"]
        );
        assert_eq!(q.len(), 2);
        let mut by_bytes = Queue::new(Bounds {
            max_events: 100,
            max_bytes: 10,
            memory_bytes: 100,
        });
        by_bytes.push(job(1, "a", 6), 0, None);
        let dropped = by_bytes.push(job(1, "b", 6), 0, None);
        assert_eq!(dropped[0].id, "a");
        assert_eq!(by_bytes.bytes(), 6);
    }

    #[test]
    fn bodies_beyond_the_memory_bound_stay_on_disk() {
        let mut q = Queue::new(Bounds {
            max_events: 100,
            max_bytes: 1000,
            memory_bytes: 10,
        });
        let on_disk = |id: &str| Job {
            on_disk: true,
            ..job(1, id, 6)
        };
        q.push(on_disk("a"), 0, None);
        q.push(on_disk("b"), 0, None);
        // Not on disk yet (the outbox refused it): kept whatever the bound.
        q.push(job(1, "c", 6), 0, None);
        assert_eq!(q.body_bytes(), 12);
        assert_eq!(q.bytes(), 18);
        let k = q.pop_ready().unwrap();
        assert_eq!(q.start(k).unwrap().0.body.len(), 6);
        assert_eq!(q.complete(k).unwrap().job.id, "a");
        let k = q.pop_ready().unwrap();
        assert!(
            q.start(k).unwrap().0.body.is_empty(),
            "b is read back when sent"
        );
        assert_eq!(q.body_bytes(), 6);
    }

    #[tokio::test(start_paused = true)]
    async fn retries_wait_their_delay_and_releases_end_every_wait() {
        let mut q = Queue::new(bounds(10));
        q.push(job(1, "a", 1), 0, None);
        q.push(job(2, "b", 1), 0, None);
        for _ in 0..2 {
            let k = q.pop_ready().unwrap();
            q.start(k);
        }
        q.retry_later(1, Duration::from_secs(5));
        q.retry_later(2, Duration::from_secs(30));
        assert_eq!(q.pop_ready(), None);
        let t0 = tokio::time::Instant::now();
        assert_eq!(q.next_due().await, 1);
        assert_eq!(t0.elapsed(), Duration::from_secs(5));
        let k = q.pop_ready().unwrap();
        let (j, attempt) = q.start(k).unwrap();
        assert_eq!((j.id.as_str(), attempt), ("a", 2));
        // The endpoint is back: flag 2 goes now, not in 25 s.
        q.release_waiting();
        assert_eq!(q.pop_ready(), Some(2));
        // A paused endpoint gives the attempt back.
        q.start(2);
        q.give_back(2);
        assert_eq!(q.front(2).unwrap().attempts, 1);
    }

    #[tokio::test(start_paused = true)]
    async fn waits_read_back_from_disk_continue_after_a_restart() {
        let mut q = Queue::new(bounds(10));
        let now = SystemTime::now();
        q.push(job(1, "a", 1), 3, Some(now + Duration::from_secs(60)));
        q.push(job(2, "b", 1), 1, Some(now - Duration::from_secs(1)));
        q.resume_waits(now);
        assert_eq!(q.pop_ready(), Some(2), "a past delay does not wait");
        assert_eq!(q.pop_ready(), None);
        assert_eq!(q.next_due().await, 1);
        let k = q.pop_ready().unwrap();
        let (_, attempt) = q.start(k).unwrap();
        assert_eq!(attempt, 4, "the attempt count survives the restart");
    }
}
