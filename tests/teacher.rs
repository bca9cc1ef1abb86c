//! The label stage against a loopback OpenAI-compatible server that injects faults and counts
//! requests from its side (`crate::mock_server`).

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use crate::mock_server::{Action, MockServer, Request, Script, always_ok, write_inputs};
use arrow::array::{Array, AsArray, RecordBatch};
use arrow::datatypes::Int32Type;
use biodistill::run_dir::{RunDir, concat};
use biodistill::schema::{self, table};
use biodistill::teacher::{self, LabelConfig, TeacherConfig};
use biodistill::vocab::Task;

/// A run directory holding one sentence per text.
pub(crate) fn run_dir_with(texts: &[String]) -> (tempfile::TempDir, RunDir) {
    let tmp = tempfile::tempdir().unwrap();
    let run = RunDir::create(tmp.path().join("run")).unwrap();
    write_inputs(&run, texts).unwrap();
    (tmp, run)
}

pub(crate) fn numbered(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("Drug{i} caused a severe rash{i} in the patient")).collect()
}

fn prompts_dir() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/prompts")
}

/// Fast settings: short timeouts and backoff so each test stays well under a few seconds.
pub(crate) fn config(server: &MockServer, tmp: &Path) -> LabelConfig {
    LabelConfig {
        teacher: TeacherConfig {
            base_url: server.base_url(),
            model: "mock-model".into(),
            api_key_env: "BIODISTILL_TEST_NO_SUCH_KEY".into(),
            concurrency: 8,
            max_retries: 3,
            timeout_secs: 2.0,
            backoff_base_ms: 1,
            backoff_max_ms: 10,
            cache_path: Some(tmp.join("cache.redb")),
            prompts_dir: prompts_dir(),
            progress: false,
            ..Default::default()
        },
        tasks: vec![Task::Ade],
        budget: 1_000,
        ..Default::default()
    }
}

fn calls(run: &RunDir) -> RecordBatch {
    concat(&schema::TEACHER_CALLS, &run.read_table(table::TEACHER_CALLS).unwrap()).unwrap()
}

/// (doc_id, status, retries, error) of every call row.
pub(crate) fn call_rows(run: &RunDir) -> Vec<(String, String, i32, Option<String>)> {
    let b = calls(run);
    let col = |name: &str| b.column_by_name(name).unwrap().as_string::<i32>().clone();
    let (doc, status, error) = (col("doc_id"), col("status"), col("error"));
    let retries = b.column_by_name("retries").unwrap().as_primitive::<Int32Type>().clone();
    (0..b.num_rows())
        .map(|i| {
            let err = (!error.is_null(i)).then(|| error.value(i).to_string());
            (doc.value(i).to_string(), status.value(i).to_string(), retries.value(i), err)
        })
        .collect()
}

fn script(f: impl Fn(&Request) -> Action + Send + Sync + 'static) -> Script {
    Arc::new(f)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn concurrency_never_exceeds_the_limit() {
    let server = MockServer::start(Duration::from_millis(25), always_ok()).await.unwrap();
    let (tmp, run) = run_dir_with(&numbered(48));
    let mut cfg = config(&server, tmp.path());
    cfg.teacher.concurrency = 4;
    let report = teacher::run(&cfg, &run).await.unwrap();
    assert_eq!(report.ok, 48, "{report}");
    assert_eq!(server.requests(), 48);
    let max = server.max_in_flight();
    assert!(max <= 4, "server saw {max} requests at once with concurrency 4");
    assert!(max >= 3, "the limit is used, not just respected: {max}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_429_with_retry_after_is_honoured() {
    let server = MockServer::start(
        Duration::ZERO,
        script(|r| {
            if r.seen_before == 0 {
                Action::Status { code: 429, retry_after: Some("1".into()), retry_after_ms: None, body: "{}".into() }
            } else {
                Action::Reply(r.plausible.clone())
            }
        }),
    )
    .await
    .unwrap();
    let (tmp, run) = run_dir_with(&numbered(1));
    let report = teacher::run(&config(&server, tmp.path()), &run).await.unwrap();
    assert_eq!((report.ok, report.retries), (1, 1), "{report}");
    let log = server.log();
    assert_eq!(log.iter().map(|l| l.2).collect::<Vec<_>>(), vec![429, 200]);
    let waited = log[1].0 - log[0].0;
    assert!(
        waited >= Duration::from_secs(1),
        "retried after {waited:?}, Retry-After said 1 s (backoff alone is <10 ms)"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn server_errors_and_timeouts_are_retried_then_recorded_as_failures_not_cached() {
    let texts = vec![
        "FAIL500 aspirin caused rash".to_string(),
        "HANG ibuprofen caused ulcer".into(),
        "Fine drug caused fever".into(),
    ];
    let server = MockServer::start(
        Duration::ZERO,
        script(|r| {
            if r.user.contains("FAIL500") {
                Action::Status { code: 500, retry_after: None, retry_after_ms: None, body: "boom".into() }
            } else if r.user.contains("HANG") {
                Action::Hang(Duration::from_secs(3))
            } else {
                Action::Reply(r.plausible.clone())
            }
        }),
    )
    .await
    .unwrap();
    let (tmp, run) = run_dir_with(&texts);
    let mut cfg = config(&server, tmp.path());
    cfg.teacher.max_retries = 2;
    cfg.teacher.timeout_secs = 0.2;
    let report = teacher::run(&cfg, &run).await.unwrap();
    assert_eq!((report.ok, report.failed), (1, 2), "{report}");
    assert_eq!(server.requests(), 3 + 3 + 1, "each failing input tried 1 + max_retries times");
    let rows = call_rows(&run);
    let fail500 = &rows[0];
    assert_eq!((fail500.1.as_str(), fail500.2), ("failed", 2));
    assert!(fail500.3.as_deref().unwrap().contains("HTTP 500"), "{fail500:?}");
    let hang = &rows[1];
    assert_eq!((hang.1.as_str(), hang.2), ("failed", 2));
    assert!(hang.3.as_deref().unwrap().contains("no answer within"), "{hang:?}");
    assert_eq!(rows[2].1, "ok");

    // Failures were not cached: a rerun against a healed server asks for exactly those two.
    server.set_script(always_ok());
    server.reset_counts();
    let report = teacher::run(&cfg, &run).await.unwrap();
    assert_eq!(server.requests(), 2);
    assert_eq!((report.ok, report.cache_hits), (3, 1), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_reply_cut_at_max_tokens_is_not_reasked() {
    let texts = vec!["CUT runs out of tokens".to_string(), "Plain answers well".into()];
    let server = MockServer::start(
        Duration::ZERO,
        script(|r| if r.user.contains("CUT") { Action::Truncated } else { Action::Reply(r.plausible.clone()) }),
    )
    .await
    .unwrap();
    let (tmp, run) = run_dir_with(&texts);
    let report = teacher::run(&config(&server, tmp.path()), &run).await.unwrap();
    assert_eq!((report.ok, report.parse_errors, report.reasks), (1, 1, 0), "{report}");
    assert_eq!(server.requests(), 2, "a re-ask with the same budget would be cut again");
    let cut = &call_rows(&run)[0];
    assert_eq!(cut.1, "parse_error");
    assert!(cut.3.as_deref().unwrap().contains("max_tokens"), "{cut:?}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn malformed_json_is_reasked_once_then_counted() {
    let texts = vec![
        "GARBAGE always answers badly".to_string(),
        "ONCE answers badly the first time".into(),
        "FENCE wraps its JSON".into(),
        "Plain answers well".into(),
    ];
    let server = MockServer::start(
        Duration::ZERO,
        script(|r| {
            let reask = r.user.starts_with("Your reply could not be used");
            if r.conversation.contains("GARBAGE") || r.user.contains("ONCE") {
                Action::Malformed
            } else if reask {
                Action::Reply(r#"{"drugs":[]}"#.into())
            } else if r.user.contains("FENCE") {
                Action::Reply(format!("```json\n{}\n```", r.plausible))
            } else {
                Action::Reply(r.plausible.clone())
            }
        }),
    )
    .await
    .unwrap();
    let (tmp, run) = run_dir_with(&texts);
    let cfg = config(&server, tmp.path());
    let report = teacher::run(&cfg, &run).await.unwrap();
    assert_eq!((report.ok, report.parse_errors, report.reasks, report.fenced), (3, 1, 2, 1), "{report}");
    assert_eq!(server.requests(), 2 + 2 + 1 + 1, "one re-ask each for GARBAGE and ONCE, no more");
    let garbage = &call_rows(&run)[0];
    assert_eq!(garbage.1, "parse_error");
    assert!(garbage.3.as_deref().unwrap().contains("unparseable"), "{garbage:?}");

    // Replies are cached raw and parsed on read: the rerun asks nothing and ends the same.
    server.reset_counts();
    let again = teacher::run(&cfg, &run).await.unwrap();
    assert_eq!(server.requests(), 0);
    assert_eq!((again.ok, again.parse_errors, again.fenced), (3, 1, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn rerun_asks_nothing_and_a_one_character_prompt_change_asks_everything() {
    let server = MockServer::start(Duration::ZERO, always_ok()).await.unwrap();
    let (tmp, run) = run_dir_with(&numbered(30));
    let mut cfg = config(&server, tmp.path());

    let plan = teacher::plan(&cfg, &run).await.unwrap();
    assert_eq!((plan.calls, plan.tasks[0].cached), (30, 0), "{plan}");
    assert!(plan.est_prompt_tokens > 0 && plan.est_cost_usd.is_none());
    assert_eq!(server.requests(), 0, "planning sends nothing");

    let first = teacher::run(&cfg, &run).await.unwrap();
    assert_eq!((first.ok, first.cache_misses, server.requests()), (30, 30, 30), "{first}");
    let labels = run.read_table(table::TEACHER_LABELS).unwrap();

    server.reset_counts();
    let second = teacher::run(&cfg, &run).await.unwrap();
    assert_eq!(server.requests(), 0, "a rerun over the same input sends nothing");
    assert_eq!((second.ok, second.cache_hits, second.cost_usd), (30, 30, 0.0));
    assert_eq!(run.read_table(table::TEACHER_LABELS).unwrap(), labels, "same tables from the cache");
    assert_eq!(teacher::plan(&cfg, &run).await.unwrap().calls, 0);

    // One character of the system prompt changes every request's key.
    let edited = tmp.path().join("prompts");
    std::fs::create_dir_all(&edited).unwrap();
    let original = std::fs::read_to_string(prompts_dir().join("ade.toml")).unwrap();
    let changed = original.replacen("You extract", "You Extract", 1);
    assert_ne!(changed, original);
    std::fs::write(edited.join("ade.toml"), changed).unwrap();
    cfg.teacher.prompts_dir = edited;
    server.reset_counts();
    let third = teacher::run(&cfg, &run).await.unwrap();
    assert_eq!((server.requests(), third.cache_misses), (30, 30));
    assert_ne!(third.prompt_versions["ade"], first.prompt_versions["ade"]);
    assert_eq!(third.silver["ade"].before, 0, "a changed prompt starts a new silver set");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_sentence_longer_than_the_cap_is_never_sent_and_is_counted() {
    let server = MockServer::start(Duration::ZERO, always_ok()).await.unwrap();
    let mut texts = numbered(3);
    texts.push(format!("Aspirin caused nausea {}", "and more ".repeat(300)));
    let (tmp, run) = run_dir_with(&texts);
    let cfg = LabelConfig { max_sentence_chars: 2000, ..config(&server, tmp.path()) };
    let plan = teacher::plan(&cfg, &run).await.unwrap();
    assert_eq!((plan.calls, plan.tasks[0].too_long), (3, 1), "{plan}");
    assert!(plan.to_string().contains("1 too long to send (label.max_sentence_chars)"), "{plan}");
    let report = teacher::run(&cfg, &run).await.unwrap();
    assert_eq!((server.requests(), report.silver["ade"].too_long), (3, 1), "{report}");
    assert!(report.to_string().contains("1 too long to send"), "{report}");
    // Without the cap it is sent like any other.
    let uncapped = LabelConfig { max_sentence_chars: 0, ..cfg };
    assert_eq!(teacher::plan(&uncapped, &run).await.unwrap().calls, 1);
}

/// `first_run` of every `teacher_calls` row, counted.
fn first_runs(run: &RunDir) -> std::collections::BTreeMap<String, usize> {
    let b = calls(run);
    let col = b.column_by_name("first_run").unwrap().as_string::<i32>().clone();
    let mut out = std::collections::BTreeMap::new();
    for i in 0..b.num_rows() {
        *out.entry(col.value(i).to_string()).or_default() += 1;
    }
    out
}

/// Nightly runs on an unchanged corpus: each sends exactly `label.budget` requests and grows
/// the silver set by that, until the candidates run out; the tables hold the whole set, each
/// answer with the run that paid for it.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_silver_set_grows_by_the_budget_each_run() {
    let server = MockServer::start(Duration::ZERO, always_ok()).await.unwrap();
    let (tmp, run) = run_dir_with(&numbered(25));
    let mut cfg = config(&server, tmp.path());
    cfg.budget = 10;
    let mut grown = Vec::new();
    for night in ["night1", "night2", "night3", "night4"] {
        cfg.run_id = night.into();
        server.reset_counts();
        let report = teacher::run(&cfg, &run).await.unwrap();
        let g = &report.silver["ade"];
        grown.push((server.requests(), g.before, g.added, g.after(), g.remaining));
        assert_eq!(calls(&run).num_rows(), g.after(), "teacher_calls is the whole silver set");
    }
    assert_eq!(grown, [(10, 0, 10, 10, 15), (10, 10, 10, 20, 5), (5, 20, 5, 25, 0), (0, 25, 0, 25, 0)]);
    let expected: std::collections::BTreeMap<String, usize> =
        [("night1", 10), ("night2", 10), ("night3", 5)].map(|(r, n)| (r.to_string(), n)).into();
    assert_eq!(first_runs(&run), expected);
    assert_eq!(server.max_successes_per_body(), 1, "nothing asked twice");
}

/// `label.passes = 2` asks each new sentence twice (a second, sampled request) and records
/// the pass; the silver set counts sentences, not passes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn passes_ask_each_new_sentence_once_per_pass() {
    let server = MockServer::start(Duration::ZERO, always_ok()).await.unwrap();
    let (tmp, run) = run_dir_with(&numbered(12));
    let mut cfg = config(&server, tmp.path());
    cfg.budget = 5;
    cfg.passes = 2;
    let report = teacher::run(&cfg, &run).await.unwrap();
    assert_eq!((server.requests(), report.silver["ade"].after()), (10, 5), "{report}");
    let b = calls(&run);
    let pass = b.column_by_name("pass").unwrap().as_primitive::<Int32Type>();
    assert_eq!((0..b.num_rows()).filter(|&i| pass.value(i) == 1).count(), 5);
    // Pass 0 is the configured request: back to one pass, those answers are the silver set.
    cfg.passes = 1;
    server.reset_counts();
    let one = teacher::run(&cfg, &run).await.unwrap();
    assert_eq!((server.requests(), one.silver["ade"].before), (5, 5));
}

/// `label.budget_minutes` spent: nothing more is sent, cached answers still count, and the
/// report says how many requests wait for the next run.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_spent_time_budget_sends_nothing_more() {
    let server = MockServer::start(Duration::ZERO, always_ok()).await.unwrap();
    let (tmp, run) = run_dir_with(&numbered(8));
    let mut cfg = config(&server, tmp.path());
    cfg.budget = 3;
    teacher::run(&cfg, &run).await.unwrap();
    server.reset_counts();
    // A deadline a nanosecond after the start has passed before the first request.
    cfg.budget_minutes = 1e-12;
    let report = teacher::run(&cfg, &run).await.unwrap();
    assert_eq!((server.requests(), report.unsent, report.silver["ade"].after()), (0, 3, 3), "{report}");
    assert_eq!(calls(&run).num_rows(), 3);
}

/// Two passes and `train.filters.require_agreement`: a label stays only when both answering
/// passes gave it (and with `per_pass_examples`, each pass is an example). Pass 1 agrees on even-numbered sentences and names another event on odd
/// ones, so each odd sentence loses its two events and both pairs (4 labels) and keeps the drug.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn agreement_between_passes_keeps_what_both_said() {
    use biodistill::train::data::{SilverFilters, silver};
    let server = MockServer::start(Duration::ZERO, always_ok()).await.unwrap();
    let (tmp, run) = run_dir_with(&numbered(4));
    let mut cfg = config(&server, tmp.path());
    teacher::run(&cfg, &run).await.unwrap();
    // Only pass 1 is asked now (pass 0 is cached): it disagrees on odd sentences.
    server.set_script(script(|r| {
        let i: usize = r
            .user
            .split("Drug")
            .nth(1)
            .unwrap()
            .chars()
            .take_while(char::is_ascii_digit)
            .collect::<String>()
            .parse()
            .unwrap();
        if i % 2 == 0 {
            Action::Reply(r.plausible.clone())
        } else {
            Action::Reply(format!(r#"{{"drugs":[{{"drug":"Drug{i}","adverse_events":["rash{i}"]}}]}}"#))
        }
    }));
    server.reset_counts();
    cfg.passes = 2;
    teacher::run(&cfg, &run).await.unwrap();
    assert_eq!(server.requests(), 4, "one request per sentence for pass 1");
    let pairs = |agree: bool| {
        let filters = SilverFilters { require_agreement: agree, ..Default::default() };
        let (sentences, stats) = silver(&run, Task::Ade, &filters).unwrap();
        (sentences.iter().map(|s| s.pairs.len()).sum::<usize>(), stats.dropped_disagreement)
    };
    assert_eq!(pairs(false), (6, 0), "2 agreeing sentences x 1 pair + 2 disagreeing x 2 pairs");
    assert_eq!(pairs(true), (2, 8), "the agreeing pairs; 4 labels dropped per odd sentence");
    // One example per pass: each sentence twice, each time with one pass's single pair, so an
    // agreed pair is a target in both examples and a disputed one in one of two.
    let filters = SilverFilters { per_pass_examples: true, ..Default::default() };
    let (examples, _) = silver(&run, Task::Ade, &filters).unwrap();
    assert_eq!(examples.len(), 8);
    assert!(examples.iter().all(|e| e.pairs.len() == 1));
    let differing = examples.chunks(2).filter(|two| two[0].pairs != two[1].pairs).count();
    assert_eq!(differing, 2, "the odd sentences' passes disagree");
    // Evaluation's teacher_agreed system scores the same labels training keeps.
    use biodistill::eval::systems;
    let tables = biodistill::eval::load::Tables::open(&run).await.unwrap();
    let calls = systems::teacher_calls(&tables).await.unwrap().unwrap();
    let labels = systems::teacher_labels(&tables).await.unwrap().unwrap();
    let agreed = systems::agreed_labels(&labels, "ade", &calls["ade"]).unwrap();
    let ok = calls["ade"].ok.clone();
    assert_eq!(systems::teacher_pairs(&agreed, "ade", &ok).len(), 2);
    assert_eq!(systems::teacher_pairs(&labels, "ade", &ok).len(), 4, "the teacher system is pass 0 alone");
}

/// Raising `max_tokens` after a run whose replies were partly cut at the budget sends again
/// exactly the cut ones: completed replies stay answers (the budget is not in the cache key),
/// and the re-asked sentences are labeled this time.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn raising_max_tokens_re_asks_only_the_replies_that_were_cut() {
    let budget = Arc::new(std::sync::atomic::AtomicU32::new(64));
    let server_budget = Arc::clone(&budget);
    let server = MockServer::start(
        Duration::ZERO,
        script(move |r| {
            // Replies to sentences 0-2 need more than the first budget.
            let long = ["Drug0 ", "Drug1 ", "Drug2 "].iter().any(|d| r.user.contains(d));
            if long && server_budget.load(std::sync::atomic::Ordering::SeqCst) < 128 {
                Action::Truncated
            } else {
                Action::Reply(r.plausible.clone())
            }
        }),
    )
    .await
    .unwrap();
    let (tmp, run) = run_dir_with(&numbered(10));
    let mut cfg = config(&server, tmp.path());
    cfg.teacher.max_tokens = 64;
    let first = teacher::run(&cfg, &run).await.unwrap();
    assert_eq!((first.ok, server.requests()), (7, 10), "{first}");
    assert_eq!(call_rows(&run).iter().filter(|c| c.1 == "parse_error").count(), 3);

    budget.store(128, std::sync::atomic::Ordering::SeqCst);
    cfg.teacher.max_tokens = 128;
    let plan = teacher::plan(&cfg, &run).await.unwrap();
    assert_eq!(plan.calls, 3, "the plan counts the cut replies, and only them: {plan:?}");
    let second = teacher::run(&cfg, &run).await.unwrap();
    assert_eq!(server.requests(), 13, "only the 3 cut replies were asked again: {second}");
    assert_eq!(second.ok, 10, "{second}");
    assert!(call_rows(&run).iter().all(|c| c.1 == "ok"));

    // Lowering it again below what the completed replies used is a new question for each.
    cfg.teacher.max_tokens = 1;
    assert_eq!(teacher::plan(&cfg, &run).await.unwrap().calls, 10);
}
