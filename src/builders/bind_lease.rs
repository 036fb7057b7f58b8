//! The bind Lease: the small object whose creation takes an idle server, for a claim or for the
//! cluster itself (to promote it to the shared Service or to remove it). Creating it is the
//! fence: the apiserver creates one object of a name only once, so two leaders, or a bind
//! racing a scale-down in another process, can never take one server twice. The server pod is
//! stamped with its claim later, off the claim's path. Owned by the pod, it goes when the
//! server goes.

use std::collections::BTreeMap;

use k8s_openapi::api::coordination::v1::{Lease, LeaseSpec};
use k8s_openapi::api::core::v1::Pod;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};

use super::labels::{CLAIM_UID_ANNOTATION, SERVER_LABEL, USER_ANNOTATION, cluster_labels};

/// `app.kubernetes.io/component` of bind Leases (what the Lease watch selects).
pub const BIND_COMPONENT: &str = "server-bind";

/// Holder of a Lease by which the cluster takes a server to remove it (a claim's name cannot
/// contain a `/`, so no claim is ever mistaken for it).
const RETIRING_HOLDER: &str = "sparkconnect.dev/retiring";
/// Holder of a Lease by which the cluster takes a server for its shared Service.
const SHARED_HOLDER: &str = "sparkconnect.dev/shared";

/// Who a bind Lease hands its server to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BindHolder<'a> {
    /// A claim: its name, the Lease's holder, and its uid, kept beside it (a claim created
    /// again under a name is another claim; empty on Leases that predate the uid).
    Claim {
        /// The claim's name.
        name: &'a str,
        /// The claim's uid.
        uid: &'a str,
    },
    /// The cluster, to remove the server.
    Retiring,
    /// The cluster, for its shared Service.
    Shared,
}

impl<'a> BindHolder<'a> {
    /// The Lease's `holderIdentity`.
    pub fn identity(self) -> &'a str {
        match self {
            Self::Claim { name, .. } => name,
            Self::Retiring => RETIRING_HOLDER,
            Self::Shared => SHARED_HOLDER,
        }
    }

    fn parse(identity: &'a str, claim_uid: &'a str) -> Self {
        match identity {
            RETIRING_HOLDER => Self::Retiring,
            SHARED_HOLDER => Self::Shared,
            name => Self::Claim {
                name,
                uid: claim_uid,
            },
        }
    }

    /// The claim it names, if it is one.
    pub fn claim(self) -> Option<&'a str> {
        match self {
            Self::Claim { name, .. } => Some(name),
            Self::Retiring | Self::Shared => None,
        }
    }
}

/// Name of the bind Lease of server `server`.
pub fn bind_lease_name(server: &str) -> String {
    format!("{server}-bind")
}

/// The Lease that hands server `pod` of cluster `cluster` to `holder`; `user` is the claim's
/// user, if any. `None` for a pod without a name or uid (never one from the apiserver).
pub fn bind_lease(
    cluster: &str,
    pod: &Pod,
    holder: BindHolder<'_>,
    user: Option<&str>,
) -> Option<Lease> {
    let server = pod.metadata.name.as_deref()?;
    let mut labels = cluster_labels(cluster);
    labels.insert("app.kubernetes.io/component".into(), BIND_COMPONENT.into());
    labels.insert(SERVER_LABEL.into(), server.into());
    let mut annotations = BTreeMap::new();
    if let Some(user) = user {
        annotations.insert(USER_ANNOTATION.to_string(), user.to_string());
    }
    if let BindHolder::Claim { uid, .. } = holder {
        annotations.insert(CLAIM_UID_ANNOTATION.to_string(), uid.to_string());
    }
    let annotations = (!annotations.is_empty()).then_some(annotations);
    Some(Lease {
        metadata: ObjectMeta {
            name: Some(bind_lease_name(server)),
            namespace: pod.metadata.namespace.clone(),
            labels: Some(labels),
            annotations,
            owner_references: Some(vec![OwnerReference {
                api_version: "v1".into(),
                kind: "Pod".into(),
                name: server.into(),
                uid: pod.metadata.uid.clone()?,
                controller: Some(true),
                block_owner_deletion: None,
            }]),
            ..ObjectMeta::default()
        },
        spec: Some(LeaseSpec {
            holder_identity: Some(holder.identity().into()),
            ..LeaseSpec::default()
        }),
    })
}

/// Who a bind Lease hands its server to, if it is the Lease of `pod` (named after it and owned
/// by it: anything else is not the operator's fence and hands out nothing).
pub fn holder_of<'a>(lease: &'a Lease, pod: &Pod) -> Option<BindHolder<'a>> {
    let server = pod.metadata.name.as_deref()?;
    let uid = pod.metadata.uid.as_deref()?;
    let owned = lease
        .metadata
        .owner_references
        .iter()
        .flatten()
        .any(|r| r.controller == Some(true) && r.kind == "Pod" && r.uid == uid);
    let named = lease.metadata.name.as_deref() == Some(bind_lease_name(server).as_str());
    let labelled = lease
        .metadata
        .labels
        .as_ref()
        .and_then(|l| l.get(SERVER_LABEL))
        .is_some_and(|s| s == server);
    if !(owned && named && labelled) {
        return None;
    }
    let claim_uid = lease
        .metadata
        .annotations
        .as_ref()
        .and_then(|a| a.get(CLAIM_UID_ANNOTATION))
        .map_or("", String::as_str);
    lease
        .spec
        .as_ref()?
        .holder_identity
        .as_deref()
        .map(|identity| BindHolder::parse(identity, claim_uid))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn pod(name: &str, uid: &str) -> Pod {
        Pod {
            metadata: ObjectMeta {
                name: Some(name.into()),
                namespace: Some("team".into()),
                uid: Some(uid.into()),
                ..ObjectMeta::default()
            },
            ..Pod::default()
        }
    }

    const CLAIM_1: BindHolder<'static> = BindHolder::Claim {
        name: "claim-1",
        uid: "cu1",
    };

    #[test]
    fn the_lease_is_named_after_its_server_owned_by_it_and_names_the_claim() {
        let lease = bind_lease(
            "c",
            &pod("c-abc", "u1"),
            BindHolder::Claim {
                name: "claim-1",
                uid: "cu1",
            },
            Some("ana"),
        )
        .unwrap();
        assert_eq!(lease.metadata.name.as_deref(), Some("c-abc-bind"));
        assert_eq!(lease.metadata.namespace.as_deref(), Some("team"));
        let labels = lease.metadata.labels.as_ref().unwrap();
        assert_eq!(labels["sparkconnect.dev/cluster"], "c");
        assert_eq!(labels["sparkconnect.dev/server"], "c-abc");
        assert_eq!(labels["app.kubernetes.io/component"], BIND_COMPONENT);
        let owner = &lease.metadata.owner_references.as_ref().unwrap()[0];
        assert_eq!((owner.kind.as_str(), owner.uid.as_str()), ("Pod", "u1"));
        assert_eq!(
            lease.metadata.annotations.as_ref().unwrap()[USER_ANNOTATION],
            "ana"
        );
        assert_eq!(
            holder_of(&lease, &pod("c-abc", "u1")),
            Some(BindHolder::Claim {
                name: "claim-1",
                uid: "cu1"
            }),
            "the claim, told from a later namesake by its uid"
        );
    }

    #[test]
    fn a_lease_hands_out_nothing_unless_it_is_the_fence_of_that_very_pod() {
        let lease = bind_lease("c", &pod("c-abc", "u1"), CLAIM_1, None).unwrap();
        assert_eq!(
            holder_of(&lease, &pod("c-abc", "u2")),
            None,
            "a pod of the same name later"
        );
        assert_eq!(holder_of(&lease, &pod("c-xyz", "u1")), None);
        let mut copied = lease.clone();
        copied.metadata.owner_references = None;
        assert_eq!(
            holder_of(&copied, &pod("c-abc", "u1")),
            None,
            "not owned by the pod"
        );
    }

    #[test]
    fn a_pod_without_a_uid_gets_no_lease() {
        let mut p = pod("c-abc", "u1");
        p.metadata.uid = None;
        assert!(bind_lease("c", &p, CLAIM_1, None).is_none());
    }

    #[test]
    fn the_cluster_takes_a_server_under_a_holder_no_claim_can_have() {
        let p = pod("c-abc", "u1");
        for holder in [BindHolder::Retiring, BindHolder::Shared] {
            let lease = bind_lease("c", &p, holder, None).unwrap();
            let identity = lease
                .spec
                .as_ref()
                .unwrap()
                .holder_identity
                .clone()
                .unwrap();
            assert!(identity.contains('/'), "{identity} is not a claim name");
            assert_eq!(holder_of(&lease, &p), Some(holder));
            assert_eq!(holder.claim(), None);
        }
        assert_eq!(CLAIM_1.claim(), Some("claim-1"));
    }
}
