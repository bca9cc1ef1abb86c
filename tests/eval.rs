//! `biodistill::eval::run` over a tiny hand-built run directory, with every expected value computed by
//! hand in the comments.
//!
//! Documents (split dev unless noted):
//!
//! - `ade_corpus_v2:1`: s0 `Taxol caused severe rash.` [0, 25), s1 `Aspirin induced gastric
//!   bleeding.` [26, 59). Gold: Taxol (0,5) -> rash (20,24) in s0; Aspirin (0,7) -> gastric
//!   bleeding (16,32) in s1.
//! - `ade_corpus_v2:2`: s0 `No adverse effects were seen.`, no gold rows (a negative).
//! - `ade_corpus_v2:3`: split train, with a gold row that must be ignored.
//! - `meddocan:m1`: s0 `Paciente Juan Pérez, varón.` [0, 27), s1 `Vive en Madrid.` [28, 43).
//!   Gold: Juan Pérez (9,19) NOMBRE_SUJETO_ASISTENCIA, Madrid (36,42) PAIS.

use std::collections::BTreeMap;
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, BooleanArray, Float32Array, Float64Array, Int32Array, Int64Array, StringArray};
use arrow::datatypes::SchemaRef;

use biodistill::eval::{EvalConfig, EvalReport, SUBSET_ALL, paired, run, run_with_context, viewer};
use biodistill::run_dir::{RunDir, batch};
use biodistill::schema::{self, EVAL_RESULTS, table, table as tables};

fn s(values: &[&str]) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(values.iter().copied()))
}
fn os(values: &[Option<&str>]) -> ArrayRef {
    Arc::new(values.iter().copied().collect::<StringArray>())
}
fn i(values: &[i32]) -> ArrayRef {
    Arc::new(Int32Array::from(values.to_vec()))
}
fn oi(values: &[Option<i32>]) -> ArrayRef {
    Arc::new(Int32Array::from(values.to_vec()))
}
/// `phi_spans.found_by` of `n` spans the student found.
fn student_found(n: usize) -> ArrayRef {
    let mut builder = arrow::array::ListBuilder::new(arrow::array::StringBuilder::new())
        .with_field(Arc::new(arrow::datatypes::Field::new("item", arrow::datatypes::DataType::Utf8, false)));
    for _ in 0..n {
        builder.values().append_value("student");
        builder.append(true);
    }
    Arc::new(builder.finish())
}

fn f32s(n: usize) -> ArrayRef {
    Arc::new(Float32Array::from(vec![0.9; n]))
}

fn write(run_dir: &RunDir, name: &str, schema: &SchemaRef, columns: Vec<ArrayRef>) {
    run_dir.write_table(name, schema.clone(), &[batch(schema, columns).unwrap()]).unwrap();
}

const DOC1: &str = "Taxol caused severe rash. Aspirin induced gastric bleeding.";
const DOC2: &str = "No adverse effects were seen.";
const DOC3: &str = "Train sentence.";
const M1: &str = "Paciente Juan Pérez, varón. Vive en Madrid.";

fn corpus(run_dir: &RunDir) {
    let ids = ["ade_corpus_v2:1", "ade_corpus_v2:2", "ade_corpus_v2:3", "meddocan:m1"];
    write(
        run_dir,
        tables::DOCUMENTS,
        &schema::DOCUMENTS,
        vec![
            s(&ids),
            s(&["ade_corpus_v2", "ade_corpus_v2", "ade_corpus_v2", "meddocan"]),
            s(&["dev", "dev", "train", "dev"]),
            os(&[None; 4]),
            s(&[DOC1, DOC2, DOC3, M1]),
            s(&["h1", "h2", "h3", "h4"]),
        ],
    );
    write(
        run_dir,
        tables::SENTENCES,
        &schema::SENTENCES,
        vec![
            s(&[
                "ade_corpus_v2:1",
                "ade_corpus_v2:1",
                "ade_corpus_v2:2",
                "ade_corpus_v2:3",
                "meddocan:m1",
                "meddocan:m1",
            ]),
            i(&[0, 1, 0, 0, 0, 1]),
            i(&[0, 26, 0, 0, 0, 28]),
            i(&[25, 59, 29, 15, 27, 43]),
            s(&[&DOC1[..25], &DOC1[26..], DOC2, DOC3, "Paciente Juan Pérez, varón.", "Vive en Madrid."]),
        ],
    );
    let (s0, s1) = (&DOC1[..25], &DOC1[26..]);
    write(
        run_dir,
        tables::GOLD_ADE,
        &schema::GOLD_ADE,
        vec![
            s(&["ade_corpus_v2:1", "ade_corpus_v2:1", "ade_corpus_v2:3"]),
            i(&[0, 1, 0]),
            s(&["dev", "dev", "train"]),
            s(&[s0, s1, DOC3]),
            s(&["Taxol", "Aspirin", "Train"]),
            i(&[0, 0, 0]),
            i(&[5, 7, 5]),
            s(&["rash", "gastric bleeding", "sentence"]),
            i(&[20, 16, 6]),
            i(&[24, 32, 14]),
        ],
    );
    write(
        run_dir,
        tables::GOLD_PHI,
        &schema::GOLD_PHI,
        vec![
            s(&["meddocan", "meddocan"]),
            s(&["meddocan:m1", "meddocan:m1"]),
            s(&["dev", "dev"]),
            i(&[9, 36]),
            i(&[19, 42]),
            s(&["NOMBRE_SUJETO_ASISTENCIA", "PAIS"]),
            s(&["Juan Pérez", "Madrid"]),
        ],
    );
}

/// The student: ADE pairs in document offsets and one PHI span.
fn student(run_dir: &RunDir) {
    write(
        run_dir,
        tables::ADE_RELATIONS,
        &schema::ADE_RELATIONS,
        vec![
            s(&["ade_corpus_v2:1", "ade_corpus_v2:1", "ade_corpus_v2:2", "ade_corpus_v2:3"]),
            i(&[0, 1, 0, 0]),
            s(&["Taxol", "Aspirin", "No", "Train"]),
            i(&[0, 26, 0, 0]),
            i(&[5, 33, 2, 5]),
            // rash: strict hit; bleeding (sentence 24..32 = document 50..58): lenient hit only;
            // the negative document: a false positive; the train document: ignored.
            s(&["rash", "bleeding", "adverse effects", "sentence"]),
            i(&[20, 50, 3, 6]),
            i(&[24, 58, 18, 14]),
            f32s(4),
            s(&["v"; 4]),
            s(&["r"; 4]),
        ],
    );
    write(
        run_dir,
        tables::PHI_SPANS,
        &schema::PHI_SPANS,
        vec![s(&["meddocan:m1"]), i(&[9]), i(&[13]), s(&["NAME"]), f32s(1), student_found(1), s(&["v"]), s(&["r"])],
    );
}

/// The teacher: asked about ADE in doc 1 s0 (ok) and doc 2 s0 (failed), PHI in m1 s0 (ok).
fn teacher(run_dir: &RunDir) {
    teacher_calls(
        run_dir,
        &[("ade", "ade_corpus_v2:1", "ok"), ("ade", "ade_corpus_v2:2", "failed"), ("phi", "meddocan:m1", "ok")],
    );
    // Rows: the right pair in doc 1 s0; a drug span (not a pair, ignored for pairs); a pair in
    // the failed sentence (must not count); a PHI name in m1 s0 (sentence offsets 9..19).
    write(
        run_dir,
        tables::TEACHER_LABELS,
        &schema::TEACHER_LABELS,
        vec![
            s(&["ade", "ade", "ade", "phi"]),
            s(&["ade_corpus_v2:1", "ade_corpus_v2:1", "ade_corpus_v2:2", "meddocan:m1"]),
            i(&[0, 0, 0, 0]),
            s(&["pair", "span", "pair", "span"]),
            s(&["drug", "drug", "drug", "NAME"]),
            s(&["Taxol", "Taxol", "No", "Juan Pérez"]),
            oi(&[Some(0), Some(0), Some(0), Some(9)]),
            oi(&[Some(5), Some(5), Some(2), Some(19)]),
            s(&["exact"; 4]),
            os(&[Some("adverse_event"), None, Some("adverse_event"), None]),
            os(&[Some("rash"), None, Some("effects"), None]),
            oi(&[Some(20), None, Some(11), None]),
            oi(&[Some(24), None, Some(18), None]),
            os(&[Some("exact"), None, Some("exact"), None]),
            s(&["m"; 4]),
            s(&["p"; 4]),
            s(&["k1", "k1", "k2", "k3"]),
            i(&[0; 4]),
            os(&[Some("r0"); 4]),
            Arc::new(Float64Array::from(vec![Some(0.9), None, Some(0.4), Some(0.8)])),
        ],
    );
}

/// `teacher_calls`: `(task, doc_id, status)` of sentence 0, each call uncached and 1 ms long.
fn teacher_calls(run_dir: &RunDir, calls: &[(&str, &str, &str)]) {
    let n = calls.len();
    let column = |k: usize| s(&calls.iter().map(|c| [c.0, c.1, c.2][k]).collect::<Vec<_>>());
    let keys: Vec<String> = (1..=n).map(|k| format!("k{k}")).collect();
    write(
        run_dir,
        tables::TEACHER_CALLS,
        &schema::TEACHER_CALLS,
        vec![
            column(0),
            column(1),
            i(&vec![0; n]),
            s(&keys.iter().map(String::as_str).collect::<Vec<_>>()),
            column(2),
            Arc::new(BooleanArray::from(vec![false; n])),
            Arc::new(Float64Array::from(vec![1.0; n])),
            Arc::new(Int64Array::from(vec![10; n])),
            Arc::new(Int64Array::from(vec![5; n])),
            Arc::new(Float64Array::from(vec![0.0; n])),
            i(&vec![0; n]),
            os(&calls.iter().map(|c| (c.2 != "ok").then_some("timeout")).collect::<Vec<_>>()),
            s(&vec!["m"; n]),
            s(&vec!["p"; n]),
            i(&vec![0; n]),
            os(&vec![Some("r0"); n]),
        ],
    );
}

fn assert_metric(report: &EvalReport, key: (&str, &str, &str, &str), metric: &str, expected: (f64, i64)) {
    let (task, dataset, system, subset) = key;
    let got = report.get(task, dataset, system, subset, metric).unwrap_or_else(|| panic!("no {key:?} {metric}"));
    assert!((got.0 - expected.0).abs() < 1e-12 && got.1 == expected.1, "{key:?} {metric}: {got:?} != {expected:?}");
}

/// A run directory with the corpus, the student's tables and the teacher's (no reference).
fn three_systems() -> (tempfile::TempDir, RunDir) {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = RunDir::create(dir.path()).unwrap();
    corpus(&run_dir);
    student(&run_dir);
    teacher(&run_dir);
    (dir, run_dir)
}

#[tokio::test]
async fn three_systems_on_a_tiny_run_directory() {
    let (dir, run_dir) = three_systems();
    let extra = [("Stage timings".to_string(), "| stage | s |\n|---|---|\n| eval | 0.1 |".to_string())];
    let report = run_with_context(&EvalConfig::default(), &run_dir, "run-1", &extra).await.unwrap();

    let ade = |system, subset| ("ade", "ade_corpus_v2", system, subset);
    // Student, all: 3 dev ADE sentences (incl. the negative), 2 gold pairs, 3 predictions.
    // Strict 1 TP: P 1/3, R 1/2, F1 2/(2+2+1). Lenient 2 TP: P 2/3, R 1, F1 4/5.
    assert_metric(&report, ade("student", "all"), "pair_strict_precision", (1.0 / 3.0, 3));
    assert_metric(&report, ade("student", "all"), "pair_strict_recall", (0.5, 2));
    assert_metric(&report, ade("student", "all"), "pair_strict_f1", (0.4, 2));
    assert_metric(&report, ade("student", "all"), "pair_lenient_precision", (2.0 / 3.0, 3));
    assert_metric(&report, ade("student", "all"), "pair_lenient_f1", (0.8, 2));
    // Macro strict: doc 1 (tp 1, fp 1, fn 1) F1 1/2; doc 2 (fp 1) F1 0. Mean 1/4 over 2 docs.
    assert_metric(&report, ade("student", "all"), "pair_strict_macro_f1", (0.25, 2));
    // Drugs: gold Taxol, Aspirin; predicted Taxol, Aspirin, No -> P 2/3, R 1.
    assert_metric(&report, ade("student", "all"), "drug_strict_precision", (2.0 / 3.0, 3));
    assert_metric(&report, ade("student", "all"), "drug_strict_recall", (1.0, 2));
    // Student on the teacher's sample (doc 1 s0, doc 2 s0): 1 gold; Taxol/rash hit, the
    // negative's pair a false positive.
    assert_metric(&report, ade("student", "teacher_sample"), "pair_strict_precision", (0.5, 2));
    assert_metric(&report, ade("student", "teacher_sample"), "pair_strict_recall", (1.0, 1));
    // The teacher: only its ok sentence's labels count; the failed one is an empty answer.
    assert_metric(&report, ade("teacher", "teacher_sample"), "pair_strict_precision", (1.0, 1));
    assert_metric(&report, ade("teacher", "teacher_sample"), "pair_strict_recall", (1.0, 1));
    assert!(report.get("ade", "ade_corpus_v2", "teacher", "all", "pair_strict_f1").is_none());
    // Student − teacher on the same two sentences: pooled per-sentence counts give the
    // teacher_sample F1s, 2/3 (1 hit, 2 predicted, 1 gold) and 1.
    let diff = ade(paired::SYSTEM, "teacher_sample");
    assert_metric(&report, diff, "pair_strict_f1_diff", (2.0 / 3.0 - 1.0, 2));
    let (low, _) = report.get(diff.0, diff.1, diff.2, diff.3, "pair_strict_f1_diff_ci_low").unwrap();
    let (high, _) = report.get(diff.0, diff.1, diff.2, diff.3, "pair_strict_f1_diff_ci_high").unwrap();
    let expected = 2.0 / 3.0 - 1.0;
    assert!(low <= expected && (expected..=0.0).contains(&high), "[{low}, {high}]");

    let phi = |system, subset| ("phi", "meddocan", system, subset);
    // Student, all: gold NAME (9,19) + LOCATION (36,42); predicted NAME (9,13).
    assert_metric(&report, phi("student", "all"), "strict_recall", (0.0, 2));
    assert_metric(&report, phi("student", "all"), "lenient_precision", (1.0, 1));
    assert_metric(&report, phi("student", "all"), "lenient_recall", (0.5, 2));
    // Tokens Juan, Pérez, Madrid: only Juan covered.
    assert_metric(&report, phi("student", "all"), "token_recall", (1.0 / 3.0, 3));
    // Teacher: sentence 0 only, its name exact after shifting by the sentence start (0).
    assert_metric(&report, phi("teacher", "teacher_sample"), "strict_f1", (1.0, 1));
    assert_metric(&report, phi("student", "teacher_sample"), "strict_recall", (0.0, 1));
    assert_metric(&report, phi("student", "teacher_sample"), "token_recall", (0.5, 2));
    assert_metric(&report, phi(paired::SYSTEM, "teacher_sample"), "strict_f1_diff", (-1.0, 1));

    // Missing inputs are skipped and said so.
    assert!(!report.rows.iter().any(|r| r.system == "supervised_reference"));
    let notes = report.notes.join("\n");
    assert!(notes.contains("gold_gene_disease") && notes.contains("ade_relations_supervised_reference"), "{notes}");

    // eval_results holds exactly the report's rows.
    let table = run_dir.read_table(table::EVAL_RESULTS).unwrap();
    assert_eq!(table[0].schema(), EVAL_RESULTS.clone());
    assert_eq!(table.iter().map(|b| b.num_rows()).sum::<usize>(), report.rows.len());
    let runs = table[0].column(0).as_any().downcast_ref::<StringArray>().unwrap();
    assert!(runs.iter().all(|r| r == Some("run-1")) && runs.len() > 0);

    let md = std::fs::read_to_string(dir.path().join("report.md")).unwrap();
    assert!(md.contains("all-MiniLM-L6-v2") && md.contains("GPT-4"));
    assert!(md.contains("## ade") && md.contains("## phi") && md.contains("## Stage timings"));
    assert!(md.contains("| ade | ade_corpus_v2 | pair_strict_f1 | -0.333 |"), "{md}");
    assert!(md.contains("| ade | ade_corpus_v2 | student | all | pair_strict | 0.333 | 0.500 | 0.400 | 2 |"), "{md}");
    let html = std::fs::read_to_string(dir.path().join("report.html")).unwrap();
    assert!(html.contains("<svg") && html.contains("Stage timings") && !html.contains("<script"));
    assert!(!html.contains("src=\"http") && !html.contains("href=\"http"));
    let text = report.to_string();
    assert!(
        text.lines().any(|l| l.contains("teacher_sample") && l.contains("1.000") && l.starts_with("ade")),
        "{text}"
    );
}

#[tokio::test]
async fn an_empty_run_directory_skips_every_task_and_writes_an_empty_table() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = RunDir::create(dir.path()).unwrap();
    let cfg = EvalConfig { report: false, ..EvalConfig::default() };
    let report = run(&cfg, &run_dir, "r").await.unwrap();
    assert!(report.rows.is_empty());
    assert_eq!(report.notes.iter().filter(|n| n.contains("task skipped")).count(), 3);
    let table = run_dir.read_table(table::EVAL_RESULTS).unwrap();
    assert_eq!(table.iter().map(|b| b.num_rows()).sum::<usize>(), 0);
    assert!(!dir.path().join("report.md").exists(), "report = false writes no report");
}

#[tokio::test]
async fn without_the_teacher_only_the_all_subset_is_computed() {
    let dir = tempfile::tempdir().unwrap();
    let run_dir = RunDir::create(dir.path()).unwrap();
    corpus(&run_dir);
    student(&run_dir);
    let cfg = EvalConfig { tasks: vec!["ade".into()], ..EvalConfig::default() };
    let report = run(&cfg, &run_dir, "r").await.unwrap();
    assert!(report.rows.iter().all(|r| r.subset == SUBSET_ALL && r.system == "student" && r.task == "ade"));
    assert_metric(&report, ("ade", "ade_corpus_v2", "student", "all"), "pair_strict_f1", (0.4, 2));
    assert!(report.notes.iter().any(|n| n.contains("teacher_calls")));
}

/// The teacher's labels carry confidences 0.9 (Taxol -> rash), 0.4 (the failed sentence's
/// pair) and 0.8 (Juan Pérez). At 0.85 the `teacher_confident` system keeps only the first:
/// ADE still finds its one gold pair, PHI loses its name; with the filter off (0) the system
/// is not scored at all.
#[tokio::test]
async fn a_confidence_threshold_scores_the_labels_the_teacher_was_sure_of() {
    let (_dir, run_dir) = three_systems();
    let confident = |system, task, dataset| (task, dataset, system, "teacher_sample");
    let cfg = EvalConfig { min_teacher_confidence: 0.85, report: false, ..EvalConfig::default() };
    let report = run(&cfg, &run_dir, "r").await.unwrap();
    let ade = confident("teacher_confident", "ade", "ade_corpus_v2");
    assert_metric(&report, ade, "pair_strict_precision", (1.0, 1));
    assert_metric(&report, ade, "pair_strict_recall", (1.0, 1));
    let phi = confident("teacher_confident", "phi", "meddocan");
    assert_metric(&report, phi, "strict_recall", (0.0, 1));
    assert_metric(&report, confident("teacher", "phi", "meddocan"), "strict_recall", (1.0, 1));

    let at = async |threshold| {
        let cfg = EvalConfig { min_teacher_confidence: threshold, report: false, ..EvalConfig::default() };
        run(&cfg, &run_dir, "r").await.unwrap()
    };
    assert_metric(&at(0.5).await, phi, "strict_recall", (1.0, 1));
    assert!(!at(0.0).await.rows.iter().any(|r| r.system == "teacher_confident"));
}

#[tokio::test]
async fn a_dataset_the_students_were_not_run_over_is_not_scored_for_them() {
    let (_dir, run_dir) = three_systems();
    let cfg = EvalConfig {
        report: false,
        extracted_sources: BTreeMap::from([("phi".to_string(), vec!["presidio".to_string()])]),
        ..EvalConfig::default()
    };
    let report = run(&cfg, &run_dir, "r").await.unwrap();
    let meddocan = |system: &str| report.rows.iter().filter(|r| r.dataset == "meddocan" && r.system == system).count();
    assert_eq!(meddocan("student"), 0, "the student never read meddocan: no zero F1 for it");
    assert!(meddocan("teacher") > 0, "the teacher's own sample is still scored");
    assert!(report.rows.iter().any(|r| r.dataset == "ade_corpus_v2" && r.system == "student"), "ade is not filtered");
    assert!(report.notes.iter().any(|n| n.contains("phi/meddocan")), "{:?}", report.notes);

    let cfg = EvalConfig { report: false, extracted_splits: vec!["train".into()], ..EvalConfig::default() };
    let report = run(&cfg, &run_dir, "r").await.unwrap();
    assert!(!report.rows.iter().any(|r| r.system == "student"), "the students never read the dev split");
}

/// The DOM of `page` after its scripts ran in headless Chromium, and the console messages the
/// page logged; `None` (with the reason printed) when Chromium is not installed.
fn in_chromium(page: &std::path::Path) -> Option<(String, Vec<String>)> {
    let chromium =
        ["/usr/bin/chromium", "/usr/bin/chromium-browser"].into_iter().find(|p| std::path::Path::new(p).exists());
    let Some(chromium) = chromium else {
        println!("SKIPPED the browser check: no Chromium (make test installs Debian's chromium when run as root)");
        return None;
    };
    // One retry: under a loaded test run Chromium has failed to start its own helper
    // processes ("Zygote could not fork"), which says nothing about the page.
    let mut out = render(chromium, page);
    if !out.status.success() {
        println!("Chromium failed once, retrying: {}", String::from_utf8_lossy(&out.stderr));
        out = render(chromium, page);
    }
    assert!(out.status.success(), "chromium: {}", String::from_utf8_lossy(&out.stderr));
    let console =
        String::from_utf8_lossy(&out.stderr).lines().filter(|l| l.contains(":CONSOLE")).map(str::to_string).collect();
    Some((String::from_utf8(out.stdout).unwrap(), console))
}

/// One headless Chromium run dumping the DOM of `page`, with a fresh profile.
fn render(chromium: &str, page: &std::path::Path) -> std::process::Output {
    use std::process::{Command, Stdio};
    let profile = tempfile::tempdir().unwrap();
    // Flags: no sandbox (root in CI), and no background connections this machine refuses.
    let mut child = Command::new(chromium)
        .args(["--headless", "--no-sandbox", "--disable-gpu", "--disable-quic", "--no-first-run"])
        .args(["--disable-background-networking", "--disable-component-update", "--disable-sync"])
        .arg(format!("--user-data-dir={}", profile.path().display()))
        .args(["--enable-logging=stderr", "--v=0", "--dump-dom"])
        .arg(format!("file://{}", page.display()))
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let deadline = std::time::Instant::now() + std::time::Duration::from_secs(90);
    while child.try_wait().unwrap().is_none() {
        if std::time::Instant::now() > deadline {
            child.kill().unwrap();
            panic!("Chromium did not render {} within 90 s", page.display());
        }
        std::thread::sleep(std::time::Duration::from_millis(50));
    }
    child.wait_with_output().unwrap()
}

#[tokio::test]
async fn the_span_viewer_shows_each_systems_spans_and_loads_in_a_browser() {
    let (_dir, run_dir) = three_systems();
    let report = run(&EvalConfig::default(), &run_dir, "run-1").await.unwrap();
    let path = run_dir.root().join(viewer::FILE);
    let page = std::fs::read_to_string(&path).unwrap();
    // The teacher's sample: ADE doc 1 s0 (gold, teacher and student: Taxol -> rash, 2 spans
    // each), doc 2 s0 (the student's false pair; the teacher's call failed), PHI m1 s0 (one
    // name each). 11 spans in 3 sentences.
    assert_eq!(page.matches("<tr><td class=\"key\">").count(), 3, "{page}");
    assert_eq!(page.matches("<mark ").count(), 11, "{page}");
    assert!(page.contains(
        "<mark class=\"c0\" title=\"drug\">Taxol</mark> caused severe <mark class=\"c1\" title=\"effect\">rash</mark>"
    ));
    assert_eq!(page.matches("<li class=\"hit\">taxol → rash</li>").count(), 3, "gold, teacher and student");
    assert!(page.contains("<li class=\"miss\">no → adverse effects</li>"), "{page}");
    assert_eq!(page.matches("the teacher's call failed").count(), 1, "{page}");
    assert!(page.contains("title=\"NAME\">Juan</mark>"), "the student's shorter name span");
    assert!(report.markdown().contains("[spans.html](spans.html): 3 sentences"), "{}", report.markdown());
    assert!(report.html().contains("<a href=\"spans.html\">spans.html</a>"));

    let Some((dom, console)) = in_chromium(&path) else { return };
    assert!(console.is_empty(), "console messages: {console:?}");
    assert!(dom.contains("data-marks=\"11\"") && dom.contains("data-rows=\"3\""), "{dom}");
    assert!(dom.contains("11 highlighted spans in 3 sentences."), "{dom}");
}

#[tokio::test]
async fn the_learning_curve_grows_with_each_evaluation_and_loads_in_a_browser() {
    let (_dir, run_dir) = three_systems();
    let first = run(&EvalConfig::default(), &run_dir, "run-1").await.unwrap();
    // The teacher's sentences are all in dev documents: no silver yet, 2 ms of ADE teacher time.
    let ade = |report: &EvalReport| -> Vec<(i64, String)> {
        let points = report.curve.iter().filter(|p| p.task == "ade");
        let mut points: Vec<_> = points.map(|p| (p.silver_sentences, format!("{}/{}", p.system, p.subset))).collect();
        points.sort();
        points
    };
    assert_eq!(
        ade(&first),
        [(0, "student/all".into()), (0, "student/teacher_sample".into()), (0, "teacher/teacher_sample".into())]
    );
    assert!(first.curve.iter().filter(|p| p.task == "ade").all(|p| (p.teacher_hours - 2.0 / 3.6e6).abs() < 1e-15));
    // The teacher answers two sentences of a train document, one failing: one silver sentence.
    teacher_calls(
        &run_dir,
        &[
            ("ade", "ade_corpus_v2:1", "ok"),
            ("ade", "ade_corpus_v2:2", "failed"),
            ("phi", "meddocan:m1", "ok"),
            ("ade", "ade_corpus_v2:train", "ok"),
            ("ade", "ade_corpus_v2:train2", "failed"),
        ],
    );
    let second = run(&EvalConfig::default(), &run_dir, "run-2").await.unwrap();
    let silver: Vec<i64> = ade(&second).into_iter().map(|p| p.0).collect();
    assert_eq!(silver, [0, 0, 0, 1, 1, 1], "both runs, in the order evaluated");
    assert_eq!(second.curve.len(), 2 * first.curve.len());
    let html = second.html();
    assert!(second.markdown().contains("## Learning curve"), "{}", second.markdown());
    assert_eq!(html.matches("<circle").count(), second.curve.len(), "one point per run and series");

    let path = run_dir.root().join("report.html");
    let Some((dom, console)) = in_chromium(&path) else { return };
    assert!(console.is_empty(), "console messages: {console:?}");
    assert_eq!(dom.matches("<circle").count(), second.curve.len(), "{dom}");
}
