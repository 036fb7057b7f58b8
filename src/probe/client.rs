//! One Spark Connect health check: a `Config` call on a stable session.

use std::sync::Arc;
use std::time::{Duration, Instant};

use super::transport::{Connection, ConnectionBudget};
use tonic::metadata::MetadataValue;
use tonic::{Code, Request};

use crate::proto::config_request::{GetWithDefault, Operation, operation::OpType};
use crate::proto::spark_connect_service_client::SparkConnectServiceClient;
use crate::proto::{
    AnalyzePlanRequest, ConfigRequest, KeyValue, ReleaseSessionRequest, UserContext,
    analyze_plan_request, analyze_plan_response,
};

/// User id the operator's probes carry.
pub const PROBE_USER: &str = "spark-connect-operator";
/// A key no Spark sets: `get_with_default` on it answers the default and changes nothing.
const PROBE_KEY: &str = "spark.connect.operator.probe";
const UUID_NAMESPACE: uuid::Uuid = uuid::Uuid::from_u128(0x5c0e_55a4_2f1b_4d7e_9a3c_6b1d_8e2f_4a70);

/// The stable probe session of a server: a UUIDv5 of its pod UID, so repeated probes (and
/// operator restarts) reuse one server session instead of creating one per call.
pub fn session_id(pod_uid: &str) -> String {
    uuid::Uuid::new_v5(&UUID_NAMESPACE, pod_uid.as_bytes()).to_string()
}

/// A parsed `sc://host:port/;token=...` connection string.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConnectUrl {
    /// `host:port` (port 15002 when left out).
    pub address: String,
    /// The `token` parameter, if any.
    pub token: Option<String>,
}

impl std::str::FromStr for ConnectUrl {
    type Err = String;
    fn from_str(url: &str) -> Result<Self, Self::Err> {
        let rest = url
            .strip_prefix("sc://")
            .ok_or("a Spark Connect URL starts with sc://")?;
        let (authority, params) = rest.split_once('/').unwrap_or((rest, ""));
        if authority.is_empty() {
            return Err("the URL names no host".into());
        }
        let address = if authority.contains(':') {
            authority.to_string()
        } else {
            format!("{authority}:15002")
        };
        let token = params
            .split(';')
            .filter_map(|p| p.split_once('='))
            .find(|(k, _)| *k == "token")
            .map(|(_, v)| v.to_string());
        Ok(Self { address, token })
    }
}

/// How a probe failed.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum FailureKind {
    /// The server refused the token: a configuration problem, not a dead server.
    Unauthenticated,
    /// Nothing answers on the port (down, starting, or unreachable).
    Unavailable,
    /// The server accepted the connection but did not answer in time (hung).
    DeadlineExceeded,
    /// Spark answered with an error.
    Internal,
    /// Anything else.
    Other,
}

impl FailureKind {
    /// Metric label.
    pub fn as_str(self) -> &'static str {
        match self {
            Self::Unauthenticated => "unauthenticated",
            Self::Unavailable => "unavailable",
            Self::DeadlineExceeded => "deadline_exceeded",
            Self::Internal => "internal",
            Self::Other => "other",
        }
    }

    pub(super) fn of(code: Code) -> Self {
        match code {
            Code::Unauthenticated | Code::PermissionDenied => Self::Unauthenticated,
            Code::Unavailable => Self::Unavailable,
            Code::DeadlineExceeded | Code::Cancelled => Self::DeadlineExceeded,
            Code::Internal | Code::Unknown => Self::Internal,
            _ => Self::Other,
        }
    }
}

/// A failed probe.
#[derive(Clone, Debug, PartialEq)]
pub struct ProbeFailure {
    /// Classification.
    pub kind: FailureKind,
    /// The server's or transport's message.
    pub message: String,
}

/// A passed probe.
#[derive(Clone, Debug, PartialEq)]
pub struct ProbeSuccess {
    /// Round trip of the Config call.
    pub latency: Duration,
    /// The session id the server reports.
    pub server_side_session_id: String,
}

/// The probe's Config call: `get_with_default` of a key no Spark sets.
fn config_request(session_id: &str) -> ConfigRequest {
    ConfigRequest {
        session_id: session_id.into(),
        user_context: ConnectProbe::user_context(),
        operation: Some(Operation {
            op_type: Some(OpType::GetWithDefault(GetWithDefault {
                pairs: vec![KeyValue {
                    key: PROBE_KEY.into(),
                    value: Some("ok".into()),
                }],
            })),
        }),
        client_type: Some(PROBE_USER.into()),
        client_observed_server_side_session_id: None,
    }
}

/// A reusable client for one server; its request and metadata are built once.
#[derive(Clone)]
pub struct ConnectProbe {
    client: SparkConnectServiceClient<Connection>,
    authorization: Option<MetadataValue<tonic::metadata::Ascii>>,
    config: ConfigRequest,
    session_id: String,
    timeout: Duration,
}

impl ConnectProbe {
    /// A probe of `host:port` (connecting lazily, so creation never blocks).
    pub fn new(
        address: &str,
        token: Option<String>,
        session_id: String,
        timeout: Duration,
    ) -> Result<Self, ProbeFailure> {
        Self::within_budget(
            address,
            token,
            session_id,
            timeout,
            ConnectionBudget::unlimited(),
        )
    }

    /// Like [`ConnectProbe::new`], keeping its connection open between calls only while
    /// `budget` allows.
    pub fn within_budget(
        address: &str,
        token: Option<String>,
        session_id: String,
        timeout: Duration,
        budget: Arc<ConnectionBudget>,
    ) -> Result<Self, ProbeFailure> {
        let origin: http::Uri = format!("http://{address}")
            .parse()
            .map_err(|e| ProbeFailure {
                kind: FailureKind::Other,
                message: format!("bad address {address}: {e}"),
            })?;
        let authorization = token
            .map(|token| {
                MetadataValue::try_from(format!("Bearer {token}")).map_err(|e| ProbeFailure {
                    kind: FailureKind::Other,
                    message: format!("token is not valid metadata: {e}"),
                })
            })
            .transpose()?;
        Ok(Self {
            client: SparkConnectServiceClient::with_origin(
                Connection::lazy(address, timeout, budget),
                origin,
            ),
            authorization,
            config: config_request(&session_id),
            session_id,
            timeout,
        })
    }

    /// A request carrying the token, with the probe's deadline.
    pub(super) fn request<T>(&self, message: T) -> Result<Request<T>, ProbeFailure> {
        self.request_within(message, self.timeout)
    }

    /// A request carrying the token, with a deadline of its own.
    pub(super) fn request_within<T>(
        &self,
        message: T,
        timeout: Duration,
    ) -> Result<Request<T>, ProbeFailure> {
        let mut request = Request::new(message);
        request.set_timeout(timeout);
        if let Some(value) = &self.authorization {
            request
                .metadata_mut()
                .insert("authorization", value.clone());
        }
        Ok(request)
    }

    /// Awaits a call within the probe's deadline (which also covers connecting and a server
    /// that never answers) and classifies its failure.
    async fn within<T>(
        &self,
        call: impl Future<Output = Result<tonic::Response<T>, tonic::Status>>,
    ) -> Result<T, ProbeFailure> {
        match tokio::time::timeout(self.timeout, call).await {
            Ok(Ok(response)) => Ok(response.into_inner()),
            Ok(Err(status)) => Err(ProbeFailure {
                kind: FailureKind::of(status.code()),
                message: status.message().to_string(),
            }),
            Err(_) => Err(ProbeFailure {
                kind: FailureKind::DeadlineExceeded,
                message: format!("no answer within {:?}", self.timeout),
            }),
        }
    }

    /// The gRPC client (cheap to clone; shares the connection).
    pub(super) fn client(&self) -> SparkConnectServiceClient<Connection> {
        self.client.clone()
    }

    /// The probe's session on the server.
    pub(super) fn session(&self) -> &str {
        &self.session_id
    }

    /// The user the operator's calls carry.
    pub(super) fn user_context() -> Option<UserContext> {
        Some(UserContext {
            user_id: PROBE_USER.into(),
            user_name: PROBE_USER.into(),
        })
    }

    /// One health check.
    pub async fn check(&self) -> Result<ProbeSuccess, ProbeFailure> {
        let request = self.request(self.config.clone())?;
        let started = Instant::now();
        let mut client = self.client.clone();
        let response = self.within(client.config(request)).await?;
        Ok(ProbeSuccess {
            latency: started.elapsed(),
            server_side_session_id: response.server_side_session_id,
        })
    }

    /// The server's Spark version.
    pub async fn spark_version(&self) -> Result<String, ProbeFailure> {
        let message = AnalyzePlanRequest {
            session_id: self.session_id.clone(),
            user_context: Self::user_context(),
            client_type: Some(PROBE_USER.into()),
            analyze: Some(analyze_plan_request::Analyze::SparkVersion(
                analyze_plan_request::SparkVersion {},
            )),
        };
        let request = self.request(message)?;
        let mut client = self.client.clone();
        let response = self.within(client.analyze_plan(request)).await?;
        match response.result {
            Some(analyze_plan_response::Result::SparkVersion(v)) => Ok(v.version),
            None => Err(ProbeFailure {
                kind: FailureKind::Other,
                message: "no version in the answer".into(),
            }),
        }
    }

    /// Releases the probe session (when the server retires).
    pub async fn release(&self) -> Result<(), ProbeFailure> {
        self.release_session(&self.session_id).await
    }

    /// Releases one of the operator's sessions on the server.
    pub(super) async fn release_session(&self, session_id: &str) -> Result<(), ProbeFailure> {
        let message = ReleaseSessionRequest {
            session_id: session_id.to_string(),
            user_context: Self::user_context(),
            client_type: Some(PROBE_USER.into()),
            allow_reconnect: false,
        };
        let request = self.request(message)?;
        let mut client = self.client.clone();
        self.within(client.release_session(request)).await?;
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn session_ids_are_stable_uuids_per_pod() {
        let a = session_id("pod-uid-1");
        assert_eq!(a, session_id("pod-uid-1"));
        assert_ne!(a, session_id("pod-uid-2"));
        assert_eq!(uuid::Uuid::parse_str(&a).unwrap().get_version_num(), 5);
    }

    #[test]
    fn connect_urls_parse() {
        let url: ConnectUrl = "sc://spark.data.svc:15003/;token=abc;user_id=x"
            .parse()
            .unwrap();
        assert_eq!(
            url,
            ConnectUrl {
                address: "spark.data.svc:15003".into(),
                token: Some("abc".into())
            }
        );
        let plain: ConnectUrl = "sc://localhost".parse().unwrap();
        assert_eq!(plain.address, "localhost:15002");
        assert!("http://x".parse::<ConnectUrl>().is_err());
    }

    #[test]
    fn status_codes_are_classified() {
        assert_eq!(
            FailureKind::of(Code::Unauthenticated),
            FailureKind::Unauthenticated
        );
        assert_eq!(FailureKind::of(Code::Unavailable), FailureKind::Unavailable);
        assert_eq!(
            FailureKind::of(Code::DeadlineExceeded),
            FailureKind::DeadlineExceeded
        );
        assert_eq!(FailureKind::of(Code::Internal), FailureKind::Internal);
    }
}
