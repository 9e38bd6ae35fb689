//! `shardcast-bench`, the load generator: opens WebSocket connections to a
//! server (shardcast or a peer), publishes at a fixed rate with payloads that
//! carry a send timestamp and a sequence, and reports end-to-end latency
//! (hdrhistogram), deliveries/s, losses, duplicates, reordering, and the
//! server's CPU and memory from `/proc`. With `--tls-ca` it speaks TLS
//! (`wss://`). It runs on one glommio executor and measures its own CPU: a
//! run in which the generator, not the server, was the limit is marked
//! invalid. A crate of its own in the workspace (`benches/shardcast-bench`),
//! not part of the server library's API.

pub mod delta;
pub mod inflate;
pub mod procstat;
pub mod report;
pub mod scrape;
pub mod shape;
pub mod stream;
pub mod tally;
pub mod target;
#[cfg(test)]
mod tls;
pub mod wsclient;

use std::{
    cell::{Cell, RefCell},
    net::{IpAddr, Ipv4Addr, SocketAddr},
    path::PathBuf,
    rc::Rc,
    time::{Duration, Instant},
};

use glommio::timer::sleep;
use shardcast_wire::OpCode;

use self::{
    delta::DeltaReader,
    inflate::MessageInflater,
    report::{Report, Results},
    scrape::Scrape,
    shape::PayloadMaker,
    shardcast_tls::{Tls, TlsError},
    stream::{Inbox, Shared, Stream},
    tally::Tally,
    target::{Role, Stamp, Target},
};
use shardcast::{process, tls_client as shardcast_tls};

/// Connections per source address (each has ~28k ephemeral ports).
const CONNECTIONS_PER_SOURCE: usize = 10_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, serde::Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum Scenario {
    /// Subscribers on `--channels` channels, one publisher per channel.
    Fanout,
    /// Chat: every client subscribes to its room and publishes to it.
    Rooms,
    /// Connections that only subscribe: server memory and CPU while idle.
    Idle,
    /// Open connections as fast as possible: accepted/s and failures.
    ConnectStorm,
}

/// Everything a run needs (the binary's command line), in three parts.
#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub struct Options {
    #[command(flatten)]
    #[serde(flatten)]
    pub server: ServerSide,
    #[command(flatten)]
    #[serde(flatten)]
    pub load: Load,
    #[command(flatten)]
    #[serde(flatten)]
    pub clients: ClientSide,
    /// Extra label for the report (e.g. "shards=2")
    #[arg(long, default_value = "")]
    pub label: String,
}

/// The server under test: where it listens, which processes to measure,
/// and how the report names it.
#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub struct ServerSide {
    /// Server address
    #[arg(long, default_value = "127.0.0.1:8080")]
    pub server: SocketAddr,
    /// More nodes of the same service (cluster runs): subscribers are
    /// spread round-robin over `--server` and these (repeat the flag)
    #[arg(long = "also-server", value_name = "ADDR")]
    pub also_servers: Vec<SocketAddr>,
    /// Publishers connect here instead of to `--server` (cluster runs:
    /// publications cross nodes)
    #[arg(long, value_name = "ADDR")]
    pub publish_server: Option<SocketAddr>,
    /// Server process to read CPU and memory of (from /proc)
    #[arg(long)]
    pub server_pid: Option<u32>,
    /// More server processes whose CPU counts with `--server-pid`'s (the
    /// other nodes, their broker; repeat the flag)
    #[arg(long = "also-pid", value_name = "PID")]
    pub also_pids: Vec<u32>,
    /// Server name and version for the report
    #[arg(long, default_value = "shardcast")]
    pub server_name: String,
    #[arg(long, default_value = "")]
    pub server_version: String,
}

/// The load: who speaks to the server, how many, how much and how long.
#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub struct Load {
    /// How to speak to the server
    #[arg(long, value_enum, default_value = "shardcast-json")]
    pub target: Target,
    #[arg(long, value_enum, default_value = "fanout")]
    pub scenario: Scenario,
    /// Subscribing connections (rooms: clients)
    #[arg(long, default_value_t = 1000)]
    pub subscribers: usize,
    /// Channels (rooms) the subscribers are spread over
    #[arg(long, default_value_t = 1)]
    pub channels: usize,
    /// Publications per second, all publishers together (ignored with
    /// `--max-in-flight`)
    #[arg(long, default_value_t = 1000.0)]
    pub rate: f64,
    /// Flat out with a bounded window instead of a rate: each publisher
    /// keeps at most N publications sent but not yet received by its
    /// channel's window probe (the channel's first latency probe), and
    /// sends the next ones as soon as that probe receives earlier ones.
    /// 0: off (paced by `--rate`)
    #[arg(long, default_value_t = 0, value_name = "N")]
    pub max_in_flight: u64,
    /// Payload size in bytes (the `pad` payload)
    #[arg(long, default_value_t = 100)]
    pub size: usize,
    /// What publications look like (`bytes` benchmark): pad (the stamp
    /// padded to --size), tick (~100 B), chat (~1 KB), book (~10 KB order
    /// book, a few levels changed per update)
    #[arg(long, value_enum, default_value = "pad")]
    pub payload: shape::Shape,
    /// Measured publishing time (idle: the idle window)
    #[arg(long, default_value = "10s", value_parser = parse_duration)]
    #[serde(serialize_with = "report::seconds")]
    pub duration: Duration,
    /// Connections being opened at once
    #[arg(long, default_value_t = 256)]
    pub connect_concurrency: usize,
    /// First source address; more are used every 10,000 connections
    #[arg(long, default_value = "127.0.0.2")]
    pub source: Ipv4Addr,
}

/// What the generator's subscribers ask for and how they read.
#[derive(Debug, Clone, clap::Args, serde::Serialize)]
pub struct ClientSide {
    /// Subscribers offer permessage-deflate (as browsers do) and inflate
    /// what comes compressed
    #[arg(long)]
    pub compress: bool,
    /// Subscribers ask for fossil deltas (`?delta=fossil`) and rebuild each
    /// publication from the one before (shardcast-json only)
    #[arg(long)]
    pub delta: bool,
    /// Subscribers ask for batched envelopes (`?batch=1`) and split each
    /// frame on `\n` (shardcast-json only)
    #[arg(long)]
    pub batch: bool,
    /// Subscribers speak the MessagePack protocol (`shardcast.msgpack`;
    /// shardcast-json only; publishers stay JSON)
    #[arg(long)]
    pub msgpack: bool,
    /// Subscribers that read every message at once and measure latency;
    /// the others read in bulk every --bulk-read-interval (they still count
    /// every message for loss, duplicates and order). Keeps the generator
    /// from being the bottleneck.
    #[arg(long, default_value_t = 32)]
    pub latency_probes: usize,
    #[arg(long, default_value = "10ms", value_parser = parse_duration)]
    #[serde(serialize_with = "report::seconds")]
    pub bulk_read_interval: Duration,
    /// Speak TLS (wss://), trusting the CA or self-signed certificate in
    /// this PEM file. A self-signed certificate must not be a CA one
    /// (`openssl req -x509` needs `-addext basicConstraints=critical,CA:FALSE`)
    #[arg(long, value_name = "PEM")]
    pub tls_ca: Option<PathBuf>,
    /// Name the server's certificate must carry (sent as SNI; with --tls-ca)
    #[arg(long, default_value = "localhost", requires = "tls_ca")]
    pub tls_server_name: String,
    /// Connection token (JWT) sent as `?token=` on every upgrade, for
    /// servers that require one
    #[arg(long, value_name = "JWT")]
    #[serde(skip)]
    pub token: Option<String>,
}

/// The upgrade path of a connection, with `?token=` when one is given.
fn path_with_token(o: &Options, channel: &str, role: Role) -> String {
    let mut path = o.load.target.path(channel, role);
    if o.clients.delta && role == Role::Subscriber {
        path.push_str("&delta=fossil");
    }
    if o.clients.batch && role == Role::Subscriber {
        path.push_str("&batch=1");
    }
    match &o.clients.token {
        None => path,
        Some(token) => {
            let join = if path.contains('?') { '&' } else { '?' };
            format!("{path}{join}token={token}")
        }
    }
}

fn parse_duration(text: &str) -> Result<Duration, shardcast::units::UnitError> {
    text.parse::<shardcast::units::HumanDuration>().map(|d| d.0)
}

/// Phases every task follows.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Phase {
    Connecting,
    Warmup,
    Measure,
    Drain,
    Done,
}

/// State shared by the generator's tasks (one executor, so `Rc`).
struct Run {
    options: Options,
    /// Set with `--tls-ca`: every connection (and scrape) speaks TLS.
    tls: Option<Tls>,
    started: Instant,
    phase: Cell<Phase>,
    tally: RefCell<Tally>,
    connected: Cell<usize>,
    failed: Cell<usize>,
    /// Measured publications sent, per publisher id.
    sent: RefCell<Vec<u64>>,
    /// Wall time of the last measured delivery.
    last_delivery: Cell<Option<Instant>>,
    measure_started: Cell<Option<Instant>>,
    errors: RefCell<Vec<String>>,
    /// Subscribers read in bulk by one task (see `bulk_loop`).
    bulk: RefCell<Vec<(Shared, ConnReader)>>,
    /// Bytes subscribers read from their sockets while measuring (frames,
    /// headers included; before TLS decryption counts nothing else).
    wire_bytes: Cell<u64>,
    /// With `--max-in-flight`: per publisher id, the publications it may
    /// still send (taken when sent, given back when its channel's window
    /// probe receives one; closed when measuring ends).
    windows: Vec<glommio::sync::Semaphore>,
    /// Per connection: whether it is its channel's window probe.
    window_probe: Vec<bool>,
}

impl Run {
    fn nanos(&self) -> u64 {
        self.started.elapsed().as_nanos() as u64
    }

    /// Counts bytes a subscriber read, if measuring.
    fn read_bytes(&self, n: usize) {
        if matches!(self.phase.get(), Phase::Measure | Phase::Drain) {
            self.wire_bytes.set(self.wire_bytes.get() + n as u64);
        }
    }

    fn note_error(&self, error: String) {
        let mut errors = self.errors.borrow_mut();
        if errors.len() < 10 {
            errors.push(error);
        }
    }
}

/// Layout of connections: who is on which channel, who publishes.
struct Plan {
    /// (channel, role) per connection.
    connections: Vec<(usize, Role)>,
    /// Publisher id per connection (meaningful for publishing roles): its
    /// channel times `publishers_per_channel` plus its rank in the channel,
    /// so `id % publishers_per_channel` is its slot.
    publisher_ids: Vec<u32>,
    publishers_per_channel: usize,
    /// Publications per second of each publishing connection.
    rate_each: f64,
}

impl Plan {
    fn new(o: &Options) -> Plan {
        let mut plan = Plan::layout(o);
        let mut ranks = vec![0usize; o.load.channels.max(1)];
        plan.publisher_ids = plan
            .connections
            .iter()
            .map(|&(channel, role)| {
                let rank = ranks[channel];
                if role != Role::Subscriber {
                    ranks[channel] += 1;
                }
                (channel * plan.publishers_per_channel + rank) as u32
            })
            .collect();
        plan
    }

    /// Who connects where, and the publishing rates.
    fn layout(o: &Options) -> Plan {
        let channels = o.load.channels.max(1);
        match o.load.scenario {
            Scenario::Fanout => {
                let mut connections: Vec<(usize, Role)> = (0..o.load.subscribers)
                    .map(|i| (i % channels, Role::Subscriber))
                    .collect();
                connections.extend((0..channels).map(|c| (c, Role::Publisher)));
                Plan {
                    connections,
                    publisher_ids: Vec::new(),
                    publishers_per_channel: 1,
                    rate_each: o.load.rate / channels as f64,
                }
            }
            Scenario::Rooms => Plan {
                connections: (0..o.load.subscribers)
                    .map(|i| (i % channels, Role::Both))
                    .collect(),
                publisher_ids: Vec::new(),
                publishers_per_channel: o.load.subscribers.div_ceil(channels),
                rate_each: o.load.rate / o.load.subscribers.max(1) as f64,
            },
            Scenario::Idle | Scenario::ConnectStorm => Plan {
                connections: (0..o.load.subscribers)
                    .map(|i| (i % channels, Role::Subscriber))
                    .collect(),
                publisher_ids: Vec::new(),
                publishers_per_channel: 1,
                rate_each: 0.0,
            },
        }
    }
}

fn channel_name(channel: usize) -> String {
    format!("bench-{channel}")
}

fn source_for(options: &Options, index: usize) -> IpAddr {
    let base = u32::from(options.load.source);
    IpAddr::V4(Ipv4Addr::from(
        base + (index / CONNECTIONS_PER_SOURCE) as u32,
    ))
}

/// Why a benchmark could not run at all (problems during a run are
/// reported in the [`Report`] instead).
#[derive(Debug, thiserror::Error)]
pub enum BenchError {
    #[error("cannot start the generator's executor: {0}")]
    Executor(String),
    #[error("cannot set up TLS: {0}")]
    Tls(#[from] TlsError),
}

/// Runs one benchmark on the current thread (a pinned glommio executor) and
/// returns its report.
pub fn run(options: Options) -> Result<Report, BenchError> {
    let tls = match &options.clients.tls_ca {
        Some(ca) => Some(Tls::new(ca, &options.clients.tls_server_name)?),
        None => None,
    };
    let cpu = core_affinity::get_core_ids()
        .and_then(|ids| ids.first().map(|c| c.id))
        .map(glommio::Placement::Fixed)
        .unwrap_or(glommio::Placement::Unbound);
    let executor = glommio::LocalExecutorBuilder::new(cpu)
        .name("bench")
        .io_memory(256 << 10)
        .make()
        .map_err(|e| BenchError::Executor(e.to_string()))?;
    Ok(executor.run(run_async(options, tls)))
}

async fn run_async(options: Options, tls: Option<Tls>) -> Report {
    let plan = Rc::new(Plan::new(&options));
    let publishers = plan
        .connections
        .iter()
        .filter(|(_, r)| *r != Role::Subscriber)
        .count();
    let publisher_slots = options.load.channels.max(1) * plan.publishers_per_channel;
    let windows = match options.load.max_in_flight {
        0 => Vec::new(),
        n => (0..publisher_slots)
            .map(|_| glommio::sync::Semaphore::new(n))
            .collect(),
    };
    let window_probe = window_probes(&options, &plan);
    let run = Rc::new(Run {
        tally: RefCell::new(Tally::new(
            plan.connections.len(),
            plan.publishers_per_channel,
        )),
        sent: RefCell::new(vec![0; publisher_slots]),
        options,
        tls,
        started: Instant::now(),
        phase: Cell::new(Phase::Connecting),
        connected: Cell::new(0),
        failed: Cell::new(0),
        last_delivery: Cell::new(None),
        measure_started: Cell::new(None),
        errors: RefCell::new(Vec::new()),
        bulk: RefCell::new(Vec::new()),
        wire_bytes: Cell::new(0),
        windows,
        window_probe,
    });
    glommio::spawn_local(bulk_loop(run.clone())).detach();
    let o = &run.options;
    let rss_before = o
        .server
        .server_pid
        .and_then(|p| procstat::status_kib(p, "VmRSS:"));

    // Connect everyone, at most `connect_concurrency` at a time.
    let connect_started = Instant::now();
    let in_flight = Rc::new(glommio::sync::Semaphore::new(
        o.load.connect_concurrency.max(1) as u64,
    ));
    for index in 0..plan.connections.len() {
        let Ok(permit) = in_flight.acquire_static_permit(1).await else {
            break;
        };
        let (run, plan) = (run.clone(), plan.clone());
        glommio::spawn_local(async move {
            client(run, plan, index, permit).await;
        })
        .detach();
    }
    let total = plan.connections.len();
    while run.connected.get() + run.failed.get() < total {
        sleep(Duration::from_millis(5)).await;
    }
    let connect_seconds = connect_started.elapsed().as_secs_f64();

    let mut results = Results {
        connecting: report::Connecting {
            connections: total,
            connect_failures: run.failed.get(),
            connect_seconds,
            connects_per_second: run.connected.get() as f64 / connect_seconds.max(1e-9),
            ..Default::default()
        },
        ..Results::default()
    };

    match o.load.scenario {
        Scenario::ConnectStorm => {}
        Scenario::Idle => {
            sleep(Duration::from_millis(500)).await;
            let (cpu0, own0, t0) = (server_cpu(o), process::cpu_seconds(), Instant::now());
            let scrape0 = scrape(&run).await;
            sleep(o.load.duration).await;
            let wall = t0.elapsed().as_secs_f64();
            results.generator_cpu_fraction = (process::cpu_seconds() - own0) / wall;
            if let (Some(a), Some(b)) = (cpu0, server_cpu(o)) {
                results.server.server_cpu_seconds = Some(b - a);
            }
            results.take_server_figures(scrape0, scrape(&run).await);
            if let Some(cpu) = results.server.server_cpu_seconds {
                results.server.server_cpu_per_second_idle = Some(cpu / wall);
            }
            let rss_after = o
                .server
                .server_pid
                .and_then(|p| procstat::status_kib(p, "VmRSS:"));
            if let (Some(before), Some(after)) = (rss_before, rss_after) {
                results.server.server_rss_per_connection_bytes = Some(
                    after.saturating_sub(before) as f64 * 1024.0
                        / run.connected.get().max(1) as f64,
                );
            }
        }
        Scenario::Fanout | Scenario::Rooms => {
            measure(&run, &plan, publishers, &mut results).await;
        }
    }
    run.phase.set(Phase::Done);
    results.server.server_rss_kib = o
        .server
        .server_pid
        .and_then(|p| procstat::status_kib(p, "VmRSS:"));
    results.server.server_rss_peak_kib = o
        .server
        .server_pid
        .and_then(|p| procstat::status_kib(p, "VmHWM:"));
    results.errors = run.errors.borrow().clone();
    Report::new(run.options.clone(), results)
}

/// Whether subscriber `index` measures latency (spread over all channels).
fn is_probe(o: &Options, plan: &Plan, index: usize) -> bool {
    let subscribers = plan.connections.len().max(1);
    let every = (subscribers / o.clients.latency_probes.max(1)).max(1);
    o.clients.latency_probes > 0 && index % every == 0
}

/// Per connection, whether it is its channel's window probe (with
/// `--max-in-flight`): the first latency probe on the channel that receives.
fn window_probes(o: &Options, plan: &Plan) -> Vec<bool> {
    let mut chosen = vec![false; plan.connections.len()];
    if o.load.max_in_flight == 0 {
        return chosen;
    }
    let mut seen = vec![false; o.load.channels.max(1)];
    for (index, &(channel, role)) in plan.connections.iter().enumerate() {
        if role != Role::Publisher && !seen[channel] && is_probe(o, plan, index) {
            seen[channel] = true;
            chosen[index] = true;
        }
    }
    chosen
}

/// CPU seconds of the server and every `--also-pid` process.
fn server_cpu(o: &Options) -> Option<f64> {
    let main = o.server.server_pid.and_then(procstat::cpu_seconds)?;
    let others: Option<f64> = o
        .server
        .also_pids
        .iter()
        .map(|p| procstat::cpu_seconds(*p))
        .sum();
    Some(main + others?)
}

/// Where connection `index` (of `role`) connects: publishers to
/// `--publish-server` when given, everyone else round-robin over
/// `--server` and `--also-server`s.
fn server_for(o: &Options, index: usize, role: Role) -> SocketAddr {
    if role == Role::Publisher {
        if let Some(publish) = o.server.publish_server {
            return publish;
        }
    }
    match index % (1 + o.server.also_servers.len()) {
        0 => o.server.server,
        n => o.server.also_servers[n - 1],
    }
}

/// The server's own `/metrics` (shardcast targets only).
async fn scrape(run: &Run) -> Option<Scrape> {
    let o = &run.options;
    match o.load.target {
        Target::ShardcastJson | Target::ShardcastRaw => {
            Scrape::fetch(o.server.server, run.tls.as_ref()).await
        }
        Target::Peer | Target::Nats => None,
    }
}

/// Warm-up until every subscriber hears every publisher of its channel,
/// then publish for `duration`, then drain.
async fn measure(run: &Rc<Run>, plan: &Plan, publishers: usize, results: &mut Results) {
    let o = &run.options;
    run.phase.set(Phase::Warmup);
    let warm_deadline = Instant::now() + Duration::from_secs(20);
    let expect_warm = plan
        .connections
        .iter()
        .filter(|(_, r)| *r != Role::Publisher)
        .count();
    while run.tally.borrow().warm_count() < expect_warm && Instant::now() < warm_deadline {
        sleep(Duration::from_millis(10)).await;
    }
    results.connecting.warm_subscribers = run.tally.borrow().warm_count();

    let scrape0 = scrape(run).await;
    let (cpu0, own0) = (server_cpu(o), process::cpu_seconds());
    run.tally.borrow_mut().start_measuring();
    run.wire_bytes.set(0);
    let started = Instant::now();
    run.measure_started.set(Some(started));
    run.phase.set(Phase::Measure);
    sleep(o.load.duration).await;
    run.phase.set(Phase::Drain);
    // Publishers waiting for room in their window stop.
    for window in &run.windows {
        window.close();
    }
    let publish_seconds = started.elapsed().as_secs_f64();
    let own_during = process::cpu_seconds() - own0;

    // Expected deliveries per subscriber: what the publishers of its channel sent.
    let sent = run.sent.borrow().clone();
    let per_channel = plan.publishers_per_channel;
    let expected_for = |sub: usize| -> u64 {
        let (channel, role) = plan.connections[sub];
        if role == Role::Publisher {
            return 0;
        }
        sent[channel * per_channel..(channel + 1) * per_channel]
            .iter()
            .sum()
    };
    let expected: u64 = (0..plan.connections.len()).map(expected_for).sum();
    let drain_deadline = Instant::now() + Duration::from_secs(10);
    while run.tally.borrow().totals(expected_for).received < expected
        && Instant::now() < drain_deadline
    {
        sleep(Duration::from_millis(10)).await;
    }
    let cpu1 = server_cpu(o);
    let scrape1 = scrape(run).await;
    let delivery_seconds = run
        .last_delivery
        .get()
        .map_or(publish_seconds, |t| t.duration_since(started).as_secs_f64())
        .max(publish_seconds);

    let totals = run.tally.borrow().totals(expected_for);
    let published: u64 = sent.iter().sum();
    results.publishing.publishers = publishers;
    results.publishing.published = published;
    results.publishing.publish_rate_achieved = published as f64 / publish_seconds;
    results.publishing.expected_deliveries = expected;
    results.totals = totals;
    results.deliveries_per_second = totals.received as f64 / delivery_seconds;
    results.latency_us = Some(report::Percentiles::of(&run.tally.borrow().latency_us));
    results.generator_cpu_fraction = own_during / publish_seconds;
    results.take_server_figures(scrape0, scrape1);
    // One process's /metrics cannot speak for several (cluster runs):
    // then /proc's figure for all of them stands.
    if let (Some(a), Some(b), true) = (
        cpu0,
        cpu1,
        results.server.server_cpu_seconds.is_none() || !o.server.also_pids.is_empty(),
    ) {
        results.server.server_cpu_seconds = Some(b - a);
    }
    if let (Some(cpu), true) = (results.server.server_cpu_seconds, totals.received > 0) {
        results.server.server_cpu_seconds_per_million = Some(cpu / totals.received as f64 * 1e6);
    }
    results.wire_bytes_received = run.wire_bytes.get();
    if totals.received > 0 {
        results.wire_bytes_per_delivery =
            Some(run.wire_bytes.get() as f64 / totals.received as f64);
    }
}

/// One connection's whole life: connect, upgrade, then read (and, for
/// publishers, publish) until the run is done.
async fn client(run: Rc<Run>, plan: Rc<Plan>, index: usize, permit: glommio::sync::StaticPermit) {
    let o = &run.options;
    let (channel, role) = plan.connections[index];
    let name = channel_name(channel);
    let server = server_for(o, index, role);
    let connected = async {
        let tcp = wsclient::connect_from(source_for(o, index), server).await?;
        let mut stream = match &run.tls {
            None => Stream::Plain(tcp),
            Some(tls) => Stream::Tls(Box::new(tls.connect(tcp).await?)),
        };
        let path = path_with_token(o, &name, role);
        let offer = o.clients.compress && role != Role::Publisher;
        let protocol =
            (o.clients.msgpack && role == Role::Subscriber).then_some("shardcast.msgpack");
        let upgraded = wsclient::upgrade(&mut stream, server, &path, offer, protocol).await?;
        Ok::<_, std::io::Error>((stream, upgraded))
    };
    let connected =
        glommio::timer::timeout(Duration::from_secs(20), async { Ok(connected.await) }).await;
    drop(permit);
    let (stream, upgraded) = match connected {
        Ok(Ok(pair)) => pair,
        Ok(Err(e)) => {
            run.failed.set(run.failed.get() + 1);
            run.note_error(format!("connect: {e}"));
            return;
        }
        Err(_) => {
            run.failed.set(run.failed.get() + 1);
            run.note_error("connect: timed out".into());
            return;
        }
    };
    run.connected.set(run.connected.get() + 1);
    if o.load.scenario == Scenario::ConnectStorm {
        // Hold the connection until the run ends.
        while run.phase.get() != Phase::Done {
            sleep(Duration::from_millis(100)).await;
        }
        return;
    }
    let stream = Shared::new(stream);
    let mut hello = Vec::new();
    o.load.target.hello(&name, role, &mut hello);
    if !hello.is_empty() && stream.write_all(&hello).await.is_err() {
        run.note_error("hello failed".into());
        return;
    }
    if role != Role::Subscriber {
        let publisher = plan.publisher_ids[index];
        let (run, stream, name, rate) = (run.clone(), stream.clone(), name.clone(), plan.rate_each);
        glommio::spawn_local(async move { publish(run, stream, name, publisher, rate).await })
            .detach();
    }
    if role != Role::Publisher || o.load.target == Target::Nats {
        let probe = is_probe(o, &plan, index);
        let inflater = MessageInflater::for_agreement(upgraded.extensions.as_deref());
        let reader = ConnReader::new(index, probe, upgraded.leftover, inflater, o.clients.delta);
        if probe {
            probe_loop(&run, &stream, reader).await;
        } else {
            run.bulk.borrow_mut().push((stream, reader));
        }
    }
}

/// Parses what one connection received: WebSocket frames, and for NATS the
/// protocol inside them. Synchronous, shared by probe and bulk readers.
struct ConnReader {
    buf: Vec<u8>,
    filled: usize,
    /// A fragmented message being reassembled.
    message: Vec<u8>,
    /// Where whole messages go.
    sink: Sink,
}

/// What becomes of a connection's whole messages: inflated if compressed,
/// split if batched, rebuilt if deltas, unwrapped from NATS, counted.
struct Sink {
    /// Whether the message being received is compressed.
    compressed: bool,
    /// permessage-deflate, when the server agreed to it.
    inflater: Option<Box<MessageInflater>>,
    envelopes: Envelopes,
}

/// The part of a [`Sink`] that handles one envelope.
struct Envelopes {
    index: usize,
    probe: bool,
    /// With `--delta`: the base of the next delta.
    deltas: Option<Box<DeltaReader>>,
    /// NATS protocol bytes not yet parsed.
    nats: Vec<u8>,
}

impl Sink {
    /// Acts on a whole message, inflated first if it came compressed.
    fn message(&mut self, run: &Run, payload: &[u8], out: &mut Vec<u8>) {
        let payload = match (self.compressed, self.inflater.as_mut()) {
            (true, Some(inflater)) => match inflater.inflate(payload) {
                Some(inflated) => inflated,
                None => return run.note_error("a compressed message did not inflate".into()),
            },
            _ => payload,
        };
        if !run.options.clients.batch {
            return self.envelopes.one(run, payload, out);
        }
        // A batched frame: envelopes one per line.
        for envelope in payload.split(|b| *b == b'\n') {
            self.envelopes.one(run, envelope, out);
        }
    }
}

impl Envelopes {
    /// Acts on one envelope (or a peer's message), rebuilt first if it is a
    /// delta.
    fn one(&mut self, run: &Run, payload: &[u8], out: &mut Vec<u8>) {
        if run.options.clients.msgpack {
            // The stamp is in the data map: `s`, `i`, `t`.
            match msgpack_stamp(payload) {
                Some(stamp) => deliver(run, self.index, self.probe, stamp),
                None => run.note_error("a MessagePack message without a stamp".into()),
            }
            return;
        }
        let payload = match self.deltas.as_mut() {
            Some(deltas) => match deltas.data(payload) {
                Some(data) => data,
                None => return run.note_error("a delta did not apply".into()),
            },
            None => payload,
        };
        on_message(run, self.index, self.probe, payload, &mut self.nats, out);
    }
}

/// The server closed the connection.
struct Closed;

impl ConnReader {
    fn new(
        index: usize,
        probe: bool,
        leftover: Vec<u8>,
        inflater: Option<MessageInflater>,
        deltas: bool,
    ) -> Self {
        // Initialised once; `filled` marks the data (zero-filling before
        // every read would cost more than the reads).
        let mut buf = vec![0u8; (16 << 10).max(leftover.len() * 2)];
        buf[..leftover.len()].copy_from_slice(&leftover);
        ConnReader {
            filled: leftover.len(),
            buf,
            message: Vec::new(),
            sink: Sink {
                compressed: false,
                inflater: inflater.map(Box::new),
                envelopes: Envelopes {
                    index,
                    probe,
                    deltas: deltas.then(Box::default),
                    nats: Vec::new(),
                },
            },
        }
    }

    /// Room to read into (grown when one frame needs more).
    fn spare(&mut self) -> &mut [u8] {
        if self.buf.len() - self.filled < 4096 {
            let len = self.buf.len() * 2;
            self.buf.resize(len, 0);
        }
        &mut self.buf[self.filled..]
    }

    /// Handles every complete frame received; replies (pongs) go to `out`.
    fn process(&mut self, run: &Run, out: &mut Vec<u8>) -> Result<(), Closed> {
        let mut start = 0;
        loop {
            let frame = match wsclient::parse_frame(&self.buf[start..self.filled]) {
                Ok(Some(frame)) => frame,
                Ok(None) => break,
                // A reserved opcode or an impossible length: not a server.
                Err(_) => return Err(Closed),
            };
            let (lo, hi) = (start + frame.start, start + frame.end);
            match frame.opcode {
                OpCode::Ping => wsclient::push_frame(out, OpCode::Pong, &self.buf[lo..hi]),
                OpCode::Close => return Err(Closed),
                OpCode::Continuation | OpCode::Text | OpCode::Binary => {
                    let first = frame.opcode != OpCode::Continuation;
                    if first {
                        self.sink.compressed = frame.compressed;
                    }
                    if frame.fin && first && self.message.is_empty() {
                        self.sink.message(run, &self.buf[lo..hi], out);
                    } else {
                        self.message.extend_from_slice(&self.buf[lo..hi]);
                        if frame.fin {
                            let whole = std::mem::take(&mut self.message);
                            self.sink.message(run, &whole, out);
                        }
                    }
                }
                OpCode::Pong => {}
            }
            start = hi;
        }
        if start > 0 {
            self.buf.copy_within(start..self.filled, 0);
            self.filled -= start;
        }
        Ok(())
    }
}

/// A probe: reads every message as soon as it arrives.
async fn probe_loop(run: &Run, stream: &Shared, mut reader: ConnReader) {
    let mut out = Vec::new();
    loop {
        if reader.process(run, &mut out).is_err() || run.phase.get() == Phase::Done {
            return;
        }
        if !out.is_empty() {
            let _ = stream.write_all(&out).await;
            out.clear();
        }
        match stream.read(reader.spare()).await {
            Ok(n) if n > 0 => {
                reader.filled += n;
                run.read_bytes(n);
            }
            _ => {
                if run.phase.get() != Phase::Done {
                    run.note_error("a subscriber's connection closed".into());
                }
                return;
            }
        }
    }
}

/// Bulk subscribers: one task reads them all every tick with non-blocking
/// `recv` until each socket is empty — no wake-up or io_uring request per
/// connection, so the generator stays far below the server's cost. (TLS:
/// rustls decrypts what each `recv` brought, in the same pass.)
async fn bulk_loop(run: Rc<Run>) {
    let (mut out, mut scratch) = (Vec::new(), Vec::new());
    while run.phase.get() != Phase::Done {
        sleep(run.options.clients.bulk_read_interval).await;
        let mut conns = run.bulk.borrow_mut();
        let mut closed = Vec::new();
        for (slot, (stream, reader)) in conns.iter_mut().enumerate() {
            let mut feed = Feed {
                reader,
                run: &run,
                out: &mut out,
            };
            let read = stream.read_available(&mut scratch, &mut feed);
            if !out.is_empty() {
                // Pongs are tiny; the socket has room for them.
                stream.send_available(&out);
                out.clear();
            }
            if read.is_err() {
                closed.push(slot);
            }
        }
        for slot in closed.into_iter().rev() {
            conns.swap_remove(slot);
            if run.phase.get() != Phase::Done {
                run.note_error("a subscriber's connection closed".into());
            }
        }
    }
}

/// A bulk subscriber's parser as the destination of non-blocking reads.
struct Feed<'a> {
    reader: &'a mut ConnReader,
    run: &'a Run,
    /// Replies (pongs) to send once the socket is drained.
    out: &'a mut Vec<u8>,
}

impl Inbox for Feed<'_> {
    fn spare(&mut self) -> &mut [u8] {
        self.reader.spare()
    }

    fn received(&mut self, n: usize) -> bool {
        self.reader.filled += n;
        self.run.read_bytes(n);
        self.reader.process(self.run, self.out).is_ok()
    }
}

/// Handles one complete data message.
fn on_message(
    run: &Run,
    index: usize,
    probe: bool,
    payload: &[u8],
    nats: &mut Vec<u8>,
    out: &mut Vec<u8>,
) {
    if run.options.load.target != Target::Nats {
        if let Some(stamp) = target::find_stamp(payload) {
            deliver(run, index, probe, stamp);
        }
        return;
    }
    nats.extend_from_slice(payload);
    let mut used = 0;
    loop {
        let rest = &nats[used..];
        let Some(eol) = memchr::memmem::find(rest, b"\r\n") else {
            break;
        };
        let line = &rest[..eol];
        if line.starts_with(b"MSG ") {
            // MSG <subject> <sid> [reply] <bytes>
            let Some(size) = std::str::from_utf8(line)
                .ok()
                .and_then(|l| l.rsplit(' ').next())
                .and_then(|n| n.parse::<usize>().ok())
            else {
                break;
            };
            let body_start = eol + 2;
            if rest.len() < body_start + size + 2 {
                break;
            }
            if let Some(stamp) = target::find_stamp(&rest[body_start..body_start + size]) {
                deliver(run, index, probe, stamp);
            }
            used += body_start + size + 2;
        } else {
            if line == b"PING" {
                wsclient::push_frame(out, OpCode::Binary, b"PONG\r\n");
            }
            used += eol + 2;
        }
    }
    nats.drain(..used);
}

/// The generator's stamp in a MessagePack `msg`: its `data` map's `s`,
/// `i` and `t`.
fn msgpack_stamp(message: &[u8]) -> Option<Stamp> {
    let value = rmpv::decode::read_value(&mut &message[..]).ok()?;
    let data = &value["data"];
    Some(Stamp {
        seq: data["s"].as_u64()?,
        publisher: data["i"].as_u64()? as u32,
        nanos: data["t"].as_u64()?,
    })
}

fn deliver(run: &Run, index: usize, probe: bool, stamp: Stamp) {
    // Only probes read promptly, so only their latency means anything.
    let now = if probe { Some(run.nanos()) } else { None };
    run.tally.borrow_mut().record(index, stamp, now);
    if probe && stamp.seq > 0 && matches!(run.phase.get(), Phase::Measure | Phase::Drain) {
        run.last_delivery.set(Some(Instant::now()));
        if run.window_probe[index] {
            if let Some(window) = run.windows.get(stamp.publisher as usize) {
                window.signal(1);
            }
        }
    }
}

/// Publishes on `channel` at `rate` per second: warm-up markers (seq 0)
/// until measuring starts, then seq 1, 2, ... on a drift-free schedule,
/// batching what is due into one write.
async fn publish(run: Rc<Run>, stream: Shared, channel: String, publisher: u32, rate: f64) {
    let o = &run.options;
    let (mut out, mut scratch, mut payload) = (Vec::new(), Vec::new(), Vec::new());
    let mut maker = PayloadMaker::new(o.load.payload, o.load.size, publisher);
    // Warm-up: a marker every 50 ms.
    while run.phase.get() == Phase::Connecting || run.phase.get() == Phase::Warmup {
        if run.phase.get() == Phase::Warmup {
            out.clear();
            maker.make(0, publisher, run.nanos(), &mut payload);
            o.load
                .target
                .publish(&channel, &payload, &mut out, &mut scratch);
            if stream.write_all(&out).await.is_err() {
                return;
            }
        }
        sleep(Duration::from_millis(50)).await;
    }
    let Some(started) = run.measure_started.get() else {
        return;
    };
    if let Some(window) = run.windows.get(publisher as usize) {
        return publish_windowed(&run, &stream, &channel, publisher, window, maker).await;
    }
    let tick = Duration::from_secs_f64((1.0 / rate.max(1e-3)).clamp(0.001, 1.0));
    let mut seq = 0u64;
    // Stagger publishers so they do not all fire on the same tick.
    let offset = tick.mul_f64((publisher % 97) as f64 / 97.0);
    let mut next = started + offset;
    while run.phase.get() == Phase::Measure {
        let due = (rate * started.elapsed().as_secs_f64()).floor() as u64;
        out.clear();
        while seq < due {
            seq += 1;
            maker.make(seq, publisher, run.nanos(), &mut payload);
            o.load
                .target
                .publish(&channel, &payload, &mut out, &mut scratch);
        }
        if !out.is_empty() {
            if stream.write_all(&out).await.is_err() {
                run.note_error("publisher connection failed".into());
                break;
            }
            run.sent.borrow_mut()[publisher as usize] = seq;
        }
        next += tick;
        let now = Instant::now();
        if next > now {
            sleep(next - now).await;
        } else {
            next = now;
            glommio::yield_if_needed().await;
        }
    }
}

/// Publishes flat out within a window (`--max-in-flight`): waits for room,
/// then sends every publication there is room for in one write, until
/// measuring ends (the window is then closed).
async fn publish_windowed(
    run: &Run,
    stream: &Shared,
    channel: &str,
    publisher: u32,
    window: &glommio::sync::Semaphore,
    mut maker: PayloadMaker,
) {
    let (mut out, mut scratch, mut payload) = (Vec::new(), Vec::new(), Vec::new());
    let target = run.options.load.target;
    let mut seq = 0u64;
    while run.phase.get() == Phase::Measure {
        if window.acquire(1).await.is_err() {
            break;
        }
        // Whatever else the window has room for goes in the same write.
        let more = window.available();
        let more = if window.try_acquire(more).unwrap_or(false) {
            more
        } else {
            0
        };
        out.clear();
        for _ in 0..=more {
            seq += 1;
            maker.make(seq, publisher, run.nanos(), &mut payload);
            target.publish(channel, &payload, &mut out, &mut scratch);
        }
        if stream.write_all(&out).await.is_err() {
            run.note_error("publisher connection failed".into());
            break;
        }
        run.sent.borrow_mut()[publisher as usize] = seq;
    }
}

#[cfg(test)]
mod tests {
    use clap::Parser;

    use super::*;

    fn options(args: &[&str]) -> Options {
        #[derive(Parser)]
        struct Cli {
            #[command(flatten)]
            options: Options,
        }
        Cli::parse_from(std::iter::once("bench").chain(args.iter().copied())).options
    }

    #[test]
    fn publisher_ids_number_each_channels_publishers_from_zero() {
        let rooms = Plan::new(&options(&[
            "--scenario",
            "rooms",
            "--subscribers",
            "5",
            "--channels",
            "2",
        ]));
        // Connections alternate channels 0,1,0,1,0; 3 publishers per channel.
        assert_eq!(rooms.publisher_ids, vec![0, 3, 1, 4, 2]);
        let fanout = Plan::new(&options(&["--subscribers", "3", "--channels", "2"]));
        let publishers: Vec<u32> = fanout
            .connections
            .iter()
            .zip(&fanout.publisher_ids)
            .filter(|((_, role), _)| *role == Role::Publisher)
            .map(|(_, id)| *id)
            .collect();
        assert_eq!(publishers, vec![0, 1]);
    }

    #[test]
    fn each_channel_has_one_window_probe_when_the_window_is_on() {
        let paced = options(&["--subscribers", "10", "--channels", "2"]);
        assert!(!window_probes(&paced, &Plan::new(&paced)).contains(&true));
        let o = options(&[
            "--subscribers",
            "10",
            "--channels",
            "2",
            "--max-in-flight",
            "32",
        ]);
        let plan = Plan::new(&o);
        let chosen = window_probes(&o, &plan);
        for channel in 0..2 {
            let on: Vec<usize> = (0..plan.connections.len())
                .filter(|&i| chosen[i] && plan.connections[i].0 == channel)
                .collect();
            assert_eq!(on.len(), 1, "channel {channel}: {on:?}");
            assert_eq!(plan.connections[on[0]].1, Role::Subscriber);
            assert!(is_probe(&o, &plan, on[0]));
        }
    }

    #[test]
    fn tls_is_off_unless_a_ca_is_given() {
        let plain = options(&[]);
        assert_eq!(
            (plain.clients.tls_ca, plain.clients.tls_server_name.as_str()),
            (None, "localhost")
        );
        let tls = options(&["--tls-ca", "ca.pem", "--tls-server-name", "127.0.0.1"]);
        assert_eq!(tls.clients.tls_ca, Some(PathBuf::from("ca.pem")));
        assert_eq!(tls.clients.tls_server_name, "127.0.0.1");
        #[derive(Parser, Debug)]
        struct Cli {
            #[command(flatten)]
            options: Options,
        }
        assert!(Cli::try_parse_from(["bench", "--tls-server-name", "x"]).is_err());
    }
}
