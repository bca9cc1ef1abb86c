//! Tests of the embedded LLM against the SmolLM2 test model (and, ignored, the real teacher).

use super::*;

fn smollm() -> TeacherLlm {
    let mut config = TeacherLlmConfig::new(llama_cpp::tests::SMOLLM);
    config.context_length = 512;
    TeacherLlm::load(&config).expect("run `make models` first")
}

fn few_shot(sentence: &str) -> Vec<ChatMessage> {
    vec![
        ChatMessage::new(Role::System, "You list the drugs mentioned in a sentence as a JSON array of strings."),
        ChatMessage::new(Role::User, "Aspirin and ibuprofen were given."),
        ChatMessage::new(Role::Assistant, "[\"Aspirin\", \"ibuprofen\"]"),
        ChatMessage::new(Role::User, sentence),
    ]
}

#[test]
fn greedy_generation_is_deterministic_and_stops() {
    let mut teacher = smollm();
    let request = GenerateRequest::greedy(vec![ChatMessage::new(Role::User, "Say hello.")], 48);
    let a = teacher.generate(&request).unwrap();
    let b = teacher.generate(&request).unwrap();
    assert_eq!(a.tokens, b.tokens);
    assert!(!a.text.is_empty());
    assert!(a.completion_tokens() <= 48);
    if a.finish_reason == FinishReason::Stop {
        assert!(teacher.table.stop_ids.contains(a.tokens.last().unwrap()));
    }
    let short = teacher.generate(&GenerateRequest { max_tokens: 3, ..request }).unwrap();
    assert_eq!((short.completion_tokens(), short.finish_reason), (3, FinishReason::Length));
    assert_eq!(short.tokens, a.tokens[..3]);
}

#[test]
fn prefix_cache_gives_the_same_tokens_as_no_cache() {
    let mut teacher = smollm();
    let first = GenerateRequest::greedy(few_shot("Metformin caused lactic acidosis."), 12);
    let second = GenerateRequest::greedy(few_shot("Warfarin led to bleeding."), 12);
    teacher.prefix_cache = PrefixCache::new(0, 0); // disabled
    let cold = teacher.generate(&second).unwrap();
    assert_eq!((cold.cached_prompt_tokens, teacher.cached_prefixes()), (0, 0));
    teacher.prefix_cache = PrefixCache::new(1 << 30, 8);
    teacher.generate(&first).unwrap();
    assert_eq!(teacher.cached_prefixes(), 1);
    let warm = teacher.generate(&second).unwrap();
    assert!(warm.cached_prompt_tokens >= MIN_CACHED_PREFIX);
    assert_eq!(warm.tokens, cold.tokens);
    // Both user turns began `<|im_start|>user\n`: the second request snapshotted that too, and
    // a third starts after it.
    let third = GenerateRequest::greedy(few_shot("Isoniazid caused hepatitis."), 12);
    let shared = third.prompt.encode(teacher.tokenizer()).unwrap().shared_prefix_len;
    let header = teacher.tokenizer().encode("<|im_start|>user\n", false).unwrap().get_ids().len();
    let extended = teacher.generate(&third).unwrap();
    assert_eq!((extended.cached_prompt_tokens, teacher.cached_prefixes()), (shared + header, 2));
    teacher.prefix_cache = PrefixCache::new(0, 0);
    assert_eq!(extended.tokens, teacher.generate(&third).unwrap().tokens);
}

/// A JSON reply ends as soon as it closes: the automaton then admits only an end of turn, so
/// that token is recorded without a forward pass to pick it.
#[test]
fn a_complete_json_reply_ends_without_another_forward() {
    let mut config = TeacherLlmConfig::new(llama_cpp::tests::SMOLLM);
    config.context_length = 1024;
    let mut teacher = TeacherLlm::load(&config).expect("run `make models` first");
    let sentence = "Tardive dyskinesia appeared after long-term treatment with metoclopramide.";
    let request = task_request(crate::vocab::Task::Ade, sentence, 96);
    let before = teacher.stats();
    let reply = teacher.generate(&request).unwrap();
    let after = teacher.stats();
    assert_eq!(reply.finish_reason, FinishReason::Stop, "{}", reply.text);
    assert_strings_in(&serde_json::from_str(&reply.text).unwrap(), sentence);
    assert_eq!(reply.tokens.last(), Some(&teacher.table.end_of_turn));
    let from_rows = reply.tokens.len() as u64 - 1;
    assert_eq!(after.forwards - before.forwards, from_rows, "a forward per token but the end of turn");
    assert_eq!(after.picked - before.picked, from_rows, "the end of turn is not counted as picked from a row");
}

#[test]
fn batched_generation_matches_one_at_a_time() {
    let mut teacher = smollm();
    let requests: Vec<_> = ["Metformin caused lactic acidosis.", "Hi", "Warfarin led to bleeding."]
        .iter()
        .map(|s| GenerateRequest { logprobs: Some(MAX_TOP_LOGPROBS), ..GenerateRequest::greedy(few_shot(s), 8) })
        .collect();
    let alone: Vec<_> = requests.iter().map(|r| teacher.generate(r).unwrap()).collect();
    let together: Vec<_> = teacher.generate_batch(&requests).into_iter().map(|g| g.unwrap()).collect();
    for (i, (a, b)) in alone.iter().zip(&together).enumerate() {
        assert_same_up_to_a_tie(a, b, &format!("request {i}"));
    }
}

#[test]
fn grounded_generation_is_json_copied_from_the_source() {
    let mut teacher = smollm();
    let source = "Metformin caused lactic acidosis in an elderly patient.";
    let mut request = GenerateRequest::greedy(few_shot(source), 40);
    request.grounded_source = Some(source.to_string());
    let reply = teacher.generate(&request).unwrap();
    if reply.finish_reason == FinishReason::Stop {
        let json: serde_json::Value = serde_json::from_str(&reply.text).unwrap();
        assert_strings_in(&json, source);
    } else {
        assert!(reply.text.starts_with(['[', '{']), "{}", reply.text);
    }
}

fn assert_strings_in(value: &serde_json::Value, source: &str) {
    match value {
        serde_json::Value::String(s) => assert!(source.contains(s.as_str()), "{s:?} not in source"),
        serde_json::Value::Array(items) => items.iter().for_each(|v| assert_strings_in(v, source)),
        serde_json::Value::Object(map) => map.values().for_each(|v| assert_strings_in(v, source)),
        _ => {}
    }
}

/// `n` choices from one prefill: identical when greedy, distinct but reproducible when
/// sampled, each like a request alone with that choice's seed would be.
#[test]
fn n_choices_share_one_prefill() {
    let mut teacher = smollm();
    let mut request = GenerateRequest::greedy(few_shot("Metformin caused lactic acidosis."), 10);
    request.n = 3;
    let greedy = teacher.generate_choices(&request).unwrap();
    assert_eq!(greedy.len(), 3);
    assert!(greedy.iter().all(|g| g.tokens == greedy[0].tokens && g.prompt_tokens == greedy[0].prompt_tokens));
    (request.temperature, request.seed) = (1.0, 7);
    let sampled = teacher.generate_choices(&request).unwrap();
    let again = teacher.generate_choices(&request).unwrap();
    let tokens = |gs: &[Generation]| gs.iter().map(|g| g.tokens.clone()).collect::<Vec<_>>();
    assert_eq!(tokens(&sampled), tokens(&again), "reproducible with a seed");
    assert!(sampled[1].tokens != sampled[0].tokens || sampled[2].tokens != sampled[0].tokens, "choices differ");
    request.n = 1;
    assert_eq!(teacher.generate(&request).unwrap().tokens, sampled[0].tokens, "choice 0 is the plain request");
}

/// Logprobs cover every token of the text (not the end-of-turn token); streamed deltas add
/// up to the reply and its logprobs, also when a step appends several drafted tokens.
#[test]
fn logprobs_and_deltas_add_up_to_the_reply() {
    let mut teacher = smollm();
    teacher.draft_tokens = MEASURED_DRAFT_TOKENS;
    let mut request = GenerateRequest::greedy(vec![ChatMessage::new(Role::User, "Say hello in French.")], 24);
    request.logprobs = Some(3);
    request.stop = vec!["!".into()];
    let mut sequences = teacher.start(&request).unwrap();
    let (mut text, mut logprobs) = (String::new(), Vec::new());
    while !sequences[0].is_finished() {
        teacher.step(&mut sequences).unwrap();
        if let Some(delta) = sequences[0].take_delta() {
            text.push_str(&delta.text);
            logprobs.extend(delta.logprobs);
        }
    }
    let generation = teacher.finish(sequences.pop().unwrap());
    assert_eq!((text.as_str(), &logprobs), (generation.text.as_str(), &generation.logprobs));
    let ends_turn = generation.finish_reason == FinishReason::Stop
        && teacher.table.stop_ids.contains(generation.tokens.last().unwrap());
    assert_eq!(logprobs.len(), generation.tokens.len() - usize::from(ends_turn));
    for (lp, &id) in logprobs.iter().zip(&generation.tokens) {
        assert_eq!((lp.token.id, lp.top.len(), &lp.top[0]), (id, 3, &lp.token), "greedy takes the best");
    }
}

/// A request as the label stage sends it: the task's prompt file (few-shot), greedy,
/// grounded in the sentence with the task's schema (PHI: JSON mode, its types are not in
/// the sentence).
fn task_request(task: crate::vocab::Task, sentence: &str, max_tokens: usize) -> GenerateRequest {
    let dir = Path::new(concat!(env!("CARGO_MANIFEST_DIR"), "/pipelines/prompts"));
    let prompt = crate::teacher::prompt::Prompt::load(dir, task).unwrap();
    let mut request = GenerateRequest::greedy(chat::named_messages(prompt.messages(sentence)), max_tokens);
    request.json_schema = Some(schema::ResponseSchema::from_json_schema(&crate::teacher::parse::json_schema(task)));
    if task != crate::vocab::Task::Phi {
        request.grounded_source = Some(sentence.to_string());
    }
    request
}

/// Two ADE, one gene–disease and one PHI request (last), as the label stage asks.
fn mixed_task_requests(max_tokens: usize) -> Vec<GenerateRequest> {
    use crate::vocab::Task;
    vec![
        task_request(
            Task::Ade,
            "METHODS: We report two cases of pseudoporphyria caused by naproxen and oxaprozin.",
            max_tokens,
        ),
        task_request(
            Task::Ade,
            "Tardive dyskinesia appeared after long-term treatment with metoclopramide.",
            max_tokens,
        ),
        task_request(
            Task::GeneDisease,
            "Polymorphisms of the APOE gene are associated with Alzheimer disease.",
            max_tokens,
        ),
        task_request(Task::Phi, "John Smith was admitted to St. Mary's Hospital on 03/12/2019.", max_tokens),
    ]
}

/// What must not change with drafts: everything but the timings.
fn reply(g: &Generation) -> (&str, &[u32], &[TokenLogprob], FinishReason, usize) {
    (&g.text, &g.tokens, &g.logprobs, g.finish_reason, g.prompt_tokens)
}

/// Log probabilities closer than this are a tie that float noise may break.
const TIE: f32 = 0.25;

/// `a` and `b`, two decodings of one request (with logprobs), are the same reply token for
/// token, or the same up to a token where they part at a near tie: in one of them the
/// other's token was within [`TIE`] of the one taken. Differently shaped batches (other
/// sequences, drafted runs, KV cells in another order) sum in another order; the last bits
/// of the logits then differ, and only a near tie can turn on them.
fn assert_same_up_to_a_tie(a: &Generation, b: &Generation, what: &str) {
    let Some(i) = a.tokens.iter().zip(&b.tokens).position(|(x, y)| x != y) else {
        assert_eq!((&a.text, &a.tokens, a.finish_reason), (&b.text, &b.tokens, b.finish_reason), "{what}");
        for (x, y) in a.logprobs.iter().zip(&b.logprobs) {
            assert!((x.token.logprob - y.token.logprob).abs() < TIE, "{what}: {x:?} vs {y:?}");
        }
        return;
    };
    let tie = [(a, b), (b, a)].iter().any(|(x, y)| {
        x.logprobs
            .get(i)
            .is_some_and(|lp| lp.top.iter().any(|t| t.id == y.tokens[i] && lp.token.logprob - t.logprob < TIE))
    });
    assert!(tie, "{what}: token {i} differs ({} vs {}) and is no near tie", a.tokens[i], b.tokens[i]);
    eprintln!("{what}: parts at a near tie at token {i}");
}

/// Scoring only the tokens the automaton admits (llama.cpp stopping before its output layer)
/// picks the replies that full rows of logits pick, token for token, for grounded requests of
/// two task schemas decoded together, and beside a JSON-mode request (free strings: most of
/// the vocabulary fits), whose whole rows are then computed from its hidden states.
#[test]
fn admitted_logits_give_the_replies_of_full_rows() {
    let mut config = TeacherLlmConfig::new(llama_cpp::tests::SMOLLM);
    (config.context_length, config.max_batch) = (1536, 4);
    let mut teacher = TeacherLlm::load(&config).expect("run `make models` first");
    let mut grounded = mixed_task_requests(64);
    let phi = grounded.pop().expect("PHI last");
    let mut run = |requests: &[GenerateRequest], admitted| {
        teacher.admitted_logits_only = admitted;
        let before = teacher.stats();
        let replies: Vec<Generation> = teacher.generate_batch(requests).into_iter().map(|r| r.unwrap()).collect();
        let after = teacher.stats();
        (replies, after.headless - before.headless, after.forwards - before.forwards)
    };
    let (full, full_headless, _) = run(&grounded, false);
    let (admitted, headless, forwards) = run(&grounded, true);
    assert_eq!((full_headless, headless), (0, forwards), "every forward of grounded requests skips the layer");
    for (i, (a, b)) in full.iter().zip(&admitted).enumerate() {
        assert_eq!((&a.text, &a.tokens, a.finish_reason), (&b.text, &b.tokens, b.finish_reason), "request {i}");
    }
    assert!(full.iter().all(|g| g.tokens.len() > 10), "replies long enough to compare");
    let mixed = [grounded[1].clone(), phi];
    let (full, _, _) = run(&mixed, false);
    let (replies, headless, forwards) = run(&mixed, true);
    // Headless while the grounded request runs (its JSON closes without a forward for its
    // end of turn); the JSON-mode one, alone after it, gets llama.cpp's layer again.
    let grounded_forwards = replies[0].tokens.len() as u64 - 1;
    assert!(headless >= grounded_forwards && headless < forwards, "{headless} of {forwards} forwards headless");
    for (i, (a, b)) in full.iter().zip(&replies).enumerate() {
        assert_eq!((&a.text, &a.tokens, a.finish_reason), (&b.text, &b.tokens, b.finish_reason), "mixed request {i}");
    }
}

/// Drafted tokens change how many decode steps a reply takes, never the reply: grounded
/// replies of three task schemas, JSON mode, free text with logprobs and a stop string,
/// seeded sampling with `n` = 2, all decoded together, token for token; and fewer tokens
/// take a decode step of their own.
#[test]
fn drafts_give_the_reply_of_plain_decoding() {
    use crate::vocab::Task;
    let mut config = TeacherLlmConfig::new(llama_cpp::tests::SMOLLM);
    (config.context_length, config.max_batch) = (1536, 4);
    // Both runs compute every prompt: a prefix snapshot taken in one run (in another batch,
    // so other last bits) would otherwise serve only the next.
    config.prefix_cache_bytes = 0;
    let mut teacher = TeacherLlm::load(&config).expect("run `make models` first");
    let mut requests = vec![task_request(
        Task::Ade,
        "Unaccountable severe hypercalcemia in a patient treated for hypoparathyroidism with dihydrotachysterol.",
        64,
    )];
    requests.extend(mixed_task_requests(64));
    requests.extend([
        GenerateRequest {
            stop: vec!["]".into()],
            ..GenerateRequest::greedy(few_shot("Metformin caused lactic acidosis and warfarin led to bleeding."), 24)
        },
        GenerateRequest {
            temperature: 0.8,
            seed: 3,
            n: 2,
            ..task_request(
                Task::Ade,
                "Severe hyponatremia occurred in a 70-year-old woman after initiation of sertraline.",
                48,
            )
        },
    ]);
    for request in &mut requests {
        request.logprobs = Some(MAX_TOP_LOGPROBS);
    }
    let run = |teacher: &mut TeacherLlm, draft_tokens| {
        teacher.draft_tokens = draft_tokens;
        let before = teacher.stats();
        let replies: Vec<Vec<Generation>> = teacher.run(&requests).into_iter().map(|r| r.unwrap()).collect();
        let after = teacher.stats();
        (
            replies,
            after.stepped() - before.stepped(),
            after.accepted - before.accepted,
            after.forwards - before.forwards,
        )
    };
    let (plain, plain_stepped, plain_accepted, plain_forwards) = run(&mut teacher, 0);
    let (drafted, stepped, accepted, forwards) = run(&mut teacher, MEASURED_DRAFT_TOKENS);
    for (i, (a, b)) in plain.iter().zip(&drafted).enumerate() {
        assert_eq!(a.len(), b.len());
        for (a, b) in a.iter().zip(b) {
            assert_same_up_to_a_tie(a, b, &format!("request {i}"));
        }
    }
    assert!(plain.iter().flatten().any(|g| g.text.len() > 20), "replies long enough to draft in");
    assert_eq!(plain_accepted, 0);
    assert!(
        accepted > 0 && stepped < plain_stepped && forwards < plain_forwards,
        "{stepped} vs {plain_stepped} stepped tokens, {forwards} vs {plain_forwards} forwards"
    );
}

/// `BIODISTILL_BENCH_MODEL` (default the Qwen 1.5B teacher) labels `BIODISTILL_ADE_N` (48)
/// ADE-Corpus-V2 sentences (3 of 4 from DRUG-AE.rel, 1 of 4 from ADE-NEG.txt, in file
/// order) as the label stage asks, admitted as a batch of up to `BIODISTILL_BATCH` (16) frees
/// up (continuous batching, as the server), once per draft setting in `BIODISTILL_DRAFTS`
/// (`tokens:step_tokens[:align_steps[:admitted_logits_only]],...`, 0/1 for the switches, default `0:0:1:0,0:0:1:1`).
/// Prints wall time, sentences/hour and
/// tokens per sentence, and checks every setting's replies against the first.
/// `cargo test --locked --lib -- --ignored --nocapture measure_drafts_on_ade`
#[test]
#[ignore = "minutes with the 1.5B teacher; prints the README's figures"]
fn measure_drafts_on_ade() {
    let env = |k: &str, d: &str| std::env::var(k).unwrap_or_else(|_| d.to_string());
    let model = Path::new(env!("CARGO_MANIFEST_DIR"))
        .join(env("BIODISTILL_BENCH_MODEL", "models/qwen2.5-coder-1.5b-instruct-q4_k_m.gguf"));
    let n: usize = env("BIODISTILL_ADE_N", "48").parse().unwrap();
    let data = Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data/ade_corpus_v2");
    let read = |file: &str, field: fn(&str) -> Option<&str>| -> Vec<String> {
        let text = std::fs::read_to_string(data.join(file)).unwrap();
        let mut seen = std::collections::BTreeSet::new();
        text.lines().filter_map(field).filter(|s| seen.insert(s.to_string())).map(str::to_string).collect()
    };
    let positive = read("DRUG-AE.rel", |l| l.split('|').nth(1));
    let negative = read("ADE-NEG.txt", |l| l.splitn(3, ' ').nth(2));
    let sentences: Vec<String> =
        (0..n).map(|i| if i % 4 == 3 { negative[i / 4].clone() } else { positive[i - i / 4].clone() }).collect();
    let requests: Vec<GenerateRequest> =
        sentences.iter().map(|s| task_request(crate::vocab::Task::Ade, s, 512)).collect();
    let mut config = TeacherLlmConfig::new(&model);
    config.threads = env("BIODISTILL_THREADS", "2").parse().unwrap();
    config.max_batch = env("BIODISTILL_BATCH", "16").parse().unwrap();
    let mut teacher = TeacherLlm::load(&config).unwrap();
    teacher.draft_tokens = 0;
    teacher.generate(&requests[0]).unwrap(); // the few-shot prefix into the prefix cache
    let mut first: Option<Vec<Generation>> = None;
    println!(
        "| drafts (tokens:step:align:admitted) | wall s | sentences/hour | forwards | tokens/sentence | stepped/sentence | drafted/sentence | accepted/sentence | unaligned/sentence | replies as the first |"
    );
    println!("|---|---|---|---|---|---|---|---|---|---|");
    for setting in env("BIODISTILL_DRAFTS", "0:0:1:0,0:0:1:1").split(',') {
        let parts: Vec<usize> = setting.split(':').map(|p| p.parse().unwrap()).collect();
        (teacher.draft_tokens, teacher.draft_step_tokens) = (parts[0], parts[1]);
        teacher.align_steps = parts.get(2).is_none_or(|&p| p == 1);
        teacher.admitted_logits_only = parts.get(3).is_none_or(|&p| p == 1);
        let before = teacher.stats();
        let started = Instant::now();
        let replies = label_continuously(&mut teacher, &requests, config.max_batch);
        let wall = started.elapsed().as_secs_f64();
        let s = teacher.stats();
        let per = |x: u64| x as f64 / n as f64;
        let same = first.as_ref().map_or(n, |f| f.iter().zip(&replies).filter(|(a, b)| reply(a) == reply(b)).count());
        println!(
            "| {setting} | {wall:.1} | {:.0} | {} | {:.1} | {:.1} | {:.1} | {:.1} | {:.2} | {same}/{n} |",
            n as f64 * 3600.0 / wall,
            s.forwards - before.forwards,
            per(s.picked - before.picked),
            per(s.stepped() - before.stepped()),
            per(s.drafted - before.drafted),
            per(s.accepted - before.accepted),
            per(s.unaligned - before.unaligned),
        );
        first.get_or_insert(replies);
    }
}

/// Every request's first choice, admitted as the batch has room (as the server does).
fn label_continuously(teacher: &mut TeacherLlm, requests: &[GenerateRequest], max_batch: usize) -> Vec<Generation> {
    let mut done: Vec<Option<Generation>> = vec![None; requests.len()];
    let (mut owners, mut running, mut next) = (Vec::new(), Vec::new(), 0);
    while next < requests.len() || !running.is_empty() {
        while running.len() < max_batch && next < requests.len() {
            running.extend(teacher.start(&requests[next]).unwrap().into_iter().take(1));
            owners.push(next);
            next += 1;
        }
        teacher.step(&mut running).unwrap();
        for i in (0..running.len()).rev() {
            if running[i].is_finished() {
                done[owners.swap_remove(i)] = Some(teacher.finish(running.swap_remove(i)));
            }
        }
    }
    done.into_iter().map(|g| g.unwrap()).collect()
}

#[test]
fn too_long_prompt_is_rejected() {
    let mut teacher = smollm();
    let long = "word ".repeat(600);
    let err = teacher.start(&GenerateRequest::greedy(vec![ChatMessage::new(Role::User, long)], 4));
    assert!(matches!(err, Err(Error::PromptTooLong { .. })));
}
