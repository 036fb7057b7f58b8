//! The gateway against direct connections, side by side in one run, measured by a Python gRPC
//! client inside the world (the generated Spark Connect stubs pyspark ships; no network traffic
//! leaves the world): added latency of a unary Config call, streaming throughput of a large
//! ExecutePlan result (1 GiB of Arrow batches from a fake server), connect-to-first-answer for
//! new users of a Dedicated cluster on a warm pool (fake servers, then real Spark with pyspark
//! from a running Python process), and the gateway's RSS and CPU with 1,000 idle client
//! connections (each with its own session).

use std::path::{Path, PathBuf};
use std::process::Stdio;
use std::time::Duration;

use anyhow::{Context, bail};
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::Client;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use serde_json::{Value, json};
use spark_connect_operator::crd::SparkConnectCluster;
use tokio::io::{AsyncBufReadExt, BufReader};

use super::first_result::Client as SparkClient;
use super::report::{self, Spread};

/// The bench, and the first part of its namespace's name.
const BENCH: &str = "bench-gateway";

/// The measuring client. Modes: `unary TARGET CA TOKEN CLUSTER N`, `stream TARGET CA TOKEN
/// CLUSTER BYTES RUNS`, `connect TARGET CA CLUSTER TOKEN...`, `idle TARGET CA TOKEN CLUSTER N`.
/// CA `-` means plaintext. Prints one JSON line per measurement set.
const CLIENT: &str = r#"
import json, sys, time, uuid
import grpc
from pyspark.sql.connect.proto import base_pb2, base_pb2_grpc, relations_pb2

def channel(target, ca):
    opts = [("grpc.max_receive_message_length", 64 << 20)]
    if ca == "-":
        return grpc.insecure_channel(target, options=opts)
    with open(ca, "rb") as f:
        creds = grpc.ssl_channel_credentials(f.read())
    return grpc.secure_channel(target, creds, options=opts)

def meta(token, cluster):
    m = [("authorization", "Bearer " + token)]
    if cluster != "-":
        m.append(("cluster", cluster))
    return m

def config(stub, session, m):
    req = base_pb2.ConfigRequest(session_id=session, user_context=base_pb2.UserContext(user_id="bench"),
        operation=base_pb2.ConfigRequest.Operation(get=base_pb2.ConfigRequest.Get(keys=["sco.fake.userId"])))
    return stub.Config(req, metadata=m, timeout=120)

mode, target, ca = sys.argv[1], sys.argv[2], sys.argv[3]
if mode == "unary":
    token, cluster, n = sys.argv[4], sys.argv[5], int(sys.argv[6])
    stub = base_pb2_grpc.SparkConnectServiceStub(channel(target, ca))
    session, m = str(uuid.uuid4()), meta(token, cluster)
    for _ in range(200):
        config(stub, session, m)
    samples = []
    for _ in range(n):
        t = time.perf_counter(); config(stub, session, m); samples.append((time.perf_counter() - t) * 1e3)
    print(json.dumps({"ms": samples}), flush=True)
elif mode == "stream":
    token, cluster, total, runs = sys.argv[4], sys.argv[5], int(sys.argv[6]), int(sys.argv[7])
    stub = base_pb2_grpc.SparkConnectServiceStub(channel(target, ca))
    session, m = str(uuid.uuid4()), meta(token, cluster)
    config(stub, session, m)
    out = []
    for _ in range(runs):
        req = base_pb2.ExecutePlanRequest(session_id=session, user_context=base_pb2.UserContext(user_id="bench"),
            operation_id=str(uuid.uuid4()),
            plan=base_pb2.Plan(root=relations_pb2.Relation(sql=relations_pb2.SQL(query="sco_fake_stream_bytes=%d" % total))))
        t, got = time.perf_counter(), 0
        for r in stub.ExecutePlan(req, metadata=m, timeout=600):
            got += len(r.arrow_batch.data)
        out.append({"bytes": got, "seconds": time.perf_counter() - t})
    print(json.dumps({"runs": out}), flush=True)
elif mode == "connect":
    cluster, tokens = sys.argv[4], sys.argv[5:]
    samples = []
    for token in tokens:
        t = time.perf_counter()
        stub = base_pb2_grpc.SparkConnectServiceStub(channel(target, ca))
        config(stub, str(uuid.uuid4()), meta(token, cluster))
        samples.append((time.perf_counter() - t) * 1e3)
    print(json.dumps({"ms": samples}), flush=True)
elif mode == "idle":
    token, cluster, n = sys.argv[4], sys.argv[5], int(sys.argv[6])
    chans = []
    t = time.perf_counter()
    for i in range(n):
        ch = channel(target, ca)
        config(base_pb2_grpc.SparkConnectServiceStub(ch), str(uuid.uuid4()), meta(token, cluster))
        chans.append(ch)
    print(json.dumps({"open": n, "seconds": time.perf_counter() - t}), flush=True)
    sys.stdin.read()
"#;

fn python() -> anyhow::Result<String> {
    std::env::var("SCO_PYTHON").context("SCO_PYTHON (set by e2e/world.sh)")
}

/// Runs the client inside the world and returns its JSON lines.
fn client(world_bin: &Path, state: &Path, args: &[&str]) -> anyhow::Result<Vec<Value>> {
    let python = python()?;
    let mut command = vec![python.as_str(), "-c", CLIENT];
    command.extend_from_slice(args);
    let out = sco_e2e::exec(world_bin, state, &command)?;
    let lines: Vec<Value> = String::from_utf8_lossy(&out.stdout)
        .lines()
        .filter_map(|l| serde_json::from_str(l).ok())
        .collect();
    if lines.is_empty() {
        bail!(
            "the client printed nothing: {}",
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(lines)
}

fn kubectl(state: &Path, args: &[&str]) -> anyhow::Result<String> {
    let kubectl = std::env::var("SCO_KUBECTL").unwrap_or_else(|_| "kubectl".into());
    let out = std::process::Command::new(kubectl)
        .env("KUBECONFIG", state.join("kubeconfig"))
        .args(args)
        .output()?;
    if !out.status.success() {
        bail!(
            "kubectl {}: {}",
            args.join(" "),
            String::from_utf8_lossy(&out.stderr)
        );
    }
    Ok(String::from_utf8_lossy(&out.stdout).trim().to_string())
}

fn token(state: &Path, ns: &str, account: &str) -> anyhow::Result<String> {
    let _ = kubectl(state, &["-n", ns, "create", "serviceaccount", account]);
    kubectl(
        state,
        &[
            "-n",
            ns,
            "create",
            "token",
            account,
            "--audience",
            sco_e2e::gateway::AUDIENCE,
            "--duration",
            "2h",
        ],
    )
}

async fn cluster_within(
    client: &Client,
    ns: &str,
    name: &str,
    spec: Value,
    timeout: Duration,
    ready: impl Fn(&spark_connect_operator::crd::SparkConnectClusterStatus) -> bool,
) -> anyhow::Result<()> {
    let api: Api<SparkConnectCluster> = Api::namespaced(client.clone(), ns);
    let object = serde_json::from_value(json!({"metadata": {"name": name}, "spec": spec}))?;
    api.create(&PostParams::default(), &object).await?;
    sco_e2e::cluster_status_until(&api, name, name, timeout, ready).await?;
    Ok(())
}

async fn cluster(
    client: &Client,
    ns: &str,
    name: &str,
    spec: Value,
    ready: impl Fn(&spark_connect_operator::crd::SparkConnectClusterStatus) -> bool,
) -> anyhow::Result<()> {
    cluster_within(client, ns, name, spec, Duration::from_secs(180), ready).await
}

fn fake(mut spec: Value) -> Value {
    spec["image"] = json!("sco-fake-connect:latest");
    spec["probe"] = json!({"period": "5s", "timeout": "2s"});
    spec["auth"] = json!({"mode": "Token"});
    spec
}

fn ms_samples(line: &Value) -> Vec<Duration> {
    line["ms"]
        .as_array()
        .map(|a| {
            a.iter()
                .filter_map(Value::as_f64)
                .map(|ms| Duration::from_secs_f64(ms / 1e3))
                .collect()
        })
        .unwrap_or_default()
}

fn throughput(line: &Value) -> Vec<f64> {
    line["runs"]
        .as_array()
        .map(|runs| {
            runs.iter()
                .filter_map(|r| Some(r["bytes"].as_f64()? / r["seconds"].as_f64()? / 1e6))
                .collect()
        })
        .unwrap_or_default()
}

/// CPU seconds, resident MB now and peak resident MB of every gateway replica, summed.
fn gateway_usage(world_bin: &Path, state: &Path, pods: &[(String, String)]) -> (f64, f64, f64) {
    let ns = sco_e2e::operator::namespace();
    pods.iter()
        .filter_map(|(name, _)| sco_e2e::operator::pod_usage(world_bin, state, &ns, name))
        .fold((0.0, 0.0, 0.0), |(cpu, rss, peak), u| {
            (cpu + u.cpu_seconds, rss + u.rss_mb, peak + u.peak_rss_mb)
        })
}

/// Runs every gateway measurement and writes `target/bench/gateway.json`.
pub async fn run(world: PathBuf) -> anyhow::Result<()> {
    let bench = Bench::prepare(world).await?;
    let unary = bench.unary_latency()?;
    let stream = bench.stream_throughput().await?;
    let dedicated = bench.dedicated_first_answer()?;
    let spark = bench
        .dedicated_first_result_on_spark(RealPool::REFILLING)
        .await?;
    let spark_at_cap = bench
        .dedicated_first_result_on_spark(RealPool::AT_CAP)
        .await?;
    let idle = bench.idle_connections().await?;
    report::write(
        "gateway",
        &json!({
            "unary_config_ms": unary,
            "stream_1gib_mb_per_s": stream,
            "dedicated_new_user_first_answer_ms": dedicated,
            "dedicated_new_user_first_result_real_spark_ms": spark,
            "dedicated_new_user_first_result_real_spark_at_cap_ms": spark_at_cap,
            "idle_connections": idle,
        }),
    )?;
    // The next benchmark starts on a quiet world: no pool of this one left probing.
    sco_e2e::remove_namespace(&bench.client, &bench.ns).await
}

/// The world, the two clusters and the ways to reach the shared one.
struct Bench {
    world: PathBuf,
    world_bin: PathBuf,
    client: Client,
    ns: String,
    /// The gateway's CA certificate.
    ca_path: PathBuf,
    ca: String,
    /// The shared server's own address and token (the direct path).
    direct: String,
    server_token: String,
    /// The gateway's address inside the world.
    through: String,
    /// A user's token, and the shared cluster as the gateway names it.
    user: String,
    shared_cluster: String,
}

impl Bench {
    /// A namespace whose service accounts may connect, a shared cluster of one fake server and
    /// a Dedicated cluster with 10 idle fake servers.
    async fn prepare(world: PathBuf) -> anyhow::Result<Self> {
        let world_bin = std::env::current_exe()?
            .parent()
            .map(|d| d.join("sco-world"))
            .context("the sco-world binary next to sco-bench")?;
        let client = sco_e2e::world_client(&world).await?;
        let pki = sco_e2e::gateway::prepare(&client, &world).await?;
        let ns = sco_e2e::fresh_namespace(&client, BENCH).await?;
        kubectl(
            &world,
            &[
                "-n",
                &ns,
                "create",
                "rolebinding",
                "everyone-connects",
                "--clusterrole",
                "sparkconnect-user",
                &format!("--group=system:serviceaccounts:{ns}"),
            ],
        )?;
        let shared = fake(json!({"shared": 1, "hotPool": {"idle": 0}}));
        let dedicated = fake(
            json!({"shared": 0, "hotPool": {"idle": 10, "max": 40, "maxServers": 40},
            "gateway": {"mode": "Dedicated", "idleTimeout": "10m", "maxDedicatedServers": 30}}),
        );
        let ten_idle =
            |s: &spark_connect_operator::crd::SparkConnectClusterStatus| s.servers.idle >= 10;
        tokio::try_join!(
            cluster(&client, &ns, "shared", shared, |s| s.servers.shared >= 1),
            cluster(&client, &ns, "dedicated", dedicated, ten_idle),
        )?;
        let (server, server_token) = shared_server(&client, &ns).await?;
        Ok(Self {
            user: token(&world, &ns, "bench")?,
            shared_cluster: format!("shared.{ns}"),
            direct: format!("{server}:15002"),
            server_token,
            through: format!("{}:443", sco_e2e::gateway::HOST),
            ca: pki.ca.to_string_lossy().into_owned(),
            ca_path: pki.ca,
            world,
            world_bin,
            client,
            ns,
        })
    }

    /// Runs the measuring client inside the world; its one JSON line.
    fn measure(&self, args: &[&str]) -> anyhow::Result<Value> {
        client_line(&self.world_bin, &self.world, args)
    }

    /// CPU seconds, RSS MB and peak RSS MB of the gateway's replicas.
    fn gateway_usage(&self, replicas: &[(String, String)]) -> (f64, f64, f64) {
        gateway_usage(&self.world_bin, &self.world, replicas)
    }

    /// A unary Config call, 2,000 times each way.
    fn unary_latency(&self) -> anyhow::Result<Value> {
        println!("gateway: unary Config latency, 2,000 calls each way ...");
        let direct = ms_samples(&self.measure(&[
            "unary",
            &self.direct,
            "-",
            &self.server_token,
            "-",
            "2000",
        ])?);
        let gateway = ms_samples(&self.measure(&[
            "unary",
            &self.through,
            &self.ca,
            &self.user,
            &self.shared_cluster,
            "2000",
        ])?);
        let (d50, d99) = (
            report::percentile(&direct, 0.5),
            report::percentile(&direct, 0.99),
        );
        let (g50, g99) = (
            report::percentile(&gateway, 0.5),
            report::percentile(&gateway, 0.99),
        );
        println!(
            "  direct p50 {d50:.2} ms p99 {d99:.2} ms; through the gateway p50 {g50:.2} ms p99 {g99:.2} ms; added p50 {:.2} ms p99 {:.2} ms",
            g50 - d50,
            g99 - d99
        );
        Ok(json!({
            "calls": 2000,
            "direct": {"p50": d50, "p99": d99},
            "gateway": {"p50": g50, "p99": g99},
            "added": {"p50": g50 - d50, "p99": g99 - d99},
            "goal": "added p50 <= 0.5 ms, p99 <= 2 ms",
        }))
    }

    /// 1 GiB of Arrow batches, 3 runs each way, with the gateway's CPU and peak RSS.
    async fn stream_throughput(&self) -> anyhow::Result<Value> {
        println!("gateway: streaming 1 GiB of Arrow batches, 3 runs each way ...");
        let replicas = sco_e2e::gateway::replicas(&self.client).await?;
        let (cpu_before, _, _) = self.gateway_usage(&replicas);
        let bytes = (1u64 << 30).to_string();
        let direct = throughput(&self.measure(&[
            "stream",
            &self.direct,
            "-",
            &self.server_token,
            "-",
            &bytes,
            "3",
        ])?);
        let gateway = throughput(&self.measure(&[
            "stream",
            &self.through,
            &self.ca,
            &self.user,
            &self.shared_cluster,
            &bytes,
            "3",
        ])?);
        let (cpu_after, _, peak_rss) = self.gateway_usage(&replicas);
        let (ds, gs) = (report::median(&direct), report::median(&gateway));
        println!(
            "  direct {ds:.0} MB/s, through the gateway {gs:.0} MB/s ({:.0} % of direct); gateway peak RSS {peak_rss:.0} MB (all replicas)",
            gs / ds * 100.0
        );
        Ok(json!({
            "direct": direct, "gateway": gateway,
            "median_direct": ds, "median_gateway": gs, "percent_of_direct": gs / ds * 100.0,
            "gateway_cpu_seconds": cpu_after - cpu_before,
            "gateway_peak_rss_mb_all_replicas": peak_rss,
            "note": "direct is plaintext HTTP/2 to the server; the gateway path adds TLS to the client; client, gateway and server share the world's cores",
            "goal": ">= 90 % of direct",
        }))
    }

    /// Connect-to-first-answer of 10 new users of the Dedicated cluster (fake servers).
    fn dedicated_first_answer(&self) -> anyhow::Result<Value> {
        println!("gateway: connect-to-first-answer for 10 new users of a Dedicated cluster ...");
        let users = (0..10)
            .map(|i| token(&self.world, &self.ns, &format!("new-user-{i}")))
            .collect::<anyhow::Result<Vec<_>>>()?;
        let dedicated_cluster = format!("dedicated.{}", self.ns);
        let mut args = vec![
            "connect",
            self.through.as_str(),
            self.ca.as_str(),
            dedicated_cluster.as_str(),
        ];
        args.extend(users.iter().map(String::as_str));
        let connect_ms: Vec<f64> = ms_samples(&self.measure(&args)?)
            .iter()
            .map(|d| d.as_secs_f64() * 1e3)
            .collect();
        let spread = Spread::of(&connect_ms);
        println!(
            "  new user to first answer: median {:.0} ms (min {:.0}, max {:.0})",
            spread.median, spread.min, spread.max
        );
        Ok(
            json!({"servers": "fake", "rounds": connect_ms.len(), "spread": spread, "goal": "< 1000 ms"}),
        )
    }

    /// New users of a Dedicated cluster of real Spark servers: connect and first query.
    async fn dedicated_first_result_on_spark(&self, pool: RealPool) -> anyhow::Result<Value> {
        println!(
            "gateway: new users of a Dedicated cluster of real Spark servers ({}), connect to first result ...",
            pool.what
        );
        let spark =
            spark_first_results(&self.client, &self.ns, &self.world, &self.ca_path, pool).await?;
        let first: Vec<f64> = spark.iter().map(|(c, f)| c + f).collect();
        let spread = Spread::of(&first);
        println!(
            "  {} new users: connect + first query median {:.0} ms (min {:.0}, max {:.0})",
            spark.len(),
            spread.median,
            spread.min,
            spread.max
        );
        Ok(json!({
            "pool": pool.what,
            "rounds": spark.len(),
            "connect_plus_first_query": spread,
            "connect_ms": spark.iter().map(|(c, _)| *c).collect::<Vec<_>>(),
            "first_query_ms": spark.iter().map(|(_, f)| *f).collect::<Vec<_>>(),
            "query": "range(0, 100000, 1, 4) grouped by id % 7, collected (a shuffle on the server's executor)",
            "goal": "< 1000 ms",
        }))
    }

    /// The gateway's RSS and CPU while 1,000 client connections stay open and idle for 30 s.
    async fn idle_connections(&self) -> anyhow::Result<Value> {
        println!("gateway: 1,000 idle client connections ...");
        let replicas = sco_e2e::gateway::replicas(&self.client).await?;
        let (cpu_before, rss_before, _) = self.gateway_usage(&replicas);
        let python = python()?;
        let mut idle = tokio::process::Command::new(&self.world_bin)
            .arg("--state")
            .arg(&self.world)
            .args([
                "exec",
                "--",
                &python,
                "-c",
                CLIENT,
                "idle",
                &self.through,
                &self.ca,
                &self.user,
                &self.shared_cluster,
                "1000",
            ])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::null())
            .kill_on_drop(true)
            .spawn()?;
        let stdout = idle.stdout.take().context("stdout")?;
        let opened = tokio::time::timeout(
            Duration::from_secs(300),
            BufReader::new(stdout).lines().next_line(),
        )
        .await
        .context("opening 1,000 connections timed out")??
        .unwrap_or_default();
        let (cpu_open, rss_open, _) = self.gateway_usage(&replicas);
        tokio::time::sleep(Duration::from_secs(30)).await;
        let (cpu_idle, rss_idle, _) = self.gateway_usage(&replicas);
        drop(idle.stdin.take());
        let _ = idle.wait().await;
        println!(
            "  {opened}; gateway RSS {rss_before:.1} MB before, {rss_idle:.1} MB with 1,000 idle connections (all replicas); CPU {:.2} s to open them, {:.3} s over 30 s idle",
            cpu_open - cpu_before,
            cpu_idle - cpu_open
        );
        Ok(json!({
            "connections": 1000, "replicas": replicas.len(),
            "rss_mb_before": rss_before, "rss_mb_open": rss_open, "rss_mb_after_30s": rss_idle,
            "cpu_seconds_to_open": cpu_open - cpu_before, "cpu_seconds_idle_30s": cpu_idle - cpu_open,
        }))
    }
}

/// The shared cluster's server address and its token.
async fn shared_server(client: &Client, ns: &str) -> anyhow::Result<(String, String)> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let server = pods
        .list(
            &ListParams::default()
                .labels("sparkconnect.dev/cluster=shared,sparkconnect.dev/state=shared"),
        )
        .await?
        .items
        .into_iter()
        .find_map(|p| p.status?.pod_ip)
        .context("the shared server's address")?;
    let secrets: Api<Secret> = Api::namespaced(client.clone(), ns);
    let token = secrets
        .get("shared-connect-token")
        .await?
        .data
        .and_then(|d| {
            d.get("token")
                .map(|t| String::from_utf8_lossy(&t.0).into_owned())
        })
        .context("the shared cluster's token")?;
    Ok((server, token))
}

/// New users (one after another) of each pool of real Spark servers.
const SPARK_USERS: i32 = 3;

/// A pool of real Spark servers for new Dedicated users.
#[derive(Clone, Copy)]
struct RealPool {
    /// The cluster's name.
    name: &'static str,
    /// What it shows, for the report.
    what: &'static str,
    /// `hotPool.maxServers`.
    max_servers: i32,
}

impl RealPool {
    /// Refills as users take servers: on a small machine the replacements' JVM starts share the
    /// cores with the users' first queries.
    const REFILLING: Self = Self {
        name: "spark",
        what: "refilling as users take servers",
        max_servers: SPARK_USERS * 2,
    };
    /// At its server cap: no replacement starts beside the users' first queries.
    const AT_CAP: Self = Self {
        name: "spark-at-cap",
        what: "at its server cap, no replacement starting",
        max_servers: SPARK_USERS,
    };
}

/// New users of a Dedicated cluster of real (warmed-up) Spark servers, each from a Python
/// process with pyspark imported: (connect ms, first query ms) per user. The cluster is removed
/// after, so the next pool starts on quiet cores.
async fn spark_first_results(
    client: &Client,
    ns: &str,
    world: &Path,
    ca: &Path,
    pool: RealPool,
) -> anyhow::Result<Vec<(f64, f64)>> {
    let users = SPARK_USERS;
    let spec = json!({
        "image": "apache/spark:4.3.0-scala2.13-java17-python3-ubuntu",
        "shared": 0,
        "hotPool": {"idle": users, "max": users, "maxServers": pool.max_servers},
        "auth": {"mode": "Token"},
        "executors": {"dynamicAllocation": {"enabled": true, "minExecutors": 0, "maxExecutors": 1}},
        "probe": {"period": "5s", "timeout": "3s"},
        "gateway": {"mode": "Dedicated", "idleTimeout": "10m", "maxDedicatedServers": users},
    });
    cluster_within(client, ns, pool.name, spec, Duration::from_secs(600), |s| {
        s.servers.idle >= users
    })
    .await?;
    let mut python = SparkClient::start(world, Some(ca)).await?;
    let mut results = Vec::new();
    for i in 0..users {
        let token = token(world, ns, &format!("{}-user-{i}", pool.name))?;
        let endpoint = format!(
            "sc://{}:443/;token={token};cluster={}.{ns}",
            sco_e2e::gateway::HOST,
            pool.name
        );
        let timings = python.query(&endpoint).await?;
        results.push((timings.connect_ms, timings.first_ms));
    }
    drop(python);
    remove_cluster(client, ns, pool.name).await?;
    Ok(results)
}

/// Deletes cluster `name` and waits until its servers are gone.
async fn remove_cluster(client: &Client, ns: &str, name: &str) -> anyhow::Result<()> {
    let clusters: Api<SparkConnectCluster> = Api::namespaced(client.clone(), ns);
    clusters.delete(name, &DeleteParams::default()).await?;
    let pods: Api<Pod> = Api::namespaced(client.clone(), ns);
    let servers = ListParams::default().labels(&format!("sparkconnect.dev/cluster={name}"));
    sco_e2e::poll::until(
        "the cluster's servers gone",
        Duration::from_secs(300),
        Duration::from_millis(500),
        || async { pods.list(&servers).await.is_ok_and(|l| l.items.is_empty()) },
    )
    .await?;
    Ok(())
}

fn client_line(world_bin: &Path, state: &Path, args: &[&str]) -> anyhow::Result<Value> {
    client(world_bin, state, args)?
        .into_iter()
        .next()
        .context("no answer from the client")
}
