//! One certificate per workload identity, fetched on first use and renewed at half-life.
//!
//! Each identity gets a background task that issues its certificate, publishes it on a
//! `watch` channel, sleeps until half its lifetime has passed and renews. Concurrent first
//! requests share that single issuance. When renewal fails the task retries with jittered
//! exponential backoff and the previous certificate stays in service while it is valid.
//! Live TLS sessions are unaffected by a swap; only new handshakes see the new cert.
//!
//! Time is tokio's: when a certificate arrives, its remaining lifetime and its half-life
//! are turned into deadlines on tokio's clock, and every later decision (still valid?
//! renew now?) reads that clock. So a wall-clock jump does not start a renewal storm, and
//! tests run rotation and expiry in paused time instead of sleeping.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime};

use tokio::sync::watch;
use tokio::task::AbortHandle;
use tokio::time::Instant;

use super::{CertError, CertificateProvider, WorkloadCert};
use crate::identity::Identity;

/// How renewal retries after a failure.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct RenewalPolicy {
    /// First retry delay (before jitter).
    pub initial_backoff: Duration,
    /// Largest retry delay (before jitter).
    pub max_backoff: Duration,
}

impl Default for RenewalPolicy {
    fn default() -> Self {
        RenewalPolicy {
            initial_backoff: Duration::from_millis(500),
            max_backoff: Duration::from_secs(60),
        }
    }
}

/// What the maintenance task has for one identity.
#[derive(Debug, Clone)]
enum Slot {
    /// Nothing issued yet.
    Pending,
    /// The certificate in service.
    Ready(Held),
    /// No valid certificate; the last error. Retries continue in the background.
    Failed(String),
}

/// A certificate with its deadlines on tokio's clock.
#[derive(Debug, Clone)]
struct Held {
    cert: Arc<WorkloadCert>,
    /// When half its lifetime has passed.
    renew: Instant,
    /// When it stops being valid.
    expires: Instant,
}

impl Held {
    fn new(cert: WorkloadCert) -> Self {
        let (now, wall) = (Instant::now(), SystemTime::now());
        let left = |at: SystemTime| at.duration_since(wall).unwrap_or(Duration::ZERO);
        Held {
            renew: now + left(cert.renew_at()),
            expires: now + left(cert.info().not_after),
            cert: Arc::new(cert),
        }
    }

    fn valid(&self) -> Option<&Arc<WorkloadCert>> {
        (Instant::now() < self.expires).then_some(&self.cert)
    }
}

struct Entry {
    slot: watch::Receiver<Slot>,
    task: AbortHandle,
}

/// Keeps a fresh certificate for every identity asked for.
pub struct CertManager {
    provider: Arc<dyn CertificateProvider>,
    policy: RenewalPolicy,
    entries: Mutex<HashMap<Identity, Entry>>,
}

impl std::fmt::Debug for CertManager {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("CertManager")
            .field("policy", &self.policy)
            .finish_non_exhaustive()
    }
}

impl CertManager {
    /// A manager issuing from `provider`.
    pub fn new(provider: Arc<dyn CertificateProvider>, policy: RenewalPolicy) -> Self {
        CertManager {
            provider,
            policy,
            entries: Mutex::new(HashMap::new()),
        }
    }

    /// The valid certificate for `identity`, issuing it first if needed (must be called
    /// within a Tokio runtime). Concurrent callers share one issuance.
    pub async fn fetch(&self, identity: &Identity) -> Result<Arc<WorkloadCert>, CertError> {
        let mut slot = self.subscribe(identity);
        loop {
            let current = slot.borrow_and_update().clone();
            match current {
                Slot::Ready(held) if held.valid().is_some() => return Ok(held.cert),
                Slot::Ready(_) => {
                    return Err(CertError::Unavailable {
                        identity: identity.clone(),
                        reason: "the certificate expired and renewal has not succeeded".into(),
                    });
                }
                Slot::Failed(reason) => {
                    return Err(CertError::Unavailable {
                        identity: identity.clone(),
                        reason,
                    });
                }
                Slot::Pending => {}
            }
            if slot.changed().await.is_err() {
                return Err(CertError::Unavailable {
                    identity: identity.clone(),
                    reason: "the certificate manager stopped".into(),
                });
            }
        }
    }

    /// The certificate in service for `identity`, if one was issued and is still valid;
    /// never waits (TLS certificate resolvers are synchronous).
    pub fn current(&self, identity: &Identity) -> Option<Arc<WorkloadCert>> {
        let entries = self.lock();
        match &*entries.get(identity)?.slot.borrow() {
            Slot::Ready(held) => held.valid().cloned(),
            _ => None,
        }
    }

    /// Every identity held, with its current certificate if one is in service: for the
    /// admin endpoint.
    pub fn snapshot(&self) -> Vec<(Identity, Option<Arc<WorkloadCert>>)> {
        self.lock()
            .iter()
            .map(|(identity, entry)| {
                let cert = match &*entry.slot.borrow() {
                    Slot::Ready(held) => Some(held.cert.clone()),
                    _ => None,
                };
                (identity.clone(), cert)
            })
            .collect()
    }

    /// Stops maintaining `identity` (its last workload left this node).
    pub fn forget(&self, identity: &Identity) {
        if let Some(entry) = self.lock().remove(identity) {
            entry.task.abort();
        }
    }

    /// Waits until the certificate for `identity` differs from `previous`: how tests and
    /// pools notice a rotation.
    pub async fn next_rotation(
        &self,
        identity: &Identity,
        previous: &WorkloadCert,
    ) -> Arc<WorkloadCert> {
        let mut slot = self.subscribe(identity);
        loop {
            if let Slot::Ready(held) = &*slot.borrow_and_update()
                && held.cert.info().serial != previous.info().serial
            {
                return held.cert.clone();
            }
            if slot.changed().await.is_err() {
                std::future::pending::<()>().await;
            }
        }
    }

    fn subscribe(&self, identity: &Identity) -> watch::Receiver<Slot> {
        let mut entries = self.lock();
        if let Some(entry) = entries.get(identity) {
            return entry.slot.clone();
        }
        let (publish, slot) = watch::channel(Slot::Pending);
        let task = tokio::spawn(maintain(
            self.provider.clone(),
            identity.clone(),
            publish,
            self.policy,
        ));
        entries.insert(
            identity.clone(),
            Entry {
                slot: slot.clone(),
                task: task.abort_handle(),
            },
        );
        slot
    }

    fn lock(&self) -> std::sync::MutexGuard<'_, HashMap<Identity, Entry>> {
        self.entries
            .lock()
            .unwrap_or_else(|poisoned| poisoned.into_inner())
    }
}

impl Drop for CertManager {
    fn drop(&mut self) {
        for entry in self.lock().values() {
            entry.task.abort();
        }
    }
}

/// Issues, publishes and renews one identity's certificate, forever.
async fn maintain(
    provider: Arc<dyn CertificateProvider>,
    identity: Identity,
    publish: watch::Sender<Slot>,
    policy: RenewalPolicy,
) {
    let mut backoff = policy.initial_backoff;
    loop {
        match provider.issue(&identity).await {
            Ok(cert) => {
                tracing::debug!(%identity, serial = %cert.info().serial, "certificate issued");
                let held = Held::new(cert);
                // A provider handing out nearly expired certificates must not make us spin.
                let renew = held.renew.max(Instant::now() + policy.initial_backoff);
                publish.send_replace(Slot::Ready(held));
                backoff = policy.initial_backoff;
                tokio::time::sleep_until(renew).await;
            }
            Err(err) => {
                tracing::warn!(%identity, error = %err, retry_in = ?backoff, "certificate issuance failed");
                let still_valid = matches!(
                    &*publish.borrow(),
                    Slot::Ready(held) if held.valid().is_some()
                );
                if !still_valid {
                    publish.send_replace(Slot::Failed(err.to_string()));
                }
                tokio::time::sleep(jittered(backoff)).await;
                backoff = (backoff * 2).min(policy.max_backoff);
            }
        }
    }
}

/// `delay` scaled by a random factor in [0.5, 1.5), so many workloads do not retry in step.
fn jittered(delay: Duration) -> Duration {
    let mut byte = [0u8; 1];
    let _ = crate::tls::provider().secure_random.fill(&mut byte);
    delay.mul_f64(0.5 + f64::from(byte[0]) / 256.0)
}
