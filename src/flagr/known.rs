//! What flaghook knows of each live flag that evaluations need: its key, Flagr's recording
//! switch (`dataRecordsEnabled`) and its `entityType` override.
//!
//! In: flag listings and the newest state of each walked flag, from the changelog follower
//! (off the request path). Out: lookups by id or key for the impression workers.
//! Never: calls Flagr; blocks a reader for longer than one map shard's lock.

use dashmap::DashMap;

use super::{Flag, ListedFlag};

/// One flag as impressions see it.
#[derive(Clone, Debug, Default, PartialEq, Eq)]
pub struct Known {
    pub key: String,
    pub data_records_enabled: bool,
    pub entity_type: String,
}

impl From<&Flag> for Known {
    fn from(f: &Flag) -> Self {
        Self {
            key: f.key.clone(),
            data_records_enabled: f.data_records_enabled,
            entity_type: f.entity_type.clone(),
        }
    }
}

impl From<&ListedFlag> for Known {
    fn from(f: &ListedFlag) -> Self {
        Self {
            key: f.key.clone(),
            data_records_enabled: f.data_records_enabled,
            entity_type: f.entity_type.clone(),
        }
    }
}

/// Live flags by id, with an index by key (exposures may name a flag by key only).
#[derive(Default)]
pub struct KnownFlags {
    by_id: DashMap<i64, Known>,
    by_key: DashMap<String, i64>,
}

impl KnownFlags {
    pub fn new() -> Self {
        Self::default()
    }

    /// The flag as it is now (created, changed or restored).
    pub fn set(&self, id: i64, known: Known) {
        let key = known.key.clone();
        if let Some(old) = self.by_id.insert(id, known) {
            if old.key != key {
                self.by_key.remove_if(&old.key, |_, v| *v == id);
            }
        }
        self.by_key.insert(key, id);
    }

    /// The flag was deleted.
    pub fn remove(&self, id: i64) {
        if let Some((_, old)) = self.by_id.remove(&id) {
            self.by_key.remove_if(&old.key, |_, v| *v == id);
        }
    }

    /// A full listing of live flags: what it holds is set, what it lacks is forgotten.
    pub fn replace_all<'a>(&self, live: impl IntoIterator<Item = &'a ListedFlag>) {
        let mut ids = std::collections::HashSet::new();
        for f in live {
            ids.insert(f.id);
            self.set(f.id, Known::from(f));
        }
        let gone: Vec<i64> = self
            .by_id
            .iter()
            .map(|e| *e.key())
            .filter(|id| !ids.contains(id))
            .collect();
        for id in gone {
            self.remove(id);
        }
    }

    /// `f` of the flag with this id, else of the flag with this key; `None` when unknown.
    pub fn with<R>(&self, id: i64, key: &str, f: impl FnOnce(&Known) -> R) -> Option<R> {
        if id != 0 {
            if let Some(k) = self.by_id.get(&id) {
                return Some(f(&k));
            }
        }
        if key.is_empty() {
            return None;
        }
        let id = *self.by_key.get(key)?;
        self.by_id.get(&id).map(|k| f(&k))
    }

    pub fn len(&self) -> usize {
        self.by_id.len()
    }

    pub fn is_empty(&self) -> bool {
        self.by_id.is_empty()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn listed(id: i64, key: &str, on: bool) -> ListedFlag {
        ListedFlag {
            id,
            key: key.into(),
            data_records_enabled: on,
            ..Default::default()
        }
    }

    #[test]
    fn lookups_follow_renames_deletes_and_listings() {
        let k = KnownFlags::new();
        k.replace_all(&[listed(1, "a", true), listed(2, "b", false)]);
        assert_eq!(k.with(1, "", |f| f.data_records_enabled), Some(true));
        assert_eq!(k.with(0, "b", |f| f.data_records_enabled), Some(false));
        // A rename: the old key no longer finds it.
        k.set(
            2,
            Known {
                key: "b2".into(),
                data_records_enabled: true,
                entity_type: "user".into(),
            },
        );
        assert_eq!(k.with(0, "b", |f| f.key.clone()), None);
        assert_eq!(
            k.with(0, "b2", |f| f.entity_type.clone()),
            Some("user".into())
        );
        k.remove(1);
        assert_eq!(k.with(1, "a", |_| ()), None);
        // A listing without flag 2 forgets it.
        k.replace_all(&[listed(3, "c", true)]);
        assert_eq!(k.with(2, "b2", |_| ()), None);
        assert_eq!(k.len(), 1);
    }
}
