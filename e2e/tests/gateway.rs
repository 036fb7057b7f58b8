//! The gateway in the world, reached by unmodified pyspark clients over TLS: two teams' users
//! (a ServiceAccount token through TokenReview, and a JWT signed by a key this test makes)
//! land on their own clusters; RBAC denies and then allows without a restart; refusals say
//! why; a dedicated server is claimed per user, kept across sessions, limited by the cluster's
//! quota and released when idle; servers see the authenticated user whatever the client
//! claims; every call is audited. The servers are the project's fake Connect servers, which
//! answer the Config key `sco.fake.userId` with the user they were sent.

mod support;

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Duration;

use base64::Engine;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::api::{Api, ListParams, PostParams};
use serde_json::{Value, json};
use spark_connect_operator::crd::{SparkConnectClaim, SparkConnectCluster};
use support::{World, create_pool, fake_spec, wait_until};

const GATEWAY_HOST: &str = "sco-spark-connect-operator-gateway.sco-system.svc.cluster.local";
const TLS_SECRET: &str = "sco-gateway-tls";
const JWKS_SECRET: &str = "sco-gateway-jwks";
const ISSUER: &str = "https://idp.sco.test";
const AUDIENCE: &str = "spark-connect-gateway";

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

fn openssl(dir: &Path, args: &[&str]) {
    let out = Command::new("openssl")
        .args(args)
        .current_dir(dir)
        .output()
        .expect("running openssl");
    assert!(
        out.status.success(),
        "openssl {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
}

/// A CA and the gateway's serving certificate, in `dir`.
fn make_certificates(dir: &Path) {
    std::fs::create_dir_all(dir).expect("pki dir");
    openssl(
        dir,
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            "ca.key",
        ],
    );
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            "ca.key",
            "-subj",
            "/CN=sco gateway test CA",
            "-days",
            "2",
            "-out",
            "ca.crt",
        ],
    );
    openssl(
        dir,
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            "tls.ec",
        ],
    );
    openssl(
        dir,
        &[
            "pkcs8", "-topk8", "-nocrypt", "-in", "tls.ec", "-out", "tls.key",
        ],
    );
    std::fs::write(
        dir.join("san.ext"),
        format!("subjectAltName=DNS:{GATEWAY_HOST},DNS:sco-spark-connect-operator-gateway.sco-system.svc\n"),
    )
    .expect("san");
    openssl(
        dir,
        &[
            "req",
            "-new",
            "-key",
            "tls.key",
            "-subj",
            "/CN=gateway",
            "-out",
            "tls.csr",
        ],
    );
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            "tls.csr",
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            "2",
            "-extfile",
            "san.ext",
            "-out",
            "tls.crt",
        ],
    );
}

/// An EC P-256 signing key: (PKCS#8 DER, JWKS with its public half).
fn make_jwt_key(dir: &Path) -> (Vec<u8>, Value) {
    openssl(
        dir,
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            "jwt.ec",
        ],
    );
    openssl(
        dir,
        &[
            "pkcs8", "-topk8", "-nocrypt", "-in", "jwt.ec", "-outform", "DER", "-out", "jwt.der",
        ],
    );
    openssl(
        dir,
        &[
            "ec",
            "-in",
            "jwt.ec",
            "-pubout",
            "-outform",
            "DER",
            "-out",
            "jwt.pub.der",
        ],
    );
    let public = std::fs::read(dir.join("jwt.pub.der")).expect("public key");
    // The SPKI ends with the uncompressed point 0x04 || x || y.
    let point = &public[public.len() - 65..];
    assert_eq!(point[0], 4, "an uncompressed EC point");
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let jwks = json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "test-1", "alg": "ES256", "use": "sig",
        "x": b64(&point[1..33]), "y": b64(&point[33..65])}]});
    (
        std::fs::read(dir.join("jwt.der")).expect("private key"),
        jwks,
    )
}

fn jwt(key: &[u8], subject: &str, team: &str, audience: &str, expires_in: i64) -> String {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some("test-1".into());
    let exp = jsonwebtoken::get_current_timestamp() as i64 + expires_in;
    let claims = json!({"iss": ISSUER, "aud": audience, "sub": subject, "team": team, "exp": exp,
        "groups": ["data-science"]});
    jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_ec_der(key),
    )
    .expect("a signed JWT")
}

async fn put_secret(world: &World, name: &str, type_: &str, data: Value) {
    let api: Api<Secret> = Api::namespaced(world.client.clone(), &World::operator_namespace());
    let _ = api.delete(name, &Default::default()).await;
    let secret: Secret = serde_json::from_value(json!({
        "metadata": {"name": name}, "type": type_, "stringData": data
    }))
    .expect("secret");
    wait_until(Duration::from_secs(20), "the old Secret to go", || async {
        api.get_opt(name).await.ok().flatten().is_none()
    })
    .await;
    api.create(&PostParams::default(), &secret)
        .await
        .expect("create secret");
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
    let pods: Api<Pod> = Api::namespaced(world.client.clone(), &World::operator_namespace());
    let list = pods
        .list(
            &ListParams::default().labels("app.kubernetes.io/name=spark-connect-operator-gateway"),
        )
        .await
        .expect("gateway pods");
    let mut lines = Vec::new();
    for pod in list {
        let name = pod.metadata.name.unwrap_or_default();
        let log: PathBuf = world
            .state
            .join("pods")
            .join(format!("{}_{name}", World::operator_namespace()))
            .join("log");
        let text = std::fs::read_to_string(&log).unwrap_or_default();
        lines.extend(
            text.lines()
                .filter_map(|l| l.find("{\"audit\"").map(|i| &l[i..]))
                .filter_map(|l| serde_json::from_str::<Value>(l).ok())
                .filter_map(|v| v.get("audit").cloned()),
        );
    }
    lines
}

#[tokio::test]
async fn users_of_two_teams_reach_their_clusters_through_the_gateway_under_rbac_quotas_and_audit() {
    let world = World::connect().await;
    let pki = world.state.join("gateway-test-pki");
    let _ = std::fs::remove_dir_all(&pki);
    make_certificates(&pki);
    let (jwt_key, jwks) = make_jwt_key(&pki);
    let read = |f: &str| std::fs::read_to_string(pki.join(f)).expect("pem");
    put_secret(
        &world,
        TLS_SECRET,
        "kubernetes.io/tls",
        json!({"tls.crt": read("tls.crt"), "tls.key": read("tls.key")}),
    )
    .await;
    put_secret(
        &world,
        JWKS_SECRET,
        "Opaque",
        json!({"jwks.json": jwks.to_string()}),
    )
    .await;
    let ca = pki.join("ca.crt");

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
    let a_create = async {
        let cluster =
            serde_json::from_value(json!({"metadata": {"name": "analytics"}, "spec": shared}))
                .expect("cluster");
        a_clusters
            .create(&PostParams::default(), &cluster)
            .await
            .expect("create analytics");
        sco_e2e::cluster_status_until(
            &a_clusters,
            "analytics",
            "a shared server",
            Duration::from_secs(120),
            |s| s.servers.shared >= 1,
        )
        .await
        .expect("analytics serves");
    };
    let s_create = create_pool(
        &s_clusters,
        "science",
        dedicated,
        2,
        Duration::from_secs(120),
    );
    tokio::join!(a_create, s_create);

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
    let held = claims
        .list(&ListParams::default().labels("sparkconnect.dev/gateway-user"))
        .await
        .expect("claims");
    assert_eq!(held.items.len(), 1, "bob's two sessions share one claim");
    let bob_claim = &held.items[0];
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
    let held = claims
        .list(&ListParams::default().labels("sparkconnect.dev/gateway-user"))
        .await
        .expect("claims");
    assert_eq!(held.items.len(), 1);
    let carol_server = held.items[0]
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
}
