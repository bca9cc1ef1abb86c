//! Ablation (c): classify every (anchor, candidate) pair.
//!
//! Candidates are the spans of the related entity type in the anchor's sentence: at training
//! time from the entity targets (teacher labels), at extraction from the entity tagger (see
//! [`Batch::candidate_tags`]). Each pair is `[mean(anchor) ; mean(candidate) ; product]` ->
//! linear -> {unrelated, related}. O(M×N) pair scores for M anchors and N candidates, on one
//! encoder pass.
//!
//! So that extraction decodes every architecture the same way, [`PairwiseClassifier::token_logits`]
//! spreads the pair logits over the candidate's pieces as relation BIO logits: `O` carries the
//! "unrelated" logit, `B` (first piece) or `I` (the rest) the "related" one, and pieces outside
//! every candidate are `O` for sure.

use std::ops::Range;

use candle_core::{D, Tensor};
use candle_nn::VarBuilder;
use rand::rngs::StdRng;

use super::batch::{Batch, IGNORE};
use super::layers::{Dense, dropout, mean_pool};
use super::tags::{OUTSIDE, decode_bio};
use crate::error::Result;

/// A logit that softmax turns into probability ~0.
const NEVER: f32 = -1e4;

/// One (anchor, candidate) pair: the anchor's index in the batch and the candidate's padded
/// positions on the anchor's row.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Pair {
    pub anchor: usize,
    pub candidate: Range<usize>,
}

/// Every pair of `batch`: each anchor with each span of type `related` on its row that does not
/// overlap it.
pub fn pairs(batch: &Batch, related: usize) -> Vec<Pair> {
    let rows: Vec<Vec<Range<usize>>> = (0..batch.size)
        .map(|row| {
            let tags: Vec<u32> = batch.candidate_tags[row * batch.seq_len..(row + 1) * batch.seq_len]
                .iter()
                .map(|&t| if t == IGNORE { OUTSIDE } else { t })
                .collect();
            decode_bio(&tags).into_iter().filter(|s| s.type_index == related).map(|s| s.pieces).collect()
        })
        .collect();
    let mut out = Vec::new();
    for (a, (&row, anchor)) in batch.anchor_rows.iter().zip(&batch.anchor_pieces).enumerate() {
        for c in &rows[row as usize] {
            if c.end <= anchor.start || c.start >= anchor.end {
                out.push(Pair { anchor: a, candidate: c.clone() });
            }
        }
    }
    out
}

/// Target of each pair: 1 when the anchor's relation targets mark any of the candidate's pieces
/// as related, else 0.
pub fn pair_targets(batch: &Batch, pairs: &[Pair]) -> Vec<u32> {
    pairs
        .iter()
        .map(|p| {
            let at = p.anchor * batch.seq_len;
            let targets = &batch.relation_targets[at + p.candidate.start..at + p.candidate.end];
            u32::from(targets.iter().any(|&t| t != OUTSIDE && t != IGNORE))
        })
        .collect()
}

pub struct PairwiseClassifier {
    classifier: Dense,
    /// Entity type index of the candidates.
    related: usize,
}

impl PairwiseClassifier {
    pub fn load(vb: VarBuilder, hidden: usize, related: usize) -> Result<Self> {
        Ok(Self { classifier: Dense::load(3 * hidden, 2, vb.pp("classifier"))?, related })
    }

    /// The batch's pairs and their logits `(pairs, 2)`; `None` when there is no pair.
    pub fn pair_logits(
        &self,
        hidden: &Tensor,
        batch: &Batch,
        p: f64,
        rng: Option<&mut StdRng>,
    ) -> Result<Option<(Vec<Pair>, Tensor)>> {
        let pairs = pairs(batch, self.related);
        if pairs.is_empty() {
            return Ok(None);
        }
        let anchor_rows: Vec<u32> = pairs.iter().map(|p| batch.anchor_rows[p.anchor]).collect();
        let anchor_pieces: Vec<Range<usize>> = pairs.iter().map(|p| batch.anchor_pieces[p.anchor].clone()).collect();
        let candidates: Vec<Range<usize>> = pairs.iter().map(|p| p.candidate.clone()).collect();
        let (_, anchor) = mean_pool(hidden, &anchor_rows, &anchor_pieces)?;
        let (_, candidate) = mean_pool(hidden, &anchor_rows, &candidates)?;
        let features = Tensor::cat(&[&anchor, &candidate, &(&anchor * &candidate)?], D::Minus1)?;
        let logits = self.classifier.forward(&dropout(&features, p, rng)?)?;
        Ok(Some((pairs, logits)))
    }

    /// Cross-entropy of the pair classifier against [`pair_targets`].
    pub fn loss(&self, hidden: &Tensor, batch: &Batch, p: f64, rng: Option<&mut StdRng>) -> Result<Option<Tensor>> {
        let Some((pairs, logits)) = self.pair_logits(hidden, batch, p, rng)? else { return Ok(None) };
        let targets = Tensor::new(pair_targets(batch, &pairs), logits.device())?;
        Ok(Some(candle_nn::loss::cross_entropy(&logits, &targets)?))
    }

    /// Relation BIO logits `(anchors, tokens, 3)` (see the module docs).
    pub fn token_logits(&self, hidden: &Tensor, batch: &Batch) -> Result<Tensor> {
        let (anchors, tokens) = (batch.num_anchors(), batch.seq_len);
        let device = hidden.device();
        let (pairs, flat) = match self.pair_logits(hidden, batch, 0.0, None)? {
            Some((pairs, logits)) => (pairs, logits.flatten_all()?),
            None => (Vec::new(), Tensor::zeros(0, candle_core::DType::F32, device)?),
        };
        // Gather from [pair logits..., 0, NEVER]: index 2P is a sure 0, 2P + 1 never.
        let (zero, never) = (2 * pairs.len() as u32, 2 * pairs.len() as u32 + 1);
        let mut index = vec![[zero, never, never]; anchors * tokens];
        for (i, pair) in pairs.iter().enumerate() {
            let (unrelated, related) = (2 * i as u32, 2 * i as u32 + 1);
            for t in pair.candidate.clone() {
                let first = t == pair.candidate.start;
                index[pair.anchor * tokens + t] =
                    if first { [unrelated, related, never] } else { [unrelated, never, related] };
            }
        }
        let source = Tensor::cat(&[&flat, &Tensor::new(&[0f32, NEVER], device)?], 0)?;
        let index: Vec<u32> = index.into_iter().flatten().collect();
        let gathered = source.index_select(&Tensor::from_vec(index, anchors * tokens * 3, device)?, 0)?;
        Ok(gathered.reshape((anchors, tokens, 3))?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::batch::{AnchorExample, Example};
    use crate::model::wordpiece::SpecialIds;

    const SPECIAL: SpecialIds = SpecialIds { cls: 4, sep: 5, pad: 0, marker_open: 1, marker_close: 2 };

    /// "drug x effect effect y effect": DRUG = type 0 (B 1, I 2), EFFECT = type 1 (B 3, I 4).
    fn batch() -> Batch {
        let example = Example {
            ids: vec![10, 11, 12, 13, 14, 15],
            entity_tags: vec![1, 0, 3, 4, 0, 3],
            anchors: vec![AnchorExample { pieces: 0..1, related_tags: vec![0, 0, 1, 2, 0, 0] }],
        };
        Batch::new(&[&example], SPECIAL)
    }

    #[test]
    fn pairs_are_anchor_by_candidate_with_targets_from_the_relation_tags() {
        let batch = batch();
        let pairs = pairs(&batch, 1);
        // Padded positions: [CLS] first.
        assert_eq!(pairs, vec![Pair { anchor: 0, candidate: 3..5 }, Pair { anchor: 0, candidate: 6..7 }]);
        assert_eq!(pair_targets(&batch, &pairs), vec![1, 0]);
        assert!(super::pairs(&batch, 0).is_empty(), "a span never pairs with itself");
    }

    #[test]
    fn token_logits_spread_pair_logits_over_candidate_pieces() {
        let varmap = candle_nn::VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, candle_core::DType::F32, &candle_core::Device::Cpu);
        let head = PairwiseClassifier::load(vb, 4, 1).unwrap();
        let batch = batch();
        let hidden = Tensor::randn(0f32, 1., (1, batch.seq_len, 4), &candle_core::Device::Cpu).unwrap();
        let (_, pair) = head.pair_logits(&hidden, &batch, 0.0, None).unwrap().unwrap();
        let pair: Vec<Vec<f32>> = pair.to_vec2().unwrap();
        let tokens: Vec<Vec<Vec<f32>>> = head.token_logits(&hidden, &batch).unwrap().to_vec3().unwrap();
        assert_eq!(tokens[0].len(), batch.seq_len);
        assert_eq!(tokens[0][1], vec![0.0, NEVER, NEVER], "the anchor itself is outside");
        assert_eq!(tokens[0][3], vec![pair[0][0], pair[0][1], NEVER]);
        assert_eq!(tokens[0][4], vec![pair[0][0], NEVER, pair[0][1]]);
        assert_eq!(tokens[0][6], vec![pair[1][0], pair[1][1], NEVER]);
    }
}
