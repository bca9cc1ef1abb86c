//! Configuration of the `label` stage: which endpoint to ask, how hard to push it, and which
//! sentences to send.
//!
//! The API key is never part of the configuration: only the *name* of the environment variable
//! that holds it is, so a config file can be committed and a run manifest can be published.

use std::collections::BTreeMap;
use std::path::PathBuf;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::vocab::Task;

/// The value of [`TeacherConfig::base_url`] that means "the project's own embedded server".
pub const EMBEDDED: &str = "embedded";

/// Price of one million tokens, in US dollars.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct Price {
    pub input_per_mtok: f64,
    pub output_per_mtok: f64,
}

/// How requests reach the teacher.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum TeacherMode {
    /// One chat request per (task, sentence, pass), answered as it goes.
    #[default]
    Online,
    /// The provider's Batch API (`/v1/files` + `/v1/batches`): the same requests in JSONL
    /// files, answered within a day at batch prices ([`super::batch`]).
    Batch,
}

/// How to reach the teacher and how hard to push it.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TeacherConfig {
    /// OpenAI-compatible base URL including `/v1` (e.g. `http://localhost:8000/v1`), or
    /// `"embedded"` for the project's own server.
    pub base_url: String,
    /// Model name sent in each request.
    pub model: String,
    /// Name of the environment variable holding the API key (the key itself is never stored).
    pub api_key_env: String,
    /// Requests in flight at once.
    pub concurrency: usize,
    /// Requests per minute; 0 = unlimited.
    pub rpm: u32,
    /// Tokens (prompt estimate + `max_tokens`) per minute; 0 = unlimited.
    pub tpm: u32,
    /// Retries after the first attempt of one request (429, 5xx, timeouts, connection errors).
    pub max_retries: u32,
    /// Per-attempt timeout.
    pub timeout_secs: f64,
    /// First backoff delay; doubled on each retry, capped at `backoff_max_ms`, with jitter.
    pub backoff_base_ms: u64,
    pub backoff_max_ms: u64,
    pub temperature: f32,
    pub max_tokens: u32,
    /// Sent when set; most servers make sampling reproducible with it.
    pub seed: Option<i64>,
    /// Send the task's JSON schema as `response_format` (turn off for servers that reject it).
    pub json_schema: bool,
    /// Ask the embedded teacher for grounded decoding (sent as request metadata; never to
    /// other endpoints): the reply is valid JSON and every string in it occurs in the sentence.
    pub grounded: bool,
    /// Ask for each reply token's log probability (`logprobs: true`) and keep them in the
    /// cache, so every label gets a teacher confidence (`teacher_labels.confidence`,
    /// `train.filters.min_teacher_confidence`). Part of the request, so turning it on asks
    /// again for answers cached without it. Left off, it is not serialized (config hashes of
    /// earlier runs hold).
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub logprobs: bool,
    /// Price per model name; a model missing here costs 0 and the report says so.
    pub prices: BTreeMap<String, Price>,
    /// The reply cache (one redb file). Default: `teacher_cache.redb` in the run directory.
    pub cache_path: Option<PathBuf>,
    /// Directory holding `<task>.toml` prompt files.
    pub prompts_dir: PathBuf,
    /// Fuzzy-alignment threshold in (0, 1]: token-level similarity needed to accept a match.
    pub fuzzy_threshold: f64,
    /// Draw a progress bar on stderr (only when it is a terminal).
    pub progress: bool,
    /// `"online"` or `"batch"` (the Batch API; hosted endpoints only).
    pub mode: TeacherMode,
    /// Batch mode: seconds between status checks of a running batch.
    pub batch_poll_secs: f64,
    /// Batch mode: requests per batch file (OpenAI accepts at most 50,000 lines and 200 MB);
    /// more requests are split over several batches.
    pub batch_max_requests: usize,
    pub batch_max_bytes: u64,
    /// Batch mode: price of batch tokens as a share of `prices` (OpenAI: half).
    pub batch_discount: f64,
    /// Batch mode: send the requests an expired batch left unanswered once more, in a new
    /// batch (else they are recorded as failed).
    pub batch_resubmit_expired: bool,
}

impl Default for TeacherConfig {
    fn default() -> Self {
        Self {
            base_url: EMBEDDED.to_string(),
            model: "qwen2.5-coder-1.5b-instruct".to_string(),
            api_key_env: "OPENAI_API_KEY".to_string(),
            concurrency: 4,
            rpm: 0,
            tpm: 0,
            max_retries: 4,
            timeout_secs: 120.0,
            backoff_base_ms: 500,
            backoff_max_ms: 30_000,
            temperature: 0.0,
            max_tokens: 512,
            seed: Some(0),
            json_schema: true,
            grounded: true,
            logprobs: false,
            prices: BTreeMap::new(),
            cache_path: None,
            prompts_dir: PathBuf::from("pipelines/prompts"),
            fuzzy_threshold: 0.8,
            progress: true,
            mode: TeacherMode::Online,
            batch_poll_secs: 60.0,
            batch_max_requests: 50_000,
            // OpenAI's 200 MB limit, less room for the multipart envelope.
            batch_max_bytes: 190_000_000,
            batch_discount: 0.5,
            batch_resubmit_expired: true,
        }
    }
}

impl TeacherConfig {
    /// Checks that cannot wait until the first request.
    pub fn validate(&self) -> Result<()> {
        let bad = |what: &str| Err(Error::Config(format!("teacher.{what}")));
        if self.model.trim().is_empty() {
            return bad("model must not be empty");
        }
        if self.concurrency == 0 {
            return bad("concurrency must be at least 1");
        }
        if self.timeout_secs.is_nan() || self.timeout_secs <= 0.0 {
            return bad("timeout_secs must be positive");
        }
        if !(self.fuzzy_threshold > 0.0 && self.fuzzy_threshold <= 1.0) {
            return bad("fuzzy_threshold must be in (0, 1]");
        }
        if self.max_tokens == 0 {
            return bad("max_tokens must be at least 1");
        }
        if self.base_url != EMBEDDED && !self.base_url.starts_with("http://") && !self.base_url.starts_with("https://")
        {
            return Err(Error::Config(format!(
                "teacher.base_url {:?} is neither \"embedded\" nor an http(s) URL",
                self.base_url
            )));
        }
        if self.mode == TeacherMode::Batch {
            if self.base_url == EMBEDDED {
                return bad("mode = \"batch\" needs a hosted endpoint with the Batch API (/v1/files, /v1/batches); \
                     the embedded teacher answers online only");
            }
            if self.batch_poll_secs.is_nan() || self.batch_poll_secs <= 0.0 {
                return bad("batch_poll_secs must be positive");
            }
            if self.batch_max_requests == 0 || self.batch_max_bytes == 0 {
                return bad("batch_max_requests and batch_max_bytes must be at least 1");
            }
            if !(self.batch_discount > 0.0 && self.batch_discount <= 1.0) {
                return bad("batch_discount must be in (0, 1] (a share of the online price)");
            }
        }
        Ok(())
    }

    /// The API key from the environment variable [`Self::api_key_env`]; empty when unset
    /// (local servers need none; a remote one answers 401, reported with the variable's name).
    pub fn api_key(&self) -> String {
        std::env::var(&self.api_key_env).unwrap_or_default()
    }

    /// The price of the configured model, if the price table has it.
    pub fn price(&self) -> Option<Price> {
        self.prices.get(&self.model).copied()
    }

    /// The price of the configured model through the Batch API: `batch_discount` × [`Self::price`].
    pub fn batch_price(&self) -> Option<Price> {
        self.price().map(|p| Price {
            input_per_mtok: p.input_per_mtok * self.batch_discount,
            output_per_mtok: p.output_per_mtok * self.batch_discount,
        })
    }
}

/// How a run picks the new sentences it asks the teacher about.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize, clap::ValueEnum)]
#[serde(rename_all = "snake_case")]
pub enum Selection {
    /// A seeded pseudo-random order (sha256 of the sentence id and `label.seed`).
    #[default]
    Random,
    /// Rank a pool of candidates with the run directory's current student: sentences where it
    /// expects entities or relations and is unsure of them first (random without a student).
    Informative,
}

/// What to label.
///
/// The **silver set** of a task is every teacher answer the cache holds for a candidate
/// sentence of the current corpus under the current endpoint, model, prompt and sampling; a
/// run adds up to `budget` new sentences per task to it (and stops adding once
/// `budget_minutes` of teacher time are spent), so labels accumulate run after run.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct LabelConfig {
    /// The endpoint: the pipeline file's `[teacher]` section, not part of `[label]`.
    #[serde(skip)]
    pub teacher: TeacherConfig,
    /// Written to `teacher_labels.first_run` for every answer paid this run.
    #[serde(skip)]
    pub run_id: String,
    /// Tasks to label.
    pub tasks: Vec<Task>,
    /// Replaced by `budget` (kept only to reject it with a message that says so).
    #[serde(skip_serializing)]
    pub sample: Option<usize>,
    /// New training sentences per task this run asks the teacher about (cached ones are
    /// free and always part of the silver set); 0 = none (re-label from the cache only).
    pub budget: usize,
    /// Stop sending new requests after this many minutes of labeling; 0 = no limit.
    pub budget_minutes: f64,
    /// How the new sentences are picked.
    pub select: Selection,
    /// Informative selection: share of the budget still picked at random (exploration).
    pub explore: f64,
    /// Informative selection: candidates scored by the student per sentence of budget.
    pub pool_factor: usize,
    /// Sentences longer than this many chars are never sent to the teacher (0 = no cap): an
    /// unsplit table or list would fill the context window and the reply budget. Counted in
    /// `--plan` and the label report.
    pub max_sentence_chars: usize,
    /// Salts the random order; 0 keeps the order earlier runs used.
    pub seed: u64,
    /// Answers asked per sentence: pass 0 as `[teacher]` says, pass i > 0 sampled at
    /// `pass_temperature` with seed `teacher.seed + i`. `train.filters.require_agreement` keeps the
    /// labels at least two passes agree on.
    pub passes: usize,
    pub pass_temperature: f32,
    /// Document splits to draw training sentences from (`documents.split`). Never `dev`:
    /// dev text is only labeled to score the teacher (`dev_sample`).
    pub splits: Vec<String>,
    /// Restrict a task to documents of these sources (`documents.source`); a task missing
    /// here draws from every source.
    pub sources: BTreeMap<Task, Vec<String>>,
    /// Gold dev sentences per task sent to the teacher so evaluation can score it; their
    /// labels never train the student (`train` drops every `dev` document).
    pub dev_sample: usize,
    /// Gold sets the dev sentences of each task come from.
    pub dev_sources: BTreeMap<Task, Vec<String>>,
    /// Shipped teacher answers (`biodistill label --export`) copied into the cache before
    /// selection; answers for another prompt, teacher or corpus are ignored.
    pub shipped: Option<PathBuf>,
}

impl Default for LabelConfig {
    fn default() -> Self {
        Self {
            teacher: TeacherConfig::default(),
            run_id: String::new(),
            tasks: Task::ALL.to_vec(),
            sample: None,
            budget: 200,
            budget_minutes: 0.0,
            select: Selection::Random,
            explore: 0.2,
            pool_factor: 10,
            max_sentence_chars: 2000,
            seed: 0,
            passes: 1,
            pass_temperature: 0.7,
            splits: vec![crate::schema::split::UNLABELED.to_string(), crate::schema::split::TRAIN.to_string()],
            sources: BTreeMap::new(),
            dev_sample: 0,
            dev_sources: BTreeMap::from([
                (Task::Ade, vec!["ade_corpus_v2".to_string()]),
                (Task::GeneDisease, vec!["gad".to_string()]),
                (Task::Phi, vec!["presidio".to_string()]),
            ]),
            shipped: None,
        }
    }
}

impl LabelConfig {
    /// Checks that cannot wait until the first request.
    pub fn validate(&self) -> Result<()> {
        if let Some(n) = self.sample {
            return Err(Error::Config(format!(
                "label.sample = {n} is no longer read: the silver set is now every cached teacher answer for \
                 the corpus, and label.budget is how many new sentences per task a run asks for; \
                 write `budget = {n}` instead"
            )));
        }
        if self.passes == 0 {
            return Err(Error::Config("label.passes must be at least 1".into()));
        }
        if !(0.0..=1.0).contains(&self.explore) {
            return Err(Error::Config("label.explore must be in [0, 1]".into()));
        }
        if self.budget_minutes.is_nan() || self.budget_minutes < 0.0 {
            return Err(Error::Config("label.budget_minutes must be 0 (no limit) or positive".into()));
        }
        if self.teacher.mode == TeacherMode::Batch && self.budget_minutes > 0.0 {
            return Err(Error::Config(
                "label.budget_minutes limits online sending; with teacher.mode = \"batch\" the provider answers \
                 within its completion window (use label.budget to bound the requests)"
                    .into(),
            ));
        }
        if self.splits.iter().any(|s| s == crate::schema::split::DEV) {
            return Err(Error::Config(
                "label.splits must not include \"dev\": dev text is labeled only to score the teacher \
                 (label.dev_sample)"
                    .into(),
            ));
        }
        self.teacher.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn config_round_trips_through_toml_and_rejects_unknown_keys() {
        let cfg = LabelConfig::default();
        let text = toml::to_string(&cfg).unwrap();
        let back: LabelConfig = toml::from_str(&text).unwrap();
        assert_eq!(back, cfg);
        let partial: LabelConfig = toml::from_str("tasks = [\"phi\"]\ndev_sample = 3\n").unwrap();
        partial.validate().unwrap();
        let old: LabelConfig = toml::from_str("sample = 60\n").unwrap();
        let err = old.validate().unwrap_err().to_string();
        assert!(err.contains("label.budget") && err.contains("budget = 60"), "{err}");
        assert_eq!(partial.tasks, vec![Task::Phi]);
        assert_eq!(partial.dev_sample, 3);
        assert!(toml::from_str::<TeacherConfig>("api_key = \"sk-\"\n").is_err());
    }

    #[test]
    fn validate_names_the_bad_field() {
        let cfg = TeacherConfig { concurrency: 0, ..Default::default() };
        assert!(cfg.validate().unwrap_err().to_string().contains("concurrency"));
        let cfg = TeacherConfig { base_url: "localhost:8000".into(), ..Default::default() };
        assert!(cfg.validate().unwrap_err().to_string().contains("base_url"));
        TeacherConfig::default().validate().unwrap();
    }

    #[test]
    fn batch_mode_is_checked_when_chosen() {
        let hosted = "https://api.example.com/v1".to_string();
        let batch: TeacherConfig = toml::from_str(&format!("mode = \"batch\"\nbase_url = {hosted:?}\n")).unwrap();
        assert_eq!(batch.mode, TeacherMode::Batch);
        batch.validate().unwrap();
        let err = toml::from_str::<TeacherConfig>("mode = \"bulk\"\n").unwrap_err().to_string();
        assert!(err.contains("online") && err.contains("batch"), "{err}");
        let embedded = TeacherConfig { mode: TeacherMode::Batch, ..Default::default() };
        assert!(embedded.validate().unwrap_err().to_string().contains("hosted endpoint"));
        for bad in [
            TeacherConfig { batch_poll_secs: 0.0, ..batch.clone() },
            TeacherConfig { batch_max_requests: 0, ..batch.clone() },
            TeacherConfig { batch_discount: 1.5, ..batch.clone() },
        ] {
            let err = bad.validate().unwrap_err().to_string();
            assert!(err.contains("teacher.batch_"), "{err}");
        }
        // Batch keys are only checked in batch mode.
        TeacherConfig { batch_poll_secs: 0.0, ..Default::default() }.validate().unwrap();
        let priced = TeacherConfig {
            prices: BTreeMap::from([(batch.model.clone(), Price { input_per_mtok: 2.0, output_per_mtok: 8.0 })]),
            ..batch
        };
        assert_eq!(priced.batch_price(), Some(Price { input_per_mtok: 1.0, output_per_mtok: 4.0 }));
    }
}
