//! Gene–disease associations against `gold_gene_disease`, per dataset.
//!
//! - **GAD** (sentence level; every row is one candidate pair labeled 1 or 0): the system "says
//!   yes" to a row when it extracted a pair in that sentence whose gene span overlaps the gold
//!   gene and whose disease span overlaps the gold disease (normalized text equality when the
//!   prediction is unaligned). P/R/F1 of the positive class over rows (`positive_*`), accuracy,
//!   and the F1 of always saying yes (`always_yes_f1`) for context.
//! - **BioRED, EU-ADR** and any other dataset: pair F1 by mention text (`pair_text_*`): per
//!   document, the set of (normalized gene, normalized disease) of the `label = 1` rows against
//!   the set of pairs the system extracted in that document. A dataset whose rows have no
//!   `sent_id` (BioRED) is document level: under the teacher's sample only documents whose every
//!   sentence the teacher labeled count.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use super::Scope;
use super::load::GoldGeneDisease;
use super::metrics::{Counts, Metric, Score, dedupe_by, prf};
use super::systems::PredPair;

/// The sentence-level candidate-pair dataset.
pub const GAD: &str = "gad";

#[derive(Debug, Clone, Default)]
struct Dataset {
    rows: Vec<GoldGeneDisease>,
    /// The split's documents of this dataset (gold rows and `documents` of that source).
    docs: BTreeSet<String>,
    /// Rows without `sent_id`: document-level gold.
    doc_level: bool,
}

/// The gene–disease gold of one split, by dataset.
#[derive(Debug, Clone, Default)]
pub struct GeneDiseaseGold {
    datasets: BTreeMap<String, Dataset>,
}

impl GeneDiseaseGold {
    /// `docs_by_source`: the split's documents per `documents.source` (dataset names are
    /// sources), so documents without gold rows still count their predictions.
    pub fn new(rows: Vec<GoldGeneDisease>, docs_by_source: &BTreeMap<String, BTreeSet<String>>) -> Self {
        let mut datasets: BTreeMap<String, Dataset> = BTreeMap::new();
        for r in rows {
            let d = datasets.entry(r.dataset.clone()).or_default();
            d.docs.insert(r.doc_id.clone());
            d.doc_level |= r.sent_id.is_none();
            d.rows.push(r);
        }
        for (name, d) in &mut datasets {
            if name != GAD {
                d.docs.extend(docs_by_source.get(name).into_iter().flatten().cloned());
            }
        }
        Self { datasets }
    }

    /// Every document in the gold, for loading sentences.
    pub fn docs(&self) -> impl Iterator<Item = &String> {
        self.datasets.values().flat_map(|d| &d.docs)
    }

    /// Every gold row, of every dataset.
    pub fn rows(&self) -> impl Iterator<Item = &GoldGeneDisease> {
        self.datasets.values().flat_map(|d| &d.rows)
    }
}

/// Metrics per dataset of `preds` (sentence offsets) on what `scope` admits.
pub fn evaluate(gold: &GeneDiseaseGold, preds: &[PredPair], scope: Scope<'_>) -> Vec<(String, Vec<Metric>)> {
    let mut by_sentence: HashMap<(&str, i32), Vec<&PredPair>> = HashMap::new();
    let mut by_doc: HashMap<&str, Vec<&PredPair>> = HashMap::new();
    for p in preds {
        by_sentence.entry((p.doc_id.as_str(), p.sent_id)).or_default().push(p);
        by_doc.entry(p.doc_id.as_str()).or_default().push(p);
    }
    gold.datasets
        .iter()
        .map(|(name, d)| {
            let metrics =
                if name == GAD { gad(d, &by_sentence, &by_doc, scope) } else { text_pairs(d, &by_doc, scope) };
            (name.clone(), metrics)
        })
        .collect()
}

fn gad(
    d: &Dataset,
    by_sentence: &HashMap<(&str, i32), Vec<&PredPair>>,
    by_doc: &HashMap<&str, Vec<&PredPair>>,
    scope: Scope<'_>,
) -> Vec<Metric> {
    let rows = dedupe_by(d.rows.iter().filter(|r| scope.unit(&r.doc_id, r.sent_id)), |r| {
        (r.doc_id.clone(), r.sent_id, r.gene.key(), r.disease.key())
    });
    let (mut counts, mut correct, mut positives) = (Counts::default(), 0, 0);
    for r in &rows {
        let yes = match r.sent_id {
            Some(s) => by_sentence.get(&(r.doc_id.as_str(), s)).is_some_and(|ps| {
                ps.iter().any(|p| r.gene.lenient_match(&p.subject) && r.disease.lenient_match(&p.object))
            }),
            // Document-level candidate: offsets are not comparable, only text.
            None => by_doc
                .get(r.doc_id.as_str())
                .is_some_and(|ps| ps.iter().any(|p| r.gene.norm == p.subject.norm && r.disease.norm == p.object.norm)),
        };
        let positive = r.label == 1;
        counts += Counts {
            tp: usize::from(yes && positive),
            fp: usize::from(yes && !positive),
            fn_: usize::from(!yes && positive),
        };
        correct += usize::from(yes == positive);
        positives += usize::from(positive);
    }
    let mut metrics = prf("positive", counts).to_vec();
    metrics.push(Metric::new("accuracy", Score::ratio(correct, rows.len())));
    metrics.push(Metric::new("always_yes_f1", Counts::new(positives, rows.len(), positives).f1()));
    metrics
}

fn text_pairs(d: &Dataset, by_doc: &HashMap<&str, Vec<&PredPair>>, scope: Scope<'_>) -> Vec<Metric> {
    let mut gold: HashMap<&str, HashSet<(&str, &str)>> = HashMap::new();
    for r in d.rows.iter().filter(|r| r.label == 1 && scope.unit(&r.doc_id, r.sent_id)) {
        gold.entry(r.doc_id.as_str()).or_default().insert((r.gene.norm.as_str(), r.disease.norm.as_str()));
    }
    let mut counts = Counts::default();
    let empty = HashSet::new();
    for doc in &d.docs {
        let g = gold.get(doc.as_str()).unwrap_or(&empty);
        let p: HashSet<(&str, &str)> = by_doc
            .get(doc.as_str())
            .into_iter()
            .flatten()
            .filter(|p| scope.unit(doc, if d.doc_level { None } else { Some(p.sent_id) }))
            .filter(|p| !p.subject.norm.is_empty() && !p.object.norm.is_empty())
            .map(|p| (p.subject.norm.as_str(), p.object.norm.as_str()))
            .collect();
        counts += Counts::new(g.intersection(&p).count(), p.len(), g.len());
    }
    prf("pair_text", counts).to_vec()
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::load::{SentenceRange, Sentences};
    use crate::eval::metrics::Mention;

    fn row(
        dataset: &str,
        doc: &str,
        sent: Option<i32>,
        gene: (i32, i32, &str),
        disease: (i32, i32, &str),
        label: i8,
    ) -> GoldGeneDisease {
        GoldGeneDisease {
            dataset: dataset.into(),
            doc_id: doc.into(),
            sent_id: sent,
            gene: Mention::new(Some((gene.0, gene.1)), gene.2),
            disease: Mention::new(Some((disease.0, disease.1)), disease.2),
            label,
        }
    }

    fn pred(doc: &str, sent: i32, gene: Mention, disease: Mention) -> PredPair {
        PredPair { doc_id: doc.into(), sent_id: sent, subject: gene, object: disease }
    }

    fn get(out: &[(String, Vec<Metric>)], dataset: &str, name: &str) -> (f64, usize) {
        let metrics = &out.iter().find(|(d, _)| d == dataset).expect("dataset").1;
        let m = metrics.iter().find(|m| m.name == name).unwrap_or_else(|| panic!("no {name}"));
        (m.value, m.n)
    }

    #[test]
    fn gad_rows_are_yes_no_decisions() {
        let rows = vec![
            row(GAD, "g1", Some(0), (0, 5, "BRCA1"), (20, 33, "breast cancer"), 1),
            row(GAD, "g2", Some(0), (0, 3, "APOE"), (10, 20, "alzheimers"), 1),
            row(GAD, "g3", Some(0), (0, 3, "TNF"), (10, 16, "asthma"), 0),
            row(GAD, "g4", Some(0), (0, 3, "IL6"), (10, 16, "sepsis"), 0),
        ];
        let gold = GeneDiseaseGold::new(rows, &BTreeMap::new());
        let preds = [
            // Overlapping spans: yes to g1 (positive) -> TP.
            pred("g1", 0, Mention::new(Some((0, 4)), "BRCA"), Mention::new(Some((27, 33)), "cancer")),
            // g2: right gene, disease elsewhere -> no -> FN.
            pred("g2", 0, Mention::new(Some((0, 3)), "APOE"), Mention::new(Some((25, 30)), "other")),
            // g3: unaligned but the same text -> yes to a negative -> FP.
            pred("g3", 0, Mention::new(None, "tnf"), Mention::new(None, "Asthma")),
        ];
        let out = evaluate(&gold, &preds, Scope::All);
        // Yes to g1 (TP) and g3 (FP); g2 missed: P 1/2, R 1/2, F1 1/2.
        assert_eq!(get(&out, GAD, "positive_precision"), (0.5, 2));
        assert_eq!(get(&out, GAD, "positive_recall"), (0.5, 2));
        assert_eq!(get(&out, GAD, "positive_f1"), (0.5, 2));
        // g1 right, g2 wrong, g3 wrong, g4 right (no).
        assert_eq!(get(&out, GAD, "accuracy"), (0.5, 4));
        // Always yes: P 2/4, R 1 -> F1 2/3.
        assert_eq!(get(&out, GAD, "always_yes_f1"), (2.0 / 3.0, 2));
    }

    #[test]
    fn text_pairs_per_document_and_teacher_scope() {
        let rows = vec![
            row("euadr", "e1", Some(0), (0, 5, "BRCA1"), (10, 23, "Breast  Cancer"), 1),
            row("euadr", "e1", Some(1), (0, 4, "TP53"), (10, 16, "glioma"), 1),
            row("euadr", "e1", Some(1), (0, 4, "TP53"), (20, 26, "asthma"), 0),
            row("biored", "b1", None, (0, 4, "TP53"), (90, 96, "glioma"), 1),
        ];
        let docs = BTreeMap::from([("euadr".to_string(), BTreeSet::from(["e2".to_string()]))]);
        let gold = GeneDiseaseGold::new(rows, &docs);
        let preds = [
            pred("e1", 0, Mention::new(Some((0, 5)), "brca1"), Mention::new(Some((10, 23)), "breast cancer")),
            pred("e1", 1, Mention::new(Some((0, 4)), "TP53"), Mention::new(Some((20, 26)), "asthma")),
            pred("e2", 0, Mention::new(Some((0, 2)), "X"), Mention::new(Some((3, 5)), "Y")),
            pred("b1", 0, Mention::new(Some((0, 4)), "tp53"), Mention::new(Some((5, 11)), "Glioma")),
            pred("b1", 2, Mention::new(Some((0, 4)), "tp53"), Mention::new(Some((5, 11)), "glioma")),
        ];
        let out = evaluate(&gold, &preds, Scope::All);
        // EU-ADR: gold {brca1/breast cancer, tp53/glioma}; predicted 3 pairs (one in e2): 1 TP.
        assert_eq!(get(&out, "euadr", "pair_text_precision"), (1.0 / 3.0, 3));
        assert_eq!(get(&out, "euadr", "pair_text_recall"), (0.5, 2));
        // BioRED: the two predictions are one text pair.
        assert_eq!(get(&out, "biored", "pair_text_precision"), (1.0, 1));
        assert_eq!(get(&out, "biored", "pair_text_recall"), (1.0, 1));

        // Teacher sample: e1 sentence 0 only; b1 has sentences 0..=2 but only 0 and 2 labeled
        // (sentence 1 is blank, so b1 counts as fully labeled).
        let r = |sent_id, blank| SentenceRange { sent_id, start: sent_id * 10, end: sent_id * 10 + 9, blank };
        let index =
            Sentences::from_map(HashMap::from([("b1".to_string(), vec![r(0, false), r(1, true), r(2, false)])]));
        let labeled = HashSet::from([("e1".to_string(), 0), ("b1".to_string(), 0), ("b1".to_string(), 2)]);
        let out = evaluate(&gold, &preds, Scope::Labeled { sentences: &labeled, index: &index });
        assert_eq!(get(&out, "euadr", "pair_text_precision"), (1.0, 1));
        assert_eq!(get(&out, "euadr", "pair_text_recall"), (1.0, 1));
        assert_eq!(get(&out, "biored", "pair_text_recall"), (1.0, 1));
        let labeled = HashSet::from([("b1".to_string(), 0)]);
        let out = evaluate(&gold, &preds, Scope::Labeled { sentences: &labeled, index: &index });
        assert_eq!(get(&out, "biored", "pair_text_recall"), (0.0, 0), "b1 is not fully labeled");
        assert_eq!(get(&out, "euadr", "pair_text_precision"), (0.0, 0), "no prediction in scope");
    }
}
