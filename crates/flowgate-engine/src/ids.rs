//! Identifiers for node executions: time-ordered UUIDs (version 7), without a system call each.
//!
//! A run makes one per node execution, so drawing each from the OS (a `getrandom` call) cost
//! more than running the node. They only need to be unique, not unguessable: a per-thread
//! SplitMix64 stream seeded once from the OS gives the random part. The leading millisecond
//! timestamp makes ids made close in time sort close together, so the run log appends them to
//! the end of its index instead of touching a random page per row.

use std::cell::Cell;
use std::sync::Arc;

thread_local! {
    static STATE: Cell<u64> = Cell::new(seed());
}

fn seed() -> u64 {
    let random = uuid::Uuid::new_v4().as_u128();
    (random as u64) ^ ((random >> 64) as u64)
}

fn next(state: &Cell<u64>) -> u64 {
    let mut z = state.get().wrapping_add(0x9e37_79b9_7f4a_7c15);
    state.set(z);
    z = (z ^ (z >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    z ^ (z >> 31)
}

/// A fresh UUIDv7 string for a node execution.
pub fn execution_id() -> Arc<str> {
    let millis = std::time::SystemTime::now().duration_since(std::time::UNIX_EPOCH).map_or(0, |elapsed| elapsed.as_millis() as u64);
    let random = STATE.with(|state| {
        let mut bytes = [0u8; 10];
        bytes[..8].copy_from_slice(&next(state).to_le_bytes());
        bytes[8..].copy_from_slice(&next(state).to_le_bytes()[..2]);
        bytes
    });
    let mut text = [0u8; uuid::fmt::Hyphenated::LENGTH];
    Arc::from(&*uuid::Builder::from_unix_timestamp_millis(millis, &random).into_uuid().hyphenated().encode_lower(&mut text))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn execution_ids_are_distinct_version_7_uuids() {
        let ids: std::collections::HashSet<Arc<str>> = (0..10_000).map(|_| execution_id()).collect();
        assert_eq!(ids.len(), 10_000);
        for id in ids.iter().take(100) {
            let parsed = uuid::Uuid::parse_str(id).unwrap();
            assert_eq!(parsed.get_version_num(), 7);
            assert_eq!(id.len(), 36);
        }
    }

    #[test]
    fn execution_ids_made_later_sort_later() {
        let earlier = execution_id();
        std::thread::sleep(std::time::Duration::from_millis(2));
        let later = execution_id();
        assert!(earlier < later, "{earlier} should sort before {later}");
    }
}
