//! Where an outbound connection goes: a pure decision over the data-plane model.

use std::net::SocketAddr;
use std::sync::Arc;

use mesh_core::hbone::HBONE_PORT;
use mesh_model::model::{DataPlane, Service, TargetPort, Workload};

/// The chosen upstream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Upstream {
    /// A captured workload: tunnel to its HBONE port.
    Hbone {
        /// `<pod ip>:15008`.
        hbone_addr: SocketAddr,
        /// `<pod ip>:<target port>`, the CONNECT authority.
        authority: SocketAddr,
        /// The destination workload.
        workload: Arc<Workload>,
        /// The service it was reached through, if any.
        service: Option<Arc<Service>>,
    },
    /// Not in the mesh: plain TCP to `addr`.
    Passthrough {
        /// Where to connect.
        addr: SocketAddr,
        /// The destination workload, if known.
        workload: Option<Arc<Workload>>,
        /// The service it was reached through, if any.
        service: Option<Arc<Service>>,
    },
}

/// Why no upstream could be chosen.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RouteError {
    /// The service has no running endpoint.
    #[error("service {0} has no endpoints")]
    NoEndpoints(String),
    /// The service does not expose the port.
    #[error("service {service} has no port {port}")]
    UnknownPort {
        /// The service hostname.
        service: String,
        /// The port asked for.
        port: u16,
    },
    /// The port targets a container port by name and no endpoint declares one of that
    /// name (kube-proxy leaves such endpoints out too).
    #[error("service {service} port {port} targets named port {name}, which no endpoint declares")]
    NamedPort {
        /// The service hostname.
        service: String,
        /// The service port.
        port: u16,
        /// The port name.
        name: String,
    },
}

/// Chooses the upstream for a connection the app sent to `dst`: a service VIP is
/// load-balanced over its endpoints (`pick(n)` returns an index below `n`); a workload
/// address goes to that workload; anything else passes through unchanged.
pub fn route(
    plane: &DataPlane,
    dst: SocketAddr,
    pick: impl FnOnce(usize) -> usize,
) -> Result<Upstream, RouteError> {
    if let Some(service) = plane.service(dst.ip()) {
        let port = service
            .port(dst.port())
            .ok_or_else(|| RouteError::UnknownPort {
                service: service.hostname.clone(),
                port: dst.port(),
            })?;
        // An endpoint serves the port when it has an address and, for a named target
        // port, declares a container port of that name.
        let endpoints: Vec<(&Arc<Workload>, u16)> = service
            .endpoints
            .iter()
            .filter(|w| !w.ips.is_empty())
            .filter_map(|w| Some((w, port.target_on(w)?)))
            .collect();
        if endpoints.is_empty() {
            return Err(match &port.target_port {
                TargetPort::Named(name) if !service.endpoints.is_empty() => RouteError::NamedPort {
                    service: service.hostname.clone(),
                    port: port.port,
                    name: name.clone(),
                },
                _ => RouteError::NoEndpoints(service.hostname.clone()),
            });
        }
        let (workload, target_port) = endpoints[pick(endpoints.len()) % endpoints.len()];
        let addr = SocketAddr::new(workload.ips[0], target_port);
        return Ok(to_workload(workload.clone(), addr, Some(service.clone())));
    }
    match plane.workload(dst.ip()) {
        Some(workload) => Ok(to_workload(workload.clone(), dst, None)),
        None => Ok(Upstream::Passthrough {
            addr: dst,
            workload: None,
            service: None,
        }),
    }
}

fn to_workload(
    workload: Arc<Workload>,
    addr: SocketAddr,
    service: Option<Arc<Service>>,
) -> Upstream {
    if workload.captured {
        Upstream::Hbone {
            hbone_addr: SocketAddr::new(addr.ip(), HBONE_PORT),
            authority: addr,
            workload,
            service,
        }
    } else {
        Upstream::Passthrough {
            addr,
            workload: Some(workload),
            service,
        }
    }
}

#[cfg(test)]
mod tests {
    use std::path::Path;

    use mesh_model::config::{ConfigStore, parse_documents};
    use mesh_model::model::{Settings, translate};

    use super::*;

    const CLUSTER: &str = r#"
apiVersion: v1
kind: Namespace
metadata: {name: shop, labels: {istio.io/dataplane-mode: ambient}}
---
apiVersion: v1
kind: Pod
metadata: {name: server-a, namespace: shop, labels: {app: server}}
spec: {nodeName: n2, containers: [{name: app, ports: [{name: http, containerPort: 9090}]}]}
status: {phase: Running, podIP: 10.244.2.2}
---
apiVersion: v1
kind: Pod
metadata: {name: server-b, namespace: shop, labels: {app: server}}
spec: {nodeName: n2, containers: [{name: app}]}
status: {phase: Running, podIP: 10.244.2.3}
---
apiVersion: v1
kind: Pod
metadata: {name: legacy, namespace: legacy, labels: {app: legacy}}
spec: {nodeName: n2, containers: [{name: app}]}
status: {phase: Running, podIP: 10.244.2.4}
---
apiVersion: v1
kind: Service
metadata: {name: server, namespace: shop}
spec: {clusterIP: 10.96.0.10, selector: {app: server}, ports: [{port: 80, targetPort: 8080}, {port: 81, targetPort: http}, {port: 82, targetPort: admin}]}
---
apiVersion: v1
kind: Service
metadata: {name: empty, namespace: shop}
spec: {clusterIP: 10.96.0.11, selector: {app: nothing}, ports: [{port: 80}]}
"#;

    fn plane() -> DataPlane {
        let store: ConfigStore = parse_documents(Path::new("c.yaml"), CLUSTER)
            .valid()
            .unwrap()
            .into_iter()
            .collect();
        translate(&store, &Settings::new("cluster.local"))
    }

    fn addr(text: &str) -> SocketAddr {
        text.parse().unwrap()
    }

    #[test]
    fn vips_balance_over_endpoints_and_map_ports() {
        let plane = plane();
        for (pick, expected) in [(0, "10.244.2.2:8080"), (1, "10.244.2.3:8080")] {
            match route(&plane, addr("10.96.0.10:80"), |_| pick).unwrap() {
                Upstream::Hbone {
                    hbone_addr,
                    authority,
                    service,
                    ..
                } => {
                    assert_eq!(authority, addr(expected));
                    assert_eq!(hbone_addr.port(), 15008);
                    assert_eq!(service.unwrap().name, "server");
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn a_named_target_port_resolves_per_endpoint() {
        let plane = plane();
        // server-a names its container port `http` (9090); server-b declares none, so it
        // cannot serve the port, whatever the pick.
        for pick in [0, 1] {
            match route(&plane, addr("10.96.0.10:81"), |_| pick).unwrap() {
                Upstream::Hbone { authority, .. } => {
                    assert_eq!(authority, addr("10.244.2.2:9090"));
                }
                other => panic!("{other:?}"),
            }
        }
    }

    #[test]
    fn workloads_outsiders_and_errors() {
        let plane = plane();
        assert!(matches!(
            route(&plane, addr("10.244.2.2:8080"), |_| 0).unwrap(),
            Upstream::Hbone { .. }
        ));
        let legacy = route(&plane, addr("10.244.2.4:80"), |_| 0).unwrap();
        assert!(
            matches!(
                legacy,
                Upstream::Passthrough {
                    workload: Some(_),
                    ..
                }
            ),
            "not captured: plain TCP"
        );
        assert_eq!(
            route(&plane, addr("192.0.2.1:443"), |_| 0).unwrap(),
            Upstream::Passthrough {
                addr: addr("192.0.2.1:443"),
                workload: None,
                service: None
            }
        );
        assert_eq!(
            route(&plane, addr("10.96.0.10:9"), |_| 0)
                .unwrap_err()
                .to_string(),
            "service server.shop.svc.cluster.local has no port 9"
        );
        assert!(matches!(
            route(&plane, addr("10.96.0.10:82"), |_| 0),
            Err(RouteError::NamedPort { .. })
        ));
        assert!(matches!(
            route(&plane, addr("10.96.0.11:80"), |_| 0),
            Err(RouteError::NoEndpoints(_))
        ));
    }
}
