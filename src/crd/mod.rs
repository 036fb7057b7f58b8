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
    let mut schema = generator.subschema_for::<Vec<k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition>>();
    schema.insert("x-kubernetes-list-type".into(), "map".into());
    schema.insert("x-kubernetes-list-map-keys".into(), serde_json::json!(["type"]));
    schema
}
