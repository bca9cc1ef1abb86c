//! One integration-test binary (faster to link than many).

/// Shared helpers: data directory, temporary run directories, running the binary.
mod util;

/// A loopback OpenAI-compatible server that injects faults and counts requests.
mod mock_server;

/// Ingest of the real corpora, checked against the counts in ../shared/data/README.md.
mod ingest;

/// The command line: bad inputs, quarantine, SQL output.
mod cli;

/// The embedded OpenAI-compatible teacher server (issue 6).
mod serve;

/// The same server as a complete OpenAI endpoint: streaming, `n`, logprobs, `/v1/completions`
/// (issue 18).
mod serve_openai;

/// A hand-written silver run directory (teacher_labels-shaped), shared with the student bench.
mod silver;

/// Evaluation end to end over a hand-built run directory: every metric, eval_history and the
/// learning curve, the report and the span viewer (in Chromium when installed).
mod eval;

/// The student on real MiniLM weights: train on a silver table, extract to every table (issue 5).
mod student;

/// Teacher labeling against a loopback OpenAI-compatible server: limits, retries, cache (issue 4).
mod teacher;

/// `teacher.mode = "batch"` against the mock's Batch API (issue 18).
mod batch;

/// Issue 15: a 30% fault mix against the teacher client, every kind of bad input to ingest.
mod reliability;

/// `biodistill run`: incremental runs, quality gates (issue 7).
mod pipeline;

/// `kill -9` in every stage of `biodistill run`, then a rerun (issues 7 and 15).
mod crash;

/// `teacher.base_url = "embedded"` end to end, and `label --plan` on its cache (issue 15).
mod embedded;

/// `extract.engine = "ballista://…"`: a scheduler and two executors in this process give the
/// rows local extraction gives (issue 16).
#[cfg(feature = "cluster")]
mod cluster;
