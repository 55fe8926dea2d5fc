//! Reading the parts of an X.509 certificate the mesh cares about: SPIFFE identities in
//! URI SANs, validity, serial.

use std::time::{Duration, SystemTime, UNIX_EPOCH};

use x509_parser::extensions::GeneralName;
use x509_parser::prelude::{FromDer, X509Certificate};

use super::CertError;
use crate::identity::Identity;

/// What the mesh reads from a leaf certificate.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct LeafInfo {
    /// Istio SPIFFE identities among its URI SANs (other URIs are ignored).
    pub identities: Vec<Identity>,
    /// Start of validity.
    pub not_before: SystemTime,
    /// End of validity.
    pub not_after: SystemTime,
    /// Serial number, lowercase hex: tells two certificates of one identity apart in logs.
    pub serial: String,
}

/// Parses a DER certificate's SPIFFE identities, validity and serial.
pub fn parse_leaf(der: &[u8]) -> Result<LeafInfo, CertError> {
    let (_, cert) = X509Certificate::from_der(der)
        .map_err(|err| CertError::Invalid(format!("not an X.509 certificate: {err}")))?;
    let sans = cert
        .subject_alternative_name()
        .map_err(|err| CertError::Invalid(format!("bad subjectAltName extension: {err}")))?;
    let identities = sans
        .map(|ext| {
            ext.value
                .general_names
                .iter()
                .filter_map(|name| match name {
                    GeneralName::URI(uri) => uri.parse::<Identity>().ok(),
                    _ => None,
                })
                .collect()
        })
        .unwrap_or_default();
    let validity = cert.validity();
    Ok(LeafInfo {
        identities,
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
