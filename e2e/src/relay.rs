//! Getting from the host into the world: a Unix socket crosses network namespaces.
//!
//! Inside the world, [`serve_dialer`] accepts on a socket file and, for each connection, reads
//! one line `host:port`, dials that address from inside the world and pipes bytes. On the host,
//! [`forward`] listens on a loopback port and relays each connection through that socket.

use std::path::{Path, PathBuf};

use anyhow::Context;
use tokio::io::{AsyncBufReadExt, AsyncWriteExt, BufReader};
use tokio::net::{TcpListener, TcpStream, UnixListener, UnixStream};

/// Inside the world: dials what each client asks for.
pub async fn serve_dialer(socket: &Path) -> anyhow::Result<()> {
    let _ = std::fs::remove_file(socket);
    let listener =
        UnixListener::bind(socket).with_context(|| format!("binding {}", socket.display()))?;
    loop {
        let (stream, _) = listener.accept().await?;
        tokio::spawn(async move {
            let mut reader = BufReader::new(stream);
            let mut target = String::new();
            if reader.read_line(&mut target).await.is_err() {
                return;
            }
            let target = target.trim().to_string();
            match TcpStream::connect(&target).await {
                Ok(mut upstream) => {
                    let _ = upstream.set_nodelay(true);
                    // Bytes the client sent right behind the target line are already buffered.
                    let early = reader.buffer().to_vec();
                    let mut client = reader.into_inner();
                    if upstream.write_all(&early).await.is_err() {
                        return;
                    }
                    let _ = tokio::io::copy_bidirectional(&mut client, &mut upstream).await;
                }
                Err(e) => tracing::debug!(%target, error = %e, "dial inside the world failed"),
            }
        });
    }
}

/// On the host: relays `127.0.0.1:<port>` to `target` inside the world.
pub async fn forward(listener: TcpListener, socket: PathBuf, target: String) -> anyhow::Result<()> {
    loop {
        let (mut client, _) = listener.accept().await?;
        let _ = client.set_nodelay(true);
        let socket = socket.clone();
        let target = target.clone();
        tokio::spawn(async move {
            let Ok(mut inner) = UnixStream::connect(&socket).await else {
                return;
            };
            if inner
                .write_all(format!("{target}\n").as_bytes())
                .await
                .is_err()
            {
                return;
            }
            let _ = tokio::io::copy_bidirectional(&mut client, &mut inner).await;
        });
    }
}
