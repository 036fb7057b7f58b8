//! May this caller use this cluster: a `SubjectAccessReview` for the verb `connect` on
//! `sparkconnectclusters` (so access is granted with ordinary Roles and RoleBindings), cached
//! briefly so a new RoleBinding takes effect within seconds, without a restart; then, when
//! configured, the external authorizer for the call's RPC.

use std::time::Duration;

use k8s_openapi::api::authorization::v1::{
    ResourceAttributes, SubjectAccessReview, SubjectAccessReviewSpec,
};
use kube::api::{Api, PostParams};

use super::authn::Identity;
use super::cache::TtlCache;
use super::ext_authz::{ExtAuthz, Refused};
use super::route::ClusterRef;

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

/// Answers access questions.
pub struct Authorizer {
    client: kube::Client,
    external: Option<ExtAuthz>,
    cache: TtlCache<(String, Vec<String>, String), Result<(), AuthzError>>,
}

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
            cache: TtlCache::new(10_000),
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
        if let Some(answer) = self.cache.get(&key) {
            return answer;
        }
        let answer = self.review(who, cluster).await;
        match &answer {
            Ok(()) => self.cache.insert(key, answer.clone(), ALLOW_FOR),
            Err(AuthzError::Denied { .. }) => self.cache.insert(key, answer.clone(), DENY_FOR),
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
