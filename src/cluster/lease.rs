//! The lease: one replica at a time follows Flagr's changelog and runs git sync.
//!
//! In: the clock; Redis's answer to take-or-renew. Out: this replica's leadership (a watch
//! channel), confirmed while Redis renews it.
//! Never: gives leadership up because Redis is away (nobody else can take it then, and the
//! local store keeps what is derived meanwhile); holds it when Redis says another replica has
//! it.

use std::sync::Arc;

use tokio::time::Instant;
use tokio_util::sync::CancellationToken;

use super::Cluster;

/// Takes the lease when nobody holds it, renews it when this replica does; 1 when held.
const TAKE_OR_RENEW: &str = r"
local v = redis.call('GET', KEYS[1])
if v == ARGV[1] then
  redis.call('PEXPIRE', KEYS[1], ARGV[2])
  return 1
end
if not v then
  redis.call('SET', KEYS[1], ARGV[1], 'PX', ARGV[2])
  return 1
end
return 0
";

/// Lets the lease go when this replica holds it.
const RELEASE: &str = r"
if redis.call('GET', KEYS[1]) == ARGV[1] then
  return redis.call('DEL', KEYS[1])
end
return 0
";

/// Takes and renews the lease every third of its time to live until `stop`, then lets it go
/// so another replica takes over at once.
pub async fn run(c: Arc<Cluster>, stop: CancellationToken) {
    let take = redis::Script::new(TAKE_OR_RENEW);
    let key = c.key("lease");
    let ttl = c.cfg.lease_ttl;
    let every = ttl / 3;
    loop {
        let asked = Instant::now();
        let r: Result<i64, _> = c
            .script(
                "lease",
                &take,
                std::slice::from_ref(&key),
                &[
                    c.lease_value.as_bytes(),
                    ttl.as_millis().to_string().as_bytes(),
                ],
            )
            .await;
        match r {
            Ok(1) => {
                if !c.is_leader() {
                    c.metrics.leader_changes.inc();
                    tracing::info!(replica = %c.replica, "took the lease: following the changelog");
                }
                // Counted from when it was asked: the renewal may have taken a while.
                c.set_leader(true, Some(asked + ttl));
            }
            Ok(_) => {
                if c.is_leader() {
                    c.metrics.leader_changes.inc();
                    tracing::warn!(replica = %c.replica, "another replica holds the lease: no longer following the changelog");
                }
                c.set_leader(false, None);
            }
            // Redis away: a leader stays one (its confirmation runs out), a follower stays one.
            Err(_) => {}
        }
        if !super::pause(every, &stop).await {
            break;
        }
    }
    if c.is_leader() {
        let release = redis::Script::new(RELEASE);
        let _: Result<i64, _> = c
            .script("lease", &release, &[key], &[c.lease_value.as_bytes()])
            .await;
        c.set_leader(false, None);
    }
}
