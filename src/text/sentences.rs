//! A sentence splitter for biomedical prose.
//!
//! Rules, in order: a line break always ends a sentence (PubTator titles, BRAT paragraphs); a
//! `.`, `!` or `?` ends one when it is followed by white space and then by an upper-case letter,
//! a digit, or an opening bracket or quote — unless the word before the period is a known
//! abbreviation ("e.g.", "i.v.", "Dr.", "vs.", "Fig.", "et al.", ...), a single letter (an
//! initial such as "J."), or the next token is a figure/table number after "Fig."/"Table".
//! Decimals ("2.5 mg") never split because no space follows the period. Closing brackets and
//! quotes after the terminator stay with the sentence they close.
//!
//! Other scripts: the Chinese/Japanese full stop, exclamation and question marks (`。`, `！`,
//! `？`, `｡`) always end a sentence (those scripts put no space after them); the Arabic
//! question mark `؟` and the Urdu full stop `۔` are terminators like `?`; and after a
//! terminator and white space, a letter of a script without case (Arabic, Hebrew, CJK, …)
//! starts a sentence as an upper-case letter does.
//!
//! Spans are char offsets (see [`crate::text`]), trimmed of surrounding white space; empty
//! sentences are never produced.

/// A sentence as `[start, end)` char offsets into the text it was split from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Span {
    pub start: usize,
    pub end: usize,
}

/// Words (lower-cased, without their final period) after which a period does not end a
/// sentence even before a capital letter: titles, Latin abbreviations, units and references
/// that biomedical abstracts use mid-sentence.
const ABBREVIATIONS: &[&str] = &[
    "e.g", "i.e", "i.v", "i.m", "i.p", "s.c", "p.o", "b.i.d", "t.i.d", "q.i.d", "q.d", "vs", "viz", "cf", "etc",
    "et al", "al", "approx", "ca", "resp", "dr", "drs", "mr", "mrs", "ms", "prof", "st", "jr", "sr", "fig", "figs",
    "tab", "no", "nos", "vol", "pp", "p", "ref", "refs", "eq", "eqs", "sp", "spp", "var", "ssp", "inc", "ltd", "co",
    "corp", "dept", "univ", "jan", "feb", "mar", "apr", "jun", "jul", "aug", "sep", "sept", "oct", "nov", "dec", "min",
    "max", "mg", "kg", "ml", "h", "hr", "hrs", "wk", "wks", "mo", "mos", "yr", "yrs", "sr", "sra", "dra", "pág", "núm",
    "tel", "av", "avda", "c/",
];

/// Split `text` into sentences.
pub fn split(text: &str) -> Vec<Span> {
    let chars: Vec<char> = text.chars().collect();
    let mut spans = Vec::new();
    let mut start = 0;
    let mut i = 0;
    while i < chars.len() {
        let c = chars[i];
        let boundary_end = if c == '\n' || c == '\r' {
            Some(i)
        } else if is_terminator(c) {
            // Extend over repeated terminators and closing brackets/quotes: "...)." or '."'
            let mut j = i + 1;
            while j < chars.len() && (is_terminator(chars[j]) || is_closer(chars[j])) {
                j += 1;
            }
            let cjk = chars[i..j].iter().any(|&t| is_cjk_terminator(t));
            if cjk || ends_sentence(&chars, start, i, j) { Some(j) } else { None }
        } else {
            None
        };
        if let Some(end) = boundary_end {
            push_trimmed(&chars, start, end, &mut spans);
            start = end;
            i = end.max(i + 1);
        } else {
            i += 1;
        }
    }
    push_trimmed(&chars, start, chars.len(), &mut spans);
    spans
}

/// `.`, `!`, `?`, the CJK ones and the Arabic-script question mark and full stop.
fn is_terminator(c: char) -> bool {
    matches!(c, '.' | '!' | '?' | '؟' | '۔') || is_cjk_terminator(c)
}

/// Chinese/Japanese terminators: no space follows them, so they end a sentence outright.
fn is_cjk_terminator(c: char) -> bool {
    matches!(c, '。' | '！' | '？' | '｡')
}

fn is_closer(c: char) -> bool {
    matches!(c, ')' | ']' | '}' | '"' | '\'' | '”' | '’' | '»' | '」' | '』' | '）' | '】' | '》' | '〉' | '〕' | '］')
}

fn is_opener(c: char) -> bool {
    matches!(c, '(' | '[' | '{' | '"' | '\'' | '“' | '‘' | '«' | '¿' | '¡' | '「' | '『' | '（' | '【' | '《' | '〈')
}

/// A letter of a script without upper and lower case (Arabic, Hebrew, CJK, Thai, …): it can
/// start a sentence though it is not upper case.
fn is_caseless_letter(c: char) -> bool {
    c.is_alphabetic() && !c.is_uppercase() && !c.is_lowercase()
}

/// Whether the terminator at `term` (with closers up to `after`) ends the sentence begun at
/// `sent_start`.
fn ends_sentence(chars: &[char], sent_start: usize, term: usize, after: usize) -> bool {
    // Must be followed by white space, then a sentence opener.
    if after >= chars.len() || !chars[after].is_whitespace() {
        return false;
    }
    let mut k = after;
    while k < chars.len() && chars[k].is_whitespace() && chars[k] != '\n' {
        k += 1;
    }
    if k >= chars.len() || chars[k] == '\n' {
        return true;
    }
    let next = chars[k];
    if !(next.is_uppercase() || next.is_numeric() || is_opener(next) || is_caseless_letter(next)) {
        return false;
    }
    if chars[term] != '.' {
        return true;
    }
    // The word before the period, back to white space or an opening bracket.
    let mut w = term;
    while w > sent_start && !chars[w - 1].is_whitespace() && chars[w - 1] != '(' && chars[w - 1] != '[' {
        w -= 1;
    }
    let word: String = chars[w..term].iter().collect::<String>().to_lowercase();
    if word.is_empty() {
        return true;
    }
    // "et al." is two words.
    let prev_word = {
        let mut p = w;
        while p > sent_start && chars[p - 1].is_whitespace() {
            p -= 1;
        }
        let e = p;
        while p > sent_start && !chars[p - 1].is_whitespace() {
            p -= 1;
        }
        chars[p..e].iter().collect::<String>().to_lowercase()
    };
    if word == "al" && prev_word == "et" {
        return false;
    }
    if ABBREVIATIONS.contains(&word.as_str()) {
        return false;
    }
    // A single letter is an initial ("J. Smith", "E. coli"), not a sentence end.
    let letters: Vec<char> = word.chars().filter(|c| c.is_alphabetic()).collect();
    if letters.len() == 1 && word.chars().count() == 1 {
        return false;
    }
    // Dotted abbreviations like "U.S." or "a.m." (a period inside the word).
    if word.contains('.') && word.chars().all(|c| c.is_alphabetic() || c == '.') && word.len() <= 6 {
        return false;
    }
    true
}

fn push_trimmed(chars: &[char], mut start: usize, mut end: usize, spans: &mut Vec<Span>) {
    while start < end && chars[start].is_whitespace() {
        start += 1;
    }
    while end > start && chars[end - 1].is_whitespace() {
        end -= 1;
    }
    if end > start {
        spans.push(Span { start, end });
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::text::char_slice;

    fn sents(text: &str) -> Vec<&str> {
        split(text).iter().map(|s| char_slice(text, s.start, s.end).unwrap()).collect()
    }

    #[test]
    fn splits_plain_sentences() {
        assert_eq!(
            sents("Aspirin was given. The rash resolved! Why? Unknown."),
            vec!["Aspirin was given.", "The rash resolved!", "Why?", "Unknown."]
        );
    }

    #[test]
    fn abbreviations_decimals_and_figures_do_not_split() {
        let text = "Drugs, e.g. Aspirin, were given i.v. Twice daily dosing vs. Placebo was compared by Dr. Smith \
                    et al. In Fig. 2 the dose was 2.5 mg/kg. Results follow.";
        assert_eq!(
            sents(text),
            vec![
                "Drugs, e.g. Aspirin, were given i.v. Twice daily dosing vs. Placebo was compared by Dr. Smith \
             et al. In Fig. 2 the dose was 2.5 mg/kg.",
                "Results follow."
            ]
        );
    }

    #[test]
    fn initials_lowercase_and_closers() {
        assert_eq!(
            sents("Infection with E. Coli was seen (n = 3). Then it stopped."),
            vec!["Infection with E. Coli was seen (n = 3).", "Then it stopped."]
        );
        assert_eq!(sents("It was low (p < 0.05.) Next one."), vec!["It was low (p < 0.05.)", "Next one."]);
        assert_eq!(
            sents("see the U.S. Food and Drug Administration."),
            vec!["see the U.S. Food and Drug Administration."]
        );
        assert_eq!(sents("Dosing was stopped. which is odd."), vec!["Dosing was stopped. which is odd."]);
    }

    #[test]
    fn line_breaks_always_split_and_whitespace_is_trimmed() {
        let text = "A title\nThe abstract starts here.  Second sentence.\n\n";
        assert_eq!(sents(text), vec!["A title", "The abstract starts here.", "Second sentence."]);
    }

    #[test]
    fn offsets_are_chars_on_non_ascii_text() {
        let text = "Paciente de 45 años tratado con β-bloqueantes. Presentó náuseas – 5 µg/día.";
        let spans = split(text);
        assert_eq!(spans.len(), 2);
        assert_eq!(spans[1].start, 47);
        assert_eq!(char_slice(text, spans[1].start, spans[1].end), Some("Presentó náuseas – 5 µg/día."));
        assert_eq!(spans[1].end, text.chars().count());
    }

    /// Chinese/Japanese, Arabic and Hebrew sentences split, with char offsets.
    #[test]
    fn cjk_arabic_and_hebrew_terminators_split() {
        let spans = |text: &str| split(text).iter().map(|s| (s.start, s.end)).collect::<Vec<_>>();
        let zh = "患者出现皮疹。停药后好转！是否复发？否。";
        assert_eq!(spans(zh), vec![(0, 7), (7, 13), (13, 18), (18, 20)]);
        assert_eq!(sents(zh), vec!["患者出现皮疹。", "停药后好转！", "是否复发？", "否。"]);
        let ja = "発疹が出た。「薬を止めた。」その後回復した。";
        assert_eq!(spans(ja), vec![(0, 6), (6, 14), (14, 22)]);
        assert_eq!(sents(ja)[1], "「薬を止めた。」");
        let ar = "ظهر طفح جلدي. توقف الدواء؟ نعم.";
        assert_eq!(spans(ar), vec![(0, 13), (14, 26), (27, 31)]);
        assert_eq!(sents(ar), vec!["ظهر طفح جلدي.", "توقف الدواء؟", "نعم."]);
        let he = "הופיעה פריחה. התרופה הופסקה! האם חזרה? לא.";
        assert_eq!(spans(he), vec![(0, 13), (14, 28), (29, 38), (39, 42)]);
        assert_eq!(sents(he)[2], "האם חזרה?");
        // A lower-case (cased) letter still does not start a sentence; decimals still hold.
        assert_eq!(sents("Dosis 2.5 mg. después bien"), vec!["Dosis 2.5 mg. después bien"]);
    }

    #[test]
    fn empty_and_whitespace_only_text() {
        assert!(split("").is_empty());
        assert!(split("  \n ").is_empty());
        assert_eq!(sents("no terminator"), vec!["no terminator"]);
    }
}
