//! PHI spans against `gold_phi`, per dataset, in document offsets.
//!
//! Gold types are mapped to [`PhiType`] with [`from_gold`]; unmappable gold spans are counted
//! (`gold_unmapped`, value = count, n = gold spans in scope) and left out of every other metric.
//! Metrics:
//!
//! - `strict_*`: exact span and same type; `lenient_*`: overlapping span and same type (an
//!   unaligned teacher string matches by normalized text); both per type (`strict_NAME_f1`, …)
//!   and pooled over types.
//! - `untyped_lenient_*`: overlapping span, any type.
//! - `token_recall`: of the white-space tokens of the gold spans, the share whose every char
//!   is inside some predicted span of any type (a token partly covered still leaks). A missed
//!   PHI token is the harm redaction exists to prevent.
//!
//! Under the teacher's sample a gold or predicted span is in scope when the sentence it starts
//! in was labeled by the teacher.
//!
//! [`PhiType`]: crate::vocab::PhiType
//! [`from_gold`]: crate::vocab::phi::from_gold

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use super::Scope;
use super::load::{GoldPhi, Sentences};
use super::metrics::{Counts, Mention, Metric, Score, Span, covered, dedupe_by, merge_spans, prf, whitespace_tokens};
use super::systems::PredSpan;

#[derive(Debug, Clone, Default)]
struct Dataset {
    rows: Vec<GoldPhi>,
    docs: BTreeSet<String>,
}

/// The PHI gold of one split, by dataset.
#[derive(Debug, Clone, Default)]
pub struct PhiGold {
    datasets: BTreeMap<String, Dataset>,
}

impl PhiGold {
    /// `docs_by_source`: the split's documents per source, so documents without PHI count
    /// their predictions as false positives.
    pub fn new(rows: Vec<GoldPhi>, docs_by_source: &BTreeMap<String, BTreeSet<String>>) -> Self {
        let mut datasets: BTreeMap<String, Dataset> = BTreeMap::new();
        for r in rows {
            let d = datasets.entry(r.dataset.clone()).or_default();
            d.docs.insert(r.doc_id.clone());
            d.rows.push(r);
        }
        for (name, d) in &mut datasets {
            d.docs.extend(docs_by_source.get(name).into_iter().flatten().cloned());
        }
        Self { datasets }
    }

    pub fn docs(&self) -> impl Iterator<Item = &String> {
        self.datasets.values().flat_map(|d| &d.docs)
    }

    /// Every gold span, of every dataset.
    pub fn rows(&self) -> impl Iterator<Item = &GoldPhi> {
        self.datasets.values().flat_map(|d| &d.rows)
    }
}

type Typed = (Mention, String);

/// Metrics per dataset of `preds` (document offsets) on what `scope` admits.
pub fn evaluate(
    gold: &PhiGold,
    preds: &[PredSpan],
    sentences: &Sentences,
    scope: Scope<'_>,
) -> Vec<(String, Vec<Metric>)> {
    let mut by_doc: HashMap<&str, Vec<&PredSpan>> = HashMap::new();
    for p in preds.iter().filter(|p| scope.unit(&p.doc_id, p.sent_id)) {
        by_doc.entry(p.doc_id.as_str()).or_default().push(p);
    }
    gold.datasets.iter().map(|(name, d)| (name.clone(), dataset(d, &by_doc, sentences, scope))).collect()
}

fn dataset(
    d: &Dataset,
    by_doc: &HashMap<&str, Vec<&PredSpan>>,
    sentences: &Sentences,
    scope: Scope<'_>,
) -> Vec<Metric> {
    let mut gold_by_doc: HashMap<&str, Vec<&GoldPhi>> = HashMap::new();
    for r in d.rows.iter().filter(|r| scope.unit(&r.doc_id, sentences.at(&r.doc_id, r.span.0))) {
        gold_by_doc.entry(r.doc_id.as_str()).or_default().push(r);
    }
    let (mut strict, mut lenient): (BTreeMap<String, Counts>, BTreeMap<String, Counts>) = Default::default();
    let (mut untyped, mut tokens, mut tokens_covered, mut unmapped, mut in_scope) = (Counts::default(), 0, 0, 0, 0);
    for doc in &d.docs {
        let rows = gold_by_doc.get(doc.as_str()).map_or(&[][..], Vec::as_slice);
        in_scope += rows.len();
        unmapped += rows.iter().filter(|r| r.phi_type.is_none()).count();
        let mapped: Vec<&GoldPhi> = rows.iter().copied().filter(|r| r.phi_type.is_some()).collect();
        let g: Vec<Typed> = dedupe_by(
            mapped.iter().filter_map(|r| Some((Mention::new(Some(r.span), &r.text), r.phi_type?.as_str().to_string()))),
            |(m, t)| (m.key(), t.clone()),
        );
        let predicted = by_doc.get(doc.as_str()).map_or(&[][..], Vec::as_slice);
        let p: Vec<Typed> =
            dedupe_by(predicted.iter().map(|p| (p.mention.clone(), p.phi_type.clone())), |(m, t)| (m.key(), t.clone()));
        let types: BTreeSet<&String> = g.iter().chain(&p).map(|(_, t)| t).collect();
        for t in types {
            let of_type = |v: &[Typed]| v.iter().filter(|(_, ty)| ty == t).map(|(m, _)| m.clone()).collect::<Vec<_>>();
            let (gt, pt) = (of_type(&g), of_type(&p));
            *strict.entry(t.clone()).or_default() += Counts::matching(&gt, &pt, |a, b| a.strict_match(b));
            *lenient.entry(t.clone()).or_default() += Counts::matching(&gt, &pt, |a, b| a.lenient_match(b));
        }
        let gu = dedupe_by(g.iter().map(|(m, _)| m.clone()), Mention::key);
        let pu = dedupe_by(p.iter().map(|(m, _)| m.clone()), Mention::key);
        untyped += Counts::matching(&gu, &pu, |a, b| a.lenient_match(b));
        let gold_tokens: HashSet<Span> = mapped.iter().flat_map(|r| whitespace_tokens(&r.text, r.span.0)).collect();
        let merged = merge_spans(predicted.iter().filter_map(|p| p.mention.span).collect());
        tokens += gold_tokens.len();
        tokens_covered += gold_tokens.iter().filter(|t| covered(**t, &merged)).count();
    }
    let total = |m: &BTreeMap<String, Counts>| m.values().fold(Counts::default(), |a, &b| a + b);
    let mut metrics = Vec::new();
    metrics.extend(prf("strict", total(&strict)));
    metrics.extend(prf("lenient", total(&lenient)));
    metrics.extend(prf("untyped_lenient", untyped));
    metrics.push(Metric::new("token_recall", Score::ratio(tokens_covered, tokens)));
    metrics.push(Metric { name: "gold_unmapped".into(), value: unmapped as f64, n: in_scope });
    for (t, c) in &strict {
        metrics.extend(prf(&format!("strict_{t}"), *c));
    }
    for (t, c) in &lenient {
        metrics.extend(prf(&format!("lenient_{t}"), *c));
    }
    metrics
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::load::SentenceRange;
    use crate::vocab::PhiType;

    fn gold(doc: &str, span: Span, phi_type: Option<PhiType>, text: &str) -> GoldPhi {
        GoldPhi { dataset: "meddocan".into(), doc_id: doc.into(), span, phi_type, text: text.into() }
    }

    fn pred(doc: &str, span: Option<Span>, text: &str, phi_type: &str) -> PredSpan {
        PredSpan { doc_id: doc.into(), sent_id: Some(0), mention: Mention::new(span, text), phi_type: phi_type.into() }
    }

    fn get(out: &[(String, Vec<Metric>)], name: &str) -> (f64, usize) {
        let m = out[0].1.iter().find(|m| m.name == name).unwrap_or_else(|| panic!("no {name}"));
        (m.value, m.n)
    }

    fn sentences() -> Sentences {
        let r = |sent_id, start, end| SentenceRange { sent_id, start, end, blank: false };
        Sentences::from_map(HashMap::from([("d".to_string(), vec![r(0, 0, 30), r(1, 30, 80)])]))
    }

    /// Doc d: "Juan Pérez" NAME (0,10), "12/03/2020" DATE (20,30), "Madrid" LOCATION (40,46),
    /// and an unmappable type at (60,65). Doc e (no PHI) is in the split.
    fn gold_set() -> PhiGold {
        let rows = vec![
            gold("d", (0, 10), Some(PhiType::Name), "Juan Pérez"),
            gold("d", (20, 30), Some(PhiType::Date), "12/03/2020"),
            gold("d", (40, 46), Some(PhiType::Location), "Madrid"),
            gold("d", (60, 65), None, "xxxxx"),
        ];
        PhiGold::new(rows, &BTreeMap::from([("meddocan".to_string(), BTreeSet::from(["e".to_string()]))]))
    }

    #[test]
    fn strict_lenient_untyped_and_token_recall_by_hand() {
        let preds = [
            pred("d", Some((0, 4)), "Juan", "NAME"), // lenient NAME hit, covers token "Juan"
            pred("d", Some((20, 30)), "12/03/2020", "DATE"), // strict DATE hit
            pred("d", Some((20, 30)), "12/03/2020", "DATE"), // duplicate
            pred("d", Some((40, 46)), "Madrid", "NAME"), // right span, wrong type
            pred("e", Some((0, 3)), "Dr.", "NAME"),  // PHI-free document: FP
        ];
        let out = evaluate(&gold_set(), &preds, &sentences(), Scope::All);
        assert_eq!(out[0].0, "meddocan");
        // Strict typed: 4 predictions, 3 mapped gold, 1 TP (DATE).
        assert_eq!(get(&out, "strict_precision"), (0.25, 4));
        assert_eq!(get(&out, "strict_recall"), (1.0 / 3.0, 3));
        // Lenient typed: NAME and DATE -> 2 TP.
        assert_eq!(get(&out, "lenient_precision"), (0.5, 4));
        assert_eq!(get(&out, "lenient_recall"), (2.0 / 3.0, 3));
        // Untyped lenient: all three gold spans are overlapped; e's prediction is an FP.
        assert_eq!(get(&out, "untyped_lenient_precision"), (0.75, 4));
        assert_eq!(get(&out, "untyped_lenient_recall"), (1.0, 3));
        // Tokens: Juan, Pérez, 12/03/2020, Madrid; Pérez is not covered.
        assert_eq!(get(&out, "token_recall"), (0.75, 4));
        assert_eq!(get(&out, "gold_unmapped"), (1.0, 4));
        // Per type: NAME strict 0 of 1 gold, 3 predictions (Juan, Madrid, Dr.).
        assert_eq!(get(&out, "strict_NAME_recall"), (0.0, 1));
        assert_eq!(get(&out, "strict_NAME_precision"), (0.0, 3));
        assert_eq!(get(&out, "lenient_NAME_recall"), (1.0, 1));
        assert_eq!(get(&out, "strict_DATE_f1"), (1.0, 1));
        assert_eq!(get(&out, "strict_LOCATION_recall"), (0.0, 1));
    }

    #[test]
    fn unaligned_and_scoped_predictions() {
        // An unaligned teacher string matches leniently by text, never strictly, covers no token.
        let preds = [pred("d", None, "madrid", "LOCATION")];
        let out = evaluate(&gold_set(), &preds, &sentences(), Scope::All);
        assert_eq!(get(&out, "lenient_LOCATION_recall"), (1.0, 1));
        assert_eq!(get(&out, "strict_LOCATION_recall"), (0.0, 1));
        assert_eq!(get(&out, "token_recall"), (0.0, 4));
        // Teacher sample: only sentence 0 of d ([0, 30)): gold NAME and DATE.
        let labeled = HashSet::from([("d".to_string(), 0)]);
        let s = sentences();
        let scope = Scope::Labeled { sentences: &labeled, index: &s };
        let preds = [pred("d", Some((0, 10)), "Juan Pérez", "NAME")];
        let out = evaluate(&gold_set(), &preds, &s, scope);
        assert_eq!(get(&out, "strict_recall"), (0.5, 2));
        assert_eq!(get(&out, "strict_precision"), (1.0, 1));
        assert_eq!(get(&out, "token_recall"), (2.0 / 3.0, 3));
        assert_eq!(get(&out, "gold_unmapped"), (0.0, 2));
    }
}
