//! The Spark Connect gateway: one authenticated endpoint in front of every cluster. A user
//! connects with their own token; the gateway authenticates it (JWT or TokenReview), chooses
//! the cluster, asks RBAC (`connect` on `sparkconnectclusters`), routes to the cluster's shared
//! servers or to the user's dedicated server from the hot pool, proxies the gRPC streams with
//! the server's own token and the authenticated user stamped on every request, and audits
//! every call. Replicas keep no state of their own: routing follows from watched objects.

pub mod arrivals;
pub mod audit;
pub mod authn;
pub mod authz;
pub mod cache;
pub mod dedicated;
pub mod directory;
pub mod ext_authz;
pub mod jwks;
pub mod metrics;
pub mod proxy;
pub mod route;
pub mod secret_watch;
pub mod server;
pub mod tls;
pub mod turns;
pub mod wire;

use std::collections::BTreeMap;
use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use jsonwebtoken::jwk::JwkSet;
use tokio::sync::RwLock;
use tokio_util::sync::CancellationToken;

use crate::admin::{self, AdminState};
use crate::duration;

/// Settings of the `gateway` command.
#[derive(clap::Args, Debug)]
pub struct GatewayArgs {
    /// Address of the Spark Connect listener.
    #[arg(long, env = "SCO_GATEWAY_ADDR", default_value = "0.0.0.0:8443")]
    pub listen: SocketAddr,
    /// Address of /metrics, /healthz and /readyz.
    #[arg(long, env = "SCO_ADMIN_ADDR", default_value = "0.0.0.0:8080")]
    pub admin_addr: SocketAddr,
    /// Secret (`namespace/name`, type kubernetes.io/tls) with the listener's certificate.
    #[arg(long, env = "SCO_GATEWAY_TLS_SECRET")]
    pub tls_secret: Option<String>,
    /// Serve plaintext HTTP/2 (only behind a mesh or proxy that terminates TLS).
    #[arg(long, env = "SCO_GATEWAY_PLAINTEXT")]
    pub plaintext: bool,
    /// Check Kubernetes tokens with TokenReview for this audience (empty: off).
    #[arg(
        long,
        env = "SCO_GATEWAY_TOKEN_REVIEW_AUDIENCE",
        default_value = "spark-connect-gateway"
    )]
    pub token_review_audience: String,
    /// Issuer (`iss`) of JWTs the gateway validates itself.
    #[arg(long, env = "SCO_GATEWAY_JWT_ISSUER")]
    pub jwt_issuer: Option<String>,
    /// Audience (`aud`) those JWTs must carry.
    #[arg(
        long,
        env = "SCO_GATEWAY_JWT_AUDIENCE",
        default_value = "spark-connect-gateway"
    )]
    pub jwt_audience: String,
    /// Secret (`namespace/name`) with the issuer's JWKS under key `jwks.json` (watched).
    #[arg(
        long,
        env = "SCO_GATEWAY_JWT_JWKS_SECRET",
        conflicts_with = "jwt_jwks_url"
    )]
    pub jwt_jwks_secret: Option<String>,
    /// URL of the issuer's JWKS (https; fetched at start and every 5 minutes).
    #[arg(long, env = "SCO_GATEWAY_JWT_JWKS_URL")]
    pub jwt_jwks_url: Option<String>,
    /// JWT claim with the user name.
    #[arg(long, env = "SCO_GATEWAY_JWT_USERNAME_CLAIM", default_value = "sub")]
    pub jwt_username_claim: String,
    /// JWT claim with the groups.
    #[arg(long, env = "SCO_GATEWAY_JWT_GROUPS_CLAIM", default_value = "groups")]
    pub jwt_groups_claim: String,
    /// Put before JWT user and group names (keeps them apart from Kubernetes users).
    #[arg(long, env = "SCO_GATEWAY_JWT_PREFIX", default_value = "oidc:")]
    pub jwt_prefix: String,
    /// JWT claim whose value is the caller's namespace (routing of bare cluster names).
    #[arg(long, env = "SCO_GATEWAY_NAMESPACE_CLAIM")]
    pub namespace_claim: Option<String>,
    /// Namespace of a bare cluster name when no claim names one.
    #[arg(long, env = "SCO_GATEWAY_DEFAULT_NAMESPACE", default_value = "default")]
    pub default_namespace: String,
    /// Cluster name for callers whose token claim names a namespace but who name no cluster.
    #[arg(long, env = "SCO_GATEWAY_DEFAULT_CLUSTER")]
    pub default_cluster: Option<String>,
    /// Route callers of a group that name no cluster: `GROUP=NAMESPACE/NAME` (repeatable).
    #[arg(long = "route-group", value_name = "GROUP=NAMESPACE/NAME")]
    pub route_groups: Vec<String>,
    /// Envoy ext_authz v3 gRPC service (`http://host:port`) asked after RBAC allowed a call.
    #[arg(long, env = "SCO_GATEWAY_EXT_AUTHZ")]
    pub ext_authz: Option<String>,
    /// Longest wait for the external authorizer (then the call is refused: fail closed).
    #[arg(long, env = "SCO_GATEWAY_EXT_AUTHZ_TIMEOUT", default_value = "2s")]
    pub ext_authz_timeout: String,
    /// Most dedicated servers one user may hold over all clusters.
    #[arg(long, env = "SCO_GATEWAY_MAX_DEDICATED_PER_USER", default_value_t = 2)]
    pub max_dedicated_per_user: usize,
    /// Longest a call waits for its dedicated server's claim to be bound.
    #[arg(long, env = "SCO_GATEWAY_CLAIM_WAIT", default_value = "120s")]
    pub claim_wait: String,
    /// How often idle dedicated servers are looked for.
    #[arg(long, env = "SCO_GATEWAY_SWEEP_PERIOD", default_value = "5s")]
    pub sweep_period: String,
    /// How SQL text appears in audit lines.
    #[arg(
        long,
        env = "SCO_GATEWAY_AUDIT_SQL",
        value_enum,
        default_value = "hash"
    )]
    pub audit_sql: audit::SqlPolicy,
    /// Also append audit lines to this file.
    #[arg(long, env = "SCO_GATEWAY_AUDIT_FILE")]
    pub audit_file: Option<PathBuf>,
    /// Largest request message accepted, in bytes.
    #[arg(long, env = "SCO_GATEWAY_MAX_MESSAGE_BYTES", default_value_t = 128 << 20)]
    pub max_message_bytes: usize,
    /// On SIGTERM, how long in-flight calls may continue before they are cut.
    #[arg(long, env = "SCO_GATEWAY_DRAIN_GRACE", default_value = "30s")]
    pub drain_grace: String,
    /// Client connections open at once (each idle one costs about 16 KB); one more is closed
    /// as soon as it is accepted.
    #[arg(long, env = "SCO_GATEWAY_MAX_CONNECTIONS", default_value_t = 10_000)]
    pub max_connections: usize,
    /// Watch only this namespace (default: all).
    #[arg(long, env = "SCO_NAMESPACE")]
    pub namespace: Option<String>,
    /// This replica's name, in audit lines.
    #[arg(long, env = "POD_NAME", default_value = "gateway")]
    pub replica: String,
    /// Log JSON lines instead of text.
    #[arg(long, env = "SCO_LOG_JSON")]
    pub log_json: bool,
}

/// A setting that cannot be used.
#[derive(Debug, thiserror::Error)]
#[error("{0}")]
pub struct ConfigError(String);

fn namespaced(text: &str, what: &str) -> Result<(String, String), ConfigError> {
    text.split_once('/')
        .filter(|(ns, name)| !ns.is_empty() && !name.is_empty())
        .map(|(ns, name)| (ns.to_string(), name.to_string()))
        .ok_or_else(|| ConfigError(format!("{what} must be namespace/name, not {text:?}")))
}

fn time(text: &str, what: &str) -> Result<Duration, ConfigError> {
    duration::parse(text)
        .ok_or_else(|| ConfigError(format!("{what} {text:?} is not a duration such as 30s")))
}

fn route_table(args: &GatewayArgs) -> Result<route::RouteTable, ConfigError> {
    let mut groups = BTreeMap::new();
    for entry in &args.route_groups {
        let (group, target) = entry.split_once('=').ok_or_else(|| {
            ConfigError(format!(
                "--route-group {entry:?} must be GROUP=NAMESPACE/NAME"
            ))
        })?;
        let (namespace, name) = namespaced(target, "--route-group's target")?;
        groups.insert(group.to_string(), route::ClusterRef { namespace, name });
    }
    Ok(route::RouteTable {
        default_namespace: args.default_namespace.clone(),
        default_cluster: args.default_cluster.clone(),
        groups,
    })
}

/// The most `--max-connections` may be (the chart's schema says the same).
const MAX_CONNECTIONS_BOUND: usize = 1_000_000;

/// Runs the gateway until SIGTERM or SIGINT, then drains.
pub async fn run(args: GatewayArgs) -> Result<(), Box<dyn std::error::Error>> {
    let claim_wait = time(&args.claim_wait, "--claim-wait")?;
    let sweep_period = time(&args.sweep_period, "--sweep-period")?;
    let grace = time(&args.drain_grace, "--drain-grace")?;
    let routes = route_table(&args)?;
    if !(1..=MAX_CONNECTIONS_BOUND).contains(&args.max_connections) {
        return Err(ConfigError(format!(
            "--max-connections must be from 1 to {MAX_CONNECTIONS_BOUND}"
        ))
        .into());
    }
    if args.tls_secret.is_none() && !args.plaintext {
        return Err(ConfigError(
            "set --tls-secret, or --plaintext behind a proxy that terminates TLS".into(),
        )
        .into());
    }
    let client = kube::Client::try_default().await?;
    let metrics = metrics::GatewayMetrics::new()?;
    let (directory, _watches) =
        directory::Directory::start(client.clone(), args.namespace.as_deref());

    let jwt = jwt_issuer(&args, &client)?;
    let review_audience = Some(args.token_review_audience.clone()).filter(|a| !a.is_empty());
    let authn = authn::Authenticator::new(Some(client.clone()), review_audience, jwt);
    let external = match &args.ext_authz {
        Some(address) => Some(ext_authz::ExtAuthz::new(
            address,
            time(&args.ext_authz_timeout, "--ext-authz-timeout")?,
        )?),
        None => None,
    };
    let authz = authz::Authorizer::new(client.clone(), external);
    let dedicated = Arc::new(dedicated::Dedicated::new(
        directory.clone(),
        args.max_dedicated_per_user,
        claim_wait,
        metrics.clone(),
    ));
    let (audit, audit_writer) = audit::AuditLog::start(args.audit_file.clone())?;
    let gateway = Arc::new(proxy::Gateway::new(
        authn,
        authz,
        routes,
        directory.clone(),
        dedicated.clone(),
        audit,
        metrics.clone(),
        args.audit_sql,
        args.replica.clone(),
        args.max_message_bytes,
    ));
    let transport = transport(&args, &client)?;

    let shutdown = CancellationToken::new();
    let admin = spawn_admin(&args, &metrics, &directory, &shutdown);
    spawn_sweeper(dedicated, directory, sweep_period, shutdown.clone());
    let signals = shutdown.clone();
    tokio::spawn(async move {
        crate::telemetry::wait_for_signal().await;
        tracing::info!("shutting down: draining calls");
        signals.cancel();
    });

    let listener = tokio::net::TcpListener::bind(args.listen).await?;
    tracing::info!(addr = %args.listen, tls = args.tls_secret.is_some(), "gateway listening");
    server::serve(
        listener,
        transport,
        gateway,
        args.max_connections,
        shutdown.clone(),
        grace,
    )
    .await;
    shutdown.cancel();
    let _ = admin.await;
    // The writer ends once the last call's record is written.
    let _ = tokio::time::timeout(Duration::from_secs(5), audit_writer).await;
    Ok(())
}

/// The JWT issuer the flags name, its keys kept fresh from a Secret or a URL; `None` without
/// `--jwt-issuer`.
fn jwt_issuer(
    args: &GatewayArgs,
    client: &kube::Client,
) -> Result<Option<authn::JwtIssuer>, ConfigError> {
    let Some(issuer) = &args.jwt_issuer else {
        return Ok(None);
    };
    let keys = Arc::new(RwLock::new(JwkSet { keys: Vec::new() }));
    match (&args.jwt_jwks_secret, &args.jwt_jwks_url) {
        (Some(secret), _) => {
            let (namespace, name) = namespaced(secret, "--jwt-jwks-secret")?;
            tokio::spawn(jwks::watch_secret(
                client.clone(),
                namespace,
                name,
                keys.clone(),
            ));
        }
        (None, Some(url)) => {
            let url: http::Uri = url
                .parse()
                .map_err(|e| ConfigError(format!("--jwt-jwks-url {url:?}: {e}")))?;
            tokio::spawn(jwks::poll_url(url, jwks::URL_REFRESH, keys.clone()));
        }
        (None, None) => {
            return Err(ConfigError(
                "--jwt-issuer needs --jwt-jwks-secret or --jwt-jwks-url".into(),
            ));
        }
    }
    Ok(Some(authn::JwtIssuer {
        issuer: issuer.clone(),
        audience: args.jwt_audience.clone(),
        username_claim: args.jwt_username_claim.clone(),
        groups_claim: args.jwt_groups_claim.clone(),
        username_prefix: args.jwt_prefix.clone(),
        groups_prefix: args.jwt_prefix.clone(),
        namespace_claim: args.namespace_claim.clone(),
        keys,
    }))
}

/// TLS with the certificate of `--tls-secret` (kept fresh), or plaintext.
fn transport(args: &GatewayArgs, client: &kube::Client) -> Result<server::Transport, ConfigError> {
    Ok(match &args.tls_secret {
        Some(secret) => {
            let (namespace, name) = namespaced(secret, "--tls-secret")?;
            let (certificate, _) = tls::Certificate::watch(client.clone(), &namespace, &name);
            server::Transport::Tls(certificate)
        }
        None => server::Transport::Plaintext,
    })
}

/// The admin endpoint: metrics, readiness (watches synced, not draining), liveness.
fn spawn_admin(
    args: &GatewayArgs,
    metrics: &metrics::GatewayMetrics,
    directory: &directory::Directory,
    shutdown: &CancellationToken,
) -> tokio::task::JoinHandle<std::io::Result<()>> {
    let ready_directory = directory.clone();
    let stopping = shutdown.clone();
    let rendered = metrics.clone();
    tokio::spawn(admin::serve(
        args.admin_addr,
        AdminState {
            metrics: Arc::new(move || rendered.render()),
            ready: Arc::new(move || {
                if stopping.is_cancelled() {
                    Err("draining".into())
                } else if ready_directory.synced() {
                    Ok(())
                } else {
                    Err("watches not synced yet".into())
                }
            }),
            live: Arc::new(|| Ok(())),
        },
        shutdown.clone().cancelled_owned(),
    ))
}

/// Runs the dedicated-claim janitor every `period` once the watches are synced (refreshes claims
/// in use, releases idle ones), until shutdown.
fn spawn_sweeper(
    dedicated: Arc<dedicated::Dedicated>,
    directory: directory::Directory,
    period: Duration,
    shutdown: CancellationToken,
) {
    tokio::spawn(async move {
        let mut every = tokio::time::interval(period);
        while !shutdown.is_cancelled() {
            every.tick().await;
            if directory.synced() {
                dedicated.sweep().await;
            }
        }
    });
}
