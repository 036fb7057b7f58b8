//! Act: carries out a cluster's decision. Every state change of a server is conditional on the
//! resourceVersion or UID it was decided on; each write stands alone, so one refused object
//! (or a claim deleted meanwhile) never stops the others; refusals become problems to report.

use std::collections::{BTreeMap, BTreeSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use jiff::Timestamp;
use k8s_openapi::api::core::v1::{Pod, Secret, Service};
use k8s_openapi::api::discovery::v1::EndpointSlice;
use kube::api::{Api, DeleteParams, Patch, PatchParams, PostParams, Preconditions};
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;
use kube::{Resource, ResourceExt};
use serde_json::json;

use super::children::ClusterToken;
use super::observe::{Observed, Taken};
use super::report::Problems;
use super::tokens::Tokens;
use crate::builders::bind_ledger::{BindHolder, ledger_name};
use crate::builders::labels::{
    CLAIM_ANNOTATION, CLAIM_UID_ANNOTATION, FIELD_MANAGER, STATE_LABEL, ServerRole, ServerState,
    USER_ANNOTATION, new_server_name,
};
use crate::builders::pod::{ServerIdentity, server_pod};
use crate::builders::secret::{new_token, server_token_secret};
use crate::builders::service::{Backend, MUST_STAY_ABSENT, endpoint_slice, server_service};
use crate::controller::applied::Scope;
use crate::controller::apply::{apply_owned, apply_owned_without};
use crate::controller::claim_status::{finish_claim, ignore_gone};
use crate::controller::context::{BINDS_QUIET, Context};
use crate::controller::ledger::{Ask, LedgerOf, Take};
use crate::controller::pool::Decision;
use crate::controller::pool::claims::ClaimEnd;
use crate::controller::pool::plan::PoolPlan;
use crate::controller::pool::plan::RemoveReason;
use crate::crd::AuthMode;
use crate::error::Error;
use crate::probe::health::Verdict;
use crate::probe::prober::{ProbeSettings, ProbeTarget};
use crate::validate::ValidCluster;

/// Carries out `decision`.
pub async fn execute(
    valid: &ValidCluster<'_>,
    ctx: &Context,
    observed: &Observed,
    decision: &Decision,
    token: &ClusterToken,
    tokens: &Tokens,
    problems: &mut Problems,
) -> Result<(), Error> {
    end_claims(valid, ctx, observed, decision, problems).await?;
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), valid.namespace);
    let retiring: Vec<(&String, &Arc<Pod>)> = decision
        .claims
        .retire
        .iter()
        .filter_map(|server| Some((server, observed.servers.get(server)?)))
        .collect();
    in_batches(&retiring, |(server, pod)| async move {
        remove_server(ctx, pod).await?;
        ctx.server_event(
            valid.cluster,
            server,
            EventType::Normal,
            "ServerRetired",
            &format!("claimed server {server} retired"),
        );
        Ok(())
    })
    .await?;
    for (role, plan) in decision.plans() {
        change_servers(valid, ctx, observed, &pods, plan).await?;
        create_servers(valid, ctx, &pods, role, plan, observed, token, problems).await?;
    }
    sync_probes(valid, ctx, observed, &kept_servers(decision), tokens);
    Ok(())
}

/// Every server that stays, with its state after the plan.
fn kept_servers(decision: &Decision) -> BTreeMap<String, ServerState> {
    decision
        .plans()
        .flat_map(|(_, plan)| plan.states.clone())
        .collect()
}

/// Final phases for claims that end now; each write stands alone.
async fn end_claims(
    valid: &ValidCluster<'_>,
    ctx: &Context,
    observed: &Observed,
    decision: &Decision,
    problems: &mut Problems,
) -> Result<(), Error> {
    let now = Timestamp::now();
    for (name, end) in &decision.claims.end {
        let Some(claim) = observed.claims.get(name) else {
            continue;
        };
        let message = match end {
            ClaimEnd::ServerLost => format!(
                "server {} is gone; delete this claim and create a new one",
                claim
                    .status
                    .as_ref()
                    .and_then(|s| s.server.as_deref())
                    .unwrap_or("?")
            ),
            ClaimEnd::Expired => format!(
                "ttl {} ran out; the server was retired",
                claim.spec.ttl.as_deref().unwrap_or_default()
            ),
            ClaimEnd::WaitTimeout => format!(
                "no server became free within {}s (hotPool.claimTimeout)",
                valid.timings.claim_timeout.as_secs()
            ),
        };
        let kind = if *end == ClaimEnd::Expired {
            EventType::Normal
        } else {
            EventType::Warning
        };
        let result = finish_claim(ctx, claim, end.phase(), end.reason(), &message, now).await;
        let ended = match ignore_gone(result) {
            Ok(wrote) => wrote,
            Err(e) => problems.absorb(Err(e)).map(|()| false)?,
        };
        if !ended {
            // Gone, refused, or changed since it was read (a bind made meanwhile): the next
            // look decides again.
            continue;
        }
        let uid = claim.metadata.uid.as_deref().unwrap_or_default();
        ctx.allocator
            .forget_claim(&super::observe::key(valid), name, uid);
        ctx.metrics.claims.with_label_values(&[end.reason()]).inc();
        ctx.event(claim.as_ref(), kind, end.reason(), &message);
    }
    Ok(())
}

/// Writes of one kind (creates, relabels, removals, stamps) one reconcile keeps in flight.
const WRITES_IN_FLIGHT: usize = 32;

/// Stamps the servers that the bind ledger hands to claims with their claim (state label and
/// annotations), once the burst of binds is over so the stamps never compete with a claim's
/// bind; each stamp is conditional on the resourceVersion the store shows (a conflict waits
/// for the store). Returns how soon to look again while binds are still under way.
pub async fn stamp_taken_servers(
    valid: &ValidCluster<'_>,
    ctx: &Context,
    observed: &Observed,
    problems: &mut Problems,
) -> Result<Option<Duration>, Error> {
    if observed.unstamped.is_empty() {
        return Ok(None);
    }
    if let Some(wait) = ctx.binds.quiet_in(BINDS_QUIET, Instant::now()) {
        return Ok(Some(wait));
    }
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), valid.namespace);
    let stamps: Vec<_> = observed
        .unstamped
        .iter()
        .filter_map(|(name, taken)| {
            let pod = observed.servers.get(name)?;
            Some(stamp(pods.clone(), pod.clone(), taken.clone()))
        })
        .collect();
    let results: Vec<Result<(), Error>> = futures::stream::iter(stamps)
        .buffer_unordered(WRITES_IN_FLIGHT)
        .collect()
        .await;
    for result in results {
        problems.absorb(result)?;
    }
    Ok(None)
}

/// Writes a server's claim on its pod, only if the pod is still as it was read.
async fn stamp(api: Api<Pod>, pod: Arc<Pod>, taken: Taken) -> Result<(), Error> {
    let name = pod.name_any();
    let patch = json!({"metadata": {
        "resourceVersion": pod.resource_version(),
        "labels": {STATE_LABEL: ServerState::Claimed.as_str()},
        "annotations": {
            CLAIM_ANNOTATION: taken.claim,
            CLAIM_UID_ANNOTATION: taken.claim_uid,
            USER_ANNOTATION: taken.user.clone().unwrap_or_default()
        }
    }});
    match api
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => Ok(()),
        Err(e) => Err(Error::kube(
            format!("stamp server {name} with its claim"),
            e,
        )),
    }
}

/// Relabels and removes the plan's servers. An idle server is changed only if this process
/// has not handed it to a claim meanwhile (the allocator holds it back while it changes), and a
/// change that must never meet a bind by another process (removal, promotion to the shared
/// Service) first takes the server in the bind ledger.
async fn change_servers(
    valid: &ValidCluster<'_>,
    ctx: &Context,
    observed: &Observed,
    pods: &Api<Pod>,
    plan: &PoolPlan,
) -> Result<(), Error> {
    let key = &super::observe::key(valid);
    // Only an idle server can be handed out; the others need no holding back.
    let withhold = &|pod: &Pod| {
        let idle = ServerState::of(pod) == ServerState::Idle;
        !idle || ctx.allocator.withhold(key, &pod.name_any())
    };
    let relabels: Vec<(&String, &ServerState)> = plan.relabel.iter().collect();
    in_batches(&relabels, |(name, state)| async move {
        let state = *state;
        let Some(pod) = observed.servers.get(name) else {
            return Ok(());
        };
        if !withhold(pod) {
            return Ok(());
        }
        let changed = match state {
            ServerState::Shared => {
                match take(valid, ctx, observed, pod, BindHolder::Shared).await {
                    Ok(true) => relabel(pods, pod, state).await,
                    other => other,
                }
            }
            _ => relabel(pods, pod, state).await,
        };
        if !matches!(changed, Ok(true)) {
            ctx.allocator.release(key, name);
        }
        if changed? {
            ctx.server_event(
                valid.cluster,
                name,
                EventType::Normal,
                "ServerStateChanged",
                &format!("server {name} is now {}", state.as_str()),
            );
        }
        Ok(())
    })
    .await?;
    // Every server to remove is taken in one ledger write, then removed in parallel.
    let held: Vec<(&String, RemoveReason, &Arc<Pod>)> = plan
        .remove
        .iter()
        .filter_map(|(name, reason)| Some((name, *reason, observed.servers.get(name)?)))
        .filter(|(_, _, pod)| withhold(pod))
        .collect();
    let pods: Vec<&Pod> = held.iter().map(|(_, _, pod)| pod.as_ref()).collect();
    let taken = match take_all(valid, ctx, observed, &pods, BindHolder::Retiring).await {
        Ok(taken) => taken,
        Err(e) => {
            for (name, _, _) in &held {
                ctx.allocator.release(key, name);
            }
            return Err(e);
        }
    };
    let mut removals = Vec::new();
    for (server, won) in held.into_iter().zip(taken) {
        if won {
            removals.push(server);
        } else {
            ctx.allocator.release(key, server.0);
        }
    }
    in_batches(&removals, |(name, reason, pod)| async move {
        let removed = remove_server(ctx, pod).await;
        if !matches!(removed, Ok(true)) {
            ctx.allocator.release(key, name);
        }
        if removed? {
            let kind = if reason.is_warning() {
                EventType::Warning
            } else {
                EventType::Normal
            };
            ctx.server_event(
                valid.cluster,
                name,
                kind,
                reason.event_reason(),
                &format!("server {name} removed"),
            );
        }
        Ok(())
    })
    .await
}

/// Deletes a server pod as it was read (its Service, slice and ledger entry follow by pruning,
/// its token Secret and executors by garbage collection); releases its probe session first.
/// Says whether it deleted the pod.
async fn remove_server(ctx: &Context, pod: &Pod) -> Result<bool, Error> {
    let (name, Some(namespace)) = (pod.name_any(), pod.namespace()) else {
        return Ok(false);
    };
    if let Some(uid) = pod.uid() {
        if ctx.prober.book().get(&uid).verdict == Verdict::Healthy {
            ctx.prober.release(&uid).await;
        }
        ctx.tokens.forget(&uid);
    }
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: pod.uid(),
            resource_version: pod.resource_version(),
        }),
        ..DeleteParams::default()
    };
    let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), &namespace);
    match pods.delete(&name, &params).await {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(false),
        Err(e) => Err(Error::kube(format!("delete server {name}"), e)),
    }
}

/// Runs `write` on every item, [`WRITES_IN_FLIGHT`] at a time (a burst of hundreds of servers
/// changes in seconds, not one request after another); the first error ends it after its
/// batch.
async fn in_batches<T, F, Fut>(items: &[T], write: F) -> Result<(), Error>
where
    T: Copy,
    F: Fn(T) -> Fut,
    Fut: Future<Output = Result<(), Error>>,
{
    for batch in items.chunks(WRITES_IN_FLIGHT) {
        let results = futures::future::join_all(batch.iter().copied().map(&write)).await;
        results.into_iter().collect::<Result<Vec<()>, Error>>()?;
    }
    Ok(())
}

/// Takes server `pod` for the cluster (`holder`: Shared or Retiring) in its bind ledger, unless
/// it is already a claim's (its end decided the change). Says whether the change may go ahead.
async fn take(
    valid: &ValidCluster<'_>,
    ctx: &Context,
    observed: &Observed,
    pod: &Pod,
    holder: BindHolder<'_>,
) -> Result<bool, Error> {
    let taken = take_all(valid, ctx, observed, &[pod], holder).await?;
    Ok(taken.first() == Some(&true))
}

/// Takes servers `pods` for the cluster (`holder`) in one ledger write, but for those already a
/// claim's (whose end decided the change); says for each whether its change may go ahead.
async fn take_all(
    valid: &ValidCluster<'_>,
    ctx: &Context,
    observed: &Observed,
    pods: &[&Pod],
    holder: BindHolder<'_>,
) -> Result<Vec<bool>, Error> {
    let claims = |pod: &Pod| {
        ServerState::of(pod) == ServerState::Claimed
            || observed.handed_out.contains_key(&pod.name_any())
    };
    let asks: Vec<Ask<'_>> = pods
        .iter()
        .filter(|pod| !claims(pod))
        .map(|pod| Ask { pod, holder })
        .collect();
    let mut takes = if asks.is_empty() {
        Vec::new().into_iter()
    } else {
        let mut turn = ctx.ledgers.turn(&super::observe::key(valid)).await;
        match turn.take(ledger_of(valid, ctx), &asks).await {
            Ok(takes) => takes.into_iter(),
            // A squatted ledger name takes nothing; `tend_ledger` reports it.
            Err(Error::NotOwned { .. }) => Vec::new().into_iter(),
            Err(e) => return Err(e),
        }
    };
    Ok(pods
        .iter()
        .map(|pod| claims(pod) || takes.next() == Some(Take::Won))
        .collect())
}

/// The cluster's bind ledger.
fn ledger_of<'a>(valid: &ValidCluster<'a>, ctx: &'a Context) -> LedgerOf<'a> {
    LedgerOf {
        client: &ctx.client,
        stored: &ctx.stores.ledgers,
        namespace: valid.namespace,
        cluster: valid.name,
        cluster_uid: valid.uid,
    }
}

/// Removes the ledger entries of servers that are gone, and reports a ConfigMap of the
/// ledger's name that the cluster does not own (it keeps every claim waiting).
pub async fn tend_ledger(
    valid: &ValidCluster<'_>,
    ctx: &Context,
    observed: &Observed,
    problems: &mut Problems,
) -> Result<(), Error> {
    let key = super::observe::key(valid);
    if ctx.ledgers.squatted(&key) {
        problems.absorb(Err(Error::NotOwned {
            kind: "ConfigMap",
            name: ledger_name(valid.name),
        }))?;
    }
    if observed.gone_from_ledger.is_empty() {
        return Ok(());
    }
    let mut turn = ctx.ledgers.turn(&key).await;
    turn.prune(ledger_of(valid, ctx), &observed.gone_from_ledger)
        .await
}

/// Changes a server's state label, only if the pod is still as it was read; a conflict waits
/// for the next round (the store will show what changed). Says whether the label changed.
async fn relabel(api: &Api<Pod>, pod: &Pod, state: ServerState) -> Result<bool, Error> {
    let name = pod.name_any();
    let patch = json!({
        "metadata": {"resourceVersion": pod.resource_version(), "labels": {STATE_LABEL: state.as_str()}}
    });
    match api
        .patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
    {
        Ok(_) => Ok(true),
        Err(kube::Error::Api(s)) if s.code == 409 || s.code == 404 => Ok(false),
        Err(e) => Err(Error::kube(
            format!("label server {name} {}", state.as_str()),
            e,
        )),
    }
}

#[allow(clippy::too_many_arguments)]
async fn create_servers(
    valid: &ValidCluster<'_>,
    ctx: &Context,
    pods: &Api<Pod>,
    role: ServerRole,
    plan: &PoolPlan,
    observed: &Observed,
    token: &ClusterToken,
    problems: &mut Problems,
) -> Result<(), Error> {
    let token_mode = valid.cluster.spec.auth.mode == AuthMode::Token;
    if plan.create > 0 && token_mode && role == ServerRole::Endpoint && token.value().is_none() {
        // Endpoint servers would wait forever for a token that is not there.
        return Ok(());
    }
    let id_hash = observed.hashes.of(role);
    let names: Vec<String> = (0..plan.create)
        .map(|_| new_server_name(valid.name))
        .collect();
    for batch in names.chunks(WRITES_IN_FLIGHT) {
        let results = futures::future::join_all(batch.iter().map(|name| {
            let id = ServerIdentity {
                name,
                role,
                hash: id_hash,
            };
            create_server(valid, ctx, pods, id, token_mode)
        }))
        .await;
        let mut refused = None;
        for (name, result) in batch.iter().zip(results) {
            match result {
                Ok(()) => ctx.server_event(
                    valid.cluster,
                    name,
                    EventType::Normal,
                    "ServerCreated",
                    &format!("server {name} created"),
                ),
                Err(e) if e.refusal().is_some() => refused = refused.or(Some(e)),
                Err(e) => return Err(e),
            }
        }
        if let Some(e) = refused {
            // A quota or admission refusal will refuse the next ones too: report, back off.
            return problems.absorb(Err(e));
        }
    }
    Ok(())
}

/// Creates a new server: its headless Service, its pod, and (a pool server in token mode) its
/// own token Secret, owned by the pod.
async fn create_server(
    valid: &ValidCluster<'_>,
    ctx: &Context,
    pods: &Api<Pod>,
    id: ServerIdentity<'_>,
    token_mode: bool,
) -> Result<(), Error> {
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), valid.namespace);
    let service = server_service(valid, id.name);
    apply_owned(&services, &service, None, valid.uid, &Scope::detached()).await?;
    let params = PostParams {
        field_manager: Some(FIELD_MANAGER.into()),
        ..PostParams::default()
    };
    let pod = pods
        .create(&params, &server_pod(valid, id)?)
        .await
        .map_err(|e| Error::kube(format!("create server {}", id.name), e))?;
    if token_mode && id.role == ServerRole::Pool {
        let token = new_token();
        let secret = server_token_secret(valid, &pod, token.clone())
            .ok_or(Error::MissingObjectKey("metadata.uid"))?;
        let created = Api::<Secret>::namespaced(ctx.client.clone(), valid.namespace)
            .create(&PostParams::default(), &secret)
            .await;
        if let Err(e) = created {
            // Without its own Secret (or with one someone else made first) the server must
            // not run: it would start with a token the operator did not choose.
            remove_server(ctx, &pod).await?;
            return Err(Error::kube(
                format!("create token secret of {}", id.name),
                e,
            ));
        }
        if let Some(uid) = pod.uid() {
            ctx.tokens.remember(&uid, token);
        }
    }
    Ok(())
}

/// Writes the Services and EndpointSlices of the servers `decision` keeps: one per server with
/// its address, one for the shared Service with the shared servers; removes Services and slices
/// of servers that are gone. Those `seen` found as wanted and unchanged since are skipped.
pub async fn publish_endpoints(
    valid: &ValidCluster<'_>,
    ctx: &Context,
    observed: &Observed,
    decision: &Decision,
    seen: &Scope<'_>,
    problems: &mut Problems,
) -> Result<(), Error> {
    let kept = kept_servers(decision);
    let services: Api<Service> = Api::namespaced(ctx.client.clone(), valid.namespace);
    let slices: Api<EndpointSlice> = Api::namespaced(ctx.client.clone(), valid.namespace);
    let backend = |name: &str| {
        let pod = observed.servers.get(name)?;
        Some(Backend {
            pod: name.into(),
            uid: pod.uid()?,
            ip: pod.status.as_ref()?.pod_ip.clone()?,
        })
    };
    for name in kept.keys() {
        let service = server_service(valid, name);
        let result = apply_owned_without(
            &services,
            &service,
            observed.services.get(name).map(|s| s.as_ref()),
            valid.uid,
            MUST_STAY_ABSENT,
            seen,
        )
        .await;
        problems.absorb(result.map(|_| ()))?;
        let backends: Vec<Backend> = backend(name).into_iter().collect();
        let slice = endpoint_slice(valid, name, false, &backends);
        let result = apply_owned(
            &slices,
            &slice,
            observed.slices.get(name).map(|s| s.as_ref()),
            valid.uid,
            seen,
        )
        .await;
        problems.absorb(result.map(|_| ()))?;
    }
    if valid.size.shared > 0 {
        let shared: Vec<Backend> = kept
            .iter()
            .filter(|(_, state)| **state == ServerState::Shared)
            .filter_map(|(name, _)| backend(name))
            .collect();
        let slice = endpoint_slice(valid, valid.name, true, &shared);
        let current = observed.slices.get(valid.name).map(|s| s.as_ref());
        let result = apply_owned(&slices, &slice, current, valid.uid, seen).await;
        problems.absorb(result.map(|_| ()))?;
    }
    // Prune what belongs to no server (a Service stays while its pod is still terminating).
    let wanted: BTreeSet<&str> = observed
        .all_servers
        .iter()
        .map(String::as_str)
        .chain((valid.size.shared > 0).then_some(valid.name))
        .collect();
    for (name, svc) in &observed.services {
        if !wanted.contains(name.as_str()) && name != valid.name {
            delete_as_read(&services, svc.as_ref()).await?;
        }
    }
    for (name, slice) in &observed.slices {
        if !wanted.contains(name.as_str()) {
            delete_as_read(&slices, slice.as_ref()).await?;
        }
    }
    Ok(())
}

async fn delete_as_read<K>(api: &Api<K>, object: &K) -> Result<(), Error>
where
    K: Resource<DynamicType = ()> + Clone + serde::de::DeserializeOwned + std::fmt::Debug,
{
    if object.meta().deletion_timestamp.is_some() {
        return Ok(());
    }
    let name = object.name_any();
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: object.meta().uid.clone(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(&name, &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
        Err(e) => Err(Error::kube(
            format!("delete orphaned {} {name}", K::kind(&())),
            e,
        )),
    }
}

/// Probes every kept server that has an address, each with the token it holds.
fn sync_probes(
    valid: &ValidCluster<'_>,
    ctx: &Context,
    observed: &Observed,
    kept: &BTreeMap<String, ServerState>,
    tokens: &Tokens,
) {
    let targets: Vec<ProbeTarget> = kept
        .keys()
        .filter_map(|name| {
            let pod = observed.servers.get(name)?;
            let ip = pod.status.as_ref()?.pod_ip.as_ref()?;
            Some(ProbeTarget {
                uid: pod.uid()?,
                address: format!("{ip}:{}", valid.cluster.spec.server.port),
                token: tokens.get(name).cloned().flatten(),
                warmup: valid
                    .warmup
                    .clone()
                    .filter(|_| kept.get(name) == Some(&ServerState::Starting)),
            })
        })
        .collect();
    let settings = ProbeSettings {
        period: valid.timings.probe_period,
        timeout: valid.timings.probe_timeout,
        failure_threshold: u32::try_from(valid.cluster.spec.probe.failure_threshold)
            .unwrap_or(1)
            .max(1),
    };
    ctx.prober
        .sync(&ObjectRef::from_obj(valid.cluster), &targets, &settings);
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::builders::labels::{ROLE_LABEL, SERVER_LABEL, SPEC_HASH_LABEL};
    use crate::builders::rbac;
    use crate::controller::cluster::inputs;
    use crate::controller::cluster::observe::{hashes, observe};
    use crate::controller::pool::{Wanted, decide};
    use crate::controller::stores::Held;
    use crate::probe::health::Verdict;
    use crate::test_support::{cluster, context_over};
    use crate::validate::validate;
    use http::Response;
    use k8s_openapi::apimachinery::pkg::apis::meta::v1::Time;
    use kube::client::Body;

    /// The fixture cluster without a shared Service (every server is a pool server).
    fn unshared_cluster() -> crate::crd::SparkConnectCluster {
        let mut c = cluster();
        c.spec.shared = 0;
        c
    }

    /// An idle server as the apiserver would hold it, built by the operator's own builders.
    fn idle_server(valid: &ValidCluster, name: &str) -> Pod {
        let mut pod = server_pod(
            valid,
            ServerIdentity {
                name,
                role: ServerRole::Pool,
                hash: &valid.spec_hash,
            },
        )
        .unwrap();
        let labels = pod.metadata.labels.get_or_insert_default();
        labels.insert(STATE_LABEL.into(), "idle".into());
        pod.metadata.uid = Some(format!("uid-{name}"));
        pod.metadata.resource_version = Some("3".into());
        pod.metadata.creation_timestamp =
            Some(Time(Timestamp::from_second(1_800_000_000).unwrap()));
        pod.status = Some(
            serde_json::from_value(json!({"phase": "Running", "podIP": "10.244.0.9"})).unwrap(),
        );
        pod
    }

    /// `object` as the apiserver stores it: with a uid (unique across kinds) and a
    /// resourceVersion.
    fn stored<K: kube::Resource<DynamicType = ()>>(mut object: K) -> K {
        let kind = K::kind(&());
        let meta = object.meta_mut();
        let name = meta.name.as_deref().unwrap_or_default();
        meta.uid = Some(format!("uid-{kind}-{name}"));
        meta.resource_version = Some("5".into());
        object
    }

    #[tokio::test]
    async fn steady_state_makes_no_writes() {
        let c = unshared_cluster();
        let valid = validate(&c).unwrap();
        let name = "analytics-bcdfg";
        let pod = idle_server(&valid, name);
        assert_eq!(pod.metadata.labels.as_ref().unwrap()[SERVER_LABEL], name);
        assert_eq!(pod.metadata.labels.as_ref().unwrap()[ROLE_LABEL], "pool");
        assert_eq!(
            pod.metadata.labels.as_ref().unwrap()[SPEC_HASH_LABEL],
            valid.spec_hash
        );
        let backend = Backend {
            pod: name.into(),
            uid: format!("uid-{name}"),
            ip: "10.244.0.9".into(),
        };
        let held = Held {
            pods: vec![pod],
            services: vec![stored(server_service(&valid, name))],
            slices: vec![stored(endpoint_slice(&valid, name, false, &[backend]))],
            accounts: vec![
                stored(rbac::driver_service_account(&valid).unwrap()),
                stored(rbac::executor_service_account(&valid).unwrap()),
            ],
            roles: vec![stored(rbac::driver_role(&valid).unwrap())],
            bindings: vec![stored(rbac::driver_role_binding(&valid).unwrap())],
            ..Held::default()
        };
        let (ctx, mut handle) = context_over(held, "data");
        let apiserver = tokio::spawn(async move {
            let mut seen = Vec::new();
            while let Some((request, send)) = handle.next_request().await {
                seen.push(format!("{} {}", request.method(), request.uri().path()));
                send.send_response(Response::builder().status(500).body(Body::empty()).unwrap());
            }
            seen
        });
        ctx.prober
            .book()
            .seed(&format!("uid-{name}"), Verdict::Healthy);

        // Twice: first comparing every object, then skipping those the first found as wanted.
        for _ in 0..2 {
            let applied = ctx.applied.scope("data/analytics");
            let mut problems = Problems::default();
            let token =
                crate::controller::cluster::children::ensure(&valid, &ctx, &applied, &mut problems)
                    .await
                    .unwrap();
            let observed = observe(&valid, &ctx, &token);
            assert_eq!(observed.hashes, hashes(&valid.spec_hash, &token));
            let now = Timestamp::from_second(1_800_000_060).unwrap();
            let decision = decide(inputs(&valid, &observed, Wanted::default(), false), now);
            let tokens = Tokens::from([(name.to_string(), None)]);
            execute(
                &valid,
                &ctx,
                &observed,
                &decision,
                &token,
                &tokens,
                &mut problems,
            )
            .await
            .unwrap();
            publish_endpoints(&valid, &ctx, &observed, &decision, &applied, &mut problems)
                .await
                .unwrap();
            assert!(problems.is_empty(), "{:?}", problems.list());
        }
        // The second pass skipped the six children the first found as wanted.
        assert_eq!(ctx.applied.remembered("data/analytics"), 6);
        drop(ctx);
        let seen = tokio::time::timeout(std::time::Duration::from_secs(5), apiserver)
            .await
            .unwrap()
            .unwrap();
        assert!(seen.is_empty(), "a steady state sent {seen:?}");
    }

    #[tokio::test]
    async fn a_scale_down_takes_each_server_first_and_leaves_one_another_leader_handed_out() {
        use crate::builders::bind_ledger::{Entry, ledger, ledger_name};
        let c = unshared_cluster();
        let valid = validate(&c).unwrap();
        let (free, taken) = ("analytics-free1", "analytics-took1");
        let (free_pod, taken_pod) = (idle_server(&valid, free), idle_server(&valid, taken));
        // Another leader bound `taken` a moment ago: its ledger is not in this process's store.
        let someone = BindHolder::Claim {
            name: "someone",
            uid: "uid-someone",
        };
        let entry = Entry::new(&taken_pod, someone).unwrap();
        let data = BTreeMap::from([(taken.to_string(), entry.encode())]);
        let mut theirs = ledger(valid.name, valid.uid, valid.namespace, data);
        theirs.metadata.resource_version = Some("5".into());
        let ledger_path = format!(
            "/api/v1/namespaces/data/configmaps/{}",
            ledger_name(valid.name)
        );
        let held = Held {
            pods: vec![free_pod, taken_pod],
            ..Held::default()
        };
        let (ctx, mut handle) = context_over(held, "data");
        let apiserver = tokio::spawn(async move {
            let mut seen = Vec::new();
            while let Some((request, send)) = handle.next_request().await {
                let (method, path) = (request.method().clone(), request.uri().path().to_string());
                let body = http_body_util::BodyExt::collect(request.into_body())
                    .await
                    .map(|b| b.to_bytes())
                    .unwrap_or_default();
                let body: serde_json::Value = serde_json::from_slice(&body).unwrap_or_default();
                if path.contains("/events") {
                    let related = body["related"]["name"].as_str().unwrap_or_default();
                    let reason = body["reason"].as_str().unwrap_or_default();
                    seen.push(format!("EVENT {reason} about {related}"));
                } else {
                    let servers: Vec<&str> = body["data"]
                        .as_object()
                        .map(|d| d.keys().map(String::as_str).collect())
                        .unwrap_or_default();
                    seen.push(
                        format!("{method} {path} {}", servers.join(","))
                            .trim_end()
                            .to_string(),
                    );
                }
                let reply = |status: u16, body: serde_json::Value| {
                    Response::builder()
                        .status(status)
                        .body(Body::from(serde_json::to_vec(&body).unwrap()))
                        .unwrap()
                };
                let response = match method.as_str() {
                    // The ledger exists: another leader made it.
                    "POST" if path.ends_with("/configmaps") => reply(
                        409,
                        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                               "reason": "AlreadyExists", "code": 409}),
                    ),
                    "GET" if path == ledger_path => {
                        reply(200, serde_json::to_value(&theirs).unwrap())
                    }
                    "PATCH" if path == ledger_path => {
                        assert_eq!(body["metadata"]["resourceVersion"], "5", "{body}");
                        let mut written = theirs.clone();
                        let data = written.data.get_or_insert_default();
                        for (server, entry) in body["data"].as_object().into_iter().flatten() {
                            data.insert(server.clone(), entry.as_str().unwrap().to_string());
                        }
                        written.metadata.resource_version = Some("6".into());
                        reply(200, serde_json::to_value(&written).unwrap())
                    }
                    "DELETE" => reply(200, json!({"kind": "Status", "status": "Success"})),
                    _ => reply(201, body),
                };
                send.send_response(response);
            }
            seen
        });
        let observed = observe(&valid, &ctx, &ClusterToken::NotUsed);
        let plan = PoolPlan {
            remove: [free, taken]
                .into_iter()
                .map(|s| {
                    (
                        s.to_string(),
                        crate::controller::pool::plan::RemoveReason::ScaledDown,
                    )
                })
                .collect(),
            ..PoolPlan::default()
        };
        let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), valid.namespace);
        change_servers(&valid, &ctx, &observed, &pods, &plan)
            .await
            .unwrap();
        drop((ctx, pods));
        let seen = tokio::time::timeout(std::time::Duration::from_secs(5), apiserver)
            .await
            .unwrap()
            .unwrap();
        // Events go out in the background, and the two servers are changed at once: each
        // server's requests are in order, the two servers' interleaved.
        assert!(
            seen.iter()
                .any(|s| s == "EVENT ServerScaledDown about analytics-free1"),
            "the removal's Event names its server as the related object: {seen:?}"
        );
        let seen: Vec<&str> = seen
            .iter()
            .map(String::as_str)
            .filter(|s| !s.starts_with("EVENT"))
            .collect();
        // One take for both meets the other leader's ledger and writes only the free server
        // into it, conditionally; the taken server is left.
        let ledger = "/api/v1/namespaces/data/configmaps";
        assert_eq!(
            seen,
            vec![
                format!("POST {ledger} analytics-free1,analytics-took1"),
                format!("GET {ledger}/analytics-binds"),
                format!("PATCH {ledger}/analytics-binds analytics-free1"),
                "DELETE /api/v1/namespaces/data/pods/analytics-free1".to_string(),
            ],
            "the server another leader handed out is not deleted"
        );
    }

    #[tokio::test]
    async fn a_squatted_ledger_name_removes_nothing_and_is_left_to_the_report() {
        use crate::builders::bind_ledger::{ledger, ledger_name};
        let c = unshared_cluster();
        let valid = validate(&c).unwrap();
        let name = "analytics-free1";
        let held = Held {
            pods: vec![idle_server(&valid, name)],
            ..Held::default()
        };
        let mut squatter = ledger(valid.name, valid.uid, valid.namespace, BTreeMap::new());
        squatter.metadata.owner_references = None;
        let (ctx, mut handle) = context_over(held, "data");
        let apiserver = tokio::spawn(async move {
            let mut seen = Vec::new();
            while let Some((request, send)) = handle.next_request().await {
                let (method, path) = (request.method().clone(), request.uri().path().to_string());
                seen.push(format!("{method} {path}"));
                let (status, body) = match method.as_str() {
                    "POST" => (
                        409,
                        json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
                               "reason": "AlreadyExists", "code": 409}),
                    ),
                    _ => (200, serde_json::to_value(&squatter).unwrap()),
                };
                let body = Body::from(serde_json::to_vec(&body).unwrap());
                send.send_response(Response::builder().status(status).body(body).unwrap());
            }
            seen
        });
        let observed = observe(&valid, &ctx, &ClusterToken::NotUsed);
        let plan = PoolPlan {
            remove: BTreeMap::from([(
                name.to_string(),
                crate::controller::pool::plan::RemoveReason::ScaledDown,
            )]),
            ..PoolPlan::default()
        };
        let pods: Api<Pod> = Api::namespaced(ctx.client.clone(), valid.namespace);
        change_servers(&valid, &ctx, &observed, &pods, &plan)
            .await
            .expect("not an error: the report says it");
        let mut problems = Problems::default();
        tend_ledger(&valid, &ctx, &observed, &mut problems)
            .await
            .unwrap();
        assert_eq!(problems.list()[0].reason, "NameConflict");
        assert!(
            problems.list()[0]
                .message
                .contains(&ledger_name(valid.name)),
            "{:?}",
            problems.list()
        );
        drop((ctx, pods));
        let seen = tokio::time::timeout(std::time::Duration::from_secs(5), apiserver)
            .await
            .unwrap()
            .unwrap();
        assert!(
            !seen.iter().any(|s| s.starts_with("DELETE")),
            "nothing removed: {seen:?}"
        );
    }
}
