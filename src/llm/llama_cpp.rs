//! The teacher's forward pass on llama.cpp (the `llama-cpp-2` binding, built from its vendored
//! sources). Tokenization, sampling, stop conditions and grounded decoding stay in Rust; only
//! "append these tokens to these sequences and give me the logits" crosses the FFI.
//!
//! Why not candle: on 2 cores candle's quantized kernels ran the 1.5B teacher at 0.4× llama.cpp
//! in prefill and in batch-1 decode, and 0.48× in labeled sentences per hour end to end (README,
//! "Teacher speed"). The teacher's throughput sets how many silver labels the student gets.
//!
//! KV memory: one llama.cpp context holds every sequence in a *unified* KV cache, where a cell
//! can belong to several sequence ids. A [`KvCache`] is a handle on one sequence id plus the
//! number of positions it covers; cloning a handle shares the id. A sequence that must grow
//! while its id is shared (a prefix-cache snapshot and the requests started from it) first
//! gets a fresh id by `seq_cp`, which shares the prefix's cells instead of copying them, so a
//! snapshot is free in time and memory. Ids whose last handle is dropped are recycled.

use std::num::NonZeroU32;
use std::path::Path;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use llama_cpp_2::context::LlamaContext;
use llama_cpp_2::context::params::LlamaContextParams;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_2::llama_batch::LlamaBatch;
use llama_cpp_2::model::LlamaModel;
use llama_cpp_2::model::params::LlamaModelParams;
use llama_cpp_2::token::LlamaToken;

use crate::{Error, Result};

/// Sequence ids per context: the running batch, prefix snapshots and in-flight copies.
pub const MAX_SEQUENCES: usize = 64;

/// How the context is sized.
#[derive(Debug, Clone, PartialEq)]
pub struct DecoderParams {
    /// Longest prompt + reply of one sequence (capped by the model's training context).
    pub context_length: usize,
    /// KV cells shared by all sequences (at least `context_length`).
    pub kv_cells: usize,
    /// CPU threads for llama.cpp.
    pub threads: usize,
    /// Layers offloaded to the GPU (0: none); needs a build with the `cuda` or `metal` feature.
    pub gpu_layers: u32,
}

/// llama.cpp's process-wide initialisation (it refuses a second one).
fn backend() -> Result<&'static LlamaBackend> {
    static BACKEND: OnceLock<std::result::Result<LlamaBackend, String>> = OnceLock::new();
    BACKEND
        .get_or_init(|| {
            // llama.cpp logs every tensor at load; route it to tracing (`BIODISTILL_LOG=llama-cpp-2=info`).
            llama_cpp_2::send_logs_to_tracing(llama_cpp_2::LogOptions::default());
            LlamaBackend::init().map_err(|e| e.to_string())
        })
        .as_ref()
        .map_err(|e| Error::Model(format!("cannot initialise llama.cpp: {e}")))
}

/// Sequence ids not in use, and ids whose last handle was dropped (cleared before reuse).
#[derive(Debug, Default)]
struct IdPool {
    free: Vec<i32>,
    released: Vec<i32>,
}

/// One llama.cpp sequence id; returns to the pool when the last [`KvCache`] on it is dropped.
#[derive(Debug)]
struct SeqId {
    id: i32,
    /// Positions actually stored under this id (a handle may cover fewer).
    filled: AtomicUsize,
    pool: Arc<Mutex<IdPool>>,
}

impl Drop for SeqId {
    fn drop(&mut self) {
        if let Ok(mut pool) = self.pool.lock() {
            pool.released.push(self.id);
        }
    }
}

/// The keys and values of one sequence's first [`KvCache::len`] positions. Cheap to clone;
/// see the module docs.
#[derive(Debug, Clone)]
pub struct KvCache {
    seq: Option<Arc<SeqId>>,
    len: usize,
    bytes_per_token: usize,
}

impl KvCache {
    /// Number of positions cached.
    pub fn len(&self) -> usize {
        self.len
    }

    pub fn is_empty(&self) -> bool {
        self.len == 0
    }

    /// The first `len` positions (shares the cells; nothing is copied).
    pub fn truncated(&self, len: usize) -> Result<Self> {
        if len > self.len {
            return Err(Error::Internal(format!("truncate KV cache of {} to {len}", self.len)));
        }
        Ok(Self { seq: if len == 0 { None } else { self.seq.clone() }, len, ..*self })
    }

    /// Size of these positions' keys and values (f16), for the prefix cache's budget.
    pub fn bytes(&self) -> usize {
        self.len * self.bytes_per_token
    }

    /// A cache of `len` positions on no sequence id (for tests of code that only counts).
    #[cfg(test)]
    pub(crate) fn detached(len: usize, bytes_per_token: usize) -> Self {
        Self { seq: None, len, bytes_per_token }
    }
}

/// One sequence's part of a batched forward: its cache and the tokens to append.
pub struct SequenceInput<'a> {
    pub cache: &'a mut KvCache,
    pub tokens: &'a [u32],
}

/// A GGUF model and one llama.cpp context over it.
pub struct LlamaDecoder {
    // Field order matters: the context borrows the model and must drop first.
    context: LlamaContext<'static>,
    _model: Box<LlamaModel>,
    pool: Arc<Mutex<IdPool>>,
    batch: LlamaBatch<'static>,
    n_batch: usize,
    vocab: usize,
    context_length: usize,
    bytes_per_token: usize,
}

impl LlamaDecoder {
    /// Load `path` (any architecture llama.cpp knows; the project tests qwen2 and llama).
    pub fn load(path: &Path, params: &DecoderParams) -> Result<Self> {
        let backend = backend()?;
        if params.gpu_layers > 0 && !backend.supports_gpu_offload() {
            return Err(Error::Config(format!(
                "serve.gpu_layers = {}: this build of llama.cpp has no GPU backend; build with \
                 `cargo build --release --features cuda` (NVIDIA, needs nvcc) or `--features metal` \
                 (Apple), or set gpu_layers = 0",
                params.gpu_layers
            )));
        }
        let model_params = LlamaModelParams::default().with_n_gpu_layers(params.gpu_layers);
        let model = LlamaModel::load_from_file(backend, path, &model_params)
            .map_err(|e| Error::Model(format!("llama.cpp cannot load the model: {e}")))?;
        let model = Box::new(model);
        let context_length = params.context_length.min(model.n_ctx_train() as usize).max(1);
        let kv_cells = params.kv_cells.max(context_length);
        let n_batch = context_length;
        let threads = params.threads.max(1) as i32;
        let ctx_params = LlamaContextParams::default()
            .with_n_ctx(NonZeroU32::new(kv_cells as u32))
            .with_n_batch(n_batch as u32)
            .with_n_ubatch(n_batch.min(512) as u32)
            .with_n_seq_max(MAX_SEQUENCES as u32)
            .with_kv_unified(true)
            .with_n_threads(threads)
            .with_n_threads_batch(threads);
        // SAFETY: the model is boxed (its address never changes) and is dropped after the
        // context (field order above), so the context never outlives what it borrows.
        let model_ref: &'static LlamaModel = unsafe { &*(model.as_ref() as *const LlamaModel) };
        let context = model_ref
            .new_context(backend, ctx_params)
            .map_err(|e| Error::Model(format!("llama.cpp cannot create a context of {kv_cells} cells: {e}")))?;
        let (n_layer, n_kv) = (model.n_layer() as usize, model.n_head_kv() as usize);
        let head_dim = model.n_embd() as usize / (model.n_head() as usize).max(1);
        let pool = IdPool { free: (0..MAX_SEQUENCES as i32).rev().collect(), released: Vec::new() };
        Ok(Self {
            context,
            vocab: model.n_vocab() as usize,
            _model: model,
            pool: Arc::new(Mutex::new(pool)),
            batch: LlamaBatch::new(n_batch, MAX_SEQUENCES as i32),
            n_batch,
            context_length,
            // keys + values, f16, every layer.
            bytes_per_token: 2 * 2 * n_layer * n_kv * head_dim,
        })
    }

    /// Longest prompt + reply of one sequence.
    pub fn context_length(&self) -> usize {
        self.context_length
    }

    /// An empty cache.
    pub fn new_cache(&self) -> KvCache {
        KvCache { seq: None, len: 0, bytes_per_token: self.bytes_per_token }
    }

    /// Append each input's tokens to its cache and return the logits after each input's last
    /// token, one row of `vocab` floats per input. Every input needs at least one token.
    pub fn forward(&mut self, inputs: &mut [SequenceInput<'_>]) -> Result<Vec<Vec<f32>>> {
        let outputs = vec![1; inputs.len()];
        let rows = self.forward_rows(inputs, &outputs)?;
        Ok(rows.into_iter().map(|mut r| r.pop().expect("one row per input")).collect())
    }

    /// Like [`LlamaDecoder::forward`], with the logits after each of input `i`'s last
    /// `outputs[i]` tokens (at least 1, at most all): rows in token order, per input. Drafted
    /// tokens are checked this way, every one against the row before it, in one pass.
    pub fn forward_rows(&mut self, inputs: &mut [SequenceInput<'_>], outputs: &[usize]) -> Result<Vec<Vec<Vec<f32>>>> {
        if outputs.len() != inputs.len() {
            return Err(Error::Internal(format!("{} outputs for {} inputs", outputs.len(), inputs.len())));
        }
        self.recycle_ids()?;
        for input in inputs.iter_mut() {
            if input.tokens.is_empty() {
                return Err(Error::Internal("forward of a sequence with no new tokens".into()));
            }
            if input.cache.len + input.tokens.len() > self.context_length {
                return Err(Error::PromptTooLong {
                    prompt_tokens: input.cache.len + input.tokens.len(),
                    context_length: self.context_length,
                });
            }
            self.make_writable(input.cache)?;
        }
        // Whole sequences per llama_decode call, as many as fit in one batch of `n_batch`.
        let mut rows = vec![Vec::new(); inputs.len()];
        let mut start = 0;
        while start < inputs.len() {
            let (mut end, mut tokens) = (start, 0);
            while end < inputs.len() && (end == start || tokens + inputs[end].tokens.len() <= self.n_batch) {
                tokens += inputs[end].tokens.len();
                end += 1;
            }
            self.decode(&mut inputs[start..end], &outputs[start..end], &mut rows[start..end])?;
            start = end;
        }
        Ok(rows)
    }

    fn decode(
        &mut self,
        inputs: &mut [SequenceInput<'_>],
        outputs: &[usize],
        rows: &mut [Vec<Vec<f32>>],
    ) -> Result<()> {
        self.batch.clear();
        // Per input: the batch index of its first row of logits and how many rows.
        let mut first = Vec::with_capacity(inputs.len());
        for (input, &outputs) in inputs.iter().zip(outputs) {
            let seq = input.cache.seq.as_ref().expect("made writable above");
            let n = input.tokens.len();
            let from = n - outputs.clamp(1, n);
            for (i, &token) in input.tokens.iter().enumerate() {
                let pos = (input.cache.len + i) as i32;
                self.batch
                    .add(LlamaToken::new(token as i32), pos, &[seq.id], i >= from)
                    .map_err(|e| Error::Internal(format!("llama.cpp batch: {e}")))?;
            }
            first.push((self.batch.n_tokens() - (n - from) as i32, n - from));
        }
        self.context.decode(&mut self.batch).map_err(|e| Error::Model(format!("llama.cpp decode failed: {e}")))?;
        for ((input, out), (index, count)) in inputs.iter_mut().zip(rows.iter_mut()).zip(first) {
            *out = (0..count as i32)
                .map(|k| {
                    let logits = self.context.get_logits_ith(index + k);
                    debug_assert_eq!(logits.len(), self.vocab);
                    logits.to_vec()
                })
                .collect();
            input.cache.len += input.tokens.len();
            let seq = input.cache.seq.as_ref().expect("made writable above");
            seq.filled.store(input.cache.len, Ordering::Relaxed);
        }
        Ok(())
    }

    /// Give `cache` a sequence id it alone may append to: positions past `len` are removed,
    /// and a shared id is first copied (cells shared, not duplicated) to a fresh one.
    fn make_writable(&mut self, cache: &mut KvCache) -> Result<()> {
        let exclusive = match &cache.seq {
            Some(seq) => Arc::strong_count(seq) == 1,
            None => {
                cache.seq = Some(self.allocate()?);
                true
            }
        };
        let seq = cache.seq.clone().expect("set above");
        if !exclusive {
            let fresh = self.allocate()?;
            self.context
                .copy_kv_cache_seq(seq.id, fresh.id, Some(0), Some(cache.len as u32))
                .map_err(|e| Error::Internal(format!("llama.cpp seq_cp: {e}")))?;
            fresh.filled.store(cache.len, Ordering::Relaxed);
            cache.seq = Some(fresh);
            return Ok(());
        }
        if seq.filled.load(Ordering::Relaxed) > cache.len {
            self.context
                .clear_kv_cache_seq(Some(seq.id as u32), Some(cache.len as u32), None)
                .map_err(|e| Error::Internal(format!("llama.cpp seq_rm: {e}")))?;
            seq.filled.store(cache.len, Ordering::Relaxed);
        }
        Ok(())
    }

    fn allocate(&mut self) -> Result<Arc<SeqId>> {
        self.recycle_ids()?;
        let id = self.pool.lock().map_err(poisoned)?.free.pop().ok_or_else(|| {
            Error::Internal(format!("all {MAX_SEQUENCES} KV sequence ids are in use (batch + prefix cache too large)"))
        })?;
        Ok(Arc::new(SeqId { id, filled: AtomicUsize::new(0), pool: self.pool.clone() }))
    }

    /// Clear the cells of ids whose handles are gone and make the ids available again.
    fn recycle_ids(&mut self) -> Result<()> {
        let released = std::mem::take(&mut self.pool.lock().map_err(poisoned)?.released);
        for &id in &released {
            self.context
                .clear_kv_cache_seq(Some(id as u32), None, None)
                .map_err(|e| Error::Internal(format!("llama.cpp seq_rm: {e}")))?;
        }
        self.pool.lock().map_err(poisoned)?.free.extend(released);
        Ok(())
    }
}

fn poisoned<T>(_: std::sync::PoisonError<T>) -> Error {
    Error::Internal("KV id pool lock poisoned".into())
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) const SMOLLM: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/models/SmolLM2-135M-Instruct.Q4_1.gguf");

    fn load() -> LlamaDecoder {
        let params = DecoderParams { context_length: 256, kv_cells: 1024, threads: 2, gpu_layers: 0 };
        LlamaDecoder::load(Path::new(SMOLLM), &params).expect("run `make models-test` first")
    }

    #[cfg(not(any(feature = "cuda", feature = "metal")))]
    #[test]
    fn gpu_layers_without_a_gpu_build_say_which_build_has_them() {
        let params = DecoderParams { context_length: 256, kv_cells: 1024, threads: 2, gpu_layers: 8 };
        let err = LlamaDecoder::load(Path::new(SMOLLM), &params).err().expect("a CPU build offloads nothing");
        assert!(matches!(err, Error::Config(_)), "{err}");
        assert!(err.to_string().contains("--features cuda") && err.to_string().contains("gpu_layers = 8"), "{err}");
    }

    fn argmax(row: &[f32]) -> usize {
        (0..row.len()).max_by(|&a, &b| row[a].total_cmp(&row[b])).unwrap()
    }

    fn close(a: &[f32], b: &[f32]) -> bool {
        a.iter().zip(b).all(|(x, y)| (x - y).abs() < 0.05) && argmax(a) == argmax(b)
    }

    const A: [u32; 10] = [1, 9690, 198, 2683, 359, 253, 5356, 5646, 11173, 30];
    const B: [u32; 6] = [1, 4093, 198, 19556, 2, 3];

    /// Two sequences batched together give the logits each gives alone, prefill and decode.
    #[test]
    fn batched_forward_matches_one_at_a_time() {
        let mut decoder = load();
        let mut alone = Vec::new();
        for prompt in [&A[..], &B[..]] {
            let mut cache = decoder.new_cache();
            let prefill = decoder.forward(&mut [SequenceInput { cache: &mut cache, tokens: prompt }]).unwrap();
            let step = decoder.forward(&mut [SequenceInput { cache: &mut cache, tokens: &[42] }]).unwrap();
            alone.push((prefill.into_iter().next().unwrap(), step.into_iter().next().unwrap()));
        }
        let (mut ca, mut cb) = (decoder.new_cache(), decoder.new_cache());
        let prefill = decoder
            .forward(&mut [SequenceInput { cache: &mut ca, tokens: &A }, SequenceInput { cache: &mut cb, tokens: &B }])
            .unwrap();
        let step = decoder
            .forward(&mut [
                SequenceInput { cache: &mut ca, tokens: &[42] },
                SequenceInput { cache: &mut cb, tokens: &[42] },
            ])
            .unwrap();
        for (i, (p, s)) in alone.iter().enumerate() {
            assert!(close(&prefill[i], p), "prefill {i}");
            assert!(close(&step[i], s), "step {i}");
        }
        assert_eq!((ca.len(), cb.len()), (A.len() + 1, B.len() + 1));
    }

    /// A truncated snapshot shared by two continuations: each continues exactly like a fresh
    /// prefill, and neither disturbs the other or the snapshot.
    #[test]
    fn shared_snapshots_continue_like_fresh_prefill() {
        let mut decoder = load();
        let mut full = decoder.new_cache();
        let fresh = decoder.forward(&mut [SequenceInput { cache: &mut full, tokens: &A }]).unwrap();
        let prefix = full.truncated(6).unwrap();
        drop(full);
        let (mut x, mut y) = (prefix.clone(), prefix.clone());
        let rx = decoder.forward(&mut [SequenceInput { cache: &mut x, tokens: &A[6..] }]).unwrap();
        let ry = decoder.forward(&mut [SequenceInput { cache: &mut y, tokens: &B[1..] }]).unwrap();
        assert!(close(&rx[0], &fresh[0]));
        let mut z = decoder.new_cache();
        let expected = [&A[..6], &B[1..]].concat();
        let rz = decoder.forward(&mut [SequenceInput { cache: &mut z, tokens: &expected }]).unwrap();
        assert!(close(&ry[0], &rz[0]));
        assert_eq!(prefix.len(), 6);
    }

    /// Rows after every fed token (a drafted run) are the logits single steps give, next to
    /// another input that asks for its last row only.
    #[test]
    fn rows_after_every_token_match_single_steps() {
        let mut decoder = load();
        let mut stepped = decoder.new_cache();
        decoder.forward(&mut [SequenceInput { cache: &mut stepped, tokens: &A[..6] }]).unwrap();
        let steps: Vec<Vec<f32>> = A[6..]
            .iter()
            .map(|&t| decoder.forward(&mut [SequenceInput { cache: &mut stepped, tokens: &[t] }]).unwrap().remove(0))
            .collect();
        let (mut run, mut other) = (decoder.new_cache(), decoder.new_cache());
        decoder.forward(&mut [SequenceInput { cache: &mut run, tokens: &A[..5] }]).unwrap();
        let rows = decoder
            .forward_rows(
                &mut [
                    SequenceInput { cache: &mut run, tokens: &A[5..] },
                    SequenceInput { cache: &mut other, tokens: &B },
                ],
                &[steps.len(), 1],
            )
            .unwrap();
        assert_eq!((rows[0].len(), rows[1].len(), run.len()), (steps.len(), 1, A.len()));
        for (i, (row, step)) in rows[0].iter().zip(&steps).enumerate() {
            assert!(close(row, step), "row {i}");
        }
    }

    /// Dropped caches give their ids back: far more sequences than ids can come and go.
    #[test]
    fn sequence_ids_are_recycled() {
        let mut decoder = load();
        for _ in 0..2 * MAX_SEQUENCES {
            let mut cache = decoder.new_cache();
            decoder.forward(&mut [SequenceInput { cache: &mut cache, tokens: &B }]).unwrap();
        }
        let mut long = decoder.new_cache();
        let too_long = vec![3u32; 300];
        assert!(matches!(
            decoder.forward(&mut [SequenceInput { cache: &mut long, tokens: &too_long }]),
            Err(Error::PromptTooLong { .. })
        ));
    }
}
