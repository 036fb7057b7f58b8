//! Custom resource definitions and their schema helpers.

pub mod claim;
pub mod cluster;
#[cfg(test)]
mod tests;

pub use claim::{
    ClaimPhase, DEDICATED_QUOTA_REACHED, SparkConnectClaim, SparkConnectClaimSpec,
    SparkConnectClaimStatus,
};
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

/// A DNS-1035 label: what Service names must be.
pub const DNS_1035_LABEL: &str = "^[a-z]([-a-z0-9]*[a-z0-9])?$";
/// A DNS-1123 subdomain: what most object names must be.
pub const DNS_1123_SUBDOMAIN: &str =
    "^[a-z0-9]([-a-z0-9]*[a-z0-9])?([.][a-z0-9]([-a-z0-9]*[a-z0-9])?)*$";

/// A pod template overlay: kept as given (the operator parses and checks it), with its metadata
/// typed and bounded so that admission rules can read the labels.
fn pod_template_schema(_: &mut SchemaGenerator) -> Schema {
    let strings = |max_properties: u32, max_length: u32| {
        serde_json::json!({
            "type": "object",
            "maxProperties": max_properties,
            "additionalProperties": {"type": "string", "maxLength": max_length}
        })
    };
    json_schema!({
        "type": "object",
        "x-kubernetes-preserve-unknown-fields": true,
        "properties": {
            "metadata": {
                "type": "object",
                "x-kubernetes-preserve-unknown-fields": true,
                "properties": {
                    "name": {"type": "string", "maxLength": 253},
                    "namespace": {"type": "string", "maxLength": 63},
                    "ownerReferences": {"type": "array", "maxItems": 16, "items": {"type": "object", "x-kubernetes-preserve-unknown-fields": true}},
                    "labels": strings(64, 63),
                    "annotations": strings(64, 4096)
                }
            }
        }
    })
}

/// Spark settings: at most 256 keys of at most 256 characters, values of at most 4,096.
fn spark_conf_schema(_: &mut SchemaGenerator) -> Schema {
    json_schema!({
        "type": "object",
        "maxProperties": 256,
        "additionalProperties": {"type": "string", "maxLength": 4096},
        "x-kubernetes-validations": [{
            "rule": "self.all(k, size(k) <= 256)",
            "message": "sparkConf keys must be at most 256 characters"
        }]
    })
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
