//! `broker`: runs the Kafka-compatible broker. With no arguments it is a single node on
//! 127.0.0.1:9092 with its data in ./data.

use std::net::SocketAddr;
use std::path::PathBuf;

use anyhow::Context;
use clap::Parser;
use server::config::BrokerConfig;

/// Linux signal numbers (stable ABI).
const SIGINT: i32 = 2;
const SIGTERM: i32 = 15;

#[derive(Debug, Parser)]
#[command(name = "broker", version, about = "A Kafka-compatible log broker")]
struct Args {
    /// Address to listen on [default: 127.0.0.1:9092]
    #[arg(long)]
    listen: Option<SocketAddr>,
    /// Directory of the partition logs [default: ./data]
    #[arg(long)]
    data_dir: Option<PathBuf>,
    /// Cores to run on, one pinned runtime each [default: all]
    #[arg(long)]
    cores: Option<usize>,
    /// Serve Prometheus metrics at http://ADDR/metrics [default: off]
    #[arg(long, value_name = "ADDR")]
    metrics_listen: Option<SocketAddr>,
    /// This broker's id in the cluster [default: 0]
    #[arg(long)]
    node_id: Option<i32>,
    /// Where this node's controller listens for the other voters
    #[arg(long, value_name = "ADDR")]
    controller_listen: Option<SocketAddr>,
    /// The controller quorum: `1@127.0.0.1:19091,2@127.0.0.1:19092,3@127.0.0.1:19093`
    /// [default: this broker alone]
    #[arg(long, value_name = "VOTERS")]
    controller_quorum_voters: Option<String>,
    /// TOML file with further settings (keys as in `BrokerConfig`); `BROKER_<KEY>`
    /// environment variables override it, flags override both.
    #[arg(long)]
    config: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .init();
    let args = Args::parse();
    let mut config =
        BrokerConfig::load(args.config.as_deref(), std::env::vars()).context("configuration")?;
    if let Some(listen) = args.listen {
        config.listen = listen;
    }
    if let Some(dir) = args.data_dir {
        config.data_dir = dir;
    }
    if let Some(cores) = args.cores {
        config.cores = cores;
    }
    if let Some(addr) = args.metrics_listen {
        config.metrics_listen = Some(addr);
    }
    if let Some(id) = args.node_id {
        config.node_id = id;
    }
    if let Some(addr) = args.controller_listen {
        config.controller_listen = Some(addr);
    }
    if let Some(voters) = args.controller_quorum_voters {
        config.controller_quorum_voters = Some(voters);
    }
    config.validate().context("configuration")?;
    raise_open_files_limit(config.max_connections);
    let cores = config.core_count();
    let data_dir = config.data_dir.clone();
    let broker = server::runtime::broker::start(config)?;
    let io = if broker.io_uring {
        "io_uring".to_owned()
    } else {
        "fallback (io_uring unavailable: check `sysctl kernel.io_uring_disabled` is 0 and that \
         the container's seccomp profile allows io_uring_setup)"
            .to_owned()
    };
    tracing::info!(addr = %broker.addr, cores, data_dir = %data_dir.display(), %io, "broker started");
    if let Some(addr) = broker.metrics_addr {
        tracing::info!("metrics at http://{addr}/metrics");
    }
    // A stable line on stdout for scripts and tests to wait for.
    println!("broker listening on {}", broker.addr);
    wait_for_signal()?;
    tracing::info!("stopping: finishing in-flight requests and closing partitions");
    broker.shutdown();
    tracing::info!("stopped cleanly");
    Ok(())
}

/// File descriptors the broker needs besides its connections: segments and their
/// indexes, pipes, io_uring, the listeners.
const FILES_BESIDES_CONNECTIONS: u64 = 1024;

/// Raises the soft limit on open files to the hard one (each connection is a file), and
/// warns when even that is below what `max_connections` needs.
fn raise_open_files_limit(max_connections: usize) {
    use rustix::process::{Resource, getrlimit, setrlimit};
    let mut limit = getrlimit(Resource::Nofile);
    if let (Some(soft), Some(hard)) = (limit.current, limit.maximum)
        && soft < hard
    {
        limit.current = Some(hard);
        if let Err(e) = setrlimit(Resource::Nofile, limit) {
            tracing::debug!(error = %e, "cannot raise the open files limit");
        }
    }
    let soft = getrlimit(Resource::Nofile).current;
    let needed = max_connections as u64 + FILES_BESIDES_CONNECTIONS;
    if let Some(soft) = soft
        && soft < needed
    {
        tracing::warn!(
            open_files_limit = soft,
            max_connections,
            "the open files limit is below max_connections plus the broker's own files: \
             raise `ulimit -n` or lower max_connections"
        );
    }
}

fn wait_for_signal() -> anyhow::Result<()> {
    let rt = compio::runtime::Runtime::new().context("signal runtime")?;
    rt.block_on(async {
        let int = std::pin::pin!(compio::signal::unix::signal(SIGINT));
        let term = std::pin::pin!(compio::signal::unix::signal(SIGTERM));
        match futures_util::future::select(int, term).await {
            futures_util::future::Either::Left((r, _))
            | futures_util::future::Either::Right((r, _)) => r,
        }
    })
    .context("waiting for a signal")
}
