//! An HTTP echo server that says which pod answered, and a client for it.
//!
//! One port serves HTTP/1.1 and HTTP/2 (prior knowledge, as meshes carry it). The reply is
//! JSON naming the pod, namespace and node, the peer address, and every request header:
//! enough for tests to check routing (which pod answered), header propagation, and that
//! the source address was preserved.

use std::collections::BTreeMap;
use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper::{Request, Response};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use serde::{Deserialize, Serialize};
use tokio::net::{TcpListener, TcpStream};

/// Who the server says it is (normally the pod's downward-API values).
#[derive(Clone, Debug, Default)]
pub struct ServerIdentity {
    /// Pod name.
    pub pod: String,
    /// Kubernetes namespace.
    pub namespace: String,
    /// Node name.
    pub node: String,
}

/// The JSON body every request gets back.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct EchoReply {
    /// Name of the pod that answered.
    pub pod: String,
    /// Its namespace.
    pub namespace: String,
    /// Its node.
    pub node: String,
    /// The address the connection came from, as the server saw it.
    pub peer: String,
    /// Request method.
    pub method: String,
    /// Request path and query.
    pub path: String,
    /// `HTTP/1.1` or `HTTP/2.0`.
    pub version: String,
    /// Request headers, lowercase names, repeated values joined with `, `.
    pub headers: BTreeMap<String, String>,
}

/// Serves HTTP/1.1 and HTTP/2 on `listener` until the process ends.
pub async fn serve(listener: TcpListener, identity: ServerIdentity) -> io::Result<()> {
    let identity = Arc::new(identity);
    loop {
        let (stream, peer) = listener.accept().await?;
        let identity = identity.clone();
        tokio::spawn(async move {
            let service = hyper::service::service_fn(move |request| {
                let reply = answer(&identity, peer, &request);
                async move { Ok::<_, Infallible>(reply) }
            });
            let served = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
            if let Err(err) = served {
                eprintln!("http-echo: connection from {peer}: {err}");
            }
        });
    }
}

fn answer(
    identity: &ServerIdentity,
    peer: SocketAddr,
    request: &Request<Incoming>,
) -> Response<Full<Bytes>> {
    let mut headers = BTreeMap::<String, String>::new();
    for (name, value) in request.headers() {
        let value = String::from_utf8_lossy(value.as_bytes()).into_owned();
        headers
            .entry(name.as_str().to_string())
            .and_modify(|existing| {
                existing.push_str(", ");
                existing.push_str(&value);
            })
            .or_insert(value);
    }
    let reply = EchoReply {
        pod: identity.pod.clone(),
        namespace: identity.namespace.clone(),
        node: identity.node.clone(),
        peer: peer.to_string(),
        method: request.method().to_string(),
        path: request
            .uri()
            .path_and_query()
            .map_or("/", |p| p.as_str())
            .to_string(),
        version: format!("{:?}", request.version()),
        headers,
    };
    let body = serde_json::to_vec(&reply).unwrap_or_default();
    Response::builder()
        .header("content-type", "application/json")
        .header("x-served-by", identity.pod.as_str())
        .body(Full::new(Bytes::from(body)))
        .unwrap_or_else(|_| Response::new(Full::new(Bytes::new())))
}

/// Which HTTP version the client speaks.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum HttpVersion {
    /// HTTP/1.1.
    Http1,
    /// HTTP/2 with prior knowledge (no upgrade dance).
    Http2,
}

/// Why a request to an HTTP server failed.
#[derive(Debug, thiserror::Error)]
pub enum HttpClientError {
    /// The TCP connection could not be made.
    #[error("connecting to {addr}: {source}")]
    Connect {
        /// Where.
        addr: SocketAddr,
        /// Why.
        source: io::Error,
    },
    /// The HTTP exchange failed (reset, protocol error, ...).
    #[error("HTTP exchange with {addr}: {source}")]
    Http {
        /// With whom.
        addr: SocketAddr,
        /// Why.
        source: hyper::Error,
    },
    /// The request could not be built (bad path or header).
    #[error("bad request to {addr}: {reason}")]
    BadRequest {
        /// For whom.
        addr: SocketAddr,
        /// What was wrong.
        reason: String,
    },
    /// The body is not an [`EchoReply`].
    #[error("{addr} answered {status} with a body that is not an echo reply: {body}")]
    NotEcho {
        /// Who answered.
        addr: SocketAddr,
        /// With what status.
        status: u16,
        /// The body, lossily decoded.
        body: String,
    },
}

/// A whole HTTP response.
#[derive(Clone, Debug)]
pub struct HttpReply {
    /// Who answered.
    pub addr: SocketAddr,
    /// Status code.
    pub status: u16,
    /// Response headers, lowercase names.
    pub headers: BTreeMap<String, String>,
    /// The body.
    pub body: Bytes,
}

impl HttpReply {
    /// The body as an [`EchoReply`], if the echo server answered.
    pub fn echo(&self) -> Result<EchoReply, HttpClientError> {
        serde_json::from_slice(&self.body).map_err(|_| HttpClientError::NotEcho {
            addr: self.addr,
            status: self.status,
            body: String::from_utf8_lossy(&self.body).into_owned(),
        })
    }
}

/// Sends one GET to `addr` on a fresh connection and reads the whole response.
pub async fn get(
    addr: SocketAddr,
    path: &str,
    version: HttpVersion,
    headers: &[(&str, &str)],
) -> Result<HttpReply, HttpClientError> {
    let stream = TcpStream::connect(addr)
        .await
        .map_err(|source| HttpClientError::Connect { addr, source })?;
    let io = TokioIo::new(stream);
    let http = |source| HttpClientError::Http { addr, source };
    let mut request = Request::get(format!("http://{addr}{path}"));
    if version == HttpVersion::Http1 {
        request = Request::get(path).header("host", addr.to_string());
    }
    for (name, value) in headers {
        request = request.header(*name, *value);
    }
    let request =
        request
            .body(Full::new(Bytes::new()))
            .map_err(|err| HttpClientError::BadRequest {
                addr,
                reason: err.to_string(),
            })?;
    let response = match version {
        HttpVersion::Http1 => {
            let (mut sender, connection) = hyper::client::conn::http1::handshake(io)
                .await
                .map_err(http)?;
            tokio::spawn(connection);
            sender.send_request(request).await.map_err(http)?
        }
        HttpVersion::Http2 => {
            let (mut sender, connection) =
                hyper::client::conn::http2::handshake(TokioExecutor::new(), io)
                    .await
                    .map_err(http)?;
            tokio::spawn(connection);
            sender.send_request(request).await.map_err(http)?
        }
    };
    let status = response.status();
    let headers = response
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_string(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = response
        .into_body()
        .collect()
        .await
        .map_err(http)?
        .to_bytes();
    Ok(HttpReply {
        addr,
        status: status.as_u16(),
        headers,
        body,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    async fn server() -> SocketAddr {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        let identity = ServerIdentity {
            pod: "server-0".into(),
            namespace: "shop".into(),
            node: "n2".into(),
        };
        tokio::spawn(serve(listener, identity));
        addr
    }

    #[tokio::test]
    async fn answers_both_versions_with_pod_name_and_headers() {
        let addr = server().await;
        for (version, expected) in [
            (HttpVersion::Http1, "HTTP/1.1"),
            (HttpVersion::Http2, "HTTP/2.0"),
        ] {
            let reply = get(
                addr,
                "/predict?model=a",
                version,
                &[("x-canary", "yes"), ("x-canary", "twice")],
            )
            .await
            .unwrap();
            assert_eq!(reply.status, 200);
            assert_eq!(reply.headers["x-served-by"], "server-0");
            let echo = reply.echo().unwrap();
            assert_eq!(
                (
                    echo.pod.as_str(),
                    echo.namespace.as_str(),
                    echo.node.as_str()
                ),
                ("server-0", "shop", "n2")
            );
            assert_eq!(echo.version, expected);
            assert_eq!(echo.path, "/predict?model=a");
            assert_eq!(echo.headers["x-canary"], "yes, twice");
            assert!(echo.peer.starts_with("127.0.0.1:"), "{}", echo.peer);
        }
    }

    #[tokio::test]
    async fn a_closed_port_is_a_connect_error_naming_the_address() {
        let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
        let addr = listener.local_addr().unwrap();
        drop(listener);
        let err = get(addr, "/", HttpVersion::Http1, &[]).await.unwrap_err();
        assert!(matches!(err, HttpClientError::Connect { .. }), "{err}");
        assert!(err.to_string().contains(&addr.to_string()));
    }
}
