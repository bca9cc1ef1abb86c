//! The crate's error type.
//!
//! Bad input (a file we cannot read, a row we cannot parse) is kept apart from bugs
//! (`Internal`), and every input error names the file, and the row when there is one, so a
//! user can go straight to the problem. `main.rs` is the only place errors become exit codes.
//!
//! This module imports no stage, so every stage can use it: the teacher's [`TeacherError`],
//! which [`Error::Teacher`] wraps, lives here (`error/teacher.rs`) rather than in `teacher/`.

mod teacher;

use std::path::{Path, PathBuf};

pub use teacher::TeacherError;

/// Result with the crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

/// Everything that can go wrong in biodistill.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A file or directory could not be read or written.
    #[error("{}: {source}", path.display())]
    Io {
        path: PathBuf,
        #[source]
        source: std::io::Error,
    },
    /// An input file has a problem a user can fix: missing column, wrong type, bad UTF-8,
    /// duplicate id, corrupt Parquet.
    #[error("{}{}: {problem}", file.display(), row.map(|r| format!(":{r}")).unwrap_or_default())]
    Input {
        file: PathBuf,
        /// 1-based row or line number, when the problem is in one row.
        row: Option<usize>,
        problem: String,
    },
    /// The run configuration is invalid.
    #[error("configuration: {0}")]
    Config(String),
    /// The cluster a plan was sent to cannot run it (see [`crate::cluster`]).
    #[error("cluster: {0}")]
    Cluster(String),
    /// A model file is missing or invalid.
    #[error("model: {0}")]
    Model(String),
    #[error(transparent)]
    Arrow(#[from] arrow::error::ArrowError),
    #[error(transparent)]
    Parquet(#[from] parquet::errors::ParquetError),
    #[error(transparent)]
    DataFusion(#[from] datafusion::error::DataFusionError),
    #[error(transparent)]
    Candle(#[from] candle_core::Error),
    #[error("tokenizer: {0}")]
    Tokenizer(String),
    #[error("json: {0}")]
    Json(#[from] serde_json::Error),
    /// A teacher request failed for good (see [`TeacherError`]).
    #[error("teacher: {0}")]
    Teacher(#[from] TeacherError),
    /// A prompt leaves no room for a reply in the teacher's context window.
    #[error("the prompt has {prompt_tokens} tokens; the context holds {context_length} (prompt and reply)")]
    PromptTooLong { prompt_tokens: usize, context_length: usize },
    /// Ctrl-C: the stage stopped; what it had stored (teacher cache, published tables) stays.
    #[error("interrupted")]
    Interrupted,
    /// A quality gate failed: the run's outputs were not published (the last good ones stay).
    #[error("quality gate failed, nothing published: {0}")]
    GateFailed(String),
    /// Something that cannot happen unless biodistill has a bug.
    #[error("internal error (this is a bug): {0}")]
    Internal(String),
}

impl Error {
    /// An input error about a whole file.
    pub fn input(file: impl AsRef<Path>, problem: impl Into<String>) -> Self {
        Error::Input { file: file.as_ref().to_path_buf(), row: None, problem: problem.into() }
    }

    /// An input error about one row (1-based) of a file.
    pub fn input_row(file: impl AsRef<Path>, row: usize, problem: impl Into<String>) -> Self {
        Error::Input { file: file.as_ref().to_path_buf(), row: Some(row), problem: problem.into() }
    }
}

/// Attach a path to `std::io::Error`s.
pub trait IoContext<T> {
    fn with_path(self, path: impl AsRef<Path>) -> Result<T>;
}

impl<T> IoContext<T> for std::result::Result<T, std::io::Error> {
    fn with_path(self, path: impl AsRef<Path>) -> Result<T> {
        self.map_err(|source| Error::Io { path: path.as_ref().to_path_buf(), source })
    }
}
