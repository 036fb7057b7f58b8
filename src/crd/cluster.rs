//! The `SparkConnectCluster` custom resource: a team's Spark Connect servers and their hot pool.

use std::collections::BTreeMap;

use k8s_openapi::apimachinery::pkg::apis::meta::v1::Condition;
use kube::{CustomResource, KubeSchema};
use schemars::JsonSchema;
use serde::{Deserialize, Serialize};

use super::{DNS_1035_LABEL, list_map_by_type, pod_template_schema, spark_conf_schema};
use crate::duration::{
    CLAIM_TIMEOUT, GATEWAY_IDLE_TIMEOUT, MAX_IDLE_AGE, PROBE_PERIOD, PROBE_TIMEOUT, REFILL_DELAY,
    SCALE_DOWN_DELAY, SCHEDULE_DURATION, STARTUP_DEADLINE, WARMUP_TIMEOUT,
};

/// Spark Connect servers for one team: a shared endpoint plus a pool of pre-warmed servers.
#[derive(CustomResource, KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[kube(
    group = "sparkconnect.dev",
    version = "v1alpha1",
    kind = "SparkConnectCluster",
    namespaced,
    shortname = "scc",
    category = "spark",
    status = "SparkConnectClusterStatus",
    doc = "Spark Connect servers for a team: a shared endpoint and a hot pool of pre-warmed servers.",
    scale(
        spec_replicas_path = ".spec.hotPool.idle",
        status_replicas_path = ".status.servers.idle",
        label_selector_path = ".status.selector"
    ),
    printcolumn(name = "Ready", type_ = "string", json_path = ".status.conditions[?(@.type==\"Ready\")].status"),
    printcolumn(name = "Idle", type_ = "integer", json_path = ".status.servers.idle"),
    printcolumn(name = "Claimed", type_ = "integer", json_path = ".status.servers.claimed"),
    printcolumn(name = "Endpoint", type_ = "string", json_path = ".status.endpoint"),
    printcolumn(name = "Age", type_ = "date", json_path = ".metadata.creationTimestamp"),
    cel,
    validation = Rule::new("size(self.metadata.name) <= 40").message(
        "metadata.name must be at most 40 characters: server, Service and executor pod names are derived from it"
    ),
    validation = Rule::new(format!("self.metadata.name.matches('{DNS_1035_LABEL}')")).message(
        "metadata.name must be a DNS-1035 label (lowercase letters, digits and '-', starting with a letter): it names Services"
    ),
    validation = Rule::new("self.spec.hotPool.maxServers >= self.spec.shared + self.spec.hotPool.idle").message(
        "hotPool.maxServers must be at least shared + hotPool.idle"
    ),
    validation = Rule::new("!has(self.spec.hotPool.schedule) || self.spec.hotPool.schedule.all(w, self.spec.hotPool.maxServers >= self.spec.shared + w.idle)").message(
        "hotPool.maxServers must be at least shared + the idle servers of every hotPool.schedule window"
    ),
)]
#[serde(rename_all = "camelCase")]
pub struct SparkConnectClusterSpec {
    /// Container image with Spark at /opt/spark, e.g. apache/spark:4.1.1-scala2.13-java17-python3-ubuntu.
    #[x_kube(validation = Rule::new("self.trim() != ''").message("image must not be empty"))]
    #[schemars(length(max = 512))]
    pub image: String,
    /// Image pull policy for server and executor pods.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(regex(pattern = "^(Always|IfNotPresent|Never)$"))]
    pub image_pull_policy: Option<String>,
    /// Extra Spark configuration for every server; keys the operator manages are refused.
    #[serde(default, skip_serializing_if = "BTreeMap::is_empty")]
    #[schemars(schema_with = "spark_conf_schema")]
    pub spark_conf: BTreeMap<String, String>,
    /// The driver pod that runs the Connect server.
    #[serde(default)]
    pub server: ServerSpec,
    /// Executors that each server's Spark driver starts.
    #[serde(default)]
    pub executors: ExecutorSpec,
    /// Servers held for the cluster's own Service `<name>` (0 = pool only).
    #[serde(default = "default_shared")]
    #[schemars(range(min = 0, max = 10))]
    pub shared: i32,
    /// The pool of idle, pre-warmed servers handed to claims.
    #[serde(default)]
    pub hot_pool: HotPoolSpec,
    /// How the operator health-checks each server with a Spark Connect Config call.
    #[serde(default)]
    pub probe: ProbeSpec,
    /// Queries each new server runs before it is handed out, so the first user query finds
    /// Spark's parser, code generation, scheduler, executors and Arrow path warm.
    #[serde(default)]
    pub warmup: WarmupSpec,
    /// Client authentication on the Connect port.
    #[serde(default)]
    pub auth: AuthSpec,
    /// How the Spark Connect gateway serves this cluster's users.
    #[serde(default)]
    pub gateway: GatewaySpec,
    /// Settings that widen what server and executor pods may do; guarded by RBAC (see README).
    #[serde(default)]
    pub security: SecuritySpec,
}

/// Opt-ins to privileged pod settings.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
pub struct SecuritySpec {
    /// Let `server.podTemplate`, `sparkConf` and the executor pods the drivers start use
    /// privileged settings (privileged or root containers, added capabilities, host namespaces
    /// and ports, hostPath volumes, seccomp or AppArmor off, another ServiceAccount, the
    /// server's own command line, Secrets or volumes on executors). Setting it needs the RBAC
    /// verb `allow-privileged` on `sparkconnectclusters` when the chart's admission policy is
    /// on.
    #[serde(default)]
    pub allow_privileged: bool,
}

fn default_shared() -> i32 {
    1
}

/// CPU cores and memory for a Spark JVM.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct SparkResources {
    /// Whole CPU cores (spark.driver.cores / spark.executor.cores).
    #[serde(default = "default_cores")]
    #[schemars(range(min = 1, max = 64))]
    pub cores: i32,
    /// JVM heap as a Kubernetes quantity, e.g. 2Gi; the pod asks for this plus Spark's overhead.
    #[serde(default = "default_memory")]
    #[x_kube(
        validation = Rule::new("isQuantity(self)").message("memory must be a quantity such as 2Gi or 512Mi"),
        validation = Rule::new("!isQuantity(self) || quantity(self).compareTo(quantity('512Mi')) >= 0")
            .message("memory must be at least 512Mi"),
        validation = Rule::new("!isQuantity(self) || quantity(self).compareTo(quantity('1Ti')) <= 0")
            .message("memory must be at most 1Ti")
    )]
    pub memory: String,
}

fn default_cores() -> i32 {
    1
}
fn default_memory() -> String {
    "1Gi".into()
}

impl Default for SparkResources {
    fn default() -> Self {
        Self {
            cores: default_cores(),
            memory: default_memory(),
        }
    }
}

/// The Spark Connect server (driver) pod.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ServerSpec {
    /// Driver cores and memory.
    #[serde(default)]
    pub resources: SparkResources,
    /// The Spark Connect gRPC port.
    #[serde(default = "default_port")]
    #[schemars(range(min = 1, max = 65535))]
    #[x_kube(validation = Rule::new("self != 7078 && self != 7079 && self != 4040").message(
        "port must differ from the driver (7078), block manager (7079) and UI (4040) ports"
    ))]
    pub port: i32,
    /// A pod template merged onto the generated server pod: labels, annotations, nodeSelector,
    /// tolerations, affinity, env, volumes, sidecars. Lists of named items merge by name.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(schema_with = "pod_template_schema")]
    #[x_kube(
        validation = Rule::new(RESERVED_LABELS_RULE).message(
            "server.podTemplate.metadata.labels must not set labels the operator owns: sparkconnect.dev/*, app.kubernetes.io/name, instance, component and managed-by"
        ),
        validation = Rule::new("!has(self.metadata) || (!has(self.metadata.name) && !has(self.metadata.namespace) && !has(self.metadata.ownerReferences))").message(
            "server.podTemplate must not set metadata.name, metadata.namespace or metadata.ownerReferences: the operator names and owns every server"
        )
    )]
    pub pod_template: Option<serde_json::Value>,
}

/// Name of the server container in every server pod: a `podTemplate` container of this name
/// amends it.
pub const SERVER_CONTAINER: &str = "spark-connect-server";

/// Labels only the operator sets on server pods.
const RESERVED_LABELS_RULE: &str = "!has(self.metadata) || !has(self.metadata.labels) || self.metadata.labels.all(k, !k.startsWith('sparkconnect.dev/') && !(k in ['app.kubernetes.io/name', 'app.kubernetes.io/instance', 'app.kubernetes.io/component', 'app.kubernetes.io/managed-by']))";

fn default_port() -> i32 {
    15002
}

impl Default for ServerSpec {
    fn default() -> Self {
        Self {
            resources: SparkResources::default(),
            port: default_port(),
            pod_template: None,
        }
    }
}

/// Executors of each server.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ExecutorSpec {
    /// Static executor count (ignored when dynamic allocation is enabled).
    #[serde(default = "default_instances")]
    #[schemars(range(min = 0, max = 1000))]
    pub instances: i32,
    /// Executor cores and memory.
    #[serde(default)]
    pub resources: SparkResources,
    /// Spark dynamic allocation (with shuffle tracking, no external shuffle service needed).
    #[serde(default)]
    pub dynamic_allocation: DynamicAllocation,
}

fn default_instances() -> i32 {
    1
}

impl Default for ExecutorSpec {
    fn default() -> Self {
        Self {
            instances: default_instances(),
            resources: SparkResources::default(),
            dynamic_allocation: DynamicAllocation::default(),
        }
    }
}

/// Spark dynamic allocation bounds.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.minExecutors <= self.maxExecutors").message(
    "dynamicAllocation.minExecutors must not exceed dynamicAllocation.maxExecutors"
))]
pub struct DynamicAllocation {
    /// Turn dynamic allocation on.
    #[serde(default)]
    pub enabled: bool,
    /// Lower bound of executors.
    #[serde(default)]
    #[schemars(range(min = 0, max = 1000))]
    pub min_executors: i32,
    /// Upper bound of executors.
    #[serde(default = "default_max_executors")]
    #[schemars(range(min = 0, max = 1000))]
    pub max_executors: i32,
}

fn default_max_executors() -> i32 {
    10
}

/// The hot pool of idle servers.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
#[x_kube(
    validation = Rule::new("self.min <= self.idle && self.idle <= self.max")
        .message("hotPool must satisfy min <= idle <= max"),
    validation = Rule::new("!has(self.schedule) || self.schedule.all(w, w.idle <= self.max)")
        .message("every hotPool.schedule window's idle must be at most hotPool.max"),
)]
pub struct HotPoolSpec {
    /// Idle, ready servers to keep (the scale subresource drives this).
    #[serde(default = "default_idle")]
    #[schemars(range(min = 0, max = 1000))]
    pub idle: i32,
    /// Lowest idle target the autoscaler may choose.
    #[serde(default)]
    #[schemars(range(min = 0, max = 1000))]
    pub min: i32,
    /// Highest idle target the autoscaler may choose.
    #[serde(default = "default_pool_max")]
    #[schemars(range(min = 0, max = 1000))]
    pub max: i32,
    /// Demand-driven idle target.
    #[serde(default)]
    pub autoscale: AutoscaleSpec,
    /// Recycle servers idle for longer than this (Go duration, e.g. 6h).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[x_kube(validation = Rule::new(MAX_IDLE_AGE.cel_rule()).message(MAX_IDLE_AGE.cel_message().as_str()))]
    #[schemars(length(max = 28))]
    pub max_idle_age: Option<String>,
    /// Most claims that may wait for a server at once (a claim an idle server is there for
    /// does not wait); later claims fail at once.
    #[serde(default = "default_max_waiting_claims")]
    #[schemars(range(min = 0, max = 10000))]
    pub max_waiting_claims: i32,
    /// Most servers the cluster may run at once (starting, idle, shared and claimed); claims
    /// beyond it wait. Protects the namespace from a flood of claims.
    #[serde(default = "default_max_servers")]
    #[schemars(range(min = 1, max = 2000))]
    pub max_servers: i32,
    /// A claim that waits longer than this for a server fails.
    #[serde(default = "default_claim_timeout")]
    #[x_kube(validation = Rule::new(CLAIM_TIMEOUT.cel_rule()).message(CLAIM_TIMEOUT.cel_message().as_str()))]
    #[schemars(length(max = 28))]
    pub claim_timeout: String,
    /// How long the replacement of a server handed to a claim waits while the pool still has
    /// an idle server (Go duration; 0s starts it at once). A new server's JVM start and
    /// warm-up take a node's cores for seconds; waiting keeps them from the claimant's first
    /// queries when both land on one node. With no idle server left, or when another claim
    /// is handed a server within the delay (a busy pool), the replacements start at once.
    #[serde(default = "default_refill_delay")]
    #[x_kube(validation = Rule::new(REFILL_DELAY.cel_rule()).message(REFILL_DELAY.cel_message().as_str()))]
    #[schemars(length(max = 28))]
    pub refill_delay: String,
    /// Windows of time in which the pool keeps at least a given number of idle servers, for
    /// demand known in advance (business hours, a workshop, a nightly batch). The servers are
    /// started early by the measured start-up time, so they are idle when a window opens; the
    /// autoscaler may keep more. A window the operator cannot read is reported and skipped.
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 20))]
    pub schedule: Vec<ScheduleWindow>,
}

/// A window of scheduled capacity.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ScheduleWindow {
    /// When the window opens: a cron expression, `minute hour day-of-month month day-of-week`
    /// (or with a seconds field first), days of the week by name, e.g. `0 9 * * Mon-Fri`.
    #[x_kube(
        validation = Rule::new(format!("self.matches('{CRON_FIELDS}')")).message(
            "hotPool.schedule[].start must be a cron expression of 5 fields (minute hour day-of-month month day-of-week), or 6 with seconds first, e.g. '0 9 * * Mon-Fri'"
        ),
        validation = Rule::new(format!("!self.matches('{CRON_NUMERIC_WEEKDAY}')")).message(
            "hotPool.schedule[].start must name days of the week (Mon-Fri, Sun), not number them: cron dialects disagree on whether 0, 1 or 7 is Sunday"
        )
    )]
    #[schemars(length(max = 100))]
    pub start: String,
    /// How long the window stays open (Go duration, e.g. 8h).
    #[x_kube(validation = Rule::new(SCHEDULE_DURATION.cel_rule()).message(SCHEDULE_DURATION.cel_message().as_str()))]
    #[schemars(length(max = 28))]
    pub duration: String,
    /// Idle servers to keep, at least, while the window is open.
    #[schemars(range(min = 0, max = 1000))]
    pub idle: i32,
    /// IANA time zone of `start`, e.g. Europe/Berlin (default UTC).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 64), regex(pattern = "^[A-Za-z][A-Za-z0-9_+/-]*$"))]
    pub time_zone: Option<String>,
}

/// Five or six cron fields of the characters cron uses.
pub const CRON_FIELDS: &str = "^[0-9A-Za-z*?,/-]+( +[0-9A-Za-z*?,/-]+){4,5}$";
/// A day-of-week field (the last one) written with digits.
pub const CRON_NUMERIC_WEEKDAY: &str = "[0-9][^ ]*$";

fn default_refill_delay() -> String {
    "2s".into()
}

fn default_max_waiting_claims() -> i32 {
    100
}
fn default_max_servers() -> i32 {
    100
}
fn default_claim_timeout() -> String {
    "10m".into()
}

fn default_idle() -> i32 {
    1
}
fn default_pool_max() -> i32 {
    20
}

impl Default for HotPoolSpec {
    fn default() -> Self {
        Self {
            idle: default_idle(),
            min: 0,
            max: default_pool_max(),
            autoscale: AutoscaleSpec::default(),
            max_idle_age: None,
            max_waiting_claims: default_max_waiting_claims(),
            max_servers: default_max_servers(),
            claim_timeout: default_claim_timeout(),
            refill_delay: default_refill_delay(),
            schedule: Vec::new(),
        }
    }
}

/// Autoscaler of the idle target.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct AutoscaleSpec {
    /// Let the operator set hotPool.idle from claim demand.
    #[serde(default)]
    pub enabled: bool,
    /// How long demand must stay low before the idle target falls.
    #[serde(default = "default_scale_down_delay")]
    #[x_kube(validation = Rule::new(SCALE_DOWN_DELAY.cel_rule()).message(SCALE_DOWN_DELAY.cel_message().as_str()))]
    #[schemars(length(max = 28))]
    pub scale_down_delay: String,
    /// The share of claims, in percent, to serve from idle servers at once, taken as a chance:
    /// the autoscaler keeps as many idle servers (starting ones included) as cover all the
    /// claims of one warm-up at the measured arrival rate with this chance (a Poisson
    /// quantile). Higher costs more idle servers; a rise the rate cannot foretell needs
    /// hotPool.schedule.
    #[serde(default = "default_hit_rate_percent")]
    #[schemars(range(min = 50, max = 99))]
    pub hit_rate_percent: i32,
}

fn default_hit_rate_percent() -> i32 {
    99
}

fn default_scale_down_delay() -> String {
    "5m".into()
}

impl Default for AutoscaleSpec {
    fn default() -> Self {
        Self {
            enabled: false,
            scale_down_delay: default_scale_down_delay(),
            hit_rate_percent: default_hit_rate_percent(),
        }
    }
}

/// The operator's Spark Connect health probe.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct ProbeSpec {
    /// Time between probes of one server.
    #[serde(default = "default_probe_period")]
    #[x_kube(validation = Rule::new(PROBE_PERIOD.cel_rule()).message(PROBE_PERIOD.cel_message().as_str()))]
    #[schemars(length(max = 28))]
    pub period: String,
    /// Deadline of one probe call.
    #[serde(default = "default_probe_timeout")]
    #[x_kube(validation = Rule::new(PROBE_TIMEOUT.cel_rule()).message(PROBE_TIMEOUT.cel_message().as_str()))]
    #[schemars(length(max = 28))]
    pub timeout: String,
    /// Consecutive failures that make a server Unhealthy.
    #[serde(default = "default_failure_threshold")]
    #[schemars(range(min = 1, max = 100))]
    pub failure_threshold: i32,
    /// A server not healthy this long after its pod was created is replaced.
    #[serde(default = "default_startup_deadline")]
    #[x_kube(validation = Rule::new(STARTUP_DEADLINE.cel_rule()).message(STARTUP_DEADLINE.cel_message().as_str()))]
    #[schemars(length(max = 28))]
    pub startup_deadline: String,
}

fn default_probe_period() -> String {
    "10s".into()
}
fn default_probe_timeout() -> String {
    "3s".into()
}
fn default_failure_threshold() -> i32 {
    3
}
fn default_startup_deadline() -> String {
    "10m".into()
}

impl Default for ProbeSpec {
    fn default() -> Self {
        Self {
            period: default_probe_period(),
            timeout: default_probe_timeout(),
            failure_threshold: default_failure_threshold(),
            startup_deadline: default_startup_deadline(),
        }
    }
}

/// The warm-up of new servers.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct WarmupSpec {
    /// Run the warm-up before a new server becomes idle (on by default).
    #[serde(default = "default_warmup_enabled")]
    pub enabled: bool,
    /// SQL queries to run in order, their results collected and dropped, in each warm-up
    /// session; empty means the built-in set (a small query, an aggregation with a shuffle, a
    /// multi-type Arrow collect, then a group-by with a global sort and a filter with a limit
    /// sent as DataFrame relations).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    #[schemars(length(max = 10), inner(length(min = 1, max = 4096)))]
    pub queries: Vec<String>,
    /// How many sessions run the queries, one after another. A server's first sessions are
    /// slow to open and its code paths cold; each more session makes the user's first query
    /// faster and the warm-up longer.
    #[serde(default = "default_warmup_sessions")]
    #[schemars(range(min = 1, max = MAX_WARMUP_SESSIONS))]
    pub sessions: i32,
    /// Deadline of the whole warm-up; a server that misses it is tried again at its next probe.
    #[serde(default = "default_warmup_timeout")]
    #[x_kube(validation = Rule::new(WARMUP_TIMEOUT.cel_rule()).message(WARMUP_TIMEOUT.cel_message().as_str()))]
    #[schemars(length(max = 28))]
    pub timeout: String,
}

fn default_warmup_enabled() -> bool {
    true
}
/// Most warm-up sessions a cluster may ask for.
pub const MAX_WARMUP_SESSIONS: i32 = 20;

/// A Connect server does per-session work on a session's first job (its own session state on
/// the driver, its own isolated state on the executors); the first jobs of a session keep
/// getting faster over a server's first several sessions (measured on 2 cores: a user's first
/// query with a shuffle ~650 ms after 3 warm-up sessions, ~530 ms after 6, for a warm-up of
/// ~9 s and ~13 s).
fn default_warmup_sessions() -> i32 {
    6
}
fn default_warmup_timeout() -> String {
    "5m".into()
}

impl Default for WarmupSpec {
    fn default() -> Self {
        Self {
            enabled: default_warmup_enabled(),
            queries: Vec::new(),
            sessions: default_warmup_sessions(),
            timeout: default_warmup_timeout(),
        }
    }
}

/// Which servers the gateway sends a cluster's users to.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum GatewayMode {
    /// Every user shares the cluster's endpoint servers (a session stays on one of them).
    #[default]
    Shared,
    /// Each user gets a server of their own from the hot pool, claimed on their first call.
    Dedicated,
}

/// The gateway's treatment of one cluster.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq)]
#[serde(rename_all = "camelCase")]
pub struct GatewaySpec {
    /// Shared or Dedicated.
    #[serde(default)]
    pub mode: GatewayMode,
    /// A dedicated server is released (and the pool refills) after this long with no call in
    /// flight (Go duration, 10s to 168h).
    #[serde(default = "default_gateway_idle_timeout")]
    #[x_kube(validation = Rule::new(GATEWAY_IDLE_TIMEOUT.cel_rule()).message(GATEWAY_IDLE_TIMEOUT.cel_message().as_str()))]
    #[schemars(length(max = 28))]
    pub idle_timeout: String,
    /// Most dedicated servers the gateway holds for this cluster's users at once; a new user
    /// beyond it is refused with RESOURCE_EXHAUSTED. The operator fails a gateway claim past it
    /// (reason DedicatedQuotaReached), so users arriving together never pass it.
    #[serde(default = "default_max_dedicated_servers")]
    #[schemars(range(min = 0, max = 10000))]
    pub max_dedicated_servers: i32,
}

fn default_gateway_idle_timeout() -> String {
    "30m".into()
}

fn default_max_dedicated_servers() -> i32 {
    20
}

impl Default for GatewaySpec {
    fn default() -> Self {
        Self {
            mode: GatewayMode::default(),
            idle_timeout: default_gateway_idle_timeout(),
            max_dedicated_servers: default_max_dedicated_servers(),
        }
    }
}

/// How clients authenticate to the servers.
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum AuthMode {
    /// No authentication: only for trusted networks.
    #[default]
    None,
    /// A bearer token from a Secret, passed to Spark by environment variable.
    Token,
}

/// Client authentication.
#[derive(KubeSchema, Deserialize, Serialize, Clone, Debug, PartialEq, Default)]
#[serde(rename_all = "camelCase")]
#[x_kube(validation = Rule::new("self.mode == oldSelf.mode").message(
    "auth.mode cannot be changed on a running cluster: claimed servers keep the mode they started with; create a new cluster"
))]
pub struct AuthSpec {
    /// None or Token.
    #[serde(default)]
    pub mode: AuthMode,
    /// An existing Secret with key `token` to use instead of a generated one.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(length(max = 253))]
    #[x_kube(validation = Rule::new(format!("self.matches('{}')", super::DNS_1123_SUBDOMAIN)).message(
        "auth.secretName must be a Secret name (lowercase letters, digits, '-' and '.')"
    ))]
    pub secret_name: Option<String>,
}

/// Observed state of a `SparkConnectCluster`.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct SparkConnectClusterStatus {
    /// The generation this status describes.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub observed_generation: Option<i64>,
    /// Pending, Ready or Degraded.
    #[serde(default)]
    pub phase: ClusterPhase,
    /// The shared endpoint, `sc://<name>.<namespace>.svc.cluster.local:<port>`.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub endpoint: Option<String>,
    /// Ready, PoolReady and Degraded.
    #[serde(default)]
    #[schemars(schema_with = "list_map_by_type")]
    pub conditions: Vec<Condition>,
    /// Servers by state.
    #[serde(default)]
    pub servers: ServerCounts,
    /// Label selector of the pool's pods (for the scale subresource).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub selector: Option<String>,
    /// Spark version reported by a server.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub spark_version: Option<String>,
    /// The idle target the autoscaler chose (when autoscaling is on).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub idle_target: Option<i32>,
    /// The idle servers an open `hotPool.schedule` window asks for (while one is open, from
    /// the moment its servers start ahead of it).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub scheduled_idle: Option<i32>,
    /// Name of the Secret holding the client token (auth mode Token).
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub token_secret: Option<String>,
    /// How long the most recent server's warm-up took, in milliseconds.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub last_warmup_millis: Option<i64>,
    /// How long a new server takes from its pod's creation until it first serves, in
    /// milliseconds: the moving average the autoscaler plans with, kept here so that an
    /// operator that takes over goes on with it.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    #[schemars(range(min = 0, max = 86_400_000))]
    pub startup_millis: Option<i64>,
}

/// The cluster's phase: Degraded needs a person (invalid spec, refused objects).
#[derive(Deserialize, Serialize, Clone, Copy, Debug, PartialEq, Eq, Default, JsonSchema)]
pub enum ClusterPhase {
    /// Servers are starting; the endpoint does not serve yet.
    #[default]
    Pending,
    /// The endpoint (or the pool of a pool-only cluster) serves.
    Ready,
    /// The spec cannot be run as it is.
    Degraded,
}

/// Server counts by state.
#[derive(Deserialize, Serialize, Clone, Debug, PartialEq, Eq, Default, JsonSchema)]
#[serde(rename_all = "camelCase")]
pub struct ServerCounts {
    /// Every server pod of the cluster.
    pub total: i32,
    /// Started, not yet healthy.
    pub starting: i32,
    /// Healthy and free for claims.
    pub idle: i32,
    /// Healthy and standing by to take over the shared endpoint (token mode).
    #[serde(default)]
    pub standby: i32,
    /// Serving the cluster's own Service.
    pub shared: i32,
    /// Bound to a claim.
    pub claimed: i32,
    /// Failing health checks.
    pub unhealthy: i32,
}
