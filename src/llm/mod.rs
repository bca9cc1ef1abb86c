//! The embedded teacher LLM: a quantized GGUF chat model (Qwen2.5-Coder-1.5B-Instruct by
//! default, SmolLM2-135M in tests) that answers ChatML prompts.
//!
//! A room of its own, apart from the student (`model/`). It knows nothing of HTTP:
//! `src/serve/` puts it behind an OpenAI-compatible endpoint.
//!
//! - [`llama_cpp`]: the forward pass on llama.cpp, with per-sequence KV handles and a batched
//!   forward that can stop before the output layer;
//! - [`output_head`]: that layer's logits for chosen tokens only, and [`token_trie`], which
//!   lists the tokens grounded decoding admits (so it needs no others);
//! - [`chat`]: ChatML rendering and tokenization, with [`gguf_tokenizer`], the tokenizer
//!   rebuilt from the GGUF metadata;
//! - [`sequence`]: one choice of a request in flight (sampling, stop conditions, grounding,
//!   streamable text);
//! - [`logprobs`]: log probabilities of the generated tokens;
//! - [`prefix_cache`]: KV snapshots of shared prompt prefixes;
//! - [`grounded`]: the JSON-with-copied-spans automaton, and [`schema`], the response schema
//!   it follows.
//!
//! [`TeacherLlm`] ties them together. It is synchronous and `&mut self`: the server runs it on
//! its own thread. Requests are admitted with [`TeacherLlm::start`] and advanced together by
//! [`TeacherLlm::step`], one forward per step for the whole batch (continuous batching: a new
//! request's prefill joins the other sequences' decode step). A request for `n` choices is
//! prefilled once; its choices then share the prompt's KV cells (llama.cpp `seq_cp`) and
//! decode as `n` sequences. [`TeacherLlm::generate`] does all of that for a single request.

pub mod chat;
pub mod gguf_tokenizer;
pub mod grounded;
pub mod llama_cpp;
pub mod logprobs;
pub mod output_head;
pub mod prefix_cache;
pub mod schema;
pub mod sequence;
pub mod token_trie;

use std::path::{Path, PathBuf};
use std::time::Instant;

use candle_core::quantized::gguf_file;
use tokenizers::Tokenizer;

pub use chat::{ChatMessage, Prompt, Role};
pub use logprobs::{MAX_TOP_LOGPROBS, TokenLogprob, TokenProb};
pub use sequence::{Delta, FinishReason, GenerateRequest, Generation, Sequence};

use crate::error::IoContext;
use crate::{Error, Result};
use gguf_tokenizer::GgufVocab;
use llama_cpp::{DecoderParams, LlamaDecoder, MAX_SEQUENCES, SequenceInput};
use prefix_cache::PrefixCache;
use sequence::TokenTable;

/// Shared prefixes shorter than this are not worth a cache entry.
const MIN_CACHED_PREFIX: usize = 16;

/// How the teacher is loaded.
#[derive(Debug, Clone, PartialEq)]
pub struct TeacherLlmConfig {
    /// A `qwen2` or `llama` GGUF file.
    pub model: PathBuf,
    /// Longest prompt + reply, in tokens (capped by the model's own context length).
    pub context_length: usize,
    /// Memory for prompt-prefix KV snapshots; 0 disables the prefix cache.
    pub prefix_cache_bytes: usize,
    /// Most sequences decoded together (sizes the KV cells).
    pub max_batch: usize,
    /// CPU threads for the forward pass.
    pub threads: usize,
    /// Layers llama.cpp offloads to the GPU (0: none; see [`llama_cpp::DecoderParams`]).
    pub gpu_layers: u32,
    /// Most drafted tokens a sequence feeds per step (prompt lookup, see [`TeacherLlm::step`]);
    /// 0 decodes one token per sequence per step. The reply is the same either way up to
    /// float noise: a near tie may break the other way.
    pub draft_tokens: usize,
    /// Drafts stop once a step feeds this many tokens in all (prefills and sampled tokens
    /// count; with a full batch the cores are busy and a rejected draft costs a full token).
    pub draft_step_tokens: usize,
    /// A forward whose token count is not a multiple of [`STEP_TILE`] leaves the last 1–3
    /// tokens of a prompt being prefilled to the next forward, when one is. Off by default:
    /// the gain was within the noise (README), and a prompt split across forwards rounds
    /// differently, so two identical seeded requests sent together could sample apart.
    pub align_steps: bool,
    /// Grounded greedy sequences score only the tokens their automaton admits: llama.cpp
    /// stops before its output layer when a sequence of the forward is one, and the others'
    /// rows are computed from the hidden states (see [`output_head`]). Off, llama.cpp computes
    /// every token's logit for every sequence.
    pub admitted_logits_only: bool,
}

/// llama.cpp's repacked Q4_K matrix product (the bulk of the teacher's work on an AVX2 CPU)
/// takes a forward's tokens 4 at a time and each token left over alone, as a matrix-vector
/// product over the weights again: ~1.5 tokens' worth of work each (6% of a labeling run in
/// `perf`). See [`TeacherLlmConfig::align_steps`].
pub const STEP_TILE: usize = 4;

/// Default of [`TeacherLlmConfig::max_batch`] (and of the server's), chosen from
/// `cargo bench --bench teacher_server` (see the README).
pub const DEFAULT_MAX_BATCH: usize = 16;

/// Default of [`TeacherLlmConfig::draft_tokens`]: off, because drafted replies are the plain
/// ones only up to float-noise ties (1 of 24 ADE replies differed) and the measured gain is
/// small (README, teacher speed figures of 2026-12-06); 8 is the measured setting.
pub const DEFAULT_DRAFT_TOKENS: usize = 0;
/// The drafted tokens per step measured and tested.
pub const MEASURED_DRAFT_TOKENS: usize = 8;
/// Default of [`TeacherLlmConfig::draft_step_tokens`].
pub const DEFAULT_DRAFT_STEP_TOKENS: usize = 48;

/// Work counters since load (see [`TeacherLlm::stats`]).
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct DecodeStats {
    /// Forward passes of [`TeacherLlm::step`].
    pub forwards: u64,
    /// Reply tokens picked, each from its own row of logits (not the end of turn appended to
    /// a closed JSON reply).
    pub picked: u64,
    /// Drafted tokens fed.
    pub drafted: u64,
    /// Drafted tokens that were the model's own pick: appended in a run with the token before
    /// them instead of in a decode step of their own.
    pub accepted: u64,
    /// Tokens fed beyond a multiple of [`STEP_TILE`] in a forward (each multiplied alone).
    pub unaligned: u64,
    /// Forwards that stopped before llama.cpp's output layer (see
    /// [`TeacherLlmConfig::admitted_logits_only`]).
    pub headless: u64,
}

impl DecodeStats {
    /// Reply tokens that each took a decode step (a sequence's first or only token of a step).
    pub fn stepped(&self) -> u64 {
        self.picked - self.accepted
    }
}

impl TeacherLlmConfig {
    pub fn new(model: impl Into<PathBuf>) -> Self {
        Self {
            model: model.into(),
            context_length: 4096,
            prefix_cache_bytes: 512 << 20,
            max_batch: DEFAULT_MAX_BATCH,
            threads: default_threads(),
            gpu_layers: 0,
            draft_tokens: DEFAULT_DRAFT_TOKENS,
            draft_step_tokens: DEFAULT_DRAFT_STEP_TOKENS,
            align_steps: false,
            admitted_logits_only: true,
        }
    }
}

/// Every core the process may use.
pub fn default_threads() -> usize {
    std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1)
}

/// A loaded teacher model with its tokenizer and prefix cache.
pub struct TeacherLlm {
    decoder: LlamaDecoder,
    tokenizer: Tokenizer,
    table: TokenTable,
    prefix_cache: PrefixCache,
    model_id: String,
    context_length: usize,
    /// Next id for the choices of one request (see [`Sequence`]'s `group`).
    next_group: u64,
    draft_tokens: usize,
    draft_step_tokens: usize,
    align_steps: bool,
    admitted_logits_only: bool,
    threads: usize,
    stats: DecodeStats,
}

impl TeacherLlm {
    /// Load weights and tokenizer from a GGUF file (CPU).
    pub fn load(config: &TeacherLlmConfig) -> Result<Self> {
        let path = &config.model;
        let mut file = std::fs::File::open(path).with_path(path)?;
        let content = gguf_file::Content::read(&mut file)
            .map_err(|e| Error::Model(format!("{}: not a GGUF file: {e}", path.display())))?;
        let with_path = |e: Error| Error::Model(format!("{}: {e}", path.display()));
        let vocab = GgufVocab::from_gguf(&content).map_err(with_path)?;
        let tokenizer = vocab.tokenizer().map_err(with_path)?;
        // Every running sequence may fill its context; prefix snapshots share their cells.
        let params = DecoderParams {
            context_length: config.context_length,
            kv_cells: config.context_length * (config.max_batch.max(1) + 1),
            threads: config.threads,
            gpu_layers: config.gpu_layers,
        };
        let decoder = LlamaDecoder::load(path, &params).map_err(with_path)?;
        let context_length = decoder.context_length();
        let mut stop_ids: Vec<u32> = ["<|im_end|>", "<|endoftext|>"]
            .iter()
            .filter_map(|t| tokenizer.token_to_id(t))
            .chain(vocab.eos_token_id)
            .collect();
        // ChatML's end of turn first: it ends a reply whose JSON is complete (see `TokenTable`).
        let Some(&end_of_turn) = stop_ids.first() else {
            return Err(with_path(Error::Model("no end-of-turn token in the vocabulary".into())));
        };
        stop_ids.sort_unstable();
        stop_ids.dedup();
        let table = TokenTable::new(vocab.token_bytes(), stop_ids, end_of_turn);
        Ok(Self {
            decoder,
            tokenizer,
            table,
            // Each snapshot holds a sequence id; the running batch and copies need the rest.
            prefix_cache: PrefixCache::new(
                config.prefix_cache_bytes,
                MAX_SEQUENCES.saturating_sub(2 * config.max_batch + 2),
            ),
            model_id: model_id(path),
            context_length,
            next_group: 0,
            draft_tokens: config.draft_tokens,
            draft_step_tokens: config.draft_step_tokens,
            align_steps: config.align_steps,
            admitted_logits_only: config.admitted_logits_only,
            threads: config.threads.max(1),
            stats: DecodeStats::default(),
        })
    }

    /// The name clients use in `"model"`: the file name without `.gguf`.
    pub fn model_id(&self) -> &str {
        &self.model_id
    }

    /// Longest prompt + reply in tokens.
    pub fn context_length(&self) -> usize {
        self.context_length
    }

    pub fn tokenizer(&self) -> &Tokenizer {
        &self.tokenizer
    }

    /// Forwards and tokens so far (drafted, accepted).
    pub fn stats(&self) -> DecodeStats {
        self.stats
    }

    /// Number of prompt prefixes whose KV is cached.
    pub fn cached_prefixes(&self) -> usize {
        self.prefix_cache.len()
    }

    /// Tokenize and admit a request: its `n` choices, in order. Fails with
    /// [`Error::PromptTooLong`] when the prompt leaves no room for a reply; `max_tokens` is
    /// clamped to the room left. Only the first choice prefills; the others wait for its
    /// logits and continue from its KV cache (shared cells, so `n` choices cost one prompt).
    pub fn start(&mut self, request: &GenerateRequest) -> Result<Vec<Sequence>> {
        let prompt = request.prompt.encode(&self.tokenizer)?;
        if prompt.ids.len() >= self.context_length {
            return Err(Error::PromptTooLong { prompt_tokens: prompt.ids.len(), context_length: self.context_length });
        }
        let max_tokens = request.max_tokens.min(self.context_length - prompt.ids.len());
        let shared = prompt.shared_prefix_len;
        // A new shared prefix (system prompt + few-shot examples) is computed once, alone, at
        // admission: requests of a task arrive together, and if each prefilled it in the same
        // batch, the prefix cache would only pay off from the next batch on.
        if self.prefix_cache.enabled()
            && shared >= MIN_CACHED_PREFIX
            && shared < prompt.ids.len()
            && !self.prefix_cache.contains(&prompt.ids[..shared])
        {
            let mut cache = self.decoder.new_cache();
            if let Some(hit) = self.prefix_cache.lookup(&prompt.ids[..shared]) {
                cache = hit;
            }
            let tokens = &prompt.ids[cache.len()..shared];
            // Only its KV cells are kept: no logits.
            let hidden = self.decoder.has_head();
            self.decoder.forward_rows(&mut [SequenceInput { cache: &mut cache, tokens }], &[1], hidden)?;
            self.prefix_cache.insert(prompt.ids[..shared].to_vec(), cache);
        }
        // The start of the last message that every request after this prefix shared so far
        // (the user turn's header and fixed words) is snapshotted too, leaving one token to
        // compute.
        let mut snapshot_len = shared;
        if self.prefix_cache.enabled() && shared >= MIN_CACHED_PREFIX && shared < prompt.ids.len() {
            let common = self.prefix_cache.common_tail(&prompt.ids[..shared], &prompt.ids[shared..]);
            snapshot_len += common.min(prompt.ids.len() - shared - 1);
        }
        let cache = self.prefix_cache.lookup(&prompt.ids).unwrap_or_else(|| self.decoder.new_cache());
        let snapshot = snapshot_len >= MIN_CACHED_PREFIX
            && snapshot_len > cache.len()
            && !self.prefix_cache.contains(&prompt.ids[..snapshot_len]);
        let ids: std::sync::Arc<[u32]> = prompt.ids.into();
        let mut first = Sequence::new(request, ids.clone(), cache, max_tokens, 0);
        first.snapshot_prefix = snapshot.then_some(snapshot_len);
        let mut choices = vec![first];
        if request.n > 1 {
            let group = self.next_group;
            self.next_group += 1;
            choices[0].group = Some(group);
            for choice in 1..request.n {
                let mut fork = Sequence::new(request, ids.clone(), self.decoder.new_cache(), max_tokens, choice);
                (fork.group, fork.awaiting_prefill) = (Some(group), true);
                fork.pending.clear();
                choices.push(fork);
            }
        }
        Ok(choices)
    }

    /// One forward pass for every unfinished sequence, then one token sampled for each, or
    /// more with drafts: a sequence between decode steps may feed, after its last sampled
    /// token, up to `draft_tokens` tokens copied from its context (prompt lookup: the rest of
    /// a JSON key or of a span of the sentence, as in the few-shot replies) while the step
    /// stays within `draft_step_tokens`. The forward returns a row of logits after each, and
    /// [`Sequence::advance_rows`] keeps the drafted tokens the sampler picks from them, so the
    /// reply is token for token the one decoded without drafts (from the same logits: a
    /// batched pass may differ from single steps in the last bits, as batching sequences does);
    /// fewer steps, and logprobs and streaming see every token as before.
    /// On error the sequences are in an unknown state and should be dropped.
    pub fn step(&mut self, sequences: &mut [Sequence]) -> Result<()> {
        let active = |s: &Sequence| !s.is_finished() && !s.awaiting_prefill;
        if self.draft_tokens > 0 {
            let fed: usize = sequences.iter().filter(|s| active(s)).map(|s| s.pending.len() - s.drafted).sum();
            let mut budget = self.draft_step_tokens.saturating_sub(fed);
            for sequence in sequences.iter_mut().filter(|s| active(s)) {
                budget -= sequence.draft(self.draft_tokens.min(budget), &self.table);
            }
        }
        let mut fed: usize = sequences.iter().filter(|s| active(s)).map(|s| s.pending.len()).sum();
        // Only beside other sequences, whose next tokens the held ones then join.
        let others = sequences.iter().filter(|s| active(s)).count() > 1;
        if self.align_steps && others && fed % STEP_TILE != 0 {
            let over = fed % STEP_TILE;
            if let Some(s) = sequences
                .iter_mut()
                .filter(|s| active(s))
                .filter(|s| s.can_hold_back(over))
                .max_by_key(|s| s.pending.len())
            {
                s.held_back = over;
                fed -= over;
            }
        }
        self.stats.unaligned += (fed % STEP_TILE) as u64;
        let outputs: Vec<usize> = sequences.iter().filter(|s| active(s)).map(|s| 1 + s.drafted).collect();
        // The output layer is skipped once a sequence needs only admitted tokens' logits; the
        // others' rows are then computed here, each costing what it costs in llama.cpp.
        let hidden = self.admitted_logits_only
            && self.decoder.has_head()
            && sequences.iter().filter(|s| active(s)).any(Sequence::takes_hidden_states);
        let mut inputs: Vec<SequenceInput<'_>> = sequences
            .iter_mut()
            .filter(|s| active(s))
            .map(|s| {
                let n = s.pending.len() - s.held_back;
                SequenceInput { cache: &mut s.cache, tokens: &s.pending[..n] }
            })
            .collect();
        if inputs.is_empty() {
            return Ok(());
        }
        let started = Instant::now();
        let mut rows = self.decoder.forward_rows(&mut inputs, &outputs, hidden)?;
        drop(inputs);
        if hidden {
            let full: Vec<bool> = sequences.iter().filter(|s| active(s)).map(|s| !s.takes_hidden_states()).collect();
            output_head::fill_full_rows(&mut rows, &full, self.threads);
        }
        let elapsed = started.elapsed();
        self.stats.forwards += 1;
        self.stats.headless += u64::from(hidden);
        // First choices that just prefilled hand their cache and logits to their other choices.
        let mut prefilled = Vec::new();
        for (sequence, rows) in sequences.iter_mut().filter(|s| active(s)).zip(rows) {
            sequence.add_time(elapsed);
            if let Some(len) = sequence.snapshot_prefix.take() {
                let snapshot = sequence.cache.truncated(len)?;
                self.prefix_cache.insert(sequence.prompt[..len].to_vec(), snapshot);
            }
            if sequence.held_back > 0 {
                // Its prompt's last tokens come next forward; this row is not the prompt's last.
                let fed = sequence.pending.len() - sequence.held_back;
                sequence.pending.drain(..fed);
                sequence.held_back = 0;
                continue;
            }
            if let Some(group) = sequence.group.filter(|_| sequence.in_prefill()) {
                let row = rows.last().expect("a prefill has one row").clone();
                prefilled.push((group, sequence.cache.clone(), sequence.cached_prompt_tokens, row));
            }
            self.stats.drafted += sequence.drafted as u64;
            let (picked, accepted) = sequence.advance_rows(rows, &self.table, &self.tokenizer)?;
            // A closed reply's end of turn came without a row (it finishes, so counted once).
            self.stats.picked += (picked - usize::from(sequence.closed)) as u64;
            self.stats.accepted += accepted as u64;
        }
        for (group, cache, cached, row) in prefilled {
            for fork in sequences.iter_mut().filter(|s| s.awaiting_prefill && s.group == Some(group)) {
                fork.join_prefill(cache.clone(), cached, elapsed);
                fork.advance(row.clone(), &self.table, &self.tokenizer)?;
                self.stats.picked += 1;
            }
        }
        Ok(())
    }

    /// The result of a finished (or abandoned) sequence.
    pub fn finish(&self, sequence: Sequence) -> Generation {
        sequence.into_generation()
    }

    /// Generate a reply to one request (its first choice).
    pub fn generate(&mut self, request: &GenerateRequest) -> Result<Generation> {
        Ok(self.generate_choices(request)?.swap_remove(0))
    }

    /// Generate all `n` choices of one request, in order.
    pub fn generate_choices(&mut self, request: &GenerateRequest) -> Result<Vec<Generation>> {
        self.run(std::slice::from_ref(request)).pop().expect("one request, one reply")
    }

    /// Generate replies (first choices) to several requests decoded together (for tests and
    /// benches; the server admits requests as they arrive instead).
    pub fn generate_batch(&mut self, requests: &[GenerateRequest]) -> Vec<Result<Generation>> {
        self.run(requests).into_iter().map(|r| r.map(|mut choices| choices.swap_remove(0))).collect()
    }

    /// Every choice of every request, decoded together.
    fn run(&mut self, requests: &[GenerateRequest]) -> Vec<Result<Vec<Generation>>> {
        let mut results: Vec<Option<Result<Vec<Generation>>>> = (0..requests.len()).map(|_| None).collect();
        let (mut sequences, mut owners) = (Vec::new(), Vec::new());
        for (i, request) in requests.iter().enumerate() {
            match self.start(request) {
                Ok(choices) => {
                    owners.extend(std::iter::repeat_n(i, choices.len()));
                    sequences.extend(choices);
                }
                Err(e) => results[i] = Some(Err(e)),
            }
        }
        while sequences.iter().any(|s| !s.is_finished()) {
            if let Err(e) = self.step(&mut sequences) {
                let message = e.to_string();
                for &i in &owners {
                    results[i] = Some(Err(Error::Internal(format!("generation failed: {message}"))));
                }
                return results.into_iter().map(|r| r.expect("filled above")).collect();
            }
        }
        for (i, s) in owners.into_iter().zip(sequences) {
            let generation = self.finish(s);
            if let Ok(choices) = results[i].get_or_insert_with(|| Ok(Vec::new())) {
                choices.push(generation);
            }
        }
        results.into_iter().map(|r| r.expect("every request is started or failed")).collect()
    }
}

/// The model name the embedded server answers to: the file name without `.gguf` (known
/// without loading the model, so cache keys can be computed before the server starts).
pub fn model_id(path: &Path) -> String {
    path.file_stem().map(|s| s.to_string_lossy().into_owned()).unwrap_or_else(|| "teacher".into())
}

#[cfg(test)]
mod tests;
