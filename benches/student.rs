//! Student throughput on 2 cores: training tokens/s against PyTorch eager training the same
//! MiniLM and heads on the same sentences (`benches/reference_train.py`), extraction
//! sentences/s against the same weights in ONNX Runtime (`benches/reference_minilm.py`).
//!
//! Training is measured twice in child processes, for the ratio of running tasks side by side
//! on single-threaded ops (the binary's way, [`biodistill::parallel`]) to candle's intra-op
//! threads. `cargo bench --bench student` (or `make bench`). Needs `models/all-MiniLM-L6-v2`; the
//! references need `pip install onnxruntime onnx numpy tokenizers torch` (`make bench-reference`)
//! and are skipped, with a note, without them. Two sets of sentences, each measured against the reference in the same run:
//! synthetic ADE-style sentences of ~30–60 word pieces, and real ones from the ADE corpus
//! (`../shared/data`, or `BIODISTILL_INGEST_DATA_DIR`; skipped with a note without it). The
//! reference gets the very same sentences and batch size.

#[path = "common/ade_corpus.rs"]
mod ade_corpus;
#[path = "../tests/silver.rs"]
mod silver;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use biodistill::extract::{self, ExtractConfig};
use biodistill::model::batch::{Batch, Example};
use biodistill::model::checkpoint::{Checkpoint, CheckpointConfig, TOKENIZER_FILE, WEIGHTS_FILE};
use biodistill::model::encoder::Mode;
use biodistill::model::student::Student;
use biodistill::model::wordpiece::WordPieces;
use biodistill::run_dir::RunDir;
use biodistill::train::{self, TrainConfig};
use biodistill::vocab::Task;
use candle_core::{DType, Device, Tensor};
use candle_nn::VarBuilder;
use candle_transformers::models::bert::{BertModel, Config as BertConfig};

const BATCH_SIZE: usize = 16;
const TRAIN_DOCS: usize = 96;
const EXTRACT_SENTENCES: usize = 384;
const TRAIN_STEPS: usize = 12;

const DRUGS: &[&str] = &["aspirin", "methotrexate", "ibuprofen", "amiodarone", "carbamazepine", "lithium", "cisplatin"];
const EVENTS: &[&str] =
    &["severe nausea", "hepatotoxicity", "a generalized rash", "pulmonary fibrosis", "acute renal failure", "tremor"];
const CONTEXT: &[&str] = &[
    "in a 62-year-old woman with a long history of rheumatoid arthritis",
    "after the dose was increased during the second week of treatment",
    "which resolved completely within ten days of stopping the medication",
    "as confirmed by a positive rechallenge and an elevated serum level",
];

/// A deterministic synthetic sentence.
fn sentence(i: usize) -> (String, &'static str, &'static str) {
    let (drug, event) = (DRUGS[i % DRUGS.len()], EVENTS[(i / 3) % EVENTS.len()]);
    let context = CONTEXT[(i / 7) % CONTEXT.len()];
    let extra = if i % 2 == 0 { format!(" {}", CONTEXT[(i / 5 + 1) % CONTEXT.len()]) } else { String::new() };
    (format!("Treatment with {drug} was followed by {event} {context}{extra}."), drug, event)
}

fn model_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/all-MiniLM-L6-v2");
    assert!(dir.join("model.safetensors").is_file(), "run `python3 scripts/fetch_models.py test` first");
    dir
}

/// Sentences/s of the bare encoder (no heads) over `texts`, batched like the reference.
fn candle_encoder_rate(checkpoint: &Checkpoint, texts: &[String]) -> f64 {
    let mut examples: Vec<Example> = texts
        .iter()
        .map(|t| Example { ids: checkpoint.tokenizer.encode(t).unwrap().ids, ..Default::default() })
        .collect();
    examples.sort_by_key(|e| e.ids.len());
    // Batches side by side, as extraction runs them.
    let batches: Vec<&[Example]> = examples.chunks(BATCH_SIZE).collect();
    let start = Instant::now();
    biodistill::parallel::map(&batches, biodistill::parallel::available_threads(), |chunk| {
        let refs: Vec<&Example> = chunk.iter().collect();
        checkpoint.students[0].encode(&Batch::new(&refs, checkpoint.tokenizer.special()))
    })
    .unwrap();
    texts.len() as f64 / start.elapsed().as_secs_f64()
}

/// The checkpoint at `dir` loaded as before 2026-12-06: query, key and value not fused.
fn unfused_checkpoint(dir: &Path) -> Checkpoint {
    let config = CheckpointConfig::read(dir).unwrap();
    let encoder: BertConfig = serde_json::from_value(config.encoder.clone()).unwrap();
    let vb =
        unsafe { VarBuilder::from_mmaped_safetensors(&[dir.join(WEIGHTS_FILE)], DType::F32, &Device::Cpu) }.unwrap();
    let student = Student::load(vb, &encoder, &config.spec, Mode::Infer).unwrap();
    let tokenizer = WordPieces::from_file(&dir.join(TOKENIZER_FILE)).unwrap();
    Checkpoint { dir: dir.to_path_buf(), config, students: vec![student], tokenizer }
}

/// Mean hidden state of `text` under the pretrained encoder (to check the reference agrees).
fn pretrained_mean(dir: &Path, checkpoint: &Checkpoint, text: &str) -> Vec<f32> {
    let config: BertConfig = serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    let weights = dir.join("model.safetensors");
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[weights], DType::F32, &Device::Cpu) }.unwrap();
    let bert = BertModel::load(vb, &config).unwrap();
    let example = Example { ids: checkpoint.tokenizer.encode(text).unwrap().ids, ..Default::default() };
    let (ids, types, mask) = Batch::new(&[&example], checkpoint.tokenizer.special()).inputs(&Device::Cpu).unwrap();
    let hidden: Tensor = bert.forward(&ids, &types, Some(&mask)).unwrap();
    hidden.mean(1).unwrap().squeeze(0).unwrap().to_vec1().unwrap()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (norm(a) * norm(b))
}

/// Set in a child process of this bench: train two tasks in the mode it names, print JSON.
const CHILD_MODE: &str = "BIODISTILL_BENCH_TRAIN_MODE";

/// The synthetic silver run: every sentence labeled for every task, ADE pairs on the first
/// `TRAIN_DOCS` (gene–disease and PHI see only negatives: same sentences, same cost).
fn silver_run(dir: &Path) -> (RunDir, Vec<(String, String)>) {
    let run = RunDir::create(dir).unwrap();
    let texts: Vec<(String, String)> =
        (0..EXTRACT_SENTENCES.max(TRAIN_DOCS)).map(|i| (format!("bench:{i}"), sentence(i).0)).collect();
    let docs: Vec<(&str, &str)> = texts.iter().map(|(d, t)| (d.as_str(), t.as_str())).collect();
    let labels: Vec<silver::Label> = (0..TRAIN_DOCS)
        .map(|i| {
            let (_, drug, event) = sentence(i);
            ("ade", docs[i].0, 0, "DRUG", drug, "ADVERSE_EVENT", event)
        })
        .collect();
    silver::write_silver_run(&run, &docs, &labels);
    (run, texts)
}

fn train_config(tasks: Vec<Task>, threads: usize) -> TrainConfig {
    TrainConfig {
        model_dir: model_dir(),
        tasks,
        max_steps: Some(TRAIN_STEPS),
        batch_size: BATCH_SIZE,
        dev_fraction: 0.0,
        progress: false,
        threads,
        ..Default::default()
    }
}

/// Child process: train ADE and gene–disease, one after the other with candle's own intra-op
/// threads (`ops`, biodistill before 2026-12-02) or side by side with single-threaded ops
/// (`jobs`, what the binary does now); print tokens and wall seconds.
fn train_child(mode: &str) {
    let tmp = tempfile::tempdir().unwrap();
    let (run, _) = silver_run(tmp.path());
    let threads = if mode == "jobs" { 2 } else { 1 };
    let start = Instant::now();
    let report = train::run(&train_config(vec![Task::Ade, Task::GeneDisease], threads), &run).unwrap();
    let tokens: usize = report.tasks.iter().map(|t| t.fit.tokens).sum();
    let fit: Vec<f64> = report.tasks.iter().map(|t| t.fit.seconds).collect();
    println!("{}", serde_json::json!({"tokens": tokens, "seconds": start.elapsed().as_secs_f64(), "fit_seconds": fit}));
}

/// Tokens/s of [`train_child`] in `mode`, in a fresh process (candle reads its thread count
/// once): over the whole `train::run` (model loading, tokenizing, checkpoints) and over the
/// training steps alone, as the PyTorch reference times itself (the fits' wall time: the
/// longer of the two side by side, their sum one after the other).
fn train_in_child(mode: &str) -> (f64, f64) {
    let threads = if mode == "jobs" { 1 } else { biodistill::parallel::available_threads() }.to_string();
    let out = Command::new(std::env::current_exe().unwrap())
        .env(CHILD_MODE, mode)
        .env("CANDLE_NUM_THREADS", &threads)
        .env("RAYON_NUM_THREADS", &threads)
        .output()
        .unwrap();
    assert!(out.status.success(), "{}", String::from_utf8_lossy(&out.stderr));
    let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let tokens = result["tokens"].as_f64().unwrap();
    let fits = result["fit_seconds"].as_array().unwrap().iter().map(|s| s.as_f64().unwrap());
    let steps = if mode == "jobs" { fits.fold(0.0, f64::max) } else { fits.sum() };
    (tokens / result["seconds"].as_f64().unwrap(), tokens / steps)
}

/// The bench's synthetic training sentences as `benches/reference_train.py` reads them: each
/// with its drug and adverse event where the silver run labels it.
fn write_training_sentences(file: &Path) {
    let sentences: Vec<serde_json::Value> = (0..EXTRACT_SENTENCES.max(TRAIN_DOCS))
        .map(|i| {
            let (text, drug, event) = sentence(i);
            match i < TRAIN_DOCS {
                true => serde_json::json!({"text": text, "drug": drug, "event": event}),
                false => serde_json::json!({"text": text}),
            }
        })
        .collect();
    std::fs::write(file, serde_json::to_vec(&sentences).unwrap()).unwrap();
}

/// PyTorch eager's training tokens/s on the sentences in `file` ([`write_training_sentences`]),
/// same model, batch size and heads (`benches/reference_train.py`), with `threads` intra-op
/// threads; `None` (and a line saying why) when PyTorch is not installed (`make bench-reference`).
fn reference_training(threads: usize, file: &Path) -> Option<f64> {
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/reference_train.py");
    let output = Command::new("python3")
        .arg(&script)
        .args(["--model".as_ref(), model_dir().as_os_str(), "--sentences".as_ref(), file.as_os_str()])
        .args(["--steps", &TRAIN_STEPS.to_string(), "--batch-size", &BATCH_SIZE.to_string()])
        .args(["--threads", &threads.to_string(), "--lr", &TrainConfig::default().lr.to_string()])
        .output();
    match output {
        Ok(out) if out.status.success() => {
            let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            let rate = result["tokens_per_sec"].as_f64().unwrap();
            println!(
                "reference train {rate:>6.0} tokens/s ({}, {threads} thread(s), {} steps, {} tokens)",
                result["runtime"], result["steps"], result["tokens"]
            );
            Some(rate)
        }
        Ok(out) => {
            let why = String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or("failed").to_string();
            println!("reference train skipped: {why}");
            None
        }
        Err(e) => {
            println!("reference train skipped: cannot run python3: {e}");
            None
        }
    }
}

/// Extraction through a Ballista scheduler and two executors in this process (one task at a
/// time each: the machine's 2 cores), against local extraction measured just before.
#[cfg(feature = "cluster")]
fn ballista_ratio(runtime: &tokio::runtime::Runtime, cfg: &ExtractConfig, run: &RunDir, work: &Path, local: f64) {
    let engine = runtime.block_on(biodistill::cluster::start_on_loopback(2, 1, &work.join("executors"))).unwrap();
    let cfg = ExtractConfig { engine, ..cfg.clone() };
    let remote = runtime.block_on(extract::run(&cfg, run)).unwrap();
    println!(
        "extract {:>8.1} sentences/s on Ballista (2 executors x 1 task, loopback); ballista/local = {:.2}",
        remote.sentences_per_sec,
        remote.sentences_per_sec / local
    );
}

fn main() {
    if let Ok(mode) = std::env::var(CHILD_MODE) {
        return train_child(&mode);
    }
    let (ops_run, ops) = train_in_child("ops");
    let (jobs_run, jobs) = train_in_child("jobs");
    println!(
        "train 2 tasks {jobs:>6.0} tokens/s side by side, single-threaded ops; {ops:.0} tokens/s one after the \
         other, candle intra-op threads; ratio {:.2} (training steps; the whole train::run {jobs_run:.0} and \
         {ops_run:.0})",
        jobs / ops
    );
    let reference_dir = tempfile::tempdir().unwrap();
    let training_sentences = reference_dir.path().join("train.json");
    write_training_sentences(&training_sentences);
    let pytorch = |threads: usize| reference_training(threads, &training_sentences);
    let torch_two = pytorch(2);
    // The rest runs as the binary does.
    biodistill::parallel::init_single_threaded_ops();
    let model = model_dir();
    let tmp = tempfile::tempdir().unwrap();
    let (run, texts) = silver_run(tmp.path());
    let report = train::run(&train_config(vec![Task::Ade], 1), &run).unwrap();
    let fit = &report.tasks[0].fit;
    println!(
        "train   {:>8.0} tokens/s  ({} steps x batch {BATCH_SIZE}, {} tokens, {:.1}s)",
        fit.tokens_per_sec, fit.steps, fit.tokens, fit.seconds
    );
    let torch_one = pytorch(1);
    for (ours, torch, what) in [
        (jobs, torch_two, "2 cores: 2 tasks side by side / PyTorch 2 threads"),
        (fit.tokens_per_sec, torch_one, "1 core: 1 task / PyTorch 1 thread"),
    ] {
        if let Some(torch) = torch {
            println!("ratio   train {what} = {:.2} ({ours:.0} / {torch:.0} tokens/s)", ours / torch);
        }
    }

    // Extraction's plan runs its partitions on the runtime's threads, as in the binary. The
    // checkpoint is loaded and every code path run once first (a small warm-up run), as the
    // reference builds and warms its session before timing.
    let runtime = tokio::runtime::Builder::new_multi_thread().enable_all().build().unwrap();
    let extract_cfg = ExtractConfig {
        checkpoint_dir: Some(run.checkpoints(false)),
        tasks: vec![Task::Ade],
        batch_size: BATCH_SIZE,
        progress: false,
        ..Default::default()
    };
    let warm: Vec<(String, &str)> = texts[..BATCH_SIZE].iter().map(|(d, t)| (d.clone(), t.as_str())).collect();
    runtime.block_on(extract::run(&extract_cfg, &sentence_run(&tmp.path().join("warm-up"), &warm))).unwrap();
    let checkpoint = Checkpoint::load(&report.tasks[0].checkpoint, &Device::Cpu).unwrap();
    let synthetic: Vec<(String, &str)> = texts.iter().map(|(d, t)| (d.clone(), t.as_str())).collect();
    let measured = measure_set("synthetic", &run, &synthetic, &runtime, &extract_cfg, &checkpoint, &model, tmp.path());
    #[cfg(feature = "cluster")]
    ballista_ratio(&runtime, &extract_cfg, &run, tmp.path(), measured);
    #[cfg(not(feature = "cluster"))]
    let _ = measured;
    match ade_corpus::real_sentences(EXTRACT_SENTENCES) {
        Some(real) => {
            let docs: Vec<(String, &str)> =
                real.iter().enumerate().map(|(i, t)| (format!("real:{i}"), t.as_str())).collect();
            let real_run = sentence_run(&tmp.path().join("real"), &docs);
            measure_set("real", &real_run, &docs, &runtime, &extract_cfg, &checkpoint, &model, tmp.path());
        }
        None => println!("real sentences skipped: no {}", ade_corpus::dir().display()),
    }
}

/// A run directory whose `documents` and `sentences` are `docs` (`(doc_id, text)`).
fn sentence_run(dir: &Path, docs: &[(String, &str)]) -> RunDir {
    let run = RunDir::create(dir).unwrap();
    let docs: Vec<(&str, &str)> = docs.iter().map(|(d, t)| (d.as_str(), *t)).collect();
    silver::write_silver_run(&run, &docs, &[]);
    run
}

/// Extraction, the encoder alone and the reference over the sentences of `run` (whose
/// documents are `docs`), one after the other; prints each rate and the ratios. Returns
/// extraction's sentences/s.
#[allow(clippy::too_many_arguments)]
fn measure_set(
    name: &str,
    run: &RunDir,
    docs: &[(String, &str)],
    runtime: &tokio::runtime::Runtime,
    cfg: &ExtractConfig,
    checkpoint: &Checkpoint,
    model: &Path,
    work: &Path,
) -> f64 {
    let extracted = runtime.block_on(extract::run(cfg, run)).unwrap();
    println!(
        "extract   {name:<9} {:>7.1} sentences/s ({} sentences, {} windows, batch {BATCH_SIZE}, encoder + entity + conditioned heads, Parquet out)",
        extracted.sentences_per_sec, extracted.sentences, extracted.windows
    );
    // The sentences exactly as the run holds them (its documents split as `silver` splits them).
    let borrowed: Vec<(&str, &str)> = docs.iter().map(|(d, t)| (d.as_str(), *t)).collect();
    let sentences: Vec<String> = silver::sentences(&borrowed).iter().map(|s| s.3.to_string()).collect();
    let unfused_rate = candle_encoder_rate(&unfused_checkpoint(&checkpoint.dir), &sentences);
    let encoder_rate = candle_encoder_rate(checkpoint, &sentences);
    println!(
        "encoder   {name:<9} {encoder_rate:>7.1} sentences/s (the encoder alone, no heads, same batches side by side; \
         {unfused_rate:.1} with query, key and value unfused, as before 2026-12-06)"
    );

    let file = work.join(format!("{name}.txt"));
    std::fs::write(&file, sentences.join("\n")).unwrap();
    let script = Path::new(env!("CARGO_MANIFEST_DIR")).join("benches/reference_minilm.py");
    let output = Command::new("python3")
        .arg(&script)
        .args(["--model".as_ref(), model.as_os_str(), "--sentences".as_ref(), file.as_os_str()])
        .args(["--batch-size", &BATCH_SIZE.to_string(), "--threads", "2", "--dump-first"])
        .output();
    match output {
        Ok(out) if out.status.success() => {
            let result: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
            let rate = result["sentences_per_sec"].as_f64().unwrap();
            let first: Vec<f32> =
                result["first_mean"].as_array().unwrap().iter().map(|v| v.as_f64().unwrap() as f32).collect();
            let agreement = cosine(&first, &pretrained_mean(model, checkpoint, &sentences[0]));
            println!(
                "reference {name:<9} {rate:>7.1} sentences/s ({}, same sentences and batch size)",
                result["runtime"]
            );
            println!(
                "ratio     {name:<9} extract/reference = {:.2}, encoder/reference = {:.2}, unfused encoder/reference = {:.2} \
                 (hidden-state cosine candle vs reference {agreement:.5})",
                extracted.sentences_per_sec / rate,
                encoder_rate / rate,
                unfused_rate / rate
            );
        }
        Ok(out) => {
            println!("reference skipped: {}", String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or("failed"))
        }
        Err(e) => println!("reference skipped: cannot run python3: {e}"),
    }
    extracted.sentences_per_sec
}
