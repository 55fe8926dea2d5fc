//! CPU time and memory of the mesh's processes, read from /proc, and CPU pinning.

use std::fs;
use std::io;

use nix::sched::{CpuSet, sched_setaffinity};
use nix::unistd::Pid;

/// Nanoseconds `pid` has run on a CPU, summed over its live threads (schedstat is in
/// nanoseconds, unlike /proc/<pid>/stat's clock ticks).
pub fn cpu_ns(pid: i32) -> io::Result<u64> {
    let mut total = 0;
    for task in fs::read_dir(format!("/proc/{pid}/task"))? {
        let path = task?.path().join("schedstat");
        let Ok(text) = fs::read_to_string(&path) else {
            continue; // the thread exited meanwhile
        };
        total += text
            .split_whitespace()
            .next()
            .and_then(|n| n.parse::<u64>().ok())
            .ok_or_else(|| io::Error::other(format!("{}: {text}", path.display())))?;
    }
    Ok(total)
}

/// CPU time of `pid` (all its threads, live and exited) in user and in kernel mode, clock
/// ticks: the split of [`cpu_ns`] between the proxy's own code and the kernel's work for it
/// (system calls and the packet processing they run, which on a veth includes the
/// receiving side's). The kernel's share bounds what any change to the proxy can save.
pub fn user_system_ticks(pid: i32) -> io::Result<(u64, u64)> {
    user_system_in(&fs::read_to_string(format!("/proc/{pid}/stat"))?)
}

/// utime and stime (fields 14 and 15) of a `stat` line; the command name in parentheses
/// may hold spaces, so fields are counted after its closing parenthesis.
fn user_system_in(stat: &str) -> io::Result<(u64, u64)> {
    let bad = || io::Error::other(format!("unreadable stat line: {stat:?}"));
    let rest = &stat[stat.rfind(')').ok_or_else(bad)? + 1..];
    let mut fields = rest.split_whitespace().skip(11);
    let mut next =
        || -> io::Result<u64> { fields.next().and_then(|f| f.parse().ok()).ok_or_else(bad) };
    Ok((next()?, next()?))
}

/// Times `pid`'s live threads were switched off a CPU, voluntarily (waiting: each wait
/// ended by a wake-up) or not (preempted), summed. Per request it counts the sleeps and
/// wake-ups a proxy pays, which in these VMs cost more than the proxy's own code. Threads
/// that exit between two readings take their counts with them: the proxies' worker
/// threads live as long as the proxy.
pub fn context_switches(pid: i32) -> io::Result<u64> {
    let mut total = 0;
    for task in fs::read_dir(format!("/proc/{pid}/task"))? {
        let Ok(status) = fs::read_to_string(task?.path().join("status")) else {
            continue; // the thread exited meanwhile
        };
        total += switches_in(&status)?;
    }
    Ok(total)
}

/// The context switches a thread's `status` text counts.
fn switches_in(status: &str) -> io::Result<u64> {
    let mut total = 0;
    for line in status.lines() {
        if let Some(count) = line
            .strip_prefix("voluntary_ctxt_switches:")
            .or_else(|| line.strip_prefix("nonvoluntary_ctxt_switches:"))
        {
            total += count
                .trim()
                .parse::<u64>()
                .map_err(|e| io::Error::other(format!("{line:?}: {e}")))?;
        }
    }
    Ok(total)
}

fn status_kib(pid: i32, field: &str) -> io::Result<u64> {
    let status = fs::read_to_string(format!("/proc/{pid}/status"))?;
    status
        .lines()
        .find_map(|line| {
            line.strip_prefix(field)?
                .trim()
                .strip_suffix("kB")?
                .trim()
                .parse()
                .ok()
        })
        .ok_or_else(|| io::Error::other(format!("no {field} for pid {pid}")))
}

/// Resident memory now, KiB.
pub fn rss_kib(pid: i32) -> io::Result<u64> {
    status_kib(pid, "VmRSS:")
}

/// The highest resident memory so far, KiB.
pub fn peak_rss_kib(pid: i32) -> io::Result<u64> {
    status_kib(pid, "VmHWM:")
}

/// Restricts every thread of `pid` to `cpus` (threads it starts later inherit it).
pub fn set_affinity(pid: i32, cpus: &[usize]) -> io::Result<()> {
    let set = cpu_set(cpus)?;
    for task in fs::read_dir(format!("/proc/{pid}/task"))? {
        let tid: i32 = task?
            .file_name()
            .to_string_lossy()
            .parse()
            .map_err(io::Error::other)?;
        sched_setaffinity(Pid::from_raw(tid), &set).map_err(io::Error::other)?;
    }
    Ok(())
}

/// Restricts the calling thread to `cpus`; threads it starts later inherit that.
pub fn set_thread_affinity(cpus: &[usize]) -> io::Result<()> {
    sched_setaffinity(Pid::from_raw(0), &cpu_set(cpus)?).map_err(io::Error::other)
}

fn cpu_set(cpus: &[usize]) -> io::Result<CpuSet> {
    let mut set = CpuSet::new();
    for &cpu in cpus {
        set.set(cpu).map_err(io::Error::other)?;
    }
    Ok(set)
}

/// Every CPU this machine has.
pub fn all_cpus() -> Vec<usize> {
    (0..std::thread::available_parallelism().map_or(1, |n| n.get())).collect()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let pid = std::process::id() as i32;
        let before = cpu_ns(pid).unwrap();
        let mut x = 0u64;
        for i in 0..5_000_000u64 {
            x = x.wrapping_add(i * i);
        }
        std::hint::black_box(x);
        assert!(cpu_ns(pid).unwrap() > before);
        assert!(context_switches(pid).unwrap() > 0);
        // This thread's own count (other test threads may exit meanwhile).
        let own = || switches_in(&fs::read_to_string("/proc/thread-self/status").unwrap());
        let switches = own().unwrap();
        std::thread::sleep(std::time::Duration::from_millis(5));
        assert!(own().unwrap() > switches, "a sleep is a switch");
        let rss = rss_kib(pid).unwrap();
        assert!(rss > 100 && peak_rss_kib(pid).unwrap() >= rss);
        let (user, _) = user_system_ticks(pid).unwrap();
        assert!(user > 0, "the loop above ran in user mode");
    }

    #[test]
    fn stat_fields_are_counted_after_the_command_name() {
        let line = "42 (tokio rt) worker) S 1 42 42 0 -1 4194560 10 0 0 0 123 45 0 0 20 0 3 0 9";
        assert_eq!(user_system_in(line).unwrap(), (123, 45));
        assert!(user_system_in("42 (x) S 1").is_err());
    }
}
