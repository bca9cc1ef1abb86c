//! Which sentences each task sends to the teacher.
//!
//! Deliberately simple and replaceable: sentences whose document is in one of the configured
//! splits (and, per task, sources), in a deterministic pseudo-random order (sha256 of
//! `doc_id` and `sent_id`), the first `sample` of them. The order does not depend on which
//! other documents exist, so growing the corpus keeps earlier picks (and their cache entries).

use std::collections::{BTreeMap, HashMap};

use arrow::array::Array;
use sha2::{Digest, Sha256};

use super::config::{LabelConfig, Task};
use crate::error::{Error, Result};
use crate::run_dir::RunDir;
use crate::schema::{split, table};
use crate::train::columns::{TableStream, read_all};

/// One sentence to label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sentence {
    pub doc_id: String,
    pub sent_id: i32,
    pub text: String,
}

/// `doc_id -> (source, split)` from the `documents` table.
fn document_info(run_dir: &RunDir) -> Result<HashMap<String, (String, String)>> {
    let mut info = HashMap::new();
    for cols in read_all(run_dir, table::DOCUMENTS)? {
        let (ids, sources, splits) = (cols.str("doc_id")?, cols.str("source")?, cols.str("split")?);
        for i in 0..cols.len() {
            info.insert(ids.value(i).to_string(), (sources.value(i).to_string(), splits.value(i).to_string()));
        }
    }
    Ok(info)
}

/// Every sentence of the run directory with its document's (source, split).
fn all_sentences(run_dir: &RunDir) -> Result<Vec<(Sentence, String, String)>> {
    for name in [table::DOCUMENTS, table::SENTENCES] {
        if !run_dir.has_table(name) {
            return Err(Error::input(run_dir.table_path(name), "table missing (run `biodistill ingest` first)"));
        }
    }
    let documents = document_info(run_dir)?;
    let mut out = Vec::new();
    for cols in TableStream::open(run_dir, table::SENTENCES, 8192)? {
        let cols = cols?;
        let (ids, texts, sent_ids) = (cols.str("doc_id")?, cols.str("text")?, cols.i32("sent_id")?);
        for i in 0..cols.len() {
            if sent_ids.is_null(i) || texts.value(i).trim().is_empty() {
                continue;
            }
            let doc_id = ids.value(i);
            let (source, split) = documents.get(doc_id).cloned().unwrap_or_default();
            let sentence =
                Sentence { doc_id: doc_id.to_string(), sent_id: sent_ids.value(i), text: texts.value(i).to_string() };
            out.push((sentence, source, split));
        }
    }
    Ok(out)
}

fn order_key(s: &Sentence) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(s.doc_id.as_bytes());
    hasher.update([0]);
    hasher.update(s.sent_id.to_le_bytes());
    hasher.finalize().into()
}

/// The sentences each configured task will label: `sample` training sentences from `splits`
/// (never `dev`), then `dev_sample` gold dev sentences from `dev_sources` to score the teacher.
pub fn select(cfg: &LabelConfig, run_dir: &RunDir) -> Result<BTreeMap<Task, Vec<Sentence>>> {
    if cfg.splits.iter().any(|s| s == split::DEV) {
        return Err(Error::Config(
            "label.splits must not include \"dev\": dev text is labeled only to score the teacher (label.dev_sample)"
                .into(),
        ));
    }
    let mut sentences = all_sentences(run_dir)?;
    sentences.sort_by_cached_key(|(s, _, _)| order_key(s));
    let mut picked = BTreeMap::new();
    for &task in &cfg.tasks {
        let sources = cfg.sources.get(&task);
        let train = sentences
            .iter()
            .filter(|(_, source, split)| {
                cfg.splits.iter().any(|s| s == split) && sources.is_none_or(|allowed| allowed.contains(source))
            })
            .take(cfg.sample.filter(|&n| n > 0).unwrap_or(usize::MAX));
        let dev_sources = cfg.dev_sources.get(&task);
        let dev = sentences
            .iter()
            .filter(|(_, source, split)| split == split::DEV && dev_sources.is_some_and(|d| d.contains(source)))
            .take(cfg.dev_sample);
        picked.insert(task, train.chain(dev).map(|(s, _, _)| s.clone()).collect());
    }
    Ok(picked)
}
