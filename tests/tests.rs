//! One integration-test binary (faster to link than many).

/// Shared helpers: data directory, temporary run directories, running the binary.
mod util;

/// Ingest of the real corpora, checked against the counts in ../shared/data/README.md.
mod ingest;

/// The command line: bad inputs, quarantine, SQL output.
mod cli;




