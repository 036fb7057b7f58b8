//! The drivers' ServiceAccount, Role and RoleBinding: the only rights executors management needs.

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use serde_json::json;

use super::labels::{cluster_labels, driver_account_name};
use crate::error::Error;
use crate::validate::ValidCluster;

fn metadata(v: &ValidCluster) -> serde_json::Value {
    json!({
        "name": driver_account_name(v.name),
        "namespace": v.namespace,
        "labels": cluster_labels(v.name),
        "ownerReferences": [v.owner],
    })
}

/// The ServiceAccount the driver pods run as.
pub fn driver_service_account(v: &ValidCluster) -> Result<ServiceAccount, Error> {
    Ok(serde_json::from_value(
        json!({"apiVersion": "v1", "kind": "ServiceAccount", "metadata": metadata(v)}),
    )?)
}

/// What a Spark driver needs to run executors in its namespace.
pub fn driver_role(v: &ValidCluster) -> Result<Role, Error> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": metadata(v),
        "rules": [{
            "apiGroups": [""],
            "resources": ["pods", "services", "configmaps", "persistentvolumeclaims"],
            "verbs": ["create", "get", "list", "watch", "patch", "update", "delete", "deletecollection"]
        }]
    }))?)
}

/// Binds the driver Role to the driver ServiceAccount.
pub fn driver_role_binding(v: &ValidCluster) -> Result<RoleBinding, Error> {
    let name = driver_account_name(v.name);
    Ok(serde_json::from_value(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "RoleBinding",
        "metadata": metadata(v),
        "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
        "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": v.namespace}]
    }))?)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::cluster;
    use crate::validate::validate;

    #[test]
    fn role_covers_executor_pods_and_binding_names_the_account() {
        let c = cluster();
        let v = validate(&c).unwrap();
        let role = driver_role(&v).unwrap();
        let rule = &role.rules.unwrap()[0];
        assert!(
            rule.resources
                .as_ref()
                .unwrap()
                .contains(&"pods".to_string())
        );
        assert!(rule.verbs.contains(&"delete".to_string()));
        let binding = driver_role_binding(&v).unwrap();
        assert_eq!(binding.subjects.unwrap()[0].name, "analytics-spark");
        assert_eq!(
            driver_service_account(&v)
                .unwrap()
                .metadata
                .owner_references
                .unwrap()[0]
                .kind,
            "SparkConnectCluster"
        );
    }
}
