//! A request's JSON schema (`response_format.json_schema.schema`) reduced to what grounded
//! decoding enforces: per object its property names and required keys, per array its item
//! schema, enum strings, and "this is a string". Anything else (`anyOf`, `$ref`, numbers)
//! is [`Node::Any`]: unconstrained, never wrongly rejected.
//!
//! Nodes live in one vector and refer to each other by index, so the automaton's states,
//! which are cloned for every candidate token, carry indices, not trees.

use serde_json::Value;

/// Index of a node in [`ResponseSchema::nodes`].
pub type NodeId = usize;

/// What one JSON value must be.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Node {
    Any,
    /// A string (from the source, when grounded).
    String,
    /// One of these strings.
    Enum(Vec<String>),
    Array {
        items: NodeId,
    },
    /// An object with exactly these keys (sorted), each with its value's node; `required`
    /// indexes `keys`. No `properties` in the schema: any keys, every value [`Node::Any`].
    Object {
        keys: Vec<String>,
        values: Vec<NodeId>,
        required: Vec<usize>,
    },
}

/// A schema tree; node 0 is the document. The default has no constraints.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ResponseSchema {
    nodes: Vec<Node>,
}

impl Default for ResponseSchema {
    fn default() -> Self {
        Self { nodes: vec![Node::Any] }
    }
}

impl ResponseSchema {
    /// The document's node.
    pub const ROOT: NodeId = 0;
    /// A node that is always [`Node::Any`] (values under keys the schema does not describe).
    pub const ANY: NodeId = usize::MAX;

    /// Reduce a JSON schema.
    pub fn from_json_schema(schema: &Value) -> Self {
        let mut out = Self { nodes: Vec::new() };
        out.add(schema);
        out
    }

    /// Whether every key a document may have is named and every value constrained (no free
    /// object, no [`Node::Any`]): a grounded document's strings are then keys, enum values or
    /// copied spans, and few tokens fit at any point.
    pub fn names_every_key(&self) -> bool {
        self.nodes.iter().all(|n| match n {
            Node::Any => false,
            Node::Object { keys, .. } => !keys.is_empty(),
            _ => true,
        })
    }

    pub fn node(&self, id: NodeId) -> &Node {
        static ANY: Node = Node::Any;
        self.nodes.get(id).unwrap_or(&ANY)
    }

    /// Every property name at any depth, sorted (what a flat key list would allow; tests
    /// compare schemas by it).
    #[cfg(test)]
    pub fn all_keys(&self) -> Vec<String> {
        let mut keys: Vec<String> = self
            .nodes
            .iter()
            .flat_map(|n| match n {
                Node::Object { keys, .. } => keys.clone(),
                _ => Vec::new(),
            })
            .collect();
        keys.sort();
        keys.dedup();
        keys
    }

    fn add(&mut self, schema: &Value) -> NodeId {
        let id = self.nodes.len();
        self.nodes.push(Node::Any);
        let kind = schema.get("type").and_then(Value::as_str);
        let enum_strings: Option<Vec<String>> = schema
            .get("enum")
            .and_then(Value::as_array)
            .and_then(|v| v.iter().map(|x| x.as_str().map(str::to_string)).collect());
        let node = if let Some(values) = enum_strings.filter(|v| !v.is_empty()) {
            Node::Enum(values)
        } else if let Some(props) = schema.get("properties").and_then(Value::as_object) {
            let mut props: Vec<(&String, &Value)> = props.iter().collect();
            props.sort_by(|a, b| a.0.cmp(b.0));
            let keys: Vec<String> = props.iter().map(|(k, _)| (*k).clone()).collect();
            let values = props.iter().map(|(_, v)| self.add(v)).collect();
            let names = schema.get("required").and_then(Value::as_array).into_iter().flatten();
            let required = names.filter_map(|r| keys.iter().position(|k| Some(k.as_str()) == r.as_str())).collect();
            Node::Object { keys, values, required }
        } else if kind == Some("object") {
            Node::Object { keys: Vec::new(), values: Vec::new(), required: Vec::new() }
        } else if let (Some("array"), Some(items)) = (kind, schema.get("items")) {
            Node::Array { items: self.add(items) }
        } else if kind == Some("string") {
            Node::String
        } else {
            Node::Any
        };
        self.nodes[id] = node;
        id
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn task_schemas_reduce_to_nested_objects_arrays_and_enums() {
        let schema = ResponseSchema::from_json_schema(&json!({
            "type": "object", "required": ["entities"], "additionalProperties": false,
            "properties": {"entities": {"type": "array", "items": {"type": "object",
                "required": ["text", "type"],
                "properties": {"type": {"type": "string", "enum": ["NAME", "DATE"]}, "text": {"type": "string"}}}}}
        }));
        let Node::Object { keys, values, required } = schema.node(ResponseSchema::ROOT) else { panic!() };
        assert_eq!((keys.as_slice(), required.as_slice()), (&["entities".to_string()][..], &[0][..]));
        let Node::Array { items } = schema.node(values[0]) else { panic!() };
        let Node::Object { keys, values, required } = schema.node(*items) else { panic!() };
        assert_eq!(keys, &["text", "type"], "sorted");
        assert_eq!(required, &[0, 1]);
        assert_eq!(schema.node(values[0]), &Node::String);
        assert_eq!(schema.node(values[1]), &Node::Enum(vec!["NAME".into(), "DATE".into()]));
        assert_eq!(schema.all_keys(), ["entities", "text", "type"]);
    }

    #[test]
    fn what_is_not_understood_is_unconstrained() {
        let schema = ResponseSchema::from_json_schema(&json!({"anyOf": [{"type": "string"}, {"type": "number"}]}));
        assert_eq!(schema.node(ResponseSchema::ROOT), &Node::Any);
        assert_eq!(ResponseSchema::default().node(ResponseSchema::ROOT), &Node::Any);
        let free = ResponseSchema::from_json_schema(&json!({"type": "object"}));
        assert!(matches!(free.node(0), Node::Object { keys, .. } if keys.is_empty()));
        assert!(!free.names_every_key() && !ResponseSchema::default().names_every_key());
        let task = ResponseSchema::from_json_schema(&crate::teacher::parse::json_schema(crate::vocab::Task::Ade));
        assert!(task.names_every_key());
    }
}
