//! Writing the operator's objects: server-side apply of children only when they differ from what
//! the apiserver holds (so a steady state makes no writes, and hand edits are reverted), never
//! over an object the cluster does not own; status patches that can also clear fields.

use std::fmt::Debug;

use k8s_openapi::NamespaceResourceScope;
use kube::api::{Api, Patch, PatchParams};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use crate::builders::labels::FIELD_MANAGER;
use crate::error::Error;

/// Whether `existing` already holds every field of `desired` with the same value (objects by
/// key, lists item by item). Fields the apiserver adds (defaults, status) do not matter.
pub fn covers(existing: &Value, desired: &Value) -> bool {
    match (existing, desired) {
        (Value::Object(have), Value::Object(want)) => want
            .iter()
            .all(|(k, v)| v.is_null() || have.get(k).is_some_and(|h| covers(h, v))),
        (Value::Array(have), Value::Array(want)) => {
            have.len() == want.len() && have.iter().zip(want).all(|(h, w)| covers(h, w))
        }
        (have, want) => have == want,
    }
}

/// Whether `object` is controlled by the owner with `uid`.
pub fn controlled_by<K: Resource>(object: &K, uid: &str) -> bool {
    object
        .meta()
        .owner_references
        .iter()
        .flatten()
        .any(|r| r.controller == Some(true) && r.uid == uid)
}

/// Applies `desired` (server-side, forced) unless `existing` already covers it. An existing
/// object that `owner_uid` does not control is never taken over. Returns whether it wrote.
pub async fn apply_owned<K>(
    api: &Api<K>,
    desired: &K,
    existing: Option<&K>,
    owner_uid: &str,
) -> Result<bool, Error>
where
    K: Resource + Serialize + DeserializeOwned + Clone + Debug,
    K::DynamicType: Default,
{
    let name = desired.name_any();
    let dyntype = K::DynamicType::default();
    let kind = K::kind(&dyntype);
    if let Some(existing) = existing {
        if !controlled_by(existing, owner_uid) {
            return Err(Error::NotOwned {
                kind: kind_name(&kind),
                name,
            });
        }
        if covers(
            &serde_json::to_value(existing)?,
            &serde_json::to_value(desired)?,
        ) {
            return Ok(false);
        }
    }
    api.patch(
        &name,
        &PatchParams::apply(FIELD_MANAGER).force(),
        &Patch::Apply(desired),
    )
    .await
    .map_err(|e| Error::kube(format!("apply {kind} {name}"), e))?;
    Ok(true)
}

/// A `'static` name for the kinds the operator writes (for error messages).
fn kind_name(kind: &str) -> &'static str {
    match kind {
        "Service" => "Service",
        "ServiceAccount" => "ServiceAccount",
        "Role" => "Role",
        "RoleBinding" => "RoleBinding",
        "EndpointSlice" => "EndpointSlice",
        "Secret" => "Secret",
        _ => "object",
    }
}

/// The merge patch that turns status `current` into `status`: top-level fields that `status`
/// no longer has are set to null, so they are removed rather than kept stale.
pub fn status_patch<S: Serialize>(current: Option<&S>, status: &S) -> Result<Value, Error> {
    let mut next = serde_json::to_value(status)?;
    if let (Some(current), Value::Object(fields)) = (current, &mut next)
        && let Value::Object(old) = serde_json::to_value(current)?
    {
        for key in old.keys() {
            fields.entry(key.clone()).or_insert(Value::Null);
        }
    }
    Ok(serde_json::json!({ "status": next }))
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
        &Patch::Merge(&status_patch(current, status)?),
    )
    .await
    .map_err(|e| Error::kube(format!("update status of {} {name}", K::kind(&())), e))?;
    Ok(true)
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    #[test]
    fn defaults_added_by_the_apiserver_do_not_count_as_drift() {
        let desired = json!({"spec": {"ports": [{"name": "connect", "port": 15002}], "selector": {"a": "b"}}});
        let existing = json!({"spec": {"ports": [{"name": "connect", "port": 15002, "protocol": "TCP"}],
                              "selector": {"a": "b"}, "clusterIP": "10.96.0.7"}, "status": {}});
        assert!(covers(&existing, &desired));
    }

    #[test]
    fn a_hand_edit_is_drift() {
        let desired = json!({"spec": {"selector": {"sparkconnect.dev/state": "shared"}}});
        let edited = json!({"spec": {"selector": {"sparkconnect.dev/state": "idle"}}});
        assert!(!covers(&edited, &desired));
        let rules = json!({"rules": [{"verbs": ["get"]}]});
        let widened = json!({"rules": [{"verbs": ["get"]}, {"verbs": ["*"]}]});
        assert!(!covers(&widened, &rules), "an added rule is drift too");
    }

    #[test]
    fn cleared_status_fields_are_removed_not_kept() {
        #[derive(Serialize, PartialEq)]
        struct S {
            #[serde(skip_serializing_if = "Option::is_none")]
            endpoint: Option<String>,
            phase: String,
        }
        let old = S {
            endpoint: Some("sc://x".into()),
            phase: "Ready".into(),
        };
        let new = S {
            endpoint: None,
            phase: "Ready".into(),
        };
        let patch = status_patch(Some(&old), &new).unwrap();
        assert_eq!(
            patch,
            json!({"status": {"endpoint": null, "phase": "Ready"}})
        );
    }
}
