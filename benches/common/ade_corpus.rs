//! Real sentences for the benches: the ADE corpus under the shared data directory, found as
//! `make` finds it (`../shared/data`, or `BIODISTILL_INGEST_DATA_DIR`).

use std::path::{Path, PathBuf};

/// The ADE corpus's directory.
pub fn dir() -> PathBuf {
    std::env::var_os("BIODISTILL_INGEST_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data"))
        .join("ade_corpus_v2")
}

/// `n` real biomedical sentences, the same on every run: the ADE corpus's first distinct
/// sentences with an adverse effect (`DRUG-AE.rel`) alternating with its first without
/// (`ADE-NEG.txt`), 5 to ~100 words, as extraction and labeling meet them. `None` without the
/// corpus.
pub fn real_sentences(n: usize) -> Option<Vec<String>> {
    let dir = dir();
    let read = |file: &str, text: fn(&str) -> Option<&str>| -> Option<Vec<String>> {
        let content = std::fs::read_to_string(dir.join(file)).ok()?;
        let mut seen = std::collections::HashSet::new();
        Some(content.lines().filter_map(text).filter(|t| seen.insert(t.to_string())).map(String::from).collect())
    };
    let positive = read("DRUG-AE.rel", |line| line.split('|').nth(1))?;
    let negative = read("ADE-NEG.txt", |line| line.splitn(3, ' ').nth(2))?;
    Some(positive.into_iter().zip(negative).flat_map(|(p, q)| [p, q]).take(n).collect())
}
