//! Every Arrow schema and column name, defined once.
//!
//! Offsets (`start`, `end`, `*_start`, `*_end`) are 0-based, end-exclusive, in Unicode scalar
//! values (see [`crate::text`]). SQL in `sql/` uses these same names.

use std::sync::{Arc, LazyLock};

use arrow::datatypes::{DataType, Field, Schema, SchemaRef};

/// Table names.
pub mod table {
    pub const DOCUMENTS: &str = "documents";
    pub const SENTENCES: &str = "sentences";
    pub const GOLD_ADE: &str = "gold_ade";
    pub const GOLD_DRUG_DOSE: &str = "gold_drug_dose";
    pub const GOLD_GENE_DISEASE: &str = "gold_gene_disease";
    pub const GOLD_PHI: &str = "gold_phi";
    pub const QUARANTINE: &str = "quarantine";
    pub const TEACHER_LABELS: &str = "teacher_labels";
    pub const TEACHER_CALLS: &str = "teacher_calls";
    pub const ADE_RELATIONS: &str = "ade_relations";
    pub const GENE_DISEASE: &str = "gene_disease";
    pub const PHI_SPANS: &str = "phi_spans";
    pub const REDACTED_DOCUMENTS: &str = "redacted_documents";
    pub const DOCUMENT_VERSIONS: &str = "document_versions";
    pub const EVAL_RESULTS: &str = "eval_results";
    pub const EVAL_HISTORY: &str = "eval_history";
    pub const RUN_MANIFEST: &str = "run_manifest";
}

/// The key columns most tables share; stages name them through these (or
/// [`crate::columns::Columns::doc_id`]), never as bare strings.
pub mod column {
    pub const DOC_ID: &str = "doc_id";
    pub const SENT_ID: &str = "sent_id";
}

/// `split` values. Gold-set documents are `train` or `dev`; unlabeled corpora are `unlabeled`.
pub mod split {
    pub const TRAIN: &str = "train";
    pub const DEV: &str = "dev";
    pub const UNLABELED: &str = "unlabeled";
}

fn utf8(name: &str) -> Field {
    Field::new(name, DataType::Utf8, false)
}
fn utf8_null(name: &str) -> Field {
    Field::new(name, DataType::Utf8, true)
}
fn int32(name: &str) -> Field {
    Field::new(name, DataType::Int32, false)
}
fn int32_null(name: &str) -> Field {
    Field::new(name, DataType::Int32, true)
}

/// `documents(doc_id, source, split, title, text, content_hash)`.
///
/// `doc_id` is `<source>:<id in the source>` and unique across sources; `content_hash` is the
/// hex sha256 of `text`, which identifies a document's content across runs.
pub static DOCUMENTS: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        utf8(column::DOC_ID),
        utf8("source"),
        utf8("split"),
        utf8_null("title"),
        utf8("text"),
        utf8("content_hash"),
    ]))
});

/// `sentences(doc_id, sent_id, start, end, text)`: `text` equals `documents.text[start..end]`.
pub static SENTENCES: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        utf8(column::DOC_ID),
        int32(column::SENT_ID),
        int32("start"),
        int32("end"),
        utf8("text"),
    ]))
});

/// A (first, second) span pair over a sentence, with the pair's gold split. Offsets index `text`,
/// which is the sentence `sent_id` of `doc_id`.
fn pair_schema(first: &str, second: &str) -> SchemaRef {
    Arc::new(Schema::new(vec![
        utf8(column::DOC_ID),
        int32(column::SENT_ID),
        utf8("split"),
        utf8("text"),
        utf8(first),
        int32(&format!("{first}_start")),
        int32(&format!("{first}_end")),
        utf8(second),
        int32(&format!("{second}_start")),
        int32(&format!("{second}_end")),
    ]))
}

/// `gold_ade`: one row per distinct (sentence, drug, effect) of ADE-Corpus-V2.
pub static GOLD_ADE: LazyLock<SchemaRef> = LazyLock::new(|| pair_schema("drug", "effect"));

/// `gold_drug_dose`: ADE-Corpus-V2 `DRUG-DOSE.rel`, one row per (sentence, drug, dose).
pub static GOLD_DRUG_DOSE: LazyLock<SchemaRef> = LazyLock::new(|| pair_schema("drug", "dose"));

/// `gold_gene_disease`: gene–disease gold from GAD, BioRED and EU-ADR.
///
/// `text` is what the offsets index: the sentence `sent_id` for sentence-level sets (GAD,
/// EU-ADR), or the whole document (`sent_id` null) for BioRED's document-level relations, whose
/// offsets are those of the first mention of each entity. `label` is 1 for an association
/// (GAD Y/N, EU-ADR PA/SA, every BioRED relation), 0 for none (GAD F, EU-ADR FA/NA);
/// `relation` keeps the source's own label.
pub static GOLD_GENE_DISEASE: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        utf8("dataset"),
        utf8(column::DOC_ID),
        int32_null("sent_id"),
        utf8("split"),
        utf8("text"),
        utf8("gene"),
        int32("gene_start"),
        int32("gene_end"),
        utf8_null("gene_id"),
        utf8("disease"),
        int32("disease_start"),
        int32("disease_end"),
        utf8_null("disease_id"),
        Field::new("label", DataType::Int8, false),
        utf8("relation"),
    ]))
});

/// `gold_phi(dataset, doc_id, split, start, end, phi_type, span)`: offsets index
/// `documents.text`; `phi_type` is the gold set's own type name.
pub static GOLD_PHI: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        utf8("dataset"),
        utf8(column::DOC_ID),
        utf8("split"),
        int32("start"),
        int32("end"),
        utf8("phi_type"),
        utf8("span"),
    ]))
});

/// `quarantine(source, file, row, doc_id, reason, raw)`: input rows that could not be ingested.
pub static QUARANTINE: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        utf8("source"),
        utf8("file"),
        Field::new("row", DataType::Int64, true),
        utf8_null("doc_id"),
        utf8("reason"),
        utf8_null("raw"),
    ]))
});

/// `teacher_labels`: one row per span (`kind = 'span'`) or related pair (`kind = 'pair'`) the
/// teacher returned for one sentence and task (`ade`, `gene_disease`, `phi`).
///
/// Offsets index the sentence text (`sentences.text`), and are null when the string could not
/// be aligned (`*_alignment = 'unaligned'`; such rows never become training labels). Alignment
/// is one of `exact`, `case_insensitive`, `fuzzy`, `unaligned`. For spans only the `subject_*`
/// columns are set; for pairs `subject` is the anchor (drug, gene) and `object` the related
/// span (adverse event, disease). Sentences the teacher labeled with nothing have no rows here
/// but an `ok` row in `teacher_calls`. `confidence` is the teacher's, in (0, 1], when it was
/// asked for token log probabilities (`teacher.logprobs`; [`crate::teacher::confidence`]).
pub static TEACHER_LABELS: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        utf8("task"),
        utf8(column::DOC_ID),
        int32(column::SENT_ID),
        utf8("kind"),
        utf8("subject_type"),
        utf8("subject"),
        int32_null("subject_start"),
        int32_null("subject_end"),
        utf8("subject_alignment"),
        utf8_null("object_type"),
        utf8_null("object"),
        int32_null("object_start"),
        int32_null("object_end"),
        utf8_null("object_alignment"),
        utf8("model"),
        utf8("prompt_version"),
        utf8("cache_key"),
        int32("pass"),
        utf8_null("first_run"),
        Field::new("confidence", DataType::Float64, true),
    ]))
});

/// `teacher_calls`: one row per (task, sentence, pass) of the silver set and dev sample: its cache key, whether it was served
/// from the cache, latency, tokens, cost, retries and final `status` (`ok`, `parse_error`,
/// `failed`) with the error message when not ok.
pub static TEACHER_CALLS: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        utf8("task"),
        utf8(column::DOC_ID),
        int32(column::SENT_ID),
        utf8("cache_key"),
        utf8("status"),
        Field::new("cached", DataType::Boolean, false),
        Field::new("latency_ms", DataType::Float64, false),
        Field::new("prompt_tokens", DataType::Int64, false),
        Field::new("completion_tokens", DataType::Int64, false),
        Field::new("cost_usd", DataType::Float64, false),
        Field::new("retries", DataType::Int32, false),
        utf8_null("error"),
        utf8("model"),
        utf8("prompt_version"),
        int32("pass"),
        utf8_null("first_run"),
    ]))
});

/// An extracted (anchor, related) pair with document-level offsets and provenance.
fn extracted_pair_schema(first: &str, second: &str) -> SchemaRef {
    Arc::new(Schema::new(vec![
        utf8(column::DOC_ID),
        int32(column::SENT_ID),
        utf8(first),
        int32(&format!("{first}_start")),
        int32(&format!("{first}_end")),
        utf8(second),
        int32(&format!("{second}_start")),
        int32(&format!("{second}_end")),
        Field::new("score", DataType::Float32, false),
        utf8("model_version"),
        utf8("run_id"),
    ]))
}

/// `ade_relations`: drug -> adverse event pairs the student extracted; offsets index
/// `documents.text`.
pub static ADE_RELATIONS: LazyLock<SchemaRef> = LazyLock::new(|| extracted_pair_schema("drug", "effect"));

/// `gene_disease`: gene–disease associations the student extracted; offsets index
/// `documents.text`.
pub static GENE_DISEASE: LazyLock<SchemaRef> = LazyLock::new(|| extracted_pair_schema("gene", "disease"));

/// `phi_spans(doc_id, start, end, phi_type, score, found_by, model_version, run_id)`; offsets
/// index `documents.text`; `found_by` lists `student` and/or the pattern recognizers
/// (`extract::recognizers`) that found the span.
pub static PHI_SPANS: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        utf8(column::DOC_ID),
        int32("start"),
        int32("end"),
        utf8("phi_type"),
        Field::new("score", DataType::Float32, false),
        Field::new("found_by", found_by_type(), false),
        utf8("model_version"),
        utf8("run_id"),
    ]))
});

/// `phi_spans.found_by`: a list of recognizer names.
pub fn found_by_type() -> DataType {
    DataType::List(Arc::new(Field::new("item", DataType::Utf8, false)))
}

/// `redacted_documents(doc_id, redacted_text)`: each PHI span replaced by `[TYPE]`.
pub static REDACTED_DOCUMENTS: LazyLock<SchemaRef> =
    LazyLock::new(|| Arc::new(Schema::new(vec![utf8(column::DOC_ID), utf8("redacted_text")])));

/// `document_versions(doc_id, content_hash)`: the documents a publication covers, so the next
/// incremental run knows which are new or changed.
pub static DOCUMENT_VERSIONS: LazyLock<SchemaRef> =
    LazyLock::new(|| Arc::new(Schema::new(vec![utf8(column::DOC_ID), utf8("content_hash")])));

/// `eval_results(run_id, task, dataset, system, subset, metric, value, n)`: one row per metric.
/// `n` is the metric's denominator: predictions for a precision, gold items for a recall or F1,
/// documents for a macro average, rows for GAD accuracy, gold tokens for `token_recall`. An
/// undefined ratio (no denominator) has value 0 and n 0.
pub static EVAL_RESULTS: LazyLock<SchemaRef> = LazyLock::new(|| {
    Arc::new(Schema::new(vec![
        utf8("run_id"),
        utf8("task"),
        utf8("dataset"),
        utf8("system"),
        utf8("subset"),
        utf8("metric"),
        Field::new("value", DataType::Float64, false),
        Field::new("n", DataType::Int64, false),
    ]))
});

/// `eval_history`: [`EVAL_RESULTS`]' columns, then `split`, `evaluated_at` (UTC, RFC 3339),
/// `silver_sentences` and `teacher_hours` of the row's task at that evaluation
/// ([`crate::eval::history`]).
pub static EVAL_HISTORY: LazyLock<SchemaRef> = LazyLock::new(|| {
    let mut fields: Vec<Field> = EVAL_RESULTS.fields().iter().map(|f| f.as_ref().clone()).collect();
    fields.extend([
        utf8("split"),
        utf8("evaluated_at"),
        Field::new("silver_sentences", DataType::Int64, false),
        Field::new("teacher_hours", DataType::Float64, false),
    ]);
    Arc::new(Schema::new(fields))
});

/// `run_manifest`: one row per `biodistill run` ([`crate::manifest::Manifest`], whose fields
/// these are, in this order).
pub static RUN_MANIFEST: LazyLock<SchemaRef> = LazyLock::new(|| {
    let s = |n: &str| Field::new(n, DataType::Utf8, false);
    let i = |n: &str| Field::new(n, DataType::Int64, false);
    let f = |n: &str| Field::new(n, DataType::Float64, false);
    Arc::new(Schema::new(vec![
        s("run_id"),
        s("status"),
        s("started_at"),
        s("finished_at"),
        f("wall_secs"),
        f("peak_rss_mib"),
        s("git_sha"),
        s("config_hash"),
        s("input_hash"),
        i("documents"),
        i("changed_documents"),
        s("teacher_endpoint"),
        s("teacher_model"),
        s("prompt_versions"),
        s("student_versions"),
        s("stages"),
        i("cache_hits"),
        i("requests"),
        i("prompt_tokens"),
        i("completion_tokens"),
        f("cost_usd"),
        s("gates"),
        s("silver"),
        i("failed_inputs"),
        s("error"),
    ]))
});
