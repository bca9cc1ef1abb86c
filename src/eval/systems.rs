//! The systems compared and their predictions: the teacher's labels from `teacher_calls` and
//! `teacher_labels`, the student's and the supervised reference's extracted tables.
//!
//! Predicted pairs are converted to sentence offsets and predicted PHI spans to document
//! offsets, the coordinates of the gold they are compared with. A missing table is `Ok(None)`.

use std::collections::{HashMap, HashSet};

use arrow::array::{Array, Int32Array};

use super::load::{SentKey, Sentences, read_opt};
use super::metrics::Mention;
use crate::columns::{TableStream, opt_i32, opt_str};
use crate::error::Result;
use crate::extract::SUPERVISED_REFERENCE_SUFFIX;
use crate::run_dir::RunDir;
use crate::schema::table;

/// The systems compared, in report order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum System {
    Teacher,
    Student,
    SupervisedReference,
}

impl System {
    pub const ALL: [System; 3] = [System::Teacher, System::Student, System::SupervisedReference];

    pub fn as_str(self) -> &'static str {
        match self {
            System::Teacher => "teacher",
            System::Student => "student",
            System::SupervisedReference => "supervised_reference",
        }
    }

    /// The output table of this system for the student table `base` (`ade_relations`, …).
    pub fn table(self, base: &str) -> String {
        match self {
            System::SupervisedReference => format!("{base}{SUPERVISED_REFERENCE_SUFFIX}"),
            System::Teacher | System::Student => base.to_string(),
        }
    }
}

/// The sentences the teacher was asked about for one task, and those it answered (`ok`).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TeacherCalls {
    pub labeled: HashSet<SentKey>,
    pub ok: HashSet<SentKey>,
}

/// `teacher_calls` by task; `None` when the table is missing.
pub fn teacher_calls(run_dir: &RunDir) -> Result<Option<HashMap<String, TeacherCalls>>> {
    let Some(batches) = read_opt(run_dir, table::TEACHER_CALLS)? else { return Ok(None) };
    let mut out: HashMap<String, TeacherCalls> = HashMap::new();
    for c in &batches {
        let (task, doc, sent, status) = (c.str("task")?, c.str("doc_id")?, c.i32("sent_id")?, c.str("status")?);
        let pass = c.i32("pass")?;
        // The teacher as configured is pass 0; later passes only feed the agreement filter.
        for i in (0..c.len()).filter(|&i| pass.value(i) == 0) {
            let calls = out.entry(task.value(i).to_string()).or_default();
            let key = (doc.value(i).to_string(), sent.value(i));
            if status.value(i) == "ok" {
                calls.ok.insert(key.clone());
            }
            calls.labeled.insert(key);
        }
    }
    Ok(Some(out))
}

/// A `teacher_labels` row (sentence offsets).
#[derive(Debug, Clone, PartialEq)]
pub struct TeacherLabel {
    pub task: String,
    pub doc_id: String,
    pub sent_id: i32,
    pub subject_type: String,
    pub subject: Mention,
    /// Set for `kind = 'pair'` rows only.
    pub object: Option<Mention>,
}

/// `teacher_labels`; `None` when the table is missing.
pub fn teacher_labels(run_dir: &RunDir) -> Result<Option<Vec<TeacherLabel>>> {
    let Some(batches) = read_opt(run_dir, table::TEACHER_LABELS)? else { return Ok(None) };
    let mut rows = Vec::new();
    for c in &batches {
        let (task, doc, sent, kind) = (c.str("task")?, c.str("doc_id")?, c.i32("sent_id")?, c.str("kind")?);
        let (subject_type, subject, ss, se) =
            (c.str("subject_type")?, c.str("subject")?, c.i32("subject_start")?, c.i32("subject_end")?);
        let (object, os, oe) = (c.str("object")?, c.i32("object_start")?, c.i32("object_end")?);
        let pass = c.i32("pass")?;
        for i in (0..c.len()).filter(|&i| pass.value(i) == 0) {
            let span = |s: &Int32Array, e: &Int32Array, i| opt_i32(s, i).zip(opt_i32(e, i));
            let object = match (kind.value(i), opt_str(object, i)) {
                ("pair", Some(text)) => Some(Mention::new(span(os, oe, i), text)),
                _ => None,
            };
            rows.push(TeacherLabel {
                task: task.value(i).to_string(),
                doc_id: doc.value(i).to_string(),
                sent_id: sent.value(i),
                subject_type: subject_type.value(i).to_string(),
                subject: Mention::new(span(ss, se, i), subject.value(i)),
                object,
            });
        }
    }
    Ok(Some(rows))
}

/// A predicted (anchor, related) pair in sentence offsets.
#[derive(Debug, Clone, PartialEq)]
pub struct PredPair {
    pub doc_id: String,
    pub sent_id: i32,
    pub subject: Mention,
    pub object: Mention,
}

/// A predicted PHI span in document offsets (`None` when the teacher's string is unaligned).
#[derive(Debug, Clone, PartialEq)]
pub struct PredSpan {
    pub doc_id: String,
    /// The sentence the span is in (`None` when its document has no sentences loaded).
    pub sent_id: Option<i32>,
    pub mention: Mention,
    /// Upper-case type name.
    pub phi_type: String,
}

/// The teacher's pairs for `task` in the sentences it answered (`ok`).
pub fn teacher_pairs(labels: &[TeacherLabel], task: &str, ok: &HashSet<SentKey>) -> Vec<PredPair> {
    labels
        .iter()
        .filter(|l| l.task == task && ok.contains(&(l.doc_id.clone(), l.sent_id)))
        .filter_map(|l| {
            let object = l.object.clone()?;
            Some(PredPair { doc_id: l.doc_id.clone(), sent_id: l.sent_id, subject: l.subject.clone(), object })
        })
        .collect()
}

/// The teacher's PHI spans in the sentences it answered, shifted to document offsets.
pub fn teacher_phi(labels: &[TeacherLabel], ok: &HashSet<SentKey>, sentences: &Sentences) -> Vec<PredSpan> {
    labels
        .iter()
        .filter(|l| l.task == "phi" && l.object.is_none() && ok.contains(&(l.doc_id.clone(), l.sent_id)))
        .map(|l| {
            let start = sentences.start(&l.doc_id, l.sent_id);
            let span = l.subject.span.zip(start).map(|((s, e), base)| (s + base, e + base));
            PredSpan {
                doc_id: l.doc_id.clone(),
                sent_id: Some(l.sent_id),
                mention: Mention { span, norm: l.subject.norm.clone() },
                phi_type: l.subject_type.to_ascii_uppercase(),
            }
        })
        .collect()
}

/// Pairs from an extracted pair table (`ade_relations`, `gene_disease`, or their
/// supervised-reference twins), shifted to sentence offsets. Rows of documents without loaded
/// sentences are outside every gold set and dropped. `None` when the table is missing.
pub fn system_pairs(
    run_dir: &RunDir,
    name: &str,
    anchor: &str,
    related: &str,
    sentences: &Sentences,
) -> Result<Option<Vec<PredPair>>> {
    if !run_dir.has_table(name) {
        return Ok(None);
    }
    let mut pairs = Vec::new();
    for c in TableStream::open(run_dir, name, 8192)? {
        let c = c?;
        let (doc, sent) = (c.str("doc_id")?, c.i32("sent_id")?);
        let (a, a_start, a_end) =
            (c.str(anchor)?, c.i32(&format!("{anchor}_start"))?, c.i32(&format!("{anchor}_end"))?);
        let (r, r_start, r_end) =
            (c.str(related)?, c.i32(&format!("{related}_start"))?, c.i32(&format!("{related}_end"))?);
        for i in 0..c.len() {
            let Some(base) = sentences.start(doc.value(i), sent.value(i)) else { continue };
            let shift = |s: &Int32Array, e: &Int32Array| {
                (s.is_valid(i) && e.is_valid(i)).then(|| (s.value(i) - base, e.value(i) - base))
            };
            pairs.push(PredPair {
                doc_id: doc.value(i).to_string(),
                sent_id: sent.value(i),
                subject: Mention::new(shift(a_start, a_end), a.value(i)),
                object: Mention::new(shift(r_start, r_end), r.value(i)),
            });
        }
    }
    Ok(Some(pairs))
}

/// Spans from a `phi_spans` table (document offsets already). `None` when the table is missing.
pub fn system_phi(run_dir: &RunDir, name: &str, sentences: &Sentences) -> Result<Option<Vec<PredSpan>>> {
    if !run_dir.has_table(name) {
        return Ok(None);
    }
    let mut spans = Vec::new();
    for c in TableStream::open(run_dir, name, 8192)? {
        let c = c?;
        let (doc, start, end, phi_type) = (c.str("doc_id")?, c.i32("start")?, c.i32("end")?, c.str("phi_type")?);
        for i in (0..c.len()).filter(|&i| !sentences.of_doc(doc.value(i)).is_empty()) {
            let doc_id = doc.value(i);
            spans.push(PredSpan {
                doc_id: doc_id.to_string(),
                sent_id: sentences.at(doc_id, start.value(i)),
                mention: Mention { span: Some((start.value(i), end.value(i))), norm: String::new() },
                phi_type: phi_type.value(i).to_ascii_uppercase(),
            });
        }
    }
    Ok(Some(spans))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::load::SentenceRange;

    fn sentences() -> Sentences {
        let r = |sent_id, start, end| SentenceRange { sent_id, start, end, blank: false };
        Sentences::from_map(HashMap::from([("d".to_string(), vec![r(0, 0, 9), r(1, 10, 20)])]))
    }

    #[test]
    fn teacher_labels_become_predictions_only_in_ok_sentences() {
        let label = |sent_id, object: Option<Mention>, subject_type: &str| TeacherLabel {
            task: if object.is_some() { "ade".into() } else { "phi".into() },
            doc_id: "d".into(),
            sent_id,
            subject_type: subject_type.into(),
            subject: Mention::new(Some((2, 5)), "Ana"),
            object,
        };
        let labels = vec![
            label(1, Some(Mention::new(None, "rash")), "drug"),
            label(0, Some(Mention::new(Some((0, 1)), "x")), "drug"),
            label(1, None, "name"),
            label(0, None, "NAME"),
        ];
        let ok = HashSet::from([("d".to_string(), 1)]);
        let pairs = teacher_pairs(&labels, "ade", &ok);
        assert_eq!(pairs.len(), 1);
        assert_eq!((pairs[0].sent_id, pairs[0].object.span), (1, None));
        let phi = teacher_phi(&labels, &ok, &sentences());
        assert_eq!(phi.len(), 1);
        // Sentence 1 starts at 10: sentence offsets (2, 5) are document offsets (12, 15).
        assert_eq!((phi[0].mention.span, phi[0].phi_type.as_str()), (Some((12, 15)), "NAME"));
    }

    #[test]
    fn supervised_reference_tables_have_the_suffix() {
        assert_eq!(System::Student.table("ade_relations"), "ade_relations");
        assert_eq!(System::SupervisedReference.table("phi_spans"), "phi_spans_supervised_reference");
        assert_eq!(System::ALL.map(System::as_str), ["teacher", "student", "supervised_reference"]);
    }
}
