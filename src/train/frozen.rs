//! Frozen-layer outputs, computed once per training example and reused every step.
//!
//! With `train.frozen_layers = k` the embeddings and the bottom k encoder layers keep their
//! pretrained weights, so their output for an example is the same in every epoch. The default
//! run trains a few dozen silver sentences for hundreds of steps (dozens of epochs), so
//! computing that output once and running only the top layers per step removes about k/6 of
//! a step's forward and backward cost. The outputs live in memory: bounded by
//! [`MAX_BYTES`], above which each step recomputes them (still without their backward pass).

use candle_core::Tensor;

use crate::error::Result;
use crate::model::batch::{Batch, Example};
use crate::model::student::Student;
use crate::model::wordpiece::SpecialIds;

/// Cache no more than this (4 GiB: ~110k sentences of 60 pieces at MiniLM's 384 floats).
pub const MAX_BYTES: usize = 4 << 30;

/// Per example, its frozen-layer output rows: `(pieces + 2, hidden)`, `[CLS]` and `[SEP]` included.
pub struct FrozenOutputs {
    rows: Vec<Tensor>,
}

impl FrozenOutputs {
    /// `None` when `student` has nothing to reuse ([`Student::reuses_frozen_output`]) or the
    /// outputs would exceed `max_bytes`.
    pub fn compute(
        student: &Student,
        examples: &[Example],
        batch_size: usize,
        special: SpecialIds,
        max_bytes: usize,
    ) -> Result<Option<Self>> {
        if !student.reuses_frozen_output() || examples.is_empty() {
            return Ok(None);
        }
        let bytes: usize = examples.iter().map(|e| (e.ids.len() + 2) * student.hidden_size() * 4).sum();
        if bytes > max_bytes {
            tracing::warn!(
                "frozen-layer outputs of {} examples need {} MiB (limit {} MiB): recomputing them every step",
                examples.len(),
                bytes >> 20,
                max_bytes >> 20
            );
            return Ok(None);
        }
        // Length-sorted batches waste little on padding; each row is cut to its own length.
        let mut order: Vec<usize> = (0..examples.len()).collect();
        order.sort_by_key(|&i| examples[i].ids.len());
        let mut rows: Vec<Option<Tensor>> = vec![None; examples.len()];
        for chunk in order.chunks(batch_size.max(1)) {
            let refs: Vec<&Example> = chunk.iter().map(|&i| &examples[i]).collect();
            let lower = student.encode_lower(&Batch::new(&refs, special))?;
            for (row, &i) in chunk.iter().enumerate() {
                rows[i] = Some(lower.get(row)?.narrow(0, 0, examples[i].ids.len() + 2)?.contiguous()?);
            }
        }
        Ok(Some(Self { rows: rows.into_iter().map(|r| r.expect("every example is in one chunk")).collect() }))
    }

    /// The frozen-layer output of `batch`, built from `indices` (the examples it holds, in
    /// order): each example's rows, zero-padded to the batch's length.
    pub fn batch(&self, indices: &[usize], batch: &Batch) -> Result<Tensor> {
        let padded = indices
            .iter()
            .map(|&i| {
                let rows = &self.rows[i];
                rows.pad_with_zeros(0, 0, batch.seq_len - rows.dim(0)?)
            })
            .collect::<candle_core::Result<Vec<_>>>()?;
        Ok(Tensor::stack(&padded, 0)?)
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::student::testutil::tiny_student;
    use crate::model::student::{Arch, StudentSpec};
    use crate::model::wordpiece::testutil::{toy_tokenizer, toy_vocab_size};
    use crate::vocab::Task;

    fn examples() -> Vec<Example> {
        [vec![10u32, 11, 12, 13, 14], vec![15, 16], vec![17, 18, 19]]
            .into_iter()
            .map(|ids| Example { ids, ..Default::default() })
            .collect()
    }

    fn student(arch: Arch, frozen: usize) -> Student {
        let spec = StudentSpec { task: Task::Ade, arch, dropout: 0.0 };
        let (_, mut student) = tiny_student(&spec, toy_vocab_size(), 5);
        student.set_frozen_layers(frozen).unwrap();
        student
    }

    #[test]
    fn hidden_states_from_cached_rows_equal_a_full_forward() {
        let student = student(Arch::Conditioned, 1);
        let special = toy_tokenizer().special();
        let examples = examples();
        let frozen = FrozenOutputs::compute(&student, &examples, 2, special, MAX_BYTES).unwrap().unwrap();
        // A batch in another order and of other padding than the cache was computed with.
        let indices = [2, 0, 1];
        let refs: Vec<&Example> = indices.iter().map(|&i| &examples[i]).collect();
        let batch = Batch::new(&refs, special);
        let cached = student.encode_upper(&frozen.batch(&indices, &batch).unwrap(), &batch).unwrap();
        let full = student.encode(&batch).unwrap();
        let mask = Tensor::from_slice(&batch.mask, (3, batch.seq_len), &candle_core::Device::Cpu).unwrap();
        let mask = mask.to_dtype(candle_core::DType::F32).unwrap().unsqueeze(2).unwrap();
        let diff = ((cached - full).unwrap().broadcast_mul(&mask).unwrap()).abs().unwrap();
        let diff = diff.max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-4, "real tokens differ by {diff}");
    }

    #[test]
    fn nothing_is_cached_without_frozen_layers_with_markers_or_over_the_limit() {
        let special = toy_tokenizer().special();
        let compute = |s: &Student, max| FrozenOutputs::compute(s, &examples(), 2, special, max).unwrap();
        assert!(compute(&student(Arch::Conditioned, 0), MAX_BYTES).is_none());
        assert!(compute(&student(Arch::Markers, 1), MAX_BYTES).is_none());
        assert!(compute(&student(Arch::Conditioned, 1), 100).is_none());
        assert!(compute(&student(Arch::Conditioned, 1), MAX_BYTES).is_some());
    }
}
