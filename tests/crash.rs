//! `kill -9` during label, train, extract and publish, each followed by a rerun of the same
//! `biodistill run`: the publication equals an uninterrupted run's, and no answered teacher
//! request is paid twice. The students tag (non-empty `ade_relations`, `phi_spans`) and a small
//! gold set is ingested (non-empty `eval_results`), so the comparison compares something.
//!
//! Kill points are found by watching the run make real progress (the teacher's request count,
//! the `stage <name>` log lines), not by hooks in the binary. Publishing takes milliseconds, too
//! short to hit from outside, so the two states a kill inside it can leave are made by hand.

use std::io::{BufRead, BufReader};
use std::path::Path;
use std::process::{Child, Stdio};
use std::time::{Duration, Instant};

use crate::mock_server::{MockServer, always_ok};
use biodistill::publish;

use crate::pipeline::{Setup, TAGGING, pipeline_file, published, runtime, write_corpus};
use crate::util::{biodistill, biodistill_cmd, column_strings, stderr, stdout};

/// The first lines of each real ADE-Corpus-V2 file, as `dir/ade_corpus_v2`: a gold set of a few
/// dozen sentences, about a fifth of them in the dev split the evaluation scores.
fn write_ade_gold(dir: &Path) {
    let from = crate::util::data_dir().join("ade_corpus_v2");
    let to = dir.join("ade_corpus_v2");
    std::fs::create_dir_all(&to).unwrap();
    for (file, lines) in [("DRUG-AE.rel", 30), ("ADE-NEG.txt", 10), ("DRUG-DOSE.rel", 3)] {
        let text = std::fs::read_to_string(from.join(file)).unwrap();
        let head: Vec<&str> = text.lines().take(lines).collect();
        std::fs::write(to.join(file), head.join("\n") + "\n").unwrap();
    }
}

/// A directory with the corpus `docs`, the gold set and a pipeline file whose teacher is `base_url`.
fn run_dir_with(docs: &[(&str, &str)], base_url: &str) -> (tempfile::TempDir, std::path::PathBuf) {
    let tmp = tempfile::tempdir().unwrap();
    write_corpus(&tmp.path().join("corpus.jsonl"), docs);
    write_ade_gold(tmp.path());
    let ingest = format!("corpora = [\"ade_corpus_v2\"]\ndata_dir = \"{}\"", tmp.path().display());
    let setup = Setup { ingest: &ingest, ..TAGGING };
    let file = pipeline_file(tmp.path(), base_url, setup, "");
    (tmp, file)
}

fn spawn_run(dir: &Path, file: &Path) -> Child {
    biodistill_cmd(dir, &["run", file.to_str().unwrap()]).stdout(Stdio::null()).stderr(Stdio::piped()).spawn().unwrap()
}

/// Read the child's log until a line contains `marker` (a stage has started), then SIGKILL it.
fn kill_at_log_line(mut child: Child, marker: &str) {
    let mut log = Vec::new();
    for line in BufReader::new(child.stderr.take().unwrap()).lines() {
        let line = line.unwrap();
        let hit = line.contains(marker);
        log.push(line);
        if hit {
            child.kill().unwrap();
            child.wait().unwrap();
            return;
        }
    }
    panic!("the run ended before logging {marker:?}:\n{}", log.join("\n"));
}

#[test]
fn kill_9_in_every_stage_then_rerun_equals_an_uninterrupted_run() {
    let rt = runtime();
    // Slow answers, so the first kill lands while labeling.
    let server = rt.block_on(MockServer::start(Duration::from_millis(150), always_ok())).unwrap();
    let reference = rt.block_on(MockServer::start(Duration::ZERO, always_ok())).unwrap();
    let docs: Vec<(String, String)> =
        (0..6).map(|i| (format!("{i}"), format!("Drugx{i} caused rash{i}. Patient {i} recovered."))).collect();
    let docs: Vec<(&str, &str)> = docs.iter().map(|(a, b)| (a.as_str(), b.as_str())).collect();
    let total = docs.len() * 2 * 2; // sentences x tasks (ade, phi)

    let (killed, file) = run_dir_with(&docs, &server.base_url());
    let (dir, run) = (killed.path(), killed.path().join("run"));

    // 1. Label: killed after 6 answers.
    let mut child = spawn_run(dir, &file);
    let deadline = Instant::now() + Duration::from_secs(120);
    while server.requests() < 6 && Instant::now() < deadline {
        std::thread::sleep(Duration::from_millis(20));
    }
    child.kill().unwrap(); // SIGKILL
    child.wait().unwrap();
    let asked_before_kill = server.requests();
    assert!((6..total).contains(&asked_before_kill), "killed after {asked_before_kill} requests");
    assert!(!run.join("teacher_calls.parquet").exists(), "labeling had finished");

    // 2. Train. The rerun asks for what was never answered, plus at most the requests in
    // flight at the kill (concurrency 4): everything answered and stored before it is free.
    kill_at_log_line(spawn_run(dir, &file), "stage train");
    let rerun = server.requests() - asked_before_kill;
    assert!(rerun >= total - asked_before_kill && rerun <= total - asked_before_kill + 4, "rerun asked {rerun}");
    assert!(!run.join("student/ade/config.json").exists(), "training had finished");
    // Both runs were the same run: the one id that paid for every answer.
    let mut run_ids = column_strings(&run, "teacher_calls", "first_run");
    run_ids.sort();
    run_ids.dedup();
    assert_eq!(run_ids.len(), 1, "{run_ids:?}");
    let run_id = &run_ids[0];

    // 3. Extract.
    kill_at_log_line(spawn_run(dir, &file), "stage extract");
    assert!(run.join("student/ade/model.safetensors").exists() && run.join("student/phi/model.safetensors").exists());
    assert!(!run.join("ade_relations.parquet").exists(), "extraction had finished");

    // 4. Publish: a kill while staging leaves a partial `.staging-<run id>`; one between its
    // rename and the swap of `current` leaves `<run id>/` that `current` does not name.
    let publications = run.join("published");
    for (partial, table) in [(format!(".staging-{run_id}"), "ade_relations"), (run_id.clone(), "phi_spans")] {
        std::fs::create_dir_all(publications.join(&partial)).unwrap();
        std::fs::write(publications.join(&partial).join(format!("{table}.parquet")), b"PAR1 cut short").unwrap();
    }
    let out = biodistill(dir, &["run", file.to_str().unwrap()]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    assert_eq!(server.requests(), asked_before_kill + rerun, "runs after labeling finished asked the teacher");
    assert!(publish::current(&publications).is_some_and(|p| p.ends_with(run_id)));
    assert!(!publications.join(format!(".staging-{run_id}")).exists());

    let (clean, clean_file) = run_dir_with(&docs, &reference.base_url());
    let out = biodistill(clean.path(), &["run", clean_file.to_str().unwrap()]);
    assert!(out.status.success(), "{}\n{}", stdout(&out), stderr(&out));
    let (a, b) = (published(&run), published(&clean.path().join("run")));
    for name in ["ade_relations", "phi_spans", "eval_results"] {
        assert!(b.get(name).is_some_and(|rows| !rows.is_empty()), "{name} is empty: nothing compared");
    }
    for name in [
        "ade_relations",
        "phi_spans",
        "redacted_documents",
        "eval_results",
        "teacher_labels",
        "teacher_calls",
        "document_versions",
    ] {
        assert_eq!(a.get(name), b.get(name), "{name} differs");
    }
}
