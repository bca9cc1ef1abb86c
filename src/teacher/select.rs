//! Which sentences each task sends to the teacher, and which cached answers form its silver set.
//!
//! A task's **candidates** are the sentences whose document is in one of `label.splits` (and,
//! per task, `label.sources`), in a seeded pseudo-random order: sha256 of `doc_id`, `sent_id`
//! and `label.seed`. The order of two sentences does not depend on which other documents
//! exist, so a growing corpus keeps earlier picks (and their cache entries).
//!
//! Candidates the cache already answers (under the current request: endpoint, model, prompt,
//! sampling; every one of `label.passes`) are the **silver set**, free. Of the rest, a run asks
//! about `label.budget`: first those some passes already answered (raising `label.passes` then
//! completes the silver set a sentence at a time, one request each, before paying for new
//! sentences), then the first ones in random order, or ([`Selection::Informative`]) the ones the current student
//! finds most informative within a pool, with a random share kept for exploration. Dev
//! sentences (`dev_sample`, from `dev_sources`) are labeled only to score the teacher.

use std::collections::BTreeMap;

use sha2::{Digest, Sha256};

use super::config::{LabelConfig, Selection};
use crate::columns::Columns;
use crate::error::{Error, Result};
use crate::plan::{self, Limits, ident, literal};
use crate::run_dir::RunDir;
use crate::schema::column::{DOC_ID, SENT_ID};
use crate::schema::{split, table};
use crate::vocab::Task;

/// One sentence to label.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Sentence {
    pub doc_id: String,
    pub sent_id: i32,
    pub text: String,
}

/// One task's candidate sentences, each list in random order.
#[derive(Debug, Clone, Default)]
pub struct Candidates {
    /// Training candidates (never `dev`).
    pub train: Vec<Sentence>,
    /// The first `dev_sample` dev sentences of `dev_sources`.
    pub dev: Vec<Sentence>,
    /// Training candidates left out as longer than `label.max_sentence_chars`.
    pub too_long: usize,
}

/// What one task labels in a run.
#[derive(Debug, Clone, Default)]
pub struct TaskSelection {
    /// Training candidates the cache already answers: free, and part of the silver set.
    pub silver: Vec<Sentence>,
    /// Training candidates this run asks about (at most `label.budget`).
    pub new: Vec<Sentence>,
    /// Dev sentences, to score the teacher (cached or not).
    pub dev: Vec<Sentence>,
    /// Of those, already answered by the cache.
    pub dev_cached: usize,
    /// Unanswered training candidates left for later runs.
    pub remaining: usize,
    /// The policy that picked `new` (`random`, `informative`, or why it fell back to random).
    pub policy: String,
    /// Training candidates never sent: longer than `label.max_sentence_chars`.
    pub too_long: usize,
}

/// The sentences of documents in `splits`, each with its document's (source, split); blank
/// ones are left out. A plan over the run directory: the join and the split filter run in
/// DataFusion, streamed under the stage memory limit. Also the self-training pool
/// (`train::self_training`).
pub(crate) async fn sentences_in(run_dir: &RunDir, splits: &[&str]) -> Result<Vec<(Sentence, String, String)>> {
    for name in [table::DOCUMENTS, table::SENTENCES] {
        if !run_dir.has_table(name) {
            return Err(Error::input(run_dir.table_path(name), "table missing (run `biodistill ingest` first)"));
        }
    }
    let mut out = Vec::new();
    if splits.is_empty() {
        return Ok(out);
    }
    let ctx = plan::session(run_dir, Limits::mib(plan::DEFAULT_MEMORY_LIMIT_MIB)).await?;
    let within: Vec<String> = splits.iter().map(|s| literal(s)).collect();
    let sql = format!(
        "SELECT s.{DOC_ID}, s.{SENT_ID}, s.text, d.source, d.split FROM {} s JOIN {} d ON s.{DOC_ID} = d.{DOC_ID} \
         WHERE s.{SENT_ID} IS NOT NULL AND d.split IN ({})",
        ident(table::SENTENCES),
        ident(table::DOCUMENTS),
        within.join(", ")
    );
    let path = run_dir.table_path(table::SENTENCES);
    let mut stream = ctx.sql(&sql).await?.execute_stream().await?;
    while let Some(batch) = plan::next(&mut stream).await? {
        let cols = Columns::new(batch, path.clone())?;
        let (ids, sent_ids, texts) = (cols.doc_id()?, cols.sent_id()?, cols.str("text")?);
        let (sources, split_names) = (cols.str("source")?, cols.str("split")?);
        for i in (0..cols.len()).filter(|&i| !texts.value(i).trim().is_empty()) {
            let sentence = Sentence {
                doc_id: ids.value(i).to_string(),
                sent_id: sent_ids.value(i),
                text: texts.value(i).to_string(),
            };
            out.push((sentence, sources.value(i).to_string(), split_names.value(i).to_string()));
        }
    }
    Ok(out)
}

/// The random order: sha256 of the sentence id, salted by `seed` unless it is 0 (the order
/// of runs before the salt existed, so their cache entries keep their places).
fn order_key(s: &Sentence, seed: u64) -> [u8; 32] {
    let mut hasher = Sha256::new();
    hasher.update(s.doc_id.as_bytes());
    hasher.update([0]);
    hasher.update(s.sent_id.to_le_bytes());
    if seed != 0 {
        hasher.update(seed.to_le_bytes());
    }
    hasher.finalize().into()
}

/// Each configured task's candidates (see the module docs).
pub async fn candidates(cfg: &LabelConfig, run_dir: &RunDir) -> Result<BTreeMap<Task, Candidates>> {
    cfg.validate()?;
    let mut splits: Vec<&str> = cfg.splits.iter().map(String::as_str).collect();
    if !cfg.dev_sources.is_empty() && cfg.dev_sample > 0 {
        splits.push(split::DEV);
    }
    let mut sentences = sentences_in(run_dir, &splits).await?;
    sentences.sort_by_cached_key(|(s, _, _)| order_key(s, cfg.seed));
    let mut out = BTreeMap::new();
    for &task in &cfg.tasks {
        let sources = cfg.sources.get(&task);
        let fits = |s: &Sentence| cfg.max_sentence_chars == 0 || s.text.chars().count() <= cfg.max_sentence_chars;
        let (train, long): (Vec<Sentence>, Vec<Sentence>) = sentences
            .iter()
            .filter(|(_, source, split)| {
                cfg.splits.iter().any(|s| s == split) && sources.is_none_or(|allowed| allowed.contains(source))
            })
            .map(|(s, _, _)| s.clone())
            .partition(fits);
        let dev_sources = cfg.dev_sources.get(&task);
        let dev = sentences
            .iter()
            .filter(|(s, source, split)| {
                split == split::DEV && dev_sources.is_some_and(|d| d.contains(source)) && fits(s)
            })
            .take(cfg.dev_sample)
            .map(|(s, _, _)| s.clone())
            .collect();
        out.insert(task, Candidates { train, dev, too_long: long.len() });
    }
    Ok(out)
}

/// Scores candidate sentences for [`Selection::Informative`] (higher = ask first); `None`
/// when there is no student to score with yet.
pub type Scorer<'a> = dyn FnMut(Task, &[Sentence]) -> Result<Option<Vec<f32>>> + 'a;

/// Split `candidates` into the silver set (all `label.passes` answered: `answered[i]`) and
/// this run's picks.
pub fn choose(
    cfg: &LabelConfig,
    task: Task,
    candidates: Candidates,
    answered: &[usize],
    scorer: &mut Scorer,
) -> Result<TaskSelection> {
    debug_assert_eq!(answered.len(), candidates.train.len());
    let passes = cfg.passes.max(1);
    let (mut silver, mut started, mut unasked) = (Vec::new(), Vec::new(), Vec::new());
    for (s, &n) in candidates.train.into_iter().zip(answered) {
        match n {
            n if n >= passes => silver.push(s),
            0 => unasked.push(s),
            _ => started.push(s),
        }
    }
    // Started sentences first, each in random order: the policy ranks only the unstarted ones.
    let started_picks = started.len().min(cfg.budget);
    unasked.splice(0..0, started);
    let budget = cfg.budget.min(unasked.len()) - started_picks;
    let rest = &unasked[started_picks..];
    let (picked, policy): (Vec<usize>, String) = match cfg.select {
        Selection::Random => ((0..budget).collect(), "random".to_string()),
        Selection::Informative if budget == 0 => (vec![], "informative".to_string()),
        Selection::Informative => {
            let pool = &rest[..rest.len().min(budget.saturating_mul(cfg.pool_factor.max(1)))];
            match scorer(task, pool)? {
                Some(scores) => (informative(&scores, budget, cfg.explore), "informative".to_string()),
                None => ((0..budget).collect(), "random (informative: no student yet)".to_string()),
            }
        }
    };
    let picked: Vec<usize> = (0..started_picks).chain(picked.into_iter().map(|i| i + started_picks)).collect();
    let remaining = unasked.len() - picked.len();
    let mut keep = vec![false; unasked.len()];
    for i in picked {
        keep[i] = true;
    }
    let new = unasked.into_iter().zip(keep).filter_map(|(s, keep)| keep.then_some(s)).collect();
    Ok(TaskSelection {
        silver,
        new,
        dev: candidates.dev,
        dev_cached: 0,
        remaining,
        policy,
        too_long: candidates.too_long,
    })
}

/// Indices of `budget` pool items: the first `explore` share in pool (random) order, the rest
/// by descending score (ties in pool order).
fn informative(scores: &[f32], budget: usize, explore: f64) -> Vec<usize> {
    let budget = budget.min(scores.len());
    let explored = ((budget as f64 * explore).round() as usize).min(budget);
    let mut ranked: Vec<usize> = (explored..scores.len()).collect();
    ranked.sort_by(|&a, &b| scores[b].total_cmp(&scores[a]).then(a.cmp(&b)));
    let mut picked: Vec<usize> = (0..explored).chain(ranked.into_iter().take(budget - explored)).collect();
    picked.sort_unstable();
    picked
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sentences(n: usize) -> Vec<Sentence> {
        (0..n).map(|i| Sentence { doc_id: format!("d{i}"), sent_id: 0, text: format!("sentence {i}") }).collect()
    }

    fn cfg(select: Selection, budget: usize) -> LabelConfig {
        LabelConfig { select, budget, explore: 0.25, pool_factor: 3, ..Default::default() }
    }

    #[test]
    fn cached_candidates_are_silver_and_the_budget_takes_the_next_unasked() {
        let train = sentences(10);
        let cached: Vec<usize> = (0..10).map(|i| usize::from(i % 3 == 0)).collect(); // 0, 3, 6, 9
        let candidates = Candidates { train: train.clone(), dev: vec![], too_long: 0 };
        let picked =
            choose(&cfg(Selection::Random, 4), Task::Ade, candidates, &cached, &mut |_, _| unreachable!()).unwrap();
        let ids = |v: &[Sentence]| v.iter().map(|s| s.doc_id.clone()).collect::<Vec<_>>();
        assert_eq!(ids(&picked.silver), ["d0", "d3", "d6", "d9"]);
        assert_eq!(ids(&picked.new), ["d1", "d2", "d4", "d5"], "the first unasked, in random order");
        assert_eq!(picked.remaining, 2);
        let all = choose(
            &cfg(Selection::Random, 100),
            Task::Ade,
            Candidates { train, dev: vec![], too_long: 0 },
            &cached,
            &mut |_, _| unreachable!(),
        )
        .unwrap();
        assert_eq!((all.new.len(), all.remaining), (6, 0), "a budget past the pool takes what is left");
    }

    #[test]
    fn informative_ranks_a_pool_keeps_an_exploration_share_and_falls_back_without_a_student() {
        let train = sentences(20);
        let none = vec![0; 20];
        let mut pools = Vec::new();
        // Scores rise with the index: the last of the pool (3 x budget 4 = 12) are the best.
        let mut scorer = |_: Task, pool: &[Sentence]| {
            pools.push(pool.len());
            Ok(Some((0..pool.len()).map(|i| i as f32).collect()))
        };
        let candidates = Candidates { train: train.clone(), dev: vec![], too_long: 0 };
        let picked = choose(&cfg(Selection::Informative, 4), Task::Ade, candidates, &none, &mut scorer).unwrap();
        let ids: Vec<&str> = picked.new.iter().map(|s| s.doc_id.as_str()).collect();
        assert_eq!(ids, ["d0", "d9", "d10", "d11"], "one explored (25%), three best of the pool");
        assert_eq!(pools, [12]);
        assert_eq!(picked.policy, "informative");
        let random = choose(
            &cfg(Selection::Random, 4),
            Task::Ade,
            Candidates { train: train.clone(), dev: vec![], too_long: 0 },
            &none,
            &mut |_, _| unreachable!(),
        )
        .unwrap();
        assert_ne!(random.new, picked.new, "informative differs from random");
        let fallback = choose(
            &cfg(Selection::Informative, 4),
            Task::Ade,
            Candidates { train, dev: vec![], too_long: 0 },
            &none,
            &mut |_, _| Ok(None),
        )
        .unwrap();
        assert_eq!(fallback.new, random.new, "no student: random");
        assert!(fallback.policy.starts_with("random"), "{}", fallback.policy);
    }

    #[test]
    fn a_second_pass_completes_started_sentences_before_new_ones() {
        let two = |select, budget| LabelConfig { passes: 2, ..cfg(select, budget) };
        // d0 has both passes, d2 and d4 only the first: they come first, in random order.
        let answered = [2, 0, 1, 0, 1, 0, 0, 0];
        let ids = |sel: &TaskSelection| sel.new.iter().map(|s| s.doc_id.clone()).collect::<Vec<_>>();
        let candidates = || Candidates { train: sentences(8), dev: vec![], too_long: 0 };
        let random =
            choose(&two(Selection::Random, 3), Task::Ade, candidates(), &answered, &mut |_, _| unreachable!()).unwrap();
        assert_eq!(random.silver.len(), 1);
        assert_eq!(ids(&random), ["d2", "d4", "d1"]);
        assert_eq!(random.remaining, 4);
        let one =
            choose(&two(Selection::Random, 1), Task::Ade, candidates(), &answered, &mut |_, _| unreachable!()).unwrap();
        assert_eq!(ids(&one), ["d2"], "a budget smaller than the started set");
        // Informative ranks only the unstarted sentences, after the started ones.
        let mut pools = Vec::new();
        let mut scorer = |_: Task, pool: &[Sentence]| {
            pools.push(pool.iter().map(|s| s.doc_id.clone()).collect::<Vec<_>>());
            Ok(Some((0..pool.len()).map(|i| i as f32).collect()))
        };
        let informative = LabelConfig { explore: 0.0, ..two(Selection::Informative, 4) };
        let picked = choose(&informative, Task::Ade, candidates(), &answered, &mut scorer).unwrap();
        assert_eq!(ids(&picked), ["d2", "d4", "d6", "d7"]);
        assert_eq!(pools, [["d1", "d3", "d5", "d6", "d7"]]);
    }

    #[tokio::test]
    async fn the_candidate_plan_joins_documents_keeps_the_asked_splits_and_drops_blank_sentences() {
        use crate::run_dir::test_tables::{ints, strs, write};
        let tmp = tempfile::tempdir().unwrap();
        let run = RunDir::create(tmp.path()).unwrap();
        let err = sentences_in(&run, &["train"]).await.unwrap_err().to_string();
        assert!(err.contains("documents.parquet") && err.contains("biodistill ingest"), "{err}");
        write(
            &run,
            table::DOCUMENTS,
            vec![
                ("doc_id", strs(&["a", "b", "c"])),
                ("source", strs(&["pubmed", "pubmed", "ade_corpus_v2"])),
                ("split", strs(&["train", "dev", "unlabeled"])),
            ],
        );
        write(
            &run,
            table::SENTENCES,
            vec![
                ("doc_id", strs(&["a", "a", "a", "b", "c", "orphan"])),
                ("sent_id", ints(&[Some(0), Some(1), None, Some(0), Some(0), Some(0)])),
                ("text", strs(&["One.", " \t", "No id.", "Dev.", "Pool.", "No document."])),
            ],
        );
        let mut got: Vec<(String, i32, String, String)> = sentences_in(&run, &["train", "unlabeled"])
            .await
            .unwrap()
            .into_iter()
            .map(|(s, source, split)| (s.doc_id, s.sent_id, source, split))
            .collect();
        got.sort();
        let row = |d: &str, s, source: &str, split: &str| (d.to_string(), s, source.to_string(), split.to_string());
        assert_eq!(got, [row("a", 0, "pubmed", "train"), row("c", 0, "ade_corpus_v2", "unlabeled")]);
        assert!(sentences_in(&run, &[]).await.unwrap().is_empty());
    }

    #[test]
    fn the_random_order_is_stable_unsalted_and_changes_with_a_seed() {
        let s = &sentences(1)[0];
        assert_eq!(order_key(s, 0), order_key(s, 0));
        assert_ne!(order_key(s, 0), order_key(s, 1));
    }
}
