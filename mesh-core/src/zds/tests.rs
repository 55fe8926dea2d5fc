use std::os::fd::AsFd;

use super::*;

fn own_netns() -> std::fs::File {
    std::fs::File::open("/proc/self/ns/net").unwrap()
}

#[tokio::test]
async fn an_add_with_its_netns_fd_round_trips_and_validates() {
    let (agent, ztunnel) = UnixSeqpacket::pair().unwrap();
    send(&ztunnel, &hello(), None).await.unwrap();
    let (greeting, _) = recv::<ZdsHello>(&agent, "ZdsHello").await.unwrap();
    assert_eq!(greeting.version, pb::Version::V1 as i32);

    let info = pb::WorkloadInfo {
        name: "web".into(),
        namespace: "shop".into(),
        service_account: "web".into(),
    };
    let netns = own_netns();
    send(
        &agent,
        &requests::add("uid-1", Some(info.clone())),
        Some(netns.as_fd()),
    )
    .await
    .unwrap();
    let (request, fds) = recv::<WorkloadRequest>(&ztunnel, "WorkloadRequest")
        .await
        .unwrap();
    match validate(request, fds).unwrap() {
        Request::Add { uid, info: got, .. } => {
            assert_eq!((uid.as_str(), got), ("uid-1", Some(info)))
        }
        other => panic!("{other:?}"),
    }
    send(&ztunnel, &ack(Ok(())), None).await.unwrap();
    let (response, _) = recv::<WorkloadResponse>(&agent, "Ack").await.unwrap();
    check_ack(response).unwrap();

    for (request, expected) in [
        (requests::del("uid-1"), "Del"),
        (requests::snapshot_sent(), "SnapshotSent"),
        (requests::keep("u2"), "Keep"),
    ] {
        send(&agent, &request, None).await.unwrap();
        let (request, fds) = recv::<WorkloadRequest>(&ztunnel, "WorkloadRequest")
            .await
            .unwrap();
        assert!(format!("{:?}", validate(request, fds).unwrap()).starts_with(expected));
    }
}

#[tokio::test]
async fn bad_packets_and_fds_are_rejected_with_reasons() {
    let (agent, ztunnel) = UnixSeqpacket::pair().unwrap();

    agent.send(&[0xff, 0xff, 0xff]).await.unwrap();
    let err = recv::<WorkloadRequest>(&ztunnel, "WorkloadRequest")
        .await
        .unwrap_err();
    assert!(
        err.to_string().starts_with("malformed ZDS WorkloadRequest"),
        "{err}"
    );

    // A regular file is not a network namespace.
    let file = tempfile::tempfile().unwrap();
    send(&agent, &requests::add("uid-2", None), Some(file.as_fd()))
        .await
        .unwrap();
    let (request, fds) = recv::<WorkloadRequest>(&ztunnel, "WorkloadRequest")
        .await
        .unwrap();
    let err = validate(request, fds).unwrap_err().to_string();
    assert!(
        err.contains("uid-2") && err.contains("not a network namespace"),
        "{err}"
    );

    send(&agent, &requests::add("uid-3", None), None)
        .await
        .unwrap();
    let (request, fds) = recv::<WorkloadRequest>(&ztunnel, "WorkloadRequest")
        .await
        .unwrap();
    assert!(
        validate(request, fds)
            .unwrap_err()
            .to_string()
            .contains("expected one fd, got 0")
    );

    send(&agent, &requests::del(""), None).await.unwrap();
    let (request, fds) = recv::<WorkloadRequest>(&ztunnel, "WorkloadRequest")
        .await
        .unwrap();
    assert!(
        validate(request, fds)
            .unwrap_err()
            .to_string()
            .contains("empty uid")
    );

    // An empty request encodes to zero bytes, which on a seqpacket socket reads as the
    // peer closing; decoded some other way, it is still refused.
    let empty = validate(WorkloadRequest { payload: None }, Vec::new()).unwrap_err();
    assert!(empty.to_string().contains("without a payload"));

    assert!(
        matches!(check_ack(ack(Err("no such pod".into()))), Err(ZdsError::Refused(e)) if e == "no such pod")
    );
    drop(agent);
    assert!(matches!(
        recv::<WorkloadRequest>(&ztunnel, "WorkloadRequest").await,
        Err(ZdsError::Closed)
    ));
}
