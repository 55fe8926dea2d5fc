//! A TCP sink: reads each connection to its end, then answers with how many bytes it read
//! (8 bytes, big-endian). The throughput benchmark's server: the count tells the sender
//! what actually arrived, not what its socket buffers accepted.

use std::io;

use tokio::io::{AsyncReadExt, AsyncWriteExt};
use tokio::net::{TcpListener, TcpStream};

/// Serves every connection on its own task.
pub async fn serve(listener: TcpListener) -> io::Result<()> {
    loop {
        let (stream, peer) = listener.accept().await?;
        tokio::spawn(async move {
            if let Err(err) = sink(stream).await {
                eprintln!("tcp-sink: connection from {peer}: {err}");
            }
        });
    }
}

async fn sink(mut stream: TcpStream) -> io::Result<()> {
    let mut buffer = vec![0u8; 256 << 10];
    let mut total = 0u64;
    loop {
        match stream.read(&mut buffer).await? {
            0 => break,
            n => total += n as u64,
        }
    }
    stream.write_all(&total.to_be_bytes()).await?;
    stream.shutdown().await
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test]
    async fn answers_with_the_byte_count_after_the_sender_half_closes() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        tokio::spawn(serve(listener));
        let mut stream = TcpStream::connect(addr).await.unwrap();
        let chunk = vec![1u8; 1 << 20];
        for _ in 0..5 {
            stream.write_all(&chunk).await.unwrap();
        }
        stream.shutdown().await.unwrap();
        let mut count = [0u8; 8];
        stream.read_exact(&mut count).await.unwrap();
        assert_eq!(u64::from_be_bytes(count), 5 << 20);
    }
}
