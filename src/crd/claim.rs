//! The `SparkConnectClaim` custom resource: one user's request for a dedicated server.

use k8s_openapi::apimachinery::pkg::apis::meta::v1::{Condition, Time};
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{DNS_1035_LABEL, list_map_by_type};
use crate::duration::CLAIM_TTL;

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
        validation = Rule::new(format!("self == '' || self.matches('{DNS_1035_LABEL}')")).message(
            "cluster must be the name of a SparkConnectCluster: a DNS-1035 label of at most 40 characters"
        ),
        validation = Rule::new("self == oldSelf").message("cluster cannot be changed; create a new claim")
    )]
    #[schemars(length(max = 40))]
    pub cluster: String,
    /// The user the server is stamped with (at most 253 printable characters).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    #[x_kube(validation = Rule::new("!self.matches('[\\x00-\\x1f\\x7f]')").message(
        "user must not contain control characters"
    ))]
    pub user: Option<String>,
    /// The claim expires this long after it is bound (Go duration, e.g. 8h; at most 8760h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 28))]
    #[x_kube(validation = Rule::new(CLAIM_TTL.cel_rule()).message(CLAIM_TTL.cel_message().as_str()))]
    pub ttl: Option<String>,
}

/// Reason of the `Bound` condition of a gateway claim refused because its cluster's
/// `gateway.maxDedicatedServers` is reached.
pub const DEDICATED_QUOTA_REACHED: &str = "DedicatedQuotaReached";

/// Where a claim is in its life. Lost, Expired and Failed are final.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum ClaimPhase {
    /// Waiting for a server.
    #[default]
    Pending,
    /// Bound to a server.
    Bound,
    /// Its server or cluster is gone.
    Lost,
    /// Its ttl ran out.
    Expired,
    /// It waited too long, too many waited, or it cannot be served.
    Failed,
}

impl ClaimPhase {
    /// Whether the claim will never change again.
    pub fn is_final(self) -> bool {
        matches!(self, Self::Lost | Self::Expired | Self::Failed)
    }
}

/// Observed state of a `SparkConnectClaim`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SparkConnectClaimStatus {
    /// Pending, Bound, Lost, Expired or Failed.
    #[serde(default)]
    pub phase: ClaimPhase,
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
    /// Milliseconds from when the operator first saw the claim to its binding.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub wait_millis: Option<i64>,
    /// Bound.
    #[serde(default)]
    #[schemars(schema_with = "list_map_by_type")]
    pub conditions: Vec<Condition>,
}
