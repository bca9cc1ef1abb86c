//! Inference for one chunk of sentences with one task's student.
//!
//! The encoder runs once per window; the entity tagger's spans give the anchors, and the
//! relation head tags each anchor's related spans on the same hidden states (with the
//! conditioned architecture no second encoder pass happens). A span is reported by the window
//! that owns its first piece (see [`wordpiece::owner`]), so overlapping windows never report a
//! span twice.

use std::ops::Range;

use candle_core::{D, Tensor};

use crate::error::Result;
use crate::model::batch::{Batch, Example};
use crate::model::checkpoint::Checkpoint;
use crate::model::tags::{PieceSpan, decode_bio, snap_to_words};
use crate::model::wordpiece::{self, Pieces};

/// One row of the `sentences` table.
#[derive(Debug, Clone)]
pub struct SentenceRow {
    pub doc_id: String,
    pub sent_id: i32,
    /// Char offset of the sentence in `documents.text`.
    pub start: usize,
    pub text: String,
}

impl SentenceRow {
    /// A sentence on its own (offset 0: not placed in a document), e.g. a candidate to score.
    pub fn standalone(doc_id: &str, sent_id: i32, text: &str) -> Self {
        Self { doc_id: doc_id.to_string(), sent_id, start: 0, text: text.to_string() }
    }
}

/// A predicted entity: char offsets into its sentence.
#[derive(Debug, Clone, PartialEq)]
pub struct EntityPrediction {
    pub sentence: usize,
    pub start: usize,
    pub end: usize,
    pub type_index: usize,
    /// Mean over the span's pieces of the predicted tag's probability.
    pub score: f32,
}

/// A predicted (anchor, related span) pair.
#[derive(Debug, Clone, PartialEq)]
pub struct PairPrediction {
    pub anchor: EntityPrediction,
    pub start: usize,
    pub end: usize,
    /// Anchor score times the related span's mean tag probability.
    pub score: f32,
}

#[derive(Debug, Default)]
pub struct Predictions {
    pub entities: Vec<EntityPrediction>,
    pub pairs: Vec<PairPrediction>,
    pub windows: usize,
}

/// Per row, per position: the argmax tag, and its probability.
type TagsAndProbs = (Vec<Vec<u32>>, Vec<Vec<f32>>);

/// Per-position `(argmax tag, its probability)` of the mean over ensemble members of the
/// softmax of their logits `(rows, tokens, tags)`; one member's, for one student.
fn decode_logits(members: &[Tensor]) -> Result<TagsAndProbs> {
    let mut probs = candle_nn::ops::softmax_last_dim(&members[0])?;
    for logits in &members[1..] {
        probs = (probs + candle_nn::ops::softmax_last_dim(logits)?)?;
    }
    if members.len() > 1 {
        probs = (probs / members.len() as f64)?;
    }
    Ok((probs.argmax(D::Minus1)?.to_vec2()?, probs.max(D::Minus1)?.to_vec2()?))
}

/// One padded row of tags (`[CLS]` first) over `window` of `pieces`, unpadded, each word
/// tagged by its first piece.
fn word_tags(row: &[u32], pieces: &Pieces, window: &Range<usize>) -> Vec<u32> {
    snap_to_words(&row[1..=window.len()], &pieces.word_starts[window.clone()])
}

/// Spans of one padded row of tags over `window` of `pieces`, whole words only.
fn word_spans(row: &[u32], pieces: &Pieces, window: &Range<usize>) -> Vec<PieceSpan> {
    decode_bio(&word_tags(row, pieces, window))
}

fn mean(values: &[f32]) -> f32 {
    values.iter().sum::<f32>() / values.len().max(1) as f32
}

/// Run `checkpoint` over `sentences`, `batch_size` windows per encoder call, batches side by
/// side on `threads` threads. Pairs (spans, for a task without relations) scoring below the
/// checkpoint's `min_score` are dropped. The output is the same for any thread count.
pub fn predict(
    checkpoint: &Checkpoint,
    sentences: &[SentenceRow],
    batch_size: usize,
    threads: usize,
) -> Result<Predictions> {
    let config = &checkpoint.config;
    let pieces: Vec<Pieces> = sentences.iter().map(|s| checkpoint.tokenizer.encode(&s.text)).collect::<Result<_>>()?;
    let windows: Vec<Vec<Range<usize>>> = pieces
        .iter()
        .map(|p| if p.is_empty() { vec![] } else { p.windows(config.max_pieces, config.window_overlap) })
        .collect();
    // (sentence, window index), sorted by length so batches carry little padding.
    let mut items: Vec<(usize, usize)> =
        windows.iter().enumerate().flat_map(|(s, ws)| (0..ws.len()).map(move |w| (s, w))).collect();
    items.sort_by_key(|&(s, w)| windows[s][w].len());
    let batches: Vec<&[(usize, usize)]> = items.chunks(batch_size.max(1)).collect();
    let parts = crate::parallel::map(&batches, threads, |chunk| predict_batch(checkpoint, &pieces, &windows, chunk))?;
    let mut out = Predictions { windows: items.len(), ..Default::default() };
    for part in parts {
        out.entities.extend(part.entities);
        out.pairs.extend(part.pairs);
    }
    let min = config.min_score;
    if config.spec.task.relation().is_some() {
        out.pairs.retain(|p| p.score >= min);
    } else {
        out.entities.retain(|e| e.score >= min);
    }
    Ok(out)
}

/// Entities and pairs of one batch of `(sentence, window)` items. An ensemble's members each
/// encode the batch; their entity probabilities are averaged to find the anchors, and each
/// member's relation head then tags those same anchors, averaged again.
fn predict_batch(
    checkpoint: &Checkpoint,
    pieces: &[Pieces],
    windows: &[Vec<Range<usize>>],
    chunk: &[(usize, usize)],
) -> Result<Predictions> {
    let students = &checkpoint.students;
    let task = checkpoint.config.spec.task;
    let anchor_type = task.relation().map(|(a, _)| task.type_index(a).expect("anchor type is an entity type"));
    let mut out = Predictions::default();
    let examples: Vec<Example> = chunk
        .iter()
        .map(|&(s, w)| Example { ids: pieces[s].ids[windows[s][w].clone()].to_vec(), ..Default::default() })
        .collect();
    let refs: Vec<&Example> = examples.iter().collect();
    let mut batch = Batch::new(&refs, checkpoint.tokenizer.special());
    let hidden: Vec<Tensor> = students.iter().map(|s| s.encode(&batch)).collect::<Result<_>>()?;
    let entity: Vec<Tensor> =
        students.iter().zip(&hidden).map(|(s, h)| s.entity_logits(h, None)).collect::<Result<_>>()?;
    let (tags, probs) = decode_logits(&entity)?;
    let mut anchors = Vec::new();
    for (row, &(s, w)) in chunk.iter().enumerate() {
        let window = &windows[s][w];
        let entity_tags = word_tags(&tags[row], &pieces[s], window);
        // The pairwise head's candidates are the predicted spans.
        batch.set_candidate_tags(row, &entity_tags);
        for span in decode_bio(&entity_tags) {
            let first = window.start + span.pieces.start;
            if wordpiece::owner(&windows[s], first) != w {
                continue;
            }
            let (start, end) = pieces[s].char_span(first..window.start + span.pieces.end);
            let score = mean(&probs[row][1 + span.pieces.start..1 + span.pieces.end]);
            let entity = EntityPrediction { sentence: s, start, end, type_index: span.type_index, score };
            if Some(span.type_index) == anchor_type {
                batch.push_anchor(row, span.pieces.clone(), &[]);
                anchors.push(entity.clone());
            }
            out.entities.push(entity);
        }
    }
    let relation: Option<Vec<Tensor>> =
        students.iter().zip(&hidden).map(|(s, h)| s.relation_logits(h, &batch, None)).collect::<Result<_>>()?;
    let Some(relation) = relation else { return Ok(out) };
    let (rel_tags, rel_probs) = decode_logits(&relation)?;
    for (a, anchor) in anchors.into_iter().enumerate() {
        let (s, w) = chunk[batch.anchor_rows[a] as usize];
        let window = &windows[s][w];
        for span in word_spans(&rel_tags[a], &pieces[s], window) {
            let (start, end) = pieces[s].char_span(window.start + span.pieces.start..window.start + span.pieces.end);
            let score = anchor.score * mean(&rel_probs[a][1 + span.pieces.start..1 + span.pieces.end]);
            out.pairs.push(PairPrediction { anchor: anchor.clone(), start, end, score });
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Tensor};

    use super::decode_logits;

    #[test]
    fn an_ensemble_decodes_the_mean_of_its_members_probabilities() {
        // One position, two tags: member A says (0.9, 0.1), member B (0.2, 0.8); their mean
        // (0.55, 0.45) picks tag 0 at 0.55, which neither member alone gives.
        let logits = |p: [f32; 2]| Tensor::new(&[[p.map(f32::ln)]], &Device::Cpu).unwrap();
        let (a, b) = (logits([0.9, 0.1]), logits([0.2, 0.8]));
        let (tags, probs) = decode_logits(&[a.clone(), b.clone()]).unwrap();
        assert_eq!(tags, vec![vec![0]]);
        assert!((probs[0][0] - 0.55).abs() < 1e-6, "{probs:?}");
        let (tags, probs) = decode_logits(&[b]).unwrap();
        assert_eq!(tags, vec![vec![1]]);
        assert!((probs[0][0] - 0.8).abs() < 1e-6, "{probs:?}");
        let (_, probs) = decode_logits(&[a.clone(), a]).unwrap();
        assert!((probs[0][0] - 0.9).abs() < 1e-6, "a student with itself is the student: {probs:?}");
    }
}
