//! Drug → adverse event pairs against `gold_ade`.
//!
//! The unit is the sentence. Every sentence of a dev ADE-Corpus-V2 document is in scope, also
//! those without gold pairs (ADE-NEG sentences): a pair predicted there is a false positive.
//! Metrics: pair P/R/F1 strict (both spans exact) and lenient (both spans overlap; an unaligned
//! teacher string matches by normalized text), each micro (pooled over all pairs) and macro
//! (mean per-document F1), and strict entity P/R/F1 for drugs and effects. Entities are those
//! taking part in a pair, on both sides: `gold_ade` lists only drugs with an adverse event, and
//! the student only outputs pairs.

use std::collections::{BTreeMap, BTreeSet, HashMap};

use super::Scope;
use super::load::{GoldAde, SentKey, Sentences};
use super::metrics::{Counts, Mention, MentionKey, Metric, dedupe_by, macro_f1, prf};
use super::systems::PredPair;

pub type Pair = (Mention, Mention);

/// The ADE gold of one split: the sentences in scope and their de-duplicated gold pairs.
#[derive(Debug, Clone, Default)]
pub struct AdeGold {
    units: BTreeSet<SentKey>,
    pairs: HashMap<SentKey, Vec<Pair>>,
}

impl AdeGold {
    /// Every sentence of `docs` (the split's ADE documents) plus every gold row's sentence.
    pub fn new(rows: &[GoldAde], docs: &BTreeSet<String>, sentences: &Sentences) -> Self {
        let mut units: BTreeSet<SentKey> = docs
            .iter()
            .flat_map(|d| sentences.of_doc(d).iter().filter(|s| !s.blank).map(|s| (d.clone(), s.sent_id)))
            .collect();
        let mut pairs: HashMap<SentKey, Vec<Pair>> = HashMap::new();
        for r in rows {
            let key = (r.doc_id.clone(), r.sent_id);
            units.insert(key.clone());
            pairs.entry(key).or_default().push((r.drug.clone(), r.effect.clone()));
        }
        for v in pairs.values_mut() {
            *v = dedupe_by(std::mem::take(v), pair_key);
        }
        Self { units, pairs }
    }

    /// Sentences in scope.
    pub fn units(&self) -> &BTreeSet<SentKey> {
        &self.units
    }

    /// The de-duplicated gold pairs of each sentence that has some.
    pub fn pairs(&self) -> impl Iterator<Item = (&SentKey, &[Pair])> {
        self.pairs.iter().map(|(k, v)| (k, v.as_slice()))
    }
}

fn pair_key(p: &Pair) -> (MentionKey, MentionKey) {
    (p.0.key(), p.1.key())
}

/// Entities of one side of the pairs, de-duplicated.
fn side(pairs: &[Pair], pick: fn(&Pair) -> &Mention) -> Vec<Mention> {
    dedupe_by(pairs.iter().map(|p| pick(p).clone()), Mention::key)
}

/// All ADE metrics of `preds` on the sentences of `gold` that `scope` admits.
pub fn evaluate(gold: &AdeGold, preds: &[PredPair], scope: Scope<'_>) -> Vec<Metric> {
    let mut predicted: HashMap<SentKey, Vec<Pair>> = HashMap::new();
    for p in preds {
        predicted.entry((p.doc_id.clone(), p.sent_id)).or_default().push((p.subject.clone(), p.object.clone()));
    }
    let [mut strict, mut lenient, mut drugs, mut effects] = [Counts::default(); 4];
    let mut per_doc: BTreeMap<&str, (Counts, Counts)> = BTreeMap::new();
    let empty = Vec::new();
    for unit in gold.units.iter().filter(|(d, s)| scope.sentence(d, *s)) {
        let g = gold.pairs.get(unit).unwrap_or(&empty);
        let p = dedupe_by(predicted.remove(unit).unwrap_or_default(), pair_key);
        let s = Counts::matching(g, &p, |a, b| a.0.strict_match(&b.0) && a.1.strict_match(&b.1));
        let l = Counts::matching(g, &p, |a, b| a.0.lenient_match(&b.0) && a.1.lenient_match(&b.1));
        let doc = per_doc.entry(unit.0.as_str()).or_default();
        doc.0 += s;
        doc.1 += l;
        strict += s;
        lenient += l;
        let strict_eq = |a: &Mention, b: &Mention| a.strict_match(b);
        drugs += Counts::matching(&side(g, |p| &p.0), &side(&p, |p| &p.0), strict_eq);
        effects += Counts::matching(&side(g, |p| &p.1), &side(&p, |p| &p.1), strict_eq);
    }
    let mut metrics = Vec::new();
    metrics.extend(prf("pair_strict", strict));
    metrics.extend(prf("pair_lenient", lenient));
    metrics.push(Metric::new("pair_strict_macro_f1", macro_f1(per_doc.values().map(|c| c.0))));
    metrics.push(Metric::new("pair_lenient_macro_f1", macro_f1(per_doc.values().map(|c| c.1))));
    metrics.extend(prf("drug_strict", drugs));
    metrics.extend(prf("effect_strict", effects));
    metrics
}

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;
    use crate::eval::load::SentenceRange;

    fn m(s: i32, e: i32) -> Mention {
        Mention::new(Some((s, e)), "x")
    }

    fn gold_row(doc: &str, sent: i32, drug: (i32, i32), effect: (i32, i32)) -> GoldAde {
        GoldAde { doc_id: doc.into(), sent_id: sent, drug: m(drug.0, drug.1), effect: m(effect.0, effect.1) }
    }

    fn pred(doc: &str, sent: i32, drug: Mention, effect: Mention) -> PredPair {
        PredPair { doc_id: doc.into(), sent_id: sent, subject: drug, object: effect }
    }

    fn get(metrics: &[Metric], name: &str) -> (f64, usize) {
        let m = metrics.iter().find(|m| m.name == name).unwrap_or_else(|| panic!("no {name}"));
        (m.value, m.n)
    }

    fn sentences() -> Sentences {
        let r = |sent_id| SentenceRange { sent_id, start: sent_id * 100, end: sent_id * 100 + 50, blank: false };
        Sentences::from_map(HashMap::from([("a".to_string(), vec![r(0), r(1)]), ("b".to_string(), vec![r(0)])]))
    }

    /// Doc a: sentence 0 has gold (0,4)->(10,15) twice (deduped) and (0,4)->(20,25); sentence 1
    /// has no gold (a negative). Doc b: sentence 0 has gold (5,9)->(30,40).
    fn gold() -> AdeGold {
        let rows = [
            gold_row("a", 0, (0, 4), (10, 15)),
            gold_row("a", 0, (0, 4), (10, 15)),
            gold_row("a", 0, (0, 4), (20, 25)),
            gold_row("b", 0, (5, 9), (30, 40)),
        ];
        AdeGold::new(&rows, &BTreeSet::from(["a".to_string(), "b".to_string()]), &sentences())
    }

    #[test]
    fn strict_lenient_micro_macro_and_entities_by_hand() {
        let gold = gold();
        assert_eq!(gold.units().len(), 3, "the negative sentence a/1 is in scope");
        let preds = [
            pred("a", 0, m(0, 4), m(10, 15)), // strict hit
            pred("a", 0, m(0, 4), m(10, 15)), // duplicate: counted once
            pred("a", 0, m(0, 4), m(21, 23)), // lenient hit of (0,4)->(20,25)
            pred("a", 1, m(0, 3), m(5, 8)),   // in the negative sentence: FP
            pred("b", 0, m(5, 9), m(50, 60)), // wrong effect: FP and FN
            pred("c", 0, m(0, 1), m(2, 3)),   // document not in the gold set: ignored
        ];
        let metrics = evaluate(&gold, &preds, Scope::All);
        // Strict: 4 predictions, 3 gold, 1 TP. P = 1/4, R = 1/3, F1 = 2/7.
        assert_eq!(get(&metrics, "pair_strict_precision"), (0.25, 4));
        assert_eq!(get(&metrics, "pair_strict_recall"), (1.0 / 3.0, 3));
        assert_eq!(get(&metrics, "pair_strict_f1"), (2.0 / 7.0, 3));
        // Lenient: 2 TP. P = 2/4, R = 2/3, F1 = 4/7.
        assert_eq!(get(&metrics, "pair_lenient_precision"), (0.5, 4));
        assert_eq!(get(&metrics, "pair_lenient_f1"), (4.0 / 7.0, 3));
        // Macro strict: doc a tp 1 fp 2 fn 1 -> F1 2/5; doc b tp 0 -> 0. Mean 0.2 over 2 docs.
        let (v, n) = get(&metrics, "pair_strict_macro_f1");
        assert!((v - 0.2).abs() < 1e-12 && n == 2, "{v} {n}");
        // Macro lenient: doc a tp 2 fp 1 fn 0 -> 4/5; doc b 0. Mean 0.4.
        let (v, _) = get(&metrics, "pair_lenient_macro_f1");
        assert!((v - 0.4).abs() < 1e-12, "{v}");
        // Drugs: gold {a0:(0,4), b0:(5,9)}, predicted {a0:(0,4), a1:(0,3), b0:(5,9)}: P 2/3, R 1.
        assert_eq!(get(&metrics, "drug_strict_precision"), (2.0 / 3.0, 3));
        assert_eq!(get(&metrics, "drug_strict_recall"), (1.0, 2));
        // Effects: gold 3, predicted {(10,15), (21,23), (5,8), (50,60)}: 1 TP.
        assert_eq!(get(&metrics, "effect_strict_precision"), (0.25, 4));
        assert_eq!(get(&metrics, "effect_strict_recall"), (1.0 / 3.0, 3));
    }

    #[test]
    fn unaligned_predictions_match_leniently_by_text_only() {
        let rows = [GoldAde {
            doc_id: "a".into(),
            sent_id: 0,
            drug: Mention::new(Some((0, 4)), "Taxol"),
            effect: Mention::new(Some((10, 15)), "Rash"),
        }];
        let gold = AdeGold::new(&rows, &BTreeSet::new(), &sentences());
        let preds = [pred("a", 0, Mention::new(None, "taxol"), Mention::new(Some((10, 15)), "rash"))];
        let metrics = evaluate(&gold, &preds, Scope::All);
        assert_eq!(get(&metrics, "pair_strict_recall").0, 0.0);
        assert_eq!(get(&metrics, "pair_lenient_recall").0, 1.0);
        assert_eq!(get(&metrics, "effect_strict_recall").0, 1.0);
    }

    #[test]
    fn a_scope_restricts_gold_and_predictions_alike() {
        let gold = gold();
        let labeled = HashSet::from([("b".to_string(), 0)]);
        let s = sentences();
        let scope = Scope::Labeled { sentences: &labeled, index: &s };
        let preds = [pred("a", 0, m(0, 4), m(10, 15)), pred("b", 0, m(5, 9), m(30, 40))];
        let metrics = evaluate(&gold, &preds, scope);
        assert_eq!(get(&metrics, "pair_strict_precision"), (1.0, 1));
        assert_eq!(get(&metrics, "pair_strict_recall"), (1.0, 1));
        // Empty predictions: precision undefined -> 0 with n = 0, recall 0 over the gold.
        let metrics = evaluate(&gold, &[], Scope::All);
        assert_eq!(get(&metrics, "pair_strict_precision"), (0.0, 0));
        assert_eq!(get(&metrics, "pair_strict_recall"), (0.0, 3));
        assert_eq!(get(&metrics, "pair_strict_macro_f1"), (0.0, 2));
    }
}
