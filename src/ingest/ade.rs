//! ADE-Corpus-V2 (Gurulingappa et al. 2012): `DRUG-AE.rel`, `DRUG-DOSE.rel`, `ADE-NEG.txt`.
//!
//! The corpus ships sentences, not abstracts, so each PMID becomes one document whose text is
//! its distinct sentences, one per line, in order of first appearance (AE rows, then negative
//! sentences, then dose rows). Sentences are taken as given, never re-split, so gold offsets
//! index exactly the corpus's sentences.
//!
//! **Offsets.** The `.rel` offsets are document-level (into a `PMID\n\nTitle\n\nAbstract`
//! string that is not shipped) and do not index the sentence. We find each span by string
//! search. When a span's text occurs more than once in its sentence (effect ~2%, drug ~8% of
//! rows), we use what the document offsets still tell us: the drug and the effect are in the
//! same sentence, so the distance between them in the document equals their distance in the
//! sentence. We pick the (drug, effect) occurrence pair whose distance is closest to the
//! document distance, and among equals the earliest. On this corpus that rule resolves all but
//! 4 of 5,359 rows to a single exact match. A span not found at all is quarantined.

use std::collections::{HashMap, HashSet};
use std::path::Path;

use super::collect::{Collector, Doc, GoldPair, Mention, join_sentences};
use crate::error::{Error, Result};

/// A `.rel` row: (pmid, sentence, second text, second doc begin, drug text, drug doc begin).
struct RelRow {
    line: usize,
    pmid: String,
    sentence: String,
    second: String,
    second_begin: i64,
    drug: String,
    drug_begin: i64,
}

/// Read the three ADE files under `dir` (each file's failure is recorded separately).
pub fn read(dir: &Path, c: &mut Collector) {
    let ae = dir.join("DRUG-AE.rel");
    let neg = dir.join("ADE-NEG.txt");
    let dose = dir.join("DRUG-DOSE.rel");
    let mut ae_rows = Vec::new();
    let mut neg_rows = Vec::new();
    let mut dose_rows = Vec::new();
    c.try_file(&ae, |p, c| read_rel(p, c).map(|r| ae_rows = r));
    c.try_file(&neg, |p, c| read_neg(p, c).map(|r| neg_rows = r));
    c.try_file(&dose, |p, c| read_rel(p, c).map(|r| dose_rows = r));

    // Documents: one per PMID, its distinct sentences in order of first appearance.
    let mut order: Vec<String> = Vec::new();
    let mut sentences: HashMap<String, Vec<String>> = HashMap::new();
    let mut seen: HashSet<(String, String)> = HashSet::new();
    let all = ae_rows.iter().map(|r| (&r.pmid, &r.sentence)).chain(neg_rows.iter().map(|(_, p, s)| (p, s)));
    for (pmid, sentence) in all.chain(dose_rows.iter().map(|r| (&r.pmid, &r.sentence))) {
        if seen.insert((pmid.clone(), sentence.clone())) {
            if !sentences.contains_key(pmid) {
                order.push(pmid.clone());
            }
            sentences.entry(pmid.clone()).or_default().push(sentence.clone());
        }
    }
    let mut sent_ids: HashMap<(String, String), usize> = HashMap::new();
    for pmid in &order {
        let sents = &sentences[pmid];
        for (i, s) in sents.iter().enumerate() {
            sent_ids.insert((pmid.clone(), s.clone()), i);
        }
        let (text, spans) = join_sentences(sents.iter().map(String::as_str));
        let doc = Doc {
            doc_id: format!("ade:{pmid}"),
            source: "ade_corpus_v2".into(),
            split: c.split("ade", pmid).to_string(),
            title: None,
            text,
            sentences: Some(spans),
        };
        c.add_doc(doc, dir, None);
    }

    for (rows, file, is_dose) in [(&ae_rows, &ae, false), (&dose_rows, &dose, true)] {
        let mut distinct = HashSet::new();
        for r in rows {
            // The same (sentence, drug, second) can be listed twice (a sentence repeated in
            // the abstract); it is one gold pair.
            if !distinct.insert((&r.pmid, &r.sentence, &r.drug, &r.second)) {
                continue;
            }
            let doc_id = format!("ade:{}", r.pmid);
            let Some((drug, second)) = resolve_pair(&r.sentence, &r.drug, r.drug_begin, &r.second, r.second_begin)
            else {
                let what = if find_all(&r.sentence, &r.drug).is_empty() { &r.drug } else { &r.second };
                let reason = format!("'{what}' does not occur in the sentence");
                c.quarantine("ade_corpus_v2", file, Some(r.line), Some(&doc_id), &reason, Some(&r.sentence));
                continue;
            };
            let pair = GoldPair {
                sent_id: sent_ids[&(r.pmid.clone(), r.sentence.clone())],
                split: c.split("ade", &r.pmid).to_string(),
                doc_id,
                text: r.sentence.clone(),
                first: drug,
                second,
            };
            if is_dose { c.gold_drug_dose.push(pair) } else { c.gold_ade.push(pair) }
        }
    }
}

/// Parse a `PMID|sentence|text|begin|end|drug|begin|end` file.
fn read_rel(path: &Path, c: &mut Collector) -> Result<Vec<RelRow>> {
    let content = super::read_utf8(path)?;
    let mut rows = Vec::new();
    for (i, line) in content.lines().enumerate() {
        let f: Vec<&str> = line.split('|').collect();
        let ints = f.len() == 8 && [3, 4, 6, 7].iter().all(|&k| f[k].parse::<i64>().is_ok());
        if !ints {
            let reason = format!("expected 8 '|'-separated fields with integer offsets, got {} fields", f.len());
            c.quarantine("ade_corpus_v2", path, Some(i + 1), None, &reason, Some(line));
            continue;
        }
        rows.push(RelRow {
            line: i + 1,
            pmid: f[0].to_string(),
            sentence: f[1].to_string(),
            second: f[2].to_string(),
            second_begin: f[3].parse().expect("checked above"),
            drug: f[5].to_string(),
            drug_begin: f[6].parse().expect("checked above"),
        });
    }
    if rows.is_empty() {
        return Err(Error::input(path, "no rows"));
    }
    Ok(rows)
}

/// Parse `ADE-NEG.txt`: `PMID NEG sentence`. Returns (line, pmid, sentence).
fn read_neg(path: &Path, c: &mut Collector) -> Result<Vec<(usize, String, String)>> {
    let content = super::read_utf8(path)?;
    let mut rows = Vec::new();
    for (i, line) in content.lines().enumerate() {
        match line.splitn(3, ' ').collect::<Vec<_>>()[..] {
            [pmid, "NEG", sentence] if !sentence.trim().is_empty() => {
                rows.push((i + 1, pmid.to_string(), sentence.to_string()))
            }
            _ => c.quarantine("ade_corpus_v2", path, Some(i + 1), None, "expected 'PMID NEG sentence'", Some(line)),
        }
    }
    Ok(rows)
}

/// Char offsets of every occurrence of `needle` in `hay` (overlapping occurrences included).
fn find_all(hay: &str, needle: &str) -> Vec<usize> {
    if needle.is_empty() {
        return Vec::new();
    }
    let idx = crate::text::CharIndex::new(hay);
    (0..hay.len())
        .filter(|&b| hay.is_char_boundary(b) && hay[b..].starts_with(needle))
        .filter_map(|b| idx.char(b))
        .collect()
}

/// Locate a (drug, other) pair in `sentence` by the rule in the module docs.
pub fn resolve_pair(
    sentence: &str,
    drug: &str,
    drug_doc: i64,
    other: &str,
    other_doc: i64,
) -> Option<(Mention, Mention)> {
    let drugs = find_all(sentence, drug);
    let others = find_all(sentence, other);
    let want = other_doc - drug_doc;
    let (d, o) = drugs
        .iter()
        .flat_map(|&d| others.iter().map(move |&o| (d, o)))
        .min_by_key(|&(d, o)| ((o as i64 - d as i64 - want).abs(), d + o))?;
    let mention =
        |text: &str, start: usize| Mention { text: text.to_string(), start, end: start + text.chars().count() };
    Some((mention(drug, d), mention(other, o)))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn repeated_drug_is_resolved_by_document_distance() {
        // "aspirin" occurs twice; the document offsets put the effect 22 chars after the drug,
        // which matches the second occurrence.
        let s = "aspirin was stopped; aspirin caused rash and rash.";
        let (d, e) = resolve_pair(s, "aspirin", 1000, "rash", 1000 + 15).unwrap();
        assert_eq!((d.start, e.start), (21, 36));
        assert_eq!(crate::text::char_slice(s, d.start, d.end), Some("aspirin"));
        assert_eq!(crate::text::char_slice(s, e.start, e.end), Some("rash"));
    }

    #[test]
    fn no_exact_distance_takes_the_closest_then_the_earliest() {
        let s = "rash after aspirin, rash again";
        let (d, e) = resolve_pair(s, "aspirin", 0, "rash", -5).unwrap();
        // Distances available: -11 and +9; -11 is closer to -5 than +9 is.
        assert_eq!((d.start, e.start), (11, 0));
        assert!(resolve_pair(s, "ibuprofen", 0, "rash", 5).is_none());
    }

    #[test]
    fn offsets_are_chars_in_non_ascii_sentences() {
        let s = "Tratado con β-lactámico: exantema por β-lactámico.";
        let (d, e) = resolve_pair(s, "β-lactámico", 100, "exantema", 113).unwrap();
        assert_eq!(d.start, 12);
        assert_eq!(crate::text::char_slice(s, e.start, e.end), Some("exantema"));
    }
}
