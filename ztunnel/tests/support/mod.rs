//! The in-process mesh the ztunnel tests share: the real istio-cni rules in every ambient
//! pod of a simulated cluster and one ztunnel pod proxy each, in this test process (one
//! runtime standing in for both nodes' ztunnels).

#![allow(dead_code, unreachable_pub)]

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::Ordering;

use istio_cni::rules::{self, InpodConfig};
use mesh_core::cert::{CertManager, LocalCa, RenewalPolicy};
use mesh_model::config::file_source::FileSource;
use mesh_model::config::{ConfigObject, ConfigStore, parse_documents};
use mesh_model::model::{DataPlane, Settings, translate};
use mesh_tests::Cluster;
use mesh_tests::apps::http_echo::{self, HttpVersion};
use tokio::runtime::Runtime;
use tokio::sync::watch;
use ztunnel::proxy::sockets::InPod;
use ztunnel::proxy::{ProxyState, WorkloadProxy};

pub const TRUST_DOMAIN: &str = "cluster.local";

/// The `shop` topology, built.
pub fn cluster() -> Cluster {
    mesh_tests::topology::shop()
        .build()
        .expect("building the cluster")
}

/// Every ambient pod captured, with the CA that signs the mesh's certificates (attack
/// tests use it to play a compromised mesh identity).
pub struct Mesh {
    pub runtime: Runtime,
    pub plane: watch::Sender<Arc<DataPlane>>,
    pub base: ConfigStore,
    pub proxies: Vec<WorkloadProxy>,
    pub ca: Arc<LocalCa>,
    pub state: Arc<ProxyState>,
}

impl Mesh {
    /// Captures the ambient pods (rules + a proxy each) with the cluster's own YAML.
    pub fn start(cluster: &Cluster) -> Mesh {
        mesh_core::tls::install_process_provider();
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()
            .unwrap();
        let snapshot = FileSource::new(cluster.config_dir()).load();
        assert!(snapshot.errors.is_empty(), "{:?}", snapshot.errors);
        let plane = translate(&snapshot.store, &Settings::new(TRUST_DOMAIN));
        let (sender, receiver) = watch::channel(Arc::new(plane.clone()));
        let ca = Arc::new(LocalCa::generate(TRUST_DOMAIN).unwrap());
        let certs = Arc::new(CertManager::new(ca.clone(), RenewalPolicy::default()));
        let state = Arc::new(ProxyState {
            plane: receiver,
            certs,
            trust_domain: TRUST_DOMAIN.into(),
            mark: 0x539,
            metrics: Arc::new(ztunnel::metrics::Metrics::default()),
            workers: Some(mesh_core::workers::Workers::start(2, "test-worker").unwrap()),
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
                .block_on(WorkloadProxy::start(
                    state.clone(),
                    workload,
                    Arc::new(InPod::new(netns, 0x539)),
                ))
                .unwrap();
            proxies.push(proxy);
        }
        Mesh {
            runtime,
            plane: sender,
            base: snapshot.store,
            proxies,
            ca,
            state,
        }
    }

    pub fn proxy(&self, pod: &str) -> &WorkloadProxy {
        self.proxies
            .iter()
            .find(|p| p.workload().name == pod)
            .unwrap()
    }

    pub fn count(
        &self,
        pod: &str,
        counter: fn(&ztunnel::proxy::ProxyStats) -> &std::sync::atomic::AtomicU64,
    ) -> u64 {
        counter(self.proxy(pod).stats()).load(Ordering::Relaxed)
    }

    /// Replaces the policies (as if their files changed).
    pub fn set_policies(&self, yaml: &str) {
        let objects = parse_documents(std::path::Path::new("policies.yaml"), yaml)
            .valid()
            .unwrap();
        self.set_objects(objects);
    }

    /// The cluster's own objects with `objects` added (or replacing those of the same key).
    pub fn set_objects(&self, objects: impl IntoIterator<Item = ConfigObject>) {
        let mut store = self.base.clone();
        for object in objects {
            store.insert(object);
        }
        self.plane
            .send_replace(Arc::new(translate(&store, &Settings::new(TRUST_DOMAIN))));
    }

    /// The Prometheus text the metrics endpoint serves.
    pub fn metrics(&self) -> String {
        self.state.metrics.encode()
    }
}

impl Drop for Mesh {
    fn drop(&mut self) {
        let proxies = std::mem::take(&mut self.proxies);
        let _guard = self.runtime.enter();
        drop(proxies);
    }
}

/// An HTTP/1.1 GET from pod `from`, bounded to 5 s.
pub fn get(cluster: &Cluster, from: &str, to: SocketAddr) -> Result<http_echo::EchoReply, String> {
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
