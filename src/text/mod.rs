//! Text units and offsets.
//!
//! **Offsets are counted in Unicode scalar values** (Rust `char`s; Python `str` indices;
//! DuckDB/DataFusion `substr` positions minus one), 0-based and end-exclusive, everywhere in
//! biodistill's tables. Gold sets (BRAT, presidio, GAD) count the same way, and a user slicing
//! `text[start:end]` in Python or `substr(text, start + 1, end - start)` in SQL gets the span.
//! Rust strings are indexed by bytes, so code converts at the edge with [`CharIndex`].

pub mod sentences;

/// Maps between char offsets and byte offsets of one string, in O(1) after an O(n) build.
#[derive(Debug, Clone)]
pub struct CharIndex {
    /// `bytes[i]` = byte offset of char `i`; one extra entry for the end of the string.
    bytes: Vec<usize>,
}

impl CharIndex {
    pub fn new(text: &str) -> Self {
        let mut bytes: Vec<usize> = text.char_indices().map(|(b, _)| b).collect();
        bytes.push(text.len());
        Self { bytes }
    }

    /// Number of chars in the string.
    pub fn len_chars(&self) -> usize {
        self.bytes.len() - 1
    }

    /// Byte offset of char offset `c` (`c <= len_chars`).
    pub fn byte(&self, c: usize) -> usize {
        self.bytes[c]
    }

    /// Char offset of byte offset `b`, which must lie on a char boundary.
    pub fn char(&self, b: usize) -> Option<usize> {
        self.bytes.binary_search(&b).ok()
    }

    /// The substring between char offsets `[start, end)`, if in range.
    pub fn slice<'a>(&self, text: &'a str, start: usize, end: usize) -> Option<&'a str> {
        if start <= end && end <= self.len_chars() { Some(&text[self.bytes[start]..self.bytes[end]]) } else { None }
    }
}

/// Number of chars in `s`.
pub fn char_len(s: &str) -> usize {
    s.chars().count()
}

/// Slice `text` by char offsets `[start, end)`; `None` when out of range.
pub fn char_slice(text: &str, start: usize, end: usize) -> Option<&str> {
    CharIndex::new(text).slice(text, start, end)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn char_and_byte_offsets_agree_on_non_ascii() {
        let text = "β-blocker 5 µg – naïve";
        let idx = CharIndex::new(text);
        assert_eq!(idx.len_chars(), 22);
        assert_eq!(idx.slice(text, 0, 9), Some("β-blocker"));
        assert_eq!(idx.slice(text, 12, 14), Some("µg"));
        assert_eq!(idx.slice(text, 15, 16), Some("–"));
        assert_eq!(char_slice(text, 17, 22), Some("naïve"));
        assert_eq!(idx.char(idx.byte(12)), Some(12));
        assert_eq!(idx.char(1), None, "byte 1 is inside 'β'");
        assert_eq!(idx.slice(text, 20, 30), None);
    }
}
