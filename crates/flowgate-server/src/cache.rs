//! A small map whose entries expire, for hot lookups (key → app, app rows, end users) that
//! would otherwise cost a database round trip per request.
//!
//! An entry is fresh for its TTL, then stale for one more TTL: the first request to find it
//! stale refreshes it from the database while every other request keeps using the stale value.
//! Without that, all the requests in flight when a hot entry expired (64 at a time under load)
//! went to the database together, once a second, and made the slowest 1% of requests.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct TtlCache<K, V> {
    entries: Mutex<HashMap<K, Entry<V>>>,
    ttl: Duration,
    capacity: usize,
}

struct Entry<V> {
    value: V,
    at: Instant,
    /// A request is refreshing this stale entry.
    refreshing: bool,
}

/// What a lookup found.
#[derive(Debug, PartialEq)]
pub enum Lookup<V> {
    /// Fresh, or stale while another request refreshes it.
    Hit(V),
    /// Absent, too old, or stale and this caller is to refresh it: read the source and
    /// [`TtlCache::insert`] (or [`TtlCache::remove`]) the result.
    Miss,
}

impl<K: Eq + Hash, V: Clone> TtlCache<K, V> {
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Self { entries: Mutex::new(HashMap::new()), ttl, capacity }
    }

    pub fn lookup<Q>(&self, key: &Q) -> Lookup<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        let Ok(mut entries) = self.entries.lock() else { return Lookup::Miss };
        let Some(entry) = entries.get_mut(key) else { return Lookup::Miss };
        let age = entry.at.elapsed();
        if age < self.ttl || (age < self.ttl * 2 && entry.refreshing) {
            return Lookup::Hit(entry.value.clone());
        }
        if age < self.ttl * 2 {
            entry.refreshing = true;
        }
        Lookup::Miss
    }

    pub fn insert(&self, key: K, value: V) {
        if let Ok(mut entries) = self.entries.lock() {
            if entries.len() >= self.capacity {
                // Dropping everything is crude but bounded; a full cache refills in one TTL.
                entries.clear();
            }
            entries.insert(key, Entry { value, at: Instant::now(), refreshing: false });
        }
    }

    /// Forgets an entry (this process changed it, or its source no longer has it), so the
    /// change is seen at once.
    pub fn remove<Q>(&self, key: &Q)
    where
        K: std::borrow::Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        if let Ok(mut entries) = self.entries.lock() {
            entries.remove(key);
        }
    }

    pub fn clear(&self) {
        if let Ok(mut entries) = self.entries.lock() {
            entries.clear();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_and_capacity_is_bounded() {
        let cache = TtlCache::new(Duration::from_millis(30), 2);
        cache.insert("a".to_owned(), 1);
        assert_eq!(cache.lookup("a"), Lookup::Hit(1));
        std::thread::sleep(Duration::from_millis(70));
        assert_eq!(cache.lookup("a"), Lookup::Miss, "past twice its TTL an entry is gone");
        cache.insert("b".to_owned(), 2);
        cache.insert("c".to_owned(), 3);
        cache.insert("d".to_owned(), 4);
        assert_eq!(cache.lookup("d"), Lookup::Hit(4));
        assert!(cache.entries.lock().unwrap().len() <= 2);
    }

    #[test]
    fn one_caller_refreshes_a_stale_entry_while_the_others_use_it() {
        let cache = TtlCache::new(Duration::from_millis(40), 10);
        cache.insert("key".to_owned(), "old");
        std::thread::sleep(Duration::from_millis(50));
        assert_eq!(cache.lookup("key"), Lookup::Miss, "the first caller after the TTL refreshes");
        assert_eq!(cache.lookup("key"), Lookup::Hit("old"), "the others keep the stale value meanwhile");
        assert_eq!(cache.lookup("key"), Lookup::Hit("old"));
        cache.insert("key".to_owned(), "new");
        assert_eq!(cache.lookup("key"), Lookup::Hit("new"));
    }
}
