//! Grounded decoding: a byte-level automaton that accepts exactly the prefixes of JSON
//! documents whose string *values* are substrings of a source text. Without a source it is
//! plain JSON mode (OpenAI's `response_format`): any string values, keys still from the schema.
//!
//! At each step the generation loop offers candidate tokens (best logit first) and keeps only
//! those whose bytes the automaton accepts, so the reply is always parseable JSON and every
//! extracted span is copied from the input: no parse failures, no paraphrased or hallucinated
//! spans. With a JSON schema ([`ResponseSchema`]) each object's keys are its own properties,
//! it cannot close before its required keys are written, a string-typed value is a string and
//! an `enum` value is one of its strings (not copied from the source); the top level must be an
//! object or an array; once it closes, only an end-of-turn token is allowed.
//!
//! No repetition loops: an array element equal to an earlier element of the same array is
//! accepted, but then the array must close; a key used twice in one object is rejected at the
//! byte that would complete it. A small teacher in a repetition loop otherwise lists the same
//! span until `max_tokens` (4 of 140 ADE replies on 2026-12-02). Rejecting the repeat instead
//! (as before) left dead ends: an element that could only complete as a repeat, e.g. an object
//! whose keys were all written, had no admissible continuation (2 of 240 replies). The reply
//! parser drops the duplicate.
//!
//! Bytes, not chars: a byte-level BPE token may end inside a UTF-8 character, and a substring
//! test on bytes is the same as on chars for valid UTF-8.

use std::sync::Arc;

use super::schema::{Node, NodeId, ResponseSchema};

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
    /// Inside a string. For source values, `starts` are the source offsets where the bytes so
    /// far match; for keys with a schema and enum values, the indices of the words they match;
    /// `len` is how many bytes matched.
    Str {
        kind: StrKind,
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

/// What the bytes of the string being generated must spell.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum StrKind {
    /// An object key (one of its schema's keys, if any).
    Key,
    /// A value of this [`Node::Enum`].
    Enum(NodeId),
    /// A value copied from the source (any string without one).
    Value,
}

/// The words string `kind` must spell inside `frame`, if it is not free or copied.
fn words<'a>(schema: &'a ResponseSchema, kind: StrKind, frame: Option<&Frame>) -> Option<&'a [String]> {
    let node = match kind {
        StrKind::Key => schema.node(frame?.node),
        StrKind::Enum(id) => schema.node(id),
        StrKind::Value => return None,
    };
    match node {
        Node::Object { keys, .. } if !keys.is_empty() => Some(keys),
        Node::Enum(values) => Some(values),
        _ => None,
    }
}

/// The schema keys of `frame` (an object) not written yet; `None` when its keys are free.
fn unused_keys(schema: &ResponseSchema, frame: Option<&Frame>, text: &[u8]) -> Option<Vec<usize>> {
    let frame = frame?;
    let keys = words(schema, StrKind::Key, Some(frame))?;
    let written = |k: &String| frame.seen.iter().any(|&(s, e)| &text[s..e] == k.as_bytes());
    Some((0..keys.len()).filter(|&i| !written(&keys[i])).collect())
}

/// An open object or array.
#[derive(Debug, Clone, PartialEq, Eq)]
struct Frame {
    container: Container,
    /// Where the current element (array) or key (object) starts in [`GroundedJson::text`].
    start: usize,
    /// The earlier elements or keys, as ranges of `text`.
    seen: Vec<(usize, usize)>,
    /// This container's schema node.
    node: NodeId,
    /// The node of the next value: arrays, their items; objects, the current key's value.
    value_node: NodeId,
    /// An array whose last element repeated an earlier one: it may only close.
    must_close: bool,
}

/// The automaton state. Cheap to clone for value strings over short sources.
#[derive(Debug, Clone)]
pub struct GroundedJson {
    /// String values must be substrings of this; `None`: any string.
    source: Option<Arc<str>>,
    /// What the document must match (default: anything).
    schema: Arc<ResponseSchema>,
    stack: Vec<Frame>,
    mode: Mode,
    whitespace_run: u8,
    /// The accepted bytes without whitespace between tokens, to compare elements and keys.
    text: Vec<u8>,
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
            schema: Arc::default(),
            stack: Vec::new(),
            mode: Mode::Value { close_ok: false },
            whitespace_run: 0,
            text: Vec::new(),
        }
    }

    /// Only accept documents of `schema` (without it a model may echo schema words such as
    /// `additionalProperties` as keys, put a key in the wrong object, or invent an enum value,
    /// and the reply fails to parse).
    pub fn with_schema(mut self, schema: ResponseSchema) -> Self {
        self.schema = Arc::new(schema);
        self
    }

    /// The node the next value must match.
    fn next_node(&self) -> NodeId {
        self.stack.last().map_or(ResponseSchema::ROOT, |f| f.value_node)
    }

    /// Whether few tokens fit at any point: strings are copied from a source or named by the
    /// schema (see [`ResponseSchema::names_every_key`]), so the admitted tokens can be listed.
    pub fn admits_few_tokens(&self) -> bool {
        self.source.is_some() && self.schema.names_every_key()
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
        let between_tokens =
            matches!(b, b' ' | b'\n' | b'\r' | b'\t') && !matches!(self.mode, Mode::Str { .. } | Mode::Literal(_));
        let accepted = self.step(b);
        if accepted && !between_tokens {
            self.text.push(b);
        }
        accepted
    }

    fn step(&mut self, b: u8) -> bool {
        if let Mode::Number(num) = self.mode {
            if let Some(next) = num.next(b) {
                self.mode = Mode::Number(next);
                return true;
            }
            if !num.can_end() || !self.value_done() {
                return false;
            }
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
        let schema = Arc::clone(&self.schema);
        let next = schema.node(self.next_node());
        match &mut self.mode {
            Mode::Value { close_ok } => match b {
                b']' if *close_ok => self.close(Container::Array),
                b'{' if matches!(next, Node::Any | Node::Object { .. }) => self.open(b),
                b'[' if matches!(next, Node::Any | Node::Array { .. }) => self.open(b),
                _ if self.stack.is_empty() => false,
                b'"' if matches!(next, Node::Any | Node::String | Node::Enum(_)) => {
                    let kind = match next {
                        Node::Enum(_) => StrKind::Enum(self.next_node()),
                        _ => StrKind::Value,
                    };
                    let starts = match (words(&schema, kind, None), &self.source) {
                        (Some(words), _) => (0..words.len()).collect(),
                        (None, Some(source)) => (0..=source.len()).collect(),
                        (None, None) => Vec::new(),
                    };
                    self.mode = Mode::Str { kind, escape: false, starts, len: 0 };
                    true
                }
                _ if *next != Node::Any => false,
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
                    let starts = match unused_keys(&schema, self.stack.last(), &self.text) {
                        Some(keys) if keys.is_empty() => return false,
                        keys => keys.unwrap_or_default(),
                    };
                    self.mode = Mode::Str { kind: StrKind::Key, escape: false, starts, len: 0 };
                    self.mark_start();
                    true
                }
                b'}' if *close_ok => self.close(Container::Object),
                _ => false,
            },
            Mode::Colon => {
                self.mode = Mode::Value { close_ok: false };
                b == b':'
            }
            Mode::Str { kind, escape, starts, len } => {
                let (kind, words) = (*kind, words(&schema, *kind, self.stack.last()));
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
                        b'"' if words.is_some_and(|w| !starts.iter().any(|&k| w[k].len() == *len)) => {
                            return false;
                        }
                        b'"' if kind == StrKind::Key => {
                            self.mode = Mode::Colon;
                            return self.key_done();
                        }
                        b'"' if words.is_some() => return self.value_done(),
                        b'"' => {
                            // The span must end on a character boundary of the source.
                            let end = *len;
                            if let Some(source) = &self.source
                                && !starts.iter().any(|&s| source.is_char_boundary(s + end))
                            {
                                return false;
                            }
                            return self.value_done();
                        }
                        b'\\' => {
                            // Only when an escape can follow: a state with no continuation
                            // would leave the sampler without an admissible token.
                            let escapable = |b: Option<&u8>| matches!(b, Some(b'"' | b'\\' | b'/' | b'\n' | b'\t'));
                            let possible = match (words, &self.source) {
                                (Some(words), _) => starts.iter().any(|&k| escapable(words[k].as_bytes().get(*len))),
                                (None, _) if kind == StrKind::Key => true,
                                (None, None) => true,
                                (None, Some(source)) => {
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
                if let Some(words) = words {
                    starts.retain(|&k| words[k].as_bytes().get(*len) == Some(&literal));
                    *len += 1;
                    return !starts.is_empty();
                }
                if kind == StrKind::Key {
                    // Keys name schema fields: printable ASCII keeps them valid UTF-8.
                    return (0x20..0x7f).contains(&literal);
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
                    !tail.is_empty() || self.value_done()
                }
                _ => false,
            },
            Mode::After => match (b, self.stack.last().map(|f| f.container)) {
                (b',', Some(Container::Object)) => {
                    // Only if a key is left to write: a prefix must always be able to continue.
                    self.mode = Mode::Key { close_ok: false };
                    unused_keys(&schema, self.stack.last(), &self.text).is_none_or(|keys| !keys.is_empty())
                }
                (b',', Some(Container::Array)) => {
                    if self.stack.last().is_some_and(|f| f.must_close) {
                        return false;
                    }
                    self.mode = Mode::Value { close_ok: false };
                    self.mark_start();
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
        let container = if b == b'{' { Container::Object } else { Container::Array };
        let node = self.next_node();
        let value_node = match self.schema.node(node) {
            Node::Array { items } => *items,
            _ => ResponseSchema::ANY,
        };
        let start = self.text.len() + 1;
        self.stack.push(Frame { container, start, seen: Vec::new(), node, value_node, must_close: false });
        self.mode = if b == b'{' { Mode::Key { close_ok: true } } else { Mode::Value { close_ok: true } };
        true
    }

    fn close(&mut self, container: Container) -> bool {
        let Some(frame) = self.stack.pop() else { return false };
        if frame.container != container {
            return false;
        }
        if let (Node::Object { required, .. }, Some(unused)) =
            (self.schema.node(frame.node), unused_keys(&self.schema, Some(&frame), &self.text))
            && required.iter().any(|r| unused.contains(r))
        {
            return false;
        }
        self.value_done()
    }

    fn literal(&mut self, rest: &'static [u8]) -> bool {
        self.mode = Mode::Literal(rest);
        true
    }

    /// A value just ended: either the document is done or its container continues. An array
    /// element that repeats an earlier one ends its array.
    fn value_done(&mut self) -> bool {
        self.mode = if self.stack.is_empty() { Mode::Done } else { Mode::After };
        if self.stack.last().is_some_and(|f| f.container == Container::Array) && !self.is_new() {
            self.stack.last_mut().expect("checked above").must_close = true;
        }
        true
    }

    /// The current element or key (the bytes from the frame's start up to, not including, the
    /// byte being fed) differs from every earlier one of its frame; if so it is recorded as seen.
    fn is_new(&mut self) -> bool {
        let Some(frame) = self.stack.last_mut() else { return true };
        let current = &self.text[frame.start..];
        if frame.seen.iter().any(|&(start, end)| &self.text[start..end] == current) {
            return false;
        }
        frame.seen.push((frame.start, self.text.len()));
        true
    }

    /// A key just ended: it must be new in its object; its value may have to be an enum's.
    fn key_done(&mut self) -> bool {
        if !self.is_new() {
            return false;
        }
        let Some(frame) = self.stack.last_mut() else { return true };
        let key = &self.text[frame.start..];
        frame.value_node = match self.schema.node(frame.node) {
            Node::Object { keys, values, .. } => {
                keys.iter().position(|k| k.as_bytes() == key).map_or(ResponseSchema::ANY, |i| values[i])
            }
            _ => ResponseSchema::ANY,
        };
        true
    }

    /// The next byte starts an element (array) or a key (object) of the innermost frame.
    fn mark_start(&mut self) {
        let at = self.text.len() + 1;
        if let Some(frame) = self.stack.last_mut() {
            frame.start = at;
        }
    }
}

impl super::token_trie::ByteAutomaton for GroundedJson {
    fn accept(&mut self, byte: u8) -> bool {
        self.feed(byte)
    }
}

#[cfg(test)]
mod tests;
