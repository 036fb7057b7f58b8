//! One call through the gateway: authenticate → choose the cluster → authorize → read the
//! first request message → choose the server → forward both directions as bytes (each request
//! message with its user replaced, responses untouched, flow control end to end) → audit.

use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::client::ResponseFuture;
use h2::server::SendResponse;
use h2::{RecvStream, SendStream};
use http::{HeaderMap, HeaderValue, Request, Response};

use super::audit::{AuditLog, AuditRecord, SqlPolicy, describe};
use super::authn::{Authenticator, AuthnError, Identity};
use super::authz::{Authorizer, AuthzError};
use super::dedicated::{Assignment, Dedicated, DedicatedError};
use super::directory::{Directory, Server};
use super::metrics::GatewayMetrics;
use super::route::{ClusterRef, RouteTable, pick_shared};
use super::wire::{self, Deframer};
use crate::builders::labels::token_secret_name;
use crate::crd::{AuthMode, GatewayMode, SparkConnectCluster};
use crate::probe::transport::{Connection, ConnectionBudget};

/// Path prefix of every Spark Connect RPC.
const SERVICE: &str = "/spark.connect.SparkConnectService/";
/// RPCs named in metrics; others count as `other` (keeps label values bounded).
const KNOWN_RPCS: &[&str] = &[
    "ExecutePlan",
    "AnalyzePlan",
    "Config",
    "AddArtifacts",
    "ArtifactStatus",
    "Interrupt",
    "ReattachExecute",
    "ReleaseExecute",
    "ReleaseSession",
    "FetchErrorDetails",
    "CloneSession",
    "GetStatus",
];
/// The connection parameter that names the cluster (pyspark sends it as metadata).
pub const CLUSTER_HEADER: &str = "cluster";

/// gRPC status codes the gateway answers with.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
#[repr(i32)]
pub enum Code {
    /// Fine.
    Ok = 0,
    /// The client went away.
    Cancelled = 1,
    /// Bad request.
    InvalidArgument = 3,
    /// No such cluster.
    NotFound = 5,
    /// Not allowed.
    PermissionDenied = 7,
    /// A quota.
    ResourceExhausted = 8,
    /// Not a Spark Connect RPC.
    Unimplemented = 12,
    /// Try again later.
    Unavailable = 14,
    /// Who are you.
    Unauthenticated = 16,
}

/// How a call ended, as its connection counts it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum CallEnd {
    /// The caller could not be authenticated, or may not make the call.
    NotAllowed,
    /// The caller was authenticated (whatever became of the call then).
    Authenticated,
    /// Refused before the caller was known (not a Spark Connect call, or no answer on who).
    Other,
}

/// A call the gateway answers itself.
#[derive(Debug)]
struct Refusal {
    code: Code,
    message: String,
    outcome: &'static str,
}

impl Refusal {
    fn new(code: Code, outcome: &'static str, message: impl Into<String>) -> Self {
        Self {
            code,
            message: message.into(),
            outcome,
        }
    }
}

impl From<AuthnError> for Refusal {
    fn from(e: AuthnError) -> Self {
        match e {
            AuthnError::Unavailable(_) => {
                Self::new(Code::Unavailable, "unavailable", e.to_string())
            }
            _ => Self::new(Code::Unauthenticated, "unauthenticated", e.to_string()),
        }
    }
}

impl From<AuthzError> for Refusal {
    fn from(e: AuthzError) -> Self {
        match e {
            AuthzError::Denied { .. } => Self::new(Code::PermissionDenied, "denied", e.to_string()),
            AuthzError::Unavailable(_) => {
                Self::new(Code::Unavailable, "unavailable", e.to_string())
            }
        }
    }
}

impl From<DedicatedError> for Refusal {
    fn from(e: DedicatedError) -> Self {
        match e {
            DedicatedError::Quota { .. } => {
                Self::new(Code::ResourceExhausted, "refused", e.to_string())
            }
            DedicatedError::Unavailable(_) => {
                Self::new(Code::Unavailable, "unavailable", e.to_string())
            }
        }
    }
}

/// Everything a call needs, shared by all calls.
pub struct Gateway {
    /// Checks tokens.
    pub authn: Authenticator,
    /// Checks access.
    pub authz: Authorizer,
    /// Chooses clusters.
    pub routes: RouteTable,
    /// The watched world.
    pub directory: Directory,
    /// Dedicated servers.
    pub dedicated: Arc<Dedicated>,
    /// The audit trail.
    pub audit: AuditLog,
    /// Metrics.
    pub metrics: GatewayMetrics,
    /// How SQL appears in audit lines.
    pub sql_policy: SqlPolicy,
    /// This replica's name, in audit lines.
    pub replica: String,
    /// Largest request message accepted.
    pub max_message: usize,
    /// Open connections to servers, by address.
    upstreams: Mutex<HashMap<String, Connection>>,
}

/// Request headers not passed to servers: the caller's credential, the routing parameter and
/// what HTTP/2 or the upstream connection sets itself.
const DROPPED_HEADERS: &[&str] = &["authorization", CLUSTER_HEADER, "host", "connection", "te"];

impl Gateway {
    /// Assembles the gateway.
    #[allow(clippy::too_many_arguments)]
    pub fn new(
        authn: Authenticator,
        authz: Authorizer,
        routes: RouteTable,
        directory: Directory,
        dedicated: Arc<Dedicated>,
        audit: AuditLog,
        metrics: GatewayMetrics,
        sql_policy: SqlPolicy,
        replica: String,
        max_message: usize,
    ) -> Self {
        Self {
            authn,
            authz,
            routes,
            directory,
            dedicated,
            audit,
            metrics,
            sql_policy,
            replica,
            max_message,
            upstreams: Mutex::default(),
        }
    }

    fn upstream(&self, address: &str) -> Connection {
        let Ok(mut upstreams) = self.upstreams.lock() else {
            return Connection::lazy(
                address,
                Duration::from_secs(5),
                ConnectionBudget::unlimited(),
            );
        };
        if upstreams.len() > 10_000 {
            upstreams.clear();
        }
        upstreams
            .entry(address.to_string())
            .or_insert_with(|| {
                Connection::lazy(
                    address,
                    Duration::from_secs(5),
                    ConnectionBudget::unlimited(),
                )
            })
            .clone()
    }

    /// Serves one call to its end, then audits it.
    pub async fn handle(
        self: Arc<Self>,
        request: Request<RecvStream>,
        mut respond: SendResponse<Bytes>,
    ) -> CallEnd {
        let started = Instant::now();
        let rpc = request
            .uri()
            .path()
            .strip_prefix(SERVICE)
            .unwrap_or("")
            .to_string();
        let mut record = AuditRecord {
            time: jiff::Timestamp::now().to_string(),
            rpc: rpc.clone(),
            gateway: self.replica.clone(),
            ..AuditRecord::default()
        };
        self.metrics.active_streams.inc();
        let result = self.call(&rpc, request, &mut respond, &mut record).await;
        self.metrics.active_streams.dec();
        let end = match &result {
            Err(refusal)
                if matches!(refusal.code, Code::Unauthenticated | Code::PermissionDenied) =>
            {
                CallEnd::NotAllowed
            }
            _ if !record.user.is_empty() => CallEnd::Authenticated,
            _ => CallEnd::Other,
        };
        match result {
            Ok(status) => {
                record.grpc_status = status.0;
                record.message = status.1;
                record.outcome = match status.0 {
                    0 => "ok",
                    1 => "cancelled",
                    _ => "error",
                }
                .into();
            }
            Err(refusal) => {
                answer_status(&mut respond, refusal.code, &refusal.message);
                record.grpc_status = refusal.code as i32;
                record.message = Some(refusal.message);
                record.outcome = refusal.outcome.into();
            }
        }
        record.duration_ms = started.elapsed().as_secs_f64() * 1e3;
        let rpc_label = if KNOWN_RPCS.contains(&rpc.as_str()) {
            rpc.as_str()
        } else {
            "other"
        };
        self.metrics
            .calls
            .with_label_values(&[
                rpc_label,
                &record.outcome,
                record.cluster.as_deref().unwrap_or(""),
            ])
            .inc();
        self.metrics
            .call_seconds
            .with_label_values(&[rpc_label])
            .observe(started.elapsed().as_secs_f64());
        self.metrics
            .bytes
            .with_label_values(&["in"])
            .inc_by(record.bytes_in);
        self.metrics
            .bytes
            .with_label_values(&["out"])
            .inc_by(record.bytes_out);
        self.audit.record(record);
        end
    }

    /// The call's pipeline; `Ok` carries the server's gRPC status and message.
    async fn call(
        &self,
        rpc: &str,
        request: Request<RecvStream>,
        respond: &mut SendResponse<Bytes>,
        record: &mut AuditRecord,
    ) -> Result<(i32, Option<String>), Refusal> {
        if rpc.is_empty() || rpc.contains('/') {
            return Err(Refusal::new(
                Code::Unimplemented,
                "refused",
                "the gateway serves only spark.connect.SparkConnectService",
            ));
        }
        let (parts, mut body) = request.into_parts();
        let header = |name: &str| parts.headers.get(name).and_then(|v| v.to_str().ok());
        let who = self
            .authn
            .authenticate(header("authorization"))
            .await
            .inspect_err(|e| {
                self.metrics
                    .auth_failures
                    .with_label_values(&[e.reason()])
                    .inc();
            })?;
        record.user = who.user.clone();
        record.groups = who.groups.clone();
        let cluster = self
            .routes
            .choose(&who, header(CLUSTER_HEADER))
            .map_err(|e| Refusal::new(Code::InvalidArgument, "refused", e.to_string()))?;
        record.cluster = Some(cluster.to_string());
        self.authz.may_call(&who, &cluster, rpc).await?;
        let spec = self.directory.cluster(&cluster).ok_or_else(|| {
            Refusal::new(
                Code::NotFound,
                "refused",
                format!("cluster {cluster} does not exist"),
            )
        })?;

        let mut deframer = Deframer::new(self.max_message);
        let mut bytes_in = 0u64;
        let read = first_message(&mut body, &mut deframer, &mut bytes_in).await;
        record.bytes_in = bytes_in;
        let (first, ended) = read?;
        let stamped = wire::stamp_user(&first, &who.user)
            .map_err(|e| Refusal::new(Code::InvalidArgument, "refused", e.to_string()))?;
        let (operation, plan, sql) = describe(rpc, &first, self.sql_policy);
        record.session_id = stamped.session_id.clone();
        record.operation_id = operation;
        record.plan = plan;
        record.sql = sql;

        let target = self
            .target(&cluster, &spec, &who, stamped.session_id.as_deref())
            .await?;
        record.server = Some(target.server.name.clone());
        if let Some(claim) = &target.claim {
            self.dedicated.begin(claim);
        }
        let inbound = Inbound {
            headers: parts.headers,
            path: parts.uri.path().to_string(),
            first: stamped.message,
            body,
            deframer,
            ended,
            bytes_in,
        };
        let forwarded = self.forward(inbound, &target, &who, respond, record).await;
        if let Some(claim) = &target.claim {
            self.dedicated.end(claim);
        }
        forwarded
    }

    /// The server for this call and the token to reach it with.
    async fn target(
        &self,
        cluster: &ClusterRef,
        spec: &SparkConnectCluster,
        who: &Identity,
        session: Option<&str>,
    ) -> Result<Target, Refusal> {
        let token_mode = spec.spec.auth.mode == AuthMode::Token;
        let (server, secret, claim) = match spec.spec.gateway.mode {
            GatewayMode::Shared => {
                let servers = self
                    .directory
                    .shared_servers(cluster, spec.spec.server.port);
                let names: Vec<String> = servers.iter().map(|s| s.name.clone()).collect();
                let pick = pick_shared(&names, session.unwrap_or(&who.user))
                    .and_then(|name| servers.iter().find(|s| &s.name == name))
                    .cloned()
                    .ok_or_else(|| {
                        Refusal::new(
                            Code::Unavailable,
                            "unavailable",
                            format!("no shared server of cluster {cluster} is ready"),
                        )
                    })?;
                let secret = spec
                    .status
                    .as_ref()
                    .and_then(|s| s.token_secret.clone())
                    .unwrap_or_else(|| token_secret_name(spec));
                (pick, Some(secret), None)
            }
            GatewayMode::Dedicated => {
                let Assignment {
                    server,
                    token_secret,
                    claim,
                } = self
                    .dedicated
                    .assign(cluster, spec, who)
                    .await
                    .map_err(|e| {
                        if let Some(quota) = e.quota() {
                            self.metrics
                                .quota_refusals
                                .with_label_values(&[quota])
                                .inc();
                        }
                        Refusal::from(e)
                    })?;
                (server, token_secret, Some(claim))
            }
        };
        let token = match (token_mode, secret) {
            (false, _) => None,
            (true, Some(secret)) => Some(
                self.directory
                    .token(&cluster.namespace, &secret)
                    .await
                    .map_err(|e| {
                        Refusal::new(
                            Code::Unavailable,
                            "unavailable",
                            format!("the server's token is unreadable: {e}"),
                        )
                    })?,
            ),
            (true, None) => {
                return Err(Refusal::new(
                    Code::Unavailable,
                    "unavailable",
                    format!("server {} has no token Secret yet", server.name),
                ));
            }
        };
        Ok(Target {
            server,
            token,
            claim,
        })
    }

    /// Opens the call's stream on the server's connection (connecting first if needed).
    async fn open_stream(
        &self,
        target: &Target,
        request: Request<()>,
    ) -> Result<(ResponseFuture, SendStream<Bytes>), Refusal> {
        let connection = self.upstream(&target.server.address);
        let opened = async {
            let sender = connection.sender().await.map_err(|e| e.to_string())?;
            let mut sender = sender.ready().await.map_err(|e| e.to_string())?;
            sender
                .send_request(request, false)
                .map_err(|e| e.to_string())
        }
        .await;
        opened.map_err(|e| {
            connection.reset();
            unreachable(target, e)
        })
    }

    /// Sends the call to the server and streams both ways until the response ends.
    async fn forward(
        &self,
        inbound: Inbound,
        target: &Target,
        who: &Identity,
        respond: &mut SendResponse<Bytes>,
        record: &mut AuditRecord,
    ) -> Result<(i32, Option<String>), Refusal> {
        let request = upstream_request(&inbound.headers, &inbound.path, target)
            .map_err(|e| unreachable(target, e))?;
        let (response, mut to_server) = self.open_stream(target, request).await?;
        send_all(&mut to_server, wire::frame(&inbound.first), inbound.ended)
            .await
            .map_err(|e| unreachable(target, e.to_string()))?;
        let bytes_in = Arc::new(AtomicU64::new(inbound.bytes_in));
        record.bytes_in = inbound.bytes_in;
        let pump = (!inbound.ended).then(|| {
            tokio::spawn(pump_requests(
                inbound.body,
                inbound.deframer,
                to_server,
                who.user.clone(),
                bytes_in.clone(),
            ))
        });
        let _abort_pump = AbortOnDrop(pump);
        let answered = self.answer(response, target, respond, record).await;
        record.bytes_in = bytes_in.load(Ordering::Relaxed);
        answered
    }

    /// Relays the server's response (head, body, trailers) to the client.
    async fn answer(
        &self,
        response: ResponseFuture,
        target: &Target,
        respond: &mut SendResponse<Bytes>,
        record: &mut AuditRecord,
    ) -> Result<(i32, Option<String>), Refusal> {
        let response = response.await.map_err(|e| {
            if e.is_io() || e.is_go_away() {
                self.upstream(&target.server.address).reset();
            }
            unreachable(target, e.to_string())
        })?;
        let (head, mut from_server) = response.into_parts();
        let mut client_head = Response::builder()
            .status(head.status)
            .body(())
            .map_err(|e| unreachable(target, e.to_string()))?;
        *client_head.headers_mut() = head.headers.clone();
        let trailers_only = from_server.is_end_stream();
        let mut to_client = respond
            .send_response(client_head, trailers_only)
            .map_err(|e| Refusal::new(Code::Cancelled, "cancelled", e.to_string()))?;
        if trailers_only {
            return Ok(grpc_status(&head.headers));
        }
        Ok(relay_response(&mut from_server, &mut to_client, record).await)
    }
}

/// The client's side of a call once its first message is read.
struct Inbound {
    headers: HeaderMap,
    path: String,
    first: Bytes,
    body: RecvStream,
    deframer: Deframer,
    ended: bool,
    bytes_in: u64,
}

fn unreachable(target: &Target, e: String) -> Refusal {
    Refusal::new(
        Code::Unavailable,
        "unavailable",
        format!("server {} is unreachable: {e}", target.server.name),
    )
}

/// The request to the server: the client's metadata without its credential and routing
/// parameter, with the server's token.
fn upstream_request(
    headers: &HeaderMap,
    path: &str,
    target: &Target,
) -> Result<Request<()>, String> {
    let mut request = Request::builder()
        .method("POST")
        .uri(format!("http://{}{path}", target.server.address))
        .body(())
        .map_err(|e| e.to_string())?;
    for (name, value) in headers {
        if !DROPPED_HEADERS.contains(&name.as_str()) {
            request.headers_mut().append(name.clone(), value.clone());
        }
    }
    request
        .headers_mut()
        .insert("te", HeaderValue::from_static("trailers"));
    if let Some(token) = &target.token {
        let value = HeaderValue::from_str(&format!("Bearer {token}"))
            .map_err(|_| "its token is not a valid header value".to_string())?;
        request.headers_mut().insert("authorization", value);
    }
    Ok(request)
}

/// Where a call goes.
struct Target {
    server: Server,
    token: Option<String>,
    claim: Option<super::dedicated::ClaimKey>,
}

struct AbortOnDrop(Option<tokio::task::JoinHandle<()>>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        if let Some(task) = &self.0 {
            task.abort();
        }
    }
}

/// Reads until the first whole request message; says whether the request stream also ended.
async fn first_message(
    body: &mut RecvStream,
    deframer: &mut Deframer,
    bytes_in: &mut u64,
) -> Result<(Bytes, bool), Refusal> {
    let malformed =
        |e: wire::WireError| Refusal::new(Code::InvalidArgument, "refused", e.to_string());
    loop {
        if let Some(message) = deframer.next_message().map_err(malformed)? {
            return Ok((message, body.is_end_stream() && deframer.pending() == 0));
        }
        match body.data().await {
            Some(Ok(data)) => {
                *bytes_in += data.len() as u64;
                let _ = body.flow_control().release_capacity(data.len());
                deframer.push(&data);
            }
            Some(Err(e)) => return Err(Refusal::new(Code::Cancelled, "cancelled", e.to_string())),
            None => {
                return Err(Refusal::new(
                    Code::InvalidArgument,
                    "refused",
                    "the request ended before its first message",
                ));
            }
        }
    }
}

/// Forwards the rest of the client's request messages, each with its user replaced.
async fn pump_requests(
    mut body: RecvStream,
    mut deframer: Deframer,
    mut to_server: SendStream<Bytes>,
    user: String,
    bytes_in: Arc<AtomicU64>,
) {
    loop {
        loop {
            match deframer.next_message() {
                Ok(Some(message)) => {
                    let Ok(stamped) = wire::stamp_user(&message, &user) else {
                        to_server.send_reset(h2::Reason::PROTOCOL_ERROR);
                        return;
                    };
                    if send_all(&mut to_server, wire::frame(&stamped.message), false)
                        .await
                        .is_err()
                    {
                        return;
                    }
                }
                Ok(None) => break,
                Err(_) => {
                    to_server.send_reset(h2::Reason::PROTOCOL_ERROR);
                    return;
                }
            }
        }
        match body.data().await {
            Some(Ok(data)) => {
                bytes_in.fetch_add(data.len() as u64, Ordering::Relaxed);
                let _ = body.flow_control().release_capacity(data.len());
                deframer.push(&data);
            }
            Some(Err(_)) => {
                to_server.send_reset(h2::Reason::CANCEL);
                return;
            }
            None => {
                let _ = to_server.send_data(Bytes::new(), true);
                return;
            }
        }
    }
}

/// Streams the server's response to the client, giving the server flow-control credit only as
/// the client takes the data; ends with the server's trailers. A client that resets the stream
/// ends the call (the server's stream is dropped, which cancels it).
async fn relay_response(
    from_server: &mut RecvStream,
    to_client: &mut SendStream<Bytes>,
    record: &mut AuditRecord,
) -> (i32, Option<String>) {
    let cancelled = (
        Code::Cancelled as i32,
        Some("the client cancelled the call".into()),
    );
    loop {
        let next = tokio::select! {
            next = from_server.data() => next,
            _ = std::future::poll_fn(|cx| to_client.poll_reset(cx)) => return cancelled,
        };
        match next {
            Some(Ok(data)) => {
                let n = data.len();
                record.bytes_out += n as u64;
                if send_all(to_client, data, false).await.is_err() {
                    return cancelled;
                }
                let _ = from_server.flow_control().release_capacity(n);
            }
            Some(Err(e)) => {
                to_client.send_reset(h2::Reason::INTERNAL_ERROR);
                return (
                    Code::Unavailable as i32,
                    Some(format!("the server's stream broke: {e}")),
                );
            }
            None => break,
        }
    }
    match from_server.trailers().await {
        Ok(Some(trailers)) => {
            let status = grpc_status(&trailers);
            if to_client.send_trailers(trailers).is_err() {
                return cancelled;
            }
            status
        }
        Ok(None) => {
            let _ = to_client.send_data(Bytes::new(), true);
            (Code::Ok as i32, None)
        }
        Err(e) => {
            to_client.send_reset(h2::Reason::INTERNAL_ERROR);
            (
                Code::Unavailable as i32,
                Some(format!("the server's stream broke: {e}")),
            )
        }
    }
}

/// Sends `data` as the peer's window allows (never buffering more than it grants).
async fn send_all(
    stream: &mut SendStream<Bytes>,
    mut data: Bytes,
    end: bool,
) -> Result<(), h2::Error> {
    if data.is_empty() {
        return stream.send_data(data, end);
    }
    while !data.is_empty() {
        stream.reserve_capacity(data.len());
        let granted = match std::future::poll_fn(|cx| stream.poll_capacity(cx)).await {
            Some(granted) => granted?,
            None => return Err(h2::Error::from(h2::Reason::STREAM_CLOSED)),
        };
        if granted == 0 {
            continue;
        }
        let chunk = data.split_to(granted.min(data.len()));
        stream.send_data(chunk, end && data.is_empty())?;
    }
    Ok(())
}

fn grpc_status(headers: &HeaderMap) -> (i32, Option<String>) {
    let code = headers
        .get("grpc-status")
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse().ok())
        .unwrap_or(0);
    let message = headers
        .get("grpc-message")
        .and_then(|v| v.to_str().ok())
        .map(percent_decode);
    (code, message)
}

/// gRPC percent-encodes `grpc-message`.
fn percent_decode(text: &str) -> String {
    let bytes = text.as_bytes();
    let mut out = Vec::with_capacity(bytes.len());
    let mut i = 0;
    while i < bytes.len() {
        if bytes[i] == b'%'
            && i + 2 < bytes.len()
            && let Ok(byte) =
                u8::from_str_radix(std::str::from_utf8(&bytes[i + 1..i + 3]).unwrap_or(""), 16)
        {
            out.push(byte);
            i += 3;
        } else {
            out.push(bytes[i]);
            i += 1;
        }
    }
    String::from_utf8_lossy(&out).into_owned()
}

/// gRPC's percent-encoding of `grpc-message`: printable ASCII except `%` stays as is.
fn percent_encode(text: &str) -> String {
    let mut out = String::with_capacity(text.len());
    for byte in text.bytes() {
        if (0x20..0x7f).contains(&byte) && byte != b'%' {
            out.push(byte as char);
        } else {
            out.push_str(&format!("%{byte:02X}"));
        }
    }
    out
}

/// Answers with a trailers-only gRPC status (or resets the stream if a response has begun).
fn answer_status(respond: &mut SendResponse<Bytes>, code: Code, message: &str) {
    let response = Response::builder()
        .status(200)
        .header("content-type", "application/grpc")
        .header("grpc-status", (code as i32).to_string())
        .header("grpc-message", percent_encode(message))
        .body(());
    match response {
        Ok(response) => {
            if respond.send_response(response, true).is_err() {
                respond.send_reset(h2::Reason::CANCEL);
            }
        }
        Err(_) => respond.send_reset(h2::Reason::INTERNAL_ERROR),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn servers_get_the_servers_token_never_the_callers_credential_or_routing_parameter() {
        let target = Target {
            server: Server {
                name: "s1".into(),
                address: "10.0.0.1:15002".into(),
            },
            token: Some("server-secret".into()),
            claim: None,
        };
        let mut headers = HeaderMap::new();
        headers.insert(
            "authorization",
            HeaderValue::from_static("Bearer user-token"),
        );
        headers.insert(CLUSTER_HEADER, HeaderValue::from_static("etl.team"));
        headers.insert("grpc-timeout", HeaderValue::from_static("5S"));
        headers.insert("user-agent", HeaderValue::from_static("pyspark"));
        let request = upstream_request(
            &headers,
            "/spark.connect.SparkConnectService/Config",
            &target,
        )
        .expect("a request");
        assert_eq!(request.headers()["authorization"], "Bearer server-secret");
        assert!(request.headers().get(CLUSTER_HEADER).is_none());
        assert_eq!(
            request.headers()["grpc-timeout"],
            "5S",
            "deadlines pass through"
        );
        assert_eq!(request.headers()["te"], "trailers");
        assert_eq!(
            request.uri().to_string(),
            "http://10.0.0.1:15002/spark.connect.SparkConnectService/Config"
        );
    }

    #[test]
    fn status_messages_survive_percent_encoding() {
        let message = "quota gateway.maxDedicatedServers = 1 (cluster a/b) is used up: 100% ✓";
        assert_eq!(percent_decode(&percent_encode(message)), message);
        assert!(!percent_encode(message).contains('✓'));
    }
}
