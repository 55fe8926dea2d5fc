//! Sockets that live in a pod's network namespace.
//!
//! A socket belongs to the namespace it was created in, whatever thread uses it later.
//! ztunnel creates its in-pod listeners and its upstream sockets on a thread inside the
//! pod's namespace (`crate::netns::run_in`) and then drives them from its runtime.

use std::io;
use std::net::SocketAddr;
use std::os::fd::AsFd;

use socket2::{Domain, Protocol, Socket, Type};
use tokio::net::{TcpListener, TcpSocket, TcpStream};

/// Binds a TCP listener on `addr` inside `netns`. With `transparent`, it accepts
/// connections TPROXYed to it (IP_TRANSPARENT), whose local address is then the original
/// destination. Must be called within a Tokio runtime.
///
/// The listener shares its port (SO_REUSEPORT) so a restarted ztunnel can bind beside the
/// one it replaces; see [`migrate_on_close_in`] for what happens when the old one closes.
pub fn listen_in(
    netns: &(impl AsFd + Sync),
    addr: SocketAddr,
    transparent: bool,
) -> io::Result<TcpListener> {
    let socket = crate::netns::run_in(netns, || -> io::Result<Socket> {
        let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_reuse_address(true)?;
        socket.set_reuse_port(true)?;
        if transparent {
            socket.set_ip_transparent_v4(true)?;
        }
        socket.set_nonblocking(true)?;
        socket.bind(&addr.into())?;
        socket.listen(1024)?;
        Ok(socket)
    })??;
    TcpListener::from_std(socket.into())
}

/// Makes listeners in `netns` hand their not-yet-accepted connections to another listener
/// of the same port when they close (`net.ipv4.tcp_migrate_req`, Linux 5.14): when a
/// draining ztunnel closes its in-pod listeners, the connections in their queues go to
/// its successor's listeners instead of being reset.
pub fn migrate_on_close_in(netns: &(impl AsFd + Sync)) -> io::Result<()> {
    crate::netns::run_in(netns, || {
        std::fs::write("/proc/sys/net/ipv4/tcp_migrate_req", "1")
    })?
}

/// Binds a listener on the node (metrics, readiness, admin) that a restarted ztunnel can
/// bind too while its predecessor still holds it (SO_REUSEPORT). Must be called within a
/// Tokio runtime.
pub fn listen_shared(addr: SocketAddr) -> io::Result<TcpListener> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    socket.set_reuse_port(true)?;
    socket.set_nonblocking(true)?;
    socket.bind(&addr.into())?;
    socket.listen(1024)?;
    TcpListener::from_std(socket.into())
}

/// Connects to `dst` from inside `netns`, with `SO_MARK = mark` so the pod's redirection
/// rules let the connection pass. With `src`, the socket binds to that address first
/// (IP_TRANSPARENT, so it may be another host's address: the original client's); a `src`
/// port of 0 leaves the port to the kernel at connect().
pub async fn connect_in(
    netns: &(impl AsFd + Sync),
    mark: u32,
    src: Option<SocketAddr>,
    dst: SocketAddr,
) -> io::Result<TcpStream> {
    // Per connection: switch this thread in and out rather than start a thread.
    let socket = crate::netns::run_here(netns, || -> io::Result<Socket> {
        let socket = Socket::new(Domain::for_address(dst), Type::STREAM, Some(Protocol::TCP))?;
        socket.set_mark(mark)?;
        socket.set_nonblocking(true)?;
        socket.set_tcp_nodelay(true)?;
        if let Some(src) = src {
            socket.set_ip_transparent_v4(true)?;
            if src.port() == 0 {
                // Let connect() pick the port, with the whole 4-tuple known. Bound to port 0
                // without it, the kernel searches the namespace's bound and TIME_WAIT
                // sockets for a port free toward every destination: under connection churn
                // that search was 12% of both ztunnels' CPU.
                nix::sys::socket::setsockopt(
                    &socket,
                    nix::sys::socket::sockopt::IpBindAddressNoPort,
                    &true,
                )?;
            }
            socket.bind(&src.into())?;
        }
        Ok(socket)
    })??;
    let stream: std::net::TcpStream = socket.into();
    TcpSocket::from_std_stream(stream).connect(dst).await
}

/// The destination a REDIRECTed connection was originally sent to (`SO_ORIGINAL_DST`).
pub fn original_dst(stream: &TcpStream) -> io::Result<SocketAddr> {
    let fd = stream.as_fd();
    let raw = nix::sys::socket::getsockopt(&fd, nix::sys::socket::sockopt::OriginalDst)
        .map_err(io::Error::from)?;
    let ip = std::net::Ipv4Addr::from(u32::from_be(raw.sin_addr.s_addr));
    Ok(SocketAddr::from((ip, u16::from_be(raw.sin_port))))
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Needs root (setns, IP_TRANSPARENT), as the suite runs.
    #[tokio::test]
    async fn a_transparent_connect_keeps_the_source_address_and_leaves_the_port_to_connect() {
        let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
        let here = std::fs::File::open("/proc/thread-self/ns/net").unwrap();
        let src: SocketAddr = "127.0.0.7:0".parse().unwrap();
        let stream = connect_in(&here, 0, Some(src), listener.local_addr().unwrap())
            .await
            .unwrap();
        let (_, peer) = listener.accept().await.unwrap();
        assert_eq!(
            peer.ip(),
            src.ip(),
            "the server sees the given source address"
        );
        assert_ne!(peer.port(), 0);
        assert!(
            nix::sys::socket::getsockopt(&stream, nix::sys::socket::sockopt::IpBindAddressNoPort)
                .unwrap(),
            "the port is picked at connect(), not searched for at bind()"
        );
    }
}
