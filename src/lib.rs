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
pub mod quantity;
pub mod schedule;
pub mod store_index;
pub mod telemetry;
pub mod validate;

/// The allocator of every program that runs this crate's code, the operator and the benches
/// alike, so what the benches measure is what ships. With glibc's malloc, an operator that had
/// converged a thousand clusters held a 47 MB heap for 18 MB of live data: peak RSS 76 MB in
/// `sco-bench scale`, 50 MB with jemalloc.
pub use tikv_jemallocator::Jemalloc as Allocator;

/// Generated Spark Connect protocol types, client and server (from `proto/`).
#[allow(missing_docs, clippy::all)]
pub mod proto {
    tonic::include_proto!("spark.connect");
}

/// Generated types and client of Envoy's external authorization API (from `proto/`).
#[allow(missing_docs, clippy::all)]
pub mod ext_authz_proto {
    /// `envoy.service.auth.v3`.
    pub mod envoy {
        pub mod service {
            pub mod auth {
                pub mod v3 {
                    tonic::include_proto!("envoy.service.auth.v3");
                }
            }
        }
    }
    /// `google.rpc`.
    pub mod google {
        pub mod rpc {
            tonic::include_proto!("google.rpc");
        }
    }
}

#[cfg(test)]
mod test_support;
