//! Gold training sentences, for the supervised reference only (`--supervised-reference`).
//!
//! Reads only `split = 'train'` rows of `gold_ade`, `gold_gene_disease` (sentence-level rows;
//! label 0 rows give entities without a pair) and `gold_phi` (document offsets, mapped onto
//! sentences). Sentences of the same training documents without gold rows are negatives.
//! Distillation trains on none of it; `train.calibrate = "gold_train"` chooses the student's
//! score threshold on its sentences ([`super::calibrate`]).

use std::collections::{BTreeMap, HashSet};

use super::data::{CharSpan, DataStats, LabeledSentence, train_sentences_of};
use crate::columns::{opt_i32, read_all};
use crate::error::Result;
use crate::run_dir::RunDir;
use crate::schema::{split, table};
use crate::vocab::Task;
use crate::vocab::phi::{PhiType, from_gold};

/// The gold table of `task`.
pub fn table_of(task: Task) -> &'static str {
    match task {
        Task::Ade => table::GOLD_ADE,
        Task::GeneDisease => table::GOLD_GENE_DISEASE,
        Task::Phi => table::GOLD_PHI,
    }
}

/// Gold training sentences of `task`.
pub fn gold(run_dir: &RunDir, task: Task) -> Result<(Vec<LabeledSentence>, DataStats)> {
    let mut stats = DataStats::default();
    let name = table_of(task);
    let sentences = match task {
        Task::Ade => pairs(run_dir, task, name, ("drug", "effect"), &mut stats)?,
        Task::GeneDisease => pairs(run_dir, task, name, ("gene", "disease"), &mut stats)?,
        Task::Phi => phi(run_dir, &mut stats)?,
    };
    Ok((sentences, stats))
}

/// A sentence-level pair table (`gold_ade`, `gold_gene_disease`).
fn pairs(
    run_dir: &RunDir,
    task: Task,
    name: &str,
    (a, b): (&str, &str),
    stats: &mut DataStats,
) -> Result<Vec<LabeledSentence>> {
    let (anchor_type, related_type) = task.relation().expect("pair tables belong to relation tasks");
    let type_of = |t: &str| task.type_index(t).expect("relation types are entity types");
    let tables = read_all(run_dir, name)?;
    let (mut docs, mut document_level) = (HashSet::new(), HashSet::new());
    for cols in &tables {
        let (doc, sent, split_col) = (cols.doc_id()?, cols.sent_id()?, cols.str("split")?);
        for row in 0..cols.len() {
            if split_col.value(row) == split::TRAIN {
                docs.insert(doc.value(row).to_string());
                if opt_i32(sent, row).is_none() {
                    document_level.insert(doc.value(row).to_string());
                }
            }
        }
    }
    docs.retain(|d| !document_level.contains(d));
    let mut sentences = train_sentences_of(run_dir, &docs)?;
    for cols in &tables {
        let (doc, sent, split_col, text) = (cols.doc_id()?, cols.sent_id()?, cols.str("split")?, cols.str("text")?);
        let label = if cols.batch.column_by_name("label").is_some() { Some(cols.i8("label")?) } else { None };
        let offsets = |p: &str| -> Result<_> { Ok((cols.i32(&format!("{p}_start"))?, cols.i32(&format!("{p}_end"))?)) };
        let (a_off, b_off) = (offsets(a)?, offsets(b)?);
        for row in 0..cols.len() {
            if split_col.value(row) != split::TRAIN {
                continue;
            }
            let Some(sent_id) = opt_i32(sent, row) else {
                stats.dropped_not_sentence_level += 1;
                continue;
            };
            let key = (doc.value(row).to_string(), sent_id);
            let sentence = &mut sentences
                .entry(key.clone())
                .or_insert_with(|| {
                    (
                        0,
                        LabeledSentence {
                            doc_id: key.0,
                            sent_id,
                            text: text.value(row).to_string(),
                            ..Default::default()
                        },
                    )
                })
                .1;
            let len = sentence.text.chars().count();
            let span = |(s, e): &(&arrow::array::Int32Array, &arrow::array::Int32Array), t: &str| {
                let (start, end) = (s.value(row), e.value(row));
                (0 <= start && start < end && end as usize <= len).then(|| CharSpan {
                    start: start as usize,
                    end: end as usize,
                    type_index: type_of(t),
                })
            };
            let (Some(anchor), Some(related)) = (span(&a_off, anchor_type), span(&b_off, related_type)) else {
                stats.dropped_bad_offsets += 1;
                continue;
            };
            if sentence.text != text.value(row) {
                stats.dropped_bad_offsets += 1;
                continue;
            }
            sentence.entities.extend([anchor, related]);
            if label.is_none_or(|l| l.value(row) == 1) {
                sentence.pairs.insert((anchor, related));
            }
        }
    }
    Ok(sentences.into_values().map(|(_, s)| s).collect())
}

/// `gold_phi`: document offsets mapped onto the sentence that contains each span.
fn phi(run_dir: &RunDir, stats: &mut DataStats) -> Result<Vec<LabeledSentence>> {
    let tables = read_all(run_dir, table::GOLD_PHI)?;
    let mut docs = HashSet::new();
    for cols in &tables {
        let (doc, split_col) = (cols.doc_id()?, cols.str("split")?);
        docs.extend((0..cols.len()).filter(|&r| split_col.value(r) == split::TRAIN).map(|r| doc.value(r).to_string()));
    }
    let mut sentences = train_sentences_of(run_dir, &docs)?;
    // Per document, its sentences' (start, key) in order, to find the one holding a span.
    let mut starts: BTreeMap<String, Vec<(usize, i32)>> = BTreeMap::new();
    for ((doc, sent), (start, _)) in &sentences {
        starts.entry(doc.clone()).or_default().push((*start, *sent));
    }
    starts.values_mut().for_each(|list| list.sort_unstable());
    for cols in &tables {
        let (dataset, doc, split_col) = (cols.str("dataset")?, cols.doc_id()?, cols.str("split")?);
        let (start, end, phi_type) = (cols.i32("start")?, cols.i32("end")?, cols.str("phi_type")?);
        for row in 0..cols.len() {
            if split_col.value(row) != split::TRAIN {
                continue;
            }
            let (s, e) = (start.value(row).max(0) as usize, end.value(row).max(0) as usize);
            let type_index = Task::Phi
                .type_index(gold_phi_type(dataset.value(row), phi_type.value(row)).as_str())
                .expect("every PhiType is a phi entity type");
            let holder = starts.get(doc.value(row)).and_then(|list| list.iter().rev().find(|(st, _)| *st <= s));
            let Some(&(sent_start, sent_id)) = holder else {
                stats.dropped_not_sentence_level += 1;
                continue;
            };
            let (_, sentence) = sentences.get_mut(&(doc.value(row).to_string(), sent_id)).expect("listed above");
            if e <= s || e - sent_start > sentence.text.chars().count() {
                stats.dropped_not_sentence_level += 1;
                continue;
            }
            sentence.entities.insert(CharSpan { start: s - sent_start, end: e - sent_start, type_index });
        }
    }
    Ok(sentences.into_values().map(|(_, s)| s).collect())
}

/// A `gold_phi` type as training sees it: the mapping evaluation scores with
/// ([`from_gold`]), so the supervised reference learns the types it is scored on. A type that
/// mapping does not know (evaluation leaves those out) is still PHI: OTHER.
pub fn gold_phi_type(dataset: &str, label: &str) -> PhiType {
    from_gold(dataset, label).unwrap_or(PhiType::Other)
}

#[cfg(test)]
mod tests {
    use std::sync::Arc;

    use arrow::array::{ArrayRef, Int32Array, StringArray};

    use super::*;
    use crate::schema;

    fn strings(v: &[&str]) -> ArrayRef {
        Arc::new(StringArray::from(v.to_vec()))
    }

    /// Training maps gold PHI types exactly as scoring does (issue 15, item 7): MEDDOCAN's
    /// Spanish names and presidio's EMAIL_ADDRESS were OTHER/LOCATION in training before.
    #[test]
    fn gold_phi_types_match_the_scoring_mapping() {
        let cases = [
            ("meddocan", "FECHAS", PhiType::Date),
            ("meddocan", "PAIS", PhiType::Location),
            ("meddocan", "EDAD_SUJETO_ASISTENCIA", PhiType::Age),
            ("meddocan", "NOMBRE_SUJETO_ASISTENCIA", PhiType::Name),
            ("meddocan", "HOSPITAL", PhiType::Organization),
            ("presidio", "EMAIL_ADDRESS", PhiType::Contact),
        ];
        let text = "abcdefghijklmnopqrstuvwxyz";
        let dir = tempfile::tempdir().unwrap();
        let run = RunDir::create(dir.path()).unwrap();
        let docs = schema::DOCUMENTS.clone();
        let documents = crate::run_dir::batch(
            &docs,
            vec![
                strings(&["d"]),
                strings(&["x"]),
                strings(&["train"]),
                strings(&["t"]),
                strings(&[text]),
                strings(&["h"]),
            ],
        )
        .unwrap();
        run.write_table(table::DOCUMENTS, docs, &[documents]).unwrap();
        let sents = schema::SENTENCES.clone();
        let n = text.len() as i32;
        let sentences = crate::run_dir::batch(
            &sents,
            vec![
                strings(&["d"]),
                Arc::new(Int32Array::from(vec![0])),
                Arc::new(Int32Array::from(vec![0])),
                Arc::new(Int32Array::from(vec![n])),
                strings(&[text]),
            ],
        )
        .unwrap();
        run.write_table(table::SENTENCES, sents, &[sentences]).unwrap();
        // One span per case, at (2i, 2i + 1).
        let k = cases.len();
        let gold_schema = schema::GOLD_PHI.clone();
        let gold = crate::run_dir::batch(
            &gold_schema,
            vec![
                strings(&cases.map(|c| c.0)),
                strings(&vec!["d"; k]),
                strings(&vec!["train"; k]),
                Arc::new(Int32Array::from((0..k as i32).map(|i| 2 * i).collect::<Vec<_>>())),
                Arc::new(Int32Array::from((0..k as i32).map(|i| 2 * i + 1).collect::<Vec<_>>())),
                strings(&cases.map(|c| c.1)),
                strings(&vec!["a"; k]),
            ],
        )
        .unwrap();
        run.write_table(table::GOLD_PHI, gold_schema, &[gold]).unwrap();

        let (sentences, _) = super::gold(&run, Task::Phi).unwrap();
        assert_eq!(sentences.len(), 1);
        let mut entities: Vec<_> = sentences[0].entities.iter().copied().collect();
        entities.sort_by_key(|e| e.start);
        assert_eq!(entities.len(), k);
        for (i, (dataset, label, expected)) in cases.into_iter().enumerate() {
            let scored = from_gold(dataset, label).expect("scoring maps it");
            assert_eq!(scored, expected, "{dataset} {label}");
            assert_eq!(entities[i].start, 2 * i);
            assert_eq!(
                Task::Phi.entity_types()[entities[i].type_index],
                scored.as_str(),
                "{dataset} {label}: training and scoring disagree"
            );
        }
        assert_eq!(gold_phi_type("meddocan", "NOT_A_TYPE"), PhiType::Other);
        for t in PhiType::ALL {
            assert!(Task::Phi.type_index(t.as_str()).is_some(), "{t} is a student PHI type");
        }
    }
}
