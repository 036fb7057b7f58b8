//! The committed CRDs are exactly what the code generates.

#[test]
fn committed_crds_match_the_generated_ones() {
    let generated = spark_connect_operator::crd::crds_yaml().expect("render CRDs");
    let path = concat!(env!("CARGO_MANIFEST_DIR"), "/crds/sparkconnect.dev.yaml");
    let committed = std::fs::read_to_string(path).expect("read crds/sparkconnect.dev.yaml");
    assert!(
        generated == committed,
        "crds/ is stale: run `cargo run -- crd > crds/sparkconnect.dev.yaml` and commit the result"
    );
}
