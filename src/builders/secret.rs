//! The generated client-token Secret.

use std::collections::BTreeMap;

use k8s_openapi::api::core::v1::Secret;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use rand::RngCore;

use super::labels::{TOKEN_KEY, cluster_labels, token_secret_name};
use crate::validate::ValidCluster;

/// A Secret with a fresh random token (created once; never rewritten by the operator).
pub fn token_secret(v: &ValidCluster) -> Secret {
    let mut bytes = [0u8; 32];
    rand::rng().fill_bytes(&mut bytes);
    Secret {
        metadata: ObjectMeta {
            name: Some(token_secret_name(v.cluster)),
            namespace: Some(v.namespace.into()),
            labels: Some(cluster_labels(v.name)),
            owner_references: Some(vec![v.owner.clone()]),
            ..ObjectMeta::default()
        },
        string_data: Some(BTreeMap::from([(
            TOKEN_KEY.to_string(),
            hex::encode(bytes),
        )])),
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
