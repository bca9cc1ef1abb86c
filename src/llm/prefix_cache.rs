//! Prompt-prefix KV cache: every request of a labeling task starts with the same system prompt
//! and few-shot examples. Their keys and values are computed once, kept here keyed by their
//! token ids, and a later request whose prompt starts with those ids begins decoding from a
//! clone of them, so its prefill costs only its own new tokens.
//!
//! Entries are evicted least recently used first once their total size passes a byte budget
//! or their number passes a count (each holds one of the context's sequence ids).
//!
//! The shared prefix ends where the last message begins, but that message starts alike in
//! every request of a task too (`<|im_start|>user\nSentence:`, five tokens of a ~40-token
//! turn). [`PrefixCache::common_tail`] learns that common start from the requests seen, so
//! it is cached as well.

use super::llama_cpp::KvCache;

/// Shared prefixes whose common tail is tracked.
const MAX_TAILS: usize = 32;

struct Entry {
    ids: Vec<u32>,
    cache: KvCache,
    last_used: u64,
}

/// The tokens every request after `base` has started with so far.
struct Tail {
    base: Vec<u32>,
    common: Vec<u32>,
}

/// Least-recently-used store of KV snapshots keyed by token ids.
pub struct PrefixCache {
    entries: Vec<Entry>,
    tails: Vec<Tail>,
    max_bytes: usize,
    max_entries: usize,
    clock: u64,
}

impl PrefixCache {
    /// A cache holding at most `max_bytes` of keys and values in at most `max_entries`
    /// snapshots (either 0 disables it).
    pub fn new(max_bytes: usize, max_entries: usize) -> Self {
        Self { entries: Vec::new(), tails: Vec::new(), max_bytes, max_entries, clock: 0 }
    }

    /// Record a prompt as its shared prefix `base` and the rest, `tail`, and return how many
    /// first tokens of `tail` every prompt after `base` has begun with: 0 until a second one
    /// arrives, then the common start of all of them (it can only shrink). Token ids, so a
    /// snapshot of that many more tokens serves every such prompt exactly.
    pub fn common_tail(&mut self, base: &[u32], tail: &[u32]) -> usize {
        let Some(i) = self.tails.iter().position(|t| t.base == base) else {
            if self.tails.len() == MAX_TAILS {
                self.tails.remove(0);
            }
            self.tails.push(Tail { base: base.to_vec(), common: tail.to_vec() });
            return 0;
        };
        let known = &mut self.tails[i];
        let same = known.common.iter().zip(tail).take_while(|(a, b)| a == b).count();
        known.common.truncate(same);
        same
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
    fn the_common_tail_is_what_every_prompt_after_a_base_began_with() {
        let mut cache = PrefixCache::new(1 << 20, 4);
        let (base, other) = ([1, 2, 3], [7, 8]);
        assert_eq!(cache.common_tail(&base, &[10, 11, 12, 40]), 0, "one prompt shows nothing common yet");
        assert_eq!(cache.common_tail(&other, &[10, 11]), 0, "each base has its own");
        assert_eq!(cache.common_tail(&base, &[10, 11, 12, 50, 51]), 3);
        assert_eq!(cache.common_tail(&base, &[10, 11, 60]), 2, "shrinks to what all share");
        assert_eq!(cache.common_tail(&base, &[10, 11, 12, 40]), 2, "never grows back");
        assert_eq!(cache.common_tail(&base, &[99]), 0);
        assert_eq!(cache.common_tail(&other, &[10, 12]), 1);
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
