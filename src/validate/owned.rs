//! The parts of a server pod the operator owns: how it is named, labelled and restarted, and
//! the address and token its server reads. A `server.podTemplate` may not set them, whatever the
//! cluster's security settings, since a server built otherwise would not be the one the
//! operator probes, counts and hands out. Pure; reads the template as given, so that a `null`
//! (which removes what the operator sets) is seen too.

use serde_json::{Map, Value};

use crate::crd::SERVER_CONTAINER;
use crate::error::Error;

/// The address the server binds to (its pod IP).
pub const BIND_ADDRESS_ENV: &str = "SPARK_DRIVER_BIND_ADDRESS";
/// The user Spark runs as.
pub const USER_ENV: &str = "SPARK_USER";
/// The token clients must present (token mode).
pub const TOKEN_ENV: &str = "SPARK_CONNECT_AUTHENTICATE_TOKEN";
/// Environment the server's wiring depends on (`SPARK_USER` is the team's to change, e.g. for
/// the user Hadoop sees).
const MANAGED_ENV: &[&str] = &[BIND_ADDRESS_ENV, TOKEN_ENV];

/// Prefix of every label and annotation the operator reads on its servers.
const OPERATOR_PREFIX: &str = "sparkconnect.dev/";

/// Labels the operator sets on every server besides its own prefix (the same list as the
/// schema's rule, for objects admitted without it).
const RESERVED_LABELS: &[&str] = &[
    "app.kubernetes.io/name",
    "app.kubernetes.io/instance",
    "app.kubernetes.io/component",
    "app.kubernetes.io/managed-by",
];

/// Pod spec fields whose value the operator's lifecycle depends on.
const OWNED_POD_FIELDS: &[&str] = &["restartPolicy"];

/// Refuses a template that sets anything the operator owns, every such part named.
pub fn refuse_owned_parts(template: &Value) -> Result<(), Error> {
    let mut problems = Vec::new();
    nulls("server.podTemplate", template, &mut problems);
    metadata(template.get("metadata"), &mut problems);
    if let Some(spec) = template.get("spec") {
        for field in OWNED_POD_FIELDS {
            if spec.get(field).is_some() {
                problems.push(format!("sets spec.{field}"));
            }
        }
        for container in server_containers(spec) {
            server_container(container, &mut problems);
        }
    }
    if problems.is_empty() {
        return Ok(());
    }
    Err(Error::InvalidSpec(format!(
        "server.podTemplate {} (the operator owns these)",
        problems.join("; ")
    )))
}

/// Every `null` in the template: a null removes what the operator put there (its security
/// context, its containers, its volumes), so it is refused; leave a field out instead.
fn nulls(path: &str, value: &Value, problems: &mut Vec<String>) {
    match value {
        Value::Null => problems.push(format!(
            "sets {} to null (leave the field out instead)",
            path.trim_start_matches("server.podTemplate.")
        )),
        Value::Object(fields) => {
            for (key, field) in fields {
                nulls(&format!("{path}.{key}"), field, problems);
            }
        }
        Value::Array(items) => {
            for (index, item) in items.iter().enumerate() {
                nulls(&format!("{path}[{index}]"), item, problems);
            }
        }
        _ => {}
    }
}

/// Only labels and annotations may be set, and none of the operator's.
fn metadata(metadata: Option<&Value>, problems: &mut Vec<String>) {
    let Some(Value::Object(metadata)) = metadata else {
        return;
    };
    for key in metadata.keys() {
        if key != "labels" && key != "annotations" {
            problems.push(format!(
                "sets metadata.{key} (only labels and annotations may be set)"
            ));
        }
    }
    for (kind, reserved) in [("labels", RESERVED_LABELS), ("annotations", &[][..])] {
        for key in keys(metadata, kind) {
            if key.starts_with(OPERATOR_PREFIX) || reserved.contains(&key) {
                problems.push(format!("sets metadata.{kind} {key}"));
            }
        }
    }
}

fn keys<'a>(metadata: &'a Map<String, Value>, kind: &str) -> impl Iterator<Item = &'a str> {
    metadata
        .get(kind)
        .and_then(Value::as_object)
        .into_iter()
        .flat_map(|map| map.keys().map(String::as_str))
}

/// The environment the operator gives the server container.
fn server_container(container: &Value, problems: &mut Vec<String>) {
    for name in env_names(container) {
        if MANAGED_ENV.contains(&name) {
            problems.push(format!("sets env {name} of container {SERVER_CONTAINER}"));
        }
    }
}

/// The template's amendments of the server container: every container of that name (each
/// one is merged into it).
fn server_containers(spec: &Value) -> impl Iterator<Item = &Value> {
    spec.get("containers")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter(|c| c.get("name").and_then(Value::as_str) == Some(SERVER_CONTAINER))
}

/// The names of a container's env entries.
fn env_names(container: &Value) -> impl Iterator<Item = &str> {
    container
        .get("env")
        .and_then(Value::as_array)
        .into_iter()
        .flatten()
        .filter_map(|env| env.get("name").and_then(Value::as_str))
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn refused(template: Value) -> String {
        refuse_owned_parts(&template).unwrap_err().to_string()
    }

    #[test]
    fn a_null_anywhere_is_refused_with_its_path() {
        let message = refused(json!({"spec": {
            "securityContext": null,
            "containers": [{"name": SERVER_CONTAINER, "securityContext": {"capabilities": null}}]
        }}));
        assert!(
            message.contains("spec.securityContext to null"),
            "{message}"
        );
        assert!(
            message.contains("spec.containers[0].securityContext.capabilities to null"),
            "{message}"
        );
    }

    #[test]
    fn the_servers_token_and_lifecycle_are_the_operators() {
        let message = refused(json!({"spec": {
            "restartPolicy": "Always",
            "containers": [{
                "name": SERVER_CONTAINER,
                "env": [{"name": "SPARK_CONNECT_AUTHENTICATE_TOKEN", "value": "known"}, {"name": "TZ", "value": "UTC"}]
            }]
        }}));
        for part in ["spec.restartPolicy", "env SPARK_CONNECT_AUTHENTICATE_TOKEN"] {
            assert!(message.contains(part), "{part} missing from {message}");
        }
        assert!(!message.contains("TZ"), "{message}");
    }

    #[test]
    fn a_sidecar_may_set_its_own_command_and_env() {
        refuse_owned_parts(&json!({"spec": {"containers": [{
            "name": "proxy", "image": "envoy", "command": ["envoy"],
            "env": [{"name": "SPARK_USER", "value": "x"}]
        }]}}))
        .unwrap();
    }

    #[test]
    fn metadata_may_hold_only_labels_and_annotations_of_ones_own() {
        let message = refused(json!({"metadata": {
            "finalizers": ["example.com/keep"],
            "labels": {"team": "data", "sparkconnect.dev/state": "idle", "app.kubernetes.io/component": "x"},
            "annotations": {"sparkconnect.dev/claim": "someone", "note": "ok"}
        }}));
        for part in [
            "metadata.finalizers",
            "labels sparkconnect.dev/state",
            "labels app.kubernetes.io/component",
            "annotations sparkconnect.dev/claim",
        ] {
            assert!(message.contains(part), "{part} missing from {message}");
        }
        assert!(
            !message.contains("team") && !message.contains("note"),
            "{message}"
        );
    }
}
