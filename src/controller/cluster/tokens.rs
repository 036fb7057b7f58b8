//! The token each server holds: the cluster's for endpoint servers, its own for pool servers in
//! token mode (read from its Secret once per process, then remembered by pod UID).

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use kube::ResourceExt;
use kube::api::Api;

use super::children::{ClusterToken, token_of};
use super::observe::Observed;
use crate::builders::labels::{ServerRole, server_token_secret_name};
use crate::controller::apply::controlled_by;
use crate::controller::context::Context;
use crate::controller::pool::plan::ServerView;
use crate::crd::AuthMode;
use crate::validate::ValidCluster;

/// Server name → the token it holds (`None`: no auth, or not knowable).
pub type Tokens = BTreeMap<String, Option<String>>;

/// The token every live server of the cluster holds.
pub async fn resolve(
    valid: &ValidCluster<'_>,
    ctx: &Context,
    observed: &Observed,
    cluster_token: &ClusterToken,
) -> Tokens {
    let mut tokens = Tokens::new();
    let secrets: Api<Secret> = Api::namespaced(ctx.client.clone(), valid.namespace);
    for view in &observed.views {
        let token = match (valid.cluster.spec.auth.mode, view.role) {
            (AuthMode::None, _) => None,
            (AuthMode::Token, ServerRole::Endpoint) => cluster_token.value().map(Into::into),
            (AuthMode::Token, ServerRole::Pool) => {
                own_token(ctx, &secrets, observed, &view.name).await
            }
        };
        tokens.insert(view.name.clone(), token);
    }
    tokens
}

/// A pool server's own token: remembered, or read from its Secret, which must be controlled by
/// the server pod (a Secret someone else made under that name is never trusted).
async fn own_token(
    ctx: &Context,
    secrets: &Api<Secret>,
    observed: &Observed,
    server: &str,
) -> Option<String> {
    let uid = observed.servers.get(server)?.uid()?;
    if let Some(token) = ctx.tokens.get(&uid) {
        return Some(token);
    }
    let name = server_token_secret_name(server);
    let secret = match secrets.get_opt(&name).await {
        Ok(secret) => secret?,
        Err(e) => {
            tracing::warn!(%name, error = %e, "reading a server token failed");
            return None;
        }
    };
    if !controlled_by(&secret, &uid) {
        tracing::warn!(%name, "a server token Secret not made for its server is ignored");
        return None;
    }
    let token = token_of(&secret)?;
    ctx.tokens.remember(&uid, token.clone());
    Some(token)
}

/// In token mode a pool server whose own token cannot be known is outdated: it is replaced
/// (never handed to a claim), unless already claimed.
pub fn mark_unknown_tokens(views: &mut [ServerView], tokens: &Tokens, token_mode: bool) {
    if !token_mode {
        return;
    }
    for view in views {
        let unknown = tokens.get(&view.name).is_none_or(Option::is_none);
        if unknown && view.role == ServerRole::Pool {
            view.spec_hash.clear();
        }
    }
}
