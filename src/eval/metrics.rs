//! Metric arithmetic, free of tables and I/O: span matching, counts, P/R/F1, micro and macro.
//!
//! Conventions (the report repeats them):
//!
//! - **Matching is one-to-one.** A gold item and a prediction are matched at most once; the true
//!   positives are the size of a maximum bipartite matching under the match rule (for strict
//!   matching on de-duplicated sets this is the size of the intersection). Duplicates (the same
//!   spans twice) are removed before matching, on both sides.
//! - **Undefined ratios are reported as 0 with `n = 0`.** Precision with no predictions,
//!   recall with no gold, F1 with neither. `n` is always the ratio's denominator: predictions
//!   for precision, gold items for recall and F1, documents for a macro average.
//! - **F1** = 2·TP / (2·TP + FP + FN), which equals the harmonic mean of P and R when both are
//!   defined and is 0 (not undefined) when one side is empty and the other is not.

use std::collections::HashSet;
use std::hash::Hash;
use std::ops::{Add, AddAssign};

/// A `[start, end)` char-offset span.
pub type Span = (i32, i32);

/// Whether two spans share at least one char.
pub fn overlaps(a: Span, b: Span) -> bool {
    a.0 < b.1 && b.0 < a.1
}

/// Lower-cased text with white space runs collapsed to one space and trimmed: the key for
/// text-based comparisons.
pub fn normalize_text(text: &str) -> String {
    text.split_whitespace().map(str::to_lowercase).collect::<Vec<_>>().join(" ")
}

/// A mention: its span when it is aligned to the text, and its normalized text.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Mention {
    pub span: Option<Span>,
    pub norm: String,
}

/// What makes two mentions "the same" for de-duplication: the span, or the text when unaligned.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub enum MentionKey {
    Span(Span),
    Text(String),
}

impl Mention {
    pub fn new(span: Option<Span>, text: &str) -> Self {
        Self { span, norm: normalize_text(text) }
    }

    pub fn key(&self) -> MentionKey {
        match self.span {
            Some(s) => MentionKey::Span(s),
            None => MentionKey::Text(self.norm.clone()),
        }
    }

    /// Exact offsets on both sides; an unaligned mention never matches strictly.
    pub fn strict_match(&self, other: &Mention) -> bool {
        matches!((self.span, other.span), (Some(a), Some(b)) if a == b)
    }

    /// Overlapping offsets; when either side is unaligned, equal normalized text.
    pub fn lenient_match(&self, other: &Mention) -> bool {
        match (self.span, other.span) {
            (Some(a), Some(b)) => overlaps(a, b),
            _ => !self.norm.is_empty() && self.norm == other.norm,
        }
    }
}

/// Keep the first of every group of items with the same key, in order.
pub fn dedupe_by<T, K: Hash + Eq>(items: impl IntoIterator<Item = T>, key: impl Fn(&T) -> K) -> Vec<T> {
    let mut seen = HashSet::new();
    items.into_iter().filter(|item| seen.insert(key(item))).collect()
}

/// Size of a maximum one-to-one matching between `gold` and `pred` under `matches`
/// (Kuhn's augmenting paths; the inputs are one sentence or document, so small).
pub fn max_matching<G, P>(gold: &[G], pred: &[P], matches: impl Fn(&G, &P) -> bool) -> usize {
    let edges: Vec<Vec<usize>> =
        gold.iter().map(|g| pred.iter().enumerate().filter(|(_, p)| matches(g, p)).map(|(j, _)| j).collect()).collect();
    let mut owner: Vec<Option<usize>> = vec![None; pred.len()];
    fn augment(g: usize, edges: &[Vec<usize>], owner: &mut [Option<usize>], seen: &mut [bool]) -> bool {
        for &p in &edges[g] {
            if seen[p] {
                continue;
            }
            seen[p] = true;
            if owner[p].is_none_or(|other| augment(other, edges, owner, seen)) {
                owner[p] = Some(g);
                return true;
            }
        }
        false
    }
    let mut matched = 0;
    for g in 0..gold.len() {
        let mut seen = vec![false; pred.len()];
        if augment(g, &edges, &mut owner, &mut seen) {
            matched += 1;
        }
    }
    matched
}

/// True positives, false positives and false negatives.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Counts {
    pub tp: usize,
    pub fp: usize,
    pub fn_: usize,
}

impl Counts {
    /// Counts from `matched` of `predicted` predictions against `gold` gold items.
    pub fn new(matched: usize, predicted: usize, gold: usize) -> Self {
        debug_assert!(matched <= predicted && matched <= gold);
        Self { tp: matched, fp: predicted - matched, fn_: gold - matched }
    }

    /// Match `gold` against `pred` one-to-one under `matches`.
    pub fn matching<G, P>(gold: &[G], pred: &[P], matches: impl Fn(&G, &P) -> bool) -> Self {
        Self::new(max_matching(gold, pred, matches), pred.len(), gold.len())
    }

    pub fn predicted(&self) -> usize {
        self.tp + self.fp
    }

    pub fn gold(&self) -> usize {
        self.tp + self.fn_
    }

    pub fn precision(&self) -> Score {
        Score::ratio(self.tp, self.predicted())
    }

    pub fn recall(&self) -> Score {
        Score::ratio(self.tp, self.gold())
    }

    /// 2·TP / (2·TP + FP + FN), over the gold items (`n` = gold count).
    pub fn f1(&self) -> Score {
        let denominator = 2 * self.tp + self.fp + self.fn_;
        if denominator == 0 {
            Score::UNDEFINED
        } else {
            Score { value: (2 * self.tp) as f64 / denominator as f64, n: self.gold() }
        }
    }
}

impl Add for Counts {
    type Output = Counts;
    fn add(self, o: Counts) -> Counts {
        Counts { tp: self.tp + o.tp, fp: self.fp + o.fp, fn_: self.fn_ + o.fn_ }
    }
}

impl AddAssign for Counts {
    fn add_assign(&mut self, o: Counts) {
        *self = *self + o;
    }
}

/// A metric value and the number of items it is over (0 when undefined, value then 0).
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct Score {
    pub value: f64,
    pub n: usize,
}

impl Score {
    pub const UNDEFINED: Score = Score { value: 0.0, n: 0 };

    /// `numerator / denominator`, undefined when the denominator is 0.
    pub fn ratio(numerator: usize, denominator: usize) -> Score {
        if denominator == 0 {
            Score::UNDEFINED
        } else {
            Score { value: numerator as f64 / denominator as f64, n: denominator }
        }
    }
}

/// Macro F1: the mean of per-document F1 over the documents with gold or predicted items
/// (`n` = those documents). Documents with neither are skipped: their F1 is undefined.
pub fn macro_f1(documents: impl IntoIterator<Item = Counts>) -> Score {
    let f1s: Vec<f64> = documents.into_iter().filter(|c| c.gold() + c.predicted() > 0).map(|c| c.f1().value).collect();
    if f1s.is_empty() {
        Score::UNDEFINED
    } else {
        Score { value: f1s.iter().sum::<f64>() / f1s.len() as f64, n: f1s.len() }
    }
}

/// One named metric value, before it gets its task/dataset/system/subset.
#[derive(Debug, Clone, PartialEq)]
pub struct Metric {
    pub name: String,
    pub value: f64,
    pub n: usize,
}

impl Metric {
    pub fn new(name: impl Into<String>, score: Score) -> Self {
        Self { name: name.into(), value: score.value, n: score.n }
    }
}

/// `<family>_precision`, `<family>_recall`, `<family>_f1`.
pub fn prf(family: &str, counts: Counts) -> [Metric; 3] {
    [
        Metric::new(format!("{family}_precision"), counts.precision()),
        Metric::new(format!("{family}_recall"), counts.recall()),
        Metric::new(format!("{family}_f1"), counts.f1()),
    ]
}

/// White-space-separated tokens of `text`, as char spans shifted by `offset`.
pub fn whitespace_tokens(text: &str, offset: i32) -> Vec<Span> {
    let mut tokens = Vec::new();
    let mut start = None;
    let mut position = offset;
    for c in text.chars() {
        match (c.is_whitespace(), start) {
            (false, None) => start = Some(position),
            (true, Some(s)) => {
                tokens.push((s, position));
                start = None;
            }
            _ => {}
        }
        position += 1;
    }
    if let Some(s) = start {
        tokens.push((s, position));
    }
    tokens
}

/// The union of `spans` as sorted, disjoint spans (touching spans merge).
pub fn merge_spans(mut spans: Vec<Span>) -> Vec<Span> {
    spans.retain(|s| s.0 < s.1);
    spans.sort_unstable();
    let mut merged: Vec<Span> = Vec::with_capacity(spans.len());
    for s in spans {
        match merged.last_mut() {
            Some(last) if s.0 <= last.1 => last.1 = last.1.max(s.1),
            _ => merged.push(s),
        }
    }
    merged
}

/// Whether every char of `token` lies in `merged` (the output of [`merge_spans`]).
pub fn covered(token: Span, merged: &[Span]) -> bool {
    let i = merged.partition_point(|s| s.0 <= token.0);
    i > 0 && merged[i - 1].1 >= token.1
}

#[cfg(test)]
mod tests {
    use super::*;

    fn m(start: i32, end: i32, text: &str) -> Mention {
        Mention::new(Some((start, end)), text)
    }

    fn close(a: f64, b: f64) -> bool {
        (a - b).abs() < 1e-12
    }

    #[test]
    fn strict_and_lenient_matching_of_spans() {
        let gold = m(10, 20, "acute renal failure");
        assert!(gold.strict_match(&m(10, 20, "x")));
        assert!(!gold.strict_match(&m(16, 20, "failure")));
        assert!(gold.lenient_match(&m(16, 20, "failure")));
        // Touching, end-exclusive: no shared char.
        assert!(!gold.lenient_match(&m(20, 25, "after")));
        assert!(!gold.lenient_match(&m(5, 10, "with ")));
        // Unaligned: never strict, lenient by normalized text only.
        let unaligned = Mention::new(None, "  Acute   RENAL failure ");
        assert!(!gold.strict_match(&unaligned));
        assert!(gold.lenient_match(&unaligned));
        assert!(!gold.lenient_match(&Mention::new(None, "renal failure")));
        assert_eq!(unaligned.key(), MentionKey::Text("acute renal failure".into()));
    }

    #[test]
    fn one_to_one_matching_is_maximum_not_greedy() {
        // Gold A overlaps predictions 0 and 1, gold B only prediction 0. Greedy (A takes 0)
        // would match 1 pair; the maximum matching pairs A-1 and B-0.
        let gold = [(0, 10), (8, 12)];
        let pred = [(5, 12), (0, 3)];
        assert_eq!(max_matching(&gold, &pred, |g, p| overlaps(*g, *p)), 2);
        // One long prediction over two gold spans matches only one of them.
        let c = Counts::matching(&[(0, 3), (4, 8)], &[(0, 8)], |g: &Span, p: &Span| overlaps(*g, *p));
        assert_eq!(c, Counts { tp: 1, fp: 0, fn_: 1 });
    }

    #[test]
    fn precision_recall_f1_by_hand() {
        // 2 of 3 predictions right, 2 of 4 gold found: P = 2/3, R = 1/2, F1 = 4/7.
        let c = Counts::new(2, 3, 4);
        assert_eq!(c, Counts { tp: 2, fp: 1, fn_: 2 });
        assert!(close(c.precision().value, 2.0 / 3.0) && c.precision().n == 3);
        assert!(close(c.recall().value, 0.5) && c.recall().n == 4);
        assert!(close(c.f1().value, 4.0 / 7.0) && c.f1().n == 4);
        let p = 2.0 / 3.0;
        assert!(close(c.f1().value, 2.0 * p * 0.5 / (p + 0.5)));
    }

    #[test]
    fn empty_predictions_and_empty_gold() {
        // No predictions: precision undefined (0, n = 0), recall 0 over the gold.
        let none_predicted = Counts::new(0, 0, 5);
        assert_eq!(none_predicted.precision(), Score::UNDEFINED);
        assert_eq!(none_predicted.recall(), Score { value: 0.0, n: 5 });
        assert_eq!(none_predicted.f1(), Score { value: 0.0, n: 5 });
        // No gold: recall undefined; precision 0 over the predictions; F1 0 over no gold.
        let no_gold = Counts::new(0, 3, 0);
        assert_eq!(no_gold.recall(), Score::UNDEFINED);
        assert_eq!(no_gold.precision(), Score { value: 0.0, n: 3 });
        assert_eq!(no_gold.f1(), Score { value: 0.0, n: 0 });
        // Neither: everything undefined.
        let c = Counts::default();
        assert_eq!([c.precision(), c.recall(), c.f1()], [Score::UNDEFINED; 3]);
    }

    #[test]
    fn micro_pools_counts_macro_averages_documents() {
        // Doc 1: 1 gold, found (F1 1). Doc 2: 3 gold, 1 found, 1 wrong (P 1/2, R 1/3, F1 0.4).
        // Doc 3: nothing either side (skipped by macro). Doc 4: 1 prediction, no gold (F1 0).
        let docs = [Counts::new(1, 1, 1), Counts::new(1, 2, 3), Counts::default(), Counts::new(0, 1, 0)];
        let micro = docs.iter().fold(Counts::default(), |a, &b| a + b);
        assert_eq!(micro, Counts { tp: 2, fp: 2, fn_: 2 });
        assert!(close(micro.f1().value, 0.5));
        let mac = macro_f1(docs);
        assert_eq!(mac.n, 3);
        assert!(close(mac.value, (1.0 + 0.4 + 0.0) / 3.0), "{mac:?}");
        assert_eq!(macro_f1([Counts::default()]), Score::UNDEFINED);
    }

    #[test]
    fn duplicates_count_once() {
        let pred = dedupe_by([m(0, 4, "a"), m(0, 4, "A"), m(5, 9, "b"), Mention::new(None, "B ")], Mention::key);
        assert_eq!(pred.len(), 3);
        let pred = dedupe_by(pred, |p| p.norm.clone());
        assert_eq!(pred.len(), 2, "text dedupe collapses the unaligned 'B ' onto 'b'");
        let gold = dedupe_by([m(0, 4, "a"), m(0, 4, "a")], Mention::key);
        let c = Counts::matching(&gold, &pred, |g, p| g.strict_match(p));
        assert_eq!(c, Counts { tp: 1, fp: 1, fn_: 0 });
    }

    #[test]
    fn prf_names_and_normalization() {
        let names: Vec<String> = prf("pair_strict", Counts::new(1, 2, 2)).into_iter().map(|m| m.name).collect();
        assert_eq!(names, ["pair_strict_precision", "pair_strict_recall", "pair_strict_f1"]);
        assert_eq!(normalize_text("  BRCA1\tgene\n"), "brca1 gene");
    }

    #[test]
    fn tokens_and_coverage() {
        assert_eq!(whitespace_tokens("Juan  Pérez López", 10), vec![(10, 14), (16, 21), (22, 27)]);
        assert_eq!(whitespace_tokens("   ", 0), Vec::<Span>::new());
        let merged = merge_spans(vec![(16, 18), (10, 14), (14, 16), (30, 31), (5, 5)]);
        assert_eq!(merged, vec![(10, 18), (30, 31)]);
        assert!(covered((10, 14), &merged));
        assert!(covered((16, 18), &merged));
        assert!(!covered((16, 21), &merged), "partly covered is a miss");
        assert!(!covered((0, 3), &merged));
        assert!(!covered((29, 31), &merged));
    }
}
