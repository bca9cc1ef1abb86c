//! `teacher_labels` and `teacher_calls` batches from finished outcomes (schemas in
//! [`crate::schema`]).

use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, Float64Array, Int32Array, Int64Array, StringArray};
use arrow::record_batch::RecordBatch;

use super::accounting::Pricing;
use super::label::{Outcome, Side};
use crate::error::Result;
use crate::run_dir::batch;
use crate::schema;

fn strings<'a>(values: impl IntoIterator<Item = &'a str>) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(values))
}

fn opt_strings<'a>(values: impl IntoIterator<Item = Option<&'a str>>) -> ArrayRef {
    Arc::new(values.into_iter().collect::<StringArray>())
}

fn offset(value: usize) -> i32 {
    // Sentence offsets come from sentences.text, whose offsets are i32 in the schema.
    i32::try_from(value).expect("a sentence shorter than 2^31 chars")
}

/// `teacher_labels`: one row per label of every ok outcome.
pub fn labels(outcomes: &[Outcome], model: &str) -> Result<RecordBatch> {
    let confidence: Vec<Option<f64>> = outcomes.iter().flat_map(|o| o.rows.iter().map(|r| r.confidence)).collect();
    let rows: Vec<(&Outcome, &Side, Option<&Side>)> =
        outcomes.iter().flat_map(|o| o.rows.iter().map(move |r| (o, &r.subject, r.object.as_ref()))).collect();
    let start = |s: Option<&Side>| s.and_then(|s| s.span).map(|(a, _)| offset(a));
    let end = |s: Option<&Side>| s.and_then(|s| s.span).map(|(_, b)| offset(b));
    let columns: Vec<ArrayRef> = vec![
        strings(rows.iter().map(|(o, _, _)| o.task.as_str())),
        strings(rows.iter().map(|(o, _, _)| o.doc_id.as_str())),
        Arc::new(Int32Array::from_iter_values(rows.iter().map(|(o, _, _)| o.sent_id))),
        strings(rows.iter().map(|(_, _, obj)| if obj.is_some() { "pair" } else { "span" })),
        strings(rows.iter().map(|(_, s, _)| s.entity_type.as_str())),
        strings(rows.iter().map(|(_, s, _)| s.text.as_str())),
        Arc::new(Int32Array::from(rows.iter().map(|(_, s, _)| start(Some(s))).collect::<Vec<_>>())),
        Arc::new(Int32Array::from(rows.iter().map(|(_, s, _)| end(Some(s))).collect::<Vec<_>>())),
        strings(rows.iter().map(|(_, s, _)| s.alignment.as_str())),
        opt_strings(rows.iter().map(|(_, _, obj)| obj.map(|o| o.entity_type.as_str()))),
        opt_strings(rows.iter().map(|(_, _, obj)| obj.map(|o| o.text.as_str()))),
        Arc::new(Int32Array::from(rows.iter().map(|(_, _, obj)| start(*obj)).collect::<Vec<_>>())),
        Arc::new(Int32Array::from(rows.iter().map(|(_, _, obj)| end(*obj)).collect::<Vec<_>>())),
        opt_strings(rows.iter().map(|(_, _, obj)| obj.map(|o| o.alignment.as_str()))),
        strings(rows.iter().map(|_| model)),
        strings(rows.iter().map(|(o, _, _)| o.prompt_version.as_str())),
        strings(rows.iter().map(|(o, _, _)| o.cache_key.as_str())),
        Arc::new(Int32Array::from_iter_values(rows.iter().map(|(o, _, _)| o.pass as i32))),
        opt_strings(rows.iter().map(|(o, _, _)| o.first_run.as_deref())),
        Arc::new(Float64Array::from(confidence)),
    ];
    batch(&schema::TEACHER_LABELS, columns)
}

/// `teacher_calls`: one row per outcome. `cost_usd` is what the call cost when it was paid
/// (also for cached rows, so a query can total either); `cached` says whether it was paid
/// this run.
pub fn calls(outcomes: &[Outcome], model: &str, pricing: &Pricing) -> Result<RecordBatch> {
    let columns: Vec<ArrayRef> = vec![
        strings(outcomes.iter().map(|o| o.task.as_str())),
        strings(outcomes.iter().map(|o| o.doc_id.as_str())),
        Arc::new(Int32Array::from_iter_values(outcomes.iter().map(|o| o.sent_id))),
        strings(outcomes.iter().map(|o| o.cache_key.as_str())),
        strings(outcomes.iter().map(|o| o.status.as_str())),
        Arc::new(BooleanArray::from(outcomes.iter().map(|o| o.cached).collect::<Vec<_>>())),
        Arc::new(Float64Array::from_iter_values(outcomes.iter().map(|o| o.latency_ms))),
        Arc::new(Int64Array::from_iter_values(outcomes.iter().map(|o| o.prompt_tokens as i64))),
        Arc::new(Int64Array::from_iter_values(outcomes.iter().map(|o| o.completion_tokens as i64))),
        Arc::new(Float64Array::from_iter_values(outcomes.iter().map(|o| pricing.cost(o)))),
        Arc::new(Int32Array::from_iter_values(outcomes.iter().map(|o| o.retries as i32))),
        opt_strings(outcomes.iter().map(|o| o.error.as_deref())),
        strings(outcomes.iter().map(|_| model)),
        strings(outcomes.iter().map(|o| o.prompt_version.as_str())),
        Arc::new(Int32Array::from_iter_values(outcomes.iter().map(|o| o.pass as i32))),
        opt_strings(outcomes.iter().map(|o| o.first_run.as_deref())),
    ];
    batch(&schema::TEACHER_CALLS, columns)
}
