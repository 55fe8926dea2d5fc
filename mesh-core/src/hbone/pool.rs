//! The client's connection pool: HTTP/2 connections shared by tunnels with the same
//! source identity, destination identities and destination address.
//!
//! A connection carries at most `max_streams` tunnels; past that a new one opens. Below
//! that, concurrent tunnels spread over up to `lanes` connections (a new tunnel takes the
//! least busy, and a new lane opens while every open one is busy), so their TLS work can
//! run on several cores. Opening is serialized per key, so a burst of tunnels to a new
//! destination opens max(lanes, ceil(n / max_streams)) connections, not n. A connection that failed, received GOAWAY,
//! or was made with a certificate since rotated is not handed out again; idle ones close:
//! the `lanes` used last after [`IdleTimeouts::lanes`], the others (a burst's surplus) after
//! [`IdleTimeouts::surplus`].

use std::collections::HashMap;
use std::future::Future;
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::{Duration, Instant};

use bytes::Bytes;
use h2::client::SendRequest;

use super::HboneError;
use super::stream::StreamSlot;
use crate::identity::Identity;

/// What makes two tunnels share a connection.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub(crate) struct PoolKey {
    pub src: Identity,
    /// Sorted, so the same set in another order is the same key.
    pub dst_identities: Vec<Identity>,
    pub dst: SocketAddr,
    /// The worker thread asking ([`crate::workers::current`]): each worker has its own
    /// connections, driven on that worker, so a tunnel's task and its connection's never
    /// wake each other across threads.
    pub worker: Option<usize>,
}

impl PoolKey {
    pub(crate) fn new(src: Identity, mut dst_identities: Vec<Identity>, dst: SocketAddr) -> Self {
        dst_identities.sort();
        dst_identities.dedup();
        PoolKey {
            src,
            dst_identities,
            dst,
            worker: crate::workers::current(),
        }
    }
}

/// One HTTP/2 connection in the pool.
#[derive(Debug)]
pub(crate) struct PooledConnection {
    pub send_request: SendRequest<Bytes>,
    /// Serial of the client certificate the connection was made with.
    pub cert_serial: String,
    /// Set by the connection's driver task when it ends (error, GOAWAY, close).
    pub closed: Arc<AtomicBool>,
    active: Arc<AtomicUsize>,
    idle_since: Arc<Mutex<Instant>>,
}

impl PooledConnection {
    pub(crate) fn new(
        send_request: SendRequest<Bytes>,
        cert_serial: String,
        closed: Arc<AtomicBool>,
    ) -> Self {
        PooledConnection {
            send_request,
            cert_serial,
            closed,
            active: Arc::new(AtomicUsize::new(0)),
            idle_since: Arc::new(Mutex::new(Instant::now())),
        }
    }

    fn usable(&self, cert_serial: &str, max_streams: usize) -> bool {
        !self.closed.load(Ordering::Acquire)
            && self.cert_serial == cert_serial
            && self.active.load(Ordering::Acquire) < max_streams
    }

    fn active(&self) -> usize {
        self.active.load(Ordering::Acquire)
    }

    fn idle_for(&self) -> Option<Duration> {
        if self.active.load(Ordering::Acquire) > 0 {
            return None;
        }
        Some(
            self.idle_since
                .lock()
                .unwrap_or_else(|p| p.into_inner())
                .elapsed(),
        )
    }

    fn reserve(&self) -> StreamReservation {
        self.active.fetch_add(1, Ordering::AcqRel);
        StreamReservation {
            active: self.active.clone(),
            idle_since: self.idle_since.clone(),
        }
    }
}

/// A stream's place on a connection; dropping it frees the place.
#[derive(Debug)]
pub(crate) struct StreamReservation {
    active: Arc<AtomicUsize>,
    idle_since: Arc<Mutex<Instant>>,
}

impl StreamSlot for StreamReservation {}

impl Drop for StreamReservation {
    fn drop(&mut self) {
        if self.active.fetch_sub(1, Ordering::AcqRel) == 1 {
            *self.idle_since.lock().unwrap_or_else(|p| p.into_inner()) = Instant::now();
        }
    }
}

type Connections = Arc<tokio::sync::Mutex<Vec<Arc<PooledConnection>>>>;

/// How long unused connections stay open.
#[derive(Debug, Clone, Copy)]
pub(crate) struct IdleTimeouts {
    /// The `lanes` connections of a key used most recently.
    pub lanes: Duration,
    /// The others of that key.
    pub surplus: Duration,
}

/// The pool itself.
#[derive(Debug)]
pub(crate) struct Pool {
    max_streams: usize,
    lanes: usize,
    idle: IdleTimeouts,
    by_key: Mutex<HashMap<PoolKey, Connections>>,
    reaper_started: AtomicBool,
}

impl Pool {
    pub(crate) fn new(max_streams: usize, lanes: usize, idle: IdleTimeouts) -> Arc<Self> {
        Arc::new(Pool {
            max_streams: max_streams.max(1),
            lanes: lanes.max(1),
            idle,
            by_key: Mutex::new(HashMap::new()),
            reaper_started: AtomicBool::new(false),
        })
    }

    /// A connection for `key` with room for one more stream: the least busy, or one made
    /// with `connect` if none has room or every one is busy and fewer than `lanes` are
    /// open; the reservation holds the stream's place.
    pub(crate) async fn checkout<F, Fut>(
        self: &Arc<Self>,
        key: &PoolKey,
        cert_serial: &str,
        connect: F,
    ) -> Result<(Arc<PooledConnection>, StreamReservation, bool), HboneError>
    where
        F: FnOnce() -> Fut,
        Fut: Future<Output = Result<PooledConnection, HboneError>>,
    {
        self.start_reaper();
        let connections = self.connections(key);
        let mut connections = connections.lock().await;
        connections.retain(|c| !c.closed.load(Ordering::Acquire));
        let lanes = connections
            .iter()
            .filter(|c| c.cert_serial == cert_serial)
            .count();
        if let Some(conn) = connections
            .iter()
            .filter(|c| c.usable(cert_serial, self.max_streams))
            .min_by_key(|c| c.active())
            && (conn.active() == 0 || lanes >= self.lanes)
        {
            let reservation = conn.reserve();
            return Ok((conn.clone(), reservation, true));
        }
        let conn = Arc::new(connect().await?);
        let reservation = conn.reserve();
        connections.push(conn.clone());
        Ok((conn, reservation, false))
    }

    /// How many open connections the pool holds (all keys).
    pub(crate) fn connection_count(&self) -> usize {
        self.by_key
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .values()
            .map(|c| {
                c.try_lock().map_or(0, |c| {
                    c.iter()
                        .filter(|c| !c.closed.load(Ordering::Acquire))
                        .count()
                })
            })
            .sum()
    }

    fn connections(&self, key: &PoolKey) -> Connections {
        self.by_key
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .entry(key.clone())
            .or_default()
            .clone()
    }

    /// Closes idle connections every half of the shorter idle timeout, for as long as the
    /// pool lives.
    fn start_reaper(self: &Arc<Self>) {
        if self.reaper_started.swap(true, Ordering::AcqRel) {
            return;
        }
        let pool: Weak<Pool> = Arc::downgrade(self);
        let shorter = self.idle.lanes.min(self.idle.surplus);
        let period = (shorter / 2).max(Duration::from_millis(10));
        tokio::spawn(async move {
            let mut tick = tokio::time::interval(period);
            loop {
                tick.tick().await;
                let Some(pool) = pool.upgrade() else { return };
                pool.close_idle();
            }
        });
    }

    fn close_idle(&self) {
        let mut by_key = self.by_key.lock().unwrap_or_else(|p| p.into_inner());
        by_key.retain(|_, connections| {
            let Ok(mut connections) = connections.try_lock() else {
                return true;
            };
            connections.retain(|c| !c.closed.load(Ordering::Acquire));
            // Busy connections first, then the least idle: the first `lanes` of that order
            // are the lanes new tunnels will take, the rest a burst's surplus.
            connections.sort_by_key(|c| c.idle_for().unwrap_or(Duration::ZERO));
            let mut rank = 0;
            // Dropping our SendRequest lets h2 send GOAWAY and close once streams finish.
            connections.retain(|c| {
                let limit = if rank < self.lanes {
                    self.idle.lanes
                } else {
                    self.idle.surplus
                };
                rank += 1;
                c.idle_for().is_none_or(|idle| idle < limit)
            });
            !connections.is_empty()
        });
    }
}
