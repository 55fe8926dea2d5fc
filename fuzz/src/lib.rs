//! Fuzz targets: every parser the network or a user can feed, each as a function of raw
//! bytes that must never panic, hang or allocate without bound.
//!
//! `cargo fuzz` drives them coverage-guided (`fuzz_targets/`, see `fuzz/README.md`); the
//! test `tests/corpora.rs` replays every committed corpus input through them on every CI
//! run, on the stable toolchain.
//!
//! | target | what an attacker controls |
//! |---|---|
//! | [`hbone_request`] | an HBONE CONNECT: method, `:authority`, `forwarded`, `baggage`, `traceparent` |
//! | [`zds_message`] | a ZDS packet from the peer on the agent's socket |
//! | [`cni_plugin`] | the CNI plugin's stdin (network configuration) and environment |
//! | [`kube_yaml`] | a YAML file in the config directory, then the model built from it |
//! | [`certificate`] | a peer's DER certificate (SANs, key usages) and SPIFFE URIs |

use std::path::Path;

use http::{HeaderValue, Method, Request};
use prost::Message;

/// Splits `data` into at most `n` fields on NUL bytes (the last field keeps the rest).
fn fields(data: &[u8], n: usize) -> Vec<&[u8]> {
    data.splitn(n, |b| *b == 0).collect()
}

fn text(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

/// An HBONE request as the server sees it after HTTP/2 decoding: the first byte picks the
/// method, then NUL-separated `:authority`, `forwarded`, `baggage`, `traceparent`.
pub fn hbone_request(data: &[u8]) {
    let Some((&selector, rest)) = data.split_first() else {
        return;
    };
    let methods = [Method::CONNECT, Method::GET, Method::POST, Method::OPTIONS];
    let method = methods[usize::from(selector) % methods.len()].clone();
    let parts = fields(rest, 4);
    let authority = parts.first().map(|b| text(b)).unwrap_or_default();
    let mut builder = Request::builder().method(method).uri(authority);
    for (name, value) in ["forwarded", "baggage", "traceparent"]
        .iter()
        .zip(parts.iter().skip(1))
    {
        if let Ok(value) = HeaderValue::from_bytes(value) {
            builder = builder.header(*name, value);
        }
    }
    let Ok(request) = builder.body(()) else {
        return;
    };
    let _ = mesh_core::hbone::server::connect_target(&request);
    let headers = request.headers();
    if let Some(value) = headers.get(mesh_core::hbone::headers::FORWARDED) {
        let _ = mesh_core::hbone::headers::parse_forwarded_for(value);
    }
    if let Some(value) = headers.get(mesh_core::hbone::headers::BAGGAGE) {
        let baggage = mesh_core::hbone::headers::Baggage::parse(value);
        // What is read back must be writable again.
        let _ = baggage.to_header();
    }
}

/// A ZDS packet, decoded as each message the two ends expect and validated as a request.
pub fn zds_message(data: &[u8]) {
    use mesh_core::zds::{self, WorkloadRequest, WorkloadResponse, ZdsHello};
    if let Ok(request) = WorkloadRequest::decode(data) {
        let _ = zds::validate(request, Vec::new());
    }
    if let Ok(response) = WorkloadResponse::decode(data) {
        let _ = zds::check_ack(response);
    }
    let _ = ZdsHello::decode(data);
}

/// The CNI plugin's input: NUL-separated stdin, then `NAME=value` environment entries. Only
/// the parsers run: the plugin's side effects (its log file, the agent's socket) are
/// chosen by this input and must not touch the machine.
pub fn cni_plugin(data: &[u8]) {
    let parts = fields(data, 2);
    let stdin = parts.first().map(|b| text(b)).unwrap_or_default();
    let env_text = parts.get(1).map(|b| text(b)).unwrap_or_default();
    let env: Vec<(String, String)> = env_text
        .split('\n')
        .filter_map(|line| line.split_once('='))
        .map(|(k, v)| (k.to_string(), v.to_string()))
        .collect();
    let lookup = |name: &str| env.iter().find(|(k, _)| k == name).map(|(_, v)| v.clone());
    if let Ok(conf) = istio_cni::plugin::NetConf::parse(&stdin) {
        let _ = conf.agent_socket();
    }
    if let Ok(env) = istio_cni::plugin::CniEnv::from_vars(lookup) {
        let _ = istio_cni::plugin::PluginEvent::from_env(&env);
    }
    let _ = serde_json::from_str::<istio_cni::plugin::PluginEvent>(&stdin);
}

/// A file of the config directory, then the data-plane model built from what it holds.
pub fn kube_yaml(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let parsed = mesh_model::config::parse_documents(Path::new("fuzz.yaml"), text);
    for rejected in &parsed.rejected {
        // Every rejection can be reported.
        let _ = rejected.error.to_string();
    }
    let mut store = mesh_model::config::ConfigStore::default();
    for object in parsed.objects {
        store.insert(object);
    }
    let _ =
        mesh_model::model::translate(&store, &mesh_model::model::Settings::new("cluster.local"));
}

/// A peer's certificate as TLS hands it over, and SPIFFE URIs as they appear in SANs and
/// policies.
pub fn certificate(data: &[u8]) {
    if let Ok(info) = mesh_core::cert::parse_leaf(data) {
        let _ = info.workload_identity();
    }
    if let Ok(uri) = std::str::from_utf8(data) {
        let _ = uri.parse::<mesh_core::Identity>();
    }
}
