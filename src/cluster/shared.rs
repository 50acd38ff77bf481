//! What every replica reads the same: runtime webhooks, pause state, the delivery log, the
//! changelog's cursors, and the messages between replicas (operator commands, hints).
//!
//! In: raw JSON from delivery, the admin API and the changelog's supervisor (this module does
//! not know their types). Out: the same JSON back, from any replica; messages to subscribers.
//! Never: blocks a caller on a best-effort write (log entries, pause state and hints go
//! through a bounded queue; what does not fit is counted); lets a cursor go backwards.

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures_util::StreamExt;
use redis::RedisError;
use serde::{Deserialize, Serialize};
use tokio_util::sync::CancellationToken;

use super::Cluster;

/// A message between replicas.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct Message {
    /// The replica that sent it (it ignores its own).
    pub from: String,
    /// `webhooks` (reload them), `pause`, `resume`, `hint`.
    pub op: String,
    #[serde(default)]
    pub id: String,
    /// A hint's JSON.
    #[serde(default)]
    pub body: Option<serde_json::Value>,
}

/// Saves cursors only forward (a replica with an older view never moves them back) and
/// `seen_max` only up. A new baseline (the leader's follower started again on a new or
/// restored Flagr database) replaces the whole state.
const SAVE_CURSORS: &str = r"
local b = redis.call('HGET', KEYS[2], 'baseline')
if ARGV[1] ~= '' and b ~= ARGV[1] then
  redis.call('DEL', KEYS[1])
  redis.call('HSET', KEYS[2], 'baseline', ARGV[1], 'seen_max', ARGV[2])
end
local s = tonumber(redis.call('HGET', KEYS[2], 'seen_max') or '-1')
if tonumber(ARGV[2]) > s then redis.call('HSET', KEYS[2], 'seen_max', ARGV[2]) end
for i = 3, #ARGV, 3 do
  local old = redis.call('HGET', KEYS[1], ARGV[i])
  if (not old) or tonumber(cjson.decode(old)['snapshot']) <= tonumber(ARGV[i + 2]) then
    redis.call('HSET', KEYS[1], ARGV[i], ARGV[i + 1])
  end
end
return 1
";

/// Deletes a webhook's shared state, and returns how many requests in its stream no replica
/// had read. KEYS: webhooks, pause, control channel, then the webhook's own keys (the stream
/// first). ARGV: id, group, the message for the other replicas.
const DELETE_WEBHOOK: &str = r"
local unread = 0
if redis.call('EXISTS', KEYS[4]) == 1 then
  unread = redis.call('XLEN', KEYS[4])
  local ok, p = pcall(redis.call, 'XPENDING', KEYS[4], ARGV[2])
  if ok then unread = unread - p[1] end
end
redis.call('HDEL', KEYS[1], ARGV[1])
redis.call('HDEL', KEYS[2], ARGV[1])
for i = 4, #KEYS do redis.call('DEL', KEYS[i]) end
redis.call('PUBLISH', KEYS[3], ARGV[3])
return unread
";

/// Seeds the shared webhooks once in the cluster's life: 1 when this call did.
const SEED_WEBHOOKS: &str = r"
if redis.call('SET', KEYS[2], '1', 'NX') then
  for i = 1, #ARGV, 2 do redis.call('HSETNX', KEYS[1], ARGV[i], ARGV[i + 1]) end
  return 1
end
return 0
";

/// The changelog's shared state: baseline, seen_max and each flag's cursor as JSON.
pub struct SharedCursors {
    pub baseline: i64,
    pub seen_max: i64,
    pub cursors: Vec<(i64, String)>,
}

impl Cluster {
    /// Runtime webhooks (id, JSON).
    pub async fn webhooks(&self) -> Result<Vec<(String, String)>, RedisError> {
        let m: HashMap<String, String> = self
            .call("webhooks", redis::cmd("HGETALL").arg(self.key("webhooks")))
            .await?;
        let mut v: Vec<_> = m.into_iter().collect();
        v.sort();
        Ok(v)
    }

    /// The first replica's runtime webhooks become the shared ones, once (a cluster whose
    /// webhooks were all deleted since does not get them back); true when this call did it.
    pub async fn seed_webhooks(&self, local: &[(String, String)]) -> Result<bool, RedisError> {
        let script = redis::Script::new(SEED_WEBHOOKS);
        let args: Vec<&[u8]> = local
            .iter()
            .flat_map(|(k, v)| [k.as_bytes(), v.as_bytes()])
            .collect();
        let n: i64 = self
            .script(
                "webhooks",
                &script,
                &[self.key("webhooks"), self.key("webhooks-seeded")],
                &args,
            )
            .await?;
        Ok(n == 1)
    }

    /// Saves a runtime webhook and tells the other replicas.
    pub async fn put_webhook(&self, id: &str, json: &str) -> Result<(), RedisError> {
        let mut p = redis::pipe();
        p.atomic()
            .hset(self.key("webhooks"), id, json)
            .ignore()
            .publish(self.key("ctl"), self.message("webhooks", id, None))
            .ignore();
        self.pipeline::<()>("webhooks", &p).await
    }

    /// Deletes a runtime webhook with its stream, counters and log, and tells the others;
    /// the requests no replica had read yet are counted as lost with it.
    pub async fn delete_webhook(&self, id: &str) -> Result<(), RedisError> {
        let script = redis::Script::new(DELETE_WEBHOOK);
        let keys = [
            self.key("webhooks"),
            self.key("pause"),
            self.key("ctl"),
            self.key(&format!("s:{id}")),
            self.key(&format!("q:{id}")),
            self.key(&format!("d:{id}")),
            self.key(&format!("last:{id}")),
            self.key(&format!("log:{id}")),
        ];
        let message = self.message("webhooks", id, None);
        let unread: u64 = self
            .script(
                "webhooks",
                &script,
                &keys,
                &[id.as_bytes(), super::GROUP.as_bytes(), message.as_bytes()],
            )
            .await?;
        self.metrics.deleted_unsent.inc_by(unread);
        Ok(())
    }

    /// Tells the other replicas about an operator command (`pause`, `resume`).
    pub async fn broadcast(&self, op: &str, id: &str) -> Result<(), RedisError> {
        let mut p = redis::pipe();
        p.publish(self.key("ctl"), self.message(op, id, None))
            .ignore();
        self.pipeline::<()>("control", &p).await
    }

    /// Sends a proxied change's hint to the leader (best effort: its poll finds the change).
    pub fn publish_hint(&self, hint: serde_json::Value) {
        let mut p = redis::pipe();
        p.publish(self.key("ctl"), self.message("hint", "", Some(hint)))
            .ignore();
        self.metrics.hints.with_label_values(&["sent"]).inc();
        self.write("hint", p);
    }

    fn message(&self, op: &str, id: &str, body: Option<serde_json::Value>) -> String {
        serde_json::to_string(&Message {
            from: self.replica.clone(),
            op: op.into(),
            id: id.into(),
            body,
        })
        .unwrap_or_default()
    }

    /// Every endpoint's pause state (id, JSON).
    pub async fn pause_states(&self) -> Result<HashMap<String, String>, RedisError> {
        self.call("pause", redis::cmd("HGETALL").arg(self.key("pause")))
            .await
    }

    /// Saves an endpoint's pause state (best effort; saved again at its next change).
    pub fn save_pause(&self, id: &str, json: &str) {
        let mut p = redis::pipe();
        p.hset(self.key("pause"), id, json).ignore();
        self.write("pause", p);
    }

    /// Adds a delivery attempt to an endpoint's shared log, keeping the newest `max`.
    pub fn push_log(&self, id: &str, json: String, max: usize) {
        let key = self.key(&format!("log:{id}"));
        let mut p = redis::pipe();
        p.lpush(&key, json)
            .ignore()
            .ltrim(&key, 0, max.saturating_sub(1) as isize)
            .ignore();
        self.write("log", p);
    }

    /// An endpoint's shared log, newest first.
    pub async fn log(&self, id: &str) -> Result<Vec<String>, RedisError> {
        self.call(
            "log",
            redis::cmd("LRANGE")
                .arg(self.key(&format!("log:{id}")))
                .arg(0)
                .arg(-1),
        )
        .await
    }

    /// Requests waiting in an endpoint's stream (queued or in flight), cluster-wide.
    pub async fn backlog(&self, id: &str) -> Result<u64, RedisError> {
        self.call(
            "backlog",
            redis::cmd("XLEN").arg(self.key(&format!("s:{id}"))),
        )
        .await
    }

    /// The changelog's shared state; `None` before any leader saved one.
    pub async fn cursors(&self) -> Result<Option<SharedCursors>, RedisError> {
        let meta: HashMap<String, i64> = self
            .call("cursors", redis::cmd("HGETALL").arg(self.key("changelog")))
            .await?;
        let Some(baseline) = meta.get("baseline").copied() else {
            return Ok(None);
        };
        let cursors: HashMap<i64, String> = self
            .call("cursors", redis::cmd("HGETALL").arg(self.key("cursors")))
            .await?;
        Ok(Some(SharedCursors {
            baseline,
            seen_max: meta.get("seen_max").copied().unwrap_or(baseline),
            cursors: cursors.into_iter().collect(),
        }))
    }

    /// Saves the changelog's state, only forward: (flag, JSON, snapshot) per cursor.
    pub async fn save_cursors(
        &self,
        baseline: Option<i64>,
        seen_max: i64,
        cursors: &[(i64, String, i64)],
    ) -> Result<(), RedisError> {
        let script = redis::Script::new(SAVE_CURSORS);
        let mut args: Vec<Vec<u8>> = vec![
            baseline
                .map(|b| b.to_string())
                .unwrap_or_default()
                .into_bytes(),
            seen_max.to_string().into_bytes(),
        ];
        for (flag, json, snapshot) in cursors {
            args.push(flag.to_string().into_bytes());
            args.push(json.clone().into_bytes());
            args.push(snapshot.to_string().into_bytes());
        }
        let refs: Vec<&[u8]> = args.iter().map(Vec::as_slice).collect();
        let _: i64 = self
            .script(
                "cursors",
                &script,
                &[self.key("cursors"), self.key("changelog")],
                &refs,
            )
            .await?;
        Ok(())
    }
}

/// Carries out the best-effort writes until `stop`; a write that fails is tried once more a
/// second later, then counted and dropped.
pub async fn run_writer(c: Arc<Cluster>, mut rx: super::Writes, stop: CancellationToken) {
    loop {
        let (kind, p) = tokio::select! {
            w = rx.recv() => match w { Some(w) => w, None => return },
            () = stop.cancelled() => return,
        };
        let mut tries = 0;
        loop {
            if c.pipeline::<()>(kind, &p).await.is_ok() {
                break;
            }
            tries += 1;
            if tries >= 2 {
                c.metrics.dropped.with_label_values(&[kind]).inc();
                break;
            }
            if !super::pause(Duration::from_secs(1), &stop).await {
                return;
            }
        }
    }
}

/// Hands every message from the other replicas to `each` until `stop`, resubscribing after a
/// lost connection; `each` also gets a `resync` message after every (re)subscription, since
/// messages sent meanwhile were missed.
pub async fn subscribe(
    c: Arc<Cluster>,
    each: impl Fn(Message) + Send + Sync + 'static,
    stop: CancellationToken,
) {
    let channel = c.key("ctl");
    loop {
        let sub = async {
            let mut ps = c.pubsub().await?;
            ps.subscribe(&channel).await?;
            Ok::<_, RedisError>(ps)
        };
        let mut ps = match tokio::time::timeout(Duration::from_secs(3), sub).await {
            Ok(Ok(ps)) => ps,
            Ok(Err(e)) => {
                c.failed("subscribe", &e);
                if !super::pause(Duration::from_secs(1), &stop).await {
                    return;
                }
                continue;
            }
            Err(_) => {
                c.metrics.errors.with_label_values(&["subscribe"]).inc();
                if !super::pause(Duration::from_secs(1), &stop).await {
                    return;
                }
                continue;
            }
        };
        each(Message {
            from: String::new(),
            op: "resync".into(),
            id: String::new(),
            body: None,
        });
        let mut msgs = ps.on_message();
        loop {
            let m = tokio::select! {
                m = msgs.next() => m,
                () = stop.cancelled() => return,
            };
            let Some(m) = m else { break };
            let Ok(payload) = m.get_payload::<String>() else {
                continue;
            };
            match serde_json::from_str::<Message>(&payload) {
                Ok(msg) if msg.from != c.replica => each(msg),
                Ok(_) => {}
                Err(e) => tracing::warn!(error = %e, "unreadable message from another replica"),
            }
        }
        tracing::warn!("redis subscription lost: subscribing again");
        if !super::pause(Duration::from_millis(500), &stop).await {
            return;
        }
    }
}
