//! The exposition against the real Prometheus (Debian's `prometheus`
//! package, installed by `scripts/test.sh`): `promtool check metrics` finds
//! nothing to say about `/metrics`, and a Prometheus scraping a shardcast
//! under a little traffic answers every PromQL example of `docs/metrics.md`
//! and every query of the Grafana dashboard (`docs/grafana/shardcast.json`,
//! run through `promtool query`) with data.

mod support;

use std::{
    io::{Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    path::PathBuf,
    process::{Child, Command, Stdio},
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

use serde_json::{json, Value};
use support::{http, publish, Client, Server};

/// Prometheus starts and scrapes within this.
const PROMETHEUS_DEADLINE: Duration = Duration::from_secs(60);

const METRICS_DOC: &str = include_str!("../docs/metrics.md");
const GRAFANA_DASHBOARD: &str = include_str!("../docs/grafana/shardcast.json");

/// Every query of the Grafana dashboard, with Grafana's `$__rate_interval`
/// as the one-minute window Prometheus itself would need.
fn dashboard_queries() -> Vec<String> {
    let dashboard: Value = serde_json::from_str(GRAFANA_DASHBOARD).expect("the dashboard is JSON");
    let panels = dashboard["panels"].as_array().expect("panels");
    panels
        .iter()
        .flat_map(|panel| panel["targets"].as_array().cloned().unwrap_or_default())
        .map(|target| {
            let expr = target["expr"].as_str().expect("every target has an expr");
            expr.replace("$__rate_interval", "1m")
        })
        .collect()
}

/// `promtool query instant` of `query` on the Prometheus at `addr`: the
/// values of the series it returns (`None` if promtool refused it).
fn promtool_query(addr: SocketAddr, query: &str) -> Option<Vec<f64>> {
    let out = Command::new("promtool")
        .args(["query", "instant", &format!("http://{addr}"), query])
        .output()
        .ok()?;
    if !out.status.success() {
        return None;
    }
    let text = String::from_utf8(out.stdout).ok()?;
    // One series per line: `{labels} => value @[time]`.
    text.lines()
        .map(|line| {
            let value = line.split("=>").nth(1)?.split('@').next()?.trim();
            value.parse().ok()
        })
        .collect()
}

/// The PromQL examples of `docs/metrics.md`: each line of its `promql`
/// block, comments cut off.
fn documented_queries() -> Vec<String> {
    let block = METRICS_DOC
        .split("```promql\n")
        .nth(1)
        .and_then(|rest| rest.split("```").next())
        .expect("docs/metrics.md has a promql block");
    block
        .lines()
        .map(|line| line.split('#').next().unwrap_or("").trim().to_owned())
        .filter(|query| !query.is_empty())
        .collect()
}

/// A Prometheus process, killed when dropped, with its data directory.
struct Prometheus {
    child: Child,
    addr: SocketAddr,
    dir: PathBuf,
}

impl Prometheus {
    /// Scrapes `target` every second.
    fn start(target: SocketAddr) -> Prometheus {
        let dir = std::env::temp_dir().join(format!("shardcast-prometheus-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let config = dir.join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\n  evaluation_interval: 1s\n\
                 scrape_configs:\n  - job_name: shardcast\n    static_configs:\n      \
                 - targets: [\"{target}\"]\n"
            ),
        )
        .unwrap();
        let addr = free_addr();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.join("data").display()
            ))
            .arg(format!("--web.listen-address={addr}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("prometheus (Debian's package, installed by scripts/test.sh)");
        Prometheus { child, addr, dir }
    }

    /// `GET path` on Prometheus: status and body (`None` until it listens).
    fn get(&self, path: &str) -> Option<(u16, String)> {
        let mut stream = TcpStream::connect(self.addr).ok()?;
        stream
            .set_read_timeout(Some(Duration::from_secs(10)))
            .ok()?;
        let request = format!("GET {path} HTTP/1.0\r\nHost: {}\r\n\r\n", self.addr);
        stream.write_all(request.as_bytes()).ok()?;
        let mut response = String::new();
        stream.read_to_string(&mut response).ok()?;
        Some(support::parse_response(&response))
    }

    /// An instant query's result vector (`None` if Prometheus refused it).
    fn query(&self, query: &str) -> Option<Vec<Value>> {
        let (status, body) = self.get(&format!("/api/v1/query?query={}", encode(query)))?;
        let reply: Value = serde_json::from_str(&body).ok()?;
        (status == 200 && reply["status"] == "success")
            .then(|| reply["data"]["result"].as_array().cloned())
            .flatten()
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
        let _ = std::fs::remove_dir_all(&self.dir);
    }
}

/// An address no one listens on now.
fn free_addr() -> SocketAddr {
    TcpListener::bind("127.0.0.1:0")
        .and_then(|l| l.local_addr())
        .unwrap()
}

/// Percent-encodes a query for a URL.
fn encode(text: &str) -> String {
    text.bytes()
        .map(|b| match b {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'_' | b'.' | b'~' => {
                (b as char).to_string()
            }
            _ => format!("%{b:02X}"),
        })
        .collect()
}

/// The value of one series of an instant vector.
fn sample(series: &Value) -> Option<f64> {
    series["value"][1].as_str()?.parse().ok()
}

/// Polls `condition` until it holds, for at most [`PROMETHEUS_DEADLINE`].
fn eventually(what: &str, mut condition: impl FnMut() -> bool) {
    let deadline = Instant::now() + PROMETHEUS_DEADLINE;
    while !condition() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

#[test]
fn promtool_finds_nothing_to_say_about_the_exposition() {
    let server = Server::start(&["--shards", "2"]);
    let mut subscriber = Client::connect(&server, "/ws");
    subscriber.subscribe("prom");
    publish(&server, "prom", json!(1));
    let (status, text) = http(&server, "GET", "/metrics", "");
    assert_eq!(status, 200);
    let out = support::run_with_input(
        Command::new("promtool").args(["check", "metrics"]),
        text.as_bytes(),
        "promtool (Debian's prometheus package, installed by scripts/test.sh)",
    );
    let said =
        String::from_utf8_lossy(&out.stdout).into_owned() + &String::from_utf8_lossy(&out.stderr);
    assert!(
        out.status.success() && said.trim().is_empty(),
        "promtool: {said}"
    );
}

#[test]
fn every_documented_and_dashboard_query_returns_data_from_a_real_prometheus() {
    let server = Server::start(&["--shards", "2"]);
    let mut subscriber = Client::connect(&server, "/ws");
    subscriber.subscribe("prom");
    // A little traffic for as long as the test runs, so rates have data.
    let stop = Arc::new(AtomicBool::new(false));
    let publisher = {
        let (stop, addr) = (stop.clone(), server.addr);
        std::thread::spawn(move || {
            let mut i = 0;
            while !stop.load(Ordering::Relaxed) {
                let body = json!({"ch": "prom", "data": i}).to_string();
                let request = format!(
                    "POST /api/publish HTTP/1.1\r\nHost: t\r\nConnection: close\r\n\
                     Content-Length: {}\r\n\r\n{body}",
                    body.len()
                );
                if let Ok(mut stream) = TcpStream::connect(addr) {
                    let _ = stream.write_all(request.as_bytes());
                    let _ = stream.read_to_end(&mut Vec::new());
                }
                i += 1;
                std::thread::sleep(Duration::from_millis(50));
            }
        })
    };
    let prometheus = Prometheus::start(server.addr);
    eventually("Prometheus ready", || {
        prometheus
            .get("/-/ready")
            .is_some_and(|(status, _)| status == 200)
    });
    // Three scrapes of every shard: enough for rates over any window.
    eventually("three scrapes", || {
        prometheus
            .query("count_over_time(shardcast_messages_delivered_total[1m])")
            .is_some_and(|series| {
                series.len() == 2 && series.iter().all(|s| sample(s).is_some_and(|n| n >= 3.0))
            })
    });
    let queries = documented_queries();
    assert!(queries.len() >= 6, "{queries:?}");
    for query in &queries {
        eventually(&format!("data for {query}"), || {
            prometheus.query(query).is_some_and(|series| {
                !series.is_empty() && series.iter().all(|s| sample(s).is_some_and(f64::is_finite))
            })
        });
    }
    let dashboard = dashboard_queries();
    assert!(dashboard.len() >= 12, "{dashboard:?}");
    for query in &dashboard {
        eventually(&format!("promtool data for {query}"), || {
            promtool_query(prometheus.addr, query)
                .is_some_and(|values| !values.is_empty() && values.iter().all(|v| v.is_finite()))
        });
    }
    stop.store(true, Ordering::Relaxed);
    publisher.join().unwrap();
    drop(subscriber);
}
