//! Services and their endpoints: one headless Service per server, one shared Service per
//! cluster. The Services select nothing: the operator writes their EndpointSlices from the pods
//! it made itself, so a pod that copies the labels never receives a server's traffic.

use k8s_openapi::api::core::v1::Service;
use k8s_openapi::api::discovery::v1::EndpointSlice;
use serde_json::json;

use super::labels::{
    BLOCK_MANAGER_PORT, DRIVER_PORT, FIELD_MANAGER, UI_PORT, cluster_labels, server_labels,
};
use crate::error::Error;
use crate::validate::ValidCluster;

/// Label that ties an EndpointSlice to its Service.
pub const SERVICE_NAME_LABEL: &str = "kubernetes.io/service-name";
/// Label that tells the EndpointSlice controller to leave a slice alone.
pub const SLICE_MANAGER_LABEL: &str = "endpointslice.kubernetes.io/managed-by";

/// Fields the operator's Services must never have: a selector would let any pod with
/// matching labels receive a server's traffic.
pub const MUST_STAY_ABSENT: &[&str] = &["/spec/selector"];

/// A server pod behind a Service.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Backend {
    /// Pod name.
    pub pod: String,
    /// Pod UID.
    pub uid: String,
    /// Pod IP.
    pub ip: String,
}

fn server_ports(v: &ValidCluster) -> serde_json::Value {
    json!([
        {"name": "connect", "port": v.cluster.spec.server.port, "protocol": "TCP"},
        {"name": "driver", "port": DRIVER_PORT, "protocol": "TCP"},
        {"name": "blockmanager", "port": BLOCK_MANAGER_PORT, "protocol": "TCP"},
        {"name": "ui", "port": UI_PORT, "protocol": "TCP"}
    ])
}

/// The headless Service that gives server `server` a stable DNS name for clients and executors.
pub fn server_service(v: &ValidCluster, server: &str) -> Result<Service, Error> {
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
            "ports": server_ports(v)
        }
    }))?)
}

/// The cluster's own Service `<name>`; its endpoints are the shared servers.
pub fn shared_service(v: &ValidCluster) -> Result<Service, Error> {
    let port = v.cluster.spec.server.port;
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
            "ports": [{"name": "connect", "port": port, "targetPort": port, "protocol": "TCP"}]
        }
    }))?)
}

/// The EndpointSlice of Service `service` (named like it), listing `backends` as ready.
pub fn endpoint_slice(
    v: &ValidCluster,
    service: &str,
    shared: bool,
    backends: &[Backend],
) -> Result<EndpointSlice, Error> {
    let mut labels = if shared {
        cluster_labels(v.name)
    } else {
        server_labels(v.name, service)
    };
    labels.insert(SERVICE_NAME_LABEL.into(), service.into());
    labels.insert(SLICE_MANAGER_LABEL.into(), FIELD_MANAGER.into());
    let ports = if shared {
        json!([{"name": "connect", "port": v.cluster.spec.server.port, "protocol": "TCP"}])
    } else {
        server_ports(v)
    };
    let endpoints: Vec<serde_json::Value> = backends
        .iter()
        .map(|b| {
            json!({
                "addresses": [b.ip],
                "conditions": {"ready": true},
                "targetRef": {"kind": "Pod", "namespace": v.namespace, "name": b.pod, "uid": b.uid}
            })
        })
        .collect();
    Ok(serde_json::from_value(json!({
        "apiVersion": "discovery.k8s.io/v1",
        "kind": "EndpointSlice",
        "metadata": {
            "name": service,
            "namespace": v.namespace,
            "labels": labels,
            "ownerReferences": [v.owner],
        },
        "addressType": "IPv4",
        "ports": ports,
        "endpoints": endpoints
    }))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::cluster;
    use crate::validate::validate;

    #[test]
    fn services_select_nothing_so_copied_labels_get_no_traffic() {
        let c = cluster();
        let v = validate(&c).unwrap();
        let svc = server_service(&v, "analytics-abcde").unwrap();
        let spec = svc.spec.unwrap();
        assert_eq!(spec.cluster_ip.as_deref(), Some("None"));
        assert_eq!(spec.publish_not_ready_addresses, Some(true));
        assert!(spec.selector.is_none());
        let names: Vec<_> = spec
            .ports
            .unwrap()
            .into_iter()
            .filter_map(|p| p.name)
            .collect();
        assert_eq!(names, ["connect", "driver", "blockmanager", "ui"]);
        assert!(shared_service(&v).unwrap().spec.unwrap().selector.is_none());
    }

    #[test]
    fn the_slice_lists_exactly_the_given_servers_for_its_service() {
        let c = cluster();
        let v = validate(&c).unwrap();
        let backends = [Backend {
            pod: "analytics-abcde".into(),
            uid: "u1".into(),
            ip: "10.244.0.9".into(),
        }];
        let slice = endpoint_slice(&v, "analytics", true, &backends).unwrap();
        let labels = slice.metadata.labels.unwrap();
        assert_eq!(labels[SERVICE_NAME_LABEL], "analytics");
        assert_eq!(labels[SLICE_MANAGER_LABEL], FIELD_MANAGER);
        let endpoints = slice.endpoints.unwrap_or_default();
        assert_eq!(endpoints.len(), 1);
        assert_eq!(endpoints[0].addresses, ["10.244.0.9"]);
        assert_eq!(slice.ports.unwrap()[0].port, Some(15002));
        assert!(
            endpoint_slice(&v, "analytics", true, &[])
                .unwrap()
                .endpoints
                .unwrap_or_default()
                .is_empty()
        );
    }
}
