//! Giving freed heap back to the kernel after bursts of connections.
//!
//! glibc keeps what ztunnel frees in its allocation arenas; after a burst (every TLS
//! session and connection task holds buffers of tens of KiB) the resident size would stay
//! at the burst's peak for good. Trimming the arenas every few seconds returns it:
//! `tests/flood.rs` measured what two 10,000-connection floods left resident on the two
//! ztunnels: +7.7 and +6.7 MiB without it, +0.9 and +2.4 MiB with it.
//!
//! Between trims, glibc would also give back the top of a heap on its own as soon as
//! 128 KiB of it is free, and take it back (page faults, zeroed pages) on the next
//! allocations: a bulk stream's 64 KiB chunks and TLS records did that all the time (four
//! streams for 5 s: 46,000-179,000 page faults per ztunnel). [`keep_heap_between_trims`]
//! leaves that to the trimmer.

use std::time::Duration;

/// Free memory at the top of a heap that glibc keeps rather than returns at once (its
/// default is 128 KiB). At 4 MiB, four bulk streams' page faults fell from 46,000-179,000
/// to 200-1,600 per ztunnel in 5 s (1 MiB left 4,000-40,000); the trimmer returns it.
pub const HEAP_KEPT_BETWEEN_TRIMS: usize = 4 << 20;

/// Lets freed heap wait for the trimmer instead of going back (and coming back) at every
/// free. Call before the runtime's threads start, so every arena sees it.
#[cfg(target_env = "gnu")]
pub fn keep_heap_between_trims() {
    // SAFETY: mallopt only sets an allocator parameter; M_TRIM_THRESHOLD takes a byte
    // count. It fails only for an unknown parameter, which this one is not.
    let set = unsafe { libc::mallopt(libc::M_TRIM_THRESHOLD, HEAP_KEPT_BETWEEN_TRIMS as i32) };
    if set != 1 {
        tracing::warn!("glibc refused M_TRIM_THRESHOLD; freed heap goes back at every free");
    }
}

/// Other allocators keep their own policy.
#[cfg(not(target_env = "gnu"))]
pub fn keep_heap_between_trims() {}

/// Trims glibc's arenas every `period` (zero: never), for as long as the runtime lives.
pub fn spawn_trimmer(period: Duration) {
    if period.is_zero() {
        return;
    }
    tokio::spawn(async move {
        let mut ticks = tokio::time::interval(period);
        ticks.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            ticks.tick().await;
            trim();
        }
    });
}

#[cfg(target_env = "gnu")]
fn trim() {
    // SAFETY: malloc_trim takes no pointers and has no preconditions; it walks glibc's
    // arenas under their own locks and only releases free pages.
    unsafe {
        libc::malloc_trim(0);
    }
}

#[cfg(not(target_env = "gnu"))]
fn trim() {}
