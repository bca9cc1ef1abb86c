//! The student as SQL functions, registered in every session of a run directory:
//!
//! ```sql
//! SELECT doc_id, unnest(ade_pairs(text)) FROM documents;
//! SELECT gene_disease_pairs('BRCA1 mutations cause breast cancer.');
//! SELECT phi_spans(text), redact(text) FROM my_notes;
//! ```
//!
//! Each takes any text (a document, a sentence, a literal), splits it into sentences as
//! `ingest` does, runs that task's student (the run directory's `student/<task>` checkpoint,
//! loaded on first use) and returns what `extract` would write for it: a list of structs whose
//! offsets are chars into the argument (`ade_relations` without the provenance columns), or for
//! `redact` the text with each PHI span replaced by `[TYPE]`. Null text gives null. PHI spans
//! are the student's fused with every pattern recognizer ([`super::recognizers`]).
//!
//! `extract` runs as a plan over two sentence-level variants that name their checkpoint, so
//! the plan carries everything an executor needs (see [`crate::cluster`]):
//!
//! ```sql
//! SELECT sentence_pairs(text, '/runs/x/student/ade', 'student-0123abcd', 16) FROM sentences;
//! SELECT sentence_spans(text, '/runs/x/student/phi', 'student-4567ef01', 16, 'email,phone') FROM sentences;
//! ```
//!
//! (then: encoder windows per forward pass and, for spans, the recognizers to fuse, comma
//! separated). They do not split their argument, return fields named `anchor…`/`related…`
//! (pairs) or `entity_type, start, end, span, score, found_by` (spans), and fail if the
//! checkpoint found at that path on the machine running them is not that model version.

use std::hash::{Hash, Hasher};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};

use arrow::array::{Array, ArrayRef, AsArray, Float32Array, Int32Array, ListArray, StringArray, StructArray};
use arrow::buffer::{NullBuffer, OffsetBuffer};
use arrow::datatypes::{DataType, Field, Fields};
use datafusion::common::ScalarValue;
use datafusion::error::{DataFusionError, Result as DfResult};
use datafusion::logical_expr::{
    ColumnarValue, ScalarFunctionArgs, ScalarUDF, ScalarUDFImpl, Signature, TypeSignature, Volatility,
};
use datafusion::prelude::SessionContext;

use super::recognizers::{self, Recognized};
use crate::model::checkpoint::Checkpoint;
use crate::model::predict::{SentenceRow, predict};
use crate::text::CharIndex;
use crate::vocab::Task;

/// Encoder windows per forward pass, as `extract.batch_size` defaults.
const BATCH_SIZE: usize = 16;

/// What a function returns per input row.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
enum Output {
    /// `list<struct<anchor, anchor_start, anchor_end, related, related_start, related_end, score>>`.
    Pairs,
    /// `list<struct<phi_type, start, end, span, score, found_by>>`.
    Spans,
    /// The redacted text.
    Redacted,
}

/// Register `ade_pairs`, `gene_disease_pairs`, `phi_spans` and `redact` on `ctx`, reading
/// checkpoints from `student_dir/<task>` when first called.
pub fn register(ctx: &SessionContext, student_dir: PathBuf) {
    let students = Arc::new(Students { dir: student_dir, loaded: Default::default() });
    for (name, task, output) in [
        ("ade_pairs", Task::Ade, Output::Pairs),
        ("gene_disease_pairs", Task::GeneDisease, Output::Pairs),
        ("phi_spans", Task::Phi, Output::Spans),
        ("redact", Task::Phi, Output::Redacted),
    ] {
        let function = StudentFunction {
            name,
            task,
            output,
            students: Arc::clone(&students),
            signature: Signature::string(1, Volatility::Immutable),
        };
        ctx.register_udf(ScalarUDF::new_from_impl(function));
    }
    for udf in sentence_functions(&Arc::default()) {
        ctx.register_udf(udf);
    }
}

/// `sentence_pairs` and `sentence_spans`, counting the windows they encode in `windows`.
pub fn sentence_functions(windows: &Arc<AtomicUsize>) -> [ScalarUDF; 2] {
    [Output::Pairs, Output::Spans].map(|output| {
        let mut args = vec![DataType::Utf8, DataType::Utf8, DataType::Utf8, DataType::Int64, DataType::Int64];
        if output == Output::Spans {
            args.push(DataType::Utf8);
        }
        ScalarUDF::new_from_impl(SentenceFunction {
            output,
            windows: Arc::clone(windows),
            signature: Signature::new(TypeSignature::Exact(args), Volatility::Immutable),
        })
    })
}

/// One checkpoint per task, loaded once per session and shared by its functions.
struct Students {
    dir: PathBuf,
    loaded: [OnceLock<Result<Arc<Checkpoint>, String>>; 3],
}

impl Students {
    fn get(&self, task: Task) -> DfResult<Arc<Checkpoint>> {
        let slot = &self.loaded[Task::ALL.iter().position(|&t| t == task).expect("every task is in Task::ALL")];
        let loaded = slot.get_or_init(|| {
            let dir = self.dir.join(task.as_str());
            if !dir.is_dir() {
                return Err(format!("no {task} student at {} (run `biodistill train` first)", dir.display()));
            }
            Checkpoint::load(&dir, &candle_core::Device::Cpu).map(Arc::new).map_err(|e| e.to_string())
        });
        loaded.clone().map_err(DataFusionError::Execution)
    }
}

impl std::fmt::Debug for Students {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(f, "Students({})", self.dir.display())
    }
}

#[derive(Debug)]
struct StudentFunction {
    name: &'static str,
    task: Task,
    output: Output,
    students: Arc<Students>,
    signature: Signature,
}

impl PartialEq for StudentFunction {
    fn eq(&self, other: &Self) -> bool {
        (self.name, &self.students.dir) == (other.name, &other.students.dir)
    }
}

impl Eq for StudentFunction {}

impl Hash for StudentFunction {
    fn hash<H: Hasher>(&self, state: &mut H) {
        (self.name, &self.students.dir).hash(state);
    }
}

/// The struct fields of a list element: for pairs, the output table's columns without the
/// provenance ones (`doc_id`, `sent_id`, `model_version`, `run_id`), so `unnest` gives its names.
fn element_fields(task: Task, output: Output) -> Fields {
    match output {
        Output::Pairs => super::output_schema(task).fields()[2..9].iter().cloned().collect(),
        _ => {
            let (int, text) =
                (|n: &str| Field::new(n, DataType::Int32, false), |n: &str| Field::new(n, DataType::Utf8, false));
            vec![
                text("phi_type"),
                int("start"),
                int("end"),
                text("span"),
                Field::new("score", DataType::Float32, false),
                Field::new("found_by", crate::schema::found_by_type(), false),
            ]
            .into()
        }
    }
}

fn list_type(fields: Fields) -> DataType {
    DataType::List(Arc::new(Field::new("item", DataType::Struct(fields), false)))
}

/// The element fields of `sentence_pairs` and `sentence_spans`: the task's fields under
/// task-independent names, the same for every checkpoint the plan may name.
fn sentence_fields(output: Output) -> Fields {
    let (task, names) = match output {
        Output::Pairs => (
            Task::Ade,
            &["anchor", "anchor_start", "anchor_end", "related", "related_start", "related_end", "score"][..],
        ),
        _ => (Task::Phi, &["entity_type", "start", "end", "span", "score", "found_by"][..]),
    };
    let fields = element_fields(task, output);
    fields.iter().zip(names).map(|(f, name)| f.as_ref().clone().with_name(*name)).collect()
}

/// [`sentence_fields`] of `sentence_pairs` (`pairs`) or `sentence_spans`.
pub(super) fn sentence_element_fields(pairs: bool) -> Fields {
    sentence_fields(if pairs { Output::Pairs } else { Output::Spans })
}

fn execution(e: crate::error::Error) -> DataFusionError {
    DataFusionError::Execution(e.to_string())
}

impl ScalarUDFImpl for StudentFunction {
    fn name(&self) -> &str {
        self.name
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> DfResult<DataType> {
        Ok(match self.output {
            Output::Redacted => DataType::Utf8,
            output => list_type(element_fields(self.task, output)),
        })
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let input = args.args[0].to_array(args.number_rows)?;
        let input = arrow::compute::cast(&input, &DataType::Utf8)?;
        let texts = input.as_string::<i32>();
        let checkpoint = self.students.get(self.task)?;
        let threads = crate::parallel::available_threads();
        let (mut rows, _) = spans_per_row(&checkpoint, texts, true, BATCH_SIZE, threads).map_err(execution)?;
        if self.task == Task::Phi {
            fuse_recognizers(texts, &mut rows, &recognizers::all());
        }
        let out = match self.output {
            Output::Redacted => redacted(texts, &rows),
            output => list(element_fields(self.task, output), output, self.task, texts, &rows)?,
        };
        Ok(ColumnarValue::Array(out))
    }
}

/// Checkpoints loaded by this process, by directory: every session and every task of an
/// executor shares them, and a checkpoint retrained in place is reloaded (its version changed).
static CHECKPOINTS: Mutex<Vec<Arc<Checkpoint>>> = Mutex::new(Vec::new());

/// The checkpoint at `dir`, which must be model version `version`.
fn checkpoint(dir: &Path, version: &str) -> crate::error::Result<Arc<Checkpoint>> {
    let mut loaded = CHECKPOINTS.lock().unwrap_or_else(|p| p.into_inner());
    if let Some(found) = loaded.iter().find(|c| c.dir == dir && c.config.model_version == version) {
        return Ok(Arc::clone(found));
    }
    let host =
        std::fs::read_to_string("/etc/hostname").map_or_else(|_| "this machine".into(), |h| h.trim().to_string());
    if !dir.is_dir() {
        return Err(crate::error::Error::input(
            dir,
            format!("no checkpoint here on {host}: every machine must see the run directory at the same path"),
        ));
    }
    let found = Arc::new(Checkpoint::load(dir, &candle_core::Device::Cpu)?);
    if found.config.model_version != version {
        return Err(crate::error::Error::input(
            dir,
            format!(
                "checkpoint on {host} is {}, the plan asked for {version}: every machine must see the same run directory",
                found.config.model_version
            ),
        ));
    }
    loaded.retain(|c| c.dir != dir);
    loaded.push(Arc::clone(&found));
    Ok(found)
}

/// `sentence_pairs(text, checkpoint_dir, model_version, batch_size, threads)` or
/// `sentence_spans(…, recognizers)`: one sentence per row, encoder batches side by side on
/// `threads` threads (0: every core of the machine running it). A local plan runs in one
/// partition and the threads are its parallelism: DataFusion's partitions of a scan follow the
/// file's byte ranges, and the sentences a run selects can sit mostly in one of them.
#[derive(Debug)]
struct SentenceFunction {
    output: Output,
    windows: Arc<AtomicUsize>,
    signature: Signature,
}

impl PartialEq for SentenceFunction {
    fn eq(&self, other: &Self) -> bool {
        self.output == other.output
    }
}

impl Eq for SentenceFunction {}

impl Hash for SentenceFunction {
    fn hash<H: Hasher>(&self, state: &mut H) {
        self.output.hash(state);
    }
}

impl SentenceFunction {
    /// The string literal argument `index` (`checkpoint_dir`, `model_version`).
    fn literal<'a>(&self, args: &'a ScalarFunctionArgs, index: usize, what: &str) -> DfResult<&'a str> {
        match &args.args[index] {
            ColumnarValue::Scalar(ScalarValue::Utf8(Some(value))) => Ok(value),
            _ => Err(DataFusionError::Plan(format!("{}: {what} must be a string literal", self.name()))),
        }
    }

    /// The integer literal argument `index` (`batch_size`, `threads`), at least `min` (0 or 1).
    fn count_literal(&self, args: &ScalarFunctionArgs, index: usize, what: &str, min: i64) -> DfResult<usize> {
        match &args.args[index] {
            ColumnarValue::Scalar(ScalarValue::Int64(Some(n))) if *n >= min => Ok(*n as usize),
            _ => {
                let bound = if min > 0 { "a positive literal" } else { "a literal >= 0" };
                Err(DataFusionError::Plan(format!("{}: {what} must be {bound}", self.name())))
            }
        }
    }
}

impl ScalarUDFImpl for SentenceFunction {
    fn name(&self) -> &str {
        if self.output == Output::Pairs { "sentence_pairs" } else { "sentence_spans" }
    }

    fn signature(&self) -> &Signature {
        &self.signature
    }

    fn return_type(&self, _args: &[DataType]) -> DfResult<DataType> {
        Ok(list_type(sentence_fields(self.output)))
    }

    fn invoke_with_args(&self, args: ScalarFunctionArgs) -> DfResult<ColumnarValue> {
        let dir = Path::new(self.literal(&args, 1, "checkpoint_dir")?);
        let checkpoint = checkpoint(dir, self.literal(&args, 2, "model_version")?).map_err(execution)?;
        let task = checkpoint.config.spec.task;
        if task.relation().is_some() != (self.output == Output::Pairs) {
            let kind = if self.output == Output::Pairs { "pairs" } else { "spans" };
            return Err(DataFusionError::Plan(format!(
                "{}: the {task} student at {} has no {kind}",
                self.name(),
                dir.display()
            )));
        }
        let input = args.args[0].to_array(args.number_rows)?;
        let texts = input.as_string::<i32>();
        let batch_size = self.count_literal(&args, 3, "batch_size", 1)?;
        let threads = crate::parallel::threads_or_all(self.count_literal(&args, 4, "threads", 0)?);
        let (mut rows, windows) = spans_per_row(&checkpoint, texts, false, batch_size, threads).map_err(execution)?;
        self.windows.fetch_add(windows, Ordering::Relaxed);
        if self.output == Output::Spans {
            let enabled: Vec<String> =
                self.literal(&args, 5, "recognizers")?.split(',').filter(|n| !n.is_empty()).map(String::from).collect();
            recognizers::validate(&enabled).map_err(|e| DataFusionError::Plan(format!("{}: {e}", self.name())))?;
            fuse_recognizers(texts, &mut rows, &enabled);
        }
        Ok(ColumnarValue::Array(list(sentence_fields(self.output), self.output, task, texts, &rows)?))
    }
}

/// A predicted span or pair in its row's text: char offsets, and for pairs the related span.
struct Found {
    start: usize,
    end: usize,
    type_index: usize,
    related: Option<(usize, usize)>,
    score: f32,
    /// Spans: the student and/or the recognizers that found it.
    found_by: Vec<&'static str>,
}

/// Fuse each row's student PHI spans with what the `enabled` recognizers find in its text.
fn fuse_recognizers(texts: &StringArray, rows: &mut [Vec<Found>], enabled: &[String]) {
    if enabled.is_empty() {
        return;
    }
    let types = Task::Phi.entity_types();
    let phi_type = |i: usize| crate::vocab::PhiType::parse(types[i]).expect("PHI tags use the PHI scheme");
    for (row, found) in rows.iter_mut().enumerate().filter(|(r, _)| texts.is_valid(*r)) {
        let student = found
            .drain(..)
            .map(|f| Recognized {
                start: f.start,
                end: f.end,
                phi_type: phi_type(f.type_index),
                found_by: f.found_by,
                score: f.score,
            })
            .collect();
        let fused = recognizers::fuse(student, recognizers::recognize(texts.value(row), enabled));
        found.extend(fused.into_iter().map(|r| Found {
            start: r.start,
            end: r.end,
            type_index: Task::Phi.type_index(r.phi_type.as_str()).expect("every PHI type is a tag"),
            related: None,
            score: r.score,
            found_by: r.found_by,
        }));
    }
}

/// Per input row, what the student found in it (entities for PHI, pairs otherwise), in the
/// order of the text.
/// Texts are split into sentences first unless `split` is false (each already is one); the
/// encoder runs `batch_size` windows at a time on `threads` threads. Also returns the windows
/// encoded.
fn spans_per_row(
    checkpoint: &Checkpoint,
    texts: &StringArray,
    split: bool,
    batch_size: usize,
    threads: usize,
) -> crate::error::Result<(Vec<Vec<Found>>, usize)> {
    let mut sentences = Vec::new();
    for row in 0..texts.len() {
        if texts.is_null(row) {
            continue;
        }
        let text = texts.value(row);
        let index = CharIndex::new(text);
        let spans = if split {
            crate::text::sentences::split(text)
        } else {
            vec![crate::text::sentences::Span { start: 0, end: index.len_chars() }]
        };
        for (sent_id, span) in spans.into_iter().enumerate() {
            let sentence = &text[index.byte(span.start)..index.byte(span.end)];
            sentences.push((
                row,
                SentenceRow {
                    doc_id: String::new(),
                    sent_id: sent_id as i32,
                    start: span.start,
                    text: sentence.into(),
                },
            ));
        }
    }
    let batch: Vec<SentenceRow> = sentences.iter().map(|(_, s)| s.clone()).collect();
    let predictions = predict(checkpoint, &batch, batch_size, threads)?;
    let mut out: Vec<Vec<Found>> = (0..texts.len()).map(|_| Vec::new()).collect();
    let at = |s: usize| (sentences[s].0, batch[s].start);
    if checkpoint.config.spec.task.relation().is_some() {
        for p in &predictions.pairs {
            let (row, offset) = at(p.anchor.sentence);
            out[row].push(Found {
                start: offset + p.anchor.start,
                end: offset + p.anchor.end,
                type_index: p.anchor.type_index,
                related: Some((offset + p.start, offset + p.end)),
                score: p.score,
                found_by: Vec::new(),
            });
        }
    } else {
        for e in &predictions.entities {
            let (row, offset) = at(e.sentence);
            let (start, end) = (offset + e.start, offset + e.end);
            let found_by = vec![recognizers::STUDENT];
            out[row].push(Found { start, end, type_index: e.type_index, related: None, score: e.score, found_by });
        }
    }
    for found in &mut out {
        found.sort_by_key(|f| (f.start, f.end, f.related));
    }
    Ok((out, predictions.windows))
}

fn list(fields: Fields, output: Output, task: Task, texts: &StringArray, rows: &[Vec<Found>]) -> DfResult<ArrayRef> {
    let all: Vec<(&str, &Found)> =
        rows.iter().enumerate().flat_map(|(r, found)| found.iter().map(move |f| (texts.value(r), f))).collect();
    let slice = |text: &str, start: usize, end: usize| {
        CharIndex::new(text).slice(text, start, end).expect("predicted spans lie in their text").to_string()
    };
    let strings = |f: &dyn Fn(&str, &Found) -> String| -> ArrayRef {
        Arc::new(all.iter().map(|(t, found)| Some(f(t, found))).collect::<StringArray>())
    };
    let ints = |f: &dyn Fn(&Found) -> usize| -> ArrayRef {
        Arc::new(all.iter().map(|(_, found)| f(found) as i32).collect::<Int32Array>())
    };
    let score: ArrayRef = Arc::new(all.iter().map(|(_, f)| f.score).collect::<Float32Array>());
    let related = |f: &Found| f.related.expect("a pair has a related span");
    let columns: Vec<ArrayRef> = match output {
        Output::Pairs => vec![
            strings(&|t, f| slice(t, f.start, f.end)),
            ints(&|f| f.start),
            ints(&|f| f.end),
            strings(&|t, f| slice(t, related(f).0, related(f).1)),
            ints(&|f| related(f).0),
            ints(&|f| related(f).1),
            score,
        ],
        _ => vec![
            strings(&|_, f| task.entity_types()[f.type_index].to_string()),
            ints(&|f| f.start),
            ints(&|f| f.end),
            strings(&|t, f| slice(t, f.start, f.end)),
            score,
            found_by_list(all.iter().map(|(_, f)| f.found_by.as_slice())),
        ],
    };
    let values = StructArray::try_new(fields.clone(), columns, None)?;
    let offsets = OffsetBuffer::from_lengths(rows.iter().map(Vec::len));
    let nulls = NullBuffer::from((0..texts.len()).map(|r| texts.is_valid(r)).collect::<Vec<bool>>());
    let item = Arc::new(Field::new("item", DataType::Struct(fields), false));
    Ok(Arc::new(ListArray::try_new(item, offsets, Arc::new(values), Some(nulls))?))
}

/// `found_by` values: one list of names per span.
fn found_by_list<'a>(rows: impl Iterator<Item = &'a [&'static str]>) -> ArrayRef {
    let mut builder = arrow::array::ListBuilder::new(arrow::array::StringBuilder::new())
        .with_field(Arc::new(Field::new("item", DataType::Utf8, false)));
    for names in rows {
        for name in names {
            builder.values().append_value(name);
        }
        builder.append(true);
    }
    Arc::new(builder.finish())
}

fn redacted(texts: &StringArray, rows: &[Vec<Found>]) -> ArrayRef {
    let types = Task::Phi.entity_types();
    Arc::new(
        (0..texts.len())
            .map(|r| {
                texts.is_valid(r).then(|| {
                    let spans = rows[r].iter().map(|f| (f.start, f.end, types[f.type_index])).collect();
                    super::redact_text(texts.value(r), spans)
                })
            })
            .collect::<StringArray>(),
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn element_fields_use_the_output_tables_names() {
        let names = |task| element_fields(task, Output::Pairs).iter().map(|f| f.name().clone()).collect::<Vec<_>>();
        assert_eq!(
            names(Task::Ade),
            ["drug", "drug_start", "drug_end", "effect", "effect_start", "effect_end", "score"]
        );
        assert_eq!(names(Task::GeneDisease)[3], "disease");
        let phi: Vec<String> = element_fields(Task::Phi, Output::Spans).iter().map(|f| f.name().clone()).collect();
        assert_eq!(phi, ["phi_type", "start", "end", "span", "score", "found_by"]);
    }

    #[tokio::test]
    async fn a_missing_student_is_a_clear_error() {
        let tmp = tempfile::tempdir().unwrap();
        let ctx = SessionContext::new();
        register(&ctx, tmp.path().join("student"));
        let err = ctx.sql("SELECT ade_pairs('Aspirin caused rash.')").await.unwrap().collect().await.unwrap_err();
        assert!(err.to_string().contains("no ade student at"), "{err}");
    }
}
