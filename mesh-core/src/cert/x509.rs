//! Reading the parts of an X.509 certificate the mesh cares about: the SPIFFE identity in
//! the URI SAN, what the key may be used for, validity, serial.
//!
//! One rule decides whose certificate it is ([`LeafInfo::workload_identity`]): exactly one
//! URI SAN, and it is a SPIFFE identity. The verifiers, the HBONE server and the
//! certificate manager all ask it, so the identity that was checked is the one that is
//! authorized and logged.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::CertError;
use crate::identity::Identity;

/// What the mesh reads from a leaf certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafInfo {
    /// Istio SPIFFE identities among its URI SANs (other URIs are counted, not kept).
    pub identities: Vec<Identity>,
    /// How many URI SANs it carries, SPIFFE or not.
    pub uri_sans: usize,
    /// What its extended key usage extension allows (nothing when the extension is absent).
    pub usage: KeyPurposes,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
    /// Serial number, lowercase hex: tells two certificates of one identity apart in logs.
    pub serial: String,
}

/// The extended key usages the mesh requires: a workload certificate serves both sides of
/// a tunnel, so Istio's CA and ours issue both.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyPurposes {
    /// `id-kp-serverAuth`: may prove a server.
    pub server_auth: bool,
    /// `id-kp-clientAuth`: may prove a client.
    pub client_auth: bool,
}

/// Why a certificate names no single workload.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// No URI SAN at all.
    #[error("the certificate carries no URI SAN (no SPIFFE identity)")]
    Missing,
    /// More than one URI SAN: which one is the peer would depend on who reads it.
    #[error("the certificate carries {count} URI SANs; a workload certificate carries exactly one")]
    Several {
        /// How many.
        count: usize,
    },
    /// The one URI SAN is not an Istio SPIFFE identity.
    #[error("the certificate's URI SAN is not a SPIFFE identity spiffe://<domain>/ns/<ns>/sa/<sa>")]
    NotSpiffe,
}

impl LeafInfo {
    /// The workload the certificate proves: its only URI SAN, which must be a SPIFFE
    /// identity (as Istio's verifiers require).
    pub fn workload_identity(&self) -> Result<&Identity, IdentityError> {
        match (self.uri_sans, self.identities.as_slice()) {
            (0, _) => Err(IdentityError::Missing),
            (1, [identity]) => Ok(identity),
            (1, _) => Err(IdentityError::NotSpiffe),
            (count, _) => Err(IdentityError::Several { count }),
        }
    }
}

/// Parses a DER certificate's URI SANs, key purposes, validity and serial.
pub fn parse_leaf(der: &[u8]) -> Result<LeafInfo, CertError> {
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|err| CertError::Invalid(format!("not an X.509 certificate: {err}")))?;
    let sans = cert
        .subject_alternative_name()
        .map_err(|err| CertError::Invalid(format!("bad subjectAltName extension: {err}")))?;
    let uris: Vec<&str> = sans
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::URI(uri) => Some(*uri),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let usage = cert
        .extended_key_usage()
        .map_err(|err| CertError::Invalid(format!("bad extendedKeyUsage extension: {err}")))?
        .map(|ext| KeyPurposes {
            server_auth: ext.value.server_auth,
            client_auth: ext.value.client_auth,
        })
        .unwrap_or_default();
    let validity = cert.validity();
    Ok(LeafInfo {
        identities: uris.iter().filter_map(|uri| uri.parse().ok()).collect(),
        uri_sans: uris.len(),
        usage,
        not_before: to_system_time(validity.not_before.timestamp()),
        not_after: to_system_time(validity.not_after.timestamp()),
        serial: cert
            .raw_serial()
            .iter()
            .map(|b| format!("{b:02x}"))
            .collect(),
    })
}

fn to_system_time(unix_seconds: i64) -> SystemTime {
    if unix_seconds >= 0 {
        UNIX_EPOCH + Duration::from_secs(unix_seconds as u64)
    } else {
        UNIX_EPOCH - Duration::from_secs(unix_seconds.unsigned_abs())
    }
}
