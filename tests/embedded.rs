//! `teacher.base_url = "embedded"` end to end: `biodistill run` starts its own teacher server
//! on SmolLM2-135M (the test model), labels through it, trains, extracts and publishes. Then
//! `label --plan` on that run directory reports every answer cached: the plan keys requests
//! with the GGUF's name, as the embedded run did, not with `teacher.model` (issue 15 #5).
//! Settings come from the environment, so the binary's `BIODISTILL_*` overrides are checked too.

use crate::pipeline::{QUICK, manifest_column, pipeline_file, repo, write_corpus};
use crate::util::{biodistill_env, column_strings, sql_csv, stderr, stdout};

const GGUF: &str = "SmolLM2-135M-Instruct.Q4_1";

/// `(sentences, cached, calls)` of the plan's `ade` line.
fn planned(plan: &str) -> (usize, usize, usize) {
    let line = plan.lines().find(|l| l.trim_start().starts_with("ade ")).unwrap_or_else(|| panic!("{plan}"));
    let numbers: Vec<usize> = line.split_whitespace().filter_map(|w| w.trim_end_matches(',').parse().ok()).collect();
    (numbers[0], numbers[1], numbers[2])
}

#[test]
fn an_embedded_teacher_run_publishes_and_its_answers_plan_as_cached() {
    let tmp = tempfile::tempdir().unwrap();
    let docs = [("1", "Aspirin caused nausea."), ("2", "Ibuprofen led to a rash. It resolved.")];
    write_corpus(&tmp.path().join("corpus.jsonl"), &docs);
    let serve = format!(
        "[serve]\nmodel = \"{}\"\ncontext_length = 1024\nmax_batch = 4\n",
        repo(&format!("models/{GGUF}.gguf")).display()
    );
    // `teacher.model` ("mock-model") is not the GGUF's name, as in issue 15 #5.
    let file = pipeline_file(tmp.path(), "embedded", QUICK, &serve);
    let file = file.to_str().unwrap();
    // A short reply budget keeps the test quick, the timeout allows for a busy machine, and
    // a seed other than the default is part of every request (and so of every cache key).
    let env = [
        ("BIODISTILL_TEACHER_MAX_TOKENS", "96"),
        ("BIODISTILL_TEACHER_TIMEOUT_SECS", "300"),
        ("BIODISTILL_TEACHER_SEED", "7"),
    ];

    let out = biodistill_env(tmp.path(), &["run", file], &env);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let run = tmp.path().join("run");
    assert_eq!(manifest_column(&run, "status"), ["published"]);
    assert_eq!(manifest_column(&run, "teacher_model"), [GGUF]);
    assert_eq!(manifest_column(&run, "requests"), ["3"], "one request per sentence");
    assert_eq!(column_strings(&run, "teacher_calls", "model"), [GGUF; 3]);

    let plan = |env: &[(&str, &str)]| {
        let out = biodistill_env(tmp.path(), &["-c", file, "label", "--plan"], env);
        assert!(out.status.success(), "{}", stderr(&out));
        stdout(&out)
    };
    let same = plan(&env);
    assert!(same.starts_with(&format!("plan for {GGUF} at embedded")), "{same}");
    assert_eq!(planned(&same), (3, 3, 0), "{same}");
    // Without the overrides the seed is back at its default: other requests, none cached. So
    // the variables did reach the configuration through the binary.
    assert_eq!(planned(&plan(&[])), (3, 0, 3));

    // Token log probabilities are part of the request: asking for them asks again, and every
    // label then carries the teacher's confidence, a probability.
    let with_logprobs = [env.as_slice(), &[("BIODISTILL_TEACHER_LOGPROBS", "true")]].concat();
    assert_eq!(planned(&plan(&with_logprobs)), (3, 0, 3));
    let out = biodistill_env(tmp.path(), &["-c", file, "label"], &with_logprobs);
    assert!(out.status.success(), "{}", stderr(&out));
    let run = biodistill::run_dir::RunDir::open(&run).unwrap();
    let query = "SELECT count(*) AS labels, count(confidence) AS scored, \
                 coalesce(bool_and(confidence > 0 AND confidence <= 1), true) AS probabilities FROM teacher_labels";
    let csv = sql_csv(&run, query);
    let row: Vec<&str> = csv.lines().nth(1).unwrap().split(',').collect();
    println!("{csv}");
    assert_ne!(row[0], "0", "SmolLM2 labels something in these sentences: {csv}");
    assert_eq!((row[0], row[2]), (row[1], "true"), "every label scored, each a probability: {csv}");
}
