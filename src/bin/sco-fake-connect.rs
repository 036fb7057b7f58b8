//! `sco-fake-connect`: a light Spark Connect server for tests and benchmarks.
//! SIGUSR1 makes it hang, SIGUSR2 makes it fail, SIGHUP makes it answer again.
//! Run as `spark-submit` (its image places it there, so a pool of fake servers is built like
//! any other), it reads its settings from the `--conf` arguments the operator passes: the
//! Connect port, and `spark.sco.fake.startMillis` / `queryMillis` from the cluster's sparkConf.

use std::net::SocketAddr;
use std::time::Duration;

use clap::Parser;
use spark_connect_operator::probe::fake::{FakeOptions, FakeState, Mode, serve};
use spark_connect_operator::validate::TOKEN_ENV;
use tokio::signal::unix::{SignalKind, signal};

#[derive(Parser)]
#[command(about = "A fake Spark Connect server that answers, hangs or fails on demand")]
struct Cli {
    /// Address to listen on.
    #[arg(long, default_value = "0.0.0.0:15002")]
    listen: SocketAddr,
    /// Required bearer token (Spark's variable name).
    #[arg(long, env = TOKEN_ENV)]
    token: Option<String>,
    /// Log every call and whether it carried a bearer token (never the token).
    #[arg(long)]
    log_calls: bool,
    /// Milliseconds every query (ExecutePlan) takes.
    #[arg(long, default_value_t = 0)]
    query_millis: u64,
    /// Milliseconds to wait before listening, like a JVM starting.
    #[arg(long, default_value_t = 0)]
    start_millis: u64,
}

/// Prefix of the fake's own settings in a cluster's sparkConf.
const FAKE_CONF: &str = "spark.sco.fake.";

impl Cli {
    /// The settings of a `spark-submit` command line: `--conf key=value` pairs, the rest
    /// ignored.
    fn from_spark_submit(args: &[String]) -> Result<Self, String> {
        let conf: std::collections::BTreeMap<&str, &str> = args
            .windows(2)
            .filter(|pair| pair[0] == "--conf")
            .filter_map(|pair| pair[1].split_once('='))
            .collect();
        let number = |key: &str| -> Result<u64, String> {
            conf.get(key).map_or(Ok(0), |v| {
                v.parse().map_err(|e| format!("--conf {key}={v}: {e}"))
            })
        };
        let port = conf
            .get("spark.connect.grpc.binding.port")
            .map_or(Ok(15002), |p| p.parse::<u16>())
            .map_err(|e| format!("the Connect port: {e}"))?;
        Ok(Self {
            listen: SocketAddr::from(([0, 0, 0, 0], port)),
            token: std::env::var(TOKEN_ENV).ok(),
            log_calls: false,
            query_millis: number(&format!("{FAKE_CONF}queryMillis"))?,
            start_millis: number(&format!("{FAKE_CONF}startMillis"))?,
        })
    }
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let as_spark_submit = args
        .first()
        .is_some_and(|program| program.ends_with("/spark-submit"));
    let cli = if as_spark_submit {
        Cli::from_spark_submit(&args)?
    } else {
        Cli::parse()
    };
    let state = FakeState::with_options(FakeOptions {
        token: cli.token.filter(|t| !t.is_empty()),
        log_calls: cli.log_calls,
        query_delay: Duration::from_millis(cli.query_millis),
    });
    tokio::time::sleep(Duration::from_millis(cli.start_millis)).await;
    let listener = tokio::net::TcpListener::bind(cli.listen).await?;
    eprintln!("sco-fake-connect listening on {}", cli.listen);
    let control = state.clone();
    tokio::spawn(async move {
        let (Ok(mut hang), Ok(mut fail), Ok(mut answer)) = (
            signal(SignalKind::user_defined1()),
            signal(SignalKind::user_defined2()),
            signal(SignalKind::hangup()),
        ) else {
            return;
        };
        loop {
            let mode = tokio::select! {
                _ = hang.recv() => Mode::Hang,
                _ = fail.recv() => Mode::Fail,
                _ = answer.recv() => Mode::Answer,
            };
            eprintln!("mode: {mode:?}");
            control.set_mode(mode);
        }
    });
    // SIGTERM ends the server at once: like a JVM, it does not wait for clients to hang up.
    tokio::spawn(async {
        if let Ok(mut term) = signal(SignalKind::terminate()) {
            term.recv().await;
            std::process::exit(0);
        }
    });
    serve(listener, state, std::future::pending()).await?;
    Ok(())
}
