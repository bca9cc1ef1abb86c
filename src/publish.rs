//! Write–audit–publish: a run's outputs reach readers only after its quality gates pass, all
//! tables at once, and at most once per run id.
//!
//! Layout under the publication directory (`publish.dir`, default `<run dir>/published`):
//!
//! ```text
//! published/
//!   <run_id>/ade_relations.parquet …   one complete, immutable publication per run
//!   current -> <run_id>                 symlink, swapped with one atomic rename
//! ```
//!
//! Readers (DuckDB, polars, `biodistill sql --published`) read `published/current/`, so they
//! see the previous publication or the new one, never a mix. A run whose gates fail, or that
//! is killed before the swap, leaves `current` as it was. The history of every run, published
//! or not, is the `run_manifest` table of the run directory.

use std::collections::BTreeMap;
use std::fs;
use std::path::{Path, PathBuf};

use arrow::array::{AsArray, RecordBatch};
use arrow::datatypes::Float64Type;
use datafusion::prelude::SessionContext;
use serde::{Deserialize, Serialize};

use crate::error::{Error, IoContext, Result};
use crate::plan::{Limits, counts, ident, literal};
use crate::run_dir::RunDir;
use crate::schema::table;

/// The symlink naming the live publication.
pub const CURRENT: &str = "current";

/// Quality gates and where publications go (`[publish]` in a pipeline file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PublishConfig {
    /// Publication directory; default `<run dir>/published`.
    pub dir: Option<PathBuf>,
    /// Fewest rows each extracted table must have.
    pub min_rows: usize,
    /// Lowest share of teacher spans aligned to their sentence (exact, case-insensitive or
    /// fuzzy) the labels may have.
    pub min_alignment_rate: f64,
    /// Largest drop of any student F1 (eval_results, subset `all`) below the last
    /// publication's before the run is refused.
    pub max_f1_drop: f64,
    /// Lowest student headline F1 (per task and dataset, at least 20 gold items) a run may
    /// publish: the drop gate alone lets a first, useless student through. 0 disables.
    pub min_f1: f64,
    /// Publications kept on disk besides the current one.
    pub keep: usize,
}

impl Default for PublishConfig {
    fn default() -> Self {
        Self { dir: None, min_rows: 1, min_alignment_rate: 0.5, max_f1_drop: 0.05, min_f1: 0.0, keep: 3 }
    }
}

impl PublishConfig {
    /// The publication directory of `run_dir`.
    pub fn dir(&self, run_dir: &RunDir) -> PathBuf {
        self.dir.clone().unwrap_or_else(|| run_dir.root().join("published"))
    }
}

/// One quality gate's verdict.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Gate {
    pub name: String,
    pub passed: bool,
    pub detail: String,
}

impl Gate {
    fn new(name: impl Into<String>, passed: bool, detail: impl Into<String>) -> Self {
        Self { name: name.into(), passed, detail: detail.into() }
    }
}

/// The live publication's directory, if any.
pub fn current(dir: &Path) -> Option<PathBuf> {
    let link = dir.join(CURRENT);
    fs::read_link(&link).ok().map(|target| dir.join(target))
}

/// The live publication as a run directory of tables, if any.
pub fn current_tables(cfg: &PublishConfig, run_dir: &RunDir) -> Option<RunDir> {
    current(&cfg.dir(run_dir)).and_then(|d| RunDir::open(d).ok())
}

/// Whether `run_id` is the live publication: its directory exists and `current` points at
/// it. A directory `current` does not name (a run killed between the rename and the swap, or a
/// superseded publication) does not count: the rerun publishes it again and swaps `current`.
pub fn was_published(cfg: &PublishConfig, run_dir: &RunDir, run_id: &str) -> bool {
    let dir = cfg.dir(run_dir);
    dir.join(run_id).is_dir() && is_current(&dir, run_id)
}

/// Whether `current` in `dir` names `run_id`.
fn is_current(dir: &Path, run_id: &str) -> bool {
    fs::read_link(dir.join(CURRENT)).is_ok_and(|t| t.as_os_str() == run_id)
}

/// Run the quality gates over the staged tables of `run_dir`.
///
/// `tables`: the extracted tables that must not be (nearly) empty; `previous`: the live
/// publication, whose `eval_results` the new F1s are compared with; `full_refresh`: a dataset
/// it was scored on may be gone (dropped on purpose).
pub async fn audit(
    cfg: &PublishConfig,
    run_dir: &RunDir,
    tables: &[String],
    previous: Option<&RunDir>,
    full_refresh: bool,
) -> Result<Vec<Gate>> {
    let figures = Figures::of(run_dir).await?;
    let mut gates = Vec::new();
    for name in tables {
        let rows = if run_dir.has_table(name) { figures.rows(name).await? } else { 0 };
        gates.push(Gate::new(
            format!("rows:{name}"),
            rows >= cfg.min_rows,
            format!("{rows} rows (min {})", cfg.min_rows),
        ));
    }
    if run_dir.has_table(table::TEACHER_LABELS) {
        let (aligned, total) = figures.alignment().await?;
        let rate = if total == 0 { 0.0 } else { aligned as f64 / total as f64 };
        gates.push(Gate::new(
            "teacher_alignment",
            total > 0 && rate >= cfg.min_alignment_rate,
            format!("{aligned}/{total} spans aligned = {rate:.3} (min {})", cfg.min_alignment_rate),
        ));
    }
    let scored = run_dir.has_table(table::EVAL_RESULTS);
    let needed = cfg.min_f1 > 0.0 || previous.is_some();
    let new = if scored && needed { figures.student_f1s().await? } else { BTreeMap::new() };
    if cfg.min_f1 > 0.0 {
        for (key, &now) in &new {
            gates.push(Gate::new(
                format!("f1_floor:{key}"),
                now >= cfg.min_f1,
                format!("{now:.4} (min {})", cfg.min_f1),
            ));
        }
    }
    if let Some(previous) = previous.filter(|p| scored && p.has_table(table::EVAL_RESULTS)) {
        for (key, before) in Figures::of(previous).await?.student_f1s().await? {
            // A dataset the live publication was scored on and this run was not: its
            // tables are incomplete (or the scope was narrowed, which publish.max_f1_drop
            // cannot judge), so it does not publish silently.
            let gate = match new.get(&key) {
                None if full_refresh => continue,
                Some(&now) => Gate::new(
                    format!("f1:{key}"),
                    now >= before - cfg.max_f1_drop,
                    format!("{now:.4} vs {before:.4} published (max drop {})", cfg.max_f1_drop),
                ),
                None => Gate::new(
                    format!("f1:{key}"),
                    false,
                    format!(
                        "not scored by this run ({before:.4} published): its rows are missing; to drop \
                         the dataset on purpose, publish with --full-refresh"
                    ),
                ),
            };
            gates.push(gate);
        }
    }
    Ok(gates)
}

/// The F1 a task is judged by (see `crate::eval`): not per-type or baseline figures.
const HEADLINE_F1: [&str; 4] = ["pair_strict_f1", "positive_f1", "pair_text_f1", "strict_f1"];
/// Fewer gold items than this make an F1 too noisy to gate on.
const MIN_GATE_N: i64 = 20;

/// What the gates judge, each figure a query over a run directory's tables.
struct Figures(SessionContext);

impl Figures {
    async fn of(run_dir: &RunDir) -> Result<Self> {
        // A few aggregates over small tables: no memory bound, and no spill directory (the
        // live publication is read-only to us).
        let limits = Limits { memory_bytes: None, spill: false, partitions: 1, batch_rows: 0 };
        Ok(Self(crate::plan::session(run_dir, limits).await?))
    }

    async fn query(&self, sql: &str) -> Result<Vec<RecordBatch>> {
        Ok(self.0.sql(sql).await?.collect().await?)
    }

    async fn rows(&self, name: &str) -> Result<usize> {
        Ok(counts(&self.0, &format!("SELECT count(*) FROM {}", ident(name))).await?[0])
    }

    /// (aligned, total) teacher spans: subjects and objects together.
    async fn alignment(&self) -> Result<(usize, usize)> {
        let labels = ident(table::TEACHER_LABELS);
        let sql = format!(
            "SELECT count(CASE WHEN a <> 'unaligned' THEN 1 END), count(a) FROM \
             (SELECT subject_alignment AS a FROM {labels} UNION ALL SELECT object_alignment AS a FROM {labels})"
        );
        let aligned = counts(&self.0, &sql).await?;
        Ok((aligned[0], aligned[1]))
    }

    /// `task/dataset/metric -> value` of the student's headline F1s on every dev sentence.
    async fn student_f1s(&self) -> Result<BTreeMap<String, f64>> {
        let metrics: Vec<String> = HEADLINE_F1.iter().map(|m| literal(m)).collect();
        let sql = format!(
            "SELECT task || '/' || dataset || '/' || metric, value FROM {} WHERE system = 'student' \
             AND subset = 'all' AND metric IN ({}) AND n >= {MIN_GATE_N}",
            ident(table::EVAL_RESULTS),
            metrics.join(", ")
        );
        let mut out = BTreeMap::new();
        for batch in self.query(&sql).await? {
            let (keys, values) = (batch.column(0).as_string::<i32>(), batch.column(1).as_primitive::<Float64Type>());
            out.extend((0..batch.num_rows()).map(|i| (keys.value(i).to_string(), values.value(i))));
        }
        Ok(out)
    }
}

/// Publish `files` (paths relative to the run directory) as `run_id`: copy them into a
/// staging directory, rename it to `<dir>/<run_id>`, then swap `current` to it. Refuses a
/// run id that is the live publication; a `<dir>/<run_id>` that `current` does not name (left
/// by a crash before the swap, or superseded) is replaced. Returns the publication's directory.
pub fn publish(cfg: &PublishConfig, run_dir: &RunDir, run_id: &str, files: &[PathBuf]) -> Result<PathBuf> {
    let dir = cfg.dir(run_dir);
    fs::create_dir_all(&dir).with_path(&dir)?;
    let target = dir.join(run_id);
    if target.exists() && is_current(&dir, run_id) {
        return Err(Error::Config(format!(
            "run {run_id} is already published at {}; a run publishes once",
            target.display()
        )));
    }
    let staging = dir.join(format!(".staging-{run_id}"));
    if staging.exists() {
        // Left by a run killed while staging: its copies may be partial.
        fs::remove_dir_all(&staging).with_path(&staging)?;
    }
    fs::create_dir_all(&staging).with_path(&staging)?;
    for file in files {
        let from = run_dir.root().join(file);
        let to = staging.join(file.file_name().unwrap_or(file.as_os_str()));
        fs::copy(&from, &to).with_path(&from)?;
        fs::File::open(&to).and_then(|f| f.sync_all()).with_path(&to)?;
    }
    if target.exists() {
        // Not live (checked above): readers never see it, so it can go before the rename.
        tracing::info!("{} was left without `current` pointing at it; publishing it again", target.display());
        fs::remove_dir_all(&target).with_path(&target)?;
    }
    fs::rename(&staging, &target).with_path(&target)?;
    swap_current(&dir, run_id)?;
    prune(&dir, cfg.keep)?;
    Ok(target)
}

/// Point `current` at `run_id` with one atomic rename of a fresh symlink.
fn swap_current(dir: &Path, run_id: &str) -> Result<()> {
    let tmp = dir.join(format!(".{CURRENT}.tmp"));
    let _ = fs::remove_file(&tmp);
    #[cfg(unix)]
    std::os::unix::fs::symlink(run_id, &tmp).with_path(&tmp)?;
    #[cfg(not(unix))]
    return Err(Error::Config("publishing needs symlinks (unix)".into()));
    fs::rename(&tmp, dir.join(CURRENT)).with_path(dir.join(CURRENT))?;
    if let Ok(d) = fs::File::open(dir) {
        let _ = d.sync_all();
    }
    Ok(())
}

/// Delete all but the newest `keep` publications besides the current one.
fn prune(dir: &Path, keep: usize) -> Result<()> {
    let live = fs::read_link(dir.join(CURRENT)).ok();
    let mut old: Vec<(std::time::SystemTime, PathBuf)> = Vec::new();
    for entry in fs::read_dir(dir).with_path(dir)? {
        let entry = entry.with_path(dir)?;
        let name = entry.file_name();
        let is_live = live.as_deref().is_some_and(|l| l.as_os_str() == name);
        if is_live || name.to_string_lossy().starts_with('.') || !entry.path().is_dir() || entry.path().is_symlink() {
            continue;
        }
        let modified = entry.metadata().and_then(|m| m.modified()).with_path(entry.path())?;
        old.push((modified, entry.path()));
    }
    old.sort();
    let excess = old.len().saturating_sub(keep);
    for (_, path) in old.into_iter().take(excess) {
        fs::remove_dir_all(&path).with_path(&path)?;
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    fn touch(run_dir: &RunDir, name: &str, body: &str) -> PathBuf {
        fs::write(run_dir.root().join(name), body).unwrap();
        PathBuf::from(name)
    }

    /// `(task, dataset, value, n)`.
    type F1Row<'a> = (&'a str, &'a str, f64, i64);

    /// An `eval_results`-shaped table of student headline F1s.
    fn write_f1s(run_dir: &RunDir, rows: &[F1Row]) {
        use arrow::array::{ArrayRef, Float64Array, Int64Array, StringArray};
        use arrow::datatypes::{DataType, Field, Schema};
        let strings = |f: &dyn Fn(&F1Row) -> String| -> ArrayRef {
            std::sync::Arc::new(StringArray::from(rows.iter().map(f).collect::<Vec<_>>()))
        };
        let names = ["task", "dataset", "system", "subset", "metric"];
        let mut fields: Vec<Field> = names.iter().map(|n| Field::new(*n, DataType::Utf8, false)).collect();
        fields.push(Field::new("value", DataType::Float64, false));
        fields.push(Field::new("n", DataType::Int64, false));
        let columns = vec![
            strings(&|r| r.0.into()),
            strings(&|r| r.1.into()),
            strings(&|_| "student".into()),
            strings(&|_| "all".into()),
            strings(&|_| "pair_strict_f1".into()),
            std::sync::Arc::new(Float64Array::from(rows.iter().map(|r| r.2).collect::<Vec<_>>())),
            std::sync::Arc::new(Int64Array::from(rows.iter().map(|r| r.3).collect::<Vec<_>>())),
        ];
        let schema = std::sync::Arc::new(Schema::new(fields));
        let batch = crate::run_dir::batch(&schema, columns).unwrap();
        run_dir.write_table(crate::schema::table::EVAL_RESULTS, schema, &[batch]).unwrap();
    }

    #[tokio::test]
    async fn the_f1_floor_refuses_a_useless_student_and_is_off_by_default() {
        let tmp = tempfile::tempdir().unwrap();
        let run_dir = RunDir::create(tmp.path().join("run")).unwrap();
        // A good ADE score, a useless one, and one on too few gold items to judge.
        write_f1s(
            &run_dir,
            &[("ade", "ade_corpus_v2", 0.4, 1099), ("gene_disease", "gad", 0.0, 567), ("phi", "x", 0.0, 5)],
        );
        let floor = async |min_f1| {
            let cfg = PublishConfig { min_f1, ..Default::default() };
            let gates = audit(&cfg, &run_dir, &[], None, false).await.unwrap();
            gates.into_iter().filter(|g| g.name.starts_with("f1_floor")).collect::<Vec<_>>()
        };
        assert!(floor(0.0).await.is_empty());
        let verdicts: Vec<(String, bool)> = floor(0.1).await.into_iter().map(|g| (g.name, g.passed)).collect();
        assert_eq!(
            verdicts,
            [
                ("f1_floor:ade/ade_corpus_v2/pair_strict_f1".to_string(), true),
                ("f1_floor:gene_disease/gad/pair_strict_f1".to_string(), false)
            ]
        );
    }

    #[test]
    fn publishes_once_and_swaps_current() {
        let tmp = tempfile::tempdir().unwrap();
        let run_dir = RunDir::create(tmp.path().join("run")).unwrap();
        let cfg = PublishConfig { keep: 1, ..Default::default() };
        let a = touch(&run_dir, "a.txt", "first");
        publish(&cfg, &run_dir, "r1", std::slice::from_ref(&a)).unwrap();
        let dir = cfg.dir(&run_dir);
        assert_eq!(fs::read_to_string(current(&dir).unwrap().join("a.txt")).unwrap(), "first");
        assert!(was_published(&cfg, &run_dir, "r1"));
        // The same run id cannot publish again; the live publication is untouched.
        touch(&run_dir, "a.txt", "second");
        assert!(publish(&cfg, &run_dir, "r1", std::slice::from_ref(&a)).is_err());
        assert_eq!(fs::read_to_string(current(&dir).unwrap().join("a.txt")).unwrap(), "first");
        publish(&cfg, &run_dir, "r2", std::slice::from_ref(&a)).unwrap();
        assert_eq!(fs::read_to_string(current(&dir).unwrap().join("a.txt")).unwrap(), "second");
        // keep = 1: r1 is kept as the one older publication; a third run prunes it.
        publish(&cfg, &run_dir, "r3", &[a]).unwrap();
        assert!(!dir.join("r1").exists() && dir.join("r2").exists() && dir.join("r3").exists());
    }

    /// A crash after the rename and before the swap leaves `<run_id>/` complete but `current`
    /// on the previous run: that run is not published, and publishing it again swaps `current`.
    #[test]
    fn a_crash_before_the_swap_does_not_count_as_published() {
        let tmp = tempfile::tempdir().unwrap();
        let run_dir = RunDir::create(tmp.path().join("run")).unwrap();
        let cfg = PublishConfig::default();
        let dir = cfg.dir(&run_dir);
        let a = touch(&run_dir, "a.txt", "old");
        publish(&cfg, &run_dir, "r1", std::slice::from_ref(&a)).unwrap();
        // r2 renamed into place, then killed: current still names r1.
        fs::create_dir_all(dir.join("r2")).unwrap();
        fs::write(dir.join("r2/a.txt"), "new").unwrap();
        assert!(!was_published(&cfg, &run_dir, "r2"));
        assert!(was_published(&cfg, &run_dir, "r1"));
        touch(&run_dir, "a.txt", "new");
        publish(&cfg, &run_dir, "r2", std::slice::from_ref(&a)).unwrap();
        assert_eq!(current(&dir).unwrap(), dir.join("r2"));
        assert!(was_published(&cfg, &run_dir, "r2") && !was_published(&cfg, &run_dir, "r1"));
        assert_eq!(fs::read_to_string(current(&dir).unwrap().join("a.txt")).unwrap(), "new");
    }

    #[test]
    fn a_staging_leftover_is_replaced() {
        let tmp = tempfile::tempdir().unwrap();
        let run_dir = RunDir::create(tmp.path()).unwrap();
        let cfg = PublishConfig::default();
        let dir = cfg.dir(&run_dir);
        fs::create_dir_all(dir.join(".staging-r1")).unwrap();
        fs::write(dir.join(".staging-r1/partial"), "x").unwrap();
        let a = touch(&run_dir, "a.txt", "ok");
        let out = publish(&cfg, &run_dir, "r1", &[a]).unwrap();
        assert!(out.join("a.txt").is_file() && !out.join("partial").exists());
    }

    #[tokio::test]
    async fn a_dataset_the_publication_was_scored_on_must_be_scored_again() {
        let tmp = tempfile::tempdir().unwrap();
        let (live, run) =
            (RunDir::create(tmp.path().join("live")).unwrap(), RunDir::create(tmp.path().join("run")).unwrap());
        write_f1s(&live, &[("ade", "ade_corpus_v2", 0.4, 1099), ("gene_disease", "gad", 0.5, 567)]);
        write_f1s(&run, &[("ade", "ade_corpus_v2", 0.41, 1099)]);
        let f1_gates = async |full_refresh| {
            let gates = audit(&PublishConfig::default(), &run, &[], Some(&live), full_refresh).await.unwrap();
            gates.into_iter().filter(|g| g.name.starts_with("f1:")).map(|g| (g.name, g.passed)).collect::<Vec<_>>()
        };
        let ade = ("f1:ade/ade_corpus_v2/pair_strict_f1".to_string(), true);
        assert_eq!(f1_gates(false).await, [ade.clone(), ("f1:gene_disease/gad/pair_strict_f1".to_string(), false)]);
        assert_eq!(f1_gates(true).await, [ade]);
    }

    #[tokio::test]
    async fn row_gate_fails_on_an_empty_table() {
        let tmp = tempfile::tempdir().unwrap();
        let run_dir = RunDir::create(tmp.path()).unwrap();
        let schema = crate::schema::PHI_SPANS.clone();
        run_dir.write_table("phi_spans", schema, &[]).unwrap();
        let tables = ["phi_spans".into(), "missing".into()];
        let gates = audit(&PublishConfig::default(), &run_dir, &tables, None, false).await.unwrap();
        assert_eq!(gates.len(), 2);
        assert!(gates.iter().all(|g| !g.passed), "{gates:?}");
    }

    /// Subjects and objects count alike; a label without an object (a PHI span) adds one.
    #[tokio::test]
    async fn the_alignment_gate_counts_every_aligned_subject_and_object() {
        use arrow::array::{ArrayRef, StringArray};
        use arrow::datatypes::{DataType, Field, Schema};
        let tmp = tempfile::tempdir().unwrap();
        let run_dir = RunDir::create(tmp.path()).unwrap();
        let schema = std::sync::Arc::new(Schema::new(vec![
            Field::new("subject_alignment", DataType::Utf8, true),
            Field::new("object_alignment", DataType::Utf8, true),
        ]));
        let column = |v: [Option<&str>; 3]| -> ArrayRef { std::sync::Arc::new(StringArray::from(v.to_vec())) };
        let columns = vec![
            column([Some("exact"), Some("unaligned"), Some("fuzzy")]),
            column([Some("exact"), None, Some("unaligned")]),
        ];
        run_dir
            .write_table(table::TEACHER_LABELS, schema.clone(), &[crate::run_dir::batch(&schema, columns).unwrap()])
            .unwrap();
        let gate = async |min_alignment_rate| {
            let cfg = PublishConfig { min_alignment_rate, ..Default::default() };
            let gates = audit(&cfg, &run_dir, &[], None, false).await.unwrap();
            gates.into_iter().find(|g| g.name == "teacher_alignment").unwrap()
        };
        let passed = gate(0.6).await;
        assert!(passed.passed && passed.detail.starts_with("3/5 spans aligned = 0.600"), "{passed:?}");
        assert!(!gate(0.61).await.passed);
    }
}
