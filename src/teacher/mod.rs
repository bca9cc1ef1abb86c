//! The `label` stage: ask an LLM teacher to label sentences, and keep every answer.
//!
//! **In**: `sentences` and `documents` of a run directory, prompt files
//! (`pipelines/prompts/<task>.toml`), an OpenAI-compatible endpoint (OpenAI, vLLM, llama.cpp
//! or the project's embedded server: all are just a base URL).
//! **Out**: `teacher_labels` (grounded spans and pairs) and `teacher_calls` (one row per
//! (task, sentence) with its status, tokens, cost and retries), written atomically at the end.
//!
//! **Reruns**: every reply is stored in the cache ([`cache`]) as it arrives, keyed on the
//! exact request. A rerun over the same input sends nothing and rewrites the same tables; a
//! killed run loses only requests in flight; a changed prompt, model or sampling parameter
//! asks again for exactly the requests it changes.
//!
//! Pipeline of one (task, sentence): [`select`] → [`prompt`] → [`label`] (cache, else
//! [`client`] with its [`limiter`]) → [`parse`] (one re-ask on failure) → [`ground`] →
//! [`tables`]; [`accounting`] keeps the totals.

pub mod accounting;
pub mod cache;
pub mod client;
pub mod config;
pub mod error;
pub mod ground;
pub mod label;
pub mod limiter;
pub mod mock_server;
pub mod parse;
pub mod phi;
pub mod prompt;
pub mod select;
pub mod tables;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::StreamExt;

pub use accounting::{LabelPlan, LabelReport, TaskPlan};
pub use config::{EMBEDDED, LabelConfig, Price, Task, TeacherConfig};
pub use error::TeacherError;
pub use phi::PhiType;

use crate::error::{Error, Result};
use crate::run_dir::RunDir;
use crate::schema::{self, table};
use cache::Cache;
use client::{ClientSettings, TeacherClient};
use label::{Labeler, Outcome};
use prompt::Prompt;

/// Where the cache lives: `teacher.cache_path`, else `teacher_cache.redb` in the run directory.
pub fn cache_path(cfg: &TeacherConfig, run_dir: &RunDir) -> PathBuf {
    cfg.cache_path.clone().unwrap_or_else(|| run_dir.root().join("teacher_cache.redb"))
}

/// Load and check the prompt of every task (few-shot examples are checked here, before any
/// call).
pub fn load_prompts(cfg: &LabelConfig) -> Result<BTreeMap<Task, Prompt>> {
    cfg.tasks.iter().map(|&task| Ok((task, Prompt::load(&cfg.teacher.prompts_dir, task)?))).collect()
}

/// Label with the configured endpoint. `base_url = "embedded"` needs the embedded server's
/// URL: start it and call [`run_with_endpoint`].
pub async fn run(cfg: &LabelConfig, run_dir: &RunDir) -> Result<LabelReport> {
    if cfg.teacher.base_url == EMBEDDED {
        return Err(Error::Config(
            "teacher.base_url = \"embedded\" needs the embedded teacher server to be started first; \
             or set teacher.base_url to an OpenAI-compatible URL such as http://localhost:8000/v1"
                .into(),
        ));
    }
    let base_url = cfg.teacher.base_url.clone();
    run_with_endpoint(cfg, run_dir, &base_url).await
}

/// Label with the configured endpoint; for `"embedded"`, start the project's own server
/// (`serve`) on a free loopback port, label through it like any endpoint, and stop it at the
/// end, on error, or on Ctrl-C (the server is dropped with the future).
pub async fn run_embedded_or_remote(
    cfg: &LabelConfig,
    serve: &crate::serve::ServeConfig,
    run_dir: &RunDir,
) -> Result<LabelReport> {
    if cfg.teacher.base_url != EMBEDDED {
        return run(cfg, run_dir).await;
    }
    cfg.teacher.validate()?;
    let serve = crate::serve::ServeConfig { host: "127.0.0.1".into(), port: 0, ..serve.clone() };
    tracing::info!("starting the embedded teacher {}", serve.model.display());
    let server = crate::serve::spawn(serve).await?;
    // The embedded server answers to its GGUF file name; the cache key keeps "embedded" as
    // the endpoint, so the changing port never invalidates it.
    let cfg = LabelConfig {
        teacher: TeacherConfig { model: server.model_id().to_string(), ..cfg.teacher.clone() },
        ..cfg.clone()
    };
    let base_url = server.base_url();
    let labeled = tokio::select! {
        r = run_with_endpoint(&cfg, run_dir, &base_url) => r,
        _ = tokio::signal::ctrl_c() => Err(Error::Interrupted),
    };
    server.shutdown().await;
    labeled
}

/// Label, sending requests to `base_url` (the cache key still uses `cfg.teacher.base_url`, so
/// the embedded server's changing port does not invalidate the cache).
pub async fn run_with_endpoint(cfg: &LabelConfig, run_dir: &RunDir, base_url: &str) -> Result<LabelReport> {
    let started = Instant::now();
    let teacher = &cfg.teacher;
    teacher.validate()?;
    let prompts = load_prompts(cfg)?;
    let selected = select::select(cfg, run_dir)?;
    let cache = Cache::open(&cache_path(teacher, run_dir))?;
    let client = TeacherClient::new(
        base_url,
        teacher.api_key(),
        ClientSettings {
            concurrency: teacher.concurrency,
            rpm: teacher.rpm,
            tpm: teacher.tpm,
            max_retries: teacher.max_retries,
            timeout: Duration::from_secs_f64(teacher.timeout_secs),
            backoff_base: Duration::from_millis(teacher.backoff_base_ms),
            backoff_max: Duration::from_millis(teacher.backoff_max_ms),
        },
    );
    let labeler = Labeler::new(teacher, &prompts, &cache, &client);
    let jobs: Vec<(Task, &select::Sentence)> =
        selected.iter().flat_map(|(&task, sentences)| sentences.iter().map(move |s| (task, s))).collect();
    let price = teacher.price();
    let mut report = LabelReport {
        endpoint: teacher.base_url.clone(),
        model: teacher.model.clone(),
        prompt_versions: prompts.iter().map(|(t, p)| (t.to_string(), p.version.clone())).collect(),
        price_known: price.is_some(),
        ..Default::default()
    };
    let bar = accounting::progress_bar(jobs.len(), teacher.progress);
    // Cache hits finish at once, so keep more jobs in hand than requests in flight.
    let in_hand = (teacher.concurrency * 4).clamp(16, 1024);
    let mut outcomes: Vec<Outcome> = Vec::with_capacity(jobs.len());
    let log_every = (jobs.len() / 10).max(1);
    let mut finished =
        futures::stream::iter(jobs.iter().map(|&(task, s)| labeler.label(task, s))).buffer_unordered(in_hand);
    while let Some(outcome) = finished.next().await {
        let outcome = outcome?;
        report.add(&outcome, price);
        bar.inc(1);
        bar.set_message(accounting::progress_message(&report));
        // Without a terminal (cron, CI, logs) the bar is hidden: log every tenth instead.
        if !std::io::IsTerminal::is_terminal(&std::io::stderr()) && report.inputs % log_every == 0 {
            tracing::info!(
                "label: {}/{} ({:.1}/s) {}",
                report.inputs,
                jobs.len(),
                report.inputs as f64 / started.elapsed().as_secs_f64().max(1e-9),
                accounting::progress_message(&report)
            );
        }
        outcomes.push(outcome);
    }
    drop(finished);
    bar.finish_and_clear();
    outcomes.sort_by(|a, b| (a.task, &a.doc_id, a.sent_id).cmp(&(b.task, &b.doc_id, b.sent_id)));
    run_dir.write_table(
        table::TEACHER_LABELS,
        schema::TEACHER_LABELS.clone(),
        &[tables::labels(&outcomes, &teacher.model)?],
    )?;
    run_dir.write_table(
        table::TEACHER_CALLS,
        schema::TEACHER_CALLS.clone(),
        &[tables::calls(&outcomes, &teacher.model, price)?],
    )?;
    report.http_attempts = client.attempts();
    report.wall_secs = started.elapsed().as_secs_f64();
    report.finish();
    tracing::info!("{report}");
    Ok(report)
}

/// Estimate calls, tokens and cost without sending anything (reads the cache, read-only).
pub fn plan(cfg: &LabelConfig, run_dir: &RunDir) -> Result<LabelPlan> {
    let teacher = &cfg.teacher;
    teacher.validate()?;
    let prompts = load_prompts(cfg)?;
    let selected = select::select(cfg, run_dir)?;
    let path = cache_path(teacher, run_dir);
    let mut tasks = Vec::new();
    for (task, sentences) in &selected {
        let prompt = &prompts[task];
        let mut keys = Vec::with_capacity(sentences.len());
        let mut prompt_tokens = Vec::with_capacity(sentences.len());
        for s in sentences {
            let messages = prompt.messages(&s.text);
            keys.push(label::request_key(teacher, &label::build_request(teacher, *task, &messages, &s.text)));
            prompt_tokens.push(prompt::estimate_tokens(&messages));
        }
        let stored = cache::stored(&path, &keys)?;
        let calls = stored.iter().filter(|&&hit| !hit).count();
        let reply_tokens = prompt.typical_reply_tokens().min(u64::from(teacher.max_tokens));
        tasks.push(TaskPlan {
            task: task.to_string(),
            prompt_version: prompt.version.clone(),
            sentences: sentences.len(),
            cached: sentences.len() - calls,
            calls,
            est_prompt_tokens: prompt_tokens.iter().zip(&stored).filter(|(_, hit)| !**hit).map(|(t, _)| t).sum(),
            est_completion_tokens: reply_tokens * calls as u64,
        });
    }
    let est_prompt_tokens = tasks.iter().map(|t| t.est_prompt_tokens).sum();
    let est_completion_tokens = tasks.iter().map(|t| t.est_completion_tokens).sum();
    Ok(LabelPlan {
        endpoint: teacher.base_url.clone(),
        model: teacher.model.clone(),
        calls: tasks.iter().map(|t| t.calls).sum(),
        est_cost_usd: teacher.price().map(|p| accounting::cost(Some(p), est_prompt_tokens, est_completion_tokens)),
        est_prompt_tokens,
        est_completion_tokens,
        tasks,
    })
}
