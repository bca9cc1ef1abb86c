//! The teacher's forward pass on llama.cpp (built from `llama-cpp-sys-2`'s vendored sources,
//! called through its raw bindings: `llama-cpp-2`'s safe wrapper has no way to set the eval
//! callback that stops a forward before the output layer). Tokenization, sampling, stop
//! conditions and grounded decoding stay in Rust; only "append these tokens to these sequences
//! and give me the logits (or the hidden states)" crosses the FFI.
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

use std::ffi::{CStr, CString, c_void};
use std::path::Path;
use std::ptr::NonNull;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use candle_core::quantized::gguf_file;
use llama_cpp_2::llama_backend::LlamaBackend;
use llama_cpp_sys_2 as sys;

use super::output_head::{Logits, OutputHead};
use crate::error::IoContext;
use crate::{Error, Result};

/// Sequence ids per context: the running batch, prefix snapshots and in-flight copies.
pub const MAX_SEQUENCES: usize = 64;

/// The graph node holding the final hidden states (the output layer's input), as llama.cpp's
/// model builders name it.
const HIDDEN_NODE: &[u8] = b"result_norm";

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

/// What llama.cpp's eval callback shares with [`LlamaDecoder::decode`]: whether this forward
/// stops at the hidden states, and the rows it copied (every ubatch's, in batch order).
#[derive(Debug, Default)]
struct Capture {
    wanted: bool,
    width: usize,
    rows: Vec<f32>,
    /// The node was not the expected `[width, n]` f32 matrix: the graph ran to the end.
    mismatch: bool,
}

/// llama.cpp's `cb_eval`: asked before each node whether we want its data (`ask`), then
/// called with the data of the nodes we wanted; returning `false` there stops the graph. We
/// want the hidden states only, and stop right after them: what follows is the output layer.
/// Must not unwind (C calls it).
unsafe extern "C" fn capture_hidden(t: *mut sys::ggml_tensor, ask: bool, user_data: *mut c_void) -> bool {
    // SAFETY: `user_data` is the decoder's boxed `Capture`, alive as long as the context and
    // not otherwise touched during `llama_decode`; `t` is a live node of the graph.
    let (capture, tensor) = unsafe { (&mut *user_data.cast::<Capture>(), &*t) };
    if !capture.wanted {
        return false;
    }
    // SAFETY: ggml node names are NUL-terminated within their 64 bytes.
    let hidden = unsafe { CStr::from_ptr(tensor.name.as_ptr()) }.to_bytes() == HIDDEN_NODE;
    if ask || !hidden {
        return hidden;
    }
    let [width, rows, d2, d3] = tensor.ne;
    let contiguous = tensor.nb[1] == tensor.nb[0] * width as usize && tensor.nb[0] == 4;
    if tensor.type_ != sys::GGML_TYPE_F32 || width as usize != capture.width || d2 != 1 || d3 != 1 || !contiguous {
        capture.mismatch = true;
        return true;
    }
    let n = width as usize * rows as usize;
    let at = capture.rows.len();
    capture.rows.resize(at + n, 0.0);
    // SAFETY: the destination holds `n` floats; the node is an f32 matrix of `n` elements.
    unsafe { sys::ggml_backend_tensor_get(t, capture.rows[at..].as_mut_ptr().cast(), 0, n * 4) };
    false
}

/// The loaded model, freed on drop.
struct Model(NonNull<sys::llama_model>);

impl Drop for Model {
    fn drop(&mut self) {
        // SAFETY: loaded by `llama_model_load_from_file`, freed once, after the context.
        unsafe { sys::llama_model_free(self.0.as_ptr()) }
    }
}

/// A context and the callback state it points to, freed in that order on drop.
struct Context {
    ctx: NonNull<sys::llama_context>,
    capture: NonNull<Capture>,
}

impl Drop for Context {
    fn drop(&mut self) {
        // SAFETY: created by `llama_init_from_model` / `Box::into_raw`; each freed once, the
        // context first because it holds the callback's pointer.
        unsafe {
            sys::llama_free(self.ctx.as_ptr());
            drop(Box::from_raw(self.capture.as_ptr()));
        }
    }
}

/// A token batch allocated by llama.cpp for `capacity` tokens of one sequence id each.
struct Batch {
    raw: sys::llama_batch,
    capacity: usize,
}

impl Batch {
    fn new(capacity: usize) -> Self {
        // SAFETY: plain allocation; freed in `drop`.
        Self { raw: unsafe { sys::llama_batch_init(capacity as i32, 0, 1) }, capacity }
    }

    fn clear(&mut self) {
        self.raw.n_tokens = 0;
    }

    fn len(&self) -> usize {
        self.raw.n_tokens as usize
    }

    fn add(&mut self, token: u32, pos: usize, seq: i32, output: bool) -> Result<()> {
        let i = self.len();
        if i >= self.capacity {
            return Err(Error::Internal(format!("llama.cpp batch of {} tokens is full", self.capacity)));
        }
        // SAFETY: `i` is below the capacity the arrays were allocated for, and each token has
        // room for one sequence id.
        unsafe {
            *self.raw.token.add(i) = token as i32;
            *self.raw.pos.add(i) = pos as i32;
            *self.raw.n_seq_id.add(i) = 1;
            **self.raw.seq_id.add(i) = seq;
            *self.raw.logits.add(i) = i8::from(output);
        }
        self.raw.n_tokens += 1;
        Ok(())
    }
}

impl Drop for Batch {
    fn drop(&mut self) {
        // SAFETY: allocated by `llama_batch_init`, freed once.
        unsafe { sys::llama_batch_free(self.raw) }
    }
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
    // Field order matters: the context uses the model and must drop first.
    context: Context,
    _model: Model,
    pool: Arc<Mutex<IdPool>>,
    batch: Batch,
    n_batch: usize,
    vocab: usize,
    /// The output layer for chosen tokens; `None` where the model's logits need more than
    /// that product or the layers run on a GPU (where skipping it saves little).
    head: Option<Arc<OutputHead>>,
    context_length: usize,
    bytes_per_token: usize,
}

// SAFETY: llama.cpp's model and context are not tied to the thread that made them; the
// decoder is used through `&mut self` only (the server moves it to its model thread).
unsafe impl Send for LlamaDecoder {}

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
        let c_path = path
            .to_str()
            .and_then(|p| CString::new(p).ok())
            .ok_or_else(|| Error::Model(format!("{}: not a path llama.cpp can open", path.display())))?;
        // SAFETY: default parameters, then a NUL-terminated path; a null result is an error.
        let model = unsafe {
            let mut model_params = sys::llama_model_default_params();
            model_params.n_gpu_layers = params.gpu_layers as i32;
            sys::llama_model_load_from_file(c_path.as_ptr(), model_params)
        };
        let model = Model(NonNull::new(model).ok_or_else(|| Error::Model("llama.cpp cannot load the model".into()))?);
        let m = model.0.as_ptr();
        // SAFETY: `m` is a loaded model.
        let (n_ctx_train, n_layer, n_head, n_kv, n_embd, vocab) = unsafe {
            (
                sys::llama_model_n_ctx_train(m),
                sys::llama_model_n_layer(m),
                sys::llama_model_n_head(m),
                sys::llama_model_n_head_kv(m),
                sys::llama_model_n_embd(m),
                sys::llama_vocab_n_tokens(sys::llama_model_get_vocab(m)),
            )
        };
        let (n_embd, vocab) = (n_embd as usize, vocab as usize);
        let head = if params.gpu_layers == 0 {
            let mut file = std::fs::File::open(path).with_path(path)?;
            let content = gguf_file::Content::read(&mut file)
                .map_err(|e| Error::Model(format!("{}: not a GGUF file: {e}", path.display())))?;
            OutputHead::load(path, &content, vocab, n_embd)?.map(Arc::new)
        } else {
            None
        };
        let context_length = params.context_length.min(n_ctx_train as usize).max(1);
        let kv_cells = params.kv_cells.max(context_length);
        let n_batch = context_length;
        let threads = params.threads.max(1) as i32;
        let capture = NonNull::from(Box::leak(Box::new(Capture { width: n_embd, ..Capture::default() })));
        // SAFETY: default parameters with our sizes; the callback's state outlives the
        // context (`Context` frees it after the context).
        let ctx = unsafe {
            let mut c = sys::llama_context_default_params();
            c.n_ctx = kv_cells as u32;
            c.n_batch = n_batch as u32;
            c.n_ubatch = n_batch.min(512) as u32;
            c.n_seq_max = MAX_SEQUENCES as u32;
            c.kv_unified = true;
            c.n_threads = threads;
            c.n_threads_batch = threads;
            if head.is_some() {
                c.cb_eval = Some(capture_hidden);
                c.cb_eval_user_data = capture.as_ptr().cast();
            }
            sys::llama_init_from_model(m, c)
        };
        let Some(ctx) = NonNull::new(ctx) else {
            // SAFETY: leaked above, never shared (no context was made).
            drop(unsafe { Box::from_raw(capture.as_ptr()) });
            return Err(Error::Model(format!("llama.cpp cannot create a context of {kv_cells} cells")));
        };
        let head_dim = n_embd / (n_head as usize).max(1);
        let pool = IdPool { free: (0..MAX_SEQUENCES as i32).rev().collect(), released: Vec::new() };
        Ok(Self {
            context: Context { ctx, capture },
            _model: model,
            pool: Arc::new(Mutex::new(pool)),
            batch: Batch::new(n_batch),
            n_batch,
            vocab,
            head,
            context_length,
            // keys + values, f16, every layer.
            bytes_per_token: 2 * 2 * n_layer as usize * n_kv as usize * head_dim,
        })
    }

    /// Longest prompt + reply of one sequence.
    pub fn context_length(&self) -> usize {
        self.context_length
    }

    /// Whether forwards can return hidden states instead of full rows of logits.
    pub fn has_head(&self) -> bool {
        self.head.is_some()
    }

    /// An empty cache.
    pub fn new_cache(&self) -> KvCache {
        KvCache { seq: None, len: 0, bytes_per_token: self.bytes_per_token }
    }

    /// Append each input's tokens to its cache and return the logits after each input's last
    /// token, one row of `vocab` floats per input. Every input needs at least one token.
    pub fn forward(&mut self, inputs: &mut [SequenceInput<'_>]) -> Result<Vec<Vec<f32>>> {
        let outputs = vec![1; inputs.len()];
        let rows = self.forward_rows(inputs, &outputs, false)?;
        Ok(rows.into_iter().map(|mut r| r.pop().and_then(Logits::full).expect("one full row per input")).collect())
    }

    /// Like [`LlamaDecoder::forward`], with the logits after each of input `i`'s last
    /// `outputs[i]` tokens (at least 1, at most all): rows in token order, per input. Drafted
    /// tokens are checked this way, every one against the row before it, in one pass. With
    /// `hidden` (and a model [`LlamaDecoder::has_head`]), the rows are final hidden states and
    /// llama.cpp skips its output layer.
    pub fn forward_rows(
        &mut self,
        inputs: &mut [SequenceInput<'_>],
        outputs: &[usize],
        hidden: bool,
    ) -> Result<Vec<Vec<Logits>>> {
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
            self.decode(&mut inputs[start..end], &outputs[start..end], hidden, &mut rows[start..end])?;
            start = end;
        }
        Ok(rows)
    }

    fn decode(
        &mut self,
        inputs: &mut [SequenceInput<'_>],
        outputs: &[usize],
        hidden: bool,
        rows: &mut [Vec<Logits>],
    ) -> Result<()> {
        self.batch.clear();
        // Per input: the batch index of its first row of logits and how many rows.
        let mut first = Vec::with_capacity(inputs.len());
        for (input, &outputs) in inputs.iter().zip(outputs) {
            let seq = input.cache.seq.as_ref().expect("made writable above");
            let n = input.tokens.len();
            let from = n - outputs.clamp(1, n);
            for (i, &token) in input.tokens.iter().enumerate() {
                self.batch.add(token, input.cache.len + i, seq.id, i >= from)?;
            }
            first.push((self.batch.len() - (n - from), n - from));
        }
        let head = self.head.clone().filter(|_| hidden);
        let capture = self.capture();
        (capture.wanted, capture.mismatch) = (head.is_some(), false);
        capture.rows.clear();
        // SAFETY: a live context and a batch of valid tokens, positions and sequence ids.
        let status = unsafe { sys::llama_decode(self.context.ctx.as_ptr(), self.batch.raw) };
        let capture = self.capture();
        capture.wanted = false;
        match status {
            0 => {}
            1 => return Err(Error::Model("llama.cpp decode failed: no KV cache slot for the batch".into())),
            code => return Err(Error::Model(format!("llama.cpp decode failed (status {code})"))),
        }
        let (states, width) = (std::mem::take(&mut capture.rows), capture.width);
        let outputs: usize = first.iter().map(|&(_, count)| count).sum();
        // The graph ran to the end (full logits): this model's graph has no such node.
        let mismatch = capture.mismatch || states.is_empty();
        if mismatch && head.is_some() {
            tracing::warn!("llama.cpp's graph has no plain hidden-state node; computing full logits from now on");
            self.head = None;
        }
        let head = head.filter(|_| !mismatch);
        if head.is_some() && states.len() != outputs * width {
            return Err(Error::Internal(format!(
                "llama.cpp gave {} hidden values for {outputs} rows of {width}",
                states.len()
            )));
        }
        let mut state_rows = states.chunks_exact(width.max(1));
        for ((input, out), (index, count)) in inputs.iter_mut().zip(rows.iter_mut()).zip(first) {
            *out = (0..count)
                .map(|k| match &head {
                    Some(head) => Ok(Logits::Hidden {
                        state: state_rows.next().expect("counted above").to_vec(),
                        head: Arc::clone(head),
                    }),
                    None => self.logits_row(index + k).map(Logits::Full),
                })
                .collect::<Result<_>>()?;
            input.cache.len += input.tokens.len();
            let seq = input.cache.seq.as_ref().expect("made writable above");
            seq.filled.store(input.cache.len, Ordering::Relaxed);
        }
        Ok(())
    }

    /// The callback's state (only touched between `llama_decode` calls).
    fn capture(&mut self) -> &mut Capture {
        // SAFETY: owned by the context, which only reads it inside `llama_decode`.
        unsafe { self.context.capture.as_mut() }
    }

    /// The logits llama.cpp computed for batch index `i`.
    fn logits_row(&self, i: usize) -> Result<Vec<f32>> {
        // SAFETY: a live context after a successful decode; a non-null row has `vocab` floats.
        let row = unsafe { sys::llama_get_logits_ith(self.context.ctx.as_ptr(), i as i32) };
        if row.is_null() {
            return Err(Error::Internal(format!("llama.cpp has no logits for batch index {i}")));
        }
        Ok(unsafe { std::slice::from_raw_parts(row, self.vocab) }.to_vec())
    }

    fn memory(&self) -> sys::llama_memory_t {
        // SAFETY: a live context.
        unsafe { sys::llama_get_memory(self.context.ctx.as_ptr()) }
    }

    /// Remove positions `from..` (all with `None`) of sequence `id`.
    fn remove(&self, id: i32, from: Option<usize>) -> Result<()> {
        let from = from.map_or(-1, |p| p as i32);
        // SAFETY: the context's memory and a sequence id below `n_seq_max`.
        if unsafe { sys::llama_memory_seq_rm(self.memory(), id, from, -1) } {
            Ok(())
        } else {
            Err(Error::Internal(format!("llama.cpp seq_rm of sequence {id} from {from} failed")))
        }
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
            // SAFETY: the context's memory and two sequence ids below `n_seq_max`.
            unsafe { sys::llama_memory_seq_cp(self.memory(), seq.id, fresh.id, 0, cache.len as i32) };
            fresh.filled.store(cache.len, Ordering::Relaxed);
            cache.seq = Some(fresh);
            return Ok(());
        }
        if seq.filled.load(Ordering::Relaxed) > cache.len {
            self.remove(seq.id, Some(cache.len))?;
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
            self.remove(id, None)?;
        }
        self.pool.lock().map_err(poisoned)?.free.extend(released);
        Ok(())
    }
}

fn poisoned<T>(_: std::sync::PoisonError<T>) -> Error {
    Error::Internal("KV id pool lock poisoned".into())
}

#[cfg(test)]
pub(crate) mod tests;
