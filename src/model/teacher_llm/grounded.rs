//! Grounded decoding: a byte-level automaton that accepts exactly the prefixes of JSON
//! documents whose string *values* are substrings of a source text. Without a source it is
//! plain JSON mode (OpenAI's `response_format`): any string values, keys still from the schema.
//!
//! At each step the generation loop offers candidate tokens (best logit first) and keeps only
//! those whose bytes the automaton accepts, so the reply is always parseable JSON and every
//! extracted span is copied from the input: no parse failures, no paraphrased or hallucinated
//! spans. Object keys are the property names of the request's JSON schema when it sends one
//! (free otherwise); the top level must be an object or an array; once it closes, only an
//! end-of-turn token is allowed.
//!
//! Bytes, not chars: a byte-level BPE token may end inside a UTF-8 character, and a substring
//! test on bytes is the same as on chars for valid UTF-8.

use std::sync::Arc;

/// Deepest nesting accepted (a task schema needs 3; this stops runaway `[[[[`).
const MAX_DEPTH: usize = 8;
/// Longest run of whitespace accepted between tokens (stops endless indentation).
const MAX_WHITESPACE_RUN: u8 = 24;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Container {
    Object,
    Array,
}

#[derive(Debug, Clone, PartialEq, Eq)]
enum Mode {
    /// Expecting a value; `close_ok` when it is the first slot of an array (`[]`).
    Value {
        close_ok: bool,
    },
    /// Expecting an object key; `close_ok` when it is the first (`{}`).
    Key {
        close_ok: bool,
    },
    Colon,
    /// Inside a string. For values, `starts` are the source offsets where the bytes so far
    /// match; for keys with a schema, the indices of the allowed keys they match; `len` is how
    /// many bytes matched.
    Str {
        key: bool,
        escape: bool,
        starts: Vec<usize>,
        len: usize,
    },
    Number(Num),
    /// Inside `true`/`false`/`null`: the bytes still expected.
    Literal(&'static [u8]),
    /// After a complete value inside a container: `,` or the closing bracket.
    After,
    /// The top-level value is complete.
    Done,
}

/// Where a number is in the JSON number grammar.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Num {
    Minus,
    Zero,
    Int,
    Dot,
    Frac,
    Exp,
    ExpSign,
    ExpDigits,
}

impl Num {
    /// The state after `b`, `None` if `b` does not continue the number.
    fn next(self, b: u8) -> Option<Num> {
        use Num::*;
        match (self, b) {
            (Minus, b'0') => Some(Zero),
            (Minus | Int, b'0'..=b'9') => Some(Int),
            (Zero | Int, b'.') => Some(Dot),
            (Dot | Frac, b'0'..=b'9') => Some(Frac),
            (Zero | Int | Frac, b'e' | b'E') => Some(Exp),
            (Exp, b'+' | b'-') => Some(ExpSign),
            (Exp | ExpSign | ExpDigits, b'0'..=b'9') => Some(ExpDigits),
            _ => None,
        }
    }

    fn can_end(self) -> bool {
        matches!(self, Num::Zero | Num::Int | Num::Frac | Num::ExpDigits)
    }
}

/// The automaton state. Cheap to clone for value strings over short sources.
#[derive(Debug, Clone)]
pub struct GroundedJson {
    /// String values must be substrings of this; `None`: any string.
    source: Option<Arc<str>>,
    /// Allowed object keys; empty means any printable-ASCII key.
    keys: Arc<[String]>,
    stack: Vec<Container>,
    mode: Mode,
    whitespace_run: u8,
}

impl GroundedJson {
    /// Start a document whose string values must occur in `source`.
    pub fn new(source: &str) -> Self {
        Self { source: Some(Arc::from(source)), ..Self::json_only() }
    }

    /// Start a document of plain JSON: string values are free.
    pub fn json_only() -> Self {
        Self {
            source: None,
            keys: Arc::from([]),
            stack: Vec::new(),
            mode: Mode::Value { close_ok: false },
            whitespace_run: 0,
        }
    }

    /// Only accept object keys from `keys` (without it a model may echo schema words such as
    /// `additionalProperties` as keys, and the reply fails to parse).
    pub fn with_keys(mut self, keys: Vec<String>) -> Self {
        self.keys = keys.into();
        self
    }

    /// Whether the top-level value is complete (only end of turn may follow).
    pub fn is_complete(&self) -> bool {
        self.mode == Mode::Done
    }

    /// The state after `bytes`, or `None` if they cannot continue a grounded document.
    pub fn advanced(&self, bytes: &[u8]) -> Option<Self> {
        let mut next = self.clone();
        bytes.iter().all(|&b| next.feed(b)).then_some(next)
    }

    /// Consume one byte; `false` means rejected (the state is then meaningless).
    fn feed(&mut self, b: u8) -> bool {
        if let Mode::Number(num) = self.mode {
            if let Some(next) = num.next(b) {
                self.mode = Mode::Number(next);
                return true;
            }
            if !num.can_end() {
                return false;
            }
            self.value_done();
        }
        let ws = matches!(b, b' ' | b'\n' | b'\r' | b'\t');
        let in_token = matches!(self.mode, Mode::Str { .. } | Mode::Literal(_));
        if ws && !in_token {
            self.whitespace_run += 1;
            // No whitespace before the document or after it: the reply is the JSON alone.
            let edge = self.stack.is_empty();
            return !edge && self.whitespace_run <= MAX_WHITESPACE_RUN;
        }
        self.whitespace_run = 0;
        match &mut self.mode {
            Mode::Value { close_ok } => match b {
                b'{' | b'[' => self.open(b),
                _ if self.stack.is_empty() => false,
                b']' if *close_ok => self.close(Container::Array),
                b'"' => {
                    let starts = self.source.as_ref().map_or(Vec::new(), |s| (0..=s.len()).collect());
                    self.mode = Mode::Str { key: false, escape: false, starts, len: 0 };
                    true
                }
                b'-' => {
                    self.mode = Mode::Number(Num::Minus);
                    true
                }
                b'0' => {
                    self.mode = Mode::Number(Num::Zero);
                    true
                }
                b'1'..=b'9' => {
                    self.mode = Mode::Number(Num::Int);
                    true
                }
                b't' => self.literal(b"rue"),
                b'f' => self.literal(b"alse"),
                b'n' => self.literal(b"ull"),
                _ => false,
            },
            Mode::Key { close_ok } => match b {
                b'"' => {
                    let starts = (0..self.keys.len()).collect();
                    self.mode = Mode::Str { key: true, escape: false, starts, len: 0 };
                    true
                }
                b'}' if *close_ok => self.close(Container::Object),
                _ => false,
            },
            Mode::Colon => {
                self.mode = Mode::Value { close_ok: false };
                b == b':'
            }
            Mode::Str { key, escape, starts, len } => {
                let literal = if *escape {
                    *escape = false;
                    match b {
                        b'"' | b'\\' | b'/' => b,
                        b'n' => b'\n',
                        b't' => b'\t',
                        _ => return false,
                    }
                } else {
                    match b {
                        b'"' if *key => {
                            let complete = |&k: &usize| self.keys[k].len() == *len;
                            if !self.keys.is_empty() && !starts.iter().any(complete) {
                                return false;
                            }
                            self.mode = Mode::Colon;
                            return true;
                        }
                        b'"' => {
                            // The span must end on a character boundary of the source.
                            let end = *len;
                            if let Some(source) = &self.source
                                && !starts.iter().any(|&s| source.is_char_boundary(s + end))
                            {
                                return false;
                            }
                            self.value_done();
                            return true;
                        }
                        b'\\' => {
                            // Only when an escape can follow: a state with no continuation
                            // would leave the sampler without an admissible token.
                            let escapable = |b: Option<&u8>| matches!(b, Some(b'"' | b'\\' | b'/' | b'\n' | b'\t'));
                            let possible = match (*key, &self.source) {
                                (true, _) => self.keys.is_empty(),
                                (false, None) => true,
                                (false, Some(source)) => {
                                    starts.iter().any(|&s| escapable(source.as_bytes().get(s + *len)))
                                }
                            };
                            *escape = true;
                            return possible;
                        }
                        0..0x20 => return false,
                        _ => b,
                    }
                };
                if *key && self.keys.is_empty() {
                    // Keys name schema fields: printable ASCII keeps them valid UTF-8.
                    return (0x20..0x7f).contains(&literal);
                }
                if *key {
                    starts.retain(|&k| self.keys[k].as_bytes().get(*len) == Some(&literal));
                    *len += 1;
                    return !starts.is_empty();
                }
                let Some(source) = &self.source else { return true };
                let source = source.as_bytes();
                starts.retain(|&s| source.get(s + *len) == Some(&literal));
                *len += 1;
                !starts.is_empty()
            }
            Mode::Literal(rest) => match rest.split_first() {
                Some((&first, tail)) if first == b => {
                    *rest = tail;
                    if tail.is_empty() {
                        self.value_done();
                    }
                    true
                }
                _ => false,
            },
            Mode::After => match (b, self.stack.last()) {
                (b',', Some(Container::Object)) => {
                    self.mode = Mode::Key { close_ok: false };
                    true
                }
                (b',', Some(Container::Array)) => {
                    self.mode = Mode::Value { close_ok: false };
                    true
                }
                (b'}', Some(Container::Object)) => self.close(Container::Object),
                (b']', Some(Container::Array)) => self.close(Container::Array),
                _ => false,
            },
            Mode::Number(_) => unreachable!("numbers end above"),
            Mode::Done => false,
        }
    }

    fn open(&mut self, b: u8) -> bool {
        if self.stack.len() >= MAX_DEPTH {
            return false;
        }
        if b == b'{' {
            self.stack.push(Container::Object);
            self.mode = Mode::Key { close_ok: true };
        } else {
            self.stack.push(Container::Array);
            self.mode = Mode::Value { close_ok: true };
        }
        true
    }

    fn close(&mut self, container: Container) -> bool {
        if self.stack.pop() != Some(container) {
            return false;
        }
        self.value_done();
        true
    }

    fn literal(&mut self, rest: &'static [u8]) -> bool {
        self.mode = Mode::Literal(rest);
        true
    }

    /// A value just ended: either the document is done or its container continues.
    fn value_done(&mut self) {
        self.mode = if self.stack.is_empty() { Mode::Done } else { Mode::After };
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const SOURCE: &str = "Ibuprofen caused \"severe\" gastric bleeding in a 54-year-old man.";

    fn accepts(text: &str) -> Option<GroundedJson> {
        GroundedJson::new(SOURCE).advanced(text.as_bytes())
    }

    #[test]
    fn accepts_grounded_documents_and_their_prefixes() {
        let doc = r#"{"pairs": [{"drug": "Ibuprofen", "effect": "gastric bleeding"}], "n": -1.5e3, "ok": true, "x": null, "y": []}"#;
        for end in 0..=doc.len() {
            assert!(accepts(&doc[..end]).is_some(), "prefix {:?}", &doc[..end]);
        }
        assert!(accepts(doc).unwrap().is_complete());
        assert!(accepts(r#"["\"severe\" gastric"]"#).unwrap().is_complete());
        assert!(accepts("{}").unwrap().is_complete());
    }

    #[test]
    fn rejects_ungrounded_or_malformed_output() {
        for bad in [
            r#"{"drug": "Aspirin"}"#,   // not in the source
            r#"{"drug": "ibuprofen"}"#, // case matters: spans are copied
            "```json",                  // fences
            " {",                       // leading whitespace
            r#""Ibuprofen""#,           // top level must be a container
            r#"{"a" 1}"#,               // missing colon
            r#"{"a": 1,}"#,             // trailing comma
            r#"{"a": 1}}"#,             // after the end
            r#"{"a": tru}"#,
            r#"[1] "#, // whitespace after the end
            "[01]",
            "[1.]",
            "[-]",
        ] {
            assert!(accepts(bad).is_none(), "{bad}");
        }
    }

    #[test]
    fn spans_end_on_character_boundaries() {
        let state = GroundedJson::new("café au lait");
        assert!(state.advanced("[\"café\"]".as_bytes()).is_some());
        assert!(state.advanced(&[b'[', b'"', b'c', b'a', b'f', 0xc3, b'"']).is_none());
    }

    #[test]
    fn keys_come_from_the_schema_when_given() {
        let keys = vec!["drugs".to_string(), "drug".to_string(), "adverse_events".to_string()];
        let state = GroundedJson::new(SOURCE).with_keys(keys);
        let doc = r#"{"drugs": [{"drug": "Ibuprofen", "adverse_events": ["gastric bleeding"]}]}"#;
        assert!(state.advanced(doc.as_bytes()).unwrap().is_complete());
        assert!(state.advanced(br#"{"dru"#).is_some(), "a prefix of a key");
        for bad in [r#"{"additionalProperties""#, r#"{"dru":"#, r#"{"drugss""#] {
            assert!(state.advanced(bad.as_bytes()).is_none(), "{bad}");
        }
    }

    #[test]
    fn json_only_frees_values_but_not_keys_or_syntax() {
        let state = GroundedJson::json_only().with_keys(vec!["text".into(), "type".into()]);
        let doc = r#"{"text": "Aspirin \"x\"", "type": "NAME"}"#;
        assert!(state.advanced(doc.as_bytes()).unwrap().is_complete());
        for bad in [r#"{"additionalProperties""#, "```json", r#"{"text": "a"}}"#] {
            assert!(state.advanced(bad.as_bytes()).is_none(), "{bad}");
        }
    }

    #[test]
    fn every_accepted_prefix_can_continue() {
        // A backslash is only accepted where an escape sequence can follow it.
        assert!(accepts(r#"{"a": "\""#).is_some(), "the source has a quote to escape");
        assert!(GroundedJson::new("no quotes here").advanced(br#"["\"#).is_none());
        let keyed = GroundedJson::new(SOURCE).with_keys(vec!["drug".into()]);
        assert!(keyed.advanced(br#"{"\"#).is_none(), "schema keys have no escapes");
    }

    #[test]
    fn depth_is_bounded() {
        assert!(accepts(&"[".repeat(MAX_DEPTH)).is_some());
        assert!(accepts(&"[".repeat(MAX_DEPTH + 1)).is_none());
    }
}
