//! The istio-cni agent facing silent, stalled and hostile peers on its two sockets: none
//! of them holds up capture, none displaces the working ztunnel, and both sockets are for
//! root only. The "ztunnels" here are this test speaking ZDS over the real socket to the
//! real agent binary.

use std::os::unix::fs::PermissionsExt;
use std::path::Path;
use std::sync::Arc;
use std::time::{Duration, Instant};

use mesh_core::zds::{self, Request, WorkloadRequest, pb};
use mesh_tests::{Cluster, Process, mesh};
use tokio::io::AsyncWriteExt;
use tokio_seqpacket::UnixSeqpacket;

fn cluster() -> Cluster {
    Cluster::builder()
        .node("n1")
        .pod("web")
        .namespace("shop")
        .pod("batch")
        .namespace("jobs")
        .namespace_labels("shop", [("istio.io/dataplane-mode", "ambient")])
        .build()
        .unwrap()
}

/// A ZDS peer that says hello and acknowledges everything, recording what it was told.
async fn connect_as_ztunnel(socket: &Path) -> UnixSeqpacket {
    let connection = UnixSeqpacket::connect(socket).await.unwrap();
    zds::send(&connection, &zds::hello(), None).await.unwrap();
    connection
}

/// Receives requests until SnapshotSent (acknowledging each); returns the uids added.
async fn read_snapshot(connection: &UnixSeqpacket) -> Vec<String> {
    let mut added = Vec::new();
    loop {
        match next_request(connection).await {
            Request::SnapshotSent => return added,
            Request::Add { uid, .. } => added.push(uid),
            other => panic!("unexpected in a snapshot: {other:?}"),
        }
    }
}

/// The next request (acknowledged), within 10 s.
async fn next_request(connection: &UnixSeqpacket) -> Request {
    let received = zds::recv::<WorkloadRequest>(connection, "WorkloadRequest");
    let (request, fds) = tokio::time::timeout(Duration::from_secs(10), received)
        .await
        .expect("the agent sent nothing for 10 s")
        .unwrap();
    let request = zds::validate(request, fds).unwrap();
    zds::send(connection, &zds::ack(Ok(())), None)
        .await
        .unwrap();
    request
}

fn label_jobs_ambient(cluster: &Cluster) {
    std::fs::write(
        cluster.config_dir().join("namespace-jobs.yaml"),
        "apiVersion: v1\nkind: Namespace\nmetadata:\n  name: jobs\n  labels:\n    istio.io/dataplane-mode: ambient\n",
    )
    .unwrap();
}

fn start_agent(cluster: &Cluster) -> Arc<Process> {
    mesh::start_agent(cluster, "n1").unwrap()
}

#[test]
fn silent_and_stalled_peers_neither_stall_capture_nor_displace_ztunnel() {
    let cluster = cluster();
    let socket = mesh::zds_socket(&cluster, "n1");
    let plugin_socket = cluster.work_dir().join("n1-cni.sock");
    let _agent = start_agent(&cluster);
    let runtime = tokio::runtime::Runtime::new().unwrap();
    runtime.block_on(async {
        let deadline = Instant::now() + Duration::from_secs(20);
        while !socket.exists() || !plugin_socket.exists() {
            assert!(
                Instant::now() < deadline,
                "the agent never bound its sockets"
            );
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        for path in [&socket, &plugin_socket] {
            let mode = std::fs::metadata(path).unwrap().permissions().mode() & 0o777;
            assert_eq!(mode, 0o600, "{} is mode {mode:o}", path.display());
        }

        let ztunnel = connect_as_ztunnel(&socket).await;
        let first = read_snapshot(&ztunnel).await;
        assert_eq!(first.len(), 1, "web is captured: {first:?}");

        // Hostile peers: one ZDS client says nothing, one says hello and then never
        // acknowledges its snapshot, one CNI plugin client sends nothing.
        let _silent = UnixSeqpacket::connect(&socket).await.unwrap();
        let stalled = connect_as_ztunnel(&socket).await;
        let _mute_plugin = tokio::net::UnixStream::connect(&plugin_socket)
            .await
            .unwrap();
        let (request, _) = tokio::time::timeout(
            Duration::from_secs(10),
            zds::recv::<WorkloadRequest>(&stalled, "WorkloadRequest"),
        )
        .await
        .unwrap()
        .unwrap();
        assert!(
            matches!(request.payload, Some(pb::workload_request::Payload::Add(_))),
            "the stalled peer gets its snapshot: {request:?}"
        );

        // Capture goes on, and the working ztunnel hears about it at once.
        let started = Instant::now();
        label_jobs_ambient(&cluster);
        match next_request(&ztunnel).await {
            Request::Add { info, .. } => assert_eq!(info.unwrap().name, "batch"),
            other => panic!("expected batch's AddWorkload, got {other:?}"),
        }
        assert!(
            started.elapsed() < Duration::from_secs(4),
            "a new pod waited {:?} behind silent peers",
            started.elapsed()
        );

        // A CNI plugin event still goes through while the mute one is connected.
        let mut plugin = tokio::net::UnixStream::connect(&plugin_socket)
            .await
            .unwrap();
        plugin
            .write_all(b"{\"not\": \"an event\"}\n")
            .await
            .unwrap();
        let mut answer = String::new();
        tokio::time::timeout(
            Duration::from_secs(3),
            tokio::io::AsyncReadExt::read_to_string(&mut plugin, &mut answer),
        )
        .await
        .expect("the agent answers a plugin while another stays mute")
        .unwrap();
        assert!(answer.starts_with("bad event"), "{answer}");

        // The working ztunnel is still the one served: it gets the release of batch.
        std::fs::remove_file(cluster.config_dir().join("namespace-jobs.yaml")).unwrap();
        match next_request(&ztunnel).await {
            Request::Del { .. } => {}
            other => panic!("expected DelWorkload, got {other:?}"),
        }

        // A ztunnel that reconnects completes its snapshot and takes over.
        let successor = connect_as_ztunnel(&socket).await;
        assert_eq!(read_snapshot(&successor).await, first);
        label_jobs_ambient(&cluster);
        match next_request(&successor).await {
            Request::Add { info, .. } => assert_eq!(info.unwrap().name, "batch"),
            other => panic!("expected batch's AddWorkload, got {other:?}"),
        }
        // The replaced connection is closed (it may still be sent the change above first).
        let closed = async {
            while zds::recv::<WorkloadRequest>(&ztunnel, "WorkloadRequest")
                .await
                .is_ok()
            {}
        };
        tokio::time::timeout(Duration::from_secs(20), closed)
            .await
            .expect("the replaced ztunnel's connection is closed");
    });
}
