//! Clusters the end-to-end tests share, so each test reads as what it checks.

use crate::cluster::{Cluster, ClusterBuilder};

/// Two nodes. `shop` (labeled ambient): `client` (service account `web`) and `cache` on
/// n1, `server` (service account `server`, behind Service `shop/server` port 80 -> 8080)
/// on n2. `legacy` (not in the mesh): `legacy` on n2.
pub fn shop() -> ClusterBuilder {
    Cluster::builder()
        .node("n1")
        .pod("client")
        .namespace("shop")
        .service_account("web")
        .pod("cache")
        .namespace("shop")
        .node("n2")
        .pod("server")
        .namespace("shop")
        .service_account("server")
        .labels([("app", "server")])
        .pod("legacy")
        .namespace("legacy")
        .service("server")
        .namespace("shop")
        .selector([("app", "server")])
        .port(80, 8080)
        .namespace_labels("shop", [("istio.io/dataplane-mode", "ambient")])
}
