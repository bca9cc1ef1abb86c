//! The in-memory tables an ingest builds before writing them.

use std::collections::HashSet;
use std::path::Path;

use crate::error::{Error, Result};
use crate::text::sentences::Span;

/// A document. `sentences` is `Some` for corpora that come pre-split (ADE, GAD, EU-ADR), whose
/// gold offsets refer to those exact sentences; `None` means "run the sentence splitter".
#[derive(Debug, Clone)]
pub struct Doc {
    pub doc_id: String,
    pub source: String,
    pub split: String,
    pub title: Option<String>,
    pub text: String,
    pub sentences: Option<Vec<Span>>,
}

/// A mention: text and `[start, end)` char offsets into the row's `text`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mention {
    pub text: String,
    pub start: usize,
    pub end: usize,
}

/// A gold (first, second) pair in one sentence (`gold_ade`, `gold_drug_dose`).
#[derive(Debug, Clone)]
pub struct GoldPair {
    pub doc_id: String,
    pub sent_id: usize,
    pub split: String,
    pub text: String,
    pub first: Mention,
    pub second: Mention,
}

/// A gold gene–disease row.
#[derive(Debug, Clone)]
pub struct GoldGeneDisease {
    pub dataset: String,
    pub doc_id: String,
    pub sent_id: Option<usize>,
    pub split: String,
    pub text: String,
    pub gene: Mention,
    pub gene_id: Option<String>,
    pub disease: Mention,
    pub disease_id: Option<String>,
    pub label: i8,
    pub relation: String,
}

/// A gold PHI span; offsets index the document text.
#[derive(Debug, Clone)]
pub struct GoldPhi {
    pub dataset: String,
    pub doc_id: String,
    pub split: String,
    pub span: Mention,
    pub phi_type: String,
}

/// A row that could not be ingested, and why.
#[derive(Debug, Clone)]
pub struct Quarantined {
    pub source: String,
    pub file: String,
    pub row: Option<usize>,
    pub doc_id: Option<String>,
    pub reason: String,
    pub raw: Option<String>,
}

/// Everything an ingest collects, in input order.
#[derive(Debug, Default)]
pub struct Collector {
    pub dev_fraction: f64,
    pub docs: Vec<Doc>,
    doc_ids: HashSet<String>,
    pub gold_ade: Vec<GoldPair>,
    pub gold_drug_dose: Vec<GoldPair>,
    pub gold_gene_disease: Vec<GoldGeneDisease>,
    pub gold_phi: Vec<GoldPhi>,
    pub quarantine: Vec<Quarantined>,
    pub failed_files: Vec<String>,
}

impl Collector {
    pub fn new(dev_fraction: f64) -> Self {
        Self { dev_fraction, ..Default::default() }
    }

    /// The split of a gold-set group (PMID, document id) that has no split of its own.
    pub fn split(&self, dataset: &str, key: &str) -> &'static str {
        super::split_for(dataset, key, self.dev_fraction)
    }

    /// Add a document; a duplicate id is quarantined (the first one wins) and `false` returned.
    pub fn add_doc(&mut self, doc: Doc, file: &Path, row: Option<usize>) -> bool {
        if doc.text.trim().is_empty() {
            self.quarantine(&doc.source, file, row, Some(&doc.doc_id), "empty text", None);
            return false;
        }
        if !self.doc_ids.insert(doc.doc_id.clone()) {
            let reason = format!("duplicate document id '{}'", doc.doc_id);
            self.quarantine(&doc.source, file, row, Some(&doc.doc_id), &reason, Some(&doc.text));
            return false;
        }
        self.docs.push(doc);
        true
    }

    /// Whether a document id has been added.
    pub fn has_doc(&self, doc_id: &str) -> bool {
        self.doc_ids.contains(doc_id)
    }

    /// Record a bad row.
    pub fn quarantine(
        &mut self,
        source: &str,
        file: &Path,
        row: Option<usize>,
        doc_id: Option<&str>,
        reason: &str,
        raw: Option<&str>,
    ) {
        tracing::warn!(
            "{}{}: {reason} (quarantined)",
            file.display(),
            row.map(|r| format!(":{r}")).unwrap_or_default()
        );
        self.quarantine.push(Quarantined {
            source: source.to_string(),
            file: file.display().to_string(),
            row,
            doc_id: doc_id.map(str::to_string),
            reason: reason.to_string(),
            raw: raw.map(str::to_string),
        });
    }

    /// Record (and log) a file that failed as a whole; it also goes to `quarantine` so it is
    /// queryable.
    pub fn fail_file(&mut self, err: Error) {
        tracing::error!("{err}");
        let (file, row) = match &err {
            Error::Input { file, row, .. } => (file.display().to_string(), *row),
            Error::Io { path, .. } => (path.display().to_string(), None),
            _ => (String::new(), None),
        };
        self.quarantine.push(Quarantined {
            source: String::new(),
            file,
            row,
            doc_id: None,
            reason: format!("file not ingested: {err}"),
            raw: None,
        });
        self.failed_files.push(err.to_string());
    }

    /// Run `read` on one file; if it fails, record the failure and go on. A reader that fails
    /// part-way keeps nothing it collected from that file.
    pub fn try_file(&mut self, path: &Path, read: impl FnOnce(&Path, &mut Collector) -> Result<()>) {
        let mark = self.mark();
        if let Err(e) = read(path, self) {
            self.rollback(mark);
            self.fail_file(e);
        }
    }

    fn mark(&self) -> [usize; 6] {
        [
            self.docs.len(),
            self.gold_ade.len(),
            self.gold_drug_dose.len(),
            self.gold_gene_disease.len(),
            self.gold_phi.len(),
            self.quarantine.len(),
        ]
    }

    fn rollback(&mut self, m: [usize; 6]) {
        for d in self.docs.drain(m[0]..) {
            self.doc_ids.remove(&d.doc_id);
        }
        self.gold_ade.truncate(m[1]);
        self.gold_drug_dose.truncate(m[2]);
        self.gold_gene_disease.truncate(m[3]);
        self.gold_phi.truncate(m[4]);
        self.quarantine.truncate(m[5]);
    }
}

/// Join pre-split sentences into one document text, one sentence per line, returning the text
/// and each sentence's char span in it.
pub fn join_sentences<'a>(sentences: impl IntoIterator<Item = &'a str>) -> (String, Vec<Span>) {
    let mut text = String::new();
    let mut spans = Vec::new();
    let mut pos = 0;
    for s in sentences {
        if !text.is_empty() {
            text.push('\n');
            pos += 1;
        }
        let n = s.chars().count();
        text.push_str(s);
        spans.push(Span { start: pos, end: pos + n });
        pos += n;
    }
    (text, spans)
}

/// Check that `text[start..end]` (chars) is `expected`; the error says what is there instead.
pub fn check_span(text: &str, start: usize, end: usize, expected: &str) -> std::result::Result<Mention, String> {
    match crate::text::char_slice(text, start, end) {
        Some(s) if s == expected => Ok(Mention { text: expected.to_string(), start, end }),
        Some(s) => Err(format!("offsets {start}..{end} give '{s}', not '{expected}'")),
        None => Err(format!("offsets {start}..{end} out of range for a text of {} chars", text.chars().count())),
    }
}
