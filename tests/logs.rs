//! Logs: `--log-format json` writes one JSON object per line; a shard logs a
//! summary when it starts (core, listen address) and when it stops (totals);
//! at debug there is one line per connection opened and closed and nothing
//! per message.

mod support;

use std::{sync::mpsc::Receiver, time::Instant};

use serde_json::{json, Value};
use support::{Client, Server, DEADLINE};

/// Reads log lines (each must be JSON) until one satisfies `wanted`; returns
/// it and every line read.
fn read_until(
    logs: &Receiver<String>,
    seen: &mut Vec<Value>,
    wanted: impl Fn(&Value) -> bool,
) -> Value {
    let deadline = Instant::now() + DEADLINE;
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        let line = logs
            .recv_timeout(left)
            .expect("the expected log line within the deadline");
        let event: Value =
            serde_json::from_str(&line).unwrap_or_else(|e| panic!("not JSON ({e}): {line}"));
        seen.push(event.clone());
        if wanted(&event) {
            return event;
        }
    }
}

fn message_is(text: &'static str) -> impl Fn(&Value) -> bool {
    move |event| event["message"] == text
}

#[test]
fn json_logs_with_connection_events_and_shard_summaries() {
    let (mut server, logs) = Server::start_logged(
        &["--shards", "2", "--log-format", "json"],
        &[("RUST_LOG", "shardcast=debug")],
    );
    let mut seen = Vec::new();
    let started = read_until(&logs, &mut seen, message_is("shard accepting"));
    assert_eq!(started["level"], "INFO");
    assert!(started["listen"]
        .as_str()
        .unwrap()
        .starts_with("127.0.0.1:"));
    assert!(started.get("cpu").is_some() && started.get("shard").is_some());

    let mut subscriber = Client::connect(&server, "/ws");
    subscriber.subscribe("news");
    let opened = read_until(&logs, &mut seen, message_is("connection opened"));
    assert_eq!(opened["level"], "DEBUG");

    let mut publisher = Client::connect(&server, "/ws");
    for i in 0..100 {
        publisher.send_json(json!({"op": "pub", "ch": "news", "data": i}));
    }
    for _ in 0..100 {
        subscriber.recv_json();
    }
    subscriber.close_and_wait();
    let closed = read_until(&logs, &mut seen, |e| {
        e["message"] == "connection closed" && e["reason"] == "normal"
    });
    assert_eq!(closed["level"], "DEBUG");

    server.signal(libc::SIGTERM);
    let mut stopped = Vec::new();
    while stopped.len() < 2 {
        stopped.push(read_until(&logs, &mut seen, message_is("shard stopped")));
    }
    let delivered: u64 = stopped
        .iter()
        .map(|e| e["messages_delivered"].as_u64().unwrap())
        .sum();
    assert_eq!(delivered, 100);
    let opened: u64 = stopped
        .iter()
        .map(|e| e["connections_opened"].as_u64().unwrap())
        .sum();
    assert_eq!(opened, 2);
    assert_eq!(server.wait_exit(DEADLINE), Some(0));
    while let Ok(line) = logs.recv_timeout(DEADLINE) {
        seen.push(serde_json::from_str(&line).expect("JSON"));
    }
    assert!(
        seen.len() < 40,
        "no line per message: {} lines for 100 messages",
        seen.len()
    );
}

/// Shard `i` is pinned to the `i`-th CPU the process may use, and calls
/// itself `i` in its logs and its metrics: one numbering everywhere (the
/// mesh's, which decides channel ownership, and the start order, which
/// decides the CPU and the thread's name, once differed from run to run).
#[test]
fn each_shard_has_one_number_in_logs_metrics_and_placement() {
    let cpus = std::thread::available_parallelism().map_or(1, |n| n.get());
    for _ in 0..3 {
        let (server, logs) = Server::start_logged(
            &["--shards", "2", "--log-format", "json"],
            &[("RUST_LOG", "shardcast=info")],
        );
        let mut seen = Vec::new();
        let mut placed: Vec<(u64, u64)> = (0..2)
            .map(|_| {
                let line = read_until(&logs, &mut seen, message_is("shard accepting"));
                (
                    line["shard"].as_u64().unwrap(),
                    line["cpu"].as_u64().unwrap(),
                )
            })
            .collect();
        placed.sort_unstable();
        assert_eq!(placed[0].0, 0);
        assert_eq!(placed[1].0, 1);
        if cpus >= 2 {
            assert!(
                placed[0].1 < placed[1].1,
                "shard 0 before shard 1: {placed:?}"
            );
        }
        let stats = support::get_json(&server, "/api/stats");
        for (shard, cpu) in placed {
            assert_eq!(stats["shard"][shard as usize]["cpu"], cpu, "{stats}");
        }
    }
}
