//! Mutual TLS for HBONE: TLS 1.3 only, ALPN `h2`, aws-lc-rs, and peers checked by SPIFFE
//! identity rather than host name.
//!
//! * Client side: the peer's chain must reach our trust roots and its SPIFFE identity must
//!   be one the destination is expected to have ([`verify::SpiffeServerVerifier`]).
//! * Server side: a client certificate is required, must chain to our roots, and must carry
//!   an identity of our trust domain ([`verify::SpiffeClientVerifier`]). Which identities
//!   may then do what is policy's business, not TLS's.

pub mod verify;

use std::sync::{Arc, OnceLock};

use rustls::crypto::CryptoProvider;
use rustls::pki_types::CertificateDer;
use rustls::server::ResolvesServerCert;
use rustls::sign::SingleCertAndKey;
use rustls::{ClientConfig, RootCertStore, ServerConfig};

use crate::cert::{CertManager, WorkloadCert};
use crate::identity::Identity;
pub use verify::{SpiffeClientVerifier, SpiffeServerVerifier, VerifyError};

/// The only application protocol HBONE speaks.
pub const ALPN_H2: &[u8] = b"h2";

/// Why a TLS configuration could not be built.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// rustls refused the configuration (no usable roots, bad versions, ...).
    #[error("building the TLS configuration: {0}")]
    Config(#[from] rustls::Error),
    /// A trust root is not a usable CA certificate.
    #[error("trust root rejected: {0}")]
    Root(String),
    /// The client verifier could not be built from the roots.
    #[error("building the client-certificate verifier: {0}")]
    Verifier(#[from] rustls::server::VerifierBuilderError),
}

/// aws-lc-rs restricted to TLS 1.3 suites: the one crypto provider the mesh uses.
pub fn provider() -> Arc<CryptoProvider> {
    static PROVIDER: OnceLock<Arc<CryptoProvider>> = OnceLock::new();
    PROVIDER
        .get_or_init(|| {
            let mut provider = rustls::crypto::aws_lc_rs::default_provider();
            provider
                .cipher_suites
                .retain(|suite| suite.tls13().is_some());
            Arc::new(provider)
        })
        .clone()
}

/// Installs aws-lc-rs as the process-wide rustls provider; binaries call it first thing,
/// so nothing in the process can fall back to another provider.
pub fn install_process_provider() {
    // Err means a provider is already installed; if it is not ours, ours is still used
    // explicitly everywhere in this crate.
    let _ = CryptoProvider::install_default((*provider()).clone());
}

/// Serves, at each handshake, the certificate a [`CertManager`] currently holds for one
/// identity: how a listener picks up renewed certificates without restarting.
#[derive(Debug)]
pub struct ManagedCertResolver {
    certs: Arc<CertManager>,
    identity: Identity,
}

impl ManagedCertResolver {
    /// Resolves `identity`'s certificate from `certs`; fetch it once before serving.
    pub fn new(certs: Arc<CertManager>, identity: Identity) -> Self {
        ManagedCertResolver { certs, identity }
    }
}

impl ResolvesServerCert for ManagedCertResolver {
    fn resolve(
        &self,
        _hello: rustls::server::ClientHello<'_>,
    ) -> Option<Arc<rustls::sign::CertifiedKey>> {
        let cert = self.certs.current(&self.identity);
        if cert.is_none() {
            tracing::warn!(identity = %self.identity, "no valid certificate to serve; refusing the handshake");
        }
        cert.map(|cert| cert.certified_key().clone())
    }
}

/// A root store from DER trust anchors.
pub fn root_store(roots: &[CertificateDer<'static>]) -> Result<Arc<RootCertStore>, TlsError> {
    let mut store = RootCertStore::empty();
    for root in roots {
        store
            .add(root.clone())
            .map_err(|err| TlsError::Root(err.to_string()))?;
    }
    Ok(Arc::new(store))
}

/// Client configuration presenting `cert` and accepting only a server whose SPIFFE
/// identity is in `expected`.
pub fn client_config(
    cert: &WorkloadCert,
    expected: Vec<Identity>,
) -> Result<ClientConfig, TlsError> {
    let verifier = SpiffeServerVerifier::new(root_store(cert.roots())?, expected);
    let mut config = ClientConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .dangerous()
        .with_custom_certificate_verifier(Arc::new(verifier))
        .with_client_cert_resolver(Arc::new(SingleCertAndKey::from(
            cert.certified_key().clone(),
        )));
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    config.enable_sni = false;
    Ok(config)
}

/// Server configuration that takes its certificate from `resolver` at every handshake
/// (so a renewed certificate is used without rebuilding anything) and requires a client
/// certificate from `trust_domain` chained to `roots`.
pub fn server_config(
    resolver: Arc<dyn ResolvesServerCert>,
    roots: &[CertificateDer<'static>],
    trust_domain: &str,
) -> Result<ServerConfig, TlsError> {
    let verifier = SpiffeClientVerifier::new(root_store(roots)?, trust_domain)?;
    let mut config = ServerConfig::builder_with_provider(provider())
        .with_protocol_versions(&[&rustls::version::TLS13])?
        .with_client_cert_verifier(Arc::new(verifier))
        .with_cert_resolver(resolver);
    config.alpn_protocols = vec![ALPN_H2.to_vec()];
    Ok(config)
}
