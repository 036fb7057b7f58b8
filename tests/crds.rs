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

#[test]
fn the_chart_ships_the_same_crds() {
    let root = env!("CARGO_MANIFEST_DIR");
    let committed =
        std::fs::read_to_string(format!("{root}/crds/sparkconnect.dev.yaml")).expect("crds/");
    let chart = std::fs::read_to_string(format!(
        "{root}/charts/spark-connect-operator/crds/sparkconnect.dev.yaml"
    ))
    .expect("chart crds/");
    assert!(
        chart == committed,
        "the chart's CRDs differ from crds/: copy crds/sparkconnect.dev.yaml into the chart"
    );
}
