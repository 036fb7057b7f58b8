//! spark-connect-operator: runs Apache Spark Connect servers on Kubernetes with a hot pool.

pub mod admin;
pub mod builders;
pub mod client;
pub mod controller;
pub mod crd;
pub mod duration;
pub mod error;
pub mod gateway;
pub mod leader;
pub mod metrics;
pub mod probe;
pub mod telemetry;
pub mod validate;

/// Generated Spark Connect protocol types, client and server (from `proto/`).
#[allow(missing_docs, clippy::all)]
pub mod proto {
    tonic::include_proto!("spark.connect");
}

#[cfg(test)]
mod test_support;
