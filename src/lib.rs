//! # biodistill
//!
//! Distil a large language model into a small, fast biomedical extractor, after Gu et al. 2023,
//! "Distilling Large Language Models for Biomedical Knowledge Extraction: A Case Study on Adverse
//! Drug Events" (<https://arxiv.org/abs/2307.06439>).
//!
//! The pipeline, one module per stage, talking only through Parquet tables in a [`run_dir`]:
//!
//! ```text
//! ingest   raw corpora            -> documents, sentences, gold_*, quarantine
//! label    sentences + teacher    -> teacher_labels, teacher_calls
//! train    teacher_labels         -> student checkpoint (safetensors + config.json)
//! extract  sentences + student    -> ade_relations, gene_disease, phi_spans, redacted_documents
//! eval     outputs + gold_*       -> eval_results, report
//! publish  staged outputs         -> published tables, run manifest
//! ```
//!
//! Offsets everywhere are 0-based, end-exclusive counts of Unicode scalar values (Rust `char`s,
//! Python `str` indices), never bytes: see [`text`].

pub mod cli;
pub mod cluster;
pub mod columns;
pub mod config;
pub mod error;
pub mod ingest;
pub mod parallel;
pub mod plan;
pub mod run_dir;
pub mod schema;
pub mod sql;
pub mod text;
pub mod vocab;

pub mod eval;
pub mod extract;
pub mod llm;
pub mod manifest;
pub mod model;
pub mod pipeline;
pub mod publish;
pub mod serve;
pub mod teacher;
pub mod train;

pub use error::{Error, Result};
