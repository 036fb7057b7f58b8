//! The generated client-token Secret.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::{Pod, Secret};
use k8s_openapi::apimachinery::pkg::apis::meta::v1::{ObjectMeta, OwnerReference};
use rand::RngCore;

use super::labels::{
    TOKEN_KEY, cluster_labels, server_labels, server_token_secret_name, token_secret_name,
};
use crate::validate::ValidCluster;

/// A fresh random token.
pub fn new_token() -> String {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    hex::encode(bytes)
}

/// The cluster's Secret with a fresh random token (created once; never rewritten).
pub fn token_secret(v: &ValidCluster) -> Secret {
    secret(
        token_secret_name(v.cluster),
        v.namespace,
        cluster_labels(v.name),
        v.owner.clone(),
        new_token(),
    )
}

/// A pool server's own token Secret, owned by the server pod (it goes when the pod goes).
pub fn server_token_secret(v: &ValidCluster, pod: &Pod, token: String) -> Option<Secret> {
    let name = pod.metadata.name.as_deref()?;
    let owner = OwnerReference {
        api_version: "v1".into(),
        kind: "Pod".into(),
        name: name.into(),
        uid: pod.metadata.uid.clone()?,
        controller: Some(true),
        block_owner_deletion: None,
    };
    Some(secret(
        server_token_secret_name(name),
        v.namespace,
        server_labels(v.name, name),
        owner,
        token,
    ))
}

fn secret(
    name: String,
    namespace: &str,
    labels: BTreeMap<String, String>,
    owner: OwnerReference,
    token: String,
) -> Secret {
    Secret {
        metadata: ObjectMeta {
            name: Some(name),
            namespace: Some(namespace.into()),
            labels: Some(labels),
            owner_references: Some(vec![owner]),
            ..ObjectMeta::default()
        },
        string_data: Some(BTreeMap::from([(TOKEN_KEY.to_string(), token)])),
        type_: Some("Opaque".into()),
        ..Secret::default()
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::test_support::cluster;
    use crate::validate::validate;

    #[test]
    fn tokens_are_random_and_long() {
        let c = cluster();
        let v = validate(&c).unwrap();
        let a = token_secret(&v).string_data.unwrap()[TOKEN_KEY].clone();
        let b = token_secret(&v).string_data.unwrap()[TOKEN_KEY].clone();
        assert_eq!(a.len(), 64);
        assert_ne!(a, b);
    }
}
