//! A certificate authority in this process: the embedded default and the tests' CA.
//!
//! It signs with a CA key from files in Istio's `cacerts` layout (so an operator's plug-in
//! CA works unchanged), or generates a root and persists it on first use for the local
//! demo. Workload certificates are ECDSA P-256 with the SPIFFE URI SAN, valid for a
//! configurable time (24 h by default).

use std::path::{Path, PathBuf};
use std::time::{Duration, SystemTime};

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose, PKCS_ECDSA_P256_SHA256, SanType, SerialNumber,
};
use rustls::pki_types::pem::PemObject;
use rustls::pki_types::{CertificateDer, PrivateKeyDer};

use super::{CertError, CertificateProvider, IssueFuture, WorkloadCert};
use crate::identity::Identity;

/// Lifetime of workload certificates unless configured otherwise (Istio's default).
pub const DEFAULT_WORKLOAD_TTL: Duration = Duration::from_secs(24 * 60 * 60);
/// How far back `notBefore` is set, so peers with slightly slow clocks accept a new cert.
const CLOCK_SKEW: Duration = Duration::from_secs(60);
/// Lifetime of a generated root or intermediate.
const CA_TTL: Duration = Duration::from_secs(10 * 365 * 24 * 60 * 60);

/// Files of Istio's `cacerts` secret.
const CA_CERT: &str = "ca-cert.pem";
const CA_KEY: &str = "ca-key.pem";
const ROOT_CERT: &str = "root-cert.pem";
const CERT_CHAIN: &str = "cert-chain.pem";

/// A CA that issues workload certificates for one trust domain.
pub struct LocalCa {
    trust_domain: String,
    issuer: Issuer<'static, KeyPair>,
    signer_cert: CertificateDer<'static>,
    /// Certificates between a leaf and the root: the signer (unless it is the root) and
    /// any intermediates above it.
    chain: Vec<CertificateDer<'static>>,
    roots: Vec<CertificateDer<'static>>,
    signer_key_pem: String,
    ttl: Duration,
}

impl std::fmt::Debug for LocalCa {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("LocalCa")
            .field("trust_domain", &self.trust_domain)
            .field("chain_len", &self.chain.len())
            .field("ttl", &self.ttl)
            .finish_non_exhaustive()
    }
}

impl LocalCa {
    /// Generates a new self-signed root, in memory.
    pub fn generate(trust_domain: &str) -> Result<Self, CertError> {
        let key = generate_key("the CA key")?;
        // A unique name per root: two roots of one trust domain (a foreign CA) are then told
        // apart by name, and peers report "unknown issuer" rather than "bad signature".
        let name = format!("mesh root CA {}", &hex(random_serial().to_bytes())[..12]);
        let params = ca_params(trust_domain, &name)?;
        let cert = params
            .self_signed(&key)
            .map_err(|source| CertError::Generate {
                context: "self-signing the root".into(),
                source,
            })?;
        let der = cert.der().clone();
        Ok(LocalCa {
            trust_domain: trust_domain.to_string(),
            signer_key_pem: key.serialize_pem(),
            issuer: Issuer::new(params, key),
            signer_cert: der.clone(),
            chain: Vec::new(),
            roots: vec![der],
            ttl: DEFAULT_WORKLOAD_TTL,
        })
    }

    /// Creates an intermediate CA signed by this one, for a second tier of signing.
    pub fn intermediate(&self, name: &str) -> Result<Self, CertError> {
        let key = generate_key("the intermediate key")?;
        let params = ca_params(&self.trust_domain, name)?;
        let cert = params
            .signed_by(&key, &self.issuer)
            .map_err(|source| CertError::Generate {
                context: format!("signing intermediate {name}"),
                source,
            })?;
        let der = cert.der().clone();
        let mut chain = vec![der.clone()];
        chain.extend(self.chain.iter().cloned());
        Ok(LocalCa {
            trust_domain: self.trust_domain.clone(),
            signer_key_pem: key.serialize_pem(),
            issuer: Issuer::new(params, key),
            signer_cert: der,
            chain,
            roots: self.roots.clone(),
            ttl: self.ttl,
        })
    }

    /// Loads a CA from a directory in Istio's `cacerts` layout: `ca-cert.pem` and
    /// `ca-key.pem` (the signer), and optionally `root-cert.pem` (when the signer is an
    /// intermediate) and `cert-chain.pem` (signer up to the root).
    pub fn load(dir: &Path, trust_domain: &str) -> Result<Self, CertError> {
        let signer_cert = read_certs(&dir.join(CA_CERT))?.remove(0);
        let key_path = dir.join(CA_KEY);
        let signer_key_pem = read_text(&key_path)?;
        let key = KeyPair::from_pem(&signer_key_pem).map_err(|err| CertError::Pem {
            path: key_path.display().to_string(),
            what: format!("not a PKCS#8 private key: {err}"),
        })?;
        let issuer =
            Issuer::from_ca_cert_der(&signer_cert, key).map_err(|source| CertError::Generate {
                context: format!("using {} as a CA", dir.join(CA_CERT).display()),
                source,
            })?;
        let root_path = dir.join(ROOT_CERT);
        let roots = if root_path.exists() {
            read_certs(&root_path)?
        } else {
            vec![signer_cert.clone()]
        };
        let chain_path = dir.join(CERT_CHAIN);
        let mut chain = if chain_path.exists() {
            read_certs(&chain_path)?
        } else {
            vec![signer_cert.clone()]
        };
        chain.retain(|cert| !roots.contains(cert));
        Ok(LocalCa {
            trust_domain: trust_domain.to_string(),
            issuer,
            signer_cert,
            chain,
            roots,
            signer_key_pem,
            ttl: DEFAULT_WORKLOAD_TTL,
        })
    }

    /// Loads the CA from `dir`, or generates a root and writes it there first (the local
    /// demo's embedded default). The key file is readable by its owner only.
    pub fn load_or_generate(dir: &Path, trust_domain: &str) -> Result<Self, CertError> {
        if dir.join(CA_CERT).exists() {
            return Self::load(dir, trust_domain);
        }
        let ca = Self::generate(trust_domain)?;
        ca.write_to(dir)?;
        Ok(ca)
    }

    /// Writes the CA to `dir` in Istio's `cacerts` layout.
    pub fn write_to(&self, dir: &Path) -> Result<(), CertError> {
        std::fs::create_dir_all(dir).map_err(|source| io_error(dir, source))?;
        let pem = |certs: &[CertificateDer<'_>]| certs.iter().map(to_pem).collect::<String>();
        let mut full_chain = self.chain.clone();
        full_chain.extend(self.roots.iter().cloned());
        write_file(&dir.join(CA_CERT), &to_pem(&self.signer_cert), 0o644)?;
        write_file(&dir.join(ROOT_CERT), &pem(&self.roots), 0o644)?;
        write_file(&dir.join(CERT_CHAIN), &pem(&full_chain), 0o644)?;
        write_file(&dir.join(CA_KEY), &self.signer_key_pem, 0o600)
    }

    /// Sets the lifetime of the workload certificates it issues.
    pub fn with_ttl(mut self, ttl: Duration) -> Self {
        self.ttl = ttl;
        self
    }

    /// The trust domain it issues for.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// Its trust anchors, for peers that only verify.
    pub fn roots(&self) -> &[CertificateDer<'static>] {
        &self.roots
    }

    /// Issues a certificate valid from `not_before` to `not_after` (tests use this for
    /// expired and not-yet-valid certificates).
    pub fn issue_valid_between(
        &self,
        identity: &Identity,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<WorkloadCert, CertError> {
        let (chain, key) = self.sign(identity, not_before, not_after)?;
        WorkloadCert::new(
            chain,
            PrivateKeyDer::Pkcs8(key.serialize_der().into()),
            self.roots.clone(),
        )
    }

    /// Issues a certificate valid from now for the configured TTL (`notBefore` is set a
    /// little earlier, at most a minute, for peers whose clocks lag).
    pub fn issue_now(&self, identity: &Identity) -> Result<WorkloadCert, CertError> {
        let (not_before, not_after) = self.validity_from_now();
        self.issue_valid_between(identity, not_before, not_after)
    }

    /// Issues a certificate as PEM files would hold it, for tools outside this process
    /// (another TLS stack in tests, a sidecar-era workload).
    pub fn issue_pem(&self, identity: &Identity) -> Result<IssuedPem, CertError> {
        let (not_before, not_after) = self.validity_from_now();
        let (chain, key) = self.sign(identity, not_before, not_after)?;
        Ok(IssuedPem {
            cert_chain: chain.iter().map(to_pem).collect(),
            key: key.serialize_pem(),
            roots: self.roots.iter().map(to_pem).collect(),
        })
    }

    fn validity_from_now(&self) -> (SystemTime, SystemTime) {
        let now = SystemTime::now();
        (now - CLOCK_SKEW.min(self.ttl / 10), now + self.ttl)
    }

    fn sign(
        &self,
        identity: &Identity,
        not_before: SystemTime,
        not_after: SystemTime,
    ) -> Result<(Vec<CertificateDer<'static>>, KeyPair), CertError> {
        if identity.trust_domain() != self.trust_domain {
            return Err(CertError::Unavailable {
                identity: identity.clone(),
                reason: format!("this CA issues only for trust domain {}", self.trust_domain),
            });
        }
        let generate = |source| CertError::Generate {
            context: format!("issuing for {identity}"),
            source,
        };
        let key = generate_key("a workload key")?;
        let mut params = CertificateParams::default();
        params.distinguished_name = DistinguishedName::new();
        let uri = identity.to_string().try_into().map_err(generate)?;
        params.subject_alt_names = vec![SanType::URI(uri)];
        params.key_usages = vec![
            KeyUsagePurpose::DigitalSignature,
            KeyUsagePurpose::KeyEncipherment,
        ];
        params.extended_key_usages = vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ];
        params.not_before = not_before.into();
        params.not_after = not_after.into();
        params.serial_number = Some(random_serial());
        params.use_authority_key_identifier_extension = true;
        let cert = params.signed_by(&key, &self.issuer).map_err(generate)?;
        let mut chain = vec![cert.der().clone()];
        chain.extend(self.chain.iter().cloned());
        Ok((chain, key))
    }
}

/// A workload certificate as PEM text.
#[derive(Debug, Clone)]
pub struct IssuedPem {
    /// Leaf then intermediates.
    pub cert_chain: String,
    /// PKCS#8 private key.
    pub key: String,
    /// Trust anchors.
    pub roots: String,
}

impl CertificateProvider for LocalCa {
    fn issue<'a>(&'a self, identity: &'a Identity) -> IssueFuture<'a> {
        Box::pin(async move { self.issue_now(identity) })
    }
}

fn ca_params(trust_domain: &str, common_name: &str) -> Result<CertificateParams, CertError> {
    let mut params = CertificateParams::default();
    params.distinguished_name = DistinguishedName::new();
    params
        .distinguished_name
        .push(DnType::OrganizationName, trust_domain);
    params
        .distinguished_name
        .push(DnType::CommonName, common_name);
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![
        KeyUsagePurpose::KeyCertSign,
        KeyUsagePurpose::CrlSign,
        KeyUsagePurpose::DigitalSignature,
    ];
    let now = SystemTime::now();
    params.not_before = (now - CLOCK_SKEW).into();
    params.not_after = (now + CA_TTL).into();
    params.serial_number = Some(random_serial());
    params.use_authority_key_identifier_extension = true;
    Ok(params)
}

fn generate_key(what: &str) -> Result<KeyPair, CertError> {
    KeyPair::generate_for(&PKCS_ECDSA_P256_SHA256).map_err(|source| CertError::Generate {
        context: format!("generating {what}"),
        source,
    })
}

/// A random positive 128-bit serial, so certificates of one identity are told apart.
fn random_serial() -> SerialNumber {
    let mut bytes = [0u8; 16];
    // The provider's RNG only fails if the OS RNG does; a zero serial is then still valid.
    let _ = crate::tls::provider().secure_random.fill(&mut bytes);
    bytes[0] &= 0x7f;
    bytes[0] |= 0x01;
    SerialNumber::from_slice(&bytes)
}

fn hex(bytes: Vec<u8>) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn read_text(path: &Path) -> Result<String, CertError> {
    std::fs::read_to_string(path).map_err(|source| io_error(path, source))
}

fn read_certs(path: &Path) -> Result<Vec<CertificateDer<'static>>, CertError> {
    let text = read_text(path)?;
    let certs = CertificateDer::pem_slice_iter(text.as_bytes())
        .collect::<Result<Vec<_>, _>>()
        .map_err(|err| CertError::Pem {
            path: path.display().to_string(),
            what: err.to_string(),
        })?;
    if certs.is_empty() {
        return Err(CertError::Pem {
            path: path.display().to_string(),
            what: "no CERTIFICATE block".into(),
        });
    }
    Ok(certs)
}

fn to_pem(cert: &CertificateDer<'_>) -> String {
    pem::encode(&pem::Pem::new("CERTIFICATE", cert.as_ref()))
}

fn write_file(path: &Path, contents: &str, mode: u32) -> Result<(), CertError> {
    use std::io::Write;
    use std::os::unix::fs::{OpenOptionsExt, PermissionsExt};
    let mut file = std::fs::OpenOptions::new()
        .write(true)
        .create(true)
        .truncate(true)
        .mode(mode)
        .open(path)
        .map_err(|source| io_error(path, source))?;
    // `mode` applies only to a new file: an existing one keeps its own until told.
    file.set_permissions(std::fs::Permissions::from_mode(mode))
        .map_err(|source| io_error(path, source))?;
    file.write_all(contents.as_bytes())
        .map_err(|source| io_error(path, source))
}

fn io_error(path: &Path, source: std::io::Error) -> CertError {
    CertError::Io {
        path: PathBuf::from(path).display().to_string(),
        source,
    }
}
