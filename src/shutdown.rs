//! How a running server is told to stop. Each shard reads one end of a Unix
//! socket pair (registered with its io_uring like any socket, so a parked
//! shard wakes at once, with no polling); [`ShutdownHandle`] holds the other
//! ends. SIGINT/SIGTERM write to them through signal-hook's async-signal-safe
//! pipe handler; a second signal during shutdown ends the process at once.

use std::{
    io::{self, Write},
    os::unix::net::UnixStream,
    sync::{atomic::AtomicBool, Arc},
};

/// Triggers the graceful shutdown of every shard. Cheap to clone.
#[derive(Clone)]
pub struct ShutdownHandle {
    writers: Arc<Vec<UnixStream>>,
}

impl ShutdownHandle {
    pub(crate) fn new(writers: Vec<UnixStream>) -> Self {
        ShutdownHandle {
            writers: Arc::new(writers),
        }
    }

    /// Asks every shard to stop accepting, close connections with 1012 and
    /// exit. Idempotent.
    pub fn trigger(&self) {
        for writer in self.writers.iter() {
            // A full or closed pipe means the shard already knows or is gone.
            let _ = (&*writer).write(&[1]);
        }
    }

    /// Routes SIGINT and SIGTERM to [`ShutdownHandle::trigger`]; a second
    /// signal exits the process immediately with status 1.
    pub fn trigger_on_signals(&self) -> io::Result<()> {
        use signal_hook::{consts::TERM_SIGNALS, flag, low_level::pipe};
        let already_signalled = Arc::new(AtomicBool::new(false));
        for &signal in TERM_SIGNALS {
            flag::register_conditional_shutdown(signal, 1, already_signalled.clone())?;
            flag::register(signal, already_signalled.clone())?;
            for writer in self.writers.iter() {
                pipe::register(signal, writer.try_clone()?)?;
            }
        }
        Ok(())
    }
}
