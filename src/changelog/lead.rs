//! Cluster mode: the follower runs on one replica at a time, the lease holder; the others
//! send it their proxied changes' hints through Redis.
//!
//! In: leadership changes; hints from this replica's proxy and from the other replicas. Out:
//! a follower run per term, started from the cursors the last leader saved in Redis; hints
//! published for the leader.
//! Never: runs two followers at once on one replica; starts a term from cursors older than
//! the shared ones (the local store is replaced with them first).

use std::sync::Arc;
use std::time::Duration;

use tokio::sync::mpsc;

use super::{Follower, Hint};
use crate::cluster::Cluster;
use crate::store::Cursor;

/// Follows while leading, until the local hint channel closes (the proxy stopped); then lets
/// the current run walk its last hints and returns.
pub async fn run(
    follower: Arc<Follower>,
    cluster: Arc<Cluster>,
    mut local: mpsc::Receiver<Hint>,
    mut remote: mpsc::Receiver<Hint>,
    capacity: usize,
) {
    let mut leading = cluster.watch_leader();
    let mut listing = tokio::time::interval(follower.cfg.poll_interval);
    listing.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        // A replica that does not lead forwards its local hints to the leader, keeps its
        // impression workers' view of flags current, and waits for the lease.
        while !*leading.borrow_and_update() {
            tokio::select! {
                h = local.recv() => match h {
                    Some(h) => publish(&cluster, &h),
                    None => return,
                },
                Some(_) = remote.recv() => {}
                _ = listing.tick(), if follower.known.is_some() => follower.refresh_known().await,
                r = leading.changed() => if r.is_err() { return },
            }
        }
        let took = tokio::select! {
            t = take_over(&follower, &cluster, &mut leading) => t,
            // Stopping before a term began: nothing to walk.
            None = local.recv() => return,
        };
        if !took {
            continue;
        }
        let (tx, rx) = mpsc::channel(capacity);
        let mut task = tokio::spawn(follower.clone().run(rx, None));
        // Aborted with this task too (a shutdown that runs out of time aborts it).
        let _guard = AbortOnDrop(task.abort_handle());
        loop {
            tokio::select! {
                h = local.recv() => match h {
                    // Waited for, not dropped: a hint lost in a burst costs its change
                    // `hint_wait`; the proxy's side of this channel never waits.
                    Some(h) => { let _ = tx.send(h).await; }
                    None => {
                        drop(tx);
                        let _ = (&mut task).await;
                        return;
                    }
                },
                Some(h) = remote.recv() => {
                    cluster.metrics.hints.with_label_values(&["received"]).inc();
                    let _ = tx.send(h).await;
                }
                r = leading.changed() => {
                    if r.is_err() || !*leading.borrow_and_update() {
                        // The store keeps what the run derived; the next leader's cursors
                        // come from Redis, and claims keep anything derived twice from
                        // being queued twice.
                        task.abort();
                        // Ended before another term can begin on this replica.
                        let _ = (&mut task).await;
                        tracing::info!("lease lost: changelog follower stopped");
                        break;
                    }
                }
            }
        }
    }
}

/// Aborts a task when dropped.
struct AbortOnDrop(tokio::task::AbortHandle);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

fn publish(cluster: &Cluster, h: &Hint) {
    if let Ok(v) = serde_json::to_value(h) {
        cluster.publish_hint(v);
    }
}

/// Replaces the local cursors with the shared ones (when a leader saved any); false when the
/// lease was lost meanwhile.
async fn take_over(
    follower: &Follower,
    cluster: &Cluster,
    leading: &mut tokio::sync::watch::Receiver<bool>,
) -> bool {
    loop {
        match cluster.cursors().await {
            Ok(None) => return true,
            Ok(Some(shared)) => {
                let cursors: Vec<(i64, Cursor)> = shared
                    .cursors
                    .iter()
                    .filter_map(|(f, j)| Some((*f, serde_json::from_str(j).ok()?)))
                    .collect();
                let rows: Vec<(i64, &Cursor)> = cursors.iter().map(|(f, c)| (*f, c)).collect();
                let saved = follower.store.reset_changelog().and_then(|()| {
                    follower.store.save_changelog(
                        &rows,
                        Some(shared.baseline),
                        Some(shared.seen_max),
                    )
                });
                match saved {
                    Ok(()) => {
                        tracing::info!(
                            seen_max = shared.seen_max,
                            flags = rows.len(),
                            "changelog: following from the cursors the last leader saved"
                        );
                        return true;
                    }
                    Err(e) => {
                        follower.failed(super::FailStage::Store, "shared cursors not stored", &e)
                    }
                }
            }
            // Redis away at the moment of taking over: try again (the lease says this replica
            // leads; it must not start from cursors older than the shared ones).
            Err(_) => {}
        }
        tokio::select! {
            () = tokio::time::sleep(Duration::from_secs(1)) => {}
            r = leading.changed() => if r.is_err() || !*leading.borrow_and_update() { return false },
        }
    }
}
