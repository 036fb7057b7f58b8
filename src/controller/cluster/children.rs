//! The cluster-wide children: the drivers' and executors' ServiceAccounts, the drivers' Role and
//! RoleBinding, the shared Service, and the cluster token Secret. Each is applied only when it
//! differs from what the apiserver holds and never over an object the cluster does not own;
//! a refused object becomes a reported problem, not a failed reconcile.

use std::sync::Arc;

use k8s_openapi::api::core::v1::{Secret, Service};
use kube::api::{Api, DeleteParams, PostParams, Preconditions};
use kube::runtime::reflector::{ObjectRef, Store};
use kube::{Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;

use super::report::Problems;
use crate::builders::labels::{TOKEN_KEY, token_secret_name};
use crate::builders::{rbac, secret, service};
use crate::controller::applied::Scope;
use crate::controller::apply::{apply_owned_without, controlled_by};
use crate::controller::context::Context;
use crate::crd::AuthMode;
use crate::error::Error;
use crate::validate::ValidCluster;

/// The cluster token, when the cluster uses token auth.
#[derive(Clone, Debug, PartialEq, Eq)]
pub enum ClusterToken {
    /// Auth mode None.
    NotUsed,
    /// The token servers of the shared endpoint hold.
    Ready(String),
    /// The Secret is missing or has no token; why.
    Missing(String),
}

impl ClusterToken {
    /// The token, if there is one.
    pub fn value(&self) -> Option<&str> {
        match self {
            Self::Ready(token) => Some(token),
            _ => None,
        }
    }
}

fn existing<K>(store: &Store<K>, namespace: &str, name: &str) -> Option<Arc<K>>
where
    K: Resource<DynamicType = ()> + Clone + 'static,
{
    store.get(&ObjectRef::new(name).within(namespace))
}

/// Applies children of one cluster, keeping refusals as problems.
struct Applier<'c, 'v, 'p> {
    ctx: &'c Context,
    valid: &'c ValidCluster<'v>,
    seen: &'c Scope<'c>,
    problems: &'p mut Problems,
}

impl Applier<'_, '_, '_> {
    /// Writes `desired` unless the store's copy covers it; fields at `absent` must stay unset.
    async fn apply<K>(
        &mut self,
        store: &Store<K>,
        desired: Result<K, Error>,
        absent: &[&str],
    ) -> Result<(), Error>
    where
        K: Resource<DynamicType = (), Scope = k8s_openapi::NamespaceResourceScope>
            + Clone
            + Serialize
            + DeserializeOwned
            + std::fmt::Debug
            + 'static,
    {
        let (ctx, valid) = (self.ctx, self.valid);
        let desired = desired?;
        let api: Api<K> = Api::namespaced(ctx.client.clone(), valid.namespace);
        let current = existing(store, valid.namespace, &desired.name_any());
        let result = apply_owned_without(
            &api,
            &desired,
            current.as_deref(),
            valid.uid,
            absent,
            self.seen,
        )
        .await;
        self.problems.absorb(result.map(|_| ()))
    }
}

/// Applies every cluster-wide child and returns the cluster token.
pub async fn ensure(
    valid: &ValidCluster<'_>,
    ctx: &Context,
    seen: &Scope<'_>,
    problems: &mut Problems,
) -> Result<ClusterToken, Error> {
    let stores = &ctx.stores;
    let mut children = Applier {
        ctx,
        valid,
        seen,
        problems,
    };
    let accounts = [
        rbac::driver_service_account(valid),
        rbac::executor_service_account(valid),
    ];
    for account in accounts {
        children.apply(&stores.accounts, account, &[]).await?;
    }
    children
        .apply(&stores.roles, rbac::driver_role(valid), &[])
        .await?;
    children
        .apply(&stores.bindings, rbac::driver_role_binding(valid), &[])
        .await?;
    if valid.size.shared > 0 {
        let shared = Ok(service::shared_service(valid));
        children
            .apply(stores.services.store(), shared, service::MUST_STAY_ABSENT)
            .await?;
    } else {
        remove_shared_service(valid, ctx).await?;
    }
    match valid.cluster.spec.auth.mode {
        AuthMode::None => Ok(ClusterToken::NotUsed),
        AuthMode::Token => cluster_token(valid, ctx, problems).await,
    }
}

/// With `shared: 0` the shared Service (and its endpoints) go.
async fn remove_shared_service(valid: &ValidCluster<'_>, ctx: &Context) -> Result<(), Error> {
    let Some(svc) = existing(ctx.stores.services.store(), valid.namespace, valid.name) else {
        return Ok(());
    };
    if !controlled_by(svc.as_ref(), valid.uid) || svc.metadata.deletion_timestamp.is_some() {
        return Ok(());
    }
    let api: Api<Service> = Api::namespaced(ctx.client.clone(), valid.namespace);
    let params = DeleteParams {
        preconditions: Some(Preconditions {
            uid: svc.uid(),
            resource_version: None,
        }),
        ..DeleteParams::default()
    };
    match api.delete(valid.name, &params).await {
        Ok(_) => Ok(()),
        Err(kube::Error::Api(s)) if s.code == 404 || s.code == 409 => Ok(()),
        Err(e) => Err(Error::kube(
            format!("delete shared service {}", valid.name),
            e,
        )),
    }
}

/// Reads (or first creates) the cluster token Secret. A user-named Secret that is missing, or
/// one that is not the cluster's, is a problem to report.
async fn cluster_token(
    valid: &ValidCluster<'_>,
    ctx: &Context,
    problems: &mut Problems,
) -> Result<ClusterToken, Error> {
    let api = Api::<Secret>::namespaced(ctx.client.clone(), valid.namespace);
    let name = token_secret_name(valid.cluster);
    let user_named = valid.cluster.spec.auth.secret_name.is_some();
    let found = api
        .get_opt(&name)
        .await
        .map_err(|e| Error::kube(format!("get secret {name}"), e))?;
    let secret = match found {
        Some(secret) if user_named || controlled_by(&secret, valid.uid) => secret,
        Some(_) => {
            problems.absorb(Err(Error::NotOwned {
                kind: "Secret",
                name: name.clone(),
            }))?;
            return Ok(ClusterToken::Missing(format!(
                "Secret {name} is not this cluster's"
            )));
        }
        None if user_named => {
            return Ok(ClusterToken::Missing(format!(
                "auth Secret {name} does not exist; the shared endpoint cannot start until it does"
            )));
        }
        None => match api
            .create(&PostParams::default(), &secret::token_secret(valid))
            .await
        {
            Ok(secret) => secret,
            Err(kube::Error::Api(s)) if s.code == 409 => api
                .get(&name)
                .await
                .map_err(|e| Error::kube(format!("get secret {name}"), e))?,
            Err(e) => {
                problems.absorb(Err(Error::kube(format!("create secret {name}"), e)))?;
                return Ok(ClusterToken::Missing(format!(
                    "Secret {name} cannot be created"
                )));
            }
        },
    };
    Ok(token_of(&secret)
        .map(ClusterToken::Ready)
        .unwrap_or_else(|| ClusterToken::Missing(format!("Secret {name} has no key {TOKEN_KEY}"))))
}

/// The token in a Secret (`data` or, on objects not yet round-tripped, `stringData`).
pub fn token_of(secret: &Secret) -> Option<String> {
    secret
        .data
        .as_ref()
        .and_then(|d| d.get(TOKEN_KEY))
        .map(|v| String::from_utf8_lossy(&v.0).into_owned())
        .or_else(|| secret.string_data.as_ref()?.get(TOKEN_KEY).cloned())
        .filter(|t| !t.is_empty())
}
