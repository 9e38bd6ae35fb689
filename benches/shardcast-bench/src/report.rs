//! The result of one benchmark run: a JSON document (scenario, parameters,
//! server, machine, results) and a one-line human summary. A run is valid
//! only with no loss, no duplicate, no reordering, every subscriber warmed
//! up, and a generator that was not itself saturated.

use hdrhistogram::Histogram;
use serde::{Serialize, Serializer};

use super::{
    scrape::{Scrape, ServerFigures},
    tally::Totals,
    Options,
};

/// Above this share of one CPU the generator may be the limit.
pub const GENERATOR_SATURATED: f64 = 0.90;

pub fn seconds<S: Serializer>(d: &std::time::Duration, s: S) -> Result<S::Ok, S::Error> {
    s.serialize_f64(d.as_secs_f64())
}

/// Latency percentiles in microseconds.
#[derive(Debug, Default, Clone, Copy, Serialize)]
pub struct Percentiles {
    pub p50: u64,
    pub p90: u64,
    pub p99: u64,
    pub p999: u64,
    pub max: u64,
    pub count: u64,
}

impl Percentiles {
    pub fn of(h: &Histogram<u64>) -> Self {
        Percentiles {
            p50: h.value_at_quantile(0.50),
            p90: h.value_at_quantile(0.90),
            p99: h.value_at_quantile(0.99),
            p999: h.value_at_quantile(0.999),
            max: h.max(),
            count: h.len(),
        }
    }
}

#[derive(Debug, Default, Clone, Serialize)]
pub struct Results {
    #[serde(flatten)]
    pub connecting: Connecting,
    #[serde(flatten)]
    pub publishing: Publishing,
    #[serde(flatten)]
    pub server: ServerCost,
    #[serde(flatten)]
    pub totals: Totals,
    pub deliveries_per_second: f64,
    pub latency_us: Option<Percentiles>,
    pub generator_cpu_fraction: f64,
    /// Bytes the subscribers read while measuring (frames with their
    /// headers), and per publication delivered.
    pub wire_bytes_received: u64,
    pub wire_bytes_per_delivery: Option<f64>,
    pub errors: Vec<String>,
}

/// How connecting went.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Connecting {
    pub connections: usize,
    pub connect_failures: usize,
    pub connect_seconds: f64,
    pub connects_per_second: f64,
    pub warm_subscribers: usize,
}

/// What was published.
#[derive(Debug, Default, Clone, Serialize)]
pub struct Publishing {
    pub publishers: usize,
    pub published: u64,
    pub publish_rate_achieved: f64,
    pub expected_deliveries: u64,
}

/// What the server spent, from /proc and its own `/metrics`.
#[derive(Debug, Default, Clone, Serialize)]
pub struct ServerCost {
    pub server_cpu_seconds: Option<f64>,
    pub server_cpu_seconds_per_million: Option<f64>,
    pub server_cpu_per_second_idle: Option<f64>,
    pub server_rss_kib: Option<u64>,
    pub server_rss_peak_kib: Option<u64>,
    pub server_rss_per_connection_bytes: Option<f64>,
    /// What the server's own `/metrics` said (shardcast only).
    pub server_metrics: Option<ServerFigures>,
}

impl Results {
    /// Keeps the server's own figures between two scrapes; its CPU seconds
    /// (from `getrusage`, in µs) replace the coarser `/proc` reading.
    pub fn take_server_figures(&mut self, before: Option<Scrape>, after: Option<Scrape>) {
        if let (Some(before), Some(after)) = (before, after) {
            let figures = before.figures_until(&after);
            self.server.server_cpu_seconds = Some(figures.cpu_seconds);
            self.server.server_metrics = Some(figures);
        }
    }
}

#[derive(Debug, Serialize)]
pub struct Machine {
    pub cpus: usize,
    pub kernel: String,
}

#[derive(Debug, Serialize)]
pub struct Report {
    pub options: Options,
    pub machine: Machine,
    pub results: Results,
    pub generator_saturated: bool,
    pub valid: bool,
    /// Why the run is not valid, if it is not.
    pub invalid_because: Vec<String>,
}

impl Report {
    pub fn new(options: Options, results: Results) -> Report {
        let mut why = Vec::new();
        let saturated = results.generator_cpu_fraction > GENERATOR_SATURATED;
        if saturated {
            why.push(format!(
                "generator used {:.0}% of its CPU: it may have been the limit",
                results.generator_cpu_fraction * 100.0
            ));
        }
        if results.connecting.connect_failures > 0 {
            why.push(format!(
                "{} connections failed",
                results.connecting.connect_failures
            ));
        }
        let t = results.totals;
        if t.lost + t.duplicated + t.out_of_order > 0 {
            why.push(format!(
                "lost {}, duplicated {}, out of order {}",
                t.lost, t.duplicated, t.out_of_order
            ));
        }
        let messaging = matches!(
            options.load.scenario,
            super::Scenario::Fanout | super::Scenario::Rooms
        );
        if messaging
            && results.connecting.warm_subscribers
                < results.connecting.connections
                    - results
                        .publishing
                        .publishers
                        .min(results.connecting.connections)
        {
            why.push(format!(
                "only {} of the subscribers received warm-up traffic",
                results.connecting.warm_subscribers
            ));
        }
        let kernel = std::fs::read_to_string("/proc/sys/kernel/osrelease")
            .map(|s| s.trim().to_owned())
            .unwrap_or_default();
        Report {
            machine: Machine {
                // The machine's CPUs, not the generator's taskset.
                // SAFETY: sysconf has no preconditions.
                cpus: unsafe { libc::sysconf(libc::_SC_NPROCESSORS_ONLN) }.max(1) as usize,
                kernel,
            },
            valid: why.is_empty(),
            generator_saturated: saturated,
            invalid_because: why,
            options,
            results,
        }
    }

    /// One line for people.
    pub fn summary(&self) -> String {
        let o = &self.options;
        let r = &self.results;
        let server = format!(
            "{}{}",
            o.server.server_name,
            if o.label.is_empty() {
                String::new()
            } else {
                format!(" [{}]", o.label)
            }
        );
        let verdict = if self.valid {
            "valid".to_owned()
        } else {
            format!("INVALID: {}", self.invalid_because.join("; "))
        };
        match o.load.scenario {
            super::Scenario::Fanout | super::Scenario::Rooms => {
                let l = r.latency_us.unwrap_or_default();
                let subscribers = match o.load.scenario {
                    super::Scenario::Rooms => r.connecting.connections,
                    _ => r.connecting.connections - r.publishing.publishers.min(r.connecting.connections),
                };
                format!(
                    "{:?} {server}: {} subs x {:.0} msg/s -> {:.0} deliveries/s, p50 {} us, p99 {} us, max {} us, server {:.2} CPU-s/M, gen CPU {:.0}% ({verdict})",
                    o.load.scenario, subscribers, r.publishing.publish_rate_achieved, r.deliveries_per_second,
                    l.p50, l.p99, l.max, r.server.server_cpu_seconds_per_million.unwrap_or(f64::NAN),
                    r.generator_cpu_fraction * 100.0
                )
            }
            super::Scenario::Idle => format!(
                "Idle {server}: {} connections, {:.0} bytes RSS each, {:.4} CPU-s per s ({verdict})",
                r.connecting.connections,
                r.server.server_rss_per_connection_bytes.unwrap_or(f64::NAN),
                r.server.server_cpu_per_second_idle.unwrap_or(f64::NAN)
            ),
            super::Scenario::ConnectStorm => format!(
                "ConnectStorm {server}: {} connections in {:.2}s = {:.0}/s, {} failed ({verdict})",
                r.connecting.connections, r.connecting.connect_seconds, r.connecting.connects_per_second, r.connecting.connect_failures
            ),
        }
    }
}
