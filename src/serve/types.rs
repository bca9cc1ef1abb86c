//! OpenAI wire types of `POST /v1/chat/completions`, `GET /v1/models` and what both
//! completion endpoints share (the response envelope, usage, errors), shaped so `async-openai`
//! and the official Python client parse them unchanged (after TEI's `router/src/http/types.rs`).
//! The legacy `/v1/completions` types are in [`super::completions`]. Unknown request fields
//! are ignored, as OpenAI-compatible servers usually do.

use serde::{Deserialize, Serialize};

use super::generate::Sampling;
use crate::llm::schema::ResponseSchema;
use crate::llm::{ChatMessage, FinishReason, Role, TokenLogprob, TokenProb};

/// `POST /v1/chat/completions` body.
#[derive(Debug, Clone, Deserialize)]
pub struct OpenAICompatChatRequest {
    pub model: String,
    pub messages: Vec<OpenAICompatMessage>,
    /// `max_tokens`, `temperature`, `top_p`, `seed`, `stop`, `n`, `stream`, … as for
    /// `/v1/completions`.
    #[serde(flatten)]
    pub sampling: Sampling,
    /// Newer name of `max_tokens`; wins when both are given.
    pub max_completion_tokens: Option<u32>,
    /// Return each generated token's log probability ...
    pub logprobs: Option<bool>,
    /// ... and this many alternatives at each position (0..=20; needs `logprobs`).
    pub top_logprobs: Option<u32>,
    /// Not implemented; rejected unless empty.
    pub tools: Option<Vec<serde_json::Value>>,
    /// Vendor extension (send with Python's `extra_body`).
    pub biodistill: Option<OpenAICompatExtension>,
    /// OpenAI's free-form metadata; `biodistill_source_text` here turns grounding on, for
    /// typed clients such as `async-openai` that cannot add top-level fields.
    pub metadata: Option<serde_json::Value>,
    /// `{"type": "json_object"}` or `{"type": "json_schema", "json_schema": {"schema": ...}}`:
    /// the reply is constrained to JSON, with the schema's property names as the only keys.
    pub response_format: Option<serde_json::Value>,
}

/// Metadata key whose value is the grounding source text.
pub const METADATA_SOURCE_TEXT: &str = "biodistill_source_text";

/// The `biodistill` request extension.
#[derive(Debug, Clone, Default, Deserialize, Serialize)]
pub struct OpenAICompatExtension {
    /// Constrain the reply to JSON whose string values are substrings of `source_text`.
    #[serde(default)]
    pub grounded: bool,
    pub source_text: Option<String>,
}

impl OpenAICompatChatRequest {
    /// The grounding source text, from the extension or the metadata.
    pub fn grounded_source(&self) -> Option<String> {
        if let Some(ext) = self.biodistill.as_ref().filter(|e| e.grounded) {
            return ext.source_text.clone();
        }
        let text = self.metadata.as_ref()?.get(METADATA_SOURCE_TEXT)?.as_str()?;
        Some(text.to_string())
    }

    /// Whether the reply must be JSON (`response_format` `json_object` or `json_schema`, or
    /// grounding), and if so the schema it must follow (none sent: any JSON).
    pub fn json_schema(&self) -> Option<ResponseSchema> {
        let format = self.response_format.as_ref().and_then(|f| f.get("type")?.as_str());
        if !matches!(format, Some("json_object" | "json_schema")) && self.grounded_source().is_none() {
            return None;
        }
        let schema = self.response_format.as_ref().and_then(|f| f.get("json_schema")?.get("schema"));
        Some(schema.map(ResponseSchema::from_json_schema).unwrap_or_default())
    }
}

/// `stream_options`: `include_usage` adds a last chunk with empty `choices` and the usage.
#[derive(Debug, Clone, Default, Deserialize)]
pub struct OpenAICompatStreamOptions {
    pub include_usage: Option<bool>,
}

#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OpenAICompatStop {
    One(String),
    Many(Vec<String>),
}

impl OpenAICompatStop {
    pub fn into_vec(self) -> Vec<String> {
        match self {
            Self::One(s) => vec![s],
            Self::Many(v) => v,
        }
    }
}

/// A request message. `developer` is treated as `system`.
#[derive(Debug, Clone, Deserialize)]
pub struct OpenAICompatMessage {
    pub role: String,
    pub content: Option<OpenAICompatContent>,
}

/// Message content: a string or a list of parts (only text parts are supported).
#[derive(Debug, Clone, Deserialize)]
#[serde(untagged)]
pub enum OpenAICompatContent {
    Text(String),
    Parts(Vec<OpenAICompatContentPart>),
}

#[derive(Debug, Clone, Deserialize)]
pub struct OpenAICompatContentPart {
    #[serde(rename = "type")]
    pub kind: String,
    pub text: Option<String>,
}

impl OpenAICompatMessage {
    /// The message as the model sees it, or a reason it cannot be used (becomes a 400).
    pub fn to_chat(&self) -> Result<ChatMessage, String> {
        let role = match self.role.as_str() {
            "system" | "developer" => Role::System,
            "user" => Role::User,
            "assistant" => Role::Assistant,
            other => return Err(format!("messages with role `{other}` are not supported")),
        };
        let content = match &self.content {
            None => String::new(),
            Some(OpenAICompatContent::Text(t)) => t.clone(),
            Some(OpenAICompatContent::Parts(parts)) => {
                let mut text = String::new();
                for part in parts {
                    match (part.kind.as_str(), &part.text) {
                        ("text", Some(t)) => text.push_str(t),
                        (kind, _) => return Err(format!("content parts of type `{kind}` are not supported")),
                    }
                }
                text
            }
        };
        Ok(ChatMessage::new(role, content))
    }
}

/// A completion response or stream chunk of either endpoint: `chat.completion`,
/// `chat.completion.chunk` or `text_completion`, with that object's choice type.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OpenAICompatCompletion<C> {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub model: String,
    pub choices: Vec<C>,
    /// Always in a response; in a stream only in the last chunk, with `include_usage`.
    pub usage: Option<OpenAICompatUsage>,
}

/// `POST /v1/chat/completions` reply.
pub type OpenAICompatChatResponse = OpenAICompatCompletion<OpenAICompatChoice>;

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OpenAICompatChoice {
    pub index: u32,
    pub message: OpenAICompatReplyMessage,
    pub logprobs: Option<OpenAICompatChatLogprobs>,
    pub finish_reason: String,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OpenAICompatReplyMessage {
    pub role: String,
    pub content: String,
}

/// One choice of a `chat.completion.chunk`: the role first, then pieces of content, then an
/// empty delta with the `finish_reason`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OpenAICompatChunkChoice {
    pub index: u32,
    pub delta: OpenAICompatDelta,
    pub logprobs: Option<OpenAICompatChatLogprobs>,
    pub finish_reason: Option<String>,
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct OpenAICompatDelta {
    #[serde(skip_serializing_if = "Option::is_none")]
    pub role: Option<String>,
    #[serde(skip_serializing_if = "Option::is_none")]
    pub content: Option<String>,
}

/// `choices[].logprobs` of the chat endpoint.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OpenAICompatChatLogprobs {
    pub content: Vec<OpenAICompatTokenLogprob>,
    /// Never set (no refusals here); sent as `null` as OpenAI does.
    pub refusal: Option<Vec<OpenAICompatTokenLogprob>>,
}

/// A generated token: its text, log probability, UTF-8 bytes and the best alternatives.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OpenAICompatTokenLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
    pub top_logprobs: Vec<OpenAICompatTopLogprob>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OpenAICompatTopLogprob {
    pub token: String,
    pub logprob: f32,
    pub bytes: Vec<u8>,
}

impl OpenAICompatTopLogprob {
    pub fn new(token: &TokenProb) -> Self {
        Self {
            token: String::from_utf8_lossy(&token.bytes).into_owned(),
            logprob: token.logprob,
            bytes: token.bytes.clone(),
        }
    }
}

impl OpenAICompatChatLogprobs {
    pub fn new(logprobs: &[TokenLogprob]) -> Self {
        let content = logprobs
            .iter()
            .map(|lp| {
                let token = OpenAICompatTopLogprob::new(&lp.token);
                let top_logprobs = lp.top.iter().map(OpenAICompatTopLogprob::new).collect();
                OpenAICompatTokenLogprob {
                    token: token.token,
                    logprob: token.logprob,
                    bytes: token.bytes,
                    top_logprobs,
                }
            })
            .collect();
        Self { content, refusal: None }
    }
}

#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct OpenAICompatUsage {
    pub prompt_tokens: u32,
    pub completion_tokens: u32,
    pub total_tokens: u32,
    pub prompt_tokens_details: OpenAICompatPromptTokensDetails,
}

/// How much of the prompt came from the prefix cache.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct OpenAICompatPromptTokensDetails {
    pub cached_tokens: u32,
}

pub fn finish_reason(reason: FinishReason) -> &'static str {
    match reason {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
    }
}

/// `GET /v1/models` reply.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OpenAICompatModelList {
    pub object: String,
    pub data: Vec<OpenAICompatModel>,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OpenAICompatModel {
    pub id: String,
    pub object: String,
    pub created: u64,
    pub owned_by: String,
}

/// OpenAI's error body: `{"error": {"message", "type", "param", "code"}}`.
#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OpenAICompatErrorBody {
    pub error: OpenAICompatError,
}

#[derive(Debug, Clone, Serialize, Deserialize)]
pub struct OpenAICompatError {
    pub message: String,
    #[serde(rename = "type")]
    pub kind: String,
    pub param: Option<String>,
    pub code: Option<String>,
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_the_forms_clients_send() {
        let body = r#"{"model":"m","messages":[
            {"role":"developer","content":"Be brief."},
            {"role":"user","content":[{"type":"text","text":"Hi "},{"type":"text","text":"there"}]}],
            "stop":"\n","seed":7,"metadata":{"biodistill_source_text":"Hi there"},"logprobs":false,
            "temperature":0,"n":2}"#;
        let req: OpenAICompatChatRequest = serde_json::from_str(body).unwrap();
        let msgs: Vec<_> = req.messages.iter().map(|m| m.to_chat().unwrap()).collect();
        assert_eq!(msgs[0], ChatMessage::new(Role::System, "Be brief."));
        assert_eq!(msgs[1].content, "Hi there");
        assert_eq!(req.sampling.stop.clone().unwrap().into_vec(), vec!["\n"]);
        // Flattened sampling fields: an integer temperature still reads as a float.
        assert_eq!((req.sampling.temperature, req.sampling.n, req.sampling.seed), (Some(0.0), Some(2), Some(7)));
        assert_eq!(req.grounded_source().as_deref(), Some("Hi there"));
        let ext = r#"{"model":"m","messages":[],"biodistill":{"grounded":true,"source_text":"x"}}"#;
        let req: OpenAICompatChatRequest = serde_json::from_str(ext).unwrap();
        assert_eq!(req.grounded_source().as_deref(), Some("x"));
        assert_eq!(req.json_schema(), Some(ResponseSchema::default()), "grounding implies JSON");
    }

    #[test]
    fn the_response_format_schema_is_followed() {
        use crate::llm::schema::Node;
        let schema = crate::teacher::parse::json_schema(crate::vocab::Task::GeneDisease);
        let body = serde_json::json!({"model": "m", "messages": [],
            "response_format": {"type": "json_schema", "json_schema": {"name": "x", "schema": schema}}});
        let req: OpenAICompatChatRequest = serde_json::from_value(body).unwrap();
        let schema = req.json_schema().unwrap();
        assert_eq!(schema.all_keys(), ["associations", "disease", "diseases", "gene", "genes"]);
        assert!(matches!(schema.node(ResponseSchema::ROOT), Node::Object { required, .. } if required.len() == 3));
        let text: OpenAICompatChatRequest = serde_json::from_str(r#"{"model":"m","messages":[]}"#).unwrap();
        assert_eq!(text.json_schema(), None, "no response_format, free text");
    }
}
