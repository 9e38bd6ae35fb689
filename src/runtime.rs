//! Starting and stopping the shards: bind one SO_REUSEPORT listener per shard
//! (built by hand for a 4096-connection backlog) once the address is claimed
//! without SO_REUSEPORT (so a port another process holds is refused), create the cross-shard mesh,
//! run each shard on its own thread with a glommio executor pinned to one of
//! the CPUs this process may use, and report readiness and exits. A shard
//! that fails or panics ends the whole server with an error.

use std::{
    net::SocketAddr,
    os::{fd::OwnedFd, unix::net::UnixStream},
    panic::AssertUnwindSafe,
    sync::{atomic::AtomicUsize, mpsc, Arc},
    time::Duration,
};

use glommio::{channels::channel_mesh::MeshBuilder, LocalExecutorBuilder, Placement};
use socket2::{Domain, Protocol, Socket, Type};

use crate::{
    config::{Config, Listeners},
    error::ServerError,
    mesh::LANE_CAPACITY,
    security::Security,
    shard::{run_shard, ShardContext, ShardEvent},
    shutdown::ShutdownHandle,
    snapshot::ShardSnapshot,
};

/// Pending-connection backlog of each listener (glommio's own bind uses 1024,
/// which drops SYNs under a connect storm).
const LISTEN_BACKLOG: i32 = 4096;
/// io_uring registered memory per shard. glommio's 10 MiB default pins about
/// 30 MiB per shard; shardcast does no file I/O and needs little.
const IO_MEMORY: usize = 64 << 10;
/// How long start-up may take before the server gives up.
const START_TIMEOUT: Duration = Duration::from_secs(30);
/// Lifecycle events one shard holds for its webhook before it drops new
/// ones (a receiver that is down for long).
const WEBHOOK_QUEUE: usize = 100_000;
/// Bytes of those events one shard holds at most (each carries a user id
/// and a channel name: with long ones 200k events took a gigabyte).
const WEBHOOK_QUEUE_BYTES: usize = 16 << 20;

/// A started server: every shard is accepting.
pub struct Server {
    addr: SocketAddr,
    admin_addr: Option<SocketAddr>,
    tls: bool,
    shards: usize,
    shutdown: ShutdownHandle,
    events: mpsc::Receiver<ShardEvent>,
}

/// Settings checked as a start checks them, with every key, certificate
/// and secret they name loaded: what [`Server::start_checked`] starts
/// with, so nothing is loaded twice. `check-config` stops here.
pub struct Checked {
    config: Config,
    security: Security,
    /// This run's epoch, which also keys the per-IP counters' hashes.
    epoch: u64,
}

impl Checked {
    /// The settings (already validated by [`Config::resolve`]).
    pub fn config(&self) -> &Config {
        &self.config
    }
}

/// Checks what a start would check before binding anything: the settings
/// (already validated by [`Config::resolve`]) and every key, certificate and
/// secret they name, loaded as the server loads them. `check-config` and
/// `serve` both go through it.
pub fn check(config: Config) -> Result<Checked, ServerError> {
    // This run's epoch: clients compare it to tell a restarted server
    // (whose history is gone) from the one they left.
    let epoch = crate::random::u64();
    let security = Security::load(&config.security, config.limits.max_subscriptions, epoch)?;
    Ok(Checked {
        config,
        security,
        epoch,
    })
}

impl Server {
    /// Checks `config` ([`check`]), binds, starts every shard and returns
    /// once all accept connections.
    pub fn start(config: Config) -> Result<Server, ServerError> {
        Server::start_checked(check(config)?)
    }

    /// Binds, starts every shard and returns once all accept connections.
    pub fn start_checked(checked: Checked) -> Result<Server, ServerError> {
        crate::process::start_time_seconds();
        let Checked {
            config,
            security,
            epoch,
        } = checked;
        let shards = config.shards;
        let security = Arc::new(security);
        log_security(&config, &security);
        let (addr, listeners) = bind_listeners(config.listeners.public, shards)?;
        let (admin_addr, mut admin_listeners) = match config.listeners.admin {
            Some(admin) => {
                let (addr, listeners) = bind_listeners(admin, shards)?;
                (Some(addr), listeners.into_iter().map(Some).collect())
            }
            None => (None, Vec::new()),
        };
        admin_listeners.resize_with(shards, || None);
        let cpus = core_affinity::get_core_ids().unwrap_or_default();
        let mesh = (shards > 1).then(|| MeshBuilder::full(shards, LANE_CAPACITY));
        let open_connections = Arc::new(AtomicUsize::new(0));
        let congestion = crate::mesh::new_congestion(shards);
        let engine_health = crate::engine::new_health(shards);
        let webhooks = match &config.webhooks.url {
            Some(url) => Some(Arc::new(crate::webhook::WebhookSettings {
                socket: url.resolve()?,
                tls: url.tls(config.webhooks.ca.as_deref())?,
                url: url.clone(),
                secret: config.webhooks.secret.clone(),
                batch: config.webhooks.batch,
                queue: WEBHOOK_QUEUE,
                queue_bytes: WEBHOOK_QUEUE_BYTES,
                node: config.engine.node_id.clone(),
                seq: Arc::default(),
            })),
            None => None,
        };
        let (events_tx, events) = mpsc::channel();
        let mut startup = Startup::new(shards);
        let mut writers = Vec::with_capacity(shards);
        for (id, (listener, admin_listener)) in
            listeners.into_iter().zip(admin_listeners).enumerate()
        {
            let (read_end, write_end) = UnixStream::pair().map_err(ServerError::Signals)?;
            write_end
                .set_nonblocking(true)
                .map_err(ServerError::Signals)?;
            writers.push(write_end);
            let cpu = cpus.get(id % cpus.len().max(1)).map(|core| core.id);
            let placement = match cpu {
                Some(cpu) => Placement::Fixed(cpu),
                None => Placement::Unbound,
            };
            let ctx = ShardContext {
                id,
                config: Config {
                    listeners: Listeners {
                        public: addr,
                        admin: admin_addr,
                    },
                    ..config.clone()
                },
                listener,
                admin_listener,
                security: security.clone(),
                mesh: mesh.clone(),
                shutdown: OwnedFd::from(read_end),
                open_connections: open_connections.clone(),
                congestion: congestion.clone(),
                engine_health: engine_health.clone(),
                webhooks: webhooks.clone(),
                cpu,
                events: events_tx.clone(),
                epoch,
            };
            let reports = events_tx.clone();
            let spawned = std::thread::Builder::new()
                .name(format!("shard-{id}"))
                .spawn(move || shard_thread(ctx, placement, reports))
                .map_err(|e| spawn_error(id, e))
                .and_then(|_| startup.wait(&events, |s| s.created[id]));
            if let Err(error) = spawned {
                ShutdownHandle::new(writers).trigger();
                return Err(error);
            }
        }
        let server = Server {
            addr,
            admin_addr,
            tls: security.tls.is_some(),
            shards,
            shutdown: ShutdownHandle::new(writers),
            events,
        };
        if let Err(error) = startup.wait(&server.events, |s| s.ready.iter().all(|r| *r)) {
            server.shutdown.trigger();
            return Err(error);
        }
        Ok(server)
    }

    /// The address the shards listen on (with the real port if 0 was asked).
    pub fn local_addr(&self) -> SocketAddr {
        self.addr
    }

    /// The admin address, when admin routes have a listener of their own.
    pub fn admin_addr(&self) -> Option<SocketAddr> {
        self.admin_addr
    }

    /// Whether the public address speaks TLS.
    pub fn is_tls(&self) -> bool {
        self.tls
    }

    pub fn shards(&self) -> usize {
        self.shards
    }

    pub fn shutdown_handle(&self) -> ShutdownHandle {
        self.shutdown.clone()
    }

    /// Blocks until every shard has ended after a shutdown; returns each
    /// shard's final snapshot. The first shard failure is returned at once
    /// (the caller exits non-zero).
    pub fn wait(self) -> Result<Vec<ShardSnapshot>, ServerError> {
        let mut totals = Vec::with_capacity(self.shards);
        while totals.len() < self.shards {
            match self.events.recv() {
                Ok(ShardEvent::Created(_) | ShardEvent::Ready(_)) => {}
                Ok(ShardEvent::Exited(_, Ok(snapshot))) => totals.push(*snapshot),
                Ok(ShardEvent::Exited(_, Err(error))) => {
                    self.shutdown.trigger();
                    return Err(error);
                }
                Err(_) => break,
            }
        }
        totals.sort_by_key(|s| s.identity.shard);
        Ok(totals)
    }
}

/// Which shards have their executor and which accept, during start-up.
struct Startup {
    created: Vec<bool>,
    ready: Vec<bool>,
    /// How long any one step may take.
    timeout: Duration,
}

impl Startup {
    fn new(shards: usize) -> Self {
        Startup {
            created: vec![false; shards],
            ready: vec![false; shards],
            timeout: START_TIMEOUT,
        }
    }

    /// Follows the shards' events until `done`, each within the start-up
    /// timeout. A shard that exits, or the first one that is late, fails the
    /// start (the caller stops the others).
    fn wait(
        &mut self,
        events: &mpsc::Receiver<ShardEvent>,
        done: impl Fn(&Startup) -> bool,
    ) -> Result<(), ServerError> {
        while !done(self) {
            match events.recv_timeout(self.timeout) {
                Ok(ShardEvent::Created(shard)) => self.created[shard] = true,
                Ok(ShardEvent::Ready(shard)) => self.ready[shard] = true,
                Ok(ShardEvent::Exited(shard, result)) => {
                    return Err(result.err().unwrap_or(ServerError::ShardFailed {
                        shard,
                        reason: "exited during start-up".into(),
                    }));
                }
                Err(_) => {
                    let late = self.ready.iter().position(|r| !r).unwrap_or(0);
                    let late = self.created.iter().position(|c| !c).unwrap_or(late);
                    return Err(ServerError::ShardFailed {
                        shard: late,
                        reason: format!("did not start within {:?}", self.timeout),
                    });
                }
            }
        }
        Ok(())
    }
}

/// Says at start-up what protects the server, and loudly when nothing does.
fn log_security(config: &Config, security: &Security) {
    if security.is_anonymous() {
        let why = if config.security.anonymous {
            "--anonymous"
        } else {
            "no --jwt-secret or --jwt-public-key is set"
        };
        tracing::warn!(
            "ANONYMOUS MODE ({why}): anyone who can reach this server may connect, \
             subscribe and publish to any channel. Configure connection tokens before \
             exposing it (docs/security.md)."
        );
    }
    if security.api_key.is_none() {
        tracing::warn!(
            "no --api-key: the HTTP API (publish, history, channels, presence), /metrics and \
             /api/stats are open to anyone who can reach them; drain, disconnect and unsubscribe \
             are served on --admin-listen only"
        );
    }
    tracing::info!(
        tokens = !security.is_anonymous(),
        api_key = security.api_key.is_some(),
        tls = security.tls.is_some(),
        origins_restricted = security.origins.is_restricted(),
        publish_rate = config.security.limits.publish_rate,
        max_connections_per_ip = config.security.limits.max_connections_per_ip,
        max_http_connections_per_ip = config.security.limits.max_http_connections_per_ip,
        admin_listen = ?config.listeners.admin,
        "security settings"
    );
}

/// The body of a shard thread: build the pinned executor, run the shard,
/// report how it ended — panics included.
fn shard_thread(ctx: ShardContext, placement: Placement, events: mpsc::Sender<ShardEvent>) {
    let id = ctx.id;
    let outcome = std::panic::catch_unwind(AssertUnwindSafe(|| {
        let executor = LocalExecutorBuilder::new(placement)
            .name(&format!("shard{id}"))
            .io_memory(IO_MEMORY)
            .make()
            .map_err(|e| spawn_error(id, e))?;
        let _ = ctx.events.send(ShardEvent::Created(id));
        executor.run(run_shard(ctx))
    }));
    let result = outcome.unwrap_or_else(|panic| {
        let reason = panic
            .downcast_ref::<&str>()
            .map(|s| s.to_string())
            .or_else(|| panic.downcast_ref::<String>().cloned())
            .unwrap_or_else(|| "panicked".into());
        Err(ServerError::ShardFailed {
            shard: id,
            reason: format!("panicked: {reason}"),
        })
    });
    let _ = events.send(ShardEvent::Exited(id, result.map(Box::new)));
}

/// Binds `shards` listeners on the same address with SO_REUSEPORT; the
/// kernel spreads incoming connections across them. The address is first
/// claimed by a socket without SO_REUSEPORT, held until every shard listens:
/// a port some other process listens on (another shardcast included, whose
/// own sockets carry SO_REUSEPORT) is refused with `EADDRINUSE` instead of
/// being silently shared with it. Port 0 is resolved by that first bind and
/// reused by the shards.
fn bind_listeners(
    addr: SocketAddr,
    shards: usize,
) -> Result<(SocketAddr, Vec<OwnedFd>), ServerError> {
    let listen_error = |source: std::io::Error| match source.kind() {
        std::io::ErrorKind::AddrInUse => ServerError::AddressInUse { addr },
        _ => ServerError::Listen { addr, source },
    };
    let claim = new_socket(addr).map_err(listen_error)?;
    claim.bind(&addr.into()).map_err(listen_error)?;
    let bound = claim
        .local_addr()
        .map_err(listen_error)?
        .as_socket()
        .unwrap_or(addr);
    let mut listeners = Vec::with_capacity(shards);
    for _ in 0..shards {
        let socket = new_socket(bound).map_err(listen_error)?;
        socket.set_reuse_port(true).map_err(listen_error)?;
        socket.bind(&bound.into()).map_err(listen_error)?;
        socket.listen(LISTEN_BACKLOG).map_err(listen_error)?;
        listeners.push(OwnedFd::from(socket));
    }
    // The shards' listeners hold the address from here on.
    drop(claim);
    Ok((bound, listeners))
}

/// A TCP socket for `addr` with SO_REUSEADDR (a restart binds while the
/// last run's connections linger in TIME_WAIT; a listening socket still
/// refuses it).
fn new_socket(addr: SocketAddr) -> std::io::Result<Socket> {
    let socket = Socket::new(Domain::for_address(addr), Type::STREAM, Some(Protocol::TCP))?;
    socket.set_reuse_address(true)?;
    Ok(socket)
}

/// A shard could not be started; quotes the locked-memory limit, the usual
/// cause with io_uring.
fn spawn_error(shard: usize, reason: impl std::fmt::Display) -> ServerError {
    ServerError::SpawnShard {
        shard,
        reason: reason.to_string(),
        memlock_kib: memlock_kib(),
        need_kib: (IO_MEMORY as u64 * 3) / 1024 + 512,
    }
}

fn memlock_kib() -> u64 {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit writes into the struct we pass.
    if unsafe { libc::getrlimit(libc::RLIMIT_MEMLOCK, &mut limit) } == 0 {
        limit.rlim_cur / 1024
    } else {
        0
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_late_start_names_the_shard_that_is_late() {
        let (tx, rx) = mpsc::channel();
        let mut startup = Startup {
            timeout: Duration::from_millis(20),
            ..Startup::new(3)
        };
        tx.send(ShardEvent::Created(0)).unwrap();
        tx.send(ShardEvent::Created(1)).unwrap();
        tx.send(ShardEvent::Created(2)).unwrap();
        tx.send(ShardEvent::Ready(0)).unwrap();
        tx.send(ShardEvent::Ready(2)).unwrap();
        let error = startup
            .wait(&rx, |s| s.ready.iter().all(|r| *r))
            .unwrap_err();
        assert!(
            matches!(error, ServerError::ShardFailed { shard: 1, .. }),
            "{error}"
        );
        let mut startup = Startup {
            timeout: Duration::from_millis(20),
            ..Startup::new(3)
        };
        tx.send(ShardEvent::Created(0)).unwrap();
        let error = startup.wait(&rx, |s| s.created[1]).unwrap_err();
        assert!(error.to_string().starts_with("shard 1 failed"), "{error}");
    }
}
