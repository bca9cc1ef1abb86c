//! `eval_history`: every evaluation's rows kept across runs, each with the silver set and the
//! teacher time behind it, so the report can draw the learning curve nightly runs are buying
//! (student and teacher F1 against silver sentences). `eval_results` holds only the latest run.
//! Schema: [`crate::schema::EVAL_HISTORY`].
//!
//! ```sql
//! SELECT run_id, silver_sentences, teacher_hours, value FROM eval_history
//! WHERE task = 'ade' AND system = 'student' AND subset = 'all' AND metric = 'pair_strict_f1'
//! ORDER BY evaluated_at;
//! ```

use std::collections::{HashMap, HashSet};
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, Int64Array, StringArray};
use arrow::record_batch::RecordBatch;

use super::report::{EvalReport, headline_family};
use super::systems::{System, TeacherCalls};
use super::{SUBSET_ALL, SUBSET_TEACHER_SAMPLE};
use crate::error::{Error, Result};
use crate::run_dir::{RunDir, batch, concat};
use crate::schema::EVAL_HISTORY as SCHEMA;
use crate::schema::table::EVAL_HISTORY;

/// A task's silver set as the run directory holds it.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Silver {
    /// Sentences with an `ok` teacher answer outside gold dev documents: what training reads
    /// before `train.max_sentences` and the silver filters.
    pub sentences: i64,
    /// Latency of every call of the task that reached the teacher, in hours. Cached answers,
    /// the shipped ones included, cost nothing here.
    pub teacher_hours: f64,
}

/// [`Silver`] per task, from the evaluation's reading of `teacher_calls`; `dev`: the gold dev
/// documents, which training never reads.
pub fn silver(calls: &HashMap<String, TeacherCalls>, dev: &HashSet<String>) -> HashMap<String, Silver> {
    let of = |c: &TeacherCalls| Silver {
        sentences: c.answering.keys().filter(|(doc, _)| !dev.contains(doc)).count() as i64,
        teacher_hours: c.teacher_hours,
    };
    calls.iter().map(|(task, c)| (task.clone(), of(c))).collect()
}

/// One point of a learning curve: a headline F1 at an evaluation.
#[derive(Debug, Clone, PartialEq)]
pub struct Point {
    pub run_id: String,
    pub evaluated_at: String,
    pub task: String,
    pub dataset: String,
    pub system: String,
    pub subset: String,
    pub silver_sentences: i64,
    pub teacher_hours: f64,
    pub f1: f64,
}

/// The (system, subset) series a learning curve draws: the student everywhere and on the
/// teacher's sentences, and the teacher there.
pub const SERIES: [(System, &str); 3] =
    [(System::Student, SUBSET_ALL), (System::Student, SUBSET_TEACHER_SAMPLE), (System::Teacher, SUBSET_TEACHER_SAMPLE)];

/// Append `report`'s rows to `eval_history` (rewritten atomically) with `silver` and
/// `evaluated_at`, and return the learning-curve points of `report.split` over every run,
/// in the order they were evaluated.
pub fn append(
    run_dir: &RunDir,
    report: &EvalReport,
    silver: &HashMap<String, Silver>,
    evaluated_at: &str,
) -> Result<Vec<Point>> {
    let mut batches = Vec::new();
    if run_dir.has_table(EVAL_HISTORY) {
        let old = run_dir.read_table(EVAL_HISTORY)?;
        if let Some(b) = old.iter().find(|b| b.schema().fields() != SCHEMA.fields()) {
            return Err(Error::input(
                run_dir.table_path(EVAL_HISTORY),
                format!(
                    "eval_history has columns {:?}, not those of this version; move it aside to start a new history",
                    b.schema().fields().iter().map(|f| f.name().as_str()).collect::<Vec<_>>()
                ),
            ));
        }
        batches.extend(old);
    }
    batches.push(new_rows(report, silver, evaluated_at)?);
    let all = concat(&SCHEMA, &batches)?;
    run_dir.write_table(EVAL_HISTORY, SCHEMA.clone(), std::slice::from_ref(&all))?;
    points(&all, &report.split)
}

fn new_rows(report: &EvalReport, silver: &HashMap<String, Silver>, evaluated_at: &str) -> Result<RecordBatch> {
    let rows = &report.rows;
    let strings =
        |f: &dyn Fn(&super::EvalRow) -> &str| Arc::new(StringArray::from_iter_values(rows.iter().map(f))) as ArrayRef;
    let constant = |v: &str| Arc::new(StringArray::from(vec![v; rows.len()])) as ArrayRef;
    let of = |r: &super::EvalRow| silver.get(&r.task).copied().unwrap_or_default();
    batch(
        &SCHEMA,
        vec![
            constant(&report.run_id),
            strings(&|r| &r.task),
            strings(&|r| &r.dataset),
            strings(&|r| &r.system),
            strings(&|r| &r.subset),
            strings(&|r| &r.metric),
            Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| r.value))),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| r.n))),
            constant(&report.split),
            constant(evaluated_at),
            Arc::new(Int64Array::from_iter_values(rows.iter().map(|r| of(r).sentences))),
            Arc::new(Float64Array::from_iter_values(rows.iter().map(|r| of(r).teacher_hours))),
        ],
    )
}

/// The headline-F1 rows of [`SERIES`] on `split`.
fn points(all: &RecordBatch, split_name: &str) -> Result<Vec<Point>> {
    let cols = crate::columns::Columns::new(all.clone(), EVAL_HISTORY.into())?;
    let s = |name| cols.str(name);
    let (run, at, task, dataset, system, subset, metric, split_col) = (
        s("run_id")?,
        s("evaluated_at")?,
        s("task")?,
        s("dataset")?,
        s("system")?,
        s("subset")?,
        s("metric")?,
        s("split")?,
    );
    let (value, sentences, hours) = (cols.f64("value")?, cols.i64("silver_sentences")?, cols.f64("teacher_hours")?);
    let wanted = |r: usize| {
        split_col.value(r) == split_name
            && metric.value(r) == format!("{}_f1", headline_family(task.value(r), dataset.value(r)))
            && SERIES.iter().any(|(sys, sub)| system.value(r) == sys.as_str() && subset.value(r) == *sub)
    };
    Ok((0..cols.len())
        .filter(|&r| wanted(r))
        .map(|r| Point {
            run_id: run.value(r).to_string(),
            evaluated_at: at.value(r).to_string(),
            task: task.value(r).to_string(),
            dataset: dataset.value(r).to_string(),
            system: system.value(r).to_string(),
            subset: subset.value(r).to_string(),
            silver_sentences: sentences.value(r),
            teacher_hours: hours.value(r),
            f1: value.value(r),
        })
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::EvalRow;
    use crate::eval::metrics::{Metric, Score};

    fn report(run_id: &str, split: &str, student: f64) -> EvalReport {
        let row = |system: &str, subset: &str, metric: &str, value: f64| {
            EvalRow::new("ade", "ade_corpus_v2", system, subset, Metric::new(metric, Score { value, n: 10 }))
        };
        EvalReport {
            run_id: run_id.into(),
            split: split.into(),
            rows: vec![
                row("student", "all", "pair_strict_f1", student),
                row("student", "all", "pair_strict_precision", 0.9),
                row("teacher", "teacher_sample", "pair_strict_f1", 0.3),
                row("supervised_reference", "all", "pair_strict_f1", 0.2),
            ],
            notes: vec![],
            extra: vec![],
            curve: vec![],
        }
    }

    #[test]
    fn history_accumulates_and_points_are_the_headline_series_of_the_split() {
        let dir = tempfile::tempdir().unwrap();
        let run_dir = RunDir::create(dir.path()).unwrap();
        let silver = |n| HashMap::from([("ade".to_string(), Silver { sentences: n, teacher_hours: 0.5 })]);
        let first = append(&run_dir, &report("r1", "dev", 0.1), &silver(100), "t1").unwrap();
        assert_eq!(first.len(), 2, "student/all and teacher/teacher_sample F1; not precision, not the reference");
        append(&run_dir, &report("r-train", "train", 0.9), &silver(150), "t2").unwrap();
        let points = append(&run_dir, &report("r2", "dev", 0.2), &silver(200), "t3").unwrap();
        let student: Vec<(i64, f64)> =
            points.iter().filter(|p| p.system == "student").map(|p| (p.silver_sentences, p.f1)).collect();
        assert_eq!(student, [(100, 0.1), (200, 0.2)], "the train-split evaluation is not on the dev curve");
        assert_eq!(run_dir.table_rows(EVAL_HISTORY).unwrap(), 12);
    }

    #[test]
    fn a_history_with_other_columns_is_named_not_overwritten() {
        let dir = tempfile::tempdir().unwrap();
        let run_dir = RunDir::create(dir.path()).unwrap();
        let report = report("r", "dev", 0.1);
        run_dir.write_table(EVAL_HISTORY, crate::schema::EVAL_RESULTS.clone(), &[report.batch().unwrap()]).unwrap();
        let err = append(&run_dir, &report, &HashMap::new(), "t").unwrap_err().to_string();
        assert!(err.contains("eval_history") && err.contains("move it aside"), "{err}");
        assert_eq!(run_dir.table_rows(EVAL_HISTORY).unwrap(), 4, "left as it was");
    }
}
