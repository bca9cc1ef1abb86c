//! Labeled sentences -> word-piece training examples (one per window).
//!
//! Char spans become piece ranges (widened to whole pieces when a span cuts a piece; counted),
//! entity spans become BIO tags (an overlapping span is dropped; counted), and for relation
//! tasks every anchor-typed entity becomes an anchor whose targets tag its related spans. An
//! anchor with no related span is kept: it teaches the tagger to say "nothing" for that drug.

use serde::Serialize;

use super::data::{CharSpan, LabeledSentence};
use crate::error::Result;
use crate::model::batch::{AnchorExample, Example, IGNORE};
use crate::model::tags::{OUTSIDE, PieceSpan, write_bio};
use crate::model::wordpiece::{Pieces, WordPieces};
use crate::vocab::Task;

/// Counts of label adjustments made while featurizing.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct FeatureStats {
    pub examples: usize,
    pub windowed_sentences: usize,
    pub spans_widened_to_pieces: usize,
    pub spans_dropped_overlap: usize,
    pub spans_cut_by_window: usize,
    pub empty_sentences: usize,
}

/// Windowing of the encoder input.
#[derive(Debug, Clone, Copy)]
pub struct Windowing {
    /// Maximum pieces per window, `[CLS]`/`[SEP]` excluded.
    pub max_pieces: usize,
    pub overlap: usize,
}

/// Featurize `sentences` for `task`.
pub fn featurize(
    sentences: &[LabeledSentence],
    task: Task,
    tokenizer: &WordPieces,
    windowing: Windowing,
    stats: &mut FeatureStats,
) -> Result<Vec<Example>> {
    let mut out = Vec::new();
    for sentence in sentences {
        let pieces = tokenizer.encode(&sentence.text)?;
        if pieces.is_empty() {
            stats.empty_sentences += 1;
            continue;
        }
        stats.spans_widened_to_pieces += sentence
            .entities
            .iter()
            .filter(|s| pieces.piece_range(s.start, s.end).is_some_and(|r| pieces.char_span(r) != (s.start, s.end)))
            .count();
        let windows = pieces.windows(windowing.max_pieces, windowing.overlap);
        stats.windowed_sentences += usize::from(windows.len() > 1);
        for window in windows {
            out.push(window_example(sentence, task, &pieces, window, stats));
        }
    }
    stats.examples += out.len();
    Ok(out)
}

/// Pieces of `span` relative to `window`, or `None` when the span is not wholly inside it.
fn in_window(
    pieces: &Pieces,
    span: &CharSpan,
    window: &std::ops::Range<usize>,
    stats: &mut FeatureStats,
) -> Option<PieceSpan> {
    let range = pieces.piece_range(span.start, span.end)?;
    if range.start < window.start || range.end > window.end {
        stats.spans_cut_by_window += usize::from(range.start < window.end && range.end > window.start);
        return None;
    }
    Some(PieceSpan { pieces: range.start - window.start..range.end - window.start, type_index: span.type_index })
}

fn window_example(
    sentence: &LabeledSentence,
    task: Task,
    pieces: &Pieces,
    window: std::ops::Range<usize>,
    stats: &mut FeatureStats,
) -> Example {
    let n = window.len();
    let mut entity_tags = vec![OUTSIDE; n];
    // Longest first, so a nested shorter span is the one dropped.
    let mut entities: Vec<&CharSpan> = sentence.entities.iter().collect();
    entities.sort_by_key(|s| (s.start as isize - s.end as isize, s.start));
    for span in entities {
        let Some(piece_span) = in_window(pieces, span, &window, stats) else { continue };
        if !write_bio(&mut entity_tags, &piece_span) {
            stats.spans_dropped_overlap += 1;
        }
    }
    // Doubtful labels' pieces leave the loss, unless a confident label holds them.
    let ignore = |tags: &mut [u32], span: &CharSpan, stats: &mut FeatureStats| {
        if let Some(piece_span) = in_window(pieces, span, &window, stats) {
            tags[piece_span.pieces].iter_mut().filter(|t| **t == OUTSIDE).for_each(|t| *t = IGNORE);
        }
    };
    for (anchor, span) in &sentence.doubtful {
        for span in anchor.iter().chain([span]) {
            ignore(&mut entity_tags, span, stats);
        }
    }
    let mut anchors = Vec::new();
    if let Some((anchor_type, _)) = task.relation() {
        let anchor_index = task.type_index(anchor_type).expect("anchor type is an entity type");
        for anchor in sentence.entities.iter().filter(|s| s.type_index == anchor_index) {
            let Some(anchor_span) = in_window(pieces, anchor, &window, stats) else { continue };
            let mut related_tags = vec![OUTSIDE; n];
            for (_, related) in sentence.pairs.iter().filter(|(a, _)| a == anchor) {
                if let Some(mut span) = in_window(pieces, related, &window, stats) {
                    span.type_index = 0; // relation tags are untyped
                    write_bio(&mut related_tags, &span);
                }
            }
            for (_, related) in sentence.doubtful.iter().filter(|(a, _)| a.as_ref() == Some(anchor)) {
                ignore(&mut related_tags, related, stats);
            }
            anchors.push(AnchorExample { pieces: anchor_span.pieces, related_tags });
        }
    }
    Example { ids: pieces.ids[window].to_vec(), entity_tags, anchors }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::wordpiece::testutil::toy_tokenizer;

    #[test]
    fn labels_become_bio_tags_and_conditioned_anchors() {
        let text = "aspirin caused nausea and rash";
        let span = |start, end, type_index| CharSpan { start, end, type_index };
        let (drug, nausea, rash) = (span(0, 7, 0), span(15, 21, 1), span(26, 30, 1));
        let sentence = LabeledSentence {
            text: text.into(),
            entities: [drug, nausea, rash].into_iter().collect(),
            pairs: [(drug, nausea)].into_iter().collect(),
            ..Default::default()
        };
        let mut stats = FeatureStats::default();
        let windowing = Windowing { max_pieces: 64, overlap: 8 };
        let examples = featurize(&[sentence], Task::Ade, &toy_tokenizer(), windowing, &mut stats).unwrap();
        assert_eq!(examples.len(), 1);
        let e = &examples[0];
        assert_eq!(e.entity_tags, vec![1, 0, 3, 0, 3]);
        assert_eq!(e.anchors, vec![AnchorExample { pieces: 0..1, related_tags: vec![0, 0, 1, 0, 0] }]);
        assert_eq!(stats.examples, 1);

        // The teacher unsure of rash as aspirin's event: out of both losses, nausea untouched.
        let doubtful = LabeledSentence {
            doubtful: [(Some(drug), rash)].into_iter().collect(),
            entities: [drug, nausea].into_iter().collect(),
            pairs: [(drug, nausea)].into_iter().collect(),
            ..sentence_of(text)
        };
        let e = &featurize(&[doubtful], Task::Ade, &toy_tokenizer(), windowing, &mut stats).unwrap()[0];
        assert_eq!(e.entity_tags, vec![1, 0, 3, 0, IGNORE]);
        assert_eq!(e.anchors[0].related_tags, vec![0, 0, 1, 0, IGNORE]);
    }

    fn sentence_of(text: &str) -> LabeledSentence {
        LabeledSentence { text: text.into(), ..Default::default() }
    }
}
