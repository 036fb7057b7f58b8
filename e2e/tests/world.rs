//! The local world itself: its network is sealed, Services and DNS work inside it, and pods
//! with images it cannot run stay Pending with a reason.

mod support;

use std::time::{Duration, Instant};

use k8s_openapi::api::core::v1::{Event, Pod};
use kube::api::{Api, ListParams, PostParams};
use support::{World, succeeded, wait_until};

#[tokio::test]
async fn network_is_sealed_and_cluster_addresses_work_inside() {
    let world = World::connect().await;
    // Inside: the kubernetes Service by DNS name and ClusterIP answers.
    let out = world.exec(&[
        "curl",
        "-sk",
        "-m",
        "5",
        "https://kubernetes.default.svc.cluster.local/healthz",
    ]);
    assert!(succeeded(&out));
    assert_eq!(String::from_utf8_lossy(&out.stdout), "ok");
    // Inside: an address outside the world fails at once (no default route).
    let started = Instant::now();
    let out = world.exec(&["curl", "-s", "-m", "5", "http://192.0.2.1/"]);
    assert!(!out.status.success(), "a dial out of the world must fail");
    assert!(
        started.elapsed() < Duration::from_secs(3),
        "it must fail at once, not time out"
    );
    let routes = world.exec(&["ip", "route"]);
    assert!(
        !String::from_utf8_lossy(&routes.stdout).contains("default"),
        "the world has no default route"
    );
    // Host: no address, route or rule was added while the world runs.
    let before = std::fs::read_to_string(world.state.join("../host-net.before"))
        .expect("host-net.before from e2e/run.sh");
    let now = String::from_utf8_lossy(
        &std::process::Command::new("bash")
            .args(["-c", "ip -o addr; ip route; ip rule"])
            .output()
            .expect("ip")
            .stdout,
    )
    .into_owned();
    assert_eq!(
        before, now,
        "the host's network changed while the world runs"
    );
}

#[tokio::test]
async fn a_pod_with_an_unknown_image_stays_pending_with_a_reason() {
    let world = World::connect().await;
    let ns = world.namespace("e2e-image").await;
    let pods: Api<Pod> = Api::namespaced(world.client.clone(), &ns.name);
    let pod: Pod = serde_json::from_value(serde_json::json!({
        "metadata": {"name": "nope"},
        "spec": {"containers": [{"name": "c", "image": "example.invalid/nope:1"}]}
    }))
    .unwrap();
    pods.create(&PostParams::default(), &pod).await.unwrap();
    wait_until(Duration::from_secs(30), "ErrImagePull", || async {
        pods.get("nope")
            .await
            .ok()
            .and_then(|p| p.status)
            .and_then(|s| s.container_statuses)
            .is_some_and(|c| {
                c.iter().any(|c| {
                    c.state
                        .as_ref()
                        .and_then(|s| s.waiting.as_ref())
                        .and_then(|w| w.reason.as_deref())
                        == Some("ErrImagePull")
                })
            })
    })
    .await;
    let events: Api<Event> = Api::namespaced(world.client.clone(), &ns.name);
    let listed = events.list(&ListParams::default()).await.unwrap();
    assert!(listed.items.iter().any(|e| {
        e.message
            .as_deref()
            .unwrap_or_default()
            .contains("not available")
    }));
    assert_eq!(
        pods.get("nope")
            .await
            .unwrap()
            .status
            .unwrap()
            .phase
            .as_deref(),
        Some("Pending")
    );
}

#[tokio::test]
async fn a_killed_launcher_leaves_no_process_behind() {
    let world = World::connect().await;
    let state = world.state.with_file_name("world-kill-test");
    let _ = std::fs::remove_dir_all(&state);
    let mut launcher = std::process::Command::new(World::world_bin())
        .arg("--state")
        .arg(&state)
        .arg("up")
        .stdout(std::process::Stdio::null())
        .stderr(std::process::Stdio::null())
        .spawn()
        .expect("start a second world");
    wait_until(Duration::from_secs(180), "the second world", || async {
        state.join("ready").exists()
    })
    .await;
    let marker = state.to_string_lossy().into_owned();
    let processes_of_world = || {
        std::fs::read_dir("/proc")
            .map(|entries| {
                entries
                    .flatten()
                    .filter(|e| {
                        e.file_name()
                            .to_string_lossy()
                            .chars()
                            .all(|c| c.is_ascii_digit())
                    })
                    .filter(|e| {
                        std::fs::read(e.path().join("cmdline"))
                            .map(|c| String::from_utf8_lossy(&c).contains(&marker))
                            .unwrap_or(false)
                    })
                    .count()
            })
            .unwrap_or(0)
    };
    assert!(
        processes_of_world() >= 3,
        "the world runs its control plane"
    );
    launcher.kill().expect("SIGKILL the launcher");
    let _ = launcher.wait();
    wait_until(
        Duration::from_secs(30),
        "every process of the killed world to end",
        || async { processes_of_world() == 0 },
    )
    .await;
    let _ = std::fs::remove_dir_all(&state);
}
