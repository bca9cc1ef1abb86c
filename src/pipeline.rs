//! `biodistill run`: every stage in order, then write–audit–publish.
//!
//! ```text
//! ingest -> label (embedded or remote teacher) -> train -> extract
//!        -> [supervised reference: train + extract] -> eval -> audit -> publish
//! ```
//!
//! **Run id.** A hash of the configuration, the input documents' content hashes and the code
//! version: the same inputs give the same run, so a rerun after a crash finishes that run and
//! a run that already published does not publish again.
//!
//! **Incremental runs.** Documents are identified by content hash. Labeling is incremental
//! through the teacher cache (an unchanged sentence is never sent again), and extraction runs
//! only over documents that are new or changed since the live publication, merging the rest of
//! that publication's rows — as long as the student's model version and the extraction scope
//! (`extract.splits`, `extract.sources`) are unchanged; otherwise it re-extracts everything, so
//! every row carries the version that produced it and a widened scope covers every document.
//!
//! **Crash safety.** Every stage writes its tables atomically and is deterministic (fixed
//! seeds, cached teacher replies), and publication is one rename, so `kill -9` at any point
//! followed by a rerun yields what an uninterrupted run yields, with no teacher request paid
//! twice.

pub mod incremental;

use std::collections::{BTreeMap, HashSet};
use std::fmt;
use std::path::PathBuf;
use std::time::Instant;

use sha2::{Digest, Sha256};

use self::incremental::{changed_documents, document_versions, merge_previous, write_document_versions};
use crate::config::PipelineConfig;
use crate::error::{Error, Result};
use crate::eval::EvalReport;
use crate::extract::{ExtractConfig, SUPERVISED_REFERENCE_SUFFIX};
use crate::manifest::{self, Manifest, StageRecord};
use crate::publish::{self, Gate};
use crate::run_dir::RunDir;
use crate::schema::table;
use crate::train::TrainConfig;
use crate::vocab::Task;

/// What a publication's extracted rows depend on besides the documents (see [`Extraction`]).
const EXTRACTION_FILE: &str = "extraction.json";

/// Each task's student model version and the extraction's scope. An incremental run keeps a
/// publication's rows only when all of it is unchanged: a new student, or a widened
/// `extract.splits` / `extract.sources`, re-extracts every document.
#[derive(Debug, PartialEq, serde::Serialize, serde::Deserialize)]
struct Extraction {
    student_versions: BTreeMap<String, String>,
    splits: Vec<String>,
    sources: BTreeMap<Task, Vec<String>>,
}

impl Extraction {
    fn of(student_versions: BTreeMap<String, String>, cfg: &ExtractConfig) -> Self {
        Self { student_versions, splits: cfg.splits.clone(), sources: cfg.sources.clone() }
    }

    /// The publication's, or `None` when it has none (or an older format): extract everything.
    fn read(publication: &RunDir) -> Option<Self> {
        let text = std::fs::read_to_string(publication.root().join(EXTRACTION_FILE)).ok()?;
        serde_json::from_str(&text).ok()
    }

    fn write(&self, run_dir: &RunDir) -> Result<()> {
        let path = run_dir.root().join(EXTRACTION_FILE);
        std::fs::write(&path, serde_json::to_string_pretty(self)?).map_err(|e| Error::input(path, e.to_string()))
    }
}

/// What `biodistill run` did.
#[derive(Debug)]
pub struct RunReport {
    pub run_id: String,
    pub status: String,
    pub stages: Vec<StageRecord>,
    pub eval: Option<EvalReport>,
    pub gates: Vec<Gate>,
    pub published: Option<PathBuf>,
    pub manifest: Manifest,
}

impl fmt::Display for RunReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(f, "run {}: {}", self.run_id, self.status)?;
        for s in &self.stages {
            let counts: Vec<String> = s.counts.iter().map(|(k, v)| format!("{k}={v}")).collect();
            writeln!(f, "  {:<22} {:>8.1}s  {}", s.stage, s.seconds, counts.join(" "))?;
        }
        if let Some(eval) = &self.eval {
            write!(f, "{eval}")?;
        }
        for g in &self.gates {
            writeln!(f, "  gate {:<40} {}  {}", g.name, if g.passed { "pass" } else { "FAIL" }, g.detail)?;
        }
        let m = &self.manifest;
        writeln!(
            f,
            "  wall {:.1}s, peak memory {:.0} MiB, teacher requests {} (cache hits {}), tokens {}+{}, cost ${:.4}",
            m.wall_secs, m.peak_rss_mib, m.requests, m.cache_hits, m.prompt_tokens, m.completion_tokens, m.cost_usd
        )?;
        if let Some(p) = &self.published {
            writeln!(f, "  published: {}", p.display())?;
        }
        if m.failed_inputs > 0 {
            writeln!(f, "  {} input files could not be read (see the log): exit status 1", m.failed_inputs)?;
        }
        Ok(())
    }
}

/// Times one stage and records it; `.1` names the stage running (so a failure names it).
struct Stages(Vec<StageRecord>, Option<String>);

impl Stages {
    /// Run `work` (a future: it starts when awaited here) as stage `stage`.
    async fn time<T>(
        &mut self,
        stage: &str,
        work: impl Future<Output = Result<T>>,
        counts: impl FnOnce(&T) -> BTreeMap<String, usize>,
    ) -> Result<T> {
        let start = Instant::now();
        tracing::info!("stage {stage}");
        self.1 = Some(stage.into());
        let out = work.await?;
        self.1 = None;
        self.0.push(StageRecord { stage: stage.into(), seconds: start.elapsed().as_secs_f64(), counts: counts(&out) });
        Ok(out)
    }
}

/// Run the pipeline `cfg` describes (see the module docs).
///
/// Every run that got as far as its run id leaves one `run_manifest` row: `published`,
/// `already_published`, `gate_failed`, or `failed` with the error that stopped it.
pub async fn run(cfg: &PipelineConfig, full_refresh: bool) -> Result<RunReport> {
    let started = Instant::now();
    let started_at = chrono::Utc::now().to_rfc3339();
    let run_dir = RunDir::create(&cfg.run.dir)?;
    let mut stages = Stages(Vec::new(), None);
    let ingest = stages
        .time("ingest", async { crate::ingest::run(&cfg.ingest, &run_dir) }, |r| r.tables.iter().cloned().collect())
        .await?;
    if !ingest.failed_files.is_empty() {
        tracing::warn!(
            "{} input files could not be read (see above); going on with the rest",
            ingest.failed_files.len()
        );
    }
    let documents = document_versions(&run_dir, table::DOCUMENTS)?;
    let git_sha = manifest::git_sha();
    let input_hash = hash_documents(&documents);
    // The silver set is an input too: a run whose budget can still add sentences is a new run.
    let mut label_cfg = cfg.label_config();
    let silver_state = silver_state(&crate::teacher::plan(&label_cfg, &run_dir).await?);
    let run_id = run_id(&cfg.hash(), &format!("{input_hash}/{silver_state}"), &code_state(cfg), full_refresh);
    label_cfg.run_id = run_id.clone();
    let mut m = Manifest {
        run_id: run_id.clone(),
        started_at,
        git_sha,
        config_hash: cfg.hash(),
        input_hash,
        documents: documents.len() as i64,
        failed_inputs: ingest.failed_files.len() as i64,
        teacher_endpoint: cfg.teacher.base_url.clone(),
        teacher_model: cfg.teacher.model.clone(),
        ..Default::default()
    };
    let outcome = stages_after_ingest(cfg, &run_dir, &label_cfg, &documents, full_refresh, &mut m, &mut stages).await;
    let (status, eval, gates, published) = match outcome {
        Ok(outcome) => outcome,
        Err(e) => {
            let stage = stages.1.take().map(|s| format!("stage {s}: ")).unwrap_or_default();
            m.error = format!("{stage}{e}").replace('\n', " ");
            tracing::error!("run {run_id} failed: {}", m.error);
            if let Err(written) = finish(&run_dir, m, "failed", stages.0, None, vec![], None, started) {
                tracing::error!("the run_manifest row of the failed run was not written: {written}");
            }
            return Err(e);
        }
    };
    let report = finish(&run_dir, m, status, stages.0, eval, gates, published, started)?;
    if status == "gate_failed" {
        print!("{report}");
        let failed = report.gates.iter().find(|g| !g.passed).map(|g| format!("{}: {}", g.name, g.detail));
        return Err(Error::GateFailed(failed.unwrap_or_default()));
    }
    Ok(report)
}

/// A run's status, evaluation, gate verdicts and publication.
type Outcome = (&'static str, Option<EvalReport>, Vec<Gate>, Option<PathBuf>);

/// Everything after the run id is known: label, train, extract, eval, audit, publish.
async fn stages_after_ingest(
    cfg: &PipelineConfig,
    run_dir: &RunDir,
    label_cfg: &crate::teacher::LabelConfig,
    documents: &BTreeMap<String, String>,
    full_refresh: bool,
    m: &mut Manifest,
    stages: &mut Stages,
) -> Result<Outcome> {
    let run_id = m.run_id.clone();
    let previous = publish::current_tables(&cfg.publish, run_dir);
    if publish::was_published(&cfg.publish, run_dir, &run_id) {
        tracing::info!("run {run_id} (same configuration, inputs and code) is already published; nothing to do");
        return Ok(("already_published", None, vec![], None));
    }
    let changed = match (&previous, full_refresh) {
        (Some(prev), false) if prev.has_table(table::DOCUMENT_VERSIONS) => Some(changed_documents(documents, prev)?),
        _ => None,
    };
    m.changed_documents = changed.as_ref().map_or(documents.len(), HashSet::len) as i64;

    // Label: the teacher cache makes every sentence it has seen free.
    let label = stages
        .time("label", crate::teacher::run_embedded_or_remote(label_cfg, &cfg.serve, run_dir), |label| {
            BTreeMap::from([
                ("inputs".into(), label.inputs),
                ("ok".into(), label.ok),
                ("requests".into(), label.cache_misses),
                ("cache_hits".into(), label.cache_hits),
                ("teacher_labels".into(), label.labels),
                ("silver_added".into(), label.silver.values().map(|g| g.added).sum()),
            ])
        })
        .await?;
    m.silver = serde_json::to_string(&label.silver)?;
    m.teacher_model = label.model.clone();
    m.prompt_versions = serde_json::to_string(&label.prompt_versions)?;
    m.cache_hits = label.cache_hits as i64;
    m.requests = label.cache_misses as i64;
    m.prompt_tokens = label.prompt_tokens as i64;
    m.completion_tokens = label.completion_tokens as i64;
    m.cost_usd = label.cost_usd;

    // Train and extract the distilled student.
    let train_cfg = TrainConfig { supervised_reference: false, ..cfg.train.clone() };
    let trained = stages
        .time("train", async { crate::train::run(&train_cfg, run_dir) }, crate::train::TrainReport::counts)
        .await?;
    let versions: BTreeMap<String, String> =
        trained.tasks.iter().map(|t| (t.task.as_str().to_string(), t.model_version.clone())).collect();
    m.student_versions = serde_json::to_string(&versions)?;
    let extraction = Extraction::of(versions, &cfg.extract);
    extraction.write(run_dir)?;
    let incremental = match (&changed, &previous) {
        (Some(_), Some(prev)) => Extraction::read(prev).as_ref() == Some(&extraction),
        _ => false,
    };
    if changed.is_some() && !incremental {
        tracing::info!("the student or the extraction scope changed since the last publication: extracting everything");
    }
    let extract_cfg = ExtractConfig {
        run_id: Some(run_id.clone()),
        supervised_reference: false,
        tasks: train_cfg.tasks.clone(),
        only_documents: if incremental { changed.clone() } else { None },
        ..cfg.extract.clone()
    };
    stages.time("extract", crate::extract::run(&extract_cfg, run_dir), crate::extract::ExtractReport::counts).await?;
    let mut outputs = output_tables(&extract_cfg);
    // What this run's publication covers; the merge keeps the previous rows of the documents
    // unchanged in both.
    write_document_versions(run_dir, documents)?;
    if let (true, Some(prev)) = (incremental, &previous) {
        let limits = crate::plan::Limits::mib(cfg.extract.memory_limit_mib);
        for name in &outputs {
            merge_previous(run_dir, prev, name, limits).await?;
        }
    }

    // The supervised reference: same architecture, gold train labels; named as such.
    if cfg.run.supervised_reference {
        let reference = TrainConfig { supervised_reference: true, ..cfg.train.clone() };
        stages
            .time(
                "train_supervised_reference",
                async { crate::train::run(&reference, run_dir) },
                crate::train::TrainReport::counts,
            )
            .await?;
        let reference_extract =
            ExtractConfig { supervised_reference: true, only_documents: None, ..extract_cfg.clone() };
        stages
            .time(
                "extract_supervised_reference",
                crate::extract::run(&reference_extract, run_dir),
                crate::extract::ExtractReport::counts,
            )
            .await?;
        outputs.extend(output_tables(&reference_extract));
    }

    let stage_lines: Vec<String> = stages.0.iter().map(|s| format!("| {} | {:.1} |", s.stage, s.seconds)).collect();
    let silver_lines: Vec<String> = label
        .silver
        .iter()
        .map(|(t, g)| {
            format!(
                "| {t} | {} | +{} of {} asked | {} | {} | {} |",
                g.silver_ok,
                g.added,
                g.asked,
                g.after(),
                g.remaining,
                g.policy
            )
        })
        .collect();
    let timings = format!(
        "| stage | seconds |\n|---|---|\n{}\n\nSilver set (training sentences with a parseable teacher answer):\n\n\
         | task | before | this run | after | candidates left | selection |\n|---|---|---|---|---|---|\n{}\n\n\
         Teacher: {} requests paid, {} cache hits, {} prompt + {} completion tokens, ${:.4}.\n",
        stage_lines.join("\n"),
        silver_lines.join("\n"),
        m.requests,
        m.cache_hits,
        m.prompt_tokens,
        m.completion_tokens,
        m.cost_usd
    );
    let context = [("Run".to_string(), timings)];
    let eval = stages
        .time("eval", crate::eval::run_with_context(&cfg.eval_config(), run_dir, &run_id, &context), |r| {
            BTreeMap::from([("results".to_string(), r.rows.len())])
        })
        .await?;

    // Audit, then publish.
    let required: Vec<String> =
        output_tables(&extract_cfg).into_iter().filter(|t| t != table::REDACTED_DOCUMENTS).collect();
    let gates = publish::audit(&cfg.publish, run_dir, &required, previous.as_ref(), full_refresh).await?;
    if let Some(failed) = gates.iter().find(|g| !g.passed) {
        tracing::error!("quality gate {} failed: {}; the last publication stays", failed.name, failed.detail);
        return Ok(("gate_failed", Some(eval), gates, None));
    }
    let tables = [
        table::TEACHER_LABELS,
        table::TEACHER_CALLS,
        table::EVAL_RESULTS,
        table::EVAL_HISTORY,
        table::DOCUMENT_VERSIONS,
    ];
    let files: Vec<PathBuf> = outputs
        .iter()
        .map(String::as_str)
        .chain(tables)
        .map(|t| format!("{t}.parquet"))
        .chain(["report.md", "report.html", crate::eval::viewer::FILE, EXTRACTION_FILE].map(String::from))
        .map(PathBuf::from)
        .filter(|f| run_dir.root().join(f).is_file())
        .collect();
    stages.1 = Some("publish".into());
    let target = publish::publish(&cfg.publish, run_dir, &run_id, &files)?;
    stages.1 = None;
    Ok(("published", Some(eval), gates, Some(target)))
}

#[allow(clippy::too_many_arguments)]
fn finish(
    run_dir: &RunDir,
    mut m: Manifest,
    status: &str,
    stages: Vec<StageRecord>,
    eval: Option<EvalReport>,
    gates: Vec<Gate>,
    published: Option<PathBuf>,
    started: Instant,
) -> Result<RunReport> {
    m.status = status.into();
    m.finished_at = chrono::Utc::now().to_rfc3339();
    m.wall_secs = started.elapsed().as_secs_f64();
    m.peak_rss_mib = manifest::peak_rss_mib();
    m.stages = serde_json::to_string(&stages)?;
    m.gates = serde_json::to_string(&gates)?;
    m.append(run_dir)?;
    Ok(RunReport { run_id: m.run_id.clone(), status: status.into(), stages, eval, gates, published, manifest: m })
}

/// Which teacher answers the label stage will hold, per task (the plan's request digests):
/// unchanged between two runs only when the second can add nothing, and changed by any prompt
/// or sampling edit (the digest covers every request's cache key).
fn silver_state(plan: &crate::teacher::LabelPlan) -> String {
    let parts: Vec<String> = plan.tasks.iter().map(|t| format!("{}:{}", t.task, t.requests_digest)).collect();
    parts.join(",")
}

/// The run id for a standalone stage (`biodistill eval`): the run directory's name (`.`
/// resolved first, so `--run-dir .` is named too).
pub fn run_id_of(run_dir: &RunDir) -> String {
    let root = std::fs::canonicalize(run_dir.root()).unwrap_or_else(|_| run_dir.root().to_path_buf());
    root.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_else(|| "adhoc".into())
}

/// What besides configuration and inputs decides a run's results: the sources the binary was
/// built from (committed or not) and the model weights it loads.
fn code_state(cfg: &PipelineConfig) -> String {
    let mut parts = vec![env!("BD_SOURCE_HASH").to_string(), manifest::model_fingerprint(&cfg.train.model_dir)];
    if cfg.teacher.base_url == crate::teacher::EMBEDDED {
        parts.push(manifest::model_fingerprint(&cfg.serve.model));
    }
    parts.join("/")
}

fn run_id(config_hash: &str, input_hash: &str, code: &str, full_refresh: bool) -> String {
    let mut h = Sha256::new();
    for part in [config_hash, input_hash, code, env!("CARGO_PKG_VERSION"), if full_refresh { "full" } else { "" }] {
        h.update(part.as_bytes());
        h.update([0]);
    }
    format!("r{}", &hex::encode(h.finalize())[..12])
}

fn hash_documents(documents: &BTreeMap<String, String>) -> String {
    let mut h = Sha256::new();
    for (id, hash) in documents {
        h.update(id.as_bytes());
        h.update([0]);
        h.update(hash.as_bytes());
        h.update([0]);
    }
    hex::encode(&h.finalize()[..16])
}

/// The tables an extraction config writes.
fn output_tables(cfg: &ExtractConfig) -> Vec<String> {
    let mut out = Vec::new();
    for task in &cfg.tasks {
        out.push(cfg.table_name(crate::extract::output_table(*task)));
        if *task == Task::Phi {
            out.push(cfg.table_name(table::REDACTED_DOCUMENTS));
        }
    }
    debug_assert!(out.iter().all(|t| cfg.supervised_reference == t.ends_with(SUPERVISED_REFERENCE_SUFFIX)));
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn run_id_depends_on_every_input() {
        let a = run_id("c", "i", "g", false);
        assert_eq!(a, run_id("c", "i", "g", false));
        assert_ne!(a, run_id("c2", "i", "g", false));
        assert_ne!(a, run_id("c", "i2", "g", false));
        assert_ne!(a, run_id("c", "i", "g2", false));
        assert_ne!(a, run_id("c", "i", "g", true));
    }
}
