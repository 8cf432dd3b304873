//! A small map whose entries expire, for hot lookups (key → app, app rows, end users) that
//! would otherwise cost a database round trip per request.
//!
//! An entry is fresh for its TTL, then stale for one more TTL: the first request to find it
//! stale refreshes it from the database while every other request keeps using the stale value.
//! Without that, all the requests in flight when a hot entry expired (64 at a time under load)
//! went to the database together, once a second, and made the slowest 1% of requests.
//!
//! [`TtlCache::clear`] is how a change made elsewhere (the CLI, another replica) is seen at
//! once: a value read from the database before the clear is not cached after it.

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

pub struct TtlCache<K, V> {
    inner: Mutex<Inner<K, V>>,
    ttl: Duration,
    capacity: usize,
}

struct Inner<K, V> {
    entries: HashMap<K, Entry<V>>,
    /// Bumped by every clear; a value read before it is stale.
    generation: u64,
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
    /// [`TtlCache::insert`] (or [`TtlCache::remove`]) the result with this ticket.
    Miss(Ticket),
}

/// When a miss happened: an insert with a ticket from before the last clear is dropped.
#[derive(Debug, PartialEq, Clone, Copy)]
pub struct Ticket(u64);

impl<K: Eq + Hash, V: Clone> TtlCache<K, V> {
    pub fn new(ttl: Duration, capacity: usize) -> Self {
        Self { inner: Mutex::new(Inner { entries: HashMap::new(), generation: 0 }), ttl, capacity }
    }

    pub fn lookup<Q>(&self, key: &Q) -> Lookup<V>
    where
        K: std::borrow::Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        let Ok(mut inner) = self.inner.lock() else { return Lookup::Miss(Ticket(u64::MAX)) };
        let ticket = Ticket(inner.generation);
        let Some(entry) = inner.entries.get_mut(key) else { return Lookup::Miss(ticket) };
        let age = entry.at.elapsed();
        if age < self.ttl || (age < self.ttl * 2 && entry.refreshing) {
            return Lookup::Hit(entry.value.clone());
        }
        if age < self.ttl * 2 {
            entry.refreshing = true;
        }
        Lookup::Miss(ticket)
    }

    pub fn insert(&self, ticket: Ticket, key: K, value: V) {
        if let Ok(mut inner) = self.inner.lock() {
            if ticket.0 != inner.generation {
                return;
            }
            if inner.entries.len() >= self.capacity {
                // Dropping everything is crude but bounded; a full cache refills in one TTL.
                inner.entries.clear();
            }
            inner.entries.insert(key, Entry { value, at: Instant::now(), refreshing: false });
        }
    }

    /// Forgets an entry (this process changed it, or its source no longer has it), so the
    /// change is seen at once.
    pub fn remove<Q>(&self, key: &Q)
    where
        K: std::borrow::Borrow<Q>,
        Q: Eq + Hash + ?Sized,
    {
        if let Ok(mut inner) = self.inner.lock() {
            inner.entries.remove(key);
        }
    }

    /// Forgets everything, including values being read right now.
    pub fn clear(&self) {
        if let Ok(mut inner) = self.inner.lock() {
            inner.entries.clear();
            inner.generation += 1;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn entries_expire_and_capacity_is_bounded() {
        let cache = TtlCache::new(Duration::from_millis(30), 2);
        let ticket = miss(&cache, "a");
        cache.insert(ticket, "a".to_owned(), 1);
        assert_eq!(cache.lookup("a"), Lookup::Hit(1));
        std::thread::sleep(Duration::from_millis(70));
        assert!(matches!(cache.lookup("a"), Lookup::Miss(_)), "past twice its TTL an entry is gone");
        cache.insert(ticket, "b".to_owned(), 2);
        cache.insert(ticket, "c".to_owned(), 3);
        cache.insert(ticket, "d".to_owned(), 4);
        assert_eq!(cache.lookup("d"), Lookup::Hit(4));
        assert!(cache.inner.lock().unwrap().entries.len() <= 2);
    }

    #[test]
    fn one_caller_refreshes_a_stale_entry_while_the_others_use_it() {
        let cache = TtlCache::new(Duration::from_millis(40), 10);
        cache.insert(miss(&cache, "key"), "key".to_owned(), "old");
        std::thread::sleep(Duration::from_millis(50));
        let refresher = miss(&cache, "key");
        assert_eq!(cache.lookup("key"), Lookup::Hit("old"), "the others keep the stale value meanwhile");
        assert_eq!(cache.lookup("key"), Lookup::Hit("old"));
        cache.insert(refresher, "key".to_owned(), "new");
        assert_eq!(cache.lookup("key"), Lookup::Hit("new"));
    }

    #[test]
    fn a_value_read_before_a_clear_is_not_cached_after_it() {
        let cache = TtlCache::new(Duration::from_secs(60), 10);
        cache.insert(miss(&cache, "key"), "key".to_owned(), "old");
        std::thread::sleep(Duration::from_millis(1));
        let before = miss(&cache, "other");
        cache.clear();
        assert!(matches!(cache.lookup("key"), Lookup::Miss(_)), "a clear forgets fresh entries");
        cache.insert(before, "other".to_owned(), "read before the clear");
        assert!(matches!(cache.lookup("other"), Lookup::Miss(_)), "a value read before the clear is dropped");
        cache.insert(miss(&cache, "other"), "other".to_owned(), "read after");
        assert_eq!(cache.lookup("other"), Lookup::Hit("read after"));
    }

    fn miss<V: Clone + std::fmt::Debug>(cache: &TtlCache<String, V>, key: &str) -> Ticket {
        match cache.lookup(key) {
            Lookup::Miss(ticket) => ticket,
            Lookup::Hit(value) => panic!("{key} was cached: {value:?}"),
        }
    }
}
