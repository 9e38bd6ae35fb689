//! Figures of the whole server process for `/metrics` and the dashboard: CPU
//! seconds from `getrusage` (microsecond precision, no file), resident memory
//! from `/proc/self/statm` (procfs: served from memory, never blocks on a
//! disk), the process start time, and the memory it may use at all.

use std::{
    sync::OnceLock,
    time::{SystemTime, UNIX_EPOCH},
};

use serde::Serialize;

/// One reading of the process's resources.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct ProcessStats {
    /// User + system CPU time of all threads.
    pub cpu_seconds: f64,
    /// Resident set size.
    pub rss_bytes: u64,
    /// Unix time the server started, in seconds.
    pub start_time_seconds: f64,
}

impl ProcessStats {
    pub fn read() -> Self {
        ProcessStats {
            cpu_seconds: cpu_seconds(),
            rss_bytes: rss_bytes().unwrap_or(0),
            start_time_seconds: start_time_seconds(),
        }
    }
}

/// The memory this process may use: the machine's (`MemTotal`), or the
/// cgroup v2 limit (`memory.max`) when that is set and lower. Read once, at
/// start-up.
pub fn memory_limit_bytes() -> Option<u64> {
    let meminfo = std::fs::read_to_string("/proc/meminfo").ok()?;
    let total_kib: u64 = meminfo
        .lines()
        .find_map(|line| line.strip_prefix("MemTotal:"))?
        .trim()
        .trim_end_matches("kB")
        .trim()
        .parse()
        .ok()?;
    let total = total_kib * 1024;
    let cgroup = std::fs::read_to_string("/sys/fs/cgroup/memory.max")
        .ok()
        .and_then(|text| text.trim().parse::<u64>().ok());
    Some(cgroup.map_or(total, |limit| limit.min(total)))
}

/// CPU seconds (user + system) this process has used.
pub fn cpu_seconds() -> f64 {
    // SAFETY: getrusage writes into the struct we pass.
    let usage = unsafe {
        let mut usage: libc::rusage = std::mem::zeroed();
        libc::getrusage(libc::RUSAGE_SELF, &mut usage);
        usage
    };
    let secs = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    secs(usage.ru_utime) + secs(usage.ru_stime)
}

/// Resident memory of this process, from the second field of
/// `/proc/self/statm` (in pages).
pub fn rss_bytes() -> Option<u64> {
    let statm = std::fs::read_to_string("/proc/self/statm").ok()?;
    let pages: u64 = statm.split_whitespace().nth(1)?.parse().ok()?;
    // SAFETY: sysconf has no preconditions.
    let page = unsafe { libc::sysconf(libc::_SC_PAGESIZE) };
    Some(pages * page.max(1) as u64)
}

/// Unix time in seconds when this was first called; the runtime calls it at
/// start.
pub fn start_time_seconds() -> f64 {
    static START: OnceLock<f64> = OnceLock::new();
    *START.get_or_init(unix_seconds)
}

/// The wall clock as Unix seconds.
pub fn unix_seconds() -> f64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0.0, |d| d.as_secs_f64())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn reads_this_process() {
        let stats = ProcessStats::read();
        assert!(stats.cpu_seconds >= 0.0);
        assert!(stats.rss_bytes > 1 << 20, "a test process holds over 1 MiB");
        assert!(stats.start_time_seconds > 1.6e9);
        assert_eq!(start_time_seconds(), stats.start_time_seconds);
    }

    #[test]
    fn knows_how_much_memory_there_is() {
        let limit = memory_limit_bytes().expect("procfs is there");
        assert!(limit > stats_rss(), "more than this process holds");
    }

    fn stats_rss() -> u64 {
        rss_bytes().unwrap_or(0)
    }
}
