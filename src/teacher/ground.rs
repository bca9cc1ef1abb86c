//! Aligning the strings a teacher returns to character offsets in the sentence it was shown.
//!
//! LLMs paraphrase, change case, drop accents and re-space; a label is only useful for training
//! if it points at the exact characters of the source. Each string goes through, in order:
//!
//! 1. **exact**: every occurrence of the string as is;
//! 2. **case_insensitive**: every occurrence after folding both sides (NFKD per char, lower
//!    case, dash and quote variants unified, whitespace removed), mapped back to the source;
//! 3. **fuzzy**: the best window of source words whose token-level similarity (ordered soft
//!    matching, each word scored by edit distance, accents ignored) reaches the threshold;
//! 4. **unaligned**: no offsets; such a string never becomes a training label.
//!
//! Repeated strings: tiers 1–2 return every occurrence (preferring whole-word occurrences over
//! ones inside a longer word), so a drug mentioned twice is labeled twice; [`nearest_pair`]
//! picks the closest occurrences for a relation. Offsets are 0-based, end-exclusive counts of
//! Unicode scalar values into the sentence (see [`crate::text`]).

use unicode_normalization::UnicodeNormalization;
use unicode_normalization::char::is_combining_mark;

use crate::text::CharIndex;

/// How a string was aligned.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, serde::Serialize)]
#[serde(rename_all = "snake_case")]
pub enum Alignment {
    Exact,
    CaseInsensitive,
    Fuzzy,
    Unaligned,
}

impl Alignment {
    pub const ALL: [Alignment; 4] =
        [Alignment::Exact, Alignment::CaseInsensitive, Alignment::Fuzzy, Alignment::Unaligned];

    /// The value stored in `teacher_labels.*_alignment`.
    pub fn as_str(self) -> &'static str {
        match self {
            Alignment::Exact => "exact",
            Alignment::CaseInsensitive => "case_insensitive",
            Alignment::Fuzzy => "fuzzy",
            Alignment::Unaligned => "unaligned",
        }
    }
}

/// Where a string was found: char-offset spans, sorted, empty when unaligned.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Grounding {
    pub alignment: Alignment,
    pub spans: Vec<(usize, usize)>,
}

impl Grounding {
    fn unaligned() -> Self {
        Grounding { alignment: Alignment::Unaligned, spans: Vec::new() }
    }
}

/// A folded view of a text: each folded char remembers the source char it came from.
struct Folded {
    text: String,
    /// Source char index of each folded char.
    source: Vec<usize>,
}

fn fold_char(c: char, out: &mut impl FnMut(char)) {
    for d in std::iter::once(c).nfkd() {
        for l in d.to_lowercase() {
            out(match l {
                '\u{2010}'..='\u{2015}' | '\u{2212}' | '\u{fe63}' | '\u{ff0d}' => '-',
                '\u{2018}' | '\u{2019}' | '\u{201b}' | '\u{2032}' | '`' => '\'',
                '\u{201c}' | '\u{201d}' | '\u{201f}' | '\u{2033}' => '"',
                other => other,
            })
        }
    }
}

impl Folded {
    fn new(text: &str) -> Self {
        let mut folded = Folded { text: String::with_capacity(text.len()), source: Vec::with_capacity(text.len()) };
        for (i, c) in text.chars().enumerate() {
            if c.is_whitespace() {
                continue;
            }
            fold_char(c, &mut |f| {
                folded.text.push(f);
                folded.source.push(i);
            });
        }
        folded
    }
}

/// A word of the source: its accent-free folded form and its char span in the source.
struct Token {
    key: Vec<char>,
    start: usize,
    end: usize,
}

fn tokenize(text: &str) -> Vec<Token> {
    let mut tokens: Vec<Token> = Vec::new();
    let mut current: Option<Token> = None;
    for (i, c) in text.chars().enumerate() {
        let mut folded = Vec::new();
        fold_char(c, &mut |f| folded.push(f));
        let is_word = c.is_alphanumeric() || is_combining_mark(c);
        if is_word {
            let token = current.get_or_insert(Token { key: Vec::new(), start: i, end: i });
            token.key.extend(folded.into_iter().filter(|f| !is_combining_mark(*f)));
            token.end = i + 1;
        } else if let Some(token) = current.take() {
            tokens.push(token);
        }
    }
    tokens.extend(current);
    tokens
}

/// Aligns strings to one sentence; build once per sentence, call [`Grounder::ground`] per string.
pub struct Grounder<'a> {
    text: &'a str,
    index: CharIndex,
    chars: Vec<char>,
    folded: Folded,
    folded_index: CharIndex,
    tokens: Vec<Token>,
    threshold: f64,
}

impl<'a> Grounder<'a> {
    /// `threshold` is the fuzzy tier's minimum similarity in (0, 1].
    pub fn new(text: &'a str, threshold: f64) -> Self {
        let folded = Folded::new(text);
        let folded_index = CharIndex::new(&folded.text);
        Grounder {
            text,
            index: CharIndex::new(text),
            chars: text.chars().collect(),
            folded,
            folded_index,
            tokens: tokenize(text),
            threshold,
        }
    }

    /// Align `needle` (see the module docs for the tiers).
    pub fn ground(&self, needle: &str) -> Grounding {
        let needle = needle.trim();
        if needle.is_empty() {
            return Grounding::unaligned();
        }
        let exact: Vec<(usize, usize)> = self
            .text
            .match_indices(needle)
            .filter_map(|(b, m)| Some((self.index.char(b)?, self.index.char(b + m.len())?)))
            .collect();
        let whole = self.whole_words(&exact);
        if !whole.is_empty() {
            return Grounding { alignment: Alignment::Exact, spans: whole };
        }
        let folded_needle = Folded::new(needle).text;
        let mut folded: Vec<(usize, usize)> = Vec::new();
        if !folded_needle.is_empty() {
            folded = self
                .folded
                .text
                .match_indices(&folded_needle)
                .filter_map(|(b, m)| {
                    let first = self.folded_index.char(b)?;
                    let last = self.folded_index.char(b + m.len())? - 1;
                    Some((self.folded.source[first], self.folded.source[last] + 1))
                })
                .collect();
            folded.dedup();
            let whole = self.whole_words(&folded);
            if !whole.is_empty() {
                return Grounding { alignment: Alignment::CaseInsensitive, spans: whole };
            }
        }
        // Only matches inside words ("enzyme" in "enzymes"): a fuzzy match over whole tokens
        // is better when there is one; else the partial match ("ACE" in "ACEI").
        if let Some(span) = self.fuzzy(needle) {
            return Grounding { alignment: Alignment::Fuzzy, spans: vec![span] };
        }
        if !exact.is_empty() {
            return Grounding { alignment: Alignment::Exact, spans: exact };
        }
        if !folded.is_empty() {
            return Grounding { alignment: Alignment::CaseInsensitive, spans: folded };
        }
        Grounding::unaligned()
    }

    /// The occurrences that are whole words ("ACE" in "ACE inhibitor", not in "ACEI").
    fn whole_words(&self, spans: &[(usize, usize)]) -> Vec<(usize, usize)> {
        let is_word = |i: usize| self.chars.get(i).is_some_and(|c| c.is_alphanumeric());
        spans
            .iter()
            .copied()
            .filter(|&(s, e)| !(s > 0 && is_word(s - 1) && is_word(s) || is_word(e) && e > 0 && is_word(e - 1)))
            .collect()
    }

    /// The best-scoring window of source tokens, if it reaches the threshold.
    fn fuzzy(&self, needle: &str) -> Option<(usize, usize)> {
        let wanted: Vec<Vec<char>> = tokenize(needle).into_iter().map(|t| t.key).collect();
        let n = wanted.len();
        if n == 0 || self.tokens.is_empty() {
            return None;
        }
        let mut best: Option<(f64, usize, usize)> = None;
        for width in n.saturating_sub(1).max(1)..=n + 1 {
            for start in 0..self.tokens.len().saturating_sub(width - 1) {
                let window = &self.tokens[start..start + width];
                let score = 2.0 * soft_alignment(&wanted, window) / (n + width) as f64;
                if best.is_none_or(|(b, _, _)| score > b + 1e-12) {
                    best = Some((score, start, width));
                }
            }
        }
        let (score, start, width) = best?;
        (score >= self.threshold).then(|| (self.tokens[start].start, self.tokens[start + width - 1].end))
    }
}

/// Largest sum of word similarities over an order-preserving matching (weighted LCS).
fn soft_alignment(wanted: &[Vec<char>], window: &[Token]) -> f64 {
    let mut row = vec![0.0f64; window.len() + 1];
    for a in wanted {
        let mut prev_diag = 0.0;
        for (j, token) in window.iter().enumerate() {
            let up = row[j + 1];
            let value = (prev_diag + word_similarity(a, &token.key)).max(up).max(row[j]);
            prev_diag = up;
            row[j + 1] = value;
        }
    }
    row[window.len()]
}

/// 1 - edit distance / longer length; below 0.5 counts as no match, so unrelated words add
/// nothing.
fn word_similarity(a: &[char], b: &[char]) -> f64 {
    if a == b {
        return 1.0;
    }
    let longest = a.len().max(b.len());
    if longest == 0 {
        return 0.0;
    }
    let mut prev: Vec<usize> = (0..=b.len()).collect();
    for (i, ca) in a.iter().enumerate() {
        let mut current = vec![i + 1; b.len() + 1];
        for (j, cb) in b.iter().enumerate() {
            current[j + 1] = (prev[j] + usize::from(ca != cb)).min(prev[j + 1] + 1).min(current[j] + 1);
        }
        prev = current;
    }
    let similarity = 1.0 - prev[b.len()] as f64 / longest as f64;
    if similarity >= 0.5 { similarity } else { 0.0 }
}

/// The (subject, object) occurrences closest to each other; ties go to the earliest.
pub fn nearest_pair(
    subjects: &[(usize, usize)],
    objects: &[(usize, usize)],
) -> Option<((usize, usize), (usize, usize))> {
    let gap = |a: (usize, usize), b: (usize, usize)| a.0.max(b.0).saturating_sub(a.1.min(b.1));
    subjects.iter().flat_map(|&s| objects.iter().map(move |&o| (s, o))).min_by_key(|&(s, o)| (gap(s, o), s.0, o.0))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text::char_slice;

    fn check(text: &str, needle: &str, alignment: Alignment, expected: &[&str]) -> Vec<(usize, usize)> {
        let g = Grounder::new(text, 0.8).ground(needle);
        assert_eq!(g.alignment, alignment, "{needle:?} in {text:?}: {g:?}");
        let got: Vec<&str> = g.spans.iter().map(|&(s, e)| char_slice(text, s, e).unwrap()).collect();
        assert_eq!(got, expected, "{needle:?} in {text:?}");
        g.spans
    }

    #[test]
    fn exact_match_gives_char_offsets() {
        let text = "Severe hepatotoxicity followed isoniazid therapy.";
        assert_eq!(check(text, "isoniazid", Alignment::Exact, &["isoniazid"]), vec![(31, 40)]);
    }

    #[test]
    fn repeated_strings_return_every_whole_word_occurrence() {
        let text = "Aspirin and aspirin-like drugs; aspirin again, not aspirinate.";
        let spans = check(text, "aspirin", Alignment::Exact, &["aspirin", "aspirin"]);
        assert_eq!(spans, vec![(12, 19), (32, 39)], "inside 'aspirinate' is not a whole word");
        // Only occurrence inside a word: still found.
        check("ACEI therapy", "ACE", Alignment::Exact, &["ACE"]);
    }

    #[test]
    fn case_and_whitespace_insensitive_maps_back_to_the_source() {
        let text = "Patient developed Stevens-Johnson  syndrome after carbamazepine.";
        check(text, "stevens-johnson syndrome", Alignment::CaseInsensitive, &["Stevens-Johnson  syndrome"]);
        check(text, "CARBAMAZEPINE", Alignment::CaseInsensitive, &["carbamazepine"]);
        // An en dash in the text, a hyphen from the model.
        check(
            "QT prolongation – torsades",
            "prolongation - torsades",
            Alignment::CaseInsensitive,
            &["prolongation – torsades"],
        );
    }

    #[test]
    fn fuzzy_matches_paraphrased_words_and_respects_the_threshold() {
        let text = "Treatment was associated with elevated liver enzymes in two patients.";
        check(text, "elevated liver enzyme", Alignment::Fuzzy, &["elevated liver enzymes"]);
        check(text, "raised hepatic transaminases", Alignment::Unaligned, &[]);
        let g = Grounder::new(text, 0.8).ground("liver enzymes elevated");
        assert_eq!(g.alignment, Alignment::Fuzzy, "order-preserving match of 2 of 3 words: {g:?}");
    }

    #[test]
    fn unaligned_strings_have_no_offsets() {
        check("Nausea after cisplatin.", "vomiting", Alignment::Unaligned, &[]);
        check("Nausea after cisplatin.", "   ", Alignment::Unaligned, &[]);
        check("Nausea after cisplatin.", "–", Alignment::Unaligned, &[]);
    }

    #[test]
    fn non_ascii_offsets_are_in_chars() {
        let text = "β-blocker (5 µg/kg) caused naïve Müller cells – TNF-α ↑ in señora García.";
        check(text, "β-blocker", Alignment::Exact, &["β-blocker"]);
        let spans = check(text, "5 µg/kg", Alignment::Exact, &["5 µg/kg"]);
        assert_eq!(spans, vec![(11, 18)]);
        // Greek small mu from the model, micro sign in the text (NFKD folds them together).
        check(text, "5 μg/kg", Alignment::CaseInsensitive, &["5 µg/kg"]);
        check(text, "TNF-Α", Alignment::CaseInsensitive, &["TNF-α"]);
        check(text, "MÜLLER CELLS", Alignment::CaseInsensitive, &["Müller cells"]);
        // Decomposed "ï" in the model's string, precomposed in the text.
        check(text, "nai\u{308}ve", Alignment::CaseInsensitive, &["naïve"]);
        // Accents dropped by the model: fuzzy tier, offsets still on the accented source.
        check(text, "senora Garcia", Alignment::Fuzzy, &["señora García"]);
        check(text, "cells - TNF", Alignment::CaseInsensitive, &["cells – TNF"]);
    }

    #[test]
    fn nearest_pair_prefers_the_closest_occurrences() {
        let drug = [(0, 7), (40, 47)];
        let event = [(50, 55)];
        assert_eq!(nearest_pair(&drug, &event), Some(((40, 47), (50, 55))));
        assert_eq!(nearest_pair(&[], &event), None);
    }
}
