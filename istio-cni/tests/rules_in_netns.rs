//! The in-pod rules in a real kernel: installed with iptables-nft inside simulated pods,
//! read back, re-applied, removed, and shown to redirect real connections.

use std::io::{Read, Write};
use std::net::{SocketAddr, SocketAddrV4, TcpListener, TcpStream};
use std::os::fd::AsFd;
use std::time::Duration;

use istio_cni::rules::{self, InpodConfig};
use mesh_tests::Cluster;
use socket2::{Domain, Socket, Type};

fn cluster() -> Cluster {
    Cluster::builder()
        .node("n1")
        .pod("client")
        .namespace("shop")
        .pod("server")
        .namespace("shop")
        .node("n2")
        .pod("outsider")
        .build()
        .expect("building the cluster")
}

fn expected(config: &InpodConfig) -> Vec<String> {
    let rendered = rules::render(config);
    let mut lines: Vec<String> = rendered
        .mangle
        .iter()
        .map(|r| format!("mangle {r}"))
        .collect();
    lines.extend(rendered.nat.iter().map(|r| format!("nat {r}")));
    lines.sort();
    lines
}

fn installed(pod: &mesh_tests::Pod) -> Vec<String> {
    let mut lines = pod.run(rules::installed_rules).unwrap().unwrap();
    lines.sort();
    lines
}

/// `ip` output, or "" when the table asked about does not exist (no routes).
fn ip(pod: &mesh_tests::Pod, args: &[&str]) -> String {
    match pod.netns().ip(args) {
        Ok(out) => out,
        Err(err) if err.to_string().contains("does not exist") => String::new(),
        Err(err) => panic!("{err}"),
    }
}

#[test]
fn applied_rules_read_back_exactly_and_reapplying_never_duplicates() {
    let cluster = cluster();
    let pod = cluster.pod("client");
    let config = InpodConfig::default();
    let rendered = rules::render(&config);

    pod.run(|| rules::apply(&rendered)).unwrap().unwrap();
    assert_eq!(
        installed(pod),
        expected(&config),
        "what the kernel holds is what was rendered"
    );
    pod.run(|| rules::apply(&rendered)).unwrap().unwrap();
    assert_eq!(
        installed(pod),
        expected(&config),
        "a second apply (agent restart) duplicates nothing"
    );
    assert_eq!(
        ip(pod, &["-4", "rule", "show", "pref", "32764"])
            .lines()
            .count(),
        1
    );
    assert_eq!(
        ip(pod, &["-4", "route", "show", "table", "100"]).trim(),
        "local default dev lo scope host"
    );

    // Other pods are untouched.
    assert_eq!(installed(cluster.pod("server")), Vec::<String>::new());

    pod.run(|| rules::remove(&rendered)).unwrap().unwrap();
    assert_eq!(installed(pod), Vec::<String>::new());
    assert_eq!(ip(pod, &["-4", "rule", "show", "pref", "32764"]).trim(), "");
    assert_eq!(ip(pod, &["-4", "route", "show", "table", "100"]).trim(), "");
    pod.run(|| rules::remove(&rendered)).unwrap().unwrap();
}

/// Packets counted by the jump into our nat OUTPUT chain (`iptables-save -c`).
fn jump_packets(pod: &mesh_tests::Pod) -> u64 {
    let out = pod
        .netns()
        .command("iptables-nft-save")
        .unwrap()
        .args(["-c", "-t", "nat"])
        .output()
        .unwrap();
    let saved = String::from_utf8_lossy(&out.stdout).into_owned();
    let line = saved
        .lines()
        .find(|line| line.contains("-A OUTPUT -j ISTIO_OUTPUT"))
        .unwrap_or_else(|| panic!("no jump:\n{saved}"));
    line.trim_start_matches('[')
        .split(':')
        .next()
        .unwrap()
        .parse()
        .unwrap()
}

#[test]
fn reapplying_rules_already_in_place_leaves_them_untouched() {
    let cluster = cluster();
    let pod = cluster.pod("client");
    let rendered = rules::render(&InpodConfig::default());
    pod.run(|| rules::apply(&rendered)).unwrap().unwrap();
    assert!(pod.run(|| rules::is_installed(&rendered)).unwrap().unwrap());
    // Traffic through the nat OUTPUT jump (new connections to loopback, refused).
    let knock = || {
        pod.run(|| {
            for _ in 0..3 {
                let _ = TcpStream::connect_timeout(
                    &SocketAddr::from(([127, 0, 0, 1], 9)),
                    Duration::from_millis(200),
                );
            }
        })
        .unwrap()
    };
    knock();
    let before = jump_packets(pod);
    assert!(before >= 3, "the jump counts packets: {before}");
    // A new agent adopting the pod: the rules stay the same objects (the counter would
    // start from 0 if they were removed and added again, leaving a gap without capture).
    pod.run(|| rules::apply(&rendered)).unwrap().unwrap();
    assert!(jump_packets(pod) >= before, "the rules were replaced");
    // Stale rules (one missing) are replaced as a whole.
    pod.netns()
        .command("iptables-nft")
        .unwrap()
        .args(["-t", "nat", "-D", "OUTPUT", "-j", "ISTIO_OUTPUT"])
        .status()
        .unwrap();
    assert!(!pod.run(|| rules::is_installed(&rendered)).unwrap().unwrap());
    pod.run(|| rules::apply(&rendered)).unwrap().unwrap();
    assert!(pod.run(|| rules::is_installed(&rendered)).unwrap().unwrap());
    assert_eq!(jump_packets(pod), 0, "re-created");
}

/// SO_ORIGINAL_DST of a redirected connection.
fn original_dst(stream: &TcpStream) -> SocketAddr {
    let raw = nix::sys::socket::getsockopt(&stream.as_fd(), nix::sys::socket::sockopt::OriginalDst)
        .unwrap();
    let ip = u32::from_be(raw.sin_addr.s_addr);
    SocketAddr::V4(SocketAddrV4::new(ip.into(), u16::from_be(raw.sin_port)))
}

fn transparent_listener(port: u16) -> TcpListener {
    let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
    socket.set_reuse_address(true).unwrap();
    socket.set_ip_transparent_v4(true).unwrap();
    socket
        .bind(&SocketAddr::from(([0, 0, 0, 0], port)).into())
        .unwrap();
    socket.listen(16).unwrap();
    socket.into()
}

#[test]
fn outbound_tcp_is_redirected_to_15001_unless_marked_by_ztunnel() {
    let cluster = cluster();
    let client = cluster.pod("client");
    let server = cluster.pod("server");
    server
        .serve(["tcp-echo", "--listen", "0.0.0.0:7000"])
        .unwrap();
    let target = SocketAddr::from((server.ip(), 7000));
    let rendered = rules::render(&InpodConfig::default());
    client.run(|| rules::apply(&rendered)).unwrap().unwrap();

    client
        .run(|| {
            let outbound = TcpListener::bind("0.0.0.0:15001").unwrap();
            let app = std::thread::spawn(move || {
                TcpStream::connect_timeout(&target, Duration::from_secs(5))
            });
            let (captured, peer) = outbound.accept().unwrap();
            assert_eq!(
                original_dst(&captured),
                target,
                "ztunnel learns where the app meant to go"
            );
            assert_eq!(
                peer.ip(),
                client.ip(),
                "the app's own address is the source"
            );
            app.join()
                .unwrap()
                .expect("the app's connect succeeds (to ztunnel)");

            // ztunnel's own upstream socket carries mark 0x539 and goes straight out.
            let socket = Socket::new(Domain::IPV4, Type::STREAM, None).unwrap();
            socket.set_mark(0x539).unwrap();
            socket
                .connect_timeout(&target.into(), Duration::from_secs(5))
                .unwrap();
            let mut upstream: TcpStream = socket.into();
            upstream.write_all(b"bypass").unwrap();
            let mut echoed = [0u8; 6];
            upstream.read_exact(&mut echoed).unwrap();
            assert_eq!(&echoed, b"bypass", "the real server answered");
        })
        .unwrap();
}

#[test]
fn inbound_tcp_is_tproxied_to_15006_and_hbone_to_15008_keeping_the_destination() {
    let cluster = cluster();
    let server = cluster.pod("server");
    let outsider = cluster.pod("outsider");
    let rendered = rules::render(&InpodConfig::default());
    server.run(|| rules::apply(&rendered)).unwrap().unwrap();

    let listeners = server
        .run(|| (transparent_listener(15006), transparent_listener(15008)))
        .unwrap();
    for (port, listener) in [(8080, &listeners.0), (15008, &listeners.1)] {
        let target = SocketAddr::from((server.ip(), port));
        let connect = outsider.run(|| {
            let mut stream = TcpStream::connect_timeout(&target, Duration::from_secs(5)).unwrap();
            stream.write_all(b"in").unwrap();
            stream
        });
        let (mut accepted, peer) = listener.accept().unwrap();
        assert_eq!(
            accepted.local_addr().unwrap(),
            target,
            "TPROXY keeps the original destination"
        );
        assert_eq!(peer.ip(), outsider.ip());
        let mut hello = [0u8; 2];
        accepted.read_exact(&mut hello).unwrap();
        assert_eq!(&hello, b"in");
        // The reply goes back to the outsider through the marked return path.
        accepted.write_all(b"ok").unwrap();
        let mut stream = connect.unwrap();
        let mut reply = [0u8; 2];
        stream.read_exact(&mut reply).unwrap();
        assert_eq!(&reply, b"ok");
    }
}
