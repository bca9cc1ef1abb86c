//! Padded encoder batches and their targets, built on the host.
//!
//! An [`Example`] is one window of one sentence's word pieces (no special tokens), with BIO
//! targets when training. A [`Batch`] adds `[CLS]`/`[SEP]`, pads to the longest example, and
//! shifts anchor piece ranges by one for the `[CLS]`: every position below is a position in the
//! padded sequence. Targets at `[CLS]`, `[SEP]` and padding are [`IGNORE`] and never scored.

use std::ops::Range;

use candle_core::{D, Device, Tensor};

use super::wordpiece::SpecialIds;
use crate::error::Result;

/// Target value for positions that carry no label.
pub const IGNORE: u32 = u32::MAX;

/// One anchor mention (a drug, a gene) and, when training, the tags of its related spans.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AnchorExample {
    /// Pieces of the anchor, indexing [`Example::ids`].
    pub pieces: Range<usize>,
    /// Relation BIO tag per piece; empty at inference.
    pub related_tags: Vec<u32>,
}

/// One window of a sentence.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct Example {
    pub ids: Vec<u32>,
    /// Entity BIO tag per piece; empty at inference.
    pub entity_tags: Vec<u32>,
    pub anchors: Vec<AnchorExample>,
}

/// Examples padded into one encoder call.
#[derive(Debug, Clone)]
pub struct Batch {
    /// Row-major `(size, seq_len)` token ids and attention mask.
    pub ids: Vec<u32>,
    pub mask: Vec<u32>,
    pub size: usize,
    pub seq_len: usize,
    /// Per anchor: its example's row, and its pieces in padded positions.
    pub anchor_rows: Vec<u32>,
    pub anchor_pieces: Vec<Range<usize>>,
    /// `(size, seq_len)` entity targets and `(anchors, seq_len)` relation targets.
    pub entity_targets: Vec<u32>,
    pub relation_targets: Vec<u32>,
    /// `(size, seq_len)` entity tags whose related-type spans are the pairwise head's
    /// candidates: the entity targets when training, predicted tags at extraction.
    pub candidate_tags: Vec<u32>,
    pub special: SpecialIds,
}

impl Batch {
    pub fn new(examples: &[&Example], special: SpecialIds) -> Self {
        let size = examples.len();
        let seq_len = examples.iter().map(|e| e.ids.len() + 2).max().unwrap_or(2);
        let mut batch = Batch {
            ids: vec![special.pad; size * seq_len],
            mask: vec![0; size * seq_len],
            size,
            seq_len,
            anchor_rows: Vec::new(),
            anchor_pieces: Vec::new(),
            entity_targets: vec![IGNORE; size * seq_len],
            relation_targets: Vec::new(),
            candidate_tags: Vec::new(),
            special,
        };
        for (row, example) in examples.iter().enumerate() {
            let at = row * seq_len;
            let n = example.ids.len();
            batch.ids[at] = special.cls;
            batch.ids[at + 1..at + 1 + n].copy_from_slice(&example.ids);
            batch.ids[at + 1 + n] = special.sep;
            batch.mask[at..at + n + 2].fill(1);
            if !example.entity_tags.is_empty() {
                batch.entity_targets[at + 1..at + 1 + n].copy_from_slice(&example.entity_tags);
            }
            for anchor in &example.anchors {
                batch.push_anchor(row, anchor.pieces.clone(), &anchor.related_tags);
            }
        }
        batch.candidate_tags = batch.entity_targets.clone();
        batch
    }

    /// Use `tags` (one per piece of row `row`'s example, without `[CLS]`) as the row's
    /// candidate tags.
    pub fn set_candidate_tags(&mut self, row: usize, tags: &[u32]) {
        let at = row * self.seq_len + 1;
        self.candidate_tags[at..at + tags.len()].copy_from_slice(tags);
    }

    /// Add an anchor on row `row` (pieces index the row's example, without `[CLS]`).
    pub fn push_anchor(&mut self, row: usize, pieces: Range<usize>, related_tags: &[u32]) {
        self.anchor_rows.push(row as u32);
        self.anchor_pieces.push(pieces.start + 1..pieces.end + 1);
        let mut targets = vec![IGNORE; self.seq_len];
        if !related_tags.is_empty() {
            targets[1..1 + related_tags.len()].copy_from_slice(related_tags);
        }
        self.relation_targets.extend(targets);
    }

    /// Drop all anchors (before adding predicted ones at inference).
    pub fn clear_anchors(&mut self) {
        self.anchor_rows.clear();
        self.anchor_pieces.clear();
        self.relation_targets.clear();
    }

    pub fn num_anchors(&self) -> usize {
        self.anchor_rows.len()
    }

    /// Real (non-padding) tokens, special tokens included: what tokens/s counts.
    pub fn tokens(&self) -> usize {
        self.mask.iter().filter(|&&m| m == 1).count()
    }

    /// `(input_ids, token_type_ids, attention_mask)` tensors of shape `(size, seq_len)`.
    pub fn inputs(&self, device: &Device) -> Result<(Tensor, Tensor, Tensor)> {
        let shape = (self.size, self.seq_len);
        let ids = Tensor::from_slice(&self.ids, shape, device)?;
        let types = ids.zeros_like()?;
        let mask = Tensor::from_slice(&self.mask, shape, device)?;
        Ok((ids, types, mask))
    }
}

/// Mean cross-entropy of `logits` (`(..., classes)`) against `targets` (one per row of the
/// flattened logits), skipping [`IGNORE`]. `None` when nothing is scored.
///
/// `positive_weight` weighs every row whose target is not `O` (tag 0) that many times an `O`
/// row (a weighted mean). Token tagging is mostly `O`; GAD students on some seeds learned to
/// tag nothing at all (README, Train), and weighting the tags a student must find is the usual
/// counter. 1 is the plain mean, computed as before.
pub fn masked_cross_entropy(logits: &Tensor, targets: &[u32], positive_weight: f64) -> Result<Option<Tensor>> {
    let classes = logits.dim(D::Minus1)?;
    let flat = logits.reshape(((), classes))?;
    let (rows, labels): (Vec<u32>, Vec<u32>) =
        targets.iter().enumerate().filter(|(_, t)| **t != IGNORE).map(|(i, &t)| (i as u32, t)).unzip();
    if rows.is_empty() {
        return Ok(None);
    }
    let device = logits.device();
    // Only a weighted loss needs per-row weights (this runs once per head per training step).
    let weights: Option<Vec<f32>> = (positive_weight != 1.0)
        .then(|| labels.iter().map(|&t| if t == 0 { 1.0 } else { positive_weight as f32 }).collect());
    let rows = Tensor::from_vec(rows, labels.len(), device)?;
    let labels = Tensor::from_vec(labels, rows.dim(0)?, device)?;
    let picked = flat.index_select(&rows, 0)?;
    let Some(weights) = weights else {
        return Ok(Some(candle_nn::loss::cross_entropy(&picked, &labels)?));
    };
    let total: f32 = weights.iter().sum();
    let weights = Tensor::from_vec(weights, rows.dim(0)?, device)?;
    let log_p = candle_nn::ops::log_softmax(&picked, D::Minus1)?.gather(&labels.unsqueeze(1)?, 1)?.squeeze(1)?;
    Ok(Some((log_p.mul(&weights)?.sum_all()?.neg()? / total as f64)?))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn special() -> SpecialIds {
        SpecialIds { cls: 101, sep: 102, pad: 0, marker_open: 1, marker_close: 2 }
    }

    #[test]
    fn batch_pads_shifts_anchors_and_ignores_specials() {
        let a = Example {
            ids: vec![7, 8, 9],
            entity_tags: vec![1, 2, 0],
            anchors: vec![AnchorExample { pieces: 0..2, related_tags: vec![0, 0, 1] }],
        };
        let b = Example { ids: vec![5], ..Default::default() };
        let batch = Batch::new(&[&a, &b], special());
        assert_eq!((batch.size, batch.seq_len), (2, 5));
        assert_eq!(batch.ids, vec![101, 7, 8, 9, 102, 101, 5, 102, 0, 0]);
        assert_eq!(batch.mask, vec![1, 1, 1, 1, 1, 1, 1, 1, 0, 0]);
        assert_eq!(batch.tokens(), 8);
        assert_eq!(&batch.entity_targets[..5], &[IGNORE, 1, 2, 0, IGNORE]);
        assert_eq!(batch.anchor_pieces, vec![1..3]);
        assert_eq!(batch.relation_targets, vec![IGNORE, 0, 0, 1, IGNORE]);
    }

    #[test]
    fn masked_cross_entropy_matches_hand_computation() {
        // Uniform logits over 4 classes: loss ln 4 whatever the targets.
        let logits = Tensor::zeros((2, 3, 4), candle_core::DType::F32, &Device::Cpu).unwrap();
        let loss = masked_cross_entropy(&logits, &[IGNORE, 1, 2, 3, IGNORE, 0], 1.0).unwrap().unwrap();
        assert!((loss.to_scalar::<f32>().unwrap() - 4f32.ln()).abs() < 1e-6);
        assert!(masked_cross_entropy(&logits, &[IGNORE; 6], 1.0).unwrap().is_none());
    }

    #[test]
    fn positive_weight_is_a_weighted_mean_over_tags() {
        // Two rows: target O with logits favouring it (loss a), target 1 with uniform logits
        // (loss ln 2). Weight 3 on the second: (a + 3 ln 2) / 4.
        let logits = Tensor::new(&[[2f32, 0.0], [0.0, 0.0]], &Device::Cpu).unwrap();
        let a = (1.0 + (-2f32).exp()).ln();
        let loss = |w| masked_cross_entropy(&logits, &[0, 1], w).unwrap().unwrap().to_scalar::<f32>().unwrap();
        assert!((loss(3.0) - (a + 3.0 * 2f32.ln()) / 4.0).abs() < 1e-6);
        // Weight 1 through the weighted formula would give the plain mean too.
        assert!((loss(1.0) - (a + 2f32.ln()) / 2.0).abs() < 1e-6);
        assert!(loss(3.0) > loss(1.0));
    }
}
