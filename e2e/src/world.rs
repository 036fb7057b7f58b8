//! The world's init process: runs inside fresh user, network, mount and PID namespaces, sets up
//! the pod network, starts etcd, kube-apiserver, kube-controller-manager, kube-proxy, CoreDNS
//! and the node agent, and serves the dial relay. When it dies, the PID namespace takes every
//! process of the world with it.

use std::path::PathBuf;
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::{Namespace, Service, ServiceAccount};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::Client;
use kube::api::{Api, PostParams};
use sco_e2e::client_from;
use sco_e2e::net::{
    APISERVER_PORT, DNS_SERVICE_IP, GATEWAY, GATEWAY_MAC, NODE_NAME, POD_CIDR, SERVICE_CIDR,
};
use sco_e2e::poll::until;
use sco_e2e::run;
use tokio::process::{Child, Command};

use crate::paths::{self, State};
use crate::{agent, relay};

fn setup_network() -> anyhow::Result<()> {
    run("ip", &["link", "set", "lo", "up"])?;
    run("ip", &["link", "add", "br0", "type", "bridge"])?;
    run("ip", &["link", "set", "br0", "address", GATEWAY_MAC])?;
    run(
        "ip",
        &["addr", "add", &format!("{GATEWAY}/16"), "dev", "br0"],
    )?;
    run("ip", &["link", "set", "br0", "up"])?;
    // Without a route for the service network, a ClusterIP dialled from the world itself fails
    // before kube-proxy's rules are reached. There is no default route: nothing leaves.
    run(
        "ip",
        &["route", "add", SERVICE_CIDR, "dev", "br0", "src", GATEWAY],
    )?;
    std::fs::write("/proc/sys/net/ipv4/ip_forward", "1")?;
    Ok(())
}

/// Points the world's own resolver at CoreDNS (in the world's mount namespace only).
fn setup_resolver(state: &State) -> anyhow::Result<()> {
    let resolv = state.path("resolv.conf");
    std::fs::write(
        &resolv,
        format!(
            "search default.svc.cluster.local svc.cluster.local cluster.local\nnameserver {DNS_SERVICE_IP}\noptions ndots:5\n"
        ),
    )?;
    run(
        "mount",
        &["--bind", &resolv.to_string_lossy(), "/etc/resolv.conf"],
    )
}

fn spawn(
    state: &State,
    name: &str,
    program: &std::path::Path,
    args: &[String],
) -> anyhow::Result<Child> {
    let log = std::fs::File::create(state.log(name))?;
    Command::new(program)
        .args(args)
        .stdin(Stdio::null())
        .stdout(log.try_clone()?)
        .stderr(log)
        .kill_on_drop(true)
        .spawn()
        .with_context(|| format!("starting {name} ({})", program.display()))
}

/// How often the world's start-up polls the apiserver.
const EVERY: Duration = Duration::from_millis(250);

/// Runs the world until killed.
pub async fn inside(state: State) -> anyhow::Result<()> {
    setup_network()?;
    std::fs::create_dir_all(state.path("logs"))?;
    let pki = state.path("pki");
    crate::pki::generate(&pki)?;
    std::fs::write(
        state.inner_kubeconfig(),
        crate::pki::kubeconfig(&pki, &format!("https://{GATEWAY}:{APISERVER_PORT}"))?,
    )?;
    let files = ControlPlaneFiles {
        pki,
        kubeconfig: state.inner_kubeconfig().to_string_lossy().into_owned(),
        etcd_data: state.path("etcd"),
        corefile: state.path("Corefile"),
    };
    let mut children = vec![
        spawn(&state, "etcd", &paths::k8s_bin("etcd"), &files.etcd())?,
        spawn(
            &state,
            "kube-apiserver",
            &paths::k8s_bin("kube-apiserver"),
            &files.apiserver(),
        )?,
    ];
    let client = client_from(&state.inner_kubeconfig()).await?;
    until("the apiserver", Duration::from_secs(120), EVERY, || {
        let client = client.clone();
        async move { client.apiserver_version().await.is_ok() }
    })
    .await?;
    children.push(spawn(
        &state,
        "kube-controller-manager",
        &paths::k8s_bin("kube-controller-manager"),
        &files.controller_manager(),
    )?);
    children.push(spawn(
        &state,
        "kube-proxy",
        &paths::k8s_bin("kube-proxy"),
        &files.kube_proxy(),
    )?);
    std::fs::write(&files.corefile, files.corefile_text())?;
    children.push(spawn(
        &state,
        "coredns",
        &paths::coredns_bin(),
        &[
            "-conf".into(),
            files.corefile.to_string_lossy().into_owned(),
        ],
    )?);
    create_dns_service(&client).await?;
    setup_resolver(&state)?;

    let agent_state = state.clone();
    let agent_client = client.clone();
    let agent = tokio::spawn(async move { agent::run(agent_client, agent_state).await });
    let dial_socket = state.dial_socket();
    let dialer = tokio::spawn(async move { relay::serve_dialer(&dial_socket).await });
    wait_for_default_account(&client).await?;
    std::fs::write(state.path("ready"), "ready\n")?;
    tracing::info!("world ready");

    tokio::select! {
        r = agent => bail!("node agent ended: {r:?}"),
        r = dialer => bail!("dial relay ended: {r:?}"),
        _ = first_exit(&mut children) => {
            bail!("a control-plane process exited; see {}", state.path("logs").display())
        }
    }
}

/// Where the control plane's processes find their certificates, kubeconfig and data.
struct ControlPlaneFiles {
    pki: PathBuf,
    kubeconfig: String,
    etcd_data: PathBuf,
    corefile: PathBuf,
}

impl ControlPlaneFiles {
    fn pki(&self, name: &str) -> String {
        self.pki.join(name).to_string_lossy().into_owned()
    }

    /// etcd on loopback, without fsync (a test world's data need not survive a crash).
    fn etcd(&self) -> Vec<String> {
        vec![
            "--name=world".into(),
            format!("--data-dir={}", self.etcd_data.display()),
            "--listen-client-urls=http://127.0.0.1:2379".into(),
            "--advertise-client-urls=http://127.0.0.1:2379".into(),
            "--listen-peer-urls=http://127.0.0.1:2380".into(),
            "--initial-advertise-peer-urls=http://127.0.0.1:2380".into(),
            "--initial-cluster=world=http://127.0.0.1:2380".into(),
            "--unsafe-no-fsync".into(),
            "--log-level=warn".into(),
        ]
    }

    /// The apiserver on the world's gateway address, with RBAC and service-account tokens.
    fn apiserver(&self) -> Vec<String> {
        vec![
            "--etcd-servers=http://127.0.0.1:2379".into(),
            format!("--bind-address={GATEWAY}"),
            format!("--advertise-address={GATEWAY}"),
            format!("--secure-port={APISERVER_PORT}"),
            format!("--service-cluster-ip-range={SERVICE_CIDR}"),
            format!("--tls-cert-file={}", self.pki("apiserver.crt")),
            format!("--tls-private-key-file={}", self.pki("apiserver.key")),
            format!("--client-ca-file={}", self.pki("ca.crt")),
            "--service-account-issuer=https://kubernetes.default.svc.cluster.local".into(),
            format!("--service-account-key-file={}", self.pki("sa.pub")),
            format!("--service-account-signing-key-file={}", self.pki("sa.key")),
            "--authorization-mode=Node,RBAC".into(),
            "--allow-privileged=true".into(),
            "--profiling=false".into(),
            "--v=1".into(),
        ]
    }

    /// The controller manager (garbage collector, namespaces, tokens, endpoints).
    fn controller_manager(&self) -> Vec<String> {
        vec![
            format!("--kubeconfig={}", self.kubeconfig),
            "--leader-elect=false".into(),
            format!("--root-ca-file={}", self.pki("ca.crt")),
            format!("--service-account-private-key-file={}", self.pki("sa.key")),
            "--use-service-account-credentials=true".into(),
            "--secure-port=0".into(),
            format!("--cluster-signing-cert-file={}", self.pki("ca.crt")),
            format!("--cluster-signing-key-file={}", self.pki("ca.key")),
            "--v=1".into(),
        ]
    }

    /// kube-proxy in nftables mode, leaving the host's conntrack settings alone.
    fn kube_proxy(&self) -> Vec<String> {
        vec![
            format!("--kubeconfig={}", self.kubeconfig),
            format!("--hostname-override={NODE_NAME}"),
            "--proxy-mode=nftables".into(),
            format!("--cluster-cidr={POD_CIDR}"),
            "--conntrack-max-per-core=0".into(),
            "--conntrack-min=0".into(),
            "--conntrack-tcp-timeout-established=0".into(),
            "--conntrack-tcp-timeout-close-wait=0".into(),
            "--conntrack-udp-timeout=0".into(),
            "--conntrack-udp-timeout-stream=0".into(),
            "--metrics-bind-address=127.0.0.1:10249".into(),
            "--healthz-bind-address=127.0.0.1:10256".into(),
        ]
    }

    /// CoreDNS: the cluster's names from the apiserver, every other name refused.
    fn corefile_text(&self) -> String {
        let kubeconfig = &self.kubeconfig;
        format!(
            "cluster.local:53 in-addr.arpa:53 ip6.arpa:53 {{\n  bind {GATEWAY}\n  errors\n  kubernetes cluster.local in-addr.arpa ip6.arpa {{\n    kubeconfig {kubeconfig} world\n    pods insecure\n    fallthrough in-addr.arpa ip6.arpa\n  }}\n}}\n\
             .:53 {{\n  bind {GATEWAY}\n  template ANY ANY {{\n    rcode NXDOMAIN\n  }}\n}}\n"
        )
    }
}

/// Ready: the default ServiceAccount exists (pods need it).
async fn wait_for_default_account(client: &Client) -> anyhow::Result<()> {
    let accounts: Api<ServiceAccount> = Api::namespaced(client.clone(), "default");
    until(
        "the default ServiceAccount",
        Duration::from_secs(120),
        EVERY,
        || {
            let accounts = accounts.clone();
            async move { accounts.get_opt("default").await.ok().flatten().is_some() }
        },
    )
    .await?;
    Ok(())
}

/// Resolves when the first of `children` exits.
async fn first_exit(children: &mut [Child]) {
    loop {
        if children
            .iter_mut()
            .any(|child| matches!(child.try_wait(), Ok(Some(_))))
        {
            return;
        }
        tokio::time::sleep(Duration::from_secs(1)).await;
    }
}

async fn create_dns_service(client: &Client) -> anyhow::Result<()> {
    let namespaces: Api<Namespace> = Api::all(client.clone());
    until(
        "namespace kube-system",
        Duration::from_secs(60),
        EVERY,
        || {
            let namespaces = namespaces.clone();
            async move {
                namespaces
                    .get_opt("kube-system")
                    .await
                    .ok()
                    .flatten()
                    .is_some()
            }
        },
    )
    .await?;
    let service: Service = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "kube-dns", "namespace": "kube-system", "labels": {"k8s-app": "kube-dns"}},
        "spec": {"clusterIP": DNS_SERVICE_IP, "ports": [
            {"name": "dns", "port": 53, "protocol": "UDP"},
            {"name": "dns-tcp", "port": 53, "protocol": "TCP"}
        ]}
    }))?;
    let slice: EndpointSlice = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "kube-dns-world", "namespace": "kube-system", "labels": {
            "kubernetes.io/service-name": "kube-dns", "endpointslice.kubernetes.io/managed-by": "sco-world"
        }},
        "addressType": "IPv4",
        "endpoints": [{"addresses": [GATEWAY], "conditions": {"ready": true}}],
        "ports": [{"name": "dns", "port": 53, "protocol": "UDP"}, {"name": "dns-tcp", "port": 53, "protocol": "TCP"}]
    }))?;
    // The apiserver makes its default ServiceCIDR ready shortly after /readyz: until then a
    // Service with a fixed cluster IP is refused as outside "the current range".
    let services = Api::<Service>::namespaced(client.clone(), "kube-system");
    let started = std::time::Instant::now();
    loop {
        match services.create(&PostParams::default(), &service).await {
            Ok(_) => break,
            Err(kube::Error::Api(s))
                if s.code == 422
                    && s.message.contains("current range")
                    && started.elapsed() < std::time::Duration::from_secs(60) =>
            {
                tokio::time::sleep(std::time::Duration::from_millis(200)).await;
            }
            Err(e) => return Err(e.into()),
        }
    }
    Api::<EndpointSlice>::namespaced(client.clone(), "kube-system")
        .create(&PostParams::default(), &slice)
        .await?;
    Ok(())
}
