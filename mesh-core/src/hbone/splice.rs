//! Proxies bytes between a TCP connection and an HBONE tunnel, both ways.
//!
//! Written for the proxy's hot path instead of `tokio::io::copy_bidirectional`, which
//! holds two 8 KiB buffers per connection for its whole life and copies every chunk once
//! more into h2. Here an idle connection holds no buffer: one is taken only when the socket
//! is readable, and becomes the DATA frame's payload as it is (no second copy); received
//! DATA frames are written to the socket straight from h2's buffers. Chunks are up to
//! [`CHUNK`] bytes, so bulk transfers cost fewer wake-ups per byte.

use std::future::poll_fn;
use std::io;
use std::net::Shutdown;

use bytes::BytesMut;
use h2::{Reason, RecvStream, SendStream};
use tokio::io::Interest;
use tokio::net::TcpStream;

use super::stream::{H2Stream, to_io};

/// The most one socket read takes before it is sent as a DATA frame: 64 KiB with the
/// frame's 9-byte head. rustls takes at most 64 KiB of plaintext per write (its default
/// send-buffer limit), so a 64 KiB payload left its head's 9 bytes over: a TLS record and
/// a `writev` of their own, sent as a separate packet, after every full read.
pub const CHUNK: usize = (64 << 10) - H2_FRAME_HEAD;

/// The length of an HTTP/2 frame's head (RFC 9113, section 4.1).
const H2_FRAME_HEAD: usize = 9;

/// Bytes each way once both directions have ended.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct Spliced {
    /// From the TCP connection into the tunnel.
    pub to_tunnel: u64,
    /// From the tunnel to the TCP connection.
    pub from_tunnel: u64,
}

/// Told about bytes as they pass, so a connection's counters grow while it is open (a
/// long-lived connection is visible in metrics before it closes).
pub trait Meter: Sync {
    /// `n` more bytes went from the TCP connection into the tunnel.
    fn entered_tunnel(&self, n: u64);
    /// `n` more bytes went from the tunnel to the TCP connection.
    fn left_tunnel(&self, n: u64);
}

/// No meter: only the totals at the end.
impl Meter for () {
    fn entered_tunnel(&self, _: u64) {}
    fn left_tunnel(&self, _: u64) {}
}

/// Copies both ways until each side has finished sending: the socket's EOF ends the
/// tunnel's send half (END_STREAM), the tunnel's end shuts the socket's write half.
/// An error on either side (a reset stream, a reset socket) ends both.
pub async fn splice(tcp: &TcpStream, tunnel: H2Stream) -> io::Result<Spliced> {
    splice_metered(tcp, tunnel, &()).await
}

/// [`splice`], telling `meter` about every chunk as it passes.
pub async fn splice_metered(
    tcp: &TcpStream,
    tunnel: H2Stream,
    meter: &impl Meter,
) -> io::Result<Spliced> {
    let (send, recv, _slot) = tunnel.into_parts();
    let (to_tunnel, from_tunnel) = tokio::try_join!(
        tcp_to_tunnel(tcp, send, meter),
        tunnel_to_tcp(recv, tcp, meter)
    )?;
    Ok(Spliced {
        to_tunnel,
        from_tunnel,
    })
}

async fn tcp_to_tunnel(
    tcp: &TcpStream,
    mut send: SendStream<bytes::Bytes>,
    meter: &impl Meter,
) -> io::Result<u64> {
    let mut total = 0u64;
    loop {
        tcp.readable().await?;
        let mut buffer = BytesMut::with_capacity(CHUNK);
        let n = match read_chunk(tcp, &mut buffer) {
            Ok(Some(n)) => n,
            Ok(None) => continue,
            Err(err) => {
                send.send_reset(Reason::CANCEL);
                return Err(err);
            }
        };
        if n == 0 {
            send.send_data(bytes::Bytes::new(), true).map_err(to_io)?;
            return Ok(total);
        }
        total += n as u64;
        meter.entered_tunnel(n as u64);
        let mut data = buffer.freeze();
        while !data.is_empty() {
            send.reserve_capacity(data.len());
            let granted = match poll_fn(|cx| send.poll_capacity(cx)).await {
                Some(Ok(granted)) => granted,
                Some(Err(err)) => return Err(to_io(err)),
                None => return Err(io::ErrorKind::BrokenPipe.into()),
            };
            if granted == 0 {
                continue;
            }
            let chunk = data.split_to(granted.min(data.len()));
            send.send_data(chunk, false).map_err(to_io)?;
        }
    }
}

/// One read into `buffer`: `Some(0)` at the end of the stream, `None` when nothing was
/// waiting after all.
///
/// A read that leaves room in the buffer took everything the socket held, so it also
/// marks the socket not readable, as the failed read that would follow otherwise does: one
/// syscall less per message, and it was on the message's path (it ran before h2 wrote the
/// frame). Safe against data arriving meanwhile: tokio clears readiness only if no event
/// came since the one the read started from, and never clears an end of stream.
fn read_chunk(tcp: &TcpStream, buffer: &mut BytesMut) -> io::Result<Option<usize>> {
    let read = tcp.try_io(Interest::READABLE, || {
        let n = tcp.try_read_buf(buffer)?;
        if n > 0 && buffer.len() < buffer.capacity() {
            return Err(io::ErrorKind::WouldBlock.into());
        }
        Ok(n)
    });
    match read {
        Ok(n) => Ok(Some(n)),
        Err(err) if err.kind() == io::ErrorKind::WouldBlock && !buffer.is_empty() => {
            Ok(Some(buffer.len()))
        }
        Err(err) if err.kind() == io::ErrorKind::WouldBlock => Ok(None),
        Err(err) => Err(err),
    }
}

async fn tunnel_to_tcp(
    mut recv: RecvStream,
    tcp: &TcpStream,
    meter: &impl Meter,
) -> io::Result<u64> {
    let mut total = 0u64;
    loop {
        match recv.data().await {
            Some(Ok(data)) => {
                write_all(tcp, &data).await?;
                total += data.len() as u64;
                meter.left_tunnel(data.len() as u64);
                // The window goes back once the socket took the bytes: a slow reader
                // paces the sender.
                let _ = recv.flow_control().release_capacity(data.len());
            }
            Some(Err(err)) if err.reason() != Some(Reason::NO_ERROR) => {
                return Err(to_io(err));
            }
            Some(Err(_)) | None => {
                socket2::SockRef::from(tcp).shutdown(Shutdown::Write)?;
                return Ok(total);
            }
        }
    }
}

async fn write_all(tcp: &TcpStream, mut data: &[u8]) -> io::Result<()> {
    while !data.is_empty() {
        tcp.writable().await?;
        match tcp.try_write(data) {
            Ok(n) => data = &data[n..],
            Err(err) if err.kind() == io::ErrorKind::WouldBlock => continue,
            Err(err) => return Err(err),
        }
    }
    Ok(())
}
