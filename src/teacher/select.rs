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

use std::collections::{BTreeMap, HashMap};

use arrow::array::Array;
use sha2::{Digest, Sha256};

use super::config::{LabelConfig, Selection};
use crate::columns::{TableStream, read_all};
use crate::error::{Error, Result};
use crate::run_dir::RunDir;
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

/// `doc_id -> (source, split)` from the `documents` table.
fn document_info(run_dir: &RunDir) -> Result<HashMap<String, (String, String)>> {
    let mut info = HashMap::new();
    for cols in read_all(run_dir, table::DOCUMENTS)? {
        let (ids, sources, splits) = (cols.doc_id()?, cols.str("source")?, cols.str("split")?);
        for i in 0..cols.len() {
            info.insert(ids.value(i).to_string(), (sources.value(i).to_string(), splits.value(i).to_string()));
        }
    }
    Ok(info)
}

/// Every sentence of the run directory with its document's (source, split); blank ones are
/// left out. Also the self-training pool (`train::self_training`).
pub(crate) fn all_sentences(run_dir: &RunDir) -> Result<Vec<(Sentence, String, String)>> {
    for name in [table::DOCUMENTS, table::SENTENCES] {
        if !run_dir.has_table(name) {
            return Err(Error::input(run_dir.table_path(name), "table missing (run `biodistill ingest` first)"));
        }
    }
    let documents = document_info(run_dir)?;
    let mut out = Vec::new();
    for cols in TableStream::open(run_dir, table::SENTENCES, 8192)? {
        let cols = cols?;
        let (ids, texts, sent_ids) = (cols.doc_id()?, cols.str("text")?, cols.sent_id()?);
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
pub fn candidates(cfg: &LabelConfig, run_dir: &RunDir) -> Result<BTreeMap<Task, Candidates>> {
    cfg.validate()?;
    let mut sentences = all_sentences(run_dir)?;
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

    #[test]
    fn the_random_order_is_stable_unsalted_and_changes_with_a_seed() {
        let s = &sentences(1)[0];
        assert_eq!(order_key(s, 0), order_key(s, 0));
        assert_ne!(order_key(s, 0), order_key(s, 1));
    }
}
