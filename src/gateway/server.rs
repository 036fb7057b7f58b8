//! The listener: TLS (or plaintext for a mesh that terminates TLS) and HTTP/2, one task per
//! connection and per call. On shutdown it stops accepting, tells every client to go away
//! (HTTP/2 GOAWAY: in-flight calls continue, new ones go elsewhere) and waits for calls to
//! finish until the grace period ends.

use std::sync::Arc;
use std::time::Duration;

use tokio::net::{TcpListener, TcpStream};
use tokio_rustls::TlsAcceptor;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

use super::proxy::Gateway;
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

/// HTTP/2 settings for client connections: windows large enough for Arrow batches at full speed.
fn http2() -> h2::server::Builder {
    let mut builder = h2::server::Builder::new();
    builder
        .initial_window_size(4 << 20)
        .initial_connection_window_size(16 << 20)
        .max_frame_size(1 << 20)
        .max_concurrent_streams(1000)
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
    match transport {
        Transport::Plaintext => http2_connection(stream, gateway, shutdown).await,
        Transport::Tls(certificate) => {
            let Some(config) = certificate.current() else {
                tracing::warn!(%peer, "no usable certificate yet; refusing the TLS connection");
                return;
            };
            match tokio::time::timeout(HANDSHAKE_TIMEOUT, TlsAcceptor::from(config).accept(stream))
                .await
            {
                Ok(Ok(tls)) => http2_connection(tls, gateway, shutdown).await,
                Ok(Err(e)) => tracing::debug!(%peer, error = %e, "TLS handshake failed"),
                Err(_) => tracing::debug!(%peer, "TLS handshake timed out"),
            }
        }
    }
}

async fn http2_connection<S>(stream: S, gateway: Arc<Gateway>, shutdown: CancellationToken)
where
    S: tokio::io::AsyncRead + tokio::io::AsyncWrite + Unpin,
{
    let mut connection = match http2().handshake::<_, bytes::Bytes>(stream).await {
        Ok(connection) => connection,
        Err(e) => {
            tracing::debug!(error = %e, "HTTP/2 handshake failed");
            return;
        }
    };
    let calls = TaskTracker::new();
    let mut draining = false;
    loop {
        let next = tokio::select! {
            next = connection.accept() => next,
            _ = shutdown.cancelled(), if !draining => {
                connection.graceful_shutdown();
                draining = true;
                continue;
            }
        };
        match next {
            Some(Ok((request, respond))) => {
                calls.spawn(gateway.clone().handle(request, respond));
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
}
