//! One pod's life on the node: prepare, start the sandbox with its veth, report status, probe
//! readiness, restart by policy, stop with a grace period.

use std::collections::BTreeMap;
use std::process::Stdio;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, bail};
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Container, Pod, Probe};
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;
use kube::api::{Api, DeleteParams, Patch, PatchParams};
use kube::runtime::events::{Event, EventType};
use kube::{Client, Resource, ResourceExt};
use serde_json::json;
use spark_connect_operator::controller::recorders::Recorders;
use tokio::io::AsyncWriteExt;
use tokio::sync::watch;

use super::images;
use super::volumes::{self, expand};
use crate::paths::State;
use crate::sandbox::{Mount, SandboxSpec};
use sco_e2e::net::GATEWAY;

/// What a pod task shares with the agent.
pub struct Node {
    /// API client.
    pub client: Client,
    /// State directory.
    pub state: State,
    /// Publishes pod Events, one recorder per pod.
    pub recorders: Recorders,
    /// Free pod IP indexes (10.244.x.y, counted from 2), oldest-freed first: an address is
    /// reused as late as possible, so no neighbour cache still points it at a deleted pod.
    pub ips: std::sync::Mutex<std::collections::VecDeque<u32>>,
}

impl Node {
    fn take_ip(&self) -> anyhow::Result<u32> {
        let mut free = self
            .ips
            .lock()
            .map_err(|_| anyhow::anyhow!("ip pool poisoned"))?;
        free.pop_front().context("the pod network is full")
    }
    fn give_ip(&self, index: u32) {
        if let Ok(mut free) = self.ips.lock() {
            free.push_back(index);
        }
    }
    async fn event(&self, pod: &Pod, type_: EventType, reason: &str, note: String) {
        let event = Event {
            type_,
            reason: reason.into(),
            note: Some(note),
            action: reason.into(),
            secondary: None,
        };
        let regarding = pod.object_ref(&());
        let recorder = self.recorders.about(&regarding, std::time::Instant::now());
        let _ = recorder.publish(&event, &regarding).await;
    }
}

/// The base of every pod's root: host directories read-only, private scratch directories.
fn base_mounts(pod_dir: &std::path::Path) -> Vec<Mount> {
    let mut mounts = Vec::new();
    for dir in ["bin", "sbin", "lib", "lib32", "lib64", "libx32"] {
        let host = std::path::Path::new("/").join(dir);
        if let Ok(target) = std::fs::read_link(&host) {
            mounts.push(Mount::Symlink {
                link: format!("/{dir}"),
                to: target.to_string_lossy().into_owned(),
            });
        } else if host.is_dir() {
            mounts.push(Mount::Bind {
                source: host,
                target: format!("/{dir}"),
                read_only: true,
                recursive: false,
            });
        }
    }
    for dir in ["usr", "etc"] {
        mounts.push(Mount::Bind {
            source: format!("/{dir}").into(),
            target: format!("/{dir}"),
            read_only: true,
            recursive: false,
        });
    }
    for dir in ["dev", "proc", "sys"] {
        mounts.push(Mount::Bind {
            source: format!("/{dir}").into(),
            target: format!("/{dir}"),
            read_only: false,
            recursive: true,
        });
    }
    for dir in ["tmp", "var", "run", "root", "home", "opt"] {
        mounts.push(Mount::Tmpfs {
            target: format!("/{dir}"),
        });
    }
    for file in ["hosts", "resolv.conf", "hostname"] {
        mounts.push(Mount::Bind {
            source: pod_dir.join(file),
            target: format!("/etc/{file}"),
            read_only: true,
            recursive: false,
        });
    }
    mounts
}

struct Running {
    child: tokio::process::Child,
}

/// Runs `pod` until `stop` flips or it ends for good.
pub async fn run(node: Arc<Node>, pod: Pod, mut stop: watch::Receiver<bool>) {
    let api: Api<Pod> = Api::namespaced(node.client.clone(), &pod.namespace().unwrap_or_default());
    let name = pod.name_any();
    let result = run_inner(&node, &pod, &api, &mut stop).await;
    if let Err(e) = &result {
        tracing::warn!(pod = %name, error = %format!("{e:#}"), "pod failed");
        node.event(&pod, EventType::Warning, "Failed", format!("{e:#}"))
            .await;
        let _ = patch_status(
            &api,
            &name,
            json!({"phase": "Failed", "reason": "StartError", "message": format!("{e:#}")}),
        )
        .await;
        // Wait for the deletion that follows.
        stopped(&mut stop).await;
    }
    let deleting = *stop.borrow();
    if deleting {
        let _ = api
            .delete(
                &name,
                &DeleteParams {
                    grace_period_seconds: Some(0),
                    ..DeleteParams::default()
                },
            )
            .await;
    }
}

async fn run_inner(
    node: &Node,
    pod: &Pod,
    api: &Api<Pod>,
    stop: &mut watch::Receiver<bool>,
) -> anyhow::Result<()> {
    let name = pod.name_any();
    let ns = pod.namespace().unwrap_or_default();
    let spec = pod.spec.clone().context("pod has no spec")?;
    let container = spec
        .containers
        .first()
        .context("pod has no container")?
        .clone();
    let image = container.image.clone().unwrap_or_default();
    let layout = match images::resolve(&image, node.state.dir()) {
        Ok(layout) => layout,
        Err(message) => {
            node.event(pod, EventType::Warning, "Failed", message.clone())
                .await;
            let status = container_waiting(&container, "ErrImagePull", &message);
            patch_status(
                api,
                &name,
                json!({"phase": "Pending", "containerStatuses": [status]}),
            )
            .await?;
            stopped(stop).await;
            return Ok(());
        }
    };
    let dir = node.state.pod_dir(&ns, &name);
    std::fs::create_dir_all(&dir)?;
    let ip_index = node.take_ip()?;
    let ip = sco_e2e::net::pod_ip(ip_index);
    let run = ContainerRun {
        node,
        pod,
        api,
        container: &container,
        layout: &layout,
        dir: &dir,
        ip_index,
        ip: &ip,
    };
    let result = run.supervise(stop).await;
    node.give_ip(ip_index);
    result
}

/// One pod's container as this node runs it: what it runs and where.
struct ContainerRun<'a> {
    node: &'a Node,
    pod: &'a Pod,
    api: &'a Api<Pod>,
    container: &'a Container,
    layout: &'a images::ImageLayout,
    /// The pod's directory on the node.
    dir: &'a std::path::Path,
    ip_index: u32,
    ip: &'a str,
}

impl ContainerRun<'_> {
    /// Runs the container until the pod is stopped, restarting it as its policy says.
    async fn supervise(&self, stop: &mut watch::Receiver<bool>) -> anyhow::Result<()> {
        let Some((env, volume_mounts)) = self.await_config(stop).await? else {
            return Ok(());
        };
        self.write_sandbox(env, volume_mounts)?;
        let spec = self.pod.spec.as_ref();
        let policy = spec
            .and_then(|s| s.restart_policy.clone())
            .unwrap_or_else(|| "Always".into());
        let grace = spec
            .and_then(|s| s.termination_grace_period_seconds)
            .unwrap_or(30);
        let mut status = ContainerStatus {
            started_at: Timestamp::now(),
            container_started: Timestamp::now(),
            ready: false,
            restarts: 0,
        };
        loop {
            let mut running = start(self.dir, self.ip_index, self.ip).await?;
            // The container's PID inside the world, for tests that signal it (`sco-world exec -- kill`).
            std::fs::write(
                self.dir.join("pid"),
                running
                    .child
                    .id()
                    .map(|p| p.to_string())
                    .unwrap_or_default(),
            )?;
            status.container_started = Timestamp::now();
            status.ready = self.container.readiness_probe.is_none();
            self.report(&status, None).await?;
            let mut probe = Prober::new(self.container.readiness_probe.as_ref(), self.container);
            let exit = loop {
                tokio::select! {
                    exit = running.child.wait() => break exit?,
                    _ = stopped(stop) => {
                        terminate(&mut running.child, grace).await;
                        return Ok(());
                    }
                    _ = tokio::time::sleep(probe.next_delay()) => {
                        if let Some(now_ready) = probe.check(self.ip, running.child.id()).await
                            && now_ready != status.ready
                        {
                            status.ready = now_ready;
                            self.report(&status, None).await?;
                        }
                    }
                }
            };
            let code = exit.code().unwrap_or(128 + exit.signal_number());
            let restart = policy == "Always" || (policy == "OnFailure" && code != 0);
            if !restart {
                status.ready = false;
                self.report(&status, Some(code)).await?;
                stopped(stop).await;
                return Ok(());
            }
            status.restarts += 1;
            self.node
                .event(
                    self.pod,
                    EventType::Warning,
                    "BackOff",
                    format!("container exited with code {code}; restarting"),
                )
                .await;
            let backoff = Duration::from_secs((1u64 << status.restarts.min(5)).min(30));
            tokio::select! {
                _ = stopped(stop) => return Ok(()),
                _ = tokio::time::sleep(backoff) => {}
            }
        }
    }

    /// The container's environment and volumes, once the Secrets and ConfigMaps they name
    /// exist (until then the pod says CreateContainerConfigError, as the kubelet's would);
    /// `None` when the pod is stopped meanwhile.
    async fn await_config(
        &self,
        stop: &mut watch::Receiver<bool>,
    ) -> anyhow::Result<Option<(Vec<(String, String)>, Vec<Mount>)>> {
        let (client, pod, container) = (&self.node.client, self.pod, self.container);
        loop {
            let prepared = async {
                let env =
                    volumes::environment(client, pod, container, self.ip, &self.layout.env).await?;
                let mounts = volumes::prepare(client, pod, container, self.dir, self.ip).await?;
                anyhow::Ok((env, mounts))
            }
            .await;
            let e = match prepared {
                Ok(ready) => return Ok(Some(ready)),
                Err(e) => e,
            };
            let status =
                container_waiting(container, "CreateContainerConfigError", &format!("{e:#}"));
            patch_status(
                self.api,
                &pod.name_any(),
                json!({"phase": "Pending", "containerStatuses": [status]}),
            )
            .await?;
            tokio::select! {
                _ = stopped(stop) => return Ok(None),
                _ = tokio::time::sleep(Duration::from_secs(2)) => {}
            }
        }
    }

    /// Writes the pod's hosts, resolv.conf and hostname, and the sandbox its container runs
    /// in: the command with `$(VAR)` expanded, the mounts and the environment.
    fn write_sandbox(
        &self,
        env: Vec<(String, String)>,
        volume_mounts: Vec<Mount>,
    ) -> anyhow::Result<()> {
        let (dir, ip, container, layout) = (self.dir, self.ip, self.container, self.layout);
        let hostname = self.pod.name_any();
        let ns = self.pod.namespace().unwrap_or_default();
        let env_map: BTreeMap<String, String> = env.iter().cloned().collect();
        let mut argv: Vec<String> = match &container.command {
            Some(command) if !command.is_empty() => {
                command.iter().map(|c| expand(c, &env_map)).collect()
            }
            _ => layout.default_argv.clone(),
        };
        argv.extend(container.args.iter().flatten().map(|a| expand(a, &env_map)));
        std::fs::write(
            dir.join("hosts"),
            format!("127.0.0.1 localhost\n{ip} {hostname}.{ns}.pod.cluster.local {hostname}\n"),
        )?;
        std::fs::write(
            dir.join("resolv.conf"),
            format!(
                "search {ns}.svc.cluster.local svc.cluster.local cluster.local\nnameserver {}\noptions ndots:5\n",
                sco_e2e::net::DNS_SERVICE_IP
            ),
        )?;
        std::fs::write(dir.join("hostname"), format!("{hostname}\n"))?;
        let mut mounts = base_mounts(dir);
        mounts.extend(layout.mounts.iter().cloned());
        mounts.extend(volume_mounts);
        let sandbox = SandboxSpec {
            ip: ip.into(),
            hostname,
            root: dir.join("root"),
            mounts,
            argv,
            env,
            workdir: container
                .working_dir
                .clone()
                .unwrap_or_else(|| layout.workdir.clone()),
        };
        std::fs::write(
            dir.join("sandbox.json"),
            serde_json::to_vec_pretty(&sandbox)?,
        )?;
        Ok(())
    }

    /// Writes the pod's status: running (ready or not), or exited with `exit_code`.
    async fn report(&self, status: &ContainerStatus, exit_code: Option<i32>) -> anyhow::Result<()> {
        let ContainerStatus {
            started_at: started,
            container_started,
            ready,
            restarts,
        } = *status;
        let (name, container, ip) = (self.pod.name_any(), self.container, self.ip);
        let now = Timestamp::now().to_string();
        let state = match exit_code {
            None => json!({"running": {"startedAt": container_started.to_string()}}),
            Some(code) => {
                json!({"terminated": {"exitCode": code, "reason": if code == 0 { "Completed" } else { "Error" },
                "startedAt": container_started.to_string(), "finishedAt": now}})
            }
        };
        let phase = match exit_code {
            None => "Running",
            Some(0) => "Succeeded",
            Some(_) => "Failed",
        };
        let ready_s = if ready { "True" } else { "False" };
        let condition = |type_: &str, status: &str| json!({"type": type_, "status": status, "lastTransitionTime": now});
        patch_status(
            self.api,
            &name,
            json!({
                "phase": phase,
                "hostIP": GATEWAY, "hostIPs": [{"ip": GATEWAY}],
                "podIP": ip, "podIPs": [{"ip": ip}],
                "startTime": started.to_string(),
                "conditions": [
                    condition("PodScheduled", "True"), condition("Initialized", "True"),
                    condition("ContainersReady", ready_s), condition("Ready", ready_s)
                ],
                "containerStatuses": [{
                    "name": container.name, "image": container.image, "imageID": "", "containerID": format!("world://{name}"),
                    "ready": ready, "started": exit_code.is_none(), "restartCount": restarts, "state": state
                }]
            }),
        )
        .await
    }
}

/// What the pod's status says of its container.
#[derive(Clone, Copy)]
struct ContainerStatus {
    /// When the pod's container first started.
    started_at: Timestamp,
    /// When the current run of it started.
    container_started: Timestamp,
    ready: bool,
    restarts: i32,
}

/// Resolves once the agent asks the pod to stop.
async fn stopped(stop: &mut watch::Receiver<bool>) {
    let _ = stop.wait_for(|s| *s).await.map(|_| ());
}

trait SignalNumber {
    fn signal_number(&self) -> i32;
}
impl SignalNumber for std::process::ExitStatus {
    fn signal_number(&self) -> i32 {
        std::os::unix::process::ExitStatusExt::signal(self).unwrap_or(0)
    }
}

/// A locally administered MAC address made from a pod's IPv4 address (`0a:58:` and its octets).
fn pod_mac(ip: &str) -> anyhow::Result<String> {
    let address: std::net::Ipv4Addr = ip.parse().context("a pod IPv4 address")?;
    let [a, b, c, d] = address.octets();
    Ok(format!("0a:58:{a:02x}:{b:02x}:{c:02x}:{d:02x}"))
}

/// Resolves once process `pid` is in a network namespace other than the agent's.
async fn wait_for_own_netns(pid: &str) -> anyhow::Result<()> {
    let own = std::fs::read_link("/proc/self/ns/net").context("reading the node's netns")?;
    let theirs = format!("/proc/{pid}/ns/net");
    let deadline = tokio::time::Instant::now() + Duration::from_secs(30);
    loop {
        match std::fs::read_link(&theirs) {
            Ok(ns) if ns != own => return Ok(()),
            Ok(_) if tokio::time::Instant::now() < deadline => {
                tokio::time::sleep(Duration::from_millis(5)).await;
            }
            Ok(_) => {
                bail!("the sandbox {pid} did not enter a network namespace of its own in 30 s")
            }
            Err(e) => bail!("the sandbox {pid} is gone: {e}"),
        }
    }
}

/// Starts the sandbox in new network, UTS and mount namespaces and plugs its veth in.
async fn start(dir: &std::path::Path, ip_index: u32, ip: &str) -> anyhow::Result<Running> {
    let log = std::fs::OpenOptions::new()
        .create(true)
        .append(true)
        .open(dir.join("log"))?;
    let me = std::env::current_exe()?;
    let mut child = tokio::process::Command::new("unshare")
        .args(["--net", "--uts", "--mount", "--"])
        .arg(me)
        .arg("sandbox")
        .arg(dir.join("sandbox.json"))
        .stdin(Stdio::piped())
        .stdout(log.try_clone()?)
        .stderr(log)
        .process_group(0)
        .kill_on_drop(true)
        .spawn()
        .context("starting the pod sandbox")?;
    let pid = child.id().context("sandbox has no pid")?.to_string();
    // `unshare` has not necessarily entered its new network namespace yet (under load it may
    // lag): a veth peer moved to its PID before then lands in the node's namespace, where eth0
    // exists ("File exists"). Wait until the sandbox's namespace is its own.
    wait_for_own_netns(&pid).await?;
    // veth names are limited to 15 characters: derive them from the IP index.
    let host_end = format!("vp{ip_index}");
    let _ = sco_e2e::run("ip", &["link", "del", &host_end]);
    // The pod's MAC follows from its IP, so the node's permanent neighbour entry for it is
    // known before the pod starts (permanent entries are exempt from the kernel's shared cap).
    let mac = pod_mac(ip)?;
    sco_e2e::run(
        "ip",
        &[
            "link", "add", &host_end, "type", "veth", "peer", "name", "eth0", "address", &mac,
            "netns", &pid,
        ],
    )?;
    sco_e2e::run(
        "ip",
        &[
            "neigh",
            "replace",
            ip,
            "lladdr",
            &mac,
            "dev",
            "br0",
            "nud",
            "permanent",
        ],
    )?;
    sco_e2e::run("ip", &["link", "set", &host_end, "master", "br0"])?;
    sco_e2e::run(
        "ip",
        &[
            "link",
            "set",
            &host_end,
            "type",
            "bridge_slave",
            "hairpin",
            "on",
        ],
    )?;
    sco_e2e::run("ip", &["link", "set", &host_end, "up"])?;
    let mut stdin = child.stdin.take().context("sandbox has no stdin")?;
    stdin.write_all(b"g").await?;
    drop(stdin);
    Ok(Running { child })
}

/// SIGTERM to the pod's process group, SIGKILL after the grace period.
async fn terminate(child: &mut tokio::process::Child, grace: i64) {
    if let Some(pid) = child.id() {
        unsafe {
            libc::kill(-(pid as i32), libc::SIGTERM);
        }
        if tokio::time::timeout(Duration::from_secs(grace.max(0) as u64), child.wait())
            .await
            .is_ok()
        {
            return;
        }
        unsafe {
            libc::kill(-(pid as i32), libc::SIGKILL);
        }
    }
    let _ = child.wait().await;
}

/// A readiness probe with its thresholds.
struct Prober<'a> {
    probe: Option<&'a Probe>,
    container: &'a Container,
    first: bool,
    failures: i32,
    successes: i32,
}

impl<'a> Prober<'a> {
    fn new(probe: Option<&'a Probe>, container: &'a Container) -> Self {
        Self {
            probe,
            container,
            first: true,
            failures: 0,
            successes: 0,
        }
    }

    fn next_delay(&mut self) -> Duration {
        let Some(p) = self.probe else {
            return Duration::from_secs(3600);
        };
        if std::mem::take(&mut self.first) {
            Duration::from_secs(p.initial_delay_seconds.unwrap_or(0).max(0) as u64)
                + Duration::from_millis(200)
        } else {
            Duration::from_secs(p.period_seconds.unwrap_or(10).max(1) as u64)
        }
    }

    fn port(&self, port: &IntOrString) -> Option<i32> {
        match port {
            IntOrString::Int(p) => Some(*p),
            IntOrString::String(name) => self
                .container
                .ports
                .iter()
                .flatten()
                .find(|p| p.name.as_deref() == Some(name))
                .map(|p| p.container_port),
        }
    }

    /// Runs one probe; returns the new readiness when the thresholds decide it.
    async fn check(&mut self, ip: &str, pid: Option<u32>) -> Option<bool> {
        let p = self.probe?;
        let timeout = Duration::from_secs(p.timeout_seconds.unwrap_or(1).max(1) as u64);
        let ok = if let Some(tcp) = &p.tcp_socket {
            let port = self.port(&tcp.port)?;
            matches!(
                tokio::time::timeout(timeout, tokio::net::TcpStream::connect((ip, port as u16)))
                    .await,
                Ok(Ok(_))
            )
        } else if let Some(http) = &p.http_get {
            let port = self.port(&http.port)?;
            http_ok(
                ip,
                port as u16,
                http.path.as_deref().unwrap_or("/"),
                timeout,
            )
            .await
        } else if let Some(exec) = &p.exec {
            let pid = pid?.to_string();
            let mut command = tokio::process::Command::new("nsenter");
            command
                .args(["-t", &pid, "-n", "-m", "-u", "-r", "-w", "--"])
                .args(exec.command.iter().flatten());
            matches!(tokio::time::timeout(timeout, command.status()).await, Ok(Ok(s)) if s.success())
        } else {
            true
        };
        if ok {
            self.failures = 0;
            self.successes += 1;
            (self.successes >= p.success_threshold.unwrap_or(1)).then_some(true)
        } else {
            self.successes = 0;
            self.failures += 1;
            (self.failures >= p.failure_threshold.unwrap_or(3)).then_some(false)
        }
    }
}

async fn http_ok(ip: &str, port: u16, path: &str, timeout: Duration) -> bool {
    use tokio::io::AsyncReadExt;
    let attempt = async {
        let mut stream = tokio::net::TcpStream::connect((ip, port)).await?;
        stream
            .write_all(format!("GET {path} HTTP/1.0\r\nHost: {ip}\r\n\r\n").as_bytes())
            .await?;
        let mut head = [0u8; 12];
        stream.read_exact(&mut head).await?;
        std::io::Result::Ok(head)
    };
    match tokio::time::timeout(timeout, attempt).await {
        Ok(Ok(head)) => matches!(head.get(9), Some(b'2' | b'3')),
        _ => false,
    }
}

fn container_waiting(container: &Container, reason: &str, message: &str) -> serde_json::Value {
    json!({
        "name": container.name, "image": container.image, "imageID": "", "ready": false, "restartCount": 0,
        "state": {"waiting": {"reason": reason, "message": message}}
    })
}

async fn patch_status(api: &Api<Pod>, name: &str, status: serde_json::Value) -> anyhow::Result<()> {
    api.patch_status(
        name,
        &PatchParams::default(),
        &Patch::Merge(&json!({"status": status})),
    )
    .await
    .with_context(|| format!("updating the status of pod {name}"))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_pods_mac_follows_from_its_ip_and_is_locally_administered() {
        assert_eq!(
            pod_mac("10.244.1.7").ok().as_deref(),
            Some("0a:58:0a:f4:01:07")
        );
        assert!(pod_mac("not an ip").is_err());
        let first = u8::from_str_radix(&pod_mac("10.244.0.2").unwrap_or_default()[..2], 16);
        assert_eq!(
            first.map(|b| b & 0b11),
            Ok(0b10),
            "locally administered, unicast"
        );
    }
}
