//! High availability: two operator replicas from the chart; the leader dies, the standby takes
//! over the Lease, a claim made after the kill is still bound, and an autoscaled pool keeps its
//! target: the new leader does not take the claims it finds for a fresh burst.

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::Pod;
use kube::api::{Api, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use spark_connect_operator::crd::{ClaimPhase, SparkConnectClaim, SparkConnectCluster};
use support::{World, create_pool, fake_spec, live_pods, succeeded, wait_until};

/// Claims of the burst on the autoscaled pool, made before the leader dies.
const BURST: usize = 6;

/// An autoscaled pool after a burst of claims: the claims still hold their servers, and the
/// idle target is back at its floor (the scale-down delay is short).
async fn pool_after_a_burst(clusters: &Api<SparkConnectCluster>, claims: &Api<SparkConnectClaim>) {
    let mut spec = fake_spec(1, 10, 100);
    spec["hotPool"]["autoscale"] = json!({"enabled": true, "scaleDownDelay": "20s"});
    create_pool(clusters, "auto", spec, 1, Duration::from_secs(120)).await;
    for i in 0..BURST {
        let claim: SparkConnectClaim = serde_json::from_value(
            json!({"metadata": {"name": format!("burst-{i}")}, "spec": {"cluster": "auto"}}),
        )
        .unwrap();
        claims.create(&PostParams::default(), &claim).await.unwrap();
    }
    wait_until(
        Duration::from_secs(60),
        "the burst's claims bound",
        || async {
            let listed = claims.list(&ListParams::default()).await;
            listed.is_ok_and(|l| {
                l.items
                    .iter()
                    .filter(|c| c.spec.cluster == "auto")
                    .filter(|c| {
                        c.status
                            .as_ref()
                            .is_some_and(|s| s.phase == ClaimPhase::Bound)
                    })
                    .count()
                    == BURST
            })
        },
    )
    .await;
    sco_e2e::cluster_status_until(
        clusters,
        "auto",
        "the autoscaled target back at its floor, with a measured start-up time",
        Duration::from_secs(120),
        |s| s.idle_target == Some(1) && s.servers.idle == 1 && s.startup_millis.is_some(),
    )
    .await
    .unwrap();
}

/// The new leader has reconciled `auto` (a spec change it has reported) and kept its target:
/// no new server since the kill.
async fn target_kept_after_takeover(
    world: &World,
    ns: &str,
    clusters: &Api<SparkConnectCluster>,
    killed_at: jiff::Timestamp,
) {
    let patch = json!({"spec": {"hotPool": {"maxWaitingClaims": 99}}});
    let changed = clusters
        .patch("auto", &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .unwrap();
    let generation = changed.metadata.generation;
    sco_e2e::cluster_status_until(
        clusters,
        "auto",
        "the new leader reporting the changed spec",
        Duration::from_secs(60),
        |s| s.observed_generation == generation,
    )
    .await
    .unwrap();
    let status = clusters.get("auto").await.unwrap().status.unwrap();
    let started_since: Vec<String> = live_pods(&world.client, ns, "sparkconnect.dev/cluster=auto")
        .await
        .into_iter()
        .filter(|p: &Pod| {
            p.metadata
                .creation_timestamp
                .as_ref()
                .is_some_and(|t| t.0 > killed_at)
        })
        .filter_map(|p| p.metadata.name)
        .collect();
    println!(
        "after the takeover the autoscaled pool's target is {:?} with {} idle; servers started since the kill: {started_since:?}",
        status.idle_target, status.servers.idle
    );
    assert_eq!(
        status.idle_target,
        Some(1),
        "the new leader took the {BURST} old claims for a burst"
    );
    assert!(
        started_since.is_empty(),
        "the new leader started servers for old claims: {started_since:?}"
    );
}

#[tokio::test]
async fn the_standby_takes_over_when_the_leader_dies() {
    let world = World::connect().await;
    let ns = world.namespace("e2e-ha").await;
    let clusters: Api<SparkConnectCluster> = Api::namespaced(world.client.clone(), &ns.name);
    let claims: Api<SparkConnectClaim> = Api::namespaced(world.client.clone(), &ns.name);
    create_pool(
        &clusters,
        "ha",
        fake_spec(1, 20, 100),
        1,
        Duration::from_secs(120),
    )
    .await;
    pool_after_a_burst(&clusters, &claims).await;

    let leader = world.leader().await.expect("a leader");
    let identity = world.leader_identity().await.expect("a leader identity");
    let pid = std::fs::read_to_string(
        world
            .state
            .join(format!("pods/{}_{leader}/pid", World::operator_namespace())),
    )
    .unwrap();
    let killed = Instant::now();
    let killed_at = jiff::Timestamp::now();
    assert!(succeeded(&world.exec(&["kill", "-9", pid.trim()])));
    let claim: SparkConnectClaim = serde_json::from_value(
        serde_json::json!({"metadata": {"name": "after-kill"}, "spec": {"cluster": "ha"}}),
    )
    .unwrap();
    claims.create(&PostParams::default(), &claim).await.unwrap();
    let takeover = wait_until(Duration::from_secs(90), "another leader", || async {
        world.leader_identity().await.is_some_and(|l| l != identity)
    })
    .await;
    let new_leader = world.leader_identity().await.unwrap_or_default();
    println!(
        "leader {identity} killed; {new_leader} took the Lease after {:.1}s (lease duration 15s)",
        takeover.as_secs_f64()
    );
    wait_until(
        Duration::from_secs(60),
        "the claim made after the kill bound",
        || async {
            claims
                .get("after-kill")
                .await
                .ok()
                .and_then(|c| c.status)
                .is_some_and(|s| s.phase == ClaimPhase::Bound)
        },
    )
    .await;
    println!(
        "claim made after the kill was Bound {:.1}s after the kill",
        killed.elapsed().as_secs_f64()
    );
    target_kept_after_takeover(&world, &ns.name, &clusters, killed_at).await;

    // A leader that is asked to stop (pod deleted: SIGTERM) releases the Lease at once, and a
    // process in another pod takes over without waiting for the Lease to expire.
    let leader = world.leader().await.expect("a leader");
    let operators: Api<k8s_openapi::api::core::v1::Pod> =
        Api::namespaced(world.client.clone(), &World::operator_namespace());
    operators
        .delete(&leader, &Default::default())
        .await
        .unwrap();
    let handover = wait_until(
        Duration::from_secs(60),
        "a leader in another pod",
        || async { world.leader().await.is_some_and(|l| l != leader) },
    )
    .await;
    println!(
        "leader pod {leader} deleted (SIGTERM): {} took the Lease after {:.1}s",
        world.leader_identity().await.unwrap_or_default(),
        handover.as_secs_f64()
    );
    assert!(
        handover < Duration::from_secs(15),
        "a leader stepping down releases its Lease instead of letting it expire"
    );
}
