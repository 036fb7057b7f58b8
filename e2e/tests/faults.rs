//! Faults against the world: the operator killed mid-burst, the leader frozen past its Lease,
//! the apiserver and etcd paused, claimed servers killed or hung, the token Secret deleted, a
//! cluster deleted under its claims, owned objects edited. After each, the pool invariants of
//! `support::assert_pool_consistent` hold and the pool is back at its target.

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use serde_json::json;
use spark_connect_operator::crd::{ClaimPhase, SparkConnectClaim, SparkConnectCluster};
use support::{
    World, assert_pool_consistent, create_pool, fake_spec, live_pods, pod_pid, succeeded,
    wait_until, world_pid,
};

const SETTLE: Duration = Duration::from_secs(180);

async fn make_claims(api: &Api<SparkConnectClaim>, cluster: &str, names: &[String]) {
    let creates = names.iter().map(|name| {
        let claim: SparkConnectClaim = serde_json::from_value(
            json!({"metadata": {"name": name}, "spec": {"cluster": cluster}}),
        )
        .unwrap();
        async move { api.create(&PostParams::default(), &claim).await }
    });
    for result in futures::future::join_all(creates).await {
        result.unwrap();
    }
}

async fn phase(api: &Api<SparkConnectClaim>, name: &str) -> Option<ClaimPhase> {
    api.get(name).await.ok()?.status.map(|s| s.phase)
}

async fn wait_phase(api: &Api<SparkConnectClaim>, name: &str, want: ClaimPhase, timeout: Duration) {
    wait_until(timeout, &format!("claim {name} {want:?}"), || async {
        phase(api, name).await == Some(want)
    })
    .await;
}

async fn bound_server(api: &Api<SparkConnectClaim>, name: &str) -> String {
    api.get(name).await.unwrap().status.unwrap().server.unwrap()
}

fn leader_pod_pid(world: &World, leader: &str) -> String {
    pod_pid(world, &World::operator_namespace(), leader)
}

#[tokio::test]
async fn the_leader_killed_during_a_burst_of_fifty_claims() {
    let world = World::connect().await;
    let ns = world.namespace("e2e-fault-burst").await;
    let clusters: Api<SparkConnectCluster> = Api::namespaced(world.client.clone(), &ns.name);
    let claims: Api<SparkConnectClaim> = Api::namespaced(world.client.clone(), &ns.name);
    create_pool(
        &clusters,
        "burst",
        fake_spec(5, 60, 100),
        5,
        Duration::from_secs(120),
    )
    .await;
    let leader = world.leader().await.expect("a leader");
    let identity = world.leader_identity().await.unwrap_or_default();
    let names: Vec<String> = (0..50).map(|i| format!("c{i:02}")).collect();
    let (first, rest) = names.split_at(10);
    make_claims(&claims, "burst", first).await;
    assert!(succeeded(&world.exec(&[
        "kill",
        "-9",
        &leader_pod_pid(&world, &leader)
    ])));
    make_claims(&claims, "burst", rest).await;
    let started = Instant::now();
    wait_until(Duration::from_secs(240), "all 50 claims bound", || async {
        claims.list(&ListParams::default()).await.is_ok_and(|l| {
            l.items.len() == 50
                && l.items.iter().all(|c| {
                    c.status
                        .as_ref()
                        .is_some_and(|s| s.phase == ClaimPhase::Bound)
                })
        })
    })
    .await;
    println!(
        "leader {identity} killed after 10 of 50 claims; all 50 bound {:.1}s later by {}",
        started.elapsed().as_secs_f64(),
        world.leader_identity().await.unwrap_or_default()
    );
    assert_pool_consistent(&world, &ns.name, "burst", SETTLE).await;
}

#[tokio::test]
async fn a_leader_frozen_past_its_lease_stops_acting_when_it_wakes() {
    let world = World::connect().await;
    let ns = world.namespace("e2e-fault-freeze").await;
    let clusters: Api<SparkConnectCluster> = Api::namespaced(world.client.clone(), &ns.name);
    let claims: Api<SparkConnectClaim> = Api::namespaced(world.client.clone(), &ns.name);
    create_pool(
        &clusters,
        "freeze",
        fake_spec(3, 20, 100),
        3,
        Duration::from_secs(120),
    )
    .await;
    let leader = world.leader().await.expect("a leader");
    let identity = world.leader_identity().await.unwrap_or_default();
    let pid = leader_pod_pid(&world, &leader);
    let restarts = support::operator_restarts(&world).await;
    assert!(succeeded(&world.exec(&["kill", "-STOP", &pid])));
    let frozen = Instant::now();
    make_claims(&claims, "freeze", &["during".to_string()]).await;
    wait_until(Duration::from_secs(60), "another leader", || async {
        world.leader_identity().await.is_some_and(|l| l != identity)
    })
    .await;
    wait_phase(
        &claims,
        "during",
        ClaimPhase::Bound,
        Duration::from_secs(60),
    )
    .await;
    println!(
        "leader frozen; {} took over after {:.1}s and bound a claim",
        world.leader_identity().await.unwrap_or_default(),
        frozen.elapsed().as_secs_f64()
    );
    // Claims arrive as the old leader wakes: only the new one may bind them.
    assert!(succeeded(&world.exec(&["kill", "-CONT", &pid])));
    let names: Vec<String> = (0..6).map(|i| format!("after{i}")).collect();
    make_claims(&claims, "freeze", &names).await;
    wait_until(
        Duration::from_secs(60),
        "the woken leader to stop",
        || async { support::operator_restarts(&world).await != restarts },
    )
    .await;
    let log = std::fs::read_to_string(
        world
            .state
            .join(format!("pods/{}_{leader}/log", World::operator_namespace())),
    )
    .unwrap_or_default();
    assert!(
        log.contains("stopping so that only one operator acts")
            || log.contains("held by another replica"),
        "the woken ex-leader stepped down"
    );
    for name in &names {
        wait_phase(&claims, name, ClaimPhase::Bound, Duration::from_secs(60)).await;
    }
    assert_pool_consistent(&world, &ns.name, "freeze", SETTLE).await;
}

#[tokio::test]
async fn the_apiserver_and_etcd_paused_and_resumed() {
    let world = World::connect().await;
    let ns = world.namespace("e2e-fault-pause").await;
    let clusters: Api<SparkConnectCluster> = Api::namespaced(world.client.clone(), &ns.name);
    let claims: Api<SparkConnectClaim> = Api::namespaced(world.client.clone(), &ns.name);
    create_pool(
        &clusters,
        "pause",
        fake_spec(2, 20, 100),
        2,
        Duration::from_secs(120),
    )
    .await;
    make_claims(&claims, "pause", &["before".to_string()]).await;
    wait_phase(
        &claims,
        "before",
        ClaimPhase::Bound,
        Duration::from_secs(60),
    )
    .await;
    let (apiserver, etcd) = (
        world_pid(&world, "kube-apiserver"),
        world_pid(&world, "etcd"),
    );
    assert!(!apiserver.is_empty() && !etcd.is_empty());
    assert!(succeeded(
        &world.exec(&["kill", "-STOP", &etcd, &apiserver])
    ));
    tokio::time::sleep(Duration::from_secs(20)).await; // the pause itself, longer than the lease
    assert!(succeeded(
        &world.exec(&["kill", "-CONT", &etcd, &apiserver])
    ));
    let resumed = Instant::now();
    wait_until(Duration::from_secs(120), "a leader again", || async {
        world.leader_identity().await.is_some()
    })
    .await;
    make_claims(&claims, "pause", &["after".to_string()]).await;
    wait_phase(
        &claims,
        "after",
        ClaimPhase::Bound,
        Duration::from_secs(120),
    )
    .await;
    println!(
        "apiserver and etcd paused 20s; a claim made after the resume was bound {:.1}s after it",
        resumed.elapsed().as_secs_f64()
    );
    assert_eq!(phase(&claims, "before").await, Some(ClaimPhase::Bound));
    assert_pool_consistent(&world, &ns.name, "pause", SETTLE).await;
}

#[tokio::test]
async fn a_claimed_server_killed_or_hung() {
    let world = World::connect().await;
    let ns = world.namespace("e2e-fault-server").await;
    let clusters: Api<SparkConnectCluster> = Api::namespaced(world.client.clone(), &ns.name);
    let claims: Api<SparkConnectClaim> = Api::namespaced(world.client.clone(), &ns.name);
    create_pool(
        &clusters,
        "srv",
        fake_spec(2, 20, 100),
        2,
        Duration::from_secs(120),
    )
    .await;
    make_claims(&claims, "srv", &["killed".to_string(), "hung".to_string()]).await;
    wait_phase(
        &claims,
        "killed",
        ClaimPhase::Bound,
        Duration::from_secs(60),
    )
    .await;
    wait_phase(&claims, "hung", ClaimPhase::Bound, Duration::from_secs(60)).await;
    let killed = bound_server(&claims, "killed").await;
    let hung = bound_server(&claims, "hung").await;
    assert!(succeeded(&world.exec(&[
        "kill",
        "-9",
        &pod_pid(&world, &ns.name, &killed)
    ])));
    assert!(succeeded(&world.exec(&[
        "kill",
        "-STOP",
        &pod_pid(&world, &ns.name, &hung)
    ])));
    wait_phase(&claims, "killed", ClaimPhase::Lost, Duration::from_secs(90)).await;
    let pods: Api<Pod> = Api::namespaced(world.client.clone(), &ns.name);
    wait_until(Duration::from_secs(90), "the lost server retired", || {
        support::pod_gone_or_leaving(&pods, &killed)
    })
    .await;
    // A hung claimed server stays its claim's: the user's session may come back.
    assert_eq!(phase(&claims, "hung").await, Some(ClaimPhase::Bound));
    assert_pool_consistent(&world, &ns.name, "srv", SETTLE).await;
    assert!(succeeded(&world.exec(&[
        "kill",
        "-CONT",
        &pod_pid(&world, &ns.name, &hung)
    ])));
}

/// Runs the operator's own probe against `address` from inside the world.
fn probe(world: &World, address: &str, token: &str) -> bool {
    let bin = World::operator_bin();
    let url = format!("sc://{address}/;token={token}");
    world
        .exec(&[
            bin.to_str().unwrap_or_default(),
            "probe",
            &url,
            "--timeout",
            "3s",
        ])
        .status
        .success()
}

fn token_of(secret: &Secret) -> String {
    String::from_utf8(secret.data.as_ref().unwrap()["token"].0.clone()).unwrap()
}

#[tokio::test]
async fn the_token_secret_deleted_rolls_the_endpoint_and_spares_the_pool() {
    let world = World::connect().await;
    let ns = world.namespace("e2e-fault-token").await;
    let clusters: Api<SparkConnectCluster> = Api::namespaced(world.client.clone(), &ns.name);
    let claims: Api<SparkConnectClaim> = Api::namespaced(world.client.clone(), &ns.name);
    let secrets: Api<Secret> = Api::namespaced(world.client.clone(), &ns.name);
    let services: Api<Service> = Api::namespaced(world.client.clone(), &ns.name);
    let mut spec = fake_spec(1, 5, 10);
    spec["shared"] = json!(1);
    spec["auth"] = json!({"mode": "Token"});
    create_pool(&clusters, "tok", spec, 1, Duration::from_secs(120)).await;
    make_claims(&claims, "tok", &["mine".to_string()]).await;
    wait_phase(&claims, "mine", ClaimPhase::Bound, Duration::from_secs(60)).await;
    let mine = claims.get("mine").await.unwrap().status.unwrap();
    let server = mine.server.unwrap();
    assert_eq!(
        mine.token_secret.as_deref(),
        Some(format!("{server}-token").as_str())
    );
    let own = token_of(&secrets.get(&format!("{server}-token")).await.unwrap());
    let old = token_of(&secrets.get("tok-connect-token").await.unwrap());
    let endpoint_servers = || async {
        let mut names: Vec<String> = live_pods(
            &world.client,
            &ns.name,
            "sparkconnect.dev/cluster=tok,sparkconnect.dev/role=endpoint",
        )
        .await
        .into_iter()
        .map(|p| p.name_any())
        .collect();
        names.sort();
        names
    };
    let before = endpoint_servers().await;
    assert_eq!(before.len(), 2, "the shared server and its standby");

    secrets
        .delete("tok-connect-token", &DeleteParams::default())
        .await
        .unwrap();
    wait_until(
        Duration::from_secs(120),
        "the endpoint rolled to a new token",
        || async {
            let Ok(Some(secret)) = secrets.get_opt("tok-connect-token").await else {
                return false;
            };
            let now = endpoint_servers().await;
            token_of(&secret) != old
                && now.len() == 2
                && now.iter().all(|n| !before.contains(n))
                && clusters
                    .get("tok")
                    .await
                    .ok()
                    .and_then(|c| c.status)
                    .is_some_and(|s| s.servers.shared == 1)
        },
    )
    .await;
    let new = token_of(&secrets.get("tok-connect-token").await.unwrap());
    let ip = services
        .get("tok")
        .await
        .unwrap()
        .spec
        .unwrap()
        .cluster_ip
        .unwrap();
    let shared = format!("{ip}:15002");
    wait_until(
        Duration::from_secs(60),
        "the endpoint answering the new token",
        || async { probe(&world, &shared, &new) },
    )
    .await;
    assert!(!probe(&world, &shared, &old), "the old token is refused");
    // The claimed pool server kept its own token and still answers it.
    let pod_ip = support::pod_ip(&world.client, &ns.name, &server).await;
    assert_eq!(phase(&claims, "mine").await, Some(ClaimPhase::Bound));
    assert!(probe(&world, &format!("{pod_ip}:15002"), &own));
    assert!(
        !probe(&world, &format!("{pod_ip}:15002"), &new),
        "claims never hold the cluster token"
    );
    assert_pool_consistent(&world, &ns.name, "tok", SETTLE).await;
}

#[tokio::test]
async fn a_cluster_deleted_under_its_claims_and_owned_objects_edited() {
    let world = World::connect().await;
    let ns = world.namespace("e2e-fault-delete").await;
    let clusters: Api<SparkConnectCluster> = Api::namespaced(world.client.clone(), &ns.name);
    let claims: Api<SparkConnectClaim> = Api::namespaced(world.client.clone(), &ns.name);
    create_pool(
        &clusters,
        "gone",
        fake_spec(2, 20, 100),
        2,
        Duration::from_secs(120),
    )
    .await;
    let names = vec!["a".to_string(), "b".to_string()];
    make_claims(&claims, "gone", &names).await;
    for name in &names {
        wait_phase(&claims, name, ClaimPhase::Bound, Duration::from_secs(60)).await;
    }
    // An owned EndpointSlice pointed elsewhere by hand is put back.
    let server = bound_server(&claims, "a").await;
    let slices: Api<EndpointSlice> = Api::namespaced(world.client.clone(), &ns.name);
    // An address in the world's pod network that no pod has (written into the slice, never dialled).
    let elsewhere = sco_e2e::net::pod_ip(250);
    let steer = json!({"endpoints": [{"addresses": [&elsewhere], "conditions": {"ready": true}}]});
    slices
        .patch(&server, &PatchParams::default(), &Patch::Merge(&steer))
        .await
        .unwrap();
    wait_until(Duration::from_secs(60), "the slice put back", || async {
        slices.get(&server).await.ok().is_some_and(|s| {
            s.endpoints
                .unwrap_or_default()
                .iter()
                .all(|e| !e.addresses.contains(&elsewhere))
        })
    })
    .await;
    assert_pool_consistent(&world, &ns.name, "gone", SETTLE).await;

    clusters
        .delete("gone", &DeleteParams::default())
        .await
        .unwrap();
    for name in &names {
        wait_phase(&claims, name, ClaimPhase::Lost, Duration::from_secs(60)).await;
    }
    wait_until(
        Duration::from_secs(120),
        "servers and their series gone",
        || async {
            live_pods(&world.client, &ns.name, "sparkconnect.dev/cluster=gone")
                .await
                .is_empty()
                && !world
                    .metrics()
                    .await
                    .lines()
                    .any(|l| l.contains(&format!("namespace=\"{}\"", ns.name)))
        },
    )
    .await;
    let reason = claims.get("a").await.unwrap().status.unwrap().conditions[0]
        .reason
        .clone();
    assert_eq!(reason, "ClusterDeleted");
}
