//! `make bench` (`cargo bench --bench teacher_server`): speed of the embedded teacher.
//!
//! 1. prefill and decode tokens/s at batch 1 (a ~400-token 3-shot prompt, 64 greedy tokens);
//! 2. decode throughput against batch size (shared few-shot prefix cached, 32 tokens each);
//! 3. per-request prefill time against few-shot prefix length, cold and with the prefix cache;
//! 4. ADE sentences per hour end to end through the HTTP API (async-openai, concurrent
//!    requests), plain and grounded;
//! 5. the same batch-1 figures for llama.cpp (llama-cpp-python, built by
//!    `scripts/install_llama_cpp.sh`) on the same GGUF, as ratios;
//! 6. the label stage's own ADE requests (its prompt file, schema and grounding, built by
//!    [`biodistill::teacher::label::build_request`]) on real ADE-corpus sentences, in steady
//!    state: the few-shot prefix cached before the clock starts, as llama.cpp's is, and more
//!    sentences than the batch holds, as in a label run; against llama.cpp answering the same
//!    prompts one at a time. Tokens computed per labeled sentence (uncached prompt + reply)
//!    are printed for both.
//!
//! Environment: `BIODISTILL_BENCH_MODEL` (default: the Qwen2.5-Coder-1.5B GGUF),
//! `BIODISTILL_THREADS` (default: every physical core), `BIODISTILL_BENCH_SKIP_LLAMA_CPP=1`,
//! `BIODISTILL_BENCH_QUICK=1` (fewer points, for a smoke run), `BIODISTILL_BENCH_BATCH` (the
//! server's `max_batch` in the HTTP part; default [`DEFAULT_MAX_BATCH`]),
//! `BIODISTILL_BENCH_LABEL_N` (sentences of figure 6, default 48; `0` skips it).

#[path = "common/ade_corpus.rs"]
mod ade_corpus;

use std::path::Path;
use std::process::Command;
use std::time::{Duration, Instant};

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::types::chat::{
    ChatCompletionRequestAssistantMessage, ChatCompletionRequestMessage, ChatCompletionRequestSystemMessage,
    ChatCompletionRequestUserMessage, CreateChatCompletionRequestArgs, FinishReason,
};
use biodistill::llm::chat::{named_messages, render_chatml};
use biodistill::llm::{
    ChatMessage, DEFAULT_MAX_BATCH, GenerateRequest, Generation, Role, TeacherLlm, TeacherLlmConfig,
};
use biodistill::serve::{ServeConfig, spawn};
use biodistill::teacher::TeacherConfig;
use biodistill::teacher::label::build_request;
use biodistill::teacher::prompt::Prompt;
use biodistill::vocab::Task;

/// Completion budget of an ADE answer, for us and for llama.cpp.
const HTTP_MAX_TOKENS: u32 = 96;
const DEFAULT_MODEL: &str = "models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf";

const SYSTEM: &str = "You extract adverse drug events from one sentence of a biomedical abstract. \
Reply with JSON only: {\"pairs\": [{\"drug\": \"...\", \"effect\": \"...\"}]}. Copy every drug and \
effect exactly as written in the sentence. A drug is a medication or substance given to the patient; \
an effect is an adverse reaction the sentence attributes to that drug. Negated or hypothetical \
effects are not adverse events. If the sentence reports no adverse drug event, reply {\"pairs\": []}.";

/// (sentence, reply) few-shot examples, in the style of the ADE corpus.
const SHOTS: &[(&str, &str)] = &[
    (
        "A 54-year-old man developed severe gastrointestinal bleeding two weeks after starting ibuprofen for back pain.",
        r#"{"pairs": [{"drug": "ibuprofen", "effect": "gastrointestinal bleeding"}]}"#,
    ),
    ("Serum creatinine levels were monitored weekly in all patients receiving the study protocol.", r#"{"pairs": []}"#),
    (
        "We describe a case of amiodarone-induced pulmonary toxicity presenting as bilateral infiltrates and hypoxemia.",
        r#"{"pairs": [{"drug": "amiodarone", "effect": "pulmonary toxicity"}]}"#,
    ),
    (
        "Lithium intoxication with confusion and coarse tremor occurred after the addition of hydrochlorothiazide.",
        r#"{"pairs": [{"drug": "Lithium", "effect": "confusion"}, {"drug": "Lithium", "effect": "coarse tremor"}]}"#,
    ),
    (
        "The patient tolerated methotrexate well and no hepatotoxicity was observed during follow-up.",
        r#"{"pairs": []}"#,
    ),
    (
        "Stevens-Johnson syndrome developed in a child treated with carbamazepine for partial seizures.",
        r#"{"pairs": [{"drug": "carbamazepine", "effect": "Stevens-Johnson syndrome"}]}"#,
    ),
];

const SENTENCES: &[&str] = &[
    "Acute renal failure was attributed to the use of high-dose acyclovir in an elderly woman.",
    "Two patients developed agranulocytosis while taking clozapine for refractory schizophrenia.",
    "Vancomycin infusion was followed by a generalized erythematous rash consistent with red man syndrome.",
    "No changes in liver enzymes were recorded in the placebo group.",
    "Severe hyponatremia occurred in a 70-year-old woman after initiation of sertraline.",
    "Rhabdomyolysis was reported in a patient on simvastatin who was also given clarithromycin.",
    "Bleomycin pulmonary fibrosis remains a dose-limiting complication of testicular cancer therapy.",
    "A 35-year-old man presented with lactic acidosis after metformin overdose.",
    "Isoniazid hepatitis developed three months into tuberculosis prophylaxis.",
    "Gentamicin ototoxicity was confirmed by audiometry in four of the twelve patients.",
    "The study enrolled 120 adults with moderate asthma at three centres.",
    "Heparin-induced thrombocytopenia was diagnosed on the fifth day of anticoagulation.",
    "Cisplatin nephrotoxicity limited further cycles of chemotherapy in this patient.",
    "Prolonged QT interval and torsade de pointes followed intravenous haloperidol.",
    "Tardive dyskinesia appeared after long-term treatment with metoclopramide.",
    "Angioedema of the tongue developed in a patient taking lisinopril for hypertension.",
];

fn few_shot(shots: usize, sentence: &str) -> Vec<ChatMessage> {
    let mut messages = vec![ChatMessage::new(Role::System, SYSTEM)];
    for (s, r) in SHOTS.iter().cycle().take(shots) {
        messages.push(ChatMessage::new(Role::User, format!("Sentence: {s}")));
        messages.push(ChatMessage::new(Role::Assistant, *r));
    }
    messages.push(ChatMessage::new(Role::User, format!("Sentence: {sentence}")));
    messages
}

fn env_flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| v == "1")
}

fn per_s(tokens: usize, time: Duration) -> f64 {
    tokens as f64 / time.as_secs_f64().max(1e-9)
}

struct BatchOne {
    prompt_tokens: usize,
    prefill_tps: f64,
    decode_tps: f64,
}

/// Figure 1: one request, cold cache.
fn batch_one(teacher: &mut TeacherLlm, decode_tokens: usize) -> BatchOne {
    let mut request = GenerateRequest::greedy(few_shot(3, SENTENCES[0]), decode_tokens + 1);
    request.ignore_eos = true;
    let g = teacher.generate(&request).expect("generation");
    BatchOne {
        prompt_tokens: g.prompt_tokens,
        prefill_tps: per_s(g.prompt_tokens, g.prefill_time),
        decode_tps: per_s(g.completion_tokens() - 1, g.decode_time),
    }
}

/// Figure 2: aggregate decode tokens/s of `batch` sequences decoded together.
fn batch_throughput(teacher: &mut TeacherLlm, batch: usize, tokens: usize) -> f64 {
    let requests: Vec<_> = (0..batch)
        .map(|i| {
            let mut r = GenerateRequest::greedy(few_shot(3, SENTENCES[i % SENTENCES.len()]), tokens);
            r.ignore_eos = true;
            r
        })
        .collect();
    let generations: Vec<Generation> =
        teacher.generate_batch(&requests).into_iter().map(|g| g.expect("generation")).collect();
    let decoded: usize = generations.iter().map(|g| g.completion_tokens() - 1).sum();
    let wall = generations.iter().map(|g| g.decode_time).max().unwrap_or_default();
    per_s(decoded, wall)
}

/// Figure 3: prefill seconds of a request with `shots` examples, cold and prefix-cached.
fn prefix_curve(teacher: &mut TeacherLlm, shots: usize) -> (usize, f64, f64) {
    let run = |teacher: &mut TeacherLlm, sentence: &str| {
        teacher.generate(&GenerateRequest::greedy(few_shot(shots, sentence), 1)).expect("generation")
    };
    // Wall time, not `prefill_time`: a new prefix is computed at admission, outside the
    // request's own prefill (one decode step is included, the same for every row).
    let started = Instant::now();
    let cold = run(teacher, SENTENCES[shots % 7]);
    let cold_s = started.elapsed().as_secs_f64();
    let warm = run(teacher, SENTENCES[shots % 7 + 8]);
    (cold.prompt_tokens, cold_s, warm.prefill_time.as_secs_f64())
}

/// Figure 4: ADE sentences/hour through the HTTP API with `concurrency` clients in flight.
async fn http_sentences_per_hour(config: ServeConfig, sentences: &[&str], grounded: bool) -> (f64, f64) {
    let server = spawn(config).await.expect("server");
    let client = Client::with_config(OpenAIConfig::new().with_api_base(server.base_url()));
    let started = Instant::now();
    let calls = sentences.iter().map(|sentence| {
        let client = client.clone();
        let model = server.model_id().to_string();
        async move {
            let messages: Vec<ChatCompletionRequestMessage> = few_shot(3, sentence)
                .into_iter()
                .map(|m| match m.role {
                    Role::System => ChatCompletionRequestSystemMessage::from(m.content).into(),
                    Role::User => ChatCompletionRequestUserMessage::from(m.content).into(),
                    Role::Assistant => ChatCompletionRequestAssistantMessage::from(m.content).into(),
                })
                .collect();
            let mut args = CreateChatCompletionRequestArgs::default();
            args.model(model).messages(messages).temperature(0.0).max_completion_tokens(HTTP_MAX_TOKENS);
            if grounded {
                args.metadata(serde_json::json!({ "biodistill_source_text": sentence }));
            }
            let reply = client.chat().create(args.build().unwrap()).await.expect("completion");
            reply.usage.map_or(0, |u| u.completion_tokens)
        }
    });
    let tokens: u32 = futures::future::join_all(calls).await.into_iter().sum();
    let elapsed = started.elapsed().as_secs_f64();
    server.shutdown().await;
    (sentences.len() as f64 * 3600.0 / elapsed, tokens as f64 / sentences.len() as f64)
}

/// What figure 6 measured on our side.
struct Stage {
    per_hour: f64,
    /// Reply tokens per sentence, without the end-of-turn token.
    completion_tokens: f64,
    /// Uncached prompt tokens + reply tokens, per sentence.
    computed_tokens: f64,
}

/// The label stage's ADE prompt (`pipelines/prompts/ade.toml`).
fn stage_prompt() -> Prompt {
    Prompt::load(&Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/prompts"), Task::Ade).expect("ADE prompt file")
}

/// Figure 6: the label stage's ADE requests for `sentences`, all in flight at once (the
/// server admits them as its batch has room), timed after one warm-up request has put the
/// few-shot prefix in the prefix cache. `grounded` false sends them without schema or
/// grounding, as llama.cpp answers them.
async fn stage_sentences_per_hour(config: ServeConfig, sentences: &[String], grounded: bool) -> Stage {
    let server = spawn(config).await.expect("server");
    let client = Client::with_config(OpenAIConfig::new().with_api_base(server.base_url()));
    let prompt = stage_prompt();
    let cfg = TeacherConfig {
        model: server.model_id().to_string(),
        grounded,
        json_schema: grounded,
        ..TeacherConfig::default()
    };
    let ask = |sentence: &str| {
        let client = client.clone();
        let request = build_request(&cfg, Task::Ade, &prompt.messages(sentence), sentence);
        async move {
            let reply = client.chat().create(request).await.expect("completion");
            let usage = reply.usage.expect("usage");
            let cached = usage.prompt_tokens_details.and_then(|d| d.cached_tokens).unwrap_or(0);
            // A reply that ended at end of turn counts that token, which is picked, never fed
            // (llama.cpp's figures leave it out too).
            let ended = reply.choices.iter().any(|c| c.finish_reason == Some(FinishReason::Stop));
            (usage.completion_tokens - u32::from(ended), usage.prompt_tokens - cached)
        }
    };
    ask("Warm-up: the few-shot prefix is computed once per run.").await;
    let started = Instant::now();
    let usages = futures::future::join_all(sentences.iter().map(|s| ask(s))).await;
    let elapsed = started.elapsed().as_secs_f64();
    server.shutdown().await;
    let n = sentences.len() as f64;
    let completion: u32 = usages.iter().map(|u| u.0).sum();
    let uncached: u32 = usages.iter().map(|u| u.1).sum();
    Stage {
        per_hour: n * 3600.0 / elapsed,
        completion_tokens: completion as f64 / n,
        computed_tokens: (completion + uncached) as f64 / n,
    }
}

/// Figure 5: llama.cpp on the same prompt, through scripts/bench_llama_cpp.py; `sentences` are
/// also labeled there (3-shot ADE, cached prefix, greedy, same max tokens) for sentences/hour.
/// `stage`: figure 6's sentences, answered from the label stage's prompt the same way.
fn llama_cpp(
    model: &str,
    threads: usize,
    decode_tokens: usize,
    sentences: &[&str],
    stage: &[String],
) -> Option<serde_json::Value> {
    if env_flag("BIODISTILL_BENCH_SKIP_LLAMA_CPP") {
        return None;
    }
    let root = env!("CARGO_MANIFEST_DIR");
    let install = Command::new("bash").arg(format!("{root}/scripts/install_llama_cpp.sh")).status();
    if !install.is_ok_and(|s| s.success()) {
        eprintln!("llama-cpp-python could not be installed; skipping the reference figures");
        return None;
    }
    let prefix = render_chatml(&few_shot(3, "")[..7]);
    let prefix = prefix.strip_suffix("<|im_start|>assistant\n").unwrap_or(&prefix).to_string();
    let user_turn = |s: &&str| render_chatml(&[ChatMessage::new(Role::User, format!("Sentence: {s}"))]);
    let suffixes: Vec<String> = SENTENCES[8..12].iter().map(user_turn).collect();
    let label_suffixes: Vec<String> = sentences.iter().map(user_turn).collect();
    // The label stage's prompt as ChatML: the shared turns, then each sentence's own turn.
    let prompt = stage_prompt();
    let stage_turns: Vec<Vec<ChatMessage>> = stage.iter().map(|s| named_messages(prompt.messages(s))).collect();
    let stage_prefix = stage_turns.first().map(|turns| {
        let text = render_chatml(&turns[..turns.len() - 1]);
        text.strip_suffix("<|im_start|>assistant\n").unwrap_or(&text).to_string()
    });
    let stage_suffixes: Vec<String> =
        stage_turns.iter().map(|turns| render_chatml(&turns[turns.len() - 1..])).collect();
    let spec = serde_json::json!({
        "prompt": render_chatml(&few_shot(3, SENTENCES[0])),
        "prefix": prefix,
        "suffixes": suffixes,
        "label_suffixes": label_suffixes,
        "max_tokens": HTTP_MAX_TOKENS,
        "stage_prefix": stage_prefix,
        "stage_suffixes": stage_suffixes,
        "stage_max_tokens": TeacherConfig::default().max_tokens,
    });
    let spec_path = std::env::temp_dir().join("biodistill_llama_cpp_prompt.json");
    std::fs::write(&spec_path, spec.to_string()).ok()?;
    let out = Command::new("python3")
        .arg(format!("{root}/scripts/bench_llama_cpp.py"))
        .args([model, &spec_path.to_string_lossy(), &threads.to_string(), &decode_tokens.to_string()])
        .output()
        .ok()?;
    if !out.status.success() {
        eprintln!("llama.cpp bench failed: {}", String::from_utf8_lossy(&out.stderr));
        return None;
    }
    serde_json::from_slice(&out.stdout).ok()
}

fn main() {
    let threads = std::env::var("BIODISTILL_THREADS")
        .ok()
        .and_then(|t| t.parse().ok())
        .unwrap_or_else(biodistill::llm::default_threads);
    let model = std::env::var("BIODISTILL_BENCH_MODEL").unwrap_or_else(|_| DEFAULT_MODEL.into());
    let model = Path::new(env!("CARGO_MANIFEST_DIR")).join(model).to_string_lossy().into_owned();
    let quick = env_flag("BIODISTILL_BENCH_QUICK");
    let decode_tokens = if quick { 16 } else { 64 };
    println!("# teacher_server bench: {model}, {threads} threads");

    let mut config = TeacherLlmConfig::new(&model);
    config.threads = threads;
    config.prefix_cache_bytes = 0;
    let mut cold = TeacherLlm::load(&config).expect("model (make models)");
    let one = batch_one(&mut cold, decode_tokens);
    println!(
        "batch 1: prompt {} tokens, prefill {:.1} tokens/s, decode {:.2} tokens/s",
        one.prompt_tokens, one.prefill_tps, one.decode_tps
    );
    drop(cold);

    config.prefix_cache_bytes = TeacherLlmConfig::new(&model).prefix_cache_bytes;
    config.max_batch = 16; // the largest point of the batch curve
    let mut teacher = TeacherLlm::load(&config).expect("model");
    println!(
        "\n| shots | prompt tokens | first request with this prefix, wall (s) | next request's prefill, prefix cached (s) |\n|---|---|---|---|"
    );
    for shots in if quick { vec![0, 3] } else { vec![0, 1, 3, 6] } {
        let (tokens, cold_s, warm_s) = prefix_curve(&mut teacher, shots);
        println!("| {shots} | {tokens} | {cold_s:.2} | {warm_s:.2} |");
    }

    let mut default_tps = 0.0;
    println!("\n| batch | decode tokens/s (all sequences) | vs batch 1 |\n|---|---|---|");
    let mut base = 0.0;
    for batch in if quick { vec![1, 4] } else { vec![1, 2, 4, 8, 16] } {
        let tps = batch_throughput(&mut teacher, batch, if quick { 8 } else { 32 });
        if batch == 1 {
            base = tps;
        }
        if batch == DEFAULT_MAX_BATCH {
            default_tps = tps;
        }
        println!("| {batch} | {tps:.2} | {:.2}x |", tps / base);
    }
    drop(teacher);

    let runtime = tokio::runtime::Runtime::new().expect("tokio runtime");
    let sentences = if quick { &SENTENCES[..4] } else { SENTENCES };
    let mut serve = ServeConfig::new(&model);
    serve.threads = Some(threads);
    serve.max_batch =
        std::env::var("BIODISTILL_BENCH_BATCH").ok().and_then(|b| b.parse().ok()).unwrap_or(DEFAULT_MAX_BATCH);
    let mut plain_per_hour = 0.0;
    for grounded in [false, true] {
        let (per_hour, tokens) = runtime.block_on(http_sentences_per_hour(serve.clone(), sentences, grounded));
        if !grounded {
            plain_per_hour = per_hour;
        }
        println!(
            "HTTP end to end (3-shot ADE, {} sentences, batch {}, grounded {grounded}): {per_hour:.0} sentences/hour, {tokens:.1} completion tokens/sentence",
            sentences.len(),
            serve.max_batch
        );
    }

    let stage_n: usize = std::env::var("BIODISTILL_BENCH_LABEL_N").ok().and_then(|n| n.parse().ok()).unwrap_or(48);
    let stage_sentences = match ade_corpus::real_sentences(if quick { stage_n.min(8) } else { stage_n }) {
        Some(s) => s,
        None => {
            println!("label-stage figure skipped: no {}", ade_corpus::dir().display());
            Vec::new()
        }
    };
    let mut stage = Vec::new();
    for grounded in [false, true] {
        if stage_sentences.is_empty() {
            break;
        }
        let run = runtime.block_on(stage_sentences_per_hour(serve.clone(), &stage_sentences, grounded));
        println!(
            "label stage's ADE prompt ({} ADE-corpus sentences, prefix cached, batch {}, grounded {grounded}): {:.0} sentences/hour, {:.1} completion tokens/sentence, {:.1} tokens computed/sentence",
            stage_sentences.len(),
            serve.max_batch,
            run.per_hour,
            run.completion_tokens,
            run.computed_tokens,
        );
        stage.push(run);
    }

    if let Some(reference) = llama_cpp(&model, threads, decode_tokens, sentences, &stage_sentences) {
        let f = |k: &str| reference[k].as_f64().unwrap_or(f64::NAN);
        println!("\nllama.cpp {reference}");
        println!(
            "ratio ours/llama.cpp: prefill {:.2}, decode batch 1 {:.2}, decode batch {} {:.2}",
            one.prefill_tps / f("prefill_tokens_per_s"),
            one.decode_tps / f("decode_tokens_per_s"),
            DEFAULT_MAX_BATCH,
            default_tps / f("decode_tokens_per_s"),
        );
        println!(
            "ratio ours/llama.cpp: ADE sentences/hour {:.2} (ours through HTTP at batch {}, ungrounded; llama.cpp one at a time, cached prefix, {:.1} completion tokens/sentence)",
            plain_per_hour / f("label_sentences_per_hour"),
            serve.max_batch,
            f("label_completion_tokens_per_sentence"),
        );
        if let [plain, grounded] = &stage[..] {
            let reference = f("stage_sentences_per_hour");
            println!(
                "ratio ours/llama.cpp: label stage's ADE prompt, sentences/hour {:.2} plain, {:.2} grounded (llama.cpp {reference:.0}/hour, {:.1} completion and {:.1} computed tokens/sentence)",
                plain.per_hour / reference,
                grounded.per_hour / reference,
                f("stage_completion_tokens_per_sentence"),
                f("stage_computed_tokens_per_sentence"),
            );
        }
    }
}
