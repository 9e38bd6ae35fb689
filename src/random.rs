//! The server's one source of random numbers: the operating system's
//! generator (`getrandom(2)`, through the `getrandom` crate), for the run's
//! epoch, the Redis engine's epoch seed, a default node id's suffix, where a
//! drain starts in its spread, and reconnect jitter. None of these is a
//! secret; the conflation hash's key is std's `RandomState`, whose keys come
//! from the same generator (`shardcast_core::publication::conflation_id`).
//! No state here, and nothing to seed: each call asks the kernel (one system
//! call, never on a per-message path).

/// A uniformly random `u64` from the operating system; if it has none to
/// give (a sandbox denying the call), the clock mixed with the process id,
/// which still differs between runs and processes.
pub(crate) fn u64() -> u64 {
    getrandom::u64()
        .unwrap_or_else(|_| crate::clock::now_ns() ^ u64::from(std::process::id()).rotate_left(32))
}

#[cfg(test)]
mod tests {
    #[test]
    fn draws_differ() {
        // Two equal draws from 2^64 values: not in this universe's lifetime.
        assert_ne!(super::u64(), super::u64());
    }
}
