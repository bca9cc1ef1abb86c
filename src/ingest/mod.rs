//! Stage 1, `ingest`: raw corpora in, normalized Parquet tables out.
//!
//! Inputs: the corpora of `../shared/data` (PubTator, ADE `.rel`/`NEG`, GAD CSV + BLURB TSV,
//! BioRED, EU-ADR CSV, MEDDOCAN BRAT, presidio JSON) and any user corpus in Parquet, JSONL or
//! CSV. Outputs: `documents`, `sentences`, `gold_ade`, `gold_drug_dose`, `gold_gene_disease`,
//! `gold_phi`, `quarantine` (schemas in [`crate::schema`]).
//!
//! Invariants: every offset is in chars (see [`crate::text`]) and every gold span's text equals
//! the slice of its `text` at its offsets (rows where that cannot hold are quarantined, not
//! fixed up). Gold labels live only in `gold_*` tables, never in `documents`/`sentences`.
//! A file that cannot be read is reported and skipped; the other files are still ingested.
//! The output is a pure function of the inputs and the config (splits are hash-based), so a
//! rerun writes the same tables.

mod ade;
mod collect;
mod gad;
mod gold_sets;
mod pubtator;
mod split;
mod tables;
mod user;

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

pub use collect::Collector;
pub use split::split_for;
pub use user::{UserCorpus, UserFormat};

use crate::error::{Error, Result};
use crate::run_dir::RunDir;

/// The built-in corpora, by the name used in `ingest.corpora`.
pub const CORPORA: &[&str] =
    &["bc5cdr", "ncbi_disease", "ade_corpus_v2", "gad", "biored", "euadr", "meddocan", "presidio"];

/// Settings of the ingest stage (`[ingest]` in a pipeline file).
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    /// Directory holding the built-in corpora (`../shared/data` layout).
    pub data_dir: PathBuf,
    /// Which built-in corpora to read (see [`CORPORA`]); empty reads none.
    pub corpora: Vec<String>,
    /// Fraction of each gold set's documents (by PMID / document id) put in the dev split,
    /// where the set has no split of its own.
    pub dev_fraction: f64,
    /// Extra corpora of the user's own.
    pub user_corpora: Vec<UserCorpus>,
}

impl Default for IngestConfig {
    fn default() -> Self {
        Self {
            data_dir: PathBuf::from("../shared/data"),
            corpora: CORPORA.iter().map(|s| s.to_string()).collect(),
            dev_fraction: 0.2,
            user_corpora: Vec::new(),
        }
    }
}

/// What an ingest did: rows per table, and the files that could not be read.
#[derive(Debug, Clone, Default, Serialize)]
pub struct IngestReport {
    pub tables: Vec<(String, usize)>,
    pub quarantined_rows: usize,
    /// One line per file that failed as a whole: `path: problem`.
    pub failed_files: Vec<String>,
}

impl std::fmt::Display for IngestReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let tables: Vec<String> = self.tables.iter().map(|(t, n)| format!("{t}={n}")).collect();
        write!(f, "ingest: {}", tables.join(" "))?;
        if self.quarantined_rows > 0 {
            write!(f, "; {} rows quarantined (see the quarantine table)", self.quarantined_rows)?;
        }
        if !self.failed_files.is_empty() {
            write!(f, "; {} files failed", self.failed_files.len())?;
        }
        Ok(())
    }
}

/// Run the ingest stage into `run_dir`.
pub fn run(cfg: &IngestConfig, run_dir: &RunDir) -> Result<IngestReport> {
    if !(0.0..1.0).contains(&cfg.dev_fraction) {
        return Err(Error::Config(format!("ingest.dev_fraction must be in [0, 1), got {}", cfg.dev_fraction)));
    }
    if let Some(unknown) = cfg.corpora.iter().find(|n| !CORPORA.contains(&n.as_str())) {
        return Err(Error::Config(format!("unknown corpus '{unknown}'; known: {}", CORPORA.join(", "))));
    }
    let mut c = Collector::new(cfg.dev_fraction);
    for name in &cfg.corpora {
        if let Err(e) = read_corpus(name, &cfg.data_dir, &mut c) {
            c.fail_file(e);
        }
    }
    for corpus in &cfg.user_corpora {
        if let Err(e) = user::read(corpus, &mut c) {
            c.fail_file(e);
        }
    }
    tables::write(c, run_dir)
}

/// Read one built-in corpus from its folder under `data_dir`.
fn read_corpus(name: &str, data_dir: &Path, c: &mut Collector) -> Result<()> {
    let dir = |folder: &str| -> Result<PathBuf> {
        let d = data_dir.join(folder);
        if d.is_dir() { Ok(d) } else { Err(Error::input(&d, format!("corpus '{name}': directory not found"))) }
    };
    match name {
        "bc5cdr" => {
            let d = dir("bc5cdr")?;
            for f in ["CDR_TrainingSet.PubTator.txt", "CDR_DevelopmentSet.PubTator.txt", "CDR_TestSet.PubTator.txt"] {
                c.try_file(&d.join(f), |path, c| pubtator::read_unlabeled(path, "bc5cdr", c));
            }
        }
        "ncbi_disease" => {
            let d = dir("ncbi_disease")?;
            for f in ["NCBItrainset_corpus.txt", "NCBItestset_corpus.txt"] {
                c.try_file(&d.join(f), |path, c| pubtator::read_unlabeled(path, "ncbi_disease", c));
            }
        }
        "ade_corpus_v2" => ade::read(&dir("ade_corpus_v2")?, c),
        "gad" => {
            let original = dir("gad_original")?.join("GAD_merged_samples_mesh.csv");
            let blurb = dir("gad_blurb")?;
            c.try_file(&original, |path, c| gad::read(path, &blurb, c));
        }
        "biored" => {
            let d = dir("biored")?;
            for (f, split) in [("Train.PubTator", "train"), ("Dev.PubTator", "dev")] {
                c.try_file(&d.join(f), |path, c| pubtator::read_biored(path, split, c));
            }
        }
        "euadr" => {
            let f = dir("euadr_ibi")?.join("EUADR_target_disease.csv");
            c.try_file(&f, gold_sets::read_euadr);
        }
        "meddocan" => {
            let d = dir("meddocan_es")?;
            for split in ["train", "dev"] {
                let brat = d.join(split).join("brat");
                c.try_file(&brat, |path, c| gold_sets::read_brat_dir(path, "meddocan", split, c));
            }
        }
        "presidio" => {
            let f = dir("presidio_synth")?.join("synth_dataset_v2.json");
            c.try_file(&f, gold_sets::read_presidio);
        }
        other => return Err(Error::Internal(format!("corpus '{other}' was validated but has no reader"))),
    }
    Ok(())
}

/// Read a whole file as UTF-8, naming the file (and the line) when it is not.
pub(crate) fn read_utf8(path: &Path) -> Result<String> {
    use crate::error::IoContext;
    let bytes = std::fs::read(path).with_path(path)?;
    String::from_utf8(bytes).map_err(|e| {
        let valid = &e.as_bytes()[..e.utf8_error().valid_up_to()];
        let line = valid.iter().filter(|&&b| b == b'\n').count() + 1;
        Error::input_row(path, line, format!("not valid UTF-8 ({})", e.utf8_error()))
    })
}
