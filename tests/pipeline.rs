//! `biodistill run` end to end on a tiny corpus: a loopback teacher (the mock server), the real
//! MiniLM student, extraction, evaluation, write–audit–publish. Checks incremental runs
//! (labeling and extraction) and quality gates; `tests/crash.rs` checks `kill -9`.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

use crate::mock_server::{MockServer, always_ok};
use arrow::array::AsArray;
use arrow::record_batch::RecordBatch;
use biodistill::config::PipelineConfig;
use biodistill::pipeline;
use biodistill::publish;
use biodistill::run_dir::RunDir;

use crate::util::{biodistill, column_strings, stderr, stdout};

pub fn repo(path: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join(path)
}

/// Write a JSONL corpus of `(id, text)` documents.
pub fn write_corpus(path: &Path, docs: &[(&str, &str)]) {
    let lines: Vec<String> =
        docs.iter().map(|(id, text)| serde_json::json!({"id": id, "text": text}).to_string()).collect();
    std::fs::write(path, lines.join("\n") + "\n").unwrap();
}

const DOCS: &[(&str, &str)] = &[
    ("1", "Aspirin caused nausea. The patient recovered."),
    ("2", "Ibuprofen led to rash. Dosing was stopped."),
    ("3", "Warfarin produced bleeding in two cases."),
];

/// What a test pipeline runs besides its corpus and teacher: the tasks, the `[train]` keys and
/// the `[ingest]` keys (besides the corpus).
#[derive(Clone, Copy)]
pub struct Setup<'a> {
    pub tasks: &'a str,
    pub train: &'a str,
    pub ingest: &'a str,
}

/// ADE only, two training steps: every stage runs, but the student tags nothing.
pub const QUICK: Setup =
    Setup { tasks: r#"["ade"]"#, train: "epochs = 1\nmax_steps = 2\nbatch_size = 4", ingest: "corpora = []" };

/// ADE and PHI students that tag. The mock teacher labels each sentence's first word (drug,
/// name) and last word (event); tests/student.rs's settings (batch 8, lr 1e-3, no dev split)
/// learn that in 30 steps, so the student tables are not empty.
pub const TAGGING: Setup = Setup {
    tasks: r#"["ade", "phi"]"#,
    train: "epochs = 100\nmax_steps = 30\nbatch_size = 8\nlr = 1e-3\ndev_fraction = 0.0\ncalibrate = \"off\"",
    ingest: "corpora = []",
};

/// A pipeline file for `dir` (corpus `dir/corpus.jsonl`, run `dir/run`) whose teacher is
/// `base_url`; `extra` is appended (new sections only).
pub fn pipeline_file(dir: &Path, base_url: &str, setup: Setup, extra: &str) -> PathBuf {
    let Setup { tasks, train, ingest } = setup;
    let text = format!(
        r#"
[run]
dir = "{run}"
[ingest]
{ingest}
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
tasks = {tasks}
budget = 1_000_000_000
splits = ["unlabeled"]
[train]
model_dir = "{model}"
tasks = {tasks}
progress = false
{train}
[extract]
tasks = {tasks}
progress = false
[eval]
tasks = {tasks}
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

pub fn load(path: &Path) -> PipelineConfig {
    PipelineConfig::load(Some(path), Vec::<(String, String)>::new(), &[]).unwrap()
}

pub fn runtime() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap()
}

/// Every published Parquet table, as (name -> rows rendered as text, without `run_id`).
pub fn published(run: &Path) -> BTreeMap<String, Vec<String>> {
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
    let cfg = load(&pipeline_file(tmp.path(), &server.base_url(), QUICK, ""));
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

    // The manifest has one row per run.
    assert_eq!(manifest_column(&run, "status"), ["published", "already_published", "published"]);
}

fn extracted_sentences(report: &pipeline::RunReport) -> usize {
    report.stages.iter().find(|s| s.stage == "extract").expect("an extract stage").counts["sentences"]
}

/// `(doc_id, run_id, the row without run_id)` of every row of the live publication's `table`.
fn published_rows(run: &Path, table: &str) -> Vec<(String, String, String)> {
    let current = RunDir::open(publish::current(&run.join("published")).expect("a publication")).unwrap();
    let mut out = Vec::new();
    for batch in current.read_table(table).unwrap() {
        let (docs, runs) = (batch.column_by_name("doc_id").unwrap(), batch.column_by_name("run_id").unwrap());
        let (docs, runs) = (docs.as_string::<i32>(), runs.as_string::<i32>());
        for i in 0..batch.num_rows() {
            out.push((docs.value(i).to_string(), runs.value(i).to_string(), render(&batch.slice(i, 1)).concat()));
        }
    }
    out.sort();
    out
}

/// The merge path end to end: with the student and the extraction scope unchanged, a run
/// extracts only the new and changed documents and keeps the publication's rows of the others
/// (still carrying the run id that extracted them).
#[test]
fn incremental_extraction_reads_only_changed_documents_and_keeps_the_other_rows() {
    let (rt, server, tmp) = setup();
    let more = tmp.path().join("more.jsonl");
    write_corpus(&more, &[("7", "Heparin caused thrombocytopenia."), ("8", "Lithium caused tremor. It resolved.")]);
    // Only `corpus` is labeled: documents of `more` leave the silver set, so the student, as is.
    let extra = format!(
        "[[ingest.user_corpora]]\npath = \"{}\"\n[label.sources]\nade = [\"corpus\"]\nphi = [\"corpus\"]\n",
        more.display()
    );
    let cfg = load(&pipeline_file(tmp.path(), &server.base_url(), TAGGING, &extra));
    let first = rt.block_on(pipeline::run(&cfg, false)).unwrap();
    assert_eq!((first.status.as_str(), extracted_sentences(&first)), ("published", 8), "{first}");
    let run = tmp.path().join("run");
    let before: BTreeMap<&str, Vec<(String, String, String)>> =
        ["ade_relations", "phi_spans"].map(|t| (t, published_rows(&run, t))).into();

    // more:8 changed (one of its two sentences), more:9 is new; corpus:* and more:7 are not.
    write_corpus(
        &more,
        &[
            ("7", "Heparin caused thrombocytopenia."),
            ("8", "Lithium caused a tremor. It resolved."),
            ("9", "Cisplatin caused ototoxicity."),
        ],
    );
    let requests = server.requests();
    let second = rt.block_on(pipeline::run(&cfg, false)).unwrap();
    assert_eq!(second.status, "published", "{second}");
    assert_eq!(server.requests(), requests, "nothing new to label");
    assert_eq!(second.manifest.student_versions, first.manifest.student_versions);
    assert_eq!((second.manifest.changed_documents, extracted_sentences(&second)), (2, 3), "{second}");
    let changed = |doc: &str| ["more:8", "more:9"].contains(&doc);
    for (table, old) in before {
        let now = published_rows(&run, table);
        let kept: Vec<_> = now.iter().filter(|r| !changed(&r.0)).cloned().collect();
        let expected: Vec<_> = old.into_iter().filter(|r| !changed(&r.0)).collect();
        assert!(!expected.is_empty(), "{table}: no rows of unchanged documents to keep");
        assert!(expected.iter().all(|r| r.1 == first.run_id), "{table}: {expected:?}");
        assert_eq!(kept, expected, "{table}: the unchanged documents' rows");
        assert!(now.iter().filter(|r| changed(&r.0)).all(|r| r.1 == second.run_id), "{table}: {now:?}");
    }
    let redacted = published(&run)["redacted_documents"].len();
    assert_eq!(redacted, DOCS.len() + 3, "a redacted text for every document, extracted now or before");
}

#[test]
fn widening_extract_sources_re_extracts_unchanged_documents() {
    let (rt, server, tmp) = setup();
    write_corpus(&tmp.path().join("more.jsonl"), &[("9", "Cisplatin caused ototoxicity. It resolved.")]);
    let both = format!(
        "[[ingest.user_corpora]]\npath = \"{}\"\n[extract.sources]\nade = ",
        tmp.path().join("more.jsonl").display()
    );
    let narrow = load(&pipeline_file(tmp.path(), &server.base_url(), QUICK, &format!("{both}[\"corpus\"]")));
    let first = rt.block_on(pipeline::run(&narrow, false)).unwrap();
    assert_eq!((first.status.as_str(), extracted_sentences(&first)), ("published", 5), "{first}");

    // No document changed, but `more` is now in scope: its sentences (and the rest) are
    // extracted instead of the old publication's rows being carried over.
    let wide = load(&pipeline_file(tmp.path(), &server.base_url(), QUICK, &format!("{both}[\"corpus\", \"more\"]")));
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

/// Every value of column `name` of `run_manifest`, in order.
pub fn manifest_column(run: &Path, name: &str) -> Vec<String> {
    column_strings(run, "run_manifest", name)
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
    let file = pipeline_file(tmp.path(), &server.base_url(), QUICK, &extra);
    let out = biodistill(tmp.path(), &["run", file.to_str().unwrap()]);
    assert_eq!(out.status.code(), Some(1), "{}\n{}", stdout(&out), stderr(&out));
    assert!(stdout(&out).contains("1 input files could not be read"), "{}", stdout(&out));
    let run = tmp.path().join("run");
    assert_eq!(manifest_column(&run, "status"), ["published"]);
    assert_eq!(manifest_column(&run, "failed_inputs"), ["1"]);
}
