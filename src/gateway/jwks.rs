//! Where the JWT issuer's keys come from: a Secret (key `jwks.json`, watched, so rotated keys
//! apply at once) or the issuer's JWKS URL (fetched at start and then periodically). A failed
//! read keeps the keys already loaded.

use std::sync::Arc;
use std::time::Duration;

use http_body_util::{BodyExt, Empty, Limited};
use jsonwebtoken::jwk::JwkSet;
use tokio::sync::RwLock;

use super::secret_watch;

/// How often a JWKS URL is fetched again.
pub const URL_REFRESH: Duration = Duration::from_secs(300);
/// Largest JWKS document accepted.
const MAX_JWKS_BYTES: usize = 1 << 20;

/// Keeps `keys` filled from `jwks.json` in Secret `namespace/name`.
pub async fn watch_secret(
    client: kube::Client,
    namespace: String,
    name: String,
    keys: Arc<RwLock<JwkSet>>,
) {
    secret_watch::each_version(client, &namespace, &name, "JWKS", |secret| {
        let (keys, name) = (keys.clone(), name.clone());
        async move {
            let document = secret
                .data
                .as_ref()
                .and_then(|d| d.get("jwks.json"))
                .map(|v| v.0.clone());
            match document {
                Some(bytes) => load(&keys, &bytes, &name).await,
                None => tracing::error!(secret = %name, "the JWKS Secret has no jwks.json key"),
            }
        }
    })
    .await;
}

/// Keeps `keys` filled from the JWKS at `url`, fetched every `every`.
pub async fn poll_url(url: http::Uri, every: Duration, keys: Arc<RwLock<JwkSet>>) {
    let label = url.to_string();
    loop {
        match fetch(&url).await {
            Ok(bytes) => load(&keys, &bytes, &label).await,
            Err(e) => {
                tracing::warn!(url = %label, error = %e, "fetching the JWKS failed; keeping the keys loaded before")
            }
        }
        tokio::time::sleep(every).await;
    }
}

async fn load(keys: &RwLock<JwkSet>, bytes: &[u8], source: &str) {
    match serde_json::from_slice::<JwkSet>(bytes) {
        Ok(set) => {
            tracing::info!(
                source,
                keys = set.keys.len(),
                "loaded the JWT issuer's keys"
            );
            *keys.write().await = set;
        }
        Err(e) => tracing::error!(source, error = %e, "not a JWKS; keeping the keys loaded before"),
    }
}

/// GETs `url` (https with the system's roots, or http), at most 1 MiB, within 10 seconds.
pub async fn fetch(url: &http::Uri) -> Result<Vec<u8>, String> {
    let connector = hyper_rustls::HttpsConnectorBuilder::new()
        .with_provider_and_native_roots(Arc::new(rustls::crypto::ring::default_provider()))
        .map_err(|e| format!("loading the system's root certificates: {e}"))?
        .https_or_http()
        .enable_http1()
        .build();
    let client = hyper_util::client::legacy::Client::builder(hyper_util::rt::TokioExecutor::new())
        .build::<_, Empty<bytes::Bytes>>(connector);
    let response = tokio::time::timeout(Duration::from_secs(10), client.get(url.clone()))
        .await
        .map_err(|_| "no answer within 10 s".to_string())?
        .map_err(|e| e.to_string())?;
    if !response.status().is_success() {
        return Err(format!("HTTP {}", response.status()));
    }
    let body = Limited::new(response.into_body(), MAX_JWKS_BYTES);
    let bytes = tokio::time::timeout(Duration::from_secs(10), body.collect())
        .await
        .map_err(|_| "the body did not arrive within 10 s".to_string())?
        .map_err(|e| format!("reading the body: {e}"))?;
    Ok(bytes.to_bytes().to_vec())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn keys_are_fetched_from_a_jwks_url_and_a_bad_document_keeps_them() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0")
            .await
            .expect("bind");
        let address = listener.local_addr().expect("address");
        let good = r#"{"keys":[{"kty":"oct","kid":"k1","alg":"HS256","k":"c2VjcmV0"}]}"#;
        let app = axum::Router::new()
            .route("/jwks", axum::routing::get(move || async move { good }))
            .route("/broken", axum::routing::get(|| async { "not json" }));
        tokio::spawn(async move { axum::serve(listener, app).await });
        let keys = Arc::new(RwLock::new(JwkSet { keys: Vec::new() }));
        let url: http::Uri = format!("http://{address}/jwks").parse().expect("url");
        let bytes = fetch(&url).await.expect("fetched");
        load(&keys, &bytes, "test").await;
        assert_eq!(keys.read().await.keys.len(), 1);
        let broken: http::Uri = format!("http://{address}/broken").parse().expect("url");
        let bytes = fetch(&broken).await.expect("fetched");
        load(&keys, &bytes, "test").await;
        assert_eq!(
            keys.read().await.keys.len(),
            1,
            "a bad document keeps the keys"
        );
        let missing: http::Uri = format!("http://{address}/none").parse().expect("url");
        assert!(fetch(&missing).await.is_err_and(|e| e.contains("404")));
    }
}
