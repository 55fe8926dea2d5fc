//! The admin endpoint, on localhost only (15000): what ztunnel holds, and its log level.
//!
//! * `GET /config_dump`: JSON of the pods served, the workloads and services known, the
//!   policies, the certificates held (identity, serial, expiry), and every configuration
//!   object rejected (where, and why), for debugging.
//! * `POST /logging?level=<filter>`: change the log filter at runtime
//!   (`debug`, `info,ztunnel=debug`, ...).

use std::convert::Infallible;
use std::net::SocketAddr;
use std::sync::{Arc, Mutex};
use std::time::UNIX_EPOCH;

use bytes::Bytes;
use http_body_util::Full;
use hyper::{Method, Request, Response, StatusCode};
use serde_json::json;

use crate::proxy::ProxyState;

/// Changes the log filter; returns why not.
pub type SetLogLevel = Arc<dyn Fn(&str) -> Result<(), String> + Send + Sync>;

/// What the admin endpoint reads.
pub struct Admin {
    /// Shared proxy state (data plane, certificates).
    pub state: Arc<ProxyState>,
    /// Pods served, `namespace/name`, kept current by the ZDS loop.
    pub pods: Arc<Mutex<Vec<String>>>,
    /// Log filter control.
    pub set_log_level: SetLogLevel,
    /// Configuration objects rejected in the current snapshot, as reported.
    pub rejected: Arc<Mutex<Vec<String>>>,
}

impl Admin {
    fn config_dump(&self) -> String {
        let plane = self.state.plane.borrow().clone();
        let workloads: Vec<_> = plane
            .workloads_by_ip
            .iter()
            .map(|(ip, w)| json!({"ip": ip.to_string(), "name": w.name, "namespace": w.namespace, "identity": w.identity.to_string(), "node": w.node, "captured": w.captured}))
            .collect();
        let services: Vec<_> = plane
            .services_by_vip
            .iter()
            .map(|(vip, s)| json!({"vip": vip.to_string(), "hostname": s.hostname(), "endpoints": s.endpoints.iter().map(|w| w.name.clone()).collect::<Vec<_>>()}))
            .collect();
        let name = |meta: &k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta| {
            format!(
                "{}/{}",
                meta.namespace.as_deref().unwrap_or("default"),
                meta.name.as_deref().unwrap_or("")
            )
        };
        let certificates: Vec<_> = self
            .state
            .certs
            .snapshot()
            .into_iter()
            .map(|(identity, cert)| {
                let (serial, expires) = cert.map_or((None, None), |c| {
                    let expiry = c.info().not_after.duration_since(UNIX_EPOCH).map(|d| d.as_secs()).unwrap_or(0);
                    (Some(c.info().serial.clone()), Some(expiry))
                });
                json!({"identity": identity.to_string(), "serial": serial, "not_after_unix": expires})
            })
            .collect();
        let pods = self.pods.lock().map(|p| p.clone()).unwrap_or_default();
        let rejected = self.rejected.lock().map(|r| r.clone()).unwrap_or_default();
        json!({
            "pods": pods,
            "workloads": workloads,
            "services": services,
            "authorization_policies": plane.authorization_policies.iter().map(|p| p.name.clone()).collect::<Vec<_>>(),
            "peer_authentications": plane.peer_authentications.iter().map(|p| name(&p.metadata)).collect::<Vec<_>>(),
            "certificates": certificates,
            "rejected": rejected,
        })
        .to_string()
    }

    fn answer(&self, request: &Request<hyper::body::Incoming>) -> (StatusCode, String) {
        match (request.method(), request.uri().path()) {
            (&Method::GET, "/config_dump") => (StatusCode::OK, self.config_dump()),
            (&Method::POST, "/logging") => {
                let level = request
                    .uri()
                    .query()
                    .unwrap_or_default()
                    .split('&')
                    .find_map(|pair| pair.strip_prefix("level="))
                    .unwrap_or_default();
                if level.is_empty() {
                    return (
                        StatusCode::BAD_REQUEST,
                        "use POST /logging?level=<filter>\n".into(),
                    );
                }
                match (self.set_log_level)(level) {
                    Ok(()) => (StatusCode::OK, format!("log level set to {level}\n")),
                    Err(err) => (
                        StatusCode::BAD_REQUEST,
                        format!("bad log filter {level:?}: {err}\n"),
                    ),
                }
            }
            _ => (
                StatusCode::NOT_FOUND,
                "endpoints: GET /config_dump, POST /logging?level=<filter>\n".into(),
            ),
        }
    }
}

/// Binds `addr` (refusing anything but loopback) and serves until `drain` starts.
pub async fn serve(
    addr: SocketAddr,
    admin: Arc<Admin>,
    drain: mesh_core::drain::DrainWatch,
) -> std::io::Result<impl std::future::Future<Output = ()>> {
    if !addr.ip().is_loopback() {
        return Err(std::io::Error::new(
            std::io::ErrorKind::InvalidInput,
            format!("the admin endpoint must be on loopback, not {addr}"),
        ));
    }
    let listener = mesh_core::socket::listen_shared(addr)?;
    let page = move |request: Request<hyper::body::Incoming>| {
        let (status, body) = admin.answer(&request);
        async move {
            let mut response = Response::new(Full::new(Bytes::from(body)));
            *response.status_mut() = status;
            Ok::<_, Infallible>(response)
        }
    };
    Ok(crate::http_endpoints::serve_http(listener, page, drain))
}
