//! Strict parsing of teacher replies, and the JSON schema each task's reply must follow.
//!
//! Strict means: the reply is exactly one JSON object of the task's shape, with no unknown
//! keys and nothing around it. The single tolerance is a Markdown code fence around the JSON
//! (small models add one even when told not to), which is counted so the report shows how
//! often it happens. Anything else is a parse failure, answered by one re-ask.

use serde::{Deserialize, Serialize};
use serde_json::json;

use crate::vocab::{PhiType, Task};

/// ADE reply: the drugs in the sentence, each with the adverse events it caused.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdeOutput {
    pub drugs: Vec<AdeDrug>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AdeDrug {
    pub drug: String,
    pub adverse_events: Vec<String>,
}

/// Gene–disease reply: mentions and the pairs the sentence associates.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeneDiseaseOutput {
    pub genes: Vec<String>,
    pub diseases: Vec<String>,
    pub associations: Vec<GeneDiseasePair>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct GeneDiseasePair {
    pub gene: String,
    pub disease: String,
}

/// PHI reply: typed spans.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhiOutput {
    pub entities: Vec<PhiEntity>,
}

#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct PhiEntity {
    pub text: String,
    #[serde(rename = "type")]
    pub phi_type: PhiType,
}

/// A parsed reply of any task.
#[derive(Debug, Clone, PartialEq)]
pub enum TaskOutput {
    Ade(AdeOutput),
    GeneDisease(GeneDiseaseOutput),
    Phi(PhiOutput),
}

/// An entity string the teacher returned, with its type (`drug`, `adverse_event`, `gene`,
/// `disease`, or a PHI type).
#[derive(Debug, Clone, PartialEq, Eq, PartialOrd, Ord)]
pub struct Mention {
    pub entity_type: String,
    pub text: String,
}

/// A related pair: `subject` is the anchor (drug, gene), `object` the related span.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Relation {
    pub subject: Mention,
    pub object: Mention,
}

fn mention(entity_type: &str, text: &str) -> Mention {
    Mention { entity_type: entity_type.to_string(), text: text.to_string() }
}

impl TaskOutput {
    /// Distinct entity mentions, in reply order.
    pub fn mentions(&self) -> Vec<Mention> {
        let mut all = Vec::new();
        match self {
            TaskOutput::Ade(o) => {
                for d in &o.drugs {
                    all.push(mention("drug", &d.drug));
                }
                for e in o.drugs.iter().flat_map(|d| &d.adverse_events) {
                    all.push(mention("adverse_event", e));
                }
            }
            TaskOutput::GeneDisease(o) => {
                all.extend(o.genes.iter().map(|g| mention("gene", g)));
                all.extend(o.diseases.iter().map(|d| mention("disease", d)));
                for p in &o.associations {
                    all.push(mention("gene", &p.gene));
                    all.push(mention("disease", &p.disease));
                }
            }
            TaskOutput::Phi(o) => all.extend(o.entities.iter().map(|e| mention(e.phi_type.as_str(), &e.text))),
        }
        let mut seen = std::collections::BTreeSet::new();
        all.retain(|m| !m.text.trim().is_empty() && seen.insert(m.clone()));
        all
    }

    /// Distinct relations, in reply order.
    pub fn relations(&self) -> Vec<Relation> {
        let mut all: Vec<Relation> = match self {
            TaskOutput::Ade(o) => o
                .drugs
                .iter()
                .flat_map(|d| {
                    d.adverse_events
                        .iter()
                        .map(|e| Relation { subject: mention("drug", &d.drug), object: mention("adverse_event", e) })
                })
                .collect(),
            TaskOutput::GeneDisease(o) => o
                .associations
                .iter()
                .map(|p| Relation { subject: mention("gene", &p.gene), object: mention("disease", &p.disease) })
                .collect(),
            TaskOutput::Phi(_) => Vec::new(),
        };
        let mut kept: Vec<Relation> = Vec::new();
        all.retain(|r| !r.subject.text.trim().is_empty() && !r.object.text.trim().is_empty());
        for r in all {
            if !kept.contains(&r) {
                kept.push(r);
            }
        }
        kept
    }

    /// Canonical JSON (used for few-shot assistant turns).
    pub fn to_json(&self) -> String {
        let value = match self {
            TaskOutput::Ade(o) => serde_json::to_string(o),
            TaskOutput::GeneDisease(o) => serde_json::to_string(o),
            TaskOutput::Phi(o) => serde_json::to_string(o),
        };
        value.expect("plain structs of strings always serialize")
    }
}

/// A successfully parsed reply.
#[derive(Debug, Clone, PartialEq)]
pub struct Parsed {
    pub output: TaskOutput,
    /// The JSON was wrapped in a Markdown code fence.
    pub fenced: bool,
}

/// Strip one Markdown code fence (```` ``` ```` or ```` ```json ````) around the whole reply.
fn strip_fence(reply: &str) -> Option<&str> {
    let inner = reply.trim().strip_prefix("```")?.strip_suffix("```")?;
    let (first_line, rest) = inner.split_once('\n')?;
    let tag = first_line.trim();
    (tag.is_empty() || tag.eq_ignore_ascii_case("json")).then_some(rest)
}

/// Parse a reply strictly (see the module docs); the error says what was wrong, for the re-ask.
pub fn parse(task: Task, reply: &str) -> Result<Parsed, String> {
    let (body, fenced) = match strip_fence(reply) {
        Some(inner) => (inner, true),
        None => (reply, false),
    };
    let output = match task {
        Task::Ade => serde_json::from_str(body).map(TaskOutput::Ade),
        Task::GeneDisease => serde_json::from_str(body).map(TaskOutput::GeneDisease),
        Task::Phi => serde_json::from_str(body).map(TaskOutput::Phi),
    }
    .map_err(|e| format!("not a JSON object of the required shape: {e}"))?;
    Ok(Parsed { output, fenced })
}

/// The JSON schema of a task's reply, sent as `response_format` (strict mode: every key
/// required, no extra keys), and quoted in prompts.
pub fn json_schema(task: Task) -> serde_json::Value {
    let strings = json!({"type": "array", "items": {"type": "string"}});
    let object = |properties: serde_json::Value, required: &[&str]| json!({"type": "object", "properties": properties, "required": required, "additionalProperties": false});
    match task {
        Task::Ade => object(
            json!({"drugs": {"type": "array", "items": object(
                json!({"drug": {"type": "string"}, "adverse_events": strings}),
                &["drug", "adverse_events"],
            )}}),
            &["drugs"],
        ),
        Task::GeneDisease => object(
            json!({
                "genes": strings,
                "diseases": strings,
                "associations": {"type": "array", "items": object(
                    json!({"gene": {"type": "string"}, "disease": {"type": "string"}}),
                    &["gene", "disease"],
                )},
            }),
            &["genes", "diseases", "associations"],
        ),
        Task::Phi => {
            let types: Vec<&str> = PhiType::ALL.iter().map(|t| t.as_str()).collect();
            object(
                json!({"entities": {"type": "array", "items": object(
                    json!({"text": {"type": "string"}, "type": {"type": "string", "enum": types}}),
                    &["text", "type"],
                )}}),
                &["entities"],
            )
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn strict_json_parses_and_fence_is_tolerated_and_flagged() {
        let plain = r#"{"drugs":[{"drug":"isoniazid","adverse_events":["hepatitis"]}]}"#;
        let p = parse(Task::Ade, plain).unwrap();
        assert!(!p.fenced);
        assert_eq!(p.output.relations().len(), 1);
        let fenced = format!("```json\n{plain}\n```\n");
        let f = parse(Task::Ade, &fenced).unwrap();
        assert!(f.fenced);
        assert_eq!(f.output, p.output);
        assert!(parse(Task::Ade, &format!("```\n{plain}\n```")).unwrap().fenced);
    }

    #[test]
    fn anything_but_the_schema_is_rejected() {
        for bad in [
            "",
            "not json",
            r#"Here you go: {"drugs":[]}"#,
            r#"{"drugs":[]} trailing"#,
            r#"{"drugs":[],"notes":"x"}"#,
            r#"{"drugs":[{"drug":"x"}]}"#,
            "```python\n{\"drugs\":[]}\n```",
        ] {
            assert!(parse(Task::Ade, bad).is_err(), "{bad:?} should be rejected");
        }
        assert!(parse(Task::Phi, r#"{"entities":[{"text":"Ann","type":"PERSON"}]}"#).is_err());
        let phi = parse(Task::Phi, r#"{"entities":[{"text":"Ann","type":"NAME"}]}"#).unwrap();
        assert_eq!(phi.output.mentions()[0].entity_type, "NAME");
    }

    #[test]
    fn mentions_and_relations_are_distinct_and_typed() {
        let reply = r#"{"genes":["BRCA1","BRCA1"],"diseases":["breast cancer"],
            "associations":[{"gene":"BRCA1","disease":"breast cancer"},{"gene":"BRCA1","disease":"breast cancer"}]}"#;
        let out = parse(Task::GeneDisease, reply).unwrap().output;
        assert_eq!(out.mentions().len(), 2);
        assert_eq!(out.relations().len(), 1);
        assert_eq!(out.relations()[0].subject.entity_type, "gene");
    }

    #[test]
    fn schema_and_parser_agree_on_keys() {
        for task in Task::ALL {
            let schema = json_schema(task);
            let required = schema["required"].as_array().unwrap();
            let empty: serde_json::Map<String, serde_json::Value> =
                required.iter().map(|k| (k.as_str().unwrap().to_string(), json!([]))).collect();
            let reply = serde_json::Value::Object(empty).to_string();
            assert!(parse(task, &reply).is_ok(), "{task}: {reply}");
        }
    }
}
