//! Server-side apply that skips objects already in the desired state, so a steady state makes
//! no write requests.

use std::fmt::Debug;

use k8s_openapi::NamespaceResourceScope;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use sha2::{Digest, Sha256};

use crate::builders::labels::{APPLIED_HASH_ANNOTATION, FIELD_MANAGER};
use crate::error::Error;

/// Hash of a desired object, recorded on it as an annotation.
fn desired_hash<K: Serialize>(desired: &K) -> Result<String, Error> {
    Ok(hex::encode(
        &Sha256::digest(serde_json::to_vec(desired)?)[..8],
    ))
}

/// Applies `desired` (server-side, forced) unless `existing` already carries its hash.
/// Returns whether a write was made.
pub async fn apply_if_changed<K>(
    api: &Api<K>,
    mut desired: K,
    existing: Option<&K>,
) -> Result<bool, Error>
where
    K: Resource + Serialize + DeserializeOwned + Clone + Debug,
    K::DynamicType: Default,
{
    let hash = desired_hash(&desired)?;
    if existing.and_then(|e| e.annotations().get(APPLIED_HASH_ANNOTATION)) == Some(&hash) {
        return Ok(false);
    }
    let name = desired.name_any();
    desired
        .annotations_mut()
        .insert(APPLIED_HASH_ANNOTATION.into(), hash);
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(&desired),
    )
    .await
    .map_err(|e| Error::kube(format!("apply {} {name}", K::kind(&Default::default())), e))?;
    Ok(true)
}

/// Like [`apply_if_changed`], reading the existing object first.
pub async fn get_and_apply<K>(api: &Api<K>, desired: K) -> Result<bool, Error>
where
    K: Resource + Serialize + DeserializeOwned + Clone + Debug,
    K::DynamicType: Default,
{
    let name = desired.name_any();
    let existing = api
        .get_opt(&name)
        .await
        .map_err(|e| Error::kube(format!("get {} {name}", K::kind(&Default::default())), e))?;
    apply_if_changed(api, desired, existing.as_ref()).await
}

/// Merge-patches the status of `object` to `status` unless it already is; returns whether it
/// wrote. Status writes go through here so that a steady state makes none.
pub async fn write_status_if_changed<K, S>(
    client: &Client,
    object: &K,
    current: Option<&S>,
    status: &S,
) -> Result<bool, Error>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug,
    S: PartialEq + Serialize,
{
    if current == Some(status) {
        return Ok(false);
    }
    let api: Api<K> = Api::namespaced(
        client.clone(),
        object.namespace().as_deref().unwrap_or_default(),
    );
    let name = object.name_any();
    api.patch_status(
        &name,
        &PatchParams::default(),
        &Patch::Merge(&serde_json::json!({"status": status})),
    )
    .await
    .map_err(|e| Error::kube(format!("update status of {} {name}", K::kind(&())), e))?;
    Ok(true)
}
