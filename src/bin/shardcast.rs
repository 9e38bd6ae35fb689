//! The `shardcast` binary: parses the command line, sets up logging, starts
//! the server and waits for it to stop. Everything else is in the library.

use std::{
    io::{IsTerminal, Write},
    path::PathBuf,
};

use anyhow::Context;
use clap::{Parser, Subcommand};
use shardcast::{
    client::{ClientError, PubOptions, SubOptions, Timeouts, TlsOptions},
    config::ConfigArgs,
    runtime::Checked,
    units::HumanDuration,
    Config, Server,
};

/// A thread-per-core WebSocket broadcast server.
#[derive(Parser)]
#[command(name = "shardcast", version, about)]
struct Cli {
    #[command(subcommand)]
    command: Command,
}

#[derive(Subcommand)]
enum Command {
    /// Run the server. Every setting can also come from a SHARDCAST_*
    /// environment variable or the TOML file given with --config (flag >
    /// environment > file > default).
    Serve(ServeArgs),
    /// Load the settings exactly as `serve` does (flags, SHARDCAST_*
    /// environment, --config file, defaults), check them and every key and
    /// certificate they name, and print the effective settings as a TOML
    /// file (secrets are never printed). Exits 1 with the reason when they
    /// are invalid. Binds nothing.
    ///
    /// Example: shardcast check-config --config /etc/shardcast/shardcast.toml
    CheckConfig(ServeArgs),
    /// Subscribe and print one JSON envelope per line (or only its data).
    /// Reconnects with backoff and resumes from the last seq printed,
    /// unless --once. Exit codes: 0 ok, 2 bad usage, 3 refused, 4 connection
    /// failed.
    ///
    /// Examples:
    ///   shardcast sub ws://127.0.0.1:8080 news sports
    ///   shardcast sub --data-only --count 10 ws://127.0.0.1:8080 news
    ///   shardcast sub --since 41 --epoch 7f3a-1 ws://127.0.0.1:8080 news
    #[command(verbatim_doc_comment)]
    Sub(SubArgs),
    /// Publish DATA, or one publication per line of standard input (a line
    /// that is JSON is sent as that JSON, any other as a JSON string), and
    /// print each acknowledged seq. Exit codes: 0 ok, 2 bad usage, 3
    /// refused, 4 connection failed.
    ///
    /// Examples:
    ///   shardcast pub ws://127.0.0.1:8080 news '{"headline":"hi"}'
    ///   tail -f app.log | shardcast pub ws://127.0.0.1:8080 logs
    ///   shardcast pub --http --api-key $KEY ws://127.0.0.1:8080 news hello
    #[command(verbatim_doc_comment)]
    Pub(PubArgs),
}

#[derive(clap::Args)]
struct SubArgs {
    /// ws://HOST:PORT[/path] (the path defaults to /ws)
    url: String,
    /// Channels to subscribe to
    #[arg(required = true)]
    channels: Vec<String>,
    /// Print only each message's data
    #[arg(long)]
    data_only: bool,
    /// Resume after this seq (with --epoch, from a sub ack)
    #[arg(long, value_name = "SEQ")]
    since: Option<u64>,
    /// The epoch --since belongs to
    #[arg(long, value_name = "EPOCH")]
    epoch: Option<String>,
    /// Connection token (sent as Authorization: Bearer)
    #[arg(long, env = "SHARDCAST_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Stop at the first disconnection instead of reconnecting (exit 0 on a
    /// normal close, else the close's code: 3 refused, 4 connection failed)
    #[arg(long)]
    once: bool,
    /// Exit after printing this many messages
    #[arg(long, value_name = "N")]
    count: Option<u64>,
    #[command(flatten)]
    tls: TlsArgs,
    #[command(flatten)]
    timeouts: TimeoutArgs,
}

#[derive(clap::Args)]
struct TimeoutArgs {
    /// Time to connect, finish TLS and the WebSocket upgrade (with --http:
    /// the whole request and answer)
    #[arg(long, value_name = "DURATION", default_value = "10s")]
    handshake_timeout: HumanDuration,
    /// Nothing at all from the server (not even a ping) for this long: the
    /// connection is taken for lost (sub reconnects). The default is above a
    /// default server's ping interval (25s) twice plus its ping timeout
    /// (10s); raise it for a server with a longer --ping-interval
    #[arg(long, value_name = "DURATION", default_value = "70s")]
    idle_timeout: HumanDuration,
}

impl TimeoutArgs {
    fn timeouts(self) -> Timeouts {
        Timeouts {
            handshake: self.handshake_timeout.0,
            idle: self.idle_timeout.0,
        }
    }
}

#[derive(clap::Args)]
struct TlsArgs {
    /// For wss:// URLs: PEM file of the CA (or self-signed certificate) to trust
    #[arg(long, value_name = "FILE")]
    tls_ca: Option<PathBuf>,
    /// For wss:// URLs: the name the server's certificate must carry [default: the URL's host]
    #[arg(long, value_name = "NAME")]
    tls_server_name: Option<String>,
}

impl TlsArgs {
    fn options(self) -> TlsOptions {
        TlsOptions {
            ca: self.tls_ca,
            server_name: self.tls_server_name,
        }
    }
}

#[derive(clap::Args)]
struct PubArgs {
    /// ws://HOST:PORT[/path] (the path defaults to /ws)
    url: String,
    /// Channel to publish to
    channel: String,
    /// What to publish (JSON, or else sent as a string); default: each line of standard input
    data: Option<String>,
    /// Connection token (sent as Authorization: Bearer)
    #[arg(long, env = "SHARDCAST_TOKEN", hide_env_values = true)]
    token: Option<String>,
    /// Publish through POST /api/publish instead of a WebSocket
    #[arg(long)]
    http: bool,
    /// API key for --http (X-API-Key)
    #[arg(long, env = "SHARDCAST_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    #[command(flatten)]
    tls: TlsArgs,
    #[command(flatten)]
    timeouts: TimeoutArgs,
}

#[derive(clap::Args)]
struct ServeArgs {
    /// TOML file with settings (same names as the flags, e.g. ping-interval = "25s")
    #[arg(long, env = "SHARDCAST_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    /// Log lines on stderr: compact for people, or one JSON object per line.
    /// The level comes from RUST_LOG (default info; debug adds one line per
    /// connection opened and closed).
    #[arg(long, env = "SHARDCAST_LOG_FORMAT", value_enum, default_value_t = LogFormat::Compact)]
    log_format: LogFormat,
    #[command(flatten)]
    settings: ConfigArgs,
}

#[derive(Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
enum LogFormat {
    Compact,
    Json,
}

fn main() {
    if let Err(error) = run(Cli::parse()) {
        // The reason once, on one line: no "Caused by" list repeating what
        // the message already says, and no backtrace (this is a verdict on
        // the settings or the machine, not a crash).
        eprintln!("shardcast: {}", reason(&error));
        std::process::exit(1);
    }
}

/// An error and its causes as one line, each cause left out when the text
/// before it already quotes it.
fn reason(error: &anyhow::Error) -> String {
    let mut text = String::new();
    for cause in error.chain() {
        let cause = cause.to_string();
        if text.contains(&cause) {
            continue;
        }
        if !text.is_empty() {
            text.push_str(": ");
        }
        text.push_str(&cause);
    }
    text
}

fn run(cli: Cli) -> anyhow::Result<()> {
    match cli.command {
        Command::Serve(args) => {
            init_logging(args.log_format);
            serve(args)
        }
        Command::Sub(args) => client_exit(shardcast::client::run_sub(SubOptions {
            url: args.url,
            channels: args.channels,
            data_only: args.data_only,
            since: args.since,
            epoch: args.epoch,
            token: args.token,
            once: args.once,
            count: args.count,
            tls: args.tls.options(),
            timeouts: args.timeouts.timeouts(),
        })),
        Command::Pub(args) => client_exit(shardcast::client::run_pub(PubOptions {
            url: args.url,
            channel: args.channel,
            data: args.data,
            token: args.token,
            http: args.http,
            api_key: args.api_key,
            tls: args.tls.options(),
            timeouts: args.timeouts.timeouts(),
        })),
        Command::CheckConfig(args) => match load(&args) {
            Ok(checked) => {
                print!("{}", checked.config().effective_toml());
                Ok(())
            }
            // A verdict, not a crash: the reason alone, exit status 1.
            Err(error) => {
                eprintln!("shardcast check-config: {error}");
                std::process::exit(1);
            }
        },
    }
}

/// Ends a client command with the exit code its outcome calls for.
fn client_exit(outcome: Result<(), ClientError>) -> anyhow::Result<()> {
    if let Err(error) = outcome {
        eprintln!("shardcast: {error}");
        std::process::exit(error.exit_code());
    }
    Ok(())
}

/// The settings `serve` runs with, checked (see `runtime::check`).
fn load(args: &ServeArgs) -> anyhow::Result<Checked> {
    let config = Config::resolve(&args.settings, args.config.as_ref())?;
    Ok(shardcast::runtime::check(config)?)
}

fn init_logging(format: LogFormat) {
    let logs = tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr);
    match format {
        LogFormat::Compact => logs
            .with_ansi(std::io::stderr().is_terminal())
            .compact()
            .init(),
        LogFormat::Json => logs.json().flatten_event(true).init(),
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let checked = load(&args)?;
    let config = checked.config().clone();
    let server = Server::start_checked(checked).context("shardcast could not start")?;
    server
        .shutdown_handle()
        .trigger_on_signals()
        .context("cannot install signal handlers")?;
    tracing::info!(
        addr = %server.local_addr(),
        shards = server.shards(),
        node = %config.engine.node_id,
        engine = config.engine.kind.as_str(),
        ping_interval = ?config.heartbeat.ping_interval,
        max_connections = config.limits.max_connections,
        "shardcast serving"
    );
    // The one line on stdout: scripts and tests wait for it.
    let mut stdout = std::io::stdout();
    let scheme = if server.is_tls() { "https" } else { "http" };
    match server.admin_addr() {
        Some(admin) => writeln!(
            stdout,
            "shardcast listening on {scheme}://{}, admin on http://{admin}",
            server.local_addr()
        )?,
        None => writeln!(
            stdout,
            "shardcast listening on {scheme}://{}",
            server.local_addr()
        )?,
    }
    stdout.flush()?;

    let totals = server.wait().context("shardcast stopped with an error")?;
    for s in totals {
        tracing::info!(
            shard = s.identity.shard,
            connections_opened = s.counters.connections_opened,
            connections_left = s.holdings.connections,
            messages_published = s.counters.messages_published,
            messages_ordered = s.counters.messages_ordered,
            messages_delivered = s.counters.messages_delivered,
            bytes_in = s.counters.bytes_in,
            bytes_out = s.counters.bytes_out,
            frames_dropped = s.counters.frames_dropped,
            slow_consumers = s.closed.get("slow_consumer").copied().unwrap_or(0),
            heartbeat_timeouts = s.closed.get("heartbeat_timeout").copied().unwrap_or(0),
            latency_p99_us = s.latency.latency_total_us.p99,
            "shard stopped"
        );
    }
    Ok(())
}
