//! `spans.html`: a sample of the evaluated sentences with the gold, teacher and student
//! annotations side by side, so a reader can see what the report's numbers count.
//!
//! Sentences come from the teacher's sample when there is one (all three systems saw them),
//! chosen by a fixed hash of their key (not the first documents of the split), those with
//! something to show first. Spans are highlighted in the sentence; a relation task adds its
//! pairs as `subject → object` arrows, green when the gold has the same pair. Overlapping
//! spans of one system cannot all be highlighted inline: the longer one is, and the page says
//! how many were left out. A short inline script (no external assets) counts what is shown, so
//! a browser check can compare it with [`Viewer::marks`].

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::hash::{DefaultHasher, Hash, Hasher};

use super::Preds;
use super::load::{SentKey, Sentences};
use super::metrics::{Mention, MentionKey, Span};
use super::render::esc;
use super::systems::TeacherCalls;
use crate::error::Result;
use crate::run_dir::{RunDir, write_file_atomic};

/// The page written next to `report.html`.
pub const FILE: &str = "spans.html";
/// Sentences shown per task.
pub const PER_TASK: usize = 12;

/// What one system says about one sentence, in sentence char offsets.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Marks {
    /// Aligned spans with their label (`drug`, `effect`, `gene`, `disease`, a PHI type).
    spans: BTreeSet<(Span, String)>,
    /// Mentions the system named but that are not in the text (a teacher's unaligned string).
    unaligned: BTreeSet<(String, String)>,
    /// Relation pairs, as mention keys (for comparing with the gold) and as shown text.
    pairs: BTreeSet<((MentionKey, MentionKey), (String, String))>,
    /// The teacher was asked about this sentence but its call failed (no answer to show).
    failed: bool,
}

impl Marks {
    fn mention(&mut self, m: &Mention, label: &str) {
        match m.span {
            Some(span) => self.spans.insert((span, label.to_string())),
            None => self.unaligned.insert((label.to_string(), m.norm.clone())),
        };
    }

    fn pair(&mut self, subject: &Mention, object: &Mention, labels: (&str, &str)) {
        self.mention(subject, labels.0);
        self.mention(object, labels.1);
        self.pairs.insert(((subject.key(), object.key()), (subject.norm.clone(), object.norm.clone())));
    }

    fn is_empty(&self) -> bool {
        self.spans.is_empty() && self.unaligned.is_empty()
    }
}

/// One system's marks per sentence.
type ByKey = HashMap<SentKey, Marks>;

/// One task's sample: a column per system (gold first) and the chosen sentences.
#[derive(Debug)]
struct TaskSample {
    task: String,
    systems: Vec<String>,
    rows: Vec<(SentKey, Vec<Marks>)>,
}

/// The sampled sentences of every evaluated task, rendered by [`Viewer::write`].
#[derive(Debug, Default)]
pub struct Viewer {
    tasks: Vec<TaskSample>,
}

/// The labels of a relation task's two sides.
fn pair_labels(task: &str) -> (&'static str, &'static str) {
    match task {
        "ade" => ("drug", "effect"),
        _ => ("gene", "disease"),
    }
}

/// A document-offset span as (sentence, sentence offsets), when `sentences` places it.
fn in_sentence(sentences: &Sentences, doc: &str, span: Option<Span>, sent: Option<i32>) -> Option<(i32, Option<Span>)> {
    let sent = sent.or_else(|| span.and_then(|(s, _)| sentences.at(doc, s)))?;
    let base = sentences.start(doc, sent)?;
    Some((sent, span.map(|(s, e)| (s - base, e - base))))
}

fn gold_marks(gold: &super::Gold, sentences: &Sentences) -> ByKey {
    let mut by_key = ByKey::new();
    match gold {
        super::Gold::Ade(g) => {
            for (key, pairs) in g.pairs() {
                let marks = by_key.entry(key.clone()).or_default();
                pairs.iter().for_each(|(d, e)| marks.pair(d, e, pair_labels("ade")));
            }
        }
        super::Gold::GeneDisease(g) => {
            for r in g.rows().filter(|r| r.label == 1) {
                let doc = r.doc_id.as_str();
                let shift = |m: &Mention| in_sentence(sentences, doc, m.span, r.sent_id);
                let (Some((sent, gene)), Some((_, disease))) = (shift(&r.gene), shift(&r.disease)) else { continue };
                let (gene, disease) =
                    (Mention { span: gene, ..r.gene.clone() }, Mention { span: disease, ..r.disease.clone() });
                by_key.entry((r.doc_id.clone(), sent)).or_default().pair(&gene, &disease, pair_labels("gene_disease"));
            }
        }
        super::Gold::Phi(g) => {
            for r in g.rows() {
                let Some((sent, span)) = in_sentence(sentences, &r.doc_id, Some(r.span), None) else { continue };
                let label = r.phi_type.map_or("OTHER", |t| t.as_str());
                by_key.entry((r.doc_id.clone(), sent)).or_default().mention(&Mention::new(span, &r.text), label);
            }
        }
    }
    by_key
}

fn system_marks(task: &str, preds: &Preds, sentences: &Sentences) -> ByKey {
    let mut by_key = ByKey::new();
    match preds {
        Preds::Pairs(pairs) => {
            for p in pairs {
                by_key.entry((p.doc_id.clone(), p.sent_id)).or_default().pair(&p.subject, &p.object, pair_labels(task));
            }
        }
        Preds::Spans(spans) => {
            for p in spans {
                let Some((sent, span)) = in_sentence(sentences, &p.doc_id, p.mention.span, p.sent_id) else { continue };
                let mention = Mention { span, norm: p.mention.norm.clone() };
                by_key.entry((p.doc_id.clone(), sent)).or_default().mention(&mention, &p.phi_type);
            }
        }
    }
    by_key
}

/// A fixed pseudo-random order of sentence keys (the same on every run and machine of one
/// build), so the sample is spread over the split.
fn spread(key: &SentKey) -> u64 {
    let mut h = DefaultHasher::new();
    key.hash(&mut h);
    h.finish()
}

impl Viewer {
    /// Sample `task`'s sentences: the gold sentences the teacher was asked about (`calls`; all
    /// with gold annotations when there are none), with an annotation by any system first.
    /// `systems` are the scored systems by name; gold, teacher and student are shown, in that
    /// order.
    pub(super) fn add(
        &mut self,
        task: &str,
        gold: &super::Gold,
        systems: &BTreeMap<&str, Preds>,
        sentences: &Sentences,
        calls: Option<&TeacherCalls>,
    ) {
        let mut columns = vec![("gold".to_string(), gold_marks(gold, sentences))];
        for name in [super::System::Teacher.as_str(), super::System::Student.as_str()] {
            if let Some(preds) = systems.get(name) {
                let mut marks = system_marks(task, preds, sentences);
                if let Some(calls) = calls.filter(|_| name == super::System::Teacher.as_str()) {
                    for key in calls.labeled.difference(&calls.ok) {
                        marks.entry(key.clone()).or_default().failed = true;
                    }
                }
                columns.push((name.to_string(), marks));
            }
        }
        let scope = calls.map(|c| &c.labeled);
        let in_gold = |key: &SentKey| match gold {
            super::Gold::Ade(g) => g.units().contains(key),
            super::Gold::GeneDisease(g) => g.docs().any(|d| d == &key.0),
            super::Gold::Phi(g) => g.docs().any(|d| d == &key.0),
        };
        let candidates: BTreeSet<&SentKey> = match scope {
            Some(labeled) => labeled.iter().filter(|k| in_gold(k)).collect(),
            None => columns[0].1.keys().collect(),
        };
        let shown = |key: &SentKey| columns.iter().any(|(_, c)| c.get(key).is_some_and(|m| !m.is_empty()));
        let mut order: Vec<&SentKey> = candidates.into_iter().collect();
        order.sort_by_key(|k| (!shown(k), spread(k)));
        let rows = order
            .into_iter()
            .take(PER_TASK)
            .map(|key| (key.clone(), columns.iter().map(|(_, c)| c.get(key).cloned().unwrap_or_default()).collect()))
            .collect();
        self.tasks.push(TaskSample {
            task: task.to_string(),
            systems: columns.into_iter().map(|c| c.0).collect(),
            rows,
        });
    }

    /// Sentences shown, over all tasks.
    pub fn sentences(&self) -> usize {
        self.tasks.iter().map(|t| t.rows.len()).sum()
    }

    /// Highlighted spans on the page (what a browser counts as `mark` elements), given the
    /// sentence texts.
    pub fn marks(&self, texts: &HashMap<SentKey, String>) -> usize {
        let mut n = 0;
        for t in &self.tasks {
            for (key, marks) in &t.rows {
                let text = texts.get(key).map_or("", String::as_str);
                n += marks.iter().map(|m| inline(text, m).0.len()).sum::<usize>();
            }
        }
        n
    }

    /// The sentence texts the page needs (every shown sentence is a loaded one).
    pub fn texts(&self, sentences: &Sentences) -> HashMap<SentKey, String> {
        let shown = self.tasks.iter().flat_map(|t| t.rows.iter().map(|r| &r.0));
        shown.filter_map(|key| Some((key.clone(), sentences.text(&key.0, key.1)?.to_string()))).collect()
    }

    /// The page.
    pub fn html(&self, run_id: &str, split: &str, texts: &HashMap<SentKey, String>) -> String {
        let mut s = format!(
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>biodistill spans {}</title>\n\
             <style>{CSS}</style></head><body>\n<h1>Spans: gold, teacher and student side by side</h1>\n\
             <p>Run {}, split {}: up to {PER_TASK} sentences per task, from the teacher's sample when there is \
             one. Arrows are relation pairs; a green one is in the gold. <span id=\"count\"></span></p>\n",
            esc(run_id),
            esc(run_id),
            esc(split)
        );
        for t in &self.tasks {
            let _ = write!(s, "<h2>{}</h2>\n<table class=\"spans\"><tr><th>sentence</th>", esc(&t.task));
            t.systems.iter().for_each(|name| {
                let _ = write!(s, "<th>{}</th>", esc(name));
            });
            s.push_str("</tr>\n");
            let gold_pairs = |row: &[Marks]| -> BTreeSet<(MentionKey, MentionKey)> {
                row.first().map(|g| g.pairs.iter().map(|p| p.0.clone()).collect()).unwrap_or_default()
            };
            for (key, marks) in &t.rows {
                let text = texts.get(key).map_or("", String::as_str);
                let gold = gold_pairs(marks);
                let _ = write!(s, "<tr><td class=\"key\">{} #{}</td>", esc(&key.0), key.1);
                for m in marks {
                    s.push_str("<td>");
                    cell(&mut s, text, m, &gold);
                    s.push_str("</td>");
                }
                s.push_str("</tr>\n");
            }
            s.push_str("</table>\n");
            if t.rows.is_empty() {
                s.push_str("<p>No sentence to show.</p>\n");
            }
        }
        s.push_str(&format!("<script>{SCRIPT}</script>\n</body></html>\n"));
        s
    }

    /// Write [`FILE`] into the run directory's root, through a temporary file.
    pub fn write(&self, run_dir: &RunDir, run_id: &str, split: &str, sentences: &Sentences) -> Result<usize> {
        let texts = self.texts(sentences);
        write_file_atomic(&run_dir.root().join(FILE), self.html(run_id, split, &texts).as_bytes())?;
        Ok(self.marks(&texts))
    }
}

/// The spans of `m` that fit inline without overlapping (longer first at the same start),
/// in byte offsets of `text`, and how many were left out. Spans outside the text are left out.
fn inline<'a>(text: &str, m: &'a Marks) -> (Vec<(usize, usize, &'a str)>, usize) {
    let bytes: Vec<usize> = text.char_indices().map(|(b, _)| b).chain([text.len()]).collect();
    let byte = |c: i32| usize::try_from(c).ok().and_then(|c| bytes.get(c).copied());
    let mut spans: Vec<(usize, usize, &str)> = m
        .spans
        .iter()
        .filter_map(|((s, e), label)| Some((byte(*s)?, byte(*e)?, label.as_str())).filter(|(s, e, _)| s < e))
        .collect();
    spans.sort_by_key(|&(s, e, _)| (s, std::cmp::Reverse(e)));
    let (mut kept, mut end) = (Vec::new(), 0);
    for span in &spans {
        if span.0 >= end {
            end = span.1;
            kept.push(*span);
        }
    }
    let left_out = m.spans.len() - kept.len();
    (kept, left_out)
}

/// A palette slot for a label: fixed ones for the relation tasks, hashed for PHI types.
fn color(label: &str) -> usize {
    match label {
        "drug" | "gene" => 0,
        "effect" | "disease" => 1,
        other => 2 + other.bytes().map(usize::from).sum::<usize>() % 6,
    }
}

fn cell(s: &mut String, text: &str, m: &Marks, gold: &BTreeSet<(MentionKey, MentionKey)>) {
    let (spans, left_out) = inline(text, m);
    let mut at = 0;
    for (start, end, label) in spans {
        let _ = write!(
            s,
            "{}<mark class=\"c{}\" title=\"{}\">{}</mark>",
            esc(&text[at..start]),
            color(label),
            esc(label),
            esc(&text[start..end])
        );
        at = end;
    }
    s.push_str(&esc(&text[at..]));
    if m.failed {
        s.push_str("<div class=\"note\">the teacher's call failed</div>");
    }
    if left_out > 0 {
        let _ = write!(s, "<div class=\"note\">{left_out} overlapping span(s) not highlighted</div>");
    }
    if !m.unaligned.is_empty() {
        let list: Vec<String> = m.unaligned.iter().map(|(label, t)| format!("{}: {}", esc(label), esc(t))).collect();
        let _ = write!(s, "<div class=\"note\">not in the text: {}</div>", list.join("; "));
    }
    if !m.pairs.is_empty() {
        // One arrow per pair of texts (a text twice in the sentence is one arrow), green when
        // one of its span pairs is in the gold.
        let mut shown: BTreeMap<&(String, String), bool> = BTreeMap::new();
        for (keys, texts) in &m.pairs {
            *shown.entry(texts).or_default() |= gold.contains(keys);
        }
        s.push_str("<ul class=\"pairs\">");
        for ((subject, object), hit) in shown {
            let class = if hit { "hit" } else { "miss" };
            let _ = write!(s, "<li class=\"{class}\">{} → {}</li>", esc(subject), esc(object));
        }
        s.push_str("</ul>");
    }
}

const CSS: &str = "body{font-family:system-ui,sans-serif;margin:2em;max-width:90em}\
table.spans{border-collapse:collapse;width:100%}th,td{border:1px solid #ccc;padding:.4em;vertical-align:top;text-align:left}\
td.key{font-family:monospace;font-size:.8em;white-space:nowrap}mark{border-radius:3px;padding:0 .1em}\
.c0{background:#a0cbe8}.c1{background:#ffbe7d}.c2{background:#8cd17d}.c3{background:#ff9d9a}.c4{background:#d4a6c8}\
.c5{background:#f1ce63}.c6{background:#86bcb6}.c7{background:#bab0ac}\
ul.pairs{margin:.3em 0;padding-left:1.2em;font-size:.9em}li.hit{color:#1b7a1b}li.miss{color:#b22222}\
.note{font-size:.8em;color:#666}";

/// Counts the highlighted spans and sentences as the browser sees them.
const SCRIPT: &str = "const marks=document.querySelectorAll('mark').length;\
const rows=document.querySelectorAll('table.spans tr').length-document.querySelectorAll('table.spans').length;\
const count=document.getElementById('count');count.dataset.marks=marks;count.dataset.rows=rows;\
count.textContent=marks+' highlighted spans in '+rows+' sentences.';";

#[cfg(test)]
mod tests {
    use std::collections::HashSet;

    use super::*;

    fn marks(spans: &[((i32, i32), &str)]) -> Marks {
        let mut m = Marks::default();
        for (span, label) in spans {
            m.mention(&Mention::new(Some(*span), "x"), label);
        }
        m
    }

    #[test]
    fn inline_spans_use_char_offsets_and_leave_overlaps_out() {
        let text = "Ödem nach Gabe von Aspirin";
        let m = marks(&[((0, 4), "effect"), ((19, 26), "drug"), ((19, 22), "drug"), ((30, 40), "drug")]);
        let (kept, left_out) = inline(text, &m);
        let shown: Vec<&str> = kept.iter().map(|&(s, e, _)| &text[s..e]).collect();
        assert_eq!(shown, ["Ödem", "Aspirin"]);
        assert_eq!(left_out, 2, "the nested span and the one past the end");
    }

    #[test]
    fn a_cell_escapes_text_and_colors_pairs_by_the_gold() {
        let text = "<b> & rash";
        let mut m = Marks::default();
        let (drug, effect) = (Mention::new(Some((0, 3)), "<b>"), Mention::new(Some((6, 10)), "rash"));
        m.pair(&drug, &effect, ("drug", "effect"));
        m.mention(&Mention::new(None, "fever"), "effect");
        let gold = BTreeSet::from([(drug.key(), effect.key())]);
        let mut s = String::new();
        cell(&mut s, text, &m, &gold);
        assert!(s.starts_with("<mark class=\"c0\" title=\"drug\">&lt;b&gt;</mark> &amp; <mark class=\"c1\""), "{s}");
        assert!(s.contains("<li class=\"hit\">&lt;b&gt; → rash</li>"), "{s}");
        assert!(s.contains("not in the text: effect: fever"), "{s}");
        let mut s = String::new();
        cell(&mut s, text, &m, &BTreeSet::new());
        assert!(s.contains("<li class=\"miss\">"), "{s}");
        // The same texts at other spans: still one arrow, green when any of them is gold.
        m.pair(&Mention::new(Some((20, 23)), "<b>"), &effect, ("drug", "effect"));
        let mut s = String::new();
        cell(&mut s, text, &m, &gold);
        assert_eq!(s.matches("<li ").count(), 1, "{s}");
        assert!(s.contains("<li class=\"hit\">"), "{s}");
    }

    #[test]
    fn the_sample_prefers_annotated_sentences_in_scope_and_is_capped() {
        use super::super::load::SentenceRange;
        use super::super::systems::PredPair;
        let doc = |i: usize| format!("d{i}");
        let ranges =
            (0..40).map(|i| (doc(i), vec![SentenceRange { sent_id: 0, start: 0, end: 20, blank: false }])).collect();
        let sentences = Sentences::from_map(ranges);
        let all: BTreeSet<String> = (0..40).map(doc).collect();
        let gold = super::super::Gold::Ade(super::super::ade::AdeGold::new(&[], &all, &sentences));
        let pair = |d: String| PredPair {
            doc_id: d,
            sent_id: 0,
            subject: Mention::new(Some((0, 3)), "abc"),
            object: Mention::new(Some((4, 6)), "de"),
        };
        // The student annotates documents 0..3; the teacher saw documents 0..30.
        let systems = BTreeMap::from([("student", Preds::Pairs((0..3).map(doc).map(pair).collect()))]);
        let labeled: HashSet<SentKey> = (0..30).map(|i| (doc(i), 0)).collect();
        let calls = TeacherCalls { labeled: labeled.clone(), ok: labeled.clone(), ..Default::default() };
        let mut viewer = Viewer::default();
        viewer.add("ade", &gold, &systems, &sentences, Some(&calls));
        let t = &viewer.tasks[0];
        assert_eq!(t.systems, ["gold", "student"]);
        assert_eq!(t.rows.len(), PER_TASK);
        let first: BTreeSet<&str> = t.rows[..3].iter().map(|r| r.0.0.as_str()).collect();
        assert_eq!(first, BTreeSet::from(["d0", "d1", "d2"]), "annotated sentences first");
        assert!(t.rows.iter().all(|r| labeled.contains(&r.0)), "only the teacher's sample");
        let texts: HashMap<SentKey, String> = t.rows.iter().map(|r| (r.0.clone(), "abc de and more".into())).collect();
        assert_eq!(viewer.marks(&texts), 6, "two spans per annotated sentence");
        let html = viewer.html("r1", "dev", &texts);
        assert_eq!(html.matches("<mark ").count(), 6);
        assert_eq!(html.matches("<tr><td class=\"key\">").count(), PER_TASK);
    }
}
