//! Extraction on a Ballista cluster started inside the test process (a scheduler and two
//! executors on loopback ports) against local extraction, on students trained on the toy
//! corpus of [`crate::student`] with the real MiniLM weights.

use arrow::array::{Array, AsArray};
use arrow::datatypes::{DataType, Float32Type};
use biodistill::cluster::{Engine, start_on_loopback};
use biodistill::extract::{self, ExtractConfig};
use biodistill::run_dir::RunDir;
use biodistill::train::{self, TrainConfig};
use biodistill::vocab::Task;

use crate::silver::write_silver_run;
use crate::student::{DOCS, LABELS, overfit};

/// Every row of `table` as text, scores to 4 decimals (a different batching may move the
/// last bits of a float), `run_id` left out (it names the run directory).
fn rows(run: &RunDir, table: &str) -> Vec<String> {
    let mut out = Vec::new();
    for batch in run.read_table(table).unwrap() {
        let schema = batch.schema();
        let columns: Vec<Vec<String>> = (0..batch.num_columns())
            .filter(|&i| schema.field(i).name() != "run_id")
            .map(|i| {
                let column = batch.column(i);
                if column.data_type() == &DataType::Float32 {
                    column.as_primitive::<Float32Type>().values().iter().map(|v| format!("{v:.4}")).collect()
                } else {
                    let text = arrow::compute::cast(column, &DataType::Utf8).unwrap();
                    let text = text.as_string::<i32>();
                    (0..text.len()).map(|r| text.value(r).to_string()).collect()
                }
            })
            .collect();
        out.extend(
            (0..batch.num_rows()).map(|r| columns.iter().map(|c| c[r].as_str()).collect::<Vec<_>>().join(" | ")),
        );
    }
    out
}

const TABLES: &[&str] = &["ade_relations", "phi_spans", "redacted_documents"];

#[test]
fn ballista_extraction_with_two_executors_equals_local_extraction() {
    let tmp = tempfile::tempdir().unwrap();
    let run = RunDir::create(tmp.path().join("run")).unwrap();
    write_silver_run(&run, DOCS, LABELS);
    let tasks = vec![Task::Ade, Task::Phi];
    train::run(&TrainConfig { tasks: tasks.clone(), ..overfit() }, &run).unwrap();

    let runtime = tokio::runtime::Builder::new_multi_thread().worker_threads(4).enable_all().build().unwrap();
    // Small batches and several partitions, so both executors get work.
    let local = ExtractConfig { tasks, progress: false, read_rows: 3, threads: 4, ..Default::default() };
    let report = runtime.block_on(extract::run(&local, &run)).unwrap();
    println!("{report}");
    let expected: Vec<Vec<String>> = TABLES.iter().map(|t| rows(&run, t)).collect();
    assert!(expected[0].len() + expected[1].len() > 0, "the students found nothing to compare");

    let engine = runtime.block_on(start_on_loopback(2, 2, &tmp.path().join("executors"))).unwrap();
    assert!(matches!(engine, Engine::Ballista { .. }), "{engine}");
    let remote = ExtractConfig { engine: engine.clone(), ..local };
    let report = runtime.block_on(extract::run(&remote, &run)).unwrap();
    println!("{report}");
    assert_eq!(report.engine, engine.to_string());
    assert_eq!(report.windows, 0, "the students ran here, not on the executors");
    for (table, expected) in TABLES.iter().zip(&expected) {
        assert_eq!(&rows(&run, table), expected, "{table}");
    }
    runtime.shutdown_background();
}

#[test]
fn extraction_on_a_scheduler_nobody_started_names_it_and_what_to_start() {
    let tmp = tempfile::tempdir().unwrap();
    let run = RunDir::create(tmp.path()).unwrap();
    write_silver_run(&run, DOCS, LABELS);
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let engine: Engine = format!("ballista://127.0.0.1:{port}").parse().unwrap();
    let cfg = ExtractConfig { engine, tasks: vec![Task::Ade], progress: false, ..Default::default() };
    let err = crate::util::block_on(extract::run(&cfg, &run)).unwrap_err().to_string();
    assert!(err.contains(&format!("cannot reach the Ballista scheduler at 127.0.0.1:{port}")), "{err}");
    assert!(err.contains(&format!("biodistill cluster executor --scheduler 127.0.0.1:{port}")), "{err}");
}
