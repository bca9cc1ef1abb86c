//! What a label run cost and produced: the report, the `--plan` estimate, and the progress bar.
//!
//! Money is only counted for requests sent this run (`teacher_calls.cached = false`); cached
//! answers are free. Token counts are the server's reported usage, never estimates. Estimates
//! (for `--plan` and the tokens-per-minute limiter) use ~4 characters per token.

use std::collections::BTreeMap;
use std::fmt;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};
use serde::Serialize;

use super::config::{Price, TeacherConfig};
use super::ground::Alignment;
use super::label::{Outcome, Status};

/// Dollar cost of a call at `price` (per million tokens).
pub fn cost(price: Option<Price>, prompt_tokens: u64, completion_tokens: u64) -> f64 {
    price
        .map_or(0.0, |p| (prompt_tokens as f64 * p.input_per_mtok + completion_tokens as f64 * p.output_per_mtok) / 1e6)
}

/// The prices a run charges: online, and through the Batch API.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct Pricing {
    pub online: Option<Price>,
    pub batch: Option<Price>,
}

impl Pricing {
    pub fn of(cfg: &TeacherConfig) -> Self {
        Pricing { online: cfg.price(), batch: cfg.batch_price() }
    }

    /// What `o` cost when it was paid: at the batch price when its first reply came from a
    /// batch (its re-ask, if any, went the same way in that run).
    pub fn cost(&self, o: &Outcome) -> f64 {
        cost(if o.batched { self.batch } else { self.online }, o.prompt_tokens, o.completion_tokens)
    }
}

/// How one task's silver set grew in a run.
#[derive(Debug, Clone, Default, PartialEq, Serialize)]
pub struct SilverGrowth {
    /// Training sentences the cache already answered when the run began.
    pub before: usize,
    /// Of those, answers that parse (pass 0): the silver set the student had before.
    pub silver_ok: usize,
    /// New training sentences picked this run, and how many of them got an answer that parses.
    pub asked: usize,
    pub added: usize,
    /// Unanswered candidates left for later runs.
    pub remaining: usize,
    /// The selection policy that picked them.
    pub policy: String,
    /// Candidates never sent: longer than `label.max_sentence_chars`.
    pub too_long: usize,
}

impl SilverGrowth {
    /// Parseable silver sentences after the run.
    pub fn after(&self) -> usize {
        self.silver_ok + self.added
    }
}

/// The result of `biodistill label` (goes into the run manifest).
#[derive(Debug, Clone, Default, Serialize)]
pub struct LabelReport {
    /// `teacher.base_url` as configured (`embedded` or a URL).
    pub endpoint: String,
    pub model: String,
    /// Task -> prompt version (`<version>@<hash8>`).
    pub prompt_versions: BTreeMap<String, String>,
    /// (task, sentence) inputs, and how they ended.
    pub inputs: usize,
    pub ok: usize,
    pub parse_errors: usize,
    pub failed: usize,
    /// Requests (first asks and re-asks) answered by the cache / sent to the teacher.
    pub cache_hits: usize,
    pub cache_misses: usize,
    /// HTTP attempts sent, including retries.
    pub http_attempts: u64,
    pub retries: u64,
    pub reasks: usize,
    /// Replies wrapped in a code fence (tolerated).
    pub fenced: usize,
    /// Tokens and cost paid this run.
    pub prompt_tokens: u64,
    pub completion_tokens: u64,
    pub cost_usd: f64,
    /// Whether the price table had the model (if not, `cost_usd` is 0).
    pub price_known: bool,
    /// `teacher_labels` rows, and grounded strings (subjects and objects) per alignment.
    pub labels: usize,
    pub alignment: BTreeMap<String, usize>,
    /// ok / inputs that got a reply; aligned strings / all strings.
    pub parse_rate: f64,
    pub aligned_rate: f64,
    pub wall_secs: f64,
    /// Task -> how its silver set grew.
    pub silver: BTreeMap<String, SilverGrowth>,
    /// New requests not sent because `label.budget_minutes` ran out.
    pub unsent: usize,
    /// `teacher.mode = "batch"`: the batches this run sent or resumed.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub batches: Option<super::batch::BatchReport>,
}

impl LabelReport {
    /// Add one finished input.
    pub fn add(&mut self, o: &Outcome, pricing: &Pricing) {
        self.inputs += 1;
        match o.status {
            Status::Ok => self.ok += 1,
            Status::ParseError => self.parse_errors += 1,
            Status::Failed => self.failed += 1,
        }
        self.cache_hits += o.hits;
        self.cache_misses += o.lookups - o.hits;
        self.retries += u64::from(o.retries);
        self.reasks += usize::from(o.reasked);
        self.fenced += usize::from(o.fenced);
        if !o.cached {
            self.prompt_tokens += o.prompt_tokens;
            self.completion_tokens += o.completion_tokens;
            self.cost_usd += pricing.cost(o);
        }
        self.labels += o.rows.len();
        for row in &o.rows {
            for side in std::iter::once(&row.subject).chain(row.object.as_ref()) {
                *self.alignment.entry(side.alignment.as_str().to_string()).or_default() += 1;
            }
        }
    }

    /// Compute the rates once every input is in.
    pub fn finish(&mut self) {
        let answered = self.ok + self.parse_errors;
        self.parse_rate = if answered == 0 { 0.0 } else { self.ok as f64 / answered as f64 };
        let strings: usize = self.alignment.values().sum();
        let unaligned = self.alignment.get(Alignment::Unaligned.as_str()).copied().unwrap_or(0);
        self.aligned_rate = if strings == 0 { 0.0 } else { (strings - unaligned) as f64 / strings as f64 };
    }
}

impl fmt::Display for LabelReport {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "labeled {} inputs with {} at {}: {} ok, {} unparseable, {} failed ({:.1} s)",
            self.inputs, self.model, self.endpoint, self.ok, self.parse_errors, self.failed, self.wall_secs
        )?;
        writeln!(
            f,
            "requests: {} from cache, {} sent ({} HTTP attempts, {} retries, {} re-asks, {} fenced replies)",
            self.cache_hits, self.cache_misses, self.http_attempts, self.retries, self.reasks, self.fenced
        )?;
        let price = if self.price_known { "" } else { " (model not in the price table)" };
        writeln!(
            f,
            "tokens paid: {} in, {} out; cost ${:.4}{price}",
            self.prompt_tokens, self.completion_tokens, self.cost_usd
        )?;
        for (task, g) in &self.silver {
            writeln!(
                f,
                "silver {task}: {} -> {} sentences (+{} of {} asked, {}; {} candidates left{})",
                g.silver_ok,
                g.after(),
                g.added,
                g.asked,
                g.policy,
                g.remaining,
                too_long(g.too_long)
            )?;
        }
        if let Some(batches) = &self.batches {
            writeln!(f, "{batches}")?;
        }
        if self.unsent > 0 {
            writeln!(f, "time budget spent: {} new requests left for the next run", self.unsent)?;
        }
        let alignment: Vec<String> = Alignment::ALL
            .iter()
            .map(|a| format!("{} {}", a.as_str(), self.alignment.get(a.as_str()).copied().unwrap_or(0)))
            .collect();
        write!(
            f,
            "labels: {} rows; parse rate {:.1}%; aligned {:.1}% ({})",
            self.labels,
            100.0 * self.parse_rate,
            100.0 * self.aligned_rate,
            alignment.join(", ")
        )
    }
}

/// The note on candidates left out for length, if any.
fn too_long(n: usize) -> String {
    if n == 0 { String::new() } else { format!(", {n} too long to send (label.max_sentence_chars)") }
}

/// The `--plan` estimate for one task.
#[derive(Debug, Clone, Serialize)]
pub struct TaskPlan {
    pub task: String,
    pub prompt_version: String,
    pub sentences: usize,
    /// Requests (first asks, every pass) already cached.
    pub cached: usize,
    pub calls: usize,
    /// Training sentences the cache answers (the silver set), and unanswered ones left after
    /// this run's budget.
    pub silver: usize,
    pub remaining: usize,
    /// Candidates never sent: longer than `label.max_sentence_chars`.
    pub too_long: usize,
    /// sha256 (16 hex) of the sorted cache keys of every request whose answer the run's tables
    /// will hold: the silver set, this run's new sentences and the dev sample. Two runs with
    /// the same digest label exactly the same.
    pub requests_digest: String,
    pub est_prompt_tokens: u64,
    pub est_completion_tokens: u64,
}

/// What `biodistill label` would do, before it spends anything.
#[derive(Debug, Clone, Serialize)]
pub struct LabelPlan {
    pub endpoint: String,
    pub model: String,
    pub tasks: Vec<TaskPlan>,
    pub calls: usize,
    pub est_prompt_tokens: u64,
    pub est_completion_tokens: u64,
    /// `None` when the price table lacks the model.
    pub est_cost_usd: Option<f64>,
}

impl fmt::Display for LabelPlan {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "plan for {} at {} (estimates: ~4 chars per token, re-asks not included)",
            self.model, self.endpoint
        )?;
        for t in &self.tasks {
            writeln!(
                f,
                "  {:<13} {:>7} sentences, {:>7} cached, {:>7} calls, ~{} prompt + ~{} completion tokens  [{}]",
                t.task, t.sentences, t.cached, t.calls, t.est_prompt_tokens, t.est_completion_tokens, t.prompt_version
            )?;
            writeln!(
                f,
                "  {:<13} silver set {} sentences, {} candidates left after this run{}",
                "",
                t.silver,
                t.remaining,
                too_long(t.too_long)
            )?;
        }
        let cost =
            self.est_cost_usd.map_or("unknown (model not in the price table)".to_string(), |c| format!("~${c:.4}"));
        write!(
            f,
            "total: {} calls, ~{} prompt + ~{} completion tokens, cost {cost}",
            self.calls, self.est_prompt_tokens, self.est_completion_tokens
        )
    }
}

/// A progress bar: done/total, rate, cache hits and running cost. Hidden when disabled or
/// when stderr is not a terminal.
pub fn progress_bar(total: usize, enabled: bool) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(
        Some(total as u64),
        if enabled { ProgressDrawTarget::stderr() } else { ProgressDrawTarget::hidden() },
    );
    bar.set_style(
        ProgressStyle::with_template("{spinner} label [{bar:30}] {pos}/{len} {per_sec} eta {eta} {msg}")
            .expect("the template is valid")
            .progress_chars("=> "),
    );
    bar
}

/// The progress bar's message for the running totals.
pub fn progress_message(report: &LabelReport) -> String {
    format!(
        "| cache hits {} | failed {} | ${:.4}",
        report.cache_hits,
        report.failed + report.parse_errors,
        report.cost_usd
    )
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn cost_uses_the_price_per_million_tokens() {
        let price = Price { input_per_mtok: 0.15, output_per_mtok: 0.6 };
        assert!((cost(Some(price), 1_000_000, 500_000) - 0.45).abs() < 1e-12);
        assert_eq!(cost(None, 1_000_000, 1), 0.0);
    }
}
