//! Where a pod proxy's sockets come from: the one seam between the proxy's logic and the
//! kernel.
//!
//! [`InPod`] is production: every socket is made inside the pod's network namespace,
//! upstream ones carry ztunnel's mark, the inbound listeners are transparent and the
//! outbound one learns the original destination from the redirect (`SO_ORIGINAL_DST`).
//! [`OnHost`] makes plain sockets on this host's loopback, one address per pod, so tests
//! run the real outbound, HBONE and inbound code in-process without root or namespaces.

use std::collections::HashMap;
use std::fs::File;
use std::future::Future;
use std::io;
use std::net::{IpAddr, Ipv4Addr, SocketAddr};
use std::pin::Pin;
use std::sync::{Arc, Mutex};

use tokio::net::{TcpListener, TcpStream};

/// A connection being made.
pub type ConnectFuture<'a> = Pin<Box<dyn Future<Output = io::Result<TcpStream>> + Send + 'a>>;

/// The sockets of one pod's proxy.
pub trait PodSockets: Send + Sync + 'static {
    /// A listener on `port` of the pod; `transparent` ones accept connections addressed to
    /// any address (the inbound listeners, fed by TPROXY).
    fn listen(&self, port: u16, transparent: bool) -> io::Result<TcpListener>;

    /// A connection from the pod to `dst`, from `src` when given (a transparent bind, so
    /// the app sees its real caller).
    fn connect(&self, src: Option<SocketAddr>, dst: SocketAddr) -> ConnectFuture<'_>;

    /// Where an accepted outbound connection was going before it was redirected.
    fn original_dst(&self, stream: &TcpStream) -> io::Result<SocketAddr>;

    /// Whether a connection to `dst` would reach one of ztunnel's own listeners (so relaying
    /// it would connect ztunnel to itself); `pod_ips` are the destination pod's addresses.
    fn is_own_listener(&self, dst: SocketAddr, pod_ips: &[IpAddr]) -> bool {
        mesh_core::inpod::is_own_listener(dst.ip(), dst.port(), pod_ips)
    }

    /// Runs once before the listeners are bound.
    fn prepare(&self) -> io::Result<()> {
        Ok(())
    }
}

/// Sockets inside a pod's network namespace (production).
#[derive(Debug)]
pub struct InPod {
    netns: File,
    mark: u32,
}

impl InPod {
    /// The pod whose namespace `netns` is; upstream sockets get `mark`.
    pub fn new(netns: File, mark: u32) -> Self {
        InPod { netns, mark }
    }
}

impl PodSockets for InPod {
    fn listen(&self, port: u16, transparent: bool) -> io::Result<TcpListener> {
        let addr = SocketAddr::from((Ipv4Addr::UNSPECIFIED, port));
        mesh_core::socket::listen_in(&self.netns, addr, transparent)
    }

    fn connect(&self, src: Option<SocketAddr>, dst: SocketAddr) -> ConnectFuture<'_> {
        Box::pin(mesh_core::socket::connect_in(
            &self.netns,
            self.mark,
            src,
            dst,
        ))
    }

    fn original_dst(&self, stream: &TcpStream) -> io::Result<SocketAddr> {
        mesh_core::socket::original_dst(stream)
    }

    fn prepare(&self) -> io::Result<()> {
        mesh_core::socket::migrate_on_close_in(&self.netns)
    }
}

/// Plain sockets on this host for a pod whose address is a loopback address (127.x.y.z,
/// all routed to `lo` by Linux), for tests without privileges: listeners bind that
/// address, connections come from it (no transparent source: the app sees the pod's proxy),
/// and the original destination of an outbound connection is what the test registered for
/// the client's address with [`Redirects::redirect`] (the redirect's conntrack entry).
#[derive(Debug, Clone)]
pub struct OnHost {
    ip: IpAddr,
    redirects: Redirects,
}

/// Outbound connections' original destinations, by client address, shared by a test's
/// pods.
#[derive(Debug, Clone, Default)]
pub struct Redirects(Arc<Mutex<HashMap<SocketAddr, SocketAddr>>>);

impl Redirects {
    /// The connection the app opens from `client` was meant for `original`.
    pub fn redirect(&self, client: SocketAddr, original: SocketAddr) {
        self.0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .insert(client, original);
    }
}

impl OnHost {
    /// The pod at loopback address `ip`.
    pub fn new(ip: IpAddr, redirects: Redirects) -> Self {
        OnHost { ip, redirects }
    }
}

impl PodSockets for OnHost {
    fn listen(&self, port: u16, _transparent: bool) -> io::Result<TcpListener> {
        let listener = std::net::TcpListener::bind(SocketAddr::new(self.ip, port))?;
        listener.set_nonblocking(true)?;
        TcpListener::from_std(listener)
    }

    fn connect(&self, _src: Option<SocketAddr>, dst: SocketAddr) -> ConnectFuture<'_> {
        let ip = self.ip;
        Box::pin(async move {
            let socket = tokio::net::TcpSocket::new_v4()?;
            socket.bind(SocketAddr::new(ip, 0))?;
            socket.connect(dst).await
        })
    }

    fn original_dst(&self, stream: &TcpStream) -> io::Result<SocketAddr> {
        let client = stream.peer_addr()?;
        self.redirects
            .0
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .get(&client)
            .copied()
            .ok_or_else(|| {
                io::Error::new(io::ErrorKind::NotFound, format!("no redirect for {client}"))
            })
    }

    /// On the host every pod address is loopback, so only the ports decide: a pod's own
    /// ztunnel ports, and anything on 127.0.0.1 or unspecified, are ztunnel's.
    fn is_own_listener(&self, dst: SocketAddr, pod_ips: &[IpAddr]) -> bool {
        dst.ip().is_unspecified()
            || dst.ip() == IpAddr::from(Ipv4Addr::LOCALHOST)
            || (pod_ips.contains(&dst.ip())
                && mesh_core::inpod::ZTUNNEL_PORTS.contains(&dst.port()))
    }
}
