//! The evaluation's outputs: the `eval_results` batch, the plain-text summary the CLI prints,
//! and `report.md` / `report.html` (self-contained: inline CSS and SVG, no script, no assets).
//!
//! Both reports render one list of [`Block`]s, so they always say the same thing.

use std::collections::HashMap;
use std::fmt;
use std::path::Path;
use std::sync::Arc;

use arrow::array::{ArrayRef, Float64Array, Int64Array, StringArray};
use arrow::record_batch::RecordBatch;

use super::TASKS;
use super::history::{self, Point};
use super::metrics::Metric;
use super::render::{Block, CSS, Chart, Lines, esc};
use crate::error::Result;
use crate::run_dir::{batch, write_file_atomic};
use crate::schema::EVAL_RESULTS;

/// One `eval_results` row without its run id.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalRow {
    pub task: String,
    pub dataset: String,
    pub system: String,
    pub subset: String,
    pub metric: String,
    pub value: f64,
    pub n: i64,
}

impl EvalRow {
    fn key(&self) -> Key<'_> {
        (self.task.as_str(), self.dataset.as_str(), self.system.as_str(), self.subset.as_str())
    }

    pub fn new(task: &str, dataset: &str, system: &str, subset: &str, m: Metric) -> Self {
        let n = i64::try_from(m.n).unwrap_or(i64::MAX);
        let [task, dataset, system, subset] = [task, dataset, system, subset].map(str::to_string);
        Self { task, dataset, system, subset, metric: m.name, value: m.value, n }
    }
}

/// Everything one evaluation computed; `Display` is the headline summary.
#[derive(Debug, Clone, PartialEq)]
pub struct EvalReport {
    pub run_id: String,
    pub split: String,
    pub rows: Vec<EvalRow>,
    /// Skipped tasks and systems, and other warnings.
    pub notes: Vec<String>,
    /// Extra `(title, markdown)` sections appended to the reports.
    pub extra: Vec<(String, String)>,
    /// The learning curve over this run directory's evaluations ([`history`]).
    pub curve: Vec<Point>,
}

/// The metric family shown as P/R/F1 in the summary of a (task, dataset).
pub fn headline_family(task: &str, dataset: &str) -> &'static str {
    match (task, dataset) {
        ("ade", _) => "pair_strict",
        ("gene_disease", super::gene_disease::GAD) => "positive",
        ("gene_disease", _) => "pair_text",
        _ => "strict",
    }
}

type Key<'a> = (&'a str, &'a str, &'a str, &'a str);

impl EvalReport {
    /// `(value, n)` of one metric.
    pub fn get(&self, task: &str, dataset: &str, system: &str, subset: &str, metric: &str) -> Option<(f64, i64)> {
        self.rows
            .iter()
            .find(|r| r.key() == (task, dataset, system, subset) && r.metric == metric)
            .map(|r| (r.value, r.n))
    }

    /// The rows as an [`EVAL_RESULTS`] batch.
    pub fn batch(&self) -> Result<RecordBatch> {
        let strings =
            |f: fn(&EvalRow) -> &str| -> ArrayRef { Arc::new(StringArray::from_iter_values(self.rows.iter().map(f))) };
        batch(
            &EVAL_RESULTS,
            vec![
                Arc::new(StringArray::from_iter_values(self.rows.iter().map(|_| self.run_id.as_str()))),
                strings(|r| &r.task),
                strings(|r| &r.dataset),
                strings(|r| &r.system),
                strings(|r| &r.subset),
                strings(|r| &r.metric),
                Arc::new(Float64Array::from_iter_values(self.rows.iter().map(|r| r.value))),
                Arc::new(Int64Array::from_iter_values(self.rows.iter().map(|r| r.n))),
            ],
        )
    }

    /// Distinct (task, dataset, system, subset) in task order, then order of appearance.
    fn groups(&self) -> Vec<Key<'_>> {
        let mut seen: Vec<Key<'_>> = Vec::new();
        for r in &self.rows {
            let key = r.key();
            if !seen.contains(&key) {
                seen.push(key);
            }
        }
        seen.sort_by_key(|k| (TASKS.iter().position(|t| *t == k.0), k.1));
        seen
    }

    fn blocks(&self) -> Vec<Block> {
        let view = View { report: self, values: self.lookup(), groups: self.groups() };
        let mut out = vec![
            Block::Heading(1, "biodistill evaluation".into()),
            Block::Text(format!("Run {}, gold split {}.", self.run_id, self.split)),
            Block::Text(
                "Not the paper's setup: the student is all-MiniLM-L6-v2 (Gu et al. 2023 use PubMedBERT) and the teacher is \
                 a small local model (not GPT-4), so these figures are not comparable to the paper's."
                    .into(),
            ),
            Block::Heading(2, "Summary".into()),
            view.summary(),
        ];
        for task in TASKS.iter().filter(|t| view.groups.iter().any(|k| k.0 == **t)) {
            view.task(task, &mut out);
        }
        learning_curve(&self.curve, &mut out);
        out.push(Block::Heading(2, "Conventions".into()));
        out.extend(CONVENTIONS.iter().map(|line| Block::Text(line.to_string())));
        if !self.notes.is_empty() {
            out.push(Block::Heading(2, "Notes".into()));
            out.extend(self.notes.iter().map(|n| Block::Text(format!("- {n}"))));
        }
        for (title, body) in &self.extra {
            out.push(Block::Heading(2, title.clone()));
            out.push(Block::Markdown(body.clone()));
        }
        out
    }

    fn lookup(&self) -> HashMap<(Key<'_>, &str), (f64, i64)> {
        self.rows.iter().map(|r| ((r.key(), r.metric.as_str()), (r.value, r.n))).collect()
    }

    /// `report.md`.
    pub fn markdown(&self) -> String {
        let mut s = String::new();
        for b in self.blocks() {
            b.markdown(&mut s);
        }
        s
    }

    /// `report.html`: the same content, with bar charts.
    pub fn html(&self) -> String {
        let mut s = format!(
            "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\"><title>biodistill evaluation {}</title>\n<style>{CSS}</style></head><body>\n",
            esc(&self.run_id)
        );
        for b in self.blocks() {
            b.html(&mut s);
        }
        s.push_str("</body></html>\n");
        s
    }

    /// Write `report.md` and `report.html` into `dir`, each through a temporary file.
    pub fn write_reports(&self, dir: &Path) -> Result<()> {
        for (name, text) in [("report.md", self.markdown()), ("report.html", self.html())] {
            write_file_atomic(&dir.join(name), text.as_bytes())?;
        }
        Ok(())
    }
}

/// The report's rows, indexed for rendering.
struct View<'a> {
    report: &'a EvalReport,
    values: HashMap<(Key<'a>, &'a str), (f64, i64)>,
    groups: Vec<Key<'a>>,
}

const PRF_HEADER: [&str; 7] = ["metric", "system", "subset", "P", "R", "F1", "n"];

impl<'a> View<'a> {
    fn cell(&self, k: Key<'_>, metric: &str) -> Option<(f64, i64)> {
        self.values.get(&(k, metric)).copied()
    }

    /// P, R, F1 and the F1's n of `family`.
    fn prf_cells(&self, k: Key<'_>, family: &str) -> Vec<String> {
        let [p, r, f] = ["precision", "recall", "f1"].map(|s| self.cell(k, &format!("{family}_{s}")));
        vec![fmt_value(p), fmt_value(r), fmt_value(f), f.map_or("–".into(), |v| v.1.to_string())]
    }

    /// The headline family of every (task, dataset, system, subset).
    fn summary(&self) -> Block {
        let rows = self.groups.iter().map(|&k| {
            let family = headline_family(k.0, k.1);
            [k.0, k.1, k.2, k.3, family].map(str::to_string).into_iter().chain(self.prf_cells(k, family)).collect()
        });
        Block::table(&["task", "dataset", "system", "subset", "metric", "P", "R", "F1", "n"], rows.collect())
    }

    fn task(&self, task: &str, out: &mut Vec<Block>) {
        out.push(Block::Heading(2, task.to_string()));
        let groups: Vec<Key<'a>> = self.groups.iter().copied().filter(|k| k.0 == task).collect();
        let datasets: Vec<&str> = dedup_in_order(groups.iter().map(|k| k.1));
        let systems: Vec<(&str, &str)> = dedup_in_order(groups.iter().map(|k| (k.2, k.3)));
        let f1 = datasets.iter().map(|d| {
            let f1 = format!("{}_f1", headline_family(task, d));
            (d.to_string(), systems.iter().map(|(sys, sub)| defined(self.cell((task, d, sys, sub), &f1))).collect())
        });
        let series = systems.iter().map(|s| series_label(*s)).collect();
        out.push(Block::Chart(Chart { title: format!("{task}: headline F1"), series, groups: f1.collect() }));
        for dataset in datasets {
            let groups: Vec<Key<'a>> = groups.iter().copied().filter(|k| k.1 == dataset).collect();
            self.dataset(task, dataset, &groups, out);
        }
    }

    fn dataset(&self, task: &str, dataset: &str, groups: &[Key<'a>], out: &mut Vec<Block>) {
        out.push(Block::Heading(3, dataset.to_string()));
        let family = headline_family(task, dataset);
        let pr = groups.iter().map(|&k| {
            let bars = ["precision", "recall"].iter().map(|s| defined(self.cell(k, &format!("{family}_{s}"))));
            (series_label((k.2, k.3)), bars.collect())
        });
        out.push(Block::Chart(Chart {
            title: format!("{dataset}: {family} precision and recall"),
            series: vec!["precision".into(), "recall".into()],
            groups: pr.collect(),
        }));
        let rows = self.report.rows.iter().filter(|r| r.task == task && r.dataset == dataset);
        let metrics: Vec<&str> = dedup_in_order(rows.map(|r| r.metric.as_str()));
        let families: Vec<&str> = metrics.iter().filter_map(|m| m.strip_suffix("_precision")).collect();
        let (typed, plain): (Vec<&str>, Vec<&str>) = families.iter().partition(|f| per_type(f).is_some());
        let prf_rows = |families: &[&str]| -> Vec<Vec<String>> {
            let cells = |f: &str, k: Key<'_>| [f, k.2, k.3].map(str::to_string).into_iter().chain(self.prf_cells(k, f));
            families.iter().flat_map(|f| groups.iter().map(move |&k| cells(f, k).collect())).collect()
        };
        if !plain.is_empty() {
            out.push(Block::table(&PRF_HEADER, prf_rows(&plain)));
        }
        let in_family =
            |m: &str| families.iter().any(|f| ["_precision", "_recall", "_f1"].iter().any(|s| format!("{f}{s}") == m));
        let others = metrics.iter().filter(|m| !in_family(m)).flat_map(|m| groups.iter().map(move |&k| (m, k)));
        let others: Vec<Vec<String>> = others
            .filter_map(|(m, k)| {
                let (value, n) = self.cell(k, m)?;
                Some(vec![m.to_string(), k.2.into(), k.3.into(), format!("{value:.3}"), n.to_string()])
            })
            .collect();
        if !others.is_empty() {
            out.push(Block::table(&["metric", "system", "subset", "value", "n"], others));
        }
        if !typed.is_empty() {
            out.push(Block::Text("Per type (strict = exact span and type, lenient = overlap and type):".into()));
            out.push(Block::table(&PRF_HEADER, prf_rows(&typed)));
        }
    }
}

/// Headline F1 against the silver set over every evaluation of the split: a chart per
/// (task, dataset) and one table.
fn learning_curve(curve: &[Point], out: &mut Vec<Block>) {
    if curve.is_empty() {
        return;
    }
    out.push(Block::Heading(2, "Learning curve".into()));
    let runs = dedup_in_order(curve.iter().map(|p| (p.run_id.as_str(), p.evaluated_at.as_str()))).len();
    out.push(Block::Text(format!(
        "Headline F1 against the silver sentences the run directory held, over its {runs} evaluation(s) of this \
         split (table eval_history; teacher hours count the calls that reached the teacher, not cached or shipped \
         answers)."
    )));
    let series_of =
        |p: &Point| history::SERIES.iter().position(|(sys, sub)| p.system == sys.as_str() && p.subset == *sub);
    let names: Vec<String> = history::SERIES.iter().map(|(sys, sub)| series_label((sys.as_str(), sub))).collect();
    let pairs: Vec<(&str, &str)> = dedup_in_order(curve.iter().map(|p| (p.task.as_str(), p.dataset.as_str())));
    for &(task, dataset) in &pairs {
        let of = |si: usize| {
            let points = curve.iter().filter(|p| p.task == task && p.dataset == dataset && series_of(p) == Some(si));
            let tip = |p: &Point| format!("{} at {}: {:.3}", p.run_id, p.evaluated_at, p.f1);
            points.map(|p| (p.silver_sentences as f64, p.f1, tip(p))).collect::<Vec<_>>()
        };
        let series = (0..names.len()).map(|si| (names[si].clone(), of(si))).filter(|(_, p)| !p.is_empty());
        out.push(Block::Lines(Lines {
            title: format!("{task} / {dataset}: {}_f1", headline_family(task, dataset)),
            x_label: "silver sentences".into(),
            series: series.collect(),
        }));
    }
    let keys: Vec<(&str, &str, &str, &str)> = dedup_in_order(
        curve.iter().map(|p| (p.evaluated_at.as_str(), p.run_id.as_str(), p.task.as_str(), p.dataset.as_str())),
    );
    let rows = keys.into_iter().map(|(at, run, task, dataset)| {
        let mine: Vec<&Point> = curve
            .iter()
            .filter(|p| {
                (p.evaluated_at.as_str(), p.run_id.as_str(), p.task.as_str(), p.dataset.as_str())
                    == (at, run, task, dataset)
            })
            .collect();
        let first = mine[0];
        let f1 =
            |si| mine.iter().find(|p| series_of(p) == Some(si)).map_or("–".to_string(), |p| format!("{:.3}", p.f1));
        vec![
            run.to_string(),
            at.to_string(),
            task.to_string(),
            dataset.to_string(),
            first.silver_sentences.to_string(),
            format!("{:.2}", first.teacher_hours),
            f1(0),
            f1(1),
            f1(2),
        ]
    });
    let mut header = vec!["run", "evaluated", "task", "dataset", "silver sentences", "teacher hours"];
    header.extend(names.iter().map(String::as_str));
    out.push(Block::table(&header, rows.collect()));
}

const CONVENTIONS: [&str; 4] = [
    "- n is the denominator: predictions for P, gold items for R and F1 (the summary's n), documents for a macro average, rows for accuracy, gold tokens for token_recall.",
    "- An undefined ratio (P with no predictions, R with no gold) is reported as 0 with n = 0, shown as – here.",
    "- Subsets: all = every gold sentence or document of the split; teacher_sample = only the sentences the teacher was asked about (a failed call counts as an empty answer). The teacher is scored on teacher_sample only; compare systems there. teacher_agreed (with label.passes >= 2) = the labels two or more passes agree on, the silver set train.filters.require_agreement trains on. teacher_confident (with teacher.logprobs and train.filters.min_teacher_confidence > 0) = the labels the teacher gave with at least that confidence, the silver set that filter trains on.",
    "- Matching is one-to-one after removing duplicates; strict = exact offsets, lenient = overlapping offsets (or equal normalized text for an unaligned teacher string).",
];

fn fmt_value(v: Option<(f64, i64)>) -> String {
    match defined(v) {
        Some(v) => format!("{v:.3}"),
        None => "–".into(),
    }
}

/// The value unless undefined (`n = 0`) or missing.
fn defined(v: Option<(f64, i64)>) -> Option<f64> {
    v.filter(|v| v.1 > 0).map(|v| v.0)
}

fn series_label((system, subset): (&str, &str)) -> String {
    let system = if system == "supervised_reference" { "sup-ref" } else { system };
    let subset = if subset == super::SUBSET_TEACHER_SAMPLE { "sample" } else { subset };
    format!("{system} · {subset}")
}

/// `strict_NAME` -> `NAME`: a per-type family.
fn per_type(family: &str) -> Option<&str> {
    let t = family.strip_prefix("strict_").or_else(|| family.strip_prefix("lenient_"))?;
    (!t.is_empty() && t.chars().all(|c| c.is_ascii_uppercase() || c == '_')).then_some(t)
}

fn dedup_in_order<T: PartialEq>(items: impl IntoIterator<Item = T>) -> Vec<T> {
    let mut out = Vec::new();
    for item in items {
        if !out.contains(&item) {
            out.push(item);
        }
    }
    out
}

impl fmt::Display for EvalReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let view = View { report: self, values: self.lookup(), groups: self.groups() };
        let line = |cells: &[&str]| {
            format!(
                "{:<13} {:<14} {:<21} {:<15} {:<12} {:>6} {:>6} {:>6} {:>7}",
                cells[0], cells[1], cells[2], cells[3], cells[4], cells[5], cells[6], cells[7], cells[8]
            )
        };
        writeln!(f, "{}", line(&["task", "dataset", "system", "subset", "metric", "P", "R", "F1", "n"]))?;
        for &k in &view.groups {
            let family = headline_family(k.0, k.1);
            let prf = view.prf_cells(k, family);
            let cells: Vec<&str> =
                [k.0, k.1, k.2, k.3, family].into_iter().chain(prf.iter().map(String::as_str)).collect();
            writeln!(f, "{}", line(&cells))?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::eval::metrics::Score;

    fn row(task: &str, dataset: &str, system: &str, subset: &str, metric: &str, value: f64, n: usize) -> EvalRow {
        EvalRow::new(task, dataset, system, subset, Metric::new(metric, Score { value, n }))
    }

    fn report() -> EvalReport {
        let mut rows = Vec::new();
        for (metric, value, n) in [
            ("strict_precision", 0.5, 4),
            ("strict_recall", 0.25, 8),
            ("strict_f1", 1.0 / 3.0, 8),
            ("token_recall", 0.75, 12),
            ("strict_NAME_precision", 0.0, 0),
            ("strict_NAME_recall", 0.0, 3),
            ("strict_NAME_f1", 0.0, 3),
        ] {
            rows.push(row("phi", "meddocan", "student", "all", metric, value, n));
        }
        rows.push(row("ade", "ade_corpus_v2", "teacher", "teacher_sample", "pair_strict_f1", 0.5, 2));
        rows.push(row("ade", "ade_corpus_v2", "teacher", "teacher_sample", "pair_strict_macro_f1", 0.4, 2));
        EvalReport {
            run_id: "r<1>".into(),
            split: "dev".into(),
            rows,
            notes: vec!["gene_disease: table gold_gene_disease is missing; task skipped".into()],
            extra: vec![("Timings".into(), "a <b> | c".into())],
            curve: vec![],
        }
    }

    #[test]
    fn batch_has_the_schema_and_one_row_per_metric() {
        let r = report();
        let b = r.batch().unwrap();
        assert_eq!((b.schema(), b.num_rows()), (EVAL_RESULTS.clone(), 9));
        let n = b.column(7).as_any().downcast_ref::<Int64Array>().unwrap();
        assert_eq!(n.value(1), 8);
        let metric = b.column(5).as_any().downcast_ref::<StringArray>().unwrap();
        assert_eq!(metric.value(8), "pair_strict_macro_f1");
        assert_eq!(r.get("phi", "meddocan", "student", "all", "token_recall"), Some((0.75, 12)));
        assert_eq!(r.get("phi", "meddocan", "student", "teacher_sample", "token_recall"), None);
    }

    #[test]
    fn summary_lists_headline_metrics_in_task_order() {
        let text = report().to_string();
        let lines: Vec<&str> = text.lines().collect();
        assert_eq!(lines.len(), 3, "{text}");
        assert!(lines[0].starts_with("task") && lines[1].starts_with("ade") && lines[2].starts_with("phi"));
        // ADE has only an F1: P and R are missing and shown as –.
        assert!(lines[1].contains("pair_strict") && lines[1].contains("0.500") && lines[1].contains('–'), "{text}");
        let cells: Vec<&str> = lines[2].split_whitespace().collect();
        assert_eq!(cells, ["phi", "meddocan", "student", "all", "strict", "0.500", "0.250", "0.333", "8"]);
    }

    #[test]
    fn markdown_sections_tables_and_escaping() {
        let md = report().markdown();
        assert!(md.contains("| phi | meddocan | student | all | strict | 0.500 | 0.250 | 0.333 | 8 |"), "{md}");
        // Single metrics go to their own table; per-type families to the per-type table,
        // with an undefined precision shown as –.
        assert!(md.contains("| token_recall | student | all | 0.750 | 12 |"), "{md}");
        assert!(md.contains("| pair_strict_macro_f1 | teacher | teacher_sample | 0.400 | 2 |"), "{md}");
        assert!(
            md.contains("Per type") && md.contains("| strict_NAME | student | all | – | 0.000 | 0.000 | 3 |"),
            "{md}"
        );
        assert!(md.find("## ade").unwrap() < md.find("## phi").unwrap());
        assert!(md.contains("## Notes") && md.contains("gold_gene_disease"));
        assert!(md.contains("## Timings\n\na <b> | c"), "extra markdown is verbatim");
        assert!(md.contains("PubMedBERT") && md.contains("GPT-4"));
    }

    #[test]
    fn html_is_self_contained_and_escaped() {
        let html = report().html();
        assert!(html.starts_with("<!DOCTYPE html>") && html.trim_end().ends_with("</html>"));
        assert!(html.contains("r&lt;1&gt;") && !html.contains("r<1>"));
        assert!(html.contains("<h2>Timings</h2>\n<p>a &lt;b&gt; | c</p>"), "{html}");
        assert_eq!(html.matches("<svg").count(), 4, "F1 chart per task, P/R chart per dataset");
        assert!(!html.contains("<script") && !html.contains("<link") && !html.contains("<img"));
    }

    #[test]
    fn reports_are_written_to_the_directory() {
        let dir = tempfile::tempdir().unwrap();
        report().write_reports(dir.path()).unwrap();
        let mut names: Vec<String> =
            std::fs::read_dir(dir.path()).unwrap().map(|e| e.unwrap().file_name().into_string().unwrap()).collect();
        names.sort();
        assert_eq!(names, ["report.html", "report.md"]);
    }
}
