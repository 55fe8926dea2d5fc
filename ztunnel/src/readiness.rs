//! What `/healthz/ready` (15021) says: ready only once the configuration has synced, the CA
//! can issue workload certificates, and the istio-cni agent's snapshot has been served
//! over ZDS, so the kubelet (and a rolling update waiting on it) sees a ztunnel that can
//! actually carry its node's pods.

use std::sync::atomic::{AtomicBool, Ordering};

/// The conditions, each set by the part of ztunnel that knows.
#[derive(Debug, Default)]
pub struct Readiness {
    config: AtomicBool,
    certificates: AtomicBool,
    zds: AtomicBool,
}

impl Readiness {
    /// The configuration source has read everything once.
    pub fn set_config(&self, synced: bool) {
        self.config.store(synced, Ordering::Release);
    }

    /// The CA can issue workload certificates.
    pub fn set_certificates(&self, able: bool) {
        self.certificates.store(able, Ordering::Release);
    }

    /// The agent is connected and its snapshot served (false again when it disconnects).
    pub fn set_zds(&self, connected: bool) {
        self.zds.store(connected, Ordering::Release);
    }

    /// What is still missing; empty when ready.
    pub fn missing(&self) -> Vec<&'static str> {
        [
            (&self.config, "config not synced"),
            (&self.certificates, "no certificate authority"),
            (&self.zds, "istio-cni agent (ZDS) not connected"),
        ]
        .into_iter()
        .filter(|(flag, _)| !flag.load(Ordering::Acquire))
        .map(|(_, what)| what)
        .collect()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ready_only_when_every_condition_holds() {
        let readiness = Readiness::default();
        assert_eq!(readiness.missing().len(), 3);
        readiness.set_config(true);
        readiness.set_certificates(true);
        assert_eq!(readiness.missing(), ["istio-cni agent (ZDS) not connected"]);
        readiness.set_zds(true);
        assert!(readiness.missing().is_empty());
        readiness.set_zds(false);
        assert_eq!(readiness.missing().len(), 1);
    }
}
