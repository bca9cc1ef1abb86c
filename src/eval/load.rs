//! The evaluation's reads as queries over one DataFusion session of the run directory: the
//! gold sets of a split, the documents it covers, and their sentences, which the session then
//! holds as table `evaluated_sentences` for the predictions to join with
//! ([`super::systems`]).
//!
//! Every reader returns `Ok(None)` for a missing table (the caller decides whether that skips a
//! task) and an input error naming the file for a table with a wrong schema.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::sync::Arc;

use arrow::array::{ArrayRef, RecordBatch, StringArray};
use arrow::datatypes::SchemaRef;
use datafusion::datasource::MemTable;
use datafusion::prelude::SessionContext;

use super::metrics::{Mention, Span};
use crate::columns::{Columns, opt_i32};
use crate::error::{Error, Result};
use crate::plan::{self, Limits, ident, literal};
use crate::run_dir::RunDir;
use crate::schema::column::{DOC_ID, SENT_ID};
use crate::schema::table;
use crate::vocab::phi::{PhiType, from_gold};

/// A sentence: `(doc_id, sent_id)`.
pub type SentKey = (String, i32);

/// `documents.source` (and `doc_id` prefix) of ADE-Corpus-V2.
pub const ADE_SOURCE: &str = "ade_corpus_v2";

/// The sentences under evaluation, as [`Sentences::load`] registers them: `doc_id`,
/// `sent_id`, `start`, `end`, `text`.
pub const EVALUATED_SENTENCES: &str = "evaluated_sentences";
/// The documents whose sentences [`Sentences::load`] reads.
const EVALUATED_DOCUMENTS: &str = "evaluated_documents";

/// The run directory's tables as one DataFusion session, for the evaluation's queries.
pub struct Tables<'a> {
    run_dir: &'a RunDir,
    ctx: SessionContext,
}

impl<'a> Tables<'a> {
    /// A session over `run_dir`, bounded like every stage's plans.
    pub async fn open(run_dir: &'a RunDir) -> Result<Self> {
        Ok(Self { run_dir, ctx: plan::session(run_dir, Limits::mib(plan::DEFAULT_MEMORY_LIMIT_MIB)).await? })
    }

    pub fn has(&self, name: &str) -> bool {
        self.run_dir.has_table(name)
    }

    /// The rows of `sql`, a query reading table `name`: errors (a missing column, say) name
    /// its file.
    pub async fn query(&self, name: &str, sql: &str) -> Result<Vec<Columns>> {
        Ok(self.query_with_schema(name, sql).await?.1)
    }

    /// [`Tables::query`] and the schema of its result (which an empty result has too).
    async fn query_with_schema(&self, name: &str, sql: &str) -> Result<(SchemaRef, Vec<Columns>)> {
        let path = self.run_dir.table_path(name);
        let bad = |e: datafusion::error::DataFusionError| Error::input(&path, format!("cannot evaluate from it: {e}"));
        let frame = self.ctx.sql(sql).await.map_err(bad)?;
        let schema = Arc::new(frame.schema().as_arrow().clone());
        let batches = frame.collect().await.map_err(bad)?;
        Ok((schema, batches.into_iter().map(|b| Columns::new(b, path.clone())).collect::<Result<_>>()?))
    }

    /// The session, for queries on the shared floor ([`plan`]).
    pub fn context(&self) -> &SessionContext {
        &self.ctx
    }

    /// [`Tables::query`], `None` when table `name` is missing.
    pub async fn query_opt(&self, name: &str, sql: &str) -> Result<Option<Vec<Columns>>> {
        if self.has(name) { self.query(name, sql).await.map(Some) } else { Ok(None) }
    }

    /// `batches` as table `name` of the session (in memory).
    fn register(&self, name: &str, schema: SchemaRef, batches: Vec<RecordBatch>) -> Result<()> {
        self.ctx.register_table(name, Arc::new(MemTable::try_new(schema, vec![batches])?))?;
        Ok(())
    }
}

/// `SELECT <columns> FROM <name> WHERE split = <split>`: a gold table's rows of one split.
fn of_split(name: &str, columns: &str, split: &str) -> String {
    format!("SELECT {columns} FROM {} WHERE split = {}", ident(name), literal(split))
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
pub async fn gold_ade(tables: &Tables<'_>, split: &str) -> Result<Option<Vec<GoldAde>>> {
    let columns = format!("{DOC_ID}, {SENT_ID}, drug, drug_start, drug_end, effect, effect_start, effect_end");
    let sql = of_split(table::GOLD_ADE, &columns, split);
    let Some(batches) = tables.query_opt(table::GOLD_ADE, &sql).await? else { return Ok(None) };
    let mut rows = Vec::new();
    for c in &batches {
        let (doc, sent) = (c.doc_id()?, c.sent_id()?);
        let (drug, ds, de) = (c.str("drug")?, c.i32("drug_start")?, c.i32("drug_end")?);
        let (effect, es, ee) = (c.str("effect")?, c.i32("effect_start")?, c.i32("effect_end")?);
        for i in 0..c.len() {
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
pub async fn gold_gene_disease(tables: &Tables<'_>, split: &str) -> Result<Option<Vec<GoldGeneDisease>>> {
    let columns =
        format!("dataset, {DOC_ID}, {SENT_ID}, gene, gene_start, gene_end, disease, disease_start, disease_end, label");
    let sql = of_split(table::GOLD_GENE_DISEASE, &columns, split);
    let Some(batches) = tables.query_opt(table::GOLD_GENE_DISEASE, &sql).await? else { return Ok(None) };
    let mut rows = Vec::new();
    for c in &batches {
        let (dataset, doc, sent) = (c.str("dataset")?, c.doc_id()?, c.sent_id()?);
        let (gene, gs, ge) = (c.str("gene")?, c.i32("gene_start")?, c.i32("gene_end")?);
        let (disease, ds, de) = (c.str("disease")?, c.i32("disease_start")?, c.i32("disease_end")?);
        let label = c.i8("label")?;
        for i in 0..c.len() {
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
pub async fn gold_phi(tables: &Tables<'_>, split: &str) -> Result<Option<Vec<GoldPhi>>> {
    let sql = of_split(table::GOLD_PHI, &format!("dataset, {DOC_ID}, start, \"end\", phi_type, span"), split);
    let Some(batches) = tables.query_opt(table::GOLD_PHI, &sql).await? else { return Ok(None) };
    let mut rows = Vec::new();
    for c in &batches {
        let (dataset, doc) = (c.str("dataset")?, c.doc_id()?);
        let (start, end, phi_type, span) = (c.i32("start")?, c.i32("end")?, c.str("phi_type")?, c.str("span")?);
        for i in 0..c.len() {
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
pub async fn documents_by_source(
    tables: &Tables<'_>,
    split: &str,
    sources: &BTreeSet<String>,
) -> Result<Option<BTreeMap<String, BTreeSet<String>>>> {
    if !tables.has(table::DOCUMENTS) {
        return Ok(None);
    }
    let mut out: BTreeMap<String, BTreeSet<String>> = BTreeMap::new();
    if sources.is_empty() {
        return Ok(Some(out));
    }
    let within: Vec<String> = sources.iter().map(|s| literal(s)).collect();
    let sql = format!(
        "{} AND source IN ({})",
        of_split(table::DOCUMENTS, &format!("{DOC_ID}, source"), split),
        within.join(", ")
    );
    for c in tables.query(table::DOCUMENTS, &sql).await? {
        let (doc, source) = (c.doc_id()?, c.str("source")?);
        for i in 0..c.len() {
            out.entry(source.value(i).to_string()).or_default().insert(doc.value(i).to_string());
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

/// The sentences of the documents under evaluation, with their texts.
#[derive(Debug, Clone, Default)]
pub struct Sentences {
    by_doc: HashMap<String, Vec<SentenceRange>>,
    texts: HashMap<SentKey, String>,
}

impl Sentences {
    /// Sentences of `docs` from the `sentences` table (required: offsets are converted with
    /// it), read in one pass; they stay on the session as [`EVALUATED_SENTENCES`].
    pub async fn load(tables: &Tables<'_>, docs: &BTreeSet<String>) -> Result<Self> {
        if !tables.has(table::SENTENCES) {
            let path = tables.run_dir.table_path(table::SENTENCES);
            return Err(Error::input(path, "table sentences is missing (run `biodistill ingest` first)"));
        }
        let ids: ArrayRef = Arc::new(docs.iter().map(Some).collect::<StringArray>());
        let wanted = RecordBatch::try_from_iter([(DOC_ID, ids)])?;
        tables.register(EVALUATED_DOCUMENTS, wanted.schema(), vec![wanted])?;
        let sql = format!(
            "SELECT {DOC_ID}, {SENT_ID}, start, \"end\", text FROM {} WHERE {DOC_ID} IN (SELECT {DOC_ID} FROM {EVALUATED_DOCUMENTS})",
            ident(table::SENTENCES)
        );
        let (result_schema, batches) = tables.query_with_schema(table::SENTENCES, &sql).await?;
        let mut by_doc: HashMap<String, Vec<SentenceRange>> = HashMap::new();
        let mut texts = HashMap::new();
        for c in &batches {
            let (doc, sent, start, end, text) =
                (c.doc_id()?, c.sent_id()?, c.i32("start")?, c.i32("end")?, c.str("text")?);
            for i in 0..c.len() {
                let range = SentenceRange {
                    sent_id: sent.value(i),
                    start: start.value(i),
                    end: end.value(i),
                    blank: text.value(i).trim().is_empty(),
                };
                by_doc.entry(doc.value(i).to_string()).or_default().push(range);
                texts.insert((doc.value(i).to_string(), sent.value(i)), text.value(i).to_string());
            }
        }
        // Strings read in another encoding are Utf8 in the batches (`Columns::new`).
        let schema = batches.first().map_or(result_schema, |c| c.batch.schema());
        tables.register(EVALUATED_SENTENCES, schema, batches.into_iter().map(|c| c.batch).collect())?;
        Ok(Self { texts, ..Self::from_map(by_doc) })
    }

    pub fn from_map(mut by_doc: HashMap<String, Vec<SentenceRange>>) -> Self {
        by_doc.values_mut().for_each(|v| v.sort_by_key(|s| (s.start, s.sent_id)));
        Self { by_doc, texts: HashMap::new() }
    }

    /// The text of sentence `sent` of `doc` (loaded sentences only).
    pub fn text(&self, doc: &str, sent: i32) -> Option<&str> {
        self.texts.get(&(doc.to_string(), sent)).map(String::as_str)
    }

    /// The documents, sorted.
    pub fn docs(&self) -> Vec<&str> {
        let mut docs: Vec<&str> = self.by_doc.keys().map(String::as_str).collect();
        docs.sort_unstable();
        docs
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
