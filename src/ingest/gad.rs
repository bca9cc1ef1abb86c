//! GAD (Genetic Association Database), unmasked, with the BLURB train/dev split.
//!
//! `GAD_merged_samples_mesh.csv` has the gene and disease mentions with `start#end` char
//! offsets into `raw_sentence`; labels Y/N mean an association was studied (label 1), F that
//! it was not (label 0). BLURB's `train.tsv`/`dev.tsv` hold the same sentences with the
//! mentions masked as `@GENE$`/`@DISEASE$`: we mask each row the same way and look it up, so our
//! split is BLURB's. A sentence is `dev` if any of its rows is in BLURB dev (so no dev text is
//! in train), `train` if found only in train, and hash-split if BLURB does not have it.
//! Each distinct sentence is one document (`gad:<sha256 prefix>`), since GAD has no PMIDs.

use std::collections::HashMap;
use std::path::Path;

use super::collect::{Collector, Doc, GoldGeneDisease, check_span};
use super::split::sha256_hex;
use crate::error::{Error, Result};
use crate::text::sentences::Span;

const COLUMNS: [&str; 7] = [
    "associationType",
    "geneId",
    "gene_mention",
    "GENE_ENTITY_OFFSET",
    "disease_mention",
    "DISEASE_ENTITY_OFFSET",
    "raw_sentence",
];

/// Read GAD from `original` (the unmasked CSV), taking splits from the BLURB files in `blurb_dir`.
pub fn read(original: &Path, blurb_dir: &Path, c: &mut Collector) -> Result<()> {
    let blurb = read_blurb(blurb_dir)?;
    let content = super::read_utf8(original)?;
    let mut reader = csv::ReaderBuilder::new().from_reader(content.as_bytes());
    let headers = reader.headers().map_err(|e| Error::input(original, format!("bad CSV header: {e}")))?.clone();
    let col = |name: &str| -> Result<usize> {
        headers.iter().position(|h| h == name).ok_or_else(|| Error::input(original, format!("missing column '{name}'")))
    };
    let idx: Vec<usize> = COLUMNS.iter().map(|n| col(n)).collect::<Result<_>>()?;
    let disease_id_col = headers.iter().position(|h| h == "diseaseId");

    // (sentence -> rows), kept in input order.
    let mut by_sentence: Vec<(String, Vec<GoldGeneDisease>, bool, bool)> = Vec::new();
    let mut position: HashMap<String, usize> = HashMap::new();
    for (i, record) in reader.records().enumerate() {
        let line = i + 2;
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                c.quarantine("gad", original, Some(line), None, &format!("bad CSV row: {e}"), None);
                continue;
            }
        };
        let get = |k: usize| record.get(idx[k]).unwrap_or("");
        let sentence = get(6).to_string();
        let raw = Some(record.iter().collect::<Vec<_>>().join(","));
        let label = match get(0) {
            "Y" | "N" => 1,
            "F" => 0,
            other => {
                let reason = format!("unknown associationType '{other}' (expected Y, N or F)");
                c.quarantine("gad", original, Some(line), None, &reason, raw.as_deref());
                continue;
            }
        };
        let spans = parse_offsets(get(3))
            .and_then(|(s, e)| check_span(&sentence, s, e, get(2)))
            .and_then(|g| parse_offsets(get(5)).and_then(|(s, e)| check_span(&sentence, s, e, get(4))).map(|d| (g, d)));
        let (gene, disease) = match spans {
            Ok(x) => x,
            Err(problem) => {
                c.quarantine("gad", original, Some(line), None, &problem, raw.as_deref());
                continue;
            }
        };
        let masked = mask(&sentence, &gene.clone(), &disease.clone());
        let splits = blurb.get(&masked).map(Vec::as_slice).unwrap_or(&[]);
        let slot = *position.entry(sentence.clone()).or_insert_with(|| {
            by_sentence.push((sentence.clone(), Vec::new(), false, false));
            by_sentence.len() - 1
        });
        let entry = &mut by_sentence[slot];
        entry.2 |= splits.contains(&"dev");
        entry.3 |= splits.contains(&"train");
        let disease_id = disease_id_col.and_then(|k| record.get(k)).filter(|s| !s.is_empty()).map(str::to_string);
        entry.1.push(GoldGeneDisease {
            dataset: "gad".into(),
            doc_id: String::new(),
            sent_id: Some(0),
            split: String::new(),
            text: sentence.clone(),
            gene,
            gene_id: Some(get(1).to_string()).filter(|s| !s.is_empty()),
            disease,
            disease_id,
            label,
            relation: get(0).to_string(),
        });
    }
    for (sentence, rows, in_dev, in_train) in by_sentence {
        let doc_id = format!("gad:{}", &sha256_hex(&sentence)[..16]);
        let split = match (in_dev, in_train) {
            (true, _) => "dev",
            (false, true) => "train",
            _ => c.split("gad", &doc_id),
        };
        let n = sentence.chars().count();
        let doc = Doc {
            doc_id: doc_id.clone(),
            source: "gad".into(),
            split: split.into(),
            title: None,
            text: sentence,
            sentences: Some(vec![Span { start: 0, end: n }]),
        };
        if c.add_doc(doc, original, None) {
            c.gold_gene_disease.extend(rows.into_iter().map(|r| GoldGeneDisease {
                doc_id: doc_id.clone(),
                split: split.into(),
                ..r
            }));
        }
    }
    Ok(())
}

/// `"80#84"` -> (80, 84).
fn parse_offsets(s: &str) -> std::result::Result<(usize, usize), String> {
    let (a, b) = s.split_once('#').ok_or_else(|| format!("offsets '{s}' are not 'start#end'"))?;
    match (a.trim().parse(), b.trim().parse()) {
        (Ok(a), Ok(b)) => Ok((a, b)),
        _ => Err(format!("offsets '{s}' are not integers")),
    }
}

/// The sentence with the gene and disease replaced by BLURB's `@GENE$` / `@DISEASE$`.
fn mask(sentence: &str, gene: &super::collect::Mention, disease: &super::collect::Mention) -> String {
    let mut parts = [(gene.start, gene.end, "@GENE$"), (disease.start, disease.end, "@DISEASE$")];
    parts.sort();
    let chars: Vec<char> = sentence.chars().collect();
    let mut out: String = chars[..parts[0].0].iter().collect();
    out.push_str(parts[0].2);
    out.extend(&chars[parts[0].1.min(parts[1].0)..parts[1].0]);
    out.push_str(parts[1].2);
    out.extend(&chars[parts[1].1..]);
    out
}

/// Masked sentence -> the BLURB splits it appears in.
fn read_blurb(dir: &Path) -> Result<HashMap<String, Vec<&'static str>>> {
    let mut map: HashMap<String, Vec<&'static str>> = HashMap::new();
    for (file, split) in [("train.tsv", "train"), ("dev.tsv", "dev")] {
        let path = dir.join(file);
        let content = super::read_utf8(&path)?;
        for (i, line) in content.lines().enumerate().skip(1) {
            let f: Vec<&str> = line.split('\t').collect();
            if f.len() != 3 {
                return Err(Error::input_row(
                    &path,
                    i + 1,
                    format!("expected 3 tab-separated fields, got {}", f.len()),
                ));
            }
            map.entry(f[1].to_string()).or_default().push(split);
        }
    }
    Ok(map)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::ingest::collect::Mention;

    #[test]
    fn masks_like_blurb() {
        let s = "The PALB2 mutation affects breast cancer risk.";
        let g = Mention { text: "PALB2".into(), start: 4, end: 9 };
        let d = Mention { text: "breast cancer".into(), start: 27, end: 40 };
        assert_eq!(mask(s, &g, &d), "The @GENE$ mutation affects @DISEASE$ risk.");
        assert_eq!(parse_offsets("80#84"), Ok((80, 84)));
        assert!(parse_offsets("80-84").is_err());
    }
}
