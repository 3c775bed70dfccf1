//! TLS for every broker-backed link. Each link takes the same three
//! settings — `ca_file` (the CA that signed the server's certificate, when it is not
//! one of the system's roots),
//! `cert_file` and `key_file` (a client certificate for mutual TLS) — as PEM
//! files, with relative paths taken from the runtime config's directory.
//! They are read and checked when the runtime config is loaded, so a wrong
//! file is reported at its key and line rather than as a failed connection.
//! One rustls stack, on ring, serves every client.

use super::Invalid;
use rustls_pki_types::pem::PemObject as _;
use rustls_pki_types::{CertificateDer, PrivateKeyDer};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Once};

/// The certificate material a link connects with, as PEM bytes (the form
/// every broker client takes).
#[derive(Clone, Default)]
pub struct TlsFiles {
    /// The CA certificates that sign the server's certificate.
    pub ca: Option<Vec<u8>>,
    /// A client certificate chain and its private key, for mutual TLS.
    pub client: Option<(Vec<u8>, Vec<u8>)>,
}

impl TlsFiles {
    /// Reads and checks the files a link's settings name; `base` is the
    /// runtime config's directory, and relative paths are made absolute
    /// against it in place.
    pub fn read(
        base: &Path,
        ca_file: &mut Option<PathBuf>,
        cert_file: &mut Option<PathBuf>,
        key_file: &mut Option<PathBuf>,
    ) -> Result<TlsFiles, Invalid> {
        for file in [&mut *ca_file, &mut *cert_file, &mut *key_file]
            .into_iter()
            .flatten()
        {
            *file = base.join(&*file);
        }
        let ca = match ca_file {
            Some(path) => Some(read_certificates("ca_file", path)?),
            None => None,
        };
        let client = match (cert_file, key_file) {
            (Some(cert), Some(key)) => Some((
                read_certificates("cert_file", cert)?,
                read_key("key_file", key)?,
            )),
            (None, None) => None,
            (Some(_), None) => return Err(Invalid::new("cert_file", "needs `key_file` too")),
            (None, Some(_)) => return Err(Invalid::new("key_file", "needs `cert_file` too")),
        };
        Ok(TlsFiles { ca, client })
    }

    /// Refuses TLS files on a plaintext URL: `tls` says whether the URL is
    /// a TLS one, `scheme` is the scheme that would make it so.
    pub fn for_url(self, tls: bool, scheme: &str) -> Result<TlsFiles, Invalid> {
        match self.given_key() {
            Some(key) if !tls => Err(Invalid::new(
                key,
                format!("TLS files need `url` to start with {scheme}"),
            )),
            _ => Ok(self),
        }
    }

    /// The first TLS file's key, if any file was given.
    pub fn given_key(&self) -> Option<&'static str> {
        if self.ca.is_some() {
            Some("ca_file")
        } else if self.client.is_some() {
            Some("cert_file")
        } else {
            None
        }
    }

    /// A rustls client configuration trusting the system's roots and `ca`,
    /// presenting the client certificate if there is one.
    pub fn client_config(&self) -> anyhow::Result<Arc<rustls::ClientConfig>> {
        let mut roots = rustls::RootCertStore::empty();
        let native = rustls_native_certs::load_native_certs();
        roots.add_parsable_certificates(native.certs);
        if let Some(ca) = &self.ca {
            for cert in CertificateDer::pem_slice_iter(ca) {
                roots.add(cert?)?;
            }
        }
        let builder = rustls::ClientConfig::builder().with_root_certificates(roots);
        let config = match &self.client {
            Some((cert, key)) => builder.with_client_auth_cert(
                CertificateDer::pem_slice_iter(cert).collect::<Result<_, _>>()?,
                PrivateKeyDer::from_pem_slice(key)?,
            )?,
            None => builder.with_no_client_auth(),
        };
        Ok(Arc::new(config))
    }
}

impl std::fmt::Debug for TlsFiles {
    /// Says what is there, never the key.
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TlsFiles")
            .field("ca", &self.ca.is_some())
            .field("client_certificate", &self.client.is_some())
            .finish()
    }
}

/// Makes ring the process's rustls provider, once, before any link
/// connects; the broker clients build their configurations from it.
pub(crate) fn install_crypto_provider() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // Fails only if a provider is installed already, which is as good.
        let _ = rustls::crypto::ring::default_provider().install_default();
    });
}

fn read(key: &'static str, path: &Path) -> Result<Vec<u8>, Invalid> {
    std::fs::read(path)
        .map_err(|e| Invalid::new(key, format!("cannot read `{}`: {e}", path.display())))
}

fn read_certificates(key: &'static str, path: &Path) -> Result<Vec<u8>, Invalid> {
    let pem = read(key, path)?;
    let certs = CertificateDer::pem_slice_iter(&pem)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| Invalid::new(key, format!("`{}` is not PEM: {e}", path.display())))?;
    if certs.is_empty() {
        return Err(Invalid::new(
            key,
            format!("`{}` holds no PEM certificate", path.display()),
        ));
    }
    Ok(pem)
}

fn read_key(key: &'static str, path: &Path) -> Result<Vec<u8>, Invalid> {
    let pem = read(key, path)?;
    PrivateKeyDer::from_pem_slice(&pem).map_err(|e| {
        Invalid::new(
            key,
            format!("`{}` holds no PEM private key: {e}", path.display()),
        )
    })?;
    Ok(pem)
}
