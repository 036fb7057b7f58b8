//! The listener: TLS (or plaintext for a mesh that terminates TLS) and HTTP/2, one task per
//! connection and per call. On shutdown it stops accepting, tells every client to go away
//! (HTTP/2 GOAWAY: in-flight calls continue, new ones go elsewhere) and waits for calls to
//! finish until the grace period ends. A client that shows no right to a connection is told to
//! go away the same way: one whose calls keep being refused as unauthenticated or not allowed
//! (guessing tokens or cluster names costs a new handshake every few guesses), or that holds
//! a connection without an authenticated call. Handshakes are timed, and the open connections
//! are bounded.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use h2::RecvStream;
use h2::server::SendResponse;
use http::Request;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::Semaphore;
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::metrics::GatewayMetrics;
use super::proxy::{CallEnd, Gateway};
use super::tls::Certificate;

/// How connections are secured.
#[derive(Clone)]
pub enum Transport {
    /// TLS with the certificate from the Secret.
    Tls(Certificate),
    /// Plaintext HTTP/2 (only when explicitly configured).
    Plaintext,
}

/// Longest a TLS handshake may take.
const HANDSHAKE_TIMEOUT: Duration = Duration::from_secs(10);
/// Calls on one connection that may be refused as unauthenticated or not allowed before the
/// connection is closed.
const NOT_ALLOWED_CALLS_PER_CONNECTION: usize = 16;
/// How long a connection may stay with no call in flight before its first authenticated call.
const UNAUTHENTICATED_IDLE: Duration = Duration::from_secs(30);
/// Largest header block a client may send (gRPC clients send at most 8 KiB of metadata by
/// default; tokens are at most 16 KiB).
const MAX_HEADER_LIST_BYTES: u32 = 64 << 10;

/// HTTP/2 settings for client connections: windows large enough for Arrow batches at full speed.
fn http2() -> h2::server::Builder {
    let mut builder = h2::server::Builder::new();
    builder
        .initial_window_size(4 << 20)
        .initial_connection_window_size(16 << 20)
        .max_frame_size(1 << 20)
        .max_concurrent_streams(1000)
        .max_header_list_size(MAX_HEADER_LIST_BYTES)
        .max_send_buffer_size(1 << 20);
    builder
}

/// Serves until `shutdown`, then drains for at most `grace`. At most `max_connections` client
/// connections are open at once: one more is closed as soon as it is accepted.
pub async fn serve(
    listener: TcpListener,
    transport: Transport,
    gateway: Arc<Gateway>,
    max_connections: usize,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let metrics = gateway.metrics.clone();
    let handle = move |request, respond| gateway.clone().handle(request, respond);
    let limits = Limits {
        max_connections,
        grace,
    };
    accept(listener, transport, handle, &metrics, limits, shutdown).await;
}

/// How much the listener lets in, and how long it drains.
#[derive(Clone, Copy, Debug)]
struct Limits {
    max_connections: usize,
    grace: Duration,
}

/// The accept loop of [`serve`], every call served by `handle`.
async fn accept<H, F>(
    listener: TcpListener,
    transport: Transport,
    handle: H,
    metrics: &GatewayMetrics,
    limits: Limits,
    shutdown: CancellationToken,
) where
    H: Fn(Request<RecvStream>, SendResponse<Bytes>) -> F + Clone + Send + Sync + 'static,
    F: Future<Output = CallEnd> + Send + 'static,
{
    let connections = TaskTracker::new();
    let slots = Arc::new(Semaphore::new(limits.max_connections));
    loop {
        let accepted = tokio::select! {
            accepted = listener.accept() => accepted,
            _ = shutdown.cancelled() => break,
        };
        let (stream, peer) = match accepted {
            Ok(accepted) => accepted,
            Err(e) => {
                tracing::warn!(error = %e, "accepting a connection failed");
                tokio::time::sleep(Duration::from_millis(50)).await;
                continue;
            }
        };
        let Ok(slot) = slots.clone().try_acquire_owned() else {
            tracing::debug!(%peer, "refused a connection: {} are open", limits.max_connections);
            closed(metrics, ConnectionEnd::TooManyConnections);
            continue;
        };
        let _ = stream.set_nodelay(true);
        let (transport, handle, metrics) = (transport.clone(), handle.clone(), metrics.clone());
        let shutdown = shutdown.clone();
        connections.spawn(async move {
            let end = connection(stream, transport, handle, shutdown, peer).await;
            closed(&metrics, end);
            drop(slot);
        });
    }
    drop(listener);
    connections.close();
    tracing::info!(
        calls = metrics.active_streams.get(),
        grace = ?limits.grace,
        "draining"
    );
    if tokio::time::timeout(limits.grace, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            calls = metrics.active_streams.get(),
            "grace period over; cutting the remaining calls"
        );
    }
}

/// Counts a connection the gateway closed (not one the client closed or that broke).
fn closed(metrics: &GatewayMetrics, end: ConnectionEnd) {
    let Some(reason) = end.reason() else {
        return;
    };
    metrics
        .connections_closed
        .with_label_values(&[reason])
        .inc();
}

/// One client connection: TLS (unless plaintext), then HTTP/2.
async fn connection<H, F>(
    stream: TcpStream,
    transport: Transport,
    handle: H,
    shutdown: CancellationToken,
    peer: std::net::SocketAddr,
) -> ConnectionEnd
where
    H: Fn(Request<RecvStream>, SendResponse<Bytes>) -> F,
    F: Future<Output = CallEnd> + Send + 'static,
{
    let end = match transport {
        Transport::Plaintext => http2_connection(stream, handle, shutdown).await,
        Transport::Tls(certificate) => {
            let Some(config) = certificate.current() else {
                tracing::warn!(%peer, "no usable certificate yet; refusing the TLS connection");
                return ConnectionEnd::Closed;
            };
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, TlsAcceptor::from(config).accept(stream))
                .await
            {
                Ok(Ok(tls)) => http2_connection(tls, handle, shutdown).await,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    ConnectionEnd::Closed
                }
                Err(_) => ConnectionEnd::HandshakeTimedOut,
            }
        }
    };
    if end.reason().is_some() {
        tracing::info!(%peer, ?end, "closed a client connection");
    }
    end
}

/// Why a client connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ConnectionEnd {
    /// The client closed it, it broke, or the gateway is stopping.
    Closed,
    /// Its TLS or HTTP/2 handshake took longer than [`HANDSHAKE_TIMEOUT`].
    HandshakeTimedOut,
    /// [`NOT_ALLOWED_CALLS_PER_CONNECTION`] of its calls were not allowed.
    NotAllowedCalls,
    /// It went [`UNAUTHENTICATED_IDLE`] with no call in flight and none authenticated yet.
    NoAuthenticatedCall,
    /// [`Limits::max_connections`] others were open.
    TooManyConnections,
}

impl ConnectionEnd {
    /// The metric label of a connection the gateway closed.
    fn reason(self) -> Option<&'static str> {
        match self {
            Self::Closed => None,
            Self::HandshakeTimedOut => Some("handshake_timed_out"),
            Self::NotAllowedCalls => Some("calls_not_allowed"),
            Self::NoAuthenticatedCall => Some("no_authenticated_call"),
            Self::TooManyConnections => Some("too_many_connections"),
        }
    }
}

/// What one connection's calls have shown of its client.
#[derive(Default)]
struct Standing {
    not_allowed: AtomicUsize,
    authenticated: AtomicBool,
    too_many_not_allowed: CancellationToken,
}

impl Standing {
    fn record(&self, end: CallEnd) {
        match end {
            CallEnd::NotAllowed => {
                if self.not_allowed.fetch_add(1, Ordering::Relaxed) + 1
                    >= NOT_ALLOWED_CALLS_PER_CONNECTION
                {
                    self.too_many_not_allowed.cancel();
                }
            }
            CallEnd::Authenticated => self.authenticated.store(true, Ordering::Relaxed),
            CallEnd::Other => {}
        }
    }

    fn authenticated(&self) -> bool {
        self.authenticated.load(Ordering::Relaxed)
    }
}

/// What the connection loop does next.
enum Next {
    /// Tell the client to go away, for this reason; calls in flight finish.
    GoAway(ConnectionEnd),
    /// The connection ended or broke.
    Stop,
    /// Wait for what comes.
    Wait,
}

/// Serves the calls of one HTTP/2 connection with `handle` until the client goes or
/// `shutdown`, or until its client has shown no right to hold it: too many calls not allowed,
/// or no authenticated call in its first [`UNAUTHENTICATED_IDLE`] without one in flight. Then
/// lets the calls in flight finish.
async fn http2_connection<S, H, F>(
    stream: S,
    handle: H,
    shutdown: CancellationToken,
) -> ConnectionEnd
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
    H: Fn(Request<RecvStream>, SendResponse<Bytes>) -> F,
    F: Future<Output = CallEnd> + Send + 'static,
{
    let mut connection = match tokio::time::timeout(
        HANDSHAKE_TIMEOUT,
        http2().handshake::<_, Bytes>(stream),
    )
    .await
    {
        Ok(Ok(connection)) => connection,
        Ok(Err(e)) => {
            tracing::debug!(error = %e, "HTTP/2 handshake failed");
            return ConnectionEnd::Closed;
        }
        Err(_) => return ConnectionEnd::HandshakeTimedOut,
    };
    let calls = TaskTracker::new();
    let standing = Arc::new(Standing::default());
    let mut unauthenticated_idle = tokio::time::interval_at(
        tokio::time::Instant::now() + UNAUTHENTICATED_IDLE,
        UNAUTHENTICATED_IDLE,
    );
    let mut end = ConnectionEnd::Closed;
    let mut draining = false;
    loop {
        let next = tokio::select! {
            biased;
            _ = shutdown.cancelled(), if !draining => Next::GoAway(ConnectionEnd::Closed),
            _ = standing.too_many_not_allowed.cancelled(), if !draining => {
                Next::GoAway(ConnectionEnd::NotAllowedCalls)
            }
            _ = unauthenticated_idle.tick(), if !draining && !standing.authenticated() => {
                // A call may have authenticated since this wait began.
                if calls.is_empty() && !standing.authenticated() {
                    Next::GoAway(ConnectionEnd::NoAuthenticatedCall)
                } else {
                    Next::Wait
                }
            }
            call = connection.accept() => match call {
                Some(Ok((request, respond))) => {
                    let call = handle(request, respond);
                    let standing = standing.clone();
                    calls.spawn(async move { standing.record(call.await) });
                    Next::Wait
                }
                Some(Err(e)) => {
                    tracing::debug!(error = %e, "client connection failed");
                    Next::Stop
                }
                None => Next::Stop,
            },
        };
        match next {
            Next::GoAway(why) => {
                connection.graceful_shutdown();
                draining = true;
                end = why;
            }
            Next::Stop => break,
            Next::Wait => {}
        }
    }
    calls.close();
    calls.wait().await;
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client's HTTP/2 connection to `http2_connection` over memory, every call answered at
    /// once and ending as `end`; returns the client side and the server's task.
    async fn served(
        end: CallEnd,
    ) -> (
        h2::client::SendRequest<Bytes>,
        tokio::task::JoinHandle<ConnectionEnd>,
    ) {
        let (client_io, server_io) = tokio::io::duplex(1 << 16);
        let handle =
            move |_request: Request<RecvStream>, respond: SendResponse<Bytes>| answer(respond, end);
        let server = tokio::spawn(http2_connection(
            server_io,
            handle,
            CancellationToken::new(),
        ));
        let (client, connection) = h2::client::handshake(client_io).await.expect("handshake");
        tokio::spawn(connection);
        (client, server)
    }

    /// Answers a call at once; the call ended as `end`.
    async fn answer(mut respond: SendResponse<Bytes>, end: CallEnd) -> CallEnd {
        let response = http::Response::builder()
            .header("grpc-status", "0")
            .body(())
            .expect("a response");
        let _ = respond.send_response(response, true);
        end
    }

    /// Makes `n` calls one after another; returns how many were answered.
    async fn calls(client: &mut h2::client::SendRequest<Bytes>, n: usize) -> usize {
        let mut answered = 0;
        for _ in 0..n {
            let Ok(ready) = client.clone().ready().await else {
                break;
            };
            *client = ready;
            let request = Request::post("/spark.connect.SparkConnectService/Config")
                .body(())
                .expect("a request");
            let Ok((response, _)) = client.send_request(request, true) else {
                break;
            };
            if response.await.is_err() {
                break;
            }
            answered += 1;
        }
        answered
    }

    #[tokio::test]
    async fn a_connection_whose_calls_keep_being_refused_is_closed() {
        let (mut client, server) = served(CallEnd::NotAllowed).await;
        let tried = NOT_ALLOWED_CALLS_PER_CONNECTION + 5;
        let answered = calls(&mut client, tried).await;
        // Calls the client sent before the GOAWAY reached it may still be answered.
        assert!(
            (NOT_ALLOWED_CALLS_PER_CONNECTION..tried).contains(&answered),
            "{answered} of {tried} calls answered"
        );
        assert_eq!(
            server.await.expect("the server ran"),
            ConnectionEnd::NotAllowedCalls
        );
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_without_an_authenticated_call_is_closed_once_idle() {
        let (client, server) = served(CallEnd::Other).await;
        // Virtual time runs on while nothing happens.
        let end = tokio::time::timeout(UNAUTHENTICATED_IDLE * 2, server).await;
        assert_eq!(
            end.expect("closed within the idle time")
                .expect("the server ran"),
            ConnectionEnd::NoAuthenticatedCall
        );
        drop(client);
    }

    #[tokio::test(start_paused = true)]
    async fn a_connection_with_an_authenticated_call_stays_open_while_idle() {
        let (mut client, server) = served(CallEnd::Authenticated).await;
        assert_eq!(calls(&mut client, 1).await, 1);
        tokio::time::sleep(UNAUTHENTICATED_IDLE * 10).await;
        assert!(!server.is_finished(), "the connection is still open");
        drop(client);
        assert_eq!(server.await.expect("the server ran"), ConnectionEnd::Closed);
    }

    #[tokio::test]
    async fn connections_beyond_the_bound_are_closed_at_once_and_slots_come_back() {
        let listener = TcpListener::bind("127.0.0.1:0")
            .await
            .expect("a loopback port");
        let address = listener.local_addr().expect("its address");
        let metrics = GatewayMetrics::new().expect("metrics");
        let limits = Limits {
            max_connections: 2,
            grace: Duration::from_secs(1),
        };
        let shutdown = CancellationToken::new();
        let handle = |_request: Request<RecvStream>, respond: SendResponse<Bytes>| {
            answer(respond, CallEnd::Authenticated)
        };
        let server = tokio::spawn({
            let (metrics, shutdown) = (metrics.clone(), shutdown.clone());
            async move {
                accept(
                    listener,
                    Transport::Plaintext,
                    handle,
                    &metrics,
                    limits,
                    shutdown,
                )
                .await;
            }
        });
        let connect = || async move {
            let tcp = TcpStream::connect(address).await.expect("connects");
            let (client, connection) = h2::client::handshake(tcp).await.ok()?;
            tokio::spawn(connection);
            let mut client = client;
            (calls(&mut client, 1).await == 1).then_some(client)
        };
        let first = connect().await.expect("the first connection is served");
        let _second = connect().await.expect("the second connection is served");
        assert!(connect().await.is_none(), "a third is closed");
        let refused = || {
            metrics
                .connections_closed
                .with_label_values(&["too_many_connections"])
                .get()
        };
        assert_eq!(refused(), 1);
        drop(first);
        let mut again = None;
        for _ in 0..200 {
            again = connect().await;
            if again.is_some() {
                break;
            }
            tokio::task::yield_now().await;
        }
        assert!(again.is_some(), "a closed connection's slot comes back");
        shutdown.cancel();
        drop(again);
        drop(_second);
        server.await.expect("the listener drained");
    }

    #[tokio::test]
    async fn a_connection_of_other_calls_stays_open() {
        let (mut client, server) = served(CallEnd::Other).await;
        let answered = calls(&mut client, NOT_ALLOWED_CALLS_PER_CONNECTION * 2).await;
        assert_eq!(answered, NOT_ALLOWED_CALLS_PER_CONNECTION * 2);
        drop(client);
        assert_eq!(server.await.expect("the server ran"), ConnectionEnd::Closed);
    }
}
