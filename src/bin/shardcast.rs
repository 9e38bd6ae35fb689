//! The `shardcast` binary: parses the command line, sets up logging, starts
//! the server and waits for it to stop. Everything else is in the library.

use std::{
    io::{IsTerminal, Write},
    path::PathBuf,
};

use anyhow::Context;
use clap::{Parser, Subcommand};
use shardcast::{config::ConfigLayer, Config, Server};

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
}

#[derive(clap::Args)]
struct ServeArgs {
    /// TOML file with settings (same names as the flags, e.g. ping-interval = "25s")
    #[arg(long, env = "SHARDCAST_CONFIG", value_name = "FILE")]
    config: Option<PathBuf>,
    #[command(flatten)]
    settings: ConfigLayer,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    tracing_subscriber::fmt()
        .with_env_filter(
            tracing_subscriber::EnvFilter::try_from_default_env()
                .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("info")),
        )
        .with_writer(std::io::stderr)
        .with_ansi(std::io::stderr().is_terminal())
        .compact()
        .init();
    match cli.command {
        Command::Serve(args) => serve(args),
    }
}

fn serve(args: ServeArgs) -> anyhow::Result<()> {
    let config = Config::resolve(&args.settings, args.config.as_ref())?;
    let server = Server::start(config.clone()).context("shardcast could not start")?;
    server
        .shutdown_handle()
        .trigger_on_signals()
        .context("cannot install signal handlers")?;
    tracing::info!(
        addr = %server.local_addr(),
        shards = server.shards(),
        ping_interval = ?config.ping_interval,
        max_connections = config.max_connections,
        "shardcast serving"
    );
    // The one line on stdout: scripts and tests wait for it.
    let mut stdout = std::io::stdout();
    writeln!(
        stdout,
        "shardcast listening on http://{}",
        server.local_addr()
    )?;
    stdout.flush()?;

    let totals = server.wait().context("shardcast stopped with an error")?;
    for (shard, t) in totals {
        tracing::info!(
            shard,
            connections_opened = t.connections_opened,
            connections_left = t.connections_left,
            publications_ordered = t.publications_ordered,
            messages_delivered = t.messages_delivered,
            slow_consumers = t.slow_consumers,
            heartbeat_timeouts = t.heartbeat_timeouts,
            "shard stopped"
        );
    }
    Ok(())
}
