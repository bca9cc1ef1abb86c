//! The teacher's confidence in each label, from the token log probabilities of its reply.
//!
//! A label's confidence is the lowest probability the teacher gave any token of its
//! decision: from the separator that opened the array element holding it (`[` or `,`: the
//! choice to list one more item rather than close the list) to the closing quote of its
//! string (which item, and where its span ends). A pair takes the lower of its two strings';
//! a PHI entity covers its text and type. Tokens of keys and punctuation inside that range
//! are near-certain and do not move the minimum.
//!
//! The probabilities are the model's own (before grounded decoding constrained the choice,
//! [`crate::llm::logprobs`]), so a string the automaton forced against the model's wish scores
//! low, as it should. Replies whose tokens do not add up to their text (a server that edits
//! its output) get no confidence rather than a wrong one.

use std::collections::HashMap;

use super::parse::{Mention, Relation};
use crate::vocab::Task;

/// Whether a label with `confidence` is kept at `train.filters.min_teacher_confidence =
/// threshold`: one rule for training (`train::data`) and evaluation (`teacher_confident`).
/// 0 is off; a label without a confidence (its reply had no log probabilities) is kept.
pub fn keeps(confidence: Option<f64>, threshold: f64) -> bool {
    threshold <= 0.0 || confidence.is_none_or(|p| p >= threshold)
}

/// Confidences of one reply's mentions and relations, by their strings.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Confidences {
    mentions: HashMap<(String, String), f64>,
    relations: HashMap<(String, String), f64>,
}

impl Confidences {
    /// Reads a reply whose content parsed as `task`'s JSON; `None` when the tokens are
    /// missing or do not cover the content byte for byte.
    pub fn of_reply(task: Task, content: &str, tokens: Option<&[(u32, f32)]>) -> Option<Self> {
        let tokens = tokens?;
        let mut ends = Vec::with_capacity(tokens.len());
        let mut end = 0usize;
        for &(len, _) in tokens {
            end += len as usize;
            ends.push(end);
        }
        if end != content.len() {
            return None;
        }
        let start = content.find('{')?;
        let mut scanner =
            Scanner { bytes: content.as_bytes(), at: start, path: Vec::new(), opened: Vec::new(), strings: Vec::new() };
        scanner.value()?;
        // The lowest token probability over bytes [from, to).
        let lowest = |from: usize, to: usize| {
            let first = ends.partition_point(|&e| e <= from);
            let last = ends.partition_point(|&e| e < to);
            tokens[first..=last.min(tokens.len() - 1)].iter().map(|&(_, lp)| f64::from(lp).exp()).fold(1.0, f64::min)
        };
        let mut out = Confidences::default();
        let strings: Vec<(&[Seg], &str, f64)> =
            scanner.strings.iter().map(|s| (s.path.as_slice(), s.text.as_str(), lowest(s.opened, s.end))).collect();
        let field = |element: &[Seg], key: &str| {
            strings.iter().find(|(p, _, _)| {
                p.len() == element.len() + 1 && p.starts_with(element) && p.last() == Some(&Seg::Key(key.into()))
            })
        };
        for (path, text, p) in &strings {
            match (task, path) {
                (Task::Ade, [Seg::Key(d), Seg::Index(_), Seg::Key(k)]) if d == "drugs" && k == "drug" => {
                    out.mention("drug", text, *p);
                }
                (Task::Ade, [Seg::Key(d), Seg::Index(i), Seg::Key(k), Seg::Index(_)])
                    if d == "drugs" && k == "adverse_events" =>
                {
                    out.mention("adverse_event", text, *p);
                    let drug = [Seg::Key("drugs".into()), Seg::Index(*i)];
                    if let Some((_, name, q)) = field(&drug, "drug") {
                        out.relation(name, text, p.min(*q));
                    }
                }
                (Task::GeneDisease, [Seg::Key(list), Seg::Index(_)]) if list == "genes" || list == "diseases" => {
                    out.mention(&list[..list.len() - 1], text, *p);
                }
                (Task::GeneDisease, [Seg::Key(a), Seg::Index(_), Seg::Key(k)])
                    if a == "associations" && k == "disease" =>
                {
                    out.mention("disease", text, *p);
                    if let Some((_, gene, q)) = field(&path[..2], "gene") {
                        out.mention("gene", gene, *q);
                        out.relation(gene, text, p.min(*q));
                    }
                }
                (Task::Phi, [Seg::Key(e), Seg::Index(_), Seg::Key(k)]) if e == "entities" && k == "text" => {
                    if let Some((_, kind, q)) = field(&path[..2], "type") {
                        out.mention(kind, text, p.min(*q));
                    }
                }
                _ => {}
            }
        }
        Some(out)
    }

    /// A string listed twice counts with its more confident listing.
    fn mention(&mut self, entity_type: &str, text: &str, p: f64) {
        let entry = self.mentions.entry((entity_type.to_string(), text.to_string())).or_insert(p);
        *entry = entry.max(p);
    }

    fn relation(&mut self, subject: &str, object: &str, p: f64) {
        let entry = self.relations.entry((subject.to_string(), object.to_string())).or_insert(p);
        *entry = entry.max(p);
    }

    pub fn of_mention(&self, m: &Mention) -> Option<f64> {
        self.mentions.get(&(m.entity_type.clone(), m.text.clone())).copied()
    }

    pub fn of_relation(&self, r: &Relation) -> Option<f64> {
        self.relations.get(&(r.subject.text.clone(), r.object.text.clone())).copied()
    }
}

/// One step of a JSON path.
#[derive(Debug, Clone, PartialEq)]
enum Seg {
    Key(String),
    Index(usize),
}

/// A string value: its path, decoded text, the byte where the array element holding it was
/// opened (its separator), and the byte after its closing quote.
struct Found {
    path: Vec<Seg>,
    text: String,
    opened: usize,
    end: usize,
}

/// Just enough of a JSON reader to say where each string value of a valid reply lies.
struct Scanner<'a> {
    bytes: &'a [u8],
    at: usize,
    path: Vec<Seg>,
    /// The separator byte of each array element the reader is inside.
    opened: Vec<usize>,
    strings: Vec<Found>,
}

impl Scanner<'_> {
    fn peek(&mut self) -> Option<u8> {
        while self.bytes.get(self.at).is_some_and(u8::is_ascii_whitespace) {
            self.at += 1;
        }
        self.bytes.get(self.at).copied()
    }

    fn value(&mut self) -> Option<()> {
        match self.peek()? {
            b'{' => self.object(),
            b'[' => self.array(),
            b'"' => {
                let (text, end) = self.string()?;
                let opened = self.opened.last().copied().unwrap_or(0);
                self.strings.push(Found { path: self.path.clone(), text, opened, end });
                Some(())
            }
            _ => {
                while self.bytes.get(self.at).is_some_and(|b| !b",]} \n\r\t".contains(b)) {
                    self.at += 1;
                }
                Some(())
            }
        }
    }

    /// A string literal at `at`: its decoded text and the byte after its closing quote.
    fn string(&mut self) -> Option<(String, usize)> {
        let start = self.at;
        let mut i = start + 1;
        while *self.bytes.get(i)? != b'"' {
            i += if self.bytes[i] == b'\\' { 2 } else { 1 };
        }
        self.at = i + 1;
        let text = serde_json::from_slice(&self.bytes[start..self.at]).ok()?;
        Some((text, self.at))
    }

    fn object(&mut self) -> Option<()> {
        self.at += 1;
        if self.peek()? == b'}' {
            self.at += 1;
            return Some(());
        }
        loop {
            if self.peek()? != b'"' {
                return None;
            }
            let (key, _) = self.string()?;
            (self.peek()? == b':').then_some(())?;
            self.at += 1;
            self.path.push(Seg::Key(key));
            self.value()?;
            self.path.pop();
            match self.peek()? {
                b',' => self.at += 1,
                b'}' => {
                    self.at += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
    }

    fn array(&mut self) -> Option<()> {
        let mut separator = self.at;
        self.at += 1;
        if self.peek()? == b']' {
            self.at += 1;
            return Some(());
        }
        for index in 0.. {
            self.path.push(Seg::Index(index));
            self.opened.push(separator);
            self.value()?;
            self.opened.pop();
            self.path.pop();
            match self.peek()? {
                b',' => {
                    separator = self.at;
                    self.at += 1;
                }
                b']' => {
                    self.at += 1;
                    return Some(());
                }
                _ => return None,
            }
        }
        None
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Tokens of `pieces` with log probabilities `lps`.
    fn tokens(pieces: &[&str], lps: &[f32]) -> (String, Vec<(u32, f32)>) {
        (pieces.concat(), pieces.iter().zip(lps).map(|(p, &lp)| (p.len() as u32, lp)).collect())
    }

    fn mention(t: &str, text: &str) -> Mention {
        Mention { entity_type: t.into(), text: text.into() }
    }

    #[test]
    fn each_ade_label_takes_its_least_likely_decision_token() {
        let (content, lps) = tokens(
            &[
                r#"{"drugs":[{"drug":""#,
                "cis",
                "platin",
                r#"","adverse_events":[""#,
                "nausea",
                r#"",""#,
                "rash",
                r#""]}]}"#,
            ],
            &[-0.1, -0.2, -0.01, -0.05, -0.3, -1.5, -0.02, -0.4],
        );
        let c = Confidences::of_reply(Task::Ade, &content, Some(&lps)).unwrap();
        let p = |lp: f32| f64::from(lp).exp();
        // The drug: from `[` of "drugs" to its closing quote, tokens 0..=3.
        assert!((c.of_mention(&mention("drug", "cisplatin")).unwrap() - p(-0.2)).abs() < 1e-9);
        // nausea: opened by the `[` inside token 3, ends in token 5 (`","`), the choice to go on.
        assert!((c.of_mention(&mention("adverse_event", "nausea")).unwrap() - p(-1.5)).abs() < 1e-9);
        // rash: opened by the `,` in token 5, closed in token 7.
        let rash = c.of_mention(&mention("adverse_event", "rash")).unwrap();
        assert!((rash - p(-1.5)).abs() < 1e-9, "the separator token decided to list it");
        let pair = Relation { subject: mention("drug", "cisplatin"), object: mention("adverse_event", "rash") };
        assert!((c.of_relation(&pair).unwrap() - rash.min(p(-0.2))).abs() < 1e-9);
        assert_eq!(c.of_mention(&mention("drug", "rash")), None);
    }

    #[test]
    fn gene_disease_and_phi_labels_cover_both_of_their_strings() {
        let content =
            r#"{"genes":["BRCA1"],"diseases":[],"associations":[{"gene":"BRCA1","disease":"breast cancer"}]}"#;
        let mut lps: Vec<(u32, f32)> = content.bytes().map(|_| (1, -0.01)).collect();
        let at = content.find("BRCA1\",\"disease").unwrap();
        lps[at] = (1, -2.0);
        let c = Confidences::of_reply(Task::GeneDisease, content, Some(&lps)).unwrap();
        let pair = Relation { subject: mention("gene", "BRCA1"), object: mention("disease", "breast cancer") };
        assert!((c.of_relation(&pair).unwrap() - (-2.0f64).exp()).abs() < 1e-6, "the association's gene token");
        assert!(
            (c.of_mention(&mention("gene", "BRCA1")).unwrap() - (-0.01f64).exp()).abs() < 1e-6,
            "its better listing"
        );

        let content = "```json\n{\"entities\": [{\"text\": \"John \\\"J\\\" Smith\", \"type\": \"NAME\"}]}\n```";
        let mut lps: Vec<(u32, f32)> = content.bytes().map(|_| (1, 0.0)).collect();
        lps[content.find("NAME").unwrap()] = (1, -0.7);
        let c = Confidences::of_reply(Task::Phi, content, Some(&lps)).unwrap();
        assert!((c.of_mention(&mention("NAME", "John \"J\" Smith")).unwrap() - (-0.7f64).exp()).abs() < 1e-6);
    }

    #[test]
    fn tokens_that_do_not_spell_the_reply_give_no_confidence() {
        let content = r#"{"drugs":[]}"#;
        assert_eq!(Confidences::of_reply(Task::Ade, content, None), None);
        assert_eq!(Confidences::of_reply(Task::Ade, content, Some(&[(3, -0.1)])), None);
        let whole = [(content.len() as u32, -0.1)];
        assert_eq!(Confidences::of_reply(Task::Ade, content, Some(&whole)), Some(Confidences::default()));
    }
}
