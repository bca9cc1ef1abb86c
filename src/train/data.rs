//! Training sentences: silver labels from the teacher, or gold for the supervised reference.
//!
//! Silver (`teacher_labels` + `teacher_calls` + `sentences`): every sentence with an `ok` teacher
//! call is a training sentence, with no labels if the teacher found none (a negative). Labels
//! without offsets (unaligned) or below the configured alignment quality are dropped, and every
//! drop is counted in [`DataStats`]: nothing disappears silently.
//!
//! Gold (`gold_*` tables, `split = 'train'` only) is read only for the supervised reference.

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use serde::{Deserialize, Serialize};
use sha2::{Digest, Sha256};

use crate::columns::{TableStream, opt_f64, opt_i32, opt_str, read_all};
use crate::error::Result;
use crate::plan;
use crate::run_dir::RunDir;
use crate::schema::{split, table};
use crate::teacher::{agreement, confidence};
use crate::vocab::Task;

/// A char span `[start, end)` of a sentence with its entity type (index into
/// [`Task::entity_types`]).
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub struct CharSpan {
    pub start: usize,
    pub end: usize,
    pub type_index: usize,
}

/// One labeled sentence.
#[derive(Debug, Clone, PartialEq, Eq, Default)]
pub struct LabeledSentence {
    pub doc_id: String,
    pub sent_id: i32,
    pub text: String,
    /// Entity spans (anchors and related spans of pairs included).
    pub entities: BTreeSet<CharSpan>,
    /// `(anchor, related)` pairs.
    pub pairs: BTreeSet<(CharSpan, CharSpan)>,
    /// Labels the teacher was unsure of (`confidence_unit = "mask"`): spans `(None, span)` and
    /// pairs `(Some(anchor), related)` whose tokens are left out of the loss, neither taught
    /// as labels nor as "nothing here".
    pub doubtful: BTreeSet<(Option<CharSpan>, CharSpan)>,
}

/// How trustworthy a teacher span's alignment must be to become a label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum MinAlignment {
    Exact,
    CaseInsensitive,
    #[default]
    Fuzzy,
}

impl MinAlignment {
    fn accepts(self, alignment: &str) -> bool {
        let rank = match alignment {
            "exact" => MinAlignment::Exact,
            "case_insensitive" => MinAlignment::CaseInsensitive,
            "fuzzy" => MinAlignment::Fuzzy,
            _ => return false,
        };
        rank <= self
    }
}

/// What `filters.min_teacher_confidence` takes away with a doubtful label.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum ConfidenceUnit {
    /// The label alone: its tokens stay in the sentence as "nothing here".
    #[default]
    Label,
    /// The whole sentence holding it, so no doubtful label becomes a false negative (dropping
    /// disputed labels but keeping their sentences cost the student recall; README).
    Sentence,
    /// Neither: its tokens are left out of the loss (partial annotation), so the rest of the
    /// sentence still teaches.
    Mask,
}

impl ConfidenceUnit {
    fn is_label(&self) -> bool {
        *self == ConfidenceUnit::Label
    }
}

/// Silver-label filters; their effect is measured by comparing runs, not assumed.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SilverFilters {
    /// Weakest alignment kept (`unaligned` spans have no offsets and are always dropped).
    pub min_alignment: MinAlignment,
    /// When a sentence was answered by two or more (model, prompt version, pass) passes, keep only the
    /// labels at least two passes agree on. Sentences with a single pass are kept as they are.
    pub require_agreement: bool,
    /// Each answering pass's labels become a training example of their own, instead of one
    /// example with every pass's labels: a label half the passes gave is then a target half the
    /// time, so the student learns the passes' vote share (soft labels by repetition; the
    /// expected loss is cross-entropy against the averaged one-hot targets). Doubles the steps
    /// with two passes. Excludes `require_agreement`. Left off, it is not serialized, so
    /// checkpoints trained before it existed keep their config hash.
    #[serde(skip_serializing_if = "std::ops::Not::not")]
    pub per_pass_examples: bool,
    /// Drop labels the teacher gave with a confidence below this (`teacher_labels.confidence`,
    /// needs `teacher.logprobs`); labels without a confidence are kept and counted. 0 = off,
    /// and then not serialized (config hashes of earlier checkpoints hold).
    #[serde(skip_serializing_if = "is_zero")]
    pub min_teacher_confidence: f64,
    /// What a label under `min_teacher_confidence` costs: itself, its sentence, or only its
    /// tokens' place in the loss (not serialized at the default, `label`).
    #[serde(skip_serializing_if = "ConfidenceUnit::is_label")]
    pub confidence_unit: ConfidenceUnit,
}

fn is_zero(value: &f64) -> bool {
    *value == 0.0
}

impl Default for SilverFilters {
    fn default() -> Self {
        Self {
            min_alignment: MinAlignment::Fuzzy,
            require_agreement: false,
            per_pass_examples: false,
            min_teacher_confidence: 0.0,
            confidence_unit: ConfidenceUnit::Label,
        }
    }
}

/// Counts of what loading kept and dropped.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize)]
pub struct DataStats {
    pub sentences: usize,
    pub negatives: usize,
    pub entities: usize,
    pub pairs: usize,
    pub dropped_unaligned: usize,
    pub dropped_weak_alignment: usize,
    pub dropped_unknown_type: usize,
    pub dropped_bad_offsets: usize,
    pub dropped_disagreement: usize,
    /// Below `filters.min_teacher_confidence`.
    pub dropped_low_confidence: usize,
    /// Kept by that filter because the teacher's reply had no token log probabilities.
    pub unscored_confidence: usize,
    /// Sentences dropped for holding such a label (`confidence_unit = "sentence"`).
    pub dropped_low_confidence_sentences: usize,
    /// Gold only: document-level relations (BioRED) or spans crossing a sentence boundary.
    pub dropped_not_sentence_level: usize,
    /// Silver only: teacher-labeled sentences of gold `dev` documents (kept for scoring the
    /// teacher, never for training).
    pub dropped_dev_sentences: usize,
    /// Sentences available before `train.max_sentences` (or `reference_max_sentences`) capped
    /// them (the counts above describe the sentences used).
    pub available_sentences: usize,
}

/// One teacher label as a comparable key (for agreement between passes).
type LabelKey = (Option<CharSpan>, CharSpan);
/// A sentence: `(doc_id, sent_id)`.
type SentKey = (String, i32);
/// A labeling pass: `(teacher model, prompt version, label.passes index)`.
type PassKey = (String, String, i32);

/// Silver sentences of `task`.
pub fn silver(run_dir: &RunDir, task: Task, filters: &SilverFilters) -> Result<(Vec<LabeledSentence>, DataStats)> {
    let mut stats = DataStats::default();
    let mut ok: BTreeMap<(String, i32), LabeledSentence> = BTreeMap::new();
    // The passes that answered each sentence: agreement is out of these, so a pass that
    // answered "nothing here" votes against every label it did not give.
    let mut answered: HashMap<SentKey, BTreeSet<PassKey>> = HashMap::new();
    for cols in read_all(run_dir, table::TEACHER_CALLS)? {
        let (t, doc, sent, status) = (cols.str("task")?, cols.doc_id()?, cols.sent_id()?, cols.str("status")?);
        let (model, prompt, pass) = (cols.str("model")?, cols.str("prompt_version")?, cols.i32("pass")?);
        for row in 0..cols.len() {
            if t.value(row) == task.as_str() && status.value(row) == "ok" {
                let key = (doc.value(row).to_string(), sent.value(row));
                let pass_key = (model.value(row).to_string(), prompt.value(row).to_string(), pass.value(row));
                answered.entry(key.clone()).or_default().insert(pass_key);
                ok.entry(key).or_default();
            }
        }
    }
    // The teacher also labels gold dev sentences, to be scored; those never train the student.
    let dev = documents_in_split(run_dir, split::DEV)?;
    let before = ok.len();
    ok.retain(|(doc, _), _| !dev.contains(doc));
    stats.dropped_dev_sentences = before - ok.len();
    fill_texts(run_dir, &mut ok)?;
    // Labels per sentence per pass, so agreement can be checked before merging.
    let mut passes: HashMap<SentKey, BTreeMap<PassKey, BTreeSet<LabelKey>>> = HashMap::new();
    let mut doubtful = BTreeSet::new();
    for cols in read_all(run_dir, table::TEACHER_LABELS)? {
        let c = SilverColumns::new(&cols)?;
        for row in 0..cols.len() {
            if c.task.value(row) != task.as_str() {
                continue;
            }
            let key = (c.doc.value(row).to_string(), c.sent.value(row));
            let Some(sentence) = ok.get(&key) else { continue };
            if c.doubtful(row, filters, &mut stats) {
                match filters.confidence_unit {
                    ConfidenceUnit::Label => {}
                    ConfidenceUnit::Sentence => {
                        doubtful.insert(key);
                    }
                    ConfidenceUnit::Mask => {
                        let len = sentence.text.chars().count();
                        if let Some(label) = c.label(row, task, filters, len, &mut stats) {
                            ok.get_mut(&key).expect("checked above").doubtful.insert(label);
                        }
                    }
                }
                continue;
            }
            let Some(label) = c.label(row, task, filters, sentence.text.chars().count(), &mut stats) else { continue };
            let pass = (c.model.value(row).to_string(), c.prompt.value(row).to_string(), c.pass.value(row));
            passes.entry(key).or_default().entry(pass).or_default().insert(label);
        }
    }
    for key in doubtful {
        ok.remove(&key);
        passes.remove(&key);
        stats.dropped_low_confidence_sentences += 1;
    }
    if filters.per_pass_examples {
        return Ok((per_pass(ok, &answered, passes), stats));
    }
    for (key, by_pass) in passes {
        let answering = answered.get(&key).map_or(by_pass.len(), BTreeSet::len);
        let (kept, dropped) = agreement::agreed(by_pass.into_values(), answering, filters.require_agreement);
        stats.dropped_disagreement += dropped;
        add_labels(ok.get_mut(&key).expect("passes only holds keys of `ok`"), kept);
    }
    let sentences: Vec<LabeledSentence> = ok.into_values().filter(|s| !s.text.is_empty()).collect();
    Ok((sentences, stats))
}

/// One example per answering pass of each sentence, with that pass's labels (none when it
/// answered "nothing here"), in sentence then pass order.
fn per_pass(
    ok: BTreeMap<SentKey, LabeledSentence>,
    answered: &HashMap<SentKey, BTreeSet<PassKey>>,
    mut passes: HashMap<SentKey, BTreeMap<PassKey, BTreeSet<LabelKey>>>,
) -> Vec<LabeledSentence> {
    let mut out = Vec::new();
    for (key, sentence) in ok {
        if sentence.text.is_empty() {
            continue;
        }
        let mut by_pass = passes.remove(&key).unwrap_or_default();
        for pass in answered.get(&key).into_iter().flatten() {
            let mut example = sentence.clone();
            add_labels(&mut example, by_pass.remove(pass).unwrap_or_default());
            out.push(example);
        }
    }
    out
}

/// Adds labels to a sentence: a pair's two spans are entities too.
fn add_labels(sentence: &mut LabeledSentence, labels: impl IntoIterator<Item = LabelKey>) {
    for label in labels {
        match label {
            (None, span) => {
                sentence.entities.insert(span);
            }
            (Some(anchor), related) => {
                sentence.entities.extend([anchor, related]);
                sentence.pairs.insert((anchor, related));
            }
        }
    }
}

/// The `teacher_labels` columns silver loading reads.
struct SilverColumns<'a> {
    task: &'a arrow::array::StringArray,
    doc: &'a arrow::array::StringArray,
    sent: &'a arrow::array::Int32Array,
    kind: &'a arrow::array::StringArray,
    model: &'a arrow::array::StringArray,
    prompt: &'a arrow::array::StringArray,
    pass: &'a arrow::array::Int32Array,
    /// Absent in tables written before teacher confidences existed.
    confidence: Option<&'a arrow::array::Float64Array>,
    sides: [SideColumns<'a>; 2],
}

/// `subject_*` or `object_*` columns.
struct SideColumns<'a> {
    kind: &'a arrow::array::StringArray,
    start: &'a arrow::array::Int32Array,
    end: &'a arrow::array::Int32Array,
    alignment: &'a arrow::array::StringArray,
}

impl<'a> SilverColumns<'a> {
    fn new(cols: &'a crate::columns::Columns) -> Result<Self> {
        let side = |p: &str| -> Result<SideColumns<'a>> {
            Ok(SideColumns {
                kind: cols.str(&format!("{p}_type"))?,
                start: cols.i32(&format!("{p}_start"))?,
                end: cols.i32(&format!("{p}_end"))?,
                alignment: cols.str(&format!("{p}_alignment"))?,
            })
        };
        Ok(Self {
            task: cols.str("task")?,
            doc: cols.doc_id()?,
            sent: cols.sent_id()?,
            kind: cols.str("kind")?,
            model: cols.str("model")?,
            prompt: cols.str("prompt_version")?,
            pass: cols.i32("pass")?,
            confidence: cols.f64_if_present("confidence")?,
            sides: [side("subject")?, side("object")?],
        })
    }

    /// Whether row `row` is below `filters.min_teacher_confidence` (counted; rows without a
    /// confidence are kept and counted too).
    fn doubtful(&self, row: usize, f: &SilverFilters, stats: &mut DataStats) -> bool {
        if f.min_teacher_confidence <= 0.0 {
            return false;
        }
        let confidence = self.confidence.and_then(|c| opt_f64(c, row));
        stats.unscored_confidence += usize::from(confidence.is_none());
        let doubtful = !confidence::keeps(confidence, f.min_teacher_confidence);
        stats.dropped_low_confidence += usize::from(doubtful);
        doubtful
    }

    /// Row `row` as a label, or `None` (counted) when a filter drops it.
    fn label(&self, row: usize, task: Task, f: &SilverFilters, len: usize, stats: &mut DataStats) -> Option<LabelKey> {
        let is_pair = self.kind.value(row) == "pair";
        let relation = task.relation();
        let span = |side: &SideColumns, type_name: Option<&str>, stats: &mut DataStats| -> Option<CharSpan> {
            let alignment = opt_str(side.alignment, row).unwrap_or("unaligned");
            let (Some(start), Some(end)) = (opt_i32(side.start, row), opt_i32(side.end, row)) else {
                stats.dropped_unaligned += 1;
                return None;
            };
            if alignment == "unaligned" {
                stats.dropped_unaligned += 1;
                return None;
            }
            if !f.min_alignment.accepts(alignment) {
                stats.dropped_weak_alignment += 1;
                return None;
            }
            let type_name = type_name.or_else(|| opt_str(side.kind, row)).unwrap_or("");
            let Some(type_index) = task.type_index(type_name) else {
                stats.dropped_unknown_type += 1;
                return None;
            };
            if start < 0 || start >= end || end as usize > len {
                stats.dropped_bad_offsets += 1;
                return None;
            }
            Some(CharSpan { start: start as usize, end: end as usize, type_index })
        };
        match (is_pair, relation) {
            (false, _) => Some((None, span(&self.sides[0], None, stats)?)),
            (true, Some((anchor_type, related_type))) => {
                let anchor = span(&self.sides[0], Some(anchor_type), stats)?;
                Some((Some(anchor), span(&self.sides[1], Some(related_type), stats)?))
            }
            (true, None) => {
                stats.dropped_unknown_type += 1;
                None
            }
        }
    }
}

/// Look up the text of every sentence in `wanted`, streaming the (possibly large) sentences table.
fn fill_texts(run_dir: &RunDir, wanted: &mut BTreeMap<(String, i32), LabeledSentence>) -> Result<()> {
    for cols in TableStream::open(run_dir, table::SENTENCES, 8192)? {
        let cols = cols?;
        let (doc, sent, text) = (cols.doc_id()?, cols.sent_id()?, cols.str("text")?);
        for row in 0..cols.len() {
            let key = (doc.value(row).to_string(), sent.value(row));
            if let Some(s) = wanted.get_mut(&key) {
                s.doc_id = key.0;
                s.sent_id = key.1;
                s.text = text.value(row).to_string();
            }
        }
    }
    Ok(())
}

/// The sentence, negative, entity and pair counts of `stats`, for the sentences trained on.
pub(super) fn finish_stats(stats: &mut DataStats, sentences: &[LabeledSentence]) {
    stats.sentences = sentences.len();
    stats.negatives = sentences.iter().filter(|s| s.entities.is_empty()).count();
    stats.entities = sentences.iter().map(|s| s.entities.len()).sum();
    stats.pairs = sentences.iter().map(|s| s.pairs.len()).sum();
}

/// Whether `doc_id` falls in the silver dev split: a stable hash of (seed, document), so all
/// sentences of a document land on the same side and the split does not depend on row order.
pub fn is_dev(doc_id: &str, seed: u64, dev_fraction: f64) -> bool {
    let digest = Sha256::new().chain_update(seed.to_le_bytes()).chain_update(doc_id.as_bytes()).finalize();
    let value = u64::from_le_bytes(digest[..8].try_into().expect("sha256 has 32 bytes"));
    (value as f64 / u64::MAX as f64) < dev_fraction
}

/// At most `max` sentences (0 = all): those with the smallest seeded hash of their document,
/// then sentence, so the sample keeps whole documents and does not depend on row order.
pub fn cap(mut sentences: Vec<LabeledSentence>, max: usize, seed: u64) -> Vec<LabeledSentence> {
    if max == 0 || sentences.len() <= max {
        return sentences;
    }
    let rank = |s: &LabeledSentence| {
        let mut h = Sha256::new();
        h.update(seed.to_le_bytes());
        h.update(s.doc_id.as_bytes());
        (<[u8; 32]>::from(h.finalize()), s.sent_id)
    };
    sentences.sort_by_cached_key(rank);
    sentences.truncate(max);
    sentences
}

/// Split sentences into (train, dev) by document; see [`is_dev`].
pub fn split_dev(
    sentences: Vec<LabeledSentence>,
    seed: u64,
    dev_fraction: f64,
) -> (Vec<LabeledSentence>, Vec<LabeledSentence>) {
    sentences.into_iter().partition(|s| !is_dev(&s.doc_id, seed, dev_fraction))
}

/// The documents of `split`: a query, run from the synchronous training code.
fn documents_in_split(run_dir: &RunDir, split: &str) -> Result<HashSet<String>> {
    plan::block_on(async {
        let ctx = plan::session(run_dir, plan::Limits::mib(plan::DEFAULT_MEMORY_LIMIT_MIB)).await?;
        plan::documents_in_split(&ctx, run_dir, split).await
    })
}

/// Documents of `docs` in the train split, and every sentence of them: the negatives gold sets
/// leave implicit (a training sentence without gold rows has nothing to extract).
pub(super) fn train_sentences_of(
    run_dir: &RunDir,
    docs: &HashSet<String>,
) -> Result<BTreeMap<(String, i32), (usize, LabeledSentence)>> {
    let mut train_docs = documents_in_split(run_dir, split::TRAIN)?;
    train_docs.retain(|doc| docs.contains(doc));
    let mut out = BTreeMap::new();
    for cols in TableStream::open(run_dir, table::SENTENCES, 8192)? {
        let cols = cols?;
        let (doc, sent, start, text) = (cols.doc_id()?, cols.sent_id()?, cols.i32("start")?, cols.str("text")?);
        for row in 0..cols.len() {
            if train_docs.contains(doc.value(row)) {
                let s = LabeledSentence {
                    doc_id: doc.value(row).to_string(),
                    sent_id: sent.value(row),
                    text: text.value(row).to_string(),
                    ..Default::default()
                };
                out.insert((s.doc_id.clone(), s.sent_id), (start.value(row) as usize, s));
            }
        }
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cap_keeps_whole_documents_deterministically() {
        let s = |doc: &str, sent| LabeledSentence { doc_id: doc.into(), sent_id: sent, ..Default::default() };
        let all: Vec<LabeledSentence> =
            (0..20).flat_map(|d| [s(&format!("d{d}"), 0), s(&format!("d{d}"), 1)]).collect();
        let a = cap(all.clone(), 10, 7);
        let mut reversed = all.clone();
        reversed.reverse();
        assert_eq!(a, cap(reversed, 10, 7), "order of the input does not matter");
        assert_eq!(a.len(), 10);
        // Two sentences per document, whole documents first: 5 documents.
        let docs: BTreeSet<&str> = a.iter().map(|s| s.doc_id.as_str()).collect();
        assert_eq!(docs.len(), 5);
        assert_eq!(cap(all.clone(), 0, 7).len(), 40);
        assert_ne!(a, cap(all, 10, 8), "the seed picks the sample");
    }
}
