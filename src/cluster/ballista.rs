//! The Ballista side of [`super`]: a scheduler and executors that know the student functions,
//! and a client session that sends plans to them.
//!
//! No extension codec is needed: a plan names its functions, and scheduler and executor look
//! those names up in their function registries, which hold the student functions
//! ([`student_state`]). What a function needs (checkpoint directory, model version) travels as
//! literal arguments, so an executor needs no flag naming a run directory.

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ballista::extension::SessionContextExt;
use ballista_core::registry::BallistaFunctionRegistry;
use ballista_core::utils::default_session_builder;
use ballista_executor::executor_process::{ExecutorProcessConfig, start_executor_process};
use ballista_scheduler::cluster::BallistaCluster;
use ballista_scheduler::config::SchedulerConfig;
use ballista_scheduler::scheduler_process::start_server;
use datafusion::execution::{FunctionRegistry, SessionState, SessionStateBuilder};
use datafusion::prelude::{SessionConfig, SessionContext};
use tokio::net::TcpStream;

use super::{Engine, ensure_reachable};
use crate::error::{Error, IoContext, Result};

/// A session state with Ballista's defaults and the student's sentence-level functions (what
/// extraction plans call).
fn student_state(config: SessionConfig) -> datafusion::error::Result<SessionState> {
    let mut state = default_session_builder(config)?;
    for function in crate::extract::functions::sentence_functions(&Arc::default()) {
        state.register_udf(Arc::new(function))?;
    }
    Ok(state)
}

fn cluster_error(what: &str, e: impl std::fmt::Display) -> Error {
    Error::Cluster(format!("{what}: {e}"))
}

/// `ctx` (tables and functions registered) turned into a client of the scheduler at
/// `host:port`: its plans run there.
pub(super) async fn remote(ctx: SessionContext, host: &str, port: u16) -> Result<SessionContext> {
    let start = format!(
        "biodistill cluster scheduler --bind {host}:{port}` and `biodistill cluster executor --scheduler {host}:{port}"
    );
    ensure_reachable(host, port, "Ballista scheduler", &start).await?;
    let url = format!("df://{host}:{port}");
    // Ballista rebuilds the state with the given config; a config that still asks for the
    // default catalog would replace the one holding the run directory's tables.
    let state = ctx.state();
    let config = state.config().clone().with_create_default_catalog_and_schema(false);
    let state = SessionStateBuilder::new_from_existing(state).with_config(config).build();
    SessionContext::remote_with_state(&url, state).await.map_err(|e| cluster_error(&url, e))
}

/// Run a Ballista scheduler on `bind` until the process is stopped.
pub async fn scheduler(bind: SocketAddr) -> Result<()> {
    let config = SchedulerConfig {
        bind_host: bind.ip().to_string(),
        bind_port: bind.port(),
        override_session_builder: Some(Arc::new(student_state)),
        ..Default::default()
    };
    let cluster = BallistaCluster::new_from_config(&config).await.map_err(|e| cluster_error("scheduler", e))?;
    tracing::info!(%bind, "Ballista scheduler with the student functions");
    start_server(cluster, bind, Arc::new(config)).await.map_err(|e| cluster_error(&format!("scheduler on {bind}"), e))
}

/// Where an executor listens and which scheduler it serves (`biodistill cluster executor`).
#[derive(Debug, Clone)]
pub struct ExecutorOptions {
    /// The scheduler, `host:port`.
    pub scheduler: (String, u16),
    /// Address of the executor's Arrow Flight service (results and shuffle data).
    pub bind: SocketAddr,
    /// Port of the executor's gRPC service (on `bind`'s address).
    pub grpc_port: u16,
    /// Host the scheduler and other executors reach this one at; default: the address the
    /// scheduler sees it connect from.
    pub external_host: Option<String>,
    /// Tasks run at once; 0 = every core.
    pub concurrent_tasks: usize,
    /// Shuffle files; default a temporary directory.
    pub work_dir: Option<PathBuf>,
}

/// Run a Ballista executor whose function registry holds the student functions, until the
/// process is stopped. Checkpoints are read from the paths the plans name.
pub async fn executor(options: ExecutorOptions) -> Result<()> {
    let (host, port) = options.scheduler.clone();
    let start = format!("biodistill cluster scheduler --bind {host}:{port}");
    ensure_reachable(&host, port, "Ballista scheduler", &start).await?;
    let state = student_state(SessionConfig::new()).map_err(|e| cluster_error("executor", e))?;
    let config = ExecutorProcessConfig {
        bind_host: options.bind.ip().to_string(),
        port: options.bind.port(),
        grpc_port: options.grpc_port,
        external_host: options.external_host,
        scheduler_host: host,
        scheduler_port: port,
        vcores: crate::parallel::threads_or_all(options.concurrent_tasks),
        work_dir: options.work_dir.map(|d| d.to_string_lossy().into_owned()),
        override_function_registry: Some(Arc::new(BallistaFunctionRegistry::from(&state))),
        ..Default::default()
    };
    tracing::info!(bind = %options.bind, "Ballista executor with the student functions");
    start_executor_process(Arc::new(config))
        .await
        .map_err(|e| cluster_error(&format!("executor on {}", options.bind), e))
}

/// A free port on loopback (bound, then released for the service to bind).
fn loopback_address() -> Result<SocketAddr> {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").map_err(|e| cluster_error("loopback port", e))?;
    listener.local_addr().map_err(|e| cluster_error("loopback port", e))
}

/// A scheduler and `executors` executors (`concurrent_tasks` each) in this process on loopback
/// ports, their shuffle files under `work_dir`: the engine that reaches them. For tests and
/// benchmarks; they stop with the tokio runtime.
pub async fn start_on_loopback(executors: usize, concurrent_tasks: usize, work_dir: &Path) -> Result<Engine> {
    let bind = loopback_address()?;
    tokio::spawn(async move {
        if let Err(e) = scheduler(bind).await {
            tracing::error!("{e}");
        }
    });
    let (host, port) = (bind.ip().to_string(), bind.port());
    let start = std::time::Instant::now();
    while TcpStream::connect(bind).await.is_err() {
        if start.elapsed() > Duration::from_secs(10) {
            return Err(Error::Cluster(format!("the in-process scheduler on {bind} did not start within 10 s")));
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    for i in 0..executors {
        let work_dir = work_dir.join(format!("executor-{i}"));
        std::fs::create_dir_all(&work_dir).with_path(&work_dir)?;
        let options = ExecutorOptions {
            scheduler: (host.clone(), port),
            bind: loopback_address()?,
            grpc_port: loopback_address()?.port(),
            external_host: None,
            concurrent_tasks,
            work_dir: Some(work_dir),
        };
        tokio::spawn(async move {
            if let Err(e) = executor(options).await {
                tracing::error!("{e}");
            }
        });
    }
    Ok(Engine::Ballista { host, port })
}
