//! `/metrics`, `/api/stats` and the `$stats` channel report what clients did:
//! a test drives the real server, then checks the figures against its own
//! counts. The exposition is parsed by Prometheus's reference parser (Python
//! `prometheus_client`, installed by `scripts/test.sh`).

mod support;

use std::{collections::HashSet, process::Command};

use serde_json::{json, Value};
use support::{get_json, http, wait_until, Client, Server};

const SUBSCRIBERS: usize = 20;
const MESSAGES: u64 = 50;

/// The exposition parsed by `prometheus_client`: (families, samples).
fn scrape(server: &Server) -> (Value, Vec<(String, Value, f64)>) {
    let (status, text) = http(server, "GET", "/metrics", "");
    assert_eq!(status, 200, "{text}");
    let script = concat!(
        env!("CARGO_MANIFEST_DIR"),
        "/tests/clients/parse_metrics.py"
    );
    let output = support::run_with_input(
        Command::new("python3").arg(script),
        text.as_bytes(),
        "python3 (installed by scripts/test.sh)",
    );
    assert!(
        output.status.success(),
        "prometheus_client rejected the exposition: {}\n{text}",
        String::from_utf8_lossy(&output.stderr)
    );
    let parsed: Value = serde_json::from_slice(&output.stdout).unwrap();
    let samples = parsed["samples"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            (
                s[0].as_str().unwrap().to_owned(),
                s[1].clone(),
                s[2].as_f64().unwrap(),
            )
        })
        .collect();
    (parsed["families"].clone(), samples)
}

/// Sum of a sample over all label sets matching `filter`.
fn sum(samples: &[(String, Value, f64)], name: &str, filter: impl Fn(&Value) -> bool) -> f64 {
    samples
        .iter()
        .filter(|(n, labels, _)| n == name && filter(labels))
        .map(|(_, _, v)| *v)
        .sum::<f64>()
}

fn all(_: &Value) -> bool {
    true
}

#[test]
fn metrics_match_what_the_clients_did() {
    let server = Server::start(&["--shards", "2"]);
    let mut subscribers: Vec<Client> = (0..SUBSCRIBERS)
        .map(|_| {
            let mut client = Client::connect(&server, "/ws");
            client.subscribe("news");
            client
        })
        .collect();
    let mut publisher = Client::connect(&server, "/ws");
    for i in 0..MESSAGES {
        publisher.send_json(json!({"op": "pub", "ch": "news", "data": i}));
    }
    for subscriber in &mut subscribers {
        for i in 0..MESSAGES {
            assert_eq!(subscriber.recv_json()["data"], i);
        }
    }

    let (families, samples) = scrape(&server);
    let connections = (1 + SUBSCRIBERS) as f64;
    assert_eq!(families["shardcast_connections"], "gauge");
    assert_eq!(families["shardcast_messages_delivered"], "counter");
    assert_eq!(families["shardcast_delivery_latency_seconds"], "histogram");
    assert_eq!(
        families["shardcast_delivery_latency_quantile_seconds"],
        "summary"
    );
    assert_eq!(sum(&samples, "shardcast_shards_reporting", all), 2.0);
    assert_eq!(sum(&samples, "shardcast_connections", all), connections);
    assert_eq!(
        sum(&samples, "shardcast_connections_opened_total", all),
        connections
    );
    assert_eq!(
        sum(&samples, "shardcast_subscriptions", all),
        SUBSCRIBERS as f64
    );
    assert_eq!(
        sum(&samples, "shardcast_messages_published_total", all),
        MESSAGES as f64
    );
    assert_eq!(
        sum(&samples, "shardcast_messages_ordered_total", all),
        MESSAGES as f64
    );
    let delivered = (SUBSCRIBERS as u64 * MESSAGES) as f64;
    assert_eq!(
        sum(&samples, "shardcast_messages_delivered_total", all),
        delivered
    );
    assert_eq!(
        sum(&samples, "shardcast_delivery_latency_seconds_count", all),
        delivered,
        "every delivery is timed"
    );
    let inf = |l: &Value| l["le"] == "+Inf";
    assert_eq!(
        sum(&samples, "shardcast_delivery_latency_seconds_bucket", inf),
        delivered
    );
    assert_eq!(sum(&samples, "shardcast_frames_dropped_total", all), 0.0);
    assert!(sum(&samples, "shardcast_bytes_sent_total", all) > delivered * 30.0);
    assert!(sum(&samples, "process_cpu_seconds_total", all) > 0.0);
    assert!(sum(&samples, "process_resident_memory_bytes", all) > 1e6);
    let shards: HashSet<String> = samples
        .iter()
        .filter(|(n, _, _)| n == "shardcast_connections")
        .map(|(_, l, _)| l["shard"].as_str().unwrap().to_owned())
        .collect();
    assert_eq!(shards, HashSet::from(["0".into(), "1".into()]));

    // Five clients leave: the closes are counted by reason, the gauges drop.
    for client in subscribers.drain(..5) {
        client.close_and_wait();
    }
    wait_until("five normal closes in /api/stats", || {
        let stats = get_json(&server, "/api/stats");
        stats["total"]["closed"]["normal"] == 5
            && stats["total"]["connections"] == connections as u64 - 5
    });
    let stats = get_json(&server, "/api/stats");
    assert_eq!(stats["shards_reporting"], 2);
    assert_eq!(stats["total"]["messages_delivered"], delivered as u64);
    assert_eq!(
        stats["total"]["latency_total_us"]["count"],
        delivered as u64
    );
    assert_eq!(stats["shard"].as_array().unwrap().len(), 2);
    assert_eq!(stats["shard"][1]["shard"], 1);
    let (_, samples) = scrape(&server);
    let normal = |l: &Value| l["reason"] == "normal";
    assert_eq!(
        sum(&samples, "shardcast_connections_closed_total", normal),
        5.0
    );
}

#[test]
fn stats_channel_feeds_every_shard_and_is_read_only() {
    let server = Server::start(&["--shards", "2"]);
    let mut dashboard = Client::connect(&server, "/ws");
    dashboard.subscribe("$stats");
    let mut seen = HashSet::new();
    while seen.len() < 2 {
        let msg = dashboard.recv_json();
        assert_eq!(msg["ch"], "$stats");
        let data = &msg["data"];
        assert_eq!(data["shards"], 2);
        assert!(data["connections"].is_u64() && data["latency_us"]["p99"].is_u64());
        seen.insert(data["shard"].as_u64().unwrap());
    }
    assert_eq!(seen, HashSet::from([0, 1]));

    dashboard.send_json(json!({"op": "pub", "ch": "$stats", "data": 1, "id": "p"}));
    let err = dashboard.recv_json_skipping("$stats");
    assert_eq!(err["op"], "err");
    assert_eq!(err["code"], "forbidden");
    assert_eq!(err["id"], "p");

    let (status, body) = http(
        &server,
        "POST",
        "/api/publish",
        r#"{"ch":"$stats","data":1}"#,
    );
    assert_eq!(status, 403, "{body}");
    assert_eq!(
        support::refused_upgrade(&server, "/ws/$stats"),
        403,
        "a raw room could publish: refused"
    );
}

#[test]
fn dashboard_page_is_served() {
    let server = Server::start(&[]);
    let (status, body) = http(&server, "GET", "/", "");
    assert_eq!(status, 200);
    assert!(body.contains("id=\"total-connections\""), "{body}");
    assert!(body.contains("$stats"));
    assert!(
        !body.contains("http://") && !body.contains("https://"),
        "the page loads nothing from outside"
    );
}
