//! `sco-bench`: the benchmark programs behind `make bench`. They print figures and write
//! `target/bench/*.json`; they assert nothing about speed.

mod claims;
mod probe;
mod report;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "Benchmarks of spark-connect-operator")]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Probe fan-out against fake servers on loopback.
    Probe {
        #[arg(long, default_value_t = 2000)]
        servers: usize,
        #[arg(long, default_value_t = 10)]
        period_seconds: u64,
        #[arg(long, default_value_t = 60)]
        duration_seconds: u64,
    },
    /// Claim latency against the running local world (see bench/run.sh).
    Claims {
        /// The world's state directory.
        #[arg(long, env = "SCO_WORLD")]
        world: PathBuf,
        /// Also measure claim-to-first-query with real Spark (warm and cold).
        #[arg(long)]
        spark: bool,
        /// Only the real-Spark scenarios.
        #[arg(long, requires = "spark")]
        only_spark: bool,
    },
    /// Fake servers for the probe benchmark (started by it).
    #[command(hide = true)]
    Fleet {
        #[arg(long)]
        count: usize,
    },
}

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Probe {
            servers,
            period_seconds,
            duration_seconds,
        } => {
            probe::run(
                servers,
                Duration::from_secs(period_seconds),
                Duration::from_secs(duration_seconds),
            )
            .await
        }
        Command::Claims {
            world,
            spark,
            only_spark,
        } => claims::run(world, spark, only_spark).await,
        Command::Fleet { count } => probe::fleet(count).await,
    }
}
