//! Student checkpoints: a directory per task with `model.safetensors`, `config.json` and the
//! `tokenizer.json` it was trained with, so extraction needs nothing else.
//!
//! The model version is a hash of the weights and the config, prefixed with where the labels
//! came from (`student-…` for distillation, `supervised-reference-…` for the gold-trained
//! reference), so every output row says which kind of model produced it. A checkpoint is written
//! to a temporary directory and renamed into place: a reader never sees half of one.

use std::fs;
use std::path::{Path, PathBuf};

use candle_core::{DType, Device};
use candle_nn::{VarBuilder, VarMap};
use candle_transformers::models::bert::Config as BertConfig;
use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::error::{Error, IoContext, Result};
use crate::model::encoder::Mode;
use crate::model::student::{Student, StudentSpec};
use crate::model::wordpiece::WordPieces;

pub const WEIGHTS_FILE: &str = "model.safetensors";
pub const CONFIG_FILE: &str = "config.json";
pub const TOKENIZER_FILE: &str = "tokenizer.json";

/// Where the training labels came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum LabelSource {
    /// Distilled: silver labels from the teacher.
    Teacher,
    /// The supervised reference: gold train split. Never the distilled model.
    GoldSupervisedReference,
}

impl LabelSource {
    /// Prefix of model versions (and hence of every output row's `model_version`).
    pub fn version_prefix(self) -> &'static str {
        match self {
            LabelSource::Teacher => "student",
            LabelSource::GoldSupervisedReference => "supervised-reference",
        }
    }
}

/// `config.json` of a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CheckpointConfig {
    /// `<label source prefix>-<16 hex of sha256(weights, this config with an empty version)>`.
    pub model_version: String,
    pub label_source: LabelSource,
    pub spec: StudentSpec,
    /// Word pieces per encoder window (`[CLS]`/`[SEP]` excluded) and window overlap.
    pub max_pieces: usize,
    pub window_overlap: usize,
    /// The encoder's own `config.json`, verbatim.
    pub encoder: serde_json::Value,
    /// Where the pretrained encoder came from.
    pub base_model: String,
    /// The training configuration, for the record.
    pub train: serde_json::Value,
    /// Inference drops pairs (entity spans, for tasks without relations) scoring below this:
    /// chosen on the silver dev split ([`crate::train::calibrate`]); 0 in older checkpoints.
    #[serde(default)]
    pub min_score: f32,
    /// Students averaged at inference ([`crate::model::predict`]): member 0's weights are
    /// [`WEIGHTS_FILE`], member `i`'s [`member_weights`]`(i)`. 1 (not written) for one student.
    #[serde(default = "one", skip_serializing_if = "is_one")]
    pub members: usize,
}

fn one() -> usize {
    1
}

fn is_one(n: &usize) -> bool {
    *n == 1
}

/// File name of ensemble member `i`'s weights (`model.safetensors` for member 0).
pub fn member_weights(i: usize) -> String {
    if i == 0 { WEIGHTS_FILE.to_string() } else { format!("model-{i}.safetensors") }
}

/// Write a checkpoint of `members` (one varmap per ensemble member) to `dir`, replacing any
/// previous one; returns the config with its model version filled in.
pub fn save(
    dir: &Path,
    members: &[&VarMap],
    mut config: CheckpointConfig,
    tokenizer_json: &Path,
) -> Result<CheckpointConfig> {
    let parent = dir.parent().unwrap_or(Path::new("."));
    fs::create_dir_all(parent).with_path(parent)?;
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("checkpoint");
    let tmp = parent.join(format!(".{name}.{}.tmp", std::process::id()));
    if tmp.exists() {
        fs::remove_dir_all(&tmp).with_path(&tmp)?;
    }
    fs::create_dir_all(&tmp).with_path(&tmp)?;
    config.members = members.len();
    config.model_version.clear();
    let mut digest = Sha256::new();
    for (i, varmap) in members.iter().enumerate() {
        let weights = tmp.join(member_weights(i));
        // safetensors orders tensors by dtype then name, so equal weights give equal bytes.
        varmap.save(&weights).map_err(|e| Error::Model(format!("{}: {e}", weights.display())))?;
        digest.update(fs::read(&weights).with_path(&weights)?);
    }
    let digest = digest.chain_update(serde_json::to_vec(&config)?).finalize();
    config.model_version = format!("{}-{}", config.label_source.version_prefix(), &hex::encode(digest)[..16]);
    let config_path = tmp.join(CONFIG_FILE);
    fs::write(&config_path, serde_json::to_vec_pretty(&config)?).with_path(&config_path)?;
    fs::copy(tokenizer_json, tmp.join(TOKENIZER_FILE)).with_path(tokenizer_json)?;
    if dir.exists() {
        fs::remove_dir_all(dir).with_path(dir)?;
    }
    fs::rename(&tmp, dir).with_path(dir)?;
    Ok(config)
}

/// A loaded checkpoint, ready for inference.
pub struct Checkpoint {
    pub dir: PathBuf,
    pub config: CheckpointConfig,
    /// One student, or the members of an ensemble (same spec and tokenizer).
    pub students: Vec<Student>,
    pub tokenizer: WordPieces,
}

impl CheckpointConfig {
    /// The config of the checkpoint at `dir`, without loading its weights.
    pub fn read(dir: &Path) -> Result<Self> {
        let config_path = dir.join(CONFIG_FILE);
        serde_json::from_slice(&fs::read(&config_path).with_path(&config_path)?)
            .map_err(|e| Error::input(&config_path, format!("not a student checkpoint config: {e}")))
    }
}

impl Checkpoint {
    pub fn load(dir: &Path, device: &Device) -> Result<Self> {
        let config = CheckpointConfig::read(dir)?;
        let config_path = dir.join(CONFIG_FILE);
        let encoder: BertConfig = serde_json::from_value(config.encoder.clone())
            .map_err(|e| Error::input(&config_path, format!("bad encoder config: {e}")))?;
        if config.members == 0 {
            return Err(Error::input(&config_path, "members is 0: a checkpoint holds at least one student"));
        }
        let students = (0..config.members)
            .map(|i| {
                let weights = dir.join(member_weights(i));
                if !weights.is_file() {
                    return Err(Error::input(&weights, "checkpoint weights are missing"));
                }
                // SAFETY: read-only mapping of a file this process does not modify while mapped.
                let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&weights], DType::F32, device) }
                    .map_err(|e| Error::Model(format!("{}: {e}", weights.display())))?;
                Student::load(vb, &encoder, &config.spec, Mode::Infer)
                    .and_then(|mut s| s.fuse_for_inference().map(|()| s))
                    .map_err(|e| Error::Model(format!("{}: {e}", weights.display())))
            })
            .collect::<Result<_>>()?;
        let tokenizer = WordPieces::from_file(&dir.join(TOKENIZER_FILE))?;
        Ok(Self { dir: dir.to_path_buf(), config, students, tokenizer })
    }
}
