//! May this caller use this cluster: a `SubjectAccessReview` for the verb `connect` on
//! `sparkconnectclusters` (so access is granted with ordinary Roles and RoleBindings), cached
//! briefly so a new RoleBinding takes effect within seconds, without a restart (allows and
//! denials apart: a caller naming cluster after cluster never pushes out another's allow; the
//! reviews in flight are bounded); then, when configured, the external authorizer for the
//! call's RPC.

use std::time::Duration;

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};

use super::authn::Identity;
use super::cache::TtlCache;
use super::ext_authz::{ExtAuthz, Refused};
use super::route::ClusterRef;
use super::turns::Turns;

/// The verb a RoleBinding must grant on `sparkconnectclusters` to use a cluster.
pub const CONNECT_VERB: &str = "connect";

/// Why a call is not allowed.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum AuthzError {
    /// RBAC (or the external policy) says no.
    #[error("{user} may not {verb} sparkconnectclusters/{cluster}{why}")]
    Denied {
        /// The caller.
        user: String,
        /// The verb asked for.
        verb: &'static str,
        /// `namespace/name`.
        cluster: String,
        /// The authorizer's reason, with a leading separator, or empty.
        why: String,
    },
    /// The authorizer could not be asked.
    #[error("authorization is unavailable right now: {0}")]
    Unavailable(String),
}

/// Who asks for which cluster: user, groups, `namespace/name`.
type Question = (String, Vec<String>, String);

/// Answers access questions.
pub struct Authorizer {
    client: kube::Client,
    external: Option<ExtAuthz>,
    allowed: TtlCache<Question, ()>,
    denied: TtlCache<Question, AuthzError>,
    reviews: Turns,
}

/// Answers remembered, of each kind.
const REMEMBERED: usize = 10_000;

/// Longest an allow is reused: a removed RoleBinding stops working within this.
const ALLOW_FOR: Duration = Duration::from_secs(10);
/// Longest a denial is reused: a new RoleBinding works within this.
const DENY_FOR: Duration = Duration::from_secs(2);

impl Authorizer {
    /// Asks the apiserver through `client`, then `external` (if any).
    pub fn new(client: kube::Client, external: Option<ExtAuthz>) -> Self {
        Self {
            client,
            external,
            allowed: TtlCache::new(REMEMBERED),
            denied: TtlCache::new(REMEMBERED),
            reviews: Turns::new("access reviews"),
        }
    }

    /// Whether `who` may call `rpc` on `cluster`: RBAC first, then the external authorizer.
    pub async fn may_call(
        &self,
        who: &Identity,
        cluster: &ClusterRef,
        rpc: &str,
    ) -> Result<(), AuthzError> {
        self.may_connect(who, cluster).await?;
        let Some(external) = &self.external else {
            return Ok(());
        };
        external
            .check(who, cluster, rpc)
            .await
            .map_err(|e| match e {
                Refused::Denied(reason) => denied(who, cluster, reason),
                Refused::Unavailable(why) => AuthzError::Unavailable(why),
            })
    }

    /// Whether RBAC lets `who` connect to `cluster`.
    async fn may_connect(&self, who: &Identity, cluster: &ClusterRef) -> Result<(), AuthzError> {
        let key = (who.user.clone(), who.groups.clone(), cluster.to_string());
        if self.allowed.get(&key).is_some() {
            return Ok(());
        }
        if let Some(denial) = self.denied.get(&key) {
            return Err(denial);
        }
        let answer = {
            let _turn = self.reviews.take().await.map_err(AuthzError::Unavailable)?;
            self.review(who, cluster).await
        };
        match &answer {
            Ok(()) => self.allowed.insert(key, (), ALLOW_FOR),
            Err(denial @ AuthzError::Denied { .. }) => {
                self.denied.insert(key, denial.clone(), DENY_FOR);
            }
            Err(AuthzError::Unavailable(_)) => {}
        }
        answer
    }

    async fn review(&self, who: &Identity, cluster: &ClusterRef) -> Result<(), AuthzError> {
        let api: Api<SubjectAccessReview> = Api::all(self.client.clone());
        let review = SubjectAccessReview {
            spec: SubjectAccessReviewSpec {
                user: Some(who.user.clone()),
                groups: Some(who.groups.clone()),
                resource_attributes: Some(ResourceAttributes {
                    group: Some("sparkconnect.dev".into()),
                    resource: Some("sparkconnectclusters".into()),
                    verb: Some(CONNECT_VERB.into()),
                    namespace: Some(cluster.namespace.clone()),
                    name: Some(cluster.name.clone()),
                    ..ResourceAttributes::default()
                }),
                ..SubjectAccessReviewSpec::default()
            },
            ..SubjectAccessReview::default()
        };
        let answer = api
            .create(&PostParams::default(), &review)
            .await
            .map_err(|e| AuthzError::Unavailable(format!("SubjectAccessReview failed: {e}")))?;
        let status = answer.status.unwrap_or_default();
        if status.allowed && status.denied != Some(true) {
            return Ok(());
        }
        Err(denied(who, cluster, status.reason.unwrap_or_default()))
    }
}

/// A denial of `connect` on `cluster` with the authorizer's reason.
fn denied(who: &Identity, cluster: &ClusterRef, reason: String) -> AuthzError {
    AuthzError::Denied {
        user: who.user.clone(),
        verb: CONNECT_VERB,
        cluster: cluster.to_string(),
        why: if reason.trim().is_empty() {
            " (no RoleBinding grants it)".into()
        } else {
            format!(": {}", reason.trim())
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::{request_json, respond_json};
    use std::collections::HashMap;
    use std::sync::{Arc, Mutex};

    fn caller(user: &str) -> Identity {
        Identity {
            user: user.into(),
            groups: vec!["team".into()],
            namespace_claim: None,
        }
    }

    fn cluster(name: &str) -> ClusterRef {
        ClusterRef {
            namespace: "data".into(),
            name: name.into(),
        }
    }

    /// Answers SubjectAccessReviews: alice may connect to `analytics`, nobody to anything else;
    /// counts the reviews by user and cluster name.
    async fn answer_reviews(
        mut apiserver: crate::test_support::MockApiserver,
        reviewed: Arc<Mutex<HashMap<(String, String), usize>>>,
    ) {
        while let Some((request, send)) = apiserver.next_request().await {
            let review: SubjectAccessReview = request_json(request).await;
            let user = review.spec.user.unwrap_or_default();
            let name = review
                .spec
                .resource_attributes
                .and_then(|r| r.name)
                .unwrap_or_default();
            let allowed = user == "alice" && name == "analytics";
            *reviewed.lock().unwrap().entry((user, name)).or_default() += 1;
            let answer = serde_json::json!({"apiVersion": "authorization.k8s.io/v1",
                "kind": "SubjectAccessReview", "spec": {}, "status": {"allowed": allowed}});
            respond_json(send, &answer);
        }
    }

    #[tokio::test]
    async fn a_caller_naming_cluster_after_cluster_never_pushes_out_anothers_allow() {
        let (service, apiserver) = tower_test::mock::pair();
        let authz = Authorizer::new(kube::Client::new(service, "default"), None);
        let reviewed = Arc::default();
        tokio::spawn(answer_reviews(apiserver, Arc::clone(&reviewed)));
        let (alice, mallory) = (caller("alice"), caller("mallory"));
        assert_eq!(
            authz
                .may_call(&alice, &cluster("analytics"), "Config")
                .await,
            Ok(())
        );
        for i in 0..=REMEMBERED {
            let denial = authz
                .may_call(&mallory, &cluster(&format!("c{i}")), "Config")
                .await;
            assert!(
                matches!(denial, Err(AuthzError::Denied { .. })),
                "{denial:?}"
            );
        }
        assert_eq!(
            authz
                .may_call(&alice, &cluster("analytics"), "Config")
                .await,
            Ok(())
        );
        let reviewed = reviewed.lock().unwrap();
        assert_eq!(
            reviewed.get(&("alice".to_string(), "analytics".to_string())),
            Some(&1),
            "alice's allow was remembered"
        );
        assert_eq!(reviewed.len(), REMEMBERED + 2);
    }
}
