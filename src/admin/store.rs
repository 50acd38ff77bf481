//! The embedded store for webhooks created at runtime (redb, one file).
//!
//! In: webhook definitions from the admin API. Out: the same definitions after a restart.
//! Never: is read on the proxy or delivery path; the file holds secrets, so it is created 0600.

use std::path::Path;

use redb::{Database, ReadableTable, TableDefinition};

use super::api::WebhookInput;

const WEBHOOKS: TableDefinition<'_, &str, &str> = TableDefinition::new("webhooks");

pub struct Store {
    db: Database,
}

#[derive(Debug, thiserror::Error)]
#[error("webhook store: {0}")]
pub struct StoreError(String);

fn err(e: impl std::fmt::Display) -> StoreError {
    StoreError(e.to_string())
}

impl Store {
    pub fn open(path: &Path) -> Result<Self, StoreError> {
        let db = Database::create(path).map_err(err)?;
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let _ = std::fs::set_permissions(path, std::fs::Permissions::from_mode(0o600));
        }
        let tx = db.begin_write().map_err(err)?;
        tx.open_table(WEBHOOKS).map_err(err)?;
        tx.commit().map_err(err)?;
        Ok(Self { db })
    }

    pub fn all(&self) -> Result<Vec<WebhookInput>, StoreError> {
        let tx = self.db.begin_read().map_err(err)?;
        let t = tx.open_table(WEBHOOKS).map_err(err)?;
        let mut out = Vec::new();
        for row in t.iter().map_err(err)? {
            let (_, v) = row.map_err(err)?;
            out.push(serde_json::from_str(v.value()).map_err(err)?);
        }
        Ok(out)
    }

    pub fn put(&self, w: &WebhookInput) -> Result<(), StoreError> {
        let json = serde_json::to_string(w).map_err(err)?;
        let tx = self.db.begin_write().map_err(err)?;
        {
            let mut t = tx.open_table(WEBHOOKS).map_err(err)?;
            t.insert(w.id.as_str(), json.as_str()).map_err(err)?;
        }
        tx.commit().map_err(err)
    }

    pub fn delete(&self, id: &str) -> Result<(), StoreError> {
        let tx = self.db.begin_write().map_err(err)?;
        {
            let mut t = tx.open_table(WEBHOOKS).map_err(err)?;
            t.remove(id).map_err(err)?;
        }
        tx.commit().map_err(err)
    }
}
