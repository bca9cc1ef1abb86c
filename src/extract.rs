//! `biodistill extract`: run the trained students over every sentence.
//!
//! Input: `sentences`, `documents` (for the split and source filters, and redaction), and one
//! checkpoint per task from `train`. Output, each table made visible only when complete:
//!
//! - `ade_relations` and `gene_disease`: one row per (anchor, related span) pair;
//! - `phi_spans` and `redacted_documents` (each PHI span replaced by `[TYPE]`).
//!
//! Offsets index `documents.text` in chars: a sentence's char offset plus the span's offset in
//! the sentence. The supervised reference writes the same tables with a `_supervised_reference`
//! suffix, and its `model_version`s start with `supervised-reference-`, so its outputs can never
//! be mistaken for the distilled student's.
//!
//! Each task is one DataFusion plan over `sentences` calling the student as a SQL function
//! ([`plan`], [`functions`]), run in this process or on a Ballista cluster (`extract.engine`,
//! see [`crate::cluster`]). Memory stays flat in corpus size: sentences stream in,
//! `read_rows` at a time, predictions stream out (their final sort spills past
//! `memory_limit_mib`), and redaction joins `documents` with the finished `phi_spans` as two DataFusion plans sorted by
//! document (spilling past `memory_limit_mib`, see [`crate::plan`]) walked side by side.

pub mod functions;
mod plan;
pub mod recognizers;

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Instant;

use arrow::array::{ArrayRef, StringArray};
use arrow::datatypes::SchemaRef;
use indicatif::{ProgressBar, ProgressStyle};
use serde::{Deserialize, Serialize};

use crate::cluster::Engine;
use crate::columns::TableStream;
use crate::error::{Error, IoContext, Result};
use crate::model::checkpoint::CheckpointConfig;
use crate::run_dir::{RunDir, TableSink, batch};
use crate::schema::{self, table};
use crate::text::CharIndex;
use crate::vocab::Task;

/// Suffix of the supervised reference's output tables.
pub const SUPERVISED_REFERENCE_SUFFIX: &str = "_supervised_reference";

/// Extraction configuration (`[extract]` in a pipeline file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ExtractConfig {
    /// Checkpoint root (one directory per task); default `<run dir>/student` or, with
    /// `supervised_reference`, `<run dir>/student-supervised-reference`.
    pub checkpoint_dir: Option<PathBuf>,
    /// Use the supervised reference and write its suffixed tables.
    pub supervised_reference: bool,
    pub tasks: Vec<Task>,
    /// Encoder windows per forward pass.
    pub batch_size: usize,
    /// Sentences per batch of the plan (bounds memory).
    pub read_rows: usize,
    /// Locally, encoder threads the students' batches run on side by side; on Ballista, the
    /// partitions the plan is split into (one encoder thread each, as executors run them side
    /// by side). 0 = every core
    /// (locally) or 8 (on Ballista). Not serialized: it changes neither the outputs nor the
    /// config hash.
    #[serde(skip_serializing)]
    pub threads: usize,
    /// Where the plans run: `local` (this process) or `ballista://host:port` (a scheduler
    /// started by `biodistill cluster scheduler`). Not serialized, as `threads`.
    #[serde(skip_serializing)]
    pub engine: Engine,
    /// Memory the table plans (redaction's sorts, the incremental merge) may hold before
    /// spilling to disk. Not serialized: it changes neither the outputs nor the config hash.
    #[serde(skip_serializing)]
    pub memory_limit_mib: usize,
    /// `run_id` column; default the run directory's name.
    pub run_id: Option<String>,
    pub progress: bool,
    /// Only documents of these splits (`train`, `dev`, `unlabeled`); empty = every split.
    pub splits: Vec<String>,
    /// Per task, only documents of these sources; a task missing here reads every source.
    pub sources: BTreeMap<Task, Vec<String>>,
    /// Only these documents (incremental runs set it to the new and changed ones).
    #[serde(skip)]
    pub only_documents: Option<HashSet<String>>,
    /// Pattern recognizers fused with the PHI student ([`recognizers`]; `phi_spans.found_by`
    /// names who found each span); default all of them, `[]` for the student alone.
    pub phi_recognizers: Vec<String>,
}

impl Default for ExtractConfig {
    fn default() -> Self {
        Self {
            checkpoint_dir: None,
            supervised_reference: false,
            tasks: Task::ALL.to_vec(),
            batch_size: 16,
            read_rows: 1024,
            threads: 0,
            engine: Engine::Local,
            memory_limit_mib: crate::plan::DEFAULT_MEMORY_LIMIT_MIB,
            run_id: None,
            progress: true,
            splits: Vec::new(),
            sources: BTreeMap::new(),
            only_documents: None,
            phi_recognizers: recognizers::all(),
        }
    }
}

impl ExtractConfig {
    /// Per task, the documents it extracts from (`None`: every document).
    fn selected_documents(&self, run_dir: &RunDir) -> Result<BTreeMap<Task, Option<HashSet<String>>>> {
        let filtered = !self.splits.is_empty() || self.tasks.iter().any(|t| self.sources.contains_key(t));
        if !filtered {
            return Ok(self.tasks.iter().map(|&t| (t, self.only_documents.clone())).collect());
        }
        let mut keep: BTreeMap<Task, Option<HashSet<String>>> =
            self.tasks.iter().map(|&t| (t, Some(HashSet::new()))).collect();
        for cols in TableStream::open(run_dir, table::DOCUMENTS, self.read_rows)? {
            let cols = cols?;
            let (doc, source, split) = (cols.doc_id()?, cols.str("source")?, cols.str("split")?);
            for r in 0..cols.len() {
                let base = (self.splits.is_empty() || self.splits.iter().any(|s| s == split.value(r)))
                    && self.only_documents.as_ref().is_none_or(|only| only.contains(doc.value(r)));
                for (task, docs) in keep.iter_mut() {
                    let source_ok = self.sources.get(task).is_none_or(|s| s.iter().any(|s| s == source.value(r)));
                    if base && source_ok {
                        docs.as_mut().expect("all Some above").insert(doc.value(r).to_string());
                    }
                }
            }
        }
        Ok(keep)
    }

    /// Name of output table `base` under this config.
    pub fn table_name(&self, base: &str) -> String {
        if self.supervised_reference { format!("{base}{SUPERVISED_REFERENCE_SUFFIX}") } else { base.to_string() }
    }
}

/// What `extract` did.
#[derive(Debug, Clone, Serialize)]
pub struct ExtractReport {
    pub supervised_reference: bool,
    /// Where the plans ran (`extract.engine`).
    pub engine: String,
    pub sentences: usize,
    /// Encoder windows run in this process (0 when the students ran on a cluster).
    pub windows: usize,
    pub seconds: f64,
    pub sentences_per_sec: f64,
    /// Model version per task.
    pub model_versions: BTreeMap<Task, String>,
    /// Rows written per table.
    pub tables: BTreeMap<String, usize>,
}

impl ExtractReport {
    /// Rows written per table, and `sentences` read: a run's stage counts.
    pub fn counts(&self) -> BTreeMap<String, usize> {
        let mut counts = self.tables.clone();
        counts.insert("sentences".into(), self.sentences);
        counts
    }
}

impl fmt::Display for ExtractReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let kind = if self.supervised_reference { "supervised reference" } else { "student" };
        writeln!(
            f,
            "extract ({kind}, {}): {} sentences ({} windows) in {:.1}s, {:.1} sentences/s",
            self.engine, self.sentences, self.windows, self.seconds, self.sentences_per_sec
        )?;
        for (task, version) in &self.model_versions {
            writeln!(f, "  {task}: {version}")?;
        }
        for (name, rows) in &self.tables {
            writeln!(f, "  {name}: {rows} rows")?;
        }
        Ok(())
    }
}

/// The table `task` extracts into (before the supervised reference's suffix).
pub fn output_table(task: Task) -> &'static str {
    match task {
        Task::Ade => table::ADE_RELATIONS,
        Task::GeneDisease => table::GENE_DISEASE,
        Task::Phi => table::PHI_SPANS,
    }
}

/// The schema of [`output_table`].
pub fn output_schema(task: Task) -> SchemaRef {
    match task {
        Task::Ade => schema::ADE_RELATIONS.clone(),
        Task::GeneDisease => schema::GENE_DISEASE.clone(),
        Task::Phi => schema::PHI_SPANS.clone(),
    }
}

/// Run every configured task's student over the `sentences` table: one plan per task (see
/// [`plan`]), on `cfg.engine`, each streamed into its output table.
pub async fn run(cfg: &ExtractConfig, run_dir: &RunDir) -> Result<ExtractReport> {
    if cfg.tasks.is_empty() || cfg.batch_size == 0 || cfg.read_rows == 0 {
        return Err(Error::Config("extract: tasks must be non-empty, batch_size and read_rows positive".into()));
    }
    recognizers::validate(&cfg.phi_recognizers).map_err(|e| Error::Config(format!("extract.phi_recognizers: {e}")))?;
    if !run_dir.has_table(table::SENTENCES) {
        return Err(Error::input(run_dir.table_path(table::SENTENCES), "no sentences (run `biodistill ingest` first)"));
    }
    // First, so an unreachable cluster is reported before anything else.
    // Locally one partition whose student calls use every thread (see `functions`); on a
    // cluster, the partitions are the parallelism (executors run them side by side), one
    // encoder thread per call.
    let (partitions, threads) = match cfg.engine {
        Engine::Local => (1, crate::parallel::threads_or_all(cfg.threads)),
        _ => (cfg.engine.partitions(cfg.threads), 1),
    };
    let limits =
        crate::plan::Limits { batch_rows: cfg.read_rows, partitions, ..crate::plan::Limits::mib(cfg.memory_limit_mib) };
    let ctx = cfg.engine.session(run_dir, limits).await?;
    // Absolute: the path is part of the plan, read by whichever machine runs it.
    let root = cfg.checkpoint_dir.clone().unwrap_or_else(|| run_dir.checkpoints(cfg.supervised_reference));
    let root = std::path::absolute(&root).with_path(&root)?;
    let run_id = cfg
        .run_id
        .clone()
        .unwrap_or_else(|| run_dir.root().file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default());
    let mut versions = BTreeMap::new();
    for &task in &cfg.tasks {
        let dir = root.join(task.as_str());
        if !dir.is_dir() {
            return Err(Error::input(&dir, format!("no {task} checkpoint (run `biodistill train` first)")));
        }
        let config = CheckpointConfig::read(&dir)?;
        if config.spec.task != task {
            return Err(Error::input(&dir, format!("checkpoint is for task {}, not {task}", config.spec.task)));
        }
        versions.insert(task, config.model_version);
    }

    let windows = Arc::new(AtomicUsize::new(0));
    let functions = functions::sentence_functions(&windows);
    for function in &functions {
        ctx.register_udf(function.clone());
    }
    let start = Instant::now();
    let sentences = plan::count_sentences(&ctx, cfg).await?;
    let mut report = ExtractReport {
        supervised_reference: cfg.supervised_reference,
        engine: cfg.engine.to_string(),
        sentences,
        windows: 0,
        seconds: 0.0,
        sentences_per_sec: 0.0,
        model_versions: versions.clone(),
        tables: BTreeMap::new(),
    };
    for (&task, version) in &versions {
        let bar = progress_bar(cfg.progress && cfg.engine == Engine::Local, task);
        let dir = root.join(task.as_str());
        let task_plan = plan::TaskPlan {
            task,
            checkpoint_dir: &dir,
            model_version: version,
            run_id: &run_id,
            functions: &functions,
            threads,
        };
        let df = plan::task_plan(&ctx, cfg, &task_plan).await?;
        let name = cfg.table_name(output_table(task));
        let rows = crate::plan::write_table(run_dir, &name, &output_schema(task), df).await?;
        bar.finish_and_clear();
        report.tables.insert(name, rows);
    }
    report.seconds = start.elapsed().as_secs_f64();
    report.sentences_per_sec = sentences as f64 / report.seconds.max(1e-9);
    report.windows = windows.load(Ordering::Relaxed);

    if cfg.tasks.contains(&Task::Phi) {
        let name = cfg.table_name(table::REDACTED_DOCUMENTS);
        let selected = cfg.selected_documents(run_dir)?;
        let phi_docs = selected.get(&Task::Phi).and_then(Option::as_ref);
        let spans = cfg.table_name(table::PHI_SPANS);
        let limits = crate::plan::Limits::mib(cfg.memory_limit_mib);
        report.tables.insert(name.clone(), redact(run_dir, limits, &spans, &name, phi_docs).await?);
    }
    Ok(report)
}

/// A spinner while `task`'s plan runs (the plan's progress is not observable from here).
fn progress_bar(show: bool, task: Task) -> ProgressBar {
    if !show {
        return ProgressBar::hidden();
    }
    let bar = ProgressBar::new_spinner();
    bar.set_style(
        ProgressStyle::with_template("extract {spinner} {msg} [{elapsed_precise}]").expect("static template"),
    );
    bar.set_message(format!("{task}"));
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    bar
}

fn strings<'a>(values: impl Iterator<Item = &'a str>) -> ArrayRef {
    Arc::new(values.map(Some).collect::<StringArray>())
}

/// Write `redacted_documents` (`name`): every selected document, each span of the PHI table
/// `spans` replaced by `[TYPE]`, in `doc_id` order. Documents and spans come from two plans
/// sorted by document, walked side by side, so memory holds one document's spans at a time.
async fn redact(
    run_dir: &RunDir,
    limits: crate::plan::Limits,
    spans: &str,
    name: &str,
    selected: Option<&HashSet<String>>,
) -> Result<usize> {
    use crate::plan::{ident, next};
    let ctx = crate::plan::session(run_dir, limits).await?;
    let documents = format!("SELECT doc_id, text FROM {} ORDER BY doc_id", ident(table::DOCUMENTS));
    let mut documents = ctx.sql(&documents).await?.execute_stream().await?;
    let query = format!("SELECT doc_id, start, \"end\", phi_type FROM {} ORDER BY doc_id, start", ident(spans));
    let stream = ctx.sql(&query).await?.execute_stream().await?;
    let mut spans = SpanCursor { stream, path: run_dir.table_path(spans), batch: None, row: 0 };
    let schema = schema::REDACTED_DOCUMENTS.clone();
    let mut sink = TableSink::create(run_dir, name, schema.clone())?;
    let documents_path = run_dir.table_path(table::DOCUMENTS);
    while let Some(read) = next(&mut documents).await? {
        let cols = crate::columns::Columns::new(read, documents_path.clone())?;
        let (doc, text) = (cols.doc_id()?, cols.str("text")?);
        let (mut ids, mut redacted) = (Vec::new(), Vec::new());
        for r in 0..cols.len() {
            let found = spans.take(doc.value(r)).await?;
            if selected.is_none_or(|keep| keep.contains(doc.value(r))) {
                let found = found.iter().map(|(s, e, t)| (*s, *e, t.as_str())).collect();
                ids.push(doc.value(r));
                redacted.push(redact_text(text.value(r), found));
            }
        }
        let columns: Vec<ArrayRef> = vec![strings(ids.into_iter()), strings(redacted.iter().map(String::as_str))];
        sink.write(&batch(&schema, columns)?)?;
    }
    sink.finish()
}

/// A stream of PHI spans sorted by `(doc_id, start)`, read one document at a time.
struct SpanCursor {
    stream: datafusion::execution::SendableRecordBatchStream,
    path: PathBuf,
    batch: Option<crate::columns::Columns>,
    row: usize,
}

impl SpanCursor {
    /// The spans of `doc` (`(start, end, type)`), skipping any of documents sorted before it.
    async fn take(&mut self, doc: &str) -> Result<Vec<(usize, usize, String)>> {
        let mut out = Vec::new();
        loop {
            if self.batch.as_ref().is_none_or(|b| self.row >= b.len()) {
                match crate::plan::next(&mut self.stream).await? {
                    Some(b) => (self.batch, self.row) = (Some(crate::columns::Columns::new(b, self.path.clone())?), 0),
                    None => return Ok(out),
                }
                continue;
            }
            let cols = self.batch.as_ref().expect("checked above");
            let at = cols.doc_id()?.value(self.row);
            if at > doc {
                return Ok(out);
            }
            if at == doc {
                let (start, end) = (cols.i32("start")?.value(self.row), cols.i32("end")?.value(self.row));
                out.push((start.max(0) as usize, end.max(0) as usize, cols.str("phi_type")?.value(self.row).into()));
            }
            self.row += 1;
        }
    }
}

/// `text` with each `[start, end)` char span replaced by `[TYPE]`; overlapping or out-of-range
/// spans (which extraction does not produce) are skipped rather than corrupting the text.
pub fn redact_text(text: &str, mut spans: Vec<(usize, usize, &str)>) -> String {
    spans.sort_unstable();
    let index = CharIndex::new(text);
    let mut out = String::with_capacity(text.len());
    let mut at = 0;
    for (start, end, phi_type) in spans {
        if start < at || end > index.len_chars() || start >= end {
            continue;
        }
        out.push_str(&text[index.byte(at)..index.byte(start)]);
        out.push_str(&format!("[{phi_type}]"));
        at = end;
    }
    out.push_str(&text[index.byte(at)..]);
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn redaction_replaces_spans_by_char_offsets() {
        let text = "Zoë Smith, née 1970, Zürich.";
        let spans = vec![(21, 27, "LOCATION"), (0, 9, "NAME"), (15, 19, "DATE"), (16, 18, "DATE")];
        assert_eq!(redact_text(text, spans), "[NAME], née [DATE], [LOCATION].");
        assert_eq!(redact_text(text, vec![]), text);
    }
}
