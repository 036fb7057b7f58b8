//! Building the Kubernetes clients: one for watches (long-lived streams, no timeout) and one for
//! requests (timeouts; write requests counted and refused while the leader fence is closed, so
//! a paused or partitioned ex-leader cannot act after its Lease could be taken).
//!
//! Each client speaks HTTP/2 to the apiserver (as client-go does) over one TLS connection that
//! carries all its requests at once: a burst of reconciles or binds opens no new connections
//! (with HTTP/1.1 every request in flight needed its own, hundreds of idle TLS connections
//! then held tens of megabytes), and dead connections are found by HTTP/2 pings.

use std::path::Path;
use std::sync::Arc;
use std::sync::atomic::{AtomicI64, Ordering};
use std::time::Duration;

use http::Method;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::rt::{TokioExecutor, TokioTimer};
use jiff::Timestamp;
use kube::client::ConfigExt;
use kube::config::{KubeConfigOptions, Kubeconfig};
use kube::{Client, Config, client::ClientBuilder};
use prometheus::IntCounterVec;
use tower::ServiceBuilder;
use tower::filter::FilterLayer;
use tower::timeout::TimeoutLayer;
use tower::util::{BoxService, MapRequestLayer};

/// Longest wait for one API response.
const REQUEST_TIMEOUT: Duration = Duration::from_secs(15);
/// Longest wait for a connection.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);
/// How often an HTTP/2 connection is pinged, and how long an answer may take before the
/// connection counts as dead (its requests fail and the next ones open a new connection).
const PING_EVERY: Duration = Duration::from_secs(20);
const PING_TIMEOUT: Duration = Duration::from_secs(10);

/// The service every client is built on: requests in, responses out.
type Transport = BoxService<
    http::Request<kube::client::Body>,
    http::Response<hyper::body::Incoming>,
    tower::BoxError,
>;

/// The apiserver transport for `config`: HTTP/2 when the server offers it (ALPN), HTTP/1.1
/// otherwise; the cluster's TLS settings and credentials (token files are re-read as they
/// rotate); `timeout` bounds the wait for each response's head.
fn transport(config: &Config, timeout: Option<Duration>) -> Result<Transport, ClientError> {
    let mut http = HttpConnector::new();
    http.enforce_http(false);
    http.set_connect_timeout(Some(CONNECT_TIMEOUT));
    // HTTP/2 writes a request as several small frames: without this, Nagle's algorithm can hold
    // one back until the peer's delayed ACK.
    http.set_nodelay(true);
    let https = hyper_rustls::HttpsConnectorBuilder::new()
        .with_tls_config(config.rustls_client_config()?)
        .https_or_http()
        .enable_http1()
        .enable_http2()
        .wrap_connector(http);
    let client = hyper_util::client::legacy::Client::builder(TokioExecutor::new())
        .timer(TokioTimer::new())
        .http2_keep_alive_interval(PING_EVERY)
        .http2_keep_alive_timeout(PING_TIMEOUT)
        .http2_keep_alive_while_idle(true)
        .build(https);
    let service = ServiceBuilder::new()
        .option_layer(timeout.map(TimeoutLayer::new))
        .layer(config.base_uri_layer())
        .option_layer(config.auth_layer()?)
        .layer(config.extra_headers_layer()?)
        .map_err(tower::BoxError::from)
        .service(client);
    Ok(BoxService::new(service))
}

/// Why no client could be built.
#[derive(Debug, thiserror::Error)]
pub enum ClientError {
    /// The kubeconfig file could not be read.
    #[error("reading kubeconfig: {0}")]
    Kubeconfig(#[from] kube::config::KubeconfigError),
    /// Neither a kubeconfig nor in-cluster configuration was found.
    #[error("finding Kubernetes configuration: {0}")]
    Infer(#[from] kube::config::InferConfigError),
    /// The client could not be built from the configuration.
    #[error("building client: {0}")]
    Build(#[from] kube::Error),
}

/// Until when this process may write: always (no leader election), or until its Lease could
/// be taken over by another replica.
#[derive(Clone, Debug)]
pub struct Fence {
    /// Milliseconds since the Unix epoch; `i64::MAX` when unfenced.
    until_millis: Arc<AtomicI64>,
}

impl Fence {
    /// A fence that never closes (a single replica without leader election).
    pub fn open() -> Self {
        Self {
            until_millis: Arc::new(AtomicI64::new(i64::MAX)),
        }
    }

    /// A closed fence, opened by [`Fence::hold_until`] while the Lease is held.
    pub fn closed() -> Self {
        Self {
            until_millis: Arc::new(AtomicI64::new(0)),
        }
    }

    /// Writes are allowed until `until`.
    pub fn hold_until(&self, until: Timestamp) {
        self.until_millis
            .store(until.as_millisecond(), Ordering::Release);
    }

    /// No more writes.
    pub fn close(&self) {
        self.until_millis.store(0, Ordering::Release);
    }

    /// Whether a write may be sent now.
    pub fn allows_writes(&self) -> bool {
        Timestamp::now().as_millisecond() < self.until_millis.load(Ordering::Acquire)
    }
}

async fn config(kubeconfig: Option<&Path>) -> Result<Config, ClientError> {
    Ok(match kubeconfig {
        Some(path) => {
            Config::from_custom_kubeconfig(
                Kubeconfig::read_from(path)?,
                &KubeConfigOptions::default(),
            )
            .await?
        }
        None => Config::infer().await?,
    })
}

fn is_write(method: &Method) -> bool {
    !matches!(*method, Method::GET | Method::HEAD | Method::OPTIONS)
}

/// The verb a request is counted under: its method, with watches apart from other GETs.
fn verb(request: &http::Request<kube::client::Body>) -> &'static str {
    match *request.method() {
        Method::GET
            if request
                .uri()
                .query()
                .is_some_and(|q| q.split('&').any(|p| p == "watch=true" || p == "watch=1")) =>
        {
            "WATCH"
        }
        Method::GET => "GET",
        Method::POST => "POST",
        Method::PUT => "PUT",
        Method::PATCH => "PATCH",
        Method::DELETE => "DELETE",
        _ => "OTHER",
    }
}

/// A layer counting every request in `requests`, by verb.
fn counting(
    requests: IntCounterVec,
) -> MapRequestLayer<
    impl Fn(http::Request<kube::client::Body>) -> http::Request<kube::client::Body> + Clone,
> {
    MapRequestLayer::new(move |request: http::Request<kube::client::Body>| {
        requests.with_label_values(&[verb(&request)]).inc();
        request
    })
}

/// A client for watches (and the initial lists), from `kubeconfig` (or the environment:
/// `KUBECONFIG`, in-cluster), counting each request in `requests` by verb.
pub async fn watch_client(
    kubeconfig: Option<&Path>,
    requests: IntCounterVec,
) -> Result<Client, ClientError> {
    let config = config(kubeconfig).await?;
    Ok(
        ClientBuilder::new(transport(&config, None)?, config.default_namespace)
            .with_layer(&counting(requests))
            .build(),
    )
}

/// A client for requests with timeouts, counting each request it sends in `requests` and each
/// write in `writes`, by verb, and refusing writes while `fence` is closed.
pub async fn request_client(
    kubeconfig: Option<&Path>,
    requests: IntCounterVec,
    writes: IntCounterVec,
    fence: Fence,
) -> Result<Client, ClientError> {
    let config = config(kubeconfig).await?;
    let fenced = FilterLayer::new(move |request: http::Request<kube::client::Body>| {
        if is_write(request.method()) && !fence.allows_writes() {
            return Err(tower::BoxError::from(
                "not the leader (or the leader Lease could not be renewed in time): write refused",
            ));
        }
        Ok(request)
    });
    let count_writes = MapRequestLayer::new(move |request: http::Request<kube::client::Body>| {
        if is_write(request.method()) {
            writes.with_label_values(&[request.method().as_str()]).inc();
        }
        request
    });
    // The last layer is the outermost: the fence decides before a write is counted or sent.
    Ok(ClientBuilder::new(
        transport(&config, Some(REQUEST_TIMEOUT))?,
        config.default_namespace,
    )
    .with_layer(&counting(requests))
    .with_layer(&count_writes)
    .with_layer(&fenced)
    .build())
}

/// A client for the leader Lease alone: timeouts, never fenced, not counted.
pub async fn lease_client(kubeconfig: Option<&Path>) -> Result<Client, ClientError> {
    let config = config(kubeconfig).await?;
    Ok(ClientBuilder::new(
        transport(&config, Some(REQUEST_TIMEOUT))?,
        config.default_namespace,
    )
    .build())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn requests_are_counted_by_verb_with_watches_apart() {
        let request = |method: Method, uri: &str| {
            http::Request::builder()
                .method(method)
                .uri(uri)
                .body(kube::client::Body::empty())
                .unwrap()
        };
        assert_eq!(
            verb(&request(
                Method::GET,
                "/api/v1/pods?watch=true&resourceVersion=1"
            )),
            "WATCH"
        );
        assert_eq!(verb(&request(Method::GET, "/api/v1/pods?limit=500")), "GET");
        assert_eq!(
            verb(&request(Method::PATCH, "/api/v1/namespaces/a/pods/b")),
            "PATCH"
        );
    }

    #[test]
    fn a_fence_allows_writes_only_until_its_deadline() {
        let fence = Fence::closed();
        assert!(!fence.allows_writes());
        fence.hold_until(Timestamp::now() + Duration::from_secs(10));
        assert!(fence.allows_writes());
        fence.hold_until(Timestamp::now() - Duration::from_millis(1));
        assert!(!fence.allows_writes());
        assert!(Fence::open().allows_writes());
        let open = Fence::open();
        open.close();
        assert!(!open.allows_writes());
    }
}
