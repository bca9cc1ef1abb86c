//! One choice of a request being generated: its KV cache, the tokens still to feed, how to
//! pick the next token (greedy, temperature/top-p with a seed, optionally grounded), when to
//! stop, and which part of the text is final enough to stream.

use std::sync::Arc;
use std::time::Duration;

use candle_core::{Device, Tensor};
use candle_transformers::generation::{LogitsProcessor, Sampling};
use tokenizers::Tokenizer;

use super::chat::{ChatMessage, Prompt};
use super::grounded::GroundedJson;
use super::llama_cpp::KvCache;
use super::logprobs::{TokenLogprob, token_logprob};
use super::output_head::Logits;
use super::schema::ResponseSchema;
use super::token_trie::TokenTrie;
use crate::{Error, Result};

/// What to generate.
#[derive(Debug, Clone, PartialEq)]
pub struct GenerateRequest {
    pub prompt: Prompt,
    /// Continuations sampled from one prefill of the prompt (OpenAI's `n`); choice `i` samples
    /// with its own seed derived from `seed` (choice 0 with `seed` itself).
    pub n: usize,
    /// Record each generated token's log probability and this many alternatives (at most
    /// [`super::logprobs::MAX_TOP_LOGPROBS`]); `None` computes none.
    pub logprobs: Option<usize>,
    /// Upper bound on generated tokens (clamped to what the context leaves).
    pub max_tokens: usize,
    /// 0 means greedy.
    pub temperature: f64,
    /// Nucleus sampling mass; 1 samples from the whole distribution.
    pub top_p: f64,
    pub seed: u64,
    /// Stop strings: generation ends before the first occurrence, which is not returned.
    pub stop: Vec<String>,
    /// Constrain the reply to JSON whose string values occur in this text.
    pub grounded_source: Option<String>,
    /// The reply must be JSON (OpenAI's `response_format`) of this schema (the default: any
    /// JSON). Implied by `grounded_source`.
    pub json_schema: Option<ResponseSchema>,
    /// Keep generating through end-of-turn tokens until `max_tokens` (benchmarks only).
    pub ignore_eos: bool,
}

impl GenerateRequest {
    /// A greedy request for `messages` with no stop strings and no grounding.
    pub fn greedy(messages: Vec<ChatMessage>, max_tokens: usize) -> Self {
        Self {
            prompt: Prompt::Chat(messages),
            n: 1,
            logprobs: None,
            max_tokens,
            temperature: 0.0,
            top_p: 1.0,
            seed: 0,
            stop: Vec::new(),
            grounded_source: None,
            json_schema: None,
            ignore_eos: false,
        }
    }
}

/// Why generation ended (OpenAI's `finish_reason`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum FinishReason {
    /// End of turn, end of text, or a stop string.
    Stop,
    /// `max_tokens` or the context length reached.
    Length,
}

/// A finished generation.
#[derive(Debug, Clone, PartialEq)]
pub struct Generation {
    pub text: String,
    /// Sampled ids, including a final end-of-turn token if there was one.
    pub tokens: Vec<u32>,
    /// Log probabilities of the sampled tokens but a final end-of-turn token (which is not
    /// part of the text), when the request asked for them.
    pub logprobs: Vec<TokenLogprob>,
    pub prompt_tokens: usize,
    /// Prompt tokens whose KV came from the prefix cache.
    pub cached_prompt_tokens: usize,
    pub finish_reason: FinishReason,
    /// Wall time of the forward passes this sequence took part in, split by phase. In a batch,
    /// a pass is shared with the other sequences.
    pub prefill_time: Duration,
    pub decode_time: Duration,
}

impl Generation {
    /// Completion tokens as reported in `usage` (every sampled token).
    pub fn completion_tokens(&self) -> usize {
        self.tokens.len()
    }
}

/// Vocabulary facts the sampler needs, shared by all sequences.
pub struct TokenTable {
    /// Bytes of each token, `None` for special tokens.
    pub bytes: Vec<Option<Vec<u8>>>,
    /// Ids that end a turn (`<|im_end|>`, eos, `<|endoftext|>`).
    pub stop_ids: Vec<u32>,
    /// The one of `stop_ids` recorded when a JSON reply is complete: only an end of turn may
    /// follow, so it is appended without a forward pass to pick among them.
    pub end_of_turn: u32,
    /// `bytes` ordered for finding every token the grounding automaton admits.
    pub trie: TokenTrie,
}

impl TokenTable {
    pub fn new(bytes: Vec<Option<Vec<u8>>>, stop_ids: Vec<u32>, end_of_turn: u32) -> Self {
        let trie = TokenTrie::new(&bytes);
        Self { bytes, stop_ids, end_of_turn, trie }
    }

    /// What token `id` stands for: its bytes, or a special token's text (`<|im_end|>`).
    pub fn token_bytes(&self, id: u32, tokenizer: &Tokenizer) -> Vec<u8> {
        match self.bytes.get(id as usize) {
            Some(Some(bytes)) => bytes.clone(),
            _ => tokenizer.id_to_token(id).unwrap_or_default().into_bytes(),
        }
    }
}

/// Text ready to stream and the log probabilities of the tokens it completes.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Delta {
    pub text: String,
    pub logprobs: Vec<TokenLogprob>,
}

/// How much of the not yet finished `text` can be streamed: all but a trailing incomplete
/// UTF-8 character (decoded as U+FFFD until its last byte arrives) and a tail that may still
/// grow into a stop string (which must never be sent).
pub fn streamable_len(text: &str, stop: &[String]) -> usize {
    let mut end = text.trim_end_matches('\u{FFFD}').len();
    for s in stop {
        // The longest proper prefix of `s` that `text[..end]` ends with.
        let held = (1..s.len())
            .rev()
            .filter(|&k| s.is_char_boundary(k))
            .find(|&k| text[..end].ends_with(&s[..k]))
            .unwrap_or(0);
        end = end.min(text[..end].len() - held);
    }
    end
}

/// How many of the best tokens are tried under a grounding constraint before scanning all.
const GROUNDED_CANDIDATES: usize = 64;

/// One choice of a request in flight.
pub struct Sequence {
    pub(super) cache: KvCache,
    /// Tokens to feed in the next forward (the uncached prompt, then the last sampled token
    /// and the [`Sequence::draft`], if any).
    pub(super) pending: Vec<u32>,
    /// Drafted tokens at the end of `pending`: the next forward returns a row of logits for
    /// each (see [`Sequence::advance_rows`]).
    pub(super) drafted: usize,
    /// Length of the shared prompt prefix to snapshot into the prefix cache after the first
    /// forward, if it is not cached yet.
    pub(super) snapshot_prefix: Option<usize>,
    pub(super) prompt: Arc<[u32]>,
    /// The choices of one request share an id; all but the first wait for its prefill, then
    /// continue from its KV cache and logits (see [`super::TeacherLlm::start`]).
    pub(super) group: Option<u64>,
    pub(super) awaiting_prefill: bool,
    /// The reply's JSON closed and its end of turn was appended without a row of logits.
    pub(super) closed: bool,
    /// Tokens at the end of `pending` (a prompt being prefilled) left to the next forward,
    /// to keep this one's token count a multiple of [`super::STEP_TILE`].
    pub(super) held_back: usize,
    choice: usize,
    generated: Vec<u32>,
    max_tokens: usize,
    sampler: LogitsProcessor,
    greedy: bool,
    stop: Vec<String>,
    ignore_eos: bool,
    grounded: Option<GroundedJson>,
    finish: Option<FinishReason>,
    /// The reply so far, cut before a stop string once one appears.
    text: String,
    /// Bytes of `text` and entries of `logprobs` handed out by [`Sequence::take_delta`].
    streamed: usize,
    streamed_logprobs: usize,
    top_logprobs: Option<usize>,
    logprobs: Vec<TokenLogprob>,
    pub(super) cached_prompt_tokens: usize,
    prefill_time: Duration,
    decode_time: Duration,
}

impl Sequence {
    /// Choice `choice` of `request`, whose prompt is `prompt`, starting from `cache`.
    pub(super) fn new(
        request: &GenerateRequest,
        prompt: Arc<[u32]>,
        cache: KvCache,
        max_tokens: usize,
        choice: usize,
    ) -> Self {
        let greedy = request.temperature <= 1e-7;
        let sampling = match (greedy, request.top_p) {
            (true, _) => Sampling::ArgMax,
            (false, p) if p >= 1.0 => Sampling::All { temperature: request.temperature },
            (false, p) => Sampling::TopP { p, temperature: request.temperature },
        };
        let cached = cache.len();
        Self {
            pending: prompt[cached..].to_vec(),
            drafted: 0,
            prompt,
            cache,
            snapshot_prefix: None,
            group: None,
            awaiting_prefill: false,
            closed: false,
            held_back: 0,
            choice,
            generated: Vec::new(),
            max_tokens,
            sampler: LogitsProcessor::from_sampling(choice_seed(request.seed, choice), sampling),
            greedy,
            stop: request.stop.iter().filter(|s| !s.is_empty()).cloned().collect(),
            ignore_eos: request.ignore_eos,
            grounded: match (&request.grounded_source, &request.json_schema) {
                (Some(source), words) => Some(GroundedJson::new(source).with_schema(words.clone().unwrap_or_default())),
                (None, Some(words)) => Some(GroundedJson::json_only().with_schema(words.clone())),
                (None, None) => None,
            },
            finish: if max_tokens == 0 { Some(FinishReason::Length) } else { None },
            text: String::new(),
            streamed: 0,
            streamed_logprobs: 0,
            top_logprobs: request.logprobs,
            logprobs: Vec::new(),
            cached_prompt_tokens: cached,
            prefill_time: Duration::ZERO,
            decode_time: Duration::ZERO,
        }
    }

    pub fn is_finished(&self) -> bool {
        self.finish.is_some()
    }

    /// Which of the request's `n` choices this is.
    pub fn choice(&self) -> usize {
        self.choice
    }

    /// Continue from the first choice's prefill: its KV cache (shared, copied on write) and
    /// the logits after the prompt (the caller then calls [`Sequence::advance`]).
    pub(super) fn join_prefill(&mut self, cache: KvCache, cached_prompt_tokens: usize, elapsed: Duration) {
        self.cache = cache;
        self.cached_prompt_tokens = cached_prompt_tokens;
        self.prefill_time += elapsed;
        self.awaiting_prefill = false;
    }

    /// The text (and logprobs) generated since the last call that can no longer change; all
    /// of the rest once finished. `None` when there is nothing new.
    pub fn take_delta(&mut self) -> Option<Delta> {
        let end = if self.is_finished() { self.text.len() } else { streamable_len(&self.text, &self.stop) };
        if self.streamed > self.text.len() || !self.text.is_char_boundary(self.streamed) {
            // Byte-level decoding only ever appends, so this is a bug; never slice mid-character.
            tracing::warn!("the decoded reply changed behind the streamed part; skipping the change");
            self.streamed = self.text.len();
        }
        let end = end.max(self.streamed);
        let flush_logprobs = self.is_finished() && self.streamed_logprobs < self.logprobs.len();
        if end == self.streamed && !flush_logprobs {
            return None;
        }
        let text = self.text[self.streamed..end].to_string();
        self.streamed = end;
        let logprobs = self.logprobs[self.streamed_logprobs..].to_vec();
        self.streamed_logprobs = self.logprobs.len();
        Some(Delta { text, logprobs })
    }

    /// Whether the next forward is this sequence's prefill.
    pub(super) fn in_prefill(&self) -> bool {
        self.generated.is_empty()
    }

    /// Whether the last `n` tokens of this sequence's prompt can wait for the next forward: it
    /// is prefilling alone (no other choices wait for its logits), feeds a token now, and what
    /// it feeds now covers the prefix it is to snapshot.
    pub(super) fn can_hold_back(&self, n: usize) -> bool {
        self.in_prefill()
            && self.group.is_none()
            && self.drafted == 0
            && self.pending.len() > n
            && self.snapshot_prefix.is_none_or(|len| self.cache.len() + self.pending.len() - n >= len)
    }

    /// Account the wall time of a forward this sequence took part in.
    pub(super) fn add_time(&mut self, elapsed: Duration) {
        if self.in_prefill() {
            self.prefill_time += elapsed;
        } else {
            self.decode_time += elapsed;
        }
    }

    /// Pick the next token from this sequence's `logits` row and decide whether to stop.
    pub(super) fn advance(&mut self, logits: Logits, table: &TokenTable, tokenizer: &Tokenizer) -> Result<()> {
        // The raw row, before sampling masks it (see `logprobs` for why this distribution).
        let raw = match (&logits, self.top_logprobs) {
            (Logits::Full(row), Some(k)) => Some((k, row.clone())),
            _ => None,
        };
        let token = match self.grounded.clone() {
            Some(state) => match self.sample_grounded(logits, state, table)? {
                Some(token) => token,
                None => {
                    // The automaton admits no token (a bug in it, but this sequence's alone):
                    // end the reply here, unfinished, instead of failing the whole batch.
                    tracing::warn!("grounded decoding has no admissible token; ending the reply");
                    self.finish = Some(FinishReason::Length);
                    return Ok(());
                }
            },
            None => match logits {
                Logits::Full(row) => self.sample(row)?,
                Logits::Hidden { .. } => {
                    return Err(Error::Internal("a hidden state for an ungrounded sequence".into()));
                }
            },
        };
        self.generated.push(token);
        self.pending = vec![token];
        let ends_turn = table.stop_ids.contains(&token) && !self.ignore_eos;
        if let Some((k, raw)) = raw.filter(|_| !ends_turn) {
            self.logprobs.push(token_logprob(&raw, token, k, |id| table.token_bytes(id, tokenizer)));
        }
        if ends_turn {
            self.finish = Some(FinishReason::Stop);
        } else if let Some(state) = &self.grounded {
            let bytes = table.bytes.get(token as usize).and_then(|b| b.as_deref()).unwrap_or_default();
            self.grounded = state.advanced(bytes);
            // The JSON is complete: the automaton admits nothing but an end of turn, so the
            // reply's text is final. Ending here saves the forward that would only pick which
            // end-of-turn token (not part of the text, and without a logprob either way).
            let complete = self.grounded.as_ref().is_some_and(GroundedJson::is_complete);
            if complete && !self.ignore_eos && self.generated.len() < self.max_tokens {
                self.generated.push(table.end_of_turn);
                (self.closed, self.finish) = (true, Some(FinishReason::Stop));
            }
        }
        let mut text = self.decode(tokenizer)?;
        if let Some(cut) = self.stop.iter().filter_map(|s| text.find(s.as_str())).min() {
            text.truncate(cut);
            self.finish = Some(FinishReason::Stop);
        } else if self.finish.is_none() && self.generated.len() >= self.max_tokens {
            self.finish = Some(FinishReason::Length);
        }
        self.text = text;
        Ok(())
    }

    /// Propose up to `max` tokens to follow the last sampled one (prompt lookup, see
    /// [`lookup`]), cut before the first token the grounding automaton rejects (it could never
    /// be picked) and before any special token; they are fed with it in the next forward.
    /// Returns how many. Only between decode steps: not in prefill, not for a finished
    /// sequence, never past `max_tokens` (which also keeps them inside the context).
    pub(super) fn draft(&mut self, max: usize, table: &TokenTable) -> usize {
        self.pending.truncate(self.pending.len() - self.drafted);
        self.drafted = 0;
        let room = self.max_tokens.saturating_sub(self.generated.len() + 1);
        if max.min(room) == 0 || self.is_finished() || self.awaiting_prefill || self.pending.len() != 1 {
            return 0;
        }
        let Some(draft) = lookup(&self.prompt, &self.generated, max.min(room)) else { return 0 };
        let mut state = self.grounded.clone();
        let mut keep = 0;
        for &token in draft {
            let Some(Some(bytes)) = table.bytes.get(token as usize) else { break };
            if let Some(current) = &state {
                match current.advanced(bytes) {
                    Some(next) if !current.is_complete() => state = Some(next),
                    _ => break,
                }
            }
            keep += 1;
        }
        self.pending.extend_from_slice(&draft[..keep]);
        self.drafted = keep;
        keep
    }

    /// Take the rows of logits of one forward: one after the last sampled token and one after
    /// each drafted token. Each row picks a token exactly as plain decoding would from the
    /// same logits (same mask, same sampler state); while it is the next drafted token, that
    /// token is already in the cache and the next row continues. At the first other token (or
    /// when the sequence finishes) the rest of the draft is dropped from the cache. Returns
    /// (tokens picked, drafted tokens kept).
    pub(super) fn advance_rows(
        &mut self,
        rows: Vec<Logits>,
        table: &TokenTable,
        tokenizer: &Tokenizer,
    ) -> Result<(usize, usize)> {
        let draft = self.pending.split_off(self.pending.len() - self.drafted);
        self.drafted = 0;
        let (mut picked, mut accepted) = (0, 0);
        for row in rows {
            let before = self.generated.len();
            self.advance(row, table, tokenizer)?;
            picked += self.generated.len() - before;
            let token = self.generated.last().filter(|_| self.generated.len() > before);
            if self.is_finished() || token.is_none() || draft.get(accepted) != token {
                break;
            }
            accepted += 1;
        }
        let unused = draft.len() - accepted;
        if unused > 0 {
            self.cache = self.cache.truncated(self.cache.len() - unused)?;
        }
        Ok((picked, accepted))
    }

    fn sample(&mut self, logits: Vec<f32>) -> Result<u32> {
        if self.greedy {
            // Same tie-breaking as `Tensor::argmax` (first maximum) without the round trip.
            let best = logits.iter().enumerate().fold(0, |b, (i, &l)| if l > logits[b] { i } else { b });
            return Ok(best as u32);
        }
        let n = logits.len();
        Ok(self.sampler.sample(&Tensor::from_vec(logits, n, &Device::Cpu)?)?)
    }

    /// Whether this sequence picks its tokens greedily, with no logprobs, from the few tokens
    /// its grounding automaton admits: it then needs no full row of logits (see
    /// [`super::output_head`]) and takes the same token either way.
    pub(super) fn takes_hidden_states(&self) -> bool {
        self.greedy
            && self.top_logprobs.is_none()
            && self.grounded.as_ref().is_some_and(GroundedJson::admits_few_tokens)
    }

    /// Sample among the tokens the grounding automaton accepts (all others get -inf).
    fn sample_grounded(&mut self, logits: Logits, state: GroundedJson, table: &TokenTable) -> Result<Option<u32>> {
        let mut logits = match logits {
            Logits::Full(row) => row,
            hidden => {
                if !self.greedy {
                    return Err(Error::Internal("hidden states for a sampled sequence".into()));
                }
                // Every admitted token, scored: the best is the one the path below picks.
                let ids = match state.is_complete() {
                    true => table.stop_ids.clone(),
                    false => table.trie.admitted(&table.bytes, &state),
                };
                let scores = hidden.of(&ids);
                // Ids ascend, so the first maximum is the lowest id among equals, as below.
                let best = (0..ids.len()).fold(None, |b: Option<usize>, i| match b {
                    Some(b) if scores[i].total_cmp(&scores[b]).is_le() => Some(b),
                    _ => Some(i),
                });
                return Ok(best.map(|i| ids[i]));
            }
        };
        let allowed = |id: usize| -> bool {
            match table.bytes.get(id).and_then(|b| b.as_deref()) {
                Some(bytes) => !state.is_complete() && state.advanced(bytes).is_some(),
                None => state.is_complete() && table.stop_ids.contains(&(id as u32)),
            }
        };
        let mut keep: Vec<usize> = best_ids(&logits, GROUNDED_CANDIDATES).into_iter().filter(|&i| allowed(i)).collect();
        if keep.is_empty() {
            // Rare: none of the best candidates fits; take the best token that does.
            let mut order: Vec<usize> = (0..logits.len()).collect();
            order.sort_by(|&a, &b| logits[b].total_cmp(&logits[a]));
            keep.extend(order.into_iter().find(|&i| allowed(i)));
        }
        if keep.is_empty() {
            return Ok(None);
        }
        if self.greedy {
            return Ok(Some(keep[0] as u32));
        }
        let mut masked = vec![f32::NEG_INFINITY; logits.len()];
        for i in keep {
            masked[i] = std::mem::take(&mut logits[i]);
        }
        let n = masked.len();
        Ok(Some(self.sampler.sample(&Tensor::from_vec(masked, n, &Device::Cpu)?)?))
    }

    fn decode(&self, tokenizer: &Tokenizer) -> Result<String> {
        tokenizer.decode(&self.generated, true).map_err(|e| Error::Tokenizer(e.to_string()))
    }

    /// The finished generation.
    pub(super) fn into_generation(self) -> Generation {
        Generation {
            text: self.text,
            prompt_tokens: self.prompt.len(),
            cached_prompt_tokens: self.cached_prompt_tokens,
            finish_reason: self.finish.unwrap_or(FinishReason::Length),
            prefill_time: self.prefill_time,
            decode_time: self.decode_time,
            tokens: self.generated,
            logprobs: self.logprobs,
        }
    }
}

/// The ids of the `k` largest `logits`, best first (equal logits: lower id first), in one pass
/// that keeps `k` in order: a row has ~150k logits and every grounded sequence picks from one
/// per step, where an index vector of the whole vocabulary and a partial sort cost more than
/// the grounding checks after them.
fn best_ids(logits: &[f32], k: usize) -> Vec<usize> {
    let better = |a: usize, b: usize| logits[a].total_cmp(&logits[b]).then(b.cmp(&a)).is_gt();
    let mut best: Vec<usize> = Vec::with_capacity(k + 1);
    for i in 0..logits.len() {
        if best.len() == k && best.last().is_none_or(|&worst| !better(i, worst)) {
            continue;
        }
        let at = best.partition_point(|&j| better(j, i));
        best.insert(at, i);
        best.truncate(k);
    }
    best
}

/// Longest n-gram matched by [`lookup`].
const LOOKUP_NGRAM: usize = 3;

/// Prompt lookup decoding: the up to `max` tokens that followed the latest earlier occurrence
/// of the longest (at most [`LOOKUP_NGRAM`] tokens) tail of the context (prompt then
/// `generated`) in the context itself. In a labeling prompt that is the rest of a JSON key or
/// punctuation run of a few-shot reply, or the rest of a span of the sentence.
pub fn lookup<'a>(prompt: &'a [u32], generated: &'a [u32], max: usize) -> Option<&'a [u32]> {
    let len = prompt.len() + generated.len();
    let at = |i: usize| if i < prompt.len() { prompt[i] } else { generated[i - prompt.len()] };
    let slice = |from: usize, to: usize| -> &'a [u32] {
        // A continuation is read from one of the two parts: up to the end of that part.
        if from < prompt.len() {
            &prompt[from..to.min(prompt.len())]
        } else {
            &generated[from - prompt.len()..to - prompt.len()]
        }
    };
    if max == 0 {
        return None;
    }
    for n in (1..=LOOKUP_NGRAM.min(len)).rev() {
        let tail = len - n;
        // Latest first; the tail itself (at `tail`) is not an earlier occurrence.
        for start in (0..tail).rev() {
            if (0..n).all(|k| at(start + k) == at(tail + k)) {
                let from = start + n;
                return Some(slice(from, (from + max).min(len)));
            }
        }
    }
    None
}

/// Choice `choice`'s sampling seed: `seed` for the first, then well-spread distinct values,
/// so every choice is reproducible on its own.
fn choice_seed(seed: u64, choice: usize) -> u64 {
    seed.wrapping_add((choice as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lookup_continues_the_latest_longest_match() {
        let prompt = [1, 2, 3, 9, 1, 2, 4, 5, 6, 7];
        assert_eq!(lookup(&prompt, &[1, 2], 3), Some(&[4, 5, 6][..]), "latest occurrence of [1, 2]");
        let shots = [9, 1, 2, 4, 0, 1, 2, 5];
        assert_eq!(lookup(&shots, &[9, 1, 2], 2), Some(&[4, 0][..]), "the 3-gram wins over a later 2-gram");
        assert_eq!(lookup(&shots, &[7, 1, 2], 2), Some(&[5][..]), "the latest 2-gram, up to the prompt's end");
        assert_eq!(lookup(&prompt, &[6], 8), Some(&[7][..]));
        assert_eq!(lookup(&[3], &[4, 5, 6, 4], 8), Some(&[5, 6, 4][..]), "a match in the reply itself");
        assert_eq!(lookup(&prompt, &[8], 3), None);
        assert_eq!(lookup(&prompt, &[1], 0), None);
        assert_eq!(lookup(&[], &[5, 5], 4), Some(&[5][..]));
    }

    #[test]
    fn best_ids_are_the_top_of_a_full_sort() {
        let logits: Vec<f32> = (0..5000u32).map(|i| ((i * 7919) % 1013) as f32 / 7.0 - 50.0).collect();
        let mut sorted: Vec<usize> = (0..logits.len()).collect();
        sorted.sort_by(|&a, &b| logits[b].total_cmp(&logits[a])); // stable: lower id first on ties
        for k in [0, 1, 5, 64, 5000, 6000] {
            assert_eq!(best_ids(&logits, k), sorted[..k.min(logits.len())], "k = {k}");
        }
        assert_eq!(best_ids(&[1.0, f32::NAN, 3.0, 3.0], 3), vec![1, 2, 3], "NaN sorts as largest, as total_cmp");
    }

    #[test]
    fn held_back_tails_are_partial_characters_and_partial_stop_strings() {
        let stop = vec!["\n\n".to_string(), "END".to_string()];
        assert_eq!(streamable_len("Hello", &stop), 5);
        assert_eq!(streamable_len("Hello\u{FFFD}\u{FFFD}", &stop), 5);
        assert_eq!(streamable_len("Hello\n", &stop), 5, "may become a stop string");
        assert_eq!(streamable_len("Hello EN", &stop), 6);
        assert_eq!(streamable_len("Hello E!", &stop), 8);
        assert_eq!(streamable_len("Hello", &[]), 5);
        assert_eq!(streamable_len("", &stop), 0);
    }
}
