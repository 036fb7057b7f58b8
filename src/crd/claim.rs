//! The `SparkConnectClaim` custom resource: one user's request for a dedicated server.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::list_map_by_type;

/// A request for a dedicated Spark Connect server from a cluster's hot pool.
// clippy reads the repeated `type_ = "string"` of the print columns as duplicated attributes.
#[allow(clippy::duplicated_attributes)]
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "sparkconnect.dev",
    version = "v1alpha1",
    kind = "SparkConnectClaim",
    namespaced,
    shortname = "scclaim",
    category = "spark",
    status = "SparkConnectClaimStatus",
    doc = "A request for a dedicated Spark Connect server from a SparkConnectCluster's hot pool.",
    printcolumn(name = "Cluster", type_ = "string", json_path = ".spec.cluster"),
    printcolumn(name = "Phase", type_ = "string", json_path = ".status.phase"),
    printcolumn(name = "Server", type_ = "string", json_path = ".status.server"),
    printcolumn(
        name = "Age",
        type_ = "date",
        json_path = ".metadata.creationTimestamp"
    ),
    cel
)]
#[serde(rename_all = "camelCase")]
pub struct SparkConnectClaimSpec {
    /// Name of the SparkConnectCluster (same namespace) whose pool serves this claim.
    #[x_kube(
        validation = Rule::new("self != ''").message("cluster must name a SparkConnectCluster"),
        validation = Rule::new("self == oldSelf").message("cluster cannot be changed; create a new claim")
    )]
    pub cluster: String,
    /// The user the server is stamped with.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub user: Option<String>,
    /// The claim expires this long after it is bound (Go duration, e.g. 8h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new("self.matches('^([0-9]+(ms|s|m|h))+$')")
        .message("ttl must be a duration such as 30m or 8h"))]
    pub ttl: Option<String>,
}

/// Observed state of a `SparkConnectClaim`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SparkConnectClaimStatus {
    /// Pending, Bound, Lost, Expired or Failed.
    #[serde(default)]
    pub phase: String,
    /// The bound server (pod and headless Service name).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub server: Option<String>,
    /// `sc://<server>.<namespace>.svc.cluster.local:<port>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Secret with the client token (key `token`) when the cluster uses token auth.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secret: Option<String>,
    /// When the server was bound.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub bound_at: Option<Time>,
    /// Milliseconds from claim creation to binding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_millis: Option<i64>,
    /// Bound.
    #[serde(default)]
    #[schemars(schema_with = "list_map_by_type")]
    pub conditions: Vec<Condition>,
}
