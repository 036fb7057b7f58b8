//! Claims on the hot pool: real Spark end to end, and a burst of claims on light fake servers.

mod support;

use std::collections::BTreeSet;
use std::time::{Duration, Instant};

use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, PostParams};
use spark_connect_operator::builders::labels::GATEWAY_USER_LABEL;
use spark_connect_operator::crd::{
    ClaimPhase, DEDICATED_QUOTA_REACHED, SparkConnectClaim, SparkConnectCluster,
};
use support::{World, bound, create_pool, fake_spec, live_pods, succeeded, wait_until};

fn cluster(name: &str, spec: serde_json::Value) -> SparkConnectCluster {
    serde_json::from_value(serde_json::json!({"metadata": {"name": name}, "spec": spec}))
        .expect("cluster")
}

fn claim(name: &str, cluster: &str) -> SparkConnectClaim {
    serde_json::from_value(serde_json::json!({"metadata": {"name": name}, "spec": {"cluster": cluster, "user": "alice"}}))
        .expect("claim")
}

/// Creates `n` claims `<prefix>00..` on `cluster`, all at once.
async fn create_claims(claims: &Api<SparkConnectClaim>, cluster: &str, prefix: &str, n: usize) {
    let burst: Vec<SparkConnectClaim> = (0..n)
        .map(|i| claim(&format!("{prefix}{i:02}"), cluster))
        .collect();
    create_all(claims, &burst).await;
}

/// Creates every claim of `burst`, all at once.
async fn create_all(claims: &Api<SparkConnectClaim>, burst: &[SparkConnectClaim]) {
    let post = PostParams::default();
    let creates = burst.iter().map(|c| claims.create(&post, c));
    for result in futures::future::join_all(creates).await {
        result.expect("create claim");
    }
}

/// Every claim of the namespace, once each is Bound or Failed (failing the test after
/// `timeout`).
async fn all_settled(claims: &Api<SparkConnectClaim>, timeout: Duration) -> Vec<SparkConnectClaim> {
    wait_until(timeout, "every claim settled", || async {
        claims.list(&ListParams::default()).await.is_ok_and(|l| {
            l.items
                .iter()
                .all(|c| matches!(phase(c), ClaimPhase::Bound | ClaimPhase::Failed))
        })
    })
    .await;
    claims
        .list(&ListParams::default())
        .await
        .expect("claims")
        .items
}

fn phase(c: &SparkConnectClaim) -> ClaimPhase {
    c.status.as_ref().map(|s| s.phase).unwrap_or_default()
}

#[tokio::test]
async fn a_claim_on_a_warm_pool_is_bound_at_once_and_serves_queries() {
    let world = World::connect().await;
    let ns = world.namespace("e2e-claim").await;
    let clusters: Api<SparkConnectCluster> = Api::namespaced(world.client.clone(), &ns.name);
    let claims: Api<SparkConnectClaim> = Api::namespaced(world.client.clone(), &ns.name);
    let spec = serde_json::json!({
        "image": "apache/spark:4.3.0-scala2.13-java17-python3-ubuntu",
        "shared": 0,
        "hotPool": {"idle": 1},
        "executors": {"dynamicAllocation": {"enabled": true, "minExecutors": 0, "maxExecutors": 1}},
        "probe": {"period": "5s", "timeout": "3s"}
    });
    create_pool(&clusters, "pool", spec, 1, Duration::from_secs(300)).await;

    let created = Instant::now();
    claims
        .create(&PostParams::default(), &claim("alice", "pool"))
        .await
        .unwrap();
    wait_until(Duration::from_secs(30), "Bound", || async {
        claims
            .get("alice")
            .await
            .ok()
            .is_some_and(|c| phase(&c) == ClaimPhase::Bound)
    })
    .await;
    println!(
        "claim Bound {:.0} ms after creation (observed by the test)",
        created.elapsed().as_secs_f64() * 1000.0
    );
    let bound = claims.get("alice").await.unwrap().status.unwrap();
    let endpoint = bound.endpoint.unwrap();
    let server = bound.server.unwrap();
    assert!(bound.wait_millis.unwrap() < 30_000);
    // The wait is in the operator's metrics under the cluster, so a pool's hit rate can be read.
    let series = format!("cluster=\"pool\",namespace=\"{}\"", ns.name);
    wait_until(
        Duration::from_secs(30),
        "the claim's wait in the metrics of its cluster",
        || async {
            world
                .metric("spark_connect_operator_claim_wait_seconds_count", &series)
                .await
                == 1.0
        },
    )
    .await;
    let out = world.python(&format!(
        "from pyspark.sql import SparkSession\n\
         s = SparkSession.builder.remote('{endpoint}').getOrCreate()\n\
         print(s.range(100).selectExpr('sum(id)').collect()[0][0])\n"
    ));
    assert!(succeeded(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "4950");
    println!(
        "first query result {:.1}s after the claim was created",
        created.elapsed().as_secs_f64()
    );
    let pod = live_pods(
        &world.client,
        &ns.name,
        &format!("sparkconnect.dev/server={server}"),
    )
    .await;
    assert_eq!(pod[0].labels()["sparkconnect.dev/state"], "claimed");
    assert_eq!(pod[0].annotations()["sparkconnect.dev/user"], "alice");

    // Deleting the claim retires its server; the pool refills to its target.
    claims
        .delete("alice", &DeleteParams::default())
        .await
        .unwrap();
    wait_until(
        Duration::from_secs(60),
        "the claimed server retired",
        || async {
            live_pods(
                &world.client,
                &ns.name,
                &format!("sparkconnect.dev/server={server}"),
            )
            .await
            .is_empty()
        },
    )
    .await;
    wait_until(
        Duration::from_secs(300),
        "the pool back at its target",
        || async {
            clusters
                .get("pool")
                .await
                .ok()
                .and_then(|c| c.status)
                .is_some_and(|s| s.servers.idle == 1 && s.servers.claimed == 0)
        },
    )
    .await;
}

#[tokio::test]
async fn fifty_claims_at_once_never_share_a_server() {
    let world = World::connect().await;
    let ns = world.namespace("e2e-burst").await;
    let clusters: Api<SparkConnectCluster> = Api::namespaced(world.client.clone(), &ns.name);
    let claims: Api<SparkConnectClaim> = Api::namespaced(world.client.clone(), &ns.name);
    create_pool(
        &clusters,
        "burst",
        fake_spec(5, 10, 30),
        5,
        Duration::from_secs(120),
    )
    .await;
    create_claims(&claims, "burst", "c", 50).await;
    // Every claim ends Bound, or Failed with a clear reason; none stays waiting for long.
    let listed = all_settled(&claims, Duration::from_secs(180)).await;
    let bound: Vec<&SparkConnectClaim> = listed
        .iter()
        .filter(|c| phase(c) == ClaimPhase::Bound)
        .collect();
    let servers: BTreeSet<String> = bound
        .iter()
        .filter_map(|c| c.status.as_ref()?.server.clone())
        .collect();
    assert_eq!(
        servers.len(),
        bound.len(),
        "a server was given to two claims"
    );
    let pods = live_pods(&world.client, &ns.name, "sparkconnect.dev/state=claimed").await;
    let holders: BTreeSet<String> = pods
        .iter()
        .map(|p| p.annotations()["sparkconnect.dev/claim"].clone())
        .collect();
    assert_eq!(holders.len(), pods.len());
    for c in listed.iter().filter(|c| phase(c) == ClaimPhase::Failed) {
        let reason = &c.status.as_ref().unwrap().conditions[0].reason;
        assert_eq!(reason, "TooManyWaitingClaims", "{}", c.name_any());
    }
    println!(
        "50 claims at once on 5 idle servers: {} bound (pool grew), {} refused as over the waiting limit",
        bound.len(),
        50 - bound.len()
    );
    assert!(
        bound.len() >= 35,
        "the 5 idle and the 30 allowed to wait are all bound"
    );
}

#[tokio::test]
async fn gateway_claims_past_their_clusters_quota_are_refused_however_many_arrive_at_once() {
    let world = World::connect().await;
    let ns = world.namespace("e2e-quota").await;
    let clusters: Api<SparkConnectCluster> = Api::namespaced(world.client.clone(), &ns.name);
    let claims: Api<SparkConnectClaim> = Api::namespaced(world.client.clone(), &ns.name);
    let mut spec = fake_spec(6, 12, 30);
    spec["gateway"] = serde_json::json!({"mode": "Dedicated", "maxDedicatedServers": 3});
    create_pool(&clusters, "quota", spec, 6, Duration::from_secs(120)).await;
    // Ten users' gateway claims (as gateway replicas make them, each one before the others
    // show in its store) and two claims made with kubectl, all at once.
    let gateway_claim = |i: usize| {
        let mut c = claim(&format!("gw{i:02}"), "quota");
        c.labels_mut()
            .insert(GATEWAY_USER_LABEL.into(), format!("user{i:02}"));
        c
    };
    let mut burst: Vec<SparkConnectClaim> = (0..10).map(gateway_claim).collect();
    burst.extend(["kubectl0", "kubectl1"].map(|n| claim(n, "quota")));
    create_all(&claims, &burst).await;
    let listed = all_settled(&claims, Duration::from_secs(120)).await;
    let is_gateway = |c: &SparkConnectClaim| c.labels().contains_key(GATEWAY_USER_LABEL);
    let count = |gateway: bool, p: ClaimPhase| {
        listed
            .iter()
            .filter(|c| is_gateway(c) == gateway && phase(c) == p)
            .count()
    };
    assert_eq!(count(true, ClaimPhase::Bound), 3, "the quota holds");
    assert_eq!(
        count(false, ClaimPhase::Bound),
        2,
        "kubectl claims are not under it"
    );
    for c in listed.iter().filter(|c| phase(c) == ClaimPhase::Failed) {
        let condition = &c.status.as_ref().unwrap().conditions[0];
        assert_eq!(
            condition.reason,
            DEDICATED_QUOTA_REACHED,
            "{}",
            c.name_any()
        );
        assert!(
            condition
                .message
                .contains("gateway.maxDedicatedServers = 3"),
            "{}",
            condition.message
        );
    }
    println!(
        "10 gateway claims at once under a quota of 3: {} bound, {} refused",
        count(true, ClaimPhase::Bound),
        count(true, ClaimPhase::Failed)
    );
    // A released server makes room for the next user.
    let holder = listed
        .iter()
        .find(|c| is_gateway(c) && phase(c) == ClaimPhase::Bound)
        .map(ResourceExt::name_any)
        .expect("a bound gateway claim");
    claims
        .delete(&holder, &DeleteParams::default())
        .await
        .expect("release");
    wait_until(
        Duration::from_secs(60),
        "the released claim gone",
        || async { claims.get_opt(&holder).await.is_ok_and(|c| c.is_none()) },
    )
    .await;
    claims
        .create(&PostParams::default(), &gateway_claim(10))
        .await
        .expect("create claim");
    wait_until(Duration::from_secs(60), "the next user settled", || async {
        claims
            .get_opt("gw10")
            .await
            .is_ok_and(|c| c.is_some_and(|c| phase(&c) != ClaimPhase::Pending))
    })
    .await;
    let next = claims.get("gw10").await.expect("gw10");
    assert_eq!(phase(&next), ClaimPhase::Bound, "{:?}", next.status);
}

#[tokio::test]
async fn a_claim_deleted_and_applied_again_gets_a_fresh_server_of_its_own() {
    let world = World::connect().await;
    let ns = world.namespace("e2e-reapply").await;
    let clusters: Api<SparkConnectCluster> = Api::namespaced(world.client.clone(), &ns.name);
    let claims: Api<SparkConnectClaim> = Api::namespaced(world.client.clone(), &ns.name);
    create_pool(
        &clusters,
        "again",
        fake_spec(2, 4, 10),
        2,
        Duration::from_secs(120),
    )
    .await;
    // The same claim, deleted and applied again at once, three times; each time by another
    // user, as when a name is reused.
    let mut earlier: Vec<String> = Vec::new();
    for user in ["alice", "bob", "carol"] {
        let mut notebook = claim("notebook", "again");
        notebook.spec.user = Some(user.into());
        wait_until(Duration::from_secs(30), "the claim created", || async {
            claims
                .create(&PostParams::default(), &notebook)
                .await
                .is_ok()
        })
        .await;
        let got = bound(&claims, "notebook").await;
        let server = got.status.and_then(|s| s.server).expect("a server");
        assert!(
            !earlier.contains(&server),
            "{user} got {server}, a server of an earlier claim of the name: {earlier:?}"
        );
        // The server records which claim of the name it serves.
        let uid = got.metadata.uid.expect("uid");
        wait_until(Duration::from_secs(30), "the server stamped", || async {
            let pods = live_pods(&world.client, &ns.name, "sparkconnect.dev/state=claimed").await;
            pods.iter().any(|p| {
                p.name_any() == server
                    && p.annotations().get("sparkconnect.dev/claim-uid") == Some(&uid)
            })
        })
        .await;
        earlier.push(server);
        claims
            .delete("notebook", &DeleteParams::default())
            .await
            .expect("delete");
    }
    // Every earlier claim's server is retired, never handed on.
    wait_until(
        Duration::from_secs(60),
        "the earlier servers gone",
        || async {
            let pods = live_pods(&world.client, &ns.name, "sparkconnect.dev/cluster=again").await;
            earlier
                .iter()
                .all(|server| pods.iter().all(|p| p.name_any() != *server))
        },
    )
    .await;
}

#[tokio::test]
async fn a_burst_of_claims_raises_the_autoscaled_target_which_falls_only_after_the_delay() {
    use k8s_openapi::api::events::v1::Event;
    let world = World::connect().await;
    let ns = world.namespace("e2e-autoscale").await;
    let clusters: Api<SparkConnectCluster> = Api::namespaced(world.client.clone(), &ns.name);
    let claims: Api<SparkConnectClaim> = Api::namespaced(world.client.clone(), &ns.name);
    let mut spec = fake_spec(1, 10, 100);
    spec["hotPool"]["autoscale"] = serde_json::json!({"enabled": true, "scaleDownDelay": "30s"});
    clusters
        .create(&PostParams::default(), &cluster("auto", spec))
        .await
        .unwrap();
    wait_until(
        Duration::from_secs(120),
        "the pool at its floor",
        || async {
            clusters
                .get("auto")
                .await
                .ok()
                .and_then(|c| c.status)
                .is_some_and(|s| s.servers.idle >= 1 && s.idle_target == Some(1))
        },
    )
    .await;
    create_claims(&claims, "auto", "a", 12).await;
    wait_until(Duration::from_secs(60), "a raised idle target", || async {
        clusters
            .get("auto")
            .await
            .ok()
            .and_then(|c| c.status)
            .and_then(|s| s.idle_target)
            .is_some_and(|t| t > 1)
    })
    .await;
    let raised = clusters
        .get("auto")
        .await
        .unwrap()
        .status
        .unwrap()
        .idle_target
        .unwrap();
    println!("a burst of 12 claims raised the autoscaled idle target from 1 to {raised}");
    claims
        .delete_collection(&DeleteParams::default(), &ListParams::default())
        .await
        .unwrap();
    wait_until(
        Duration::from_secs(180),
        "the target back at its floor",
        || async {
            clusters
                .get("auto")
                .await
                .ok()
                .and_then(|c| c.status)
                .and_then(|s| s.idle_target)
                == Some(1)
        },
    )
    .await;
    // The Events tell when it went up and when it came down: never before the delay.
    let events: Api<Event> = Api::namespaced(world.client.clone(), &ns.name);
    let listed = events.list(&ListParams::default()).await.unwrap().items;
    let at = |reason: &str| {
        listed
            .iter()
            .filter(|e| e.reason.as_deref() == Some(reason))
            .filter_map(|e| e.event_time.as_ref().map(|t| t.0))
            .collect::<Vec<_>>()
    };
    let last_up = at("AutoscaleUp")
        .into_iter()
        .max()
        .expect("an AutoscaleUp Event");
    let first_down = at("AutoscaleDown")
        .into_iter()
        .min()
        .expect("an AutoscaleDown Event");
    let held = first_down.duration_since(last_up);
    println!(
        "the raised target held for {:.1}s after the last rise (scaleDownDelay 30s)",
        held.as_secs_f64()
    );
    assert!(
        held.as_secs() >= 30,
        "the target fell before scaleDownDelay: {held:?}"
    );
}
