//! Checks of a cluster spec that the CRD schema cannot express, and the parsed values the
//! builders and the reconciler use.

use std::time::Duration;

use k8s_openapi::api::core::v1::PodTemplateSpec;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::OwnerReference;
use kube::Resource;
use sha2::{Digest, Sha256};

use crate::builders::quantity;
use crate::crd::SparkConnectCluster;
use crate::error::Error;

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
}

/// Parses a Go-style duration (`90s`, `5m`, `1h30m`).
pub fn parse_duration(field: &str, value: &str) -> Result<Duration, Error> {
    value
        .parse::<kube::core::Duration>()
        .ok()
        .map(Duration::from)
        .ok_or_else(|| {
            Error::InvalidSpec(format!(
                "{field} {value:?} is not a duration such as 30s or 5m"
            ))
        })
}

/// Validates a cluster and parses its values.
pub fn validate(cluster: &SparkConnectCluster) -> Result<ValidCluster<'_>, Error> {
    let name = cluster
        .metadata
        .name
        .as_deref()
        .ok_or(Error::MissingObjectKey("metadata.name"))?;
    let namespace = cluster
        .metadata
        .namespace
        .as_deref()
        .ok_or(Error::MissingObjectKey("metadata.namespace"))?;
    let owner = cluster
        .controller_owner_ref(&())
        .ok_or(Error::MissingObjectKey("metadata.uid"))?;
    let spec = &cluster.spec;

    let managed: Vec<&str> = spec
        .spark_conf
        .keys()
        .map(String::as_str)
        .filter(|key| MANAGED_SPARK_CONF.contains(key))
        .collect();
    if !managed.is_empty() {
        return Err(Error::InvalidSpec(format!(
            "sparkConf sets {} which the operator manages; use the matching spec field instead",
            managed.join(", ")
        )));
    }
    let memory = |field: &str, value: &str| {
        quantity::mebibytes(value).ok_or_else(|| {
            Error::InvalidSpec(format!(
                "{field} {value:?} is not a memory quantity such as 2Gi"
            ))
        })
    };
    let driver_memory_mib = memory("server.resources.memory", &spec.server.resources.memory)?;
    let executor_memory_mib = memory(
        "executors.resources.memory",
        &spec.executors.resources.memory,
    )?;

    let pod_template = match &spec.server.pod_template {
        Some(template) => {
            serde_json::from_value::<PodTemplateSpec>(template.clone()).map_err(|e| {
                Error::InvalidSpec(format!(
                    "server.podTemplate is not a valid pod template: {e}"
                ))
            })?;
            Some(template.clone())
        }
        None => None,
    };

    let timings = Timings {
        probe_period: parse_duration("probe.period", &spec.probe.period)?,
        probe_timeout: parse_duration("probe.timeout", &spec.probe.timeout)?,
        startup_deadline: parse_duration("probe.startupDeadline", &spec.probe.startup_deadline)?,
        max_idle_age: spec
            .hot_pool
            .max_idle_age
            .as_deref()
            .map(|v| parse_duration("hotPool.maxIdleAge", v))
            .transpose()?,
        claim_timeout: parse_duration("hotPool.claimTimeout", &spec.hot_pool.claim_timeout)?,
        scale_down_delay: parse_duration(
            "hotPool.autoscale.scaleDownDelay",
            &spec.hot_pool.autoscale.scale_down_delay,
        )?,
    };
    if timings.probe_timeout >= timings.probe_period {
        return Err(Error::InvalidSpec(format!(
            "probe.timeout ({}) must be shorter than probe.period ({})",
            spec.probe.timeout, spec.probe.period
        )));
    }

    Ok(ValidCluster {
        cluster,
        name,
        namespace,
        owner,
        driver_memory_mib,
        executor_memory_mib,
        pod_template,
        timings,
        spec_hash: server_spec_hash(cluster)?,
    })
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
