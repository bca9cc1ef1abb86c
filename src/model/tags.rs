//! Tasks, their entity types and the BIO tag schemes the student's heads predict.
//!
//! Tags are per word piece: `B-X` on a span's first piece, `I-X` on the rest, `O` elsewhere.
//! Tag ids are `0 = O`, then `B`/`I` pairs in the order of [`Task::entity_types`], so the scheme
//! is a pure function of the task (nothing to store beside a checkpoint).

use std::ops::Range;

use serde::{Deserialize, Serialize};

/// PHI categories the entity tagger predicts for the `phi` task, in the order and spelling of
/// the teacher's scheme (`teacher::phi::PhiType::ALL`, not yet wired into the crate when this
/// was written: replace this list with it once it is). Any other type string in
/// `teacher_labels` is counted and dropped by training.
pub const PHI_TYPES: &[&str] =
    &["NAME", "DATE", "AGE", "SEX", "LOCATION", "ID", "CONTACT", "PROFESSION", "ORGANIZATION", "OTHER"];

/// An extraction task: the value of `teacher_labels.task`.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Task {
    /// Drugs and the adverse events they caused (ADE-Corpus-V2).
    Ade,
    /// Genes and the diseases they are associated with (GAD, EU-ADR, BioRED).
    GeneDisease,
    /// Protected health information spans (de-identification).
    Phi,
}

impl Task {
    pub const ALL: [Task; 3] = [Task::Ade, Task::GeneDisease, Task::Phi];

    /// The name used in tables and file names.
    pub fn as_str(self) -> &'static str {
        match self {
            Task::Ade => "ade",
            Task::GeneDisease => "gene_disease",
            Task::Phi => "phi",
        }
    }

    /// Parse a `teacher_labels.task` value.
    pub fn parse(s: &str) -> Option<Task> {
        Task::ALL.into_iter().find(|t| t.as_str() == s)
    }

    /// Entity types of the entity tagger, in tag-id order.
    pub fn entity_types(self) -> &'static [&'static str] {
        match self {
            Task::Ade => &["DRUG", "ADVERSE_EVENT"],
            Task::GeneDisease => &["GENE", "DISEASE"],
            Task::Phi => PHI_TYPES,
        }
    }

    /// `(anchor type, related type)` for relation tasks; `None` for span-only tasks.
    pub fn relation(self) -> Option<(&'static str, &'static str)> {
        match self {
            Task::Ade => Some(("DRUG", "ADVERSE_EVENT")),
            Task::GeneDisease => Some(("GENE", "DISEASE")),
            Task::Phi => None,
        }
    }

    /// Index of `entity_type` (case-insensitive) in [`Task::entity_types`].
    pub fn type_index(self, entity_type: &str) -> Option<usize> {
        self.entity_types().iter().position(|t| t.eq_ignore_ascii_case(entity_type.trim()))
    }

    /// Number of entity tags (`O` plus `B`/`I` per type).
    pub fn num_entity_tags(self) -> usize {
        1 + 2 * self.entity_types().len()
    }
}

impl std::fmt::Display for Task {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.as_str())
    }
}

impl std::str::FromStr for Task {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Task::parse(s).ok_or_else(|| format!("unknown task {s:?} (expected ade, gene_disease or phi)"))
    }
}

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

    #[test]
    fn task_names_and_types() {
        assert_eq!(Task::parse("gene_disease"), Some(Task::GeneDisease));
        assert_eq!(Task::Phi.num_entity_tags(), 1 + 2 * PHI_TYPES.len());
        assert_eq!(Task::Ade.type_index("adverse_event"), Some(1));
    }
}
