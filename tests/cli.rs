//! The binary on bad input: one clear line per problem, good files still ingested, bad rows in
//! `quarantine`; and `sql` output.

use std::fs;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{Int64Array, StringArray};
use arrow::datatypes::{Field, Schema};

use crate::util::{biodistill, biodistill_env, stderr, stdout};

/// Write `columns` (all nullable) as one Parquet file.
pub(crate) fn parquet(path: &Path, columns: Vec<(&str, arrow::array::ArrayRef)>) {
    let schema = Arc::new(Schema::new(
        columns.iter().map(|(n, a)| Field::new(*n, a.data_type().clone(), true)).collect::<Vec<_>>(),
    ));
    let batch =
        arrow::record_batch::RecordBatch::try_new(schema.clone(), columns.into_iter().map(|(_, a)| a).collect())
            .unwrap();
    biodistill::run_dir::write_parquet_atomic(path, schema, &[batch]).unwrap();
}

#[test]
fn multi_file_ingest_keeps_good_files_and_quarantines_bad_rows() {
    let tmp = tempfile::tempdir().unwrap();
    let inputs = tmp.path().join("in");
    fs::create_dir(&inputs).unwrap();
    // Good JSONL, with one non-UTF-8 line, one line that is not JSON, one null text and a
    // duplicate id: 2 documents, 4 quarantined rows.
    let mut jsonl = b"{\"id\": 1, \"text\": \"Aspirin caused rash. It resolved.\"}\n".to_vec();
    jsonl.extend_from_slice(b"{\"id\": 2, \"text\": \"bad \xff byte\"}\n");
    jsonl.extend_from_slice(b"not json\n{\"id\": 3, \"text\": null}\n");
    jsonl.extend_from_slice(
        "{\"id\": 4, \"text\": \"Náuseas por β-bloqueantes.\"}\n{\"id\": 1, \"text\": \"dup\"}\n".as_bytes(),
    );
    fs::write(inputs.join("a.jsonl"), jsonl).unwrap();
    // CSV missing its text column: the whole file fails.
    fs::write(inputs.join("b.csv"), "id,body\n1,hello\n").unwrap();
    // Parquet whose text column is an integer: the whole file fails.
    parquet(
        &inputs.join("c.parquet"),
        vec![("id", Arc::new(StringArray::from(vec!["x"]))), ("text", Arc::new(Int64Array::from(vec![7])))],
    );
    // Corrupt Parquet.
    fs::write(inputs.join("d.parquet"), b"PAR1 this is not parquet").unwrap();
    // Good Parquet with a title column and an integer id.
    parquet(
        &inputs.join("e.parquet"),
        vec![
            ("id", Arc::new(Int64Array::from(vec![10, 11]))),
            (
                "text",
                Arc::new(StringArray::from(vec![
                    Some("Dr. Smith gave 2.5 mg i.v. daily. Then rash."),
                    Some("Second doc."),
                ])),
            ),
        ],
    );

    let out = biodistill(tmp.path(), &["--run-dir", "run", "ingest", "--corpus", "none", "--input", "in"]);
    let err = stderr(&out);
    assert_eq!(out.status.code(), Some(1), "some files failed: exit 1\n{err}");
    for expected in [
        "b.csv: missing column 'text' (columns: id, body)",
        "c.parquet: column 'text' has type Int64, expected a string",
        "d.parquet: not a readable Parquet file",
        "a.jsonl:2: not valid UTF-8",
        "a.jsonl:3: not a JSON object",
        "a.jsonl:4: missing or null 'text'",
        "a.jsonl:6: duplicate document id 'a:1'",
    ] {
        assert!(err.contains(expected), "stderr lacks {expected:?}:\n{err}");
    }
    assert!(stdout(&out).contains("documents=4"), "{}", stdout(&out));

    let q = biodistill(
        tmp.path(),
        &["--run-dir", "run", "sql", "--format", "csv", "SELECT doc_id, source FROM documents ORDER BY doc_id"],
    );
    assert_eq!(stdout(&q), "doc_id,source\na:1,a\na:4,a\ne:10,e\ne:11,e\n", "{}", stderr(&q));
    let q =
        biodistill(tmp.path(), &["--run-dir", "run", "sql", "--format", "csv", "SELECT count(*) AS n FROM quarantine"]);
    assert_eq!(stdout(&q), "n\n7\n", "4 rows + 3 files");
    let q = biodistill(
        tmp.path(),
        &["--run-dir", "run", "sql", "--format", "csv", "SELECT count(*) AS n FROM sentences WHERE doc_id = 'e:10'"],
    );
    assert_eq!(stdout(&q), "n\n2\n", "'Dr.', '2.5' and 'i.v.' do not split");
}

#[test]
fn sql_prints_tables_reads_files_and_reports_errors_in_one_line() {
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join("docs.csv"), "id,text\n1,One sentence. Two sentences.\n2,Three.\n").unwrap();
    let out = biodistill(
        tmp.path(),
        &["--run-dir", "run", "ingest", "--corpus", "none", "--input", "docs.csv", "--source", "mine"],
    );
    assert!(out.status.success(), "{}", stderr(&out));

    let out = biodistill(
        tmp.path(),
        &["--run-dir", "run", "sql", "SELECT source, count(*) AS n FROM documents GROUP BY source"],
    );
    assert!(stdout(&out).contains("| mine   | 2 |"), "{}", stdout(&out));

    fs::write(tmp.path().join("q.sql"), "-- sentences\nSELECT count(*) AS n FROM sentences;\n").unwrap();
    let out = biodistill(tmp.path(), &["--run-dir", "run", "sql", "--file", "q.sql", "--format", "json"]);
    assert_eq!(stdout(&out), "{\"n\":3}\n");

    let out = biodistill(
        tmp.path(),
        &["--run-dir", "run", "sql", "--format", "parquet", "-o", "out.parquet", "SELECT * FROM sentences"],
    );
    assert!(out.status.success(), "{}", stderr(&out));
    assert_eq!(biodistill::run_dir::read_parquet(&tmp.path().join("out.parquet")).unwrap()[0].num_rows(), 3);

    let out = biodistill(tmp.path(), &["--run-dir", "run", "sql", "SELECT nope FROM documents"]);
    assert_eq!(out.status.code(), Some(2));
    let err = stderr(&out);
    assert!(err.starts_with("error: ") && err.contains("nope") && err.trim().lines().count() == 1, "{err}");

    let out = biodistill(tmp.path(), &["--run-dir", "missing", "sql", "SELECT 1"]);
    assert!(stderr(&out).contains("missing: run directory does not exist"), "{}", stderr(&out));
}

#[test]
fn shipped_sql_files_run_on_an_ingested_corpus() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR"));
    let run = crate::util::ingested();
    for name in ["corpus_stats", "gold_top_drugs", "gold_counts", "quarantine_summary"] {
        let sql = fs::read_to_string(root.join(format!("sql/{name}.sql"))).unwrap();
        let csv = crate::util::sql_csv(run, &sql);
        assert!(csv.lines().count() > 1, "{name} returned no rows");
    }
}

/// The README's bearer-token variable is not read as a `teacher.api_key` config override.
#[test]
fn teacher_api_key_variable_does_not_break_commands() {
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join("docs.csv"), "id,text\n1,One sentence. Two sentences.\n").unwrap();
    let env = [("BIODISTILL_TEACHER_API_KEY", "sk-test"), ("BIODISTILL_RUN_DIR", "run")];
    let out = biodistill_env(tmp.path(), &["ingest", "--corpus", "none", "--input", "docs.csv"], &env);
    assert!(out.status.success(), "{}", stderr(&out));
    let out = biodistill_env(tmp.path(), &["sql", "--format", "csv", "SELECT count(*) AS n FROM sentences"], &env);
    assert_eq!(stdout(&out), "n\n2\n", "{}", stderr(&out));
}

/// A teacher that answers nothing (nothing listens on the port): `label` finishes, says how
/// many inputs failed, and exits 1 so a script notices.
#[test]
fn label_exits_1_when_the_teacher_fails() {
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join("docs.csv"), "id,text\n1,Aspirin caused rash. It resolved.\n").unwrap();
    let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
    let config = format!(
        "[run]\ndir = \"run\"\n[teacher]\nbase_url = \"http://127.0.0.1:{port}/v1\"\nmax_retries = 0\n\
         progress = false\nprompts_dir = \"{}\"\n[label]\ntasks = [\"ade\"]\nsplits = [\"unlabeled\"]\n\
         dev_sample = 0\n",
        Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/prompts").display()
    );
    fs::write(tmp.path().join("p.toml"), config).unwrap();
    let ingest = biodistill(tmp.path(), &["-c", "p.toml", "ingest", "--corpus", "none", "--input", "docs.csv"]);
    assert!(ingest.status.success(), "{}", stderr(&ingest));
    let out = biodistill(tmp.path(), &["-c", "p.toml", "label"]);
    assert_eq!(out.status.code(), Some(1), "{}", stderr(&out));
    assert!(stderr(&out).contains("the teacher failed on 2 of 2 inputs"), "{}", stderr(&out));
}

/// `biodistill sql ... | head -1`: the reader closing the pipe early is not a crash.
#[test]
fn sql_into_a_closed_pipe_exits_quietly() {
    use std::io::{BufRead, BufReader};
    let tmp = tempfile::tempdir().unwrap();
    fs::create_dir(tmp.path().join("run")).unwrap();
    let query = "SELECT value FROM generate_series(1, 200000)";
    for format in ["csv", "table"] {
        let mut child =
            crate::util::biodistill_cmd(tmp.path(), &["--run-dir", "run", "sql", "--format", format, query])
                .stdout(std::process::Stdio::piped())
                .stderr(std::process::Stdio::piped())
                .spawn()
                .unwrap();
        // `head -1`: read one line, then close the pipe (far more than a pipe buffer is left).
        let mut line = String::new();
        BufReader::new(child.stdout.take().unwrap()).read_line(&mut line).unwrap();
        assert!(!line.is_empty());
        let out = child.wait_with_output().unwrap();
        let err = stderr(&out);
        assert_eq!(out.status.code(), Some(0), "{format}: {err}");
        assert!(!err.contains("panicked") && !err.contains("error"), "{format}: {err}");
    }
}

/// A text (or id) column in any Arrow string encoding ingests: dictionary-encoded (pandas
/// categoricals, int8 and int32 keys), LargeUtf8 and Utf8View.
#[test]
fn parquet_string_columns_in_other_encodings_ingest() {
    use arrow::array::{ArrayRef, DictionaryArray, LargeStringArray, StringViewArray};
    use arrow::datatypes::{Int8Type, Int32Type};
    let tmp = tempfile::tempdir().unwrap();
    let inputs = tmp.path().join("in");
    fs::create_dir(&inputs).unwrap();
    let texts = ["Aspirin caused rash. It resolved.", "Second doc."];
    let encodings: Vec<(&str, ArrayRef, ArrayRef)> = vec![
        (
            "dict8",
            Arc::new(texts.iter().copied().collect::<DictionaryArray<Int8Type>>()),
            Arc::new(["a", "b"].into_iter().collect::<DictionaryArray<Int8Type>>()),
        ),
        (
            "dict32",
            Arc::new(texts.iter().copied().collect::<DictionaryArray<Int32Type>>()),
            Arc::new(StringArray::from(vec!["a", "b"])),
        ),
        ("large", Arc::new(LargeStringArray::from(texts.to_vec())), Arc::new(LargeStringArray::from(vec!["a", "b"]))),
        ("view", Arc::new(StringViewArray::from(texts.to_vec())), Arc::new(StringViewArray::from(vec!["a", "b"]))),
    ];
    for (name, text, id) in encodings {
        let path = inputs.join(format!("{name}.parquet"));
        parquet(&path, vec![("id", id), ("text", text.clone())]);
        // Read back as written: the encoding survives the Parquet round trip.
        let back = biodistill::run_dir::read_parquet(&path).unwrap();
        assert_eq!(back[0].column(1).data_type(), text.data_type(), "{name}");
    }
    let out = biodistill(tmp.path(), &["--run-dir", "run", "ingest", "--corpus", "none", "--input", "in"]);
    assert!(out.status.success(), "every encoding ingests: {}", stderr(&out));
    let q = biodistill(
        tmp.path(),
        &["--run-dir", "run", "sql", "--format", "csv", "SELECT doc_id, text FROM documents ORDER BY doc_id"],
    );
    let mut expected = String::from("doc_id,text\n");
    for name in ["dict32", "dict8", "large", "view"] {
        expected.push_str(&format!("{name}:a,Aspirin caused rash. It resolved.\n{name}:b,Second doc.\n"));
    }
    assert_eq!(stdout(&q), expected, "{}", stderr(&q));
}

/// Logs to a file or pipe (stderr not a terminal) carry no terminal colour codes.
#[test]
fn logs_to_a_pipe_have_no_colour_codes() {
    let tmp = tempfile::tempdir().unwrap();
    fs::write(tmp.path().join("docs.csv"), "id,text\n1,One sentence.\n1,A duplicate.\n").unwrap();
    let out = biodistill(tmp.path(), &["--run-dir", "run", "ingest", "--corpus", "none", "--input", "docs.csv"]);
    let err = stderr(&out);
    assert!(err.contains("WARN") && err.contains("quarantined"), "a warning is logged: {err}");
    assert!(!err.contains('\x1b'), "colour codes in a non-terminal log: {err:?}");
}
