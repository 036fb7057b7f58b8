//! Settings that would let a server or its executors escape the namespace's ordinary limits:
//! refused unless the cluster sets `security.allowPrivileged`. Pure.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{PodTemplateSpec, SecurityContext};

use crate::error::Error;

/// Spark settings that mount secrets or host paths, pick another ServiceAccount or API
/// credentials, or replace the executor pod wholesale.
const EXECUTOR_ESCAPES: &[&str] = &[
    "spark.kubernetes.authenticate.",
    "spark.kubernetes.executor.secrets.",
    "spark.kubernetes.executor.secretKeyRef.",
    "spark.kubernetes.driver.secrets.",
    "spark.kubernetes.driver.secretKeyRef.",
    "spark.kubernetes.executor.volumes.",
    "spark.kubernetes.driver.volumes.",
    "spark.kubernetes.executor.podTemplateFile",
    "spark.kubernetes.executor.podTemplateContainerName",
    "spark.kubernetes.driver.podTemplateFile",
    "spark.kubernetes.context",
    "spark.kubernetes.driver.master",
];

fn refused(what: Vec<String>) -> Result<(), Error> {
    if what.is_empty() {
        return Ok(());
    }
    Err(Error::InvalidSpec(format!(
        "{} (privileged; set spec.security.allowPrivileged to allow it)",
        what.join("; ")
    )))
}

/// Refuses Spark settings that give executors secrets, host paths or API credentials.
pub fn refuse_executor_escapes(conf: &BTreeMap<String, String>) -> Result<(), Error> {
    refused(
        conf.keys()
            .filter(|k| EXECUTOR_ESCAPES.iter().any(|p| k.starts_with(p)))
            .map(|k| format!("sparkConf {k}"))
            .collect(),
    )
}

fn container_problems(where_: &str, sc: Option<&SecurityContext>, out: &mut Vec<String>) {
    let Some(sc) = sc else { return };
    if sc.privileged == Some(true) {
        out.push(format!("{where_} is privileged"));
    }
    if sc.allow_privilege_escalation == Some(true) {
        out.push(format!("{where_} allows privilege escalation"));
    }
    if sc
        .capabilities
        .as_ref()
        .and_then(|c| c.add.as_ref())
        .is_some_and(|add| !add.is_empty())
    {
        out.push(format!("{where_} adds capabilities"));
    }
    if sc.run_as_user == Some(0) || sc.run_as_non_root == Some(false) {
        out.push(format!("{where_} runs as root"));
    }
    if sc.proc_mount.as_deref() == Some("Unmasked") {
        out.push(format!("{where_} unmasks /proc"));
    }
}

/// Refuses a pod template overlay that would run privileged, as root, in host namespaces, with
/// host paths, or under another ServiceAccount.
pub fn refuse_privileged_template(template: &PodTemplateSpec) -> Result<(), Error> {
    let mut problems = Vec::new();
    let Some(spec) = &template.spec else {
        return Ok(());
    };
    for (flag, name) in [
        (spec.host_network, "hostNetwork"),
        (spec.host_pid, "hostPID"),
        (spec.host_ipc, "hostIPC"),
    ] {
        if flag == Some(true) {
            problems.push(format!("server.podTemplate sets {name}"));
        }
    }
    if spec.host_users == Some(true) {
        problems.push("server.podTemplate sets hostUsers".into());
    }
    if spec.service_account_name.is_some() || spec.service_account.is_some() {
        problems.push("server.podTemplate sets a serviceAccountName".into());
    }
    for volume in spec.volumes.iter().flatten() {
        if volume.host_path.is_some() {
            problems.push(format!(
                "server.podTemplate volume {} is a hostPath",
                volume.name
            ));
        }
    }
    if let Some(pod_sc) = &spec.security_context
        && (pod_sc.run_as_user == Some(0) || pod_sc.run_as_non_root == Some(false))
    {
        problems.push("server.podTemplate runs the pod as root".into());
    }
    let containers = spec.containers.iter().map(|c| (c, "container")).chain(
        spec.init_containers
            .iter()
            .flatten()
            .map(|c| (c, "init container")),
    );
    for (container, kind) in containers {
        let where_ = format!("server.podTemplate {kind} {}", container.name);
        container_problems(&where_, container.security_context.as_ref(), &mut problems);
    }
    for container in spec.ephemeral_containers.iter().flatten() {
        problems.push(format!(
            "server.podTemplate sets ephemeral container {}",
            container.name
        ));
    }
    refused(problems)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn template(spec: serde_json::Value) -> PodTemplateSpec {
        serde_json::from_value(serde_json::json!({ "spec": spec })).unwrap()
    }

    #[test]
    fn privileged_host_and_root_settings_are_each_named() {
        let t = template(serde_json::json!({
            "hostNetwork": true,
            "hostPID": true,
            "serviceAccountName": "admin",
            "volumes": [{"name": "root", "hostPath": {"path": "/"}}],
            "containers": [
                {"name": "spark-connect-server", "securityContext": {"privileged": true}},
                {"name": "side", "securityContext": {"runAsUser": 0, "capabilities": {"add": ["NET_ADMIN"]}}}
            ],
            "initContainers": [{"name": "init", "securityContext": {"allowPrivilegeEscalation": true}}]
        }));
        let message = refuse_privileged_template(&t).unwrap_err().to_string();
        for part in [
            "hostNetwork",
            "hostPID",
            "serviceAccountName",
            "volume root is a hostPath",
            "container spark-connect-server is privileged",
            "container side runs as root",
            "container side adds capabilities",
            "init container init allows privilege escalation",
            "security.allowPrivileged",
        ] {
            assert!(message.contains(part), "{part} missing from {message}");
        }
    }

    #[test]
    fn ordinary_overlays_pass() {
        let t = template(serde_json::json!({
            "nodeSelector": {"pool": "spark"},
            "volumes": [{"name": "data", "emptyDir": {}}],
            "containers": [{"name": "spark-connect-server", "env": [{"name": "A", "value": "1"}],
                            "securityContext": {"readOnlyRootFilesystem": true}}]
        }));
        refuse_privileged_template(&t).unwrap();
    }

    #[test]
    fn executor_secret_volume_and_credential_settings_are_escapes() {
        let conf: BTreeMap<String, String> = [
            ("spark.kubernetes.executor.secrets.db", "/db"),
            (
                "spark.kubernetes.executor.volumes.hostPath.root.mount.path",
                "/host",
            ),
            (
                "spark.kubernetes.authenticate.executor.serviceAccountName",
                "admin",
            ),
            ("spark.sql.shuffle.partitions", "8"),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
        let message = refuse_executor_escapes(&conf).unwrap_err().to_string();
        assert!(message.contains("executor.secrets.db"));
        assert!(message.contains("hostPath"));
        assert!(message.contains("serviceAccountName"));
        assert!(!message.contains("shuffle"));
    }
}
