//! ztunnel facing a misbehaving node agent: malformed ZDS packets and an fd that is not a
//! network namespace each get an error Ack, and ztunnel goes on serving the next, valid
//! request. The "agent" here is this test speaking ZDS over the real socket.

use std::os::fd::AsFd;
use std::time::Duration;

use mesh_core::cert::LocalCa;
use mesh_core::zds::{self, WorkloadResponse, ZdsHello, pb, requests};
use mesh_tests::Cluster;
use mesh_tests::apps::workspace_binary;
use tokio_seqpacket::UnixSeqpacketListener;

#[test]
fn bad_requests_are_refused_and_ztunnel_keeps_serving() {
    let cluster = Cluster::builder()
        .node("n1")
        .pod("web")
        .namespace("shop")
        .namespace_labels("shop", [("istio.io/dataplane-mode", "ambient")])
        .build()
        .unwrap();
    LocalCa::generate("cluster.local")
        .unwrap()
        .write_to(&cluster.work_dir().join("ca"))
        .unwrap();
    let socket = cluster.work_dir().join("zds.sock");
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    let mut listener = runtime
        .block_on(async { UnixSeqpacketListener::bind(&socket) })
        .unwrap();

    let config = cluster.config_dir().display().to_string();
    let ca = cluster.work_dir().join("ca").display().to_string();
    let socket_arg = socket.display().to_string();
    let ztunnel = cluster
        .node("n1")
        .spawn(
            workspace_binary("ztunnel").unwrap(),
            [
                "--config-dir",
                &config,
                "--node-name",
                "n1",
                "--zds-socket",
                &socket_arg,
                "--ca-dir",
                &ca,
            ],
        )
        .unwrap();

    // Not ready until the agent's snapshot has been served.
    let ready = || {
        let out = cluster
            .node("n1")
            .exec(
                "curl",
                [
                    "-sS",
                    "--max-time",
                    "2",
                    "http://127.0.0.1:15021/healthz/ready",
                ],
            )
            .unwrap();
        String::from_utf8_lossy(&out.stdout).into_owned()
    };
    mesh_tests::eventually(
        "ztunnel's readiness endpoint",
        Duration::from_secs(20),
        || match ready() {
            answer if answer.contains("ZDS") => Ok(()),
            other => Err(other),
        },
    )
    .unwrap();

    let netns = std::fs::File::open(cluster.pod("web").netns().path()).unwrap();
    let not_a_netns = tempfile::tempfile().unwrap();
    runtime.block_on(async {
        let connection = tokio::time::timeout(Duration::from_secs(20), listener.accept())
            .await
            .expect("ztunnel never connected")
            .unwrap();
        let (hello, _) = zds::recv::<ZdsHello>(&connection, "ZdsHello")
            .await
            .unwrap();
        assert_eq!(hello.version, pb::Version::V1 as i32);
        let ack = |connection| async move {
            let (response, _) = zds::recv::<WorkloadResponse>(connection, "Ack")
                .await
                .unwrap();
            zds::check_ack(response)
        };

        connection.send(&[0xde, 0xad, 0xbe, 0xef]).await.unwrap();
        let refused = ack(&connection).await.unwrap_err().to_string();
        assert!(refused.contains("malformed request"), "{refused}");

        let info = pb::WorkloadInfo {
            name: "web".into(),
            namespace: "shop".into(),
            service_account: "default".into(),
        };
        zds::send(
            &connection,
            &requests::add("shop/web", Some(info.clone())),
            Some(not_a_netns.as_fd()),
        )
        .await
        .unwrap();
        let refused = ack(&connection).await.unwrap_err().to_string();
        assert!(refused.contains("not a network namespace"), "{refused}");

        zds::send(
            &connection,
            &requests::add("shop/web", Some(info)),
            Some(netns.as_fd()),
        )
        .await
        .unwrap();
        ack(&connection)
            .await
            .expect("a valid AddWorkload after bad ones is served");
        zds::send(&connection, &requests::snapshot_sent(), None)
            .await
            .unwrap();
        ack(&connection).await.unwrap();
        assert_eq!(ready(), "ready\n", "ready once the snapshot is served");
    });
    let log = ztunnel.stdout();
    assert!(
        log.contains("pod proxy started") && log.contains("shop/web"),
        "{log}"
    );
    // The pod's listeners exist inside its namespace.
    let listening = cluster.pod("web").exec("ss", ["-ltn"]).unwrap();
    let listening = String::from_utf8_lossy(&listening.stdout);
    for port in [":15001", ":15006", ":15008"] {
        assert!(
            listening.contains(port),
            "{port} not listening in the pod:\n{listening}"
        );
    }
}
