//! Self-training (beyond Gu et al.): the student trained on the teacher's labels labels
//! sentences the teacher never saw, at encoder speed, and is trained again from the
//! pretrained encoder on both, its own labels weighted below the teacher's
//! (`train.self_train_weight`).
//!
//! Why it can help: the teacher is the bottleneck (about 2,000 sentences an hour on 2 cores)
//! while the student reads tens of thousands in minutes, and the student's calibrated
//! predictions are more precise than the teacher's (ADE dev: student precision 0.33–0.36 at
//! its threshold against the teacher's 0.17 on gold train sentences). Its pseudo-labels are
//! what it extracts: pairs (spans, for PHI) at or above its threshold, plus the entities its
//! tagger finds; a sentence where it finds nothing is a negative.
//!
//! The pool is sentences of documents in the `train` or `unlabeled` split from the sources the
//! silver set came from, never a document the student trained on, was calibrated on, or that
//! is in the dev split; a seeded sample of whole documents.

use std::collections::HashSet;

use serde::Serialize;

use super::data::{CharSpan, LabeledSentence, cap};
use crate::error::Result;
use crate::model::checkpoint::Checkpoint;
use crate::model::predict::{Predictions, SentenceRow, predict};
use crate::run_dir::RunDir;
use crate::schema::split;
use crate::teacher::select::sentences_in;

/// Windows per encoder call.
const BATCH: usize = 16;

/// What self-training added.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SelfTrainingStats {
    /// Pool sentences the student labeled.
    pub pool: usize,
    /// Of those, sentences with at least one pseudo-label (the rest are negatives).
    pub positive: usize,
    /// Pseudo-labeled pairs (spans, for PHI).
    pub labels: usize,
    /// Score a pair (span) needed to become a label.
    pub min_score: f32,
    pub weight: f64,
    /// Calibrated F of the first, teacher-only student (`None` without calibration).
    pub first_round_f: Option<f64>,
}

/// At most `max` sentences (whole documents) the student may label: documents of the silver
/// set's sources in the train or unlabeled split, outside `exclude` and the dev split.
pub fn pool(
    run_dir: &RunDir,
    silver_docs: &HashSet<&str>,
    exclude: &HashSet<&str>,
    max: usize,
    seed: u64,
) -> Result<Vec<LabeledSentence>> {
    let mut sentences = crate::plan::block_on(sentences_in(run_dir, &[split::TRAIN, split::UNLABELED]))?;
    // The plan's join does not keep the table's order: sort, so the pool is the same every run.
    sentences.sort_unstable_by(|(a, _, _), (b, _, _)| (&a.doc_id, a.sent_id).cmp(&(&b.doc_id, b.sent_id)));
    let sources: HashSet<&str> = sentences
        .iter()
        .filter(|(s, _, _)| silver_docs.contains(s.doc_id.as_str()))
        .map(|(_, source, _)| source.as_str())
        .collect();
    let out = sentences
        .iter()
        .filter(|(s, source, _)| {
            sources.contains(source.as_str())
                && !exclude.contains(s.doc_id.as_str())
                && !silver_docs.contains(s.doc_id.as_str())
        })
        .map(|(s, _, _)| LabeledSentence {
            doc_id: s.doc_id.clone(),
            sent_id: s.sent_id,
            text: s.text.clone(),
            ..Default::default()
        })
        .collect();
    Ok(cap(out, max, seed))
}

/// `pool` labeled by `checkpoint`: what it extracts at `min_score`.
pub fn pseudo_label(
    checkpoint: &Checkpoint,
    pool: &[LabeledSentence],
    min_score: f32,
    threads: usize,
) -> Result<Vec<LabeledSentence>> {
    let rows: Vec<SentenceRow> = pool.iter().map(|s| SentenceRow::standalone(&s.doc_id, s.sent_id, &s.text)).collect();
    let predictions = predict(checkpoint, &rows, BATCH, threads)?;
    Ok(labeled(pool, &predictions, checkpoint.config.spec.task, min_score))
}

/// `pool` with `predictions` as its labels. Relation tasks keep pairs at `min_score` and every
/// tagged entity (a drug the student sees without an event is still a drug); PHI keeps spans
/// at `min_score`.
fn labeled(
    pool: &[LabeledSentence],
    predictions: &Predictions,
    task: crate::vocab::Task,
    min_score: f32,
) -> Vec<LabeledSentence> {
    let mut out: Vec<LabeledSentence> = pool
        .iter()
        .map(|s| LabeledSentence { entities: Default::default(), pairs: Default::default(), ..s.clone() })
        .collect();
    let span = |start, end, type_index| CharSpan { start, end, type_index };
    match task.relation() {
        Some((_, related)) => {
            let related = task.type_index(related).expect("related type is an entity type");
            for e in &predictions.entities {
                out[e.sentence].entities.insert(span(e.start, e.end, e.type_index));
            }
            for p in predictions.pairs.iter().filter(|p| p.score >= min_score) {
                let (anchor, other) =
                    (span(p.anchor.start, p.anchor.end, p.anchor.type_index), span(p.start, p.end, related));
                let s = &mut out[p.anchor.sentence];
                s.entities.extend([anchor, other]);
                s.pairs.insert((anchor, other));
            }
        }
        None => {
            for e in predictions.entities.iter().filter(|e| e.score >= min_score) {
                out[e.sentence].entities.insert(span(e.start, e.end, e.type_index));
            }
        }
    }
    out
}

/// Labels of `sentences`: pairs for relation tasks, spans otherwise; and how many sentences
/// have any.
pub fn count(sentences: &[LabeledSentence], relation: bool) -> (usize, usize) {
    let n = |s: &LabeledSentence| if relation { s.pairs.len() } else { s.entities.len() };
    (sentences.iter().filter(|s| n(s) > 0).count(), sentences.iter().map(n).sum())
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, Int32Array, StringArray};

    use super::*;
    use crate::model::predict::{EntityPrediction, PairPrediction};
    use crate::schema::{self, table};
    use crate::vocab::Task;

    fn strings(v: &[&str]) -> ArrayRef {
        Arc::new(StringArray::from(v.to_vec()))
    }

    /// Documents `(doc_id, source, split)` with one sentence each.
    fn run_dir_with(docs: &[(&str, &str, &str)]) -> (tempfile::TempDir, RunDir) {
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::create(dir.path()).unwrap();
        let col = |i: usize| docs.iter().map(|d| [d.0, d.1, d.2][i]).collect::<Vec<_>>();
        let n = docs.len();
        let documents = crate::run_dir::batch(
            &schema::DOCUMENTS,
            vec![
                strings(&col(0)),
                strings(&col(1)),
                strings(&col(2)),
                strings(&vec!["t"; n]),
                strings(&vec!["aspirin"; n]),
                strings(&vec!["h"; n]),
            ],
        )
        .unwrap();
        run.write_table(table::DOCUMENTS, schema::DOCUMENTS.clone(), &[documents]).unwrap();
        let sentences = crate::run_dir::batch(
            &schema::SENTENCES,
            vec![
                strings(&col(0)),
                Arc::new(Int32Array::from(vec![0; n])),
                Arc::new(Int32Array::from(vec![0; n])),
                Arc::new(Int32Array::from(vec![7; n])),
                strings(&vec!["aspirin"; n]),
            ],
        )
        .unwrap();
        run.write_table(table::SENTENCES, schema::SENTENCES.clone(), &[sentences]).unwrap();
        (dir, run)
    }

    #[test]
    fn the_pool_is_unseen_train_and_unlabeled_documents_of_the_silver_sources() {
        let (_tmp, run) = run_dir_with(&[
            ("silver", "ade", "train"),
            ("unseen", "ade", "unlabeled"),
            ("unseen-train", "ade", "train"),
            ("dev", "ade", "dev"),
            ("calibration", "ade", "train"),
            ("other-source", "phi", "unlabeled"),
        ]);
        let silver = HashSet::from(["silver"]);
        let exclude = HashSet::from(["calibration"]);
        let docs = |max| {
            let mut d: Vec<String> =
                pool(&run, &silver, &exclude, max, 1).unwrap().into_iter().map(|s| s.doc_id).collect();
            d.sort();
            d
        };
        assert_eq!(docs(100), ["unseen", "unseen-train"]);
        assert_eq!(docs(1).len(), 1);
        assert!(pool(&run, &HashSet::new(), &exclude, 100, 1).unwrap().is_empty(), "no silver, no sources");
    }

    fn sentence(doc: &str) -> LabeledSentence {
        LabeledSentence { doc_id: doc.into(), text: "aspirin caused nausea".into(), ..Default::default() }
    }

    #[test]
    fn pseudo_labels_are_the_pairs_at_the_threshold_and_every_tagged_entity() {
        let entity =
            |sentence, start, end, type_index, score| EntityPrediction { sentence, start, end, type_index, score };
        let drug = entity(0, 0, 7, 0, 0.9);
        let predictions = Predictions {
            entities: vec![drug.clone(), entity(1, 0, 7, 0, 0.8)],
            pairs: vec![
                PairPrediction { anchor: drug.clone(), start: 15, end: 21, score: 0.7 },
                PairPrediction { anchor: drug, start: 8, end: 14, score: 0.3 },
                PairPrediction { anchor: entity(1, 0, 7, 0, 0.8), start: 15, end: 21, score: 0.4 },
            ],
            windows: 2,
        };
        let pool = [sentence("a"), sentence("b"), sentence("c")];
        let out = labeled(&pool, &predictions, Task::Ade, 0.5);
        let span = |start, end, type_index| CharSpan { start, end, type_index };
        assert_eq!(out[0].pairs, [(span(0, 7, 0), span(15, 21, 1))].into());
        assert_eq!(out[0].entities, [span(0, 7, 0), span(15, 21, 1)].into());
        // A drug whose only pair scored below the threshold: an entity, no pair.
        assert_eq!((out[1].entities.len(), out[1].pairs.len()), (1, 0));
        // Nothing predicted: a negative.
        assert!(out[2].entities.is_empty() && out[2].pairs.is_empty());
        assert_eq!(count(&out, true), (1, 1));
        assert_eq!(count(&out, false), (2, 3));
        // PHI: spans by their own score.
        let phi = labeled(&pool, &predictions, Task::Phi, 0.85);
        assert_eq!(count(&phi, false), (1, 1));
    }
}
