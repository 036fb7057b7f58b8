//! The world's certificates and keys, made with the `openssl` command.

use std::path::Path;

use sco_e2e::{certs, openssl};

/// How long the world's certificates last.
const DAYS: u32 = 30;

/// Creates the CA, apiserver serving cert, admin client cert and service-account key in `dir`.
pub fn generate(dir: &Path) -> anyhow::Result<()> {
    certs::ca(dir, "/CN=sco-world-ca", DAYS)?;
    certs::signed(
        dir,
        "apiserver",
        "/CN=kube-apiserver",
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=serverAuth\n\
         subjectAltName=IP:10.244.0.1,IP:10.96.0.1,IP:127.0.0.1,DNS:kubernetes,DNS:kubernetes.default,\
         DNS:kubernetes.default.svc,DNS:kubernetes.default.svc.cluster.local,DNS:localhost\n",
        DAYS,
    )?;
    certs::signed(
        dir,
        "admin",
        "/O=system:masters/CN=sco-admin",
        "basicConstraints=CA:FALSE\nkeyUsage=digitalSignature,keyEncipherment\nextendedKeyUsage=clientAuth\n",
        DAYS,
    )?;
    openssl(dir, &["genrsa", "-out", "sa.key", "2048"])?;
    openssl(dir, &["rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub"])?;
    Ok(())
}

/// A kubeconfig with embedded credentials for the admin user against `server`.
pub fn kubeconfig(dir: &Path, server: &str) -> anyhow::Result<String> {
    use base64::Engine;
    let b64 = |name: &str| -> anyhow::Result<String> {
        Ok(base64::engine::general_purpose::STANDARD.encode(std::fs::read(dir.join(name))?))
    };
    Ok(format!(
        "apiVersion: v1\nkind: Config\nclusters:\n- name: world\n  cluster:\n    server: {server}\n    certificate-authority-data: {}\n\
         users:\n- name: admin\n  user:\n    client-certificate-data: {}\n    client-key-data: {}\n\
         contexts:\n- name: world\n  context: {{cluster: world, user: admin, namespace: default}}\ncurrent-context: world\n",
        b64("ca.crt")?,
        b64("admin.crt")?,
        b64("admin.key")?
    ))
}
