//! Turn a [`Collector`] into the ingest's Arrow tables and write them.

use std::sync::Arc;

use arrow::array::{ArrayRef, Int8Array, Int32Array, Int64Array, StringArray};

use super::IngestReport;
use super::collect::{Collector, GoldPair, Mention};
use super::split::sha256_hex;
use crate::error::Result;
use crate::run_dir::{RunDir, batch};
use crate::schema::{self, table};
use crate::text::CharIndex;

fn strings<'a>(values: impl IntoIterator<Item = &'a str>) -> ArrayRef {
    Arc::new(StringArray::from_iter_values(values))
}
fn opt_strings<'a>(values: impl IntoIterator<Item = Option<&'a str>>) -> ArrayRef {
    Arc::new(StringArray::from_iter(values))
}
fn ints(values: impl IntoIterator<Item = usize>) -> ArrayRef {
    Arc::new(Int32Array::from_iter_values(values.into_iter().map(|v| v as i32)))
}

/// Columns `name`, `name_start`, `name_end` of a list of mentions.
fn mention_columns<'a>(mentions: impl Iterator<Item = &'a Mention> + Clone) -> [ArrayRef; 3] {
    [
        strings(mentions.clone().map(|m| m.text.as_str())),
        ints(mentions.clone().map(|m| m.start)),
        ints(mentions.map(|m| m.end)),
    ]
}

fn pair_batch(rows: &[GoldPair]) -> Result<arrow::record_batch::RecordBatch> {
    let mut cols = vec![
        strings(rows.iter().map(|r| r.doc_id.as_str())),
        ints(rows.iter().map(|r| r.sent_id)),
        strings(rows.iter().map(|r| r.split.as_str())),
        strings(rows.iter().map(|r| r.text.as_str())),
    ];
    cols.extend(mention_columns(rows.iter().map(|r| &r.first)));
    cols.extend(mention_columns(rows.iter().map(|r| &r.second)));
    batch(&schema::GOLD_ADE, cols)
}

/// Build and write every ingest table.
pub fn write(c: Collector, run_dir: &RunDir) -> Result<IngestReport> {
    let mut report = IngestReport {
        failed_files: c.failed_files.clone(),
        quarantined_rows: c.quarantine.len(),
        ..Default::default()
    };
    let mut put =
        |name: &str, schema: &arrow::datatypes::SchemaRef, b: arrow::record_batch::RecordBatch| -> Result<()> {
            let n = run_dir.write_table(name, schema.clone(), &[b])?;
            report.tables.push((name.to_string(), n));
            Ok(())
        };

    let docs = &c.docs;
    put(
        table::DOCUMENTS,
        &schema::DOCUMENTS,
        batch(
            &schema::DOCUMENTS,
            vec![
                strings(docs.iter().map(|d| d.doc_id.as_str())),
                strings(docs.iter().map(|d| d.source.as_str())),
                strings(docs.iter().map(|d| d.split.as_str())),
                opt_strings(docs.iter().map(|d| d.title.as_deref())),
                strings(docs.iter().map(|d| d.text.as_str())),
                strings(docs.iter().map(|d| sha256_hex(&d.text)).collect::<Vec<_>>().iter().map(String::as_str)),
            ],
        )?,
    )?;

    // Sentences: given spans for pre-split corpora, the splitter for the rest.
    let (mut s_doc, mut s_id, mut s_start, mut s_end, mut s_text) = (vec![], vec![], vec![], vec![], vec![]);
    for d in docs {
        let spans = d.sentences.clone().unwrap_or_else(|| crate::text::sentences::split(&d.text));
        let idx = CharIndex::new(&d.text);
        for (i, s) in spans.iter().enumerate() {
            s_doc.push(d.doc_id.as_str());
            s_id.push(i);
            s_start.push(s.start);
            s_end.push(s.end);
            s_text.push(idx.slice(&d.text, s.start, s.end).expect("sentence spans lie inside their document"));
        }
    }
    put(
        table::SENTENCES,
        &schema::SENTENCES,
        batch(&schema::SENTENCES, vec![strings(s_doc), ints(s_id), ints(s_start), ints(s_end), strings(s_text)])?,
    )?;

    put(table::GOLD_ADE, &schema::GOLD_ADE, pair_batch(&c.gold_ade)?)?;
    put(table::GOLD_DRUG_DOSE, &schema::GOLD_DRUG_DOSE, {
        let b = pair_batch(&c.gold_drug_dose)?;
        arrow::record_batch::RecordBatch::try_new(schema::GOLD_DRUG_DOSE.clone(), b.columns().to_vec())?
    })?;

    let g = &c.gold_gene_disease;
    let mut cols = vec![
        strings(g.iter().map(|r| r.dataset.as_str())),
        strings(g.iter().map(|r| r.doc_id.as_str())),
        Arc::new(Int32Array::from_iter(g.iter().map(|r| r.sent_id.map(|s| s as i32)))) as ArrayRef,
        strings(g.iter().map(|r| r.split.as_str())),
        strings(g.iter().map(|r| r.text.as_str())),
    ];
    cols.extend(mention_columns(g.iter().map(|r| &r.gene)));
    cols.push(opt_strings(g.iter().map(|r| r.gene_id.as_deref())));
    cols.extend(mention_columns(g.iter().map(|r| &r.disease)));
    cols.push(opt_strings(g.iter().map(|r| r.disease_id.as_deref())));
    cols.push(Arc::new(Int8Array::from_iter_values(g.iter().map(|r| r.label))));
    cols.push(strings(g.iter().map(|r| r.relation.as_str())));
    put(table::GOLD_GENE_DISEASE, &schema::GOLD_GENE_DISEASE, batch(&schema::GOLD_GENE_DISEASE, cols)?)?;

    let p = &c.gold_phi;
    put(
        table::GOLD_PHI,
        &schema::GOLD_PHI,
        batch(
            &schema::GOLD_PHI,
            vec![
                strings(p.iter().map(|r| r.dataset.as_str())),
                strings(p.iter().map(|r| r.doc_id.as_str())),
                strings(p.iter().map(|r| r.split.as_str())),
                ints(p.iter().map(|r| r.span.start)),
                ints(p.iter().map(|r| r.span.end)),
                strings(p.iter().map(|r| r.phi_type.as_str())),
                strings(p.iter().map(|r| r.span.text.as_str())),
            ],
        )?,
    )?;

    let q = &c.quarantine;
    put(
        table::QUARANTINE,
        &schema::QUARANTINE,
        batch(
            &schema::QUARANTINE,
            vec![
                strings(q.iter().map(|r| r.source.as_str())),
                strings(q.iter().map(|r| r.file.as_str())),
                Arc::new(Int64Array::from_iter(q.iter().map(|r| r.row.map(|x| x as i64)))) as ArrayRef,
                opt_strings(q.iter().map(|r| r.doc_id.as_deref())),
                strings(q.iter().map(|r| r.reason.as_str())),
                opt_strings(q.iter().map(|r| r.raw.as_deref())),
            ],
        )?,
    )?;
    Ok(report)
}
