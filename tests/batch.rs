//! `teacher.mode = "batch"` against the mock's Batch API (`crate::mock_server::batch`): the
//! same labels as online mode at the batch price, resuming a killed run's batch, expired,
//! partly failed and failed batches.

use std::collections::BTreeMap;
use std::path::Path;
use std::time::Duration;

use arrow::array::{AsArray, BooleanArray};
use arrow::datatypes::Float64Type;
use biodistill::run_dir::{RunDir, concat};
use biodistill::schema::{self, table};
use biodistill::teacher::{self, LabelConfig, Price, TeacherMode};

use crate::mock_server::batch::Fate;
use crate::mock_server::{Action, MockServer, always_ok};
use crate::teacher::{call_rows, config, numbered, run_dir_with};

const PRICE: Price = Price { input_per_mtok: 2.0, output_per_mtok: 8.0 };

/// Batch mode with fast polling and a known price.
fn batch_config(server: &MockServer, tmp: &Path) -> LabelConfig {
    let mut cfg = config(server, tmp);
    cfg.run_id = "run-1".into();
    cfg.teacher.mode = TeacherMode::Batch;
    cfg.teacher.batch_poll_secs = 0.01;
    cfg.teacher.prices = BTreeMap::from([("mock-model".to_string(), PRICE)]);
    cfg
}

/// `teacher_calls` columns `cost_usd` and `cached`.
fn costs(run: &RunDir) -> (Vec<f64>, Vec<bool>) {
    let b = concat(&schema::TEACHER_CALLS, &run.read_table(table::TEACHER_CALLS).unwrap()).unwrap();
    let cost = b.column_by_name("cost_usd").unwrap().as_primitive::<Float64Type>().values().to_vec();
    let cached = b.column_by_name("cached").unwrap().as_any().downcast_ref::<BooleanArray>().unwrap();
    (cost, cached.iter().map(Option::unwrap).collect())
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn batch_mode_labels_what_online_mode_labels_at_the_batch_price() {
    let texts = numbered(12);
    let server = MockServer::start(Duration::ZERO, always_ok()).await.unwrap();
    server.batches().set_polls_to_finish(2);
    let (online_tmp, online_run) = run_dir_with(&texts);
    let online_cfg = LabelConfig {
        teacher: teacher::TeacherConfig {
            mode: TeacherMode::Online,
            ..batch_config(&server, online_tmp.path()).teacher
        },
        ..batch_config(&server, online_tmp.path())
    };
    let online = teacher::run(&online_cfg, &online_run).await.unwrap();
    assert_eq!((online.ok, server.requests()), (12, 12), "{online}");
    server.reset_counts();

    let (tmp, run) = run_dir_with(&texts);
    let mut cfg = batch_config(&server, tmp.path());
    cfg.teacher.batch_max_requests = 5;
    let report = teacher::run(&cfg, &run).await.unwrap();
    assert_eq!(server.requests(), 0, "nothing sent online");
    assert_eq!(server.batches().sizes(), [5, 5, 2], "split at teacher.batch_max_requests");
    assert_eq!((report.ok, report.cache_misses, report.cache_hits), (12, 12, 0), "{report}");
    assert_eq!(report.batches.as_ref().unwrap().ids, ["batch_0", "batch_1", "batch_2"]);
    assert_eq!(
        run.read_table(table::TEACHER_LABELS).unwrap(),
        online_run.read_table(table::TEACHER_LABELS).unwrap(),
        "the same labels under the same cache keys"
    );
    assert!(report.cost_usd > 0.0);
    assert!((report.cost_usd - 0.5 * online.cost_usd).abs() < 1e-12, "{} vs {}", report.cost_usd, online.cost_usd);
    let (cost, cached) = costs(&run);
    assert!((cost.iter().sum::<f64>() - report.cost_usd).abs() < 1e-12);
    assert!(cached.iter().all(|c| !c), "every answer was paid by this run");

    // An online run over the same cache asks nothing and still prices those answers as batched.
    let rerun_cfg = LabelConfig {
        run_id: "run-2".into(),
        teacher: teacher::TeacherConfig { mode: TeacherMode::Online, ..cfg.teacher.clone() },
        ..cfg.clone()
    };
    let rerun = teacher::run(&rerun_cfg, &run).await.unwrap();
    assert_eq!((server.requests(), rerun.cache_hits, rerun.cost_usd), (0, 12, 0.0), "{rerun}");
    assert_eq!(costs(&run).0, cost);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_killed_run_resumes_its_batch_instead_of_paying_again() {
    let server = MockServer::start(Duration::ZERO, always_ok()).await.unwrap();
    server.batches().set_polls_to_finish(usize::MAX);
    let (tmp, run) = run_dir_with(&numbered(10));
    let mut cfg = batch_config(&server, tmp.path());
    cfg.run_id = String::new();
    // The batch never ends: the run is stopped while it polls, once the batch exists and its
    // state is saved (waiting for that, not a fixed time, keeps a loaded machine from failing it).
    let state_file = run.root().join(teacher::batch::STATE_FILE);
    let created = async {
        let deadline = std::time::Instant::now() + Duration::from_secs(120);
        while server.batches().created() == 0 || !state_file.exists() {
            assert!(std::time::Instant::now() < deadline, "no batch created within 120 s");
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    };
    tokio::select! {
        report = teacher::run(&cfg, &run) => panic!("the run ended before it was stopped: {:?}", report.map(|r| r.to_string())),
        () = created => {}
    }
    assert_eq!(server.batches().created(), 1);
    let state: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run.root().join(teacher::batch::STATE_FILE)).unwrap()).unwrap();
    assert_eq!(state["batches"][0]["id"], "batch_0");
    let run_id = state["run_id"].as_str().unwrap().to_string();

    server.batches().set_polls_to_finish(1);
    let report = teacher::run(&cfg, &run).await.unwrap();
    assert_eq!(report.ok, 10, "{report}");
    assert_eq!((server.batches().created(), server.batches().lines_run()), (1, 10), "the same batch, collected");
    assert!(report.cost_usd > 0.0, "the resumed run pays for its batch: {report}");
    let first_runs = crate::util::column_strings(run.root(), table::TEACHER_CALLS, "first_run");
    assert!(first_runs.iter().all(|r| *r == run_id), "{first_runs:?} paid by {run_id}");

    // Finished: the next run starts afresh and has nothing to send.
    let again = teacher::run(&cfg, &run).await.unwrap();
    assert_eq!((again.ok, again.cache_hits, server.batches().created()), (10, 10, 1));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn an_expired_batch_keeps_its_answers_and_sends_the_rest_once_more() {
    let server = MockServer::start(Duration::ZERO, always_ok()).await.unwrap();
    server.batches().set_fates(vec![Fate::Expire { after: 4 }]);
    let (tmp, run) = run_dir_with(&numbered(10));
    let report = teacher::run(&batch_config(&server, tmp.path()), &run).await.unwrap();
    assert_eq!(server.batches().sizes(), [10, 6], "the 6 unanswered lines sent once more");
    assert_eq!((report.ok, report.failed), (8, 2), "{report}");
    assert_eq!(report.batches.as_ref().unwrap().resubmitted, 6);
    let failed: Vec<_> = call_rows(&run).into_iter().filter(|c| c.1 == "failed").collect();
    assert_eq!(failed.len(), 2);
    for (_, _, _, error) in &failed {
        let error = error.as_deref().unwrap();
        assert!(error.contains("batch_1") && error.contains("batch_expired"), "{error}");
    }

    // Without resubmission the unanswered lines are failures at once.
    let (tmp, run) = run_dir_with(&numbered(10));
    let mut cfg = batch_config(&server, tmp.path());
    cfg.teacher.batch_resubmit_expired = false;
    let report = teacher::run(&cfg, &run).await.unwrap();
    assert_eq!((report.ok, report.failed, server.batches().created()), (4, 6, 3), "{report}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn failed_lines_are_recorded_and_the_good_ones_kept() {
    let mut texts = numbered(6);
    texts.push("BAD request for this provider".into());
    texts.push("ONCE answers badly the first time".into());
    let server = MockServer::start(
        Duration::ZERO,
        std::sync::Arc::new(|r: &crate::mock_server::Request| {
            if r.user.contains("BAD") {
                let body = r#"{"error":{"message":"max_tokens is too large for this model"}}"#.into();
                Action::Status { code: 400, retry_after: None, retry_after_ms: None, body }
            } else if r.user.contains("ONCE") {
                Action::Malformed
            } else {
                Action::Reply(r.plausible.clone())
            }
        }),
    )
    .await
    .unwrap();
    let (tmp, run) = run_dir_with(&texts);
    let cfg = batch_config(&server, tmp.path());
    let report = teacher::run(&cfg, &run).await.unwrap();
    assert_eq!(server.batches().sizes(), [8, 1], "the re-ask of the unparseable reply is a second batch");
    assert_eq!((report.ok, report.failed, report.reasks), (7, 1, 1), "{report}");
    let rows = call_rows(&run);
    let bad = rows.iter().find(|c| c.0 == "test:6").unwrap();
    assert_eq!(bad.1, "failed");
    let error = bad.3.as_deref().unwrap();
    assert!(error.contains("batch_0") && error.contains("HTTP 400") && error.contains("too large"), "{error}");

    // Failures are never cached: an online rerun against a healed server asks for that one only.
    server.set_script(always_ok());
    let online = LabelConfig {
        teacher: teacher::TeacherConfig { mode: TeacherMode::Online, ..cfg.teacher.clone() },
        ..cfg.clone()
    };
    let rerun = teacher::run(&online, &run).await.unwrap();
    assert_eq!((server.requests(), rerun.ok), (1, 8), "{rerun}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_failed_batch_stops_the_run_naming_its_id_and_the_providers_message() {
    let server = MockServer::start(Duration::ZERO, always_ok()).await.unwrap();
    server.batches().set_fates(vec![Fate::Fail("The model `mock-model` does not exist".into())]);
    let (tmp, run) = run_dir_with(&numbered(3));
    let err = teacher::run(&batch_config(&server, tmp.path()), &run).await.unwrap_err().to_string();
    assert!(err.contains("batch batch_0 failed") && err.contains("does not exist"), "{err}");
    assert!(!run.has_table(table::TEACHER_CALLS));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_batch_configuration_is_refused_before_anything_is_sent() {
    let server = MockServer::start(Duration::ZERO, always_ok()).await.unwrap();
    let (tmp, run) = run_dir_with(&numbered(2));
    let mut cfg = batch_config(&server, tmp.path());
    cfg.budget_minutes = 5.0;
    let err = teacher::run(&cfg, &run).await.unwrap_err().to_string();
    assert!(err.contains("label.budget_minutes") && err.contains("batch"), "{err}");
    cfg.budget_minutes = 0.0;
    cfg.teacher.batch_discount = 0.0;
    let err = teacher::run(&cfg, &run).await.unwrap_err().to_string();
    assert!(err.contains("teacher.batch_discount"), "{err}");
    let err = biodistill::config::PipelineConfig::load(None, [], &["teacher.mode=bulk".into()]).unwrap_err();
    assert!(err.to_string().contains("unknown variant `bulk`, expected `online` or `batch`"), "{err}");
    assert_eq!((server.requests(), server.batches().created()), (0, 0));
}
