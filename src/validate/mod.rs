//! Checks of a cluster spec that the CRD schema cannot express, and the parsed values the
//! builders and the reconciler use. Pure.

mod owned;
mod privilege;

pub use owned::{BIND_ADDRESS_ENV, TOKEN_ENV, USER_ENV};

use std::sync::Arc;
use std::time::Duration;

use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Resource;
use sha2::{Digest, Sha256};

use crate::crd::{MAX_WARMUP_SESSIONS, SparkConnectCluster, SparkConnectClusterSpec};
use crate::duration::{
    self, Bounds, CLAIM_TIMEOUT, MAX_IDLE_AGE, PROBE_PERIOD, PROBE_TIMEOUT, REFILL_DELAY,
    SCALE_DOWN_DELAY, STARTUP_DEADLINE, WARMUP_TIMEOUT,
};
use crate::error::Error;
use crate::probe::warmup::WarmupPlan;
use crate::quantity;
use crate::schedule::Schedule;

/// Spark settings the operator owns; a user setting them would break the server.
pub const MANAGED_SPARK_CONF: &[&str] = &[
    "spark.master",
    "spark.submit.deployMode",
    "spark.app.name",
    "spark.driver.host",
    "spark.driver.bindAddress",
    "spark.driver.port",
    "spark.driver.blockManager.port",
    "spark.driver.cores",
    "spark.driver.memory",
    "spark.executor.instances",
    "spark.executor.cores",
    "spark.executor.memory",
    "spark.dynamicAllocation.enabled",
    "spark.dynamicAllocation.minExecutors",
    "spark.dynamicAllocation.maxExecutors",
    "spark.connect.grpc.binding.port",
    "spark.connect.authenticate.token",
    "spark.kubernetes.namespace",
    "spark.kubernetes.container.image",
    "spark.kubernetes.driver.pod.name",
    "spark.kubernetes.executor.podNamePrefix",
    "spark.ui.port",
    "spark.kubernetes.authenticate.driver.serviceAccountName",
    "spark.kubernetes.authenticate.executor.serviceAccountName",
];

/// Prefixes of Spark settings the operator manages (labels it alone sets on executors).
pub const MANAGED_SPARK_CONF_PREFIXES: &[&str] = &[
    "spark.kubernetes.executor.label.sparkconnect.dev/",
    "spark.kubernetes.executor.label.app.kubernetes.io/",
    "spark.kubernetes.driver.label.",
];

/// A cluster whose spec passed every check, with its values parsed.
#[derive(Clone, Debug)]
pub struct ValidCluster<'a> {
    /// The cluster itself.
    pub cluster: &'a SparkConnectCluster,
    /// Its name.
    pub name: &'a str,
    /// Its namespace.
    pub namespace: &'a str,
    /// Its UID: children are the cluster's only when it controls them.
    pub uid: &'a str,
    /// Pool sizes.
    pub size: PoolSize,
    /// Owner reference for every child.
    pub owner: OwnerReference,
    /// Driver heap in MiB.
    pub driver_memory_mib: u64,
    /// Executor heap in MiB.
    pub executor_memory_mib: u64,
    /// The parsed pod template overlay, if any.
    pub pod_template: Option<serde_json::Value>,
    /// Probe and lifecycle timings.
    pub timings: Timings,
    /// Hash of everything a server pod is built from; servers with another hash are outdated.
    pub spec_hash: String,
    /// What new servers run before they become idle (None when warm-up is off).
    pub warmup: Option<Arc<WarmupPlan>>,
    /// Windows of scheduled pool capacity that parsed.
    pub schedule: Schedule,
    /// Why the other windows were left out (reported, never fatal: the pool runs on).
    pub schedule_refused: Vec<String>,
}

/// The pool's sizes, read once from the spec (the schema bounds them; negative values read as
/// zero).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct PoolSize {
    /// Servers behind the shared Service.
    pub shared: usize,
    /// Idle servers to keep (`hotPool.idle`, the scale subresource): with autoscaling, the floor.
    pub idle: usize,
    /// Lowest autoscaled idle target.
    pub min: usize,
    /// Highest idle target.
    pub max: usize,
    /// Most servers at once, claimed ones included.
    pub max_servers: usize,
    /// Most claims waiting at once.
    pub max_waiting: usize,
    /// Whether the autoscaler sets the idle target.
    pub autoscale: bool,
    /// The share of claims (percent) the autoscaler aims to serve from idle servers at once.
    pub hit_rate_percent: u8,
}

fn count(value: i32) -> usize {
    usize::try_from(value).unwrap_or(0)
}

impl PoolSize {
    /// The sizes of a spec.
    pub fn of(spec: &SparkConnectClusterSpec) -> Self {
        let pool = &spec.hot_pool;
        Self {
            shared: count(spec.shared),
            idle: count(pool.idle),
            min: count(pool.min),
            max: count(pool.max),
            max_servers: count(pool.max_servers),
            max_waiting: count(pool.max_waiting_claims),
            autoscale: pool.autoscale.enabled,
            hit_rate_percent: u8::try_from(pool.autoscale.hit_rate_percent.clamp(50, 99))
                .unwrap_or(99),
        }
    }

    /// The idle target: the autoscaler's when it runs, else `hotPool.idle`, at least what an
    /// open schedule window asks for; waiting claims grow it at once, up to `hotPool.max`.
    pub fn idle_target(
        &self,
        autoscaled: Option<usize>,
        scheduled: usize,
        waiting: usize,
    ) -> usize {
        (autoscaled.unwrap_or(self.idle).max(scheduled) + waiting).min(self.idle.max(self.max))
    }
}

/// Durations from the spec.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct Timings {
    /// Probe period.
    pub probe_period: Duration,
    /// Probe deadline.
    pub probe_timeout: Duration,
    /// Time a server may take to become healthy.
    pub startup_deadline: Duration,
    /// Recycle idle servers older than this.
    pub max_idle_age: Option<Duration>,
    /// Autoscaler scale-down delay.
    pub scale_down_delay: Duration,
    /// How long a claim may wait for a server.
    pub claim_timeout: Duration,
    /// How long a handed-out server's replacement waits while an idle server is left.
    pub refill_delay: Duration,
}

/// Parses a duration field within its bounds.
pub fn parse_duration(bounds: Bounds, value: &str) -> Result<Duration, Error> {
    bounds
        .parse(value)
        .map_err(|e| Error::InvalidSpec(e.to_string()))
}

/// Parses a duration given on the command line (no bounds but its syntax).
pub fn parse_cli_duration(flag: &str, value: &str) -> Result<Duration, String> {
    duration::parse(value).ok_or_else(|| format!("{flag} {value:?} is not a duration such as 5s"))
}

/// Validates a cluster and parses its values.
pub fn validate(cluster: &SparkConnectCluster) -> Result<ValidCluster<'_>, Error> {
    let spec = &cluster.spec;
    let (name, namespace, uid) = object_key(cluster)?;
    let owner = cluster
        .controller_owner_ref(&())
        .ok_or(Error::MissingObjectKey("metadata.uid"))?;
    refuse_managed_spark_conf(spec)?;
    if !spec.security.allow_privileged {
        privilege::refuse_executor_escapes(&spec.spark_conf)?;
    }
    let (schedule, schedule_refused) = Schedule::parse(&spec.hot_pool.schedule);
    Ok(ValidCluster {
        cluster,
        name,
        namespace,
        uid,
        size: PoolSize::of(spec),
        owner,
        driver_memory_mib: memory_mib("server.resources.memory", &spec.server.resources.memory)?,
        executor_memory_mib: memory_mib(
            "executors.resources.memory",
            &spec.executors.resources.memory,
        )?,
        pod_template: pod_template(spec)?,
        timings: Timings::of(spec)?,
        spec_hash: server_spec_hash(cluster)?,
        warmup: warmup_plan(spec)?,
        schedule,
        schedule_refused,
    })
}

/// Name, namespace and uid: every object the apiserver returns has them.
fn object_key(cluster: &SparkConnectCluster) -> Result<(&str, &str, &str), Error> {
    let meta = &cluster.metadata;
    Ok((
        meta.name
            .as_deref()
            .ok_or(Error::MissingObjectKey("metadata.name"))?,
        meta.namespace
            .as_deref()
            .ok_or(Error::MissingObjectKey("metadata.namespace"))?,
        meta.uid
            .as_deref()
            .ok_or(Error::MissingObjectKey("metadata.uid"))?,
    ))
}

/// Spark settings the operator owns are refused, all named in one message.
fn refuse_managed_spark_conf(spec: &SparkConnectClusterSpec) -> Result<(), Error> {
    let managed: Vec<&str> = spec
        .spark_conf
        .keys()
        .map(String::as_str)
        .filter(|key| {
            MANAGED_SPARK_CONF.contains(key)
                || MANAGED_SPARK_CONF_PREFIXES
                    .iter()
                    .any(|p| key.starts_with(p))
        })
        .collect();
    if managed.is_empty() {
        return Ok(());
    }
    Err(Error::InvalidSpec(format!(
        "sparkConf sets {} which the operator manages; use the matching spec field instead",
        managed.join(", ")
    )))
}

/// A memory quantity of `field` in MiB.
fn memory_mib(field: &str, value: &str) -> Result<u64, Error> {
    quantity::mebibytes(value).ok_or_else(|| {
        Error::InvalidSpec(format!(
            "{field} {value:?} is not a memory quantity such as 2Gi"
        ))
    })
}

/// The server pod template, checked: a valid template that names no object of its own and,
/// unless the cluster allows it, asks for no privilege.
fn pod_template(spec: &SparkConnectClusterSpec) -> Result<Option<serde_json::Value>, Error> {
    let Some(template) = &spec.server.pod_template else {
        return Ok(None);
    };
    let parsed = serde_json::from_value::<PodTemplateSpec>(template.clone()).map_err(|e| {
        Error::InvalidSpec(format!(
            "server.podTemplate is not a valid pod template: {e}"
        ))
    })?;
    owned::refuse_owned_parts(template)?;
    if !spec.security.allow_privileged {
        privilege::refuse_privileged_template(&parsed)?;
    }
    Ok(Some(template.clone()))
}

impl Timings {
    /// Every duration of the spec, parsed within its bounds; the probe must time out within
    /// its period.
    fn of(spec: &SparkConnectClusterSpec) -> Result<Self, Error> {
        let pool = &spec.hot_pool;
        let timings = Timings {
            probe_period: parse_duration(PROBE_PERIOD, &spec.probe.period)?,
            probe_timeout: parse_duration(PROBE_TIMEOUT, &spec.probe.timeout)?,
            startup_deadline: parse_duration(STARTUP_DEADLINE, &spec.probe.startup_deadline)?,
            max_idle_age: pool
                .max_idle_age
                .as_deref()
                .map(|v| parse_duration(MAX_IDLE_AGE, v))
                .transpose()?,
            claim_timeout: parse_duration(CLAIM_TIMEOUT, &pool.claim_timeout)?,
            refill_delay: parse_duration(REFILL_DELAY, &pool.refill_delay)?,
            scale_down_delay: parse_duration(SCALE_DOWN_DELAY, &pool.autoscale.scale_down_delay)?,
        };
        if timings.probe_timeout >= timings.probe_period {
            return Err(Error::InvalidSpec(format!(
                "probe.timeout ({}) must be shorter than probe.period ({})",
                spec.probe.timeout, spec.probe.period
            )));
        }
        Ok(timings)
    }
}

/// The warm-up of new servers, its timeout and session count parsed once.
fn warmup_plan(spec: &SparkConnectClusterSpec) -> Result<Option<Arc<WarmupPlan>>, Error> {
    if !spec.warmup.enabled {
        return Ok(None);
    }
    let timeout = parse_duration(WARMUP_TIMEOUT, &spec.warmup.timeout)?;
    if let Some(blank) = spec.warmup.queries.iter().position(|q| q.trim().is_empty()) {
        return Err(Error::InvalidSpec(format!(
            "warmup.queries[{blank}] is blank; name a SQL query or leave the list empty for the built-in set"
        )));
    }
    // The schema bounds the count; an object admitted without it is held to the same bounds.
    let sessions = count(spec.warmup.sessions.clamp(1, MAX_WARMUP_SESSIONS));
    Ok(Some(Arc::new(WarmupPlan::new(
        &spec.warmup.queries,
        sessions,
        timeout,
    ))))
}

/// Hash of the spec fields a server pod is built from (not pool sizes or probe settings).
fn server_spec_hash(cluster: &SparkConnectCluster) -> Result<String, Error> {
    let spec = &cluster.spec;
    let relevant = serde_json::to_vec(&(
        &spec.image,
        &spec.image_pull_policy,
        &spec.spark_conf,
        &spec.server,
        &spec.executors,
        &spec.auth,
        &spec.security,
    ))?;
    Ok(hex::encode(&Sha256::digest(&relevant)[..5]))
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::cluster;

    #[test]
    fn accepts_the_example() {
        let c = cluster();
        let v = validate(&c).unwrap();
        assert_eq!(v.driver_memory_mib, 1024);
        assert_eq!(v.timings.probe_period, Duration::from_secs(10));
        assert_eq!(v.spec_hash.len(), 10);
    }

    #[test]
    fn warm_up_is_on_by_default_with_the_built_in_queries_and_can_be_turned_off() {
        let mut c = cluster();
        let plan = validate(&c).unwrap().warmup.unwrap();
        assert_eq!(plan.steps, crate::probe::warmup::built_in_steps());
        assert_eq!(plan.timeout, Duration::from_secs(300));
        assert_eq!(plan.sessions, 6);
        for (asked, runs) in [(3, 3), (0, 1), (-4, 1), (i32::MAX, 20)] {
            c.spec.warmup.sessions = asked;
            assert_eq!(
                validate(&c).unwrap().warmup.unwrap().sessions,
                runs,
                "{asked}"
            );
        }
        c.spec.warmup.queries = vec!["SELECT count(*) FROM range(10)".into()];
        assert_eq!(validate(&c).unwrap().warmup.unwrap().steps.len(), 1);
        c.spec.warmup.queries.push("  ".into());
        assert!(
            validate(&c)
                .unwrap_err()
                .to_string()
                .contains("warmup.queries[1]")
        );
        c.spec.warmup.enabled = false;
        assert!(validate(&c).unwrap().warmup.is_none());
    }

    #[test]
    fn refuses_managed_spark_conf() {
        let mut c = cluster();
        c.spec
            .spark_conf
            .insert("spark.master".into(), "local".into());
        let err = validate(&c).unwrap_err();
        assert!(err.to_string().contains("spark.master"), "{err}");
        assert!(err.is_permanent());
    }

    #[test]
    fn refuses_a_bad_pod_template() {
        let mut c = cluster();
        c.spec.server.pod_template = Some(serde_json::json!({"spec": {"containers": "nope"}}));
        assert!(
            validate(&c)
                .unwrap_err()
                .to_string()
                .contains("podTemplate")
        );
    }

    #[test]
    fn hostile_durations_are_errors_not_panics() {
        let mut c = cluster();
        c.spec.probe.startup_deadline = "99999999999999999999h".into();
        let err = validate(&c).unwrap_err();
        assert!(err.to_string().contains("probe.startupDeadline"), "{err}");
        assert!(err.is_permanent());
        c = cluster();
        c.spec.probe.period = "1ms".into();
        assert!(validate(&c).unwrap_err().to_string().contains("1s to 10m"));
    }

    #[test]
    fn refuses_executor_labels_the_operator_owns() {
        let mut c = cluster();
        c.spec.spark_conf.insert(
            "spark.kubernetes.executor.label.app.kubernetes.io/component".into(),
            "server".into(),
        );
        assert!(
            validate(&c)
                .unwrap_err()
                .to_string()
                .contains("operator manages")
        );
    }

    #[test]
    fn refuses_a_timeout_longer_than_the_period() {
        let mut c = cluster();
        c.spec.probe.timeout = "20s".into();
        assert!(
            validate(&c)
                .unwrap_err()
                .to_string()
                .contains("probe.timeout")
        );
    }

    #[test]
    fn spec_hash_ignores_pool_size() {
        let a = cluster();
        let mut b = cluster();
        b.spec.hot_pool.idle = 5;
        assert_eq!(
            validate(&a).unwrap().spec_hash,
            validate(&b).unwrap().spec_hash
        );
        b.spec.image = "other".into();
        assert_ne!(
            validate(&a).unwrap().spec_hash,
            validate(&b).unwrap().spec_hash
        );
    }
}
