//! The admin HTTP endpoint: `/metrics`, `/healthz`, `/readyz`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::routing::get;

/// A check: `Ok` or why not.
pub type Check = Arc<dyn Fn() -> Result<(), String> + Send + Sync>;

/// Shared state of the admin endpoint.
#[derive(Clone)]
pub struct AdminState {
    /// Renders `/metrics` in the Prometheus text format.
    pub metrics: Arc<dyn Fn() -> String + Send + Sync>,
    /// `/readyz`: the watches have synced and none is failing.
    pub ready: Check,
    /// `/healthz`: no reconcile is stuck.
    pub live: Check,
}

fn answer(check: &Check, ok: &'static str) -> (StatusCode, String) {
    match check() {
        Ok(()) => (StatusCode::OK, ok.into()),
        Err(why) => (StatusCode::SERVICE_UNAVAILABLE, why),
    }
}

/// Serves the admin endpoint on `addr` until `shutdown` resolves.
pub async fn serve(
    addr: SocketAddr,
    state: AdminState,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let app = Router::new()
        .route(
            "/metrics",
            get(|State(s): State<AdminState>| async move { (s.metrics)() }),
        )
        .route(
            "/healthz",
            get(|State(s): State<AdminState>| async move { answer(&s.live, "ok") }),
        )
        .route(
            "/readyz",
            get(|State(s): State<AdminState>| async move { answer(&s.ready, "ready") }),
        )
        .with_state(state);
    let listener = tokio::net::TcpListener::bind(addr).await?;
    tracing::info!(%addr, "admin endpoint listening");
    axum::serve(listener, app)
        .with_graceful_shutdown(shutdown)
        .await
}
