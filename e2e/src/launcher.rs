//! The host side of the world: starts the world's init in new user, network, mount and PID
//! namespaces, relays the apiserver and any requested Services to loopback ports, and tears it
//! all down on exit (also when killed: the namespaces die with their init).

use std::os::unix::process::CommandExt;
use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use tokio::net::TcpListener;

use crate::paths::State;
use crate::relay;

/// A loopback port forwarded to an address inside the world.
#[derive(Clone, Debug)]
pub struct Forward {
    /// Port on the host's 127.0.0.1.
    pub port: u16,
    /// `host:port` dialled inside the world.
    pub target: String,
}

impl std::str::FromStr for Forward {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, Self::Err> {
        let (port, target) = s.split_once('=').ok_or("expected PORT=HOST:PORT")?;
        Ok(Self {
            port: port.parse().map_err(|e| format!("bad port {port}: {e}"))?,
            target: target.into(),
        })
    }
}

/// Host PID of the world's init (the child of the `unshare` process).
pub fn init_pid(state: &State) -> anyhow::Result<u32> {
    let pid = std::fs::read_to_string(state.path("pid"))
        .context("the world is not running (no pid file)")?;
    Ok(pid.trim().parse()?)
}

/// Starts the world and blocks until SIGINT/SIGTERM or the world's end.
pub async fn up(state: State, api_port: u16, forwards: Vec<Forward>) -> anyhow::Result<()> {
    if let Ok(pid) = init_pid(&state)
        && Path::new(&format!("/proc/{pid}")).exists()
    {
        bail!(
            "a world already runs from {} (pid {pid}); stop it first",
            state.dir().display()
        );
    }
    state.reset()?;
    let started = std::time::Instant::now();
    let mut unshare = spawn_world(&state)?;
    wait_until_ready(&state, &mut unshare).await?;
    let mut relays = forward_ports(&state, api_port, &forwards).await?;
    println!(
        "world ready in {:.1}s: KUBECONFIG={}",
        started.elapsed().as_secs_f64(),
        state.host_kubeconfig().display()
    );

    let mut terminate = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())?;
    tokio::select! {
        _ = tokio::signal::ctrl_c() => {}
        _ = terminate.recv() => {}
        status = unshare.wait() => eprintln!("the world ended: {status:?}; see {}", state.path("logs").display()),
        r = relays.join_next() => eprintln!("a relay ended: {r:?}"),
    }
    let _ = unshare.start_kill();
    let _ = unshare.wait().await;
    let _ = std::fs::remove_file(state.path("pid"));
    let _ = std::fs::remove_file(state.dial_socket());
    println!("world stopped");
    Ok(())
}

/// Starts the world's init (`sco-world inside`) in new user, network, mount and PID namespaces.
fn spawn_world(state: &State) -> anyhow::Result<tokio::process::Child> {
    let dir = state.dir();
    // The world runs from its own copy of this program, so rebuilding target/ while it runs
    // cannot pull the binary from under its pods.
    let me = dir.join("sco-world");
    std::fs::copy(std::env::current_exe()?, &me)
        .context("copying sco-world into the state directory")?;
    let log = std::fs::File::create(state.log("world"))?;
    let mut command = std::process::Command::new("unshare");
    command
        .args([
            "--user",
            "--map-root-user",
            "--net",
            "--mount",
            "--pid",
            "--fork",
            "--mount-proc",
            "--kill-child",
            "--",
        ])
        .arg(&me)
        .arg("inside")
        .arg("--state")
        .arg(dir)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log);
    // If this launcher dies, even by SIGKILL, unshare gets SIGKILL and kills the world's init.
    unsafe {
        command.pre_exec(|| {
            if libc::prctl(libc::PR_SET_PDEATHSIG, libc::SIGKILL) != 0 {
                return Err(std::io::Error::last_os_error());
            }
            Ok(())
        });
    }
    tokio::process::Command::from(command)
        .kill_on_drop(true)
        .spawn()
        .context("starting unshare")
}

/// Notes the world's init PID and waits (10 minutes at most) until the world says it is ready.
async fn wait_until_ready(
    state: &State,
    unshare: &mut tokio::process::Child,
) -> anyhow::Result<()> {
    let unshare_pid = unshare.id().context("unshare has no pid")?;
    let started = std::time::Instant::now();
    let mut init = None;
    while started.elapsed() < Duration::from_secs(600) {
        if let Some(status) = unshare.try_wait()? {
            bail!(
                "the world exited ({status}) while starting; see {}",
                state.log("world").display()
            );
        }
        if init.is_none() {
            let children = std::fs::read_to_string(format!(
                "/proc/{unshare_pid}/task/{unshare_pid}/children"
            ))?;
            if let Some(pid) = children.split_whitespace().next() {
                std::fs::write(state.path("pid"), pid)?;
                init = Some(pid.to_string());
            }
        }
        if state.path("ready").exists() {
            return Ok(());
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    bail!(
        "the world did not become ready; see {}",
        state.path("logs").display()
    )
}

/// Relays the apiserver to `api_port` on loopback (written into the host kubeconfig) and each
/// forward to its port.
async fn forward_ports(
    state: &State,
    api_port: u16,
    forwards: &[Forward],
) -> anyhow::Result<tokio::task::JoinSet<anyhow::Result<()>>> {
    let api = TcpListener::bind(("127.0.0.1", api_port))
        .await
        .with_context(|| format!("binding 127.0.0.1:{api_port}"))?;
    let api_port = api.local_addr()?.port();
    std::fs::write(
        state.host_kubeconfig(),
        crate::pki::kubeconfig(&state.path("pki"), &format!("https://127.0.0.1:{api_port}"))?,
    )?;
    let socket: PathBuf = state.dial_socket();
    let mut relays = tokio::task::JoinSet::new();
    relays.spawn(relay::forward(
        api,
        socket.clone(),
        format!("{}:{}", sco_e2e::net::GATEWAY, sco_e2e::net::APISERVER_PORT),
    ));
    for f in forwards {
        let listener = TcpListener::bind(("127.0.0.1", f.port))
            .await
            .with_context(|| format!("binding 127.0.0.1:{}", f.port))?;
        relays.spawn(relay::forward(listener, socket.clone(), f.target.clone()));
        println!(
            "forward: 127.0.0.1:{} -> {} (inside the world)",
            f.port, f.target
        );
    }
    Ok(relays)
}

/// Runs a command inside the world (like `kubectl exec` into the world's own namespaces).
pub fn exec(state: &State, command: &[String]) -> anyhow::Result<std::process::ExitStatus> {
    let pid = init_pid(state)?.to_string();
    let status = std::process::Command::new("nsenter")
        .args([
            "-t",
            &pid,
            "--user",
            "--net",
            "--mount",
            "--pid",
            "--preserve-credentials",
        ])
        .arg(format!("--wd={}", std::env::current_dir()?.display()))
        .arg("--")
        .args(command)
        .env("KUBECONFIG", state.inner_kubeconfig())
        .status()
        .context("running nsenter")?;
    Ok(status)
}
