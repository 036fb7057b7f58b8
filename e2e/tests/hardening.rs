//! Hostile input and hostile tenants: every manifest at or beyond the bounds of both CRDs is
//! refused at admission with a readable message or reported as a condition; pods that copy a
//! pool's labels are never probed, exposed or claimed; Spark drivers and executors hold only
//! what they need; the operator never takes over an object it does not own, and puts back what
//! a hand edits. Afterwards the operator has not restarted, and other tenants still bind.

mod support;

use std::time::Duration;

use k8s_openapi::api::core::v1::{ConfigMap, Pod, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use k8s_openapi::api::rbac::v1::Role;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams};
use kube::{Client, ResourceExt};
use serde_json::{Value, json};
use spark_connect_operator::crd::{ClaimPhase, SparkConnectClaim, SparkConnectCluster};
use support::{World, bound, condition, create_pool, fake_spec, operator_restarts, wait_until};

/// What must become of a manifest.
enum Expect {
    /// `kubectl apply` fails, and its message contains this.
    Refused(&'static str),
    /// Accepted; the cluster becomes Degraded with this reason and a message containing this.
    Degraded(&'static str, &'static str),
    /// Accepted; the claim's Bound condition says this reason.
    ClaimWaits(&'static str),
}

fn cluster(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "sparkconnect.dev/v1alpha1", "kind": "SparkConnectCluster",
           "metadata": {"name": name}, "spec": spec})
}

fn claim(name: &str, spec: Value) -> Value {
    json!({"apiVersion": "sparkconnect.dev/v1alpha1", "kind": "SparkConnectClaim",
           "metadata": {"name": name}, "spec": spec})
}

/// A small valid spec with `patch` merged in.
fn spec(patch: Value) -> Value {
    let mut base = json!({"image": "sco-fake-connect:latest", "shared": 0, "hotPool": {"idle": 0}});
    merge(&mut base, patch);
    base
}

fn merge(base: &mut Value, patch: Value) {
    match (base, patch) {
        (Value::Object(b), Value::Object(p)) => {
            for (k, v) in p {
                merge(b.entry(k).or_insert(Value::Null), v);
            }
        }
        (b, p) => *b = p,
    }
}

fn template(spec: Value) -> Value {
    json!({"server": {"podTemplate": {"spec": spec}}})
}

fn cases() -> Vec<(Value, Expect)> {
    use Expect::*;
    let many_keys: serde_json::Map<String, Value> = (0..257)
        .map(|i| (format!("spark.custom.k{i}"), json!("v")))
        .collect();
    let many_labels: serde_json::Map<String, Value> =
        (0..70).map(|i| (format!("l{i}"), json!("v"))).collect();
    vec![
        // Durations: syntax, overflow, each field's range.
        (
            cluster("d1", spec(json!({"probe": {"period": "1ms"}}))),
            Refused("probe.period must be a duration such as 30s, 5m or 1h30m, from 1s to 10m"),
        ),
        (
            cluster("d2", spec(json!({"probe": {"timeout": "0s"}}))),
            Refused("probe.timeout must be a duration"),
        ),
        (
            cluster(
                "d3",
                spec(json!({"probe": {"startupDeadline": "99999999999999999999h"}})),
            ),
            Refused("probe.startupDeadline must be a duration"),
        ),
        (
            cluster("d4", spec(json!({"hotPool": {"maxIdleAge": "1s"}}))),
            Refused("hotPool.maxIdleAge must be a duration"),
        ),
        (
            cluster("d5", spec(json!({"hotPool": {"claimTimeout": "25h"}}))),
            Refused("hotPool.claimTimeout must be a duration"),
        ),
        (
            cluster(
                "d6",
                spec(json!({"hotPool": {"autoscale": {"scaleDownDelay": "1d"}}})),
            ),
            Refused("hotPool.autoscale.scaleDownDelay must be a duration"),
        ),
        (
            cluster("d7", spec(json!({"probe": {"period": "1h1h1h1h1h"}}))),
            Refused("probe.period must be a duration"),
        ),
        // Names: DNS-1035, length, unicode.
        (cluster("team.a", spec(json!({}))), Refused("DNS-1035")),
        (cluster("1team", spec(json!({}))), Refused("DNS-1035")),
        (
            cluster(&"x".repeat(41), spec(json!({}))),
            Refused("at most 40 characters"),
        ),
        (cluster("ténant", spec(json!({}))), Refused("metadata.name")),
        // Counts at and beyond their bounds.
        (
            cluster("c1", spec(json!({"hotPool": {"idle": -1}}))),
            Refused("spec.hotPool.idle"),
        ),
        (
            cluster("c2", spec(json!({"hotPool": {"idle": 1001, "max": 1001}}))),
            Refused("spec.hotPool.idle"),
        ),
        (
            cluster("c3", spec(json!({"hotPool": {"maxServers": 0}}))),
            Refused("spec.hotPool.maxServers"),
        ),
        (
            cluster(
                "c4",
                spec(json!({"shared": 2, "hotPool": {"idle": 5, "maxServers": 6}})),
            ),
            Refused("hotPool.maxServers must be at least shared + hotPool.idle"),
        ),
        (
            cluster("c5", spec(json!({"shared": 11}))),
            Refused("spec.shared"),
        ),
        (
            cluster(
                "c6",
                spec(json!({"executors": {"instances": 99_999_999_999_i64}})),
            ),
            Refused("spec.executors.instances"),
        ),
        (
            cluster("c7", spec(json!({"server": {"port": 70000}}))),
            Refused("spec.server.port"),
        ),
        (
            cluster(
                "c8",
                spec(json!({"server": {"resources": {"memory": "1Pi"}}})),
            ),
            Refused("memory must be at most 1Ti"),
        ),
        (
            cluster("c9", spec(json!({"server": {"resources": {"cores": 0}}}))),
            Refused("spec.server.resources.cores"),
        ),
        (
            cluster(
                "c10",
                spec(
                    json!({"executors": {"dynamicAllocation": {"minExecutors": 5, "maxExecutors": 1}}}),
                ),
            ),
            Refused("minExecutors must not exceed"),
        ),
        (
            cluster("c11", spec(json!({"hotPool": {"maxWaitingClaims": -5}}))),
            Refused("spec.hotPool.maxWaitingClaims"),
        ),
        // Strings: empty, huge, many.
        (
            cluster("s1", spec(json!({"image": ""}))),
            Refused("image must not be empty"),
        ),
        (
            cluster("s2", spec(json!({"image": "x".repeat(600)}))),
            Refused("spec.image"),
        ),
        (
            cluster("s3", spec(json!({"sparkConf": {"k".repeat(300): "v"}}))),
            Refused("sparkConf keys must be at most 256 characters"),
        ),
        (
            cluster(
                "s4",
                spec(json!({"sparkConf": {"spark.x": "v".repeat(5000)}})),
            ),
            Refused("spec.sparkConf"),
        ),
        (
            cluster("s5", spec(json!({"sparkConf": many_keys}))),
            Refused("spec.sparkConf"),
        ),
        (
            cluster(
                "s6",
                spec(json!({"auth": {"mode": "Token", "secretName": "Not_A_Secret"}})),
            ),
            Refused("auth.secretName must be a Secret name"),
        ),
        (
            cluster("s7", spec(json!({"imagePullPolicy": "Sometimes"}))),
            Refused("spec.imagePullPolicy"),
        ),
        (
            cluster("s8", spec(json!({"auth": {"mode": "Maybe"}}))),
            Refused("spec.auth.mode"),
        ),
        // Reserved labels and names in the pod template.
        (
            cluster(
                "r1",
                spec(
                    json!({"server": {"podTemplate": {"metadata": {"labels": {"sparkconnect.dev/state": "idle"}}}}}),
                ),
            ),
            Refused("labels the operator owns"),
        ),
        (
            cluster(
                "r2",
                spec(
                    json!({"server": {"podTemplate": {"metadata": {"labels": {"app.kubernetes.io/component": "server"}}}}}),
                ),
            ),
            Refused("labels the operator owns"),
        ),
        (
            cluster(
                "r3",
                spec(
                    json!({"server": {"podTemplate": {"metadata": {"namespace": "kube-system"}}}}),
                ),
            ),
            Refused("must not set metadata.name, metadata.namespace"),
        ),
        (
            cluster(
                "r4",
                spec(json!({"server": {"podTemplate": {"metadata": {"labels": many_labels}}}})),
            ),
            Refused("spec.server.podTemplate.metadata.labels"),
        ),
        // Judged by the operator: Degraded with a condition and an Event, no servers.
        (
            cluster(
                "o1",
                spec(json!({"sparkConf": {"spark.master": "local[1]"}})),
            ),
            Degraded("InvalidSpec", "spark.master"),
        ),
        (
            cluster(
                "o2",
                spec(template(
                    json!({"containers": [{"name": "spark-connect-server", "securityContext": {"privileged": true}}]}),
                )),
            ),
            Degraded("InvalidSpec", "is privileged"),
        ),
        (
            cluster(
                "o3",
                spec(template(
                    json!({"volumes": [{"name": "root", "hostPath": {"path": "/"}}]}),
                )),
            ),
            Degraded("InvalidSpec", "hostPath"),
        ),
        (
            cluster("o4", spec(template(json!({"hostNetwork": true})))),
            Degraded("InvalidSpec", "hostNetwork"),
        ),
        (
            cluster("o5", spec(template(json!({"serviceAccountName": "admin"})))),
            Degraded("InvalidSpec", "serviceAccountName"),
        ),
        (
            cluster(
                "o6",
                spec(template(
                    json!({"containers": [{"name": "side", "image": "x", "securityContext": {"runAsUser": 0}}]}),
                )),
            ),
            Degraded("InvalidSpec", "runs as root"),
        ),
        (
            cluster(
                "o7",
                spec(json!({"sparkConf": {"spark.kubernetes.executor.secrets.db": "/db"}})),
            ),
            Degraded("InvalidSpec", "executor.secrets.db"),
        ),
        (
            cluster(
                "o8",
                spec(
                    json!({"sparkConf": {"spark.kubernetes.executor.label.app.kubernetes.io/component": "server"}}),
                ),
            ),
            Degraded("InvalidSpec", "operator manages"),
        ),
        (
            cluster(
                "o9",
                spec(
                    json!({"sparkConf": {"spark.kubernetes.executor.volumes.hostPath.h.mount.path": "/h"}}),
                ),
            ),
            Degraded("InvalidSpec", "hostPath"),
        ),
        (
            cluster(
                "o10",
                spec(json!({"probe": {"period": "5s", "timeout": "5s"}})),
            ),
            Degraded("InvalidSpec", "probe.timeout"),
        ),
        (
            cluster("o11", spec(template(json!({"containers": "not a list"})))),
            Degraded("InvalidSpec", "not a valid pod template"),
        ),
        // What the operator decides about a server, and the baseline around it.
        (
            cluster(
                "o12",
                spec(template(
                    json!({"containers": [{"name": "spark-connect-server", "args": ["--conf", "spark.kubernetes.executor.secrets.db=/db"]}]}),
                )),
            ),
            Degraded("InvalidSpec", "replaces the command line"),
        ),
        (
            cluster(
                "o13",
                spec(template(
                    json!({"containers": [{"name": "spark-connect-server", "env": [{"name": "SPARK_CONNECT_AUTHENTICATE_TOKEN", "value": "known"}]}]}),
                )),
            ),
            Degraded("InvalidSpec", "env SPARK_CONNECT_AUTHENTICATE_TOKEN"),
        ),
        (
            cluster(
                "o14",
                spec(
                    json!({"sparkConf": {"spark.driver.extraJavaOptions": "-D'spark.kubernetes.executor.secrets.db=/db'"}}),
                ),
            ),
            Degraded("InvalidSpec", "-Dspark."),
        ),
        (
            cluster(
                "o15",
                spec(template(
                    json!({"securityContext": {"seccompProfile": {"type": "Unconfined"}}}),
                )),
            ),
            Degraded("InvalidSpec", "turns seccomp off"),
        ),
        (
            cluster(
                "o16",
                spec(template(
                    json!({"containers": [{"name": "spark-connect-server", "securityContext": {"capabilities": {"drop": []}}}]}),
                )),
            ),
            Degraded("InvalidSpec", "drops fewer capabilities than ALL"),
        ),
        (
            cluster(
                "o17",
                spec(
                    json!({"server": {"podTemplate": {"metadata": {"annotations": {"sparkconnect.dev/claim": "someone"}}}}}),
                ),
            ),
            Degraded("InvalidSpec", "annotations sparkconnect.dev/claim"),
        ),
        (
            cluster(
                "o18",
                spec(template(json!({"volumes": [{"name": "v", "emptyDir": {}}],
                           "containers": [{"name": "spark-connect-server", "volumeMounts": [{"name": "v", "mountPath": "/opt//spark/./conf/"}]}]}))),
            ),
            Degraded("InvalidSpec", "mounts over /opt/spark/conf"),
        ),
        // Claims.
        (
            claim(
                "k1",
                json!({"cluster": "good", "ttl": "99999999999999999999h"}),
            ),
            Refused("ttl must be a duration"),
        ),
        (
            claim("k2", json!({"cluster": "good", "ttl": "0s"})),
            Refused("ttl must be a duration"),
        ),
        (
            claim("k3", json!({"cluster": ""})),
            Refused("cluster must name a SparkConnectCluster"),
        ),
        (
            claim("k4", json!({"cluster": "UPPER"})),
            Refused("DNS-1035"),
        ),
        (
            claim("k5", json!({"cluster": "good", "user": "u".repeat(300)})),
            Refused("spec.user"),
        ),
        (
            claim("k6", json!({"cluster": "good", "user": "bob\u{7}"})),
            Refused("control characters"),
        ),
        (
            claim("k7", json!({"cluster": "x".repeat(41)})),
            Refused("spec.cluster"),
        ),
        (
            claim("k8", json!({"cluster": "no-such-cluster"})),
            ClaimWaits("ClusterNotFound"),
        ),
    ]
}

#[tokio::test]
async fn hostile_manifests_are_refused_or_reported_and_no_tenant_is_stopped() {
    let world = World::connect().await;
    let restarts_before = operator_restarts(&world).await;
    let leader_before = world.leader_identity().await;
    let good_ns = world.namespace("e2e-good-tenant").await;
    let goods: Api<SparkConnectCluster> = Api::namespaced(world.client.clone(), &good_ns.name);
    create_pool(
        &goods,
        "good",
        fake_spec(1, 5, 10),
        1,
        Duration::from_secs(120),
    )
    .await;

    let ns = world.namespace("e2e-hostile").await;
    let clusters: Api<SparkConnectCluster> = Api::namespaced(world.client.clone(), &ns.name);
    let claims: Api<SparkConnectClaim> = Api::namespaced(world.client.clone(), &ns.name);
    let cases = cases();
    assert!(cases.len() >= 30, "the suite covers at least 30 manifests");
    let (mut refused, mut reported) = (0, 0);
    for (manifest, expect) in &cases {
        let name = manifest["metadata"]["name"]
            .as_str()
            .unwrap_or_default()
            .to_string();
        let kind = manifest["kind"].as_str().unwrap_or_default().to_string();
        let out = world.kubectl(
            &["apply", "-n", &ns.name, "-f", "-"],
            Some(&manifest.to_string()),
        );
        let stderr = String::from_utf8_lossy(&out.stderr).to_string();
        match expect {
            Expect::Refused(message) => {
                assert!(!out.status.success(), "{kind} {name} must be refused");
                assert!(
                    stderr.contains(message),
                    "{kind} {name}: expected {message:?} in: {stderr}"
                );
                refused += 1;
            }
            Expect::Degraded(reason, message) => {
                assert!(out.status.success(), "{kind} {name} is admitted: {stderr}");
                wait_until(
                    Duration::from_secs(60),
                    &format!("{name} Degraded/{reason} naming {message:?}"),
                    || async {
                        clusters.get(&name).await.ok().is_some_and(|c| {
                            condition(&c, "Degraded").is_some_and(|d| {
                                d.status == "True"
                                    && d.reason == *reason
                                    && d.message.contains(message)
                            })
                        })
                    },
                )
                .await;
                reported += 1;
            }
            Expect::ClaimWaits(reason) => {
                assert!(out.status.success(), "{kind} {name} is admitted: {stderr}");
                wait_until(
                    Duration::from_secs(60),
                    &format!("claim {name} waiting with {reason}"),
                    || async {
                        claims
                            .get(&name)
                            .await
                            .ok()
                            .and_then(|c| c.status)
                            .is_some_and(|s| {
                                s.phase == ClaimPhase::Pending
                                    && s.conditions.iter().any(|c| c.reason == *reason)
                            })
                    },
                )
                .await;
                reported += 1;
            }
        }
    }
    println!(
        "{} hostile manifests: {refused} refused at admission, {reported} reported as conditions",
        cases.len()
    );
    // Clusters the operator judged invalid started nothing.
    assert!(
        support::live_pods(&world.client, &ns.name, "sparkconnect.dev/cluster")
            .await
            .is_empty()
    );
    // A claim with a huge (but admissible) unicode user still binds on the good tenant's
    // cluster, and so does an ordinary one.
    let good_claims: Api<SparkConnectClaim> = Api::namespaced(world.client.clone(), &good_ns.name);
    for (name, user) in [
        ("unicode", "ünïcødé 用户 ".repeat(20)),
        ("plain", "alice".into()),
    ] {
        let claim: SparkConnectClaim = serde_json::from_value(
            json!({"metadata": {"name": name}, "spec": {"cluster": "good", "user": user}}),
        )
        .unwrap();
        good_claims
            .create(&PostParams::default(), &claim)
            .await
            .unwrap();
        bound(&good_claims, name).await;
    }
    assert_eq!(
        operator_restarts(&world).await,
        restarts_before,
        "no operator process restarted"
    );
    assert_eq!(
        world.leader_identity().await,
        leader_before,
        "the same leader"
    );
}

/// A tenant: a ServiceAccount that may manage pods and the operator's resources in `ns`.
fn make_tenant(world: &World, ns: &str) -> String {
    let yaml = format!(
        r#"apiVersion: v1
kind: ServiceAccount
metadata: {{name: tenant, namespace: {ns}}}
---
apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: tenant, namespace: {ns}}}
rules:
  - apiGroups: [""]
    resources: ["pods"]
    verbs: ["get", "list", "create", "patch", "update", "delete"]
  - apiGroups: ["sparkconnect.dev"]
    resources: ["sparkconnectclusters", "sparkconnectclaims"]
    verbs: ["get", "list", "create", "patch", "update", "delete"]
  - apiGroups: [""]
    resources: ["configmaps"]
    verbs: ["get", "list", "create", "patch", "update", "delete"]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: tenant, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: tenant}}
subjects: [{{kind: ServiceAccount, name: tenant, namespace: {ns}}}]
"#
    );
    let out = world.kubectl(&["apply", "-f", "-"], Some(&yaml));
    assert!(support::succeeded(&out));
    format!("system:serviceaccount:{ns}:tenant")
}

fn pod_manifest(name: &str, labels: Value, extra_args: &[&str]) -> Value {
    let mut args = vec!["--listen", "0.0.0.0:15002", "--log-calls"];
    args.extend_from_slice(extra_args);
    json!({"apiVersion": "v1", "kind": "Pod",
           "metadata": {"name": name, "labels": labels},
           "spec": {"containers": [{"name": "spark-connect-server", "image": "sco-fake-connect:latest",
                                     "command": ["/sco-fake-connect"], "args": args}]}})
}

/// A ConfigMap someone made under the name of a cluster's bind ledger before the operator
/// could (`make_tenant` may create ConfigMaps) takes nothing: the cluster's claims wait, and
/// the cluster says why with a Warning Event and its Degraded condition; once it is removed,
/// they bind.
#[tokio::test]
async fn a_configmap_squatting_a_clusters_ledger_name_keeps_its_claims_waiting_and_says_so() {
    let world = World::connect().await;
    let ns = world.namespace("e2e-squat").await;
    let tenant = make_tenant(&world, &ns.name);
    let squatter = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "squat-binds"}, "data": {"note": "mine"}});
    let out = world.kubectl(
        &["--as", &tenant, "create", "-n", &ns.name, "-f", "-"],
        Some(&squatter.to_string()),
    );
    assert!(
        support::succeeded(&out),
        "an unlabelled ConfigMap is allowed"
    );
    let clusters: Api<SparkConnectCluster> = Api::namespaced(world.client.clone(), &ns.name);
    create_pool(
        &clusters,
        "squat",
        fake_spec(1, 3, 10),
        1,
        Duration::from_secs(120),
    )
    .await;
    let claims: Api<SparkConnectClaim> = Api::namespaced(world.client.clone(), &ns.name);
    let claim: SparkConnectClaim = serde_json::from_value(
        json!({"metadata": {"name": "waits"}, "spec": {"cluster": "squat"}}),
    )
    .unwrap();
    claims.create(&PostParams::default(), &claim).await.unwrap();
    wait_until(Duration::from_secs(60), "the conflict reported", || async {
        clusters.get("squat").await.ok().is_some_and(|c| {
            condition(&c, "Degraded").is_some_and(|d| d.message.contains("ConfigMap squat-binds"))
        })
    })
    .await;
    let events: Api<k8s_openapi::api::events::v1::Event> =
        Api::namespaced(world.client.clone(), &ns.name);
    wait_until(
        Duration::from_secs(30),
        "a NameConflict Warning Event",
        || async {
            events.list(&ListParams::default()).await.is_ok_and(|l| {
                l.items.iter().any(|e| {
                    e.reason.as_deref() == Some("NameConflict")
                        && e.type_.as_deref() == Some("Warning")
                        && e.note.as_deref().is_some_and(|n| n.contains("squat-binds"))
                })
            })
        },
    )
    .await;
    let waiting = claims.get("waits").await.unwrap().status.unwrap();
    assert_eq!(waiting.phase, ClaimPhase::Pending, "{waiting:?}");
    assert!(waiting.server.is_none());

    let config_maps: Api<ConfigMap> = Api::namespaced(world.client.clone(), &ns.name);
    config_maps
        .delete("squat-binds", &DeleteParams::default())
        .await
        .unwrap();
    let claim = bound(&claims, "waits").await;
    let ledger = config_maps.get("squat-binds").await.unwrap();
    let server = claim.status.and_then(|s| s.server).unwrap();
    assert!(
        ledger.data.unwrap_or_default().contains_key(&server),
        "the operator's own ledger now holds {server}"
    );
}

#[tokio::test]
async fn pods_copying_pool_labels_are_refused_or_ignored_never_probed_exposed_or_claimed() {
    let world = World::connect().await;
    let ns = world.namespace("e2e-foreign").await;
    let clusters: Api<SparkConnectCluster> = Api::namespaced(world.client.clone(), &ns.name);
    let mut spec = fake_spec(1, 5, 10);
    spec["shared"] = json!(1);
    spec["auth"] = json!({"mode": "Token"});
    create_pool(&clusters, "pool", spec, 1, Duration::from_secs(120)).await;
    let labels = json!({"sparkconnect.dev/cluster": "pool", "app.kubernetes.io/component": "server",
                        "app.kubernetes.io/managed-by": "spark-connect-operator",
                        "sparkconnect.dev/state": "idle", "sparkconnect.dev/server": "impostor"});

    // A tenant can neither create a pod that claims to be a server nor relabel a real one.
    let tenant = make_tenant(&world, &ns.name);
    let out = world.kubectl(
        &["--as", &tenant, "apply", "-n", &ns.name, "-f", "-"],
        Some(&pod_manifest("impostor", labels.clone(), &[]).to_string()),
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("only the spark-connect-operator creates"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // An idle server of the pool (not the shared endpoint's standby): the next claim's.
    let idle = "sparkconnect.dev/state=idle,sparkconnect.dev/role=pool";
    wait_until(Duration::from_secs(120), "an idle pool server", || async {
        !support::live_pods(&world.client, &ns.name, idle)
            .await
            .is_empty()
    })
    .await;
    let real = support::live_pods(&world.client, &ns.name, idle).await;
    let real = real.first().expect("an idle server").name_any();
    let out = world.kubectl(
        &[
            "--as",
            &tenant,
            "label",
            "-n",
            &ns.name,
            "pod",
            &real,
            "--overwrite",
            "sparkconnect.dev/state=retiring",
        ],
        None,
    );
    assert!(!out.status.success(), "a tenant cannot relabel a server");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("set by the spark-connect-operator only")
    );
    // Nor hand a server to a claim by writing the cluster's bind ledger (made when the shared
    // server was taken), or by making one.
    let config_maps: Api<ConfigMap> = Api::namespaced(world.client.clone(), &ns.name);
    wait_until(Duration::from_secs(60), "the bind ledger", || async {
        config_maps
            .get_opt("pool-binds")
            .await
            .ok()
            .flatten()
            .is_some()
    })
    .await;
    let entry = json!({"pod": "any", "holder": "mine"}).to_string();
    let patch = json!({"data": {real.clone(): entry}}).to_string();
    let out = world.kubectl(
        &[
            "--as",
            &tenant,
            "patch",
            "-n",
            &ns.name,
            "configmap",
            "pool-binds",
            "--type",
            "merge",
            "-p",
            &patch,
        ],
        None,
    );
    assert!(!out.status.success(), "a tenant cannot write a bind ledger");
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("written by the spark-connect-operator only"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let labelled = json!({"apiVersion": "v1", "kind": "ConfigMap",
        "metadata": {"name": "other-binds",
                     "labels": {"sparkconnect.dev/cluster": "other", "app.kubernetes.io/component": "server-binds"}},
        "data": {real.clone(): entry}});
    let out = world.kubectl(
        &["--as", &tenant, "create", "-n", &ns.name, "-f", "-"],
        Some(&labelled.to_string()),
    );
    assert!(!out.status.success(), "a tenant cannot make a bind ledger");
    // Nor free the servers it holds by deleting it.
    let out = world.kubectl(
        &[
            "--as",
            &tenant,
            "delete",
            "-n",
            &ns.name,
            "configmap",
            "pool-binds",
        ],
        None,
    );
    assert!(
        !out.status.success(),
        "a tenant cannot delete a bind ledger"
    );
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("written by the spark-connect-operator only"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );

    // An admin (allowed to manage servers) can make such a pod; the operator ignores it
    // because it does not own it.
    let out = world.kubectl(
        &["apply", "-n", &ns.name, "-f", "-"],
        Some(&pod_manifest("impostor", labels, &[]).to_string()),
    );
    assert!(support::succeeded(&out));
    let pods: Api<Pod> = Api::namespaced(world.client.clone(), &ns.name);
    wait_until(Duration::from_secs(60), "the impostor running", || async {
        pods.get("impostor")
            .await
            .ok()
            .and_then(|p| p.status?.pod_ip)
            .is_some()
    })
    .await;
    let impostor_ip = support::pod_ip(&world.client, &ns.name, "impostor").await;
    wait_until(Duration::from_secs(60), "ForeignPods reported", || async {
        clusters.get("pool").await.ok().is_some_and(|c| {
            condition(&c, "Degraded").is_some_and(|d| d.message.contains("impostor"))
        })
    })
    .await;
    // Claims keep binding to the cluster's own servers only.
    let claims: Api<SparkConnectClaim> = Api::namespaced(world.client.clone(), &ns.name);
    for i in 0..3 {
        let claim: SparkConnectClaim = serde_json::from_value(
            json!({"metadata": {"name": format!("c{i}")}, "spec": {"cluster": "pool"}}),
        )
        .unwrap();
        claims.create(&PostParams::default(), &claim).await.unwrap();
        wait_until(Duration::from_secs(90), "claim bound", || async {
            claims
                .get(&format!("c{i}"))
                .await
                .ok()
                .and_then(|c| c.status)
                .is_some_and(|s| s.phase == ClaimPhase::Bound)
        })
        .await;
        let server = claims
            .get(&format!("c{i}"))
            .await
            .unwrap()
            .status
            .unwrap()
            .server
            .unwrap();
        assert_ne!(server, "impostor");
    }
    // Never behind the shared Service, never probed (its call log stays empty).
    let slices: Api<EndpointSlice> = Api::namespaced(world.client.clone(), &ns.name);
    let shared = slices.get("pool").await.unwrap();
    let addresses: Vec<String> = shared
        .endpoints
        .unwrap_or_default()
        .into_iter()
        .flat_map(|e| e.addresses)
        .collect();
    assert_eq!(addresses.len(), 1, "one shared server");
    assert!(!addresses.contains(&impostor_ip));
    let log = std::fs::read_to_string(world.state.join(format!("pods/{}_impostor/log", ns.name)))
        .unwrap_or_default();
    assert!(
        !log.contains("call:"),
        "the impostor was never called: {log}"
    );
    let targets = world
        .metric(
            "spark_connect_operator_probe_targets",
            &format!("namespace=\"{}\"", ns.name),
        )
        .await;
    let own = support::live_pods(
        &world.client,
        &ns.name,
        "sparkconnect.dev/cluster=pool,app.kubernetes.io/component=server",
    )
    .await
    .into_iter()
    .filter(|p| p.name_any() != "impostor")
    .filter(|p| p.status.as_ref().and_then(|s| s.pod_ip.as_ref()).is_some())
    .count();
    assert!(
        targets as usize <= own,
        "probe targets {targets} are the cluster's own servers ({own})"
    );
}

/// A client that authenticates with `token` instead of the admin certificate.
async fn client_with_token(world: &World, token: &str) -> Client {
    let mut config = sco_e2e::world_config(&world.state).await.unwrap();
    config.auth_info = kube::config::AuthInfo {
        token: Some(token.to_string().into()),
        ..Default::default()
    };
    Client::try_from(config).unwrap()
}

/// The ServiceAccount token mounted in a pod of the world.
fn mounted_token(world: &World, ns: &str, pod: &str) -> Option<String> {
    fn find(dir: &std::path::Path) -> Option<std::path::PathBuf> {
        for entry in std::fs::read_dir(dir).ok()?.flatten() {
            let path = entry.path();
            if path.is_dir() {
                if let Some(found) = find(&path) {
                    return Some(found);
                }
            } else if path.file_name().is_some_and(|n| n == "token")
                && path.to_string_lossy().contains("kube-api-access")
            {
                return Some(path);
            }
        }
        None
    }
    let file = find(&world.state.join(format!("pods/{ns}_{pod}")))?;
    std::fs::read_to_string(file).ok()
}

#[tokio::test]
async fn a_drivers_token_reaches_only_its_own_executors() {
    let world = World::connect().await;
    let ns = world.namespace("e2e-privilege").await;
    let clusters: Api<SparkConnectCluster> = Api::namespaced(world.client.clone(), &ns.name);
    create_pool(
        &clusters,
        "least",
        fake_spec(2, 5, 10),
        2,
        Duration::from_secs(120),
    )
    .await;
    let servers = support::live_pods(&world.client, &ns.name, "sparkconnect.dev/state=idle").await;
    let (me, other) = (servers[0].name_any(), servers[1].name_any());
    let me_uid = servers[0].uid().unwrap();
    let token = mounted_token(&world, &ns.name, &me).expect("the driver's mounted token");
    let driver = client_with_token(&world, &token).await;
    let pods: Api<Pod> = Api::namespaced(driver.clone(), &ns.name);
    let refused =
        |e: kube::Error| matches!(e, kube::Error::Api(s) if s.code == 403 || s.code == 422);

    // No Secrets, no Services.
    let secrets: Api<k8s_openapi::api::core::v1::Secret> =
        Api::namespaced(driver.clone(), &ns.name);
    assert!(refused(
        secrets.list(&ListParams::default()).await.unwrap_err()
    ));
    let services: Api<Service> = Api::namespaced(driver.clone(), &ns.name);
    assert!(refused(
        services
            .delete("least", &DeleteParams::default())
            .await
            .unwrap_err()
    ));
    // Another server: neither deleted nor relabelled.
    let err = pods
        .delete(&other, &DeleteParams::default())
        .await
        .unwrap_err();
    assert!(
        format!("{err}").contains("may only manage the executor pods"),
        "{err}"
    );
    let relabel = json!({"metadata": {"labels": {"sparkconnect.dev/state": "claimed"}}});
    assert!(refused(
        pods.patch(&other, &PatchParams::default(), &Patch::Merge(&relabel))
            .await
            .unwrap_err()
    ));
    // A pod it does not own, or one posing as a server, is refused; an executor it owns,
    // running as the executor account, is allowed (server-side dry run).
    let owner = json!([{"apiVersion": "v1", "kind": "Pod", "name": me, "uid": me_uid}]);
    let pod = |labels: Value, owners: Value, account: &str| -> Pod {
        serde_json::from_value(
            json!({"metadata": {"name": "probe-pod", "labels": labels, "ownerReferences": owners},
            "spec": {"serviceAccountName": account, "containers": [{"name": "c", "image": "x"}]}}),
        )
        .unwrap()
    };
    let dry = PostParams {
        dry_run: true,
        ..PostParams::default()
    };
    let executor = json!({"app.kubernetes.io/component": "executor"});
    let err = pods
        .create(
            &dry,
            &pod(executor.clone(), json!([]), "least-spark-executor"),
        )
        .await
        .unwrap_err();
    assert!(format!("{err}").contains("may only manage"), "{err}");
    let err = pods
        .create(
            &dry,
            &pod(
                json!({"app.kubernetes.io/component": "server"}),
                owner.clone(),
                "least-spark",
            ),
        )
        .await
        .unwrap_err();
    assert!(
        format!("{err}").contains("executor pods that run as"),
        "{err}"
    );
    pods.create(
        &dry,
        &pod(executor.clone(), owner.clone(), "least-spark-executor"),
    )
    .await
    .expect("a driver may start its own executors");
    // ...but not one that reads the namespace's Secrets or the node's files: code running in a
    // driver of a cluster without allowPrivileged gets no more through an executor.
    let with = |patch: Value| -> Pod {
        let mut pod =
            serde_json::to_value(pod(executor.clone(), owner.clone(), "least-spark-executor"))
                .unwrap();
        merge(&mut pod, json!({"spec": patch}));
        serde_json::from_value(pod).unwrap()
    };
    let escapes = [
        json!({"volumes": [{"name": "s", "secret": {"secretName": "least-connect-token"}}]}),
        json!({"volumes": [{"name": "h", "hostPath": {"path": "/"}}]}),
        json!({"volumes": [{"name": "p", "projected": {"sources": [{"secret": {"name": "least-connect-token"}}]}}]}),
        json!({"containers": [{"name": "c", "image": "x", "env": [{"name": "T", "valueFrom": {"secretKeyRef": {"name": "least-connect-token", "key": "token"}}}]}]}),
        json!({"containers": [{"name": "c", "image": "x", "securityContext": {"privileged": true}}]}),
        json!({"hostNetwork": true}),
    ];
    for escape in &escapes {
        let err = pods.create(&dry, &with(escape.clone())).await.unwrap_err();
        assert!(
            format!("{err}").contains("without spec.security.allowPrivileged"),
            "{escape}: {err}"
        );
    }
    // A cluster with allowPrivileged lets its drivers' executors have them (its sparkConf may
    // ask for secrets and host paths).
    let mut wide_spec = fake_spec(1, 2, 10);
    wide_spec["security"] = json!({"allowPrivileged": true});
    create_pool(&clusters, "wide", wide_spec, 1, Duration::from_secs(120)).await;
    let wide = support::live_pods(
        &world.client,
        &ns.name,
        "sparkconnect.dev/cluster=wide,sparkconnect.dev/state=idle",
    )
    .await;
    let wide_token =
        mounted_token(&world, &ns.name, &wide[0].name_any()).expect("the wide driver's token");
    let wide_pods: Api<Pod> =
        Api::namespaced(client_with_token(&world, &wide_token).await, &ns.name);
    let wide_owner = json!([{"apiVersion": "v1", "kind": "Pod", "name": wide[0].name_any(), "uid": wide[0].uid().unwrap()}]);
    let mut privileged_executor =
        serde_json::to_value(pod(executor, wide_owner, "wide-spark-executor")).unwrap();
    merge(
        &mut privileged_executor,
        json!({"spec": escapes[0].clone()}),
    );
    wide_pods
        .create(&dry, &serde_json::from_value(privileged_executor).unwrap())
        .await
        .expect("a privileged cluster's driver may give its executors a Secret");
    // The executors' account has no token mounted and no rights.
    let accounts: Api<k8s_openapi::api::core::v1::ServiceAccount> =
        Api::namespaced(world.client.clone(), &ns.name);
    let executor_account = accounts.get("least-spark-executor").await.unwrap();
    assert_eq!(
        executor_account.automount_service_account_token,
        Some(false)
    );
    let role = Api::<Role>::namespaced(world.client.clone(), &ns.name)
        .get("least-spark")
        .await
        .unwrap();
    let resources: Vec<String> = role
        .rules
        .unwrap_or_default()
        .into_iter()
        .flat_map(|r| r.resources.unwrap_or_default())
        .collect();
    assert!(
        !resources.iter().any(|r| r == "secrets" || r == "services"),
        "{resources:?}"
    );
}

#[tokio::test]
async fn the_operator_never_takes_over_objects_and_puts_back_hand_edits() {
    let world = World::connect().await;
    let ns = world.namespace("e2e-ownership").await;
    let client = world.client.clone();
    let clusters: Api<SparkConnectCluster> = Api::namespaced(client.clone(), &ns.name);
    let services: Api<Service> = Api::namespaced(client.clone(), &ns.name);

    // Someone else's Service holds the name: the cluster reports it and leaves it alone.
    let theirs: Service = serde_json::from_value(
        json!({"metadata": {"name": "taken", "labels": {"owner": "someone"}},
        "spec": {"selector": {"app": "theirs"}, "ports": [{"port": 80}]}}),
    )
    .unwrap();
    services
        .create(&PostParams::default(), &theirs)
        .await
        .unwrap();
    let mut spec = fake_spec(0, 5, 10);
    spec["shared"] = json!(1);
    clusters
        .create(
            &PostParams::default(),
            &serde_json::from_value(json!({"metadata": {"name": "taken"}, "spec": spec})).unwrap(),
        )
        .await
        .unwrap();
    wait_until(Duration::from_secs(60), "NameConflict reported", || async {
        clusters.get("taken").await.ok().is_some_and(|c| {
            condition(&c, "Degraded").is_some_and(|d| {
                d.reason == "NameConflict"
                    && d.message
                        .contains("Service taken already exists and is not owned")
            })
        })
    })
    .await;
    let svc = services.get("taken").await.unwrap();
    assert!(svc.owner_references().is_empty());
    assert_eq!(svc.spec.unwrap().selector.unwrap()["app"], "theirs");

    // Hand edits of owned objects are reverted.
    let mut spec = fake_spec(1, 5, 10);
    spec["shared"] = json!(1);
    create_pool(&clusters, "drift", spec, 1, Duration::from_secs(120)).await;
    let roles: Api<Role> = Api::namespaced(client.clone(), &ns.name);
    let widen = json!({"rules": [{"apiGroups": ["*"], "resources": ["*"], "verbs": ["*"]}]});
    roles
        .patch(
            "drift-spark",
            &PatchParams::default(),
            &Patch::Merge(&widen),
        )
        .await
        .unwrap();
    let steer = json!({"spec": {"selector": {"app": "elsewhere"}}});
    services
        .patch("drift", &PatchParams::default(), &Patch::Merge(&steer))
        .await
        .unwrap();
    wait_until(
        Duration::from_secs(60),
        "the Role and the Service put back",
        || async {
            let role_ok = roles.get("drift-spark").await.ok().is_some_and(|r| {
                !r.rules
                    .unwrap_or_default()
                    .iter()
                    .any(|rule| rule.verbs.iter().any(|v| v == "*"))
            });
            let svc_ok = services.get("drift").await.ok().is_some_and(|s| {
                s.spec
                    .and_then(|s| s.selector)
                    .is_none_or(|sel| sel.is_empty())
            });
            role_ok && svc_ok
        },
    )
    .await;

    // shared: 0 removes the shared Service and clears the endpoint from the status.
    clusters
        .patch(
            "drift",
            &PatchParams::default(),
            &Patch::Merge(json!({"spec": {"shared": 0}})),
        )
        .await
        .unwrap();
    wait_until(
        Duration::from_secs(60),
        "the shared Service gone, endpoint cleared",
        || async {
            services.get_opt("drift").await.ok().flatten().is_none()
                && clusters
                    .get("drift")
                    .await
                    .ok()
                    .and_then(|c| c.status)
                    .is_some_and(|s| s.endpoint.is_none())
        },
    )
    .await;
}

#[tokio::test]
async fn privileged_settings_need_the_opt_in_and_the_opt_in_needs_its_rbac_verb() {
    let world = World::connect().await;
    let ns = world.namespace("e2e-privileged").await;
    let clusters: Api<SparkConnectCluster> = Api::namespaced(world.client.clone(), &ns.name);
    let tenant = make_tenant(&world, &ns.name);
    let privileged = |name: &str| {
        cluster(
            name,
            spec(json!({
                "security": {"allowPrivileged": true},
                "sparkConf": {"spark.kubernetes.executor.secrets.db": "/db"}
            })),
        )
    };
    // A tenant who may create clusters may not opt in to privileged settings...
    let out = world.kubectl(
        &["--as", &tenant, "apply", "-n", &ns.name, "-f", "-"],
        Some(&privileged("by-tenant").to_string()),
    );
    assert!(!out.status.success());
    assert!(
        String::from_utf8_lossy(&out.stderr).contains("needs the RBAC verb allow-privileged"),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    // ...until granted the verb; then the same settings are accepted and not reported.
    let grant = format!(
        r#"apiVersion: rbac.authorization.k8s.io/v1
kind: Role
metadata: {{name: privileged, namespace: {ns}}}
rules: [{{apiGroups: ["sparkconnect.dev"], resources: ["sparkconnectclusters"], verbs: ["allow-privileged"]}}]
---
apiVersion: rbac.authorization.k8s.io/v1
kind: RoleBinding
metadata: {{name: privileged, namespace: {ns}}}
roleRef: {{apiGroup: rbac.authorization.k8s.io, kind: Role, name: privileged}}
subjects: [{{kind: ServiceAccount, name: tenant, namespace: {ns}}}]
"#,
        ns = ns.name
    );
    assert!(support::succeeded(
        &world.kubectl(&["apply", "-f", "-"], Some(&grant))
    ));
    wait_until(Duration::from_secs(30), "the opt-in admitted", || async {
        world
            .kubectl(
                &["--as", &tenant, "apply", "-n", &ns.name, "-f", "-"],
                Some(&privileged("by-tenant").to_string()),
            )
            .status
            .success()
    })
    .await;
    wait_until(
        Duration::from_secs(60),
        "reconciled without InvalidSpec",
        || async {
            clusters.get("by-tenant").await.ok().is_some_and(|c| {
                c.status
                    .as_ref()
                    .is_some_and(|s| s.observed_generation.is_some())
                    && condition(&c, "Degraded").is_some_and(|d| d.reason != "InvalidSpec")
            })
        },
    )
    .await;
}

#[tokio::test]
async fn a_resource_quota_refusing_servers_is_a_condition_and_the_pool_fills_once_lifted() {
    let world = World::connect().await;
    let ns = world.namespace("e2e-quota").await;
    let quota = format!(
        "apiVersion: v1\nkind: ResourceQuota\nmetadata: {{name: pods, namespace: {}}}\nspec: {{hard: {{pods: \"1\"}}}}\n",
        ns.name
    );
    assert!(support::succeeded(
        &world.kubectl(&["apply", "-f", "-"], Some(&quota))
    ));
    let clusters: Api<SparkConnectCluster> = Api::namespaced(world.client.clone(), &ns.name);
    clusters
        .create(
            &PostParams::default(),
            &serde_json::from_value(
                json!({"metadata": {"name": "quota"}, "spec": fake_spec(3, 5, 10)}),
            )
            .unwrap(),
        )
        .await
        .unwrap();
    wait_until(
        Duration::from_secs(60),
        "the quota refusal reported",
        || async {
            clusters.get("quota").await.ok().is_some_and(|c| {
                condition(&c, "Degraded").is_some_and(|d| {
                    d.status == "True"
                        && d.reason == "ObjectForbidden"
                        && d.message.contains("exceeded quota")
                })
            })
        },
    )
    .await;
    let restarts = operator_restarts(&world).await;
    let lifted = json!({"spec": {"hard": {"pods": "20"}}});
    Api::<k8s_openapi::api::core::v1::ResourceQuota>::namespaced(world.client.clone(), &ns.name)
        .patch("pods", &PatchParams::default(), &Patch::Merge(&lifted))
        .await
        .unwrap();
    wait_until(
        Duration::from_secs(180),
        "the pool full and the condition cleared",
        || async {
            clusters.get("quota").await.ok().is_some_and(|c| {
                c.status.as_ref().is_some_and(|s| s.servers.idle == 3)
                    && condition(&c, "Degraded").is_some_and(|d| d.status == "False")
            })
        },
    )
    .await;
    assert_eq!(operator_restarts(&world).await, restarts);
}
