//! spark-connect-operator: runs Apache Spark Connect servers on Kubernetes with a hot pool.

pub mod admin;
pub mod builders;
pub mod client;
pub mod controller;
pub mod crd;
pub mod error;
pub mod metrics;
pub mod telemetry;
pub mod validate;

#[cfg(test)]
mod test_support;
