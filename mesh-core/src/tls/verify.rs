//! Certificate verifiers that check SPIFFE identities instead of host names.
//!
//! Chain building, validity dates and signatures are rustls/webpki's; this module adds the
//! identity check and errors that say which identity was presented and which was wanted.

use std::sync::Arc;

use rustls::client::danger::{HandshakeSignatureValid, ServerCertVerified, ServerCertVerifier};
use rustls::crypto::{WebPkiSupportedAlgorithms, verify_tls12_signature, verify_tls13_signature};
use rustls::pki_types::{CertificateDer, ServerName, UnixTime};
use rustls::server::danger::{ClientCertVerified, ClientCertVerifier};
use rustls::server::{ParsedCertificate, WebPkiClientVerifier};
use rustls::{
    CertificateError, DigitallySignedStruct, DistinguishedName, OtherError, RootCertStore,
    SignatureScheme,
};

use super::{TlsError, provider};
use crate::cert::{IdentityError, parse_leaf};
use crate::identity::Identity;

/// Why a peer's certificate was refused after its chain checked out.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum VerifyError {
    /// The certificate does not name exactly one SPIFFE identity.
    #[error("peer certificate: {0}")]
    Identity(#[from] IdentityError),
    /// The certificate may not be used for this side of a tunnel.
    #[error("peer certificate lacks the extended key usage {0}")]
    KeyUsage(&'static str),
    /// The server is not who the client meant to reach.
    #[error("peer identity {presented} is not among the expected [{expected}]")]
    UnexpectedIdentity {
        /// What the peer presented.
        presented: String,
        /// What was acceptable.
        expected: String,
    },
    /// The client belongs to another trust domain.
    #[error("peer identity {presented} is outside trust domain {trust_domain}")]
    ForeignTrustDomain {
        /// What the peer presented.
        presented: String,
        /// Ours.
        trust_domain: String,
    },
    /// The certificate could not be parsed.
    #[error("peer certificate unreadable: {0}")]
    Unreadable(String),
}

impl From<VerifyError> for rustls::Error {
    fn from(err: VerifyError) -> Self {
        rustls::Error::InvalidCertificate(CertificateError::Other(OtherError(Arc::new(err))))
    }
}

/// Which side of a tunnel a certificate must be able to prove.
#[derive(Debug, Clone, Copy)]
enum Side {
    Server,
    Client,
}

/// The peer's one identity, with the key usage its side needs (required, not merely
/// "if present" as webpki checks it).
fn identity_of(cert: &CertificateDer<'_>, side: Side) -> Result<Identity, VerifyError> {
    let info = parse_leaf(cert).map_err(|err| VerifyError::Unreadable(err.to_string()))?;
    let identity = info.workload_identity()?.clone();
    match side {
        Side::Server if !info.usage.server_auth => Err(VerifyError::KeyUsage("serverAuth")),
        Side::Client if !info.usage.client_auth => Err(VerifyError::KeyUsage("clientAuth")),
        _ => Ok(identity),
    }
}

fn join(ids: &[Identity]) -> String {
    ids.iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(", ")
}

fn algorithms() -> WebPkiSupportedAlgorithms {
    provider().signature_verification_algorithms
}

/// Client-side check of an HBONE server: chains to our roots, and is one of the
/// identities the destination may have.
#[derive(Debug)]
pub struct SpiffeServerVerifier {
    roots: Arc<RootCertStore>,
    expected: Vec<Identity>,
}

impl SpiffeServerVerifier {
    /// Accepts servers chained to `roots` whose identity is in `expected`.
    pub fn new(roots: Arc<RootCertStore>, expected: Vec<Identity>) -> Self {
        SpiffeServerVerifier { roots, expected }
    }
}

impl ServerCertVerifier for SpiffeServerVerifier {
    fn verify_server_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        _server_name: &ServerName<'_>,
        _ocsp_response: &[u8],
        now: UnixTime,
    ) -> Result<ServerCertVerified, rustls::Error> {
        let parsed = ParsedCertificate::try_from(end_entity)?;
        rustls::client::verify_server_cert_signed_by_trust_anchor(
            &parsed,
            &self.roots,
            intermediates,
            now,
            algorithms().all,
        )?;
        let presented = identity_of(end_entity, Side::Server)?;
        if self.expected.contains(&presented) {
            Ok(ServerCertVerified::assertion())
        } else {
            Err(VerifyError::UnexpectedIdentity {
                presented: presented.to_string(),
                expected: join(&self.expected),
            }
            .into())
        }
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls12_signature(message, cert, dss, &algorithms())
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        verify_tls13_signature(message, cert, dss, &algorithms())
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        algorithms().supported_schemes()
    }
}

/// Server-side check of an HBONE client: a certificate is required, chains to our roots,
/// and carries an identity of our trust domain.
#[derive(Debug)]
pub struct SpiffeClientVerifier {
    chain: Arc<dyn ClientCertVerifier>,
    trust_domain: String,
}

impl SpiffeClientVerifier {
    /// Requires clients chained to `roots` with an identity in `trust_domain`.
    pub fn new(roots: Arc<RootCertStore>, trust_domain: &str) -> Result<Self, TlsError> {
        let chain = WebPkiClientVerifier::builder_with_provider(roots, provider()).build()?;
        Ok(SpiffeClientVerifier {
            chain,
            trust_domain: trust_domain.to_string(),
        })
    }
}

impl ClientCertVerifier for SpiffeClientVerifier {
    fn root_hint_subjects(&self) -> &[DistinguishedName] {
        self.chain.root_hint_subjects()
    }

    fn verify_client_cert(
        &self,
        end_entity: &CertificateDer<'_>,
        intermediates: &[CertificateDer<'_>],
        now: UnixTime,
    ) -> Result<ClientCertVerified, rustls::Error> {
        self.chain
            .verify_client_cert(end_entity, intermediates, now)?;
        let presented = identity_of(end_entity, Side::Client)?;
        if presented.trust_domain() == self.trust_domain {
            Ok(ClientCertVerified::assertion())
        } else {
            Err(VerifyError::ForeignTrustDomain {
                presented: presented.to_string(),
                trust_domain: self.trust_domain.clone(),
            }
            .into())
        }
    }

    fn client_auth_mandatory(&self) -> bool {
        true
    }

    fn verify_tls12_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls12_signature(message, cert, dss)
    }

    fn verify_tls13_signature(
        &self,
        message: &[u8],
        cert: &CertificateDer<'_>,
        dss: &DigitallySignedStruct,
    ) -> Result<HandshakeSignatureValid, rustls::Error> {
        self.chain.verify_tls13_signature(message, cert, dss)
    }

    fn supported_verify_schemes(&self) -> Vec<SignatureScheme> {
        self.chain.supported_verify_schemes()
    }
}
