//! Peak memory at 1× and 4× the corpus: extraction (three students, PHI redaction included)
//! and the incremental merge of a previous publication. Memory flat in corpus size means
//! ratios near 1. Each figure is one fresh child process's peak RSS (a high-water mark), so
//! the measurements do not see each other; the reference is the merge done the way it was
//! before 2026-12-06 (whole tables read, concatenated and sorted in memory), in the same run.
//!
//! With the `cluster` feature (as `make bench` builds it), also extraction throughput on a
//! Ballista cluster of two executors started in this process against local extraction of the
//! same corpus, in one run.
//!
//! `cargo bench --bench memory` (part of `make bench`). Needs `models/all-MiniLM-L6-v2`.

#[path = "../tests/silver.rs"]
mod silver;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::sync::Arc;

use arrow::array::{ArrayRef, Float32Array, Int32Array, StringArray};
use biodistill::extract::{self, ExtractConfig};
use biodistill::pipeline::incremental::{merge_previous, write_document_versions};
use biodistill::plan::Limits;
use biodistill::run_dir::{RunDir, TableSink, batch};
use biodistill::schema::{self, table};
use biodistill::train::{self, TrainConfig};

/// Documents of four sentences at 1×.
const DOCS: usize = 120;
/// Rows of the previous publication's `phi_spans` at 1×.
const MERGE_ROWS: usize = 250_000;
/// The plans' memory limit in the merge measurement.
const MERGE_LIMIT_MIB: usize = 32;
/// Set in a child process: `extract:<run dir>:<student dir>`, `merge:<run>:<previous>` or
/// `load:<run>:<previous>`.
const CHILD: &str = "BIODISTILL_BENCH_MEMORY";

/// A synthetic note of four sentences with names, dates, places, a drug and an event.
fn document(i: usize) -> String {
    let names = ["John Smith", "Maria Garcia", "Wei Chen", "Aisha Khan", "Pierre Dubois"];
    let drugs = ["aspirin", "methotrexate", "amiodarone", "lithium", "cisplatin"];
    let events = ["severe nausea", "hepatotoxicity", "a generalized rash", "tremor", "acute renal failure"];
    let (name, drug, event) = (names[i % 5], drugs[(i / 5) % 5], events[(i / 25) % 5]);
    format!(
        "{name} (record {i}) was admitted to St Mary Hospital in Boston on {} March 2019. \
         Treatment with {drug} was followed by {event} within two weeks. \
         Dr. Jones stopped {drug} and the {event} resolved. \
         She was discharged home to Springfield on day {}. ",
        1 + i % 28,
        3 + i % 9
    )
}

fn model_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/all-MiniLM-L6-v2");
    assert!(dir.join("model.safetensors").is_file(), "run `python3 scripts/fetch_models.py test` first");
    dir
}

/// Train the three students briefly on silver labels of the first documents; returns the
/// checkpoint root.
fn students(dir: &Path) -> PathBuf {
    let run = RunDir::create(dir).unwrap();
    let texts: Vec<(String, String)> = (0..40).map(|i| (format!("train:{i}"), document(i))).collect();
    let docs: Vec<(&str, &str)> = texts.iter().map(|(d, t)| (d.as_str(), t.as_str())).collect();
    let names = ["John Smith", "Maria Garcia", "Wei Chen", "Aisha Khan", "Pierre Dubois"];
    let mut labels: Vec<silver::Label> = Vec::new();
    for (i, (doc, _)) in docs.iter().enumerate() {
        labels.push(("phi", doc, 0, "NAME", names[i % 5], "", ""));
        labels.push(("phi", doc, 0, "LOCATION", "Boston", "", ""));
        labels.push(("phi", doc, 2, "NAME", "Jones", "", ""));
    }
    silver::write_silver_run(&run, &docs, &labels);
    let cfg = TrainConfig {
        model_dir: model_dir(),
        max_steps: Some(16),
        batch_size: 16,
        dev_fraction: 0.0,
        progress: false,
        ..Default::default()
    };
    train::run(&cfg, &run).unwrap();
    run.checkpoints(false)
}

/// A run directory with `scale` × [`DOCS`] documents.
fn corpus(dir: &Path, scale: usize) -> RunDir {
    let run = RunDir::create(dir).unwrap();
    let texts: Vec<(String, String)> = (0..DOCS * scale).map(|i| (format!("note:{i:07}"), document(i))).collect();
    let docs: Vec<(&str, &str)> = texts.iter().map(|(d, t)| (d.as_str(), t.as_str())).collect();
    silver::write_silver_run(&run, &docs, &[]);
    run
}

/// `phi_spans.found_by` of `n` spans the student alone found.
fn found_by_student(n: usize) -> ArrayRef {
    let item = Arc::new(arrow::datatypes::Field::new("item", arrow::datatypes::DataType::Utf8, false));
    let mut builder = arrow::array::ListBuilder::new(arrow::array::StringBuilder::new()).with_field(item);
    for _ in 0..n {
        builder.values().append_value("student");
        builder.append(true);
    }
    Arc::new(builder.finish())
}

/// `rows` PHI spans over `rows / 4` documents, written as a publication with its versions.
fn publication(dir: &Path, rows: usize) -> RunDir {
    let run = RunDir::create(dir).unwrap();
    let docs = rows / 4;
    let versions = (0..docs).map(|d| (format!("note:{d:07}"), "h".to_string())).collect();
    write_document_versions(&run, &versions).unwrap();
    let schema = schema::PHI_SPANS.clone();
    let mut sink = TableSink::create(&run, table::PHI_SPANS, schema.clone()).unwrap();
    for chunk in (0..rows).collect::<Vec<_>>().chunks(16_384) {
        let ids: ArrayRef =
            Arc::new(StringArray::from_iter_values(chunk.iter().map(|r| format!("note:{:07}", docs - 1 - r / 4))));
        let starts: Vec<i32> = chunk.iter().map(|r| (r % 4 * 40) as i32).collect();
        let columns: Vec<ArrayRef> = vec![
            ids,
            Arc::new(Int32Array::from(starts.clone())),
            Arc::new(Int32Array::from(starts.iter().map(|s| s + 10).collect::<Vec<_>>())),
            Arc::new(StringArray::from_iter_values(chunk.iter().map(|r| ["NAME", "DATE", "LOCATION", "ID"][r % 4]))),
            Arc::new(Float32Array::from(vec![0.9; chunk.len()])),
            found_by_student(chunk.len()),
            Arc::new(StringArray::from(vec!["student-phi-0123456789abcdef"; chunk.len()])),
            Arc::new(StringArray::from(vec!["r0123456789ab"; chunk.len()])),
        ];
        sink.write(&batch(&schema, columns).unwrap()).unwrap();
    }
    sink.finish().unwrap();
    run
}

/// Child process: do one measured thing, print its peak RSS in MiB.
fn child(spec: &str) {
    let parts: Vec<&str> = spec.splitn(3, ':').collect();
    let (what, a, b) = (parts[0], RunDir::open(parts[1]).unwrap(), RunDir::open(parts[2]).unwrap());
    let runtime = tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap();
    match what {
        "extract" => {
            biodistill::parallel::init_single_threaded_ops();
            let cfg =
                ExtractConfig { checkpoint_dir: Some(b.root().to_path_buf()), progress: false, ..Default::default() };
            let report = runtime.block_on(extract::run(&cfg, &a)).unwrap();
            eprintln!("{}", report.to_string().replace('\n', "; "));
        }
        "merge" => {
            let limits = Limits::mib(MERGE_LIMIT_MIB);
            runtime.block_on(merge_previous(&a, &b, table::PHI_SPANS, limits)).unwrap();
        }
        "load" => {
            // The merge before plans: both tables whole, concatenated, sorted in memory.
            let mut batches = a.read_table(table::PHI_SPANS).unwrap();
            batches.extend(b.read_table(table::PHI_SPANS).unwrap());
            let all = biodistill::run_dir::concat(&schema::PHI_SPANS, &batches).unwrap();
            let ids = arrow::compute::SortColumn { values: all.column(0).clone(), options: None };
            let order = arrow::compute::lexsort_to_indices(&[ids], None).unwrap();
            let sorted = arrow::compute::take_record_batch(&all, &order).unwrap();
            a.write_table(table::PHI_SPANS, sorted.schema(), &[sorted]).unwrap();
        }
        other => panic!("unknown child {other}"),
    }
    println!("{}", biodistill::manifest::peak_rss_mib());
}

/// Peak RSS (MiB) of a child doing `what` over run directories `a` and `b`.
fn measure(what: &str, a: &Path, b: &Path) -> f64 {
    let spec = format!("{what}:{}:{}", a.display(), b.display());
    let out = Command::new(std::env::current_exe().unwrap()).env(CHILD, spec).output().unwrap();
    assert!(out.status.success(), "{what}: {}", String::from_utf8_lossy(&out.stderr));
    String::from_utf8_lossy(&out.stdout).trim().parse().unwrap()
}

/// Sentences per second of local extraction and of the same extraction on an in-process
/// Ballista cluster of two executors (two tasks each), over the 4× corpus.
#[cfg(feature = "cluster")]
fn cluster_throughput(tmp: &Path, students: &Path) {
    let run = corpus(&tmp.join("cluster"), 4);
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let local = ExtractConfig {
        checkpoint_dir: Some(students.to_path_buf()),
        progress: false,
        threads: 2,
        ..Default::default()
    };
    let engine = runtime.block_on(biodistill::cluster::start_on_loopback(2, 2, &tmp.join("executors"))).unwrap();
    let remote = ExtractConfig { engine: engine.clone(), threads: 4, ..local.clone() };
    let mut rates = Vec::new();
    for (name, cfg) in [("local", &local), ("ballista", &remote), ("local", &local), ("ballista", &remote)] {
        let start = std::time::Instant::now();
        let report = runtime.block_on(extract::run(cfg, &run)).unwrap();
        let rate = report.sentences as f64 / start.elapsed().as_secs_f64();
        println!("extract  {name:8} {} sentences: {rate:.1} sentences/s", report.sentences);
        rates.push(rate);
    }
    // Second round only: the first loads checkpoints (locally and on each executor).
    println!(
        "extract  Ballista (2 executors on this machine, {engine}) / local: {:.2} (one machine: the ratio is the \
         cluster's overhead; more machines add cores)",
        rates[3] / rates[2]
    );
    runtime.shutdown_background();
}

fn main() {
    if let Ok(spec) = std::env::var(CHILD) {
        return child(&spec);
    }
    let tmp = tempfile::tempdir().unwrap();
    let students = students(&tmp.path().join("train"));
    #[cfg(feature = "cluster")]
    cluster_throughput(tmp.path(), &students);
    let mut extract_rss = Vec::new();
    for scale in [1, 4] {
        let run = corpus(&tmp.path().join(format!("corpus{scale}")), scale);
        extract_rss.push(measure("extract", run.root(), &students));
    }
    println!(
        "extract  peak RSS {:.0} MiB at {} sentences, {:.0} MiB at 4x: ratio {:.2} (three students, redaction included)",
        extract_rss[0],
        DOCS * 4,
        extract_rss[1],
        extract_rss[1] / extract_rss[0]
    );

    let mut merged = Vec::new();
    for what in ["merge", "load"] {
        let mut rss = Vec::new();
        for scale in [1, 4] {
            let previous = publication(&tmp.path().join(format!("{what}-prev{scale}")), MERGE_ROWS * scale);
            // The new run re-extracted the first 100 documents (changed); the rest are unchanged.
            let fresh = publication(&tmp.path().join(format!("{what}-run{scale}")), 400);
            let versions = (0..MERGE_ROWS * scale / 4)
                .map(|d| (format!("note:{d:07}"), if d < 100 { "h2" } else { "h" }.to_string()))
                .collect();
            write_document_versions(&fresh, &versions).unwrap();
            rss.push(measure(what, fresh.root(), previous.root()));
        }
        merged.push(rss);
    }
    let (plan, whole) = (&merged[0], &merged[1]);
    println!(
        "merge    peak RSS {:.0} MiB at {} previous rows, {:.0} MiB at 4x: ratio {:.2} (plan, {MERGE_LIMIT_MIB} MiB limit)",
        plan[0],
        MERGE_ROWS,
        plan[1],
        plan[1] / plan[0]
    );
    println!(
        "merge    reference, whole tables in memory: {:.0} MiB at 1x, {:.0} MiB at 4x: ratio {:.2}; plan/reference at 4x {:.2}",
        whole[0],
        whole[1],
        whole[1] / whole[0],
        plan[1] / whole[1]
    );
}
