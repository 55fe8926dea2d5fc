//! The in-pod data path on the simulated cluster: real namespaces, the real istio-cni
//! rules, real listeners in pods, real mTLS between nodes, real apps.
//!
//! ztunnel's pod proxies run in this test process (one runtime standing in for both
//! nodes' ztunnels); enrollment over ZDS and the separate binaries come next.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;
use std::time::Duration;

use istio_cni::rules::{self, InpodConfig};
use mesh_core::cert::{CertManager, LocalCa, RenewalPolicy};
use mesh_core::config::file_source::FileSource;
use mesh_core::config::{ConfigStore, parse_documents};
use mesh_core::model::{DataPlane, translate};
use mesh_tests::apps::http_echo::{self, HttpVersion};
use mesh_tests::{Cluster, eventually};
use tokio::runtime::Runtime;
use tokio::sync::watch;
use ztunnel::proxy::{ProxyState, WorkloadProxy};

const TRUST_DOMAIN: &str = "cluster.local";

fn cluster() -> Cluster {
    mesh_tests::topology::shop()
        .build()
        .expect("building the cluster")
}

struct Mesh {
    runtime: Runtime,
    plane: watch::Sender<Arc<DataPlane>>,
    base: ConfigStore,
    proxies: Vec<WorkloadProxy>,
}

impl Mesh {
    /// Captures the ambient pods (rules + a proxy each) with the cluster's own YAML.
    fn start(cluster: &Cluster) -> Mesh {
        mesh_core::tls::install_process_provider();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let snapshot = FileSource::new(cluster.config_dir()).load();
        assert!(snapshot.errors.is_empty(), "{:?}", snapshot.errors);
        let plane = translate(&snapshot.store, TRUST_DOMAIN);
        let (sender, receiver) = watch::channel(Arc::new(plane.clone()));
        let ca = Arc::new(LocalCa::generate(TRUST_DOMAIN).unwrap());
        let certs = Arc::new(CertManager::new(ca, RenewalPolicy::default()));
        let state = Arc::new(ProxyState {
            plane: receiver,
            certs,
            trust_domain: TRUST_DOMAIN.into(),
            mark: 0x539,
            metrics: Arc::new(ztunnel::metrics::Metrics::default()),
        });
        let mut proxies = Vec::new();
        for pod in cluster.pods() {
            let workload = plane
                .workload(pod.ip().into())
                .expect("every pod is a workload")
                .clone();
            if !workload.captured {
                continue;
            }
            pod.run(|| rules::apply(&rules::render(&InpodConfig::default())))
                .unwrap()
                .unwrap();
            let netns = std::fs::File::open(pod.netns().path()).unwrap();
            let proxy = runtime
                .block_on(WorkloadProxy::start(state.clone(), workload, netns))
                .unwrap();
            proxies.push(proxy);
        }
        Mesh {
            runtime,
            plane: sender,
            base: snapshot.store,
            proxies,
        }
    }

    fn proxy(&self, pod: &str) -> &WorkloadProxy {
        self.proxies
            .iter()
            .find(|p| p.workload().name == pod)
            .unwrap()
    }

    fn count(
        &self,
        pod: &str,
        counter: fn(&ztunnel::proxy::ProxyStats) -> &std::sync::atomic::AtomicU64,
    ) -> u64 {
        counter(self.proxy(pod).stats()).load(Ordering::Relaxed)
    }

    /// Replaces the policies (as if their files changed).
    fn set_policies(&self, yaml: &str) {
        let mut store = self.base.clone();
        for object in parse_documents(std::path::Path::new("policies.yaml"), yaml)
            .unwrap()
            .objects
        {
            store.insert(object);
        }
        self.plane
            .send_replace(Arc::new(translate(&store, TRUST_DOMAIN)));
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        let proxies = std::mem::take(&mut self.proxies);
        let _guard = self.runtime.enter();
        drop(proxies);
    }
}

fn get(cluster: &Cluster, from: &str, to: SocketAddr) -> Result<http_echo::EchoReply, String> {
    cluster
        .pod(from)
        .block_on(|| async move {
            let fetch = http_echo::get(to, "/", HttpVersion::Http1, &[]);
            match tokio::time::timeout(std::time::Duration::from_secs(5), fetch).await {
                Ok(Ok(reply)) => reply.echo().map_err(|e| e.to_string()),
                Ok(Err(err)) => Err(err.to_string()),
                Err(_) => Err(format!("timed out reaching {to}")),
            }
        })
        .unwrap()
}

#[test]
fn ambient_pods_talk_over_mtls_and_policy_applies() {
    let cluster = cluster();
    for pod in ["server", "legacy"] {
        cluster
            .pod(pod)
            .serve(["http-echo", "--listen", "0.0.0.0:8080"])
            .unwrap();
    }
    let mesh = Mesh::start(&cluster);
    let server = SocketAddr::from((cluster.pod("server").ip(), 8080));
    let vip = SocketAddr::from((cluster.service_ip("shop", "server"), 80));
    let legacy = SocketAddr::from((cluster.pod("legacy").ip(), 8080));

    // Across nodes, by pod IP and by service VIP: through both proxies, over HBONE.
    let reply = get(&cluster, "client", server).unwrap();
    assert_eq!(reply.pod, "server");
    let peer: SocketAddr = reply.peer.parse().unwrap();
    assert_eq!(
        peer.ip(),
        cluster.pod("client").ip(),
        "the app sees the original client address"
    );
    assert_eq!(get(&cluster, "client", vip).unwrap().pod, "server");
    assert_eq!(mesh.count("client", |s| &s.outbound_hbone), 2);
    assert_eq!(mesh.count("server", |s| &s.inbound_hbone), 2);

    // To a pod outside the mesh: plain TCP from the client's proxy.
    assert_eq!(get(&cluster, "client", legacy).unwrap().pod, "legacy");
    assert_eq!(mesh.count("client", |s| &s.outbound_passthrough), 1);

    // From outside the mesh: plaintext inbound, allowed under the default PERMISSIVE.
    let reply = get(&cluster, "legacy", server).unwrap();
    assert_eq!(reply.pod, "server");
    let peer: SocketAddr = reply.peer.parse().unwrap();
    assert_eq!(
        peer.ip(),
        cluster.pod("legacy").ip(),
        "plaintext keeps the client address too"
    );
    assert_eq!(mesh.count("server", |s| &s.inbound_plaintext), 1);

    // STRICT refuses plaintext, still admits mTLS.
    mesh.set_policies(
        "apiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default, namespace: shop}\nspec: {mtls: {mode: STRICT}}\n",
    );
    assert!(
        get(&cluster, "legacy", server).is_err(),
        "plaintext must be refused under STRICT"
    );
    assert_eq!(get(&cluster, "client", server).unwrap().pod, "server");

    // ALLOW by principal: web is admitted; a DENY for its namespace then wins.
    let allow_web = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: allow-web, namespace: shop}\nspec:\n  selector: {matchLabels: {app: server}}\n  rules:\n  - from: [{source: {principals: [\"cluster.local/ns/shop/sa/web\"]}}]\n";
    mesh.set_policies(allow_web);
    assert_eq!(get(&cluster, "client", server).unwrap().pod, "server");
    let deny_shop = "apiVersion: security.istio.io/v1\nkind: AuthorizationPolicy\nmetadata: {name: deny-shop, namespace: shop}\nspec:\n  action: DENY\n  rules:\n  - from: [{source: {namespaces: [\"shop\"]}}]\n";
    mesh.set_policies(&format!("{allow_web}---\n{deny_shop}"));
    let denied = get(&cluster, "client", server);
    assert!(denied.is_err(), "DENY must win: {denied:?}");
    assert!(mesh.count("server", |s| &s.inbound_denied) >= 2);
}

#[test]
fn draining_refuses_new_connections_and_lets_live_ones_finish() {
    use std::io::{Read, Write};
    let cluster = cluster();
    cluster
        .pod("server")
        .serve(["tcp-echo", "--listen", "0.0.0.0:7000"])
        .unwrap();
    let mut mesh = Mesh::start(&cluster);
    let server = SocketAddr::from((cluster.pod("server").ip(), 7000));
    let client = cluster.pod("client");
    let echo = |stream: &mut std::net::TcpStream, text: &[u8]| {
        stream.write_all(text).unwrap();
        let mut back = vec![0u8; text.len()];
        stream.read_exact(&mut back).unwrap();
        back
    };
    let mut live = client
        .run(|| std::net::TcpStream::connect_timeout(&server, Duration::from_secs(5)))
        .unwrap()
        .unwrap();
    assert_eq!(echo(&mut live, b"before"), b"before");

    let index = mesh
        .proxies
        .iter()
        .position(|p| p.workload().name == "client")
        .unwrap();
    let proxy = mesh.proxies.remove(index);
    let drained = mesh.runtime.spawn(proxy.drain(Duration::from_secs(60)));
    // While the listener closes, a SYN caught in its queue is reset instead of refused;
    // once it is closed, every new connection is refused.
    eventually(
        "the outbound listener to close",
        Duration::from_secs(10),
        || match client
            .run(|| std::net::TcpStream::connect_timeout(&server, Duration::from_secs(2)))
            .unwrap()
        {
            Err(err) if err.kind() == std::io::ErrorKind::ConnectionRefused => Ok(()),
            Err(err) => Err(format!("not refused yet: {err}")),
            Ok(_) => Err("a new connection was still accepted".to_string()),
        },
    )
    .unwrap();
    assert_eq!(
        echo(&mut live, b"during drain"),
        b"during drain",
        "live connections keep working"
    );
    drop(live);
    mesh.runtime.block_on(async {
        tokio::time::timeout(Duration::from_secs(10), drained)
            .await
            .expect("the drain ends when the last connection does, not at its limit")
            .unwrap();
    });
}
