//! A TCP echo server and its client: the simplest proof that bytes cross intact.

use std::io;
use std::net::SocketAddr;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Echoes every connection's bytes back until the peer half-closes, then closes.
///
/// Each connection runs on its own task, so a slow peer never holds up the others.
pub async fn serve(listener: TcpListener) -> io::Result<()> {
    loop {
        let (stream, peer) = listener.accept().await?;
        tokio::spawn(async move {
            if let Err(err) = echo(stream).await {
                eprintln!("tcp-echo: connection from {peer}: {err}");
            }
        });
    }
}

async fn echo(stream: TcpStream) -> io::Result<()> {
    let (mut read, mut write) = stream.into_split();
    tokio::io::copy(&mut read, &mut write).await?;
    write.shutdown().await
}

/// Sends `payload`, half-closes, and returns everything the server sent back.
///
/// Writing and reading run concurrently, so payloads larger than the socket buffers
/// cannot deadlock.
pub async fn round_trip(addr: SocketAddr, payload: &[u8]) -> io::Result<Vec<u8>> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|err| with_addr(addr, err))?;
    let (mut read, mut write) = stream.into_split();
    let send = async {
        write.write_all(payload).await?;
        write.shutdown().await
    };
    let mut received = Vec::with_capacity(payload.len());
    let receive = read.read_to_end(&mut received);
    tokio::try_join!(send, receive).map_err(|err| with_addr(addr, err))?;
    Ok(received)
}

fn with_addr(addr: SocketAddr, err: io::Error) -> io::Error {
    io::Error::new(err.kind(), format!("tcp echo with {addr}: {err}"))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn echoes_a_payload_larger_than_socket_buffers() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener));
        let payload: Vec<u8> = (0..4 << 20).map(|i: u32| (i % 251) as u8).collect();
        assert_eq!(round_trip(addr, &payload).await.unwrap(), payload);
    }
}
