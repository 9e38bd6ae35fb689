//! `shardcast-bench`: the load generator. Parses the command line, runs one
//! benchmark (see the `shardcast_bench` library), prints the JSON report to stdout (or
//! `--output`) and a one-line summary to stderr.

use std::path::PathBuf;

use clap::Parser;

/// Load generator for shardcast and its peers.
#[derive(Parser)]
#[command(name = "shardcast-bench", version, about)]
struct Cli {
    #[command(flatten)]
    options: shardcast_bench::Options,
    /// Write the JSON report here instead of stdout
    #[arg(long)]
    output: Option<PathBuf>,
}

fn main() -> anyhow::Result<()> {
    let cli = Cli::parse();
    let report = shardcast_bench::run(cli.options)?;
    let json = serde_json::to_string_pretty(&report)?;
    match cli.output {
        Some(path) => std::fs::write(path, json + "\n")?,
        None => println!("{json}"),
    }
    eprintln!("{}", report.summary());
    Ok(())
}
