//! Settings that would let a server or its executors escape the namespace's ordinary limits:
//! refused unless the cluster sets `security.allowPrivileged`. Pure.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{
    AppArmorProfile, Container, PodTemplateSpec, SELinuxOptions, SeccompProfile,
    WindowsSecurityContextOptions,
};

use crate::crd::SERVER_CONTAINER;
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

/// Kernel settings a pod may set without privilege (the Pod Security Standards' baseline).
const SAFE_SYSCTLS: &[&str] = &[
    "kernel.shm_rmid_forced",
    "net.ipv4.ip_local_port_range",
    "net.ipv4.ip_unprivileged_port_start",
    "net.ipv4.tcp_syncookies",
    "net.ipv4.ping_group_range",
    "net.ipv4.ip_local_reserved_ports",
    "net.ipv4.tcp_keepalive_time",
    "net.ipv4.tcp_fin_timeout",
    "net.ipv4.tcp_keepalive_intvl",
    "net.ipv4.tcp_keepalive_probes",
];
/// SELinux types a container may run as without privilege (baseline).
const SELINUX_TYPES: &[&str] = &[
    "",
    "container_t",
    "container_init_t",
    "container_kvm_t",
    "container_engine_t",
];
/// Environment that gives the server's JVM options or where Spark reads its settings: Spark
/// settings would pass through it unchecked.
const JVM_OPTION_ENV: &[&str] = &[
    "JAVA_TOOL_OPTIONS",
    "_JAVA_OPTIONS",
    "JDK_JAVA_OPTIONS",
    "SPARK_SUBMIT_OPTS",
    "SPARK_CONF_DIR",
    "SPARK_HOME",
];
/// Where Spark reads its default settings in the image.
const SPARK_CONF_DIR: &str = "/opt/spark/conf";
/// Spark settings whose value becomes options of the server's JVM.
const DRIVER_JAVA_OPTIONS: &[&str] = &[
    "spark.driver.extraJavaOptions",
    "spark.driver.defaultJavaOptions",
];
/// Annotation prefix that sets a container's AppArmor profile.
const APPARMOR_ANNOTATION: &str = "container.apparmor.security.beta.kubernetes.io/";

fn refused(what: Vec<String>) -> Result<(), Error> {
    if what.is_empty() {
        return Ok(());
    }
    Err(Error::InvalidSpec(format!(
        "{} (privileged; set spec.security.allowPrivileged to allow it)",
        what.join("; ")
    )))
}

/// Refuses Spark settings that give executors secrets, host paths or API credentials, also
/// when passed as `-Dspark.` system properties of the server's JVM.
pub fn refuse_executor_escapes(conf: &BTreeMap<String, String>) -> Result<(), Error> {
    let escapes = conf
        .keys()
        .filter(|k| EXECUTOR_ESCAPES.iter().any(|p| k.starts_with(p)))
        .map(|k| format!("sparkConf {k}"));
    let smuggled = DRIVER_JAVA_OPTIONS
        .iter()
        .filter(|key| conf.get(**key).is_some_and(|v| sets_spark_property(v)))
        .map(|key| {
            format!(
                "sparkConf {key} sets Spark settings with -Dspark. (set them as sparkConf keys)"
            )
        });
    refused(escapes.chain(smuggled).collect())
}

/// Whether JVM options set a `spark.` system property, however quoted (Spark's launcher
/// removes quotes and backslashes before the JVM sees them).
fn sets_spark_property(options: &str) -> bool {
    let unquoted: String = options
        .chars()
        .filter(|c| !matches!(c, '\'' | '"' | '\\'))
        .collect();
    unquoted.contains("-Dspark.")
}

fn is_unconfined(kind: Option<&str>) -> bool {
    kind == Some("Unconfined")
}

/// What a pod- or container-level setting shared by both asks for.
fn shared_problems(
    where_: &str,
    seccomp: Option<&SeccompProfile>,
    apparmor: Option<&AppArmorProfile>,
    selinux: Option<&SELinuxOptions>,
    windows: Option<&WindowsSecurityContextOptions>,
    out: &mut Vec<String>,
) {
    if is_unconfined(seccomp.map(|s| s.type_.as_str())) {
        out.push(format!("{where_} turns seccomp off"));
    }
    if is_unconfined(apparmor.map(|a| a.type_.as_str())) {
        out.push(format!("{where_} turns AppArmor off"));
    }
    if let Some(selinux) = selinux
        && (selinux.user.is_some()
            || selinux.role.is_some()
            || !SELINUX_TYPES.contains(&selinux.type_.as_deref().unwrap_or_default()))
    {
        out.push(format!("{where_} sets a custom SELinux user, role or type"));
    }
    if windows.and_then(|w| w.host_process) == Some(true) {
        out.push(format!("{where_} is a Windows host process"));
    }
}

fn container_problems(where_: &str, container: &Container, out: &mut Vec<String>) {
    for port in container.ports.iter().flatten() {
        if let Some(host_port) = port.host_port
            && host_port != 0
        {
            out.push(format!("{where_} binds host port {host_port}"));
        }
    }
    let Some(sc) = container.security_context.as_ref() else {
        return;
    };
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
    shared_problems(
        where_,
        sc.seccomp_profile.as_ref(),
        sc.app_armor_profile.as_ref(),
        sc.se_linux_options.as_ref(),
        sc.windows_options.as_ref(),
        out,
    );
}

/// What an amendment of the server container may not do: keep fewer of the operator's
/// restrictions, or replace its command line or reach its JVM options or Spark configuration,
/// through which executor settings would pass unchecked.
fn server_container_problems(container: &Container, out: &mut Vec<String>) {
    let where_ = format!("server.podTemplate container {SERVER_CONTAINER}");
    if container.command.is_some() || container.args.is_some() {
        out.push(format!(
            "{where_} replaces the command line that carries the executors' account and settings (put Spark settings in sparkConf)"
        ));
    }
    if let Some(drop) = container
        .security_context
        .as_ref()
        .and_then(|sc| sc.capabilities.as_ref())
        .and_then(|c| c.drop.as_ref())
        && !drop.iter().any(|d| d == "ALL")
    {
        out.push(format!("{where_} drops fewer capabilities than ALL"));
    }
    if container.env_from.as_ref().is_some_and(|e| !e.is_empty()) {
        out.push(format!(
            "{where_} sets envFrom (name each env entry instead)"
        ));
    }
    for env in container.env.iter().flatten() {
        if JVM_OPTION_ENV.contains(&env.name.as_str()) {
            out.push(format!("{where_} sets env {}", env.name));
        }
    }
    let conf = path_components(SPARK_CONF_DIR);
    for mount in container.volume_mounts.iter().flatten() {
        // At, under or above the directory: one path's components begin the other's.
        let path = path_components(&mount.mount_path);
        if path.starts_with(&conf) || conf.starts_with(&path) {
            out.push(format!("{where_} mounts over {SPARK_CONF_DIR}"));
        }
    }
}

/// The components of a container path as the runtime resolves it: from the root, empty and `.`
/// parts dropped, `..` going up (never above the root), so `/opt//spark/./x/../conf/` is
/// `/opt/spark/conf`.
fn path_components(path: &str) -> Vec<&str> {
    let mut components = Vec::new();
    for part in path.split('/') {
        match part {
            "" | "." => {}
            ".." => {
                components.pop();
            }
            name => components.push(name),
        }
    }
    components
}

/// Refuses a pod template overlay that would run privileged, as root, in host namespaces, with
/// host paths or ports, without seccomp or AppArmor, under another ServiceAccount, or with
/// fewer of the server container's restrictions (the Pod Security Standards' baseline, plus
/// what the operator sets).
pub fn refuse_privileged_template(template: &PodTemplateSpec) -> Result<(), Error> {
    let mut problems = Vec::new();
    for (key, value) in template
        .metadata
        .as_ref()
        .and_then(|m| m.annotations.as_ref())
        .into_iter()
        .flatten()
    {
        if key.starts_with(APPARMOR_ANNOTATION) && value == "unconfined" {
            problems.push(format!(
                "server.podTemplate annotation {key} turns AppArmor off"
            ));
        }
    }
    let Some(spec) = &template.spec else {
        return refused(problems);
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
    if let Some(pod_sc) = &spec.security_context {
        if pod_sc.run_as_user == Some(0) || pod_sc.run_as_non_root == Some(false) {
            problems.push("server.podTemplate runs the pod as root".into());
        }
        shared_problems(
            "server.podTemplate pod",
            pod_sc.seccomp_profile.as_ref(),
            pod_sc.app_armor_profile.as_ref(),
            pod_sc.se_linux_options.as_ref(),
            pod_sc.windows_options.as_ref(),
            &mut problems,
        );
        for sysctl in pod_sc.sysctls.iter().flatten() {
            if !SAFE_SYSCTLS.contains(&sysctl.name.as_str()) {
                problems.push(format!("server.podTemplate sets sysctl {}", sysctl.name));
            }
        }
    }
    let containers = spec.containers.iter().map(|c| (c, "container")).chain(
        spec.init_containers
            .iter()
            .flatten()
            .map(|c| (c, "init container")),
    );
    for (container, kind) in containers {
        let where_ = format!("server.podTemplate {kind} {}", container.name);
        container_problems(&where_, container, &mut problems);
    }
    // Every amendment of the server container is merged into it.
    for server in spec
        .containers
        .iter()
        .filter(|c| c.name == SERVER_CONTAINER)
    {
        server_container_problems(server, &mut problems);
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
    fn relaxing_the_baseline_or_the_servers_restrictions_is_named() {
        let t: PodTemplateSpec = serde_json::from_value(serde_json::json!({
            "metadata": {"annotations": {"container.apparmor.security.beta.kubernetes.io/side": "unconfined"}},
            "spec": {
                "securityContext": {
                    "seccompProfile": {"type": "Unconfined"},
                    "sysctls": [{"name": "kernel.msgmax", "value": "1"}, {"name": "net.ipv4.tcp_syncookies", "value": "1"}]
                },
                "containers": [
                    {"name": SERVER_CONTAINER,
                     "securityContext": {"capabilities": {"drop": ["NET_RAW"]}, "seLinuxOptions": {"type": "spc_t"}},
                     "env": [{"name": "JAVA_TOOL_OPTIONS", "value": "-Dspark.kubernetes.executor.volumes.hostPath.h.mount.path=/h"}],
                     "envFrom": [{"configMapRef": {"name": "opts"}}],
                     "args": ["--conf", "spark.kubernetes.executor.secrets.db=/db"],
                     "volumeMounts": [{"name": "conf", "mountPath": "/opt/spark/conf/"}]},
                    {"name": "side", "ports": [{"containerPort": 80, "hostPort": 80}],
                     "securityContext": {"appArmorProfile": {"type": "Unconfined"}, "windowsOptions": {"hostProcess": true}}}
                ]
            }
        }))
        .unwrap();
        let message = refuse_privileged_template(&t).unwrap_err().to_string();
        for part in [
            "annotation container.apparmor.security.beta.kubernetes.io/side turns AppArmor off",
            "pod turns seccomp off",
            "sysctl kernel.msgmax",
            "container spark-connect-server drops fewer capabilities than ALL",
            "container spark-connect-server sets a custom SELinux user, role or type",
            "container spark-connect-server sets env JAVA_TOOL_OPTIONS",
            "container spark-connect-server sets envFrom",
            "container spark-connect-server replaces the command line",
            "container spark-connect-server mounts over /opt/spark/conf",
            "container side binds host port 80",
            "container side turns AppArmor off",
            "container side is a Windows host process",
        ] {
            assert!(message.contains(part), "{part} missing from {message}");
        }
        assert!(!message.contains("tcp_syncookies"), "{message}");
    }

    #[test]
    fn a_mount_above_the_spark_configuration_hides_it_too_and_one_beside_it_does_not() {
        let mounted = |path: &str| {
            let t: PodTemplateSpec =
                serde_json::from_value(serde_json::json!({"spec": {"containers": [
                    {"name": SERVER_CONTAINER, "volumeMounts": [{"name": "v", "mountPath": path}]}
                ]}}))
                .unwrap();
            refuse_privileged_template(&t).is_err()
        };
        assert!(mounted("/opt") && mounted("/") && mounted("/opt/spark/conf/spark-defaults.conf"));
        assert!(
            !mounted("/opt/spark/work-dir")
                && !mounted("/opt/spark/confidential")
                && !mounted("/data")
        );
    }

    #[test]
    fn spark_settings_passed_as_jvm_properties_are_escapes_however_quoted() {
        for options in [
            "-Dspark.kubernetes.executor.secrets.db=/db",
            "-XX:+UseG1GC '-Dspark.kubernetes.authenticate.executor.serviceAccountName=admin'",
            "-D\"spark.kubernetes.executor.volumes.hostPath.h.mount.path\"=/h",
        ] {
            let conf: BTreeMap<String, String> = [(
                "spark.driver.extraJavaOptions".to_string(),
                options.to_string(),
            )]
            .into();
            let message = refuse_executor_escapes(&conf).unwrap_err().to_string();
            assert!(message.contains("extraJavaOptions"), "{options}: {message}");
        }
        let conf: BTreeMap<String, String> = [(
            "spark.driver.extraJavaOptions".to_string(),
            "-XX:+UseG1GC -Duser.timezone=UTC".to_string(),
        )]
        .into();
        refuse_executor_escapes(&conf).unwrap();
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
    #[test]
    fn a_mount_over_the_conf_directory_is_found_however_its_path_is_spelled() {
        let mounts_at = |path: &str| {
            template(
                serde_json::json!({"containers": [{"name": "spark-connect-server",
                "volumeMounts": [{"name": "v", "mountPath": path}]}]}),
            )
        };
        for path in [
            "/opt/spark/conf",
            "/opt//spark/conf/",
            "/opt/./spark/conf",
            "/opt/x/../spark/conf",
            "opt/spark/conf",
            "/opt/spark/conf/x",
            "/opt/spark",
            "/",
            "/../opt",
        ] {
            let message = refuse_privileged_template(&mounts_at(path)).unwrap_err();
            assert!(message.to_string().contains("mounts over"), "{path}");
        }
        for path in ["/opt/sp", "/opt/spark/confx", "/opt/spark/jars", "/data"] {
            refuse_privileged_template(&mounts_at(path)).unwrap();
        }
    }
}
