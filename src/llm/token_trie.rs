//! Every token a byte automaton admits, found without trying the whole vocabulary.
//!
//! The token ids sorted by their bytes form an implicit trie: the tokens sharing a prefix are
//! one contiguous range. A depth-first walk feeds each distinct next byte to a copy of the
//! automaton once and only descends where it accepts, so the work is the number of admitted
//! prefixes (a few thousand where a span of the sentence may start, a handful elsewhere)
//! rather than 150k tokens.

/// An automaton fed one byte at a time; `false` rejects (the state is then discarded).
pub trait ByteAutomaton: Clone {
    fn accept(&mut self, byte: u8) -> bool;
}

/// Token ids ordered by their bytes (special tokens, which have none, left out).
#[derive(Debug, Clone, Default)]
pub struct TokenTrie {
    order: Vec<u32>,
}

impl TokenTrie {
    pub fn new(bytes: &[Option<Vec<u8>>]) -> Self {
        let mut order: Vec<u32> = (0..bytes.len() as u32).filter(|&id| bytes[id as usize].is_some()).collect();
        order.sort_by(|&a, &b| bytes[a as usize].cmp(&bytes[b as usize]).then(a.cmp(&b)));
        Self { order }
    }

    /// The ids whose every byte `state` accepts, ascending.
    pub fn admitted<A: ByteAutomaton>(&self, bytes: &[Option<Vec<u8>>], state: &A) -> Vec<u32> {
        let mut out = Vec::new();
        self.walk(bytes, 0, self.order.len(), 0, state, &mut out);
        out.sort_unstable();
        out
    }

    /// Tokens `order[lo..hi]` share their first `depth` bytes, which `state` has accepted.
    fn walk<A: ByteAutomaton>(
        &self,
        bytes: &[Option<Vec<u8>>],
        lo: usize,
        hi: usize,
        depth: usize,
        state: &A,
        out: &mut Vec<u32>,
    ) {
        let byte_at = |i: usize| bytes[self.order[i] as usize].as_deref().and_then(|b| b.get(depth).copied());
        let mut i = lo;
        // The prefix itself is a token (sorted first: shorter before longer).
        while i < hi && byte_at(i).is_none() {
            out.push(self.order[i]);
            i += 1;
        }
        while i < hi {
            let b = byte_at(i).expect("longer tokens follow");
            let end =
                i + self.order[i..hi].partition_point(|&id| bytes[id as usize].as_deref().map(|t| t[depth]) == Some(b));
            let mut next = state.clone();
            if next.accept(b) {
                self.walk(bytes, i, end, depth + 1, &next, out);
            }
            i = end;
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Accepts bytes that spell a substring of its text (the shape of a grounded span).
    #[derive(Clone)]
    struct Substring {
        text: &'static [u8],
        starts: Vec<usize>,
    }

    impl ByteAutomaton for Substring {
        fn accept(&mut self, byte: u8) -> bool {
            let text = self.text;
            self.starts.retain_mut(|s| {
                let ok = text.get(*s) == Some(&byte);
                *s += 1;
                ok
            });
            !self.starts.is_empty()
        }
    }

    #[test]
    fn admits_exactly_what_trying_every_token_admits() {
        let vocab: Vec<Option<Vec<u8>>> = ["a", "ab", "abc", "b", "ba", "bc", "c", "ca", "", "x", "abx", "bca"]
            .iter()
            .map(|t| Some(t.as_bytes().to_vec()))
            .chain([None])
            .collect();
        let trie = TokenTrie::new(&vocab);
        let state = Substring { text: b"abca", starts: (0..=4).collect() };
        let brute: Vec<u32> = (0..vocab.len() as u32)
            .filter(|&id| {
                let Some(bytes) = &vocab[id as usize] else { return false };
                let mut s = state.clone();
                bytes.iter().all(|&b| s.accept(b))
            })
            .collect();
        assert_eq!(trie.admitted(&vocab, &state), brute);
        assert_eq!(brute.len(), 9, "all but ba, x and abx");
    }
}
