//! The `biodistill` binary: parse flags, set up logging, run, turn errors into exit codes.

use std::process::ExitCode;

use clap::Parser;

fn main() -> ExitCode {
    // Before any thread starts (see `parallel`): jobs run side by side, each op on one thread.
    biodistill::parallel::init_single_threaded_ops();
    let cli = biodistill::cli::Cli::parse();
    // llama.cpp logs through the `llama-cpp-2` target; its load-time warnings are model quirks.
    let default =
        ["warn,biodistill=info,llama-cpp-2=error", "info,biodistill=debug,llama-cpp-2=warn", "debug,biodistill=trace"]
            [cli.verbose.min(2) as usize];
    let filter = tracing_subscriber::EnvFilter::try_from_env("BIODISTILL_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new(default));
    // Colour only for a person at a terminal: a log file or pipe gets plain text (and NO_COLOR,
    // when set and not empty, turns colour off everywhere: https://no-color.org).
    let ansi = std::io::IsTerminal::is_terminal(&std::io::stderr())
        && std::env::var_os("NO_COLOR").is_none_or(|v| v.is_empty());
    tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr)
        .with_ansi(ansi)
        .with_target(false)
        .init();

    let runtime = match tokio::runtime::Builder::new_multi_thread().enable_all().build() {
        Ok(rt) => rt,
        Err(e) => {
            eprintln!("error: cannot start the async runtime: {e}");
            return ExitCode::from(2);
        }
    };
    match runtime.block_on(biodistill::cli::execute(cli)) {
        Ok(true) => ExitCode::SUCCESS,
        // Finished, but some input could not be processed (already reported).
        Ok(false) => ExitCode::from(1),
        Err(e) => {
            // One line per error, so logs and shells show it whole (DataFusion's messages
            // carry line breaks); `Error`'s Display already includes the cause.
            eprintln!("error: {}", e.to_string().replace('\n', " "));
            ExitCode::from(2)
        }
    }
}
