//! The fence: takes a server for a claim or for the cluster by creating its bind Lease, and
//! when that name is already taken, finds out who holds it. A Lease of that name that the
//! operator did not make (anyone who may create Leases in a namespace can make an unlabelled
//! one) can never be taken back, so the server it blocks is removed and reported, and a fresh
//! one of another name takes its place. Removing a server is here too: every path that ends a
//! server (scale-down, retirement, a forged Lease) deletes it the same way.

use k8s_openapi::api::coordination::v1::Lease;
use k8s_openapi::api::core::v1::Pod;
use kube::ResourceExt;
use kube::api::{Api, DeleteParams, PostParams, Preconditions};
use kube::runtime::events::EventType;
use kube::runtime::reflector::ObjectRef;

use super::context::Context;
use crate::builders::bind_lease::{BindHolder, bind_lease, bind_lease_name, holder_of};
use crate::error::Error;
use crate::probe::health::Verdict;

/// Event reason on the cluster when a server is removed because of a forged bind Lease.
const FORGED_REASON: &str = "BindLeaseForged";

/// What trying to take a server came to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Take {
    /// The holder has the server: its Lease was created now, or by an earlier try.
    Won,
    /// The operator's Lease hands the server to someone else, or the server is gone.
    Lost,
    /// A Lease of that name that the operator did not make: nobody can ever take the server.
    Forged,
}

/// Takes server `pod` of cluster `cluster` for `holder` (`user`: the claim's user, if any).
/// Only a refused name costs a read: the store first, the apiserver when the store does not
/// show the operator's Lease.
pub async fn take(
    ctx: &Context,
    cluster: &str,
    pod: &Pod,
    holder: BindHolder<'_>,
    user: Option<&str>,
) -> Result<Take, Error> {
    let (Some(namespace), Some(lease)) = (pod.namespace(), bind_lease(cluster, pod, holder, user))
    else {
        return Ok(Take::Lost);
    };
    let name = bind_lease_name(&pod.name_any());
    let leases: Api<Lease> = Api::namespaced(ctx.client.clone(), &namespace);
    match leases.create(&PostParams::default(), &lease).await {
        Ok(_) => return Ok(Take::Won),
        Err(kube::Error::Api(s)) if s.code == 409 => {}
        Err(e) => return Err(Error::kube(format!("take server {}", pod.name_any()), e)),
    }
    let stored = ctx
        .stores
        .leases
        .get(&ObjectRef::new(&name).within(&namespace));
    if let Some(found) = stored.as_deref().and_then(|l| holder_of(l, pod)) {
        return Ok(verdict(Some(found), holder));
    }
    match leases.get_opt(&name).await {
        Ok(Some(found)) => Ok(match holder_of(&found, pod) {
            None => Take::Forged,
            mine => verdict(mine, holder),
        }),
        // Gone meanwhile: with its pod (garbage collection) or by a hand; try another day.
        Ok(None) => Ok(Take::Lost),
        Err(e) => Err(Error::kube(format!("read bind Lease {name}"), e)),
    }
}

/// Whether a Lease held by `found` gives the server to `wanted`: the same holder (an earlier
/// try), or the cluster removing a server it took for its shared Service.
fn verdict(found: Option<BindHolder<'_>>, wanted: BindHolder<'_>) -> Take {
    let removing_shared = wanted == BindHolder::Retiring && found == Some(BindHolder::Shared);
    if found == Some(wanted) || removing_shared {
        Take::Won
    } else {
        Take::Lost
    }
}

/// Deletes a server pod as it was read (its Service and slice follow by pruning, its token
/// Secret, bind Lease and executors by garbage collection); releases its probe session first.
/// Says whether it deleted the pod.
pub async fn remove_server(ctx: &Context, pod: &Pod) -> Result<bool, Error> {
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

/// Removes server `pod`, blocked by a forged bind Lease, and says so on its cluster (found in
/// the store by `cluster`'s name) with a Warning Event. Says whether it deleted the pod.
pub async fn remove_blocked(ctx: &Context, cluster: &str, pod: &Pod) -> Result<bool, Error> {
    // Whatever changed on the pod since it was read, nobody can ever take it: only its uid counts.
    let mut any_version = pod.clone();
    any_version.metadata.resource_version = None;
    let deleted = remove_server(ctx, &any_version).await?;
    let (name, namespace) = (pod.name_any(), pod.namespace().unwrap_or_default());
    let owner = ctx
        .stores
        .clusters
        .get(&ObjectRef::new(cluster).within(&namespace));
    if let (true, Some(owner)) = (deleted, owner) {
        tracing::warn!(server = %name, namespace, "a forged bind Lease blocked a server; removed");
        ctx.server_event(
            owner.as_ref(),
            &name,
            EventType::Warning,
            FORGED_REASON,
            &format!(
                "server {name} removed: a Lease named {} that the spark-connect-operator did not \
                 make keeps it from ever being handed out; someone allowed to create Leases in \
                 namespace {namespace} made it. A new server takes its place.",
                bind_lease_name(&name)
            ),
        );
    }
    Ok(deleted)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_lease_gives_its_server_to_its_own_holder_and_a_shared_server_to_its_removal() {
        use BindHolder::*;
        let a = Claim {
            name: "a",
            uid: "1",
        };
        let b = Claim {
            name: "b",
            uid: "2",
        };
        let a_again = Claim {
            name: "a",
            uid: "3",
        };
        assert_eq!(verdict(Some(a), a), Take::Won);
        assert_eq!(verdict(Some(a), b), Take::Lost);
        assert_eq!(
            verdict(Some(a), a_again),
            Take::Lost,
            "a claim created again under the name is another claim"
        );
        assert_eq!(verdict(Some(a), Retiring), Take::Lost);
        assert_eq!(verdict(Some(a), Shared), Take::Lost);
        assert_eq!(verdict(Some(Shared), Retiring), Take::Won);
        assert_eq!(verdict(Some(Retiring), Shared), Take::Lost);
        assert_eq!(verdict(Some(Retiring), a), Take::Lost);
        assert_eq!(verdict(None, Retiring), Take::Lost);
    }
}
