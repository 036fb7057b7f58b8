//! The probe's transport: one plain HTTP/2 connection per server, made on first use and made
//! again after it closed or a call on it failed. It speaks HTTP/2 with the `h2` crate directly:
//! no request queue, dispatch channel or worker task per server (a tonic `Channel` keeps all
//! three, which is most of what thousands of probed servers cost in memory).

use std::pin::Pin;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::task::{Context, Poll, ready};
use std::time::Duration;

use bytes::Bytes;
use h2::client::SendRequest;
use h2::{RecvStream, SendStream};
use http_body::{Body as _, Frame};
use http_body_util::BodyExt;
use tonic::body::Body;

/// Any failure of a connection or call.
pub type BoxError = Box<dyn std::error::Error + Send + Sync>;

/// How many connections may stay open between calls (each holds a socket and about 25 KB).
/// Beyond it, a call connects, runs and closes: the process stays within its file limit
/// however many servers it probes.
#[derive(Debug)]
pub struct ConnectionBudget {
    open: AtomicUsize,
    max: usize,
}

impl ConnectionBudget {
    /// At most `max` connections kept open.
    pub fn new(max: usize) -> Arc<Self> {
        Arc::new(Self {
            open: AtomicUsize::new(0),
            max,
        })
    }

    /// No limit.
    pub fn unlimited() -> Arc<Self> {
        Self::new(usize::MAX)
    }

    /// Connections kept open now.
    pub fn open(&self) -> usize {
        self.open.load(Ordering::Relaxed)
    }

    fn take(self: &Arc<Self>) -> Option<KeptOpen> {
        self.open
            .fetch_update(Ordering::AcqRel, Ordering::Acquire, |n| {
                (n < self.max).then_some(n + 1)
            })
            .ok()
            .map(|_| KeptOpen(self.clone()))
    }
}

/// A place in the budget, given back when the connection ends.
struct KeptOpen(Arc<ConnectionBudget>);

impl Drop for KeptOpen {
    fn drop(&mut self) {
        self.0.open.fetch_sub(1, Ordering::AcqRel);
    }
}

/// HTTP/2 settings: windows and frames large enough that a large result (a warm-up's Arrow
/// batches, a gateway's proxied query) streams at full speed. Windows are credit, not buffers:
/// an idle connection costs no more for them.
fn http2() -> h2::client::Builder {
    let mut builder = h2::client::Builder::new();
    builder
        .initial_window_size(4 << 20)
        .initial_connection_window_size(16 << 20)
        .max_frame_size(1 << 20);
    builder
}

/// A lazily connected HTTP/2 connection to one `host:port`; cheap to clone (clones share it).
#[derive(Clone)]
pub struct Connection {
    address: Arc<str>,
    connect_timeout: Duration,
    sender: Arc<Mutex<Option<SendRequest<Bytes>>>>,
    budget: Arc<ConnectionBudget>,
}

impl Connection {
    /// A connection to `address`, made when the first request is sent and kept open while
    /// `budget` allows.
    pub fn lazy(address: &str, connect_timeout: Duration, budget: Arc<ConnectionBudget>) -> Self {
        Self {
            address: address.into(),
            connect_timeout,
            sender: Arc::default(),
            budget,
        }
    }

    /// Drops the connection: the next request connects again (after a failed or abandoned
    /// call, the peer may be gone without a word).
    pub fn reset(&self) {
        if let Ok(mut slot) = self.sender.lock() {
            *slot = None;
        }
    }

    /// The open connection's sender, connecting first when there is none (a connection over
    /// the budget serves this call only: it closes once the call's handles are dropped).
    pub async fn sender(&self) -> Result<SendRequest<Bytes>, BoxError> {
        let open = self.sender.lock().ok().and_then(|s| s.clone());
        if let Some(sender) = open {
            return Ok(sender);
        }
        let stream = tokio::time::timeout(
            self.connect_timeout,
            tokio::net::TcpStream::connect(&*self.address),
        )
        .await
        .map_err(|_| format!("connecting timed out after {:?}", self.connect_timeout))??;
        stream.set_nodelay(true)?;
        let (sender, connection) =
            tokio::time::timeout(self.connect_timeout, http2().handshake::<_, Bytes>(stream))
                .await
                .map_err(|_| "the HTTP/2 handshake timed out")??;
        let kept = self.budget.take();
        let slot = kept.is_some().then(|| self.sender.clone());
        if let Some(slot) = &slot
            && let Ok(mut slot) = slot.lock()
        {
            *slot = Some(sender.clone());
        }
        tokio::spawn(async move {
            if let Err(e) = connection.await {
                tracing::debug!(error = %e, "probe connection ended");
            }
            // A closed connection is never handed out again; its place in the budget is free.
            if let Some(slot) = slot
                && let Ok(mut slot) = slot.lock()
            {
                *slot = None;
            }
            drop(kept);
        });
        Ok(sender)
    }

    async fn send(
        &self,
        request: http::Request<Body>,
    ) -> Result<http::Response<ResponseBody>, BoxError> {
        let sender = self.sender().await?;
        let mut sender = sender.ready().await?;
        let (parts, body) = request.into_parts();
        let head = http::Request::from_parts(parts, ());
        let (response, stream) = sender.send_request(head, body.is_end_stream())?;
        send_body(body, stream).await?;
        let response = response.await?;
        Ok(response.map(ResponseBody))
    }
}

/// Sends a request body (one small gRPC message here) and its end.
async fn send_body(mut body: Body, mut stream: SendStream<Bytes>) -> Result<(), BoxError> {
    if body.is_end_stream() {
        return Ok(());
    }
    while let Some(frame) = body.frame().await {
        let frame = frame?;
        if frame.is_data()
            && let Ok(data) = frame.into_data()
        {
            stream.send_data(data, false)?;
        }
    }
    stream.send_data(Bytes::new(), true)?;
    Ok(())
}

/// A response body read from the HTTP/2 stream, giving flow-control capacity back as it goes
/// (a warm-up's Arrow results can exceed the initial window).
pub struct ResponseBody(RecvStream);

impl http_body::Body for ResponseBody {
    type Data = Bytes;
    type Error = h2::Error;

    fn poll_frame(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
    ) -> Poll<Option<Result<Frame<Bytes>, h2::Error>>> {
        match ready!(self.0.poll_data(cx)) {
            Some(Ok(data)) => {
                let _ = self.0.flow_control().release_capacity(data.len());
                Poll::Ready(Some(Ok(Frame::data(data))))
            }
            Some(Err(e)) => Poll::Ready(Some(Err(e))),
            None => match ready!(self.0.poll_trailers(cx)) {
                Ok(Some(trailers)) => Poll::Ready(Some(Ok(Frame::trailers(trailers)))),
                Ok(None) => Poll::Ready(None),
                Err(e) => Poll::Ready(Some(Err(e))),
            },
        }
    }

    fn is_end_stream(&self) -> bool {
        self.0.is_end_stream()
    }
}

impl tower::Service<http::Request<Body>> for Connection {
    type Response = http::Response<ResponseBody>;
    type Error = BoxError;
    type Future = Pin<Box<dyn Future<Output = Result<Self::Response, Self::Error>> + Send>>;

    fn poll_ready(&mut self, _: &mut Context<'_>) -> Poll<Result<(), Self::Error>> {
        Poll::Ready(Ok(()))
    }

    /// Failures to reach the server surface as gRPC UNAVAILABLE (as from a channel) and drop
    /// the connection, so the next call connects afresh.
    fn call(&mut self, request: http::Request<Body>) -> Self::Future {
        let connection = self.clone();
        Box::pin(async move {
            connection.send(request).await.map_err(|e| {
                connection.reset();
                Box::new(tonic::Status::unavailable(format!(
                    "{}: {e}",
                    connection.address
                ))) as BoxError
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_budget_keeps_at_most_its_size_open_and_frees_places() {
        let budget = ConnectionBudget::new(2);
        let a = budget.take();
        let b = budget.take();
        assert!(a.is_some() && b.is_some());
        assert!(
            budget.take().is_none(),
            "a third connection serves one call only"
        );
        assert_eq!(budget.open(), 2);
        drop(a);
        assert_eq!(budget.open(), 1);
        assert!(budget.take().is_some());
    }
}
