//! The embedded teacher server (issue 6) with SmolLM2-135M, through `async-openai` as the
//! teacher client uses it, plus raw HTTP for the malformed requests a typed client cannot send.

use async_openai::Client;
use async_openai::config::OpenAIConfig;
use async_openai::error::OpenAIError;
use async_openai::types::chat::{
    ChatCompletionRequestSystemMessage, ChatCompletionRequestUserMessage, CreateChatCompletionRequest,
    CreateChatCompletionRequestArgs, CreateChatCompletionResponse, FinishReason, ResponseFormat,
    ResponseFormatJsonSchema, StopConfiguration,
};
use biodistill::serve::{RunningServer, ServeConfig, spawn};
use tokio::io::{AsyncReadExt, AsyncWriteExt};

const SMOLLM: &str = concat!(env!("CARGO_MANIFEST_DIR"), "/models/SmolLM2-135M-Instruct.Q4_1.gguf");
pub(crate) const KEY: &str = "test-key";

pub(crate) fn config() -> ServeConfig {
    let mut config = ServeConfig::new(SMOLLM);
    config.context_length = 256;
    config.api_key = Some(KEY.into());
    config.max_batch = 4;
    config
}

pub(crate) async fn server() -> RunningServer {
    spawn(config()).await.expect("SmolLM2 in models/ (make models)")
}

pub(crate) fn client(server: &RunningServer) -> Client<OpenAIConfig> {
    Client::with_config(OpenAIConfig::new().with_api_base(server.base_url()).with_api_key(KEY))
}

fn request(server: &RunningServer, user: &str, max_tokens: u32) -> CreateChatCompletionRequest {
    CreateChatCompletionRequestArgs::default()
        .model(server.model_id())
        .messages([
            ChatCompletionRequestSystemMessage::from("You answer in one short sentence.").into(),
            ChatCompletionRequestUserMessage::from(user).into(),
        ])
        .max_completion_tokens(max_tokens)
        .temperature(0.8)
        .seed(42)
        .build()
        .unwrap()
}

/// POST a raw chat body; returns (status, parsed JSON body).
async fn raw_post(server: &RunningServer, body: &str) -> (u16, serde_json::Value) {
    raw_post_to(server, "/v1/chat/completions", body).await
}

/// POST a raw body to `path`; returns (status, parsed JSON body).
pub(crate) async fn raw_post_to(server: &RunningServer, path: &str, body: &str) -> (u16, serde_json::Value) {
    let mut stream = tokio::net::TcpStream::connect(server.addr()).await.unwrap();
    let head = format!(
        "POST {path} HTTP/1.1\r\nHost: localhost\r\nAuthorization: Bearer {KEY}\r\n\
         Content-Type: application/json\r\nContent-Length: {}\r\nConnection: close\r\n\r\n",
        body.len()
    );
    stream.write_all(head.as_bytes()).await.unwrap();
    stream.write_all(body.as_bytes()).await.unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).await.unwrap();
    let status = response[9..12].parse().unwrap();
    let body = response.split_once("\r\n\r\n").unwrap().1;
    (status, serde_json::from_str(body).unwrap_or_else(|e| panic!("{e}: {body}")))
}

pub(crate) fn assert_openai_error(body: &serde_json::Value, code: Option<&str>) {
    let error = &body["error"];
    assert!(error["message"].as_str().is_some_and(|m| !m.is_empty()), "{body}");
    assert!(error["type"].is_string(), "{body}");
    assert!(error.get("param").is_some() && error.get("code").is_some(), "{body}");
    if let Some(code) = code {
        assert_eq!(error["code"], code, "{body}");
    }
}

fn assert_shape(reply: &CreateChatCompletionResponse, model: &str, max_tokens: u32) {
    assert_eq!(reply.object, "chat.completion");
    assert_eq!(reply.model, model);
    assert_eq!(reply.choices.len(), 1);
    assert!(reply.choices[0].message.content.as_deref().is_some_and(|c| !c.is_empty()));
    let usage = reply.usage.as_ref().unwrap();
    assert!(usage.prompt_tokens > 10);
    assert!(usage.completion_tokens >= 1 && usage.completion_tokens <= max_tokens);
    assert_eq!(usage.total_tokens, usage.prompt_tokens + usage.completion_tokens);
}

#[tokio::test]
async fn chat_completions_through_async_openai() {
    let server = server().await;
    let client = client(&server);

    let models = client.models().list().await.unwrap();
    assert_eq!(models.data[0].id, server.model_id());

    // Shape, usage, and a fixed seed giving the same sampled reply (also when concurrent).
    let req = request(&server, "Name a color.", 12);
    let chat = client.chat();
    let (a, b) = tokio::join!(chat.create(req.clone()), chat.create(req.clone()));
    let (a, b) = (a.unwrap(), b.unwrap());
    assert_shape(&a, server.model_id(), 12);
    assert_eq!(a.choices[0].message.content, b.choices[0].message.content);
    assert_eq!(a.usage.as_ref().unwrap().completion_tokens, b.usage.as_ref().unwrap().completion_tokens);

    // max_tokens ends with "length"; a stop string ends with "stop" and is not returned.
    let mut short = request(&server, "Count from one to twenty in words.", 3);
    short.temperature = Some(0.0);
    let reply = client.chat().create(short.clone()).await.unwrap();
    assert_eq!(reply.choices[0].finish_reason, Some(FinishReason::Length));
    assert_eq!(reply.usage.unwrap().completion_tokens, 3);
    let mut long = short.clone();
    long.max_completion_tokens = Some(24);
    let full = client.chat().create(long.clone()).await.unwrap().choices[0].message.content.clone().unwrap();
    let stop_word = full.split_whitespace().nth(1).expect("two words").to_string();
    long.stop = Some(StopConfiguration::String(stop_word.clone()));
    let stopped = client.chat().create(long).await.unwrap();
    let text = stopped.choices[0].message.content.clone().unwrap();
    assert_eq!(stopped.choices[0].finish_reason, Some(FinishReason::Stop));
    assert!(!text.contains(&stop_word) && full.starts_with(&text), "{text:?} vs {full:?}");

    // Unknown model: 404 model_not_found, through the typed client.
    let mut unknown = request(&server, "Hi", 4);
    unknown.model = "gpt-4o".into();
    match client.chat().create(unknown).await {
        Err(OpenAIError::ApiError(e)) => assert_eq!(e.api_error.code.as_deref(), Some("model_not_found")),
        other => panic!("expected an API error, got {other:?}"),
    }

    // Wrong key: 401.
    let anonymous = Client::with_config(OpenAIConfig::new().with_api_base(server.base_url()).with_api_key("nope"));
    assert!(matches!(anonymous.models().list().await, Err(OpenAIError::ApiError(_))));
    server.shutdown().await;
}

#[tokio::test]
async fn bad_requests_get_openai_errors_and_the_server_keeps_serving() {
    let server = server().await;
    let (status, body) = raw_post(&server, "{\"model\": ").await;
    assert_eq!(status, 400);
    assert_openai_error(&body, None);

    let (status, body) =
        raw_post(&server, r#"{"model": "nope", "messages": [{"role": "user", "content": "Hi"}]}"#).await;
    assert_eq!(status, 404);
    assert_openai_error(&body, Some("model_not_found"));

    let long = "word ".repeat(400);
    let too_long = serde_json::json!({"model": server.model_id(), "messages": [{"role": "user", "content": long}]});
    let (status, body) = raw_post(&server, &too_long.to_string()).await;
    assert_eq!(status, 400);
    assert_openai_error(&body, Some("context_length_exceeded"));

    let ok = serde_json::json!({"model": server.model_id(), "max_tokens": 2, "messages": [{"role": "user", "content": "Hi"}]});
    let (status, body) = raw_post(&server, &ok.to_string()).await;
    assert_eq!(status, 200, "{body}");
    assert_eq!(body["usage"]["completion_tokens"], 2);
}

/// A full queue is turned away at once with 429 `rate_limit_exceeded` (OpenAI's shape, so
/// clients back off), and the server keeps serving: with one sequence decoding and one
/// waiting, two more concurrent requests find no room.
#[tokio::test]
async fn a_full_queue_gets_429_and_the_server_keeps_serving() {
    let mut config = config();
    (config.max_batch, config.max_queue) = (1, 1);
    let server = spawn(config).await.expect("SmolLM2 in models/ (make models)");
    let body = serde_json::json!({
        "model": server.model_id(), "max_tokens": 32, "temperature": 0,
        "messages": [{"role": "user", "content": "Count from one to fifty in words."}],
    })
    .to_string();
    let (a, b, c, d) = tokio::join!(
        raw_post(&server, &body),
        raw_post(&server, &body),
        raw_post(&server, &body),
        raw_post(&server, &body)
    );
    let statuses: Vec<u16> = [&a, &b, &c, &d].iter().map(|r| r.0).collect();
    assert!(statuses.iter().all(|s| [200, 429].contains(s)), "{statuses:?}");
    assert!(statuses.contains(&200) && statuses.iter().filter(|&&s| s == 429).count() >= 2, "{statuses:?}");
    for (_, body) in [a, b, c, d].iter().filter(|r| r.0 == 429) {
        assert_openai_error(body, Some("rate_limit_exceeded"));
    }
    let (status, body) = raw_post(&server, &body).await;
    assert_eq!(status, 200, "{body}");
}

/// Grounded decoding through the typed client (`metadata`) and the `biodistill` extension: the
/// reply is JSON whose strings all occur in the input. The schema (one object, two required
/// string keys, nothing else) bounds the reply, so it completes well within `max_tokens` and
/// is checked whole; a reply cut at `max_tokens` fails the test.
#[tokio::test]
async fn grounded_decoding_returns_json_copied_from_the_input() {
    let server = server().await;
    let source = "Severe hepatotoxicity developed after high-dose acetaminophen in a 40-year-old woman.";
    let schema = serde_json::json!({
        "type": "object",
        "properties": {"drug": {"type": "string"}, "effect": {"type": "string"}},
        "required": ["drug", "effect"],
    });
    let mut req = request(&server, &format!("Give the drug and the adverse effect as JSON: {source}"), 150);
    req.temperature = Some(0.0);
    req.metadata = Some(serde_json::json!({"biodistill_source_text": source}).into());
    let json_schema =
        ResponseFormatJsonSchema { name: "pair".into(), schema: schema.clone(), description: None, strict: None };
    req.response_format = Some(ResponseFormat::JsonSchema { json_schema });
    let reply = client(&server).chat().create(req).await.unwrap();
    let choice = &reply.choices[0];
    let text = choice.message.content.clone().unwrap();
    assert_eq!(choice.finish_reason, Some(FinishReason::Stop), "cut at max_tokens: {text}");
    assert_grounded_pair(&text, source);

    let body = serde_json::json!({
        "model": server.model_id(), "max_tokens": 150, "temperature": 0,
        "messages": [{"role": "user", "content": format!("Extract as JSON: {source}")}],
        "response_format": {"type": "json_schema", "json_schema": {"name": "pair", "schema": schema}},
        "biodistill": {"grounded": true, "source_text": source},
    });
    let (status, body) = raw_post(&server, &body.to_string()).await;
    assert_eq!(status, 200, "{body}");
    let text = body["choices"][0]["message"]["content"].as_str().unwrap();
    assert_eq!(body["choices"][0]["finish_reason"], "stop", "cut at max_tokens: {text}");
    assert_grounded_pair(text, source);
}

/// `text` is an object with exactly the schema's keys, every string of it copied from `source`.
fn assert_grounded_pair(text: &str, source: &str) {
    let json: serde_json::Value = serde_json::from_str(text).unwrap_or_else(|e| panic!("{e}: {text}"));
    let keys: Vec<&str> =
        json.as_object().unwrap_or_else(|| panic!("not an object: {text}")).keys().map(String::as_str).collect();
    assert_eq!(keys, ["drug", "effect"], "{text}");
    assert_strings_in(&json, source);
}

fn assert_strings_in(value: &serde_json::Value, source: &str) {
    match value {
        serde_json::Value::String(s) => assert!(source.contains(s.as_str()), "{s:?} not in the input"),
        serde_json::Value::Array(items) => items.iter().for_each(|v| assert_strings_in(v, source)),
        serde_json::Value::Object(map) => map.values().for_each(|v| assert_strings_in(v, source)),
        _ => {}
    }
}
