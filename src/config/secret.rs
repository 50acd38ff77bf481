//! A secret value from config: a literal, `env:NAME` or `file:/path` (a mounted Kubernetes Secret).
//!
//! In: the reference as written in config. Out: the resolved bytes, only through [`Secret::expose`].
//! Never: shows the value in `Debug`, `Display` or serialised config.

use serde::{Deserialize, Deserializer, Serialize, Serializer};

use super::ConfigError;

/// A secret from config. `Debug` prints `***`, so logging a config never leaks it.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct Secret {
    reference: String,
    value: Option<String>,
}

impl Secret {
    /// A resolved secret from a literal value (for runtime-built configs and tests).
    pub fn literal(v: impl Into<String>) -> Self {
        let v = v.into();
        Self {
            reference: v.clone(),
            value: Some(v),
        }
    }

    /// True when nothing was configured.
    pub fn is_empty(&self) -> bool {
        self.reference.is_empty()
    }

    /// Reads `env:` and `file:` references. An empty reference stays empty.
    /// `env: None` checks nothing (`check-config --skip-secrets`, where secrets are not mounted).
    pub(crate) fn resolve(
        &mut self,
        key: &str,
        env: Option<&[(String, String)]>,
    ) -> Result<(), ConfigError> {
        let Some(env) = env else { return Ok(()) };
        if self.value.is_some() {
            // A literal made at runtime: never read as an env: or file: reference.
            return Ok(());
        }
        let r = self.reference.trim();
        let value = if r.is_empty() {
            return Ok(());
        } else if let Some(name) = r.strip_prefix("env:") {
            env.iter()
                .find(|(k, _)| k == name)
                .map(|(_, v)| v.clone())
                .ok_or_else(|| {
                    ConfigError::invalid(key, format!("environment variable {name} is not set"))
                })?
        } else if let Some(path) = r.strip_prefix("file:") {
            std::fs::read_to_string(path)
                .map(|s| s.trim_end_matches(['\r', '\n']).to_string())
                .map_err(|e| ConfigError::invalid(key, format!("cannot read {path}: {e}")))?
        } else {
            r.to_string()
        };
        if value.is_empty() {
            return Err(ConfigError::invalid(key, "resolves to an empty secret"));
        }
        self.value = Some(value);
        Ok(())
    }

    /// The secret's bytes; `None` when not configured.
    pub fn expose(&self) -> Option<&str> {
        self.value.as_deref()
    }
}

impl std::fmt::Debug for Secret {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(if self.is_empty() { "\"\"" } else { "\"***\"" })
    }
}

impl Serialize for Secret {
    // Only the reference is ever serialised (and the literal form is masked), never the value.
    fn serialize<S: Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        let r = &self.reference;
        if r.is_empty() || r.starts_with("env:") || r.starts_with("file:") {
            s.serialize_str(r)
        } else {
            s.serialize_str("***")
        }
    }
}

impl<'de> Deserialize<'de> for Secret {
    fn deserialize<D: Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        Ok(Self {
            reference: String::deserialize(d)?,
            value: None,
        })
    }
}
