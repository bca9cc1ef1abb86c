//! Unit tests of the training stage: the loop, its schedule, epoch choice and config.

use super::data::{CharSpan, LabeledSentence};
use super::fit::{evaluate, fit, learning_rate};
use super::*;
use crate::model::batch::{Batch, Example};
use crate::model::student::testutil::tiny_student;
use crate::model::tags::decode_bio;
use crate::model::wordpiece::testutil::{toy_tokenizer, toy_vocab_size};

/// Four ADE sentences: one pair each, a drug without an event, and a negative.
fn toy_set() -> Vec<Example> {
    let s = |text: &str, drug: Option<(usize, usize)>, events: &[(usize, usize)]| {
        let drug = drug.map(|(start, end)| CharSpan { start, end, type_index: 0 });
        let events: Vec<CharSpan> = events.iter().map(|&(start, end)| CharSpan { start, end, type_index: 1 }).collect();
        LabeledSentence {
            doc_id: text.into(),
            text: text.into(),
            entities: drug.iter().copied().chain(events.iter().copied()).collect(),
            pairs: drug.map(|d| events.iter().map(|e| (d, *e)).collect()).unwrap_or_default(),
            ..Default::default()
        }
    };
    let sentences = vec![
        s("aspirin caused nausea", Some((0, 7)), &[(15, 21)]),
        s("the patient took aspirin and rash", Some((17, 24)), &[]),
        s("after aspirin , rash and nausea", Some((6, 13)), &[(16, 20), (25, 31)]),
        s("john smith was born in paris", None, &[]),
    ];
    let windowing = Windowing { max_pieces: 30, overlap: 4 };
    featurize(&sentences, Task::Ade, &toy_tokenizer(), windowing, &mut Default::default()).unwrap()
}

fn toy_config() -> TrainConfig {
    TrainConfig {
        epochs: 150,
        batch_size: 2,
        lr: 1e-2,
        weight_decay: 0.0,
        dropout: 0.0,
        warmup_fraction: 0.05,
        progress: false,
        ..Default::default()
    }
}

fn train_toy(cfg: &TrainConfig) -> (VarMap, Student, FitOutcome) {
    let spec = StudentSpec { task: Task::Ade, arch: cfg.arch, dropout: cfg.dropout };
    let (varmap, mut student) = tiny_student(&spec, toy_vocab_size(), cfg.seed);
    student.set_frozen_layers(cfg.frozen_layers).unwrap();
    let examples = toy_set();
    let outcome = fit(
        cfg,
        &student,
        &varmap,
        TrainSet::labeled(&examples),
        &[],
        None,
        toy_tokenizer().special(),
        &ProgressBar::hidden(),
    )
    .unwrap();
    (varmap, student, outcome)
}

#[test]
fn tiny_training_run_overfits_the_toy_set() {
    for arch in [Arch::Conditioned, Arch::Markers, Arch::Pairwise] {
        overfits_the_toy_set(TrainConfig { arch, ..toy_config() });
    }
}

fn overfits_the_toy_set(cfg: TrainConfig) {
    let examples = toy_set();
    let special = toy_tokenizer().special();
    let spec = StudentSpec { task: Task::Ade, arch: cfg.arch, dropout: 0.0 };
    let (_, untrained) = tiny_student(&spec, toy_vocab_size(), cfg.seed);
    let before = evaluate(&untrained, &examples, None, 4, special).unwrap();
    let (_, student, outcome) = train_toy(&cfg);
    let after = evaluate(&student, &examples, None, 4, special).unwrap();
    assert!(after < 0.05 && after < before / 20.0, "{:?}: loss {before} -> {after} ({outcome:?})", cfg.arch);
    // Overfit: predictions reproduce every entity and relation tag of the training set.
    let refs: Vec<&Example> = examples.iter().collect();
    let batch = Batch::new(&refs, special);
    let hidden = student.encode(&batch).unwrap();
    let entity: Vec<Vec<u32>> = student.entity_logits(&hidden, None).unwrap().argmax(2).unwrap().to_vec2().unwrap();
    let relation: Vec<Vec<u32>> =
        student.relation_logits(&hidden, &batch, None).unwrap().unwrap().argmax(2).unwrap().to_vec2().unwrap();
    let mut anchor = 0;
    for (row, example) in examples.iter().enumerate() {
        let n = example.ids.len();
        assert_eq!(&entity[row][1..=n], &example.entity_tags[..], "row {row}");
        assert_eq!(decode_bio(&entity[row][1..=n]), decode_bio(&example.entity_tags));
        for a in &example.anchors {
            assert_eq!(&relation[anchor][1..=n], &a.related_tags[..], "{:?} anchor {anchor}", cfg.arch);
            anchor += 1;
        }
    }
}

#[test]
fn frozen_layers_keep_their_weights_and_the_layers_above_still_learn() {
    let cfg = TrainConfig { frozen_layers: 1, ..toy_config() };
    let spec = StudentSpec { task: Task::Ade, arch: cfg.arch, dropout: 0.0 };
    let (init, _) = tiny_student(&spec, toy_vocab_size(), cfg.seed);
    let (trained, _, _) = train_toy(&cfg);
    let (init, trained) = (init.data().lock().unwrap(), trained.data().lock().unwrap());
    let values = |v: &candle_core::Var| v.as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap();
    let mut changed: Vec<&str> = Vec::new();
    for (name, var) in trained.iter() {
        if values(var) != values(&init[name]) {
            changed.push(name);
        }
    }
    assert!(!changed.is_empty());
    for name in &changed {
        assert!(name.starts_with("encoder.layer.1.") || name.starts_with("heads."), "{name} is frozen");
    }
    assert!(changed.iter().any(|n| n.starts_with("encoder.layer.1.")), "{changed:?}");
    // The toy set is still learned, from cached frozen-layer outputs.
    overfits_the_toy_set(cfg);
}

#[test]
fn the_kept_epoch_is_the_best_scored_one_not_the_lowest_dev_loss() {
    let spec = StudentSpec { task: Task::Ade, arch: Arch::Conditioned, dropout: 0.0 };
    let examples = toy_set();
    let special = toy_tokenizer().special();
    let run = |cfg: &TrainConfig, scores: Option<&[f64]>| {
        let (varmap, student) = tiny_student(&spec, toy_vocab_size(), cfg.seed);
        let calls = std::cell::Cell::new(0);
        let score = || -> Result<f64> {
            calls.set(calls.get() + 1);
            Ok(scores.unwrap()[calls.get() - 1])
        };
        let scorer = scores.map(|_| &score as fit::DevScore);
        let out = fit(
            cfg,
            &student,
            &varmap,
            TrainSet::labeled(&examples),
            &examples,
            scorer,
            special,
            &ProgressBar::hidden(),
        )
        .unwrap();
        let kept_loss = evaluate(&student, &examples, None, cfg.batch_size, special).unwrap();
        (out, kept_loss)
    };
    let cfg = TrainConfig { epochs: 4, patience: 10, ..toy_config() };
    // Dev = train: the loss falls every epoch, so loss alone keeps the last one.
    let (by_loss, _) = run(&cfg, None);
    assert!(by_loss.dev_losses.windows(2).all(|w| w[1] < w[0]), "{by_loss:?}");
    assert_eq!((by_loss.best_epoch, by_loss.dev_scores.len()), (4, 0));
    // A scorer overrules it, and the weights of the kept epoch are restored.
    let (by_score, kept_loss) = run(&cfg, Some(&[0.2, 0.9, 0.1, 0.3]));
    assert_eq!((by_score.best_epoch, &by_score.dev_scores[..]), (2, &[0.2, 0.9, 0.1, 0.3][..]));
    assert!((kept_loss - by_score.dev_losses[1]).abs() < 1e-5, "{kept_loss} vs {by_score:?}");
    // Equal scores (an all-`O` student scores 0 every epoch): the lower loss wins.
    assert_eq!(run(&cfg, Some(&[0.0; 4])).0.best_epoch, 4);
    // Patience counts epochs without a better score.
    let (stopped, _) = run(&TrainConfig { patience: 1, ..cfg }, Some(&[0.5, 0.4, 0.3, 0.9]));
    assert_eq!((stopped.best_epoch, stopped.epochs_run, stopped.stopped_early), (1, 3, true));
}

/// Early stopping against a dev set the training set contradicts (tags reversed), so its
/// loss stops improving as training fits: by loss alone, training stops `patience` epochs
/// after the best; with a scorer, a student that has scored nothing yet is never stopped
/// (GAD seed 3 scored 0 for four epochs, then 0.156).
#[test]
fn early_stopping_waits_for_a_first_score() {
    let spec = StudentSpec { task: Task::Ade, arch: Arch::Conditioned, dropout: 0.0 };
    let train = toy_set();
    let mut dev = toy_set();
    for example in &mut dev {
        example.entity_tags.reverse();
    }
    let cfg = TrainConfig { epochs: 10, patience: 1, ..toy_config() };
    let run = |scorer: Option<fit::DevScore>| {
        let (varmap, student) = tiny_student(&spec, toy_vocab_size(), cfg.seed);
        let special = toy_tokenizer().special();
        fit(&cfg, &student, &varmap, TrainSet::labeled(&train), &dev, scorer, special, &ProgressBar::hidden()).unwrap()
    };
    let by_loss = run(None);
    assert!(by_loss.stopped_early && by_loss.epochs_run == by_loss.best_epoch + 2, "{by_loss:?}");
    let zero = || -> Result<f64> { Ok(0.0) };
    let unscored = run(Some(&zero));
    assert_eq!((unscored.stopped_early, unscored.epochs_run), (false, 10), "{unscored:?}");
    // The same training (the scorer does not touch it), carried on past the loss stop.
    assert_eq!(unscored.dev_losses[..by_loss.epochs_run], by_loss.dev_losses[..]);
}

#[test]
fn min_steps_raises_the_epochs_of_a_small_set() {
    let batches = toy_set().len().div_ceil(toy_config().batch_size);
    let cfg = TrainConfig { epochs: 1, min_steps: 3 * batches, ..toy_config() };
    let (_, _, outcome) = train_toy(&cfg);
    assert_eq!((outcome.epochs_run, outcome.steps), (3, 3 * batches));
    let (_, _, outcome) = train_toy(&TrainConfig { min_steps: 0, ..cfg });
    assert_eq!(outcome.epochs_run, 1);
}

#[test]
fn same_seed_gives_same_weights() {
    let cfg = TrainConfig { epochs: 3, dropout: 0.2, ..toy_config() };
    let weights = |cfg: &TrainConfig| {
        let (varmap, _, _) = train_toy(cfg);
        let data = varmap.data().lock().unwrap();
        let mut names: Vec<_> = data.keys().cloned().collect();
        names.sort();
        names.iter().map(|n| data[n].as_tensor().flatten_all().unwrap().to_vec1::<f32>().unwrap()).collect::<Vec<_>>()
    };
    let first = weights(&cfg);
    assert_eq!(first, weights(&cfg), "same seed, same weights, bit for bit");
    assert_ne!(first, weights(&TrainConfig { seed: 7, ..cfg }));
}

#[test]
fn learning_rate_warms_up_then_decays_to_zero() {
    let lrs: Vec<f64> = (0..10).map(|s| learning_rate(1.0, s, 2, 10)).collect();
    assert_eq!(&lrs[..3], &[0.5, 1.0, 1.0]);
    assert!(lrs.windows(2).skip(2).all(|w| w[1] < w[0]));
    assert!((lrs[9] - 0.125).abs() < 1e-12 && learning_rate(1.0, 10, 2, 10) == 0.0);
}

#[test]
fn config_rejects_unknown_fields_and_bad_values() {
    assert!(toml::from_str::<TrainConfig>("epochs = 2\nbogus = 1").is_err());
    let cfg: TrainConfig = toml::from_str("arch = \"markers\"\n[filters]\nmin_alignment = \"exact\"").unwrap();
    assert_eq!(cfg.arch, Arch::Markers);
    assert!(TrainConfig { window_overlap: 200, ..Default::default() }.validate().is_err());
    let cfg: TrainConfig = toml::from_str("[positive_weight]\ngene_disease = 3.0").unwrap();
    assert_eq!((cfg.positive_weight(Task::GeneDisease), cfg.positive_weight(Task::Ade)), (3.0, 1.0));
    let low: TrainConfig = toml::from_str("[positive_weight]\nade = 0.5").unwrap();
    assert!(low.validate().unwrap_err().to_string().contains("positive_weight.ade"));
    // Left empty it is not in the serialized config (the checkpoint's config hash).
    assert!(!serde_json::to_string(&TrainConfig::default()).unwrap().contains("positive_weight"));
    assert!(!serde_json::to_string(&TrainConfig::default()).unwrap().contains("per_pass_examples"));
    assert!(!serde_json::to_string(&TrainConfig::default()).unwrap().contains("ensemble"));
    let cfg: TrainConfig = toml::from_str("[ensemble]\nade = 3").unwrap();
    assert_eq!((cfg.members(Task::Ade), cfg.members(Task::Phi)), (3, 1));
    let many: TrainConfig = toml::from_str("[ensemble]\nphi = 17").unwrap();
    assert!(many.validate().unwrap_err().to_string().contains("ensemble.phi = 17"));
    let both: TrainConfig = toml::from_str("[filters]\nrequire_agreement = true\nper_pass_examples = true").unwrap();
    assert!(both.validate().unwrap_err().to_string().contains("exclude each other"));
}
