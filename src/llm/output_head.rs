//! The teacher's output layer for chosen tokens only.
//!
//! llama.cpp multiplies every decoded token's final hidden state by the whole output matrix
//! (151,936 × 1,536 for the default teacher, Q6_K): ~470 MFLOP per token in a kernel that is
//! not repacked on x86, about a tenth of a labeling run. Grounded greedy decoding only ever
//! looks at the tokens its automaton admits (a few hundred at most, see `token_trie`), so the
//! decoder can stop the graph at the hidden state ([`super::llama_cpp`]) and [`OutputHead`]
//! computes those tokens' logits from the same GGUF rows, the way llama.cpp's CPU kernel
//! does: the hidden state quantized to the weight type's dot-product type, then one quantized
//! dot product per row (candle's implementations of ggml's kernels). The logits agree with
//! llama.cpp's to float rounding (unit test against a full forward).

use std::path::Path;
use std::sync::Arc;

use candle_core::quantized::GgmlDType;
use candle_core::quantized::gguf_file::{Content, Value};
use candle_core::quantized::k_quants::{
    BlockQ4_0, BlockQ4_1, BlockQ4K, BlockQ5_0, BlockQ5_1, BlockQ5K, BlockQ6K, BlockQ8_0, BlockQ8K, GgmlType,
};
use half::f16;
use memmap2::Mmap;

use crate::error::IoContext;
use crate::{Error, Result};

/// Architectures whose logits are the output matrix times the final norm's output, with no
/// scaling, soft-capping or bias after it (those models keep llama.cpp's full output layer).
const PLAIN_HEADS: &[&str] = &["qwen2", "llama"];

/// The output matrix of a GGUF model, mapped from the file (shared with llama.cpp's own
/// mapping in the page cache, so no second copy in memory).
pub struct OutputHead {
    map: Mmap,
    /// Byte offset of the matrix in the file.
    start: usize,
    dtype: GgmlDType,
    rows: usize,
    cols: usize,
}

impl std::fmt::Debug for OutputHead {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("OutputHead")
            .field("dtype", &self.dtype)
            .field("rows", &self.rows)
            .field("cols", &self.cols)
            .finish()
    }
}

/// One row of a forward's output: every token's logit, or the final hidden state from which
/// [`Logits::of`] computes the logits of chosen tokens.
#[derive(Debug, Clone)]
pub enum Logits {
    Full(Vec<f32>),
    Hidden { state: Vec<f32>, head: Arc<OutputHead> },
}

impl Logits {
    /// The logits of `ids`, in order.
    pub fn of(&self, ids: &[u32]) -> Vec<f32> {
        match self {
            Logits::Full(row) => {
                ids.iter().map(|&id| row.get(id as usize).copied().unwrap_or(f32::NEG_INFINITY)).collect()
            }
            Logits::Hidden { state, head } => head.logits(state, ids),
        }
    }

    /// The full row; `None` for a hidden state (the caller asked for those rows).
    pub fn full(self) -> Option<Vec<f32>> {
        match self {
            Logits::Full(row) => Some(row),
            Logits::Hidden { .. } => None,
        }
    }
}

/// Turn the hidden states of the sequences `full[i]` marks into whole rows of logits, in
/// one pass over the output matrix for all of them.
pub fn fill_full_rows(rows: &mut [Vec<Logits>], full: &[bool], threads: usize) {
    let mut at = Vec::new();
    let mut states: Vec<&[f32]> = Vec::new();
    let mut head = None;
    for (i, sequence_rows) in rows.iter().enumerate().filter(|&(i, _)| full[i]) {
        for (k, row) in sequence_rows.iter().enumerate() {
            if let Logits::Hidden { state, head: h } = row {
                at.push((i, k));
                states.push(state.as_slice());
                head.get_or_insert_with(|| Arc::clone(h));
            }
        }
    }
    let Some(head) = head else { return };
    let computed = head.all_logits(&states, threads);
    for ((i, k), row) in at.into_iter().zip(computed) {
        rows[i][k] = Logits::Full(row);
    }
}

impl OutputHead {
    /// The output matrix of the model at `path` (`output.weight`, or the token embeddings when
    /// they are tied), or `None` when its logits are not that product alone or its type has no
    /// kernel here. `vocab` and `hidden` are llama.cpp's view of the model, checked against the
    /// file.
    pub fn load(path: &Path, content: &Content, vocab: usize, hidden: usize) -> Result<Option<Self>> {
        let arch = match content.metadata.get("general.architecture") {
            Some(Value::String(arch)) => arch.as_str(),
            _ => return Ok(None),
        };
        if !PLAIN_HEADS.contains(&arch) || content.tensor_infos.contains_key("output.bias") {
            return Ok(None);
        }
        let Some(info) =
            content.tensor_infos.get("output.weight").or_else(|| content.tensor_infos.get("token_embd.weight"))
        else {
            return Ok(None);
        };
        let dims = info.shape.dims();
        // GGUF lists the fastest-varying dimension last in candle's shape: [rows, cols].
        if dims != [vocab, hidden] || !Self::supported(info.ggml_dtype) || hidden % info.ggml_dtype.block_size() != 0 {
            return Ok(None);
        }
        let file = std::fs::File::open(path).with_path(path)?;
        // SAFETY: the model file is opened read-only and not modified while the teacher runs
        // (llama.cpp maps the same file the same way).
        let map = unsafe { Mmap::map(&file) }.with_path(path)?;
        let start = (content.tensor_data_offset + info.offset) as usize;
        let head = Self { map, start, dtype: info.ggml_dtype, rows: vocab, cols: hidden };
        if start + head.rows * head.row_bytes() > head.map.len() {
            return Err(Error::Model(format!("{}: the output matrix runs past the end of the file", path.display())));
        }
        Ok(Some(head))
    }

    fn supported(dtype: GgmlDType) -> bool {
        use GgmlDType::*;
        matches!(dtype, F32 | F16 | Q4_0 | Q4_1 | Q5_0 | Q5_1 | Q8_0 | Q4K | Q5K | Q6K | Q8K)
    }

    fn row_bytes(&self) -> usize {
        self.cols / self.dtype.block_size() * self.dtype.type_size()
    }

    /// The logits of `ids` for the final hidden state `hidden` (ids past the vocabulary get
    /// minus infinity).
    pub fn logits(&self, hidden: &[f32], ids: &[u32]) -> Vec<f32> {
        self.dispatch(&[hidden], Some(ids), 1).pop().expect("one state")
    }

    /// Every token's logit for each of `states`, on `threads` threads: what llama.cpp's output
    /// layer gives, for the sequences of a forward that need whole rows (sampled, logprobs,
    /// free strings) while the others skip it. Each matrix row is read once for all states.
    pub fn all_logits(&self, states: &[&[f32]], threads: usize) -> Vec<Vec<f32>> {
        self.dispatch(states, None, threads)
    }

    fn dispatch(&self, states: &[&[f32]], ids: Option<&[u32]>, threads: usize) -> Vec<Vec<f32>> {
        use GgmlDType::*;
        match self.dtype {
            F32 => self.dots::<f32>(states, ids, threads),
            F16 => self.dots::<f16>(states, ids, threads),
            Q4_0 => self.dots::<BlockQ4_0>(states, ids, threads),
            Q4_1 => self.dots::<BlockQ4_1>(states, ids, threads),
            Q5_0 => self.dots::<BlockQ5_0>(states, ids, threads),
            Q5_1 => self.dots::<BlockQ5_1>(states, ids, threads),
            Q8_0 => self.dots::<BlockQ8_0>(states, ids, threads),
            Q4K => self.dots::<BlockQ4K>(states, ids, threads),
            Q5K => self.dots::<BlockQ5K>(states, ids, threads),
            Q6K => self.dots::<BlockQ6K>(states, ids, threads),
            Q8K => self.dots::<BlockQ8K>(states, ids, threads),
            _ => unreachable!("only supported types are loaded"),
        }
    }

    /// `out[s][k]` = the logit of token `ids[k]` (all tokens: `None`) for state `s`.
    fn dots<T: GgmlType>(&self, states: &[&[f32]], ids: Option<&[u32]>, threads: usize) -> Vec<Vec<f32>> {
        let quantized: Vec<Vec<T::VecDotType>> = states
            .iter()
            .map(|state| {
                debug_assert_eq!(state.len(), self.cols);
                let mut q = vec![T::VecDotType::zeros(); self.cols / T::VecDotType::BLCK_SIZE];
                T::VecDotType::from_float(state, &mut q);
                q
            })
            .collect();
        let n = ids.map_or(self.rows, <[u32]>::len);
        let id_at = |k: usize| ids.map_or(k, |ids| ids[k] as usize);
        let mut out = vec![vec![0.0f32; n]; states.len()];
        // Each thread fills a contiguous range of tokens for every state.
        let threads = threads.clamp(1, n.max(1));
        let chunk = n.div_ceil(threads).max(1);
        let fill = |from: usize, parts: Vec<&mut [f32]>| {
            let mut parts = parts;
            for k in 0..parts.first().map_or(0, |p| p.len()) {
                let row = self.row::<T>(id_at(from + k));
                for (part, q) in parts.iter_mut().zip(&quantized) {
                    part[k] = row.map_or(f32::NEG_INFINITY, |row| T::vec_dot(self.cols, row, q));
                }
            }
        };
        let mut columns: Vec<Vec<&mut [f32]>> = (0..threads).map(|_| Vec::new()).collect();
        for state_out in out.iter_mut() {
            for (t, part) in state_out.chunks_mut(chunk).enumerate() {
                columns[t].push(part);
            }
        }
        if threads == 1 {
            fill(0, columns.pop().unwrap_or_default());
        } else {
            std::thread::scope(|scope| {
                for (t, parts) in columns.into_iter().enumerate() {
                    let fill = &fill;
                    scope.spawn(move || fill(t * chunk, parts));
                }
            });
        }
        out
    }

    /// Row `id` of the matrix as blocks of `T`, `None` past the vocabulary.
    fn row<T: GgmlType>(&self, id: usize) -> Option<&[T]> {
        if id >= self.rows {
            return None;
        }
        let row_bytes = self.row_bytes();
        let at = self.start + id * row_bytes;
        let bytes = &self.map[at..at + row_bytes];
        debug_assert_eq!(bytes.as_ptr() as usize % std::mem::align_of::<T>(), 0);
        // SAFETY: `load` checked the matrix lies inside the mapping; a row is `cols /
        // BLCK_SIZE` consecutive `T`s (plain-old-data structs laid out as ggml's, which candle
        // reads the same way), and GGUF aligns tensor data (32 bytes) and every row length is
        // a whole number of blocks, so rows are aligned for `T`.
        Some(unsafe { std::slice::from_raw_parts(bytes.as_ptr().cast::<T>(), self.cols / T::BLCK_SIZE) })
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::llm::llama_cpp::tests::SMOLLM;

    #[test]
    fn only_plain_heads_of_known_types_load() {
        let path = Path::new(SMOLLM);
        let mut file = std::fs::File::open(path).unwrap();
        let content = Content::read(&mut file).unwrap();
        let info = content.tensor_infos.get("output.weight").or_else(|| content.tensor_infos.get("token_embd.weight"));
        let dims = info.unwrap().shape.dims().to_vec();
        let head = OutputHead::load(path, &content, dims[0], dims[1]).unwrap().expect("a llama head");
        assert_eq!((head.rows, head.cols), (dims[0], dims[1]));
        assert!(OutputHead::load(path, &content, dims[0] + 1, dims[1]).unwrap().is_none(), "a vocabulary mismatch");
        assert_eq!(head.logits(&vec![0.0; dims[1]], &[0, dims[0] as u32]), vec![0.0, f32::NEG_INFINITY]);
        // Whole rows, several states, several threads: each the chosen-token logits.
        let states: Vec<Vec<f32>> =
            (0..3).map(|s| (0..dims[1]).map(|i| ((i * 7 + s * 13) % 17) as f32 / 17.0 - 0.5).collect()).collect();
        let views: Vec<&[f32]> = states.iter().map(Vec::as_slice).collect();
        let all = head.all_logits(&views, 3);
        let ids = [0u32, 1, 100, dims[0] as u32 - 1];
        for (state, row) in states.iter().zip(&all) {
            assert_eq!(row.len(), dims[0]);
            let picked: Vec<f32> = ids.iter().map(|&i| row[i as usize]).collect();
            assert_eq!(picked, head.logits(state, &ids));
        }
    }
}
