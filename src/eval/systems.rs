//! The systems compared and their predictions: the teacher's labels from `teacher_calls` and
//! `teacher_labels` (its first pass, and with two or more passes the labels they agree on),
//! the student's and the supervised reference's extracted tables, and for PHI the pattern
//! recognizers alone (run here over the sentences: they need no extraction).
//!
//! Predicted pairs are converted to sentence offsets and predicted PHI spans to document
//! offsets, the coordinates of the gold they are compared with. A missing table is `Ok(None)`.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use arrow::array::Int32Array;

use super::load::{EVALUATED_SENTENCES, SentKey, Sentences, Tables};
use super::metrics::Mention;
use crate::columns::{opt_f64, opt_i32, opt_str};
use crate::error::Result;
use crate::extract::{SUPERVISED_REFERENCE_SUFFIX, recognizers};
use crate::plan::ident;
use crate::schema::column::{DOC_ID, SENT_ID};
use crate::schema::table;
use crate::teacher::{agreement, confidence};

/// The systems compared, in report order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum System {
    Teacher,
    /// The labels two or more of the teacher's passes agree on (`label.passes` >= 2): the
    /// silver set `train.filters.require_agreement` trains on. Scored only where a second pass
    /// exists.
    TeacherAgreed,
    /// The teacher's labels it gave with at least `train.filters.min_teacher_confidence`: the
    /// targets that filter leaves (with `confidence_unit = "sentence"` training also loses the
    /// rest of their sentences, which this system does not). Scored only when the filter is on
    /// and some label of the task has a confidence.
    TeacherConfident,
    Student,
    SupervisedReference,
    /// Every PHI pattern recognizer alone ([`crate::extract::recognizers`]), without the
    /// student: what `phi_spans` adds to the student (`extract.phi_recognizers`) and the
    /// baseline a rules-only de-identifier would give.
    PhiRules,
}

impl System {
    pub const ALL: [System; 6] = [
        System::Teacher,
        System::TeacherAgreed,
        System::TeacherConfident,
        System::Student,
        System::SupervisedReference,
        System::PhiRules,
    ];

    pub fn as_str(self) -> &'static str {
        match self {
            System::Teacher => "teacher",
            System::TeacherAgreed => "teacher_agreed",
            System::TeacherConfident => "teacher_confident",
            System::Student => "student",
            System::SupervisedReference => "supervised_reference",
            System::PhiRules => "phi_rules",
        }
    }

    /// Read from an extracted table, so scored only on datasets the students were run over.
    pub fn is_extracted(self) -> bool {
        matches!(self, System::Student | System::SupervisedReference)
    }

    /// The teacher's labels rather than an extracted table: scored on the teacher's sample only.
    pub fn is_teacher(self) -> bool {
        matches!(self, System::Teacher | System::TeacherAgreed | System::TeacherConfident)
    }

    /// The output table of this system for the student table `base` (`ade_relations`, …).
    pub fn table(self, base: &str) -> String {
        match self {
            System::SupervisedReference => format!("{base}{SUPERVISED_REFERENCE_SUFFIX}"),
            _ => base.to_string(),
        }
    }
}

/// The sentences the teacher was asked about for one task and those it answered (`ok`), by
/// its first pass; how many passes answered each sentence; and the latency of every call that
/// reached the teacher (not cached), in hours.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct TeacherCalls {
    pub labeled: HashSet<SentKey>,
    pub ok: HashSet<SentKey>,
    pub answering: HashMap<SentKey, usize>,
    pub teacher_hours: f64,
}

/// `teacher_calls` by task; `None` when the table is missing.
pub async fn teacher_calls(tables: &Tables<'_>) -> Result<Option<HashMap<String, TeacherCalls>>> {
    let sql = format!(
        "SELECT task, {DOC_ID}, {SENT_ID}, status, pass, cached, latency_ms FROM {}",
        ident(table::TEACHER_CALLS)
    );
    let Some(batches) = tables.query_opt(table::TEACHER_CALLS, &sql).await? else { return Ok(None) };
    let mut out: HashMap<String, TeacherCalls> = HashMap::new();
    for c in &batches {
        let (task, doc, sent, status) = (c.str("task")?, c.doc_id()?, c.sent_id()?, c.str("status")?);
        let (pass, cached, latency) = (c.i32("pass")?, c.bool("cached")?, c.f64("latency_ms")?);
        for i in 0..c.len() {
            let calls = out.entry(task.value(i).to_string()).or_default();
            if !cached.value(i) {
                calls.teacher_hours += latency.value(i) / 3.6e6;
            }
            let key = (doc.value(i).to_string(), sent.value(i));
            if status.value(i) == "ok" {
                *calls.answering.entry(key.clone()).or_default() += 1;
            }
            // The teacher as configured is pass 0; later passes only feed agreement.
            if pass.value(i) == 0 {
                if status.value(i) == "ok" {
                    calls.ok.insert(key.clone());
                }
                calls.labeled.insert(key);
            }
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
    /// The labeling pass (`label.passes`; 0 is the teacher as configured).
    pub pass: i32,
    /// The teacher's confidence (`teacher.logprobs`), when it has one.
    pub confidence: Option<f64>,
}

/// `teacher_labels`; `None` when the table is missing.
pub async fn teacher_labels(tables: &Tables<'_>) -> Result<Option<Vec<TeacherLabel>>> {
    let sql = format!("SELECT * FROM {}", ident(table::TEACHER_LABELS));
    let Some(batches) = tables.query_opt(table::TEACHER_LABELS, &sql).await? else { return Ok(None) };
    let mut rows = Vec::new();
    for c in &batches {
        let (task, doc, sent, kind) = (c.str("task")?, c.doc_id()?, c.sent_id()?, c.str("kind")?);
        let (subject_type, subject, ss, se) =
            (c.str("subject_type")?, c.str("subject")?, c.i32("subject_start")?, c.i32("subject_end")?);
        let (object, os, oe) = (c.str("object")?, c.i32("object_start")?, c.i32("object_end")?);
        let (pass, confidence) = (c.i32("pass")?, c.f64_if_present("confidence")?);
        for i in 0..c.len() {
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
                pass: pass.value(i),
                confidence: confidence.and_then(|c| opt_f64(c, i)),
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

/// The labels of `task` that two or more passes agree on ([`agreement::agreed`]), as pass 0;
/// `None` when no sentence of `task` was answered by two passes.
pub fn agreed_labels(labels: &[TeacherLabel], task: &str, calls: &TeacherCalls) -> Option<Vec<TeacherLabel>> {
    if calls.answering.values().all(|&n| n < 2) {
        return None;
    }
    type Vote<'a> = (&'a str, &'a Mention, Option<&'a Mention>);
    /// A sentence's votes by pass, and the first label behind each vote.
    type Sentence<'a> = (BTreeMap<i32, BTreeSet<Vote<'a>>>, HashMap<Vote<'a>, &'a TeacherLabel>);
    let mut by_sentence: BTreeMap<(&str, i32), Sentence> = BTreeMap::new();
    for l in labels.iter().filter(|l| l.task == task) {
        let vote = (l.subject_type.as_str(), &l.subject, l.object.as_ref());
        let (passes, first) = by_sentence.entry((l.doc_id.as_str(), l.sent_id)).or_default();
        passes.entry(l.pass).or_default().insert(vote);
        first.entry(vote).or_insert(l);
    }
    let mut out = Vec::new();
    for ((doc, sent), (passes, first)) in by_sentence {
        let answering = calls.answering.get(&(doc.to_string(), sent)).copied().unwrap_or(0);
        let (kept, _) = agreement::agreed(passes.into_values(), answering, true);
        out.extend(kept.into_iter().map(|vote| TeacherLabel { pass: 0, ..first[&vote].clone() }));
    }
    Some(out)
}

/// The labels of `task` given with at least `threshold` confidence (what
/// `train.filters.min_teacher_confidence` trains on); `None` when the filter is off or no label
/// of `task` has a confidence.
pub fn confident_labels(labels: &[TeacherLabel], task: &str, threshold: f64) -> Option<Vec<TeacherLabel>> {
    let of_task = || labels.iter().filter(move |l| l.task == task);
    if threshold <= 0.0 || of_task().all(|l| l.confidence.is_none()) {
        return None;
    }
    Some(of_task().filter(|l| confidence::keeps(l.confidence, threshold)).cloned().collect())
}

/// The teacher's (first pass's) pairs for `task` in the sentences it answered (`ok`).
pub fn teacher_pairs(labels: &[TeacherLabel], task: &str, ok: &HashSet<SentKey>) -> Vec<PredPair> {
    labels
        .iter()
        .filter(|l| l.pass == 0 && l.task == task && ok.contains(&(l.doc_id.clone(), l.sent_id)))
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
        .filter(|l| l.pass == 0 && l.task == "phi" && l.object.is_none())
        .filter(|l| ok.contains(&(l.doc_id.clone(), l.sent_id)))
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
/// supervised-reference twins) of the evaluated sentences, shifted to sentence offsets: the
/// plan joins the table with [`EVALUATED_SENTENCES`]. `None` when the table is missing.
pub async fn system_pairs(
    tables: &Tables<'_>,
    name: &str,
    anchor: &str,
    related: &str,
) -> Result<Option<Vec<PredPair>>> {
    let shifted = |side: &str, alias: &str| {
        format!("p.{side} AS {alias}, p.{side}_start - e.start AS {alias}_start, p.{side}_end - e.start AS {alias}_end")
    };
    let sql = format!(
        "SELECT p.{DOC_ID}, p.{SENT_ID}, {}, {} FROM {} p JOIN {EVALUATED_SENTENCES} e \
         ON p.{DOC_ID} = e.{DOC_ID} AND p.{SENT_ID} = e.{SENT_ID} \
         ORDER BY p.{DOC_ID}, p.{SENT_ID}, a_start, a_end, r_start, r_end, a, r",
        shifted(anchor, "a"),
        shifted(related, "r"),
        ident(name)
    );
    let Some(batches) = tables.query_opt(name, &sql).await? else { return Ok(None) };
    let mut pairs = Vec::new();
    for c in &batches {
        let (doc, sent) = (c.doc_id()?, c.sent_id()?);
        let (a, a_start, a_end) = (c.str("a")?, c.i32("a_start")?, c.i32("a_end")?);
        let (r, r_start, r_end) = (c.str("r")?, c.i32("r_start")?, c.i32("r_end")?);
        for i in 0..c.len() {
            let span = |s: &Int32Array, e: &Int32Array| opt_i32(s, i).zip(opt_i32(e, i));
            pairs.push(PredPair {
                doc_id: doc.value(i).to_string(),
                sent_id: sent.value(i),
                subject: Mention::new(span(a_start, a_end), a.value(i)),
                object: Mention::new(span(r_start, r_end), r.value(i)),
            });
        }
    }
    Ok(Some(pairs))
}

/// What every PHI recognizer finds in the loaded sentences, in document offsets.
pub fn rules_phi(sentences: &Sentences) -> Vec<PredSpan> {
    let all = recognizers::all();
    let mut spans = Vec::new();
    for doc in sentences.docs() {
        for range in sentences.of_doc(doc) {
            let text = sentences.text(doc, range.sent_id).unwrap_or_default();
            for r in recognizers::recognize(text, &all) {
                spans.push(PredSpan {
                    doc_id: doc.to_string(),
                    sent_id: Some(range.sent_id),
                    mention: Mention {
                        span: Some((range.start + r.start as i32, range.start + r.end as i32)),
                        norm: String::new(),
                    },
                    phi_type: r.phi_type.as_str().to_string(),
                });
            }
        }
    }
    spans
}

/// Spans from a `phi_spans` table (document offsets already) in documents with evaluated
/// sentences. `None` when the table is missing.
pub async fn system_phi(tables: &Tables<'_>, name: &str, sentences: &Sentences) -> Result<Option<Vec<PredSpan>>> {
    let sql = format!(
        "SELECT {DOC_ID}, start, \"end\", phi_type FROM {} \
         WHERE {DOC_ID} IN (SELECT {DOC_ID} FROM {EVALUATED_SENTENCES}) ORDER BY {DOC_ID}, start, \"end\", phi_type",
        ident(name)
    );
    let Some(batches) = tables.query_opt(name, &sql).await? else { return Ok(None) };
    let mut spans = Vec::new();
    for c in &batches {
        let (doc, start, end, phi_type) = (c.doc_id()?, c.i32("start")?, c.i32("end")?, c.str("phi_type")?);
        for i in 0..c.len() {
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

    /// A run directory with sentences of documents d1 (two sentences) and d2, a pair table
    /// `ade_relations` (or, `broken`, one without `effect_end`) and `phi_spans`.
    fn run_dir(broken: bool) -> (tempfile::TempDir, crate::run_dir::RunDir) {
        use crate::run_dir::test_tables::{ints, strs, write};
        let tmp = tempfile::tempdir().unwrap();
        let run = crate::run_dir::RunDir::create(tmp.path()).unwrap();
        write(
            &run,
            table::SENTENCES,
            vec![
                ("doc_id", strs(&["d1", "d1", "d2"])),
                ("sent_id", ints(&[Some(0), Some(1), Some(0)])),
                ("start", ints(&[Some(0), Some(21), Some(0)])),
                ("end", ints(&[Some(20), Some(45), Some(10)])),
                ("text", strs(&["Aspirin gave a rash.", "Mail ana@example.org today", "Nothing."])),
            ],
        );
        let mut pairs = vec![
            ("doc_id", strs(&["d2", "d1", "d1", "d1"])),
            ("sent_id", ints(&[Some(0), Some(1), Some(5), Some(0)])),
            ("drug", strs(&["x", "ana", "y", "aspirin"])),
            ("drug_start", ints(&[Some(0), Some(26), Some(0), Some(0)])),
            ("drug_end", ints(&[Some(1), Some(29), Some(1), Some(7)])),
            ("effect", strs(&["z", "today", "w", "rash"])),
            ("effect_start", ints(&[Some(2), None, Some(2), Some(15)])),
        ];
        if !broken {
            pairs.push(("effect_end", ints(&[Some(3), None, Some(3), Some(19)])));
        }
        write(&run, table::ADE_RELATIONS, pairs);
        write(
            &run,
            table::PHI_SPANS,
            vec![
                ("doc_id", strs(&["d2", "d1"])),
                ("start", ints(&[Some(0), Some(26)])),
                ("end", ints(&[Some(4), Some(41)])),
                ("phi_type", strs(&["name", "contact"])),
            ],
        );
        (tmp, run)
    }

    #[tokio::test]
    async fn extracted_rows_join_the_evaluated_sentences_in_their_offsets() {
        let (_tmp, run) = run_dir(false);
        let tables = Tables::open(&run).await.unwrap();
        let sentences = Sentences::load(&tables, &["d1".to_string()].into()).await.unwrap();
        assert_eq!(sentences.text("d1", 1), Some("Mail ana@example.org today"));
        assert_eq!(sentences.text("d2", 0), None, "not evaluated");

        // d2's pair is outside the evaluation, d1 s5 has no sentence; s1's pair moves to its
        // sentence's offsets and keeps its missing effect span; rows come in sentence order.
        let pairs = system_pairs(&tables, table::ADE_RELATIONS, "drug", "effect").await.unwrap().unwrap();
        let got: Vec<_> = pairs.iter().map(|p| (p.sent_id, p.subject.clone(), p.object.clone())).collect();
        assert_eq!(
            got,
            [
                (0, Mention::new(Some((0, 7)), "aspirin"), Mention::new(Some((15, 19)), "rash")),
                (1, Mention::new(Some((5, 8)), "ana"), Mention::new(None, "today")),
            ]
        );
        assert!(system_pairs(&tables, "gene_disease", "gene", "disease").await.unwrap().is_none(), "missing table");

        let spans = system_phi(&tables, table::PHI_SPANS, &sentences).await.unwrap().unwrap();
        assert_eq!(spans.len(), 1, "{spans:?}");
        assert_eq!(
            (spans[0].sent_id, spans[0].mention.span, spans[0].phi_type.as_str()),
            (Some(1), Some((26, 41)), "CONTACT")
        );
        let rules = rules_phi(&sentences);
        let contacts: Vec<_> =
            rules.iter().filter(|s| s.phi_type == "CONTACT").map(|s| (s.sent_id, s.mention.span)).collect();
        assert_eq!(contacts, [(Some(1), Some((26, 41)))], "document offsets of the sentence's match");
    }

    #[tokio::test]
    async fn a_pair_table_without_a_column_is_an_error_naming_its_file() {
        let (_tmp, run) = run_dir(true);
        let tables = Tables::open(&run).await.unwrap();
        Sentences::load(&tables, &["d1".to_string()].into()).await.unwrap();
        let err = system_pairs(&tables, table::ADE_RELATIONS, "drug", "effect").await.unwrap_err().to_string();
        assert!(err.contains("ade_relations.parquet") && err.contains("effect_end"), "{err}");
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
            pass: 0,
            confidence: None,
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
    fn agreed_labels_are_those_two_passes_of_the_same_sentence_give() {
        let pair = |sent_id, pass, drug: &str, effect: &str| TeacherLabel {
            task: "ade".into(),
            doc_id: "d".into(),
            sent_id,
            subject_type: "drug".into(),
            subject: Mention::new(Some((0, drug.len() as i32)), drug),
            object: Some(Mention::new(Some((10, 10 + effect.len() as i32)), effect)),
            pass,
            confidence: None,
        };
        let labels = vec![
            pair(0, 0, "aspirin", "rash"),
            pair(0, 1, "aspirin", "rash"),
            pair(0, 0, "aspirin", "fever"),
            // Sentence 1: the same pair as sentence 0's agreed one, from one pass only.
            pair(1, 0, "aspirin", "rash"),
        ];
        let mut calls = TeacherCalls::default();
        assert_eq!(agreed_labels(&labels, "ade", &calls), None, "no second pass: nothing to agree on");
        calls.answering = HashMap::from([(("d".to_string(), 0), 2), (("d".to_string(), 1), 2)]);
        let agreed = agreed_labels(&labels, "ade", &calls).unwrap();
        assert_eq!(agreed.len(), 1, "{agreed:?}");
        assert_eq!(
            (agreed[0].sent_id, agreed[0].pass, agreed[0].object.as_ref().unwrap().norm.as_str()),
            (0, 0, "rash")
        );
        let ok = HashSet::from([("d".to_string(), 0), ("d".to_string(), 1)]);
        assert_eq!(teacher_pairs(&labels, "ade", &ok).len(), 3, "the teacher system is pass 0 alone");

        // Confident labels: at or above the threshold, or without a confidence.
        assert_eq!(confident_labels(&labels, "ade", 0.5), None, "no label has a confidence");
        let mut scored = labels.clone();
        for (l, p) in scored.iter_mut().zip([Some(0.9), Some(0.5), Some(0.2), None]) {
            l.confidence = p;
        }
        assert_eq!(confident_labels(&scored, "ade", 0.0), None, "the filter is off");
        let kept = confident_labels(&scored, "ade", 0.5).unwrap();
        assert_eq!(kept.iter().map(|l| l.confidence).collect::<Vec<_>>(), [Some(0.9), Some(0.5), None]);
        assert_eq!(confident_labels(&scored, "phi", 0.5), None, "another task's confidences");
    }

    #[test]
    fn supervised_reference_tables_have_the_suffix() {
        assert_eq!(System::Student.table("ade_relations"), "ade_relations");
        assert_eq!(System::SupervisedReference.table("phi_spans"), "phi_spans_supervised_reference");
        assert_eq!(
            System::ALL.map(System::as_str),
            ["teacher", "teacher_agreed", "teacher_confident", "student", "supervised_reference", "phi_rules"]
        );
    }
}
