//! A small Spark Connect server that speaks the same protos: for tests and benchmarks. It can
//! answer, hang, or fail on demand, checks the bearer token like Spark does, and counts sessions.

use std::collections::{HashMap, HashSet};
use std::pin::Pin;
use std::sync::atomic::{AtomicU8, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use futures::Stream;
use tonic::{Request, Response, Status};

use crate::proto::spark_connect_service_server::{SparkConnectService, SparkConnectServiceServer};
use crate::proto::{
    AnalyzePlanRequest, AnalyzePlanResponse, ConfigRequest, ConfigResponse, ExecutePlanRequest,
    ExecutePlanResponse, KeyValue, ReleaseExecuteRequest, ReleaseExecuteResponse,
    ReleaseSessionRequest, ReleaseSessionResponse, analyze_plan_response,
    config_request::operation::OpType, execute_plan_request, execute_plan_response, plan, relation,
};

/// A query text the fake server refuses as Spark refuses an unknown table.
pub const FAILING_QUERY_MARK: &str = "sco_fake_missing_table";
/// A query `sco_fake_stream_bytes=<n>` is answered with Arrow batches of 1 MiB each (their
/// bodies zeros) until `n` bytes (at most 64 GiB) have been sent: a large result for
/// throughput benchmarks.
pub const STREAM_QUERY_MARK: &str = "sco_fake_stream_bytes=";
/// Size of each streamed batch.
const STREAM_BATCH: usize = 1 << 20;
/// Unreleased reattachable executions remembered at most (a client that never releases cannot
/// grow a long-running fake without bound).
const UNRELEASED_KEPT: usize = 10_000;

/// How the fake server behaves.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(u8)]
pub enum Mode {
    /// Answers every call.
    Answer = 0,
    /// Accepts calls and never answers (a hung JVM).
    Hang = 1,
    /// Fails every call with INTERNAL.
    Fail = 2,
}

/// How a fake server is set up.
#[derive(Clone, Debug, Default)]
pub struct FakeOptions {
    /// Bearer token it requires, if any.
    pub token: Option<String>,
    /// Write every call to stderr with whether it carried a bearer token (never the token).
    pub log_calls: bool,
    /// Time every `ExecutePlan` takes before it answers.
    pub query_delay: Duration,
}

/// The fake server's state, shared with whoever controls it.
#[derive(Default)]
pub struct FakeState {
    mode: AtomicU8,
    token: Option<String>,
    log_calls: bool,
    query_delay: Duration,
    sessions: Mutex<HashMap<String, String>>,
    sessions_opened: AtomicUsize,
    queries: AtomicUsize,
    /// Operation ids of reattachable executions not released yet.
    unreleased: Mutex<HashSet<String>>,
    released: AtomicUsize,
}

impl FakeState {
    /// A server that requires `token` when given.
    pub fn new(token: Option<String>) -> Arc<Self> {
        Self::with_options(FakeOptions {
            token,
            ..FakeOptions::default()
        })
    }

    /// A server behaving as `options` say.
    pub fn with_options(options: FakeOptions) -> Arc<Self> {
        Arc::new(Self {
            token: options.token,
            log_calls: options.log_calls,
            query_delay: options.query_delay,
            ..Self::default()
        })
    }

    /// Queries run so far (`ExecutePlan` calls answered).
    pub fn queries_run(&self) -> usize {
        self.queries.load(Ordering::SeqCst)
    }

    /// Reattachable executions whose results were never released (`ReleaseExecute`).
    pub fn unreleased_executions(&self) -> usize {
        self.unreleased.lock().map_or(0, |u| u.len())
    }

    /// Reattachable executions released so far.
    pub fn released_executions(&self) -> usize {
        self.released.load(Ordering::SeqCst)
    }

    /// Switches behaviour.
    pub fn set_mode(&self, mode: Mode) {
        self.mode.store(mode as u8, Ordering::SeqCst);
    }

    fn mode(&self) -> Mode {
        match self.mode.load(Ordering::SeqCst) {
            1 => Mode::Hang,
            2 => Mode::Fail,
            _ => Mode::Answer,
        }
    }

    /// Sessions opened so far, released ones included.
    pub fn sessions_opened(&self) -> usize {
        self.sessions_opened.load(Ordering::SeqCst)
    }

    /// Live sessions.
    pub fn session_count(&self) -> usize {
        self.sessions.lock().map(|s| s.len()).unwrap_or_default()
    }

    /// Admits a call: token, mode, session id format; returns the server-side session id.
    async fn admit<T>(&self, request: &Request<T>, session_id: &str) -> Result<String, Status> {
        if self.log_calls {
            let bearer = request.metadata().contains_key("authorization");
            eprintln!("call: session {session_id} bearer token: {bearer}");
        }
        if let Some(token) = &self.token {
            let given = request
                .metadata()
                .get("authorization")
                .and_then(|v| v.to_str().ok());
            if given != Some(format!("Bearer {token}").as_str()) {
                return Err(Status::unauthenticated("Invalid authentication token"));
            }
        }
        match self.mode() {
            Mode::Hang => std::future::pending::<()>().await,
            Mode::Fail => return Err(Status::internal("[FAKE_FAILURE] failing on demand")),
            Mode::Answer => {}
        }
        if uuid::Uuid::parse_str(session_id).is_err() {
            return Err(Status::internal(format!(
                "[INVALID_HANDLE.FORMAT] The handle {session_id} is invalid."
            )));
        }
        let mut sessions = self
            .sessions
            .lock()
            .map_err(|_| Status::internal("poisoned"))?;
        Ok(sessions
            .entry(session_id.to_string())
            .or_insert_with(|| {
                self.sessions_opened.fetch_add(1, Ordering::SeqCst);
                uuid::Uuid::new_v4().to_string()
            })
            .clone())
    }

    /// Keeps the operation of a reattachable execution until the client releases it.
    fn remember_if_reattachable(&self, request: &ExecutePlanRequest) {
        let reattachable = request.request_options.iter().any(|o| {
            matches!(
                &o.request_option,
                Some(execute_plan_request::request_option::RequestOption::ReattachOptions(r)) if r.reattachable
            )
        });
        if let (true, Some(id), Ok(mut unreleased)) =
            (reattachable, &request.operation_id, self.unreleased.lock())
            && unreleased.len() < UNRELEASED_KEPT
        {
            unreleased.insert(id.clone());
        }
    }
}

/// The gRPC service over a [`FakeState`].
pub struct FakeConnect(pub Arc<FakeState>);

/// The stream of an `ExecutePlan` answer.
type ResponseStream = Pin<Box<dyn Stream<Item = Result<ExecutePlanResponse, Status>> + Send>>;

/// The SQL text of a plan; other relations read as empty text, a missing plan is refused.
fn sql_of(plan: Option<crate::proto::Plan>) -> Result<String, Status> {
    match plan.and_then(|p| p.op_type) {
        Some(plan::OpType::Root(root)) => match root.rel_type {
            Some(relation::RelType::Sql(sql)) => Ok(sql.query),
            Some(_) => Ok(String::new()),
            None => Err(Status::invalid_argument("an empty relation")),
        },
        None => Err(Status::invalid_argument("no plan")),
    }
}

/// What every message of one execution's answer carries.
#[derive(Clone)]
struct Reply {
    session_id: String,
    server_side_session_id: String,
    operation_id: String,
}

impl Reply {
    fn message(&self, response_type: execute_plan_response::ResponseType) -> ExecutePlanResponse {
        ExecutePlanResponse {
            session_id: self.session_id.clone(),
            response_type: Some(response_type),
            operation_id: self.operation_id.clone(),
            response_id: uuid::Uuid::new_v4().to_string(),
            server_side_session_id: self.server_side_session_id.clone(),
        }
    }

    fn complete(&self) -> ExecutePlanResponse {
        self.message(execute_plan_response::ResponseType::ResultComplete(
            execute_plan_response::ResultComplete {},
        ))
    }

    fn batch(&self, data: Vec<u8>) -> ExecutePlanResponse {
        self.message(execute_plan_response::ResponseType::ArrowBatch(
            execute_plan_response::ArrowBatch {
                row_count: 1,
                data,
                start_offset: Some(0),
            },
        ))
    }

    /// One row and the completion.
    fn one_row(self) -> ResponseStream {
        let answers = vec![Ok(self.batch(Vec::new())), Ok(self.complete())];
        Box::pin(futures::stream::iter(answers))
    }

    /// `total` bytes in batches of [`STREAM_BATCH`], then the completion.
    fn streamed(self, total: u64) -> ResponseStream {
        let batches = futures::stream::unfold(0u64, move |sent| {
            let reply = self.clone();
            async move {
                if sent > total {
                    return None;
                }
                if sent == total {
                    return Some((Ok(reply.complete()), total + 1));
                }
                let n = (total - sent).min(STREAM_BATCH as u64) as usize;
                Some((Ok(reply.batch(vec![0u8; n])), sent + n as u64))
            }
        });
        Box::pin(batches)
    }
}

#[tonic::async_trait]
impl SparkConnectService for FakeConnect {
    type ExecutePlanStream = ResponseStream;

    /// Answers any plan with one row (as an Arrow batch) and a completion message, after the
    /// configured delay; SQL naming [`FAILING_QUERY_MARK`] fails as Spark would.
    async fn execute_plan(
        &self,
        request: Request<ExecutePlanRequest>,
    ) -> Result<Response<Self::ExecutePlanStream>, Status> {
        let session_id = request.get_ref().session_id.clone();
        let server_side = self.0.admit(&request, &session_id).await?;
        let request = request.into_inner();
        self.0.remember_if_reattachable(&request);
        let query = sql_of(request.plan)?;
        tokio::time::sleep(self.0.query_delay).await;
        if query.contains(FAILING_QUERY_MARK) {
            return Err(Status::internal(format!(
                "[TABLE_OR_VIEW_NOT_FOUND] The table or view `{FAILING_QUERY_MARK}` cannot be found."
            )));
        }
        self.0.queries.fetch_add(1, Ordering::SeqCst);
        let reply = Reply {
            session_id,
            server_side_session_id: server_side,
            operation_id: uuid::Uuid::new_v4().to_string(),
        };
        let stream = match query
            .strip_prefix(STREAM_QUERY_MARK)
            .and_then(|n| n.trim().parse::<u64>().ok())
        {
            Some(total) => reply.streamed(total.min(64 << 30)),
            None => reply.one_row(),
        };
        Ok(Response::new(stream))
    }

    async fn config(
        &self,
        request: Request<ConfigRequest>,
    ) -> Result<Response<ConfigResponse>, Status> {
        let session_id = request.get_ref().session_id.clone();
        let server_side = self.0.admit(&request, &session_id).await?;
        let request = request.into_inner();
        let user = request.user_context.map(|u| u.user_id).unwrap_or_default();
        let answer = |key: String| {
            let value = (key == USER_KEY).then(|| user.clone());
            KeyValue { key, value }
        };
        let pairs = match request.operation.and_then(|o| o.op_type) {
            Some(OpType::GetWithDefault(g)) => g.pairs,
            Some(OpType::Get(g)) => g.keys.into_iter().map(answer).collect(),
            Some(OpType::GetOption(g)) => g.keys.into_iter().map(answer).collect(),
            _ => Vec::new(),
        };
        Ok(Response::new(ConfigResponse {
            session_id,
            pairs,
            warnings: Vec::new(),
            server_side_session_id: server_side,
        }))
    }

    async fn analyze_plan(
        &self,
        request: Request<AnalyzePlanRequest>,
    ) -> Result<Response<AnalyzePlanResponse>, Status> {
        let session_id = request.get_ref().session_id.clone();
        self.0.admit(&request, &session_id).await?;
        Ok(Response::new(AnalyzePlanResponse {
            session_id,
            result: Some(analyze_plan_response::Result::SparkVersion(
                analyze_plan_response::SparkVersion {
                    version: "4.3.0-fake".into(),
                },
            )),
        }))
    }

    async fn release_execute(
        &self,
        request: Request<ReleaseExecuteRequest>,
    ) -> Result<Response<ReleaseExecuteResponse>, Status> {
        let session_id = request.get_ref().session_id.clone();
        let server_side = self.0.admit(&request, &session_id).await?;
        let operation_id = request.into_inner().operation_id;
        if self
            .0
            .unreleased
            .lock()
            .is_ok_and(|mut u| u.remove(&operation_id))
        {
            self.0.released.fetch_add(1, Ordering::SeqCst);
        }
        Ok(Response::new(ReleaseExecuteResponse {
            session_id,
            operation_id: Some(operation_id),
            server_side_session_id: server_side,
        }))
    }

    async fn release_session(
        &self,
        request: Request<ReleaseSessionRequest>,
    ) -> Result<Response<ReleaseSessionResponse>, Status> {
        let session_id = request.get_ref().session_id.clone();
        let server_side = self.0.admit(&request, &session_id).await?;
        if let Ok(mut sessions) = self.0.sessions.lock() {
            sessions.remove(&session_id);
        }
        Ok(Response::new(ReleaseSessionResponse {
            session_id,
            server_side_session_id: server_side,
        }))
    }
}

/// A Config key the fake answers with the `user_context.user_id` of the request: what a
/// server sees as the caller (the gateway's tests read it back through pyspark).
pub const USER_KEY: &str = "sco.fake.userId";

/// Serves `state` on `listener` until `shutdown` resolves.
pub async fn serve(
    listener: tokio::net::TcpListener,
    state: Arc<FakeState>,
    shutdown: impl Future<Output = ()>,
) -> Result<(), tonic::transport::Error> {
    let incoming = tonic::transport::server::TcpIncoming::from(listener);
    tonic::transport::Server::builder()
        .add_service(SparkConnectServiceServer::new(FakeConnect(state)))
        .serve_with_incoming_shutdown(incoming, shutdown)
        .await
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::probe::client::{ConnectProbe, FailureKind, session_id};
    use std::time::Duration;

    async fn start(token: Option<&str>) -> (Arc<FakeState>, String) {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let address = listener.local_addr().unwrap().to_string();
        let state = FakeState::new(token.map(String::from));
        tokio::spawn(serve(listener, state.clone(), std::future::pending()));
        (state, address)
    }

    fn probe(address: &str, token: Option<&str>) -> ConnectProbe {
        ConnectProbe::new(
            address,
            token.map(String::from),
            session_id("uid-1"),
            Duration::from_millis(500),
        )
        .unwrap()
    }

    #[tokio::test]
    async fn probe_passes_and_reuses_one_session() {
        let (state, address) = start(Some("secret")).await;
        let p = probe(&address, Some("secret"));
        let first = p.check().await.unwrap();
        let second = p.check().await.unwrap();
        assert_eq!(first.server_side_session_id, second.server_side_session_id);
        assert_eq!(state.session_count(), 1);
        assert_eq!(p.spark_version().await.unwrap(), "4.3.0-fake");
        p.release().await.unwrap();
        assert_eq!(state.session_count(), 0);
    }

    #[tokio::test]
    async fn wrong_token_hang_failure_and_absence_are_told_apart() {
        let (state, address) = start(Some("secret")).await;
        assert_eq!(
            probe(&address, Some("wrong"))
                .check()
                .await
                .unwrap_err()
                .kind,
            FailureKind::Unauthenticated
        );
        state.set_mode(Mode::Hang);
        assert_eq!(
            probe(&address, Some("secret"))
                .check()
                .await
                .unwrap_err()
                .kind,
            FailureKind::DeadlineExceeded
        );
        state.set_mode(Mode::Fail);
        assert_eq!(
            probe(&address, Some("secret"))
                .check()
                .await
                .unwrap_err()
                .kind,
            FailureKind::Internal
        );
        let closed = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let gone = closed.local_addr().unwrap().to_string();
        drop(closed);
        assert_eq!(
            probe(&gone, None).check().await.unwrap_err().kind,
            FailureKind::Unavailable
        );
    }
}
