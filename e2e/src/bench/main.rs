//! `sco-bench`: the benchmark programs behind `make bench`. They print figures and write
//! `target/bench/*.json`; they assert nothing about speed.

mod calendar;
mod claims;
mod cpu;
mod economics;
mod first_result;
mod floor;
mod gateway;
mod least_idle;
mod lookup;
mod probe;
mod publish;
mod report;
mod scale;
mod simulate;
mod trace;

use std::path::PathBuf;
use std::time::Duration;

use clap::{Parser, Subcommand};
use spark_connect_operator::controller::context::MAX_REFILL_HOLD;

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
        /// Server connections kept open between probes (the operator's default).
        #[arg(long, default_value_t = 8192)]
        max_connections: usize,
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
        /// Rounds of each real-Spark scenario (warm pool, cold start).
        #[arg(long, default_value_t = 10)]
        spark_rounds: usize,
        /// Concurrent claims of each claim-to-Bound scenario (20 rounds of 1, 10 of the others).
        #[arg(long, value_delimiter = ',', default_value = "1,10,100")]
        concurrency: Vec<usize>,
        /// Rounds of each claim-to-Bound scenario instead of 20 (1 claim) and 10 (the others).
        #[arg(long)]
        rounds: Option<usize>,
        /// Name of the results file under target/bench (without `.json`).
        #[arg(long, default_value = "claims")]
        output: String,
    },
    /// CPU a reconcile spends checking its servers' Services and EndpointSlices, in process:
    /// whole against by digest.
    Publish {
        /// Pool sizes to measure.
        #[arg(long, value_delimiter = ',', default_value = "110,1000")]
        servers: Vec<usize>,
        /// Name of the results file under target/bench (without `.json`).
        #[arg(long, default_value = "publish")]
        output: String,
    },
    /// CPU to find one cluster's objects among many pools' in the watch stores, in process:
    /// the per-cluster index against a scan of the whole store.
    Lookup {
        /// Pods in the store (pools of 100).
        #[arg(long, value_delimiter = ',', default_value = "1000,10000,20000")]
        pods: Vec<usize>,
        /// Name of the results file under target/bench (without `.json`).
        #[arg(long, default_value = "lookup")]
        output: String,
    },
    /// Pool economics: a bursty claim trace against a static pool and the autoscaler.
    Economics {
        /// The world's state directory.
        #[arg(long, env = "SCO_WORLD")]
        world: PathBuf,
        /// The factor on every phase's arrival rate (1: one team's day, every pool; more: an
        /// organisation's, the autoscaler and its leanest settings only).
        #[arg(long, default_value_t = 1.0)]
        rate_scale: f64,
        /// Name of the results file under target/bench (without `.json`).
        #[arg(long, default_value = "economics")]
        output: String,
    },
    /// Pool economics in virtual time: the same trace against the operator's autoscaler code
    /// and a model of the pool, over a sweep of its settings (no world needed).
    Simulate {
        /// Server start-up time in milliseconds (default: the median the economics bench
        /// measured on 2 cores, fake servers' 3 s plus probing).
        #[arg(long, default_value_t = 4840)]
        start_millis: u64,
        /// The factor on every phase's arrival rate (1: one team's day, as the economics bench
        /// replays; 10: an organisation's).
        #[arg(long, default_value_t = 1.0)]
        rate_scale: f64,
        /// `hotPool.refillDelay` of the modelled pool in milliseconds (the operator's default).
        #[arg(long, default_value_t = 2000)]
        refill_delay_millis: u64,
        /// Name of the results file under target/bench (without `.json`).
        #[arg(long, default_value = "economics-simulated")]
        output: String,
    },
    /// Convergence of many clusters after the operator starts.
    Scale {
        /// The world's state directory.
        #[arg(long, env = "SCO_WORLD")]
        world: PathBuf,
        /// Clusters to create.
        #[arg(long, default_value_t = 1000)]
        clusters: usize,
        /// How many of them keep one idle fake server.
        #[arg(long, default_value_t = 10)]
        with_servers: usize,
    },
    /// The gateway against direct connections: added latency, streaming throughput, new users
    /// of a Dedicated cluster, idle connections.
    Gateway {
        /// The world's state directory.
        #[arg(long, env = "SCO_WORLD")]
        world: PathBuf,
    },
    /// Fake servers for the probe benchmark (started by it).
    #[command(hide = true)]
    Fleet {
        #[arg(long)]
        first: usize,
        #[arg(long)]
        count: usize,
    },
}

/// The operator's allocator: the prober measured here allocates as it does in the operator.
#[global_allocator]
static ALLOCATOR: spark_connect_operator::Allocator = spark_connect_operator::Allocator;

#[tokio::main]
async fn main() -> anyhow::Result<()> {
    match Cli::parse().command {
        Command::Probe {
            servers,
            period_seconds,
            duration_seconds,
            max_connections,
        } => {
            probe::run(
                servers,
                Duration::from_secs(period_seconds),
                Duration::from_secs(duration_seconds),
                max_connections,
            )
            .await
        }
        Command::Claims {
            world,
            spark,
            only_spark,
            spark_rounds,
            concurrency,
            rounds,
            output,
        } => {
            claims::run(
                world,
                spark,
                only_spark,
                spark_rounds,
                &concurrency,
                rounds,
                &output,
            )
            .await
        }
        Command::Economics {
            world,
            rate_scale,
            output,
        } => {
            // Every server of the replay is a process on the world's cores.
            anyhow::ensure!(
                rate_scale.is_finite() && (1.0..=30.0).contains(&rate_scale),
                "--rate-scale must be between 1 and 30"
            );
            economics::run(world, trace::Day { rate_scale }, &output).await
        }
        Command::Simulate {
            start_millis,
            rate_scale,
            refill_delay_millis,
            output,
        } => {
            anyhow::ensure!(
                rate_scale.is_finite() && (0.0..=100.0).contains(&rate_scale),
                "--rate-scale must be between 0 and 100"
            );
            let under = simulate::Conditions {
                day: trace::Day { rate_scale },
                start: Duration::from_millis(start_millis),
                refill_delay: Duration::from_millis(refill_delay_millis),
                burst_hold: MAX_REFILL_HOLD,
            };
            simulate::run(&under, &output)
        }
        Command::Scale {
            world,
            clusters,
            with_servers,
        } => scale::run(world, clusters, with_servers).await,
        Command::Gateway { world } => gateway::run(world).await,
        Command::Publish { servers, output } => publish::run(&servers, &output),
        Command::Lookup { pods, output } => lookup::run(&pods, &output),
        Command::Fleet { first, count } => probe::fleet(first, count).await,
    }
}
