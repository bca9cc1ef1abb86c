//! PubTator files: BC5CDR, NCBI Disease (unlabeled text) and BioRED (gene–disease gold).
//!
//! A document is `PMID|t|title`, `PMID|a|abstract`, then tab-separated annotation lines
//! (`PMID start end text type id`) and relation lines (`PMID type id1 id2 ...`), with a blank
//! line between documents. Annotation offsets index `title + " " + abstract`; we store
//! `title + "\n" + abstract` (same length, so the offsets hold) so the title is its own sentence.

use std::collections::HashMap;
use std::path::Path;

use super::collect::{Collector, Doc, GoldGeneDisease, Mention, check_span};
use crate::error::{Error, Result};

/// One parsed PubTator document.
#[derive(Debug, Default)]
struct PubtatorDoc {
    pmid: String,
    /// 1-based line of the title.
    line: usize,
    title: String,
    text: String,
    /// (start, end, text, type, ids)
    annotations: Vec<(usize, usize, String, String, String)>,
    /// (type, id1, id2)
    relations: Vec<(String, String, String)>,
}

/// Parse a PubTator file into documents. Malformed blocks are quarantined under `source`.
fn parse(path: &Path, source: &str, c: &mut Collector) -> Result<Vec<PubtatorDoc>> {
    let content = super::read_utf8(path)?;
    let mut docs = Vec::new();
    let mut cur: Option<PubtatorDoc> = None;
    let mut bad_block = false;
    for (i, line) in content.lines().enumerate() {
        let lineno = i + 1;
        if line.trim().is_empty() {
            docs.extend(cur.take());
            bad_block = false;
            continue;
        }
        if bad_block {
            continue;
        }
        if let Some((pmid, rest)) = line.split_once("|t|") {
            docs.extend(cur.take());
            cur = Some(PubtatorDoc {
                pmid: pmid.to_string(),
                line: lineno,
                title: rest.to_string(),
                ..Default::default()
            });
            continue;
        }
        let Some(doc) = cur.as_mut() else {
            c.quarantine(
                source,
                path,
                Some(lineno),
                None,
                "line outside a document (no 'PMID|t|' title line before it)",
                Some(line),
            );
            bad_block = true;
            continue;
        };
        if let Some((pmid, rest)) = line.split_once("|a|") {
            if pmid != doc.pmid {
                c.quarantine(
                    source,
                    path,
                    Some(lineno),
                    Some(&doc.pmid),
                    &format!("abstract PMID {pmid} differs from title PMID"),
                    Some(line),
                );
                cur = None;
                bad_block = true;
                continue;
            }
            doc.text = format!("{}\n{}", doc.title, rest);
            continue;
        }
        let fields: Vec<&str> = line.split('\t').collect();
        match fields.len() {
            6 | 7 => match (fields[1].parse::<usize>(), fields[2].parse::<usize>()) {
                (Ok(start), Ok(end)) => doc.annotations.push((
                    start,
                    end,
                    fields[3].to_string(),
                    fields[4].to_string(),
                    fields[5].to_string(),
                )),
                _ => c.quarantine(
                    source,
                    path,
                    Some(lineno),
                    Some(&doc.pmid),
                    "annotation offsets are not integers",
                    Some(line),
                ),
            },
            4 | 5 => doc.relations.push((fields[1].to_string(), fields[2].to_string(), fields[3].to_string())),
            _ => c.quarantine(source, path, Some(lineno), Some(&doc.pmid), "unrecognized PubTator line", Some(line)),
        }
    }
    docs.extend(cur);
    Ok(docs)
}

fn title_only(doc: &PubtatorDoc) -> bool {
    doc.text.is_empty()
}

/// Read a PubTator corpus as unlabeled text (its annotations are not used for training).
pub fn read_unlabeled(path: &Path, source: &str, c: &mut Collector) -> Result<()> {
    for d in parse(path, source, c)? {
        let text = if title_only(&d) { d.title.clone() } else { d.text };
        let doc = Doc {
            doc_id: format!("{source}:{}", d.pmid),
            source: source.to_string(),
            split: crate::schema::split::UNLABELED.to_string(),
            title: Some(d.title),
            text,
            sentences: None,
        };
        c.add_doc(doc, path, Some(d.line));
    }
    Ok(())
}

/// Read a BioRED file: its documents, and one gold row per gene–disease relation, with the
/// first mention (by offset) of each entity standing for it.
pub fn read_biored(path: &Path, split: &str, c: &mut Collector) -> Result<()> {
    const GENE: &str = "GeneOrGeneProduct";
    const DISEASE: &str = "DiseaseOrPhenotypicFeature";
    let docs = parse(path, "biored", c)?;
    if docs.is_empty() {
        return Err(Error::input(path, "no PubTator documents found"));
    }
    for d in docs {
        let doc_id = format!("biored:{}", d.pmid);
        // First mention of each normalized id (a mention may carry several ids, comma-separated).
        let mut first: HashMap<&str, (&str, Mention)> = HashMap::new();
        let mut sorted: Vec<_> = d.annotations.iter().collect();
        sorted.sort_by_key(|a| a.0);
        for (start, end, text, ty, ids) in sorted {
            match check_span(&d.text, *start, *end, text) {
                Ok(m) => {
                    for id in ids.split([',', ';']).filter(|s| !s.is_empty() && *s != "-") {
                        first.entry(id).or_insert((ty.as_str(), m.clone()));
                    }
                }
                Err(problem) => c.quarantine("biored", path, Some(d.line), Some(&doc_id), &problem, Some(text)),
            }
        }
        for (rel, id1, id2) in &d.relations {
            let (Some(a), Some(b)) = (first.get(id1.as_str()), first.get(id2.as_str())) else { continue };
            let ((gene_id, gene), (disease_id, disease)) = match (a.0, b.0) {
                (GENE, DISEASE) => ((id1, &a.1), (id2, &b.1)),
                (DISEASE, GENE) => ((id2, &b.1), (id1, &a.1)),
                _ => continue,
            };
            c.gold_gene_disease.push(GoldGeneDisease {
                dataset: "biored".into(),
                doc_id: doc_id.clone(),
                sent_id: None,
                split: split.to_string(),
                text: d.text.clone(),
                gene: gene.clone(),
                gene_id: Some(gene_id.clone()),
                disease: disease.clone(),
                disease_id: Some(disease_id.clone()),
                label: 1,
                relation: rel.clone(),
            });
        }
        let doc = Doc {
            doc_id: doc_id.clone(),
            source: "biored".into(),
            split: split.to_string(),
            title: Some(d.title),
            text: d.text,
            sentences: None,
        };
        c.add_doc(doc, path, Some(d.line));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_documents_annotations_relations_and_quarantines_junk() {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("x.PubTator");
        std::fs::write(
            &path,
            "1|t|BRCA1 and cancer.\n1|a|BRCA1 mutations cause breast cancer.\n\
             1\t0\t5\tBRCA1\tGeneOrGeneProduct\t672\n1\t40\t53\tbreast cancer\tDiseaseOrPhenotypicFeature\tD001943\n\
             1\tAssociation\t672\tD001943\tNovel\n\ngarbage line\n\n2|t|Second.\n2|a|Text.\n",
        )
        .unwrap();
        let mut c = Collector::new(0.2);
        read_biored(&path, "train", &mut c).unwrap();
        assert_eq!(c.docs.len(), 2);
        assert_eq!(c.docs[0].text, "BRCA1 and cancer.\nBRCA1 mutations cause breast cancer.");
        assert_eq!(c.gold_gene_disease.len(), 1);
        let g = &c.gold_gene_disease[0];
        assert_eq!((g.gene.text.as_str(), g.disease.text.as_str()), ("BRCA1", "breast cancer"));
        assert_eq!(crate::text::char_slice(&g.text, g.disease.start, g.disease.end), Some("breast cancer"));
        assert_eq!(c.quarantine.len(), 1);
        assert_eq!(c.quarantine[0].row, Some(7));
    }
}
