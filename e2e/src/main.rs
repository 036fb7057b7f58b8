//! `sco-world`: a real local Kubernetes in its own namespaces, for tests and `make run`.

mod agent;
mod launcher;
mod paths;
mod pki;
mod relay;
mod sandbox;
mod world;

use std::path::PathBuf;
use std::process::ExitCode;

use clap::{Parser, Subcommand};

#[derive(Parser)]
#[command(about = "A real local Kubernetes in its own user, network, mount and PID namespaces")]
struct Cli {
    /// The world's state directory.
    #[arg(long, env = "SCO_WORLD", default_value = "target/world", global = true)]
    state: PathBuf,
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Start the world and keep it running until Ctrl-C.
    Up {
        /// Host loopback port of the apiserver relay (0 picks one).
        #[arg(long, default_value_t = 0)]
        api_port: u16,
        /// PORT=HOST:PORT: relay 127.0.0.1:PORT to HOST:PORT inside the world.
        #[arg(long = "forward")]
        forwards: Vec<launcher::Forward>,
    },
    /// Run a command inside the running world (its network, mounts and processes).
    Exec {
        /// The command.
        #[arg(trailing_var_arg = true, required = true)]
        command: Vec<String>,
    },
    /// Make a CA (`ca.key`, `ca.crt`) and a serving certificate it signs (`tls.key`, `tls.crt`)
    /// for the given DNS names in DIR, valid 30 days (`make run`'s gateway certificate).
    ServingCert {
        /// Where the files go.
        dir: PathBuf,
        /// DNS names the certificate is for.
        #[arg(long = "dns", required = true)]
        names: Vec<String>,
    },
    /// The world's init (started by `up`).
    #[command(hide = true)]
    Inside,
    /// A pod's first process (started by the node agent).
    #[command(hide = true)]
    Sandbox { spec: PathBuf },
}

fn main() -> ExitCode {
    let cli = Cli::parse();
    let state = paths::State(std::path::absolute(&cli.state).unwrap_or(cli.state));
    let result = match cli.command {
        Command::Sandbox { spec } => sandbox::run_sandbox(&spec),
        Command::Exec { command } => match launcher::exec(&state, &command) {
            Ok(status) => return ExitCode::from(status.code().unwrap_or(1) as u8),
            Err(e) => Err(e),
        },
        Command::ServingCert { dir, names } => {
            let names: Vec<&str> = names.iter().map(String::as_str).collect();
            sco_e2e::certs::serving(&dir, "/CN=spark-connect-operator make run CA", &names, 30)
        }
        Command::Up { api_port, forwards } => {
            runtime().and_then(|rt| rt.block_on(launcher::up(state, api_port, forwards)))
        }
        Command::Inside => {
            tracing_subscriber::fmt()
                .with_env_filter(
                    tracing_subscriber::EnvFilter::try_from_default_env()
                        .unwrap_or_else(|_| "info".into()),
                )
                .init();
            runtime().and_then(|rt| rt.block_on(world::inside(state)))
        }
    };
    match result {
        Ok(()) => ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            ExitCode::FAILURE
        }
    }
}

fn runtime() -> anyhow::Result<tokio::runtime::Runtime> {
    Ok(tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()?)
}
