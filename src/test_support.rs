//! Fixtures for unit tests.

use crate::crd::{SparkConnectCluster, SparkConnectClusterSpec};

/// The example team cluster `data/analytics`, as the apiserver would return it.
pub fn cluster() -> SparkConnectCluster {
    let spec: SparkConnectClusterSpec = serde_json::from_value(serde_json::json!({
        "image": "apache/spark:4.3.0",
        "sparkConf": {"spark.sql.shuffle.partitions": "4"},
    }))
    .expect("fixture spec parses");
    let mut cluster = SparkConnectCluster::new("analytics", spec);
    cluster.metadata.namespace = Some("data".into());
    cluster.metadata.uid = Some("4f9b7a52-0d2c-4c1e-9f4e-1b2a3c4d5e6f".into());
    cluster.metadata.generation = Some(1);
    cluster
}
