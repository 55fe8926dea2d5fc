//! Freed heap waits for the trimmer: a cycle of allocating and freeing a few hundred KiB
//! (what a bulk stream's chunks and TLS records do) no longer page-faults it back in each
//! time. Alone in its test binary, so glibc's thresholds are the defaults until the call.
#![cfg(target_env = "gnu")]

use nix::sys::resource::{UsageWho, getrusage};

/// This thread's minor page faults while `cycles` times 512 KiB of 4 KiB blocks (past
/// glibc's per-thread caches and fast bins, so they merge into the heap's top when freed)
/// are allocated, touched and freed.
fn faults_over(cycles: usize) -> i64 {
    let before = getrusage(UsageWho::RUSAGE_THREAD)
        .unwrap()
        .minor_page_faults();
    for _ in 0..cycles {
        let blocks: Vec<Box<[u8]>> = (0..128)
            .map(|i| vec![i as u8; 4096].into_boxed_slice())
            .collect();
        std::hint::black_box(&blocks);
        drop(blocks);
    }
    getrusage(UsageWho::RUSAGE_THREAD)
        .unwrap()
        .minor_page_faults()
        - before
}

#[test]
fn freed_heap_is_not_given_back_and_faulted_in_again_at_every_cycle() {
    // glibc's default gives the top back at every cycle: about 100 faults each.
    let by_default = faults_over(50);
    assert!(
        by_default > 50 * 64,
        "the defaults no longer give heap back at every free ({by_default} faults): this \
         test's premise is gone"
    );
    ztunnel::memory::keep_heap_between_trims();
    faults_over(1);
    let kept = faults_over(50);
    assert!(
        kept < 50,
        "{kept} page faults over 50 cycles (defaults: {by_default}): freed heap went back"
    );
}
