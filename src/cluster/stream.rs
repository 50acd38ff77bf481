//! One stream per endpoint, and the consumer group the replicas share: queued once per event
//! id (a claim), numbered per flag, delivered by whichever replica reads it, finished once.
//!
//! In: requests from the local store's spill (the leader's derivations); reads, renewals and
//! acknowledgements from every replica's consumers. Out: stream entries; which flags' earlier
//! requests are finished (for per-flag order across replicas).
//! Never: queues an event id twice for one endpoint within `claim_ttl`; moves a flag's
//! finished mark backwards.

use std::collections::HashMap;

use redis::RedisError;

use super::{Cluster, Entry, GROUP};

/// Claims each request's id; queues the new ones with the next number of their flag and the
/// entry id of the flag's previous request (`p`: whether it is still there tells a request
/// waiting for it that it is gone).
/// KEYS: stream, per-flag counters, per-flag last entry. ARGV: claim prefix, claim ttl (s),
/// then 7 per request.
const QUEUE: &str = r"
local added, skipped = 0, 0
for i = 3, #ARGV, 7 do
  if redis.call('SET', ARGV[1] .. ARGV[i], '1', 'NX', 'EX', ARGV[2]) then
    local n = redis.call('HINCRBY', KEYS[2], ARGV[i + 1], 1)
    local prev = redis.call('HGET', KEYS[3], ARGV[i + 1]) or ''
    local id = redis.call('XADD', KEYS[1], '*', 'i', ARGV[i], 'f', ARGV[i + 1], 'n', n,
      'p', prev, 'k', ARGV[i + 2], 'l', ARGV[i + 3], 'r', ARGV[i + 4], 'e', ARGV[i + 5],
      'b', ARGV[i + 6])
    redis.call('HSET', KEYS[3], ARGV[i + 1], id)
    added = added + 1
  else
    skipped = skipped + 1
  end
end
return {added, skipped}
";

/// Finishes requests: acknowledged, deleted, and their flag's finished mark moved forward.
/// Nothing when the stream is gone (its webhook was deleted: a late finish must not leave
/// marks a webhook made again under the same id would trust).
/// KEYS: stream, finished marks. ARGV: group, then 3 per request (entry id, flag, number).
const FINISH: &str = r"
if redis.call('EXISTS', KEYS[1]) == 0 then return 0 end
for i = 2, #ARGV, 3 do
  redis.call('XACK', KEYS[1], ARGV[1], ARGV[i])
  redis.call('XDEL', KEYS[1], ARGV[i])
  local done = tonumber(redis.call('HGET', KEYS[2], ARGV[i + 1]) or '0')
  if done < tonumber(ARGV[i + 2]) then redis.call('HSET', KEYS[2], ARGV[i + 1], ARGV[i + 2]) end
end
return 1
";

/// Renews this consumer's hold on the given entries, only those it still owns (another
/// replica may have taken one over); returns the ones it no longer holds.
/// KEYS: stream. ARGV: group, consumer, then the entry ids.
const RENEW: &str = r"
local lost = {}
for i = 3, #ARGV do
  local p = redis.call('XPENDING', KEYS[1], ARGV[1], ARGV[i], ARGV[i], 1)
  if p[1] and p[1][2] == ARGV[2] then
    redis.call('XCLAIM', KEYS[1], ARGV[1], ARGV[2], 0, ARGV[i], 'JUSTID')
  else
    lost[#lost + 1] = ARGV[i]
  end
end
return lost
";

/// One request to queue.
pub struct Queued<'a> {
    pub id: &'a str,
    pub flag: i64,
    pub flag_key: &'a str,
    pub label: &'a str,
    pub records: usize,
    pub encoding: &'a str,
    pub body: &'a [u8],
}

/// A request read from a stream.
#[derive(Clone, Debug)]
pub struct Read {
    pub entry: String,
    pub id: String,
    pub flag: i64,
    /// Its place among its flag's requests to this endpoint (1, 2, ...).
    pub n: u64,
    /// The entry of the flag's previous request (empty for the first).
    pub prev: String,
    pub flag_key: String,
    pub label: String,
    pub records: usize,
    pub encoding: String,
    pub body: Vec<u8>,
}

impl Read {
    /// The entry's id as the error for an entry deleted meanwhile (`true`) or not written
    /// by [`Cluster::queue`] (`false`).
    fn from(e: Entry) -> Result<Self, (String, bool)> {
        let (entry, fields) = e;
        let Some(mut f) = fields else {
            return Err((entry, true));
        };
        let text = |f: &mut HashMap<String, Vec<u8>>, k: &str| {
            String::from_utf8(f.remove(k).unwrap_or_default()).unwrap_or_default()
        };
        let flag = text(&mut f, "f").parse().ok();
        let n = text(&mut f, "n").parse().ok();
        let (Some(flag), Some(n)) = (flag, n) else {
            return Err((entry, false));
        };
        Ok(Self {
            prev: text(&mut f, "p"),
            id: text(&mut f, "i"),
            flag,
            n,
            flag_key: text(&mut f, "k"),
            label: text(&mut f, "l"),
            records: text(&mut f, "r").parse().unwrap_or(0),
            encoding: text(&mut f, "e"),
            body: f.remove("b").unwrap_or_default(),
            entry,
        })
    }
}

/// What a read gave: requests, and entries to finish unread (deleted meanwhile, unreadable).
pub struct Batch {
    pub reads: Vec<Read>,
    pub gone: Vec<String>,
}

impl Cluster {
    /// The requests among `entries`; entries deleted meanwhile, and unreadable ones (counted:
    /// a request lost), are to be finished unread.
    fn batch(&self, endpoint: &str, entries: Vec<Entry>) -> Batch {
        let mut b = Batch {
            reads: Vec::new(),
            gone: Vec::new(),
        };
        for e in entries {
            match Read::from(e) {
                Ok(r) => b.reads.push(r),
                Err((id, true)) => b.gone.push(id),
                Err((id, false)) => {
                    self.metrics.unreadable.with_label_values(&["entry"]).inc();
                    tracing::error!(endpoint, entry = %id, "stream entry not readable; dropped");
                    b.gone.push(id);
                }
            }
        }
        b
    }

    fn stream(&self, endpoint: &str) -> String {
        self.key(&format!("s:{endpoint}"))
    }

    /// Queues requests for an endpoint, each at most once per id; returns (queued, skipped as
    /// already claimed).
    pub async fn queue(
        &self,
        endpoint: &str,
        reqs: &[Queued<'_>],
    ) -> Result<(u64, u64), RedisError> {
        let script = redis::Script::new(QUEUE);
        let claim = self.key(&format!("c:{endpoint}:"));
        let ttl = self.cfg.claim_ttl.as_secs().max(1).to_string();
        let nums: Vec<(String, String)> = reqs
            .iter()
            .map(|r| (r.flag.to_string(), r.records.to_string()))
            .collect();
        let mut args: Vec<&[u8]> = vec![claim.as_bytes(), ttl.as_bytes()];
        for (r, (flag, records)) in reqs.iter().zip(&nums) {
            args.extend_from_slice(&[
                r.id.as_bytes(),
                flag.as_bytes(),
                r.flag_key.as_bytes(),
                r.label.as_bytes(),
                records.as_bytes(),
                r.encoding.as_bytes(),
                r.body,
            ]);
        }
        let (added, skipped): (u64, u64) = self
            .script(
                "queue",
                &script,
                &[
                    self.stream(endpoint),
                    self.key(&format!("q:{endpoint}")),
                    self.key(&format!("last:{endpoint}")),
                ],
                &args,
            )
            .await?;
        self.metrics.queued.inc_by(added);
        self.metrics.duplicates.inc_by(skipped);
        Ok((added, skipped))
    }

    /// Creates the endpoint's group when missing (from the stream's start: nothing queued
    /// before the first replica came is skipped).
    pub async fn ensure_group(
        &self,
        c: &mut impl redis::aio::ConnectionLike,
        endpoint: &str,
    ) -> Result<(), RedisError> {
        let r: Result<(), RedisError> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(self.stream(endpoint))
            .arg(GROUP)
            .arg("0")
            .arg("MKSTREAM")
            .query_async(c)
            .await;
        match r {
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            r => self.note("group", r),
        }
    }

    /// Reads up to `count` requests: this replica's own unfinished ones when `own` (after a
    /// restart), else new ones, waiting up to `block` for them.
    pub async fn read(
        &self,
        c: &mut impl redis::aio::ConnectionLike,
        endpoint: &str,
        count: usize,
        own: bool,
        block: std::time::Duration,
    ) -> Result<Batch, RedisError> {
        let mut cmd = redis::cmd("XREADGROUP");
        cmd.arg("GROUP")
            .arg(GROUP)
            .arg(&self.replica)
            .arg("COUNT")
            .arg(count);
        if !own {
            cmd.arg("BLOCK").arg(block.as_millis() as u64);
        }
        cmd.arg("STREAMS")
            .arg(self.stream(endpoint))
            .arg(if own { "0" } else { ">" });
        let v: redis::Value = self.note("read", cmd.query_async(c).await)?;
        Ok(self.batch(endpoint, super::entries(&v)))
    }

    /// Takes over requests another replica has held for `reclaim_idle` without renewing them,
    /// scanning the pending list from `from` (`0-0` at first); returns them and where the next
    /// scan goes on.
    pub async fn reclaim(
        &self,
        endpoint: &str,
        from: &str,
        count: usize,
    ) -> Result<(Batch, String), RedisError> {
        let v: redis::Value = self
            .call(
                "reclaim",
                redis::cmd("XAUTOCLAIM")
                    .arg(self.stream(endpoint))
                    .arg(GROUP)
                    .arg(&self.replica)
                    .arg(self.cfg.reclaim_idle.as_millis() as u64)
                    .arg(from)
                    .arg("COUNT")
                    .arg(count),
            )
            .await?;
        let next = match &v {
            redis::Value::Array(a) => match a.first() {
                Some(redis::Value::BulkString(b)) => String::from_utf8_lossy(b).into_owned(),
                Some(redis::Value::SimpleString(s)) => s.clone(),
                _ => "0-0".into(),
            },
            _ => "0-0".into(),
        };
        let b = self.batch(endpoint, super::entries(&v));
        self.metrics.reclaimed.inc_by(b.reads.len() as u64);
        Ok((b, next))
    }

    /// Renews this replica's hold on requests it still works on (a retry waits, a receiver is
    /// slow); returns those another replica took over meanwhile.
    pub async fn renew(
        &self,
        endpoint: &str,
        entries: &[String],
    ) -> Result<Vec<String>, RedisError> {
        if entries.is_empty() {
            return Ok(Vec::new());
        }
        let script = redis::Script::new(RENEW);
        let mut args: Vec<&[u8]> = vec![GROUP.as_bytes(), self.replica.as_bytes()];
        args.extend(entries.iter().map(|e| e.as_bytes()));
        self.script("renew", &script, &[self.stream(endpoint)], &args)
            .await
    }

    /// Whether an entry is still in its stream (not finished, not deleted).
    pub async fn present(&self, endpoint: &str, entry: &str) -> Result<bool, RedisError> {
        let v: redis::Value = self
            .call(
                "present",
                redis::cmd("XRANGE")
                    .arg(self.stream(endpoint))
                    .arg(entry)
                    .arg(entry),
            )
            .await?;
        Ok(matches!(v, redis::Value::Array(a) if !a.is_empty()))
    }

    /// Finishes requests (delivered, or given up on and counted): (entry, flag, number).
    pub async fn finish(
        &self,
        endpoint: &str,
        done: &[(String, i64, u64)],
    ) -> Result<(), RedisError> {
        if done.is_empty() {
            return Ok(());
        }
        let script = redis::Script::new(FINISH);
        let nums: Vec<(String, String)> = done
            .iter()
            .map(|(_, f, n)| (f.to_string(), n.to_string()))
            .collect();
        let mut args: Vec<&[u8]> = vec![GROUP.as_bytes()];
        for ((entry, _, _), (flag, n)) in done.iter().zip(&nums) {
            args.extend_from_slice(&[entry.as_bytes(), flag.as_bytes(), n.as_bytes()]);
        }
        let _: i64 = self
            .script(
                "finish",
                &script,
                &[self.stream(endpoint), self.key(&format!("d:{endpoint}"))],
                &args,
            )
            .await?;
        Ok(())
    }

    /// The number of the last finished request of each flag (0: none yet).
    pub async fn finished(&self, endpoint: &str, flags: &[i64]) -> Result<Vec<u64>, RedisError> {
        if flags.is_empty() {
            return Ok(Vec::new());
        }
        let v: Vec<Option<u64>> = self
            .call(
                "finished",
                redis::cmd("HMGET")
                    .arg(self.key(&format!("d:{endpoint}")))
                    .arg(flags),
            )
            .await?;
        Ok(v.into_iter().map(|n| n.unwrap_or(0)).collect())
    }
}

/// Parks a failed impression batch; beyond `max` bytes the oldest go (their records are
/// returned, to be counted). KEYS: list, byte count. ARGV: max, then the rows.
const PARK: &str = r"
for i = 2, #ARGV do
  redis.call('RPUSH', KEYS[1], ARGV[i])
  redis.call('INCRBY', KEYS[2], #ARGV[i])
end
local dropped = {}
while tonumber(redis.call('GET', KEYS[2]) or '0') > tonumber(ARGV[1]) do
  local old = redis.call('LPOP', KEYS[1])
  if not old then redis.call('SET', KEYS[2], 0) break end
  redis.call('DECRBY', KEYS[2], #old)
  local nl = string.find(old, '\n', 1, true)
  local ok, h = pcall(cjson.decode, string.sub(old, 1, (nl or 1) - 1))
  dropped[#dropped + 1] = (ok and tonumber(h['records'])) or 0
end
return dropped
";

/// Takes up to `count` parked batches, oldest first. KEYS: list, byte count. ARGV: count.
const UNPARK: &str = r"
local rows = redis.call('LPOP', KEYS[1], ARGV[1])
if not rows then return {} end
for _, r in ipairs(rows) do redis.call('DECRBY', KEYS[2], #r) end
if redis.call('LLEN', KEYS[1]) == 0 then redis.call('DEL', KEYS[2]) end
return rows
";

impl Cluster {
    /// An endpoint's parked batches and their byte count.
    fn parked_keys(&self, endpoint: &str) -> [String; 2] {
        [
            self.key(&format!("parked:{endpoint}")),
            self.key(&format!("parked-bytes:{endpoint}")),
        ]
    }

    /// Parks impression batches (rows: a header line and the body) for whichever replica
    /// sees the endpoint recover; returns the records of the oldest dropped beyond `max`.
    pub async fn park(
        &self,
        endpoint: &str,
        rows: &[Vec<u8>],
        max: usize,
    ) -> Result<Vec<u64>, RedisError> {
        let script = redis::Script::new(PARK);
        let max = max.to_string();
        let mut args: Vec<&[u8]> = vec![max.as_bytes()];
        args.extend(rows.iter().map(Vec::as_slice));
        self.script("park", &script, &self.parked_keys(endpoint), &args)
            .await
    }

    /// Takes up to `count` parked batches of an endpoint, oldest first.
    pub async fn unpark(&self, endpoint: &str, count: usize) -> Result<Vec<Vec<u8>>, RedisError> {
        let script = redis::Script::new(UNPARK);
        let count = count.to_string();
        self.script(
            "park",
            &script,
            &self.parked_keys(endpoint),
            &[count.as_bytes()],
        )
        .await
    }

    /// Parked batches of an endpoint, cluster-wide: (batches, bytes).
    pub async fn parked(&self, endpoint: &str) -> Result<(u64, u64), RedisError> {
        let mut p = redis::pipe();
        let [list, bytes] = self.parked_keys(endpoint);
        p.llen(list).get(bytes);
        let (n, b): (u64, Option<u64>) = self.pipeline("park", &p).await?;
        Ok((n, b.unwrap_or(0)))
    }
}
