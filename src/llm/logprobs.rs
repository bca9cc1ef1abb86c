//! Log probabilities of generated tokens, for OpenAI's `logprobs` / `top_logprobs`.
//!
//! They are the model's own distribution: a log-softmax of the raw logits over the whole
//! vocabulary, at temperature 1, *before* temperature, top-p and the JSON/grounding
//! constraint. So they say what the model believed, not what the constrained sampler drew
//! from (a grounded token can have a low logprob; it was the best admissible one). This is
//! also what vLLM reports by default (`raw_logprobs`).

/// Most alternatives a client may ask for (OpenAI's `top_logprobs` limit).
pub const MAX_TOP_LOGPROBS: usize = 20;

/// One token and its log probability.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenProb {
    pub id: u32,
    /// What the token stands for: its bytes (which can end inside a UTF-8 character), or the
    /// text of a special token such as `<|im_end|>`.
    pub bytes: Vec<u8>,
    pub logprob: f32,
}

/// A generated token with the `top` most likely tokens at its position, most likely first.
#[derive(Debug, Clone, PartialEq)]
pub struct TokenLogprob {
    pub token: TokenProb,
    pub top: Vec<TokenProb>,
}

/// The chosen token's log probability and the `k` best (at most [`MAX_TOP_LOGPROBS`]) from
/// one row of raw logits; `bytes` names each id. Ties keep the lower id first.
pub fn token_logprob(logits: &[f32], chosen: u32, k: usize, bytes: impl Fn(u32) -> Vec<u8>) -> TokenLogprob {
    let max = logits.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    let sum: f64 = logits.iter().map(|&l| f64::from(l - max).exp()).sum();
    let log_z = f64::from(max) + sum.ln();
    let logprob = |id: usize| (f64::from(logits[id]) - log_z) as f32;
    let k = k.min(MAX_TOP_LOGPROBS).min(logits.len());
    // One pass keeping the k best, sorted: k is at most 20, the vocabulary ~50k.
    let mut best: Vec<usize> = Vec::with_capacity(k + 1);
    if k > 0 {
        for (id, &l) in logits.iter().enumerate() {
            if best.len() == k && l <= logits[best[k - 1]] {
                continue;
            }
            let at = best.partition_point(|&b| logits[b] >= l);
            best.insert(at, id);
            best.truncate(k);
        }
    }
    let entry = |id: usize| TokenProb { id: id as u32, bytes: bytes(id as u32), logprob: logprob(id) };
    TokenLogprob { token: entry(chosen as usize), top: best.into_iter().map(entry).collect() }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn log_softmax_over_the_whole_row_sorted_best_first() {
        let logits = [1.0f32, 3.0, 2.0, 3.0, -1.0];
        let lp = token_logprob(&logits, 2, 3, |id| vec![b'a' + id as u8]);
        let z: f64 = logits.iter().map(|&l| f64::from(l).exp()).sum();
        assert!((f64::from(lp.token.logprob) - (2.0 - z.ln())).abs() < 1e-6);
        assert_eq!(lp.token.bytes, b"c");
        let ids: Vec<u32> = lp.top.iter().map(|t| t.id).collect();
        assert_eq!(ids, [1, 3, 2], "best first, ties by id");
        assert_eq!(lp.top[2].logprob, lp.token.logprob, "the chosen token's entry is the same number");
        let total: f64 = (0..5).map(|i| f64::from(token_logprob(&logits, i, 0, |_| vec![]).token.logprob).exp()).sum();
        assert!((total - 1.0).abs() < 1e-6 && lp.top.iter().all(|t| t.logprob <= 0.0));
        assert!(token_logprob(&logits, 0, 0, |_| vec![]).top.is_empty());
        assert_eq!(token_logprob(&logits, 0, 99, |_| vec![]).top.len(), 5);
    }
}
