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
    /// Grow the silver set: ask the teacher about up to `label.budget` new sentences per task
    /// (teacher_labels, teacher_calls hold every cached answer).
    Label(LabelArgs),
    /// Train the student on the teacher's labels (or the gold train split, as a reference).
    Train(TrainArgs),
    /// Run the trained student over every sentence (ade_relations, gene_disease, phi_spans).
    Extract(ExtractArgs),
    /// Score teacher, student and supervised reference on the gold dev split.
    Eval,
    /// Serve a GGUF model as an OpenAI-compatible chat-completions endpoint.
    ServeTeacher(ServeArgs),
    /// Run the whole pipeline described by a pipeline file, then publish its outputs.
    Run(RunArgs),
    /// Run SQL over the tables of a run directory.
    Sql(SqlArgs),
    /// Scale out: run a Ballista scheduler or executor that knows the student functions
    /// (then `extract.engine = "ballista://host:port"`).
    #[command(subcommand)]
    Cluster(ClusterCommand),
}

/// `biodistill cluster`: every machine must see the run directory at the same path.
#[derive(Debug, Subcommand)]
pub enum ClusterCommand {
    /// Accept plans (from `extract --engine ballista://HOST:PORT`) and hand their tasks to
    /// executors. Runs until stopped.
    Scheduler {
        /// Address to listen on (0.0.0.0:50050 for other machines).
        #[arg(long, default_value = "127.0.0.1:50050")]
        bind: std::net::SocketAddr,
    },
    /// Run the tasks a scheduler hands out, the student functions included. Runs until stopped.
    Executor {
        /// The scheduler, HOST:PORT.
        #[arg(long, value_parser = parse_address)]
        scheduler: (String, u16),
        /// Address of this executor's data service (0.0.0.0:50051 for other machines).
        #[arg(long, default_value = "127.0.0.1:50051")]
        bind: std::net::SocketAddr,
        /// Port of this executor's control service (default: the --bind port + 1).
        #[arg(long)]
        grpc_port: Option<u16>,
        /// Host name the scheduler and the other executors reach this one at (default: the
        /// address the scheduler sees this executor connect from).
        #[arg(long)]
        external_host: Option<String>,
        /// Tasks run at once (default: every core).
        #[arg(long, default_value_t = 0)]
        concurrent_tasks: usize,
    },
}

fn parse_address(value: &str) -> std::result::Result<(String, u16), String> {
    crate::cluster::parse_address(value)
}

/// `biodistill label`
#[derive(Debug, Args)]
pub struct LabelArgs {
    /// Only estimate calls, tokens and cost (reads the cache, sends nothing).
    #[arg(long)]
    pub plan: bool,
    /// Tasks to label (repeatable; overrides `label.tasks`).
    #[arg(long = "task", value_name = "TASK")]
    pub tasks: Vec<crate::vocab::Task>,
    /// New training sentences per task this run (overrides `label.budget`).
    #[arg(long)]
    pub budget: Option<usize>,
    /// How new sentences are picked (overrides `label.select`).
    #[arg(long)]
    pub select: Option<crate::teacher::Selection>,
    /// Send nothing: write the cached answers behind this run directory's `teacher_calls` to
    /// FILE (Parquet), for `label.shipped` on another machine.
    #[arg(long, value_name = "FILE", conflicts_with = "plan")]
    pub export: Option<PathBuf>,
}

/// `biodistill train` and the stage flags it shares with `extract`.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// Train on the gold train split instead of the teacher's labels: the supervised
    /// reference, written and reported under its own name.
    #[arg(long)]
    pub supervised_reference: bool,
    /// Stop after this many optimizer steps (overrides `train.max_steps`).
    #[arg(long)]
    pub max_steps: Option<usize>,
    /// Relation head: conditioned (the paper's), markers or pairwise (overrides `train.arch`).
    #[arg(long)]
    pub arch: Option<crate::model::student::Arch>,
}

/// `biodistill extract`
#[derive(Debug, Args)]
pub struct ExtractArgs {
    /// Use the supervised reference's checkpoints and write its suffixed tables.
    #[arg(long)]
    pub supervised_reference: bool,
    /// Where the extraction plans run: `local` or `ballista://HOST:PORT` (overrides
    /// `extract.engine`).
    #[arg(long, value_parser = clap::value_parser!(crate::cluster::Engine))]
    pub engine: Option<crate::cluster::Engine>,
}

/// `biodistill serve-teacher`: flags override `[serve]`.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// GGUF model file (qwen2 or llama architecture).
    #[arg(long, value_name = "GGUF")]
    pub model: Option<PathBuf>,
    /// Address to bind (default 127.0.0.1).
    #[arg(long)]
    pub host: Option<String>,
    /// Port (overrides `serve.port`; 0 picks a free one).
    #[arg(long)]
    pub port: Option<u16>,
    /// CPU threads (default: every core).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Model layers offloaded to the GPU (a `cuda` or `metal` build; default 0).
    #[arg(long)]
    pub gpu_layers: Option<u32>,
    /// Most requests decoded together.
    #[arg(long)]
    pub max_batch: Option<usize>,
    /// Serve on a non-loopback --host without a token (refused otherwise; set
    /// `BIODISTILL_TEACHER_API_KEY` to require one instead).
    #[arg(long)]
    pub insecure_no_token: bool,
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
    /// Ignore what earlier runs labeled and extracted: label, train and extract everything.
    #[arg(long)]
    pub full_refresh: bool,
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
    /// Query the live publication (`<run dir>/published/current`) instead of the run
    /// directory's staged tables.
    #[arg(long)]
    pub published: bool,
}

impl Cli {
    /// The resolved configuration: pipeline file, then environment, then flags.
    pub fn config(&self) -> Result<PipelineConfig> {
        let file = match &self.command {
            Command::Run(RunArgs { pipeline: Some(p), .. }) => Some(p.as_path()),
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
        match &self.command {
            Command::Label(a) => {
                if !a.tasks.is_empty() {
                    cfg.label.tasks = a.tasks.clone();
                }
                cfg.label.budget = a.budget.unwrap_or(cfg.label.budget);
                cfg.label.select = a.select.unwrap_or(cfg.label.select);
            }
            Command::Train(a) => {
                cfg.train.supervised_reference |= a.supervised_reference;
                cfg.train.max_steps = a.max_steps.or(cfg.train.max_steps);
                cfg.train.arch = a.arch.unwrap_or(cfg.train.arch);
            }
            Command::Extract(a) => {
                cfg.extract.supervised_reference |= a.supervised_reference;
                cfg.extract.engine = a.engine.clone().unwrap_or(cfg.extract.engine);
            }
            Command::ServeTeacher(a) => {
                cfg.serve.model = a.model.clone().unwrap_or(cfg.serve.model);
                cfg.serve.host = a.host.clone().unwrap_or(cfg.serve.host);
                cfg.serve.port = a.port.unwrap_or(cfg.serve.port);
                cfg.serve.threads = a.threads.or(cfg.serve.threads);
                cfg.serve.gpu_layers = a.gpu_layers.unwrap_or(cfg.serve.gpu_layers);
                cfg.serve.max_batch = a.max_batch.unwrap_or(cfg.serve.max_batch);
                cfg.serve.insecure_no_token |= a.insecure_no_token;
            }
            _ => {}
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
        Command::Label(a) => label(&cfg, a.plan, a.export.as_deref()).await,
        Command::Train(_) => {
            let report = crate::train::run(&cfg.train, &RunDir::open(&cfg.run.dir)?)?;
            print_stdout(&report.to_string()).map(|()| true)
        }
        Command::Extract(_) => {
            let report = crate::extract::run(&cfg.extract, &RunDir::open(&cfg.run.dir)?).await?;
            print_stdout(&report.to_string()).map(|()| true)
        }
        Command::Eval => {
            let run_dir = RunDir::open(&cfg.run.dir)?;
            let run_id = crate::pipeline::run_id_of(&run_dir);
            let report = crate::eval::run(&cfg.eval_config(), &run_dir, &run_id).await?;
            print_stdout(&report.to_string()).map(|()| true)
        }
        Command::ServeTeacher(_) => crate::serve::run(cfg.serve).await.map(|()| true),
        Command::Run(a) => {
            let report = crate::pipeline::run(&cfg, a.full_refresh).await?;
            // Like `ingest`: finished, but an input file was not read (exit 1).
            print_stdout(&report.to_string()).map(|()| report.manifest.failed_inputs == 0)
        }
        Command::Sql(args) => sql(&cfg, args).await.map(|()| true),
        Command::Cluster(command) => cluster(command).await.map(|()| true),
    }
}

#[cfg(feature = "cluster")]
async fn cluster(command: ClusterCommand) -> Result<()> {
    match command {
        ClusterCommand::Scheduler { bind } => crate::cluster::scheduler(bind).await,
        ClusterCommand::Executor { scheduler, bind, grpc_port, external_host, concurrent_tasks } => {
            let grpc_port = grpc_port.unwrap_or(bind.port().wrapping_add(1));
            let work_dir = None;
            let options = crate::cluster::ExecutorOptions {
                scheduler,
                bind,
                grpc_port,
                external_host,
                concurrent_tasks,
                work_dir,
            };
            crate::cluster::executor(options).await
        }
    }
}

#[cfg(not(feature = "cluster"))]
async fn cluster(_: ClusterCommand) -> Result<()> {
    Err(Error::Config("`biodistill cluster` needs a build with the `cluster` feature (make build)".into()))
}

/// `Ok(false)` when the teacher failed on some input (a dead endpoint, a rejected key): the
/// answers it did give are kept, and a script sees exit status 1.
async fn label(cfg: &PipelineConfig, plan: bool, export: Option<&std::path::Path>) -> Result<bool> {
    let run_dir = RunDir::open(&cfg.run.dir)?;
    let label = cfg.label_config();
    if let Some(file) = export {
        let cache = crate::teacher::cache::Cache::open(&crate::teacher::cache_path(&label.teacher, &run_dir))?;
        let rows = crate::teacher::shipped::export(&cache, &run_dir, file)?;
        print_stdout(&format!("wrote {rows} teacher answers to {}\n", file.display())).map(|()| true)
    } else if plan {
        print_stdout(&crate::teacher::plan(&label, &run_dir).await?.to_string()).map(|()| true)
    } else {
        let report = crate::teacher::run_embedded_or_remote(&label, &cfg.serve, &run_dir).await?;
        print_stdout(&report.to_string())?;
        if report.failed > 0 {
            tracing::error!(
                "the teacher failed on {} of {} inputs (teacher_calls.error says why): exit status 1",
                report.failed,
                report.inputs
            );
        }
        Ok(report.failed == 0)
    }
}

/// Write `text` to standard output. A closed pipe (`biodistill sql ... | head -1`) is not an
/// error: the reader took what it wanted, so the rest is dropped quietly (exit 0).
fn print_stdout(text: &str) -> Result<()> {
    use std::io::Write;
    let mut out = std::io::stdout().lock();
    match out.write_all(text.as_bytes()).and_then(|()| out.flush()) {
        Err(e) if e.kind() != std::io::ErrorKind::BrokenPipe => {
            Err(Error::Io { path: PathBuf::from("<standard output>"), source: e })
        }
        _ => Ok(()),
    }
}

fn ingest(cfg: &PipelineConfig) -> Result<bool> {
    let run_dir = RunDir::create(&cfg.run.dir)?;
    let report = crate::ingest::run(&cfg.ingest, &run_dir)?;
    print_stdout(&format!("{report} -> {}\n", run_dir.root().display()))?;
    Ok(report.failed_files.is_empty())
}

async fn sql(cfg: &PipelineConfig, args: SqlArgs) -> Result<()> {
    let query = match (&args.query, &args.file) {
        (Some(q), _) => q.clone(),
        (None, Some(f)) => std::fs::read_to_string(f).map_err(|e| Error::input(f, e.to_string()))?,
        (None, None) => return Err(Error::Internal("clap requires QUERY or --file".into())),
    };
    let run_dir = RunDir::open(&cfg.run.dir)?;
    // The student functions use the run directory's student either way.
    let students = run_dir.checkpoints(false);
    let tables = if args.published {
        crate::publish::current_tables(&cfg.publish, &run_dir).ok_or_else(|| {
            Error::input(cfg.publish.dir(&run_dir), "nothing is published yet (run `biodistill run` first)")
        })?
    } else {
        run_dir
    };
    let batches = crate::sql::session(&tables, &students).await?.sql(&query).await?.collect().await?;
    match &args.output {
        Some(path) => crate::sql::write(&batches, args.format, path),
        None => {
            let mut text = crate::sql::render(&batches, args.format)?;
            if args.format == OutputFormat::Table {
                text.push('\n');
            }
            print_stdout(&text)
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn serve_config(args: &[&str]) -> crate::serve::ServeConfig {
        let argv: Vec<&str> = std::iter::once("biodistill").chain(args.iter().copied()).collect();
        Cli::try_parse_from(argv).unwrap().config().unwrap().serve
    }

    /// `[serve].port` holds unless `--port` is given.
    #[test]
    fn serve_port_flag_only_overrides_when_given() {
        assert_eq!(serve_config(&["--set", "serve.port=9001", "serve-teacher"]).port, 9001);
        assert_eq!(serve_config(&["--set", "serve.port=9001", "serve-teacher", "--port", "9002"]).port, 9002);
        assert_eq!(serve_config(&["serve-teacher"]).port, crate::serve::ServeConfig::default().port);
        assert!(!serve_config(&["serve-teacher"]).insecure_no_token);
        assert!(serve_config(&["serve-teacher", "--insecure-no-token"]).insecure_no_token);
        assert_eq!(serve_config(&["serve-teacher", "--gpu-layers", "99"]).gpu_layers, 99);
        assert_eq!(serve_config(&["--set", "serve.gpu_layers=4", "serve-teacher"]).gpu_layers, 4);
    }
}
