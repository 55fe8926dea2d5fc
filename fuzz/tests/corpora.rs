//! Every committed fuzz corpus input, replayed through its target once: what CI runs of the
//! fuzzing (the coverage-guided runs themselves are scheduled, see fuzz/README.md). An
//! input that once crashed a target stays in its corpus as a regression test.

use std::path::{Path, PathBuf};

type Target = fn(&[u8]);

const TARGETS: [(&str, Target); 5] = [
    ("hbone_request", mesh_fuzz::hbone_request),
    ("zds_message", mesh_fuzz::zds_message),
    ("cni_plugin", mesh_fuzz::cni_plugin),
    ("kube_yaml", mesh_fuzz::kube_yaml),
    ("certificate", mesh_fuzz::certificate),
];

fn corpus(target: &str) -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .join("corpus")
        .join(target)
}

#[test]
fn every_corpus_input_runs_through_its_target() {
    for (name, target) in TARGETS {
        let dir = corpus(name);
        let inputs: Vec<PathBuf> = std::fs::read_dir(&dir)
            .unwrap_or_else(|err| panic!("{}: {err}", dir.display()))
            .map(|entry| entry.unwrap().path())
            .collect();
        assert!(
            inputs.len() >= 3,
            "{name}: the corpus holds {} inputs",
            inputs.len()
        );
        for input in inputs {
            let data = std::fs::read(&input).unwrap();
            let outcome = std::panic::catch_unwind(|| target(&data));
            assert!(outcome.is_ok(), "{name} panicked on {}", input.display());
        }
    }
}

/// Writes the seed inputs each corpus starts from (run once by hand with `--ignored`; the
/// fuzzer grows the corpora from there).
#[test]
#[ignore = "writes the seed corpora; run by hand"]
fn write_seed_corpora() {
    use mesh_core::zds::{self, pb, requests};
    use prost::Message;
    let write = |target: &str, name: &str, data: &[u8]| {
        let dir = corpus(target);
        std::fs::create_dir_all(&dir).unwrap();
        std::fs::write(dir.join(format!("seed-{name}")), data).unwrap();
    };

    write("hbone_request", "connect", b"\x0010.244.2.3:8080\0for=10.244.1.3\0k8s.namespace.name=shop,k8s.pod.name=web\x0000-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-00");
    write("hbone_request", "ipv6", b"\x00[fd00::5]:15008\0for=\"[fd00::4]\";proto=https\0service.name=web;p=1,service.version=v2");
    write(
        "hbone_request",
        "get",
        b"\x01http://10.0.0.1/\0for=unknown\0k8s.cluster.name=Kubernetes",
    );
    write(
        "hbone_request",
        "hostname",
        b"\x00server.shop.svc:80\0for=1.2.3.4, for=5.6.7.8\0=,=,k8s..name=",
    );

    let info = pb::WorkloadInfo {
        name: "web".into(),
        namespace: "shop".into(),
        service_account: "web".into(),
    };
    write(
        "zds_message",
        "add",
        &requests::add("uid-1", Some(info)).encode_to_vec(),
    );
    write(
        "zds_message",
        "del",
        &requests::del("uid-1").encode_to_vec(),
    );
    write(
        "zds_message",
        "keep",
        &requests::keep("uid-1").encode_to_vec(),
    );
    write(
        "zds_message",
        "snapshot",
        &requests::snapshot_sent().encode_to_vec(),
    );
    write("zds_message", "hello", &zds::hello().encode_to_vec());
    write(
        "zds_message",
        "ack-error",
        &zds::ack(Err("refused".into())).encode_to_vec(),
    );

    let conf = r#"{"cniVersion":"1.0.0","name":"k8s-pod-network","type":"istio-cni","log_file":"/tmp/istio-cni.log","agent_socket":"/var/run/istio-cni/pluginevent.sock","prevResult":{"cniVersion":"1.0.0","interfaces":[{"name":"eth0"}],"ips":[{"address":"10.244.1.3/24"}]}}"#;
    let env = "CNI_COMMAND=ADD\nCNI_CONTAINERID=abc\nCNI_NETNS=/var/run/netns/cni-1\nCNI_IFNAME=eth0\nCNI_ARGS=K8S_POD_NAMESPACE=shop;K8S_POD_NAME=web;IgnoreUnknown=1";
    write("cni_plugin", "add", format!("{conf}\0{env}").as_bytes());
    write(
        "cni_plugin",
        "version",
        b"{\"cniVersion\":\"0.4.0\"}\0CNI_COMMAND=VERSION",
    );
    write(
        "cni_plugin",
        "event",
        br#"{"pod_name":"web","pod_namespace":"shop","netns":"/proc/1/ns/net"}"#,
    );

    let lecture = std::fs::read_to_string(
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../mesh-model/src/config/tests.rs"),
    )
    .unwrap();
    if let Some(start) = lecture.find("apiVersion: security.istio.io/v1beta1") {
        let yaml = &lecture[start..];
        let end = yaml.find("\"#;").unwrap_or(yaml.len());
        write("kube_yaml", "lecture", &yaml.as_bytes()[..end]);
    }
    write("kube_yaml", "cluster", b"apiVersion: v1\nkind: Namespace\nmetadata:\n  name: shop\n  labels:\n    istio.io/dataplane-mode: ambient\n---\napiVersion: v1\nkind: Pod\nmetadata:\n  name: web\n  namespace: shop\n  labels: {app: web}\nspec:\n  nodeName: n1\n  serviceAccountName: web\n  containers: [{name: app, image: app}]\nstatus:\n  podIP: 10.244.1.3\n  podIPs: [{ip: 10.244.1.3}]\n---\napiVersion: v1\nkind: Service\nmetadata: {name: web, namespace: shop}\nspec:\n  clusterIP: 10.96.0.10\n  selector: {app: web}\n  ports: [{port: 80, targetPort: 8080}]\n");
    write("kube_yaml", "rejected", b"apiVersion: security.istio.io/v1beta2\nkind: AuthorizationPolicy\nmetadata: {name: p, namespace: shop}\nspec:\n  selector: {matchLabels: {app: web}}\n  action: CUSTOM\n---\napiVersion: security.istio.io/v1\nkind: PeerAuthentication\nmetadata: {name: default}\nspec: {mtls: {mode: STRICT}, portLevelMtls: {8080: {mode: DISABLE}}}\n");

    let ca = mesh_core::cert::LocalCa::generate("cluster.local").unwrap();
    let identity = mesh_core::Identity::new("cluster.local", "shop", "web").unwrap();
    let pem = ca.issue_pem(&identity).unwrap();
    let der = pem::parse(pem.cert_chain.as_bytes()).unwrap();
    write("certificate", "workload", der.contents());
    let root = pem::parse(pem.roots.as_bytes()).unwrap();
    write("certificate", "root", root.contents());
    write(
        "certificate",
        "uri",
        b"spiffe://cluster.local/ns/shop/sa/web",
    );
}
