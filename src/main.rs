//! The `spark-connect-operator` command.

use std::net::SocketAddr;
use std::path::PathBuf;
use std::process::ExitCode;
use std::sync::{Arc, OnceLock};

use clap::{Parser, Subcommand};
use spark_connect_operator::admin::{self, AdminState};
use spark_connect_operator::client::Fence;
use spark_connect_operator::controller::stores;
use spark_connect_operator::controller::{self, Context};
use spark_connect_operator::metrics::Metrics;
use spark_connect_operator::probe::client::{ConnectProbe, ConnectUrl, session_id};
use spark_connect_operator::probe::health::HealthBook;
use spark_connect_operator::probe::prober::Prober;
use spark_connect_operator::{client, crd, gateway, leader, telemetry, validate};
use tokio_util::sync::CancellationToken;

/// jemalloc, in every build (the static musl image too).
#[global_allocator]
static ALLOCATOR: spark_connect_operator::Allocator = spark_connect_operator::Allocator;

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
        /// Most server connections kept open between probes; probes of further servers
        /// connect and close each time (keep it well under the process's open-file limit).
        #[arg(long, env = "SCO_MAX_PROBE_CONNECTIONS", default_value_t = 8192)]
        max_probe_connections: usize,
        /// Reconcile only while holding the Lease (for more than one replica).
        #[arg(long, env = "SCO_LEADER_ELECTION")]
        leader_election: bool,
        /// Seconds a standby waits for a silent leader's Lease to expire.
        #[arg(long, env = "SCO_LEASE_DURATION", default_value_t = 15)]
        lease_duration: u64,
        /// Namespace of the Lease (default: the pod's namespace).
        #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
        lease_namespace: String,
    },
    /// Run the Spark Connect gateway: one authenticated endpoint in front of every cluster.
    Gateway(Box<gateway::GatewayArgs>),
    /// Print every CRD as YAML.
    Crd,
    /// Probe one Spark Connect server once, like the operator does; exit code 0 when healthy.
    Probe {
        /// `sc://host:port/;token=...`
        url: String,
        /// Deadline of the call.
        #[arg(long, default_value = "5s")]
        timeout: String,
    },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    match cli.command {
        Command::Probe { url, timeout } => probe_once(&url, &timeout),
        Command::Gateway(args) => run_gateway(*args),
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
            max_probe_connections,
            leader_election,
            lease_duration,
            lease_namespace,
        } => {
            telemetry::init(log_json);
            let options = Options {
                kubeconfig,
                namespace,
                admin_addr,
                max_probes_in_flight,
                max_probe_connections,
                leader_election: leader_election.then_some((lease_namespace, lease_duration)),
            };
            block_on("operator", run(options))
        }
    }
}

fn run_gateway(args: gateway::GatewayArgs) -> ExitCode {
    telemetry::init(args.log_json);
    block_on("gateway", gateway::run(args))
}

/// Runs `main` of the long-running command `what` on a multi-threaded runtime until it ends.
fn block_on<E: std::fmt::Display>(
    what: &str,
    main: impl Future<Output = Result<(), E>>,
) -> ExitCode {
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
    match runtime.block_on(main) {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            tracing::error!(error = %e, "{what} failed");
            ExitCode::FAILURE
        }
    }
}

/// Settings of `run`.
struct Options {
    kubeconfig: Option<PathBuf>,
    namespace: Option<String>,
    admin_addr: SocketAddr,
    max_probes_in_flight: usize,
    max_probe_connections: usize,
    /// Lease namespace and duration in seconds, when leader election is on.
    leader_election: Option<(String, u64)>,
}

async fn run(options: Options) -> Result<(), Box<dyn std::error::Error>> {
    let metrics = Metrics::new()?;
    let kubeconfig = options.kubeconfig.as_deref();
    let fence = match options.leader_election {
        Some(_) => Fence::closed(),
        None => Fence::open(),
    };
    let client = client::request_client(
        kubeconfig,
        metrics.api_requests.clone(),
        metrics.api_writes.clone(),
        fence.clone(),
    )
    .await?;
    let version = client.apiserver_version().await?;
    tracing::info!(apiserver = %version.git_version, "connected");

    let shutdown = CancellationToken::new();
    let started: Arc<OnceLock<Arc<Context>>> = Arc::default();
    let admin = tokio::spawn(admin::serve(
        options.admin_addr,
        admin_state(
            &metrics,
            &started,
            &shutdown,
            options.leader_election.is_some(),
        ),
        shutdown.clone().cancelled_owned(),
    ));
    let signals = shutdown.clone();
    tokio::spawn(async move {
        telemetry::wait_for_signal().await;
        tracing::info!("shutting down");
        signals.cancel();
    });

    // With leader election, only the Lease holder watches, reconciles, probes and binds.
    let mut leadership = None;
    if let Some((lease_namespace, duration)) = &options.leader_election {
        let lease_client = client::lease_client(kubeconfig).await?;
        let acquired = leader::acquire(
            lease_client,
            lease_namespace,
            *duration,
            fence,
            shutdown.clone(),
        )
        .await?;
        match acquired {
            Some(held) => leadership = Some(held),
            None => {
                admin.await??;
                return Ok(());
            }
        }
    }

    let watch_client = client::watch_client(kubeconfig, metrics.api_requests.clone()).await?;
    let (stores, triggers) = stores::build(&watch_client, options.namespace.as_deref());
    let (probed_tx, probed_rx) = futures::channel::mpsc::unbounded();
    let prober = Prober::new(
        Arc::new(HealthBook::default()),
        metrics.clone(),
        probed_tx,
        options.max_probes_in_flight,
        options.max_probe_connections,
    );
    let probing = tokio::spawn(prober.clone().run(shutdown.clone().cancelled_owned()));
    let ctx = Context::new(client, metrics, prober, stores);
    let _ = started.set(ctx.clone());
    controller::run(ctx, triggers, probed_rx, shutdown.clone().cancelled_owned()).await;
    shutdown.cancel();
    probing.await?;
    if let Some(held) = leadership {
        held.step_down().await;
    }
    admin.await??;
    Ok(())
}

/// `/readyz`: a standby is ready to take over; a leader once its watches have synced and while
/// none fails. `/healthz`: no reconcile stuck past every deadline.
fn admin_state(
    metrics: &Metrics,
    started: &Arc<OnceLock<Arc<Context>>>,
    shutdown: &CancellationToken,
    standby_allowed: bool,
) -> AdminState {
    let (for_ready, for_live, stopping) = (started.clone(), started.clone(), shutdown.clone());
    let metrics = metrics.clone();
    AdminState {
        metrics: Arc::new(move || metrics.render()),
        ready: Arc::new(move || {
            if stopping.is_cancelled() {
                return Err("shutting down".into());
            }
            match for_ready.get() {
                None if standby_allowed => Ok(()),
                None => Err("starting".into()),
                Some(ctx) => {
                    let (unsynced, failing) =
                        (ctx.stores.unsynced_watches(), ctx.stores.failing_watches());
                    if !unsynced.is_empty() {
                        Err(format!("watches not synced yet: {}", unsynced.join(", ")))
                    } else if !failing.is_empty() {
                        Err(format!("watches failing: {}", failing.join(", ")))
                    } else {
                        Ok(())
                    }
                }
            }
        }),
        live: Arc::new(
            move || match for_live.get().and_then(|ctx| ctx.liveness.stuck()) {
                Some(key) => Err(format!("reconcile of {key} is stuck")),
                None => Ok(()),
            },
        ),
    }
}

fn probe_once(url: &str, timeout: &str) -> ExitCode {
    let result = (|| -> Result<(), String> {
        let url: ConnectUrl = url.parse()?;
        let timeout = validate::parse_cli_duration("--timeout", timeout)?;
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| e.to_string())?;
        runtime.block_on(async {
            let session = session_id(&url.address);
            let probe =
                ConnectProbe::new(&url.address, url.token.clone(), session.clone(), timeout)
                    .map_err(|e| e.message)?;
            println!("server:  {}", url.address);
            println!("session: {session}");
            match probe.check().await {
                Ok(ok) => {
                    println!("status:  healthy");
                    println!("latency: {:.1} ms", ok.latency.as_secs_f64() * 1000.0);
                    match probe.spark_version().await {
                        Ok(version) => println!("spark:   {version}"),
                        Err(e) => println!("spark:   unknown ({})", e.message),
                    }
                    Ok(())
                }
                Err(e) => {
                    println!("status:  {} ({})", e.kind.as_str(), e.message);
                    Err("probe failed".into())
                }
            }
        })
    })();
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e}");
            ExitCode::FAILURE
        }
    }
}
