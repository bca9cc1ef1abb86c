//! The BIO tag schemes the student's heads predict.
//!
//! Tags are per word piece: `B-X` on a span's first piece, `I-X` on the rest, `O` elsewhere.
//! Tag ids are `0 = O`, then `B`/`I` pairs in the order of [`Task::entity_types`], so the scheme
//! is a pure function of the task (nothing to store beside a checkpoint).
//!
//! [`Task::entity_types`]: crate::vocab::Task::entity_types

use std::ops::Range;

/// Tags of the relation tagger: the related spans of one anchor, untyped.
pub const NUM_RELATION_TAGS: usize = 3;

/// Tag id `O`.
pub const OUTSIDE: u32 = 0;

/// A span over word pieces with its type index.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct PieceSpan {
    pub pieces: Range<usize>,
    pub type_index: usize,
}

/// Write BIO tags for `spans` into `tags` (all `O` beforehand). Returns false, leaving `tags`
/// untouched, when the span overlaps one already written (BIO cannot express overlaps).
pub fn write_bio(tags: &mut [u32], span: &PieceSpan) -> bool {
    if span.pieces.is_empty() || span.pieces.end > tags.len() || tags[span.pieces.clone()].iter().any(|&t| t != OUTSIDE)
    {
        return false;
    }
    let begin = 1 + 2 * span.type_index as u32;
    tags[span.pieces.start] = begin;
    for t in &mut tags[span.pieces.start + 1..span.pieces.end] {
        *t = begin + 1;
    }
    true
}

/// Read spans back from BIO tags. Lenient like seqeval's default: an `I` that does not continue
/// a span of its type starts one.
pub fn decode_bio(tags: &[u32]) -> Vec<PieceSpan> {
    let mut spans: Vec<PieceSpan> = Vec::new();
    let mut open: Option<PieceSpan> = None;
    for (i, &tag) in tags.iter().enumerate() {
        if tag == OUTSIDE {
            spans.extend(open.take());
            continue;
        }
        let type_index = ((tag - 1) / 2) as usize;
        let is_begin = (tag - 1) % 2 == 0;
        match &mut open {
            Some(span) if !is_begin && span.type_index == type_index => span.pieces.end = i + 1,
            _ => {
                spans.extend(open.take());
                open = Some(PieceSpan { pieces: i..i + 1, type_index });
            }
        }
    }
    spans.extend(open);
    spans
}

/// Make every word's pieces carry the tag of its first piece (`B-X`/`I-X` continue as
/// `I-X`), so decoded spans cover whole words: a tagger trained on pieces otherwise cuts words
/// ("trigly" of "triglycerides"). The rule of Hugging Face's `aggregation_strategy="first"`.
/// `word_starts[i]` says piece `i` begins a word; the first piece always does.
pub fn snap_to_words(tags: &[u32], word_starts: &[bool]) -> Vec<u32> {
    let mut out = Vec::with_capacity(tags.len());
    let mut word_tag = OUTSIDE;
    for (i, &tag) in tags.iter().enumerate() {
        if i == 0 || word_starts.get(i).copied().unwrap_or(true) {
            word_tag = tag;
            out.push(tag);
        } else {
            // B-X ids are odd and I-X = B-X + 1: a continuation is I-X either way.
            out.push(if word_tag == OUTSIDE { OUTSIDE } else { word_tag + word_tag % 2 });
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn spans_snap_to_whole_words_by_their_first_piece() {
        // trigly ##ceri ##des | rose: B-1 on "trigly", O on "##des" -> the whole word.
        let (b, i) = (3, 4);
        let starts = [true, false, false, true];
        assert_eq!(snap_to_words(&[b, OUTSIDE, OUTSIDE, OUTSIDE], &starts), vec![b, i, i, OUTSIDE]);
        // A word whose first piece is O is O, whatever its continuations say.
        assert_eq!(snap_to_words(&[OUTSIDE, b, i, OUTSIDE], &starts), vec![OUTSIDE; 4]);
        // I-X continues as I-X; a span starting mid-window still starts at piece 0.
        assert_eq!(snap_to_words(&[i, b, OUTSIDE, i], &starts), vec![i, i, i, i]);
        assert_eq!(decode_bio(&snap_to_words(&[b, OUTSIDE, OUTSIDE, b], &starts)).len(), 2);
    }

    #[test]
    fn bio_round_trips_and_refuses_overlaps() {
        let mut tags = vec![OUTSIDE; 8];
        let a = PieceSpan { pieces: 1..3, type_index: 1 };
        let b = PieceSpan { pieces: 3..4, type_index: 1 };
        assert!(write_bio(&mut tags, &a));
        assert!(write_bio(&mut tags, &b));
        assert!(!write_bio(&mut tags, &PieceSpan { pieces: 2..5, type_index: 0 }));
        assert_eq!(tags, vec![0, 3, 4, 3, 0, 0, 0, 0]);
        assert_eq!(decode_bio(&tags), vec![a, b]);
        // A stray I starts a span.
        assert_eq!(decode_bio(&[0, 2, 2, 4]).len(), 2);
    }
}
