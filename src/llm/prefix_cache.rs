//! Prompt-prefix KV cache: every request of a labeling task starts with the same system prompt
//! and few-shot examples. Their keys and values are computed once, kept here keyed by their
//! token ids, and a later request whose prompt starts with those ids begins decoding from a
//! clone of them, so its prefill costs only its own new tokens.
//!
//! Entries are evicted least recently used first once their total size passes a byte budget
//! or their number passes a count (each holds one of the context's sequence ids).

use super::llama_cpp::KvCache;

struct Entry {
    ids: Vec<u32>,
    cache: KvCache,
    last_used: u64,
}

/// Least-recently-used store of KV snapshots keyed by token ids.
pub struct PrefixCache {
    entries: Vec<Entry>,
    max_bytes: usize,
    max_entries: usize,
    clock: u64,
}

impl PrefixCache {
    /// A cache holding at most `max_bytes` of keys and values in at most `max_entries`
    /// snapshots (either 0 disables it).
    pub fn new(max_bytes: usize, max_entries: usize) -> Self {
        Self { entries: Vec::new(), max_bytes, max_entries, clock: 0 }
    }

    /// The longest cached prefix of `ids` that leaves at least one token to compute (the
    /// model needs one new token to produce logits).
    pub fn lookup(&mut self, ids: &[u32]) -> Option<KvCache> {
        self.clock += 1;
        let best = self
            .entries
            .iter_mut()
            .filter(|e| e.ids.len() < ids.len() && ids.starts_with(&e.ids))
            .max_by_key(|e| e.ids.len())?;
        best.last_used = self.clock;
        Some(best.cache.clone())
    }

    /// Whether the cache may hold anything (a budget of 0 disables it).
    pub fn enabled(&self) -> bool {
        self.max_bytes > 0 && self.max_entries > 0
    }

    /// Whether `ids` exactly is cached.
    pub fn contains(&self, ids: &[u32]) -> bool {
        self.entries.iter().any(|e| e.ids == ids)
    }

    /// Keep `cache` (which must hold exactly `ids`) and evict old entries over the budget.
    pub fn insert(&mut self, ids: Vec<u32>, cache: KvCache) {
        debug_assert_eq!(ids.len(), cache.len());
        if self.contains(&ids) || cache.bytes() > self.max_bytes || !self.enabled() {
            return;
        }
        self.clock += 1;
        self.entries.push(Entry { ids, cache, last_used: self.clock });
        while self.bytes() > self.max_bytes || self.entries.len() > self.max_entries {
            let oldest = (0..self.entries.len()).min_by_key(|&i| self.entries[i].last_used);
            // The loop runs only while the total is positive, so there is an entry.
            self.entries.remove(oldest.expect("non-empty while over budget"));
        }
    }

    /// Number of cached prefixes.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn bytes(&self) -> usize {
        self.entries.iter().map(|e| e.cache.bytes()).sum()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn longest_prefix_is_found_and_one_token_is_left_to_compute() {
        let mut cache = PrefixCache::new(1 << 20, 4);
        cache.insert(vec![1], KvCache::detached(1, 10));
        cache.insert(vec![1, 2], KvCache::detached(2, 10));
        assert_eq!(cache.lookup(&[1, 2, 3]).map(|c| c.len()), Some(2));
        assert_eq!(cache.lookup(&[1, 2]).map(|c| c.len()), Some(1), "must leave one token to compute");
        assert!(cache.lookup(&[2]).is_none());
    }

    #[test]
    fn least_recently_used_entries_go_over_either_budget() {
        let mut cache = PrefixCache::new(100, 2);
        cache.insert(vec![1], KvCache::detached(1, 10));
        cache.insert(vec![2], KvCache::detached(1, 10));
        cache.lookup(&[1, 9]);
        cache.insert(vec![3], KvCache::detached(1, 10));
        assert!(cache.contains(&[1]) && cache.contains(&[3]) && !cache.contains(&[2]), "count budget");
        cache.insert(vec![4; 10], KvCache::detached(10, 10));
        assert_eq!(cache.len(), 1, "byte budget keeps only the newest");
        assert!(!PrefixCache::new(0, 4).enabled() && !PrefixCache::new(100, 0).enabled());
    }
}
