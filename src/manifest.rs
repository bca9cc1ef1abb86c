//! The run manifest: one row per `biodistill run`, published or not, in the run directory's
//! `run_manifest` table, so a run's provenance and cost are one SQL query away:
//!
//! ```sql
//! SELECT run_id, status, wall_secs, requests, cost_usd FROM run_manifest ORDER BY started_at;
//! ```
//!
//! Nested facts (stage timings, prompt and student versions, gate verdicts) are JSON strings,
//! readable with DataFusion's, DuckDB's or polars' JSON functions.

use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, Int64Array, StringArray};
use arrow::datatypes::DataType;
use serde::Serialize;

use crate::error::Result;
use crate::run_dir::{RunDir, batch, concat};
use crate::schema::RUN_MANIFEST as SCHEMA;
use crate::schema::table::RUN_MANIFEST;

/// One pipeline stage's cost and output.
#[derive(Debug, Clone, Default, Serialize)]
pub struct StageRecord {
    pub stage: String,
    pub seconds: f64,
    /// Rows written per table, or other counts the stage reports.
    pub counts: std::collections::BTreeMap<String, usize>,
}

/// One run.
#[derive(Debug, Clone, Default, Serialize)]
pub struct Manifest {
    pub run_id: String,
    /// `published`, `already_published`, `gate_failed` or `failed`.
    pub status: String,
    pub started_at: String,
    pub finished_at: String,
    pub wall_secs: f64,
    /// Peak resident memory of the process (Linux `VmHWM`), MiB.
    pub peak_rss_mib: f64,
    pub git_sha: String,
    pub config_hash: String,
    /// sha256 over every (doc_id, content_hash) of `documents`.
    pub input_hash: String,
    pub documents: i64,
    /// Input files ingest could not read (the run goes on without them and exits 1).
    pub failed_inputs: i64,
    /// Documents new or changed since the last publication (all of them on a full refresh).
    pub changed_documents: i64,
    pub teacher_endpoint: String,
    pub teacher_model: String,
    /// JSON: task -> prompt version.
    pub prompt_versions: String,
    /// JSON: task -> student model version.
    pub student_versions: String,
    /// JSON: [`StageRecord`]s in order.
    pub stages: String,
    pub cache_hits: i64,
    /// Requests the teacher was paid for this run.
    pub requests: i64,
    pub prompt_tokens: i64,
    pub completion_tokens: i64,
    pub cost_usd: f64,
    /// JSON: the quality gates' verdicts.
    pub gates: String,
    /// JSON: task -> how its silver set grew this run ([`crate::teacher::SilverGrowth`]).
    pub silver: String,
    /// What stopped a `failed` run (the stage and the error); empty otherwise.
    pub error: String,
}

impl Manifest {
    fn to_batch(&self) -> Result<arrow::record_batch::RecordBatch> {
        let s = |v: &str| Arc::new(StringArray::from(vec![v])) as ArrayRef;
        let i = |v: i64| Arc::new(Int64Array::from(vec![v])) as ArrayRef;
        let f = |v: f64| Arc::new(Float64Array::from(vec![v])) as ArrayRef;
        batch(
            &SCHEMA,
            vec![
                s(&self.run_id),
                s(&self.status),
                s(&self.started_at),
                s(&self.finished_at),
                f(self.wall_secs),
                f(self.peak_rss_mib),
                s(&self.git_sha),
                s(&self.config_hash),
                s(&self.input_hash),
                i(self.documents),
                i(self.changed_documents),
                s(&self.teacher_endpoint),
                s(&self.teacher_model),
                s(&self.prompt_versions),
                s(&self.student_versions),
                s(&self.stages),
                i(self.cache_hits),
                i(self.requests),
                i(self.prompt_tokens),
                i(self.completion_tokens),
                f(self.cost_usd),
                s(&self.gates),
                s(&self.silver),
                i(self.failed_inputs),
                s(&self.error),
            ],
        )
    }

    /// Append this row to the run directory's `run_manifest` (rewritten atomically).
    pub fn append(&self, run_dir: &RunDir) -> Result<()> {
        let old = if run_dir.has_table(RUN_MANIFEST) { run_dir.read_table(RUN_MANIFEST)? } else { vec![] };
        let mut batches = old.iter().map(widen).collect::<Result<Vec<_>>>()?;
        batches.push(self.to_batch()?);
        let all = concat(&SCHEMA, &batches)?;
        run_dir.write_table(RUN_MANIFEST, SCHEMA.clone(), &[all])?;
        Ok(())
    }
}

/// A `run_manifest` batch written before a column existed, with that column empty (text) or 0.
fn widen(old: &arrow::record_batch::RecordBatch) -> Result<arrow::record_batch::RecordBatch> {
    if old.schema().fields().len() == SCHEMA.fields().len() {
        return Ok(old.clone());
    }
    let columns = SCHEMA
        .fields()
        .iter()
        .map(|field| match old.column_by_name(field.name()) {
            Some(column) => Ok(Arc::clone(column)),
            None if field.data_type() == &DataType::Utf8 => {
                Ok(Arc::new(StringArray::from(vec![""; old.num_rows()])) as ArrayRef)
            }
            None if field.data_type() == &DataType::Int64 => {
                Ok(Arc::new(Int64Array::from(vec![0; old.num_rows()])) as ArrayRef)
            }
            None => Err(crate::error::Error::Internal(format!("run_manifest lacks column {}", field.name()))),
        })
        .collect::<Result<Vec<_>>>()?;
    batch(&SCHEMA, columns)
}

/// Peak resident set size of this process in MiB (0 where `/proc` is unavailable).
pub fn peak_rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines().find(|l| l.starts_with("VmHWM:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map_or(0.0, |kib| kib / 1024.0)
}

/// A fingerprint of model weights at `path` (a file, or every file of a directory): each
/// file's name, length and first and last MiB. Hashing whole GGUFs would cost seconds per
/// run; a changed weight file changes its length or its ends in practice. Missing: "-".
pub fn model_fingerprint(path: &std::path::Path) -> String {
    use sha2::Digest;
    const EDGE: u64 = 1 << 20;
    let mut files: Vec<std::path::PathBuf> = match std::fs::read_dir(path) {
        Ok(entries) => entries.flatten().map(|e| e.path()).filter(|p| p.is_file()).collect(),
        Err(_) if path.is_file() => vec![path.to_path_buf()],
        Err(_) => return "-".into(),
    };
    files.sort();
    let mut h = sha2::Sha256::new();
    for file in files {
        let Ok(mut f) = std::fs::File::open(&file) else { continue };
        let len = f.metadata().map(|m| m.len()).unwrap_or(0);
        h.update(file.file_name().map(|n| n.to_string_lossy().into_owned()).unwrap_or_default().as_bytes());
        h.update(len.to_le_bytes());
        let mut edge = |from: u64| {
            use std::io::{Read, Seek, SeekFrom};
            let mut buf = Vec::new();
            if f.seek(SeekFrom::Start(from)).is_ok() && (&mut f).take(EDGE).read_to_end(&mut buf).is_ok() {
                h.update(&buf);
            }
        };
        edge(0);
        edge(len.saturating_sub(EDGE));
    }
    hex::encode(&h.finalize()[..8])
}

/// The commit of the working directory (`git rev-parse HEAD`), else `unknown`: provenance only;
/// the run id uses `BD_SOURCE_HASH` (`build.rs`), the sources the binary was built from.
pub fn git_sha() -> String {
    std::process::Command::new("git")
        .args(["rev-parse", "--short=12", "HEAD"])
        .output()
        .ok()
        .filter(|o| o.status.success())
        .map(|o| String::from_utf8_lossy(&o.stdout).trim().to_string())
        .unwrap_or_else(|| "unknown".into())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn model_fingerprint_sees_a_changed_weight_file() {
        let tmp = tempfile::tempdir().unwrap();
        let dir = tmp.path().join("m");
        assert_eq!(model_fingerprint(&dir), "-");
        std::fs::create_dir(&dir).unwrap();
        std::fs::write(dir.join("model.safetensors"), vec![1u8; 3 << 20]).unwrap();
        let before = model_fingerprint(&dir);
        assert_eq!(before, model_fingerprint(&dir));
        let mut bytes = vec![1u8; 3 << 20];
        *bytes.last_mut().unwrap() = 2;
        std::fs::write(dir.join("model.safetensors"), bytes).unwrap();
        assert_ne!(before, model_fingerprint(&dir));
    }

    #[test]
    fn rows_accumulate() {
        let tmp = tempfile::tempdir().unwrap();
        let run_dir = RunDir::create(tmp.path()).unwrap();
        let mut m = Manifest { run_id: "a".into(), status: "published".into(), ..Default::default() };
        m.append(&run_dir).unwrap();
        m.run_id = "b".into();
        m.append(&run_dir).unwrap();
        let batches = run_dir.read_table(RUN_MANIFEST).unwrap();
        assert_eq!(batches.iter().map(|b| b.num_rows()).sum::<usize>(), 2);
        assert!(peak_rss_mib() > 0.0);
    }

    #[test]
    fn a_manifest_written_before_the_silver_column_still_takes_new_rows() {
        let tmp = tempfile::tempdir().unwrap();
        let run_dir = RunDir::create(tmp.path()).unwrap();
        let row = Manifest { run_id: "old".into(), ..Default::default() }.to_batch().unwrap();
        let keep: Vec<usize> = (0..row.num_columns())
            .filter(|&i| !["silver", "failed_inputs", "error"].contains(&SCHEMA.field(i).name().as_str()))
            .collect();
        let old = row.project(&keep).unwrap();
        run_dir.write_table(RUN_MANIFEST, old.schema(), &[old]).unwrap();
        let m = Manifest { run_id: "new".into(), silver: "{\"ade\":1}".into(), ..Default::default() };
        m.append(&run_dir).unwrap();
        let all = concat(&SCHEMA, &run_dir.read_table(RUN_MANIFEST).unwrap()).unwrap();
        let silver = all.column_by_name("silver").unwrap().as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!((silver.value(0), silver.value(1)), ("", "{\"ade\":1}"));
    }
}
