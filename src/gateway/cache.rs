//! A small, bounded cache of answers with a time to live (authentication and authorization
//! answers, so a burst of calls asks the apiserver once).

use std::collections::HashMap;
use std::hash::Hash;
use std::sync::Mutex;
use std::time::{Duration, Instant};

use sha2::{Digest, Sha256};

/// Entries expire after their time to live; when full, expired entries go first, then all.
pub struct TtlCache<K, V> {
    entries: Mutex<HashMap<K, (V, Instant)>>,
    capacity: usize,
}

impl<K: Eq + Hash, V: Clone> TtlCache<K, V> {
    /// A cache of at most `capacity` entries.
    pub fn new(capacity: usize) -> Self {
        Self {
            entries: Mutex::new(HashMap::new()),
            capacity,
        }
    }

    /// The live answer for `key`.
    pub fn get(&self, key: &K) -> Option<V> {
        let entries = self.entries.lock().ok()?;
        let (value, until) = entries.get(key)?;
        (Instant::now() < *until).then(|| value.clone())
    }

    /// Remembers `value` for `ttl`.
    pub fn insert(&self, key: K, value: V, ttl: Duration) {
        let Ok(mut entries) = self.entries.lock() else {
            return;
        };
        if entries.len() >= self.capacity {
            let now = Instant::now();
            entries.retain(|_, (_, until)| *until > now);
            if entries.len() >= self.capacity {
                entries.clear();
            }
        }
        entries.insert(key, (value, Instant::now() + ttl));
    }
}

/// SHA-256 of a secret, so the cache never holds the secret itself.
pub fn hash(bytes: &[u8]) -> [u8; 32] {
    Sha256::digest(bytes).into()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn answers_expire_and_a_full_cache_makes_room() {
        let cache = TtlCache::new(2);
        cache.insert(1, "a", Duration::from_secs(60));
        cache.insert(2, "b", Duration::ZERO);
        assert_eq!(cache.get(&1), Some("a"));
        assert_eq!(cache.get(&2), None, "expired");
        cache.insert(3, "c", Duration::from_secs(60));
        assert_eq!(cache.get(&1), Some("a"), "only the expired entry made room");
        assert_eq!(cache.get(&3), Some("c"));
    }
}
