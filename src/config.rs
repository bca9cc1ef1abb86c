//! Pipeline configuration: `pipelines/*.toml`, overridden by `BIODISTILL_*` environment
//! variables, overridden by command-line flags (`--set section.key=value` and the stage flags).
//!
//! An environment variable `BIODISTILL_<SECTION>_<KEY>` sets `key` of `[section]`, e.g.
//! `BIODISTILL_INGEST_DATA_DIR=/data` or `BIODISTILL_RUN_DIR=runs/x`. Values are read as TOML
//! when they parse (`20`, `true`, `["a","b"]`) and as strings otherwise. Relative paths are
//! relative to the working directory. Unknown sections and keys are errors, so a typo never
//! silently falls back to a default.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, IoContext, Result};
use crate::eval::EvalConfig;
use crate::extract::ExtractConfig;
use crate::ingest::IngestConfig;
use crate::publish::PublishConfig;
use crate::serve::ServeConfig;
use crate::teacher::{LabelConfig, TeacherConfig};
use crate::train::TrainConfig;

/// Where a run writes its tables.
#[derive(Debug, Clone, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RunConfig {
    /// The run directory (see [`crate::run_dir`]).
    pub dir: PathBuf,
    /// `biodistill run` also trains and extracts with the supervised reference (the same
    /// student on the gold train split), so evaluation shows how far distillation is from it.
    pub supervised_reference: bool,
}

impl Default for RunConfig {
    fn default() -> Self {
        Self { dir: PathBuf::from("runs/default"), supervised_reference: false }
    }
}

/// A whole pipeline run: one section per stage. `[teacher]` (which endpoint) is kept apart
/// from `[label]` (what to send), and `[serve]` configures the embedded teacher server.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PipelineConfig {
    pub run: RunConfig,
    pub ingest: IngestConfig,
    pub label: LabelConfig,
    pub teacher: TeacherConfig,
    pub serve: ServeConfig,
    pub train: TrainConfig,
    pub extract: ExtractConfig,
    pub eval: EvalConfig,
    pub publish: PublishConfig,
}

/// The sections a `BIODISTILL_<SECTION>_<KEY>` variable can address.
const SECTIONS: &[&str] = &["run", "ingest", "label", "teacher", "serve", "train", "extract", "eval", "publish"];

/// Environment variables that are not config overrides: the pipeline file, the log filter and
/// the embedded server's bearer token (which would otherwise read as `teacher.api_key`).
const NOT_OVERRIDES: &[&str] = &["BIODISTILL_CONFIG", "BIODISTILL_LOG", crate::serve::API_KEY_ENV];

impl PipelineConfig {
    /// Load `file` (or the defaults when `None`), then apply `env` overrides, then `sets`
    /// (`section.key=value`).
    pub fn load(file: Option<&Path>, env: impl IntoIterator<Item = (String, String)>, sets: &[String]) -> Result<Self> {
        let mut table = match file {
            Some(path) => {
                let text = std::fs::read_to_string(path).with_path(path)?;
                toml::from_str::<toml::Table>(&text).map_err(|e| Error::input(path, format!("invalid TOML: {e}")))?
            }
            None => toml::Table::new(),
        };
        for (name, value) in env {
            let Some(rest) = name.strip_prefix("BIODISTILL_") else { continue };
            if NOT_OVERRIDES.contains(&name.as_str()) {
                continue;
            }
            let rest = rest.to_ascii_lowercase();
            let section = SECTIONS.iter().find(|s| rest.starts_with(&format!("{s}_"))).ok_or_else(|| {
                Error::Config(format!("{name}: no config section matches (sections: {})", SECTIONS.join(", ")))
            })?;
            set(&mut table, &[section, &rest[section.len() + 1..]], &value);
        }
        for s in sets {
            let (key, value) =
                s.split_once('=').ok_or_else(|| Error::Config(format!("--set '{s}': expected section.key=value")))?;
            let path: Vec<&str> = key.trim().split('.').collect();
            if path.len() < 2 {
                return Err(Error::Config(format!("--set '{s}': the key needs a section, e.g. ingest.data_dir")));
            }
            set(&mut table, &path, value.trim());
        }
        let what = file.map(|p| p.display().to_string()).unwrap_or_else(|| "defaults".into());
        let cfg: Self =
            table.try_into().map_err(|e: toml::de::Error| Error::Config(format!("{what}: {}", e.message())))?;
        Ok(cfg)
    }

    /// The `label` stage's configuration: `[label]` with `[teacher]`'s endpoint.
    /// The `label` stage's configuration. With the embedded teacher, `teacher.model` is the
    /// name its server answers to (the GGUF file name), as in every cache key it writes.
    pub fn label_config(&self) -> LabelConfig {
        let mut teacher = self.teacher.clone();
        if teacher.base_url == crate::teacher::EMBEDDED {
            teacher.model = crate::llm::model_id(&self.serve.model);
        }
        LabelConfig { teacher, ..self.label.clone() }
    }

    /// The `eval` stage's configuration: `[eval]` with what `[extract]` ran the students over.
    pub fn eval_config(&self) -> EvalConfig {
        EvalConfig {
            extracted_sources: self.extract.sources.iter().map(|(t, s)| (t.as_str().to_string(), s.clone())).collect(),
            extracted_splits: self.extract.splits.clone(),
            min_teacher_confidence: self.train.filters.min_teacher_confidence,
            ..self.eval.clone()
        }
    }

    /// A short stable hash of the resolved configuration, for run manifests.
    pub fn hash(&self) -> String {
        let text = toml::to_string(self).expect("a config that deserialized serializes");
        hex::encode(&Sha256::digest(text.as_bytes())[..8])
    }
}

/// Set `path` (section, ..., key) in `table` to `value`, parsed as TOML when possible.
fn set(table: &mut toml::Table, path: &[&str], value: &str) {
    let parsed = toml::from_str::<toml::Table>(&format!("v = {value}"))
        .ok()
        .and_then(|mut t| t.remove("v"))
        .unwrap_or_else(|| toml::Value::String(value.to_string()));
    let mut t = table;
    for key in &path[..path.len() - 1] {
        let entry = t.entry(key.to_string()).or_insert_with(|| toml::Value::Table(Default::default()));
        if !entry.is_table() {
            *entry = toml::Value::Table(Default::default());
        }
        t = entry.as_table_mut().expect("made a table just above");
    }
    t.insert(path[path.len() - 1].to_string(), parsed);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn file_then_env_then_flags() {
        let dir = tempfile::tempdir().unwrap();
        let f = dir.path().join("p.toml");
        std::fs::write(&f, "[run]\ndir = \"from-file\"\n[ingest]\ndev_fraction = 0.3\ncorpora = [\"gad\"]\n").unwrap();
        let env = vec![
            ("BIODISTILL_INGEST_DATA_DIR".to_string(), "/data".to_string()),
            ("BIODISTILL_RUN_DIR".to_string(), "from-env".to_string()),
            ("BIODISTILL_CONFIG".to_string(), "ignored".to_string()),
            ("OTHER".to_string(), "x".to_string()),
        ];
        let cfg = PipelineConfig::load(Some(&f), env, &["ingest.dev_fraction=0.1".into()]).unwrap();
        assert_eq!(cfg.run.dir, PathBuf::from("from-env"));
        assert_eq!(cfg.ingest.data_dir, PathBuf::from("/data"));
        assert_eq!(cfg.ingest.dev_fraction, 0.1);
        assert_eq!(cfg.ingest.corpora, vec!["gad".to_string()]);
    }

    /// `BIODISTILL_TEACHER_API_KEY` is the embedded server's token, not `teacher.api_key`.
    #[test]
    fn documented_non_override_variables_are_not_config_keys() {
        let env = vec![
            ("BIODISTILL_TEACHER_API_KEY".to_string(), "sk-secret".to_string()),
            ("BIODISTILL_LOG".to_string(), "debug".to_string()),
            ("BIODISTILL_CONFIG".to_string(), "p.toml".to_string()),
            ("BIODISTILL_RUN_DIR".to_string(), "runs/x".to_string()),
            ("BIODISTILL_INGEST_DATA_DIR".to_string(), "/data".to_string()),
        ];
        let cfg = PipelineConfig::load(None, env, &[]).unwrap();
        assert_eq!(cfg.run.dir, PathBuf::from("runs/x"));
        assert_eq!(cfg.ingest.data_dir, PathBuf::from("/data"));
        assert!(!toml::to_string(&cfg).unwrap().contains("sk-secret"));
    }

    #[test]
    fn typos_are_errors() {
        let err = PipelineConfig::load(None, vec![], &["ingest.dev_fractoin=0.1".into()]).unwrap_err();
        assert!(err.to_string().contains("dev_fractoin"), "{err}");
        let err = PipelineConfig::load(None, vec![("BIODISTILL_NOPE_X".into(), "1".into())], &[]).unwrap_err();
        assert!(err.to_string().contains("BIODISTILL_NOPE_X"), "{err}");
        assert!(PipelineConfig::load(None, vec![], &["nodot=1".into()]).is_err());
    }

    #[test]
    fn shipped_pipelines_parse() {
        for name in ["default", "full", "nightly"] {
            let path = Path::new(env!("CARGO_MANIFEST_DIR")).join(format!("pipelines/{name}.toml"));
            PipelineConfig::load(Some(&path), vec![], &[]).unwrap_or_else(|e| panic!("{name}: {e}"));
        }
    }
}
