//! Services: one headless Service per server, one shared Service per cluster.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Service;
use serde_json::json;

use super::labels::{
    BLOCK_MANAGER_PORT, CLUSTER_LABEL, DRIVER_PORT, SERVER_LABEL, STATE_LABEL, ServerState,
    UI_PORT, cluster_labels, server_labels,
};
use crate::error::Error;
use crate::validate::ValidCluster;

/// The headless Service that gives server `server` a stable DNS name for clients and executors.
pub fn server_service(v: &ValidCluster, server: &str) -> Result<Service, Error> {
    let selector = BTreeMap::from([(SERVER_LABEL.to_string(), server.to_string())]);
    Ok(serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": server,
            "namespace": v.namespace,
            "labels": server_labels(v.name, server),
            "ownerReferences": [v.owner],
        },
        "spec": {
            "clusterIP": "None",
            "publishNotReadyAddresses": true,
            "selector": selector,
            "ports": [
                {"name": "connect", "port": v.cluster.spec.server.port, "targetPort": v.cluster.spec.server.port},
                {"name": "driver", "port": DRIVER_PORT, "targetPort": DRIVER_PORT},
                {"name": "blockmanager", "port": BLOCK_MANAGER_PORT, "targetPort": BLOCK_MANAGER_PORT},
                {"name": "ui", "port": UI_PORT, "targetPort": UI_PORT}
            ]
        }
    }))?)
}

/// The cluster's own Service `<name>`, selecting the server(s) in state shared.
pub fn shared_service(v: &ValidCluster) -> Result<Service, Error> {
    let selector = BTreeMap::from([
        (CLUSTER_LABEL.to_string(), v.name.to_string()),
        (
            STATE_LABEL.to_string(),
            ServerState::Shared.as_str().to_string(),
        ),
    ]);
    Ok(serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": {
            "name": v.name,
            "namespace": v.namespace,
            "labels": cluster_labels(v.name),
            "ownerReferences": [v.owner],
        },
        "spec": {
            "type": "ClusterIP",
            "selector": selector,
            "ports": [{"name": "connect", "port": v.cluster.spec.server.port, "targetPort": v.cluster.spec.server.port}]
        }
    }))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::cluster;
    use crate::validate::validate;

    #[test]
    fn headless_service_publishes_not_ready_addresses() {
        let c = cluster();
        let svc = server_service(&validate(&c).unwrap(), "analytics-abcde").unwrap();
        let spec = svc.spec.unwrap();
        assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
        assert_eq!(spec.publish_not_ready_addresses, Some(true));
        assert_eq!(spec.selector.unwrap()[SERVER_LABEL], "analytics-abcde");
        let names: Vec<_> = spec
            .ports
            .unwrap()
            .into_iter()
            .filter_map(|p| p.name)
            .collect();
        assert_eq!(names, ["connect", "driver", "blockmanager", "ui"]);
    }

    #[test]
    fn shared_service_selects_shared_servers_only() {
        let c = cluster();
        let svc = shared_service(&validate(&c).unwrap()).unwrap();
        assert_eq!(svc.metadata.name.as_deref(), Some("analytics"));
        let selector = svc.spec.unwrap().selector.unwrap();
        assert_eq!(selector[STATE_LABEL], "shared");
        assert_eq!(selector[CLUSTER_LABEL], "analytics");
    }
}
