//! The drivers' ServiceAccount, Role and RoleBinding (the only rights managing executors needs;
//! the chart's admission policy narrows them to a driver's own executors), and the executors'
//! ServiceAccount, which has no rights and no token.

use k8s_openapi::api::core::v1::ServiceAccount;
use k8s_openapi::api::rbac::v1::{Role, RoleBinding};
use serde_json::json;

use super::labels::{cluster_labels, driver_account_name, executor_account_name};
use crate::error::Error;
use crate::validate::ValidCluster;

fn metadata(v: &ValidCluster) -> serde_json::Value {
    metadata_named(v, &driver_account_name(v.name))
}

fn metadata_named(v: &ValidCluster, name: &str) -> serde_json::Value {
    json!({
        "name": name,
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

/// The ServiceAccount executor pods run as: no token is mounted, and nothing is bound to it.
pub fn executor_service_account(v: &ValidCluster) -> Result<ServiceAccount, Error> {
    Ok(serde_json::from_value(json!({
        "apiVersion": "v1",
        "kind": "ServiceAccount",
        "metadata": metadata_named(v, &executor_account_name(v.name)),
        "automountServiceAccountToken": false
    }))?)
}

/// The verb on `sparkconnectclusters` that lets a driver's executors mount secrets and host
/// paths or run privileged: the chart's admission policy refuses such executor pods from a
/// driver without it. Granted to the drivers of clusters with `security.allowPrivileged`.
pub const PRIVILEGED_EXECUTORS_VERB: &str = "privileged-executors";

/// What a Spark driver needs to run executors in its namespace: executor pods and their
/// ConfigMap; for privileged clusters also PersistentVolumeClaims and the verb that lets its
/// executors be privileged. No Services, no Secrets.
pub fn driver_role(v: &ValidCluster) -> Result<Role, Error> {
    let privileged = v.cluster.spec.security.allow_privileged;
    let mut resources = vec!["pods", "configmaps"];
    if privileged {
        resources.push("persistentvolumeclaims");
    }
    let mut rules = vec![json!({
        "apiGroups": [""],
        "resources": resources,
        "verbs": ["create", "get", "list", "watch", "patch", "delete", "deletecollection"]
    })];
    if privileged {
        rules.push(json!({
            "apiGroups": [crate::crd::GROUP],
            "resources": ["sparkconnectclusters"],
            "resourceNames": [v.name],
            "verbs": [PRIVILEGED_EXECUTORS_VERB]
        }));
    }
    Ok(serde_json::from_value(json!({
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": metadata(v),
        "rules": rules
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
        let resources = rule.resources.as_ref().unwrap();
        assert!(!resources.contains(&"secrets".to_string()));
        assert!(!resources.contains(&"services".to_string()));
        let executors = executor_service_account(&v).unwrap();
        assert_eq!(executors.automount_service_account_token, Some(false));
        assert_eq!(role_rules(&v).len(), 1, "no privileged executors");
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

    fn role_rules(v: &ValidCluster) -> Vec<k8s_openapi::api::rbac::v1::PolicyRule> {
        driver_role(v).unwrap().rules.unwrap()
    }

    #[test]
    fn a_privileged_clusters_drivers_may_run_privileged_executors_of_that_cluster_only() {
        let mut c = cluster();
        c.spec.security.allow_privileged = true;
        let v = validate(&c).unwrap();
        let rules = role_rules(&v);
        let verb = rules
            .iter()
            .find(|r| r.verbs.contains(&PRIVILEGED_EXECUTORS_VERB.to_string()))
            .unwrap();
        assert_eq!(verb.resource_names, Some(vec!["analytics".to_string()]));
        assert!(
            rules[0]
                .resources
                .as_ref()
                .unwrap()
                .contains(&"persistentvolumeclaims".to_string())
        );
    }
}
