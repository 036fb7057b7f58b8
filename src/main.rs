//! The `spark-connect-operator` command.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use clap::{Parser, Subcommand};
use spark_connect_operator::admin::{self, AdminState};
use spark_connect_operator::controller::{self, Context};
use spark_connect_operator::metrics::Metrics;
use spark_connect_operator::probe::health::HealthBook;
use spark_connect_operator::probe::prober::Prober;
use spark_connect_operator::{client, crd, telemetry};
use tokio_util::sync::CancellationToken;

#[derive(Parser)]
#[command(
    version,
    about = "Runs Apache Spark Connect servers on Kubernetes, with a hot pool"
)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the controllers.
    Run {
        /// Kubeconfig file; default: KUBECONFIG, ~/.kube/config or in-cluster configuration.
        #[arg(long, env = "SCO_KUBECONFIG")]
        kubeconfig: Option<PathBuf>,
        /// Watch only this namespace (default: all).
        #[arg(long, env = "SCO_NAMESPACE")]
        namespace: Option<String>,
        /// Address of /metrics, /healthz and /readyz.
        #[arg(long, env = "SCO_ADMIN_ADDR", default_value = "0.0.0.0:8080")]
        admin_addr: SocketAddr,
        /// Log JSON lines instead of text.
        #[arg(long, env = "SCO_LOG_JSON")]
        log_json: bool,
        /// Most Spark Connect probes in flight at once.
        #[arg(long, env = "SCO_MAX_PROBES_IN_FLIGHT", default_value_t = 256)]
        max_probes_in_flight: usize,
    },
    /// Print every CRD as YAML.
    Crd,
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Crd => match crd::crds_yaml() {
            Ok(yaml) => {
                print!("{yaml}");
                ExitCode::SUCCESS
            }
            Err(e) => {
                eprintln!("error: rendering CRDs: {e}");
                ExitCode::FAILURE
            }
        },
        Command::Run {
            kubeconfig,
            namespace,
            admin_addr,
            log_json,
            max_probes_in_flight,
        } => {
            telemetry::init(log_json);
            let runtime = match tokio::runtime::Builder::new_multi_thread()
                .enable_all()
                .build()
            {
                Ok(rt) => rt,
                Err(e) => {
                    eprintln!("error: starting runtime: {e}");
                    return ExitCode::FAILURE;
                }
            };
            match runtime.block_on(run(kubeconfig, namespace, admin_addr, max_probes_in_flight)) {
                Ok(()) => ExitCode::SUCCESS,
                Err(e) => {
                    tracing::error!(error = %e, "operator failed");
                    ExitCode::FAILURE
                }
            }
        }
    }
}

async fn run(
    kubeconfig: Option<PathBuf>,
    namespace: Option<String>,
    admin_addr: SocketAddr,
    max_probes_in_flight: usize,
) -> Result<(), Box<dyn std::error::Error>> {
    let metrics = Metrics::new()?;
    let client = client::build(kubeconfig.as_deref(), metrics.api_writes.clone()).await?;
    let version = client.apiserver_version().await?;
    tracing::info!(apiserver = %version.git_version, "connected");

    let shutdown = CancellationToken::new();
    let admin_state = AdminState {
        metrics: metrics.clone(),
        ready: Default::default(),
    };
    admin_state.ready.store(true, Ordering::Relaxed);
    let admin = tokio::spawn(admin::serve(
        admin_addr,
        admin_state,
        shutdown.clone().cancelled_owned(),
    ));

    let signals = shutdown.clone();
    tokio::spawn(async move {
        wait_for_signal().await;
        tracing::info!("shutting down");
        signals.cancel();
    });
    let (probed_tx, probed_rx) = futures::channel::mpsc::unbounded();
    let prober = Prober::new(
        Arc::new(HealthBook::default()),
        metrics.clone(),
        probed_tx,
        max_probes_in_flight,
    );
    let probing = tokio::spawn(prober.clone().run(shutdown.clone().cancelled_owned()));
    let ctx = Arc::new(Context::new(client, metrics, prober));
    controller::run(
        ctx,
        namespace,
        probed_rx,
        shutdown.clone().cancelled_owned(),
    )
    .await;
    shutdown.cancel();
    probing.await?;
    shutdown.cancel();
    admin.await??;
    Ok(())
}

async fn wait_for_signal() {
    let terminate = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate => {}
    }
}
