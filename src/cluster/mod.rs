//! Where a stage's plans run: in this process, or on a Ballista cluster.
//!
//! The stages are DataFusion plans over a run directory and the student is a set of SQL
//! functions, so scaling out is a matter of sending the same plan elsewhere: a Ballista
//! scheduler splits it into stages and hands their partitions to executors, which know the
//! student functions (`biodistill cluster executor`) and read the tables and checkpoints the
//! plan names from the run directory, mounted at the same path on every machine.
//! [`Engine`] is the `extract.engine` value; the Ballista side (feature `cluster`) is in
//! `ballista.rs`.

#[cfg(feature = "cluster")]
mod ballista;
#[cfg(feature = "cluster")]
pub use ballista::{ExecutorOptions, executor, scheduler, start_on_loopback};

use std::fmt;
use std::str::FromStr;

use datafusion::prelude::SessionContext;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::plan::Limits;
use crate::run_dir::RunDir;

/// A Ballista scheduler's default port (`biodistill cluster scheduler` binds it by default).
pub const DEFAULT_SCHEDULER_PORT: u16 = 50050;

/// Partitions of a plan sent to a cluster when `extract.threads` is 0: enough for a few
/// executors' cores; an executor runs as many at once as it has cores.
const CLUSTER_PARTITIONS: usize = 8;

/// Where plans run (`extract.engine`, `--engine`).
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(try_from = "String", into = "String")]
pub enum Engine {
    /// This process, on every core (`local`).
    #[default]
    Local,
    /// The Ballista scheduler at `host:port` (`ballista://host:port`).
    Ballista { host: String, port: u16 },
}

impl FromStr for Engine {
    type Err = String;

    fn from_str(value: &str) -> Result<Self, String> {
        let expected = "expected `local` or `ballista://host:port`";
        if value == "local" {
            return Ok(Engine::Local);
        }
        let Some(address) = value.strip_prefix("ballista://") else {
            return Err(format!("unknown engine {value:?}: {expected}"));
        };
        let address = address.trim_end_matches('/');
        let (host, port) = parse_address(address).map_err(|problem| format!("engine {value:?}: {problem}"))?;
        Ok(Engine::Ballista { host, port })
    }
}

/// `host:port` (an IPv6 host in brackets) into its parts, each checked.
pub fn parse_address(address: &str) -> Result<(String, u16), String> {
    let Some((host, port)) = address.rsplit_once(':') else {
        return Err(format!(
            "no port in {address:?}: expected host:port (a scheduler's default is {DEFAULT_SCHEDULER_PORT})"
        ));
    };
    if host.is_empty() || host.contains('/') {
        return Err(format!("no host in {address:?}: expected host:port"));
    }
    match port.parse::<u16>() {
        Ok(port) if port > 0 => Ok((host.to_string(), port)),
        _ => Err(format!("port {port:?} of {address:?} is not a number from 1 to 65535")),
    }
}

impl TryFrom<String> for Engine {
    type Error = String;

    fn try_from(value: String) -> Result<Self, String> {
        value.parse()
    }
}

impl From<Engine> for String {
    fn from(engine: Engine) -> String {
        engine.to_string()
    }
}

impl fmt::Display for Engine {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Engine::Local => f.write_str("local"),
            Engine::Ballista { host, port } => write!(f, "ballista://{host}:{port}"),
        }
    }
}

impl Engine {
    /// A session over `run_dir` whose plans run on this engine (see [`crate::plan::session`]).
    pub async fn session(&self, run_dir: &RunDir, limits: Limits) -> Result<SessionContext> {
        let ctx = crate::plan::session(run_dir, limits).await?;
        match self {
            Engine::Local => Ok(ctx),
            #[cfg(feature = "cluster")]
            Engine::Ballista { host, port } => ballista::remote(ctx, host, *port).await,
            #[cfg(not(feature = "cluster"))]
            Engine::Ballista { .. } => Err(Error::Config(format!(
                "engine {self}: this biodistill was built without the `cluster` feature \
                 (cargo build --features cluster, or make build)"
            ))),
        }
    }

    /// Partitions a plan is split into: `threads`, or by default every local core (locally)
    /// or [`CLUSTER_PARTITIONS`].
    pub fn partitions(&self, threads: usize) -> usize {
        match (threads, self) {
            (0, Engine::Local) => crate::parallel::available_threads(),
            (0, Engine::Ballista { .. }) => CLUSTER_PARTITIONS,
            (n, _) => n,
        }
    }
}

/// `Error::Cluster` unless something accepts TCP connections at `host:port` within a few
/// seconds; `role` and `start` say what should be there and how to start it.
pub async fn ensure_reachable(host: &str, port: u16, role: &str, start: &str) -> Result<()> {
    let connect = tokio::net::TcpStream::connect((host, port));
    let problem = match tokio::time::timeout(std::time::Duration::from_secs(5), connect).await {
        Ok(Ok(_)) => return Ok(()),
        Ok(Err(e)) => e.to_string(),
        Err(_) => "no answer within 5 s".to_string(),
    };
    Err(Error::Cluster(format!("cannot reach the {role} at {host}:{port} ({problem}); start one with `{start}`")))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn engine_urls_parse_and_print_back() {
        assert_eq!("local".parse::<Engine>().unwrap(), Engine::Local);
        let engine: Engine = "ballista://10.0.0.5:50050".parse().unwrap();
        assert_eq!(engine, Engine::Ballista { host: "10.0.0.5".into(), port: 50050 });
        assert_eq!(engine.to_string(), "ballista://10.0.0.5:50050");
        assert_eq!("ballista://[::1]:7/".parse::<Engine>().unwrap().to_string(), "ballista://[::1]:7");
        assert_eq!(Engine::default().to_string(), "local");
    }

    #[test]
    fn bad_engine_urls_say_what_is_wrong() {
        let err = |value: &str| value.parse::<Engine>().unwrap_err();
        assert!(err("ballista://").contains("no port in \"\""), "{}", err("ballista://"));
        assert!(err("ballista://sched").contains("no port"), "{}", err("ballista://sched"));
        assert!(err("ballista://:50050").contains("no host"), "{}", err("ballista://:50050"));
        assert!(err("ballista://h:http").contains("not a number from 1 to 65535"), "{}", err("ballista://h:http"));
        assert!(err("ballista://h:0").contains("not a number"), "{}", err("ballista://h:0"));
        assert!(err("ballista://h:70000").contains("not a number"), "{}", err("ballista://h:70000"));
        for unknown in ["spark://h:1", "h:50050", "Local", ""] {
            assert!(err(unknown).contains("unknown engine"), "{unknown}: {}", err(unknown));
        }
    }

    #[test]
    fn the_engine_is_a_config_string() {
        #[derive(Deserialize)]
        struct Section {
            engine: Engine,
        }
        let section: Section = toml::from_str("engine = \"ballista://sched:1\"").unwrap();
        assert_eq!(section.engine, Engine::Ballista { host: "sched".into(), port: 1 });
        let err = toml::from_str::<Section>("engine = \"ballista://sched\"").err().unwrap().to_string();
        assert!(err.contains("no port"), "{err}");
    }

    #[test]
    fn partitions_default_per_engine() {
        let cluster = Engine::Ballista { host: "h".into(), port: 1 };
        assert_eq!(cluster.partitions(0), CLUSTER_PARTITIONS);
        assert_eq!(Engine::Local.partitions(0), crate::parallel::available_threads());
        assert_eq!(cluster.partitions(3), 3);
    }

    #[tokio::test]
    async fn an_unreachable_scheduler_is_named_with_what_to_start() {
        // A port nobody listens on: bind one, then free it.
        let port = std::net::TcpListener::bind("127.0.0.1:0").unwrap().local_addr().unwrap().port();
        let err = ensure_reachable("127.0.0.1", port, "Ballista scheduler", "biodistill cluster scheduler")
            .await
            .unwrap_err()
            .to_string();
        assert!(err.contains(&format!("Ballista scheduler at 127.0.0.1:{port}")), "{err}");
        assert!(err.contains("start one with `biodistill cluster scheduler`"), "{err}");
    }
}
