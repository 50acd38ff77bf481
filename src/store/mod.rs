//! The embedded store (redb, one file): runtime webhooks, the changelog follower's cursors, and
//! the delivery outbox (every queued request and each endpoint's pause state).
//!
//! In: webhook definitions from the admin API; cursor advances from the follower; queued,
//! retried and finished requests from delivery. Out: the same after a restart or a crash. With no path, an in-memory database with the same interface
//! (nothing survives a restart; start-up says so).
//! Never: is read on the proxy path; the file holds secrets, so it is created 0600.

use std::path::Path;

use redb::{Database, ReadableTable, TableDefinition};
use serde::de::DeserializeOwned;
use serde::{Deserialize, Serialize};

const WEBHOOKS: TableDefinition<'_, &str, &str> = TableDefinition::new("webhooks");
/// Flag id → its [`Cursor`] as JSON.
const CURSORS: TableDefinition<'_, i64, &str> = TableDefinition::new("changelog_cursors");
/// Follower-wide values (`baseline`, `seen_max`).
const META: TableDefinition<'_, &str, i64> = TableDefinition::new("changelog_meta");
/// (endpoint id, sequence) → one queued request (delivery's own encoding).
const OUTBOX: TableDefinition<'_, (&str, u64), &[u8]> = TableDefinition::new("outbox");
/// Endpoint id → its pause state (delivery's own encoding).
const ENDPOINTS: TableDefinition<'_, &str, &str> = TableDefinition::new("endpoint_state");

pub struct Store {
    db: Database,
    durable: bool,
    /// The next outbox sequence number: above every stored one, so order survives restarts.
    next_seq: std::sync::atomic::AtomicU64,
    last_error: std::sync::Mutex<Option<String>>,
}

/// Why the store could not read or write, with the underlying error as its source.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    // Boxed: redb's errors are large, and a Result carries its error by value.
    #[error("store: {0}")]
    Db(#[source] Box<redb::Error>),
    #[error("store: a row is not valid JSON: {0}")]
    Json(#[from] serde_json::Error),
    #[error("cannot {what} {path}: {source}")]
    File {
        what: &'static str,
        path: String,
        #[source]
        source: std::io::Error,
    },
    #[error("{path} is not a readable store: {source}")]
    Unreadable {
        path: String,
        #[source]
        source: Box<redb::DatabaseError>,
    },
}

fn err<E: Into<StoreError>>(e: E) -> StoreError {
    e.into()
}

impl From<redb::Error> for StoreError {
    fn from(e: redb::Error) -> Self {
        StoreError::Db(Box::new(e))
    }
}

impl From<redb::DatabaseError> for StoreError {
    fn from(e: redb::DatabaseError) -> Self {
        StoreError::Db(Box::new(e.into()))
    }
}

impl From<redb::TransactionError> for StoreError {
    fn from(e: redb::TransactionError) -> Self {
        StoreError::Db(Box::new(e.into()))
    }
}

impl From<redb::TableError> for StoreError {
    fn from(e: redb::TableError) -> Self {
        StoreError::Db(Box::new(e.into()))
    }
}

impl From<redb::StorageError> for StoreError {
    fn from(e: redb::StorageError) -> Self {
        StoreError::Db(Box::new(e.into()))
    }
}

impl From<redb::CommitError> for StoreError {
    fn from(e: redb::CommitError) -> Self {
        StoreError::Db(Box::new(e.into()))
    }
}

/// How far the changelog of one flag has been turned into events.
#[derive(Clone, Debug, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Cursor {
    /// The newest snapshot id already turned into events; 0 = none yet (the follower's baseline
    /// is the floor).
    pub snapshot: i64,
    /// Whether the flag was soft-deleted when last read.
    pub deleted: bool,
    /// The flag's `updatedAt` when last listed: a flag whose value moved has new snapshots.
    pub updated_at: String,
}

/// The follower's whole durable state.
#[derive(Clone, Debug, Default)]
pub struct ChangelogState {
    /// `max_id` at the very first start: older snapshots are history, never sent.
    pub baseline: Option<i64>,
    /// Every snapshot up to this id has been turned into events.
    pub seen_max: i64,
    pub cursors: std::collections::HashMap<i64, Cursor>,
}

impl Store {
    /// Opens (or creates, 0600) the file at `path` with a page cache of at most `cache_bytes`;
    /// an empty path gives an in-memory store.
    pub fn open(path: &str, cache_bytes: usize) -> Result<Self, StoreError> {
        if path.is_empty() {
            let db = Database::builder()
                .set_cache_size(cache_bytes)
                .create_with_backend(redb::backends::InMemoryBackend::new())
                .map_err(err)?;
            return Self::init(db, false);
        }
        let path = Path::new(path);
        if let Some(dir) = path.parent().filter(|d| !d.as_os_str().is_empty()) {
            std::fs::create_dir_all(dir).map_err(|source| StoreError::File {
                what: "create",
                path: dir.display().to_string(),
                source,
            })?;
        }
        let mut opts = std::fs::OpenOptions::new();
        opts.read(true).write(true).create(true).truncate(false);
        #[cfg(unix)]
        {
            use std::os::unix::fs::OpenOptionsExt;
            opts.mode(0o600);
        }
        let file = opts.open(path).map_err(|source| StoreError::File {
            what: "open",
            path: path.display().to_string(),
            source,
        })?;
        let db = Database::builder()
            .set_cache_size(cache_bytes)
            .create_file(file)
            .map_err(|source| StoreError::Unreadable {
                path: path.display().to_string(),
                source: Box::new(source),
            })?;
        Self::init(db, true)
    }

    fn init(db: Database, durable: bool) -> Result<Self, StoreError> {
        let tx = db.begin_write().map_err(err)?;
        tx.open_table(WEBHOOKS).map_err(err)?;
        tx.open_table(CURSORS).map_err(err)?;
        tx.open_table(META).map_err(err)?;
        tx.open_table(ENDPOINTS).map_err(err)?;
        let next = {
            let t = tx.open_table(OUTBOX).map_err(err)?;
            let mut max = 0;
            for row in t.iter().map_err(err)? {
                let (k, _) = row.map_err(err)?;
                max = max.max(k.value().1);
            }
            max + 1
        };
        tx.commit().map_err(err)?;
        Ok(Self {
            db,
            durable,
            next_seq: std::sync::atomic::AtomicU64::new(next),
            last_error: Default::default(),
        })
    }

    /// False for the in-memory store.
    pub fn durable(&self) -> bool {
        self.durable
    }

    /// Every stored webhook definition (the admin API's shape; the store does not look inside).
    pub fn all<T: DeserializeOwned>(&self) -> Result<Vec<T>, StoreError> {
        let tx = self.db.begin_read().map_err(err)?;
        let t = tx.open_table(WEBHOOKS).map_err(err)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(err)? {
            let (_, v) = row.map_err(err)?;
            out.push(serde_json::from_str(v.value()).map_err(err)?);
        }
        Ok(out)
    }

    /// Runs `f` in one write transaction and commits it; `eventual` skips the flush (a crash
    /// may lose it). Every outcome is noted for [`Store::last_error`].
    fn write(
        &self,
        eventual: bool,
        f: impl FnOnce(&redb::WriteTransaction) -> Result<(), StoreError>,
    ) -> Result<(), StoreError> {
        let r = (|| {
            let mut tx = self.db.begin_write().map_err(err)?;
            if eventual {
                tx.set_durability(redb::Durability::Eventual);
            }
            f(&tx)?;
            tx.commit().map_err(err)
        })();
        if let Ok(mut last) = self.last_error.lock() {
            *last = r.as_ref().err().map(|e| e.to_string());
        }
        r
    }

    /// The error of the last write, when it failed (a full or unwritable disk).
    pub fn last_error(&self) -> Option<String> {
        self.last_error.lock().ok().and_then(|e| e.clone())
    }

    pub fn put<T: Serialize>(&self, id: &str, w: &T) -> Result<(), StoreError> {
        let json = serde_json::to_string(w).map_err(err)?;
        self.write(false, |tx| {
            let mut t = tx.open_table(WEBHOOKS).map_err(err)?;
            t.insert(id, json.as_str()).map_err(err)?;
            Ok(())
        })
    }

    pub fn delete(&self, id: &str) -> Result<(), StoreError> {
        self.write(false, |tx| {
            let mut t = tx.open_table(WEBHOOKS).map_err(err)?;
            t.remove(id).map_err(err)?;
            Ok(())
        })
    }

    /// The follower's state as last committed.
    pub fn changelog(&self) -> Result<ChangelogState, StoreError> {
        let tx = self.db.begin_read().map_err(err)?;
        let meta = tx.open_table(META).map_err(err)?;
        let get = |k: &str| -> Result<Option<i64>, StoreError> {
            Ok(meta.get(k).map_err(err)?.map(|v| v.value()))
        };
        let mut state = ChangelogState {
            baseline: get("baseline")?,
            seen_max: get("seen_max")?.unwrap_or(0),
            cursors: Default::default(),
        };
        let t = tx.open_table(CURSORS).map_err(err)?;
        for row in t.iter().map_err(err)? {
            let (k, v) = row.map_err(err)?;
            state
                .cursors
                .insert(k.value(), serde_json::from_str(v.value()).map_err(err)?);
        }
        Ok(state)
    }

    /// Commits cursor advances and follower-wide values in one transaction.
    pub fn save_changelog(
        &self,
        cursors: &[(i64, &Cursor)],
        baseline: Option<i64>,
        seen_max: Option<i64>,
    ) -> Result<(), StoreError> {
        self.write(false, |tx| {
            let mut t = tx.open_table(CURSORS).map_err(err)?;
            for (flag, c) in cursors {
                let json = serde_json::to_string(c).map_err(err)?;
                t.insert(*flag, json.as_str()).map_err(err)?;
            }
            let mut m = tx.open_table(META).map_err(err)?;
            if let Some(b) = baseline {
                m.insert("baseline", b).map_err(err)?;
            }
            if let Some(s) = seen_max {
                m.insert("seen_max", s).map_err(err)?;
            }
            Ok(())
        })
    }

    /// A fresh outbox sequence number.
    pub fn next_seq(&self) -> u64 {
        self.next_seq
            .fetch_add(1, std::sync::atomic::Ordering::Relaxed)
    }

    /// Adds queued requests and, in the same transaction, the cursor that says their change was
    /// derived: on disk before this returns (both survive a crash, or neither does).
    pub fn outbox_insert(
        &self,
        rows: &[(&str, u64, &[u8])],
        cursor: Option<(i64, &Cursor)>,
    ) -> Result<(), StoreError> {
        if rows.is_empty() && cursor.is_none() {
            return Ok(());
        }
        let cursor_json = match cursor {
            Some((flag, c)) => Some((flag, serde_json::to_string(c).map_err(err)?)),
            None => None,
        };
        self.write(false, |tx| {
            let mut t = tx.open_table(OUTBOX).map_err(err)?;
            for (endpoint, seq, row) in rows {
                t.insert((*endpoint, *seq), *row).map_err(err)?;
            }
            if let Some((flag, json)) = &cursor_json {
                let mut c = tx.open_table(CURSORS).map_err(err)?;
                c.insert(*flag, json.as_str()).map_err(err)?;
            }
            Ok(())
        })
    }

    /// Replaces a queued request's header line, keeping its body. Not flushed at once: after a
    /// crash the older header is read back, which only repeats an attempt.
    pub fn outbox_update_header(
        &self,
        endpoint: &str,
        seq: u64,
        head: &[u8],
    ) -> Result<(), StoreError> {
        self.write(true, |tx| {
            let mut t = tx.open_table(OUTBOX).map_err(err)?;
            let row = match t.get((endpoint, seq)).map_err(err)? {
                Some(old) => {
                    let old = old.value();
                    let body = old
                        .iter()
                        .position(|b| *b == b'\n')
                        .map_or(&[][..], |nl| &old[nl + 1..]);
                    let mut row = Vec::with_capacity(head.len() + 1 + body.len());
                    row.extend_from_slice(head);
                    row.push(b'\n');
                    row.extend_from_slice(body);
                    row
                }
                // Finished meanwhile: nothing to rewrite.
                None => return Ok(()),
            };
            t.insert((endpoint, seq), row.as_slice()).map_err(err)?;
            Ok(())
        })
    }

    /// One queued request's row.
    pub fn outbox_get(&self, endpoint: &str, seq: u64) -> Result<Option<Vec<u8>>, StoreError> {
        let tx = self.db.begin_read().map_err(err)?;
        let t = tx.open_table(OUTBOX).map_err(err)?;
        Ok(t.get((endpoint, seq))
            .map_err(err)?
            .map(|v| v.value().to_vec()))
    }

    /// Removes finished requests. Not flushed at once: after a crash a delivered request may
    /// be sent again, under its same `webhook-id`.
    pub fn outbox_remove(&self, endpoint: &str, seqs: &[u64]) -> Result<(), StoreError> {
        self.write(true, |tx| {
            let mut t = tx.open_table(OUTBOX).map_err(err)?;
            for seq in seqs {
                t.remove((endpoint, *seq)).map_err(err)?;
            }
            Ok(())
        })
    }

    /// Every queued request of an endpoint, oldest first, handed to `each` as (sequence,
    /// header line, body length): bodies stay on disk until an attempt reads them, and nothing
    /// is collected here, so reading a long backlog back costs no more memory than the queue.
    pub fn outbox_scan(
        &self,
        endpoint: &str,
        mut each: impl FnMut(u64, &[u8], usize),
    ) -> Result<(), StoreError> {
        let tx = self.db.begin_read().map_err(err)?;
        let t = tx.open_table(OUTBOX).map_err(err)?;
        for row in t
            .range((endpoint, 0u64)..=(endpoint, u64::MAX))
            .map_err(err)?
        {
            let (k, v) = row.map_err(err)?;
            let v = v.value();
            let nl = v.iter().position(|b| *b == b'\n').unwrap_or(v.len());
            each(k.value().1, &v[..nl], v.len().saturating_sub(nl + 1));
        }
        Ok(())
    }

    /// The sequence numbers of an endpoint's queued requests.
    fn outbox_seqs(&self, endpoint: &str) -> Result<Vec<u64>, StoreError> {
        let mut seqs = Vec::new();
        self.outbox_scan(endpoint, |seq, _, _| seqs.push(seq))?;
        Ok(seqs)
    }

    /// Forgets an endpoint's queue and state (the webhook was deleted).
    pub fn outbox_clear(&self, endpoint: &str) -> Result<(), StoreError> {
        let seqs = self.outbox_seqs(endpoint)?;
        self.outbox_remove(endpoint, &seqs)?;
        self.write(false, |tx| {
            let mut t = tx.open_table(ENDPOINTS).map_err(err)?;
            t.remove(endpoint).map_err(err)?;
            Ok(())
        })
    }

    pub fn endpoint_state(&self, endpoint: &str) -> Result<Option<String>, StoreError> {
        let tx = self.db.begin_read().map_err(err)?;
        let t = tx.open_table(ENDPOINTS).map_err(err)?;
        Ok(t.get(endpoint).map_err(err)?.map(|v| v.value().to_string()))
    }

    pub fn put_endpoint_state(&self, endpoint: &str, state: &str) -> Result<(), StoreError> {
        self.write(false, |tx| {
            let mut t = tx.open_table(ENDPOINTS).map_err(err)?;
            t.insert(endpoint, state).map_err(err)?;
            Ok(())
        })
    }

    /// Forgets every cursor and the baseline (Flagr's changelog went backwards: a new database).
    pub fn reset_changelog(&self) -> Result<(), StoreError> {
        self.write(false, |tx| {
            tx.delete_table(CURSORS).map_err(err)?;
            tx.delete_table(META).map_err(err)?;
            tx.open_table(CURSORS).map_err(err)?;
            tx.open_table(META).map_err(err)?;
            Ok(())
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn changelog_state_survives_reopening() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("sub/flaghook.redb");
        let path = path.to_str().unwrap();
        {
            let s = Store::open(path, 1 << 20).unwrap();
            assert!(s.durable());
            assert!(s.changelog().unwrap().baseline.is_none());
            let c = Cursor {
                snapshot: 7,
                deleted: true,
                updated_at: "t".into(),
            };
            s.save_changelog(&[(3, &c)], Some(5), Some(9)).unwrap();
        }
        let s = Store::open(path, 1 << 20).unwrap();
        let st = s.changelog().unwrap();
        assert_eq!((st.baseline, st.seen_max), (Some(5), 9));
        assert_eq!(st.cursors[&3].snapshot, 7);
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(path).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
        s.reset_changelog().unwrap();
        assert!(s.changelog().unwrap().cursors.is_empty());
    }

    #[test]
    fn outbox_rows_survive_reopening_in_order_per_endpoint() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("o.redb");
        let path = path.to_str().unwrap();
        {
            let s = Store::open(path, 1 << 20).unwrap();
            let (a, b, c) = (s.next_seq(), s.next_seq(), s.next_seq());
            let cur = Cursor {
                snapshot: 42,
                ..Default::default()
            };
            s.outbox_insert(
                &[("x", a, b"h1\n1"), ("y", b, b"h2\n2"), ("x", c, b"h3\n3")],
                Some((7, &cur)),
            )
            .unwrap();
            s.outbox_update_header("x", c, b"h3'").unwrap();
            s.outbox_remove("y", &[b]).unwrap();
            s.put_endpoint_state("x", "paused").unwrap();
        }
        let s = Store::open(path, 1 << 20).unwrap();
        let load = |ep: &str| {
            let mut rows = Vec::new();
            s.outbox_scan(ep, |seq, head, size| rows.push((seq, head.to_vec(), size)))
                .unwrap();
            rows
        };
        let rows = load("x");
        assert_eq!(rows.len(), 2);
        assert_eq!((rows[0].1.as_slice(), rows[0].2), (&b"h1"[..], 1));
        assert_eq!(rows[1].1, b"h3'");
        assert_eq!(s.outbox_get("x", rows[1].0).unwrap().unwrap(), b"h3'\n3");
        assert!(load("y").is_empty());
        // New rows sort after the old ones.
        assert!(s.next_seq() > rows[1].0);
        assert_eq!(s.endpoint_state("x").unwrap().as_deref(), Some("paused"));
        assert_eq!(
            s.changelog().unwrap().cursors[&7].snapshot,
            42,
            "one transaction"
        );
        s.outbox_clear("x").unwrap();
        assert!(load("x").is_empty());
        assert!(s.endpoint_state("x").unwrap().is_none());
    }

    #[test]
    fn a_file_that_is_not_a_store_is_refused() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("junk.redb");
        std::fs::write(&path, vec![7u8; 8192]).unwrap();
        let e = Store::open(path.to_str().unwrap(), 1 << 20).err().unwrap();
        assert!(e.to_string().contains("not a readable store"), "{e}");
        assert!(!Store::open("", 1 << 20).unwrap().durable());
    }
}
