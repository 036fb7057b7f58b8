//! The server (Spark driver) pod.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Pod;
use serde_json::json;

use super::labels::{
    BLOCK_MANAGER_PORT, DRIVER_PORT, ROLE_LABEL, SPEC_HASH_LABEL, STATE_LABEL, ServerRole,
    ServerState, TOKEN_KEY, UI_PORT, driver_account_name, executor_account_name, server_labels,
    server_token_secret_name, token_secret_name,
};
use super::merge::merge;
use crate::crd::{AuthMode, SERVER_CONTAINER};
use crate::error::Error;
use crate::quantity::overhead_mib;
use crate::validate::{BIND_ADDRESS_ENV, TOKEN_ENV, USER_ENV, ValidCluster};

/// Main class of the Spark Connect server.
pub const CONNECT_SERVER_CLASS: &str = "org.apache.spark.sql.connect.service.SparkConnectServer";

/// Spark settings the operator sets unless `sparkConf` names them.
pub const SPARK_CONF_DEFAULTS: &[(&str, &str)] = &[("spark.log.level", "WARN")];

/// The Spark configuration of one server: the user's `sparkConf` under the keys the operator owns.
pub fn spark_conf(v: &ValidCluster, server: &str) -> BTreeMap<String, String> {
    let mut conf = user_spark_conf(v);
    let managed = [placement(v, server), network(v, server), resources(v)];
    conf.extend(
        managed
            .into_iter()
            .flatten()
            .map(|(key, value)| (key.to_string(), value)),
    );
    let executor_labels = [
        ("sparkconnect.dev/cluster", v.name),
        ("sparkconnect.dev/server", server),
        ("app.kubernetes.io/component", "executor"),
    ];
    conf.extend(executor_labels.map(|(key, value)| {
        (
            format!("spark.kubernetes.executor.label.{key}"),
            value.to_string(),
        )
    }));
    conf
}

/// The user's settings, `$` escaped, over the defaults a user may override.
fn user_spark_conf(v: &ValidCluster) -> BTreeMap<String, String> {
    // The kubelet expands `$(VAR)` in args: user values are escaped so that they stay literal
    // (a value must never read the token or other env of the server into its command line).
    let mut conf: BTreeMap<String, String> = v
        .cluster
        .spec
        .spark_conf
        .iter()
        .map(|(k, v)| (k.clone(), v.replace('$', "$$")))
        .collect();
    // Spark's INFO log writes several lines per task and per probe, which costs a busy server
    // (and a user's first query) real CPU time.
    for (key, value) in SPARK_CONF_DEFAULTS {
        conf.entry((*key).to_string())
            .or_insert_with(|| (*value).to_string());
    }
    conf
}

/// Where the driver and its executors run, and as whom.
fn placement(v: &ValidCluster, server: &str) -> Vec<(&'static str, String)> {
    let spec = &v.cluster.spec;
    let mut conf = vec![
        (
            "spark.master",
            "k8s://https://kubernetes.default.svc:443".into(),
        ),
        ("spark.submit.deployMode", "client".into()),
        ("spark.app.name", server.into()),
        ("spark.kubernetes.namespace", v.namespace.into()),
        ("spark.kubernetes.container.image", spec.image.clone()),
        ("spark.kubernetes.driver.pod.name", server.into()),
        ("spark.kubernetes.executor.podNamePrefix", server.into()),
        (
            "spark.kubernetes.authenticate.driver.serviceAccountName",
            driver_account_name(v.name),
        ),
        // Executors run user code: their account has no API rights and no token is mounted.
        (
            "spark.kubernetes.authenticate.executor.serviceAccountName",
            executor_account_name(v.name),
        ),
    ];
    if let Some(policy) = &spec.image_pull_policy {
        conf.push((
            "spark.kubernetes.container.image.pullPolicy",
            policy.clone(),
        ));
    }
    conf
}

/// The driver's addresses and ports.
fn network(v: &ValidCluster, server: &str) -> Vec<(&'static str, String)> {
    vec![
        // Spark 4.x advertises the bind address to executors: it must be the pod IP, not 0.0.0.0.
        ("spark.driver.bindAddress", format!("$({BIND_ADDRESS_ENV})")),
        ("spark.driver.host", format!("{server}.{}.svc", v.namespace)),
        ("spark.driver.port", DRIVER_PORT.to_string()),
        (
            "spark.driver.blockManager.port",
            BLOCK_MANAGER_PORT.to_string(),
        ),
        ("spark.ui.port", UI_PORT.to_string()),
        (
            "spark.connect.grpc.binding.port",
            v.cluster.spec.server.port.to_string(),
        ),
    ]
}

/// Cores and memory of the driver and executors, and how many executors.
fn resources(v: &ValidCluster) -> Vec<(&'static str, String)> {
    let spec = &v.cluster.spec;
    let dynamic = &spec.executors.dynamic_allocation;
    let mut conf = vec![
        (
            "spark.driver.cores",
            spec.server.resources.cores.to_string(),
        ),
        ("spark.driver.memory", format!("{}m", v.driver_memory_mib)),
        (
            "spark.executor.cores",
            spec.executors.resources.cores.to_string(),
        ),
        (
            "spark.executor.memory",
            format!("{}m", v.executor_memory_mib),
        ),
        (
            "spark.dynamicAllocation.enabled",
            dynamic.enabled.to_string(),
        ),
    ];
    if dynamic.enabled {
        conf.extend([
            (
                "spark.dynamicAllocation.shuffleTracking.enabled",
                "true".into(),
            ),
            (
                "spark.dynamicAllocation.minExecutors",
                dynamic.min_executors.to_string(),
            ),
            (
                "spark.dynamicAllocation.maxExecutors",
                dynamic.max_executors.to_string(),
            ),
        ]);
    } else {
        conf.push((
            "spark.executor.instances",
            spec.executors.instances.to_string(),
        ));
    }
    conf
}

/// spark-submit's arguments: the Connect server's class in client mode, and its settings.
fn submit_args(v: &ValidCluster, server: &str) -> Vec<String> {
    let mut args: Vec<String> = vec![
        "--deploy-mode".into(),
        "client".into(),
        "--class".into(),
        CONNECT_SERVER_CLASS.into(),
    ];
    for (key, value) in spark_conf(v, server) {
        args.push("--conf".into());
        args.push(format!("{key}={value}"));
    }
    args
}

/// The server's environment: its pod IP to bind to and, in token mode, its token from the
/// Secret.
fn server_env(v: &ValidCluster, id: ServerIdentity) -> Vec<serde_json::Value> {
    let mut env = vec![
        json!({"name": BIND_ADDRESS_ENV, "valueFrom": {"fieldRef": {"fieldPath": "status.podIP"}}}),
        json!({"name": USER_ENV, "value": "spark"}),
    ];
    if v.cluster.spec.auth.mode == AuthMode::Token {
        env.push(json!({
            "name": TOKEN_ENV,
            "valueFrom": {"secretKeyRef": {"name": token_source(v, id.name, id.role), "key": TOKEN_KEY}}
        }));
    }
    env
}

/// Which server a pod is, and what it is built from.
#[derive(Clone, Copy, Debug)]
pub struct ServerIdentity<'a> {
    /// Pod (and Service) name.
    pub name: &'a str,
    /// Endpoint or pool.
    pub role: ServerRole,
    /// Hash of the spec (and, for endpoint servers, the cluster token) it is built from.
    pub hash: &'a str,
}

/// The Secret whose token a server of `role` starts with (token mode).
pub fn token_source(v: &ValidCluster, server: &str, role: ServerRole) -> String {
    match role {
        ServerRole::Endpoint => token_secret_name(v.cluster),
        ServerRole::Pool => server_token_secret_name(server),
    }
}

/// The driver pod of a server, with the user's pod template merged on top.
pub fn server_pod(v: &ValidCluster, id: ServerIdentity) -> Result<Pod, Error> {
    let spec = &v.cluster.spec;
    let server = id.name;
    let mut labels = server_labels(v.name, server);
    labels.insert(STATE_LABEL.into(), ServerState::Starting.as_str().into());
    labels.insert(SPEC_HASH_LABEL.into(), id.hash.into());
    labels.insert(ROLE_LABEL.into(), id.role.as_str().into());

    let args = submit_args(v, server);
    let env = server_env(v, id);
    let memory_mib = v.driver_memory_mib + overhead_mib(v.driver_memory_mib);
    let mut pod = json!({
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "name": server,
            "namespace": v.namespace,
            "labels": labels,
            "ownerReferences": [v.owner],
        },
        "spec": {
            "serviceAccountName": driver_account_name(v.name),
            "restartPolicy": "Never",
            "terminationGracePeriodSeconds": 15,
            "securityContext": {
                "runAsNonRoot": true, "runAsUser": 185, "runAsGroup": 185, "fsGroup": 185,
                "seccompProfile": {"type": "RuntimeDefault"}
            },
            "containers": [{
                "name": SERVER_CONTAINER,
                "image": spec.image,
                "imagePullPolicy": spec.image_pull_policy.as_deref().unwrap_or("IfNotPresent"),
                "command": ["/opt/spark/bin/spark-submit"],
                "args": args,
                "env": env,
                "ports": [
                    {"name": "connect", "containerPort": spec.server.port},
                    {"name": "driver", "containerPort": DRIVER_PORT},
                    {"name": "blockmanager", "containerPort": BLOCK_MANAGER_PORT},
                    {"name": "ui", "containerPort": UI_PORT}
                ],
                "resources": {
                    "requests": {"cpu": spec.server.resources.cores.to_string(), "memory": format!("{memory_mib}Mi")},
                    "limits": {"memory": format!("{memory_mib}Mi")}
                },
                "readinessProbe": {
                    "tcpSocket": {"port": spec.server.port},
                    "periodSeconds": 2,
                    "failureThreshold": 1
                },
                "securityContext": {
                    "allowPrivilegeEscalation": false,
                    "capabilities": {"drop": ["ALL"]}
                },
                "volumeMounts": [{"name": "tmp", "mountPath": "/tmp"}]
            }],
            "volumes": [{"name": "tmp", "emptyDir": {}}]
        }
    });
    if let Some(template) = &v.pod_template {
        merge(&mut pod, template);
    }
    serde_json::from_value(pod).map_err(|e| {
        Error::InvalidSpec(format!(
            "server.podTemplate does not merge into a valid pod: {e}"
        ))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::cluster;
    use crate::validate::validate;

    fn id(name: &str) -> ServerIdentity<'_> {
        ServerIdentity {
            name,
            role: ServerRole::Pool,
            hash: "h",
        }
    }

    fn container(pod: &Pod) -> &k8s_openapi::api::core::v1::Container {
        &pod.spec.as_ref().unwrap().containers[0]
    }

    #[test]
    fn pod_runs_the_connect_server_against_kubernetes() {
        let c = cluster();
        let v = validate(&c).unwrap();
        let pod = server_pod(&v, id("analytics-abcde")).unwrap();
        let args = container(&pod).args.clone().unwrap();
        let has = |s: &str| args.iter().any(|a| a == s);
        assert!(has(CONNECT_SERVER_CLASS));
        assert!(has("spark.master=k8s://https://kubernetes.default.svc:443"));
        assert!(has("spark.kubernetes.driver.pod.name=analytics-abcde"));
        assert!(has("spark.driver.bindAddress=$(SPARK_DRIVER_BIND_ADDRESS)"));
        assert!(has("spark.driver.port=7078"));
        assert!(has("spark.executor.instances=1"));
        assert!(has("spark.sql.shuffle.partitions=4"));
        let meta = &pod.metadata;
        assert_eq!(meta.owner_references.as_ref().unwrap()[0].name, "analytics");
        assert_eq!(meta.labels.as_ref().unwrap()[STATE_LABEL], "starting");
        let probe = container(&pod).readiness_probe.as_ref().unwrap();
        assert_eq!(
            probe.tcp_socket.as_ref().unwrap().port,
            k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::Int(15002)
        );
        let requests = container(&pod)
            .resources
            .as_ref()
            .unwrap()
            .requests
            .as_ref()
            .unwrap();
        assert_eq!(requests["memory"].0, "1408Mi");
        assert_eq!(
            pod.spec
                .as_ref()
                .unwrap()
                .security_context
                .as_ref()
                .unwrap()
                .run_as_non_root,
            Some(true)
        );
    }

    #[test]
    fn token_auth_passes_the_token_by_env_from_the_secret() {
        let mut c = cluster();
        c.spec.auth.mode = AuthMode::Token;
        let v = validate(&c).unwrap();
        let pod = server_pod(&v, id("analytics-abcde")).unwrap();
        let env = container(&pod).env.clone().unwrap();
        let token = env
            .iter()
            .find(|e| e.name == "SPARK_CONNECT_AUTHENTICATE_TOKEN")
            .unwrap();
        let secret = token
            .value_from
            .as_ref()
            .unwrap()
            .secret_key_ref
            .as_ref()
            .unwrap();
        assert_eq!(
            secret.name, "analytics-abcde-token",
            "a pool server has its own token"
        );
        let endpoint = server_pod(
            &v,
            ServerIdentity {
                role: ServerRole::Endpoint,
                ..id("analytics-xyzzy")
            },
        )
        .unwrap();
        let env = container(&endpoint).env.clone().unwrap();
        let source = env
            .iter()
            .find_map(|e| e.value_from.as_ref()?.secret_key_ref.as_ref())
            .unwrap();
        assert_eq!(
            source.name, "analytics-connect-token",
            "the shared endpoint's token"
        );
        assert_eq!(
            endpoint.metadata.labels.as_ref().unwrap()[ROLE_LABEL],
            "endpoint"
        );
        assert!(
            !container(&pod)
                .args
                .as_ref()
                .unwrap()
                .iter()
                .any(|a| a.contains("authenticate.token"))
        );
    }

    #[test]
    fn user_values_cannot_expand_the_servers_environment() {
        let mut c = cluster();
        c.spec.spark_conf.insert(
            "spark.app.description".into(),
            "$(SPARK_CONNECT_AUTHENTICATE_TOKEN)".into(),
        );
        let v = validate(&c).unwrap();
        let conf = spark_conf(&v, "s");
        assert_eq!(
            conf["spark.app.description"],
            "$$(SPARK_CONNECT_AUTHENTICATE_TOKEN)"
        );
        assert_eq!(
            conf["spark.driver.bindAddress"], "$(SPARK_DRIVER_BIND_ADDRESS)",
            "the operator's own reference still expands"
        );
        assert_eq!(
            conf["spark.kubernetes.authenticate.executor.serviceAccountName"],
            "analytics-spark-executor"
        );
    }

    #[test]
    fn spark_logs_warnings_by_default_and_a_user_may_ask_for_more() {
        let mut c = cluster();
        let v = validate(&c).unwrap();
        assert_eq!(spark_conf(&v, "s")["spark.log.level"], "WARN");
        c.spec
            .spark_conf
            .insert("spark.log.level".into(), "INFO".into());
        let v = validate(&c).unwrap();
        assert_eq!(spark_conf(&v, "s")["spark.log.level"], "INFO");
    }

    #[test]
    fn dynamic_allocation_replaces_static_instances() {
        let mut c = cluster();
        c.spec.executors.dynamic_allocation.enabled = true;
        c.spec.executors.dynamic_allocation.max_executors = 3;
        let v = validate(&c).unwrap();
        let conf = spark_conf(&v, "s");
        assert_eq!(conf["spark.dynamicAllocation.maxExecutors"], "3");
        assert_eq!(
            conf["spark.dynamicAllocation.shuffleTracking.enabled"],
            "true"
        );
        assert!(!conf.contains_key("spark.executor.instances"));
    }

    #[test]
    fn pod_template_is_merged() {
        let mut c = cluster();
        c.spec.server.pod_template = Some(serde_json::json!({
            "metadata": {"labels": {"team": "data"}},
            "spec": {
                "nodeSelector": {"pool": "spark"},
                "containers": [
                    {"name": SERVER_CONTAINER, "env": [{"name": "EXTRA", "value": "1"}]},
                    {"name": "sidecar", "image": "busybox"}
                ]
            }
        }));
        let v = validate(&c).unwrap();
        let pod = server_pod(&v, id("analytics-abcde")).unwrap();
        let spec = pod.spec.as_ref().unwrap();
        assert_eq!(pod.metadata.labels.as_ref().unwrap()["team"], "data");
        assert_eq!(
            pod.metadata.labels.as_ref().unwrap()[STATE_LABEL],
            "starting"
        );
        assert_eq!(spec.node_selector.as_ref().unwrap()["pool"], "spark");
        assert_eq!(spec.containers.len(), 2);
        let env = spec.containers[0].env.as_ref().unwrap();
        assert!(env.iter().any(|e| e.name == "EXTRA"));
        assert!(env.iter().any(|e| e.name == "SPARK_DRIVER_BIND_ADDRESS"));
    }
}
