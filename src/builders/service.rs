//! Services and their endpoints: one headless Service per server, one shared Service per
//! cluster. The Services select nothing: the operator writes their EndpointSlices from the pods
//! it made itself, so a pod that copies the labels never receives a server's traffic.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{ObjectReference, Service, ServicePort, ServiceSpec};
use k8s_openapi::api::discovery::v1::{Endpoint, EndpointConditions, EndpointPort, EndpointSlice};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use k8s_openapi::apimachinery::pkg::util::intstr::IntOrString;

use super::labels::{
    BLOCK_MANAGER_PORT, DRIVER_PORT, FIELD_MANAGER, UI_PORT, cluster_labels, server_labels,
};
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

/// The ports of a server: Spark Connect, the driver and block manager, the UI.
fn server_ports(v: &ValidCluster) -> [(&'static str, i32); 4] {
    [
        ("connect", v.cluster.spec.server.port),
        ("driver", DRIVER_PORT),
        ("blockmanager", BLOCK_MANAGER_PORT),
        ("ui", UI_PORT),
    ]
}

fn service_port((name, port): (&str, i32)) -> ServicePort {
    ServicePort {
        name: Some(name.into()),
        port,
        protocol: Some("TCP".into()),
        ..ServicePort::default()
    }
}

fn slice_port((name, port): (&str, i32)) -> EndpointPort {
    EndpointPort {
        name: Some(name.into()),
        port: Some(port),
        protocol: Some("TCP".into()),
        ..EndpointPort::default()
    }
}

fn metadata(v: &ValidCluster, name: &str, labels: BTreeMap<String, String>) -> ObjectMeta {
    ObjectMeta {
        name: Some(name.into()),
        namespace: Some(v.namespace.into()),
        labels: Some(labels),
        owner_references: Some(vec![v.owner.clone()]),
        ..ObjectMeta::default()
    }
}

/// The headless Service that gives server `server` a stable DNS name for clients and executors.
pub fn server_service(v: &ValidCluster, server: &str) -> Service {
    Service {
        metadata: metadata(v, server, server_labels(v.name, server)),
        spec: Some(ServiceSpec {
            cluster_ip: Some("None".into()),
            publish_not_ready_addresses: Some(true),
            ports: Some(server_ports(v).map(service_port).into()),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// The cluster's own Service `<name>`; its endpoints are the shared servers.
pub fn shared_service(v: &ValidCluster) -> Service {
    let port = v.cluster.spec.server.port;
    Service {
        metadata: metadata(v, v.name, cluster_labels(v.name)),
        spec: Some(ServiceSpec {
            type_: Some("ClusterIP".into()),
            ports: Some(vec![ServicePort {
                target_port: Some(IntOrString::Int(port)),
                ..service_port(("connect", port))
            }]),
            ..ServiceSpec::default()
        }),
        ..Service::default()
    }
}

/// The EndpointSlice of Service `service` (named like it), listing `backends` as ready.
pub fn endpoint_slice(
    v: &ValidCluster,
    service: &str,
    shared: bool,
    backends: &[Backend],
) -> EndpointSlice {
    let mut labels = if shared {
        cluster_labels(v.name)
    } else {
        server_labels(v.name, service)
    };
    labels.insert(SERVICE_NAME_LABEL.into(), service.into());
    labels.insert(SLICE_MANAGER_LABEL.into(), FIELD_MANAGER.into());
    let ports = if shared {
        vec![slice_port(("connect", v.cluster.spec.server.port))]
    } else {
        server_ports(v).map(slice_port).into()
    };
    let endpoints: Vec<Endpoint> = backends
        .iter()
        .map(|b| Endpoint {
            addresses: vec![b.ip.clone()],
            conditions: Some(EndpointConditions {
                ready: Some(true),
                ..EndpointConditions::default()
            }),
            target_ref: Some(ObjectReference {
                kind: Some("Pod".into()),
                namespace: Some(v.namespace.into()),
                name: Some(b.pod.clone()),
                uid: Some(b.uid.clone()),
                ..ObjectReference::default()
            }),
            ..Endpoint::default()
        })
        .collect();
    EndpointSlice {
        metadata: metadata(v, service, labels),
        address_type: "IPv4".into(),
        ports: Some(ports),
        endpoints: Some(endpoints),
    }
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
        let svc = server_service(&v, "analytics-abcde");
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
        assert!(shared_service(&v).spec.unwrap().selector.is_none());
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
        let slice = endpoint_slice(&v, "analytics", true, &backends);
        let labels = slice.metadata.labels.unwrap();
        assert_eq!(labels[SERVICE_NAME_LABEL], "analytics");
        assert_eq!(labels[SLICE_MANAGER_LABEL], FIELD_MANAGER);
        let endpoints = slice.endpoints.unwrap_or_default();
        assert_eq!(endpoints.len(), 1);
        assert_eq!(endpoints[0].addresses, ["10.244.0.9"]);
        assert_eq!(slice.ports.unwrap()[0].port, Some(15002));
        assert!(
            endpoint_slice(&v, "analytics", true, &[])
                .endpoints
                .unwrap_or_default()
                .is_empty()
        );
    }
}
