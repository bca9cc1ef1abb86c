//! Word pieces with exact character offsets, and windows over long sentences.
//!
//! The student tags word pieces; tables speak in char offsets (see [`crate::text`]). A
//! [`Pieces`] keeps each piece's char span in the original sentence (the `tokenizers` crate
//! maps offsets back through lowercasing and accent stripping), so a char span maps to the
//! pieces that cover it and back. The round trip is exact whenever the span starts and ends on
//! piece boundaries; a span cutting a piece is widened to whole pieces (callers count that).
//!
//! Sentences longer than the encoder's window are split into overlapping windows, never
//! truncated: each piece is predicted by the window in which it sits furthest from an edge.

use std::ops::Range;
use std::path::Path;

use tokenizers::Tokenizer;

use crate::error::{Error, Result};

/// Ids of the special tokens the student inserts itself.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SpecialIds {
    pub cls: u32,
    pub sep: u32,
    pub pad: u32,
    /// Entity markers for the re-encoding ablation: BERT's unused vocabulary slots
    /// `[unused0]`/`[unused1]`, which fine-tuning can give a meaning without resizing the vocab.
    pub marker_open: u32,
    pub marker_close: u32,
}

/// A BERT WordPiece tokenizer that keeps char offsets.
#[derive(Clone)]
pub struct WordPieces {
    tokenizer: Tokenizer,
    special: SpecialIds,
}

impl WordPieces {
    /// Load `tokenizer.json`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let tokenizer = Tokenizer::from_file(path)
            .map_err(|e| Error::Model(format!("{}: cannot load tokenizer: {e}", path.display())))?;
        Self::new(tokenizer)
    }

    /// Wrap a tokenizer; its own truncation and padding are turned off (we window and pad).
    pub fn new(mut tokenizer: Tokenizer) -> Result<Self> {
        tokenizer.with_truncation(None).map_err(|e| Error::Tokenizer(e.to_string()))?;
        tokenizer.with_padding(None);
        let id = |token: &str| {
            tokenizer.token_to_id(token).ok_or_else(|| Error::Model(format!("tokenizer has no {token} token")))
        };
        let special = SpecialIds {
            cls: id("[CLS]")?,
            sep: id("[SEP]")?,
            pad: id("[PAD]")?,
            marker_open: id("[unused0]")?,
            marker_close: id("[unused1]")?,
        };
        Ok(Self { tokenizer, special })
    }

    pub fn special(&self) -> SpecialIds {
        self.special
    }

    /// Word pieces of `text` without special tokens, with char offsets into `text`.
    pub fn encode(&self, text: &str) -> Result<Pieces> {
        let encoding = self.tokenizer.encode_char_offsets(text, false).map_err(|e| Error::Tokenizer(e.to_string()))?;
        let words = encoding.get_word_ids();
        let word_starts = (0..words.len()).map(|i| i == 0 || words[i].is_none() || words[i] != words[i - 1]).collect();
        Ok(Pieces { ids: encoding.get_ids().to_vec(), offsets: encoding.get_offsets().to_vec(), word_starts })
    }
}

/// The word pieces of one sentence.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pieces {
    pub ids: Vec<u32>,
    /// `[start, end)` char offsets of each piece in the sentence.
    pub offsets: Vec<(usize, usize)>,
    /// Whether each piece begins a word of the pre-tokenizer (not a `##` continuation):
    /// predicted spans are snapped to whole words (see [`crate::model::tags::snap_to_words`]).
    pub word_starts: Vec<bool>,
}

impl Pieces {
    pub fn len(&self) -> usize {
        self.ids.len()
    }

    pub fn is_empty(&self) -> bool {
        self.ids.is_empty()
    }

    /// The pieces overlapping chars `[start, end)`; `None` when no piece does (the span is
    /// whitespace, or out of range).
    pub fn piece_range(&self, start: usize, end: usize) -> Option<Range<usize>> {
        let first = self.offsets.iter().position(|&(_, e)| e > start)?;
        let last = self.offsets.iter().rposition(|&(s, _)| s < end)?;
        (first <= last).then_some(first..last + 1)
    }

    /// Char span `[start, end)` covered by pieces `range` (non-empty, in range).
    pub fn char_span(&self, range: Range<usize>) -> (usize, usize) {
        (self.offsets[range.start].0, self.offsets[range.end - 1].1)
    }

    /// Windows of at most `max_pieces` pieces covering every piece; consecutive windows share
    /// `overlap` pieces so that pieces near a cut still see context on both sides.
    pub fn windows(&self, max_pieces: usize, overlap: usize) -> Vec<Range<usize>> {
        windows(self.len(), max_pieces, overlap)
    }
}

/// See [`Pieces::windows`]. `overlap` is clamped below `max_pieces` so windows always advance.
pub fn windows(len: usize, max_pieces: usize, overlap: usize) -> Vec<Range<usize>> {
    let max_pieces = max_pieces.max(1);
    if len <= max_pieces {
        return std::iter::once(0..len).collect();
    }
    let step = max_pieces - overlap.min(max_pieces - 1);
    let mut out = Vec::new();
    let mut start = 0;
    loop {
        if start + max_pieces >= len {
            out.push(len - max_pieces..len);
            return out;
        }
        out.push(start..start + max_pieces);
        start += step;
    }
}

/// For piece `piece`, the index of the window that predicts it: the one where it is furthest
/// from an edge (ties go to the earlier window).
pub fn owner(windows: &[Range<usize>], piece: usize) -> usize {
    let margin = |w: &Range<usize>| {
        if w.contains(&piece) { (piece - w.start).min(w.end - 1 - piece) as isize } else { -1 }
    };
    let mut best = 0;
    for (i, w) in windows.iter().enumerate() {
        if margin(w) > margin(&windows[best]) {
            best = i;
        }
    }
    best
}

#[cfg(test)]
pub(crate) mod testutil {
    //! A tiny BERT-style tokenizer built in code, so unit tests need no files.
    use super::*;
    use std::str::FromStr;

    /// Words of the toy vocabulary (besides specials and single letters).
    pub const TOY_WORDS: &[&str] = &[
        "aspirin", "caused", "nausea", "rash", "and", "the", "patient", "took", "brca", "##1", "is", "linked", "to",
        "breast", "cancer", "john", "smith", "born", "in", "paris", "naive", "beta", "-", "block", "##er", "hepato",
        "##toxic", "##ity", "no", ".", ",", "with", "after",
    ];

    /// The same normalizer, pre-tokenizer and model types as MiniLM's `tokenizer.json`.
    pub fn toy_tokenizer() -> WordPieces {
        let mut vocab: Vec<String> =
            ["[PAD]", "[unused0]", "[unused1]", "[UNK]", "[CLS]", "[SEP]"].iter().map(|s| s.to_string()).collect();
        vocab.extend(TOY_WORDS.iter().map(|s| s.to_string()));
        vocab.extend(('a'..='z').map(|c| c.to_string()));
        vocab.extend(('a'..='z').map(|c| format!("##{c}")));
        let vocab: serde_json::Map<String, serde_json::Value> =
            vocab.into_iter().enumerate().map(|(i, w)| (w, i.into())).collect();
        let json = serde_json::json!({
            "version": "1.0", "truncation": null, "padding": null, "added_tokens": [],
            "normalizer": {"type": "BertNormalizer", "clean_text": true, "handle_chinese_chars": true,
                           "strip_accents": null, "lowercase": true},
            "pre_tokenizer": {"type": "BertPreTokenizer"}, "post_processor": null, "decoder": null,
            "model": {"type": "WordPiece", "unk_token": "[UNK]", "continuing_subword_prefix": "##",
                      "max_input_chars_per_word": 100, "vocab": vocab},
        });
        WordPieces::new(Tokenizer::from_str(&json.to_string()).unwrap()).unwrap()
    }

    /// Size of the toy vocabulary.
    pub fn toy_vocab_size() -> usize {
        6 + TOY_WORDS.len() + 52
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::toy_tokenizer;
    use super::*;
    use crate::text::CharIndex;

    /// Every span that starts and ends on piece boundaries maps to pieces and back unchanged,
    /// and its text is what the char offsets slice.
    fn assert_round_trips(pieces: &Pieces, text: &str, span: &str) {
        let idx = CharIndex::new(text);
        let byte = text.find(span).unwrap();
        let start = idx.char(byte).unwrap();
        let end = start + span.chars().count();
        let range = pieces.piece_range(start, end).unwrap();
        assert_eq!(pieces.char_span(range), (start, end), "{span:?} in {text:?}");
        assert_eq!(idx.slice(text, start, end), Some(span));
    }

    #[test]
    fn spans_round_trip_through_pieces_ascii() {
        let wp = toy_tokenizer();
        let text = "The patient took aspirin and hepatotoxicity, rash.";
        let pieces = wp.encode(text).unwrap();
        assert_eq!(pieces.len(), 11, "hepato ##toxic ##ity is three pieces");
        let starts: Vec<usize> = (0..pieces.len()).filter(|&i| pieces.word_starts[i]).collect();
        assert_eq!(starts, [0, 1, 2, 3, 4, 5, 8, 9, 10], "continuations are not word starts; ',' and '.' are words");
        for span in ["aspirin", "hepatotoxicity", "rash", "patient took", "."] {
            assert_round_trips(&pieces, text, span);
        }
        // A span cutting a piece widens to whole pieces.
        let range = pieces.piece_range(29, 37).unwrap(); // "hepato" + "to" of "##toxic"
        assert_eq!(pieces.char_span(range), (29, 40));
        assert_eq!(pieces.piece_range(3, 4), None, "a space has no piece");
    }

    #[test]
    fn spans_round_trip_through_pieces_non_ascii() {
        let wp = toy_tokenizer();
        // Accents are stripped by the normalizer (ï -> i); offsets must still index the original.
        let text = "Naïve β-blocker → nausea in Zürich, 5 µg.";
        let pieces = wp.encode(text).unwrap();
        for span in ["Naïve", "β", "β-blocker", "nausea", "Zürich", "µg", "→"] {
            assert_round_trips(&pieces, text, span);
        }
        // Every piece's offsets slice a non-empty, non-space part of the text.
        let idx = CharIndex::new(text);
        for &(s, e) in &pieces.offsets {
            let piece = idx.slice(text, s, e).unwrap();
            assert!(!piece.trim().is_empty(), "{piece:?}");
        }
    }

    #[test]
    fn windows_cover_everything_and_owners_are_central() {
        assert_eq!(windows(5, 8, 2), vec![0..5]);
        let ws = windows(20, 8, 3);
        assert_eq!(ws, vec![0..8, 5..13, 10..18, 12..20]);
        for piece in 0..20 {
            assert!(ws[owner(&ws, piece)].contains(&piece));
        }
        assert_eq!(owner(&ws, 7), 1, "7 is at the edge of window 0 but inside window 1");
        assert_eq!(windows(3, 1, 5), vec![0..1, 1..2, 2..3], "overlap clamps so windows advance");
    }
}
