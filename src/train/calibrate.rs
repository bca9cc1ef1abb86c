//! The student's score threshold, chosen on sentences it did not train on.
//!
//! A tagger keeps every span its argmax leans towards. On the whole silver set the ADE student
//! found twice the pairs the gold holds (dev gold: precision 0.2, recall 0.45), and its wrong
//! pairs scored lower than its right ones. So after training the student predicts held-out
//! labeled sentences, and the threshold on [`crate::model::predict`] scores that maximizes
//! strict F-score there is stored in the checkpoint; inference drops what scores below it.
//! Relation tasks are scored on pairs by F1; PHI on typed spans by F2, as de-identification
//! weighs a missed span (a leaked name) above a wrong one (a hidden word): by F1, the PHI
//! threshold raised strict F1 from 0.33 to 0.40 but cut token recall from 0.81 to 0.61.
//!
//! Which labels ([`Calibrate`]): the silver dev split learns the teacher's own bias back (the
//! ADE teacher labels a pair in most negative sentences, and the student agrees with it at a
//! threshold of 0.25), so where the project has gold, the threshold can be chosen on gold
//! *train*-split sentences of documents the student never saw: one number learned from human
//! labels, never the dev or test gold, and named so in the training report.

use std::collections::{BTreeSet, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use super::data::{LabeledSentence, cap};
use super::gold;
use crate::error::Result;
use crate::model::checkpoint::Checkpoint;
use crate::model::predict::{Predictions, SentenceRow, predict};
use crate::run_dir::RunDir;
use crate::vocab::Task;

/// Where the threshold is chosen (`train.calibrate`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Calibrate {
    /// No threshold: every prediction is kept.
    Off,
    /// The training labels' dev split (silver for the student, gold for the reference).
    #[default]
    DevSplit,
    /// Gold train-split sentences of documents the student did not train on (at most
    /// `train.calibrate_sentences`); the supervised reference uses its dev split.
    GoldTrain,
}

impl Calibrate {
    /// Held-out sentences to calibrate on, and what they are; `None` when off or empty.
    pub fn sentences(
        self,
        run_dir: &RunDir,
        task: Task,
        trained: &[LabeledSentence],
        dev: &[LabeledSentence],
        supervised_reference: bool,
        (max, seed): (usize, u64),
    ) -> Result<Option<(Vec<LabeledSentence>, &'static str)>> {
        let picked = match self {
            Calibrate::Off => None,
            Calibrate::DevSplit | Calibrate::GoldTrain if supervised_reference => {
                Some((dev.to_vec(), "gold dev split of the train split"))
            }
            Calibrate::DevSplit => Some((dev.to_vec(), "silver dev split")),
            // A corpus without gold (a user's own) has nothing to calibrate on.
            Calibrate::GoldTrain if !run_dir.has_table(gold::table_of(task)) => None,
            Calibrate::GoldTrain => {
                let seen: HashSet<&str> = trained.iter().chain(dev).map(|s| s.doc_id.as_str()).collect();
                let (gold, _) = gold::gold(run_dir, task)?;
                let unseen = gold.into_iter().filter(|s| !seen.contains(s.doc_id.as_str())).collect();
                Some((cap(unseen, max, seed), "gold train split, documents not trained on"))
            }
        };
        Ok(picked.filter(|(s, _)| !s.is_empty()))
    }
}

/// Thresholds tried: 0, 0.05, …, 0.95.
const GRID: usize = 20;
const BATCH: usize = 16;

/// What calibration measured on the silver dev split.
#[derive(Debug, Clone, PartialEq, Serialize)]
pub struct Calibration {
    pub min_score: f32,
    /// What the labels were (e.g. "silver dev split").
    pub on: String,
    /// The F-score's beta (1, or 2 for PHI).
    pub beta: f64,
    /// Strict F-beta against those labels at `min_score`, and with no threshold.
    pub f1: f64,
    pub f1_unthresholded: f64,
    pub sentences: usize,
    /// Labels (pairs, or spans) the F1 is computed on.
    pub labels: usize,
}

/// A scored item: a pair `(anchor start, end, related start, end)` or a span `(start, end,
/// type, 0)`, of sentence `.0`.
type Item = (usize, [usize; 4]);

fn predicted(predictions: &Predictions, relation: bool) -> HashMap<Item, f32> {
    let mut best: HashMap<Item, f32> = HashMap::new();
    let mut keep = |item: Item, score: f32| {
        let s = best.entry(item).or_insert(score);
        *s = s.max(score);
    };
    if relation {
        for p in &predictions.pairs {
            keep((p.anchor.sentence, [p.anchor.start, p.anchor.end, p.start, p.end]), p.score);
        }
    } else {
        for e in &predictions.entities {
            keep((e.sentence, [e.start, e.end, e.type_index, 0]), e.score);
        }
    }
    best
}

fn labels(sentences: &[LabeledSentence], relation: bool) -> BTreeSet<Item> {
    let mut out = BTreeSet::new();
    for (i, s) in sentences.iter().enumerate() {
        if relation {
            out.extend(s.pairs.iter().map(|(a, r)| (i, [a.start, a.end, r.start, r.end])));
        } else {
            out.extend(s.entities.iter().map(|e| (i, [e.start, e.end, e.type_index, 0])));
        }
    }
    out
}

/// F-beta from counts: `(1 + b²) tp / (b² gold + predicted)`.
fn f_beta(beta: f64, tp: usize, predicted: usize, gold: usize) -> f64 {
    let b2 = beta * beta;
    if tp == 0 { 0.0 } else { (1.0 + b2) * tp as f64 / (b2 * gold as f64 + predicted as f64) }
}

/// The threshold of `scored` items (score, is a label) maximizing F-beta against `gold`
/// labels; the lowest of equals. `(threshold, F there, F at 0)`.
pub fn best_threshold(scored: &[(f32, bool)], gold: usize, beta: f64) -> (f32, f64, f64) {
    let at = |t: f32| {
        let kept = scored.iter().filter(|(s, _)| *s >= t);
        let (n, tp) = kept.fold((0, 0), |(n, tp), (_, hit)| (n + 1, tp + usize::from(*hit)));
        f_beta(beta, tp, n, gold)
    };
    let mut best = (0.0, at(0.0));
    for i in 1..GRID {
        let t = i as f32 / GRID as f32;
        let f = at(t);
        if f > best.1 {
            best = (t, f);
        }
    }
    (best.0, best.1, at(0.0))
}

/// Choose `checkpoint`'s threshold on labeled `dev` sentences (described by `on`); `None`
/// without a label to score on. `checkpoint.config.min_score` must be 0, so every prediction
/// is seen.
pub fn calibrate(
    checkpoint: &Checkpoint,
    dev: &[LabeledSentence],
    on: &str,
    threads: usize,
) -> Result<Option<Calibration>> {
    debug_assert_eq!(checkpoint.config.min_score, 0.0);
    let relation = checkpoint.config.spec.task.relation().is_some();
    let gold = labels(dev, relation);
    if gold.is_empty() {
        return Ok(None);
    }
    let rows: Vec<SentenceRow> = dev.iter().map(|s| SentenceRow::standalone(&s.doc_id, s.sent_id, &s.text)).collect();
    let predictions = predict(checkpoint, &rows, BATCH, threads)?;
    let scored: Vec<(f32, bool)> =
        predicted(&predictions, relation).into_iter().map(|(item, score)| (score, gold.contains(&item))).collect();
    let beta = if relation { 1.0 } else { 2.0 };
    let (min_score, f1, f1_unthresholded) = best_threshold(&scored, gold.len(), beta);
    let (sentences, labels) = (dev.len(), gold.len());
    Ok(Some(Calibration { min_score, on: on.to_string(), beta, f1, f1_unthresholded, sentences, labels }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_threshold_drops_low_scoring_wrong_items_and_keeps_ties_low() {
        // Two right items at 0.9 and 0.62, three wrong ones at 0.55, 0.3 and 0.1; 3 labels.
        let scored = [(0.9, true), (0.62, true), (0.55, false), (0.3, false), (0.1, false)];
        let (t, best, none) = best_threshold(&scored, 3, 1.0);
        // At 0: tp 2 of 5 predicted -> 4/8. At 0.6: tp 2 of 2 -> 4/5 (0.55: 2 of 3).
        assert_eq!((t, best, none), (0.6, 0.8, 0.5));
        // All right: the lowest threshold keeps everything.
        assert_eq!(best_threshold(&[(0.2, true), (0.9, true)], 2, 1.0), (0.0, 1.0, 1.0));
        // Nothing right: F1 0 everywhere, threshold 0.
        assert_eq!(best_threshold(&[(0.7, false)], 1, 1.0), (0.0, 0.0, 0.0));
        // F2 weighs recall: the wrong item at 0.55 costs less than losing the one at 0.62.
        // At 0: 5 tp 2 -> 5*2/(4*3+5) = 10/17; at 0.35: 3 kept -> 10/15; at 0.6: 2 -> 10/14;
        // at 0.65: 1 -> 5/13.
        let (t, best, _) = best_threshold(&scored, 3, 2.0);
        assert_eq!((t, best), (0.6, 10.0 / 14.0));
    }

    #[test]
    fn each_policy_picks_its_sentences() {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::create(dir.path()).unwrap();
        let s = |doc: &str| LabeledSentence { doc_id: doc.into(), text: "x".into(), ..Default::default() };
        let (trained, dev) = (vec![s("a")], vec![s("b")]);
        let pick = |c: Calibrate, reference| {
            c.sentences(&run, Task::Ade, &trained, &dev, reference, (10, 1))
                .unwrap()
                .map(|(v, on)| (v.iter().map(|s| s.doc_id.clone()).collect::<Vec<_>>(), on))
        };
        assert_eq!(pick(Calibrate::Off, false), None);
        assert_eq!(pick(Calibrate::DevSplit, false), Some((vec!["b".into()], "silver dev split")));
        // No gold table in this run directory (a user's own corpus): nothing to calibrate on.
        assert_eq!(pick(Calibrate::GoldTrain, false), None);
        // The reference trains on gold: its own dev split is gold already.
        assert_eq!(pick(Calibrate::GoldTrain, true).unwrap().0, vec!["b".to_string()]);
        // An empty dev split calibrates on nothing.
        assert!(Calibrate::DevSplit.sentences(&run, Task::Phi, &[], &[], false, (10, 1)).unwrap().is_none());
    }

    #[test]
    fn items_are_pairs_for_relation_tasks_and_typed_spans_otherwise() {
        use super::super::data::CharSpan;
        let span = |start, end, type_index| CharSpan { start, end, type_index };
        let s = LabeledSentence {
            entities: [span(0, 4, 0), span(10, 15, 1)].into(),
            pairs: [(span(0, 4, 0), span(10, 15, 1))].into(),
            ..Default::default()
        };
        assert_eq!(labels(std::slice::from_ref(&s), true), [(0, [0, 4, 10, 15])].into());
        assert_eq!(labels(&[s], false), [(0, [0, 4, 0, 0]), (0, [10, 15, 1, 0])].into());
    }
}
