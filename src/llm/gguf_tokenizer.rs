//! A `tokenizers::Tokenizer` rebuilt from the vocabulary stored in a GGUF file's metadata.
//!
//! GGUF files carry no `tokenizer.json`, but llama.cpp's converter writes the byte-level BPE
//! vocabulary into `tokenizer.ggml.{tokens,merges,token_type}` and names the pre-tokenizer in
//! `tokenizer.ggml.pre`. We rebuild the same pipeline the Hugging Face `tokenizer.json` of each
//! supported model uses (checked to give identical ids on 64 chunks, see `shared/MODELS.md`):
//!
//! - `qwen2`: NFC normalizer, the Qwen split regex, then ByteLevel without its own regex;
//! - `smollm`: individual digits, then ByteLevel with the GPT-2 regex.
//!
//! Token types 3 (control) and 4 (user-defined) become special tokens, so `<|im_start|>` in a
//! prompt is one id. Encode with `add_special_tokens = false`: ChatML markers are written by the
//! prompt renderer, not added by the tokenizer.

use candle_core::quantized::gguf_file;
use tokenizers::decoders::byte_level::ByteLevel as ByteLevelDecoder;
use tokenizers::models::bpe::{BPE, Vocab};
use tokenizers::normalizers::unicode::NFC;
use tokenizers::pre_tokenizers::byte_level::ByteLevel;
use tokenizers::pre_tokenizers::digits::Digits;
use tokenizers::pre_tokenizers::sequence::Sequence;
use tokenizers::pre_tokenizers::split::{Split, SplitPattern};
use tokenizers::{AddedToken, PreTokenizerWrapper, SplitDelimiterBehavior, Tokenizer};

use crate::{Error, Result};

/// The pre-tokenizer split regex of Qwen2 (from Qwen2.5's `tokenizer.json`).
const QWEN2_SPLIT: &str =
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

/// GGUF `token_type` values that mark a token as special (llama.cpp `LLAMA_TOKEN_TYPE_*`).
const TOKEN_TYPE_CONTROL: i32 = 3;
const TOKEN_TYPE_USER_DEFINED: i32 = 4;

/// The vocabulary as stored in the GGUF metadata, before it becomes a `Tokenizer`.
#[derive(Debug, Clone)]
pub struct GgufVocab {
    /// Token strings in byte-level form (`Ġ` for a space), indexed by id.
    pub tokens: Vec<String>,
    /// Ids whose type is control or user-defined (`<|im_start|>`, `<|endoftext|>`, ...).
    pub special: Vec<u32>,
    /// `tokenizer.ggml.eos_token_id`, when present.
    pub eos_token_id: Option<u32>,
    merges: Vec<(String, String)>,
    pre: String,
}

impl GgufVocab {
    /// Read the vocabulary keys of `content`; fails naming the first missing key.
    pub fn from_gguf(content: &gguf_file::Content) -> Result<Self> {
        let get =
            |key: &str| content.metadata.get(key).ok_or_else(|| Error::Model(format!("GGUF metadata has no `{key}`")));
        let strings = |key: &str| -> Result<Vec<String>> {
            get(key)?.to_vec()?.iter().map(|v| -> Result<String> { Ok(v.to_string()?.clone()) }).collect()
        };
        let tokens = strings("tokenizer.ggml.tokens")?;
        let merges = strings("tokenizer.ggml.merges")?
            .into_iter()
            .map(|m| match m.split_once(' ') {
                Some((a, b)) => Ok((a.to_string(), b.to_string())),
                None => Err(Error::Model(format!("GGUF merge `{m}` has no space"))),
            })
            .collect::<Result<Vec<_>>>()?;
        let types = get("tokenizer.ggml.token_type")?.to_vec()?;
        let mut special = Vec::new();
        for (id, t) in types.iter().enumerate() {
            if matches!(t.to_i32()?, TOKEN_TYPE_CONTROL | TOKEN_TYPE_USER_DEFINED) {
                special.push(id as u32);
            }
        }
        let pre = get("tokenizer.ggml.pre")?.to_string()?.clone();
        let eos_token_id = get("tokenizer.ggml.eos_token_id").and_then(|v| Ok(v.to_u32()?)).ok();
        Ok(Self { tokens, special, eos_token_id, merges, pre })
    }

    /// Build the `Tokenizer`; fails for a pre-tokenizer we have not checked.
    pub fn tokenizer(&self) -> Result<Tokenizer> {
        let vocab: Vocab = self.tokens.iter().enumerate().map(|(id, t)| (t.clone(), id as u32)).collect();
        let bpe = BPE::builder()
            .vocab_and_merges(vocab, self.merges.clone())
            .build()
            .map_err(|e| Error::Tokenizer(e.to_string()))?;
        let mut tokenizer = Tokenizer::new(bpe);
        let byte_level = |use_regex| ByteLevel::new(false, true, use_regex);
        let pre: Vec<PreTokenizerWrapper> = match self.pre.as_str() {
            "qwen2" => {
                let split =
                    Split::new(SplitPattern::Regex(QWEN2_SPLIT.into()), SplitDelimiterBehavior::Isolated, false)
                        .map_err(|e| Error::Tokenizer(e.to_string()))?;
                tokenizer.with_normalizer(Some(NFC)).map_err(|e| Error::Tokenizer(e.to_string()))?;
                vec![split.into(), byte_level(false).into()]
            }
            "smollm" => vec![Digits::new(true).into(), byte_level(true).into()],
            other => {
                return Err(Error::Model(format!(
                    "GGUF tokenizer.ggml.pre = `{other}` is not supported (qwen2, smollm are)"
                )));
            }
        };
        tokenizer.with_pre_tokenizer(Some(Sequence::new(pre)));
        tokenizer.with_decoder(Some(ByteLevelDecoder::default()));
        let specials: Vec<AddedToken> =
            self.special.iter().map(|&id| AddedToken::from(self.tokens[id as usize].clone(), true)).collect();
        tokenizer.add_special_tokens(specials).map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(tokenizer)
    }

    /// The raw bytes each token stands for (`None` for special tokens), undoing the GPT-2
    /// byte-to-unicode mapping. Constrained decoding works on these bytes because a byte-level
    /// token can end in the middle of a UTF-8 character.
    pub fn token_bytes(&self) -> Vec<Option<Vec<u8>>> {
        let unicode_to_byte = unicode_to_byte();
        let mut out: Vec<Option<Vec<u8>>> =
            self.tokens.iter().map(|t| t.chars().map(|c| unicode_to_byte.get(&c).copied()).collect()).collect();
        for &id in &self.special {
            out[id as usize] = None;
        }
        out
    }
}

/// The inverse of GPT-2's `bytes_to_unicode`: printable bytes map to themselves, the others
/// to U+0100 onwards, in byte order.
fn unicode_to_byte() -> std::collections::HashMap<char, u8> {
    let printable = |b: u8| (b'!'..=b'~').contains(&b) || (0xA1..=0xAC).contains(&b) || b >= 0xAE;
    let mut next = 0u32;
    (0..=255u8)
        .map(|b| {
            if printable(b) {
                (char::from(b), b)
            } else {
                next += 1;
                // 256 + n is always a valid scalar value (below the surrogate range).
                (char::from_u32(255 + next).expect("U+0100.. are valid chars"), b)
            }
        })
        .collect()
}

#[cfg(test)]
pub(crate) mod tests {
    use super::*;

    pub(crate) fn smollm_vocab() -> GgufVocab {
        let path = concat!(env!("CARGO_MANIFEST_DIR"), "/models/SmolLM2-135M-Instruct.Q4_1.gguf");
        let mut file = std::fs::File::open(path).expect("run `make models` first");
        let content = gguf_file::Content::read(&mut file).unwrap();
        GgufVocab::from_gguf(&content).unwrap()
    }

    #[test]
    fn byte_mapping_round_trips_all_bytes() {
        let map = unicode_to_byte();
        assert_eq!(map.len(), 256);
        assert_eq!(map[&'Ġ'], b' ');
        assert_eq!(map[&'Ċ'], b'\n');
        assert_eq!(map[&'a'], b'a');
    }

    #[test]
    fn smollm_tokenizer_round_trips_and_keeps_chatml_markers() {
        let vocab = smollm_vocab();
        let tokenizer = vocab.tokenizer().unwrap();
        let text = "<|im_start|>user\nIbuprofen 400mg caused gastrointestinal bleeding.<|im_end|>\n";
        let enc = tokenizer.encode(text, false).unwrap();
        let ids = enc.get_ids();
        let im_start = tokenizer.token_to_id("<|im_start|>").unwrap();
        assert_eq!(ids[0], im_start);
        // Digits are split one by one by the smollm pre-tokenizer.
        assert!(enc.get_tokens().iter().any(|t| t == "4"));
        assert_eq!(tokenizer.decode(ids, false).unwrap(), text);
        // Byte table agrees with the decoder on ordinary tokens.
        let bytes = vocab.token_bytes();
        let joined: Vec<u8> = ids.iter().filter_map(|&i| bytes[i as usize].clone()).flatten().collect();
        assert!(String::from_utf8(joined).unwrap().contains("Ibuprofen 400mg caused"));
        assert!(bytes[im_start as usize].is_none());
    }
}
