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
//!
//! The modules, from the floor up. The shared floor imports no stage, so every stage can use
//! it without importing another stage for a task, a schema or an error; the two models import
//! only the floor (the LLM's tests borrow the teacher's prompts):
//!
//! ```text
//! shared floor  error (+ TeacherError), schema, text, vocab (Task, the PHI scheme),
//!               run_dir, columns, plan, parallel
//! models        model (the student), llm (the embedded teacher LLM)
//! stages        ingest, teacher (label), train, extract, eval, publish
//! around them   serve (the LLM over HTTP), cluster, sql, manifest, pipeline, config, cli
//! ```

// The shared floor.
pub mod columns;
pub mod error;
pub mod parallel;
pub mod plan;
pub mod run_dir;
pub mod schema;
pub mod text;
pub mod vocab;

// The models.
pub mod llm;
pub mod model;

// The stages.
pub mod eval;
pub mod extract;
pub mod ingest;
pub mod publish;
pub mod teacher;
pub mod train;

// Running them: the LLM's server, the cluster, SQL, whole runs and the command line.
pub mod cli;
pub mod cluster;
pub mod config;
pub mod manifest;
pub mod pipeline;
pub mod serve;
pub mod sql;

pub use error::{Error, Result};
