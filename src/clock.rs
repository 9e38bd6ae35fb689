//! The one clock publications are stamped with: `CLOCK_MONOTONIC` in
//! nanoseconds, the same on every shard's thread, so a publication stamped on
//! one shard can be timed when another shard writes it.

/// Nanoseconds on the system's monotonic clock (a vDSO call, no system call).
pub(crate) fn now_ns() -> u64 {
    let mut ts = libc::timespec {
        tv_sec: 0,
        tv_nsec: 0,
    };
    // SAFETY: clock_gettime writes into the timespec we pass; CLOCK_MONOTONIC
    // always exists on Linux.
    unsafe { libc::clock_gettime(libc::CLOCK_MONOTONIC, &mut ts) };
    ts.tv_sec as u64 * 1_000_000_000 + ts.tv_nsec as u64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn is_monotonic_and_agrees_across_threads() {
        let a = now_ns();
        let b = std::thread::spawn(now_ns).join().unwrap();
        let c = now_ns();
        assert!(a > 0 && a <= b && b <= c);
    }
}
