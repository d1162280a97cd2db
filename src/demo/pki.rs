//! Throwaway certificates for the demo and the tests: a private CA with a server
//! certificate it signed, or a self-signed server certificate (made with rcgen).

use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
    KeyUsagePurpose,
};
use rustls::pki_types::{CertificateDer, PrivateKeyDer, PrivatePkcs8KeyDer};
use std::sync::Arc;

/// A server certificate and key, with the CA to trust it by (for a self-signed one, the
/// certificate itself).
pub struct ServerIdentity {
    /// PEM of the CA certificate a client should trust.
    pub ca_pem: String,
    /// The server's certificate chain (DER).
    pub(crate) chain: Vec<CertificateDer<'static>>,
    /// The server's private key (PKCS#8 DER).
    pub(crate) key: Vec<u8>,
}

/// Why certificates could not be made.
#[derive(Debug, thiserror::Error)]
pub enum PkiError {
    /// rcgen failed.
    #[error("certificate generation: {0}")]
    Rcgen(#[from] rcgen::Error),
    /// rustls refused the result.
    #[error("TLS server setup: {0}")]
    Rustls(#[from] rustls::Error),
}

fn leaf_params(names: &[&str]) -> Result<CertificateParams, rcgen::Error> {
    let mut params =
        CertificateParams::new(names.iter().map(|n| n.to_string()).collect::<Vec<_>>())?;
    params.distinguished_name.push(
        DnType::CommonName,
        names.first().copied().unwrap_or("localhost"),
    );
    params.use_authority_key_identifier_extension = true;
    params.key_usages.push(KeyUsagePurpose::DigitalSignature);
    params
        .extended_key_usages
        .push(ExtendedKeyUsagePurpose::ServerAuth);
    Ok(params)
}

/// A new private CA and a server certificate for `names` (DNS names or IP addresses).
pub fn private_ca(names: &[&str]) -> Result<ServerIdentity, PkiError> {
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "roomhook throwaway CA");
    ca.key_usages.push(KeyUsagePurpose::KeyCertSign);
    ca.key_usages.push(KeyUsagePurpose::CrlSign);
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);
    let key = KeyPair::generate()?;
    let cert = leaf_params(names)?.signed_by(&key, &issuer)?;
    Ok(ServerIdentity {
        ca_pem: ca_cert.pem(),
        chain: vec![cert.der().clone()],
        key: key.serialize_der(),
    })
}

/// A self-signed server certificate for `names` (what Control Hub refuses, and roomhook too).
pub fn self_signed(names: &[&str]) -> Result<ServerIdentity, PkiError> {
    let key = KeyPair::generate()?;
    let cert = leaf_params(names)?.self_signed(&key)?;
    Ok(ServerIdentity {
        ca_pem: cert.pem(),
        chain: vec![cert.der().clone()],
        key: key.serialize_der(),
    })
}

/// A client certificate (PEM) from a private CA of its own, for mutual TLS.
pub struct ClientIdentity {
    /// The CA that a server should accept client certificates from.
    pub ca_pem: String,
    /// The client certificate.
    pub cert_pem: String,
    /// Its private key (PKCS#8).
    pub key_pem: String,
}

/// A new private CA and a client certificate it signed for `name`.
pub fn client_identity(name: &str) -> Result<ClientIdentity, PkiError> {
    let mut ca = CertificateParams::new(Vec::<String>::new())?;
    ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    ca.distinguished_name
        .push(DnType::CommonName, "roomhook throwaway client CA");
    ca.key_usages.push(KeyUsagePurpose::KeyCertSign);
    let ca_key = KeyPair::generate()?;
    let ca_cert = ca.self_signed(&ca_key)?;
    let issuer = Issuer::new(ca, ca_key);
    let mut params = CertificateParams::new(vec![name.to_string()])?;
    params.distinguished_name.push(DnType::CommonName, name);
    params.use_authority_key_identifier_extension = true;
    params.key_usages.push(KeyUsagePurpose::DigitalSignature);
    params
        .extended_key_usages
        .push(ExtendedKeyUsagePurpose::ClientAuth);
    let key = KeyPair::generate()?;
    let cert = params.signed_by(&key, &issuer)?;
    Ok(ClientIdentity {
        ca_pem: ca_cert.pem(),
        cert_pem: cert.pem(),
        key_pem: key.serialize_pem(),
    })
}

impl ServerIdentity {
    /// A rustls server configuration offering http/1.1.
    pub fn server_config(&self) -> Result<Arc<rustls::ServerConfig>, PkiError> {
        self.config(None)
    }

    /// Like [`server_config`](Self::server_config), but requiring a client certificate
    /// issued by the CA in `client_ca_pem` (mutual TLS).
    pub fn server_config_requiring_client(
        &self,
        client_ca_pem: &str,
    ) -> Result<Arc<rustls::ServerConfig>, PkiError> {
        self.config(Some(client_ca_pem))
    }

    fn config(&self, client_ca_pem: Option<&str>) -> Result<Arc<rustls::ServerConfig>, PkiError> {
        use rustls::pki_types::pem::PemObject;
        crate::tls::install_crypto_provider();
        let key = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(self.key.clone()));
        let builder = rustls::ServerConfig::builder();
        let builder = match client_ca_pem {
            None => builder.with_no_client_auth(),
            Some(pem) => {
                let mut roots = rustls::RootCertStore::empty();
                for cert in CertificateDer::pem_slice_iter(pem.as_bytes()) {
                    let cert = cert.map_err(|e| rustls::Error::General(e.to_string()))?;
                    roots.add(cert)?;
                }
                let verifier = rustls::server::WebPkiClientVerifier::builder(Arc::new(roots))
                    .build()
                    .map_err(|e| rustls::Error::General(e.to_string()))?;
                builder.with_client_cert_verifier(verifier)
            }
        };
        let mut cfg = builder.with_single_cert(self.chain.clone(), key)?;
        cfg.alpn_protocols = vec![b"http/1.1".to_vec()];
        Ok(Arc::new(cfg))
    }
}
