use std::path::{Path, PathBuf};
use std::process::{Command, Output};
use std::sync::OnceLock;

use arrow::array::{Array, AsArray};
use biodistill::run_dir::RunDir;

/// The shared corpora: `BIODISTILL_INGEST_DATA_DIR`, else `../shared/data` beside the clone.
pub fn data_dir() -> PathBuf {
    let dir = std::env::var_os("BIODISTILL_INGEST_DATA_DIR")
        .map(PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../shared/data"));
    assert!(
        dir.join("README.md").is_file(),
        "the corpora are not at {}; set BIODISTILL_INGEST_DATA_DIR (make test does)",
        dir.display()
    );
    dir
}

/// A run directory with every built-in corpus ingested, made once per test binary.
pub fn ingested() -> &'static RunDir {
    static RUN: OnceLock<(tempfile::TempDir, RunDir)> = OnceLock::new();
    &RUN.get_or_init(|| {
        let tmp = tempfile::tempdir().unwrap();
        let run = RunDir::create(tmp.path()).unwrap();
        let cfg = biodistill::ingest::IngestConfig { data_dir: data_dir(), ..Default::default() };
        let report = biodistill::ingest::run(&cfg, &run).unwrap();
        assert!(report.failed_files.is_empty(), "{:?}", report.failed_files);
        (tmp, run)
    })
    .1
}

/// Run a future to completion on a fresh single-threaded runtime.
pub fn block_on<F: std::future::Future>(future: F) -> F::Output {
    tokio::runtime::Builder::new_current_thread().enable_all().build().unwrap().block_on(future)
}

/// Run SQL on a run directory and return the result as CSV text.
pub fn sql_csv(run: &RunDir, query: &str) -> String {
    let batches = block_on(biodistill::sql::query(run, query)).unwrap();
    biodistill::sql::render(&batches, biodistill::sql::OutputFormat::Csv).unwrap()
}

/// Run the `biodistill` binary with `args` in `cwd`, with no config inherited from the caller.
pub fn biodistill(cwd: &Path, args: &[&str]) -> Output {
    biodistill_cmd(cwd, args).output().unwrap()
}

/// Like [`biodistill`], with `env` set in the child's environment.
pub fn biodistill_env(cwd: &Path, args: &[&str], env: &[(&str, &str)]) -> Output {
    let mut cmd = biodistill_cmd(cwd, args);
    cmd.envs(env.iter().copied());
    cmd.output().unwrap()
}

/// The `biodistill` command with `args` in `cwd`, with no `BIODISTILL_*` variable (nor
/// `NO_COLOR`) inherited from the caller.
pub fn biodistill_cmd(cwd: &Path, args: &[&str]) -> Command {
    let mut cmd = Command::new(env!("CARGO_BIN_EXE_biodistill"));
    cmd.current_dir(cwd).args(args);
    for (k, _) in std::env::vars() {
        if k.starts_with("BIODISTILL_") || k == "NO_COLOR" {
            cmd.env_remove(k);
        }
    }
    cmd
}

pub fn stdout(o: &Output) -> String {
    String::from_utf8_lossy(&o.stdout).into_owned()
}

pub fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

/// Every value of `column` of `table` in the run directory `run`, cast to text, in order.
pub fn column_strings(run: &Path, table: &str, column: &str) -> Vec<String> {
    let batches = RunDir::open(run).unwrap().read_table(table).unwrap();
    batches
        .iter()
        .flat_map(|b| {
            let c = arrow::compute::cast(b.column_by_name(column).unwrap(), &arrow::datatypes::DataType::Utf8).unwrap();
            let c = c.as_string::<i32>().clone();
            (0..c.len()).map(move |i| c.value(i).to_string())
        })
        .collect()
}
