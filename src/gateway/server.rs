//! The listener: TLS (or plaintext for a mesh that terminates TLS) and HTTP/2, one task per
//! connection and per call. On shutdown it stops accepting, tells every client to go away
//! (HTTP/2 GOAWAY: in-flight calls continue, new ones go elsewhere) and waits for calls to
//! finish until the grace period ends. A connection whose calls keep being refused as
//! unauthenticated or not allowed is told to go away the same way: a client guessing tokens or
//! cluster names pays a new handshake for every few guesses.

use std::future::Future;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::Duration;

use bytes::Bytes;
use h2::RecvStream;
use h2::server::SendResponse;
use http::Request;
use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

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
pub const NOT_ALLOWED_CALLS_PER_CONNECTION: usize = 16;
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

/// Serves until `shutdown`, then drains for at most `grace`.
pub async fn serve(
    listener: TcpListener,
    transport: Transport,
    gateway: Arc<Gateway>,
    shutdown: CancellationToken,
    grace: Duration,
) {
    let connections = TaskTracker::new();
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
        let _ = stream.set_nodelay(true);
        connections.spawn(connection(
            stream,
            transport.clone(),
            gateway.clone(),
            shutdown.clone(),
            peer,
        ));
    }
    drop(listener);
    connections.close();
    tracing::info!(
        calls = gateway.metrics.active_streams.get(),
        ?grace,
        "draining"
    );
    if tokio::time::timeout(grace, connections.wait())
        .await
        .is_err()
    {
        tracing::warn!(
            calls = gateway.metrics.active_streams.get(),
            "grace period over; cutting the remaining calls"
        );
    }
}

async fn connection(
    stream: TcpStream,
    transport: Transport,
    gateway: Arc<Gateway>,
    shutdown: CancellationToken,
    peer: std::net::SocketAddr,
) {
    let handle = {
        let gateway = gateway.clone();
        move |request, respond| gateway.clone().handle(request, respond)
    };
    let end = match transport {
        Transport::Plaintext => http2_connection(stream, handle, shutdown).await,
        Transport::Tls(certificate) => {
            let Some(config) = certificate.current() else {
                tracing::warn!(%peer, "no usable certificate yet; refusing the TLS connection");
                return;
            };
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, TlsAcceptor::from(config).accept(stream))
                .await
            {
                Ok(Ok(tls)) => http2_connection(tls, handle, shutdown).await,
                Ok(Err(e)) => {
                    tracing::debug!(%peer, error = %e, "TLS handshake failed");
                    return;
                }
                Err(_) => {
                    tracing::debug!(%peer, "TLS handshake timed out");
                    return;
                }
            }
        }
    };
    if end == ConnectionEnd::NotAllowedCalls {
        tracing::info!(%peer, "closed a connection whose calls kept being refused");
        gateway
            .metrics
            .connections_closed
            .with_label_values(&["calls_not_allowed"])
            .inc();
    }
}

/// Why a client connection ended.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum ConnectionEnd {
    /// The client closed it, it broke, or the gateway is stopping.
    Closed,
    /// [`NOT_ALLOWED_CALLS_PER_CONNECTION`] of its calls were not allowed.
    NotAllowedCalls,
}

/// Serves the calls of one HTTP/2 connection with `handle` until the client goes, `shutdown`,
/// or too many of its calls are not allowed; then lets the calls in flight finish.
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
    let mut connection = match http2().handshake::<_, Bytes>(stream).await {
        Ok(connection) => connection,
        Err(e) => {
            tracing::debug!(error = %e, "HTTP/2 handshake failed");
            return ConnectionEnd::Closed;
        }
    };
    let calls = TaskTracker::new();
    let failed = Arc::new(AtomicUsize::new(0));
    let too_many_failed = CancellationToken::new();
    let mut end = ConnectionEnd::Closed;
    let mut draining = false;
    loop {
        let next = tokio::select! {
            biased;
            _ = shutdown.cancelled(), if !draining => {
                connection.graceful_shutdown();
                draining = true;
                continue;
            }
            _ = too_many_failed.cancelled(), if !draining => {
                connection.graceful_shutdown();
                draining = true;
                end = ConnectionEnd::NotAllowedCalls;
                continue;
            }
            next = connection.accept() => next,
        };
        match next {
            Some(Ok((request, respond))) => {
                let call = handle(request, respond);
                let (failed, too_many_failed) = (failed.clone(), too_many_failed.clone());
                calls.spawn(async move {
                    if call.await == CallEnd::NotAllowed
                        && failed.fetch_add(1, Ordering::Relaxed) + 1
                            >= NOT_ALLOWED_CALLS_PER_CONNECTION
                    {
                        too_many_failed.cancel();
                    }
                });
            }
            Some(Err(e)) => {
                tracing::debug!(error = %e, "client connection failed");
                break;
            }
            None => break,
        }
    }
    calls.close();
    calls.wait().await;
    end
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A client's HTTP/2 connection to `http2_connection` over memory, every call answered by
    /// `answer` with `end`; returns the client side and the server's task.
    async fn served(
        end: CallEnd,
    ) -> (
        h2::client::SendRequest<Bytes>,
        tokio::task::JoinHandle<ConnectionEnd>,
    ) {
        let (client_io, server_io) = tokio::io::duplex(1 << 16);
        let handle = move |_request: Request<RecvStream>, mut respond: SendResponse<Bytes>| async move {
            let response = http::Response::builder()
                .header("grpc-status", "16")
                .body(())
                .expect("a response");
            let _ = respond.send_response(response, true);
            end
        };
        let server = tokio::spawn(http2_connection(
            server_io,
            handle,
            CancellationToken::new(),
        ));
        let (client, connection) = h2::client::handshake(client_io).await.expect("handshake");
        tokio::spawn(connection);
        (client, server)
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

    #[tokio::test]
    async fn a_connection_of_other_calls_stays_open() {
        let (mut client, server) = served(CallEnd::Other).await;
        let answered = calls(&mut client, NOT_ALLOWED_CALLS_PER_CONNECTION * 2).await;
        assert_eq!(answered, NOT_ALLOWED_CALLS_PER_CONNECTION * 2);
        drop(client);
        assert_eq!(server.await.expect("the server ran"), ConnectionEnd::Closed);
    }
}
