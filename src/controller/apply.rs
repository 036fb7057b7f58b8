//! Writing the operator's objects: server-side apply of children only when they differ from what
//! the apiserver holds (so a steady state makes no writes, and hand edits are reverted), never
//! over an object the cluster does not own; status patches that can also clear fields.

use std::borrow::Cow;
use std::fmt::Debug;

use k8s_openapi::NamespaceResourceScope;
use kube::api::{Api, Patch, PatchParams, PostParams};
use kube::{Client, Resource, ResourceExt};
use serde::Serialize;
use serde::de::DeserializeOwned;
use serde_json::Value;

use super::applied::{Scope, wanted};
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

/// Like [`apply_owned_without`], with no field that must stay absent.
pub async fn apply_owned<K>(
    api: &Api<K>,
    desired: &K,
    existing: Option<&K>,
    owner_uid: &str,
    seen: &Scope<'_>,
) -> Result<bool, Error>
where
    K: Resource + Serialize + DeserializeOwned + Clone + Debug,
    K::DynamicType: Default,
{
    apply_owned_without(api, desired, existing, owner_uid, &[], seen).await
}

/// The merge patch that removes the fields at `pointers` (JSON pointers such as
/// `/spec/selector`) that `held` has set, or `None` when none is set.
pub fn removal_patch(held: &Value, pointers: &[&str]) -> Option<Value> {
    let mut patch = Value::Object(serde_json::Map::new());
    let mut any = false;
    for pointer in pointers {
        let set = held.pointer(pointer).is_some_and(|v| match v {
            Value::Null => false,
            Value::Object(m) => !m.is_empty(),
            Value::Array(a) => !a.is_empty(),
            _ => true,
        });
        if !set {
            continue;
        }
        any = true;
        let mut at = &mut patch;
        let parts: Vec<&str> = pointer.split('/').skip(1).collect();
        for (i, part) in parts.iter().enumerate() {
            let last = i + 1 == parts.len();
            let Value::Object(map) = at else { break };
            at = map.entry((*part).to_string()).or_insert(if last {
                Value::Null
            } else {
                Value::Object(serde_json::Map::new())
            });
        }
    }
    any.then_some(patch)
}

/// Writes `desired` unless `existing` (as the operator's store shows it) already covers it.
/// An object missing from the store is created, never applied: if the name is taken, the
/// holder is read once, and an object that `owner_uid` does not control is never taken over.
/// Returns whether it wrote.
/// Fields at `absent` (JSON pointers) must not be set: a hand edit that sets them (which
/// server-side apply would keep, as the operator never owned them) is removed.
/// An object `seen` found as wanted at the same resourceVersion is skipped without a
/// comparison; one found as wanted now is recorded there.
pub async fn apply_owned_without<K>(
    api: &Api<K>,
    desired: &K,
    existing: Option<&K>,
    owner_uid: &str,
    absent: &[&str],
    seen: &Scope<'_>,
) -> Result<bool, Error>
where
    K: Resource + Serialize + DeserializeOwned + Clone + Debug,
    K::DynamicType: Default,
{
    let wanted = wanted(desired, owner_uid, absent)?;
    if existing.is_some_and(|existing| seen.unchanged(existing, wanted)) {
        return Ok(false);
    }
    let name = desired.name_any();
    let dyntype = K::DynamicType::default();
    let kind = K::kind(&dyntype);
    let not_owned = || Error::NotOwned {
        kind: kind_name(&kind),
        name: name.clone(),
    };
    let held = match existing {
        Some(existing) => Cow::Borrowed(existing),
        None => {
            let params = PostParams {
                field_manager: Some(FIELD_MANAGER.into()),
                ..PostParams::default()
            };
            match api.create(&params, desired).await {
                Ok(_) => return Ok(true),
                Err(kube::Error::Api(s)) if s.code == 409 => Cow::Owned(
                    api.get(&name)
                        .await
                        .map_err(|e| Error::kube(format!("get {kind} {name}"), e))?,
                ),
                Err(e) => return Err(Error::kube(format!("create {kind} {name}"), e)),
            }
        }
    };
    if !controlled_by(held.as_ref(), owner_uid) {
        return Err(not_owned());
    }
    let held_json = serde_json::to_value(held.as_ref())?;
    let mut wrote = false;
    if let Some(patch) = removal_patch(&held_json, absent) {
        api.patch(&name, &PatchParams::default(), &Patch::Merge(&patch))
            .await
            .map_err(|e| Error::kube(format!("repair {kind} {name}"), e))?;
        wrote = true;
    }
    if covers(&held_json, &serde_json::to_value(desired)?) {
        if !wrote {
            seen.keep(held.as_ref(), wanted);
        }
        return Ok(wrote);
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

/// Which stored status a status write may land on.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Precondition {
    /// Any: the writer owns the status outright (a cluster's status is its reconcile's).
    None,
    /// Only the one the object had when it was read, for a status decided on a copy that may be
    /// old (a newer status, such as a bind made meanwhile, is never overwritten).
    VersionRead,
}

/// Merge-patches the status of `object` to `status` unless it already is; returns whether it
/// wrote. Status writes go through here so that a steady state makes none. Under
/// [`Precondition::VersionRead`], an object changed since it was read is left as it is and
/// `Ok(false)` returned: that change brings its own reconcile.
pub async fn write_status_if_changed<K, S>(
    client: &Client,
    object: &K,
    current: Option<&S>,
    status: &S,
    precondition: Precondition,
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
    let mut patch = status_patch(current, status)?;
    if precondition == Precondition::VersionRead {
        patch["metadata"] = serde_json::json!({ "resourceVersion": object.resource_version() });
    }
    match patch_status(client, object, patch).await {
        Err(e) if precondition == Precondition::VersionRead && e.api_code() == Some(409) => {
            Ok(false)
        }
        other => other.map(|()| true),
    }
}

async fn patch_status<K>(client: &Client, object: &K, patch: Value) -> Result<(), Error>
where
    K: Resource<DynamicType = (), Scope = NamespaceResourceScope>
        + Clone
        + DeserializeOwned
        + Debug,
{
    let api: Api<K> = Api::namespaced(
        client.clone(),
        object.namespace().as_deref().unwrap_or_default(),
    );
    let name = object.name_any();
    api.patch_status(&name, &PatchParams::default(), &Patch::Merge(&patch))
        .await
        .map_err(|e| Error::kube(format!("update status of {} {name}", K::kind(&())), e))?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::controller::applied::Applied;
    use k8s_openapi::api::core::v1::ConfigMap;
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
    fn a_field_that_must_stay_absent_is_removed_when_set() {
        let edited = json!({"spec": {"selector": {"app": "elsewhere"}, "ports": []}});
        assert_eq!(
            removal_patch(&edited, &["/spec/selector"]),
            Some(json!({"spec": {"selector": null}}))
        );
        let clean = json!({"spec": {"ports": []}});
        assert_eq!(removal_patch(&clean, &["/spec/selector"]), None);
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

    /// A ConfigMap `m` in `data` controlled by `owner`, as the store would show it at `rv`.
    fn config_map(value: &str, rv: Option<&str>) -> ConfigMap {
        serde_json::from_value(json!({
            "metadata": {"name": "m", "namespace": "data", "uid": rv.map(|_| "uid-m"),
                "resourceVersion": rv,
                "ownerReferences": [{"apiVersion": "v1", "kind": "Owner", "name": "o",
                    "uid": "owner", "controller": true}]},
            "data": {"a": value}
        }))
        .unwrap()
    }

    #[tokio::test]
    async fn an_object_found_as_wanted_is_compared_again_only_when_it_or_the_wanted_form_changes() {
        let (service, mut handle) = tower_test::mock::pair::<
            http::Request<kube::client::Body>,
            http::Response<kube::client::Body>,
        >();
        let requests = tokio::spawn(async move {
            let mut seen = Vec::new();
            while let Some((request, send)) = handle.next_request().await {
                seen.push(request.method().to_string());
                let refused = http::Response::builder().status(500);
                send.send_response(refused.body(kube::client::Body::empty()).unwrap());
            }
            seen
        });
        let api: Api<ConfigMap> = Api::namespaced(Client::new(service, "data"), "data");
        let applied = Applied::default();
        let apply = |desired: ConfigMap, held: ConfigMap| {
            let (api, applied) = (api.clone(), &applied);
            async move {
                let seen = applied.scope("data/c");
                apply_owned(&api, &desired, Some(&held), "owner", &seen).await
            }
        };
        let wanted = config_map("1", None);
        let held = config_map("1", Some("7"));
        assert!(!apply(wanted.clone(), held.clone()).await.unwrap());
        // Only the resourceVersion and the wanted form are looked at now: a copy at the same
        // version that (impossibly) differs is not even compared.
        assert!(
            !apply(wanted.clone(), config_map("2", Some("7")))
                .await
                .unwrap()
        );
        // A new version that differs is written, and so is a new wanted form.
        assert!(
            apply(wanted.clone(), config_map("2", Some("8")))
                .await
                .is_err()
        );
        assert!(apply(config_map("3", None), held).await.is_err());
        drop(api);
        let seen = tokio::time::timeout(std::time::Duration::from_secs(5), requests)
            .await
            .unwrap()
            .unwrap();
        assert_eq!(seen, ["PATCH", "PATCH"]);
    }
}
