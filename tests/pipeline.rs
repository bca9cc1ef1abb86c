//! `biodistill run` end to end on a tiny corpus: a loopback teacher (the mock server), the real
//! MiniLM student trained for a few steps, extraction, evaluation, write–audit–publish.
//! Checks incremental runs, quality gates and crash safety (`kill -9`, then rerun).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::{Duration, Instant};

use arrow::array::{Array, AsArray};
use arrow::record_batch::RecordBatch;
use biodistill::config::PipelineConfig;
use biodistill::pipeline;
use biodistill::publish;
use biodistill::run_dir::RunDir;
use biodistill::teacher::mock_server::{MockServer, always_ok};

use crate::util::{biodistill, stderr, stdout};

fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Write a JSONL corpus of `(id, text)` documents.
fn write_corpus(path: &Path, docs: &[(&str, &str)]) {
    let lines: Vec<String> =
        docs.iter().map(|(id, text)| serde_json::json!({"id": id, "text": text}).to_string()).collect();
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

const DOCS: &[(&str, &str)] = &[
    ("1", "Aspirin caused nausea. The patient recovered."),
    ("2", "Ibuprofen led to rash. Dosing was stopped."),
    ("3", "Warfarin produced bleeding in two cases."),
];

/// A pipeline file for `dir` whose teacher is `base_url`, ADE only, a few training steps.
fn pipeline_file(dir: &Path, base_url: &str, extra: &str) -> PathBuf {
    let text = format!(
        r#"
[run]
dir = "{run}"
[ingest]
corpora = []
[[ingest.user_corpora]]
path = "{corpus}"
[teacher]
base_url = "{base_url}"
model = "mock-model"
api_key_env = "NO_SUCH_KEY_FOR_TESTS"
timeout_secs = 5.0
progress = false
prompts_dir = "{prompts}"
cache_path = "{cache}"
[label]
tasks = ["ade"]
budget = 1_000_000_000
splits = ["unlabeled"]
[train]
model_dir = "{model}"
tasks = ["ade"]
epochs = 1
max_steps = 2
batch_size = 4
progress = false
[extract]
tasks = ["ade"]
progress = false
[eval]
tasks = ["ade"]
[publish]
min_rows = 0
min_alignment_rate = 0.0
{extra}
"#,
        run = dir.join("run").display(),
        corpus = dir.join("corpus.jsonl").display(),
        prompts = repo("pipelines/prompts").display(),
        cache = dir.join("cache.redb").display(),
        model = repo("models/all-MiniLM-L6-v2").display(),
    );
    let path = dir.join("pipeline.toml");
    std::fs::write(&path, text).unwrap();
    path
}

fn load(path: &Path) -> PipelineConfig {
    PipelineConfig::load(Some(path), Vec::<(String, String)>::new(), &[]).unwrap()
}

fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// Every published Parquet table, as (name -> rows rendered as text, without `run_id`).
fn published(run: &Path) -> BTreeMap<String, Vec<String>> {
    let current = publish::current(&run.join("published")).expect("a publication");
    let dir = RunDir::open(current).unwrap();
    let mut out = BTreeMap::new();
    for name in dir.tables().unwrap() {
        let mut rows = Vec::new();
        for batch in dir.read_table(&name).unwrap() {
            rows.extend(render(&batch));
        }
        rows.sort();
        out.insert(name, rows);
    }
    out
}

fn render(batch: &RecordBatch) -> Vec<String> {
    // Provenance that differs between two runs by design: run id (config path) and the run
    // that paid for an answer, cache key (endpoint URL), timings.
    let skip = ["run_id", "first_run", "cache_key", "latency_ms", "cached", "retries"];
    let keep: Vec<usize> =
        (0..batch.num_columns()).filter(|&i| !skip.contains(&batch.schema().field(i).name().as_str())).collect();
    let batch = batch.project(&keep).unwrap();
    let text = arrow::util::pretty::pretty_format_batches(&[batch]).unwrap().to_string();
    text.lines().skip(3).filter(|l| !l.starts_with('+')).map(str::to_string).collect()
}

/// A runtime, an always-answering loopback teacher, and a directory holding [`DOCS`] as
/// `corpus.jsonl`.
fn setup() -> (tokio::runtime::Runtime, MockServer, tempfile::TempDir) {
    let rt = runtime();
    let server = rt.block_on(MockServer::start(Duration::ZERO, always_ok())).unwrap();
    let tmp = tempfile::tempdir().unwrap();
    write_corpus(&tmp.path().join("corpus.jsonl"), DOCS);
    (rt, server, tmp)
}

/// [`setup`], and a pipeline over [`DOCS`].
fn fixture() -> (tokio::runtime::Runtime, MockServer, tempfile::TempDir, PipelineConfig) {
    let (rt, server, tmp) = setup();
    let cfg = load(&pipeline_file(tmp.path(), &server.base_url(), ""));
    (rt, server, tmp, cfg)
}

#[test]
fn incremental_run_labels_only_new_and_changed_documents_and_publishes_once() {
    let (rt, server, tmp, cfg) = fixture();

    let first = rt.block_on(pipeline::run(&cfg, false)).unwrap();
    assert_eq!(first.status, "published", "{first}");
    let sentences = 5; // 2 + 2 + 1
    assert_eq!(server.requests(), sentences);
    let run = tmp.path().join("run");
    let before = published(&run);
    for table in ["ade_relations", "teacher_labels", "teacher_calls", "document_versions"] {
        assert!(before.contains_key(table), "{table} not published: {:?}", before.keys());
    }

    // The same inputs again: the same run, already published; nothing is asked or rewritten.
    let again = rt.block_on(pipeline::run(&cfg, false)).unwrap();
    assert_eq!((again.status.as_str(), again.run_id.as_str()), ("already_published", first.run_id.as_str()));
    assert_eq!(server.requests(), sentences);

    // One document changed (one sentence), one added (one sentence): exactly two requests.
    let mut docs = DOCS.to_vec();
    docs[2] = ("3", "Warfarin produced bleeding in three cases.");
    docs.push(("4", "Cisplatin caused ototoxicity."));
    write_corpus(&tmp.path().join("corpus.jsonl"), &docs);
    let second = rt.block_on(pipeline::run(&cfg, false)).unwrap();
    assert_eq!(second.status, "published", "{second}");
    assert_eq!(second.manifest.changed_documents, 2);
    assert_eq!(server.requests(), sentences + 2);
    assert_eq!(server.max_successes_per_body(), 1, "a request that succeeded was sent again");
    let after = published(&run);
    assert_ne!(before, after);

    // The manifest has one row per run, queryable with SQL.
    let manifest = RunDir::open(&run).unwrap().read_table("run_manifest").unwrap();
    let statuses: Vec<String> = manifest
        .iter()
        .flat_map(|b| {
            let c = b.column_by_name("status").unwrap().as_string::<i32>().clone();
            (0..c.len()).map(move |i| c.value(i).to_string())
        })
        .collect();
    assert_eq!(statuses, ["published", "already_published", "published"]);
}

fn extracted_sentences(report: &pipeline::RunReport) -> usize {
    report.stages.iter().find(|s| s.stage == "extract").expect("an extract stage").counts["sentences"]
}

#[test]
fn widening_extract_sources_re_extracts_unchanged_documents() {
    let (rt, server, tmp) = setup();
    write_corpus(&tmp.path().join("more.jsonl"), &[("9", "Cisplatin caused ototoxicity. It resolved.")]);
    let both = format!(
        "[[ingest.user_corpora]]\npath = \"{}\"\n[extract.sources]\nade = ",
        tmp.path().join("more.jsonl").display()
    );
    let narrow = load(&pipeline_file(tmp.path(), &server.base_url(), &format!("{both}[\"corpus\"]")));
    let first = rt.block_on(pipeline::run(&narrow, false)).unwrap();
    assert_eq!((first.status.as_str(), extracted_sentences(&first)), ("published", 5), "{first}");

    // No document changed, but `more` is now in scope: its sentences (and the rest) are
    // extracted instead of the old publication's rows being carried over.
    let wide = load(&pipeline_file(tmp.path(), &server.base_url(), &format!("{both}[\"corpus\", \"more\"]")));
    let second = rt.block_on(pipeline::run(&wide, false)).unwrap();
    assert_eq!(second.status, "published", "{second}");
    assert_eq!(second.manifest.changed_documents, 0);
    assert_eq!(extracted_sentences(&second), 7, "{second}");
}

#[test]
fn a_failed_quality_gate_keeps_the_last_publication() {
    let (rt, _server, tmp, cfg) = fixture();
    let first = rt.block_on(pipeline::run(&cfg, false)).unwrap();
    let run = tmp.path().join("run");
    let live = publish::current(&run.join("published")).unwrap();
    assert!(live.ends_with(&first.run_id));

    // New input, and a gate no run can pass: nothing is published.
    write_corpus(&tmp.path().join("corpus.jsonl"), &[DOCS[0], ("9", "Heparin caused thrombocytopenia.")]);
    let strict =
        PipelineConfig { publish: publish::PublishConfig { min_rows: 1_000_000, ..cfg.publish.clone() }, ..cfg };
    let err = rt.block_on(pipeline::run(&strict, false)).unwrap_err();
    assert!(err.to_string().contains("quality gate"), "{err}");
    assert_eq!(publish::current(&run.join("published")).unwrap(), live);
}

#[test]
fn kill_9_mid_run_then_rerun_equals_an_uninterrupted_run() {
    let rt = runtime();
    // Slow answers, so the kill lands while labeling.
    let server = rt.block_on(MockServer::start(Duration::from_millis(150), always_ok())).unwrap();
    let reference = rt.block_on(MockServer::start(Duration::ZERO, always_ok())).unwrap();
    let docs: Vec<(String, String)> =
        (0..12).map(|i| (format!("{i}"), format!("Drugx{i} caused rash{i}. Patient {i} recovered."))).collect();
    let docs: Vec<(&str, &str)> = docs.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();

    let killed = tempfile::tempdir().unwrap();
    write_corpus(&killed.path().join("corpus.jsonl"), &docs);
    let file = pipeline_file(killed.path(), &server.base_url(), "");
    let file_arg = file.to_str().unwrap();
    let mut child = std::process::Command::new(env!("CARGO_BIN_EXE_biodistill"))
        .args(["run", file_arg])
        .env_remove("BIODISTILL_INGEST_DATA_DIR")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .unwrap();
    let deadline = Instant::now() + Duration::from_secs(120);
    while server.requests() < 6 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let asked_before_kill = server.requests();
    assert!((6..24).contains(&asked_before_kill), "killed after {asked_before_kill} requests");
    assert!(publish::current(&killed.path().join("run/published")).is_none(), "published before the kill");

    let out = biodistill(killed.path(), &["run", file_arg]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    // The rerun asks for what was never answered, plus at most the requests in flight at the
    // kill (concurrency 4): everything answered and stored before it is free.
    let total = docs.len() * 2;
    let rerun = server.requests() - asked_before_kill;
    assert!(rerun >= total - asked_before_kill && rerun <= total - asked_before_kill + 4, "rerun asked {rerun}");

    let clean = tempfile::tempdir().unwrap();
    write_corpus(&clean.path().join("corpus.jsonl"), &docs);
    let cfg = load(&pipeline_file(clean.path(), &reference.base_url(), ""));
    let uninterrupted = rt.block_on(pipeline::run(&cfg, false)).unwrap();
    assert_eq!(uninterrupted.status, "published");
    let (a, b) = (published(&killed.path().join("run")), published(&clean.path().join("run")));
    for name in ["ade_relations", "teacher_labels", "eval_results", "document_versions"] {
        assert_eq!(a.get(name), b.get(name), "{name} differs");
    }
}

/// Every column `name` of `run_manifest`, in order.
fn manifest_column(run: &Path, name: &str) -> Vec<String> {
    let manifest = RunDir::open(run).unwrap().read_table("run_manifest").unwrap();
    manifest
        .iter()
        .flat_map(|b| {
            let c = arrow::compute::cast(b.column_by_name(name).unwrap(), &arrow::datatypes::DataType::Utf8).unwrap();
            let c = c.as_string::<i32>().clone();
            (0..c.len()).map(move |i| c.value(i).to_string())
        })
        .collect()
}

/// A run that stops with an error after its run id is known leaves a `failed` row naming the
/// stage and the error (issue 15 #6).
#[test]
fn a_failed_run_writes_a_failed_manifest_row() {
    let (rt, _server, tmp, mut cfg) = fixture();
    cfg.train.model_dir = tmp.path().join("no-such-model");
    let err = rt.block_on(pipeline::run(&cfg, false)).unwrap_err();
    let run = tmp.path().join("run");
    assert_eq!(manifest_column(&run, "status"), ["failed"]);
    let error = &manifest_column(&run, "error")[0];
    assert!(error.starts_with("stage train: ") && error.contains(&err.to_string()), "{error} / {err}");
    assert!(publish::current(&run.join("published")).is_none());
}

/// `biodistill run` exits 1, like `ingest`, when an input file could not be read, though the
/// rest is processed and published (issue 15 #6).
#[test]
fn run_exits_1_when_an_input_file_failed_to_ingest() {
    let (_rt, server, tmp) = setup(); // the runtime keeps the server alive
    std::fs::write(tmp.path().join("broken.parquet"), b"PAR1 not really parquet").unwrap();
    let extra = format!("[[ingest.user_corpora]]\npath = \"{}\"\n", tmp.path().join("broken.parquet").display());
    let file = pipeline_file(tmp.path(), &server.base_url(), &extra);
    let out = biodistill(tmp.path(), &["run", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}\n{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("1 input files could not be read"), "{}", stdout(&out));
    let run = tmp.path().join("run");
    assert_eq!(manifest_column(&run, "status"), ["published"]);
    assert_eq!(manifest_column(&run, "failed_inputs"), ["1"]);
}
