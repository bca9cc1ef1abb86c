//! Quantized decoder-only transformer (Qwen2 and Llama GGUF files) with an explicit,
//! per-sequence KV cache and a ragged batched forward.
//!
//! Ported from candle-transformers 0.11.1
//! [`quantized_qwen2.rs`](https://github.com/huggingface/candle/blob/main/candle-transformers/src/models/quantized_qwen2.rs)
//! and [`quantized_llama.rs`](https://github.com/huggingface/candle/blob/main/candle-transformers/src/models/quantized_llama.rs):
//! same GGUF tensor names, same RoPE convention per architecture, same attention arithmetic,
//! so logits match those models (tested below). Two things differ, and are why this port exists:
//!
//! - the KV cache lives outside the model in a [`KvCache`] per sequence. Its tensors are
//!   immutable and reference-counted, so a snapshot is a cheap `clone`: the prompt-prefix cache
//!   keeps the KV of a shared system prompt + few-shot examples and every request starts from it;
//! - [`QuantizedDecoder::forward`] takes several sequences at once, each with its own position
//!   and any number of new tokens (a prefill chunk or one decode token). Their rows are
//!   concatenated for every matmul (on a CPU a decode step is bound by reading the weights, so
//!   8 rows cost far less than 8 passes) and attention runs per sequence, so no padding or
//!   cross-sequence masks are needed. candle's own `quantized_qwen2` fails above batch 1.

use candle_core::quantized::{QMatMul, QTensor, gguf_file};
use candle_core::{D, DType, Device, IndexOp, Module, Tensor};
use candle_nn::Embedding;
use candle_transformers::quantized_nn::RmsNorm;
use candle_transformers::utils::{build_causal_mask, repeat_kv};

use crate::{Error, Result};

/// Hyper-parameters read from the GGUF metadata (`{arch}.*` keys).
#[derive(Debug, Clone, PartialEq)]
pub struct DecoderConfig {
    /// `general.architecture`: `qwen2` or `llama`.
    pub arch: String,
    pub n_layer: usize,
    pub n_head: usize,
    pub n_kv_head: usize,
    pub hidden: usize,
    pub head_dim: usize,
    /// The longest sequence the model was trained for.
    pub context_length: usize,
    pub rms_norm_eps: f64,
    pub rope_freq_base: f32,
}

impl DecoderConfig {
    /// Read the configuration of a `qwen2` or `llama` GGUF file.
    pub fn from_gguf(ct: &gguf_file::Content) -> Result<Self> {
        let arch = match ct.metadata.get("general.architecture") {
            Some(v) => v.to_string()?.clone(),
            None => return Err(Error::Model("GGUF has no general.architecture".into())),
        };
        if arch != "qwen2" && arch != "llama" {
            return Err(Error::Model(format!("architecture `{arch}` not supported (qwen2, llama are)")));
        }
        let get = |key: &str| {
            ct.metadata
                .get(&format!("{arch}.{key}"))
                .ok_or_else(|| Error::Model(format!("GGUF metadata has no `{arch}.{key}`")))
        };
        let n_head = get("attention.head_count")?.to_u32()? as usize;
        let hidden = get("embedding_length")?.to_u32()? as usize;
        Ok(Self {
            n_layer: get("block_count")?.to_u32()? as usize,
            n_head,
            n_kv_head: get("attention.head_count_kv")?.to_u32()? as usize,
            hidden,
            head_dim: hidden / n_head,
            context_length: get("context_length")?.to_u32()? as usize,
            rms_norm_eps: get("attention.layer_norm_rms_epsilon")?.to_f32()? as f64,
            rope_freq_base: get("rope.freq_base").and_then(|v| Ok(v.to_f32()?)).unwrap_or(10_000.),
            arch,
        })
    }

    /// Qwen2 rotates pairs (i, i + d/2) ("NEOX"); Llama GGUFs rotate pairs (2i, 2i + 1),
    /// because llama.cpp's converter permutes their q/k weights (see `quantized_llama.rs`).
    fn rope_is_neox(&self) -> bool {
        self.arch == "qwen2"
    }
}

/// The keys and values of one sequence for every layer: `(1, n_kv_head, len, head_dim)` each.
///
/// Cloning is cheap (tensors are reference-counted and never written in place), which is what
/// makes prefix snapshots free.
#[derive(Debug, Clone)]
pub struct KvCache {
    layers: Vec<Option<(Tensor, Tensor)>>,
    len: usize,
}

impl KvCache {
    /// An empty cache for a model with `n_layer` layers.
    pub fn new(n_layer: usize) -> Self {
        Self { layers: vec![None; n_layer], len: 0 }
    }

    /// Number of positions cached.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The first `len` positions, copied so the longer cache's memory can be freed.
    pub fn truncated(&self, len: usize) -> Result<Self> {
        if len > self.len {
            return Err(Error::Internal(format!("truncate KV cache of {} to {len}", self.len)));
        }
        let layers = self
            .layers
            .iter()
            .map(|kv| -> Result<Option<(Tensor, Tensor)>> {
                Ok(match kv {
                    Some((k, v)) if len > 0 => {
                        Some((k.narrow(2, 0, len)?.contiguous()?, v.narrow(2, 0, len)?.contiguous()?))
                    }
                    _ => None,
                })
            })
            .collect::<Result<_>>()?;
        Ok(Self { layers, len })
    }

    /// Bytes held by the cached tensors (f32).
    pub fn bytes(&self) -> usize {
        self.layers.iter().flatten().map(|(k, v)| 4 * (k.elem_count() + v.elem_count())).sum()
    }
}

/// One sequence's part of a batched forward: its cache and the tokens to append.
pub struct SequenceInput<'a> {
    pub cache: &'a mut KvCache,
    pub tokens: &'a [u32],
}

// https://github.com/huggingface/candle/blob/main/candle-transformers/src/models/quantized_qwen2.rs (Mlp)
#[derive(Debug, Clone)]
struct Mlp {
    ffn_gate: QMatMul,
    ffn_up: QMatMul,
    ffn_down: QMatMul,
}

impl Module for Mlp {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let gate = candle_nn::ops::silu(&self.ffn_gate.forward(xs)?)?;
        self.ffn_down.forward(&(gate * self.ffn_up.forward(xs)?)?)
    }
}

/// A linear layer with a quantized weight and an optional f32 bias (Qwen2 has q/k/v biases).
#[derive(Debug, Clone)]
struct QLinear {
    weight: QMatMul,
    bias: Option<Tensor>,
}

impl Module for QLinear {
    fn forward(&self, xs: &Tensor) -> candle_core::Result<Tensor> {
        let ys = self.weight.forward(xs)?;
        match &self.bias {
            Some(b) => ys.broadcast_add(b),
            None => Ok(ys),
        }
    }
}

// https://github.com/huggingface/candle/blob/main/candle-transformers/src/models/quantized_qwen2.rs (LayerWeights)
#[derive(Debug, Clone)]
struct Layer {
    attn_q: QLinear,
    attn_k: QLinear,
    attn_v: QLinear,
    attn_output: QMatMul,
    attn_norm: RmsNorm,
    mlp: Mlp,
    ffn_norm: RmsNorm,
}

/// The whole decoder. Holds only weights: all per-sequence state is in [`KvCache`].
#[derive(Debug, Clone)]
pub struct QuantizedDecoder {
    config: DecoderConfig,
    token_embd: Embedding,
    layers: Vec<Layer>,
    output_norm: RmsNorm,
    output: QMatMul,
    cos: Tensor,
    sin: Tensor,
    neg_inf: Tensor,
}

impl QuantizedDecoder {
    /// Load the weights of a `qwen2` or `llama` GGUF file; positions up to `max_positions`.
    pub fn from_gguf<R: std::io::Seek + std::io::Read>(
        ct: &gguf_file::Content,
        reader: &mut R,
        max_positions: usize,
        device: &Device,
    ) -> Result<Self> {
        let config = DecoderConfig::from_gguf(ct)?;
        let mut r = TensorReader { ct, reader, device };
        let eps = config.rms_norm_eps;
        let token_embd_q = r.required("token_embd.weight")?;
        let token_embd = Embedding::new(token_embd_q.dequantize(device)?, config.hidden);
        let output_norm = RmsNorm::from_qtensor(r.required("output_norm.weight")?, eps)?;
        // Tied embeddings when the file has no separate output matrix (SmolLM2, Qwen 0.5B).
        let output = QMatMul::from_qtensor(r.optional("output.weight")?.unwrap_or(token_embd_q))?;
        let mut layers = Vec::with_capacity(config.n_layer);
        for i in 0..config.n_layer {
            let p = format!("blk.{i}");
            let mut linear = |name: &str| -> Result<QLinear> {
                let weight = QMatMul::from_qtensor(r.required(&format!("{p}.{name}.weight"))?)?;
                // Qwen2 has q/k/v biases, Llama none.
                let bias = r.optional(&format!("{p}.{name}.bias"))?.map(|b| b.dequantize(device));
                Ok(QLinear { weight, bias: bias.transpose()? })
            };
            let (attn_q, attn_k, attn_v) = (linear("attn_q")?, linear("attn_k")?, linear("attn_v")?);
            let attn_output = linear("attn_output")?.weight;
            let mlp = Mlp {
                ffn_gate: linear("ffn_gate")?.weight,
                ffn_up: linear("ffn_up")?.weight,
                ffn_down: linear("ffn_down")?.weight,
            };
            let attn_norm = RmsNorm::from_qtensor(r.required(&format!("{p}.attn_norm.weight"))?, eps)?;
            let ffn_norm = RmsNorm::from_qtensor(r.required(&format!("{p}.ffn_norm.weight"))?, eps)?;
            layers.push(Layer { attn_q, attn_k, attn_v, attn_output, attn_norm, mlp, ffn_norm });
        }
        let (cos, sin) = rope_tables(config.head_dim, config.rope_freq_base, max_positions, device)?;
        let neg_inf = Tensor::new(f32::NEG_INFINITY, device)?;
        Ok(Self { config, token_embd, layers, output_norm, output, cos, sin, neg_inf })
    }

    pub fn config(&self) -> &DecoderConfig {
        &self.config
    }

    /// Longest sequence the RoPE tables cover.
    pub fn max_positions(&self) -> usize {
        self.cos.dim(0).unwrap_or(0)
    }

    /// An empty cache sized for this model.
    pub fn new_cache(&self) -> KvCache {
        KvCache::new(self.config.n_layer)
    }

    /// Append each input's tokens to its cache and return the logits after each input's last
    /// token: `(inputs.len(), vocab)`. Every input needs at least one token.
    pub fn forward(&self, inputs: &mut [SequenceInput<'_>]) -> Result<Tensor> {
        let device = self.cos.device();
        let mut ids = Vec::new();
        let mut spans = Vec::with_capacity(inputs.len()); // (offset, len, position)
        for input in inputs.iter() {
            if input.tokens.is_empty() {
                return Err(Error::Internal("forward of a sequence with no new tokens".into()));
            }
            let pos = input.cache.len();
            if pos + input.tokens.len() > self.max_positions() {
                return Err(Error::Internal(format!(
                    "sequence of {} tokens exceeds the {} positions",
                    pos + input.tokens.len(),
                    self.max_positions()
                )));
            }
            spans.push((ids.len(), input.tokens.len(), pos));
            ids.extend_from_slice(input.tokens);
        }
        let n = ids.len();
        let mut xs = self.token_embd.forward(&Tensor::from_vec(ids, n, device)?)?.unsqueeze(0)?;
        for (index, layer) in self.layers.iter().enumerate() {
            let h = layer.attn_norm.forward(&xs)?;
            let (q, k, v) = (layer.attn_q.forward(&h)?, layer.attn_k.forward(&h)?, layer.attn_v.forward(&h)?);
            let mut ys = Vec::with_capacity(inputs.len());
            for (input, &(offset, len, pos)) in inputs.iter_mut().zip(&spans) {
                let q = q.narrow(1, offset, len)?;
                let k = k.narrow(1, offset, len)?;
                let v = v.narrow(1, offset, len)?;
                let kv = &mut input.cache.layers[index];
                ys.push(self.attention(&q, &k, &v, kv, pos)?);
            }
            let attn = layer.attn_output.forward(&Tensor::cat(&ys, 1)?)?;
            let xs_mid = (attn + &xs)?;
            let mlp = layer.mlp.forward(&layer.ffn_norm.forward(&xs_mid)?)?;
            xs = (mlp + xs_mid)?;
        }
        for (input, &(_, len, pos)) in inputs.iter_mut().zip(&spans) {
            input.cache.len = pos + len;
        }
        let last: Vec<u32> = spans.iter().map(|&(offset, len, _)| (offset + len - 1) as u32).collect();
        let last = Tensor::from_vec(last, spans.len(), device)?;
        let xs = self.output_norm.forward(&xs.i(0)?.index_select(&last, 0)?)?;
        Ok(self.output.forward(&xs)?)
    }

    /// Causal self-attention of one sequence's new rows `(1, len, ·)` at positions
    /// `pos..pos + len`, appending their keys and values to `kv`.
    // https://github.com/huggingface/candle/blob/main/candle-transformers/src/models/quantized_llama.rs (forward_attn)
    fn attention(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        kv: &mut Option<(Tensor, Tensor)>,
        pos: usize,
    ) -> Result<Tensor> {
        let c = &self.config;
        let len = q.dim(1)?;
        let heads = |x: &Tensor, n: usize| x.reshape((1, len, n, c.head_dim))?.transpose(1, 2)?.contiguous();
        let q = self.rope(&heads(q, c.n_head)?, pos)?;
        let k = self.rope(&heads(k, c.n_kv_head)?, pos)?;
        let v = heads(v, c.n_kv_head)?;
        let (k, v) = match kv.take() {
            Some((k_cache, v_cache)) => (Tensor::cat(&[&k_cache, &k], 2)?, Tensor::cat(&[&v_cache, &v], 2)?),
            None => (k, v),
        };
        *kv = Some((k.clone(), v.clone()));
        let k = repeat_kv(k, c.n_head / c.n_kv_head)?;
        let v = repeat_kv(v, c.n_head / c.n_kv_head)?;
        let att = (q.matmul(&k.t()?)? / (c.head_dim as f64).sqrt())?;
        let att = if len > 1 {
            let mask = build_causal_mask(len, pos, q.device())?.broadcast_as(att.shape())?;
            mask.where_cond(&self.neg_inf.broadcast_as(att.shape())?, &att)?
        } else {
            att
        };
        let att = candle_nn::ops::softmax_last_dim(&att)?;
        let y = att.matmul(&v.contiguous()?)?;
        Ok(y.transpose(1, 2)?.reshape((1, len, c.hidden))?)
    }

    fn rope(&self, x: &Tensor, pos: usize) -> Result<Tensor> {
        let len = x.dim(2)?;
        let cos = self.cos.narrow(0, pos, len)?;
        let sin = self.sin.narrow(0, pos, len)?;
        Ok(if self.config.rope_is_neox() {
            candle_nn::rotary_emb::rope(x, &cos, &sin)?
        } else {
            candle_nn::rotary_emb::rope_i(x, &cos, &sin)?
        })
    }
}

/// Reads named tensors of a GGUF file, saying which one is missing or broken.
struct TensorReader<'a, R> {
    ct: &'a gguf_file::Content,
    reader: &'a mut R,
    device: &'a Device,
}

impl<R: std::io::Seek + std::io::Read> TensorReader<'_, R> {
    fn optional(&mut self, name: &str) -> Result<Option<QTensor>> {
        if !self.ct.tensor_infos.contains_key(name) {
            return Ok(None);
        }
        let t = self.ct.tensor(self.reader, name, self.device);
        Ok(Some(t.map_err(|e| Error::Model(format!("GGUF tensor `{name}`: {e}")))?))
    }

    fn required(&mut self, name: &str) -> Result<QTensor> {
        self.optional(name)?.ok_or_else(|| Error::Model(format!("GGUF has no tensor `{name}`")))
    }
}

/// cos/sin of the RoPE angles for positions `0..positions` (`precomput_freqs_cis` upstream).
fn rope_tables(head_dim: usize, base: f32, positions: usize, device: &Device) -> Result<(Tensor, Tensor)> {
    let theta: Vec<f32> = (0..head_dim).step_by(2).map(|i| 1f32 / base.powf(i as f32 / head_dim as f32)).collect();
    let theta = Tensor::new(theta.as_slice(), device)?;
    let angles = Tensor::arange(0, positions as u32, device)?
        .to_dtype(DType::F32)?
        .reshape((positions, 1))?
        .matmul(&theta.reshape((1, ()))?)?;
    Ok((angles.cos()?, angles.sin()?))
}

/// Index of the largest logit in each row of `(n, vocab)` logits (greedy decoding).
pub fn argmax_rows(logits: &Tensor) -> Result<Vec<u32>> {
    Ok(logits.argmax(D::Minus1)?.to_vec1()?)
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const SMOLLM: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/models/SmolLM2-135M-Instruct.Q4_1.gguf");

    fn load() -> (QuantizedDecoder, candle_transformers::models::quantized_llama::ModelWeights) {
        let mut file = std::fs::File::open(SMOLLM).expect("run `make models` first");
        let ct = gguf_file::Content::read(&mut file).unwrap();
        let ours = QuantizedDecoder::from_gguf(&ct, &mut file, 512, &Device::Cpu).unwrap();
        std::io::Seek::rewind(&mut file).unwrap();
        let ct2 = gguf_file::Content::read(&mut file).unwrap();
        let upstream =
            candle_transformers::models::quantized_llama::ModelWeights::from_gguf(ct2, &mut file, &Device::Cpu)
                .unwrap();
        (ours, upstream)
    }

    fn max_abs_diff(a: &Tensor, b: &Tensor) -> f32 {
        (a - b).unwrap().abs().unwrap().flatten_all().unwrap().max(0).unwrap().to_scalar().unwrap()
    }

    /// Prefill, one decode step, and the same two sequences batched together all match
    /// candle's `quantized_llama` run one sequence at a time.
    #[test]
    fn port_matches_candle_quantized_llama_batched() {
        let (ours, mut upstream) = load();
        let a: Vec<u32> = vec![1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 30];
        let b: Vec<u32> = vec![1, 4093, 198, 19556, 2, 3];
        let mut reference = Vec::new();
        for prompt in [&a, &b] {
            upstream.clear_kv_cache();
            let x = Tensor::new(prompt.as_slice(), &Device::Cpu).unwrap().unsqueeze(0).unwrap();
            let prefill = upstream.forward(&x, 0).unwrap().squeeze(0).unwrap();
            let x = Tensor::new(&[42u32], &Device::Cpu).unwrap().unsqueeze(0).unwrap();
            let step = upstream.forward(&x, prompt.len()).unwrap().squeeze(0).unwrap();
            reference.push((prefill, step));
        }
        let (mut ca, mut cb) = (ours.new_cache(), ours.new_cache());
        let prefill = ours
            .forward(&mut [SequenceInput { cache: &mut ca, tokens: &a }, SequenceInput { cache: &mut cb, tokens: &b }])
            .unwrap();
        let step = ours
            .forward(&mut [
                SequenceInput { cache: &mut ca, tokens: &[42] },
                SequenceInput { cache: &mut cb, tokens: &[42] },
            ])
            .unwrap();
        for (i, (ref_prefill, ref_step)) in reference.iter().enumerate() {
            assert!(max_abs_diff(&prefill.i(i).unwrap(), ref_prefill) < 1e-3, "prefill {i}");
            assert!(max_abs_diff(&step.i(i).unwrap(), ref_step) < 1e-3, "step {i}");
        }
        assert_eq!((ca.len(), cb.len()), (a.len() + 1, b.len() + 1));
    }

    /// A cache snapshot truncated to a prefix continues exactly like a fresh prefill.
    #[test]
    fn truncated_cache_continues_like_fresh_prefill() {
        let (ours, _) = load();
        let prompt: Vec<u32> = vec![1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 30];
        let mut full = ours.new_cache();
        let fresh = ours.forward(&mut [SequenceInput { cache: &mut full, tokens: &prompt }]).unwrap();
        let mut prefix = full.truncated(6).unwrap();
        let reused = ours.forward(&mut [SequenceInput { cache: &mut prefix, tokens: &prompt[6..] }]).unwrap();
        assert!(max_abs_diff(&fresh, &reused) < 1e-3);
        assert_eq!(argmax_rows(&fresh).unwrap(), argmax_rows(&reused).unwrap());
    }
}
