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
//! leaves that to the trimmer. [`HEAP_TUNABLES`] keep a burst's freed memory where the
//! trimmer can reach it.

use std::time::Duration;

/// glibc's allocator settings ztunnel runs with unless the operator sets `GLIBC_TUNABLES`
/// (empty: glibc's defaults). One arena instead of one per thread, and no per-thread
/// cache: after a burst, a few long-lived allocations in each thread's arena and the
/// blocks each thread's cache held kept whole pages of freed heap resident, which
/// `malloc_trim` cannot return (quick runs, 20 s after 150 bulk connections: 17.6-22.3 MiB
/// against 15-16 allowed by default; 15.4-15.9 with one arena; back within 1.1x of idle
/// after 14.8-15.0 s with both; CPU per request and per GiB within the noise).
pub const HEAP_TUNABLES: &str = "glibc.malloc.arena_max=1:glibc.malloc.tcache_count=0";

/// Starts ztunnel again with [`HEAP_TUNABLES`] when `GLIBC_TUNABLES` is not set: glibc
/// reads them only when a program starts. Returns when it is set (the operator's, or ours
/// after the restart) or the restart failed (said on stderr: logging is not up yet).
#[cfg(target_env = "gnu")]
pub fn restart_with_heap_tunables() {
    use std::os::unix::process::CommandExt;
    if std::env::var_os("GLIBC_TUNABLES").is_some() {
        return;
    }
    let mut args = std::env::args_os();
    let arg0 = args.next().unwrap_or_else(|| "ztunnel".into());
    let err = std::process::Command::new("/proc/self/exe")
        .arg0(arg0)
        .args(args)
        .env("GLIBC_TUNABLES", HEAP_TUNABLES)
        .exec();
    eprintln!(
        "ztunnel: could not restart with GLIBC_TUNABLES={HEAP_TUNABLES} ({err}); glibc's defaults stay"
    );
}

/// Other allocators keep their own policy.
#[cfg(not(target_env = "gnu"))]
pub fn restart_with_heap_tunables() {}

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
