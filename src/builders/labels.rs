//! Names, labels and annotations shared by everything the operator creates.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;

use crate::crd::SparkConnectCluster;

/// Field manager of every server-side apply.
pub const FIELD_MANAGER: &str = "spark-connect-operator";
/// Label with the owning cluster's name.
pub const CLUSTER_LABEL: &str = "sparkconnect.dev/cluster";
/// Label with the server's own name (pod and headless Service).
pub const SERVER_LABEL: &str = "sparkconnect.dev/server";
/// Label with the server's pool state.
pub const STATE_LABEL: &str = "sparkconnect.dev/state";
/// Label with the hash of the spec a server was built from.
pub const SPEC_HASH_LABEL: &str = "sparkconnect.dev/spec-hash";
/// Label with the server's role: endpoint (shared endpoint and its standby) or pool.
pub const ROLE_LABEL: &str = "sparkconnect.dev/role";
/// Label on every claim the gateway makes: a hash of the user it is for. These claims are under
/// their cluster's `gateway.maxDedicatedServers`.
pub const GATEWAY_USER_LABEL: &str = "sparkconnect.dev/gateway-user";
/// Annotation with the claim a server is bound to.
pub const CLAIM_ANNOTATION: &str = "sparkconnect.dev/claim";
/// Annotation with the uid of the claim a server is bound to (a claim deleted and created
/// again under its name is another claim, and never gets its namesake's server).
pub const CLAIM_UID_ANNOTATION: &str = "sparkconnect.dev/claim-uid";
/// Annotation with the user of the claim a server is bound to.
pub const USER_ANNOTATION: &str = "sparkconnect.dev/user";
/// Key of the client token in the auth Secret.
pub const TOKEN_KEY: &str = "token";
/// Fixed Spark driver RPC port.
pub const DRIVER_PORT: i32 = 7078;
/// Fixed Spark block manager port.
pub const BLOCK_MANAGER_PORT: i32 = 7079;
/// Spark UI port.
pub const UI_PORT: i32 = 4040;

/// The pool state of a server, as written to its `sparkconnect.dev/state` label.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ServerState {
    /// Created, not yet healthy.
    Starting,
    /// Healthy and free.
    Idle,
    /// Serving the cluster's own Service.
    Shared,
    /// Bound to a claim.
    Claimed,
    /// Failing its health checks.
    Unhealthy,
    /// Being removed; never used again.
    Retiring,
}

impl ServerState {
    /// Every state.
    pub const ALL: [Self; 6] = [
        Self::Starting,
        Self::Idle,
        Self::Shared,
        Self::Claimed,
        Self::Unhealthy,
        Self::Retiring,
    ];

    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Starting => "starting",
            Self::Idle => "idle",
            Self::Shared => "shared",
            Self::Claimed => "claimed",
            Self::Unhealthy => "unhealthy",
            Self::Retiring => "retiring",
        }
    }

    /// The state a pod's `sparkconnect.dev/state` label gives.
    pub fn of(pod: &Pod) -> Self {
        Self::from_label(
            pod.metadata
                .labels
                .as_ref()
                .and_then(|l| l.get(STATE_LABEL))
                .map(String::as_str),
        )
    }

    /// Parses a label value; unknown values read as Starting.
    pub fn from_label(value: Option<&str>) -> Self {
        match value {
            Some("idle") => Self::Idle,
            Some("shared") => Self::Shared,
            Some("claimed") => Self::Claimed,
            Some("unhealthy") => Self::Unhealthy,
            Some("retiring") => Self::Retiring,
            _ => Self::Starting,
        }
    }
}

/// What a server is for. In token mode the two roles hold different tokens: endpoint servers
/// the cluster's, pool servers their own, so a claimant never holds another server's token.
#[derive(Clone, Copy, Debug, PartialEq, Eq, PartialOrd, Ord, Hash)]
pub enum ServerRole {
    /// Serves (or stands by for) the cluster's shared Service.
    Endpoint,
    /// Waits in the hot pool for a claim.
    Pool,
}

impl ServerRole {
    /// The label value.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Endpoint => "endpoint",
            Self::Pool => "pool",
        }
    }

    /// Parses a label value; anything else is a pool server.
    pub fn from_label(value: Option<&str>) -> Self {
        match value {
            Some("endpoint") => Self::Endpoint,
            _ => Self::Pool,
        }
    }
}

/// Name of a pool server's own token Secret.
pub fn server_token_secret_name(server: &str) -> String {
    format!("{server}-token")
}

/// Labels common to every object of a cluster.
pub fn cluster_labels(cluster: &str) -> BTreeMap<String, String> {
    BTreeMap::from([
        ("app.kubernetes.io/name".into(), "spark-connect".into()),
        ("app.kubernetes.io/instance".into(), cluster.into()),
        ("app.kubernetes.io/managed-by".into(), FIELD_MANAGER.into()),
        (CLUSTER_LABEL.into(), cluster.into()),
    ])
}

/// Labels of one server's pod and Service.
pub fn server_labels(cluster: &str, server: &str) -> BTreeMap<String, String> {
    let mut labels = cluster_labels(cluster);
    labels.insert("app.kubernetes.io/component".into(), "server".into());
    labels.insert(SERVER_LABEL.into(), server.into());
    labels
}

/// Selector of a cluster's server pods, as a label-selector string.
pub fn server_selector(cluster: &str) -> String {
    format!("{CLUSTER_LABEL}={cluster},app.kubernetes.io/component=server")
}

/// ServiceAccount (and Role, RoleBinding) name of a cluster's drivers.
pub fn driver_account_name(cluster: &str) -> String {
    format!("{cluster}-spark")
}

/// ServiceAccount of a cluster's executors: no rights, no mounted token.
pub fn executor_account_name(cluster: &str) -> String {
    format!("{cluster}-spark-executor")
}

/// Name of the generated token Secret, or the user's own.
pub fn token_secret_name(cluster: &SparkConnectCluster) -> String {
    match &cluster.spec.auth.secret_name {
        Some(name) => name.clone(),
        None => format!("{}-connect-token", cluster_name(cluster)),
    }
}

/// The cluster's name (empty for an object without one, which the apiserver never serves).
pub fn cluster_name(cluster: &SparkConnectCluster) -> &str {
    cluster.metadata.name.as_deref().unwrap_or_default()
}

/// The `sc://` endpoint of a Service.
pub fn endpoint(service: &str, namespace: &str, port: i32) -> String {
    format!("sc://{service}.{namespace}.svc.cluster.local:{port}")
}

/// A fresh server name: the cluster name and five random lowercase characters.
pub fn new_server_name(cluster: &str) -> String {
    use rand::Rng;
    const ALPHABET: &[u8] = b"bcdfghjklmnpqrstvwxz2456789";
    let mut rng = rand::rng();
    let suffix: String = (0..5)
        .map(|_| ALPHABET[rng.random_range(0..ALPHABET.len())] as char)
        .collect();
    format!("{cluster}-{suffix}")
}
