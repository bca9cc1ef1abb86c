//! Issue 15, "runs you can trust": the teacher under a 30% mix of every fault a provider or
//! network produces, and the binary on every kind of bad input. The figures in the README's
//! reliability section are what this prints:
//! `cargo test --locked --test integration reliability:: -- --nocapture`.

use std::collections::{BTreeMap, BTreeSet};
use std::fs;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

use crate::mock_server::{Action, HALLUCINATED, MockServer, Request, always_ok, faults, faulty};
use arrow::array::{Array, AsArray, Int64Array, StringArray};
use arrow::datatypes::Int32Type;
use biodistill::run_dir::{RunDir, concat};
use biodistill::schema::{self, table};
use biodistill::teacher;
use biodistill::text::char_slice;
use biodistill::train::data::{SilverFilters, silver};
use biodistill::vocab::Task;

use crate::cli::parquet;
use crate::teacher::{call_rows, config, numbered, run_dir_with};
use crate::util::{biodistill, stderr, stdout};

/// Inputs of the fault run: enough that seed 42 draws every fault kind among the first
/// arrivals (each input is sent at least once, so those arrivals always happen).
const INPUTS: usize = 120;

/// `teacher_labels` as (doc_id, [(string, start, alignment)] of its subject and object).
type LabelSides = Vec<(String, Vec<(String, Option<i32>, String)>)>;

fn label_sides(run: &RunDir) -> LabelSides {
    let b = concat(&schema::TEACHER_LABELS, &run.read_table(table::TEACHER_LABELS).unwrap()).unwrap();
    let s = |name: &str| b.column_by_name(name).unwrap().as_string::<i32>().clone();
    let i = |name: &str| b.column_by_name(name).unwrap().as_primitive::<Int32Type>().clone();
    let (doc, subject, subject_alignment, object, object_alignment) =
        (s("doc_id"), s("subject"), s("subject_alignment"), s("object"), s("object_alignment"));
    let (subject_start, object_start) = (i("subject_start"), i("object_start"));
    (0..b.num_rows())
        .map(|r| {
            let start = |a: &arrow::array::Int32Array| a.is_valid(r).then(|| a.value(r));
            let mut sides: Vec<(String, Option<i32>, String)> =
                vec![(subject.value(r).into(), start(&subject_start), subject_alignment.value(r).into())];
            if object.is_valid(r) {
                sides.push((object.value(r).into(), start(&object_start), object_alignment.value(r).into()));
            }
            (doc.value(r).to_string(), sides)
        })
        .collect()
}

/// 30% of requests fail in one of ten ways (429 with Retry-After, 500, a hang past the timeout,
/// a connection reset, a truncated or non-JSON body, empty `choices`, a reply cut at
/// `max_tokens`, content that is not JSON, hallucinated spans). The run completes; every input
/// ends labeled or recorded with its error; hallucinated strings get no offsets and never
/// reach training; no request is sent again once answered, neither in the run nor by a rerun,
/// which asks exactly the failed inputs.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn thirty_percent_faults_every_input_accounted_for_nothing_paid_twice() {
    let server = MockServer::start(Duration::ZERO, faulty(0.3, 42)).await.unwrap();
    let (tmp, run) = run_dir_with(&numbered(INPUTS));
    let mut cfg = config(&server, tmp.path());
    // Few retries, so that some inputs run out of them and the rerun has work.
    cfg.teacher.max_retries = 1;
    let report = teacher::run(&cfg, &run).await.unwrap();

    let actions = server.actions();
    let injected: BTreeMap<String, usize> =
        actions.iter().filter(|(k, _)| *k != "reply").map(|(k, &n)| (k.clone(), n)).collect();
    for fault in faults() {
        assert!(injected.contains_key(&fault.kind()), "{} was never injected: {injected:?}", fault.kind());
    }
    let requests = server.requests();
    let faults_injected: usize = injected.values().sum();
    assert!((0.2..0.4).contains(&(faults_injected as f64 / requests as f64)), "{faults_injected} of {requests}");

    // Every input is accounted for, each non-ok one with its reason.
    assert_eq!(report.inputs, INPUTS);
    assert_eq!(report.ok + report.parse_errors + report.failed, INPUTS, "{report}");
    let rows = call_rows(&run);
    let docs: BTreeSet<&str> = rows.iter().map(|r| r.0.as_str()).collect();
    assert_eq!((rows.len(), docs.len()), (INPUTS, INPUTS), "one teacher_calls row per input");
    assert!(rows.iter().all(|r| ["ok", "parse_error", "failed"].contains(&r.1.as_str())));
    assert!(rows.iter().filter(|r| r.1 != "ok").all(|r| r.3.is_some()), "every non-ok row says why");
    // Only unusable content ends as a parse_error (the transport faults are retried).
    let unusable = injected["cut at max_tokens"] + injected["malformed content"];
    assert!((1..=unusable).contains(&report.parse_errors), "{report}");
    let reasons: Vec<&str> = rows.iter().filter(|r| r.1 == "parse_error").filter_map(|r| r.3.as_deref()).collect();
    assert!(reasons.iter().all(|e| e.starts_with("unparseable reply")), "{reasons:?}");
    // Every ok input has its labels.
    let sides = label_sides(&run);
    let labeled: BTreeSet<&str> = sides.iter().map(|(d, _)| d.as_str()).collect();
    let ok: BTreeSet<&str> = rows.iter().filter(|r| r.1 == "ok").map(|r| r.0.as_str()).collect();
    assert_eq!(labeled, ok, "label rows exactly for the ok inputs");

    // Hallucinated strings are recorded without offsets and dropped before training; every
    // other string of these replies grounds.
    let is_hallucinated =
        |s: &[(String, Option<i32>, String)]| s.iter().any(|(t, _, _)| HALLUCINATED.contains(&t.as_str()));
    let hallucinated: Vec<_> = sides.iter().filter(|(_, s)| is_hallucinated(s)).collect();
    assert!(!hallucinated.is_empty());
    for (doc, s) in &sides {
        for (text, start, alignment) in s {
            let made_up = HALLUCINATED.contains(&text.as_str());
            assert_eq!((start.is_none(), alignment == "unaligned"), (made_up, made_up), "{doc}: {text}");
        }
    }
    let (_, stats) = silver(&run, Task::Ade, &SilverFilters::default()).unwrap();
    assert_eq!(stats.dropped_unaligned, hallucinated.len(), "each hallucinated label is dropped from training");

    // Nothing answered was sent again, within the run or by a rerun against a healed server.
    assert_eq!(server.resent_after_answer(), 0, "a request that had been answered was sent again");
    server.set_script(always_ok());
    server.reset_counts();
    let rerun = teacher::run(&cfg, &run).await.unwrap();
    assert_eq!((rerun.ok + rerun.parse_errors, rerun.failed), (INPUTS, 0), "{rerun}");
    assert_eq!(server.requests(), report.failed, "the rerun asks exactly the failed inputs");
    assert_eq!(server.resent_after_answer(), 0, "the rerun sent a request that had been answered");

    println!(
        "reliability: {INPUTS} inputs, {requests} requests, {faults_injected} faults injected ({}); \
         survived: run completed, {} labeled, {} parse_error and {} failed recorded with their reason, \
         {} hallucinated labels kept without offsets and out of training; rerun: {} requests (the failed \
         inputs); repeated paid calls: {}",
        injected.iter().map(|(k, n)| format!("{k}: {n}")).collect::<Vec<_>>().join(", "),
        report.ok,
        report.parse_errors,
        report.failed,
        hallucinated.len(),
        report.failed,
        server.resent_after_answer(),
    );
}

/// Each fault alone, on the first request about sentence i (fault i of [`faults`]), with no
/// retries: what each one leaves in `teacher_calls`. Then a rerun, the faults spent, asks again
/// exactly the inputs that failed, and they succeed.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_fault_alone_is_recorded_with_its_reason_then_healed_by_a_rerun() {
    let kinds: Vec<String> = faults().iter().map(Action::kind).collect();
    let first_time_fault = |r: &Request| {
        let i = r.user.strip_prefix("Sentence: Drug").and_then(|rest| rest.split(' ').next()?.parse::<usize>().ok());
        match i {
            Some(i) if r.seen_before == 0 => faults().into_iter().nth(i).unwrap(),
            _ => Action::Reply(r.plausible.clone()),
        }
    };
    let server = MockServer::start(Duration::ZERO, Arc::new(first_time_fault)).await.unwrap();
    let (tmp, run) = run_dir_with(&numbered(kinds.len()));
    let mut cfg = config(&server, tmp.path());
    cfg.teacher.max_retries = 0;
    teacher::run(&cfg, &run).await.unwrap();
    let rows = call_rows(&run);
    let outcome: Vec<(&str, &str, &str)> =
        kinds.iter().zip(&rows).map(|(kind, r)| (kind.as_str(), r.1.as_str(), r.3.as_deref().unwrap_or(""))).collect();
    let expected = [
        ("status 429 + Retry-After", "failed", "rate limited (HTTP 429), retry after 100ms"),
        ("status 500", "failed", "server error (HTTP 500)"),
        ("hang (timeout)", "failed", "no answer within 2s"),
        ("connection reset", "failed", "transport: "),
        ("truncated body", "failed", "transport: the reply is not a chat completion"),
        ("non-JSON body", "failed", "transport: the reply is not a chat completion"),
        ("empty choices", "failed", "transport: reply has no choices"),
        ("cut at max_tokens", "parse_error", "unparseable reply"),
        ("malformed content", "ok", ""),
        ("hallucinated spans", "ok", ""),
    ];
    for ((kind, status, error), (want_kind, want_status, want_error)) in outcome.iter().zip(expected) {
        assert_eq!((*kind, *status), (want_kind, want_status), "{error}");
        assert!(error.starts_with(want_error), "{kind}: {error}");
    }
    // A real TCP reset ("Connection reset by peer"), not a closed connection or a bad body.
    assert!(outcome[3].2.to_lowercase().contains("connection reset"), "{}", outcome[3].2);

    server.reset_counts();
    let rerun = teacher::run(&cfg, &run).await.unwrap();
    assert_eq!(server.requests(), 7, "each failed input once, nothing else");
    assert_eq!((rerun.ok, rerun.parse_errors, rerun.failed), (9, 1, 0), "{rerun}");
    assert_eq!(server.resent_after_answer(), 0);
}

/// The ingest of `dir` into `<tmp>/run`: (exit code, stderr, the run directory).
fn ingest(tmp: &Path, dir: &str) -> (Option<i32>, String, RunDir) {
    let out = biodistill(tmp, &["--run-dir", "run", "ingest", "--corpus", "none", "--input", dir]);
    assert!(stdout(&out).starts_with("ingest: "), "{}\n{}", stdout(&out), stderr(&out));
    (out.status.code(), stderr(&out), RunDir::open(tmp.join("run")).unwrap())
}

fn strings(run: &RunDir, name: &str, schema: &arrow::datatypes::SchemaRef, column: &str) -> Vec<String> {
    let b = concat(schema, &run.read_table(name).unwrap()).unwrap();
    let c = b.column_by_name(column).unwrap().as_string::<i32>().clone();
    (0..b.num_rows()).map(|i| c.value(i).to_string()).collect()
}

/// Bad inputs not covered by `cli::multi_file_ingest_keeps_good_files_and_quarantines_bad_rows`
/// (which has a non-UTF-8 JSONL line, a non-JSON line, a null text, a duplicate id, a CSV
/// missing its text column, an integer text column and a corrupt Parquet file): each gives one
/// line naming its file (and row), a row in `quarantine`, and the good rows beside it are kept.
#[test]
fn bad_inputs_each_give_one_line_and_lose_nothing_else() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("in");
    fs::create_dir(&dir).unwrap();
    // Row-level: empty and white-space text, a mistyped text value, control characters.
    fs::write(
        dir.join("rows.jsonl"),
        "{\"id\": 1, \"text\": \"\"}\n{\"id\": 2, \"text\": \" \\t\\n \"}\n{\"id\": 3, \"text\": 42}\n\
         {\"id\": 4, \"text\": \"Aspirin\\u0000 caused\\u0007 rash\\u001b[0m.\\r\\nIt resolved.\"}\n",
    )
    .unwrap();
    let mut csv = b"id,text\n1,Ibuprofen caused an ulcer.\n2,\n3,\"   \"\n".to_vec();
    csv.extend_from_slice(b"4,bad \xfe byte\n");
    fs::write(dir.join("table.csv"), csv).unwrap();
    // File-level: a Parquet file cut short, and one without the id column.
    let good = tmp.path().join("good.parquet");
    parquet(
        &good,
        vec![("id", Arc::new(Int64Array::from(vec![1, 2]))), ("text", Arc::new(StringArray::from(vec!["A.", "B."])))],
    );
    let bytes = fs::read(&good).unwrap();
    fs::write(dir.join("cut.parquet"), &bytes[..bytes.len() / 2]).unwrap();
    parquet(&dir.join("noid.parquet"), vec![("text", Arc::new(StringArray::from(vec!["No id here."])))]);
    // A 1 MB document, beside them.
    let sentence = "Cisplatin 75 mg/m2 i.v. caused grade 2 nausea (p < 0.05) in 12.5% of patients. ";
    let big = sentence.repeat((1 << 20) / sentence.len() + 1);
    fs::write(dir.join("big.jsonl"), serde_json::json!({"id": "big", "text": big}).to_string()).unwrap();

    let (code, err, run) = ingest(tmp.path(), "in");
    assert_eq!(code, Some(1), "whole files failed: exit 1\n{err}");
    for expected in [
        "rows.jsonl:1: empty text",
        "rows.jsonl:2: empty text",
        "rows.jsonl:3: 'text' is not a string",
        "table.csv:3: missing or null 'text'",
        "table.csv:4: empty text",
        "table.csv:5: not valid UTF-8",
        "cut.parquet: not a readable Parquet file",
        "noid.parquet: missing column 'id' (columns: text)",
    ] {
        assert_eq!(err.lines().filter(|l| l.contains(expected)).count(), 1, "one line {expected:?}:\n{err}");
    }
    let reasons = strings(&run, table::QUARANTINE, &schema::QUARANTINE, "reason");
    assert_eq!(reasons.len(), 8, "6 rows + 2 files: {reasons:?}");
    let mut docs = strings(&run, table::DOCUMENTS, &schema::DOCUMENTS, "doc_id");
    docs.sort();
    assert_eq!(docs, ["big:big", "rows:4", "table:1"], "every good row is kept");
    let texts = strings(&run, table::DOCUMENTS, &schema::DOCUMENTS, "text");
    assert!(texts.contains(&big), "the 1 MB document is kept whole");
    assert!(texts.iter().any(|t| t.contains('\u{0}') && t.contains('\u{7}')), "control characters are kept as text");
    let sentences = strings(&run, table::SENTENCES, &schema::SENTENCES, "text");
    let big_sentences = sentences.iter().filter(|s| s.starts_with("Cisplatin")).count();
    assert_eq!(big_sentences, big.matches(sentence).count(), "the 1 MB document splits at every sentence");
    assert!(sentences.iter().any(|s| s == "It resolved."), "\\r\\n ends a sentence: {sentences:?}");
}

/// Offsets are chars (Unicode scalar values), not bytes: on CJK, emoji (a ZWJ sequence, a flag),
/// combining accents, Arabic and Hebrew every sentence's offsets slice its document back to its
/// text, and the scripts' own full stops split.
#[test]
fn offsets_on_cjk_emoji_and_right_to_left_text_are_chars() {
    let tmp = tempfile::tempdir().unwrap();
    let dir = tmp.path().join("in");
    fs::create_dir(&dir).unwrap();
    let texts = [
        ("cjk", "患者はアスピリンで発疹を起こした。その後回復した。"),
        ("emoji", "Aspirin 💊 caused a rash 👨‍👩‍👧 in 🇫🇷. Cafe\u{301} staff saw it."),
        ("arabic", "تسبب الأسبرين في طفح جلدي. ثم تعافى المريض."),
        ("hebrew", "אספירין גרם לפריחה. המטופל החלים."),
    ];
    let lines: Vec<String> =
        texts.iter().map(|(id, text)| serde_json::json!({"id": id, "text": text}).to_string()).collect();
    fs::write(dir.join("u.jsonl"), lines.join("\n")).unwrap();
    let (code, err, run) = ingest(tmp.path(), "in");
    assert_eq!(code, Some(0), "{err}");

    let docs = concat(&schema::DOCUMENTS, &run.read_table(table::DOCUMENTS).unwrap()).unwrap();
    let (ids, bodies) = (docs.column(0).as_string::<i32>(), docs.column_by_name("text").unwrap().as_string::<i32>());
    let body: BTreeMap<&str, &str> = (0..docs.num_rows()).map(|i| (ids.value(i), bodies.value(i))).collect();
    let s = concat(&schema::SENTENCES, &run.read_table(table::SENTENCES).unwrap()).unwrap();
    let (doc, text) = (s.column(0).as_string::<i32>(), s.column_by_name("text").unwrap().as_string::<i32>());
    let (start, end) = (s.column(2).as_primitive::<Int32Type>(), s.column(3).as_primitive::<Int32Type>());
    let mut per_doc: BTreeMap<&str, Vec<(usize, usize)>> = BTreeMap::new();
    for i in 0..s.num_rows() {
        let (d, a, b) = (doc.value(i), start.value(i) as usize, end.value(i) as usize);
        assert_eq!(char_slice(body[d], a, b), Some(text.value(i)), "{d} {a}..{b}");
        per_doc.entry(d).or_default().push((a, b));
    }
    for (id, original) in texts {
        let spans = &per_doc[format!("u:{id}").as_str()];
        assert_eq!(spans.len(), 2, "{id}: two sentences {spans:?}");
        assert_eq!(spans[1].1, original.chars().count(), "{id}: the last sentence ends at the last char, not byte");
    }
    // The README's SQL form of the same offsets (DataFusion's substr counts chars).
    let wrong = crate::util::sql_csv(
        &run,
        "SELECT count(*) AS n FROM sentences s JOIN documents d ON s.doc_id = d.doc_id \
         WHERE substr(d.text, s.start + 1, s.\"end\" - s.start) <> s.text",
    );
    assert_eq!(wrong, "n\n0\n");
}
