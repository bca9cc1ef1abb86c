//! Reading the gold sets, `documents` and `sentences` into plain structs (predictions:
//! [`super::systems`]).
//!
//! Every reader returns `Ok(None)` for a missing table (the caller decides whether that skips a
//! task) and an input error naming the file for a table with a wrong schema.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fs::File;

use parquet::arrow::ProjectionMask;
use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

use super::metrics::{Mention, Span};
use crate::columns::{Columns, TableStream, opt_i32, read_all};
use crate::error::{Error, IoContext, Result};
use crate::run_dir::RunDir;
use crate::schema::{column, table};
use crate::vocab::phi::{PhiType, from_gold};

/// A sentence: `(doc_id, sent_id)`.
pub type SentKey = (String, i32);

/// `documents.source` (and `doc_id` prefix) of ADE-Corpus-V2.
pub const ADE_SOURCE: &str = "ade_corpus_v2";

/// Table `name`, or `None` when it is missing.
pub(super) fn read_opt(run_dir: &RunDir, name: &str) -> Result<Option<Vec<Columns>>> {
    if run_dir.has_table(name) { read_all(run_dir, name).map(Some) } else { Ok(None) }
}

/// Only `columns` of table `name` (skips e.g. `documents.text`).
fn read_projected(run_dir: &RunDir, name: &str, columns: &[&str]) -> Result<Vec<Columns>> {
    let path = run_dir.table_path(name);
    let file = File::open(&path).with_path(&path)?;
    let unreadable = |e| Error::input(&path, format!("not a readable Parquet file: {e}"));
    let builder = ParquetRecordBatchReaderBuilder::try_new(file).map_err(unreadable)?;
    let mask = ProjectionMask::columns(builder.parquet_schema(), columns.iter().copied());
    let reader = builder.with_projection(mask).build().map_err(unreadable)?;
    reader
        .map(|b| {
            b.map(|batch| Columns { batch, path: path.clone() })
                .map_err(|e| Error::input(&path, format!("corrupt Parquet data: {e}")))
        })
        .collect()
}

/// A `gold_ade` row (sentence offsets).
#[derive(Debug, Clone, PartialEq)]
pub struct GoldAde {
    pub doc_id: String,
    pub sent_id: i32,
    pub drug: Mention,
    pub effect: Mention,
}

/// `gold_ade` rows of `split`.
pub fn gold_ade(run_dir: &RunDir, split: &str) -> Result<Option<Vec<GoldAde>>> {
    let Some(batches) = read_opt(run_dir, table::GOLD_ADE)? else { return Ok(None) };
    let mut rows = Vec::new();
    for c in &batches {
        let (doc, sent, splits) = (c.doc_id()?, c.sent_id()?, c.str("split")?);
        let (drug, ds, de) = (c.str("drug")?, c.i32("drug_start")?, c.i32("drug_end")?);
        let (effect, es, ee) = (c.str("effect")?, c.i32("effect_start")?, c.i32("effect_end")?);
        for i in (0..c.len()).filter(|&i| splits.value(i) == split) {
            rows.push(GoldAde {
                doc_id: doc.value(i).to_string(),
                sent_id: sent.value(i),
                drug: Mention::new(Some((ds.value(i), de.value(i))), drug.value(i)),
                effect: Mention::new(Some((es.value(i), ee.value(i))), effect.value(i)),
            });
        }
    }
    Ok(Some(rows))
}

/// A `gold_gene_disease` row (offsets index the sentence, or the document when `sent_id` is
/// null).
#[derive(Debug, Clone, PartialEq)]
pub struct GoldGeneDisease {
    pub dataset: String,
    pub doc_id: String,
    pub sent_id: Option<i32>,
    pub gene: Mention,
    pub disease: Mention,
    pub label: i8,
}

/// `gold_gene_disease` rows of `split`.
pub fn gold_gene_disease(run_dir: &RunDir, split: &str) -> Result<Option<Vec<GoldGeneDisease>>> {
    let Some(batches) = read_opt(run_dir, table::GOLD_GENE_DISEASE)? else { return Ok(None) };
    let mut rows = Vec::new();
    for c in &batches {
        let (dataset, doc, sent, splits) = (c.str("dataset")?, c.doc_id()?, c.sent_id()?, c.str("split")?);
        let (gene, gs, ge) = (c.str("gene")?, c.i32("gene_start")?, c.i32("gene_end")?);
        let (disease, ds, de) = (c.str("disease")?, c.i32("disease_start")?, c.i32("disease_end")?);
        let label = c.i8("label")?;
        for i in (0..c.len()).filter(|&i| splits.value(i) == split) {
            rows.push(GoldGeneDisease {
                dataset: dataset.value(i).to_string(),
                doc_id: doc.value(i).to_string(),
                sent_id: opt_i32(sent, i),
                gene: Mention::new(Some((gs.value(i), ge.value(i))), gene.value(i)),
                disease: Mention::new(Some((ds.value(i), de.value(i))), disease.value(i)),
                label: label.value(i),
            });
        }
    }
    Ok(Some(rows))
}

/// A `gold_phi` row (document offsets); `phi_type` is `None` when the gold type does not map.
#[derive(Debug, Clone, PartialEq)]
pub struct GoldPhi {
    pub dataset: String,
    pub doc_id: String,
    pub span: Span,
    pub phi_type: Option<PhiType>,
    pub text: String,
}

/// `gold_phi` rows of `split`, types mapped with [`from_gold`].
pub fn gold_phi(run_dir: &RunDir, split: &str) -> Result<Option<Vec<GoldPhi>>> {
    let Some(batches) = read_opt(run_dir, table::GOLD_PHI)? else { return Ok(None) };
    let mut rows = Vec::new();
    for c in &batches {
        let (dataset, doc, splits) = (c.str("dataset")?, c.doc_id()?, c.str("split")?);
        let (start, end, phi_type, span) = (c.i32("start")?, c.i32("end")?, c.str("phi_type")?, c.str("span")?);
        for i in (0..c.len()).filter(|&i| splits.value(i) == split) {
            rows.push(GoldPhi {
                dataset: dataset.value(i).to_string(),
                doc_id: doc.value(i).to_string(),
                span: (start.value(i), end.value(i)),
                phi_type: from_gold(dataset.value(i), phi_type.value(i)),
                text: span.value(i).to_string(),
            });
        }
    }
    Ok(Some(rows))
}

/// `documents` of `split` whose source is one of `sources`: source -> doc ids. `None` when
/// the table is missing.
pub fn documents_by_source(
    run_dir: &RunDir,
    split: &str,
    sources: &BTreeSet<String>,
) -> Result<Option<BTreeMap<String, BTreeSet<String>>>> {
    if !run_dir.has_table(table::DOCUMENTS) {
        return Ok(None);
    }
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    for c in read_projected(run_dir, table::DOCUMENTS, &[column::DOC_ID, "source", "split"])? {
        let (doc, source, splits) = (c.doc_id()?, c.str("source")?, c.str("split")?);
        for i in 0..c.len() {
            if splits.value(i) == split && sources.contains(source.value(i)) {
                out.entry(source.value(i).to_string()).or_default().insert(doc.value(i).to_string());
            }
        }
    }
    Ok(Some(out))
}

/// One sentence's place in its document.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct SentenceRange {
    pub sent_id: i32,
    pub start: i32,
    pub end: i32,
    /// White space only: the teacher never labels these.
    pub blank: bool,
}

/// The sentences of the documents under evaluation.
#[derive(Debug, Clone, Default)]
pub struct Sentences {
    by_doc: HashMap<String, Vec<SentenceRange>>,
}

impl Sentences {
    /// Sentences of `docs` from the `sentences` table (required: offsets are converted with it).
    pub fn load(run_dir: &RunDir, docs: &BTreeSet<String>) -> Result<Self> {
        let mut by_doc: HashMap<String, Vec<SentenceRange>> = HashMap::new();
        for c in TableStream::open(run_dir, table::SENTENCES, 8192)? {
            let c = c?;
            let (doc, sent, start, end, text) =
                (c.doc_id()?, c.sent_id()?, c.i32("start")?, c.i32("end")?, c.str("text")?);
            for i in (0..c.len()).filter(|&i| docs.contains(doc.value(i))) {
                let range = SentenceRange {
                    sent_id: sent.value(i),
                    start: start.value(i),
                    end: end.value(i),
                    blank: text.value(i).trim().is_empty(),
                };
                by_doc.entry(doc.value(i).to_string()).or_default().push(range);
            }
        }
        Ok(Self::from_map(by_doc))
    }

    pub fn from_map(mut by_doc: HashMap<String, Vec<SentenceRange>>) -> Self {
        by_doc.values_mut().for_each(|v| v.sort_by_key(|s| (s.start, s.sent_id)));
        Self { by_doc }
    }

    /// The sentences of `doc`, by start offset.
    pub fn of_doc(&self, doc: &str) -> &[SentenceRange] {
        self.by_doc.get(doc).map_or(&[], Vec::as_slice)
    }

    /// Document offset of sentence `sent` of `doc`.
    pub fn start(&self, doc: &str, sent: i32) -> Option<i32> {
        self.of_doc(doc).iter().find(|s| s.sent_id == sent).map(|s| s.start)
    }

    /// The sentence of `doc` a document offset falls in: the last one starting at or before it.
    pub fn at(&self, doc: &str, position: i32) -> Option<i32> {
        let sentences = self.of_doc(doc);
        let i = sentences.partition_point(|s| s.start <= position);
        (i > 0).then(|| sentences[i - 1].sent_id)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sentences() -> Sentences {
        let r = |sent_id, start, end, blank| SentenceRange { sent_id, start, end, blank };
        Sentences::from_map(HashMap::from([("d".to_string(), vec![r(1, 10, 20, false), r(0, 0, 9, false)])]))
    }

    #[test]
    fn sentence_lookup_by_id_and_offset() {
        let s = sentences();
        assert_eq!(s.of_doc("d").iter().map(|r| r.sent_id).collect::<Vec<_>>(), [0, 1]);
        assert_eq!(s.start("d", 1), Some(10));
        assert_eq!(s.start("d", 2), None);
        assert_eq!(s.at("d", 0), Some(0));
        assert_eq!(s.at("d", 9), Some(0), "the gap after a sentence belongs to it");
        assert_eq!(s.at("d", 10), Some(1));
        assert_eq!(s.at("d", -1), None);
        assert_eq!(s.at("other", 3), None);
    }
}
