//! The gateway as the world runs it (installed by `e2e/world.sh`): its address, the Secrets it
//! reads (TLS certificate, JWT issuer keys) made from a fresh test CA and key, user tokens, and
//! its replicas' metrics. Shared by the gateway e2e tests and the gateway benchmark.

use std::path::{Path, PathBuf};
use std::time::Duration;

use base64::Engine;
use k8s_openapi::api::core::v1::{Pod, Secret};
use kube::Client;
use kube::api::{Api, ListParams, PostParams};
use serde_json::{Value, json};

use crate::{certs, openssl};

/// The gateway Service's name inside the world.
pub const HOST: &str = "sco-spark-connect-operator-gateway.sco-system.svc.cluster.local";
/// The Secret with the gateway's certificate.
pub const TLS_SECRET: &str = "sco-gateway-tls";
/// The Secret with the JWT issuer's keys.
pub const JWKS_SECRET: &str = "sco-gateway-jwks";
/// The JWT issuer the gateway trusts.
pub const ISSUER: &str = "https://idp.sco.test";
/// The audience of gateway tokens.
pub const AUDIENCE: &str = "spark-connect-gateway";
/// Label of the gateway's pods.
pub const POD_SELECTOR: &str = "app.kubernetes.io/name=spark-connect-operator-gateway";

/// What a client needs: the CA file to trust, and the JWT issuer's signing key (PKCS#8 DER).
pub struct Pki {
    /// CA certificate (PEM) that signed the gateway's certificate.
    pub ca: PathBuf,
    /// EC P-256 key the test issuer signs JWTs with.
    pub jwt_key: Vec<u8>,
}

/// An EC P-256 signing key: (PKCS#8 DER, a JWKS with its public half).
fn make_jwt_key(dir: &Path) -> anyhow::Result<(Vec<u8>, Value)> {
    certs::ec_key(dir, "jwt.ec")?;
    openssl(
        dir,
        &[
            "pkcs8", "-topk8", "-nocrypt", "-in", "jwt.ec", "-outform", "DER", "-out", "jwt.der",
        ],
    )?;
    openssl(
        dir,
        &[
            "ec",
            "-in",
            "jwt.ec",
            "-pubout",
            "-outform",
            "DER",
            "-out",
            "jwt.pub.der",
        ],
    )?;
    let public = std::fs::read(dir.join("jwt.pub.der"))?;
    // The SubjectPublicKeyInfo ends with the uncompressed point 0x04 || x || y.
    let point = public
        .get(public.len().saturating_sub(65)..)
        .filter(|p| p.len() == 65 && p[0] == 4)
        .ok_or_else(|| anyhow::anyhow!("no uncompressed EC point in the public key"))?;
    let b64 = |b: &[u8]| base64::engine::general_purpose::URL_SAFE_NO_PAD.encode(b);
    let jwks = json!({"keys": [{"kty": "EC", "crv": "P-256", "kid": "test-1", "alg": "ES256", "use": "sig",
        "x": b64(&point[1..33]), "y": b64(&point[33..65])}]});
    Ok((std::fs::read(dir.join("jwt.der"))?, jwks))
}

/// A JWT from the test issuer for `subject` of `team`, for `audience`, expiring in
/// `expires_in` seconds (negative: already expired).
pub fn sign_jwt(
    key: &[u8],
    subject: &str,
    team: &str,
    audience: &str,
    expires_in: i64,
) -> anyhow::Result<String> {
    let mut header = jsonwebtoken::Header::new(jsonwebtoken::Algorithm::ES256);
    header.kid = Some("test-1".into());
    let exp = jsonwebtoken::get_current_timestamp() as i64 + expires_in;
    let claims = json!({"iss": ISSUER, "aud": audience, "sub": subject, "team": team, "exp": exp,
        "groups": ["data-science"]});
    Ok(jsonwebtoken::encode(
        &header,
        &claims,
        &jsonwebtoken::EncodingKey::from_ec_der(key),
    )?)
}

/// Replaces Secret `name` in the operator's namespace.
async fn put_secret(client: &Client, name: &str, type_: &str, data: Value) -> anyhow::Result<()> {
    let api: Api<Secret> = Api::namespaced(client.clone(), &crate::operator::namespace());
    let _ = api.delete(name, &Default::default()).await;
    crate::poll::until(
        "the old Secret to go",
        Duration::from_secs(20),
        Duration::from_millis(200),
        || async { api.get_opt(name).await.ok().flatten().is_none() },
    )
    .await?;
    let secret: Secret = serde_json::from_value(
        json!({"metadata": {"name": name}, "type": type_, "stringData": data}),
    )?;
    api.create(&PostParams::default(), &secret).await?;
    Ok(())
}

/// A fresh CA, serving certificate and JWT key under `state`, and the gateway's Secrets made
/// from them (the gateway watches both and serves them at once).
pub async fn prepare(client: &Client, state: &Path) -> anyhow::Result<Pki> {
    let dir = state.join("gateway-test-pki");
    let _ = std::fs::remove_dir_all(&dir);
    let short = HOST.trim_end_matches(".cluster.local");
    certs::serving(&dir, "/CN=sco gateway test CA", &[HOST, short], 2)?;
    let (jwt_key, jwks) = make_jwt_key(&dir)?;
    let read = |f: &str| std::fs::read_to_string(dir.join(f));
    put_secret(
        client,
        TLS_SECRET,
        "kubernetes.io/tls",
        json!({"tls.crt": read("tls.crt")?, "tls.key": read("tls.key")?}),
    )
    .await?;
    put_secret(
        client,
        JWKS_SECRET,
        "Opaque",
        json!({"jwks.json": jwks.to_string()}),
    )
    .await?;
    Ok(Pki {
        ca: dir.join("ca.crt"),
        jwt_key,
    })
}

/// The gateway's replicas: (pod name, pod IP).
pub async fn replicas(client: &Client) -> anyhow::Result<Vec<(String, String)>> {
    let pods: Api<Pod> = Api::namespaced(client.clone(), &crate::operator::namespace());
    Ok(pods
        .list(&ListParams::default().labels(POD_SELECTOR))
        .await?
        .items
        .into_iter()
        .filter(|p| p.metadata.deletion_timestamp.is_none())
        .filter_map(|p| Some((p.metadata.name?, p.status?.pod_ip?)))
        .collect())
}

/// A replica's metrics, read inside the world.
pub fn metrics(world_bin: &Path, state: &Path, ip: &str) -> String {
    crate::exec(
        world_bin,
        state,
        &["curl", "-s", &format!("http://{ip}:8080/metrics")],
    )
    .map(|out| String::from_utf8_lossy(&out.stdout).into_owned())
    .unwrap_or_default()
}
