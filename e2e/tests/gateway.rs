//! The gateway in the world, reached by unmodified pyspark clients over TLS: two teams' users
//! (a ServiceAccount token through TokenReview, and a JWT signed by a key this test makes)
//! land on their own clusters; RBAC denies and then allows without a restart; refusals say
//! why; a dedicated server is claimed per user, kept across sessions, limited by the cluster's
//! quota and released when idle; servers see the authenticated user whatever the client
//! claims; every call is audited. The servers are the project's fake Connect servers, which
//! answer the Config key `sco.fake.userId` with the user they were sent.

mod support;

use std::path::{Path, PathBuf};
use std::time::Duration;

use kube::api::{Api, ListParams};
use sco_e2e::gateway::{AUDIENCE, HOST as GATEWAY_HOST, Pki};
use serde_json::{Value, json};
use spark_connect_operator::crd::{SparkConnectClaim, SparkConnectCluster};
use support::{World, create_pool, create_serving, fake_spec, wait_until};

/// Connects once per line of input (an `sc://` URL) and answers with what the server saw as
/// the user, or the error.
const CLIENT: &str = r#"
import json, sys
from pyspark.sql import SparkSession
for url in sys.argv[1:]:
    try:
        s = SparkSession.builder.remote(url).create()
        print(json.dumps({"user": s.conf.get("sco.fake.userId")}), flush=True)
        s.stop()
    except Exception as e:
        print(json.dumps({"error": str(e)[:600]}), flush=True)
"#;

/// Guesses tokens over one gRPC channel: `N` Config calls, each with a token of its own; prints
/// the status codes it got.
const GUESSER: &str = r#"
import json, sys, grpc
from pyspark.sql.connect.proto import base_pb2, base_pb2_grpc
target, n = sys.argv[1], int(sys.argv[2])
stub = base_pb2_grpc.SparkConnectServiceStub(grpc.secure_channel(target, grpc.ssl_channel_credentials()))
codes = []
for i in range(n):
    try:
        stub.Config(base_pb2.ConfigRequest(session_id="s", operation=base_pb2.ConfigRequest.Operation(
            get=base_pb2.ConfigRequest.Get(keys=["k"]))), metadata=[("authorization", "Bearer guess-%d" % i)], timeout=30)
        codes.append("OK")
    except grpc.RpcError as e:
        codes.append(e.code().name)
print(json.dumps({"codes": codes}), flush=True)
"#;

/// The status codes of `n` calls with guessed tokens over one channel.
fn guess_tokens(world: &World, ca: &Path, n: usize) -> Vec<String> {
    let python = std::env::var("SCO_PYTHON").expect("SCO_PYTHON (set by e2e/run-e2e.sh)");
    let ca_env = format!("GRPC_DEFAULT_SSL_ROOTS_FILE_PATH={}", ca.display());
    let target = format!("{GATEWAY_HOST}:443");
    let out = world.exec(&[
        "env",
        &ca_env,
        &python,
        "-c",
        GUESSER,
        &target,
        &n.to_string(),
    ]);
    let answer: Value = String::from_utf8_lossy(&out.stdout)
        .lines()
        .find_map(|l| serde_json::from_str(l).ok())
        .unwrap_or_else(|| {
            panic!(
                "the guesser's answer; stderr: {}",
                String::from_utf8_lossy(&out.stderr)
            )
        });
    serde_json::from_value(answer["codes"].clone()).expect("a list of codes")
}

/// Connections the gateway replicas closed for calls not allowed, summed.
async fn connections_closed_for_guessing(world: &World) -> f64 {
    let replicas = sco_e2e::gateway::replicas(&world.client)
        .await
        .expect("gateway pods");
    replicas
        .iter()
        .map(|(_, ip)| {
            let text = sco_e2e::gateway::metrics(&World::world_bin(), &world.state, ip);
            sco_e2e::operator::metric_sum(
                &text,
                "spark_connect_gateway_connections_closed_total",
                "calls_not_allowed",
            )
        })
        .sum()
}

fn jwt(key: &[u8], subject: &str, team: &str, audience: &str, expires_in: i64) -> String {
    sco_e2e::gateway::sign_jwt(key, subject, team, audience, expires_in).expect("a signed JWT")
}

/// What a client saw.
#[derive(Debug)]
enum Seen {
    User(String),
    Error(String),
}

fn run_client(world: &World, ca: &Path, urls: &[String]) -> Vec<Seen> {
    let python = std::env::var("SCO_PYTHON").expect("SCO_PYTHON (set by e2e/run-e2e.sh)");
    let ca_env = format!("GRPC_DEFAULT_SSL_ROOTS_FILE_PATH={}", ca.display());
    let mut command = vec!["env", &ca_env, &python, "-c", CLIENT];
    command.extend(urls.iter().map(String::as_str));
    let out = world.exec(&command);
    let stdout = String::from_utf8_lossy(&out.stdout);
    let seen: Vec<Seen> = stdout
        .lines()
        .filter_map(|l| serde_json::from_str::<Value>(l).ok())
        .map(|v| match v.get("user").and_then(Value::as_str) {
            Some(user) => Seen::User(user.into()),
            None => Seen::Error(v.get("error").and_then(Value::as_str).unwrap_or("?").into()),
        })
        .collect();
    assert_eq!(
        seen.len(),
        urls.len(),
        "one answer per URL; stderr: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    seen
}

fn url(token: &str, cluster: Option<&str>, extra: &str) -> String {
    let cluster = cluster.map(|c| format!(";cluster={c}")).unwrap_or_default();
    format!("sc://{GATEWAY_HOST}:443/;token={token}{cluster}{extra}")
}

fn expect_user(seen: &Seen, user: &str) {
    match seen {
        Seen::User(u) => assert_eq!(u, user),
        Seen::Error(e) => panic!("expected to be seen as {user}, got an error: {e}"),
    }
}

fn expect_error(seen: &Seen, code: &str, words: &[&str]) {
    match seen {
        Seen::Error(e) => {
            assert!(e.contains(code), "expected {code} in: {e}");
            for w in words {
                assert!(e.contains(w), "expected {w:?} in: {e}");
            }
        }
        Seen::User(u) => panic!("expected {code}, but connected as {u}"),
    }
}

fn service_account_token(world: &World, namespace: &str, name: &str, audience: &str) -> String {
    let _ = world.kubectl(&["-n", namespace, "create", "serviceaccount", name], None);
    let out = world.kubectl(
        &[
            "-n",
            namespace,
            "create",
            "token",
            name,
            "--audience",
            audience,
            "--duration",
            "1h",
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8_lossy(&out.stdout).trim().to_string()
}

fn bind(world: &World, namespace: &str, name: &str, subject: &str) {
    let out = world.kubectl(
        &[
            "-n",
            namespace,
            "create",
            "rolebinding",
            name,
            "--clusterrole",
            "sparkconnect-user",
            subject,
        ],
        None,
    );
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// Audit lines of every gateway replica.
async fn audit_lines(world: &World) -> Vec<Value> {
    let prefix = format!(
        "{}_sco-spark-connect-operator-gateway-",
        World::operator_namespace()
    );
    let mut lines = Vec::new();
    let dirs = std::fs::read_dir(world.state.join("pods")).expect("pod logs");
    for dir in dirs.filter_map(Result::ok) {
        if !dir.file_name().to_string_lossy().starts_with(&prefix) {
            continue;
        }
        let text = std::fs::read_to_string(dir.path().join("log")).unwrap_or_default();
        lines.extend(
            text.lines()
                .filter_map(|l| l.find("{\"audit\"").map(|i| &l[i..]))
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter_map(|v| v.get("audit").cloned()),
        );
    }
    lines
}

/// The gateway's Secrets from a fresh CA and JWT key: (the CA file, the JWT signing key).
async fn prepare(world: &World) -> (PathBuf, Vec<u8>) {
    let Pki { ca, jwt_key } = sco_e2e::gateway::prepare(&world.client, &world.state)
        .await
        .expect("the gateway's Secrets");
    (ca, jwt_key)
}

/// Calls `urls` at once, each from a client process of its own (so over connections of their
/// own, which the gateway Service spreads over both replicas).
fn calls_at_once(world: &World, ca: &Path, urls: &[String]) -> Vec<Seen> {
    std::thread::scope(|scope| {
        let clients: Vec<_> = urls
            .iter()
            .map(|url| scope.spawn(move || run_client(world, ca, std::slice::from_ref(url))))
            .collect();
        clients
            .into_iter()
            .flat_map(|c| c.join().expect("a client thread"))
            .collect()
    })
}

/// Asserts that `served` of the calls got a server and that every other call was refused by
/// the quota `quota`; returns the refusals.
fn served_within_quota(seen: &[Seen], served: usize, quota: &str) -> usize {
    let got = seen.iter().filter(|s| matches!(s, Seen::User(_))).count();
    assert_eq!(got, served, "{served} served under {quota}: {seen:?}");
    for refused in seen.iter().filter(|s| matches!(s, Seen::Error(_))) {
        expect_error(refused, "RESOURCE_EXHAUSTED", &[quota]);
    }
    seen.len() - got
}

/// New users of a Dedicated cluster whose quota is 1 connect all at once, through both
/// replicas: exactly one gets a server; the others are refused by the quota, whether their
/// replica saw the winner's claim in time or the operator refused theirs. Returns the
/// refusals.
fn a_burst_of_new_users_gets_one_server(
    world: &World,
    ca: &Path,
    jwt_key: &[u8],
    namespace: &str,
) -> usize {
    let users: Vec<String> = (0..4).map(|i| format!("burst{i}")).collect();
    for user in &users {
        bind(
            world,
            namespace,
            &format!("{user}-connects"),
            &format!("--user=oidc:{user}"),
        );
    }
    let urls: Vec<String> = users
        .iter()
        .map(|user| {
            url(
                &jwt(jwt_key, user, namespace, AUDIENCE, 600),
                Some("science"),
                "",
            )
        })
        .collect();
    let seen = calls_at_once(world, ca, &urls);
    served_within_quota(&seen, 1, "gateway.maxDedicatedServers = 1")
}

/// The claims the gateway made in the namespace of `claims` (`None` when listing failed).
async fn gateway_claims(claims: &Api<SparkConnectClaim>) -> Option<Vec<SparkConnectClaim>> {
    claims
        .list(&ListParams::default().labels("sparkconnect.dev/gateway-user"))
        .await
        .ok()
        .map(|l| l.items)
}

/// One new user calls three Dedicated clusters at once, through both replicas, under the
/// chart's per-user quota of 2: two calls get a server and the third is refused by that quota,
/// however the calls fall on the replicas (a replica checks the quota again once its watch
/// shows the claim it made, against the user's claims created before it). Afterwards the user
/// holds exactly two claims. Returns the refusals.
async fn one_user_on_three_clusters_at_once_gets_two_servers(
    world: &World,
    ca: &Path,
    jwt_key: &[u8],
    namespace: &str,
    clusters: &[&str],
) -> usize {
    bind(world, namespace, "wide-connects", "--user=oidc:wide");
    let token = jwt(jwt_key, "wide", namespace, AUDIENCE, 600);
    let urls: Vec<String> = clusters
        .iter()
        .map(|cluster| url(&token, Some(cluster), ""))
        .collect();
    let seen = calls_at_once(world, ca, &urls);
    let refused = served_within_quota(&seen, 2, "maxDedicatedServersPerUser = 2");
    let claims: Api<SparkConnectClaim> = Api::namespaced(world.client.clone(), namespace);
    wait_until(
        Duration::from_secs(30),
        "the user to hold exactly two claims",
        || async {
            gateway_claims(&claims).await.is_some_and(|claims| {
                claims
                    .iter()
                    .filter(|c| {
                        c.metadata
                            .annotations
                            .as_ref()
                            .and_then(|a| a.get("sparkconnect.dev/gateway-user"))
                            .is_some_and(|u| u == "oidc:wide")
                    })
                    .count()
                    == 2
            })
        },
    )
    .await;
    refused
}

#[tokio::test]
async fn users_of_two_teams_reach_their_clusters_through_the_gateway_under_rbac_quotas_and_audit() {
    let world = World::connect().await;
    let (ca, jwt_key) = prepare(&world).await;

    // Team analytics: shared servers, token auth on the servers. Team science: dedicated
    // servers from a pool of two, at most one held through the gateway at once.
    let analytics = world.namespace("gw-analytics").await;
    let science = world.namespace("gw-science").await;
    let mut shared = fake_spec(0, 4, 10);
    shared["shared"] = json!(1);
    shared["auth"] = json!({"mode": "Token"});
    let mut dedicated = fake_spec(2, 4, 10);
    dedicated["auth"] = json!({"mode": "Token"});
    dedicated["gateway"] =
        json!({"mode": "Dedicated", "idleTimeout": "10s", "maxDedicatedServers": 1});
    let a_clusters: Api<SparkConnectCluster> =
        Api::namespaced(world.client.clone(), &analytics.name);
    let s_clusters: Api<SparkConnectCluster> = Api::namespaced(world.client.clone(), &science.name);
    let a_create = create_serving(&a_clusters, "analytics", shared, Duration::from_secs(120));
    let s_create = create_pool(
        &s_clusters,
        "science",
        dedicated,
        2,
        Duration::from_secs(120),
    );
    // Three more Dedicated clusters of team science, for one user calling them all at once.
    let labs = ["lab-a", "lab-b", "lab-c"];
    let mut lab = fake_spec(1, 2, 10);
    lab["auth"] = json!({"mode": "Token"});
    lab["gateway"] = json!({"mode": "Dedicated", "idleTimeout": "10s", "maxDedicatedServers": 5});
    let l_create = futures::future::join_all(
        labs.iter()
            .map(|name| create_pool(&s_clusters, name, lab.clone(), 1, Duration::from_secs(120))),
    );
    tokio::join!(a_create, s_create, l_create);

    let alice = service_account_token(&world, &analytics.name, "alice", AUDIENCE);
    let alice_elsewhere =
        service_account_token(&world, &analytics.name, "alice", "some-other-audience");
    let carol = service_account_token(&world, &science.name, "carol", AUDIENCE);
    bind(
        &world,
        &analytics.name,
        "alice-connects",
        "--serviceaccount=gw-analytics:alice",
    );
    bind(&world, &science.name, "bob-connects", "--user=oidc:bob");
    // RBAC lets eve in; the external policy (OPA behind ext_authz) does not.
    let eve = service_account_token(&world, &analytics.name, "eve", AUDIENCE);
    bind(
        &world,
        &analytics.name,
        "eve-connects",
        "--serviceaccount=gw-analytics:eve",
    );
    let bob = jwt(&jwt_key, "bob", &science.name, AUDIENCE, 600);

    // The gateway serves once it has loaded the certificate and keys from their Secrets.
    wait_until(
        Duration::from_secs(60),
        "the gateway to serve alice",
        || async {
            matches!(
                run_client(
                    &world,
                    &ca,
                    &[url(&alice, Some("analytics.gw-analytics"), "")]
                )[0],
                Seen::User(_)
            )
        },
    )
    .await;

    // Each user lands on their own team's cluster and is seen as themselves, whatever user_id
    // the client claims; bob names only the cluster, his team claim gives the namespace.
    let seen = run_client(
        &world,
        &ca,
        &[
            url(&alice, Some("analytics.gw-analytics"), ";user_id=mallory"),
            url(&bob, Some("science"), ";user_id=root"),
            url(&bob, Some("science"), ""),
        ],
    );
    expect_user(&seen[0], "system:serviceaccount:gw-analytics:alice");
    expect_user(&seen[1], "oidc:bob");
    expect_user(&seen[2], "oidc:bob");
    let claims: Api<SparkConnectClaim> = Api::namespaced(world.client.clone(), &science.name);
    let held = gateway_claims(&claims).await.expect("claims");
    assert_eq!(held.len(), 1, "bob's two sessions share one claim");
    let bob_claim = &held[0];
    assert_eq!(bob_claim.spec.user.as_deref(), Some("oidc:bob"));
    let bob_server = bob_claim
        .status
        .as_ref()
        .and_then(|s| s.server.clone())
        .expect("bound");

    // Refusals say why.
    let expired = jwt(&jwt_key, "bob", &science.name, AUDIENCE, -3600);
    let wrong_audience = jwt(&jwt_key, "bob", &science.name, "somebody-else", 600);
    let seen = run_client(
        &world,
        &ca,
        &[
            url(&expired, Some("science"), ""),
            url(&wrong_audience, Some("science"), ""),
            format!("sc://{GATEWAY_HOST}:443/;use_ssl=true;cluster=science"),
            url(&alice_elsewhere, Some("analytics.gw-analytics"), ""),
            url(&carol, Some("science.gw-science"), ""),
            url(&alice, Some("science.gw-science"), ""),
            url(&eve, Some("analytics.gw-analytics"), ""),
        ],
    );
    expect_error(&seen[0], "UNAUTHENTICATED", &["expired"]);
    expect_error(
        &seen[1],
        "UNAUTHENTICATED",
        &["wrong audience", "somebody-else"],
    );
    expect_error(&seen[2], "UNAUTHENTICATED", &["no credential"]);
    expect_error(&seen[3], "UNAUTHENTICATED", &["wrong audience"]);
    expect_error(
        &seen[4],
        "PERMISSION_DENIED",
        &["gw-science/science", "connect"],
    );
    expect_error(
        &seen[5],
        "PERMISSION_DENIED",
        &["system:serviceaccount:gw-analytics:alice"],
    );
    expect_error(
        &seen[6],
        "PERMISSION_DENIED",
        &["eve may not use Spark this week", "external policy"],
    );

    // A RoleBinding lets carol in without a gateway restart; bob holds the cluster's only
    // dedicated server, so she is refused by the quota, until bob's server is released as idle.
    bind(
        &world,
        &science.name,
        "carol-connects",
        "--serviceaccount=gw-science:carol",
    );
    let mut last = String::new();
    wait_until(Duration::from_secs(30), "carol to pass RBAC", || {
        let seen = run_client(&world, &ca, &[url(&carol, Some("science.gw-science"), "")]);
        last = format!("{seen:?}");
        async move { !matches!(&seen[0], Seen::Error(e) if e.contains("PERMISSION_DENIED")) }
    })
    .await;
    assert!(
        last.contains("RESOURCE_EXHAUSTED") && last.contains("gateway.maxDedicatedServers = 1"),
        "carol is refused by the quota while bob holds the server: {last}"
    );
    wait_until(
        Duration::from_secs(60),
        "bob's idle claim to be released",
        || async {
            claims
                .get_opt(&bob_claim.metadata.name.clone().unwrap_or_default())
                .await
                .ok()
                .flatten()
                .is_none()
        },
    )
    .await;
    let seen = run_client(&world, &ca, &[url(&carol, Some("science.gw-science"), "")]);
    expect_user(&seen[0], "system:serviceaccount:gw-science:carol");
    let held = gateway_claims(&claims).await.expect("claims");
    assert_eq!(held.len(), 1);
    let carol_server = held[0]
        .status
        .as_ref()
        .and_then(|s| s.server.clone())
        .expect("bound");
    assert_ne!(carol_server, bob_server, "another user gets another server");
    sco_e2e::cluster_status_until(
        &s_clusters,
        "science",
        "the pool to refill",
        Duration::from_secs(60),
        |s| s.servers.idle == 2,
    )
    .await
    .expect("the pool refills");

    // Every call is audited: allowed, denied, refused and unauthenticated, with their fields.
    let lines = audit_lines(&world).await;
    let find = |outcome: &str, user: &str| {
        lines
            .iter()
            .find(|l| {
                l["outcome"] == outcome && l["user"].as_str().is_some_and(|u| u.contains(user))
            })
            .cloned()
            .unwrap_or_else(|| {
                panic!(
                    "no audit line with outcome {outcome} for {user} among {} lines",
                    lines.len()
                )
            })
    };
    let ok = find("ok", "gw-analytics:alice");
    assert_eq!(ok["cluster"], "gw-analytics/analytics");
    assert!(
        ok["server"]
            .as_str()
            .is_some_and(|s| s.starts_with("analytics-"))
    );
    assert!(ok["session_id"].as_str().is_some_and(|s| !s.is_empty()));
    assert!(ok["rpc"].is_string() && ok["grpc_status"] == 0 && ok["duration_ms"].is_number());
    assert!(ok["bytes_in"].as_u64() > Some(0) && ok["bytes_out"].as_u64() > Some(0));
    let denied = find("denied", "gw-analytics:alice");
    assert_eq!(denied["grpc_status"], 7);
    let refused = find("refused", "gw-science:carol");
    assert_eq!(refused["grpc_status"], 8);
    assert!(
        lines
            .iter()
            .any(|l| l["outcome"] == "unauthenticated" && l["grpc_status"] == 16)
    );
    println!(
        "gateway: {} audit lines; bob on {bob_server}, carol on {carol_server} after bob's release",
        lines.len()
    );

    // Once carol's server is released, four new users at once get one server between them.
    wait_until(
        Duration::from_secs(60),
        "carol's idle claim to be released",
        || async { gateway_claims(&claims).await.is_some_and(|c| c.is_empty()) },
    )
    .await;
    let refused = a_burst_of_new_users_gets_one_server(&world, &ca, &jwt_key, &science.name);
    println!("gateway: 4 new users at once under a quota of 1: 1 served, {refused} refused");
    let refused = one_user_on_three_clusters_at_once_gets_two_servers(
        &world,
        &ca,
        &jwt_key,
        &science.name,
        &labs,
    )
    .await;
    println!(
        "gateway: one user on 3 clusters at once under a per-user quota of 2: 2 served, {refused} refused"
    );

    // A client guessing tokens is refused each time, and its connection is closed after
    // every 16 guesses (it reconnects: each reconnection is a new TLS handshake).
    let closed_before = connections_closed_for_guessing(&world).await;
    let guesses = 40;
    let codes = guess_tokens(&world, &ca, guesses);
    assert_eq!(
        codes,
        vec!["UNAUTHENTICATED"; guesses],
        "every guess is refused"
    );
    let closed = connections_closed_for_guessing(&world).await - closed_before;
    assert!(
        closed >= 2.0,
        "{guesses} failed authentications on one channel closed {closed} connections"
    );
    println!("gateway: {guesses} guessed tokens refused; {closed} connections closed for it");
}

/// Runs a query and an artifact upload through the gateway with real Spark, then two long
/// queries: during the first the gateway replica carrying it is killed (pyspark reattaches
/// through the Service to the other replica, which routes the same session to the same server,
/// and the query completes); during the second the carrying replica is deleted the ordinary way
/// and drains (the query finishes on it).
const SPARK_CLIENT: &str = r#"
import json, sys, time
from pyspark.sql import SparkSession, functions as F
s = SparkSession.builder.remote(sys.argv[1]).create()
groups = s.range(0, 100000, 1, 4).groupBy((F.col("id") % 7).alias("k")).count().orderBy("k").collect()
import os, tempfile
helper = os.path.join(tempfile.mkdtemp(), "sco_gateway_helper.py")
with open(helper, "w") as f:
    f.write("def triple(x):\n    return 3 * x\n")
s.addArtifacts(helper, pyfile=True)
print(json.dumps({"groups": [[r["k"], r["count"]] for r in groups], "artifact": "added"}), flush=True)
for round in (1, 2):
    print(json.dumps({"long": "started", "round": round}), flush=True)
    t = time.perf_counter()
    n = s.sql("SELECT count(*) AS n%d FROM range(0, 25, 1, 1) WHERE reflect('java.lang.Thread', 'sleep', cast(1000 as bigint)) IS NOT NULL" % round).collect()[0][0]
    print(json.dumps({"long": n, "seconds": time.perf_counter() - t}), flush=True)
"#;

/// Gateway replicas (name, pod IP) with a call in flight, by their metrics.
fn gateway_pods_with_calls(world: &World, pods: &[(String, String)]) -> Vec<String> {
    pods.iter()
        .filter(|(_, ip)| {
            let text = sco_e2e::gateway::metrics(&World::world_bin(), &world.state, ip);
            sco_e2e::operator::metric_sum(&text, "spark_connect_gateway_active_streams", "") >= 1.0
        })
        .map(|(name, _)| name.clone())
        .collect()
}

/// Whether the Spark server at `ip` runs a job now (its REST API's running jobs).
fn spark_job_running(world: &World, ip: &str) -> bool {
    let get = |path: &str| -> Value {
        let out = world.exec(&["curl", "-s", &format!("http://{ip}:4040/api/v1/{path}")]);
        serde_json::from_slice(&out.stdout).unwrap_or(Value::Null)
    };
    let apps = get("applications");
    let Some(app) = apps[0]["id"].as_str() else {
        return false;
    };
    get(&format!("applications/{app}/jobs?status=running"))
        .as_array()
        .is_some_and(|jobs| !jobs.is_empty())
}

/// The gateway replica carrying the call in flight, once the query runs on the Spark server at
/// `server_ip` (so the server holds the operation a reattach resumes).
async fn carrying_replica(world: &World, server_ip: &str) -> String {
    let pods = sco_e2e::gateway::replicas(&world.client)
        .await
        .expect("gateway pods");
    assert!(pods.len() >= 2, "two gateway replicas");
    let mut carrying = Vec::new();
    wait_until(
        Duration::from_secs(20),
        "the long query to run on the server through a gateway replica",
        || {
            carrying = gateway_pods_with_calls(world, &pods);
            let found = !carrying.is_empty() && spark_job_running(world, server_ip);
            async move { found }
        },
    )
    .await;
    carrying[0].clone()
}

#[tokio::test]
async fn a_real_spark_query_streams_through_the_gateway_and_survives_the_loss_of_a_replica() {
    let world = World::connect().await;
    let (ca, _) = prepare(&world).await;
    let ns = world.namespace("gw-spark").await;
    let clusters: Api<SparkConnectCluster> = Api::namespaced(world.client.clone(), &ns.name);
    let spec = json!({
        "image": "apache/spark:4.3.0-scala2.13-java17-python3-ubuntu",
        "shared": 1,
        "hotPool": {"idle": 0},
        "auth": {"mode": "Token"},
        "executors": {"dynamicAllocation": {"enabled": true, "minExecutors": 0, "maxExecutors": 1}},
        "probe": {"period": "5s", "timeout": "3s"}
    });
    create_serving(&clusters, "lake", spec, Duration::from_secs(300)).await;
    let dana = service_account_token(&world, &ns.name, "dana", AUDIENCE);
    bind(
        &world,
        &ns.name,
        "dana-connects",
        "--serviceaccount=gw-spark:dana",
    );

    let python = std::env::var("SCO_PYTHON").expect("SCO_PYTHON (set by e2e/run-e2e.sh)");
    let ca_env = format!("GRPC_DEFAULT_SSL_ROOTS_FILE_PATH={}", ca.display());
    let endpoint = url(&dana, Some("lake.gw-spark"), ";user_id=mallory");
    let mut client = tokio::process::Command::new(World::world_bin())
        .arg("--state")
        .arg(&world.state)
        .args([
            "exec",
            "--",
            "env",
            &ca_env,
            &python,
            "-c",
            SPARK_CLIENT,
            &endpoint,
        ])
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .expect("the pyspark client");
    let stdout = client.stdout.take().expect("stdout");
    let mut lines = tokio::io::AsyncBufReadExt::lines(tokio::io::BufReader::new(stdout));
    let mut next = async || -> Value {
        let line = tokio::time::timeout(Duration::from_secs(180), lines.next_line())
            .await
            .expect("the client answers in time")
            .expect("reading the client")
            .unwrap_or_default();
        serde_json::from_str(&line).unwrap_or_else(|_| json!({"unreadable": line}))
    };

    let first = next().await;
    let groups = first["groups"]
        .as_array()
        .cloned()
        .unwrap_or_else(|| panic!("no result: {first}"));
    assert_eq!(groups.len(), 7, "{first}");
    let total: i64 = groups.iter().map(|g| g[1].as_i64().unwrap_or(0)).sum();
    assert_eq!(total, 100_000, "the rows came through the proxy whole");
    assert_eq!(
        first["artifact"], "added",
        "an AddArtifacts client stream went through"
    );
    // Spark's own record of the session (the Connect tab of its UI) names the authenticated
    // user, never the user_id the client claimed.
    let servers: Api<k8s_openapi::api::core::v1::Pod> =
        Api::namespaced(world.client.clone(), &ns.name);
    let server_ips: Vec<String> = servers
        .list(
            &ListParams::default()
                .labels("sparkconnect.dev/cluster=lake,sparkconnect.dev/state=shared"),
        )
        .await
        .expect("the shared server")
        .items
        .into_iter()
        .filter_map(|p| p.status?.pod_ip)
        .collect();
    let server_ip = server_ips.first().expect("the shared server's address");
    let ui: String = server_ips
        .iter()
        .map(|ip| {
            let out = world.exec(&["curl", "-s", &format!("http://{ip}:4040/connect/")]);
            String::from_utf8_lossy(&out.stdout).into_owned()
        })
        .collect();
    assert!(
        ui.contains("system:serviceaccount:gw-spark:dana"),
        "Spark's Connect sessions name the authenticated user"
    );
    assert!(
        !ui.contains("mallory"),
        "the claimed user_id never reaches Spark"
    );

    assert_eq!(next().await["long"], "started");
    let victim = &carrying_replica(&world, server_ip).await;
    let pid =
        sco_e2e::pod_pid(&world.state, &World::operator_namespace(), victim).expect("its pid");
    assert!(
        world.exec(&["kill", "-9", &pid]).status.success(),
        "killing {victim}"
    );
    let done = next().await;
    assert_eq!(
        done["long"], 25,
        "the long query completed after {victim} was killed: {done}"
    );

    // A replica deleted the ordinary way (SIGTERM) drains: the query it carries finishes on it.
    assert_eq!(next().await["long"], "started");
    let draining = carrying_replica(&world, server_ip).await;
    let gateway_pods: Api<k8s_openapi::api::core::v1::Pod> =
        Api::namespaced(world.client.clone(), &World::operator_namespace());
    gateway_pods
        .delete(&draining, &Default::default())
        .await
        .expect("deleting a gateway replica");
    let drained = next().await;
    let out = client.wait_with_output().await.expect("client exit");
    let stderr = String::from_utf8_lossy(&out.stderr);
    let tail: String = stderr.lines().rev().take(30).collect::<Vec<_>>().join("\n");
    assert_eq!(
        drained["long"], 25,
        "the query finished while {draining} drained: {drained}; client stderr (last lines, reversed):\n{tail}"
    );
    assert!(out.status.success(), "{stderr}");

    // The audit trail has the artifact upload, the query with its SQL and plan kind, and the
    // reattach that resumed it on the surviving replica.
    let lines = audit_lines(&world).await;
    let dana: Vec<&Value> = lines
        .iter()
        .filter(|l| l["user"] == "system:serviceaccount:gw-spark:dana")
        .collect();
    let has = |rpc: &str, check: &dyn Fn(&Value) -> bool| {
        dana.iter()
            .any(|l| l["rpc"] == rpc && l["outcome"] == "ok" && check(l))
    };
    assert!(
        has("AddArtifacts", &|l| l["bytes_in"].as_u64() > Some(0)),
        "AddArtifacts audited"
    );
    assert!(
        has("ExecutePlan", &|l| l["plan"] == "command:sql_command"
            && l["sql"].as_str().is_some_and(
                |q| q.contains("reflect('java.lang.Thread'")
            )),
        "the long query audited with its SQL"
    );
    assert!(
        has("ReattachExecute", &|l| l["operation_id"].is_string()),
        "the reattach audited"
    );
    assert!(
        has("ExecutePlan", &|l| l["gateway"] == draining.as_str()
            && l["sql"].as_str().is_some_and(|q| q.contains("AS n2"))),
        "the draining replica {draining} finished the second query and audited it"
    );
    println!(
        "gateway replica {victim} killed during a {:.1}s query: pyspark reattached and it completed; {draining} deleted during another: it drained and finished it ({:.1}s)",
        done["seconds"].as_f64().unwrap_or_default(),
        drained["seconds"].as_f64().unwrap_or_default()
    );
}
