//! Runs every benchmark operation once at its real size, so the benchmarks cannot rot
//! between runs (this is a test of the plumbing, not a measurement).

use mesh_benches::loopback::{
    App, Contender, Loopback, MESSAGE_BYTES, bulk, ping_once, round_trip,
};
use mesh_core::hbone::FlowControl;

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_contender_carries_every_operation() {
    mesh_core::tls::install_process_provider();
    let fixture = Loopback::start(FlowControl::default()).await.unwrap();
    let chunk = vec![7u8; 64 << 10];
    for contender in Contender::ALL {
        let mut echo = fixture.open(contender, App::Echo).await.unwrap();
        let mut message = [42u8; MESSAGE_BYTES];
        round_trip(&mut echo, &mut message).await.unwrap();
        assert_eq!(message, [42u8; MESSAGE_BYTES], "{contender:?}");
        let mut sink = fixture.open(contender, App::Sink).await.unwrap();
        bulk(&mut sink, &chunk).await.unwrap();
        ping_once(fixture.open(contender, App::Echo).await.unwrap())
            .await
            .unwrap();
    }
}
