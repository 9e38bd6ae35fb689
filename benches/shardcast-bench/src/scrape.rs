//! Server-side figures from shardcast's own `/metrics`, read before and after
//! a measurement: CPU seconds from `getrusage` (microseconds, where
//! `/proc/PID/stat` counts 10 ms ticks), messages the server says it wrote,
//! frames it dropped, and how connections spread over shards. Only for
//! shardcast targets; peers are measured through `/proc` alone. Over TLS
//! when the run's connections are.

use std::{collections::BTreeMap, net::SocketAddr, time::Duration};

use futures_lite::{AsyncReadExt, AsyncWriteExt};
use glommio::net::TcpStream;
use serde::Serialize;

use super::stream::Stream;
use shardcast::tls_client::Tls;

/// Longest a scrape may take.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

/// One scrape: every sample summed over its labels, plus connections by
/// shard.
#[derive(Debug, Clone, Default)]
pub struct Scrape {
    totals: BTreeMap<String, f64>,
    connections_by_shard: BTreeMap<u32, u64>,
}

/// What the server reported about a measurement (differences between two
/// scrapes, and the state at the end).
#[derive(Debug, Clone, Default, Serialize)]
pub struct ServerFigures {
    pub cpu_seconds: f64,
    pub messages_delivered: u64,
    pub messages_published: u64,
    pub frames_dropped: u64,
    /// Gathered socket writes, and bytes they wrote (frames per write tell
    /// how much each system call carried).
    pub socket_writes: u64,
    pub bytes_sent: u64,
    pub rss_bytes: u64,
    /// Open connections on each shard at the end (the SO_REUSEPORT spread).
    pub connections_by_shard: Vec<u64>,
}

impl Scrape {
    /// Fetches and parses `GET /metrics` (over `tls` if given); `None` if
    /// the server has none.
    pub async fn fetch(server: SocketAddr, tls: Option<&Tls>) -> Option<Scrape> {
        let fetched = glommio::timer::timeout(SCRAPE_TIMEOUT, async {
            Ok(get_metrics(server, tls).await.ok())
        })
        .await;
        fetched.ok().flatten().map(|text| Scrape::parse(&text))
    }

    /// Parses the text exposition (samples only; comments skipped).
    pub fn parse(text: &str) -> Scrape {
        let mut scrape = Scrape::default();
        for line in text.lines().filter(|l| !l.starts_with('#')) {
            let Some((series, value)) = line.rsplit_once(' ') else {
                continue;
            };
            let Ok(value) = value.parse::<f64>() else {
                continue;
            };
            let (name, labels) = series.split_once('{').unwrap_or((series, ""));
            *scrape.totals.entry(name.to_owned()).or_default() += value;
            if name == "shardcast_connections" {
                if let Some(shard) = label(labels, "shard").and_then(|s| s.parse().ok()) {
                    scrape.connections_by_shard.insert(shard, value as u64);
                }
            }
        }
        scrape
    }

    pub fn total(&self, name: &str) -> f64 {
        self.totals.get(name).copied().unwrap_or(0.0)
    }

    /// The figures between `self` (before) and `after`.
    pub fn figures_until(&self, after: &Scrape) -> ServerFigures {
        let delta = |name: &str| (after.total(name) - self.total(name)).max(0.0);
        ServerFigures {
            cpu_seconds: delta("process_cpu_seconds_total"),
            messages_delivered: delta("shardcast_messages_delivered_total") as u64,
            messages_published: delta("shardcast_messages_published_total") as u64,
            frames_dropped: delta("shardcast_frames_dropped_total") as u64,
            socket_writes: delta("shardcast_socket_writes_total") as u64,
            bytes_sent: delta("shardcast_bytes_sent_total") as u64,
            rss_bytes: after.total("process_resident_memory_bytes") as u64,
            connections_by_shard: after.connections_by_shard.values().copied().collect(),
        }
    }
}

/// The value of `key` in a label set like `shard="0",reason="normal"`.
fn label<'a>(labels: &'a str, key: &str) -> Option<&'a str> {
    labels.trim_end_matches('}').split(',').find_map(|pair| {
        let (k, v) = pair.split_once('=')?;
        (k == key).then(|| v.trim_matches('"'))
    })
}

async fn get_metrics(server: SocketAddr, tls: Option<&Tls>) -> std::io::Result<String> {
    let tcp = TcpStream::connect(server).await?;
    let mut stream = match tls {
        None => Stream::Plain(tcp),
        Some(tls) => Stream::Tls(Box::new(tls.connect(tcp).await?)),
    };
    let request = format!("GET /metrics HTTP/1.1\r\nHost: {server}\r\nConnection: close\r\n\r\n");
    stream.write_all(request.as_bytes()).await?;
    stream.flush().await?;
    let mut response = Vec::new();
    let mut chunk = vec![0u8; 16 << 10];
    // Until the body is complete: a TLS server may close without
    // close_notify, which reads as an error rather than the end.
    while !complete(&response) {
        match stream.read(&mut chunk).await {
            Ok(0) => break,
            Ok(n) => response.extend_from_slice(&chunk[..n]),
            Err(e) if response.is_empty() => return Err(e),
            Err(_) => break,
        }
    }
    let text = String::from_utf8_lossy(&response);
    let (head, body) = text.split_once("\r\n\r\n").unwrap_or((&text, ""));
    if !head.starts_with("HTTP/1.1 200") {
        return Err(std::io::Error::other("no /metrics"));
    }
    Ok(body.to_owned())
}

/// Whether `response` holds a head and all of the body its Content-Length
/// announces (without one, only the server closing ends it).
fn complete(response: &[u8]) -> bool {
    let Some(end) = memchr::memmem::find(response, b"\r\n\r\n") else {
        return false;
    };
    let head = String::from_utf8_lossy(&response[..end]);
    let length = head.lines().find_map(|line| {
        let (name, value) = line.split_once(':')?;
        name.trim()
            .eq_ignore_ascii_case("content-length")
            .then(|| value.trim().parse::<usize>().ok())?
    });
    length.is_some_and(|len| response.len() - (end + 4) >= len)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sums_samples_and_keeps_the_shard_spread() {
        let before = Scrape::parse(
            "# TYPE x counter\nprocess_cpu_seconds_total 1.5\n\
             shardcast_messages_delivered_total{shard=\"0\"} 10\n\
             shardcast_messages_delivered_total{shard=\"1\"} 5\n",
        );
        let after = Scrape::parse(
            "process_cpu_seconds_total 2.25\n\
             shardcast_messages_delivered_total{shard=\"0\"} 110\n\
             shardcast_messages_delivered_total{shard=\"1\"} 55\n\
             shardcast_connections{shard=\"1\"} 7\n\
             shardcast_connections{shard=\"0\"} 9\n",
        );
        let figures = before.figures_until(&after);
        assert_eq!(figures.cpu_seconds, 0.75);
        assert_eq!(figures.messages_delivered, 150);
        assert_eq!(figures.connections_by_shard, vec![9, 7]);
    }

    #[test]
    fn a_response_is_complete_once_its_body_has_arrived() {
        let head = b"HTTP/1.1 200 OK\r\ncontent-length: 5\r\nConnection: close\r\n\r\n";
        let mut response = head.to_vec();
        assert!(!complete(&response[..10]));
        assert!(!complete(&response));
        response.extend_from_slice(b"abcd");
        assert!(!complete(&response));
        response.push(b'e');
        assert!(complete(&response));
        assert!(!complete(b"HTTP/1.1 200 OK\r\n\r\nbody"), "no length");
    }
}
