//! Generates the Spark Connect client and server stubs and the ext_authz client from `proto/`,
//! with the protoc that ships inside the `protoc-bin-vendored` crate (a fresh machine needs no
//! system protoc).

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let mut config = prost_build::Config::new();
    config.protoc_executable(protoc_bin_vendored::protoc_bin_path()?);
    tonic_prost_build::configure().compile_with_config(
        config,
        &[
            "proto/spark/connect/base.proto",
            "proto/envoy/service/auth/v3/external_auth.proto",
        ],
        &["proto"],
    )?;
    Ok(())
}
