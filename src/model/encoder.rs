//! A BERT encoder that can be fine-tuned: the student's backbone (all-MiniLM-L6-v2).
//!
//! candle-transformers' `BertModel` computes the same function, but its LayerNorm and softmax
//! are candle's fused CPU kernels, which are applied without a backward pass
//! (`apply_op3_no_bwd`): the autograd graph stops at every LayerNorm, so fine-tuning through it
//! silently trains only the heads (we shipped that bug once: 2 of 105 variables got gradients).
//! This module uses candle's LayerNorm and softmax kernels when built for inference
//! ([`Mode::Infer`]) and, when training ([`Mode::Train`]), ops of its own that carry a backward
//! pass ([`super::fused`]); linear layers and GELU are the fused ops in both modes (GELU's erf
//! vectorizes there, candle's does not). Both give the same outputs (tested against `BertModel`).
//!
//! Variable names are the checkpoint's own (`embeddings.…`, `encoder.layer.N.…`).
// https://github.com/huggingface/transformers/blob/v4.44.0/src/transformers/models/bert/modeling_bert.py

use candle_core::{DType, Device, Module, Tensor};
use candle_nn::{Embedding, VarBuilder, embedding};
use candle_transformers::models::bert::{Config, HiddenAct};

use super::fused;
use super::layers::Dense;
use crate::error::{Error, Result};

/// Whether the graph must be differentiable.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Differentiable LayerNorm and softmax ([`super::fused`]).
    Train,
    /// candle's fused kernels, no autograd.
    Infer,
}

/// LayerNorm that keeps the autograd graph in [`Mode::Train`].
struct Norm {
    weight: Tensor,
    bias: Tensor,
    eps: f32,
    mode: Mode,
}

impl Norm {
    fn load(vb: VarBuilder, config: &Config, mode: Mode) -> Result<Self> {
        let weight = vb.get_with_hints(config.hidden_size, "weight", candle_nn::Init::Const(1.0))?;
        let bias = vb.get_with_hints(config.hidden_size, "bias", candle_nn::Init::Const(0.0))?;
        Ok(Self { weight, bias, eps: config.layer_norm_eps as f32, mode })
    }

    fn forward(&self, xs: &Tensor) -> Result<Tensor> {
        Ok(match self.mode {
            Mode::Train => fused::layer_norm(xs, &self.weight, &self.bias, self.eps)?,
            Mode::Infer => candle_nn::ops::layer_norm(xs, &self.weight, &self.bias, self.eps)?,
        })
    }
}

struct Embeddings {
    words: Embedding,
    positions: Embedding,
    token_types: Embedding,
    norm: Norm,
}

impl Embeddings {
    fn load(vb: VarBuilder, c: &Config, mode: Mode) -> Result<Self> {
        let words = embedding(c.vocab_size, c.hidden_size, vb.pp("word_embeddings"))?;
        // Frozen while training: the table is half of MiniLM's weights (30522 x 384), a step
        // would spend most of its time on its gradient and AdamW update, and a few thousand
        // sentences touch only a sliver of the vocabulary. `detach` shares the storage, so the
        // pretrained values loaded into the variable later are the ones used.
        let words = match mode {
            Mode::Train => Embedding::new(words.embeddings().detach(), c.hidden_size),
            Mode::Infer => words,
        };
        Ok(Self {
            words,
            positions: embedding(c.max_position_embeddings, c.hidden_size, vb.pp("position_embeddings"))?,
            token_types: embedding(c.type_vocab_size, c.hidden_size, vb.pp("token_type_embeddings"))?,
            norm: Norm::load(vb.pp("LayerNorm"), c, mode)?,
        })
    }

    fn forward(&self, ids: &Tensor, types: &Tensor) -> Result<Tensor> {
        let (_, len) = ids.dims2()?;
        let positions = Tensor::arange(0u32, len as u32, ids.device())?;
        let xs = self.words.forward(ids)?.add(&self.token_types.forward(types)?)?;
        let xs = xs.broadcast_add(&self.positions.forward(&positions)?)?;
        self.norm.forward(&xs)
    }
}

struct Layer {
    query: Dense,
    key: Dense,
    value: Dense,
    attention_out: Dense,
    attention_norm: Norm,
    intermediate: Dense,
    output: Dense,
    output_norm: Norm,
    heads: usize,
    act: HiddenAct,
    mode: Mode,
    /// `query`, `key` and `value` as one `(3 × hidden, hidden)` layer, the query's rows
    /// pre-multiplied by 1/√head_dim: set by [`Encoder::fuse_for_inference`] on weights that
    /// no longer change. One matmul and one head split instead of three, and no scaling pass
    /// over the `(batch, head, tokens, tokens)` scores.
    fused_qkv: Option<Dense>,
}

impl Layer {
    fn load(vb: VarBuilder, c: &Config, mode: Mode) -> Result<Self> {
        let (h, i) = (c.hidden_size, c.intermediate_size);
        let attention = vb.pp("attention");
        let this = attention.pp("self");
        Ok(Self {
            query: Dense::load(h, h, this.pp("query"))?,
            key: Dense::load(h, h, this.pp("key"))?,
            value: Dense::load(h, h, this.pp("value"))?,
            attention_out: Dense::load(h, h, attention.pp("output").pp("dense"))?,
            attention_norm: Norm::load(attention.pp("output").pp("LayerNorm"), c, mode)?,
            intermediate: Dense::load(h, i, vb.pp("intermediate").pp("dense"))?,
            output: Dense::load(i, h, vb.pp("output").pp("dense"))?,
            output_norm: Norm::load(vb.pp("output").pp("LayerNorm"), c, mode)?,
            heads: c.num_attention_heads,
            act: c.hidden_act,
            mode,
            fused_qkv: None,
        })
    }

    /// Build [`Layer::fused_qkv`] from the current weights (copies them: later changes to the
    /// variables are not seen).
    fn fuse_qkv(&mut self) -> Result<()> {
        let head_dim = self.query.weight().dim(0)? / self.heads;
        let scale = 1.0 / (head_dim as f64).sqrt();
        let part = |dense: &Dense, scale: f64| -> Result<(Tensor, Tensor)> {
            Ok(((dense.weight() * scale)?, (dense.bias() * scale)?))
        };
        let (q, k, v) = (part(&self.query, scale)?, part(&self.key, 1.0)?, part(&self.value, 1.0)?);
        let weight = Tensor::cat(&[&q.0, &k.0, &v.0], 0)?;
        let bias = Tensor::cat(&[&q.1, &k.1, &v.1], 0)?;
        self.fused_qkv = Some(Dense::new(weight, bias));
        Ok(())
    }

    /// Attention scores `(batch, head, tokens, tokens)` before the mask, and the values
    /// `(batch, head, tokens, head_dim)`.
    fn scores_and_values(&self, xs: &Tensor) -> Result<(Tensor, Tensor)> {
        let (q, k, v) = self.attention_inputs(xs)?;
        let scores = q.matmul(&k.t()?)?;
        if self.fused_qkv.is_some() {
            return Ok((scores, v)); // the scale is in the query weights
        }
        let scale = 1.0 / ((xs.dim(2)? / self.heads) as f64).sqrt();
        Ok(((scores * scale)?, v))
    }

    /// Queries, keys and values, each `(batch, head, tokens, head_dim)`; the queries are
    /// scaled by 1/√head_dim only when fused.
    fn attention_inputs(&self, xs: &Tensor) -> Result<(Tensor, Tensor, Tensor)> {
        let (b, t, h) = xs.dims3()?;
        let Some(fused) = &self.fused_qkv else {
            let q = self.split_heads(&self.query.forward(xs)?)?;
            let k = self.split_heads(&self.key.forward(xs)?)?;
            let v = self.split_heads(&self.value.forward(xs)?)?;
            return Ok((q, k, v));
        };
        // (batch, tokens, 3 × hidden) -> (3, batch, head, tokens, head_dim), one copy.
        let all = fused.forward(xs)?.reshape((b, t, 3, self.heads, h / self.heads))?.permute((2, 0, 3, 1, 4))?;
        let all = all.contiguous()?;
        Ok((all.get(0)?, all.get(1)?, all.get(2)?))
    }

    /// `(batch, tokens, hidden)` -> `(batch, tokens, head, head_dim)` -> `(batch, head, tokens, head_dim)`.
    fn split_heads(&self, xs: &Tensor) -> Result<Tensor> {
        let (b, t, h) = xs.dims3()?;
        Ok(xs.reshape((b, t, self.heads, h / self.heads))?.transpose(1, 2)?.contiguous()?)
    }

    /// `bias` is `(batch, 1, 1, tokens)`: 0 for real tokens, a large negative for padding.
    fn forward(&self, xs: &Tensor, bias: &Tensor) -> Result<Tensor> {
        let (b, t, h) = xs.dims3()?;
        let (scores, v) = self.scores_and_values(xs)?;
        let scores = scores.broadcast_add(bias)?;
        let probs = match self.mode {
            Mode::Train => fused::softmax_last_dim(&scores)?,
            Mode::Infer => candle_nn::ops::softmax_last_dim(&scores)?,
        };
        let context = probs.matmul(&v)?.transpose(1, 2)?.reshape((b, t, h))?;
        let xs = self.attention_norm.forward(&(self.attention_out.forward(&context)? + xs)?)?;
        let inner = self.intermediate.forward(&xs)?;
        let inner = match self.act {
            HiddenAct::Gelu => fused::gelu_erf(&inner)?,
            HiddenAct::GeluApproximate => inner.gelu()?,
            HiddenAct::Relu => inner.relu()?,
        };
        self.output_norm.forward(&(self.output.forward(&inner)? + xs)?)
    }
}

/// The BERT encoder: embeddings and transformer layers (no pooler).
pub struct Encoder {
    embeddings: Embeddings,
    layers: Vec<Layer>,
    /// The embeddings and this many bottom layers keep their pretrained weights while
    /// training: [`Encoder::forward`] detaches their output, so backward stops there, and
    /// their output can be computed once per sentence ([`Encoder::lower`]) and reused.
    frozen: usize,
    pub device: Device,
}

impl Encoder {
    pub fn load(vb: VarBuilder, config: &Config, mode: Mode) -> Result<Self> {
        let embeddings = Embeddings::load(vb.pp("embeddings"), config, mode)?;
        let layers = (0..config.num_hidden_layers)
            .map(|i| Layer::load(vb.pp(format!("encoder.layer.{i}")), config, mode))
            .collect::<Result<_>>()?;
        Ok(Self { embeddings, layers, frozen: 0, device: vb.device().clone() })
    }

    /// Freeze the embeddings and the bottom `layers` layers (see [`Encoder::frozen`]).
    pub fn set_frozen_layers(&mut self, layers: usize) -> Result<()> {
        if layers > self.layers.len() {
            return Err(Error::Config(format!(
                "train.frozen_layers {layers} exceeds the encoder's {} layers",
                self.layers.len()
            )));
        }
        self.frozen = layers;
        Ok(())
    }

    pub fn frozen_layers(&self) -> usize {
        self.frozen
    }

    /// Fuse each layer's query, key and value into one matmul, the attention scale folded
    /// into the query weights. Only for [`Mode::Infer`] on weights that no longer change (a
    /// loaded checkpoint): the fused copy does not follow later updates of the variables, so
    /// `train`'s live view of the weights being trained stays unfused. Same outputs within
    /// float rounding (tested).
    pub fn fuse_for_inference(&mut self) -> Result<()> {
        for layer in &mut self.layers {
            if layer.mode != Mode::Infer {
                return Err(Error::Internal("fuse_for_inference on a training encoder".into()));
            }
            layer.fuse_qkv()?;
        }
        Ok(())
    }

    /// Hidden states `(batch, tokens, hidden)` of `ids`; `mask` is 1 for real tokens, 0 for padding.
    pub fn forward(&self, ids: &Tensor, types: &Tensor, mask: &Tensor) -> Result<Tensor> {
        let bias = attention_bias(mask)?;
        let lower = self.lower_biased(ids, types, &bias)?;
        self.upper_biased(lower, &bias)
    }

    /// Output of the embeddings and the frozen layers, detached from the autograd graph. A
    /// token's output does not depend on padding (padded keys are masked out), so a sentence
    /// encoded alone gives the rows it would get inside any padded batch.
    pub fn lower(&self, ids: &Tensor, types: &Tensor, mask: &Tensor) -> Result<Tensor> {
        self.lower_biased(ids, types, &attention_bias(mask)?)
    }

    /// The trainable layers over `lower` (the output of [`Encoder::lower`], padded to `mask`).
    pub fn upper(&self, lower: &Tensor, mask: &Tensor) -> Result<Tensor> {
        self.upper_biased(lower.clone(), &attention_bias(mask)?)
    }

    fn lower_biased(&self, ids: &Tensor, types: &Tensor, bias: &Tensor) -> Result<Tensor> {
        let xs = run_layers(self.embeddings.forward(ids, types)?, &self.layers[..self.frozen], bias)?;
        Ok(if self.frozen > 0 { xs.detach() } else { xs })
    }

    fn upper_biased(&self, lower: Tensor, bias: &Tensor) -> Result<Tensor> {
        run_layers(lower, &self.layers[self.frozen..], bias)
    }
}

fn run_layers(mut xs: Tensor, layers: &[Layer], bias: &Tensor) -> Result<Tensor> {
    for layer in layers {
        xs = layer.forward(&xs, bias)?;
    }
    Ok(xs)
}

/// `(batch, 1, 1, tokens)` attention bias: 0 for real tokens, a large negative for padding.
/// Large but finite, so a fully padded row still has a defined softmax.
fn attention_bias(mask: &Tensor) -> Result<Tensor> {
    let (b, t) = mask.dims2()?;
    Ok(((mask.to_dtype(DType::F32)? - 1.0)? * 1e9)?.reshape((b, 1, 1, t))?)
}

#[cfg(test)]
mod tests {
    use candle_nn::VarMap;

    use super::*;
    use crate::model::student::testutil::tiny_bert;

    fn tiny(mode: Mode, varmap: &VarMap) -> Encoder {
        let vb = VarBuilder::from_varmap(varmap, DType::F32, &Device::Cpu);
        Encoder::load(vb, &tiny_bert(30), mode).unwrap()
    }

    fn inputs() -> (Tensor, Tensor, Tensor) {
        let ids = Tensor::new(&[[4u32, 10, 11, 5], [4, 12, 5, 0]], &Device::Cpu).unwrap();
        let mask = Tensor::new(&[[1u32, 1, 1, 1], [1, 1, 1, 0]], &Device::Cpu).unwrap();
        (ids.clone(), ids.zeros_like().unwrap(), mask)
    }

    #[test]
    fn every_variable_but_the_word_embeddings_gets_a_gradient_when_training() {
        let varmap = VarMap::new();
        let encoder = tiny(Mode::Train, &varmap);
        crate::model::student::seeded_init(&varmap, 3, 0.02).unwrap();
        let (ids, types, mask) = inputs();
        let grads = encoder.forward(&ids, &types, &mask).unwrap().sqr().unwrap().sum_all().unwrap().backward().unwrap();
        let data = varmap.data().lock().unwrap();
        let mut missing: Vec<&String> = data.iter().filter(|(_, v)| grads.get(v).is_none()).map(|(n, _)| n).collect();
        missing.sort();
        assert_eq!(missing, ["embeddings.word_embeddings.weight"], "frozen, and nothing else");
    }

    #[test]
    fn fused_attention_inputs_compute_the_same_function() {
        let varmap = VarMap::new();
        let mut fused = tiny(Mode::Infer, &varmap);
        crate::model::student::seeded_init(&varmap, 5, 0.5).unwrap();
        let unfused = tiny(Mode::Infer, &varmap);
        fused.fuse_for_inference().unwrap();
        assert!(tiny(Mode::Train, &varmap).fuse_for_inference().is_err());
        let (ids, types, mask) = inputs();
        let a = unfused.forward(&ids, &types, &mask).unwrap();
        let b = fused.forward(&ids, &types, &mask).unwrap();
        // Padding rows included: they go through the same arithmetic.
        let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-5, "max |diff| {diff}");
    }

    #[test]
    fn train_and_infer_modes_compute_the_same_function() {
        let varmap = VarMap::new();
        let train = tiny(Mode::Train, &varmap);
        let infer = tiny(Mode::Infer, &varmap);
        crate::model::student::seeded_init(&varmap, 4, 0.02).unwrap();
        let (ids, types, mask) = inputs();
        let a = train.forward(&ids, &types, &mask).unwrap();
        let b = infer.forward(&ids, &types, &mask).unwrap();
        let diff = (a - b).unwrap().abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-4, "max |diff| {diff}");
    }
}
