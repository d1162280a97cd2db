//! TLS trust: the public web roots plus a private CA from a PEM file, as rustls client
//! configurations (ring provider). Certificate checks are never switched off.

use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::{ClientConfig, RootCertStore};
use std::path::{Path, PathBuf};
use std::sync::Arc;

/// Trust anchors for a TLS connection: the public web roots plus an optional private CA;
/// and, for mutual TLS, the certificate this side presents.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub(crate) struct TlsTrust {
    /// PEM file with extra CA certificates.
    pub(crate) ca_file: Option<PathBuf>,
    /// Client certificate and key files (PEM), both checked at load.
    pub(crate) client_identity: Option<(PathBuf, PathBuf)>,
}

/// Installs the ring crypto provider for rustls once per process (idempotent).
pub fn install_crypto_provider() {
    let _ = rustls::crypto::ring::default_provider().install_default();
}

/// Why trust anchors could not be loaded.
#[derive(Debug, thiserror::Error)]
pub(crate) enum TlsError {
    /// The file could not be read or holds no PEM certificate (or key).
    #[error("cannot load {path}: {reason}")]
    CaFile {
        /// The file.
        path: PathBuf,
        /// What went wrong.
        reason: String,
    },
    /// rustls refused the configuration.
    #[error("TLS configuration: {0}")]
    Rustls(#[from] rustls::Error),
}

/// Largest PEM file (CA bundle, certificate chain) read.
const MAX_PEM_FILE: u64 = 1024 * 1024;

/// Reads every certificate of a PEM file (at least one).
pub(crate) fn load_pem_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, TlsError> {
    crate::files::check_regular_file(path, MAX_PEM_FILE).map_err(|e| TlsError::CaFile {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let bytes = std::fs::read(path).map_err(|e| TlsError::CaFile {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })?;
    let certs = CertificateDer::pem_slice_iter(&bytes)
        .collect::<Result<Vec<_>, _>>()
        .map_err(|e| TlsError::CaFile {
            path: path.to_path_buf(),
            reason: format!("not valid PEM: {e}"),
        })?;
    if certs.is_empty() {
        return Err(TlsError::CaFile {
            path: path.to_path_buf(),
            reason: "no CERTIFICATE block found".into(),
        });
    }
    Ok(certs)
}

/// Root store: webpki roots plus the private CA, if any.
pub(crate) fn root_store(trust: &TlsTrust) -> Result<RootCertStore, TlsError> {
    let mut roots = RootCertStore::empty();
    roots.extend(webpki_roots::TLS_SERVER_ROOTS.iter().cloned());
    if let Some(path) = &trust.ca_file {
        for cert in load_pem_certs(path)? {
            roots.add(cert)?;
        }
    }
    Ok(roots)
}

/// A client certificate chain and its private key (PEM files), for mutual TLS.
pub(crate) fn load_identity(
    cert: &Path,
    key: &Path,
) -> Result<(Vec<CertificateDer<'static>>, PrivateKeyDer<'static>), TlsError> {
    let certs = load_pem_certs(cert)?;
    crate::files::check_regular_file(key, crate::files::MAX_SECRET_FILE).map_err(|e| {
        TlsError::CaFile {
            path: key.to_path_buf(),
            reason: e.to_string(),
        }
    })?;
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::CaFile {
        path: key.to_path_buf(),
        reason: format!("no readable PEM private key: {e}"),
    })?;
    Ok((certs, key))
}

/// A client configuration that verifies the server against `trust`, offering `alpn`, and
/// presenting the client certificate when `trust` has one.
pub(crate) fn client_config(
    trust: &TlsTrust,
    alpn: &[&[u8]],
) -> Result<Arc<ClientConfig>, TlsError> {
    install_crypto_provider();
    let builder = ClientConfig::builder().with_root_certificates(root_store(trust)?);
    let mut cfg = match &trust.client_identity {
        Some((cert, key)) => {
            let (certs, key) = load_identity(cert, key)?;
            builder.with_client_auth_cert(certs, key)?
        }
        None => builder.with_no_client_auth(),
    };
    cfg.alpn_protocols = alpn.iter().map(|p| p.to_vec()).collect();
    Ok(Arc::new(cfg))
}

/// Subject, issuer and expiry of a DER certificate.
pub(crate) fn describe_cert(der: &[u8]) -> (String, String, String) {
    match x509_parser::parse_x509_certificate(der) {
        Ok((_, cert)) => {
            let not_after = cert.validity().not_after.to_datetime();
            (
                cert.subject().to_string(),
                cert.issuer().to_string(),
                not_after
                    .format(&time::format_description::well_known::Rfc3339)
                    .unwrap_or_default(),
            )
        }
        Err(e) => (
            format!("(unreadable certificate: {e})"),
            String::new(),
            String::new(),
        ),
    }
}
