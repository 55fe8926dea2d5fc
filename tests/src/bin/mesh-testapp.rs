//! `mesh-testapp`: the servers and clients that run inside simulated pods.
//!
//! Servers print `listening on <addr>` once bound, which is what the harness waits for.

use std::net::SocketAddr;

use anyhow::{Context, bail};
use clap::{Parser, Subcommand};
use mesh_tests::apps::http_echo::{self, HttpVersion, ServerIdentity};
use mesh_tests::apps::{READY_LINE, tcp_echo, tcp_sink};
use tokio::net::TcpListener;

/// Test applications for the simulated cluster: echo servers and their clients.
#[derive(Parser)]
#[command(version, about)]
struct Args {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Echo every TCP connection's bytes back.
    TcpEcho {
        /// Address to listen on.
        #[arg(long, default_value = "0.0.0.0:7000")]
        listen: SocketAddr,
    },
    /// Read each TCP connection to its end, then answer with the byte count.
    TcpSink {
        /// Address to listen on.
        #[arg(long, default_value = "0.0.0.0:7001")]
        listen: SocketAddr,
    },
    /// Answer HTTP/1.1 and HTTP/2 with JSON naming this pod and echoing the request headers.
    HttpEcho {
        /// Address to listen on.
        #[arg(long, default_value = "0.0.0.0:8080")]
        listen: SocketAddr,
        /// Pod name to answer with.
        #[arg(long, env = "POD_NAME", default_value = "unknown")]
        name: String,
        /// Namespace to answer with.
        #[arg(long, env = "POD_NAMESPACE", default_value = "default")]
        namespace: String,
        /// Node to answer with.
        #[arg(long, env = "NODE_NAME", default_value = "unknown")]
        node: String,
    },
    /// Send a message to a TCP echo server and print what comes back.
    TcpSend {
        /// Server address.
        #[arg(long)]
        to: SocketAddr,
        /// The message.
        #[arg(long, default_value = "ping")]
        message: String,
    },
    /// GET a path from an HTTP server and print the status line and body.
    HttpGet {
        /// Server address.
        #[arg(long)]
        to: SocketAddr,
        /// Path and query.
        #[arg(long, default_value = "/")]
        path: String,
        /// Speak HTTP/2 (prior knowledge) instead of HTTP/1.1.
        #[arg(long)]
        http2: bool,
        /// Extra request header, `name: value`; repeatable.
        #[arg(long = "header", short = 'H')]
        headers: Vec<String>,
    },
}

#[tokio::main(flavor = "current_thread")]
async fn main() -> anyhow::Result<()> {
    match Args::parse().command {
        Command::TcpEcho { listen } => {
            let listener = bind(listen).await?;
            tcp_echo::serve(listener).await.context("tcp-echo stopped")
        }
        Command::TcpSink { listen } => {
            let listener = bind(listen).await?;
            tcp_sink::serve(listener).await.context("tcp-sink stopped")
        }
        Command::HttpEcho {
            listen,
            name,
            namespace,
            node,
        } => {
            let listener = bind(listen).await?;
            let identity = ServerIdentity {
                pod: name,
                namespace,
                node,
            };
            http_echo::serve(listener, identity)
                .await
                .context("http-echo stopped")
        }
        Command::TcpSend { to, message } => {
            let reply = tcp_echo::round_trip(to, message.as_bytes()).await?;
            println!("{}", String::from_utf8_lossy(&reply));
            Ok(())
        }
        Command::HttpGet {
            to,
            path,
            http2,
            headers,
        } => {
            let headers = headers
                .iter()
                .map(|h| h.split_once(':').map(|(k, v)| (k.trim(), v.trim())))
                .collect::<Option<Vec<_>>>()
                .context("--header must look like `name: value`")?;
            let version = if http2 {
                HttpVersion::Http2
            } else {
                HttpVersion::Http1
            };
            let reply = http_echo::get(to, &path, version, &headers).await?;
            println!("{}", reply.status);
            println!("{}", String::from_utf8_lossy(&reply.body));
            if !(200..300).contains(&reply.status) {
                bail!("{to} answered {}", reply.status);
            }
            Ok(())
        }
    }
}

async fn bind(addr: SocketAddr) -> anyhow::Result<TcpListener> {
    let listener = TcpListener::bind(addr)
        .await
        .with_context(|| format!("binding {addr}"))?;
    println!("{READY_LINE} {}", listener.local_addr()?);
    Ok(listener)
}
