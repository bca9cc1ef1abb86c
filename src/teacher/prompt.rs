//! Prompt files: one TOML file per task under `pipelines/prompts/`, rendered into chat messages.
//!
//! ```toml
//! task = "ade"
//! version = "ade-v1"          # bump when the meaning changes
//! system = "..."              # may use {schema} and {phi_types}
//! user = "Sentence: {sentence}"
//! [[examples]]                # few-shot turns, checked before any call
//! text = "..."
//! reply = '{"drugs": [...]}'
//! ```
//!
//! Every example reply must parse strictly and every string in it must occur verbatim in its
//! example text, or loading fails: a few-shot example that teaches paraphrasing would poison
//! every call. The recorded prompt version is `<version>@<first 8 hex of sha256(file)>`, so an
//! edit that forgot to bump `version` still shows up in `teacher_labels`; the cache key covers
//! the rendered messages themselves, so any edit asks again.

use std::path::{Path, PathBuf};

use async_openai::types::chat::{
    ChatCompletionRequestAssistantMessage, ChatCompletionRequestMessage, ChatCompletionRequestSystemMessage,
    ChatCompletionRequestUserMessage,
};
use serde::Deserialize;
use sha2::{Digest, Sha256};

use super::parse::{self, TaskOutput};
use crate::error::{Error, IoContext, Result};
use crate::vocab::{PhiType, Task};

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct PromptFile {
    task: Task,
    version: String,
    system: String,
    user: String,
    #[serde(default)]
    examples: Vec<ExampleFile>,
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct ExampleFile {
    text: String,
    reply: String,
}

/// A loaded, checked prompt for one task.
#[derive(Debug, Clone)]
pub struct Prompt {
    pub task: Task,
    /// `<version>@<hash8>` (see the module docs).
    pub version: String,
    pub path: PathBuf,
    system: String,
    user: String,
    examples: Vec<(String, TaskOutput)>,
}

/// A chat message as plain strings (role, content): what the cache key and token estimate use.
pub type Message = (&'static str, String);

impl Prompt {
    /// Load `<dir>/<task>.toml` and check its examples.
    pub fn load(dir: &Path, task: Task) -> Result<Self> {
        let path = dir.join(format!("{}.toml", task.as_str()));
        let raw = std::fs::read_to_string(&path).with_path(&path)?;
        Self::parse_file(&path, &raw, task)
    }

    /// Parse and check a prompt file's contents (`path` is for messages).
    pub fn parse_file(path: &Path, raw: &str, task: Task) -> Result<Self> {
        let file: PromptFile =
            toml::from_str(raw).map_err(|e| Error::input(path, format!("invalid prompt file: {e}")))?;
        if file.task != task {
            return Err(Error::input(path, format!("prompt is for task {}, expected {task}", file.task)));
        }
        if !file.user.contains("{sentence}") {
            return Err(Error::input(path, "`user` template must contain {sentence}"));
        }
        let mut examples = Vec::new();
        for (i, example) in file.examples.iter().enumerate() {
            let output = check_example(task, example)
                .map_err(|problem| Error::input(path, format!("few-shot example {}: {problem}", i + 1)))?;
            examples.push((example.text.clone(), output));
        }
        let hash = hex::encode(Sha256::digest(raw.as_bytes()));
        Ok(Prompt {
            task,
            version: format!("{}@{}", file.version, &hash[..8]),
            path: path.to_path_buf(),
            system: file.system,
            user: file.user,
            examples,
        })
    }

    fn fill(&self, template: &str) -> String {
        let types: Vec<&str> = PhiType::ALL.iter().map(|t| t.as_str()).collect();
        template
            .replace("{schema}", &parse::json_schema(self.task).to_string())
            .replace("{phi_types}", &types.join(", "))
    }

    fn user_turn(&self, sentence: &str) -> String {
        self.fill(&self.user).replace("{sentence}", sentence)
    }

    /// The conversation for one sentence: system, few-shot turns, the sentence.
    pub fn messages(&self, sentence: &str) -> Vec<Message> {
        let mut messages = vec![("system", self.fill(&self.system))];
        for (text, output) in &self.examples {
            messages.push(("user", self.user_turn(text)));
            messages.push(("assistant", output.to_json()));
        }
        messages.push(("user", self.user_turn(sentence)));
        messages
    }

    /// Typical reply length in tokens, from the few-shot replies (for `--plan`).
    pub fn typical_reply_tokens(&self) -> u64 {
        let replies: Vec<u64> = self.examples.iter().map(|(_, o)| o.to_json().chars().count() as u64 / 4 + 4).collect();
        if replies.is_empty() { 64 } else { replies.iter().sum::<u64>() / replies.len() as u64 }
    }

    /// The one re-ask after an unparseable reply: the same conversation, the bad reply, and
    /// what was wrong with it.
    pub fn reask_messages(&self, sentence: &str, bad_reply: &str, problem: &str) -> Vec<Message> {
        let mut messages = self.messages(sentence);
        messages.push(("assistant", bad_reply.to_string()));
        messages.push((
            "user",
            format!(
                "Your reply could not be used ({problem}). Reply again with only the JSON object, exactly in \
                 the required schema, with no code fence and no other text."
            ),
        ));
        messages
    }
}

/// Why an example is unusable, if it is.
fn check_example(task: Task, example: &ExampleFile) -> std::result::Result<TaskOutput, String> {
    let parsed = parse::parse(task, &example.reply)?;
    if parsed.fenced {
        return Err("reply must be bare JSON, not fenced".into());
    }
    let output = parsed.output;
    let relation_strings = output.relations().into_iter().flat_map(|r| [r.subject, r.object]);
    for m in output.mentions().into_iter().chain(relation_strings) {
        if !example.text.contains(&m.text) {
            return Err(format!("{} {:?} does not occur in the example text", m.entity_type, m.text));
        }
    }
    Ok(output)
}

/// Convert plain messages to async-openai's request messages.
pub fn to_chat_messages(messages: &[Message]) -> Vec<ChatCompletionRequestMessage> {
    messages
        .iter()
        .map(|(role, content)| match *role {
            "system" => ChatCompletionRequestSystemMessage::from(content.as_str()).into(),
            "assistant" => ChatCompletionRequestAssistantMessage::from(content.as_str()).into(),
            _ => ChatCompletionRequestUserMessage::from(content.as_str()).into(),
        })
        .collect()
}

/// Rough token count of messages: ~4 chars per token for English plus a few per message.
/// Used for `--plan` and the tokens-per-minute limiter, never for billing (that uses the
/// server's reported usage).
pub fn estimate_tokens(messages: &[Message]) -> u64 {
    messages.iter().map(|(_, c)| c.chars().count() as u64 / 4 + 4).sum()
}

#[cfg(test)]
mod tests {
    use super::*;

    const ADE: &str = r#"
task = "ade"
version = "t1"
system = "Extract. Schema: {schema}"
user = "Sentence: {sentence}"
[[examples]]
text = "Isoniazid caused hepatitis."
reply = '{"drugs":[{"drug":"Isoniazid","adverse_events":["hepatitis"]}]}'
"#;

    #[test]
    fn the_shipped_prompt_files_load() {
        let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/prompts");
        for task in Task::ALL {
            let p = Prompt::load(&dir, task).unwrap_or_else(|e| panic!("{task}: {e}"));
            assert!(!p.examples.is_empty(), "{task} has few-shot examples");
            let m = p.messages("A sentence.");
            assert_eq!(m.len(), 2 + 2 * p.examples.len());
            assert!(!m[0].1.contains("{schema}") && !m[0].1.contains("{phi_types}"));
        }
    }

    #[test]
    fn renders_few_shot_turns_and_versions_by_content() {
        let p = Prompt::parse_file(Path::new("ade.toml"), ADE, Task::Ade).unwrap();
        let m = p.messages("Aspirin {schema} caused rash.");
        assert_eq!(m.len(), 4);
        assert!(m[0].1.contains("\"adverse_events\""));
        assert_eq!(m[2].0, "assistant");
        assert_eq!(m[3].1, "Sentence: Aspirin {schema} caused rash.", "sentence text is not templated");
        let edited =
            Prompt::parse_file(Path::new("ade.toml"), &ADE.replace("Extract.", "Extract!"), Task::Ade).unwrap();
        assert!(p.version.starts_with("t1@") && edited.version != p.version);
        assert_eq!(p.reask_messages("x", "oops", "bad").len(), 6);
    }

    #[test]
    fn an_example_span_missing_from_its_text_is_rejected() {
        let bad = ADE.replace("\"hepatitis\"]", "\"liver injury\"]");
        let err = Prompt::parse_file(Path::new("ade.toml"), &bad, Task::Ade).unwrap_err().to_string();
        assert!(err.contains("ade.toml") && err.contains("example 1") && err.contains("liver injury"), "{err}");
        let wrong_task = Prompt::parse_file(Path::new("ade.toml"), ADE, Task::Phi).unwrap_err().to_string();
        assert!(wrong_task.contains("expected phi"), "{wrong_task}");
    }
}
