//! A shard's lifecycle on its executor: join the cross-shard mesh, start the
//! peer-link and mesh-receiver tasks, the flush pass and the heartbeat sweep, accept
//! connections on this shard's SO_REUSEPORT listener until shutdown is
//! requested, then close every connection gracefully within the shutdown
//! timeout.

use std::{
    os::fd::{FromRawFd, IntoRawFd, OwnedFd},
    panic::AssertUnwindSafe,
    rc::Rc,
    sync::{atomic::AtomicUsize, mpsc, Arc},
    time::Duration,
};

use futures_lite::FutureExt;
use glommio::{
    channels::channel_mesh::{Full, MeshBuilder},
    net::{TcpListener, UnixStream},
};

use super::{observe::spawn_stats_tick, Shard, ShardParts};
use crate::{
    config::Config, conn::Side, engine::broker, error::ServerError, mesh::MeshMsg, mesh::PeerLinks,
    security::Security, snapshot::ShardSnapshot, stats::bump,
};

/// What shard threads report to the thread that started them.
#[derive(Debug)]
pub(crate) enum ShardEvent {
    /// The shard's executor exists. Executors are created one after the
    /// other in shard order, so their ids (which number the mesh's peers)
    /// follow it: the shard's number is the same in every log line, error
    /// and metric.
    Created(usize),
    /// The shard is accepting connections.
    Ready(usize),
    /// The shard ended (after shutdown, or with an error).
    Exited(usize, Result<Box<ShardSnapshot>, ServerError>),
}

/// How long a shard waits for its peers at the mesh barrier.
const MESH_JOIN_TIMEOUT: Duration = Duration::from_secs(10);
/// How often expired history is dropped.
const HISTORY_SWEEP_EVERY: Duration = Duration::from_secs(1);
/// Pause after an accept error such as EMFILE, so the loop does not spin.
const ACCEPT_ERROR_BACKOFF: Duration = Duration::from_millis(20);

/// Everything a shard thread is handed at start (all `Send`).
pub(crate) struct ShardContext {
    pub id: usize,
    pub config: Config,
    /// This shard's bound, listening socket.
    pub listener: OwnedFd,
    /// This shard's admin listener, when admin routes have their own address.
    pub admin_listener: Option<OwnedFd>,
    /// Keys, certificates and limits, shared read-only by all shards.
    pub security: Arc<Security>,
    /// The cross-shard mesh (absent with one shard).
    pub mesh: Option<MeshBuilder<MeshMsg, Full>>,
    /// Read end of this shard's shutdown pipe: one byte means "shut down".
    pub shutdown: OwnedFd,
    pub open_connections: Arc<AtomicUsize>,
    /// Every shard's congestion flag (see [`crate::mesh::Congestion`]).
    pub congestion: crate::mesh::Congestion,
    /// Every shard's engine flag (see [`crate::engine::EngineHealth`]).
    pub engine_health: crate::engine::EngineHealth,
    /// Where lifecycle webhooks go, shared by every shard.
    pub webhooks: Option<Arc<crate::webhook::WebhookSettings>>,
    /// The CPU this shard's thread is pinned to (`None`: unpinned).
    pub cpu: Option<usize>,
    /// Where the shard reports that it is accepting.
    pub events: mpsc::Sender<ShardEvent>,
    /// This run's epoch (random at start, the same on every shard).
    pub epoch: u64,
}

/// Runs shard `ctx.id` until shutdown. Returns its final snapshot.
pub(crate) async fn run_shard(ctx: ShardContext) -> Result<ShardSnapshot, ServerError> {
    // glommio numbers mesh peers by executor id; executors are created in
    // shard order (see ShardEvent::Created), so the peer id is the
    // shard's number. It decides channel ownership: checked, not assumed.
    let id = ctx.id;
    let mut mesh = None;
    if let Some(builder) = ctx.mesh {
        let joined =
            glommio::timer::timeout(MESH_JOIN_TIMEOUT, async { Ok(builder.join().await) }).await;
        let (senders, receivers) = match joined {
            Ok(Ok(pair)) => pair,
            _ => return Err(ServerError::MeshJoin { shard: id }),
        };
        if senders.peer_id() != id {
            return Err(ServerError::ShardFailed {
                shard: id,
                reason: format!("the mesh numbered it {}", senders.peer_id()),
            });
        }
        mesh = Some((senders, receivers));
    }
    let (links, queues) = PeerLinks::new(id, ctx.config.shards, ctx.congestion, Rc::default());
    let broker = broker::for_shard::<Shard>(&ctx.config.engine, ctx.config.retention(), id)
        .map_err(|error| ServerError::ShardFailed {
            shard: id,
            reason: error.to_string(),
        })?;
    let parts = ShardParts {
        links: links.clone(),
        open_connections: ctx.open_connections,
        epoch: ctx.epoch,
        security: ctx.security,
        broker,
        engine_health: ctx.engine_health,
        webhooks: ctx.webhooks,
    };
    let shard = Rc::new(Shard::new(id, ctx.cpu, ctx.config, parts));
    if let Some((senders, mut receivers)) = mesh {
        let senders = Rc::new(senders);
        for (peer, queue) in queues.into_iter().enumerate() {
            if let Some(queue) = queue {
                glommio::spawn_local(links.clone().drain(peer, queue, senders.clone())).detach();
            }
        }
        for (_, receiver) in receivers.streams() {
            let shard = shard.clone();
            glommio::spawn_local(async move {
                while let Some(msg) = receiver.recv().await {
                    bump(&shard.stats.mesh_received, 1);
                    shard.handle_mesh(msg);
                }
            })
            .detach();
        }
    }

    // The one writer of every connection's queue, for the shard's lifetime.
    glommio::spawn_local(shard.shell.flusher.clone().run()).detach();
    // The one waiter on every plain connection's socket.
    if let Some(readiness) = &shard.shell.readiness {
        glommio::spawn_local(readiness.clone().run()).detach();
    }
    spawn_shutdown_watcher(&shard, ctx.shutdown);
    spawn_heartbeat_sweep(&shard);
    spawn_stats_tick(&shard);
    spawn_history_sweep(&shard);
    spawn_engine(&shard);
    super::lifecycle::spawn(&shard);

    let listener = adopt_listener(ctx.listener);
    let admin = ctx.admin_listener.map(adopt_listener);
    tracing::info!(
        shard = id,
        cpu = ctx.cpu,
        listen = %shard.config.listeners.public,
        admin = ?shard.config.listeners.admin,
        "shard accepting"
    );
    let _ = ctx.events.send(ShardEvent::Ready(id));

    let public = accept_until_stopped(shard.clone(), listener, Side::Public);
    match admin {
        Some(admin) => {
            futures_lite::future::zip(
                public,
                accept_until_stopped(shard.clone(), admin, Side::Admin),
            )
            .await;
        }
        None => public.await,
    }
    let gate = shard.shell.lifetime.gate.clone();

    let open = shard.connection_count();
    tracing::info!(shard = id, open, "shard stopping: closing connections");
    let timeout = shard.config.timeouts.shutdown;
    let drained = glommio::timer::timeout(timeout, async {
        let _ = gate.close().await;
        shard.all_closed().await;
        Ok(())
    })
    .await;
    if drained.is_err() {
        tracing::warn!(
            shard = id,
            left = shard.connection_count(),
            "shutdown timeout reached"
        );
    }
    Ok(super::observe::snapshot(&shard, false))
}

/// Takes over a listening socket the runtime bound for this shard.
fn adopt_listener(fd: OwnedFd) -> TcpListener {
    // SAFETY: the runtime created this fd as a bound, listening TCP socket and
    // handed its ownership to this shard alone.
    unsafe { TcpListener::from_raw_fd(fd.into_raw_fd()) }
}

/// Accepts connections on `listener` until shutdown begins; each is served
/// by a task of its own inside the shard's gate, so shutdown can wait for it.
async fn accept_until_stopped(shard: Rc<Shard>, listener: TcpListener, side: Side) {
    let gate = shard.shell.lifetime.gate.clone();
    loop {
        let accepted = async { Some(listener.accept().await) }
            .or(async {
                shard.stopped().await;
                None
            })
            .await;
        let Some(accepted) = accepted else { break };
        match accepted {
            Ok(stream) => {
                let _ = stream.set_nodelay(true);
                let shard_for_task = shard.clone();
                let task = gate.spawn(async move {
                    let served =
                        AssertUnwindSafe(super::serve(shard_for_task.clone(), stream, side))
                            .catch_unwind()
                            .await;
                    if served.is_err() {
                        bump(&shard_for_task.stats.connection_panics, 1);
                        tracing::error!(
                            shard = shard_for_task.id,
                            "connection task panicked; connection dropped"
                        );
                    }
                });
                if let Ok(task) = task {
                    task.detach();
                }
            }
            Err(error) => {
                tracing::warn!(shard = shard.id, %error, "accept failed");
                glommio::timer::sleep(ACCEPT_ERROR_BACKOFF).await;
            }
        }
    }
}

/// Waits for the shutdown byte, then starts the graceful shutdown.
fn spawn_shutdown_watcher(shard: &Rc<Shard>, fd: OwnedFd) {
    let shard = shard.clone();
    glommio::spawn_local(async move {
        // SAFETY: the runtime handed this shard sole ownership of the fd, the
        // read end of a Unix socket pair.
        let mut pipe = unsafe { UnixStream::from_raw_fd(fd.into_raw_fd()) };
        let mut byte = [0u8; 1];
        // A byte or end of stream (the runtime is gone) both mean stop.
        let _ = futures_lite::AsyncReadExt::read(&mut pipe, &mut byte).await;
        shard.begin_shutdown();
    })
    .detach();
}

/// Once a second: expire old history, forget idle owned channels.
fn spawn_history_sweep(shard: &Rc<Shard>) {
    let shard = shard.clone();
    glommio::spawn_local(async move {
        while !shard.is_shutting_down() {
            glommio::timer::sleep(HISTORY_SWEEP_EVERY).await;
            shard.sweep_history();
        }
    })
    .detach();
}

/// One timer per shard drives every connection's heartbeat.
fn spawn_heartbeat_sweep(shard: &Rc<Shard>) {
    let shard = shard.clone();
    let every = crate::heartbeat::HeartbeatTimes::new(
        shard.config.heartbeat.ping_interval,
        shard.config.heartbeat.ping_timeout,
    )
    .sweep_every();
    glommio::spawn_local(async move {
        while !shard.is_shutting_down() {
            glommio::timer::sleep(every).await;
            shard.sweep_heartbeats();
        }
    })
    .detach();
}

/// Starts the broker's link tasks, each until shutdown begins, and the
/// refresh of what this node keeps in the broker.
fn spawn_engine(shard: &Rc<Shard>) {
    shard.set_engine_health();
    for link in shard.broker.tasks(shard) {
        let shard = shard.clone();
        glommio::spawn_local(async move {
            link.or(shard.stopped()).await;
        })
        .detach();
    }
    spawn_broker_refresh(shard);
}

/// With a broker that keeps this node's presence members and occupancy
/// entries (Redis drops those of a node that stops refreshing them), and
/// this node has some to keep (`--presence`, `--webhook-url`): says they
/// are still there, every [`Broker::refresh_every`](broker::Broker::refresh_every).
fn spawn_broker_refresh(shard: &Rc<Shard>) {
    let refreshed = shard.presence.borrow().is_on() || shard.lifecycle.is_on();
    let Some(every) = shard.broker.refresh_every().filter(|_| refreshed) else {
        return;
    };
    let shard = shard.clone();
    glommio::spawn_local(async move {
        while !shard.is_shutting_down() {
            glommio::timer::sleep(every).await;
            super::presence::refresh(&shard);
            super::lifecycle::refresh(&shard);
        }
    })
    .detach();
}
