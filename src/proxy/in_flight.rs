//! Mutations of each flag between "sent to Flagr" and "handed to its derivation lane".
//!
//! In: the proxy entering a mutation, the guard's drop. Out: a count per flag, which lets
//! derivation tell its own snapshot from one written around the proxy.
//! Never: blocks; an entry lives only while its count is above zero.

use std::sync::Arc;

use dashmap::DashMap;

/// Shared between the proxy (which enters) and derivation (which reads).
#[derive(Clone, Debug, Default)]
pub struct InFlight(Arc<DashMap<i64, usize>>);

/// Counts one mutation of a flag until dropped.
#[derive(Debug)]
pub struct InFlightGuard {
    map: InFlight,
    flag: i64,
}

impl InFlight {
    pub fn enter(&self, flag: i64) -> InFlightGuard {
        *self.0.entry(flag).or_insert(0) += 1;
        InFlightGuard {
            map: self.clone(),
            flag,
        }
    }

    /// Mutations of `flag` sent to Flagr whose exchange has not reached its lane yet.
    pub fn count(&self, flag: i64) -> usize {
        self.0.get(&flag).map(|c| *c).unwrap_or(0)
    }
}

impl Drop for InFlightGuard {
    fn drop(&mut self) {
        self.map.0.remove_if_mut(&self.flag, |_, c| {
            *c = c.saturating_sub(1);
            *c == 0
        });
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn counts_until_dropped() {
        let m = InFlight::default();
        let a = m.enter(7);
        let b = m.enter(7);
        assert_eq!(m.count(7), 2);
        drop(a);
        assert_eq!(m.count(7), 1);
        drop(b);
        assert_eq!(m.count(7), 0);
        assert!(m.0.is_empty());
    }
}
