//! The student: a BERT encoder (all-MiniLM-L6-v2) with an entity tagger and a relation head.
//!
//! Gu et al. 2023, "Distilling Large Language Models for Biomedical Knowledge Extraction"
//! (<https://arxiv.org/abs/2307.06439>), §3: the relation step tags, for each anchor mention
//! (a drug; for gene–disease a gene), the spans related to it. [`Arch`] switches how the anchor
//! conditions the tagger, for the ablation the paper also ran:
//!
//! - [`Arch::Conditioned`] (the paper's): encode once, mean-pool the anchor's pieces,
//!   concatenate that vector to every token, linear + softmax. O(1) encoder calls per sentence,
//!   O(M) cheap head calls for M anchors.
//! - [`Arch::Markers`]: re-encode the sentence once per anchor with `[unused0]`/`[unused1]`
//!   around it, then tag every token. O(M) encoder calls.
//! - [`Arch::Pairwise`]: classify every (anchor, candidate span) pair, candidates being the
//!   entity spans of the related type ([`super::pairwise`]). One encoder call, O(M×N) pairs.
//!
//! Variable names: the encoder's are the checkpoint's own (`embeddings.…`, `encoder.layer.N.…`,
//! no `bert.` prefix), heads live under `heads.entity` and `heads.relation`.
//!
//! The [`Encoder`] has no dropout (like candle's BERT), so dropout acts only in the heads, through [`dropout`],
//! which draws from a seeded generator (candle's CPU generator cannot be seeded).

use std::path::Path;

use candle_core::{D, DType, Device, Tensor};
use candle_nn::{VarBuilder, VarMap};
use candle_transformers::models::bert::Config as BertConfig;
use rand::rngs::StdRng;
use rand::{Rng, SeedableRng};
use serde::{Deserialize, Serialize};

use super::batch::{Batch, masked_cross_entropy};
use super::encoder::{Encoder, Mode};
use super::layers::{Dense, dropout, mean_pool};
use super::pairwise::PairwiseClassifier;
use super::tags::NUM_RELATION_TAGS;
use crate::error::{Error, Result};
use crate::vocab::Task;

/// Prefix of every head variable; everything else belongs to the pretrained encoder.
pub const HEADS_PREFIX: &str = "heads.";

/// How the relation head is conditioned on the anchor (see the module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Arch {
    #[default]
    Conditioned,
    Markers,
    Pairwise,
}

impl std::str::FromStr for Arch {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "conditioned" => Ok(Arch::Conditioned),
            "markers" => Ok(Arch::Markers),
            "pairwise" => Ok(Arch::Pairwise),
            _ => Err(format!("unknown arch {s:?} (expected conditioned, markers or pairwise)")),
        }
    }
}

/// What a student is: stored in its checkpoint's config.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct StudentSpec {
    pub task: Task,
    pub arch: Arch,
    /// Dropout on the heads' inputs while training.
    pub dropout: f64,
}

/// BIO entity tagger: one linear layer over each token's hidden state.
// https://github.com/huggingface/transformers/blob/v4.44.0/src/transformers/models/bert/modeling_bert.py#L1741 (BertForTokenClassification)
pub struct TokenHead {
    classifier: Dense,
}

impl TokenHead {
    pub fn load(vb: VarBuilder, hidden: usize, tags: usize) -> Result<Self> {
        Ok(Self { classifier: Dense::load(hidden, tags, vb.pp("classifier"))? })
    }

    /// `(batch, tokens, hidden)` -> `(batch, tokens, tags)` logits.
    pub fn forward(&self, hidden: &Tensor) -> Result<Tensor> {
        self.classifier.forward(hidden)
    }
}

/// The paper's anchor-conditioned relation tagger: `[h_t ; mean(h_anchor)]` -> linear -> tags.
pub struct ConditionedTagger {
    classifier: Dense,
}

impl ConditionedTagger {
    pub fn load(vb: VarBuilder, hidden: usize, tags: usize) -> Result<Self> {
        Ok(Self { classifier: Dense::load(2 * hidden, tags, vb.pp("classifier"))? })
    }

    /// Relation logits `(anchors, tokens, tags)` for the batch's anchors.
    pub fn forward(&self, hidden: &Tensor, batch: &Batch, p: f64, rng: Option<&mut StdRng>) -> Result<Tensor> {
        let (selected, pooled) = mean_pool(hidden, &batch.anchor_rows, &batch.anchor_pieces)?;
        let (anchors, tokens, width) = selected.dims3()?;
        let pooled = pooled.unsqueeze(1)?.broadcast_as((anchors, tokens, width))?.contiguous()?;
        let features = Tensor::cat(&[&selected, &pooled], D::Minus1)?;
        self.classifier.forward(&dropout(&features, p, rng)?)
    }
}

/// Ablation (b): re-encode once per anchor with entity markers around it, then tag each token.
pub struct MarkerTagger {
    classifier: Dense,
}

impl MarkerTagger {
    pub fn load(vb: VarBuilder, hidden: usize, tags: usize) -> Result<Self> {
        Ok(Self { classifier: Dense::load(hidden, tags, vb.pp("classifier"))? })
    }

    /// Relation logits `(anchors, tokens, tags)`, positions as in `batch` (markers removed).
    pub fn forward(&self, encoder: &Encoder, batch: &Batch, p: f64, rng: Option<&mut StdRng>) -> Result<Tensor> {
        let (tokens, marked_len) = (batch.seq_len, batch.seq_len + 2);
        let anchors = batch.num_anchors();
        let (mut ids, mut mask, mut gather) = (Vec::new(), Vec::new(), Vec::new());
        for (row, range) in batch.anchor_rows.iter().zip(&batch.anchor_pieces) {
            let at = *row as usize * tokens;
            let (row_ids, row_mask) = (&batch.ids[at..at + tokens], &batch.mask[at..at + tokens]);
            let (s, e) = (range.start, range.end);
            ids.extend_from_slice(&row_ids[..s]);
            ids.push(batch.special.marker_open);
            ids.extend_from_slice(&row_ids[s..e]);
            ids.push(batch.special.marker_close);
            ids.extend_from_slice(&row_ids[e..]);
            mask.extend_from_slice(&row_mask[..s]);
            mask.push(1);
            mask.extend_from_slice(&row_mask[s..e]);
            mask.push(1);
            mask.extend_from_slice(&row_mask[e..]);
            gather.extend((0..tokens).map(|t| (t + usize::from(t >= s) + usize::from(t >= e)) as u32));
        }
        let device = &encoder.device;
        let ids = Tensor::from_vec(ids, (anchors, marked_len), device)?;
        let mask = Tensor::from_vec(mask, (anchors, marked_len), device)?;
        let hidden = encoder.forward(&ids, &ids.zeros_like()?, &mask)?;
        let width = hidden.dim(2)?;
        let gather = Tensor::from_vec(gather, (anchors, tokens, 1), device)?.broadcast_as((anchors, tokens, width))?;
        let hidden = hidden.contiguous()?.gather(&gather.contiguous()?, 1)?;
        self.classifier.forward(&dropout(&hidden, p, rng)?)
    }
}

/// The relation head chosen by [`Arch`].
enum RelationHead {
    Conditioned(ConditionedTagger),
    Markers(MarkerTagger),
    Pairwise(PairwiseClassifier),
}

/// Encoder plus the heads of one task.
pub struct Student {
    encoder: Encoder,
    entity: TokenHead,
    relation: Option<RelationHead>,
    spec: StudentSpec,
    hidden_size: usize,
}

impl Student {
    /// `mode` must be [`Mode::Train`] for a student that will be trained (see [`Encoder`]).
    pub fn load(vb: VarBuilder, config: &BertConfig, spec: &StudentSpec, mode: Mode) -> Result<Self> {
        let encoder = Encoder::load(vb.clone(), config, mode)?;
        let heads = vb.pp("heads");
        let hidden = config.hidden_size;
        let entity = TokenHead::load(heads.pp("entity"), hidden, spec.task.num_entity_tags())?;
        let relation = match (spec.task.relation(), spec.arch) {
            (None, _) => None,
            (Some(_), Arch::Conditioned) => Some(RelationHead::Conditioned(ConditionedTagger::load(
                heads.pp("relation"),
                hidden,
                NUM_RELATION_TAGS,
            )?)),
            (Some(_), Arch::Markers) => {
                Some(RelationHead::Markers(MarkerTagger::load(heads.pp("relation"), hidden, NUM_RELATION_TAGS)?))
            }
            (Some((_, related)), Arch::Pairwise) => {
                let related = spec.task.type_index(related).expect("related type is an entity type");
                Some(RelationHead::Pairwise(PairwiseClassifier::load(heads.pp("relation"), hidden, related)?))
            }
        };
        Ok(Self { encoder, entity, relation, spec: spec.clone(), hidden_size: hidden })
    }

    pub fn spec(&self) -> &StudentSpec {
        &self.spec
    }

    pub fn device(&self) -> &Device {
        &self.encoder.device
    }

    pub fn hidden_size(&self) -> usize {
        self.hidden_size
    }

    /// Hidden states `(batch, tokens, hidden)`.
    pub fn encode(&self, batch: &Batch) -> Result<Tensor> {
        let (ids, types, mask) = batch.inputs(self.device())?;
        self.encoder.forward(&ids, &types, &mask)
    }

    /// Fuse the encoder's attention inputs for inference on fixed weights (see
    /// [`Encoder::fuse_for_inference`]).
    pub fn fuse_for_inference(&mut self) -> Result<()> {
        self.encoder.fuse_for_inference()
    }

    /// Keep the embeddings and the bottom `layers` encoder layers at their pretrained weights.
    pub fn set_frozen_layers(&mut self, layers: usize) -> Result<()> {
        self.encoder.set_frozen_layers(layers)
    }

    /// Whether a sentence's hidden states can be computed from its cached frozen-layer output
    /// ([`Student::encode_upper`]): some layers are frozen, and the relation head does not
    /// re-encode the sentence with markers.
    pub fn reuses_frozen_output(&self) -> bool {
        self.encoder.frozen_layers() > 0 && !matches!(self.relation, Some(RelationHead::Markers(_)))
    }

    /// Output of the frozen part of the encoder for `batch` (see [`Encoder::lower`]).
    pub fn encode_lower(&self, batch: &Batch) -> Result<Tensor> {
        let (ids, types, mask) = batch.inputs(self.device())?;
        self.encoder.lower(&ids, &types, &mask)
    }

    /// Hidden states of `batch` from its frozen-layer output `lower` (`(batch, tokens, hidden)`).
    pub fn encode_upper(&self, lower: &Tensor, batch: &Batch) -> Result<Tensor> {
        let mask = Tensor::from_slice(&batch.mask, (batch.size, batch.seq_len), self.device())?;
        self.encoder.upper(lower, &mask)
    }

    /// Entity logits `(batch, tokens, entity tags)`; dropout when `rng` is given.
    pub fn entity_logits(&self, hidden: &Tensor, rng: Option<&mut StdRng>) -> Result<Tensor> {
        self.entity.forward(&dropout(hidden, self.spec.dropout, rng)?)
    }

    /// Relation logits `(anchors, tokens, relation tags)` for `batch`'s anchors; `None` for a
    /// task without relations or a batch without anchors.
    pub fn relation_logits(&self, hidden: &Tensor, batch: &Batch, rng: Option<&mut StdRng>) -> Result<Option<Tensor>> {
        if batch.num_anchors() == 0 {
            return Ok(None);
        }
        let p = self.spec.dropout;
        match &self.relation {
            None => Ok(None),
            Some(RelationHead::Conditioned(head)) => head.forward(hidden, batch, p, rng).map(Some),
            Some(RelationHead::Markers(head)) => head.forward(&self.encoder, batch, p, rng).map(Some),
            Some(RelationHead::Pairwise(head)) => head.token_logits(hidden, batch).map(Some),
        }
    }

    /// Training loss of the relation head: cross-entropy over relation tags (non-`O` tags
    /// weighing `positive_weight`), or over pairs for [`Arch::Pairwise`] (unweighted). `None`
    /// when nothing is scored.
    pub fn relation_loss(
        &self,
        hidden: &Tensor,
        batch: &Batch,
        rng: Option<&mut StdRng>,
        positive_weight: f64,
    ) -> Result<Option<Tensor>> {
        if let Some(RelationHead::Pairwise(head)) = &self.relation {
            return head.loss(hidden, batch, self.spec.dropout, rng);
        }
        match self.relation_logits(hidden, batch, rng)? {
            Some(logits) => masked_cross_entropy(&logits, &batch.relation_targets, positive_weight),
            None => Ok(None),
        }
    }
}

/// Give every variable of `varmap` a value drawn from `seed` alone (candle's own initializers
/// use an unseedable generator): BERT's scheme, N(0, 0.02)-scaled uniform for weights, zeros
/// for biases, ones for LayerNorm scales. Variables are visited in name order.
pub fn seeded_init(varmap: &VarMap, seed: u64, initializer_range: f64) -> Result<()> {
    let data = varmap.data().lock().map_err(|_| Error::Internal("VarMap lock poisoned".into()))?;
    let mut names: Vec<&String> = data.keys().collect();
    names.sort();
    let mut rng = StdRng::seed_from_u64(seed);
    let bound = (3f64.sqrt() * initializer_range) as f32; // uniform with the normal's std
    for name in names {
        let var = &data[name];
        let n = var.elem_count();
        let values: Vec<f32> = if name.ends_with("bias") {
            vec![0.0; n]
        } else if name.contains("LayerNorm") {
            vec![1.0; n]
        } else {
            (0..n).map(|_| rng.random_range(-bound..bound)).collect()
        };
        var.set(&Tensor::from_vec(values, var.dims(), var.device())?)?;
    }
    Ok(())
}

/// Overwrite the encoder's variables with the pretrained weights in `path`; heads keep their
/// values. Returns how many tensors were loaded. (`VarMap::load` would demand head tensors too.)
pub fn load_encoder_weights(varmap: &VarMap, path: &Path) -> Result<usize> {
    let err = |e: candle_core::Error| Error::Model(format!("{}: {e}", path.display()));
    // SAFETY: the file is mapped read-only and only read while `weights` lives; a concurrent
    // writer to a model file would be a misuse this program never does.
    let weights = unsafe { candle_core::safetensors::MmapedSafetensors::new(path) }.map_err(err)?;
    let data = varmap.data().lock().map_err(|_| Error::Internal("VarMap lock poisoned".into()))?;
    let mut loaded = 0;
    for (name, var) in data.iter().filter(|(name, _)| !name.starts_with(HEADS_PREFIX)) {
        let tensor = weights.load(name, var.device()).map_err(err)?;
        var.set(&tensor.to_dtype(DType::F32)?).map_err(err)?;
        loaded += 1;
    }
    Ok(loaded)
}

#[cfg(test)]
pub(crate) mod testutil {
    use super::*;

    /// A 2-layer, 32-wide BERT: trains in milliseconds, needs no weights.
    pub fn tiny_bert(vocab_size: usize) -> BertConfig {
        BertConfig {
            vocab_size,
            hidden_size: 32,
            num_hidden_layers: 2,
            num_attention_heads: 2,
            intermediate_size: 64,
            max_position_embeddings: 64,
            ..Default::default()
        }
    }

    /// A randomly initialised student of `spec` from `seed`.
    pub fn tiny_student(spec: &StudentSpec, vocab_size: usize, seed: u64) -> (VarMap, Student) {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let student = Student::load(vb, &tiny_bert(vocab_size), spec, Mode::Train).unwrap();
        seeded_init(&varmap, seed, 0.02).unwrap();
        (varmap, student)
    }
}

#[cfg(test)]
mod tests {
    use super::testutil::tiny_student;
    use super::*;
    use crate::model::batch::{AnchorExample, Example};
    use crate::model::wordpiece::SpecialIds;

    const SPECIAL: SpecialIds = SpecialIds { cls: 4, sep: 5, pad: 0, marker_open: 1, marker_close: 2 };

    fn spec(arch: Arch) -> StudentSpec {
        StudentSpec { task: Task::Ade, arch, dropout: 0.1 }
    }

    fn batch() -> Batch {
        let anchor = |pieces| AnchorExample { pieces, related_tags: vec![] };
        let a =
            Example { ids: vec![10, 11, 12, 13, 14], anchors: vec![anchor(0..2), anchor(3..4)], ..Default::default() };
        let b = Example { ids: vec![20, 21], anchors: vec![anchor(1..2)], ..Default::default() };
        Batch::new(&[&a, &b], SPECIAL)
    }

    #[test]
    fn conditioned_head_outputs_anchors_by_tokens_by_tags() {
        for arch in [Arch::Conditioned, Arch::Markers, Arch::Pairwise] {
            let (_, student) = tiny_student(&spec(arch), 30, 1);
            let batch = batch();
            let hidden = student.encode(&batch).unwrap();
            assert_eq!(hidden.dims(), &[2, 7, 32]);
            let relation = student.relation_logits(&hidden, &batch, None).unwrap().unwrap();
            assert_eq!(relation.dims(), &[3, 7, NUM_RELATION_TAGS], "{arch:?}");
            let entity = student.entity_logits(&hidden, None).unwrap();
            assert_eq!(entity.dims(), &[2, 7, Task::Ade.num_entity_tags()]);
        }
    }

    #[test]
    fn conditioned_head_depends_on_the_anchor_only_through_its_pieces() {
        let (_, student) = tiny_student(&spec(Arch::Conditioned), 30, 2);
        let mut batch = batch();
        let hidden = student.encode(&batch).unwrap();
        batch.clear_anchors();
        batch.push_anchor(0, 0..2, &[]);
        batch.push_anchor(0, 0..2, &[]);
        batch.push_anchor(0, 3..4, &[]);
        let logits: Vec<Vec<Vec<f32>>> =
            student.relation_logits(&hidden, &batch, None).unwrap().unwrap().to_vec3().unwrap();
        assert_eq!(logits[0], logits[1], "same pieces, same output");
        assert_ne!(logits[0], logits[2], "different anchor, different output");
    }

    #[test]
    fn seeded_init_is_reproducible() {
        let weights = |seed| {
            let (varmap, _) = tiny_student(&spec(Arch::Conditioned), 30, seed);
            let data = varmap.data().lock().unwrap();
            data["heads.relation.classifier.weight"].as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap()
        };
        assert_eq!(weights(7), weights(7));
        assert_ne!(weights(7), weights(8));
    }
}
