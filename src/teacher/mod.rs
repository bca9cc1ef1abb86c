//! The `label` stage: ask an LLM teacher to label sentences, and keep every answer.
//!
//! **In**: `sentences` and `documents` of a run directory, prompt files
//! (`pipelines/prompts/<task>.toml`), an OpenAI-compatible endpoint (OpenAI, vLLM, llama.cpp
//! or the project's embedded server: all are just a base URL).
//! **Out**: `teacher_labels` (grounded spans and pairs) and `teacher_calls` (one row per
//! (task, sentence, pass) with its status, tokens, cost and retries), written atomically at
//! the end. Both hold the whole silver set: every cached answer for a candidate sentence,
//! plus this run's `label.budget` new ones ([`select`]), each with the run that paid for it.
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
pub mod agreement;
pub mod batch;
pub mod cache;
pub mod client;
pub mod confidence;
pub mod config;
pub mod ground;
pub mod informative;
pub mod label;
pub mod limiter;
pub mod parse;
pub mod prompt;
pub mod select;
pub mod shipped;
pub mod tables;

use std::collections::BTreeMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use futures::StreamExt;

pub use crate::error::TeacherError;
pub use accounting::{LabelPlan, LabelReport, Pricing, SilverGrowth, TaskPlan};
pub use config::{EMBEDDED, LabelConfig, Price, Selection, TeacherConfig, TeacherMode};

use crate::error::{Error, Result};
use crate::run_dir::RunDir;
use crate::schema::{self, table};
use crate::vocab::Task;
use cache::{Cache, RequestKey};
use client::{ClientSettings, TeacherClient};
use label::{Labeler, Outcome};
use prompt::Prompt;
use select::TaskSelection;

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

/// Each task's selection for this run (see [`select`]): the silver set the cache holds, this
/// run's new sentences and the dev sample. `contains` says which cache keys are stored;
/// `scorer` ranks candidates for informative selection.
pub async fn select_sentences(
    cfg: &LabelConfig,
    run_dir: &RunDir,
    prompts: &BTreeMap<Task, Prompt>,
    contains: &dyn Fn(&[RequestKey]) -> Result<Vec<bool>>,
    scorer: &mut select::Scorer<'_>,
) -> Result<BTreeMap<Task, TaskSelection>> {
    let passes = label::pass_configs(&cfg.teacher, cfg.passes, cfg.pass_temperature);
    let mut out = BTreeMap::new();
    for (task, candidates) in select::candidates(cfg, run_dir).await? {
        let keys: Vec<RequestKey> = candidates
            .train
            .iter()
            .flat_map(|s| label::sentence_keys(&passes, &prompts[&task], task, &s.text))
            .collect();
        let answered: Vec<usize> =
            contains(&keys)?.chunks(passes.len()).map(|c| c.iter().filter(|&&hit| hit).count()).collect();
        let dev_keys: Vec<RequestKey> =
            candidates.dev.iter().flat_map(|s| label::sentence_keys(&passes, &prompts[&task], task, &s.text)).collect();
        let dev_cached = contains(&dev_keys)?.iter().filter(|&&hit| hit).count();
        let mut selection = select::choose(cfg, task, candidates, &answered, scorer)?;
        selection.dev_cached = dev_cached;
        out.insert(task, selection);
    }
    Ok(out)
}

/// What a job is for: growth of the silver set is counted from these.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Role {
    Silver,
    New,
    Dev,
}

/// Every (task, sentence, pass) job of a selection: cached and dev ones first, then the new
/// ones round-robin over tasks, so a time budget that runs out is shared between tasks.
fn jobs(selected: &BTreeMap<Task, TaskSelection>, passes: usize) -> Vec<(Task, &select::Sentence, usize, Role)> {
    let mut out = Vec::new();
    for (&task, sel) in selected {
        let fixed = sel.silver.iter().map(|s| (s, Role::Silver)).chain(sel.dev.iter().map(|s| (s, Role::Dev)));
        for (s, role) in fixed {
            out.extend((0..passes).map(|p| (task, s, p, role)));
        }
    }
    let longest = selected.values().map(|s| s.new.len()).max().unwrap_or(0);
    for i in 0..longest {
        for (&task, sel) in selected {
            if let Some(s) = sel.new.get(i) {
                out.extend((0..passes).map(|p| (task, s, p, Role::New)));
            }
        }
    }
    out
}

/// Label, sending requests to `base_url` (the cache key still uses `cfg.teacher.base_url`, so
/// the embedded server's changing port does not invalidate the cache).
pub async fn run_with_endpoint(cfg: &LabelConfig, run_dir: &RunDir, base_url: &str) -> Result<LabelReport> {
    let started = Instant::now();
    let teacher = &cfg.teacher;
    cfg.validate()?;
    let prompts = load_prompts(cfg)?;
    let cache = Cache::open(&cache_path(teacher, run_dir))?;
    let shipped = match &cfg.shipped {
        Some(path) => {
            let imported = shipped::import(&cache, path, &cfg.tasks).await?;
            tracing::info!(
                "{}: {} shipped answers, {} new to the cache",
                path.display(),
                imported.keys.len(),
                imported.inserted
            );
            imported.keys
        }
        None => Default::default(),
    };
    let mut scorer = informative::scorer(run_dir);
    let used = std::cell::Cell::new(0usize);
    let contains = |keys: &[RequestKey]| {
        let hits = cache.contains(keys)?;
        used.set(used.get() + keys.iter().zip(&hits).filter(|(k, hit)| **hit && k.is_in(&shipped)).count());
        Ok(hits)
    };
    let selected = select_sentences(cfg, run_dir, &prompts, &contains, &mut scorer).await?;
    if used.get() < shipped.len() {
        tracing::warn!(
            "{} of {} shipped teacher answers match no current request (another prompt, teacher or corpus): ignored",
            shipped.len() - used.get(),
            shipped.len()
        );
    }
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
    let passes = label::pass_configs(teacher, cfg.passes, cfg.pass_temperature);
    let run_id = if cfg.run_id.is_empty() { adhoc_run_id() } else { cfg.run_id.clone() };
    let mut batcher = match teacher.mode {
        TeacherMode::Batch => Some(batch::Batcher::open(teacher, &client, &cache, run_dir, run_id.clone())?),
        TeacherMode::Online => None,
    };
    let run_id = batcher.as_ref().map_or(run_id, |b| b.run_id().to_string());
    let collector = batch::Collector::default();
    let batch_mode = batcher.is_some();
    let labeler = || {
        let mut labeler = Labeler::new(passes.clone(), run_id.clone(), &prompts, &cache, &client);
        labeler.deadline =
            (cfg.budget_minutes > 0.0).then(|| started + Duration::from_secs_f64(cfg.budget_minutes * 60.0));
        labeler.batch = batch_mode.then_some(&collector);
        labeler
    };
    let jobs = jobs(&selected, cfg.passes);
    let pricing = Pricing::of(teacher);
    let mut report = LabelReport {
        endpoint: teacher.base_url.clone(),
        model: teacher.model.clone(),
        prompt_versions: prompts.iter().map(|(t, p)| (t.to_string(), p.version.clone())).collect(),
        price_known: pricing.online.is_some(),
        silver: selected
            .iter()
            .map(|(t, sel)| {
                let growth = SilverGrowth {
                    before: sel.silver.len(),
                    asked: sel.new.len(),
                    remaining: sel.remaining,
                    policy: sel.policy.clone(),
                    too_long: sel.too_long,
                    ..Default::default()
                };
                (t.to_string(), growth)
            })
            .collect(),
        ..Default::default()
    };
    for (task, sel) in &selected {
        tracing::info!(
            "{task}: silver set {} cached, asking about {} new ({}), {} left for later runs, {} dev ({} cached)",
            sel.silver.len(),
            sel.new.len(),
            sel.policy,
            sel.remaining,
            sel.dev.len(),
            sel.dev_cached
        );
    }
    let before = report.clone();
    let mut outcomes = label_jobs(&labeler(), &jobs, &mut report, &pricing, teacher.progress).await?;
    if let Some(batcher) = batcher.as_mut() {
        // Each round labels from the cache and gathers what it lacks; a new labeler per round,
        // so answers the last batch stored count as paid here. Rounds: first asks, re-asks.
        for round in 1.. {
            if collector.is_settled() {
                break;
            }
            if round > 3 {
                return Err(Error::Internal("batch mode still gathering requests after 3 rounds".into()));
            }
            batcher.settle(&collector).await?;
            report = before.clone();
            outcomes = label_jobs(&labeler(), &jobs, &mut report, &pricing, teacher.progress).await?;
        }
    }
    if report.unsent > 0 {
        tracing::warn!(
            "label.budget_minutes = {} spent: {} new requests left for the next run",
            cfg.budget_minutes,
            report.unsent
        );
    }
    outcomes.sort_by(|a, b| (a.task, &a.doc_id, a.sent_id, a.pass).cmp(&(b.task, &b.doc_id, b.sent_id, b.pass)));
    run_dir.write_table(
        table::TEACHER_LABELS,
        schema::TEACHER_LABELS.clone(),
        &[tables::labels(&outcomes, &teacher.model)?],
    )?;
    run_dir.write_table(
        table::TEACHER_CALLS,
        schema::TEACHER_CALLS.clone(),
        &[tables::calls(&outcomes, &teacher.model, &pricing)?],
    )?;
    if let Some(batcher) = batcher {
        report.batches = Some(batcher.finish()?);
    }
    report.http_attempts = client.attempts();
    report.wall_secs = started.elapsed().as_secs_f64();
    report.finish();
    tracing::info!("{report}");
    Ok(report)
}

/// Label every job (cache, else teacher or, in batch mode, gathered for a batch), adding each
/// finished one to `report`, with a progress bar and, without a terminal, a log line per tenth.
async fn label_jobs(
    labeler: &Labeler<'_>,
    jobs: &[(Task, &select::Sentence, usize, Role)],
    report: &mut LabelReport,
    pricing: &Pricing,
    progress: bool,
) -> Result<Vec<Outcome>> {
    let started = Instant::now();
    let bar = accounting::progress_bar(jobs.len(), progress);
    // Cache hits finish at once, so keep more jobs in hand than requests in flight.
    let in_hand = (labeler.passes[0].concurrency * 4).clamp(16, 1024);
    let mut outcomes: Vec<Outcome> = Vec::with_capacity(jobs.len());
    let log_every = (jobs.len() / 10).max(1);
    let mut finished = futures::stream::iter(jobs.iter().map(|&(task, s, pass, role)| async move {
        Ok::<_, Error>(labeler.label(task, s, pass).await?.map(|o| (o, role)))
    }))
    .buffer_unordered(in_hand);
    let mut done = 0;
    while let Some(outcome) = finished.next().await {
        done += 1;
        bar.inc(1);
        let Some((outcome, role)) = outcome? else {
            report.unsent += 1;
            continue;
        };
        report.add(&outcome, pricing);
        if outcome.pass == 0 && outcome.status == label::Status::Ok {
            let growth = report.silver.entry(outcome.task.to_string()).or_default();
            match role {
                Role::Silver => growth.silver_ok += 1,
                Role::New => growth.added += 1,
                Role::Dev => {}
            }
        }
        bar.set_message(accounting::progress_message(report));
        // Without a terminal (cron, CI, logs) the bar is hidden: log every tenth instead.
        if !std::io::IsTerminal::is_terminal(&std::io::stderr()) && done % log_every == 0 {
            tracing::info!(
                "label: {done}/{} ({:.1}/s) {}",
                jobs.len(),
                done as f64 / started.elapsed().as_secs_f64().max(1e-9),
                accounting::progress_message(report)
            );
        }
        outcomes.push(outcome);
    }
    drop(finished);
    bar.finish_and_clear();
    Ok(outcomes)
}

/// The run id recorded for replies paid by a standalone `biodistill label`. Milliseconds: a
/// run that starts in the same second as the one that paid for cached replies must not count
/// them as its own (seen in a test: a finished batch's answers were not cache hits).
fn adhoc_run_id() -> String {
    format!("label-{}", chrono::Utc::now().format("%Y%m%dT%H%M%S%.3fZ"))
}

/// Estimate calls, tokens and cost without sending anything (reads the cache, read-only).
/// Informative selection is planned as random (the student is not run for a plan).
pub async fn plan(cfg: &LabelConfig, run_dir: &RunDir) -> Result<LabelPlan> {
    let teacher = &cfg.teacher;
    cfg.validate()?;
    let prompts = load_prompts(cfg)?;
    let path = cache_path(teacher, run_dir);
    let shipped = match &cfg.shipped {
        Some(file) => shipped::keys(file)?,
        None => Default::default(),
    };
    let contains = |keys: &[RequestKey]| {
        let stored = cache::stored(&path, keys)?;
        Ok(keys.iter().zip(stored).map(|(k, hit)| hit || k.is_in(&shipped)).collect())
    };
    let selected = select_sentences(cfg, run_dir, &prompts, &contains, &mut |_, _| Ok(None)).await?;
    let passes = label::pass_configs(teacher, cfg.passes, cfg.pass_temperature);
    let mut tasks = Vec::new();
    for (task, sel) in &selected {
        let prompt = &prompts[task];
        let asked: Vec<&select::Sentence> = sel.new.iter().chain(&sel.dev).collect();
        let keys: Vec<RequestKey> =
            asked.iter().flat_map(|s| label::sentence_keys(&passes, prompt, *task, &s.text)).collect();
        let stored = contains(&keys)?;
        let prompt_tokens: Vec<u64> = asked
            .iter()
            .flat_map(|s| std::iter::repeat_n(prompt::estimate_tokens(&prompt.messages(&s.text)), passes.len()))
            .collect();
        let calls = stored.iter().filter(|&&hit| !hit).count();
        let reply_tokens = prompt.typical_reply_tokens().min(u64::from(teacher.max_tokens));
        // Every request whose answer this run's tables will hold, in a fixed order.
        let mut all_keys: Vec<String> = sel
            .silver
            .iter()
            .flat_map(|s| label::sentence_keys(&passes, prompt, *task, &s.text))
            .map(|k| k.key)
            .collect();
        all_keys.extend(keys.iter().map(|k| k.key.clone()));
        all_keys.sort_unstable();
        let mut digest = <sha2::Sha256 as sha2::Digest>::new();
        for key in &all_keys {
            sha2::Digest::update(&mut digest, key.as_bytes());
        }
        tasks.push(TaskPlan {
            task: task.to_string(),
            prompt_version: prompt.version.clone(),
            sentences: sel.silver.len() + asked.len(),
            cached: sel.silver.len() * passes.len() + (keys.len() - calls),
            calls,
            silver: sel.silver.len(),
            remaining: sel.remaining,
            too_long: sel.too_long,
            requests_digest: hex::encode(&sha2::Digest::finalize(digest)[..8]),
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
        est_cost_usd: match teacher.mode {
            TeacherMode::Online => teacher.price(),
            TeacherMode::Batch => teacher.batch_price(),
        }
        .map(|p| accounting::cost(Some(p), est_prompt_tokens, est_completion_tokens)),
        est_prompt_tokens,
        est_completion_tokens,
        tasks,
    })
}
