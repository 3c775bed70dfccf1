//! https for the `--listen` endpoint: a certificate chain and its key as
//! PEM files, served with rustls on ring (the stack the broker links use).

use anyhow::Context as _;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::Path;
use std::sync::Arc;

/// A server configuration from a certificate chain and its private key.
/// Only HTTP/1.1 is offered (ALPN), the one protocol the endpoint speaks.
pub fn server_config(
    cert_file: &Path,
    key_file: &Path,
) -> anyhow::Result<Arc<rustls::ServerConfig>> {
    let certs: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(cert_file)
        .and_then(|certs| certs.collect())
        .with_context(|| {
            format!(
                "cannot read the TLS certificate file {}",
                cert_file.display()
            )
        })?;
    anyhow::ensure!(
        !certs.is_empty(),
        "the TLS certificate file {} holds no PEM certificate (`-----BEGIN CERTIFICATE-----`)",
        cert_file.display()
    );
    let key = PrivateKeyDer::from_pem_file(key_file).with_context(|| {
        format!(
            "cannot read a PEM private key from the TLS key file {}",
            key_file.display()
        )
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = rustls::ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .context("cannot set up TLS")?
        .with_no_client_auth()
        .with_single_cert(certs, key)
        .with_context(|| {
            format!(
                "the TLS certificate {} and key {} do not make a usable pair",
                cert_file.display(),
                key_file.display()
            )
        })?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}
