//! Neural models: the student encoder and heads, and the embedded teacher LLM.
pub mod batch;
pub mod checkpoint;
pub mod encoder;
pub mod gguf_tokenizer;
pub mod pairwise;
pub mod predict;
pub mod student;
pub mod tags;
pub mod teacher_llm;
pub mod wordpiece;
