//! The embedded server as a complete OpenAI endpoint (issue 18): streaming, `n` choices,
//! logprobs and the legacy `/v1/completions`, with SmolLM2-135M through `async-openai`, and
//! every bad input through raw HTTP (a typed client cannot send most of them).

use async_openai::types::chat::{
    ChatCompletionRequestUserMessage, ChatCompletionStreamOptions, CreateChatCompletionRequest,
    CreateChatCompletionRequestArgs, CreateChatCompletionResponse,
};
use async_openai::types::completions::{CreateCompletionRequest, CreateCompletionRequestArgs};
use biodistill::serve::RunningServer;
use futures::StreamExt;

use super::serve::{assert_openai_error, client, raw_post_to, server};

/// A greedy chat request, or sampled at `temperature` with `seed`.
fn chat(server: &RunningServer, user: &str, max_tokens: u32) -> CreateChatCompletionRequest {
    sampled(server, user, max_tokens, 0.0, 0)
}

fn sampled(
    server: &RunningServer,
    user: &str,
    max_tokens: u32,
    temperature: f32,
    seed: i64,
) -> CreateChatCompletionRequest {
    CreateChatCompletionRequestArgs::default()
        .model(server.model_id())
        .messages([ChatCompletionRequestUserMessage::from(user).into()])
        .max_completion_tokens(max_tokens)
        .temperature(temperature)
        .seed(seed)
        .build()
        .unwrap()
}

fn texts(reply: &CreateChatCompletionResponse) -> Vec<String> {
    reply.choices.iter().map(|c| c.message.content.clone().unwrap_or_default()).collect()
}

/// Streamed deltas, concatenated per choice, are the non-streamed greedy reply; the usage
/// chunk comes last with empty choices and the same counts.
#[tokio::test]
async fn streamed_deltas_add_up_to_the_greedy_reply() {
    let server = server().await;
    let client = client(&server);
    let mut request = chat(&server, "Name three rivers of Europe, with one sentence on each.", 40);
    let whole = client.chat().create(request.clone()).await.unwrap();
    let expected = texts(&whole).remove(0);
    assert!(expected.chars().count() > 20, "{expected:?}");

    request.n = Some(2);
    request.stream_options = Some(ChatCompletionStreamOptions { include_usage: Some(true), include_obfuscation: None });
    let mut stream = client.chat().create_stream(request).await.unwrap();
    let (mut text, mut finish, mut usage, mut content_chunks) = (vec![String::new(); 2], vec![None; 2], None, 0);
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        assert_eq!(chunk.object, "chat.completion.chunk");
        assert!(usage.is_none(), "the usage chunk is the last");
        if chunk.choices.is_empty() {
            usage = chunk.usage;
            continue;
        }
        for choice in chunk.choices {
            let i = choice.index as usize;
            assert!(finish[i].is_none(), "nothing after a choice's finish_reason");
            if let Some(content) = choice.delta.content.filter(|c| !c.is_empty()) {
                text[i].push_str(&content);
                content_chunks += 1;
            }
            finish[i] = finish[i].or(choice.finish_reason);
        }
    }
    assert_eq!(text, [expected.clone(), expected], "greedy choices stream the non-streamed reply");
    assert!(content_chunks >= 10, "streamed token by token, not at the end: {content_chunks} chunks");
    assert_eq!(finish, [whole.choices[0].finish_reason; 2]);
    let (usage, whole_usage) = (usage.expect("a usage chunk"), whole.usage.unwrap());
    assert_eq!(usage.prompt_tokens, whole_usage.prompt_tokens, "the prompt counts once for n choices");
    assert_eq!(usage.completion_tokens, 2 * whole_usage.completion_tokens);
}

/// The bytes on the wire: an event stream of `data: {chunk}` events, one per token or so,
/// ending with `data: [DONE]`.
#[tokio::test]
async fn the_stream_is_server_sent_events_ending_with_done() {
    let server = server().await;
    let body = serde_json::json!({"model": server.model_id(), "max_tokens": 6, "temperature": 0, "stream": true,
        "messages": [{"role": "user", "content": "Count to five."}]});
    let response = raw_request(&server, "/v1/chat/completions", &body.to_string()).await;
    let (head, body) = response.split_once("\r\n\r\n").unwrap();
    assert!(
        head.starts_with("HTTP/1.1 200") && head.to_ascii_lowercase().contains("content-type: text/event-stream"),
        "{head}"
    );
    let data: Vec<&str> = body.lines().filter_map(|l| l.strip_prefix("data: ")).collect();
    assert_eq!(data.last(), Some(&"[DONE]"), "{body}");
    let chunks: Vec<serde_json::Value> =
        data[..data.len() - 1].iter().map(|d| serde_json::from_str(d).unwrap()).collect();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    assert!(chunks.iter().all(|c| c["object"] == "chat.completion.chunk" && c["id"] == chunks[0]["id"]));
    assert!(chunks.len() >= 5, "role, tokens, finish: {body}");
    assert!(chunks.last().unwrap()["choices"][0]["finish_reason"].is_string());
}

/// POST `body` to `path` and read the whole raw response (head and body).
async fn raw_request(server: &RunningServer, path: &str, body: &str) -> String {
    use tokio::io::{AsyncReadExt, AsyncWriteExt};
    let mut stream = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        super::serve::KEY,
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    response
}

/// `n` choices: identical and indexed 0..n when greedy; sampled with a seed, a set that
/// repeats exactly.
#[tokio::test]
async fn n_choices_greedy_and_seeded() {
    let server = server().await;
    let client = client(&server);
    let prompt = "Write a short sentence about the sea.";
    let mut request = chat(&server, prompt, 16);
    request.n = Some(3);
    let greedy = client.chat().create(request.clone()).await.unwrap();
    assert_eq!(greedy.choices.iter().map(|c| c.index).collect::<Vec<_>>(), [0, 1, 2]);
    let greedy_texts = texts(&greedy);
    assert!(greedy_texts.iter().all(|t| t == &greedy_texts[0] && !t.is_empty()), "{greedy_texts:?}");

    let mut request = sampled(&server, prompt, 16, 1.2, 11);
    request.n = Some(3);
    let (chat_a, chat_b) = (client.chat(), client.chat());
    let (a, b) = tokio::join!(chat_a.create(request.clone()), chat_b.create(request.clone()));
    let (a, b) = (texts(&a.unwrap()), texts(&b.unwrap()));
    assert_eq!(a, b, "a seed reproduces the whole set");
    assert!(a[1] != a[0] || a[2] != a[0], "sampled choices differ: {a:?}");
}

/// Logprobs are ≤ 0, alternatives sorted best first, the chosen token's logprob equal to its
/// entry among them; greedy picks the best; streamed logprobs are the non-streamed ones.
#[tokio::test]
async fn logprobs_follow_openai_rules() {
    let server = server().await;
    let client = client(&server);
    let mut request = sampled(&server, "Say something about cats.", 12, 0.9, 3);
    (request.logprobs, request.top_logprobs) = (Some(true), Some(5));
    let reply = client.chat().create(request.clone()).await.unwrap();
    let content = reply.choices[0].logprobs.clone().unwrap().content.unwrap();
    assert!(!content.is_empty());
    let mut chosen_listed = 0;
    for token in &content {
        assert!(token.logprob <= 0.0 && token.top_logprobs.len() == 5, "{token:?}");
        assert_eq!(String::from_utf8_lossy(token.bytes.as_deref().unwrap()), token.token);
        assert!(token.top_logprobs.windows(2).all(|w| w[0].logprob >= w[1].logprob), "{token:?}");
        if let Some(listed) = token.top_logprobs.iter().find(|t| t.token == token.token) {
            assert_eq!(listed.logprob, token.logprob);
            chosen_listed += 1;
        }
    }
    assert!(chosen_listed > 0);
    let bytes: Vec<u8> = content.iter().flat_map(|t| t.bytes.clone().unwrap()).collect();
    let joined = String::from_utf8(bytes).unwrap();
    assert_eq!(Some(joined), reply.choices[0].message.content, "one entry per token of the text");

    request.temperature = Some(0.0);
    let greedy = client.chat().create(request.clone()).await.unwrap();
    let greedy_content = greedy.choices[0].logprobs.clone().unwrap().content.unwrap();
    assert!(greedy_content.iter().all(|t| t.top_logprobs[0].token == t.token), "greedy takes the best token");
    let mut stream = client.chat().create_stream(request).await.unwrap();
    let mut streamed = Vec::new();
    while let Some(chunk) = stream.next().await {
        for choice in chunk.unwrap().choices {
            streamed.extend(choice.logprobs.and_then(|l| l.content).unwrap_or_default());
        }
    }
    assert_eq!(streamed.len(), greedy_content.len());
    for (s, g) in streamed.iter().zip(&greedy_content) {
        assert_eq!((&s.token, s.top_logprobs.len()), (&g.token, g.top_logprobs.len()));
        assert!((s.logprob - g.logprob).abs() < 1e-3, "{s:?} vs {g:?}");
    }
}

fn completion(server: &RunningServer, prompt: &str, max_tokens: u32) -> CreateCompletionRequest {
    CreateCompletionRequestArgs::default()
        .model(server.model_id())
        .prompt(prompt)
        .max_tokens(max_tokens)
        .temperature(0.0)
        .build()
        .unwrap()
}

/// `/v1/completions`: text for a prompt, `n` per prompt of a list (indexed prompt × n +
/// choice), legacy logprobs, and a stream that adds up to the same text.
#[tokio::test]
async fn legacy_completions_return_text() {
    let server = server().await;
    let client = client(&server);
    let request = completion(&server, "The capital of France is", 8);
    let reply = client.completions().create(request.clone()).await.unwrap();
    assert_eq!(reply.object, "text_completion");
    let text = reply.choices[0].text.clone();
    assert!(!text.trim().is_empty(), "{text:?}");
    assert!((1..=8).contains(&reply.usage.as_ref().unwrap().completion_tokens));

    let mut many = request.clone();
    many.prompt = vec!["The capital of France is".to_string(), "One, two, three,".to_string()].into();
    (many.n, many.logprobs) = (Some(2), Some(2));
    let reply = client.completions().create(many).await.unwrap();
    let indexes: Vec<u32> = reply.choices.iter().map(|c| c.index).collect();
    assert_eq!(indexes, [0, 1, 2, 3]);
    assert_eq!(reply.choices[0].text, text);
    assert_eq!(reply.choices[1].text, text);
    assert_ne!(reply.choices[2].text, text);
    let logprobs = reply.choices[0].logprobs.clone().unwrap();
    assert_eq!(logprobs.tokens.concat(), text);
    assert_eq!(logprobs.token_logprobs.len(), logprobs.tokens.len());
    assert!(logprobs.token_logprobs.iter().all(|l| l.is_some_and(|l| l <= 0.0)));
    assert_eq!(logprobs.text_offset[0], 0);
    assert!(logprobs.top_logprobs.iter().all(|t| t.as_object().is_some_and(|m| (2..=3).contains(&m.len()))));

    let mut stream = client.completions().create_stream(request).await.unwrap();
    let mut streamed = String::new();
    while let Some(chunk) = stream.next().await {
        let chunk = chunk.unwrap();
        assert_eq!(chunk.object, "text_completion");
        streamed.extend(chunk.choices.into_iter().map(|c| c.text));
    }
    assert_eq!(streamed, text);
}

/// Every bad input is a 400 in OpenAI's shape whose `param` and message name the parameter,
/// and streaming requests fail the same way before any event is sent.
#[tokio::test]
async fn bad_inputs_name_their_parameter() {
    let server = server().await;
    let model = server.model_id().to_string();
    let messages = serde_json::json!([{"role": "user", "content": "Hi"}]);
    let chat = |extra: serde_json::Value| {
        let mut body = serde_json::json!({"model": model, "messages": messages, "max_tokens": 2});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        ("/v1/chat/completions", body)
    };
    let text = |extra: serde_json::Value| {
        let mut body = serde_json::json!({"model": model, "prompt": "Hello", "max_tokens": 2});
        body.as_object_mut().unwrap().extend(extra.as_object().unwrap().clone());
        ("/v1/completions", body)
    };
    let cases = [
        (chat(serde_json::json!({"n": 0})), "n"),
        (chat(serde_json::json!({"n": 5})), "n"), // config(): max_batch = 4
        (chat(serde_json::json!({"logprobs": true, "top_logprobs": 21})), "top_logprobs"),
        (chat(serde_json::json!({"top_logprobs": 2})), "top_logprobs"),
        (chat(serde_json::json!({"stream_options": {"include_usage": true}})), "stream_options"),
        (chat(serde_json::json!({"max_tokens": 0})), "max_tokens"),
        (chat(serde_json::json!({"temperature": 3})), "temperature"),
        (chat(serde_json::json!({"presence_penalty": 0.5})), "presence_penalty"),
        (chat(serde_json::json!({"logit_bias": {"42": 5}})), "logit_bias"),
        (chat(serde_json::json!({"tools": [{"type": "function", "function": {"name": "f"}}]})), "tools"),
        (
            chat(serde_json::json!({"stream": true, "messages": [{"role": "user", "content": "word ".repeat(400)}]})),
            "messages",
        ),
        (text(serde_json::json!({"logprobs": 6})), "logprobs"),
        (text(serde_json::json!({"n": 0})), "n"),
        (text(serde_json::json!({"prompt": ""})), "prompt"),
        (text(serde_json::json!({"prompt": [1, 2, 3]})), "prompt"),
        (text(serde_json::json!({"echo": true})), "echo"),
        (text(serde_json::json!({"best_of": 3})), "best_of"),
        (text(serde_json::json!({"frequency_penalty": -1})), "frequency_penalty"),
        (text(serde_json::json!({"stream": true, "prompt": "word ".repeat(400)})), "prompt"),
    ];
    for ((path, body), param) in cases {
        let (status, reply) = raw_post_to(&server, path, &body.to_string()).await;
        assert_eq!(status, 400, "{body}: {reply}");
        assert_openai_error(&reply, None);
        assert_eq!(reply["error"]["param"], param, "{body}: {reply}");
        let message = reply["error"]["message"].as_str().unwrap();
        assert!(param == "messages" || param == "prompt" || message.contains(param), "{message}");
    }
    let (status, reply) = raw_post_to(&server, "/v1/completions", &text(serde_json::json!({})).1.to_string()).await;
    assert_eq!(status, 200, "still serving: {reply}");
}

/// The same endpoints through the official `openai` Python package
/// (`scripts/openai_python_check.py`). Skipped, saying why on stderr past the test harness's
/// capture, where `python3` or the package is missing; never installs anything.
#[tokio::test]
async fn the_official_python_client_works() {
    use std::io::Write;
    let probe = std::process::Command::new("python3").args(["-c", "import openai"]).output();
    let reason = match probe {
        Ok(out) if out.status.success() => None,
        Ok(out) => Some(String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or_default().to_string()),
        Err(e) => Some(format!("no python3: {e}")),
    };
    if let Some(reason) = reason {
        let _ = writeln!(std::io::stderr(), "SKIPPED the_official_python_client_works: {reason}");
        return;
    }
    let server = server().await;
    let script = concat!(env!("CARGO_MANIFEST_DIR"), "/scripts/openai_python_check.py");
    let out = tokio::process::Command::new("python3")
        .args([script, &server.base_url(), super::serve::KEY, server.model_id()])
        .output()
        .await
        .unwrap();
    let (stdout, stderr) = (String::from_utf8_lossy(&out.stdout), String::from_utf8_lossy(&out.stderr));
    assert!(out.status.success(), "{stdout}\n{stderr}");
    assert!(stdout.contains(": ok"), "{stdout}");
}

/// Figures for the README, not a check (timings depend on the machine's load):
/// `cargo test --test integration -- --ignored --nocapture measure_streaming_and_n`.
#[tokio::test]
#[ignore = "prints timings"]
async fn measure_streaming_and_n() {
    use std::time::Instant;
    let server = server().await;
    let client = client(&server);
    let request = chat(&server, "Write a paragraph about the history of Paris.", 64);
    client.chat().create(request.clone()).await.unwrap(); // warm up
    let started = Instant::now();
    let whole = client.chat().create(request.clone()).await.unwrap();
    let whole_s = started.elapsed().as_secs_f64();
    let started = Instant::now();
    let mut stream = client.chat().create_stream(request).await.unwrap();
    let mut first = None;
    while let Some(chunk) = stream.next().await {
        let content = chunk.unwrap().choices.iter().any(|c| c.delta.content.as_deref().is_some_and(|t| !t.is_empty()));
        if content && first.is_none() {
            first = Some(started.elapsed().as_secs_f64());
        }
    }
    let stream_s = started.elapsed().as_secs_f64();
    let tokens = whole.usage.unwrap().completion_tokens;
    println!(
        "{tokens} tokens: whole reply {whole_s:.3} s; streamed: first token {:.3} s, last {stream_s:.3} s",
        first.unwrap()
    );

    let long = "The patient, a 64-year-old man with type 2 diabetes treated with metformin and a history of \
                hypertension, presented with lactic acidosis after an episode of acute kidney injury. "
        .repeat(4);
    let prompt = format!("{long}Summarise the case in one sentence.");
    let mut n4 = sampled(&server, &prompt, 16, 0.8, 1);
    n4.n = Some(4);
    let started = Instant::now();
    let reply = client.chat().create(n4).await.unwrap();
    let n4_s = started.elapsed().as_secs_f64();
    let prompt_tokens = reply.usage.unwrap().prompt_tokens;
    let one = |seed| sampled(&server, &prompt, 16, 0.8, seed);
    let chats = [client.chat(), client.chat(), client.chat(), client.chat()];
    let started = Instant::now();
    let (a, b, c, d) = tokio::join!(
        chats[0].create(one(1)),
        chats[1].create(one(2)),
        chats[2].create(one(3)),
        chats[3].create(one(4))
    );
    let four_s = started.elapsed().as_secs_f64();
    let completion: u32 = [a, b, c, d].into_iter().map(|r| r.unwrap().usage.unwrap().completion_tokens).sum();
    println!(
        "{prompt_tokens}-token prompt, 16 tokens x 4: n = 4 in one request {n4_s:.3} s; 4 requests at once {four_s:.3} s ({completion} tokens)"
    );
}
