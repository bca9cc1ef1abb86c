//! The command line: one subcommand per pipeline stage, plus `run` (all stages) and `sql`.
//!
//! Flags are parsed here, merged with the pipeline file and `BIODISTILL_*` variables into a
//! [`PipelineConfig`], and only then is a stage started; stages never see raw flags.

use std::path::PathBuf;

use clap::{Args, Parser, Subcommand};

use crate::config::PipelineConfig;
use crate::error::{Error, Result};
use crate::ingest::{UserCorpus, UserFormat};
use crate::run_dir::RunDir;
use crate::sql::OutputFormat;

/// Distil an LLM teacher into a small biomedical extractor: adverse drug events, gene–disease
/// associations and PHI spans, as Parquet tables you query with SQL.
#[derive(Debug, Parser)]
#[command(name = "biodistill", version, max_term_width = 100)]
pub struct Cli {
    /// Pipeline file (TOML) describing the run; defaults are used without one.
    #[arg(short, long, global = true, env = "BIODISTILL_CONFIG", value_name = "FILE")]
    pub config: Option<PathBuf>,
    /// Run directory holding the tables (overrides `run.dir`).
    #[arg(long, global = true, value_name = "DIR")]
    pub run_dir: Option<PathBuf>,
    /// Override any configuration key, e.g. `--set ingest.dev_fraction=0.1` (repeatable).
    #[arg(long = "set", global = true, value_name = "SECTION.KEY=VALUE")]
    pub sets: Vec<String>,
    /// More log output (-v: debug, -vv: trace); `BIODISTILL_LOG` takes a full filter.
    #[arg(short, long, global = true, action = clap::ArgAction::Count)]
    pub verbose: u8,
    #[command(subcommand)]
    pub command: Command,
}

#[derive(Debug, Subcommand)]
pub enum Command {
    /// Read raw corpora into documents, sentences and gold tables.
    Ingest(IngestArgs),
    /// Run the whole pipeline described by a pipeline file.
    Run(RunArgs),
    /// Run SQL over the tables of a run directory.
    Sql(SqlArgs),
}

/// `biodistill ingest`
#[derive(Debug, Args)]
pub struct IngestArgs {
    /// Directory of the built-in corpora (overrides `ingest.data_dir`).
    #[arg(long, value_name = "DIR")]
    pub data_dir: Option<PathBuf>,
    /// Built-in corpora to read (repeatable; overrides `ingest.corpora`). `none` reads none.
    #[arg(long = "corpus", value_name = "NAME")]
    pub corpora: Vec<String>,
    /// A user corpus file or directory (Parquet, JSONL or CSV; repeatable).
    #[arg(long = "input", value_name = "PATH")]
    pub inputs: Vec<PathBuf>,
    /// Format of `--input` files, when their extension does not say.
    #[arg(long, value_enum)]
    pub format: Option<UserFormat>,
    /// Id column of `--input` files.
    #[arg(long, default_value = "id")]
    pub id_column: String,
    /// Text column of `--input` files.
    #[arg(long, default_value = "text")]
    pub text_column: String,
    /// Optional title column of `--input` files.
    #[arg(long)]
    pub title_column: Option<String>,
    /// Source name of `--input` files (default: the file name).
    #[arg(long)]
    pub source: Option<String>,
}

/// `biodistill run`
#[derive(Debug, Args)]
pub struct RunArgs {
    /// Pipeline file (same as the global --config).
    #[arg(value_name = "PIPELINE")]
    pub pipeline: Option<PathBuf>,
}

/// `biodistill sql`
#[derive(Debug, Args)]
pub struct SqlArgs {
    /// The SQL statement.
    #[arg(value_name = "QUERY", required_unless_present = "file", conflicts_with = "file")]
    pub query: Option<String>,
    /// Read the statement from a file (e.g. `sql/top_drugs.sql`).
    #[arg(short, long, value_name = "FILE")]
    pub file: Option<PathBuf>,
    /// Output format.
    #[arg(long, value_enum, default_value_t)]
    pub format: OutputFormat,
    /// Write the result to this file instead of standard output.
    #[arg(short, long, value_name = "FILE")]
    pub output: Option<PathBuf>,
}

impl Cli {
    /// The resolved configuration: pipeline file, then environment, then flags.
    pub fn config(&self) -> Result<PipelineConfig> {
        let file = match &self.command {
            Command::Run(RunArgs { pipeline: Some(p) }) => Some(p.as_path()),
            _ => self.config.as_deref(),
        };
        let mut cfg = PipelineConfig::load(file, std::env::vars(), &self.sets)?;
        if let Some(dir) = &self.run_dir {
            cfg.run.dir = dir.clone();
        }
        if let Command::Ingest(a) = &self.command {
            if let Some(d) = &a.data_dir {
                cfg.ingest.data_dir = d.clone();
            }
            if !a.corpora.is_empty() {
                cfg.ingest.corpora = a.corpora.iter().filter(|c| c.as_str() != "none").cloned().collect();
            }
            for path in &a.inputs {
                cfg.ingest.user_corpora.push(UserCorpus {
                    format: a.format,
                    source: a.source.clone(),
                    id_column: a.id_column.clone(),
                    text_column: a.text_column.clone(),
                    title_column: a.title_column.clone(),
                    ..UserCorpus::new(path)
                });
            }
        }
        Ok(cfg)
    }
}

/// Run the command. Returns `Ok(false)` when it finished but some input was not processed
/// (reported already), so the exit status can say so.
pub async fn execute(cli: Cli) -> Result<bool> {
    let cfg = cli.config()?;
    tracing::debug!(?cfg, "resolved configuration");
    match cli.command {
        Command::Ingest(_) => ingest(&cfg),
        Command::Run(_) => ingest(&cfg),
        Command::Sql(args) => sql(&cfg, args).await.map(|()| true),
    }
}

fn ingest(cfg: &PipelineConfig) -> Result<bool> {
    let run_dir = RunDir::create(&cfg.run.dir)?;
    let report = crate::ingest::run(&cfg.ingest, &run_dir)?;
    println!("{report} -> {}", run_dir.root().display());
    Ok(report.failed_files.is_empty())
}

async fn sql(cfg: &PipelineConfig, args: SqlArgs) -> Result<()> {
    let query = match (&args.query, &args.file) {
        (Some(q), _) => q.clone(),
        (None, Some(f)) => std::fs::read_to_string(f).map_err(|e| Error::input(f, e.to_string()))?,
        (None, None) => return Err(Error::Internal("clap requires QUERY or --file".into())),
    };
    let run_dir = RunDir::open(&cfg.run.dir)?;
    let batches = crate::sql::query(&run_dir, &query).await?;
    match &args.output {
        Some(path) => crate::sql::write(&batches, args.format, path),
        None => {
            print!("{}", crate::sql::render(&batches, args.format)?);
            if args.format == OutputFormat::Table {
                println!();
            }
            Ok(())
        }
    }
}
