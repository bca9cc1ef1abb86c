//! The embedded teacher: a local OpenAI-compatible chat-completions server over a GGUF model,
//! so the pipeline needs no outside service. Clients see only a base URL, exactly as with
//! OpenAI:
//!
//! ```no_run
//! # async fn demo() -> biodistill::Result<()> {
//! use biodistill::serve::{ServeConfig, spawn};
//! let server = spawn(ServeConfig::new("models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf")).await?;
//! // e.g. async_openai::config::OpenAIConfig::new().with_api_base(server.base_url())
//! println!("{} serving {}", server.base_url(), server.model_id());
//! server.shutdown().await; // or just drop it
//! # Ok(()) }
//! ```
//!
//! Split as in TEI: [`types`] (wire types), [`http`] (routes, auth, errors), one module per
//! endpoint ([`chat`], [`completions`]) over the generation path they share ([`generate`]:
//! one JSON response or a server-sent-event stream), and [`backend`] (the model on its own
//! thread, with continuous batching). The model itself is [`crate::llm`].

pub mod backend;
pub mod chat;
pub mod completions;
pub mod generate;
pub mod http;
pub mod types;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::sync::atomic::AtomicU64;

use serde::{Deserialize, Serialize};
use tokio::sync::oneshot;

use crate::llm::{DEFAULT_MAX_BATCH, TeacherLlmConfig};
use crate::{Error, Result};
use backend::Backend;
use http::AppState;

/// Environment variable the API key is read from when not given on the command line.
pub const API_KEY_ENV: &str = "BIODISTILL_TEACHER_API_KEY";

/// How to run the teacher server. `serve-teacher` flags map one to one onto these fields.
#[derive(Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServeConfig {
    /// GGUF model file (qwen2 or llama architecture, ChatML).
    pub model: PathBuf,
    /// Address to bind; loopback by default so the model is not exposed.
    pub host: String,
    /// Port to bind; 0 picks a free port (see [`RunningServer::base_url`]).
    pub port: u16,
    /// CPU threads for the model; `None` uses every core.
    pub threads: Option<usize>,
    /// Model layers offloaded to the GPU (a build with the `cuda` or `metal` feature; a large
    /// number offloads them all); 0, the default, runs on the CPU. Not serialized when 0, so it
    /// leaves config hashes alone.
    #[serde(skip_serializing_if = "is_zero")]
    pub gpu_layers: u32,
    /// Bearer token clients must send; `None` accepts any. Never serialized (manifests).
    #[serde(skip_serializing)]
    pub api_key: Option<String>,
    /// Most sequences decoded together in one forward pass.
    pub max_batch: usize,
    /// Requests waiting beyond this get HTTP 429.
    pub max_queue: usize,
    /// Longest prompt + reply in tokens.
    pub context_length: usize,
    /// Sampling seed for requests that send none.
    pub seed: u64,
    /// Memory for prompt-prefix KV snapshots, in MiB; 0 disables the prefix cache.
    pub prefix_cache_mib: usize,
    /// Most drafted tokens a sequence feeds per decode step (prompt lookup, each checked
    /// against the model's own pick in the same pass, so replies do not change); 0 turns
    /// drafting off (the default). See [`TeacherLlmConfig::draft_tokens`].
    pub draft_tokens: usize,
    /// Serve on a non-loopback address without a token (`--insecure-no-token`); otherwise
    /// [`spawn`] refuses to (see [`check_exposure`]). Not serialized when off, so it leaves
    /// config hashes alone.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub insecure_no_token: bool,
}

impl Default for ServeConfig {
    fn default() -> Self {
        Self {
            model: PathBuf::from("models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"),
            host: "127.0.0.1".into(),
            port: 0,
            threads: None,
            gpu_layers: 0,
            api_key: std::env::var(API_KEY_ENV).ok().filter(|k| !k.is_empty()),
            max_batch: DEFAULT_MAX_BATCH,
            max_queue: 256,
            context_length: 4096,
            seed: 0,
            prefix_cache_mib: 512,
            draft_tokens: crate::llm::DEFAULT_DRAFT_TOKENS,
            insecure_no_token: false,
        }
    }
}

fn is_zero(n: &u32) -> bool {
    *n == 0
}

/// Like the derived `Debug`, with the API key redacted (the config is logged at start-up).
impl std::fmt::Debug for ServeConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ServeConfig")
            .field("model", &self.model)
            .field("host", &self.host)
            .field("port", &self.port)
            .field("threads", &self.threads)
            .field("gpu_layers", &self.gpu_layers)
            .field("api_key", &self.api_key.as_ref().map(|_| "<redacted>"))
            .field("max_batch", &self.max_batch)
            .field("max_queue", &self.max_queue)
            .field("context_length", &self.context_length)
            .field("seed", &self.seed)
            .field("prefix_cache_mib", &self.prefix_cache_mib)
            .field("draft_tokens", &self.draft_tokens)
            .field("insecure_no_token", &self.insecure_no_token)
            .finish()
    }
}

impl ServeConfig {
    /// Defaults with `model` (free loopback port, key from the environment).
    pub fn new(model: impl Into<PathBuf>) -> Self {
        Self { model: model.into(), ..Self::default() }
    }

    fn teacher(&self) -> TeacherLlmConfig {
        TeacherLlmConfig {
            model: self.model.clone(),
            context_length: self.context_length,
            prefix_cache_bytes: self.prefix_cache_mib << 20,
            max_batch: self.max_batch,
            threads: self.threads.unwrap_or_else(crate::llm::default_threads),
            gpu_layers: self.gpu_layers,
            draft_tokens: self.draft_tokens,
            ..TeacherLlmConfig::new(&self.model)
        }
    }
}

/// A server running in the background. Dropping it stops the server and the model thread.
pub struct RunningServer {
    addr: SocketAddr,
    model_id: String,
    shutdown: Option<oneshot::Sender<()>>,
    task: Option<tokio::task::JoinHandle<std::io::Result<()>>>,
}

impl RunningServer {
    /// The OpenAI base URL, e.g. `http://127.0.0.1:41234/v1`.
    pub fn base_url(&self) -> String {
        format!("http://{}/v1", self.addr)
    }

    pub fn addr(&self) -> SocketAddr {
        self.addr
    }

    /// The id to send as `"model"` (the GGUF file name without extension).
    pub fn model_id(&self) -> &str {
        &self.model_id
    }

    /// Stop accepting connections, finish in-flight responses, then return.
    pub async fn shutdown(mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            let _ = task.await;
        }
    }

    /// Serve until Ctrl-C (or the server fails), then shut down gracefully.
    pub async fn until_ctrl_c(mut self) -> Result<()> {
        let task = self.task.as_mut().expect("the task is only taken by shutdown, which consumes self");
        let served = tokio::select! {
            signal = tokio::signal::ctrl_c() => Err(signal),
            served = task => Ok(served),
        };
        match served {
            Err(signal) => {
                signal.map_err(|e| Error::Internal(format!("cannot listen for Ctrl-C: {e}")))?;
                tracing::info!("Ctrl-C: shutting down the teacher server");
                self.shutdown().await;
                Ok(())
            }
            Ok(served) => {
                self.task = None;
                match served {
                    Ok(Ok(())) => Ok(()),
                    Ok(Err(e)) => Err(Error::Internal(format!("teacher server failed: {e}"))),
                    Err(e) => Err(Error::Internal(format!("teacher server task failed: {e}"))),
                }
            }
        }
    }
}

impl Drop for RunningServer {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(task) = self.task.take() {
            task.abort();
        }
    }
}

/// Whether `host` only accepts connections from this machine (`127.0.0.0/8`, `::1`,
/// `localhost`). Any other name or address may be reachable from outside.
pub fn is_loopback_host(host: &str) -> bool {
    let host = host.trim().trim_start_matches('[').trim_end_matches(']');
    host.eq_ignore_ascii_case("localhost")
        || host.parse::<std::net::IpAddr>().is_ok_and(|ip| ip.is_loopback() || ip.to_canonical().is_loopback())
}

/// Refuse to serve the model on a non-loopback `host` without a bearer token, unless
/// `insecure_no_token` says so explicitly. `Ok(Some(warning))` when serving exposed anyway.
pub fn check_exposure(host: &str, has_api_key: bool, insecure_no_token: bool) -> Result<Option<String>> {
    if has_api_key || is_loopback_host(host) {
        return Ok(None);
    }
    if insecure_no_token {
        return Ok(Some(format!(
            "serving on {host} WITHOUT a token (--insecure-no-token): anyone who can reach this address can use \
             the model; set {API_KEY_ENV} to require one"
        )));
    }
    Err(Error::Config(format!(
        "refusing to serve on non-loopback host {host} without a token: set {API_KEY_ENV}, bind 127.0.0.1, or pass \
         --insecure-no-token (serve.insecure_no_token = true) to serve without one"
    )))
}

/// Load the model, bind the port and serve in the background. Returns once the model is
/// loaded and the port accepts requests. Refuses a non-loopback host without a token (see
/// [`check_exposure`]).
pub async fn spawn(config: ServeConfig) -> Result<RunningServer> {
    if let Some(warning) = check_exposure(&config.host, config.api_key.is_some(), config.insecure_no_token)? {
        tracing::warn!("{warning}");
    }
    let bind = format!("{}:{}", config.host, config.port);
    let listener = tokio::net::TcpListener::bind(&bind)
        .await
        .map_err(|e| Error::Config(format!("cannot bind the teacher server to {bind}: {e}")))?;
    let addr = listener.local_addr().map_err(|e| Error::Internal(format!("bound socket has no address: {e}")))?;
    let teacher = config.teacher();
    let (max_batch, max_queue) = (config.max_batch, config.max_queue);
    let backend = tokio::task::spawn_blocking(move || Backend::start(teacher, max_batch, max_queue))
        .await
        .map_err(|e| Error::Internal(format!("model loading task failed: {e}")))??;
    let model_id = backend.model_id.clone();
    tracing::info!(
        "teacher {model_id} ready at http://{addr}/v1 (context {}, max batch {max_batch})",
        backend.context_length
    );
    let state = Arc::new(AppState {
        backend,
        api_key: config.api_key.clone(),
        default_seed: config.seed,
        next_id: AtomicU64::new(0),
    });
    let (shutdown_tx, shutdown_rx) = oneshot::channel::<()>();
    let server = axum::serve(listener, http::router(state)).with_graceful_shutdown(async move {
        let _ = shutdown_rx.await;
    });
    let task = tokio::spawn(async move { server.await });
    Ok(RunningServer { addr, model_id, shutdown: Some(shutdown_tx), task: Some(task) })
}

/// Serve until Ctrl-C: `biodistill serve-teacher`.
pub async fn run(config: ServeConfig) -> Result<()> {
    tracing::info!("serve-teacher config: {config:?}");
    spawn(config).await?.until_ctrl_c().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn non_loopback_hosts_need_a_token_or_an_explicit_opt_out() {
        for host in ["127.0.0.1", "127.0.0.2", "localhost", "::1", "[::1]", "::ffff:127.0.0.1"] {
            assert!(is_loopback_host(host), "{host}");
            assert_eq!(check_exposure(host, false, false).unwrap(), None, "{host}");
        }
        for host in ["0.0.0.0", "::", "192.168.1.5", "example.org"] {
            assert!(!is_loopback_host(host), "{host}");
            let err = check_exposure(host, false, false).unwrap_err().to_string();
            assert!(err.contains(API_KEY_ENV) && err.contains("--insecure-no-token") && err.contains(host), "{err}");
            assert_eq!(check_exposure(host, true, false).unwrap(), None, "a token makes {host} fine");
            let warning = check_exposure(host, false, true).unwrap().expect("a warning");
            assert!(warning.contains("WITHOUT a token") && warning.contains(API_KEY_ENV), "{warning}");
        }
    }

    #[test]
    fn unknown_keys_are_errors_and_the_opt_out_stays_out_of_hashes() {
        assert!(toml::from_str::<ServeConfig>("prot = 1\n").is_err());
        let cfg: ServeConfig = toml::from_str("port = 9000\n").unwrap();
        assert_eq!(cfg.port, 9000);
        assert!(!toml::to_string(&cfg).unwrap().contains("insecure_no_token"));
    }
}
