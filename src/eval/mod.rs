//! `biodistill eval`: score the teacher, the student and the supervised reference against the
//! gold sets, on identical inputs.
//!
//! Input tables: `gold_ade`, `gold_gene_disease`, `gold_phi` (rows of [`EvalConfig::split`]),
//! `documents` (split and source, for gold documents without gold rows), `sentences` (offset
//! conversion, required), `teacher_calls` + `teacher_labels` (the teacher), `ade_relations`,
//! `gene_disease`, `phi_spans` (the student) and their `_supervised_reference` twins. A missing
//! gold table skips its task and a missing output table skips that system, with a warning.
//! Each is read by a query of one DataFusion session over the run directory ([`load::Tables`]):
//! the corpus tables are filtered to the split in the plan, and the extracted tables are joined
//! with the evaluated sentences there.
//!
//! Subsets: `all` (every gold sentence or document of the split) and `teacher_sample` (only the
//! sentences the teacher was asked about, whatever its answer: a failed call is an empty
//! prediction). The teacher is scored on `teacher_sample` only, so comparing the three systems
//! on `teacher_sample` compares them on the same inputs.
//!
//! Output: the `eval_results` table ([`crate::schema::EVAL_RESULTS`]), the rows appended to `eval_history`
//! ([`history`], the learning curve across runs), and `report.md` / `report.html` in the run
//! directory. Metric definitions: [`metrics`] (conventions), [`ade`], [`gene_disease`],
//! [`phi`].

pub mod ade;
pub mod gene_disease;
pub mod history;
pub mod load;
pub mod metrics;
pub mod paired;
pub mod phi;
mod render;
pub mod report;
pub mod systems;
pub mod viewer;

use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};

use serde::{Deserialize, Serialize};

use self::ade::AdeGold;
use self::gene_disease::GeneDiseaseGold;
use self::load::{ADE_SOURCE, SentKey, Sentences, Tables};
use self::metrics::Metric;
use self::phi::PhiGold;
pub use self::report::{EvalReport, EvalRow};
use self::systems::{PredPair, PredSpan, System, TeacherCalls, TeacherLabel};
use crate::error::{Error, Result};
use crate::run_dir::RunDir;
use crate::schema::{EVAL_RESULTS, table as tables};

/// Every gold sentence or document of the split.
pub const SUBSET_ALL: &str = "all";
/// Only the sentences (documents) the teacher labeled.
pub const SUBSET_TEACHER_SAMPLE: &str = "teacher_sample";

/// The tasks evaluated, by their table name.
pub const TASKS: [&str; 3] = crate::vocab::Task::NAMES;

/// Evaluation configuration (`[eval]` in a pipeline file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EvalConfig {
    /// Which of `ade`, `gene_disease`, `phi` to evaluate.
    pub tasks: Vec<String>,
    /// The gold split evaluated on.
    pub split: String,
    /// Write `report.md` and `report.html`.
    pub report: bool,
    /// Per task, the sources the students were run over (from `[extract]`; a task missing
    /// here: every source). A gold dataset they never read would score 0 for them, so it is
    /// not scored for them (the teacher's own sample still is).
    #[serde(skip)]
    pub extracted_sources: BTreeMap<String, Vec<String>>,
    /// The splits the students were run over (empty: every split).
    #[serde(skip)]
    pub extracted_splits: Vec<String>,
    /// `train.filters.min_teacher_confidence`: the `teacher_confident` system scores the
    /// labels that filter keeps.
    #[serde(skip)]
    pub min_teacher_confidence: f64,
}

impl Default for EvalConfig {
    fn default() -> Self {
        Self {
            tasks: TASKS.iter().map(|t| t.to_string()).collect(),
            split: "dev".into(),
            report: true,
            extracted_sources: BTreeMap::new(),
            extracted_splits: Vec::new(),
            min_teacher_confidence: 0.0,
        }
    }
}

impl EvalConfig {
    /// Whether the students' outputs cover `dataset` of `task` on the evaluated split.
    fn extracted(&self, task: &str, dataset: &str) -> bool {
        (self.extracted_splits.is_empty() || self.extracted_splits.contains(&self.split))
            && self.extracted_sources.get(task).is_none_or(|sources| sources.iter().any(|s| s == dataset))
    }
}

/// Which units a subset admits.
#[derive(Debug, Clone, Copy)]
pub enum Scope<'a> {
    /// Everything in the gold.
    All,
    /// The sentences the teacher was asked about; a document-level unit needs every non-blank
    /// sentence of its document (from `index`) labeled.
    Labeled { sentences: &'a HashSet<SentKey>, index: &'a Sentences },
}

impl Scope<'_> {
    pub fn sentence(&self, doc: &str, sent: i32) -> bool {
        match self {
            Scope::All => true,
            Scope::Labeled { sentences, .. } => sentences.contains(&(doc.to_string(), sent)),
        }
    }

    pub fn document(&self, doc: &str) -> bool {
        match self {
            Scope::All => true,
            Scope::Labeled { sentences, index } => {
                let mut text = index.of_doc(doc).iter().filter(|s| !s.blank).peekable();
                text.peek().is_some() && text.all(|s| sentences.contains(&(doc.to_string(), s.sent_id)))
            }
        }
    }

    /// A sentence when `sent` is set, else the whole document.
    pub fn unit(&self, doc: &str, sent: Option<i32>) -> bool {
        sent.map_or_else(|| self.document(doc), |s| self.sentence(doc, s))
    }
}

/// Evaluate and write `eval_results` (and the reports when `cfg.report`).
pub async fn run(cfg: &EvalConfig, run_dir: &RunDir, run_id: &str) -> Result<EvalReport> {
    run_with_context(cfg, run_dir, run_id, &[]).await
}

enum Gold {
    Ade(AdeGold),
    GeneDisease(GeneDiseaseGold),
    Phi(PhiGold),
}

enum Preds {
    Pairs(Vec<PredPair>),
    Spans(Vec<PredSpan>),
}

/// [`run`], appending `extra_markdown` sections `(title, markdown body)` (e.g. stage timings)
/// to both reports.
pub async fn run_with_context(
    cfg: &EvalConfig,
    run_dir: &RunDir,
    run_id: &str,
    extra_markdown: &[(String, String)],
) -> Result<EvalReport> {
    if let Some(bad) = cfg.tasks.iter().find(|t| !TASKS.contains(&t.as_str())) {
        return Err(Error::Config(format!("eval.tasks: unknown task {bad:?} (expected one of {})", TASKS.join(", "))));
    }
    let split = cfg.split.as_str();
    let mut notes = Vec::new();
    let mut note = |message: String| {
        tracing::warn!("{message}");
        notes.push(message);
    };
    let wanted = |task: &str| cfg.tasks.iter().any(|t| t == task);
    let db = Tables::open(run_dir).await?;

    // Gold, and the documents each task covers.
    let ade_rows = if wanted("ade") { load::gold_ade(&db, split).await? } else { None };
    let gd_rows = if wanted("gene_disease") { load::gold_gene_disease(&db, split).await? } else { None };
    let phi_rows = if wanted("phi") { load::gold_phi(&db, split).await? } else { None };
    for (task, table, rows) in [
        ("ade", tables::GOLD_ADE, ade_rows.is_some()),
        ("gene_disease", tables::GOLD_GENE_DISEASE, gd_rows.is_some()),
        ("phi", tables::GOLD_PHI, phi_rows.is_some()),
    ] {
        if wanted(task) && !rows {
            note(format!("{task}: table {table} is missing; task skipped"));
        }
    }
    let mut sources: BTreeSet<String> = BTreeSet::new();
    if ade_rows.is_some() {
        sources.insert(ADE_SOURCE.to_string());
    }
    sources.extend(gd_rows.iter().flatten().map(|r| r.dataset.clone()));
    sources.extend(phi_rows.iter().flatten().map(|r| r.dataset.clone()));
    let docs_by_source = match load::documents_by_source(&db, split, &sources).await? {
        Some(docs) => docs,
        None => {
            note("documents table missing: only documents with gold rows are evaluated".into());
            BTreeMap::new()
        }
    };
    let ade_docs: Option<BTreeSet<String>> = ade_rows.as_ref().map(|rows| {
        let mut docs = docs_by_source.get(ADE_SOURCE).cloned().unwrap_or_default();
        docs.extend(rows.iter().map(|r| r.doc_id.clone()));
        docs
    });
    let gd_gold = gd_rows.map(|rows| GeneDiseaseGold::new(rows, &docs_by_source));
    let phi_gold = phi_rows.map(|rows| PhiGold::new(rows, &docs_by_source));
    let mut all_docs: BTreeSet<String> = ade_docs.iter().flatten().cloned().collect();
    all_docs.extend(gd_gold.iter().flat_map(|g| g.docs()).cloned());
    all_docs.extend(phi_gold.iter().flat_map(|g| g.docs()).cloned());
    let any_gold = ade_docs.is_some() || gd_gold.is_some() || phi_gold.is_some();
    let sentences = if any_gold { Sentences::load(&db, &all_docs).await? } else { Sentences::default() };
    let mut golds: Vec<(&str, Gold)> = Vec::new();
    if let (Some(rows), Some(docs)) = (&ade_rows, &ade_docs) {
        golds.push(("ade", Gold::Ade(AdeGold::new(rows, docs, &sentences))));
    }
    if let Some(gold) = gd_gold {
        golds.push(("gene_disease", Gold::GeneDisease(gold)));
    }
    if let Some(gold) = phi_gold {
        golds.push(("phi", Gold::Phi(gold)));
    }

    // The teacher.
    let calls = systems::teacher_calls(&db).await?;
    let labels = if calls.is_some() { systems::teacher_labels(&db).await? } else { None };
    match (&calls, &labels) {
        (None, _) => {
            note(format!("{} missing: teacher not evaluated, no {SUBSET_TEACHER_SAMPLE} subset", tables::TEACHER_CALLS))
        }
        (Some(_), None) => note(format!("{} missing: teacher not evaluated", tables::TEACHER_LABELS)),
        _ => {}
    }

    let mut rows = Vec::new();
    let mut viewer = viewer::Viewer::default();
    let mut not_extracted = BTreeSet::new();
    let mut differences = Vec::new();
    for (task, gold) in &golds {
        let mut scored: BTreeMap<&str, Preds> = BTreeMap::new();
        let task_calls: Option<&TeacherCalls> = calls.as_ref().and_then(|c| c.get(*task));
        if calls.is_some() && task_calls.is_none() {
            note(format!("{task}: the teacher labeled no sentence; teacher and {SUBSET_TEACHER_SAMPLE} skipped"));
        }
        for system in System::ALL {
            if system == System::PhiRules && *task != "phi" {
                continue;
            }
            let preds = match predictions(
                &db,
                system,
                task,
                &sentences,
                task_calls,
                labels.as_deref(),
                cfg.min_teacher_confidence,
            )
            .await?
            {
                Some(preds) => preds,
                None => {
                    if !system.is_teacher() {
                        let base = base_table(task);
                        note(format!("{task}: table {} is missing; {} skipped", system.table(base), system.as_str()));
                    }
                    continue;
                }
            };
            let mut subsets: Vec<(&str, Scope<'_>)> = Vec::new();
            if !system.is_teacher() {
                subsets.push((SUBSET_ALL, Scope::All));
            }
            if let Some(c) = task_calls {
                subsets.push((SUBSET_TEACHER_SAMPLE, Scope::Labeled { sentences: &c.labeled, index: &sentences }));
            }
            for (subset, scope) in subsets {
                for (dataset, metrics) in evaluate(gold, &preds, &sentences, scope) {
                    if system.is_extracted() && !cfg.extracted(task, &dataset) {
                        not_extracted.insert(format!("{task}/{dataset}"));
                        continue;
                    }
                    rows.extend(metrics.into_iter().map(|m| EvalRow::new(task, &dataset, system.as_str(), subset, m)));
                }
            }
            scored.insert(system.as_str(), preds);
        }
        viewer.add(task, gold, &scored, &sentences, task_calls);
        if let (Some(c), Some(student), Some(teacher)) =
            (task_calls, scored.get(System::Student.as_str()), scored.get(System::Teacher.as_str()))
        {
            for (dataset, d) in student_minus_teacher(task, gold, student, teacher, &sentences, &c.labeled) {
                if !cfg.extracted(task, &dataset) {
                    continue;
                }
                let family = report::headline_family(task, &dataset);
                rows.extend(
                    paired::metrics(family, &d)
                        .into_iter()
                        .map(|m| EvalRow::new(task, &dataset, paired::SYSTEM, SUBSET_TEACHER_SAMPLE, m)),
                );
                differences.push(format!(
                    "| {task} | {dataset} | {family}_f1 | {:+.3} | [{:+.3}, {:+.3}] | {} |",
                    d.diff, d.low, d.high, d.units
                ));
            }
        }
    }
    let mut extra = extra_markdown.to_vec();
    if !differences.is_empty() {
        extra.insert(
            0,
            (
                "Student − teacher on the same sentences".to_string(),
                format!(
                    "Paired bootstrap over the teacher's sentences ({} draws); an interval that excludes 0 \
                     separates the two.\n\n| task | dataset | metric | student − teacher | 95% interval | \
                     sentences |\n|---|---|---|---|---|---|\n{}\n",
                    paired::DRAWS,
                    differences.join("\n")
                ),
            ),
        );
    }

    if !not_extracted.is_empty() {
        let list = not_extracted.into_iter().collect::<Vec<_>>().join(", ");
        note(format!("not extracted by the students (see [extract]), so not scored for them: {list}"));
    }
    if cfg.report && viewer.sentences() > 0 {
        let marks = viewer.write(run_dir, run_id, split, &sentences)?;
        extra.push((
            "Spans".to_string(),
            format!(
                "[{file}]({file}): {} sentences with the gold, teacher and student spans side by side \
                 ({marks} highlighted).",
                viewer.sentences(),
                file = viewer::FILE,
            ),
        ));
    }
    let mut report =
        EvalReport { run_id: run_id.to_string(), split: split.to_string(), rows, notes, extra, curve: vec![] };
    run_dir.write_table(tables::EVAL_RESULTS, EVAL_RESULTS.clone(), &[report.batch()?])?;
    let evaluated_at = chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true);
    let dev = if db.has(crate::schema::table::DOCUMENTS) {
        crate::plan::documents_in_split(db.context(), run_dir, crate::schema::split::DEV).await?
    } else {
        Default::default()
    };
    let silver = history::silver(calls.as_ref().unwrap_or(&HashMap::new()), &dev);
    report.curve = history::append(run_dir, &report, &silver, &evaluated_at)?;
    if cfg.report {
        report.write_reports(run_dir.root())?;
    }
    tracing::info!(rows = report.rows.len(), "wrote {}", tables::EVAL_RESULTS);
    Ok(report)
}

fn base_table(task: &str) -> &'static str {
    match task {
        "ade" => tables::ADE_RELATIONS,
        "gene_disease" => tables::GENE_DISEASE,
        _ => tables::PHI_SPANS,
    }
}

/// One system's predictions for `task`; `None` when the system has no output for it.
async fn predictions(
    db: &Tables<'_>,
    system: System,
    task: &str,
    sentences: &Sentences,
    calls: Option<&TeacherCalls>,
    labels: Option<&[TeacherLabel]>,
    min_teacher_confidence: f64,
) -> Result<Option<Preds>> {
    if system.is_teacher() {
        let (Some(calls), Some(labels)) = (calls, labels) else { return Ok(None) };
        let subset;
        let labels = match system {
            System::TeacherAgreed | System::TeacherConfident => {
                let kept = match system {
                    System::TeacherAgreed => systems::agreed_labels(labels, task, calls),
                    _ => systems::confident_labels(labels, task, min_teacher_confidence),
                };
                let Some(kept) = kept else { return Ok(None) };
                subset = kept;
                &subset
            }
            _ => labels,
        };
        return Ok(Some(match task {
            "phi" => Preds::Spans(systems::teacher_phi(labels, &calls.ok, sentences)),
            _ => Preds::Pairs(systems::teacher_pairs(labels, task, &calls.ok)),
        }));
    }
    if system == System::PhiRules {
        return Ok(Some(Preds::Spans(systems::rules_phi(sentences))));
    }
    let name = system.table(base_table(task));
    Ok(match task {
        "ade" => systems::system_pairs(db, &name, "drug", "effect").await?.map(Preds::Pairs),
        "gene_disease" => systems::system_pairs(db, &name, "gene", "disease").await?.map(Preds::Pairs),
        _ => systems::system_phi(db, &name, sentences).await?.map(Preds::Spans),
    })
}

/// Per dataset, student − teacher headline F1 over the teacher's `labeled` sentences, each
/// sentence scored alone for both systems (see [`paired`]). The units are the labeled
/// sentences holding a gold or predicted item of either system.
fn student_minus_teacher(
    task: &str,
    gold: &Gold,
    student: &Preds,
    teacher: &Preds,
    sentences: &Sentences,
    labeled: &HashSet<SentKey>,
) -> Vec<(String, paired::Difference)> {
    let mut units: BTreeMap<String, Vec<(paired::Counts, paired::Counts)>> = BTreeMap::new();
    let mut ordered: Vec<&SentKey> = labeled.iter().collect();
    ordered.sort();
    for unit in ordered {
        let one = HashSet::from([unit.clone()]);
        let scope = Scope::Labeled { sentences: &one, index: sentences };
        let teacher_metrics: BTreeMap<String, Vec<Metric>> =
            evaluate(gold, teacher, sentences, scope).into_iter().collect();
        for (dataset, metrics) in evaluate(gold, student, sentences, scope) {
            let family = report::headline_family(task, &dataset);
            let Some(t) = teacher_metrics.get(&dataset).and_then(|m| paired::Counts::from_metrics(m, family)) else {
                continue;
            };
            let Some(s) = paired::Counts::from_metrics(&metrics, family) else { continue };
            // A sentence outside the gold set (a silver one) or without any gold or predicted
            // item adds nothing to either F1; counting it would only misstate `n`.
            if s == paired::Counts::default() && t == paired::Counts::default() {
                continue;
            }
            units.entry(dataset).or_default().push((s, t));
        }
    }
    units.into_iter().filter_map(|(dataset, u)| Some((dataset, paired::difference(&u, paired::DRAWS, 0)?))).collect()
}

fn evaluate(gold: &Gold, preds: &Preds, sentences: &Sentences, scope: Scope<'_>) -> Vec<(String, Vec<Metric>)> {
    match (gold, preds) {
        (Gold::Ade(g), Preds::Pairs(p)) => vec![(ADE_SOURCE.to_string(), ade::evaluate(g, p, scope))],
        (Gold::GeneDisease(g), Preds::Pairs(p)) => gene_disease::evaluate(g, p, scope),
        (Gold::Phi(g), Preds::Spans(p)) => phi::evaluate(g, p, sentences, scope),
        _ => Vec::new(),
    }
}

#[cfg(test)]
mod tests {
    use std::collections::HashMap;

    use super::*;
    use crate::eval::load::SentenceRange;

    #[test]
    fn config_defaults_and_unknown_keys() {
        let cfg: EvalConfig = toml::from_str("").unwrap();
        assert_eq!(cfg, EvalConfig::default());
        assert_eq!(cfg.tasks, ["ade", "gene_disease", "phi"]);
        assert_eq!((cfg.split.as_str(), cfg.report), ("dev", true));
        let cfg: EvalConfig = toml::from_str("tasks = [\"phi\"]\nreport = false").unwrap();
        assert_eq!((cfg.tasks, cfg.split.as_str(), cfg.report), (vec!["phi".to_string()], "dev", false));
        assert!(toml::from_str::<EvalConfig>("splitt = \"dev\"").is_err());
    }

    #[tokio::test]
    async fn an_unknown_task_is_a_config_error() {
        let dir = tempfile::tempdir().unwrap();
        let run_dir = RunDir::create(dir.path()).unwrap();
        let cfg = EvalConfig { tasks: vec!["ner".into()], ..EvalConfig::default() };
        let err = run(&cfg, &run_dir, "r").await.unwrap_err();
        assert!(matches!(err, Error::Config(_)) && err.to_string().contains("ner"), "{err}");
    }

    #[test]
    fn scope_of_sentences_and_documents() {
        let r = |sent_id, blank| SentenceRange { sent_id, start: sent_id * 10, end: sent_id * 10 + 9, blank };
        let index = Sentences::from_map(HashMap::from([("d".to_string(), vec![r(0, false), r(1, true)])]));
        let labeled = HashSet::from([("d".to_string(), 0)]);
        let scope = Scope::Labeled { sentences: &labeled, index: &index };
        assert!(scope.sentence("d", 0) && !scope.sentence("d", 1));
        assert!(scope.document("d"), "the blank sentence need not be labeled");
        assert!(!scope.document("unknown"), "a document without sentences is not covered");
        assert!(scope.unit("d", None) && !scope.unit("d", Some(1)));
        assert!(Scope::All.unit("anything", Some(7)));
    }
}
