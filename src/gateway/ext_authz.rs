//! An external authorizer over Envoy's ext_authz v3 gRPC API
//! (`envoy.service.auth.v3.Authorization/Check`), asked after RBAC allowed a call, so existing
//! policy services (OPA and others) decide too. The call is described as an HTTP request:
//! path `/spark.connect.SparkConnectService/<rpc>`, headers and context extensions with the
//! user, groups, cluster and RPC. It fails closed: no answer, no call.

use std::collections::HashMap;
use std::time::Duration;

use tonic::transport::{Channel, Endpoint};

use super::authn::Identity;
use super::cache::TtlCache;
use super::route::ClusterRef;
use crate::ext_authz_proto::envoy::service::auth::v3::{
    AttributeContext, CheckRequest, attribute_context, authorization_client::AuthorizationClient,
};

/// How long an answer is reused for the same caller, cluster and RPC.
const ANSWER_FOR: Duration = Duration::from_secs(2);

/// Why the external authorizer did not allow a call.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum Refused {
    /// The policy denies it, for this reason.
    Denied(String),
    /// No answer (the call is refused: fail closed).
    Unavailable(String),
}

/// A cached answer's key: user, groups, cluster, RPC.
type CallKey = (String, Vec<String>, String, String);

/// The external authorizer.
pub struct ExtAuthz {
    client: AuthorizationClient<Channel>,
    timeout: Duration,
    cache: TtlCache<CallKey, Result<(), Refused>>,
}

/// The attributes the authorizer sees for one call.
pub fn describe(who: &Identity, cluster: &ClusterRef, rpc: &str) -> CheckRequest {
    let facts = [
        ("user", who.user.clone()),
        ("groups", who.groups.join(",")),
        ("cluster", cluster.to_string()),
        ("namespace", cluster.namespace.clone()),
        ("name", cluster.name.clone()),
        ("rpc", rpc.to_string()),
    ];
    let headers: HashMap<String, String> = facts
        .iter()
        .map(|(k, v)| (format!("x-spark-{k}"), v.clone()))
        .collect();
    let extensions: HashMap<String, String> = facts
        .iter()
        .map(|(k, v)| (k.to_string(), v.clone()))
        .collect();
    CheckRequest {
        attributes: Some(AttributeContext {
            request: Some(attribute_context::Request {
                http: Some(attribute_context::HttpRequest {
                    id: String::new(),
                    method: "POST".into(),
                    headers,
                    path: format!("/spark.connect.SparkConnectService/{rpc}"),
                    host: cluster.to_string(),
                    protocol: "HTTP/2".into(),
                }),
            }),
            context_extensions: extensions,
        }),
    }
}

impl ExtAuthz {
    /// An authorizer at `address` (`http://host:port`), each answer awaited at most `timeout`.
    pub fn new(address: &str, timeout: Duration) -> Result<Self, tonic::transport::Error> {
        let channel = Endpoint::from_shared(address.to_string())?
            .connect_timeout(timeout)
            .timeout(timeout)
            .connect_lazy();
        Ok(Self {
            client: AuthorizationClient::new(channel),
            timeout,
            cache: TtlCache::new(10_000),
        })
    }

    /// Whether the authorizer allows `who` to call `rpc` on `cluster`.
    pub async fn check(
        &self,
        who: &Identity,
        cluster: &ClusterRef,
        rpc: &str,
    ) -> Result<(), Refused> {
        let key = (
            who.user.clone(),
            who.groups.clone(),
            cluster.to_string(),
            rpc.to_string(),
        );
        if let Some(answer) = self.cache.get(&key) {
            return answer;
        }
        let mut client = self.client.clone();
        let asked =
            tokio::time::timeout(self.timeout, client.check(describe(who, cluster, rpc))).await;
        let answer = match asked {
            Err(_) => Err(Refused::Unavailable(format!(
                "the external authorizer did not answer within {:?}",
                self.timeout
            ))),
            Ok(Err(status)) => Err(Refused::Unavailable(format!(
                "the external authorizer failed: {}",
                status.message()
            ))),
            Ok(Ok(response)) => {
                let status = response.into_inner().status.unwrap_or_default();
                if status.code == 0 {
                    Ok(())
                } else {
                    let reason = if status.message.is_empty() {
                        "the external policy denies it".to_string()
                    } else {
                        format!("the external policy denies it: {}", status.message)
                    };
                    Err(Refused::Denied(reason))
                }
            }
        };
        if !matches!(answer, Err(Refused::Unavailable(_))) {
            self.cache.insert(key, answer.clone(), ANSWER_FOR);
        }
        answer
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_authorizer_sees_user_groups_cluster_and_rpc() {
        let who = Identity {
            user: "alice".into(),
            groups: vec!["a".into(), "b".into()],
            namespace_claim: None,
        };
        let cluster = ClusterRef {
            namespace: "team".into(),
            name: "etl".into(),
        };
        let request = describe(&who, &cluster, "ExecutePlan");
        let attributes = request.attributes.expect("attributes");
        let http = attributes.request.and_then(|r| r.http).expect("http");
        assert_eq!(http.path, "/spark.connect.SparkConnectService/ExecutePlan");
        assert_eq!(http.headers["x-spark-user"], "alice");
        assert_eq!(http.headers["x-spark-groups"], "a,b");
        assert_eq!(http.headers["x-spark-cluster"], "team/etl");
        assert_eq!(attributes.context_extensions["rpc"], "ExecutePlan");
    }
}
