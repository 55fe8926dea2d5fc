//! Workload identity: the SPIFFE ID a certificate carries and policies name.
//!
//! Istio's form is `spiffe://<trust-domain>/ns/<namespace>/sa/<service-account>`; nothing
//! else is accepted, because a lenient parser here would let a certificate match a policy
//! it should not.

use std::fmt;
use std::str::FromStr;

/// Why a string is not an Istio SPIFFE identity.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum IdentityError {
    /// It does not start with `spiffe://`.
    #[error("identity {0:?} does not start with spiffe://")]
    NotSpiffe(String),
    /// The trust domain is empty or has characters SPIFFE forbids.
    #[error(
        "identity {id:?} has an invalid trust domain {trust_domain:?} (lowercase letters, digits, '.', '-', '_')"
    )]
    TrustDomain {
        /// The whole identity.
        id: String,
        /// The offending trust domain.
        trust_domain: String,
    },
    /// The path is not `/ns/<namespace>/sa/<service-account>`.
    #[error("identity {0:?} does not have the path /ns/<namespace>/sa/<service-account>")]
    Path(String),
    /// A namespace or service account is empty, `.`/`..`, or has forbidden characters.
    #[error("identity {id:?} has an invalid {what} {value:?} (letters, digits, '.', '-', '_')")]
    Segment {
        /// The whole identity.
        id: String,
        /// `namespace` or `service account`.
        what: &'static str,
        /// The offending value.
        value: String,
    },
}

/// An Istio workload identity: trust domain, namespace and service account.
#[derive(Debug, Clone, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct Identity {
    trust_domain: String,
    namespace: String,
    service_account: String,
}

impl Identity {
    /// Builds an identity from its parts, validating each as the parser would.
    pub fn new(
        trust_domain: &str,
        namespace: &str,
        service_account: &str,
    ) -> Result<Self, IdentityError> {
        format!("spiffe://{trust_domain}/ns/{namespace}/sa/{service_account}").parse()
    }

    /// The trust domain, e.g. `cluster.local`.
    pub fn trust_domain(&self) -> &str {
        &self.trust_domain
    }

    /// The Kubernetes namespace.
    pub fn namespace(&self) -> &str {
        &self.namespace
    }

    /// The Kubernetes service account.
    pub fn service_account(&self) -> &str {
        &self.service_account
    }
}

impl fmt::Display for Identity {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "spiffe://{}/ns/{}/sa/{}",
            self.trust_domain, self.namespace, self.service_account
        )
    }
}

impl FromStr for Identity {
    type Err = IdentityError;

    fn from_str(id: &str) -> Result<Self, Self::Err> {
        let rest = id
            .strip_prefix("spiffe://")
            .ok_or_else(|| IdentityError::NotSpiffe(id.to_string()))?;
        let (trust_domain, path) = rest.split_once('/').unwrap_or((rest, ""));
        let trust_domain_ok = !trust_domain.is_empty()
            && trust_domain.len() <= 255
            && trust_domain.bytes().all(|b| {
                b.is_ascii_lowercase() || b.is_ascii_digit() || matches!(b, b'.' | b'-' | b'_')
            });
        if !trust_domain_ok {
            return Err(IdentityError::TrustDomain {
                id: id.to_string(),
                trust_domain: trust_domain.to_string(),
            });
        }
        let segments: Vec<&str> = path.split('/').collect();
        let [ns_key, namespace, sa_key, service_account] = segments[..] else {
            return Err(IdentityError::Path(id.to_string()));
        };
        if ns_key != "ns" || sa_key != "sa" {
            return Err(IdentityError::Path(id.to_string()));
        }
        for (what, value) in [
            ("namespace", namespace),
            ("service account", service_account),
        ] {
            let ok = !value.is_empty()
                && value != "."
                && value != ".."
                && value
                    .bytes()
                    .all(|b| b.is_ascii_alphanumeric() || matches!(b, b'.' | b'-' | b'_'));
            if !ok {
                return Err(IdentityError::Segment {
                    id: id.to_string(),
                    what,
                    value: value.to_string(),
                });
            }
        }
        Ok(Identity {
            trust_domain: trust_domain.to_string(),
            namespace: namespace.to_string(),
            service_account: service_account.to_string(),
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_and_displays_round_trip() {
        let text = "spiffe://cluster.local/ns/shop/sa/web";
        let id: Identity = text.parse().unwrap();
        assert_eq!(
            (id.trust_domain(), id.namespace(), id.service_account()),
            ("cluster.local", "shop", "web")
        );
        assert_eq!(id.to_string(), text);
        assert_eq!(Identity::new("cluster.local", "shop", "web").unwrap(), id);
    }

    #[test]
    fn rejects_everything_else_naming_the_problem() {
        let cases = [
            (
                "http://cluster.local/ns/a/sa/b",
                "does not start with spiffe://",
            ),
            ("spiffe:///ns/a/sa/b", "invalid trust domain \"\""),
            ("spiffe://Cluster.Local/ns/a/sa/b", "invalid trust domain"),
            ("spiffe://td/ns/a/sa/b/extra", "does not have the path"),
            ("spiffe://td/ns/a/sa", "does not have the path"),
            ("spiffe://td/namespace/a/sa/b", "does not have the path"),
            ("spiffe://td", "does not have the path"),
            ("spiffe://td/ns//sa/b", "invalid namespace \"\""),
            ("spiffe://td/ns/../sa/b", "invalid namespace \"..\""),
            ("spiffe://td/ns/a/sa/b c", "invalid service account \"b c\""),
            ("spiffe://td/ns/a/sa/b?x", "invalid service account"),
        ];
        for (input, expected) in cases {
            let err = input.parse::<Identity>().unwrap_err().to_string();
            assert!(
                err.contains(expected),
                "{input}: {err:?} should contain {expected:?}"
            );
        }
    }
}
