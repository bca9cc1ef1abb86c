//! The student, and only the student: the small BERT extractor that `train` fits to the
//! teacher's labels and `extract` runs. The embedded teacher LLM is a room of its own,
//! [`crate::llm`], so neither model's code can lean on the other's.
//!
//! [`student`] ties the [`encoder`] to the heads ([`pairwise`] for the ablation; [`layers`] holds
//! the parameter-free pieces they share); [`tags`] is the BIO scheme the heads predict, over
//! [`wordpiece`] windows packed into a [`batch`]; [`fused`] gives training its one-pass LayerNorm,
//! softmax and GELU; [`predict`] decodes one chunk of sentences and
//! [`checkpoint`] stores a trained student.

pub mod batch;
pub mod checkpoint;
pub mod encoder;
pub mod fused;
pub mod layers;
pub mod pairwise;
pub mod predict;
pub mod student;
pub mod tags;
pub mod wordpiece;
