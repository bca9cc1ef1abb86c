//! ChatML prompts: `<|im_start|>{role}\n{content}<|im_end|>\n` per message, then
//! `<|im_start|>assistant\n` for the reply. Both supported teachers (Qwen2.5, SmolLM2) were
//! trained on this format.
//!
//! Each message is tokenized on its own and the ids concatenated. ChatML markers are special
//! tokens, so this gives the same ids as tokenizing the whole string, and it tells us exactly
//! where the shared part of a prompt (every message before the last) ends: that is the
//! boundary the prompt-prefix KV cache keys on.

use serde::{Deserialize, Serialize};
use tokenizers::Tokenizer;

use crate::{Error, Result};

/// Who wrote a message.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Role {
    System,
    User,
    Assistant,
}

impl Role {
    pub fn as_str(self) -> &'static str {
        match self {
            Role::System => "system",
            Role::User => "user",
            Role::Assistant => "assistant",
        }
    }
}

/// One chat message.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ChatMessage {
    pub role: Role,
    pub content: String,
}

impl ChatMessage {
    pub fn new(role: Role, content: impl Into<String>) -> Self {
        Self { role, content: content.into() }
    }
}

/// Messages given as `(role name, content)` pairs, as the teacher's prompt files build them:
/// names other than `system` and `assistant` are user turns, as the teacher client sends them.
pub fn named_messages<'a>(messages: impl IntoIterator<Item = (&'a str, String)>) -> Vec<ChatMessage> {
    let role = |name: &str| match name {
        "system" => Role::System,
        "assistant" => Role::Assistant,
        _ => Role::User,
    };
    messages.into_iter().map(|(name, content)| ChatMessage::new(role(name), content)).collect()
}

/// A tokenized ChatML prompt.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ChatPrompt {
    pub ids: Vec<u32>,
    /// Length of the part shared with other requests of the same task: every message but the
    /// last (system prompt and few-shot examples). 0 for a single message.
    pub shared_prefix_len: usize,
}

/// Render one message, or with `None` the assistant header that starts the reply.
fn render(message: Option<&ChatMessage>) -> String {
    match message {
        Some(m) => format!("<|im_start|>{}\n{}<|im_end|>\n", m.role.as_str(), m.content),
        None => "<|im_start|>assistant\n".to_string(),
    }
}

/// The whole prompt as text (for logs and for tests).
pub fn render_chatml(messages: &[ChatMessage]) -> String {
    messages.iter().map(|m| render(Some(m))).chain([render(None)]).collect()
}

/// What a request asks the model to continue.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Prompt {
    /// Chat messages, rendered as ChatML with the assistant header (`/v1/chat/completions`).
    Chat(Vec<ChatMessage>),
    /// Raw text continued as is, no template (`/v1/completions`).
    Text(String),
}

impl Prompt {
    /// Tokenize. A text prompt shares no prefix with other requests (nothing marks one).
    pub fn encode(&self, tokenizer: &Tokenizer) -> Result<ChatPrompt> {
        match self {
            Prompt::Chat(messages) => encode_chatml(tokenizer, messages),
            Prompt::Text(text) => {
                let enc = tokenizer.encode(text.as_str(), false).map_err(|e| Error::Tokenizer(e.to_string()))?;
                if enc.get_ids().is_empty() {
                    return Err(Error::Config("the prompt must not be empty".into()));
                }
                Ok(ChatPrompt { ids: enc.get_ids().to_vec(), shared_prefix_len: 0 })
            }
        }
    }
}

/// Tokenize `messages` into a ChatML prompt ending with the assistant header.
pub fn encode_chatml(tokenizer: &Tokenizer, messages: &[ChatMessage]) -> Result<ChatPrompt> {
    if messages.is_empty() {
        return Err(Error::Config("a chat request needs at least one message".into()));
    }
    let encode = |text: String| -> Result<Vec<u32>> {
        let enc = tokenizer.encode(text, false).map_err(|e| Error::Tokenizer(e.to_string()))?;
        Ok(enc.get_ids().to_vec())
    };
    let mut ids = Vec::new();
    let mut shared_prefix_len = 0;
    for (i, m) in messages.iter().enumerate() {
        if i + 1 == messages.len() {
            shared_prefix_len = ids.len();
        }
        ids.extend(encode(render(Some(m)))?);
    }
    ids.extend(encode(render(None))?);
    Ok(ChatPrompt { ids, shared_prefix_len })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn renders_chatml_with_assistant_header() {
        let messages = [ChatMessage::new(Role::System, "Be brief."), ChatMessage::new(Role::User, "Hi")];
        assert_eq!(
            render_chatml(&messages),
            "<|im_start|>system\nBe brief.<|im_end|>\n<|im_start|>user\nHi<|im_end|>\n<|im_start|>assistant\n"
        );
    }

    #[test]
    fn named_roles_map_and_other_names_are_user_turns() {
        let messages = named_messages([("system", "S".into()), ("assistant", "A".into()), ("tool", "T".into())]);
        let roles: Vec<Role> = messages.iter().map(|m| m.role).collect();
        assert_eq!(roles, [Role::System, Role::Assistant, Role::User]);
        assert_eq!(messages[2].content, "T");
    }

    #[test]
    fn per_message_encoding_equals_whole_prompt_encoding() {
        let vocab = crate::llm::gguf_tokenizer::tests::smollm_vocab();
        let tokenizer = vocab.tokenizer().unwrap();
        let messages = [
            ChatMessage::new(Role::System, "Extract drugs as JSON."),
            ChatMessage::new(Role::User, "Aspirin 100 mg"),
            ChatMessage::new(Role::Assistant, "{\"drugs\": [\"Aspirin\"]}"),
            ChatMessage::new(Role::User, "Ibuprofen caused a rash."),
        ];
        let prompt = encode_chatml(&tokenizer, &messages).unwrap();
        let whole = tokenizer.encode(render_chatml(&messages), false).unwrap();
        assert_eq!(prompt.ids, whole.get_ids());
        let head = tokenizer.encode(render_chatml(&messages[..3]), false).unwrap();
        // The shared prefix is the first three messages without the assistant header.
        let header = tokenizer.encode("<|im_start|>assistant\n", false).unwrap();
        assert_eq!(prompt.shared_prefix_len, head.len() - header.len());
    }
}
