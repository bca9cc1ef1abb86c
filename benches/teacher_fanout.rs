//! Teacher fan-out: how close the label stage gets to the ideal wall time N·L/C against a
//! loopback server answering every request after a fixed latency L with C requests in flight,
//! and how fast a fully cached rerun goes.
//!
//! `cargo bench --bench teacher_fanout` (environment: `FANOUT_N`, `FANOUT_LATENCY_MS`,
//! `FANOUT_CONCURRENCY`, `CACHED_N`). Prints plain text.

#[path = "../tests/mock_server.rs"]
mod mock_server;

use std::path::Path;
use std::time::{Duration, Instant};

use biodistill::run_dir::RunDir;
use biodistill::teacher::{self, LabelConfig, TeacherConfig};
use biodistill::vocab::Task;
use mock_server::{MockServer, always_ok, write_inputs};

fn env_or(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

fn config(server: &MockServer, dir: &Path, concurrency: usize) -> LabelConfig {
    LabelConfig {
        teacher: TeacherConfig {
            base_url: server.base_url(),
            model: "mock-model".into(),
            concurrency,
            cache_path: Some(dir.join("cache.redb")),
            prompts_dir: Path::new(env!("CARGO_MANIFEST_DIR")).join("pipelines/prompts"),
            progress: false,
            ..Default::default()
        },
        tasks: vec![Task::Ade],
        budget: usize::MAX,
        ..Default::default()
    }
}

fn sentences(n: usize) -> Vec<String> {
    (0..n).map(|i| format!("Drug{i} was followed by acute rash{i} and fever in one patient")).collect()
}

fn main() {
    let n = env_or("FANOUT_N", 400);
    let latency = Duration::from_millis(env_or("FANOUT_LATENCY_MS", 50) as u64);
    let concurrency = env_or("FANOUT_CONCURRENCY", 16);
    let cached_n = env_or("CACHED_N", 5000);
    let rt = tokio::runtime::Builder::new_multi_thread().worker_threads(2).enable_all().build().unwrap();
    rt.block_on(async {
        let server = MockServer::start(latency, always_ok()).await.unwrap();

        // Fan-out against a cold cache.
        let tmp = tempfile::tempdir().unwrap();
        let run = RunDir::create(tmp.path().join("run")).unwrap();
        write_inputs(&run, &sentences(n)).unwrap();
        let cfg = config(&server, tmp.path(), concurrency);
        let started = Instant::now();
        let report = teacher::run(&cfg, &run).await.unwrap();
        let wall = started.elapsed().as_secs_f64();
        assert_eq!(report.ok, n, "{report}");
        let ideal = n as f64 * latency.as_secs_f64() / concurrency as f64;
        println!(
            "fan-out: N={n} L={}ms C={concurrency}: wall {wall:.3} s, ideal N*L/C {ideal:.3} s, ratio {:.3} \
             (server max in flight {})",
            latency.as_millis(),
            wall / ideal,
            server.max_in_flight()
        );

        // Cached rerun: fill a cache with `cached_n` replies (no latency), then rerun.
        server.set_latency(Duration::ZERO);
        let tmp = tempfile::tempdir().unwrap();
        let run = RunDir::create(tmp.path().join("run")).unwrap();
        write_inputs(&run, &sentences(cached_n)).unwrap();
        let cfg = config(&server, tmp.path(), 32);
        teacher::run(&cfg, &run).await.unwrap();
        server.reset_counts();
        let started = Instant::now();
        let report = teacher::run(&cfg, &run).await.unwrap();
        let wall = started.elapsed().as_secs_f64();
        assert_eq!((report.cache_hits, server.requests()), (cached_n, 0));
        println!(
            "cached rerun: {cached_n} entries in {wall:.3} s = {:.0} entries/s (incl. reading inputs, parsing, \
             grounding and writing both tables)",
            cached_n as f64 / wall
        );
    });
}
