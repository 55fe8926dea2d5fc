//! ztunnel's HTTP endpoints on the node: Prometheus metrics (15020) and readiness (15021).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::Arc;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Request, Response, StatusCode};
use hyper_util::rt::{TokioExecutor, TokioIo};
use hyper_util::server::conn::auto;
use mesh_core::drain::{DrainWatch, accept_until_drained};
use tokio::net::TcpListener;

use crate::metrics::Metrics;

/// Where the endpoints listen (Istio's ports).
#[derive(Debug, Clone, Copy)]
pub struct Endpoints {
    /// `/metrics`.
    pub metrics: SocketAddr,
    /// `/healthz/ready`.
    pub readiness: SocketAddr,
}

/// Binds both listeners (so readiness is only reported once everything is bound) and
/// serves them until `drain` starts.
pub async fn serve(
    endpoints: Endpoints,
    metrics: Arc<Metrics>,
    readiness: Arc<crate::readiness::Readiness>,
    drain: DrainWatch,
) -> std::io::Result<impl std::future::Future<Output = ()>> {
    let metrics_listener = mesh_core::socket::listen_shared(endpoints.metrics)?;
    let readiness_listener = mesh_core::socket::listen_shared(endpoints.readiness)?;
    Ok(async move {
        let metrics_page = move |request: Request<hyper::body::Incoming>| {
            let body = if request.uri().path() == "/metrics" {
                Some(metrics.encode())
            } else {
                None
            };
            async move { Ok::<_, Infallible>(respond(body)) }
        };
        let ready_page = move |request: Request<hyper::body::Incoming>| {
            let response = if request.uri().path() != "/healthz/ready" {
                respond(None)
            } else {
                match readiness.missing().as_slice() {
                    [] => respond(Some("ready\n".to_string())),
                    missing => {
                        let mut response =
                            respond(Some(format!("not ready: {}\n", missing.join(", "))));
                        *response.status_mut() = StatusCode::SERVICE_UNAVAILABLE;
                        response
                    }
                }
            };
            async move { Ok::<_, Infallible>(response) }
        };
        tokio::join!(
            serve_http(metrics_listener, metrics_page, drain.clone()),
            serve_http(readiness_listener, ready_page, drain)
        );
    })
}

fn respond(body: Option<String>) -> Response<Full<Bytes>> {
    let (status, body) = match body {
        Some(body) => (StatusCode::OK, body),
        None => (StatusCode::NOT_FOUND, "not found\n".to_string()),
    };
    let mut response = Response::new(Full::new(Bytes::from(body)));
    *response.status_mut() = status;
    response
}

/// Serves HTTP/1.1 and HTTP/2 on `listener` with `page` until `drain` starts, each
/// connection on its own task (`mesh_core::drain::accept_until_drained`, which backs off
/// when accept fails). The node's HTTP endpoints (these two and the admin endpoint) all
/// run on it.
pub(crate) async fn serve_http<F, Fut>(listener: TcpListener, page: F, drain: DrainWatch)
where
    F: Fn(Request<hyper::body::Incoming>) -> Fut + Clone + Send + Sync + 'static,
    Fut: std::future::Future<Output = Result<Response<Full<Bytes>>, Infallible>> + Send + 'static,
{
    accept_until_drained(listener, &drain, "http", move |stream, _| {
        let page = page.clone();
        Some(async move {
            let service = hyper::service::service_fn(page);
            let _ = auto::Builder::new(TokioExecutor::new())
                .serve_connection(TokioIo::new(stream), service)
                .await;
        })
    })
    .await;
}
