//! Which searches run: at most so many at once in this api process, and at most so many
//! of one tenant, each on a connection of the searches' own pool. A search over either
//! bound is refused at once (429 `search_busy`, `Retry-After`) rather than queued, so a
//! storm of one tenant's searches neither waits in memory nor takes the connections and
//! the CPU that ingest, the workers and device pages need.

use std::collections::HashMap;
use std::sync::{Arc, Mutex, PoisonError};

use tokio::sync::{OwnedSemaphorePermit, Semaphore};

use crate::error::Error;

/// Admits searches and histograms.
#[derive(Debug, Clone)]
pub struct SearchGate {
    process: Arc<Semaphore>,
    process_limit: usize,
    tenant_limit: usize,
    running: Arc<Mutex<HashMap<String, usize>>>,
}

/// A running search's place: given back when dropped.
#[derive(Debug)]
pub struct SearchPermit {
    _process: OwnedSemaphorePermit,
    tenant: String,
    running: Arc<Mutex<HashMap<String, usize>>>,
}

impl SearchGate {
    /// At most `process_limit` searches at once, `tenant_limit` of one tenant (both at
    /// least 1).
    pub fn new(process_limit: usize, tenant_limit: usize) -> Self {
        let process_limit = process_limit.max(1);
        Self {
            process: Arc::new(Semaphore::new(process_limit)),
            process_limit,
            tenant_limit: tenant_limit.max(1),
            running: Arc::new(Mutex::new(HashMap::new())),
        }
    }

    /// A place for a search of `tenant`, or [`Error::SearchBusy`] naming the bound it
    /// meets.
    pub fn admit(&self, tenant: &str) -> Result<SearchPermit, Error> {
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        let of_tenant = running.get(tenant).copied().unwrap_or(0);
        if of_tenant >= self.tenant_limit {
            return Err(Error::SearchBusy {
                scope: "tenant",
                limit: self.tenant_limit,
            });
        }
        let process = self
            .process
            .clone()
            .try_acquire_owned()
            .map_err(|_| Error::SearchBusy {
                scope: "api process",
                limit: self.process_limit,
            })?;
        running.insert(tenant.to_owned(), of_tenant + 1);
        Ok(SearchPermit {
            _process: process,
            tenant: tenant.to_owned(),
            running: self.running.clone(),
        })
    }
}

impl Drop for SearchPermit {
    fn drop(&mut self) {
        let mut running = self.running.lock().unwrap_or_else(PoisonError::into_inner);
        if let Some(count) = running.get_mut(&self.tenant) {
            *count -= 1;
            if *count == 0 {
                running.remove(&self.tenant);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_tenant_runs_at_most_its_share_and_the_process_at_most_its_limit() {
        let gate = SearchGate::new(3, 2);
        let a1 = gate.admit("a").unwrap();
        let _a2 = gate.admit("a").unwrap();
        assert!(matches!(
            gate.admit("a"),
            Err(Error::SearchBusy {
                scope: "tenant",
                limit: 2
            })
        ));
        let _b1 = gate.admit("b").unwrap();
        assert!(matches!(
            gate.admit("c"),
            Err(Error::SearchBusy {
                scope: "api process",
                limit: 3
            })
        ));
        // A refused search takes nothing: a place given back serves the next.
        drop(a1);
        let _c1 = gate.admit("c").unwrap();
        assert!(gate.admit("a").is_err());
    }

    #[test]
    fn places_given_back_are_forgotten() {
        let gate = SearchGate::new(4, 1);
        for _ in 0..10 {
            drop(gate.admit("a").unwrap());
        }
        assert!(gate.running.lock().unwrap().is_empty());
        let _held = gate.admit("a").unwrap();
        assert!(gate.admit("a").is_err());
    }
}
