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

/// The apiserver side of a mock: each request the context's client sends, to answer.
pub type MockApiserver =
    tower_test::mock::Handle<http::Request<kube::client::Body>, http::Response<kube::client::Body>>;

/// A controller context over stores holding `held`, whose client talks to a mock apiserver in
/// `namespace`.
pub fn context_over(
    held: crate::controller::stores::Held,
    namespace: &str,
) -> (std::sync::Arc<crate::controller::Context>, MockApiserver) {
    use crate::metrics::Metrics;
    use crate::probe::prober::Prober;
    let (service, handle) = tower_test::mock::pair();
    let metrics = Metrics::new().expect("metrics register");
    let (tx, _rx) = futures::channel::mpsc::unbounded();
    let prober = Prober::new(std::sync::Arc::default(), metrics.clone(), tx, 1, 1);
    let ctx = crate::controller::Context::new(
        kube::Client::new(service, namespace),
        metrics,
        prober,
        crate::controller::stores::Stores::holding(held),
    );
    (ctx, handle)
}

/// Answers the next request with 409 Conflict (the object changed since it was read) and
/// returns that request's path and JSON body.
pub async fn answer_next_with_conflict(
    mut apiserver: MockApiserver,
) -> (String, serde_json::Value) {
    let (request, send) = apiserver.next_request().await.expect("a request");
    let path = request.uri().path().to_string();
    let body = http_body_util::BodyExt::collect(request.into_body())
        .await
        .expect("a request body")
        .to_bytes();
    let conflict = serde_json::json!({"kind": "Status", "apiVersion": "v1", "status": "Failure",
        "message": "the object has been modified", "reason": "Conflict", "code": 409});
    send.send_response(
        http::Response::builder()
            .status(409)
            .body(kube::client::Body::from(
                serde_json::to_vec(&conflict).expect("JSON"),
            ))
            .expect("a response"),
    );
    (path, serde_json::from_slice(&body).unwrap_or_default())
}

/// The pool terms of cluster `ns/c` (uid `cluster-uid`), with no server reserved for the
/// shared endpoint and room for 10 waiting claims.
pub fn pool_terms() -> crate::controller::pool::allocator::PoolTerms {
    crate::controller::pool::allocator::PoolTerms {
        namespace: "ns".into(),
        cluster: "c".into(),
        cluster_uid: "cluster-uid".into(),
        server_hash: "h".into(),
        reserved_for_shared: 0,
        max_waiting: 10,
        port: 15002,
        token_mode: false,
    }
}

/// An idle, current server pod `name` (uid `uid-<name>`) of the cluster of [`pool_terms`],
/// created at `created`.
pub fn idle_server(name: &str, created: jiff::Timestamp) -> k8s_openapi::api::core::v1::Pod {
    use crate::builders::labels::{CLUSTER_LABEL, SERVER_LABEL, SPEC_HASH_LABEL, STATE_LABEL};
    serde_json::from_value(serde_json::json!({"metadata": {
        "name": name, "namespace": "ns", "uid": format!("uid-{name}"), "resourceVersion": "7",
        "creationTimestamp": created.to_string(),
        "labels": {CLUSTER_LABEL: "c", SERVER_LABEL: name, STATE_LABEL: "idle",
                   SPEC_HASH_LABEL: "h", "app.kubernetes.io/component": "server"},
        "ownerReferences": [{"apiVersion": "sparkconnect.dev/v1alpha1", "kind": "SparkConnectCluster",
                             "name": "c", "uid": "cluster-uid", "controller": true}]
    }}))
    .expect("fixture pod parses")
}

/// An idle server `name` (uid `uid-<name>`) created at `created`, as the allocator sees it.
pub fn candidate(
    name: &str,
    created: jiff::Timestamp,
) -> crate::controller::pool::allocator::Candidate {
    crate::controller::pool::allocator::Candidate {
        name: name.into(),
        uid: format!("uid-{name}"),
        created,
    }
}

/// The JSON body of a request the mock apiserver received, as a `T`.
pub async fn request_json<T: serde::de::DeserializeOwned>(
    request: http::Request<kube::client::Body>,
) -> T {
    let body = http_body_util::BodyExt::collect(request.into_body())
        .await
        .expect("a request body")
        .to_bytes();
    serde_json::from_slice(&body).expect("the request's JSON")
}

/// Answers a request of the mock apiserver with `body` (200 OK).
pub fn respond_json(
    send: tower_test::mock::SendResponse<http::Response<kube::client::Body>>,
    body: &serde_json::Value,
) {
    respond_status(send, 200, body);
}

/// Answers a request of the mock apiserver with `status` and `body`.
pub fn respond_status(
    send: tower_test::mock::SendResponse<http::Response<kube::client::Body>>,
    status: u16,
    body: &serde_json::Value,
) {
    send.send_response(
        http::Response::builder()
            .status(status)
            .body(kube::client::Body::from(
                serde_json::to_vec(body).expect("JSON"),
            ))
            .expect("a response"),
    );
}

/// A pod with just a namespace, a name and a uid.
pub fn pod_of(namespace: &str, name: &str, uid: &str) -> k8s_openapi::api::core::v1::Pod {
    k8s_openapi::api::core::v1::Pod {
        metadata: k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta {
            name: Some(name.into()),
            namespace: Some(namespace.into()),
            uid: Some(uid.into()),
            ..Default::default()
        },
        ..Default::default()
    }
}

/// Claim `claim` (uid `uid`, created at `created`) arriving at its cluster's line at `now`.
pub fn arrival<'a>(
    claim: &'a str,
    uid: &'a str,
    created: jiff::Timestamp,
    now: jiff::Timestamp,
) -> crate::controller::pool::allocator::Arrival<'a> {
    crate::controller::pool::allocator::Arrival {
        claim,
        uid,
        created,
        now,
    }
}
