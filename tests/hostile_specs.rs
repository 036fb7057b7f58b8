//! Whatever a cluster's author writes, the operator either refuses it with an error or builds a
//! server pod that keeps every guarantee the operator gives: the pod is named, labelled,
//! started and authenticated as the operator decides, and (unless `security.allowPrivileged`)
//! meets the Pod Security Standards' baseline plus the server container's own restrictions,
//! with no executor setting slipped past the checks. Generated specs, checked against these
//! guarantees written out here from the pod alone, not with the validator's own code.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Container, Pod};
use proptest::prelude::*;
use serde_json::{Value, json};
use spark_connect_operator::builders::labels::ServerRole;
use spark_connect_operator::builders::pod::{ServerIdentity, server_pod};
use spark_connect_operator::builders::{rbac, secret, service};
use spark_connect_operator::crd::{SERVER_CONTAINER, SparkConnectCluster, SparkConnectClusterSpec};
use spark_connect_operator::validate::validate;

const SERVER: &str = "analytics-abcde";

/// A cluster as the apiserver would return it, from `spec`.
fn cluster(spec: Value) -> Option<SparkConnectCluster> {
    let spec: SparkConnectClusterSpec = serde_json::from_value(spec).ok()?;
    let mut cluster = SparkConnectCluster::new("analytics", spec);
    cluster.metadata.namespace = Some("data".into());
    cluster.metadata.uid = Some("4f9b7a52-0d2c-4c1e-9f4e-1b2a3c4d5e6f".into());
    Some(cluster)
}

fn pool_server() -> ServerIdentity<'static> {
    ServerIdentity {
        name: SERVER,
        role: ServerRole::Pool,
        hash: "h",
    }
}

/// One of `values`, or, more often, the field left out (`None`): most generated templates then
/// hold one or two settings, so each one alone meets the checks.
fn maybe(values: Vec<Value>) -> impl Strategy<Value = Option<Value>> {
    proptest::option::weighted(0.15, proptest::sample::select(values))
}

/// An object of the fields that were chosen.
fn object(fields: Vec<(&'static str, Option<Value>)>) -> Value {
    Value::Object(
        fields
            .into_iter()
            .filter_map(|(key, value)| Some((key.to_string(), value?)))
            .collect(),
    )
}

fn security_context() -> impl Strategy<Value = Option<Value>> {
    let set = (
        maybe(vec![json!(true), json!(false), Value::Null]),
        maybe(vec![json!(0), json!(1000), Value::Null]),
        maybe(vec![json!(true), json!(false), Value::Null]),
        maybe(vec![
            json!({"add": ["NET_ADMIN"]}),
            json!({"drop": []}),
            json!({"drop": ["NET_RAW"]}),
            json!({"drop": ["ALL"]}),
            json!({"drop": null}),
            Value::Null,
        ]),
        maybe(vec![
            json!({"type": "Unconfined"}),
            json!({"type": "RuntimeDefault"}),
            Value::Null,
        ]),
        maybe(vec![
            json!({"type": "Unconfined"}),
            json!({"type": "spc_t"}),
            json!({"hostProcess": true}),
            json!("Unmasked"),
        ]),
        maybe(vec![json!(true), Value::Null]),
    )
        .prop_map(
            |(non_root, user, escalation, capabilities, seccomp, odd, privileged)| {
                object(vec![
                    ("runAsNonRoot", non_root),
                    ("runAsUser", user),
                    ("allowPrivilegeEscalation", escalation),
                    ("capabilities", capabilities),
                    ("seccompProfile", seccomp),
                    (
                        "appArmorProfile",
                        odd.clone()
                            .filter(|o| o.get("type") == Some(&json!("Unconfined"))),
                    ),
                    (
                        "seLinuxOptions",
                        odd.clone()
                            .filter(|o| o.get("type") == Some(&json!("spc_t"))),
                    ),
                    (
                        "windowsOptions",
                        odd.clone().filter(|o| o.get("hostProcess").is_some()),
                    ),
                    ("procMount", odd.filter(Value::is_string)),
                    ("privileged", privileged),
                ])
            },
        );
    prop_oneof![
        2 => set.prop_map(Some),
        1 => Just(Some(Value::Null)),
        6 => Just(None),
    ]
}

fn env_entry() -> impl Strategy<Value = Value> {
    (
        proptest::sample::select(vec![
            "SPARK_CONNECT_AUTHENTICATE_TOKEN",
            "SPARK_DRIVER_BIND_ADDRESS",
            "SPARK_USER",
            "JAVA_TOOL_OPTIONS",
            "SPARK_SUBMIT_OPTS",
            "SPARK_CONF_DIR",
            "TZ",
        ]),
        maybe(vec![
            json!("-Dspark.kubernetes.executor.secrets.db=/db"),
            json!("known"),
        ]),
        maybe(vec![
            Value::Null,
            json!({"fieldRef": {"fieldPath": "metadata.name"}}),
        ]),
    )
        .prop_map(|(name, value, value_from)| {
            let mut env = object(vec![("value", value), ("valueFrom", value_from)]);
            env["name"] = json!(name);
            env
        })
}

fn container(names: Vec<&'static str>) -> impl Strategy<Value = Value> {
    (
        proptest::sample::select(names),
        security_context(),
        maybe(vec![json!(["sh", "-c", "id"]), Value::Null]),
        maybe(vec![
            json!([
                "--conf",
                "spark.kubernetes.authenticate.executor.serviceAccountName=admin"
            ]),
            json!([]),
        ]),
        proptest::option::of(proptest::collection::vec(env_entry(), 0..3)),
        maybe(vec![json!([{"configMapRef": {"name": "opts"}}]), json!([])]),
        maybe(vec![
            json!([{"name": "v", "mountPath": "/opt/spark/conf"}]),
            json!([{"name": "v", "mountPath": "/opt"}]),
            json!([{"name": "v", "mountPath": "/data"}]),
            json!([{"name": "v", "mountPath": "/opt//spark/./conf/"}]),
            json!([{"name": "v", "mountPath": "/opt/jars/../spark/conf"}]),
            json!([{"name": "v", "mountPath": "/opt/sp"}]),
        ]),
        maybe(vec![
            json!([{"name": "connect", "hostPort": 15002}]),
            json!([{"name": "extra", "containerPort": 9000, "hostPort": 9000}]),
            json!([{"name": "extra", "containerPort": 9000}]),
        ]),
    )
        .prop_map(|(name, sc, command, args, env, env_from, mounts, ports)| {
            let mut c = object(vec![
                ("securityContext", sc),
                ("command", command),
                ("args", args),
                ("env", env.map(Value::Array)),
                ("envFrom", env_from),
                ("volumeMounts", mounts),
                ("ports", ports),
            ]);
            c["name"] = json!(name);
            if name != SERVER_CONTAINER {
                c["image"] = json!("busybox");
            }
            c
        })
}

/// A map of up to two of `keys`, each with one of `values`.
fn map_of(
    keys: Vec<&'static str>,
    values: Vec<&'static str>,
) -> impl Strategy<Value = BTreeMap<String, String>> {
    proptest::collection::btree_map(
        proptest::sample::select(keys).prop_map(String::from),
        proptest::sample::select(values).prop_map(String::from),
        0..3,
    )
}

fn labels() -> impl Strategy<Value = Option<Value>> {
    let keys = vec![
        "team",
        "sparkconnect.dev/state",
        "sparkconnect.dev/cluster",
        "app.kubernetes.io/component",
        "container.apparmor.security.beta.kubernetes.io/side",
        "sparkconnect.dev/claim",
    ];
    proptest::option::of(
        map_of(keys, vec!["idle", "victim", "unconfined", "x"]).prop_map(|m| json!(m)),
    )
}

fn template() -> impl Strategy<Value = Value> {
    let metadata = (
        labels(),
        labels(),
        maybe(vec![json!(["example.com/keep"]), json!("server-0")]),
    )
        .prop_map(|(labels, annotations, odd)| {
            object(vec![
                ("labels", labels),
                ("annotations", annotations),
                ("finalizers", odd.clone().filter(Value::is_array)),
                ("generateName", odd.filter(Value::is_string)),
            ])
        });
    let pod_security = (
        maybe(vec![json!(false), json!(true), Value::Null]),
        maybe(vec![json!(0), json!(2000)]),
        maybe(vec![
            json!({"type": "Unconfined"}),
            Value::Null,
            json!({"type": "Localhost", "localhostProfile": "p.json"}),
        ]),
        maybe(vec![
            json!([{"name": "kernel.msgmax", "value": "1"}]),
            json!([{"name": "net.ipv4.tcp_syncookies", "value": "1"}]),
        ]),
    )
        .prop_map(|(non_root, user, seccomp, sysctls)| {
            object(vec![
                ("runAsNonRoot", non_root),
                ("runAsUser", user),
                ("seccompProfile", seccomp),
                ("sysctls", sysctls),
            ])
        });
    let spec = (
        (
            maybe(vec![json!(true), json!(false), Value::Null]),
            proptest::sample::select(vec!["hostNetwork", "hostPID", "hostIPC", "hostUsers"]),
            maybe(vec![json!("admin"), Value::Null]),
            maybe(vec![json!("Always"), Value::Null]),
        ),
        prop_oneof![
            2 => pod_security.prop_map(Some),
            1 => Just(Some(Value::Null)),
            2 => Just(None),
        ],
        maybe(vec![
            json!([{"name": "root", "hostPath": {"path": "/"}}]),
            json!([{"name": "tmp", "hostPath": {"path": "/tmp"}}]),
            json!([{"name": "v", "emptyDir": {}}]),
            Value::Null,
        ]),
        proptest::option::of(proptest::collection::vec(
            container(vec![SERVER_CONTAINER, "side"]),
            0..3,
        )),
        proptest::option::of(proptest::collection::vec(container(vec!["init"]), 0..2)),
        maybe(vec![json!([{"name": "debug", "image": "busybox"}])]),
    )
        .prop_map(
            |(
                (host, namespace, account, restart),
                security,
                volumes,
                containers,
                init,
                ephemeral,
            )| {
                let mut spec = object(vec![
                    ("serviceAccountName", account),
                    ("restartPolicy", restart),
                    ("securityContext", security),
                    ("volumes", volumes),
                    ("containers", containers.map(Value::Array)),
                    ("initContainers", init.map(Value::Array)),
                    ("ephemeralContainers", ephemeral),
                ]);
                if let Some(host) = host {
                    spec[namespace] = host;
                }
                spec
            },
        );
    (proptest::option::of(metadata), proptest::option::of(spec))
        .prop_map(|(metadata, spec)| object(vec![("metadata", metadata), ("spec", spec)]))
}

fn spark_conf() -> impl Strategy<Value = BTreeMap<String, String>> {
    let keys = vec![
        "spark.driver.extraJavaOptions",
        "spark.driver.defaultJavaOptions",
        "spark.kubernetes.executor.volumes.hostPath.h.mount.path",
        "spark.kubernetes.authenticate.executor.serviceAccountName",
        "spark.sql.shuffle.partitions",
    ];
    let values = vec![
        "-Dspark.kubernetes.executor.secrets.db=/db",
        "-D'spark.kubernetes.executor.podTemplateFile=/t'",
        "-XX:+UseG1GC",
        "4",
    ];
    map_of(keys, values)
}

/// Spark settings that give executors more than their account and namespace allow.
const ESCAPES: &[&str] = &[
    "spark.kubernetes.executor.secrets.",
    "spark.kubernetes.executor.volumes.",
    "spark.kubernetes.executor.podTemplateFile",
    "spark.kubernetes.authenticate.",
];

fn server_container(pod: &Pod) -> &Container {
    pod.spec
        .as_ref()
        .and_then(|s| s.containers.iter().find(|c| c.name == SERVER_CONTAINER))
        .expect("the pod runs the server container")
}

/// What the operator decides about a server pod, whatever the template says.
fn assert_the_operators_parts_kept(pod: &Pod, plain: &Pod) {
    let (meta, plain_meta) = (&pod.metadata, &plain.metadata);
    assert_eq!(meta.name, plain_meta.name);
    assert_eq!(meta.namespace, plain_meta.namespace);
    assert_eq!(meta.owner_references, plain_meta.owner_references);
    assert_eq!(meta.finalizers, None);
    for (key, value) in plain_meta.labels.iter().flatten() {
        assert_eq!(
            meta.labels.as_ref().and_then(|l| l.get(key)),
            Some(value),
            "label {key}"
        );
    }
    let ours = |map: Option<&BTreeMap<String, String>>| {
        map.into_iter()
            .flatten()
            .filter(|(k, _)| k.starts_with("sparkconnect.dev/"))
            .count()
    };
    assert_eq!(ours(meta.labels.as_ref()), ours(plain_meta.labels.as_ref()));
    assert_eq!(ours(meta.annotations.as_ref()), 0);
    let (spec, plain_spec) = (
        pod.spec.as_ref().expect("spec"),
        plain.spec.as_ref().expect("spec"),
    );
    assert_eq!(spec.restart_policy, plain_spec.restart_policy);
    let (server, plain_server) = (server_container(pod), server_container(plain));
    // The server's address and token are the operator's (SPARK_USER is the team's to set).
    let managed = [
        "SPARK_DRIVER_BIND_ADDRESS",
        "SPARK_CONNECT_AUTHENTICATE_TOKEN",
    ];
    for plain_env in plain_server.env.iter().flatten() {
        if !managed.contains(&plain_env.name.as_str()) {
            continue;
        }
        let env: Vec<_> = server
            .env
            .iter()
            .flatten()
            .filter(|e| e.name == plain_env.name)
            .collect();
        assert_eq!(env, vec![plain_env], "env {}", plain_env.name);
    }
}

/// The Pod Security Standards' baseline, runAsNonRoot, the operator's ServiceAccount and the
/// server container's own restrictions and command line, read from the pod.
fn assert_unprivileged(pod: &Pod, plain: &Pod) {
    let (server, plain_server) = (server_container(pod), server_container(plain));
    assert_eq!(server.command, plain_server.command);
    assert_eq!(server.args, plain_server.args);
    let spec = pod.spec.as_ref().expect("spec");
    assert_eq!(
        spec.service_account_name.as_deref(),
        Some("analytics-spark")
    );
    assert_eq!(spec.service_account, None);
    for flag in [
        spec.host_network,
        spec.host_pid,
        spec.host_ipc,
        spec.host_users,
    ] {
        assert_ne!(flag, Some(true), "host namespace");
    }
    assert!(
        spec.volumes.iter().flatten().all(|v| v.host_path.is_none()),
        "hostPath"
    );
    assert!(spec.ephemeral_containers.is_none());
    let pod_sc = spec.security_context.as_ref().expect("pod securityContext");
    assert_eq!(pod_sc.run_as_non_root, Some(true));
    assert_ne!(pod_sc.run_as_user, Some(0));
    let seccomp = pod_sc.seccomp_profile.as_ref().map(|s| s.type_.as_str());
    assert!(
        matches!(seccomp, Some("RuntimeDefault" | "Localhost")),
        "{seccomp:?}"
    );
    assert!(
        pod_sc
            .sysctls
            .iter()
            .flatten()
            .all(|s| s.name.starts_with("net.ipv4.")),
        "unsafe sysctl"
    );
    let containers = spec
        .containers
        .iter()
        .chain(spec.init_containers.iter().flatten());
    for c in containers {
        assert!(
            c.ports
                .iter()
                .flatten()
                .all(|p| p.host_port.unwrap_or(0) == 0),
            "hostPort"
        );
        let Some(sc) = &c.security_context else {
            continue;
        };
        assert_ne!(sc.privileged, Some(true));
        assert_ne!(sc.run_as_user, Some(0));
        assert_ne!(sc.run_as_non_root, Some(false));
        assert_ne!(sc.proc_mount.as_deref(), Some("Unmasked"));
        assert!(
            sc.capabilities
                .as_ref()
                .and_then(|c| c.add.as_ref())
                .is_none_or(Vec::is_empty)
        );
        assert_ne!(
            sc.seccomp_profile.as_ref().map(|s| s.type_.as_str()),
            Some("Unconfined")
        );
        assert_ne!(
            sc.app_armor_profile.as_ref().map(|s| s.type_.as_str()),
            Some("Unconfined")
        );
        assert_ne!(
            sc.windows_options.as_ref().and_then(|w| w.host_process),
            Some(true)
        );
        let selinux = sc
            .se_linux_options
            .as_ref()
            .and_then(|s| s.type_.as_deref());
        assert!(
            selinux.is_none_or(|t| t.starts_with("container_")),
            "{selinux:?}"
        );
    }
    for (key, value) in pod.metadata.annotations.iter().flatten() {
        assert!(
            !(key.starts_with("container.apparmor") && value == "unconfined"),
            "{key}"
        );
    }
    let server = server_container(pod);
    let sc = server
        .security_context
        .as_ref()
        .expect("server securityContext");
    assert_eq!(sc.allow_privilege_escalation, Some(false));
    let drop = sc.capabilities.as_ref().and_then(|c| c.drop.as_ref());
    assert!(
        drop.is_some_and(|d| d.iter().any(|c| c == "ALL")),
        "{drop:?}"
    );
    assert!(
        server.env_from.as_ref().is_none_or(Vec::is_empty),
        "envFrom"
    );
    for env in server.env.iter().flatten() {
        assert!(
            !env.name.contains("JAVA")
                && !env.name.starts_with("SPARK_SUBMIT")
                && env.name != "SPARK_CONF_DIR",
            "env {}",
            env.name
        );
    }
    assert_conf_not_mounted_over(server);
    // The command line: no executor setting beyond the operator's own accounts.
    let args = server.args.as_deref().unwrap_or_default();
    for arg in args {
        let key = arg.split('=').next().unwrap_or_default();
        if key.ends_with("JavaOptions") && key.starts_with("spark.driver.") {
            assert!(
                !arg.replace(['\'', '"', '\\'], "").contains("-Dspark."),
                "{arg}"
            );
        }
        if ESCAPES.iter().any(|p| key.starts_with(p)) {
            assert!(
                key.ends_with(".serviceAccountName") && arg.contains("=analytics-spark"),
                "{arg}"
            );
        }
    }
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 5000,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn a_template_is_refused_or_the_pod_keeps_every_guarantee(
        template in template(),
        conf in spark_conf(),
        privileged in proptest::bool::weighted(0.2),
    ) {
        let spec = json!({
            "image": "apache/spark:4.3.0",
            "sparkConf": conf,
            "auth": {"mode": "Token"},
            "security": {"allowPrivileged": privileged},
        });
        let mut with_template = spec.clone();
        with_template["server"] = json!({"podTemplate": template});
        let (Some(plain), Some(hostile)) = (cluster(spec), cluster(with_template)) else {
            return Err(TestCaseError::fail("the spec parses"));
        };
        let Ok(valid) = validate(&hostile) else {
            return Ok(());
        };
        let pod = server_pod(&valid, pool_server());
        prop_assert!(pod.is_ok(), "accepted, yet no pod is built: {pod:?}");
        let pod = pod.unwrap_or_default();
        let Ok(plain) = validate(&plain) else {
            return Ok(()); // refused for its sparkConf alone
        };
        let plain = server_pod(&plain, pool_server()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        assert_the_operators_parts_kept(&pod, &plain);
        if !privileged {
            assert_unprivileged(&pod, &plain);
        }
    }

    #[test]
    fn a_mount_path_however_spelled_is_refused_or_clear_of_the_conf_directory(path in mount_path()) {
        let spec = json!({
            "image": "apache/spark:4.3.0",
            "server": {"podTemplate": {"spec": {
                "volumes": [{"name": "v", "emptyDir": {}}],
                "containers": [{"name": SERVER_CONTAINER, "volumeMounts": [{"name": "v", "mountPath": path}]}],
            }}},
        });
        let cluster = cluster(spec).ok_or_else(|| TestCaseError::fail("the spec parses"))?;
        let Ok(valid) = validate(&cluster) else {
            return Ok(());
        };
        let pod = server_pod(&valid, pool_server()).map_err(|e| TestCaseError::fail(e.to_string()))?;
        assert_conf_not_mounted_over(server_container(&pod));
    }

    #[test]
    fn any_json_anywhere_in_a_spec_is_an_error_or_builds_never_a_panic(spec in any_spec()) {
        let Some(cluster) = cluster(spec) else { return Ok(()) };
        let Ok(valid) = validate(&cluster) else { return Ok(()) };
        let _ = server_pod(&valid, pool_server());
        let _ = server_pod(&valid, ServerIdentity { role: ServerRole::Endpoint, ..pool_server() });
        let _ = service::server_service(&valid, SERVER);
        let _ = service::shared_service(&valid);
        let _ = secret::token_secret(&valid);
        let _ = rbac::driver_role(&valid);
        let _ = rbac::driver_role_binding(&valid);
        let _ = rbac::driver_service_account(&valid);
        let _ = rbac::executor_service_account(&valid);
    }
}

/// Any JSON, nested a few levels.
fn any_json() -> impl Strategy<Value = Value> {
    let leaf = prop_oneof![
        Just(Value::Null),
        any::<bool>().prop_map(Value::from),
        any::<i64>().prop_map(Value::from),
        any::<f64>().prop_map(Value::from),
        ".{0,12}".prop_map(Value::from),
        proptest::sample::select(vec![
            "0",
            "-1",
            "1e309",
            "99999999999999999999h",
            "2Gi",
            "1Ei",
            "5s",
            "*/0 * * * *",
            ""
        ])
        .prop_map(Value::from),
    ];
    leaf.prop_recursive(3, 24, 4, |inner| {
        prop_oneof![
            proptest::collection::vec(inner.clone(), 0..4).prop_map(Value::Array),
            proptest::collection::btree_map(
                proptest::sample::select(vec![
                    "spec",
                    "containers",
                    "name",
                    "env",
                    "securityContext",
                    "metadata",
                    "labels",
                    "x"
                ])
                .prop_map(String::from),
                inner,
                0..4
            )
            .prop_map(|m| Value::Object(m.into_iter().collect())),
        ]
    })
}

/// A spec with any JSON in any of its fields.
fn any_spec() -> impl Strategy<Value = Value> {
    let fields = [
        "/sparkConf",
        "/shared",
        "/server/resources/cores",
        "/server/resources/memory",
        "/server/port",
        "/server/podTemplate",
        "/executors/instances",
        "/executors/resources/memory",
        "/hotPool/idle",
        "/hotPool/max",
        "/hotPool/min",
        "/hotPool/maxServers",
        "/hotPool/claimTimeout",
        "/hotPool/maxIdleAge",
        "/hotPool/schedule",
        "/hotPool/autoscale/hitRatePercent",
        "/hotPool/autoscale/scaleDownDelay",
        "/probe/period",
        "/probe/timeout",
        "/probe/startupDeadline",
        "/warmup/sessions",
        "/warmup/queries",
        "/warmup/timeout",
        "/auth/mode",
        "/image",
    ];
    proptest::collection::vec(
        (proptest::sample::select(fields.to_vec()), any_json()),
        0..5,
    )
    .prop_map(|set| {
        let mut spec = json!({"image": "apache/spark:4.3.0"});
        for (pointer, value) in set {
            let mut at = &mut spec;
            let parts: Vec<&str> = pointer.trim_start_matches('/').split('/').collect();
            for (i, part) in parts.iter().enumerate() {
                if !at.is_object() {
                    *at = json!({});
                }
                if i + 1 == parts.len() {
                    at[*part] = value.clone();
                } else {
                    at = &mut at[*part];
                }
            }
        }
        spec
    })
}

/// No mount of `server` at, under or above Spark's conf directory, its path resolved as a
/// container runtime resolves it.
fn assert_conf_not_mounted_over(server: &Container) {
    let conf = resolved("/opt/spark/conf");
    for mount in server.volume_mounts.iter().flatten() {
        let path = resolved(&mount.mount_path);
        assert!(
            !path.starts_with(&conf) && !conf.starts_with(&path),
            "{}",
            mount.mount_path
        );
    }
}

/// A mount path spelled with separators, `.` and `..` among the directories around Spark's.
fn mount_path() -> impl Strategy<Value = String> {
    let part = proptest::sample::select(vec!["opt", "spark", "conf", "jars", "sp", ".", "..", ""]);
    (proptest::bool::ANY, proptest::collection::vec(part, 0..7)).prop_map(|(rooted, parts)| {
        let path = parts.join("/");
        if rooted { format!("/{path}") } else { path }
    })
}

/// `path` from the root with `.`, repeated separators and `..` resolved.
fn resolved(path: &str) -> std::path::PathBuf {
    let mut out = std::path::PathBuf::from("/");
    for component in std::path::Path::new(path).components() {
        match component {
            std::path::Component::Normal(name) => out.push(name),
            std::path::Component::ParentDir => {
                out.pop();
            }
            _ => {}
        }
    }
    out
}
