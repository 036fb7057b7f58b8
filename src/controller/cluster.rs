//! Reconciling a `SparkConnectCluster`: read → validate → build → apply → pool plan → prune →
//! status (written only when it changed).

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Pod, Secret, Service, ServiceAccount};
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, ListParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::controller::Action;
use kube::runtime::events::EventType;
use serde_json::json;

use super::apply::{apply_if_changed, get_and_apply, write_status_if_changed};
use super::plan::{PoolTargets, RemoveReason, ServerView, plan};
use super::status::{healthy_status, invalid_status, server_counts};
use super::{Context, binding};
use crate::builders::labels::{
    FIELD_MANAGER, SPEC_HASH_LABEL, STATE_LABEL, ServerState, TOKEN_KEY, new_server_name,
    server_selector, token_secret_name,
};
use crate::builders::{pod, rbac, secret, service};
use crate::crd::{AuthMode, SparkConnectCluster, SparkConnectClusterStatus};
use crate::error::Error;
use crate::probe::health::{HealthBook, Verdict};
use crate::probe::prober::{ProbeSettings, ProbeTarget};
use crate::validate::{ValidCluster, validate};
use kube::runtime::reflector::ObjectRef;

const CONTROLLER: &str = "cluster";

/// Reconciles one cluster; records metrics around [`reconcile_inner`].
pub async fn reconcile(
    cluster: Arc<SparkConnectCluster>,
    ctx: Arc<Context>,
) -> Result<Action, Error> {
    let started = Instant::now();
    ctx.metrics
        .reconciles
        .with_label_values(&[CONTROLLER])
        .inc();
    let result = reconcile_inner(&cluster, &ctx).await;
    ctx.metrics
        .reconcile_duration
        .with_label_values(&[CONTROLLER])
        .observe(started.elapsed().as_secs_f64());
    if let Err(e) = &result {
        ctx.metrics
            .reconcile_errors
            .with_label_values(&[CONTROLLER, e.metric_label()])
            .inc();
    }
    result
}

/// Retry policy: permanent errors wait for a change, transient ones back off.
pub fn error_policy(
    cluster: Arc<SparkConnectCluster>,
    error: &Error,
    _ctx: Arc<Context>,
) -> Action {
    tracing::warn!(cluster = %cluster.name_any(), namespace = ?cluster.namespace(), %error, "reconcile failed");
    if error.is_permanent() {
        Action::await_change()
    } else {
        Action::requeue(Duration::from_secs(5))
    }
}

async fn reconcile_inner(cluster: &SparkConnectCluster, ctx: &Context) -> Result<Action, Error> {
    let valid = match validate(cluster) {
        Ok(valid) => valid,
        Err(e) if matches!(e, Error::InvalidSpec(_)) => {
            let message = e.to_string();
            let status =
                invalid_status(cluster, cluster.status.as_ref(), &message, Timestamp::now());
            if write_status(cluster, ctx, status).await? {
                ctx.event(cluster, EventType::Warning, "InvalidSpec", &message)
                    .await;
            }
            return Ok(Action::await_change());
        }
        Err(e) => return Err(e),
    };
    let client = &ctx.client;
    let ns = valid.namespace;

    // Objects of the whole cluster.
    get_and_apply(
        &Api::<ServiceAccount>::namespaced(client.clone(), ns),
        rbac::driver_service_account(&valid)?,
    )
    .await?;
    get_and_apply(
        &Api::<Role>::namespaced(client.clone(), ns),
        rbac::driver_role(&valid)?,
    )
    .await?;
    get_and_apply(
        &Api::<RoleBinding>::namespaced(client.clone(), ns),
        rbac::driver_role_binding(&valid)?,
    )
    .await?;
    if cluster.spec.shared > 0 {
        get_and_apply(
            &Api::<Service>::namespaced(client.clone(), ns),
            service::shared_service(&valid)?,
        )
        .await?;
    }
    let mut problems = Vec::new();
    let token = match cluster.spec.auth.mode {
        AuthMode::Token => match ensure_token_secret(&valid, ctx).await? {
            Ok(token) => Some(token),
            Err(problem) => {
                problems.push(problem);
                None
            }
        },
        AuthMode::None => None,
    };

    // The servers.
    let pods_api = Api::<Pod>::namespaced(client.clone(), ns);
    let services_api = Api::<Service>::namespaced(client.clone(), ns);
    let selector = ListParams::default().labels(&server_selector(valid.name));
    let pods = pods_api
        .list(&selector)
        .await
        .map_err(|e| Error::kube("list server pods", e))?
        .items;
    let services = services_api
        .list(&selector)
        .await
        .map_err(|e| Error::kube("list server services", e))?
        .items;
    let live: Vec<&Pod> = pods
        .iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .collect();
    let book = ctx.prober.book();
    // Servers another operator process already found healthy (their label says so) count as
    // healthy until this process's own probes say otherwise.
    for pod in &live {
        let state = ServerState::from_label(pod.labels().get(STATE_LABEL).map(String::as_str));
        if matches!(state, ServerState::Idle | ServerState::Shared)
            && let Some(uid) = pod.uid()
        {
            book.seed(&uid, Verdict::Healthy);
        }
    }
    let mut views: Vec<ServerView> = live.iter().filter_map(|p| server_view(p, book)).collect();

    // Claims first: waiting users get idle servers before the pool is topped up.
    let healthy_shared = views
        .iter()
        .filter(|v| v.state == ServerState::Shared && v.healthy)
        .count();
    let reserved = (cluster.spec.shared.max(0) as usize).saturating_sub(healthy_shared);
    let claims = binding::reconcile_claims(&valid, ctx, &live, &views, reserved).await?;
    views.retain(|v| !claims.retired.contains(&v.name));
    for view in views.iter_mut().filter(|v| claims.bound.contains(&v.name)) {
        view.state = ServerState::Claimed;
    }
    let live: Vec<&Pod> = live
        .into_iter()
        .filter(|p| !claims.retired.contains(&p.name_any()))
        .collect();

    let now = Timestamp::now();
    let cluster_key = format!("{ns}/{}", valid.name);
    let pool = &cluster.spec.hot_pool;
    let (floor, max) = (pool.idle.max(0) as usize, pool.max.max(0) as usize);
    let idle_target = if pool.autoscale.enabled {
        Some(
            autoscale(
                cluster,
                ctx,
                &cluster_key,
                &views,
                &claims.claims,
                &valid,
                now,
            )
            .await,
        )
    } else {
        ctx.autoscaler.forget(&cluster_key);
        None
    };
    let targets = PoolTargets {
        shared: cluster.spec.shared.max(0) as usize,
        // Waiting claims grow the pool at once, up to hotPool.max idle servers.
        idle: (idle_target.unwrap_or(floor) + claims.waiting).min(floor.max(max)),
        spec_hash: &valid.spec_hash,
        startup_deadline: valid.timings.startup_deadline,
        max_idle_age: valid.timings.max_idle_age,
    };
    let mut plan = plan(&views, targets, now);
    let failed_starts = plan
        .remove
        .values()
        .filter(|r| matches!(r, RemoveReason::Exited | RemoveReason::StartupTimeout))
        .count();
    let became_healthy = plan.relabel.iter().any(|(name, state)| {
        matches!(state, ServerState::Idle | ServerState::Shared)
            && views
                .iter()
                .any(|v| &v.name == name && v.state == ServerState::Starting)
    });
    ctx.backoff.observe(
        &cluster_key,
        failed_starts,
        became_healthy,
        std::time::Instant::now(),
    );
    let mut requeue_after = None;
    if plan.create > 0
        && let Some((wait, failures)) = ctx.backoff.wait(&cluster_key, std::time::Instant::now())
    {
        problems.push(format!(
            "{failures} servers in a row failed to start; the next one starts in {}s (see the server pods' Events)",
            wait.as_secs()
        ));
        plan.create = 0;
        requeue_after = Some(wait);
    }
    for view in views.iter().filter(|v| v.auth_rejected) {
        problems.push(format!(
            "server {} refuses the operator's token (UNAUTHENTICATED)",
            view.name
        ));
    }

    for (name, state) in &plan.relabel {
        if let Some(pod) = live.iter().find(|p| p.name_any() == *name) {
            relabel(&pods_api, pod, *state).await?;
            ctx.event(
                cluster,
                EventType::Normal,
                "ServerStateChanged",
                &format!("server {name} is now {}", state.as_str()),
            )
            .await;
        }
    }
    for (name, reason) in &plan.remove {
        if let Some(pod) = live.iter().find(|p| p.name_any() == *name) {
            let uid = pod.uid().unwrap_or_default();
            if book.get(&uid).verdict == Verdict::Healthy {
                ctx.prober.release(&uid).await;
            }
            delete_pod(&pods_api, pod).await?;
            let kind = if reason.is_warning() {
                EventType::Warning
            } else {
                EventType::Normal
            };
            ctx.event(
                cluster,
                kind,
                reason.event_reason(),
                &format!("server {name} removed"),
            )
            .await;
        }
    }
    for _ in 0..plan.create {
        let name = create_server(&valid, &pods_api, &services_api).await?;
        ctx.event(
            cluster,
            EventType::Normal,
            "ServerCreated",
            &format!("server {name} created"),
        )
        .await;
    }

    // Every kept server has its headless Service; Services of vanished servers are pruned.
    let kept: BTreeSet<&str> = plan.states.keys().map(String::as_str).collect();
    let existing_services: BTreeMap<String, &Service> =
        services.iter().map(|s| (s.name_any(), s)).collect();
    for name in &kept {
        let desired = service::server_service(&valid, name)?;
        apply_if_changed(
            &services_api,
            desired,
            existing_services.get(*name).copied(),
        )
        .await?;
    }
    let pod_names: BTreeSet<String> = pods.iter().map(ResourceExt::name_any).collect();
    for (name, svc) in &existing_services {
        if !pod_names.contains(name) && svc.metadata.deletion_timestamp.is_none() {
            services_api
                .delete(name, &DeleteParams::default())
                .await
                .map_err(|e| Error::kube(format!("delete orphaned service {name}"), e))?;
        }
    }

    // Probe every kept server that has an address.
    let probe_targets: Vec<ProbeTarget> = live
        .iter()
        .filter(|p| kept.contains(p.name_any().as_str()))
        .filter_map(|p| {
            let ip = p.status.as_ref()?.pod_ip.as_ref()?;
            Some(ProbeTarget {
                uid: p.uid()?,
                address: format!("{ip}:{}", cluster.spec.server.port),
            })
        })
        .collect();
    let settings = ProbeSettings {
        token,
        period: valid.timings.probe_period,
        timeout: valid.timings.probe_timeout,
        failure_threshold: cluster.spec.probe.failure_threshold.max(1) as u32,
    };
    ctx.prober
        .sync(&ObjectRef::from_obj(cluster), &probe_targets, &settings);

    // Status.
    let counts = server_counts(&plan);
    for (state, value) in [
        (ServerState::Starting, counts.starting),
        (ServerState::Idle, counts.idle),
        (ServerState::Shared, counts.shared),
        (ServerState::Claimed, counts.claimed),
        (ServerState::Unhealthy, counts.unhealthy),
    ] {
        ctx.metrics
            .servers
            .with_label_values(&[ns, valid.name, state.as_str()])
            .set(i64::from(value));
    }
    let mut status = healthy_status(cluster, cluster.status.as_ref(), counts, &problems, now);
    status.token_secret =
        (cluster.spec.auth.mode == AuthMode::Token).then(|| token_secret_name(cluster));
    status.idle_target = idle_target.map(|t| t as i32);
    if let Some(version) = live.iter().find_map(|p| book.get(&p.uid()?).spark_version) {
        status.spark_version = Some(version);
    }
    write_status(cluster, ctx, status).await?;

    let busy = plan.create > 0 || !plan.remove.is_empty() || plan.count(ServerState::Starting) > 0;
    // A raised autoscaler target is re-checked when its scale-down delay may have passed.
    let busy = busy || idle_target.is_some_and(|t| t > floor);
    let idle_requeue = if busy {
        Duration::from_secs(5)
    } else {
        Duration::from_secs(300)
    };
    Ok(Action::requeue(requeue_after.unwrap_or(idle_requeue)))
}

/// What the plan needs to know about a server pod: its probe verdict and whether it exited.
fn server_view(pod: &Pod, book: &HealthBook) -> Option<ServerView> {
    let labels = pod.labels();
    let status = pod.status.as_ref();
    let verdict = book.get(&pod.uid()?).verdict;
    let healthy = verdict == Verdict::Healthy;
    let auth_rejected = verdict == Verdict::AuthRejected;
    let exited = status
        .and_then(|s| s.phase.as_deref())
        .is_some_and(|p| p == "Failed" || p == "Succeeded");
    Some(ServerView {
        name: pod.metadata.name.clone()?,
        state: ServerState::from_label(labels.get(STATE_LABEL).map(String::as_str)),
        healthy,
        auth_rejected,
        exited,
        spec_hash: labels.get(SPEC_HASH_LABEL).cloned().unwrap_or_default(),
        created: pod.metadata.creation_timestamp.as_ref()?.0,
    })
}

/// Changes a server's state label, failing if the pod changed since it was read.
async fn relabel(api: &Api<Pod>, pod: &Pod, state: ServerState) -> Result<(), Error> {
    let name = pod.name_any();
    let patch = json!({
        "metadata": {"resourceVersion": pod.resource_version(), "labels": {STATE_LABEL: state.as_str()}}
    });
    api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| Error::kube(format!("label server {name} {}", state.as_str()), e))?;
    Ok(())
}

/// Deletes a server pod (its Service follows by pruning, its executors by garbage collection).
pub(crate) async fn delete_pod(api: &Api<Pod>, pod: &Pod) -> Result<(), Error> {
    let name = pod.name_any();
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: pod.uid(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(&name, &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
        Err(e) => Err(Error::kube(format!("delete server {name}"), e)),
    }
}

/// Creates a new server: its headless Service, then its pod.
async fn create_server(
    valid: &ValidCluster<'_>,
    pods: &Api<Pod>,
    services: &Api<Service>,
) -> Result<String, Error> {
    let name = new_server_name(valid.name);
    apply_if_changed(services, service::server_service(valid, &name)?, None).await?;
    let pod = pod::server_pod(valid, &name)?;
    pods.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&pod),
    )
    .await
    .map_err(|e| Error::kube(format!("create server {name}"), e))?;
    Ok(name)
}

/// The client token: creates the generated Secret once; a missing or empty user-named Secret
/// is a problem to report (`Ok(Err(..))`), not an error to retry.
async fn ensure_token_secret(
    valid: &ValidCluster<'_>,
    ctx: &Context,
) -> Result<Result<String, String>, Error> {
    let api = Api::<Secret>::namespaced(ctx.client.clone(), valid.namespace);
    let name = token_secret_name(valid.cluster);
    let existing = api
        .get_opt(&name)
        .await
        .map_err(|e| Error::kube(format!("get secret {name}"), e))?;
    let secret = match (existing, &valid.cluster.spec.auth.secret_name) {
        (Some(secret), _) => secret,
        (None, Some(_)) => {
            return Ok(Err(format!(
                "auth Secret {name} does not exist; servers cannot start until it does"
            )));
        }
        (None, None) => match api
            .create(&PostParams::default(), &secret::token_secret(valid))
            .await
        {
            Ok(secret) => secret,
            Err(kube::Error::Api(s)) if s.code == 409 => api
                .get(&name)
                .await
                .map_err(|e| Error::kube(format!("get secret {name}"), e))?,
            Err(e) => return Err(Error::kube(format!("create secret {name}"), e)),
        },
    };
    let token = secret
        .data
        .as_ref()
        .and_then(|d| d.get(TOKEN_KEY))
        .map(|v| String::from_utf8_lossy(&v.0).into_owned());
    Ok(token
        .filter(|t| !t.is_empty())
        .ok_or(format!("auth Secret {name} has no key {TOKEN_KEY}")))
}

/// Writes the cluster's status if it differs from the current one; returns whether it wrote.
async fn write_status(
    cluster: &SparkConnectCluster,
    ctx: &Context,
    status: SparkConnectClusterStatus,
) -> Result<bool, Error> {
    write_status_if_changed(&ctx.client, cluster, cluster.status.as_ref(), &status).await
}

/// The autoscaler's idle target for this round; its changes become Events and a metric.
async fn autoscale(
    cluster: &SparkConnectCluster,
    ctx: &Context,
    key: &str,
    views: &[ServerView],
    claims: &[String],
    valid: &ValidCluster<'_>,
    now: Timestamp,
) -> usize {
    let pool = &cluster.spec.hot_pool;
    let warmups: Vec<Duration> = views
        .iter()
        .filter(|v| v.state == ServerState::Starting && v.healthy)
        .filter_map(|v| Duration::try_from(now.duration_since(v.created)).ok())
        .collect();
    let instant = std::time::Instant::now();
    let (target, decision) = ctx
        .autoscaler
        .with(key, |demand| {
            demand.observe(claims, &warmups, instant);
            demand.target(
                pool.min.max(0) as usize,
                pool.max.max(0) as usize,
                pool.idle.max(0) as usize,
                valid.timings.scale_down_delay,
                instant,
            )
        })
        .unwrap_or((pool.idle.max(0) as usize, None));
    ctx.metrics
        .autoscaler_target
        .with_label_values(&[valid.namespace, valid.name])
        .set(target as i64);
    if let Some(d) = decision {
        let reason = if d.target > d.previous {
            "AutoscaleUp"
        } else {
            "AutoscaleDown"
        };
        let note = format!("idle target {} -> {}: {}", d.previous, d.target, d.reason);
        ctx.event(cluster, EventType::Normal, reason, &note).await;
    }
    target
}
