//! Translation of the configuration into the data-plane model at cluster scale: 5,000 pods
//! in 100 namespaces behind 1,000 services, with AuthorizationPolicies. Measures a full
//! build and the update after one pod changes (its labels), in time and in allocations.
//!
//! `cargo bench -p mesh-benches --bench translate` (add `-- --quick` for a fast pass). The
//! allocation counts are printed first, counted by this binary's global allocator.

use std::alloc::{GlobalAlloc, Layout, System};
use std::collections::BTreeMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};

use criterion::{BatchSize, Criterion};
use k8s_openapi::api::core::v1 as core;
use k8s_openapi::apimachinery::pkg::apis::meta::v1::ObjectMeta;
use mesh_model::config::{ConfigObject, ConfigStore};
use mesh_model::model::{Settings, Translator, translate};

const PODS: usize = 5_000;
const SERVICES: usize = 1_000;
const NAMESPACES: usize = 100;

/// Counts allocations and allocated bytes on top of the system allocator.
struct Counting;

static ALLOCATIONS: AtomicU64 = AtomicU64::new(0);
static ALLOCATED: AtomicU64 = AtomicU64::new(0);

// SAFETY: every call is forwarded unchanged to the system allocator; the counters are
// plain atomics with no effect on the memory handed out.
unsafe impl GlobalAlloc for Counting {
    unsafe fn alloc(&self, layout: Layout) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        ALLOCATED.fetch_add(layout.size() as u64, Ordering::Relaxed);
        // SAFETY: the caller upholds `alloc`'s contract, which `System` has too.
        unsafe { System.alloc(layout) }
    }

    unsafe fn dealloc(&self, ptr: *mut u8, layout: Layout) {
        // SAFETY: `ptr` came from `alloc` above, that is from `System`, with this layout.
        unsafe { System.dealloc(ptr, layout) }
    }

    unsafe fn realloc(&self, ptr: *mut u8, layout: Layout, new_size: usize) -> *mut u8 {
        ALLOCATIONS.fetch_add(1, Ordering::Relaxed);
        ALLOCATED.fetch_add(new_size as u64, Ordering::Relaxed);
        // SAFETY: as for `dealloc`; the caller upholds `realloc`'s contract.
        unsafe { System.realloc(ptr, layout, new_size) }
    }
}

#[global_allocator]
static GLOBAL: Counting = Counting;

fn labels(pairs: &[(&str, String)]) -> Option<BTreeMap<String, String>> {
    Some(
        pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.clone()))
            .collect(),
    )
}

fn meta(
    namespace: Option<String>,
    name: String,
    labels: Option<BTreeMap<String, String>>,
) -> ObjectMeta {
    ObjectMeta {
        name: Some(name),
        namespace,
        labels,
        ..Default::default()
    }
}

/// Pod `i`: namespace `ns-(i % 100)`, app `app-(i % 1000)` (five pods per service).
fn pod(i: usize, version: &str) -> core::Pod {
    let ip = format!("10.{}.{}.{}", 128 + i / 65536, (i / 256) % 256, i % 256);
    core::Pod {
        metadata: meta(
            Some(format!("ns-{}", i % NAMESPACES)),
            format!("pod-{i}"),
            labels(&[
                ("app", format!("app-{}", i % SERVICES)),
                ("version", version.into()),
            ]),
        ),
        spec: Some(core::PodSpec {
            node_name: Some(format!("node-{}", i % 50)),
            service_account_name: Some(format!("sa-{}", i % SERVICES)),
            containers: vec![core::Container {
                name: "app".into(),
                ports: Some(vec![core::ContainerPort {
                    name: Some("http".into()),
                    container_port: 8080,
                    ..Default::default()
                }]),
                ..Default::default()
            }],
            ..Default::default()
        }),
        status: Some(core::PodStatus {
            phase: Some("Running".into()),
            pod_ip: Some(ip),
            ..Default::default()
        }),
    }
}

fn cluster() -> ConfigStore {
    let mut store = ConfigStore::default();
    for n in 0..NAMESPACES {
        store.insert(ConfigObject::from(core::Namespace {
            metadata: meta(
                None,
                format!("ns-{n}"),
                labels(&[("istio.io/dataplane-mode", "ambient".into())]),
            ),
            ..Default::default()
        }));
    }
    for i in 0..PODS {
        store.insert(ConfigObject::from(pod(i, "v1")));
    }
    for s in 0..SERVICES {
        store.insert(ConfigObject::from(core::Service {
            metadata: meta(
                Some(format!("ns-{}", s % NAMESPACES)),
                format!("svc-{s}"),
                None,
            ),
            spec: Some(core::ServiceSpec {
                cluster_ip: Some(format!("10.96.{}.{}", s / 256, s % 256)),
                selector: labels(&[("app", format!("app-{s}"))]),
                ports: Some(vec![core::ServicePort {
                    port: 80,
                    target_port: Some(
                        k8s_openapi::apimachinery::pkg::util::intstr::IntOrString::String(
                            "http".into(),
                        ),
                    ),
                    ..Default::default()
                }]),
                ..Default::default()
            }),
            ..Default::default()
        }));
    }
    store
}

/// The store after pod 42 changes its labels.
fn one_pod_changed(store: &ConfigStore) -> ConfigStore {
    let mut changed = store.clone();
    changed.insert(ConfigObject::Pod(Arc::new(pod(42, "v2"))));
    changed
}

fn allocations(what: &str, run: impl FnOnce()) {
    let (count, bytes) = (
        ALLOCATIONS.load(Ordering::Relaxed),
        ALLOCATED.load(Ordering::Relaxed),
    );
    run();
    println!(
        "{what}: {} allocations, {:.1} MiB allocated",
        ALLOCATIONS.load(Ordering::Relaxed) - count,
        (ALLOCATED.load(Ordering::Relaxed) - bytes) as f64 / (1 << 20) as f64
    );
}

fn main() {
    let settings = Settings::new("cluster.local");
    let store = cluster();
    let changed = one_pod_changed(&store);

    println!("translation of {PODS} pods, {SERVICES} services, {NAMESPACES} namespaces");
    allocations("full build", || {
        std::hint::black_box(translate(&store, &settings));
    });
    let mut translator = Translator::new(settings.clone());
    translator.update(&store);
    allocations("one pod changed (incremental)", || {
        std::hint::black_box(translator.update(&changed));
    });

    let mut criterion = Criterion::default().configure_from_args();
    let mut group = criterion.benchmark_group("translate_5000_pods_1000_services");
    group.sample_size(10);
    group.bench_function("full_build", |b| b.iter(|| translate(&store, &settings)));
    group.bench_function("one_pod_changed", |b| {
        b.iter_batched(
            || {
                let mut translator = Translator::new(settings.clone());
                translator.update(&store);
                translator
            },
            |mut translator| translator.update(&changed),
            BatchSize::LargeInput,
        )
    });
    group.finish();
    criterion.final_summary();
}
