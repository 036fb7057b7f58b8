//! The listener's certificate: read from a `kubernetes.io/tls` Secret (`tls.crt`, `tls.key`)
//! through a watch, so a renewed certificate is served to new connections at once, without a
//! restart. Until a usable certificate exists, TLS handshakes fail (and say so in the log).

use std::sync::{Arc, RwLock};

use kube::Client;
use rustls::ServerConfig;
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::secret_watch;

/// The certificate currently served.
#[derive(Clone, Default)]
pub struct Certificate {
    current: Arc<RwLock<Option<Arc<ServerConfig>>>>,
}

/// Builds a TLS server configuration (HTTP/2 only, as gRPC needs) from PEM text.
pub fn server_config(cert_pem: &[u8], key_pem: &[u8]) -> Result<ServerConfig, String> {
    let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_slice_iter(cert_pem)
        .collect::<Result<_, _>>()
        .map_err(|e| format!("tls.crt is not PEM certificates: {e}"))?;
    if chain.is_empty() {
        return Err("tls.crt holds no certificate".into());
    }
    let key = PrivateKeyDer::from_pem_slice(key_pem)
        .map_err(|e| format!("tls.key is not a PEM private key: {e}"))?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(|e| e.to_string())?
        .with_no_client_auth()
        .with_single_cert(chain, key)
        .map_err(|e| format!("the certificate and key do not fit together: {e}"))?;
    config.alpn_protocols = vec![b"h2".to_vec()];
    Ok(config)
}

impl Certificate {
    /// The configuration for a new connection, if a certificate is loaded.
    pub fn current(&self) -> Option<Arc<ServerConfig>> {
        self.current.read().ok().and_then(|c| c.clone())
    }

    fn set(&self, config: Option<Arc<ServerConfig>>) {
        if let Ok(mut current) = self.current.write() {
            *current = config;
        }
    }

    /// Watches Secret `namespace/name` and serves what it holds.
    pub fn watch(
        client: Client,
        namespace: &str,
        name: &str,
    ) -> (Self, tokio::task::JoinHandle<()>) {
        let certificate = Self::default();
        let target = certificate.clone();
        let (namespace, name) = (namespace.to_string(), name.to_string());
        let task = tokio::spawn(async move {
            let label = format!("{namespace}/{name}");
            secret_watch::each_version(client, &namespace, &name, "TLS", |secret| {
                let data = secret.data.unwrap_or_default();
                let pem = |key: &str| data.get(key).map(|v| v.0.clone()).unwrap_or_default();
                match server_config(&pem("tls.crt"), &pem("tls.key")) {
                    Ok(config) => {
                        tracing::info!(secret = %label, "serving the certificate from the TLS Secret");
                        target.set(Some(Arc::new(config)));
                    }
                    Err(e) => tracing::error!(
                        secret = %label, error = %e,
                        "the TLS Secret is unusable; still serving the previous certificate, if any"
                    ),
                }
                std::future::ready(())
            })
            .await;
        });
        (certificate, task)
    }
}
