//! Test certificates made with the `openssl` command: EC P-256 keys, a CA, and certificates it
//! signs. The world's PKI and the gateway's test CA are both made with these.

use std::path::Path;

use crate::openssl;

/// An EC P-256 private key (SEC1 PEM) in `dir/name`.
pub fn ec_key(dir: &Path, name: &str) -> anyhow::Result<()> {
    openssl(
        dir,
        &[
            "ecparam",
            "-name",
            "prime256v1",
            "-genkey",
            "-noout",
            "-out",
            name,
        ],
    )
}

/// A self-signed CA for `subject`, valid `days`: `ca.key` and `ca.crt` in `dir`.
pub fn ca(dir: &Path, subject: &str, days: u32) -> anyhow::Result<()> {
    std::fs::create_dir_all(dir)?;
    ec_key(dir, "ca.key")?;
    openssl(
        dir,
        &[
            "req",
            "-x509",
            "-new",
            "-key",
            "ca.key",
            "-days",
            &days.to_string(),
            "-subj",
            subject,
            "-out",
            "ca.crt",
        ],
    )
}

/// A key and a certificate for `subject` signed by the CA in `dir`, with the X.509 extensions
/// `extensions` (openssl extfile lines), valid `days`: `<name>.key` and `<name>.crt`.
pub fn signed(
    dir: &Path,
    name: &str,
    subject: &str,
    extensions: &str,
    days: u32,
) -> anyhow::Result<()> {
    let (key, ext, csr, crt) = (
        format!("{name}.key"),
        format!("{name}.ext"),
        format!("{name}.csr"),
        format!("{name}.crt"),
    );
    ec_key(dir, &key)?;
    std::fs::write(dir.join(&ext), extensions)?;
    openssl(
        dir,
        &["req", "-new", "-key", &key, "-subj", subject, "-out", &csr],
    )?;
    openssl(
        dir,
        &[
            "x509",
            "-req",
            "-in",
            &csr,
            "-CA",
            "ca.crt",
            "-CAkey",
            "ca.key",
            "-CAcreateserial",
            "-days",
            &days.to_string(),
            "-extfile",
            &ext,
            "-out",
            &crt,
        ],
    )
}

/// A CA for `ca_subject` and a serving certificate it signs for the DNS `names`, both valid
/// `days`: `ca.key`, `ca.crt`, `tls.key` and `tls.crt` in `dir`.
pub fn serving(dir: &Path, ca_subject: &str, names: &[&str], days: u32) -> anyhow::Result<()> {
    ca(dir, ca_subject, days)?;
    let names: Vec<String> = names.iter().map(|n| format!("DNS:{n}")).collect();
    signed(
        dir,
        "tls",
        "/CN=gateway",
        &format!("subjectAltName={}\n", names.join(",")),
        days,
    )
}
