//! The operator against the real control plane and real Spark Connect servers.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use spark_connect_operator::crd::SparkConnectCluster;
use support::{World, fake_spec, live_pods, succeeded, wait_until};

const SPARK_IMAGE: &str = "apache/spark:4.3.0-scala2.13-java17-python3-ubuntu";

fn cluster(name: &str, spec: serde_json::Value) -> SparkConnectCluster {
    serde_json::from_value(serde_json::json!({
        "apiVersion": "sparkconnect.dev/v1alpha1", "kind": "SparkConnectCluster",
        "metadata": {"name": name}, "spec": spec
    }))
    .expect("cluster")
}

fn condition(c: &SparkConnectCluster, type_: &str) -> Option<(String, String)> {
    c.status
        .as_ref()?
        .conditions
        .iter()
        .find(|x| x.type_ == type_)
        .map(|x| (x.status.clone(), x.reason.clone()))
}

#[tokio::test]
async fn invalid_specs_are_refused_with_the_rules_message() {
    let world = World::connect().await;
    let ns = world.namespace("e2e-invalid").await;
    let cases = [
        (
            "bad-pool",
            r#"{"image": "x", "hotPool": {"idle": 5, "max": 2}}"#,
            "hotPool must satisfy min <= idle <= max",
        ),
        (
            "bad-memory",
            r#"{"image": "x", "server": {"resources": {"memory": "lots"}}}"#,
            "memory must be a quantity such as 2Gi",
        ),
        (
            "bad-duration",
            r#"{"image": "x", "probe": {"period": "soon"}}"#,
            "must be a duration such as 30s",
        ),
        (
            "bad-port",
            r#"{"image": "x", "server": {"port": 7078}}"#,
            "port must differ from the driver",
        ),
        (
            "bad-warmup",
            r#"{"image": "x", "warmup": {"sessions": 21}}"#,
            "spec.warmup.sessions: Invalid value: 21: spec.warmup.sessions in body should be less than or equal to 20",
        ),
        (
            "a-name-that-is-far-too-long-for-server-pods-x",
            r#"{"image": "x"}"#,
            "metadata.name must be at most 40 characters",
        ),
    ];
    for (name, spec, message) in cases {
        let yaml = format!(
            "apiVersion: sparkconnect.dev/v1alpha1\nkind: SparkConnectCluster\nmetadata: {{name: {name}}}\nspec: {spec}\n"
        );
        let out = world.kubectl(&["apply", "-n", &ns.name, "-f", "-"], Some(&yaml));
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert!(!out.status.success(), "{name} must be refused");
        assert!(
            stderr.contains(message),
            "{name}: expected {message:?} in {stderr}"
        );
    }
    // auth.mode is immutable.
    let api: Api<SparkConnectCluster> = Api::namespaced(world.client.clone(), &ns.name);
    api.create(
        &PostParams::default(),
        &cluster(
            "auth",
            serde_json::json!({"image": SPARK_IMAGE, "shared": 0, "hotPool": {"idle": 0}}),
        ),
    )
    .await
    .unwrap();
    let change = api
        .patch(
            "auth",
            &PatchParams::default(),
            &Patch::Merge(serde_json::json!({"spec": {"auth": {"mode": "Token"}}})),
        )
        .await;
    assert!(format!("{:?}", change.unwrap_err()).contains("auth.mode cannot be changed"));
}

#[tokio::test]
async fn a_spec_only_the_operator_can_judge_degrades_with_an_event() {
    let world = World::connect().await;
    let ns = world.namespace("e2e-degraded").await;
    let api: Api<SparkConnectCluster> = Api::namespaced(world.client.clone(), &ns.name);
    let spec = serde_json::json!({"image": SPARK_IMAGE, "sparkConf": {"spark.master": "local[1]"}});
    api.create(&PostParams::default(), &cluster("managed", spec))
        .await
        .unwrap();
    wait_until(Duration::from_secs(30), "Degraded/InvalidSpec", || async {
        api.get("managed")
            .await
            .ok()
            .and_then(|c| condition(&c, "Degraded"))
            == Some(("True".into(), "InvalidSpec".into()))
    })
    .await;
    let events: Api<Event> = Api::namespaced(world.client.clone(), &ns.name);
    let listed = events.list(&ListParams::default()).await.unwrap();
    assert!(listed.items.iter().any(|e| {
        e.reason.as_deref() == Some("InvalidSpec")
            && e.message
                .as_deref()
                .unwrap_or_default()
                .contains("spark.master")
    }));
    assert!(
        live_pods(&world.client, &ns.name, "sparkconnect.dev/cluster=managed")
            .await
            .is_empty()
    );
    // Fixing the spec makes it converge.
    api.patch(
        "managed",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({
            "spec": {"sparkConf": null, "shared": 0, "hotPool": {"idle": 0}}
        })),
    )
    .await
    .unwrap();
    wait_until(Duration::from_secs(30), "Degraded cleared", || async {
        api.get("managed")
            .await
            .ok()
            .and_then(|c| condition(&c, "Degraded"))
            .is_some_and(|(s, _)| s == "False")
    })
    .await;
}

#[tokio::test]
async fn a_failing_warm_up_keeps_servers_out_of_the_pool_and_says_why() {
    let world = World::connect().await;
    let ns = world.namespace("e2e-warmup").await;
    let api: Api<SparkConnectCluster> = Api::namespaced(world.client.clone(), &ns.name);
    let mut spec = fake_spec(1, 2, 10);
    spec["warmup"] =
        serde_json::json!({"queries": ["SELECT 1", "SELECT * FROM sco_fake_missing_table"]});
    api.create(&PostParams::default(), &cluster("warm", spec))
        .await
        .unwrap();
    wait_until(Duration::from_secs(60), "Degraded/WarmupFailed", || async {
        api.get("warm").await.ok().is_some_and(|c| {
            condition(&c, "Degraded")
                .is_some_and(|(s, reason)| s == "True" && reason == "WarmupFailed")
        })
    })
    .await;
    let status = api.get("warm").await.unwrap().status.unwrap();
    let degraded = status
        .conditions
        .iter()
        .find(|c| c.type_ == "Degraded")
        .unwrap();
    assert!(
        degraded.message.contains("query 2 of 2")
            && degraded.message.contains("TABLE_OR_VIEW_NOT_FOUND"),
        "{}",
        degraded.message
    );
    assert_eq!(
        status.servers.idle, 0,
        "an unwarmed server is never handed out"
    );
    assert!(status.servers.starting >= 1);

    // A working query list lets the same server pass its next warm-up and join the pool.
    api.patch(
        "warm",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"spec": {"warmup": {"queries": ["SELECT 1"]}}})),
    )
    .await
    .unwrap();
    wait_until(
        Duration::from_secs(60),
        "an idle, warmed server",
        || async {
            api.get("warm")
                .await
                .ok()
                .and_then(|c| c.status)
                .is_some_and(|s| s.servers.idle == 1 && s.last_warmup_millis.is_some())
        },
    )
    .await;
    let cleared = api.get("warm").await.unwrap();
    assert_eq!(
        condition(&cleared, "Degraded").map(|(s, _)| s),
        Some("False".into())
    );
}

fn query(world: &World, host: &str, token: &str) -> std::process::Output {
    world.python(&format!(
        "from pyspark.sql import SparkSession\n\
         s = SparkSession.builder.remote('sc://{host}:15002/;authorization=Bearer {token}').getOrCreate()\n\
         rows = s.range(1000).selectExpr('id % 3 as k').groupBy('k').count().orderBy('k').collect()\n\
         print(','.join(str(r['count']) for r in rows))\n"
    ))
}

fn pid_of(world: &World, ns: &str, pod: &str) -> String {
    std::fs::read_to_string(world.state.join(format!("pods/{ns}_{pod}/pid")))
        .expect("pid file")
        .trim()
        .to_string()
}

async fn server_pods(world: &World, ns: &str, state: &str) -> Vec<Pod> {
    let selector = format!(
        "sparkconnect.dev/cluster=analytics,app.kubernetes.io/component=server,sparkconnect.dev/state={state}"
    );
    live_pods(&world.client, ns, &selector).await
}

#[tokio::test]
async fn cluster_lifecycle_with_real_spark() {
    let world = World::connect().await;
    let ns = world.namespace("e2e-cluster").await;
    let client = world.client.clone();
    let api: Api<SparkConnectCluster> = Api::namespaced(client.clone(), &ns.name);
    let spec = serde_json::json!({
        "image": SPARK_IMAGE,
        "sparkConf": {"spark.sql.shuffle.partitions": "2"},
        "server": {"resources": {"cores": 1, "memory": "1Gi"}},
        "executors": {"instances": 1, "resources": {"cores": 1, "memory": "1Gi"}},
        "shared": 1,
        "hotPool": {"idle": 1},
        "probe": {"period": "5s", "timeout": "3s", "failureThreshold": 3},
        "auth": {"mode": "Token"}
    });
    let started = Instant::now();
    api.create(&PostParams::default(), &cluster("analytics", spec))
        .await
        .unwrap();
    wait_until(Duration::from_secs(300), "Ready and PoolReady", || async {
        api.get("analytics").await.ok().is_some_and(|c| {
            condition(&c, "Ready").is_some_and(|(s, _)| s == "True")
                && condition(&c, "PoolReady").is_some_and(|(s, _)| s == "True")
        })
    })
    .await;
    // Warm-up is on by default: every server ran the built-in queries (SQL text and DataFrame
    // relations: shuffles on its executor, a global sort, an Arrow collect) before it was
    // labelled idle or shared.
    let warmup = api
        .get("analytics")
        .await
        .unwrap()
        .status
        .and_then(|s| s.last_warmup_millis);
    assert!(
        warmup.is_some_and(|ms| ms > 0),
        "status.lastWarmupMillis: {warmup:?}"
    );
    println!(
        "cluster Ready with a full pool after {:.1}s (last warm-up {} ms)",
        started.elapsed().as_secs_f64(),
        warmup.unwrap_or_default()
    );

    // Token mode: the shared server and its warm standby hold the cluster token, the pool
    // server its own; each is a pod and a headless Service owned by the cluster.
    let servers = live_pods(
        &client,
        &ns.name,
        "sparkconnect.dev/cluster=analytics,app.kubernetes.io/component=server",
    )
    .await;
    assert_eq!(servers.len(), 3);
    let roles: Vec<&str> = servers
        .iter()
        .filter_map(|p| p.labels().get("sparkconnect.dev/role").map(String::as_str))
        .collect();
    assert_eq!(roles.iter().filter(|r| **r == "endpoint").count(), 2);
    assert_eq!(roles.iter().filter(|r| **r == "pool").count(), 1);
    let services: Api<Service> = Api::namespaced(client.clone(), &ns.name);
    for pod in &servers {
        assert_eq!(pod.owner_references()[0].kind, "SparkConnectCluster");
        let svc = services.get(&pod.name_any()).await.unwrap();
        assert_eq!(svc.owner_references()[0].name, "analytics");
    }
    assert!(services.get("analytics").await.is_ok());
    assert!(
        Api::<ServiceAccount>::namespaced(client.clone(), &ns.name)
            .get("analytics-spark")
            .await
            .is_ok()
    );
    assert!(
        Api::<Role>::namespaced(client.clone(), &ns.name)
            .get("analytics-spark")
            .await
            .is_ok()
    );
    assert!(
        Api::<RoleBinding>::namespaced(client.clone(), &ns.name)
            .get("analytics-spark")
            .await
            .is_ok()
    );
    let secrets = Api::<Secret>::namespaced(client.clone(), &ns.name);
    let secret = secrets.get("analytics-connect-token").await.unwrap();
    let token = String::from_utf8(secret.data.unwrap()["token"].0.clone()).unwrap();
    let pool_server = servers
        .iter()
        .find(|p| p.labels().get("sparkconnect.dev/role").map(String::as_str) == Some("pool"))
        .unwrap();
    let own = secrets
        .get(&format!("{}-token", pool_server.name_any()))
        .await
        .unwrap();
    assert_eq!(own.owner_references()[0].name, pool_server.name_any());
    let own_token = String::from_utf8(own.data.unwrap()["token"].0.clone()).unwrap();
    assert_ne!(own_token, token, "a pool server has a token of its own");

    // A query through the shared Service's DNS name, with the token, runs on executors.
    let host = format!("analytics.{}.svc.cluster.local", ns.name);
    let out = query(&world, &host, &token);
    assert!(succeeded(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "334,333,333");
    let out = query(&world, &host, "wrong-token");
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("UNAUTHENTICATED")
            || String::from_utf8_lossy(&out.stderr).contains("authentication")
    );
    let executors = live_pods(
        &client,
        &ns.name,
        "sparkconnect.dev/cluster=analytics,app.kubernetes.io/component=executor",
    )
    .await;
    assert!(!executors.is_empty(), "Spark created executor pods");

    // The probe reports the Spark version once.
    wait_until(
        Duration::from_secs(60),
        "the Spark version in status",
        || async {
            api.get("analytics")
                .await
                .ok()
                .and_then(|c| c.status?.spark_version)
                .is_some_and(|v| v.starts_with("4."))
        },
    )
    .await;

    // Steady state: a reconcile with nothing changed makes no write request.
    const RECONCILED: &str = "spark_connect_operator_reconcile_duration_seconds_count";
    const WRITES: &str = "spark_connect_operator_api_write_requests_total";
    let writes_before = world.metric(WRITES, "").await;
    let reconciles_before = world.metric(RECONCILED, "controller=\"cluster\"").await;
    api.patch(
        "analytics",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({"metadata": {"annotations": {"e2e/poke": "1"}}})),
    )
    .await
    .unwrap();
    wait_until(
        Duration::from_secs(30),
        "a reconcile after the poke",
        || async { world.metric(RECONCILED, "controller=\"cluster\"").await > reconciles_before },
    )
    .await;
    let writes_after = world.metric(WRITES, "").await;
    println!(
        "steady-state reconcile: {} write requests",
        writes_after - writes_before
    );
    assert!(writes_before > 0.0, "the leader's metrics were read");
    assert_eq!(
        writes_after, writes_before,
        "a reconcile with nothing changed must not write"
    );

    // A hung shared server (SIGSTOP: its port still accepts connections) is found by the
    // Config probe and replaced by the idle one behind the same Service.
    let shared = server_pods(&world, &ns.name, "shared").await;
    assert_eq!(shared.len(), 1);
    let victim = shared[0].name_any();
    let stopped = Instant::now();
    assert!(succeeded(&world.exec(&[
        "kill",
        "-STOP",
        &pid_of(&world, &ns.name, &victim)
    ])));
    let failover = wait_until(
        Duration::from_secs(120),
        "another shared server",
        || async {
            server_pods(&world, &ns.name, "shared")
                .await
                .iter()
                .any(|p| p.name_any() != victim)
        },
    )
    .await;
    println!(
        "hung shared server detected and failed over in {:.1}s (probe period 5s x 3 + timeout 3s)",
        failover.as_secs_f64()
    );
    let out = query(&world, &host, &token);
    assert!(succeeded(&out), "the endpoint serves again");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "334,333,333");
    println!(
        "endpoint served a query again {:.1}s after the hang",
        stopped.elapsed().as_secs_f64()
    );

    // A killed idle server is noticed (its pod fails) and replaced.
    wait_until(
        Duration::from_secs(300),
        "the standby and the pool to refill",
        || async { server_pods(&world, &ns.name, "idle").await.len() == 2 },
    )
    .await;
    let idle = server_pods(&world, &ns.name, "idle").await[0].name_any();
    assert!(succeeded(&world.exec(&[
        "kill",
        "-9",
        &pid_of(&world, &ns.name, &idle)
    ])));
    wait_until(
        Duration::from_secs(300),
        "the killed server replaced",
        || async {
            let idle_now = server_pods(&world, &ns.name, "idle").await;
            let all = live_pods(
                &client,
                &ns.name,
                "sparkconnect.dev/cluster=analytics,app.kubernetes.io/component=server",
            )
            .await;
            !all.iter().any(|p| p.name_any() == idle) && idle_now.len() == 2
        },
    )
    .await;

    // A spec change rolls out to the pool.
    let before: BTreeSet<String> = server_pods(&world, &ns.name, "idle")
        .await
        .iter()
        .map(|p| p.name_any())
        .collect();
    api.patch(
        "analytics",
        &PatchParams::default(),
        &Patch::Merge(serde_json::json!({
            "spec": {"sparkConf": {"spark.sql.shuffle.partitions": "3"}}
        })),
    )
    .await
    .unwrap();
    wait_until(Duration::from_secs(300), "the rollout", || async {
        let Ok(c) = api.get("analytics").await else {
            return false;
        };
        let servers = live_pods(
            &client,
            &ns.name,
            "sparkconnect.dev/cluster=analytics,app.kubernetes.io/component=server",
        )
        .await;
        let hashes: BTreeSet<String> = servers
            .iter()
            .filter_map(|p| p.labels().get("sparkconnect.dev/spec-hash").cloned())
            .collect();
        let idle: BTreeSet<String> = servers
            .iter()
            .filter(|p| {
                p.labels().get("sparkconnect.dev/state").map(String::as_str) == Some("idle")
            })
            .map(|p| p.name_any())
            .collect();
        // One hash per role: endpoint servers' includes the cluster token.
        servers.len() == 3
            && hashes.len() == 2
            && idle.is_disjoint(&before)
            && c.status.as_ref().is_some_and(|s| {
                s.servers.idle == 1 && s.servers.standby == 1 && s.servers.shared == 1
            })
    })
    .await;

    // Deleting the cluster collects every child, executor pods included.
    api.delete("analytics", &DeleteParams::default())
        .await
        .unwrap();
    wait_until(Duration::from_secs(180), "garbage collection", || async {
        live_pods(&client, &ns.name, "sparkconnect.dev/cluster=analytics")
            .await
            .is_empty()
            && Api::<Pod>::namespaced(client.clone(), &ns.name)
                .list(&ListParams::default())
                .await
                .is_ok_and(|l| l.items.is_empty())
            && services
                .list(&ListParams::default())
                .await
                .is_ok_and(|l| l.items.is_empty())
    })
    .await;
}

/// A cron expression (with seconds) for one instant in UTC.
fn cron_at(at: jiff::Timestamp) -> String {
    let t = at.to_zoned(jiff::tz::TimeZone::UTC);
    format!(
        "{} {} {} {} {} *",
        t.second(),
        t.minute(),
        t.hour(),
        t.day(),
        t.month()
    )
}

#[tokio::test]
async fn a_schedule_window_fills_the_pool_ahead_of_it_and_releases_it_after() {
    let world = World::connect().await;
    let ns = world.namespace("e2e-schedule").await;
    let api: Api<SparkConnectCluster> = Api::namespaced(world.client.clone(), &ns.name);
    // Cron counts whole seconds.
    let opens = jiff::Timestamp::from_second(jiff::Timestamp::now().as_second() + 45).unwrap();
    let mut spec = fake_spec(0, 10, 100);
    spec["hotPool"]["schedule"] = serde_json::json!([
        {"start": cron_at(opens), "duration": "20s", "idle": 3},
        // Passes admission, but no such zone exists: reported, and the pool runs on.
        {"start": "0 9 * * Mon-Fri", "duration": "8h", "idle": 2, "timeZone": "Mars/Olympus"}
    ]);
    api.create(&PostParams::default(), &cluster("workshop", spec))
        .await
        .unwrap();

    wait_until(
        Duration::from_secs(30),
        "the unreadable window reported",
        || async {
            api.get("workshop").await.ok().is_some_and(|c| {
                condition(&c, "Degraded") == Some(("True".into(), "ScheduleInvalid".into()))
            })
        },
    )
    .await;
    let status = api.get("workshop").await.unwrap().status.unwrap();
    assert_eq!(status.scheduled_idle, None, "no window is open yet");
    assert_eq!(status.servers.total, 0, "hotPool.idle is 0");

    // The window's servers start ahead of it (by the assumed start-up time until one is
    // measured), so the pool holds three idle servers while it is open.
    sco_e2e::cluster_status_until(
        &api,
        "workshop",
        "three idle servers for the window",
        Duration::from_secs(60),
        |s| s.scheduled_idle == Some(3) && s.servers.idle == 3,
    )
    .await
    .unwrap();
    // After it closes, the pool goes back to hotPool.idle.
    sco_e2e::cluster_status_until(
        &api,
        "workshop",
        "the pool back to no idle server",
        Duration::from_secs(90),
        |s| s.scheduled_idle.is_none() && s.servers.total == 0,
    )
    .await
    .unwrap();
    let closed = jiff::Timestamp::now();
    assert!(
        closed >= opens + jiff::SignedDuration::from_secs(20),
        "the window closed at {closed}, before its end {opens} + 20s"
    );
    let events: Api<Event> = Api::namespaced(world.client.clone(), &ns.name);
    let notes: Vec<String> = events
        .list(&ListParams::default())
        .await
        .unwrap()
        .items
        .into_iter()
        .filter(|e| {
            e.reason
                .as_deref()
                .is_some_and(|r| r.starts_with("ScheduleWindow"))
        })
        .filter_map(|e| e.message)
        .collect();
    assert!(
        notes
            .iter()
            .any(|n| n.contains("hotPool.schedule[0] opens: at least 3")),
        "{notes:?}"
    );
    assert!(
        notes
            .iter()
            .any(|n| n.contains("no hotPool.schedule window is open")),
        "{notes:?}"
    );
}
