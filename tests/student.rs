//! The student end to end on the real MiniLM weights: train a few steps on a small silver
//! table, extract to every output table, and check that every offset slices to the reported
//! text in `documents.text`. Needs `models/all-MiniLM-L6-v2` (`python3 scripts/fetch_models.py test`).

use std::path::{Path, PathBuf};
use std::sync::Arc;

use arrow::array::{Array, ArrayRef, Int32Array, StringArray};
use arrow::record_batch::RecordBatch;
use biodistill::extract::{self, ExtractConfig};
use biodistill::run_dir::{RunDir, concat};
use biodistill::schema::{self, table};
use biodistill::text::char_slice;
use biodistill::vocab::Task;

use crate::silver::{Label, find, sentences, write_documents, write_scored_silver_run, write_silver_run};
use crate::util::block_on;
use biodistill::train::{self, TrainConfig};

/// Documents of the toy corpus; sentences are split on ". " below. Non-ASCII on purpose.
pub const DOCS: &[(&str, &str)] = &[
    ("toy:1", "We report a case. Aspirin caused severe nausea in a 40-year-old patient."),
    ("toy:2", "Methotrexate-induced hepatotoxicity was observed. The patient recovered."),
    ("toy:3", "Naïve patients on ibuprofen developed a rash and nausea."),
    ("toy:4", "BRCA1 mutations are linked to breast cancer. TP53 is associated with Li–Fraumeni syndrome."),
    ("toy:5", "Variants of APOE were associated with Alzheimer disease."),
    ("toy:6", "Patient John Smith was seen on 12 March 2020. He lives in Zürich."),
    ("toy:7", "Doctor Maria Lopez called on 3 May 2019 about the results."),
    ("toy:8", "No adverse events were recorded. Vitamin C was given."),
];

/// Silver labels (see [`Label`]); "vitamin C tablets" is not in its sentence: unaligned.
pub const LABELS: &[Label] = &[
    ("ade", "toy:1", 1, "DRUG", "Aspirin", "ADVERSE_EVENT", "severe nausea"),
    ("ade", "toy:2", 0, "DRUG", "Methotrexate", "ADVERSE_EVENT", "hepatotoxicity"),
    ("ade", "toy:3", 0, "DRUG", "ibuprofen", "ADVERSE_EVENT", "rash"),
    ("ade", "toy:3", 0, "DRUG", "ibuprofen", "ADVERSE_EVENT", "nausea"),
    ("gene_disease", "toy:4", 0, "GENE", "BRCA1", "DISEASE", "breast cancer"),
    ("gene_disease", "toy:4", 1, "GENE", "TP53", "DISEASE", "Li–Fraumeni syndrome"),
    ("gene_disease", "toy:5", 0, "GENE", "APOE", "DISEASE", "Alzheimer disease"),
    ("phi", "toy:6", 0, "NAME", "John Smith", "", ""),
    ("phi", "toy:6", 0, "DATE", "12 March 2020", "", ""),
    ("phi", "toy:6", 1, "LOCATION", "Zürich", "", ""),
    ("phi", "toy:7", 0, "NAME", "Maria Lopez", "", ""),
    ("phi", "toy:7", 0, "DATE", "3 May 2019", "", ""),
    ("ade", "toy:8", 1, "DRUG", "vitamin C tablets", "", ""),
];

fn model_dir() -> PathBuf {
    let dir = Path::new(env!("CARGO_MANIFEST_DIR")).join("models/all-MiniLM-L6-v2");
    assert!(dir.join("model.safetensors").is_file(), "run `python3 scripts/fetch_models.py test` first");
    dir
}

/// Enough training to overfit the toy set: 60 steps at a high learning rate, no dev split.
pub fn overfit() -> TrainConfig {
    TrainConfig {
        model_dir: model_dir(),
        epochs: 40,
        max_steps: Some(60),
        batch_size: 8,
        lr: 1e-3,
        dev_fraction: 0.0,
        progress: false,
        ..Default::default()
    }
}

fn read(run: &RunDir, name: &str, schema: &arrow::datatypes::SchemaRef) -> RecordBatch {
    concat(schema, &run.read_table(name).unwrap()).unwrap()
}

fn col<'a, T: 'static>(batch: &'a RecordBatch, name: &str) -> &'a T {
    batch.column_by_name(name).unwrap().as_any().downcast_ref::<T>().unwrap()
}

/// Every (text, start, end) column triple of `batch` slices `documents.text` to the text.
fn assert_offsets_slice(batch: &RecordBatch, spans: &[(&str, &str, &str)]) {
    let docs: std::collections::HashMap<&str, &str> = DOCS.iter().copied().collect();
    let doc_ids = col::<StringArray>(batch, "doc_id");
    for row in 0..batch.num_rows() {
        let doc = docs[doc_ids.value(row)];
        for (text, start, end) in spans {
            let (s, e) = (col::<Int32Array>(batch, start).value(row), col::<Int32Array>(batch, end).value(row));
            let reported = if text.is_empty() { None } else { Some(col::<StringArray>(batch, text).value(row)) };
            let sliced = char_slice(doc, s as usize, e as usize).expect("offsets in range");
            assert!(!sliced.trim().is_empty(), "row {row}: empty span {s}..{e}");
            if let Some(reported) = reported {
                assert_eq!(sliced, reported, "row {row} of {doc:?}");
            }
        }
    }
}

#[test]
fn trains_on_silver_labels_and_extracts_to_every_table() {
    let tmp = tempfile::tempdir().unwrap();
    let run = RunDir::create(tmp.path()).unwrap();
    write_silver_run(&run, DOCS, LABELS);
    let report = train::run(&overfit(), &run).unwrap();
    println!("{report}");
    assert_eq!(report.tasks.len(), 3);
    let ade = &report.tasks[0];
    assert_eq!(ade.data.dropped_unaligned, 1, "the unaligned label is counted, not used");
    assert_eq!((ade.data.sentences, ade.data.pairs), (sentences(DOCS).len(), 4));
    for t in &report.tasks {
        assert!(t.model_version.starts_with("student-"), "{}", t.model_version);
        let losses = &t.fit.train_losses;
        assert!(losses.last().unwrap() < &(losses[0] / 2.0), "{}: loss should fall: {losses:?}", t.task);
    }

    let ade_dir = run.checkpoints(false).join("ade");
    batched_extraction_equals_each_sentence_alone(
        &biodistill::model::checkpoint::Checkpoint::load(&ade_dir, &candle_core::Device::Cpu).unwrap(),
    );

    let cfg = ExtractConfig { progress: false, batch_size: 4, read_rows: 5, ..Default::default() };
    let extracted = block_on(extract::run(&cfg, &run)).unwrap();
    println!("{extracted}");
    assert_eq!(extracted.sentences, sentences(DOCS).len());

    let ade = read(&run, table::ADE_RELATIONS, &schema::ADE_RELATIONS);
    assert_offsets_slice(&ade, &[("drug", "drug_start", "drug_end"), ("effect", "effect_start", "effect_end")]);
    let genes = read(&run, table::GENE_DISEASE, &schema::GENE_DISEASE);
    assert_offsets_slice(&genes, &[("gene", "gene_start", "gene_end"), ("disease", "disease_start", "disease_end")]);
    let phi = read(&run, table::PHI_SPANS, &schema::PHI_SPANS);
    assert_offsets_slice(&phi, &[("", "start", "end")]);
    for (name, batch) in [("ade_relations", &ade), ("gene_disease", &genes), ("phi_spans", &phi)] {
        assert!(batch.num_rows() > 0, "{name} is empty after overfitting the toy set");
        let versions = col::<StringArray>(batch, "model_version");
        assert!(versions.iter().all(|v| v.unwrap().starts_with("student-")));
    }
    // Quality, not only shape: after overfitting, the trained pairs come back exactly (this
    // failed while candle's BertModel silently kept the encoder frozen).
    let found: std::collections::HashSet<(String, String)> = (0..ade.num_rows())
        .map(|r| {
            let text = |c: &str| col::<StringArray>(&ade, c).value(r).to_string();
            (text("drug"), text("effect"))
        })
        .collect();
    let trained: Vec<(String, String)> =
        LABELS.iter().filter(|l| l.0 == "ade" && !l.6.is_empty()).map(|l| (l.4.to_string(), l.6.to_string())).collect();
    let recovered = trained.iter().filter(|p| found.contains(*p)).count();
    println!("ade pairs recovered: {recovered}/{} of {found:?}", trained.len());
    assert_eq!(recovered, trained.len(), "recovered {recovered} of {trained:?} in {found:?}");
    let redacted = read(&run, table::REDACTED_DOCUMENTS, &schema::REDACTED_DOCUMENTS);
    assert_eq!(redacted.num_rows(), DOCS.len());
    let texts = col::<StringArray>(&redacted, "redacted_text");
    let john = (0..redacted.num_rows()).find(|&r| col::<StringArray>(&redacted, "doc_id").value(r) == "toy:6").unwrap();
    assert!(texts.value(john).contains('['), "PHI replaced by [TYPE]: {}", texts.value(john));

    sql_functions_equal_extract(&run);

    // Informative selection with this student: sentences where it expects pairs rank first;
    // without a checkpoint it falls back to random.
    use biodistill::teacher::select::{Candidates, Sentence, choose};
    use biodistill::teacher::{LabelConfig, Selection, informative};
    let pool: Vec<Sentence> = sentences(DOCS)
        .iter()
        .map(|s| Sentence { doc_id: s.0.to_string(), sent_id: s.1, text: s.3.to_string() })
        .collect();
    let student_dir = run.checkpoints(false).join("ade");
    let scores = informative::score_with(&student_dir, Task::Ade, &pool).unwrap().expect("a trained student scores");
    let top = (0..pool.len()).max_by(|&a, &b| scores[a].total_cmp(&scores[b])).unwrap();
    assert!(["toy:1", "toy:2", "toy:3"].contains(&pool[top].doc_id.as_str()), "{:?} {scores:?}", pool[top]);
    let cfg = |select| LabelConfig { select, budget: 2, explore: 0.0, pool_factor: 100, ..Default::default() };
    let none = vec![0usize; pool.len()];
    let pick = |select, dir: &Path| {
        let candidates = Candidates { train: pool.clone(), dev: vec![], too_long: 0 };
        choose(&cfg(select), Task::Ade, candidates, &none, &mut |t, s| informative::score_with(dir, t, s)).unwrap()
    };
    let (informed, random) = (pick(Selection::Informative, &student_dir), pick(Selection::Random, &student_dir));
    assert_ne!(informed.new, random.new, "the student changes the pick");
    assert!(informed.new.iter().all(|s| scores[pool.iter().position(|p| p == s).unwrap()] > 0.0));
    let fallback = pick(Selection::Informative, &tmp.path().join("no-student"));
    assert_eq!((fallback.new, fallback.policy.starts_with("random")), (random.new, true));

    // A checkpoint's min_score (chosen by train::calibrate) drops the pairs scoring below it.
    use biodistill::model::checkpoint::Checkpoint;
    use biodistill::model::predict::{SentenceRow, predict};
    let rows: Vec<SentenceRow> = pool.iter().map(|s| SentenceRow::standalone(&s.doc_id, s.sent_id, &s.text)).collect();
    let mut checkpoint = Checkpoint::load(&student_dir, &candle_core::Device::Cpu).unwrap();
    assert_eq!(checkpoint.config.min_score, 0.0, "no dev split, no calibration");
    let mut all: Vec<f32> = predict(&checkpoint, &rows, 4, 1).unwrap().pairs.iter().map(|p| p.score).collect();
    all.sort_by(f32::total_cmp);
    checkpoint.config.min_score = all[all.len() / 2];
    let kept = predict(&checkpoint, &rows, 4, 1).unwrap().pairs;
    let min = checkpoint.config.min_score;
    assert!(all[0] < min, "the toy student's scores differ: {all:?}");
    assert_eq!(kept.len(), all.iter().filter(|&&s| s >= min).count(), "{all:?}");
    assert!(kept.iter().all(|p| p.score >= min));
}

/// Real sentences from the ADE corpus (`../shared/data/ade_corpus_v2`, `DRUG-AE.rel` and
/// `ADE-NEG.txt`), 3 to 35 words: lengths as extraction meets them.
const REAL_SENTENCES: &[&str] = &[
    "Diclofenac-associated hepatitis.",
    "Myotonia associated with sarcoidosis: marked exacerbation with pravastatin.",
    "Detection of activated eosinophils in nasal polyps of an aspirin-induced asthma patient.",
    "Lupus-like syndrome caused by 5-aminosalicylic acid in patients with inflammatory bowel disease.",
    "One case of priapism occurred during heparin therapy for a previous surgical operation to the knee is reported.",
    "Methemoglobinemia after axillary block with bupivacaine and additional injection of lidocaine in the operative field.",
    "Calcipotriol (Daivonex R; Leo Pharmaceuticals, Zurich, Switzerland) may cause irritation of the skin, whereas allergic reactions are less common.",
    "We believe that this represents an unusual case of moderate-dose MTX-induced neurotoxicity in a patient with gastric cancer, which has not previously been reported.",
    "Immobilization, while Paget's bone disease was present, and perhaps enhanced activation of dihydrotachysterol by rifampicin, could have led to increased calcium-release into the circulation.",
    "We describe the side effects of 5-FU in a colon cancer patient who suffered severe mucositis, desquamating dermatitis, prolonged myelosuppression, and neurologic toxicity that required admission to the intensive care unit.",
    "BACKGROUND: External beam radiation therapy often is avoided in the treatment of rhabdomyosarcoma (RMS) in young children because of the long-term sequelae.",
    "Dihydropyrimidine dehydrogenase (DPD) is the rate-limiting enzyme in the catabolism of 5-FU.",
    "The day after the infusion, she no longer complained of diplopia, and her ophthalmoplegia had improved dramatically.",
];

/// Entities `(sentence, start, end, type)` and pairs `(sentence, anchor start, anchor end,
/// start, end)` with their scores, sorted; `sentence` maps a prediction's sentence index.
type Keyed = (Vec<([usize; 4], f32)>, Vec<([usize; 5], f32)>);

fn keyed(p: &biodistill::model::predict::Predictions, sentence: &dyn Fn(usize) -> usize) -> Keyed {
    let mut entities: Vec<([usize; 4], f32)> =
        p.entities.iter().map(|e| ([sentence(e.sentence), e.start, e.end, e.type_index], e.score)).collect();
    let mut pairs: Vec<([usize; 5], f32)> = p
        .pairs
        .iter()
        .map(|q| ([sentence(q.anchor.sentence), q.anchor.start, q.anchor.end, q.start, q.end], q.score))
        .collect();
    entities.sort_by_key(|e| e.0);
    pairs.sort_by_key(|q| q.0);
    (entities, pairs)
}

/// Issue 17: extraction's fast path (windows sorted by length and padded into batches of 16,
/// run on 2 threads, attention inputs fused at load) gives, on a fixed set of real and toy
/// sentences, the spans and pairs each sentence gives alone (batch of 1: no padding, no
/// neighbours) and in reverse order, scores within 1e-4.
fn batched_extraction_equals_each_sentence_alone(checkpoint: &biodistill::model::checkpoint::Checkpoint) {
    use biodistill::model::predict::{SentenceRow, predict};
    let texts: Vec<&str> = REAL_SENTENCES.iter().copied().chain(sentences(DOCS).iter().map(|s| s.3)).collect();
    let rows: Vec<SentenceRow> =
        texts.iter().enumerate().map(|(i, t)| SentenceRow::standalone("fixed", i as i32, t)).collect();
    let batched = keyed(&predict(checkpoint, &rows, 16, 2).unwrap(), &|s| s);
    let mut alone: Keyed = Default::default();
    for (i, row) in rows.iter().enumerate() {
        let (entities, pairs) = keyed(&predict(checkpoint, std::slice::from_ref(row), 1, 1).unwrap(), &|_| i);
        alone.0.extend(entities);
        alone.1.extend(pairs);
    }
    let reversed_rows: Vec<SentenceRow> = rows.iter().rev().cloned().collect();
    let reversed = keyed(&predict(checkpoint, &reversed_rows, 16, 2).unwrap(), &|s| rows.len() - 1 - s);
    assert!(!batched.1.is_empty(), "the fixed set must hold pairs to compare: {batched:?}");
    for (name, other) in [("alone", &alone), ("reversed", &reversed)] {
        let keys =
            |k: &Keyed| (k.0.iter().map(|e| e.0).collect::<Vec<_>>(), k.1.iter().map(|q| q.0).collect::<Vec<_>>());
        assert_eq!(keys(&batched), keys(other), "batched vs {name}: different spans or pairs");
        let scores = |k: &Keyed| k.0.iter().map(|e| e.1).chain(k.1.iter().map(|q| q.1)).collect::<Vec<f32>>();
        let worst = scores(&batched).iter().zip(scores(other)).map(|(a, b)| (a - b).abs()).fold(0f32, f32::max);
        assert!(worst < 1e-4, "batched vs {name}: score differs by {worst}");
    }
}

/// Two guards of `train`, end to end on one short run. Teacher labels of gold *dev*
/// documents (asked only to score the teacher) never train the student; they are counted as
/// `dropped_dev_sentences`. Sentences longer than `max_len` are cut into overlapping windows
/// for training and extraction, never dropped, and each pair is reported once, at offsets into
/// its document.
#[test]
fn dev_documents_never_train_and_long_sentences_are_windowed() {
    let tmp = tempfile::tempdir().unwrap();
    let run = RunDir::create(tmp.path()).unwrap();
    write_silver_run(&run, DOCS, LABELS);
    write_documents(&run, DOCS, &|doc| if doc == "toy:2" { "dev" } else { "unlabeled" });
    let cfg = TrainConfig { tasks: vec![Task::Ade], max_len: 12, window_overlap: 4, max_steps: Some(20), ..overfit() };
    let report = train::run(&cfg, &run).unwrap();
    let t = &report.tasks[0];
    let (all, dev) = (sentences(DOCS).len(), sentences(&DOCS[1..2]).len());
    assert_eq!(t.data.dropped_dev_sentences, dev);
    assert_eq!((t.data.sentences, t.data.pairs), (all - dev, 3), "toy:2 and its pair are not trained on");
    assert!(t.train_examples > t.data.sentences, "{} windows of {} sentences", t.train_examples, t.data.sentences);

    let cfg = ExtractConfig { tasks: vec![Task::Ade], progress: false, ..Default::default() };
    let extracted = block_on(extract::run(&cfg, &run)).unwrap();
    assert_eq!(extracted.sentences, all, "dev documents are extracted, only not trained on");
    assert!(extracted.windows > extracted.sentences, "{extracted}");
    let ade = read(&run, table::ADE_RELATIONS, &schema::ADE_RELATIONS);
    println!("{} pairs from {} windows", ade.num_rows(), extracted.windows);
    assert!(ade.num_rows() > 0, "nothing extracted to check");
    assert_offsets_slice(&ade, &[("drug", "drug_start", "drug_end"), ("effect", "effect_start", "effect_end")]);
    let starts = |c: &str| col::<Int32Array>(&ade, c).values().to_vec();
    let (docs, drugs, effects) = (col::<StringArray>(&ade, "doc_id"), starts("drug_start"), starts("effect_start"));
    let distinct: std::collections::HashSet<(&str, i32, i32)> =
        (0..ade.num_rows()).map(|r| (docs.value(r), drugs[r], effects[r])).collect();
    assert_eq!(distinct.len(), ade.num_rows(), "a pair reported by two overlapping windows");
}

/// `train.ensemble`: one checkpoint holding a student per seed. Member 0 is the student a
/// single training with the same seed gives (bit for bit), member 1 differs; the ensemble loads
/// both, and its batched extraction is as exact as one student's.
#[test]
fn an_ensemble_trains_one_student_per_seed_into_one_checkpoint() {
    use biodistill::model::checkpoint::{Checkpoint, CheckpointConfig, member_weights};
    let tmps = [tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap()];
    let runs: Vec<RunDir> = tmps
        .iter()
        .map(|tmp| {
            let run = RunDir::create(tmp.path()).unwrap();
            write_silver_run(&run, DOCS, LABELS);
            run
        })
        .collect();
    let single = TrainConfig { tasks: vec![Task::Ade], ..overfit() };
    let ensemble = TrainConfig { ensemble: [(Task::Ade, 2)].into(), ..single.clone() };
    assert!(train::run(&single, &runs[0]).unwrap().tasks[0].ensemble.is_empty());
    let report = train::run(&ensemble, &runs[1]).unwrap();
    println!("{report}");
    assert_eq!(report.tasks[0].ensemble.len(), 1, "the second member's fit is reported");
    assert!(report.to_string().contains("ensemble of 2 students"), "{report}");
    let dirs: Vec<PathBuf> = runs.iter().map(|r| r.checkpoints(false).join("ade")).collect();
    let weights = |dir: &Path, i: usize| std::fs::read(dir.join(member_weights(i))).unwrap();
    assert_eq!(weights(&dirs[1], 0), weights(&dirs[0], 0), "member 0 is the single student of the same seed");
    assert_ne!(weights(&dirs[1], 1), weights(&dirs[1], 0), "member 1 trains from its own seed");
    assert!(!dirs[0].join(member_weights(1)).exists());
    assert_eq!(CheckpointConfig::read(&dirs[1]).unwrap().members, 2);
    let checkpoint = Checkpoint::load(&dirs[1], &candle_core::Device::Cpu).unwrap();
    assert_eq!(checkpoint.students.len(), 2);
    batched_extraction_equals_each_sentence_alone(&checkpoint);
    let bad = TrainConfig { ensemble: [(Task::Ade, 0)].into(), ..single };
    assert!(train::run(&bad, &runs[0]).unwrap_err().to_string().contains("ensemble.ade = 0"));
}

/// `train.filters.min_teacher_confidence` drops exactly the labels the teacher scored below it
/// (or, by sentence, their sentences), keeps (and counts) the ones it has no score for, and is
/// off at 0.
#[test]
fn the_confidence_filter_drops_labels_scored_below_it_and_keeps_unscored_ones() {
    use biodistill::train::data::{ConfidenceUnit, SilverFilters, silver};
    let tmp = tempfile::tempdir().unwrap();
    let run = RunDir::create(tmp.path()).unwrap();
    // The four ADE pairs: 0.9, 0.3, unscored, 0.6; every other label 0.95.
    let mut confidence = vec![Some(0.95); LABELS.len()];
    confidence[..4].copy_from_slice(&[Some(0.9), Some(0.3), None, Some(0.6)]);
    write_scored_silver_run(&run, DOCS, LABELS, &confidence);
    let pairs = |threshold: f64| {
        let filters = SilverFilters { min_teacher_confidence: threshold, ..Default::default() };
        let (sentences, stats) = silver(&run, Task::Ade, &filters).unwrap();
        let mut kept: Vec<String> = sentences
            .iter()
            .flat_map(|s| {
                s.pairs.iter().map(move |p| s.text.chars().skip(p.1.start).take(p.1.end - p.1.start).collect())
            })
            .collect();
        kept.sort();
        (kept, stats.dropped_low_confidence, stats.unscored_confidence)
    };
    let all = pairs(0.0);
    assert_eq!((all.0.len(), all.1, all.2), (4, 0, 0), "off: nothing dropped or counted");
    assert_eq!(pairs(0.5), (vec!["nausea".into(), "rash".into(), "severe nausea".into()], 1, 1));
    assert_eq!(pairs(0.95), (vec!["rash".into()], 3, 1), "only the unscored pair is left");
    // By sentence: toy:2 s0 (its pair at 0.3) goes whole; toy:3 s0 keeps both pairs at 0.5.
    let by_sentence =
        SilverFilters { min_teacher_confidence: 0.5, confidence_unit: ConfidenceUnit::Sentence, ..Default::default() };
    let (sentences, stats) = silver(&run, Task::Ade, &by_sentence).unwrap();
    assert!(!sentences.iter().any(|s| s.doc_id == "toy:2" && s.sent_id == 0));
    assert_eq!((stats.dropped_low_confidence_sentences, sentences.iter().map(|s| s.pairs.len()).sum()), (1, 3));
    // Masked: every sentence stays; the doubtful pair is kept aside, out of the loss.
    let masked = SilverFilters { confidence_unit: ConfidenceUnit::Mask, ..by_sentence };
    let (sentences, _) = silver(&run, Task::Ade, &masked).unwrap();
    let toy2 = sentences.iter().find(|s| s.doc_id == "toy:2" && s.sent_id == 0).unwrap();
    assert_eq!((toy2.pairs.len(), toy2.doubtful.len()), (0, 1));
    assert_eq!(sentences.iter().map(|s| s.pairs.len()).sum::<usize>(), 3);
    let bad = TrainConfig { filters: SilverFilters { min_teacher_confidence: 1.5, ..Default::default() }, ..overfit() };
    assert!(train::run(&bad, &run).unwrap_err().to_string().contains("min_teacher_confidence"));
}

/// `ade_pairs`, `gene_disease_pairs`, `phi_spans` and `redact` over the `sentences` (and
/// `documents`) text give exactly the rows `extract` wrote, offsets shifted by the sentence's.
fn sql_functions_equal_extract(run: &RunDir) {
    const COUNTS: &str = "SELECT (SELECT count(*) FROM g) AS function_rows, (SELECT count(*) FROM t) AS table_rows, \
        (SELECT count(*) FROM (SELECT * FROM g EXCEPT ALL SELECT * FROM t)) AS only_function, \
        (SELECT count(*) FROM (SELECT * FROM t EXCEPT ALL SELECT * FROM g)) AS only_table";
    let pairs = |function: &str, table: &str, a: &str, r: &str| {
        format!(
            "WITH f AS (SELECT doc_id, sent_id, start AS s, unnest({function}(text)) AS p FROM sentences), \
             g AS (SELECT doc_id, sent_id, p['{a}'] AS {a}, s + p['{a}_start'] AS {a}_start, s + p['{a}_end'] AS {a}_end, \
                   p['{r}'] AS {r}, s + p['{r}_start'] AS {r}_start, s + p['{r}_end'] AS {r}_end FROM f), \
             t AS (SELECT doc_id, sent_id, {a}, {a}_start, {a}_end, {r}, {r}_start, {r}_end FROM {table}) \
             {COUNTS}"
        )
    };
    let phi = format!(
        "WITH f AS (SELECT doc_id, start AS s, unnest(phi_spans(text)) AS p FROM sentences), \
               g AS (SELECT doc_id, s + p['start'] AS start, s + p['end'] AS \"end\", p['phi_type'] AS phi_type FROM f), \
               t AS (SELECT doc_id, start, \"end\", phi_type FROM phi_spans) {COUNTS}"
    );
    let redact = "SELECT count(*) AS function_rows, count(*) AS table_rows, \
                  sum(CASE WHEN redact(d.text) = r.redacted_text THEN 0 ELSE 1 END) AS differ, 0 AS none \
                  FROM documents d JOIN redacted_documents r USING (doc_id)";
    let checks = [
        ("ade_pairs", pairs("ade_pairs", "ade_relations", "drug", "effect")),
        ("gene_disease_pairs", pairs("gene_disease_pairs", "gene_disease", "gene", "disease")),
        ("phi_spans", phi),
        ("redact", redact.to_string()),
    ];
    for (name, query) in checks {
        let csv = crate::util::sql_csv(run, &query);
        let counts: Vec<usize> = csv.lines().nth(1).unwrap().split(',').map(|v| v.parse().unwrap()).collect();
        println!("{name}: function rows, table rows, only in function, only in table = {counts:?}");
        assert!(counts[1] > 0, "{name}: nothing to compare: {csv}");
        assert_eq!((counts[0], counts[2], counts[3]), (counts[1], 0, 0), "{name}: {csv}");
    }
}

#[test]
fn supervised_reference_trains_on_gold_and_labels_its_outputs() {
    let tmp = tempfile::tempdir().unwrap();
    let run = RunDir::create(tmp.path()).unwrap();
    write_silver_run(&run, DOCS, LABELS);
    // gold_ade over toy:1 (train) and toy:2 (dev: must not be read).
    let sents = sentences(DOCS);
    let rows =
        [("toy:1", 1, "train", "Aspirin", "severe nausea"), ("toy:2", 0, "dev", "Methotrexate", "hepatotoxicity")];
    let text = |doc: &str, sent: i32| sents.iter().find(|s| s.0 == doc && s.1 == sent).unwrap().3;
    let off = |t: &str, n: &str| find(t, n).unwrap();
    let strings = |v: Vec<&str>| -> ArrayRef { Arc::new(StringArray::from(v)) };
    let ints = |v: Vec<i32>| -> ArrayRef { Arc::new(Int32Array::from(v)) };
    let gold = RecordBatch::try_new(
        schema::GOLD_ADE.clone(),
        vec![
            strings(rows.iter().map(|r| r.0).collect()),
            ints(rows.iter().map(|r| r.1).collect()),
            strings(rows.iter().map(|r| r.2).collect()),
            strings(rows.iter().map(|r| text(r.0, r.1)).collect()),
            strings(rows.iter().map(|r| r.3).collect()),
            ints(rows.iter().map(|r| off(text(r.0, r.1), r.3).0).collect()),
            ints(rows.iter().map(|r| off(text(r.0, r.1), r.3).1).collect()),
            strings(rows.iter().map(|r| r.4).collect()),
            ints(rows.iter().map(|r| off(text(r.0, r.1), r.4).0).collect()),
            ints(rows.iter().map(|r| off(text(r.0, r.1), r.4).1).collect()),
        ],
    )
    .unwrap();
    run.write_table(table::GOLD_ADE, schema::GOLD_ADE.clone(), &[gold]).unwrap();
    write_documents(&run, DOCS, &|doc| if doc == "toy:1" { "train" } else { "dev" });

    let cfg = TrainConfig {
        model_dir: model_dir(),
        tasks: vec![Task::Ade],
        supervised_reference: true,
        max_steps: Some(2),
        dev_fraction: 0.0,
        progress: false,
        ..Default::default()
    };
    let report = train::run(&cfg, &run).unwrap();
    let t = &report.tasks[0];
    assert_eq!((t.data.sentences, t.data.pairs, t.data.negatives), (2, 1, 1), "toy:1's two sentences only");
    assert!(t.model_version.starts_with("supervised-reference-"), "{}", t.model_version);
    assert!(t.checkpoint.ends_with("student-supervised-reference/ade"));

    let cfg =
        ExtractConfig { supervised_reference: true, tasks: vec![Task::Ade], progress: false, ..Default::default() };
    let extracted = block_on(extract::run(&cfg, &run)).unwrap();
    assert!(extracted.tables.contains_key("ade_relations_supervised_reference"), "{extracted}");
    assert!(!run.has_table(table::ADE_RELATIONS), "never written under the distilled student's name");
}

/// Our encoder (both modes) computes what candle-transformers' `BertModel` computes on the real
/// weights: the trainable rewrite changed where gradients flow, not the function.
#[test]
fn student_encoder_matches_candle_bert_on_minilm() {
    use biodistill::model::batch::{Batch, Example};
    use biodistill::model::encoder::Mode;
    use biodistill::model::student::{Arch, Student, StudentSpec, load_encoder_weights, seeded_init};
    use biodistill::model::wordpiece::WordPieces;
    use candle_core::{DType, Device};
    use candle_nn::{VarBuilder, VarMap};
    use candle_transformers::models::bert::{BertModel, Config};
    let dir = model_dir();
    let config: Config = serde_json::from_slice(&std::fs::read(dir.join("config.json")).unwrap()).unwrap();
    let weights = dir.join("model.safetensors");
    // SAFETY: read-only map of a file nobody writes during the test.
    let vb = unsafe { VarBuilder::from_mmaped_safetensors(&[&weights], DType::F32, &Device::Cpu) }.unwrap();
    let reference = BertModel::load(vb, &config).unwrap();
    let wp = WordPieces::from_file(&dir.join("tokenizer.json")).unwrap();
    let short = Example { ids: wp.encode("Aspirin caused nausea.").unwrap().ids, ..Default::default() };
    let long = Example {
        ids: wp
            .encode("Although isradipine has been associated with hepatocellular injury, none was seen.")
            .unwrap()
            .ids,
        ..Default::default()
    };
    let batch = Batch::new(&[&short, &long], wp.special());
    let (ids, types, mask) = batch.inputs(&Device::Cpu).unwrap();
    let expected = reference.forward(&ids, &types, Some(&mask)).unwrap();
    let spec = StudentSpec { task: Task::Ade, arch: Arch::Conditioned, dropout: 0.1 };
    for mode in [Mode::Train, Mode::Infer] {
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &Device::Cpu);
        let student = Student::load(vb, &config, &spec, mode).unwrap();
        seeded_init(&varmap, 1, 0.02).unwrap();
        load_encoder_weights(&varmap, &weights).unwrap();
        let got = student.encode(&batch).unwrap();
        // Padding positions differ by design (their values are never used); compare real tokens.
        let keep = mask.to_dtype(DType::F32).unwrap().unsqueeze(2).unwrap();
        let diff = (expected.broadcast_mul(&keep).unwrap() - got.broadcast_mul(&keep).unwrap()).unwrap();
        let diff = diff.abs().unwrap().max_all().unwrap().to_scalar::<f32>().unwrap();
        assert!(diff < 1e-3, "{mode:?}: max |diff| {diff}");
    }
}
