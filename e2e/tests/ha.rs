//! High availability: two operator replicas from the chart; the leader dies, the standby takes
//! over the Lease, and a claim made after the kill is still bound.

mod support;

use std::time::{Duration, Instant};

use kube::api::{Api, PostParams};
use spark_connect_operator::crd::{ClaimPhase, SparkConnectClaim, SparkConnectCluster};
use support::{World, create_pool, fake_spec, succeeded, wait_until};

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

    let leader = world.leader().await.expect("a leader");
    let identity = world.leader_identity().await.expect("a leader identity");
    let pid = std::fs::read_to_string(
        world
            .state
            .join(format!("pods/{}_{leader}/pid", World::operator_namespace())),
    )
    .unwrap();
    let killed = Instant::now();
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
