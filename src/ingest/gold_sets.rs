//! Small gold sets: EU-ADR (gene–disease), MEDDOCAN (BRAT, PHI) and presidio (JSON, PHI).

use std::collections::BTreeMap;
use std::path::Path;

use super::collect::{Collector, Doc, GoldGeneDisease, GoldPhi, check_span, join_sentences};
use crate::error::{Error, IoContext, Result};

/// EU-ADR `EUADR_target_disease.csv`: tab-separated, quoted, 12 columns, Latin-1 (as its
/// SOURCE.md says; UTF-8 is accepted too). Only gene (`Genes & Molecular Sequences`) – disease
/// rows are kept; SNP–disease rows are not gene–disease pairs and are skipped. PA, SA and NA
/// (positive, speculative, negative association stated) are label 1, FA (no association) 0,
/// following GAD's convention that label 1 means "the sentence relates the pair".
/// Each PMID becomes one document of its annotated sentences in sentence-number order.
pub fn read_euadr(path: &Path, c: &mut Collector) -> Result<()> {
    let bytes = std::fs::read(path).with_path(path)?;
    let content = String::from_utf8(bytes).unwrap_or_else(|e| e.into_bytes().iter().map(|&b| b as char).collect());
    let mut reader = csv::ReaderBuilder::new().delimiter(b'\t').from_reader(content.as_bytes());
    let headers = reader.headers().map_err(|e| Error::input(path, format!("bad header: {e}")))?.clone();
    let col = |name: &str| -> Result<usize> {
        headers.iter().position(|h| h == name).ok_or_else(|| Error::input(path, format!("missing column '{name}'")))
    };
    let names = [
        "ASSOCIATION_TYPE",
        "PMID",
        "NUM_SENTENCE",
        "ENTITY1_TEXT",
        "ENTITY1_INI",
        "ENTITY1_END",
        "ENTITY1_TYPE",
        "ENTITY2_TEXT",
        "ENTITY2_INI",
        "ENTITY2_END",
        "ENTITY2_TYPE",
        "SENTENCE",
    ];
    let idx: Vec<usize> = names.iter().map(|n| col(n)).collect::<Result<_>>()?;
    // pmid -> sentence number -> (sentence, rows)
    let mut docs: BTreeMap<String, BTreeMap<i64, (String, Vec<GoldGeneDisease>)>> = BTreeMap::new();
    for (i, record) in reader.records().enumerate() {
        let line = i + 2;
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                c.quarantine("euadr", path, Some(line), None, &format!("bad row: {e}"), None);
                continue;
            }
        };
        let get = |k: usize| record.get(idx[k]).unwrap_or("");
        if get(6) != "Genes & Molecular Sequences" || get(10) != "Diseases & Disorders" {
            continue;
        }
        let raw = record.iter().collect::<Vec<_>>().join("\t");
        let label = match get(0) {
            "PA" | "SA" | "NA" => 1,
            "FA" => 0,
            other => {
                c.quarantine(
                    "euadr",
                    path,
                    Some(line),
                    None,
                    &format!("unknown ASSOCIATION_TYPE '{other}'"),
                    Some(&raw),
                );
                continue;
            }
        };
        let sentence = get(11).to_string();
        let span = |t: usize, s: usize, e: usize| -> std::result::Result<_, String> {
            let (s, e) = (get(s).parse::<usize>(), get(e).parse::<usize>());
            match (s, e) {
                (Ok(s), Ok(e)) => check_span(&sentence, s, e, get(t)),
                _ => Err("entity offsets are not integers".to_string()),
            }
        };
        let (gene, disease) = match span(3, 4, 5).and_then(|g| span(7, 8, 9).map(|d| (g, d))) {
            Ok(x) => x,
            Err(problem) => {
                c.quarantine("euadr", path, Some(line), None, &problem, Some(&raw));
                continue;
            }
        };
        let Ok(num) = get(2).parse::<i64>() else {
            c.quarantine("euadr", path, Some(line), None, "NUM_SENTENCE is not an integer", Some(&raw));
            continue;
        };
        let slot = docs.entry(get(1).to_string()).or_default().entry(num).or_insert_with(|| (sentence.clone(), vec![]));
        if slot.0 != sentence {
            c.quarantine(
                "euadr",
                path,
                Some(line),
                None,
                "two different sentences share one PMID and NUM_SENTENCE",
                Some(&raw),
            );
            continue;
        }
        slot.1.push(GoldGeneDisease {
            dataset: "euadr".into(),
            doc_id: format!("euadr:{}", get(1)),
            sent_id: None,
            split: String::new(),
            text: sentence,
            gene,
            gene_id: None,
            disease,
            disease_id: None,
            label,
            relation: get(0).to_string(),
        });
    }
    for (pmid, sentences) in docs {
        let split = c.split("euadr", &pmid);
        let (text, spans) = join_sentences(sentences.values().map(|(s, _)| s.as_str()));
        let doc_id = format!("euadr:{pmid}");
        let doc =
            Doc { doc_id, source: "euadr".into(), split: split.into(), title: None, text, sentences: Some(spans) };
        if c.add_doc(doc, path, None) {
            for (sent_id, (_, rows)) in sentences.into_values().enumerate() {
                c.gold_gene_disease.extend(rows.into_iter().map(|r| GoldGeneDisease {
                    sent_id: Some(sent_id),
                    split: split.into(),
                    ..r
                }));
            }
        }
    }
    Ok(())
}

/// A BRAT directory (`X.txt` + `X.ann`), e.g. MEDDOCAN. Text-bound annotations
/// (`T1<TAB>TYPE start end<TAB>text`, char offsets into `X.txt`) become `gold_phi` rows; a
/// discontinuous span (`start end;start end`) is kept from its first start to its last end
/// only if that slice equals its text, else quarantined. A `.txt` without `.ann` is quarantined.
pub fn read_brat_dir(dir: &Path, dataset: &str, split: &str, c: &mut Collector) -> Result<()> {
    let mut txts: Vec<_> = std::fs::read_dir(dir)
        .with_path(dir)?
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|e| e == "txt"))
        .collect();
    txts.sort();
    if txts.is_empty() {
        return Err(Error::input(dir, "no .txt files"));
    }
    for txt in txts {
        let stem = txt.file_stem().and_then(|s| s.to_str()).unwrap_or_default().to_string();
        let doc_id = format!("{dataset}:{stem}");
        let ann_path = txt.with_extension("ann");
        let (text, ann) = match (super::read_utf8(&txt), super::read_utf8(&ann_path)) {
            (Ok(t), Ok(a)) => (t, a),
            (Err(e), _) | (_, Err(e)) => {
                c.quarantine(dataset, &txt, None, Some(&doc_id), &e.to_string(), None);
                continue;
            }
        };
        let mut spans = Vec::new();
        for (i, line) in ann.lines().enumerate().filter(|(_, l)| l.starts_with('T')) {
            let f: Vec<&str> = line.splitn(3, '\t').collect();
            let parsed = (|| {
                let [_, ty_offsets, span_text] = f[..] else {
                    return Err("expected 3 tab-separated fields".to_string());
                };
                let (ty, offsets) = ty_offsets.split_once(' ').ok_or("no offsets after the type")?;
                let nums: Vec<usize> = offsets
                    .split([' ', ';'])
                    .map(|n| n.parse().map_err(|_| format!("offset '{n}' is not an integer")))
                    .collect::<std::result::Result<_, _>>()?;
                let (s, e) = (nums[0], *nums.last().expect("split yields at least one item"));
                Ok((ty.to_string(), check_span(&text, s, e, span_text)?))
            })();
            match parsed {
                Ok((phi_type, span)) => spans.push(GoldPhi {
                    dataset: dataset.into(),
                    doc_id: doc_id.clone(),
                    split: split.into(),
                    span,
                    phi_type,
                }),
                Err(problem) => c.quarantine(dataset, &ann_path, Some(i + 1), Some(&doc_id), &problem, Some(line)),
            }
        }
        let doc = Doc { doc_id, source: dataset.into(), split: split.into(), title: None, text, sentences: None };
        if c.add_doc(doc, &txt, None) {
            c.gold_phi.extend(spans);
        }
    }
    Ok(())
}

/// presidio's synthetic JSON: a list of `{full_text, spans: [{entity_type, entity_value,
/// start_position, end_position}]}`; record `i` becomes document `presidio:i`, split by hash.
pub fn read_presidio(path: &Path, c: &mut Collector) -> Result<()> {
    let content = super::read_utf8(path)?;
    let records: Vec<serde_json::Value> =
        serde_json::from_str(&content).map_err(|e| Error::input(path, format!("not a JSON list of records: {e}")))?;
    for (i, r) in records.iter().enumerate() {
        let doc_id = format!("presidio:{i}");
        let row = Some(i + 1);
        let Some(text) = r.get("full_text").and_then(|t| t.as_str()) else {
            c.quarantine(
                "presidio",
                path,
                row,
                Some(&doc_id),
                "record has no string 'full_text'",
                Some(&r.to_string()),
            );
            continue;
        };
        let split = c.split("presidio", &i.to_string());
        let mut spans = Vec::new();
        let mut bad = None;
        for s in r.get("spans").and_then(|s| s.as_array()).map(Vec::as_slice).unwrap_or(&[]) {
            let field = |k: &str| s.get(k).and_then(|v| v.as_u64()).map(|v| v as usize);
            let value = s.get("entity_value").and_then(|v| v.as_str()).unwrap_or_default();
            let ty = s.get("entity_type").and_then(|v| v.as_str()).unwrap_or_default();
            match (field("start_position"), field("end_position")) {
                (Some(a), Some(b)) => match check_span(text, a, b, value) {
                    Ok(span) => spans.push(GoldPhi {
                        dataset: "presidio".into(),
                        doc_id: doc_id.clone(),
                        split: split.into(),
                        span,
                        phi_type: ty.to_string(),
                    }),
                    Err(p) => bad = Some(p),
                },
                _ => bad = Some("span without integer start_position/end_position".into()),
            }
        }
        if let Some(problem) = bad {
            c.quarantine("presidio", path, row, Some(&doc_id), &problem, Some(&r.to_string()));
            continue;
        }
        let doc = Doc {
            doc_id,
            source: "presidio".into(),
            split: split.into(),
            title: None,
            text: text.to_string(),
            sentences: None,
        };
        if c.add_doc(doc, path, row) {
            c.gold_phi.extend(spans);
        }
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn brat_spans_and_bad_offsets() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a.txt"), "Paciente: José Pérez, 45 años.").unwrap();
        std::fs::write(
            dir.path().join("a.ann"),
            "T1\tNOMBRE_SUJETO_ASISTENCIA 10 20\tJosé Pérez\nT2\tEDAD_SUJETO_ASISTENCIA 22 29\t45 años\nT3\tFECHAS 0 3\tXYZ\n",
        )
        .unwrap();
        std::fs::write(dir.path().join("b.txt"), "no annotations file").unwrap();
        let mut c = Collector::new(0.2);
        read_brat_dir(dir.path(), "meddocan", "train", &mut c).unwrap();
        assert_eq!(c.docs.len(), 1);
        assert_eq!(c.gold_phi.len(), 2);
        assert_eq!(c.gold_phi[1].span.text, "45 años");
        assert_eq!(c.quarantine.len(), 2, "{:?}", c.quarantine);
        assert!(c.quarantine[0].reason.contains("'Pac'"), "{}", c.quarantine[0].reason);
        assert_eq!(c.quarantine[0].row, Some(3));
    }
}
