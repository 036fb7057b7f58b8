//! The node agent: the world's kubelet, CNI and container runtime in one. It registers the
//! node and keeps its Lease and Ready condition fresh, binds pending pods to itself (there is no
//! scheduler) and runs each pod as real processes (see [`pod`]).

pub mod images;
pub mod pod;
pub mod volumes;

use std::collections::HashMap;
use std::sync::Arc;
use std::time::Duration;

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::{Node as NodeObject, Pod};
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams};
use kube::runtime::events::Reporter;
use kube::runtime::watcher;
use kube::{Client, ResourceExt};
use serde_json::json;
use spark_connect_operator::controller::recorders::Recorders;
use tokio::sync::watch;

use crate::paths::State;
use sco_e2e::net::{GATEWAY, NODE_NAME};

/// Runs the agent until an error ends it.
pub async fn run(client: Client, state: State) -> anyhow::Result<()> {
    register(&client).await?;
    let heartbeat_client = client.clone();
    tokio::spawn(async move {
        loop {
            if let Err(e) = heartbeat(&heartbeat_client).await {
                tracing::warn!(error = %e, "node heartbeat failed");
            }
            tokio::time::sleep(Duration::from_secs(10)).await;
        }
    });
    let reporter = Reporter {
        controller: "sco-world-agent".into(),
        instance: Some(NODE_NAME.into()),
    };
    let node = Arc::new(pod::Node {
        recorders: Recorders::new(client.clone(), reporter, std::time::Instant::now()),
        client: client.clone(),
        state,
        ips: std::sync::Mutex::new((2..65000).collect()),
    });
    let mut running: HashMap<String, watch::Sender<bool>> = HashMap::new();
    let pods: Api<Pod> = Api::all(client.clone());
    let mut events = watcher(pods, watcher::Config::default()).boxed();
    while let Some(event) = events.next().await {
        match event {
            Ok(watcher::Event::Apply(pod) | watcher::Event::InitApply(pod)) => {
                handle(&node, &mut running, pod).await
            }
            Ok(watcher::Event::Delete(pod)) => {
                if let Some(stop) = running.remove(&pod.uid().unwrap_or_default()) {
                    let _ = stop.send(true);
                }
            }
            Ok(_) => {}
            Err(e) => tracing::warn!(error = %e, "pod watch error"),
        }
        running.retain(|_, stop| !stop.is_closed());
    }
    anyhow::bail!("pod watch ended")
}

async fn handle(
    node: &Arc<pod::Node>,
    running: &mut HashMap<String, watch::Sender<bool>>,
    pod: Pod,
) {
    let uid = pod.uid().unwrap_or_default();
    let node_name = pod.spec.as_ref().and_then(|s| s.node_name.clone());
    let phase = pod
        .status
        .as_ref()
        .and_then(|s| s.phase.clone())
        .unwrap_or_default();
    let api: Api<Pod> = Api::namespaced(node.client.clone(), &pod.namespace().unwrap_or_default());
    if pod.metadata.deletion_timestamp.is_some() {
        match running.get(&uid) {
            Some(stop) => {
                let _ = stop.send(true);
            }
            None if node_name.as_deref() == Some(NODE_NAME) || node_name.is_none() => {
                let _ = api
                    .delete(
                        &pod.name_any(),
                        &DeleteParams {
                            grace_period_seconds: Some(0),
                            ..DeleteParams::default()
                        },
                    )
                    .await;
            }
            None => {}
        }
        return;
    }
    match node_name.as_deref() {
        None => {
            let binding = json!({
                "apiVersion": "v1", "kind": "Binding",
                "metadata": {"name": pod.name_any(), "namespace": pod.namespace()},
                "target": {"apiVersion": "v1", "kind": "Node", "name": NODE_NAME}
            });
            let name = pod.name_any();
            let params = PostParams::default();
            let bound = api.create_subresource::<serde_json::Value, serde_json::Value>(
                "binding", &name, &params, &binding,
            );
            if let Err(e) = bound.await {
                tracing::debug!(pod = %pod.name_any(), error = %e, "binding failed");
            }
        }
        Some(NODE_NAME)
            if !running.contains_key(&uid) && phase != "Succeeded" && phase != "Failed" =>
        {
            let (stop, stopped) = watch::channel(false);
            running.insert(uid, stop);
            tokio::spawn(pod::run(node.clone(), pod, stopped));
        }
        _ => {}
    }
}

async fn register(client: &Client) -> anyhow::Result<()> {
    let nodes: Api<NodeObject> = Api::all(client.clone());
    let node: NodeObject = serde_json::from_value(json!({
        "apiVersion": "v1", "kind": "Node",
        "metadata": {"name": NODE_NAME, "labels": {"kubernetes.io/hostname": NODE_NAME, "kubernetes.io/os": "linux"}}
    }))?;
    nodes
        .patch(
            NODE_NAME,
            &PatchParams::apply("sco-world-agent").force(),
            &Patch::Apply(&node),
        )
        .await?;
    heartbeat(client).await
}

async fn heartbeat(client: &Client) -> anyhow::Result<()> {
    let now = Timestamp::now().to_string();
    let nodes: Api<NodeObject> = Api::all(client.clone());
    let status = json!({"status": {
        "addresses": [{"type": "InternalIP", "address": GATEWAY}, {"type": "Hostname", "address": NODE_NAME}],
        "capacity": {"cpu": "64", "memory": "256Gi", "pods": "1000"},
        "allocatable": {"cpu": "64", "memory": "256Gi", "pods": "1000"},
        "conditions": [{"type": "Ready", "status": "True", "reason": "KubeletReady", "message": "sco-world agent is posting ready status",
            "lastHeartbeatTime": now, "lastTransitionTime": now}]
    }});
    nodes
        .patch_status(
            NODE_NAME,
            &PatchParams::default(),
            &Patch::Strategic(&status),
        )
        .await?;
    let leases: Api<Lease> = Api::namespaced(client.clone(), "kube-node-lease");
    let renew = Timestamp::now()
        .strftime("%Y-%m-%dT%H:%M:%S%.6fZ")
        .to_string();
    let lease: Lease = serde_json::from_value(json!({
        "apiVersion": "coordination.k8s.io/v1", "kind": "Lease",
        "metadata": {"name": NODE_NAME, "namespace": "kube-node-lease"},
        "spec": {"holderIdentity": NODE_NAME, "leaseDurationSeconds": 40, "renewTime": renew}
    }))?;
    leases
        .patch(
            NODE_NAME,
            &PatchParams::apply("sco-world-agent").force(),
            &Patch::Apply(&lease),
        )
        .await?;
    Ok(())
}
