//! Custom resource definitions and their schema helpers.

pub mod claim;
pub mod cluster;

pub use claim::{SparkConnectClaim, SparkConnectClaimSpec, SparkConnectClaimStatus};
pub use cluster::*;

use kube::CustomResourceExt;
use schemars::{Schema, SchemaGenerator, json_schema};

/// API group of every resource of this operator.
pub const GROUP: &str = "sparkconnect.dev";

/// Every CRD as one multi-document YAML stream, in a stable order.
pub fn crds_yaml() -> Result<String, serde_yaml::Error> {
    let mut out = String::new();
    for crd in [SparkConnectCluster::crd(), SparkConnectClaim::crd()] {
        out.push_str("---\n");
        out.push_str(&serde_yaml::to_string(&crd)?);
    }
    Ok(out)
}

/// An object whose fields the apiserver keeps as given (parsed by the operator).
fn preserve_unknown_object(_: &mut SchemaGenerator) -> Schema {
    json_schema!({"type": "object", "x-kubernetes-preserve-unknown-fields": true})
}

/// A list of conditions merged by `type` (server-side apply list-map).
fn list_map_by_type(generator: &mut SchemaGenerator) -> Schema {
    let mut schema =
        generator.subschema_for::<Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>>();
    schema.insert("x-kubernetes-list-type".into(), "map".into());
    schema.insert(
        "x-kubernetes-list-map-keys".into(),
        serde_json::json!(["type"]),
    );
    schema
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::cluster;

    fn with(patch: serde_json::Value) -> SparkConnectCluster {
        let mut value = serde_json::to_value(cluster()).unwrap();
        crate::builders::merge::merge(&mut value, &patch);
        serde_json::from_value(value).unwrap()
    }

    fn refused(c: &SparkConnectCluster) -> String {
        c.validate_cel()
            .expect_err("the rules must refuse this")
            .to_string()
    }

    #[test]
    fn the_example_passes_every_rule() {
        cluster().validate_cel().unwrap();
    }

    #[test]
    fn pool_bounds_are_ordered() {
        let message = refused(&with(
            serde_json::json!({"spec": {"hotPool": {"idle": 5, "max": 2}}}),
        ));
        assert!(
            message.contains("hotPool must satisfy min <= idle <= max"),
            "{message}"
        );
        assert!(
            refused(&with(
                serde_json::json!({"spec": {"hotPool": {"min": 3, "idle": 1}}})
            ))
            .contains("min <= idle")
        );
    }

    #[test]
    fn memory_must_be_a_sane_quantity() {
        let bad =
            with(serde_json::json!({"spec": {"executors": {"resources": {"memory": "lots"}}}}));
        assert!(refused(&bad).contains("memory must be a quantity"));
        let small =
            with(serde_json::json!({"spec": {"server": {"resources": {"memory": "100Mi"}}}}));
        assert!(refused(&small).contains("at least 512Mi"));
    }

    #[test]
    fn durations_ports_names_and_dynamic_allocation() {
        assert!(
            refused(&with(
                serde_json::json!({"spec": {"probe": {"timeout": "3 seconds"}}})
            ))
            .contains("duration")
        );
        assert!(
            refused(&with(
                serde_json::json!({"spec": {"server": {"port": 4040}}})
            ))
            .contains("port must differ")
        );
        let dynamic = serde_json::json!({"spec": {"executors": {"dynamicAllocation": {"minExecutors": 5, "maxExecutors": 1}}}});
        assert!(refused(&with(dynamic)).contains("minExecutors must not exceed"));
        let mut long = cluster();
        long.metadata.name = Some("x".repeat(41));
        assert!(refused(&long).contains("at most 40 characters"));
    }

    #[test]
    fn auth_mode_is_immutable() {
        let old = cluster();
        let new = with(serde_json::json!({"spec": {"auth": {"mode": "Token"}}}));
        let message = new.validate_cel_update(&old).unwrap_err().to_string();
        assert!(message.contains("auth.mode cannot be changed"), "{message}");
        old.validate_cel_update(&old).unwrap();
    }

    #[test]
    fn claim_cluster_is_required_and_immutable() {
        let claim = |cluster: &str| {
            SparkConnectClaim::new(
                "c",
                SparkConnectClaimSpec {
                    cluster: cluster.into(),
                    user: None,
                    ttl: None,
                },
            )
        };
        assert!(
            claim("")
                .validate_cel()
                .unwrap_err()
                .to_string()
                .contains("cluster must name")
        );
        assert!(
            claim("b")
                .validate_cel_update(&claim("a"))
                .unwrap_err()
                .to_string()
                .contains("cannot be changed")
        );
        let mut ttl = claim("a");
        ttl.spec.ttl = Some("forever".into());
        assert!(
            ttl.validate_cel()
                .unwrap_err()
                .to_string()
                .contains("ttl must be a duration")
        );
    }
}
