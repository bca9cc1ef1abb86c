//! A small run directory shaped like the teacher stage's output, written by hand: `documents`,
//! `sentences`, `teacher_labels`, `teacher_calls`. Shared by `tests/student.rs` and
//! `benches/student.rs` (included there with `#[path]`).
#![allow(dead_code)]

use std::sync::Arc;

use arrow::array::{ArrayRef, BooleanArray, Float64Array, Int32Array, Int64Array, StringArray};
use arrow::record_batch::RecordBatch;
use biodistill::run_dir::RunDir;
use biodistill::schema::{self, table};
use biodistill::text::CharIndex;
use biodistill::vocab::Task;

/// A teacher label: (task, doc, sentence, subject type, subject, object type, object). An empty
/// object makes a `span` row, otherwise a `pair`. A string not found in its sentence is written
/// unaligned (null offsets), as the teacher stage does.
pub type Label<'a> = (&'a str, &'a str, i32, &'a str, &'a str, &'a str, &'a str);

fn strings<S: AsRef<str>>(values: impl IntoIterator<Item = S>) -> ArrayRef {
    Arc::new(values.into_iter().map(|s| Some(s.as_ref().to_string())).collect::<StringArray>())
}

fn opt_strings(values: Vec<Option<&str>>) -> ArrayRef {
    Arc::new(StringArray::from(values))
}

fn ints(values: impl IntoIterator<Item = i32>) -> ArrayRef {
    Arc::new(values.into_iter().collect::<Int32Array>())
}

fn opt_ints(values: Vec<Option<i32>>) -> ArrayRef {
    Arc::new(Int32Array::from(values))
}

/// Sentences of `docs`, split after ". ": (doc, sent_id, char start in the document, text).
pub fn sentences<'a>(docs: &[(&'a str, &'a str)]) -> Vec<(&'a str, i32, usize, &'a str)> {
    let mut out = Vec::new();
    for (doc, text) in docs {
        let mut start = 0;
        for (i, part) in text.split_inclusive(". ").enumerate() {
            out.push((*doc, i as i32, text[..start].chars().count(), part.trim_end()));
            start += part.len();
        }
    }
    out
}

/// Char span of the first `needle` in `text`.
pub fn find(text: &str, needle: &str) -> Option<(i32, i32)> {
    let start = CharIndex::new(text).char(text.find(needle)?)? as i32;
    Some((start, start + needle.chars().count() as i32))
}

pub fn write_documents(run: &RunDir, docs: &[(&str, &str)], split: &dyn Fn(&str) -> &'static str) {
    let n = docs.len();
    let batch = RecordBatch::try_new(
        schema::DOCUMENTS.clone(),
        vec![
            strings(docs.iter().map(|d| d.0)),
            strings(vec!["toy"; n]),
            strings(docs.iter().map(|d| split(d.0))),
            opt_strings(vec![None; n]),
            strings(docs.iter().map(|d| d.1)),
            strings(vec!["0"; n]),
        ],
    )
    .unwrap();
    run.write_table(table::DOCUMENTS, schema::DOCUMENTS.clone(), &[batch]).unwrap();
}

/// Write the four tables; every sentence gets an `ok` teacher call for every task.
pub fn write_silver_run(run: &RunDir, docs: &[(&str, &str)], labels: &[Label]) {
    write_scored_silver_run(run, docs, labels, &vec![None; labels.len()]);
}

/// [`write_silver_run`] with the teacher's confidence in each label.
pub fn write_scored_silver_run(run: &RunDir, docs: &[(&str, &str)], labels: &[Label], confidence: &[Option<f64>]) {
    write_documents(run, docs, &|_| "unlabeled");
    let sents = sentences(docs);
    let batch = RecordBatch::try_new(
        schema::SENTENCES.clone(),
        vec![
            strings(sents.iter().map(|s| s.0)),
            ints(sents.iter().map(|s| s.1)),
            ints(sents.iter().map(|s| s.2 as i32)),
            ints(sents.iter().map(|s| (s.2 + s.3.chars().count()) as i32)),
            strings(sents.iter().map(|s| s.3)),
        ],
    )
    .unwrap();
    run.write_table(table::SENTENCES, schema::SENTENCES.clone(), &[batch]).unwrap();

    let text_of = |doc: &str, sent: i32| sents.iter().find(|s| s.0 == doc && s.1 == sent).expect("label's sentence").3;
    let subject: Vec<Option<(i32, i32)>> = labels.iter().map(|l| find(text_of(l.1, l.2), l.4)).collect();
    let object: Vec<Option<(i32, i32)>> =
        labels.iter().map(|l| find(text_of(l.1, l.2), l.6).filter(|_| !l.6.is_empty())).collect();
    let is_pair: Vec<bool> = labels.iter().map(|l| !l.6.is_empty()).collect();
    let alignment = |o: &Option<(i32, i32)>| if o.is_some() { "exact" } else { "unaligned" };
    let n = labels.len();
    let batch = RecordBatch::try_new(
        schema::TEACHER_LABELS.clone(),
        vec![
            strings(labels.iter().map(|l| l.0)),
            strings(labels.iter().map(|l| l.1)),
            ints(labels.iter().map(|l| l.2)),
            strings(is_pair.iter().map(|&p| if p { "pair" } else { "span" })),
            strings(labels.iter().map(|l| l.3)),
            strings(labels.iter().map(|l| l.4)),
            opt_ints(subject.iter().map(|o| o.map(|o| o.0)).collect()),
            opt_ints(subject.iter().map(|o| o.map(|o| o.1)).collect()),
            strings(subject.iter().map(alignment)),
            opt_strings(labels.iter().zip(&is_pair).map(|(l, &p)| p.then_some(l.5)).collect()),
            opt_strings(labels.iter().zip(&is_pair).map(|(l, &p)| p.then_some(l.6)).collect()),
            opt_ints(object.iter().map(|o| o.map(|o| o.0)).collect()),
            opt_ints(object.iter().map(|o| o.map(|o| o.1)).collect()),
            opt_strings(object.iter().zip(&is_pair).map(|(o, &p)| p.then(|| alignment(o))).collect()),
            strings(vec!["toy-teacher"; n]),
            strings(vec!["v1"; n]),
            strings(vec!["key"; n]),
            ints(vec![0; n]),
            opt_strings(vec![Some("toy-run"); n]),
            Arc::new(Float64Array::from(confidence.to_vec())),
        ],
    )
    .unwrap();
    run.write_table(table::TEACHER_LABELS, schema::TEACHER_LABELS.clone(), &[batch]).unwrap();

    let calls: Vec<(&str, &str, i32)> =
        Task::ALL.iter().flat_map(|t| sents.iter().map(move |s| (t.as_str(), s.0, s.1))).collect();
    let n = calls.len();
    let batch = RecordBatch::try_new(
        schema::TEACHER_CALLS.clone(),
        vec![
            strings(calls.iter().map(|c| c.0)),
            strings(calls.iter().map(|c| c.1)),
            ints(calls.iter().map(|c| c.2)),
            strings(vec!["key"; n]),
            strings(vec!["ok"; n]),
            Arc::new(BooleanArray::from(vec![false; n])),
            Arc::new(Float64Array::from(vec![1.0; n])),
            Arc::new(Int64Array::from(vec![10; n])),
            Arc::new(Int64Array::from(vec![10; n])),
            Arc::new(Float64Array::from(vec![0.0; n])),
            ints(vec![0; n]),
            opt_strings(vec![None; n]),
            strings(vec!["toy-teacher"; n]),
            strings(vec!["v1"; n]),
            ints(vec![0; n]),
            opt_strings(vec![Some("toy-run"); n]),
        ],
    )
    .unwrap();
    run.write_table(table::TEACHER_CALLS, schema::TEACHER_CALLS.clone(), &[batch]).unwrap();
}
