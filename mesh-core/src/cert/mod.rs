//! Workload certificates: what a pod presents on an HBONE connection, where it comes from,
//! and how it is kept fresh.
//!
//! * [`WorkloadCert`]: a leaf with its chain, key and trust roots, parsed once.
//! * [`CertificateProvider`]: anything that can issue one ([`LocalCa`] today, the mesh CA
//!   service later).
//! * [`CertManager`]: one cert per identity, fetched once, renewed at half-life.

mod local_ca;
mod manager;
mod x509;

use std::future::Future;
use std::pin::Pin;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use rustls::pki_types::{CertificateDer, PrivateKeyDer};
use rustls::sign::CertifiedKey;

pub use local_ca::{DEFAULT_WORKLOAD_TTL, IssuedPem, LocalCa};
pub use manager::{CertManager, RenewalPolicy};
pub use x509::{IdentityError, KeyPurposes, LeafInfo, parse_leaf};

use crate::identity::Identity;

/// Why a certificate could not be loaded, issued or used.
#[derive(Debug, thiserror::Error)]
pub enum CertError {
    /// A CA file could not be read or written.
    #[error("{path}: {source}")]
    Io {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// A PEM file holds no usable certificate or key.
    #[error("{path}: {what}")]
    Pem {
        /// The file.
        path: String,
        /// What is missing or wrong.
        what: String,
    },
    /// Generating or signing a key or certificate failed.
    #[error("{context}: {source}")]
    Generate {
        /// What was being made.
        context: String,
        /// Why it failed.
        #[source]
        source: rcgen::Error,
    },
    /// A certificate is malformed or not a workload certificate.
    #[error("invalid certificate: {0}")]
    Invalid(String),
    /// The key does not fit the certificate, or rustls cannot use it.
    #[error("unusable key for {identity}: {source}")]
    Key {
        /// Whose key.
        identity: String,
        /// Why.
        #[source]
        source: rustls::Error,
    },
    /// The provider could not issue a certificate now (the CA is unreachable, refused, ...).
    #[error("no certificate for {identity}: {reason}")]
    Unavailable {
        /// For whom.
        identity: Identity,
        /// Why.
        reason: String,
    },
}

/// A workload's certificate, chain, key and trust roots, ready for rustls.
#[derive(Debug)]
pub struct WorkloadCert {
    info: LeafInfo,
    identity: Identity,
    certified_key: Arc<CertifiedKey>,
    roots: Vec<CertificateDer<'static>>,
}

impl WorkloadCert {
    /// Checks and assembles a certificate: `chain` is leaf first, then intermediates (not
    /// the root); `roots` are the trust anchors peers' certificates must chain to.
    ///
    /// Fails unless the leaf carries exactly one SPIFFE identity and `key` matches it.
    pub fn new(
        chain: Vec<CertificateDer<'static>>,
        key: PrivateKeyDer<'static>,
        roots: Vec<CertificateDer<'static>>,
    ) -> Result<Self, CertError> {
        let leaf = chain
            .first()
            .ok_or_else(|| CertError::Invalid("empty certificate chain".into()))?;
        let info = parse_leaf(leaf)?;
        let identity = info
            .workload_identity()
            .map_err(|err| CertError::Invalid(err.to_string()))?
            .clone();
        if roots.is_empty() {
            return Err(CertError::Invalid(format!("no trust roots for {identity}")));
        }
        let certified_key =
            CertifiedKey::from_der(chain, key, &crate::tls::provider()).map_err(|source| {
                CertError::Key {
                    identity: identity.to_string(),
                    source,
                }
            })?;
        Ok(WorkloadCert {
            info,
            identity,
            certified_key: Arc::new(certified_key),
            roots,
        })
    }

    /// The SPIFFE identity the certificate proves.
    pub fn identity(&self) -> &Identity {
        &self.identity
    }

    /// Leaf certificate details (validity, serial).
    pub fn info(&self) -> &LeafInfo {
        &self.info
    }

    /// Chain and signing key, as rustls presents them.
    pub fn certified_key(&self) -> &Arc<CertifiedKey> {
        &self.certified_key
    }

    /// Trust anchors for verifying peers.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// Whether the certificate may be presented at `now`.
    pub fn is_valid_at(&self, now: SystemTime) -> bool {
        self.info.not_before <= now && now < self.info.not_after
    }

    /// When it should be renewed: half way through its validity, as Istio does.
    pub fn renew_at(&self) -> SystemTime {
        let lifetime = self
            .info
            .not_after
            .duration_since(self.info.not_before)
            .unwrap_or(Duration::ZERO);
        self.info.not_before + lifetime / 2
    }
}

/// Boxed future returned by [`CertificateProvider::issue`], so providers can be trait objects.
pub type IssueFuture<'a> =
    Pin<Box<dyn Future<Output = Result<WorkloadCert, CertError>> + Send + 'a>>;

/// A source of workload certificates: the local CA, or a remote CA service.
pub trait CertificateProvider: Send + Sync + 'static {
    /// Issues a fresh certificate (and key) for `identity`.
    fn issue<'a>(&'a self, identity: &'a Identity) -> IssueFuture<'a>;
}
