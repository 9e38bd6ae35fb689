//! Error types of the server's outer layers: configuration and start-up/run
//! failures. Protocol-level errors (what a client did wrong) live beside their
//! parsers in `protocol.rs` and `conn/http.rs`; they never end the process.

use std::{io, net::SocketAddr, path::PathBuf};

/// The configuration cannot be used. Ends the process before anything starts.
#[derive(Debug, thiserror::Error)]
pub enum ConfigError {
    /// The `--config` file could not be read.
    #[error("cannot read config file {path}: {source}")]
    ReadFile { path: PathBuf, source: io::Error },
    /// The `--config` file is not valid TOML for shardcast's settings.
    #[error("config file {path} is invalid: {source}")]
    ParseFile {
        path: PathBuf,
        source: Box<toml::de::Error>,
    },
    /// A setting is out of range; the message quotes it.
    #[error("invalid configuration: {0}")]
    Invalid(String),
}

/// The server could not start or a shard failed while running. Ends the
/// process with a non-zero exit.
#[derive(Debug, thiserror::Error)]
pub enum ServerError {
    /// The listening socket could not be created or bound.
    #[error("cannot listen on {addr}: {source}")]
    Listen { addr: SocketAddr, source: io::Error },
    /// Another process listens on the address (perhaps another shardcast):
    /// the shards of one process share a port, never two processes.
    #[error("cannot listen on {addr}: the address is in use by another process (another shardcast?); stop it or choose another --listen")]
    AddressInUse { addr: SocketAddr },
    /// An executor thread could not be created (often `ulimit -l` too low for
    /// io_uring's registered memory).
    #[error("cannot start shard {shard}: {reason} (locked-memory limit `ulimit -l` is {memlock_kib} KiB; each shard needs about {need_kib} KiB)")]
    SpawnShard {
        shard: usize,
        reason: String,
        memlock_kib: u64,
        need_kib: u64,
    },
    /// The shards did not all join the cross-shard mesh in time: one of them
    /// died during start-up.
    #[error("shard {shard} could not join the cross-shard mesh: a peer shard failed to start")]
    MeshJoin { shard: usize },
    /// A shard ended with an error or a panic while serving.
    #[error("shard {shard} failed: {reason}")]
    ShardFailed { shard: usize, reason: String },
    /// A key, certificate or other security setting could not be loaded.
    #[error("{0}")]
    Security(#[from] crate::security::SecurityError),
    /// The webhook URL does not resolve.
    #[error("{0}")]
    Webhook(#[from] crate::webhook::WebhookUrlError),
    /// Signal handlers or the shutdown pipe could not be set up.
    #[error("cannot set up shutdown signalling: {0}")]
    Signals(io::Error),
}
