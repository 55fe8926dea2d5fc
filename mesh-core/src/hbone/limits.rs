//! Per-source limits on what one peer may hold open on an HBONE server, so no single
//! source address can exhaust the server's file descriptors or memory for the others.
//!
//! The source is the TCP peer's address (what the kernel proves), never a header.

use std::collections::HashMap;
use std::net::IpAddr;
use std::sync::{Arc, Mutex};

/// Counts what each source holds; [`SourceLimit::try_acquire`] hands out a slot that
/// frees itself on drop.
#[derive(Debug)]
pub struct SourceLimit {
    max: usize,
    held: Mutex<HashMap<IpAddr, usize>>,
}

impl SourceLimit {
    /// At most `max` at once per source address.
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(SourceLimit {
            max,
            held: Mutex::default(),
        })
    }

    /// A slot for `source`, or `None` when it already holds `max`.
    pub fn try_acquire(self: &Arc<Self>, source: IpAddr) -> Option<SourceSlot> {
        let mut held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        let count = held.entry(source).or_default();
        if *count >= self.max {
            return None;
        }
        *count += 1;
        Some(SourceSlot {
            limit: self.clone(),
            source,
        })
    }

    /// How many slots `source` holds now.
    pub fn held_by(&self, source: IpAddr) -> usize {
        let held = self.held.lock().unwrap_or_else(|p| p.into_inner());
        held.get(&source).copied().unwrap_or(0)
    }
}

/// One connection or tunnel counted against its source; released on drop.
#[derive(Debug)]
pub struct SourceSlot {
    limit: Arc<SourceLimit>,
    source: IpAddr,
}

impl Drop for SourceSlot {
    fn drop(&mut self) {
        let mut held = self.limit.held.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(count) = held.get_mut(&self.source) {
            *count -= 1;
            if *count == 0 {
                // Forget sources that hold nothing, so the map does not grow with every
                // address ever seen.
                held.remove(&self.source);
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_source_gets_at_most_max_and_slots_come_back() {
        let limit = SourceLimit::new(2);
        let a: IpAddr = "10.244.1.3".parse().unwrap();
        let b: IpAddr = "10.244.2.3".parse().unwrap();
        let first = limit.try_acquire(a).unwrap();
        let _second = limit.try_acquire(a).unwrap();
        assert!(
            limit.try_acquire(a).is_none(),
            "a third for the same source"
        );
        assert!(
            limit.try_acquire(b).is_some(),
            "another source is not affected"
        );
        drop(first);
        assert_eq!(limit.held_by(a), 1);
        assert!(limit.try_acquire(a).is_some());
        assert_eq!(limit.held_by(b), 0, "released slots leave no entry");
        assert!(limit.held.lock().unwrap().len() <= 1);
    }
}
