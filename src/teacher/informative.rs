//! Informative selection: the run directory's current student ranks candidate sentences, so
//! teacher time goes where the student expects something and is unsure of it.
//!
//! A sentence's score is the sum, over the entities and pairs the student predicts in it, of
//! `1 + (1 − p)`, with `p` the prediction's score: one point per expected label, up to one
//! more the less sure the student is. Sentences where it predicts nothing score 0, so the
//! exploration share ([`super::config::LabelConfig::explore`]) is what still samples them.

use std::path::Path;

use candle_core::Device;

use super::select::Sentence;
use crate::error::Result;
use crate::model::checkpoint::Checkpoint;
use crate::model::predict::{Predictions, SentenceRow, predict};
use crate::run_dir::RunDir;
use crate::vocab::Task;

/// Windows per encoder call when scoring.
const BATCH: usize = 16;

/// Per-sentence scores of `predictions` over `n` sentences.
pub fn scores(predictions: &Predictions, n: usize) -> Vec<f32> {
    let mut out = vec![0.0f32; n];
    for e in &predictions.entities {
        out[e.sentence] += 2.0 - e.score.clamp(0.0, 1.0);
    }
    for p in &predictions.pairs {
        out[p.anchor.sentence] += 2.0 - p.score.clamp(0.0, 1.0);
    }
    out
}

/// Score `sentences` with the checkpoint in `dir`; `None` if there is none yet.
pub fn score_with(dir: &Path, task: Task, sentences: &[Sentence]) -> Result<Option<Vec<f32>>> {
    if !dir.join(crate::model::checkpoint::WEIGHTS_FILE).is_file() {
        return Ok(None);
    }
    let mut checkpoint = Checkpoint::load(dir, &Device::Cpu)?;
    // Ranking wants the doubtful predictions too: they are where the uncertainty is.
    checkpoint.config.min_score = 0.0;
    if checkpoint.config.spec.task != task {
        return Ok(None);
    }
    let rows: Vec<SentenceRow> =
        sentences.iter().map(|s| SentenceRow::standalone(&s.doc_id, s.sent_id, &s.text)).collect();
    let started = std::time::Instant::now();
    let predictions = predict(&checkpoint, &rows, BATCH, crate::parallel::threads_or_all(0))?;
    tracing::info!(
        "{task}: informative selection scored {} candidates with {} in {:.1}s",
        rows.len(),
        checkpoint.config.model_version,
        started.elapsed().as_secs_f64()
    );
    Ok(Some(scores(&predictions, rows.len())))
}

/// A scorer over the run directory's student checkpoints (`student/<task>`).
pub fn scorer(run_dir: &RunDir) -> impl FnMut(Task, &[Sentence]) -> Result<Option<Vec<f32>>> + '_ {
    move |task, sentences| score_with(&run_dir.checkpoints(false).join(task.as_str()), task, sentences)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::model::predict::{EntityPrediction, PairPrediction};

    #[test]
    fn expected_and_uncertain_labels_score_higher() {
        let entity = |sentence, score| EntityPrediction { sentence, start: 0, end: 1, type_index: 0, score };
        let predictions = Predictions {
            entities: vec![entity(0, 0.99), entity(1, 0.6), entity(1, 0.6)],
            pairs: vec![PairPrediction { anchor: entity(1, 0.6), start: 2, end: 3, score: 0.5 }],
            windows: 3,
        };
        let s = scores(&predictions, 3);
        assert!((s[0] - 1.01).abs() < 1e-6, "{s:?}");
        assert!((s[1] - (1.4 + 1.4 + 1.5)).abs() < 1e-6, "{s:?}");
        assert_eq!(s[2], 0.0, "nothing predicted");
    }

    #[test]
    fn no_checkpoint_means_no_scores() {
        let dir = tempfile::tempdir().unwrap();
        let sentences = [Sentence { doc_id: "d".into(), sent_id: 0, text: "x".into() }];
        assert_eq!(score_with(dir.path(), Task::Ade, &sentences).unwrap(), None);
    }
}
