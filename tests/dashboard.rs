//! The live dashboard in a real browser: Debian's Chromium, driven headless by
//! `tests/clients/dashboard.mjs` (npm `playwright-core`; both installed by
//! `scripts/test.sh`), opens `GET /` of a running server while test clients
//! are connected and traffic flows, and must show the live connection count.
//! The screenshot is kept in `target/tmp/dashboard.png` for a person to look
//! at.

mod support;

use std::{
    process::Command,
    sync::{
        atomic::{AtomicBool, Ordering},
        Arc,
    },
    thread,
    time::Duration,
};

use serde_json::{json, Value};
use support::{Client, Server};

const SUBSCRIBERS: usize = 12;

/// Reads (and drops) what a client receives until `stop`.
fn keep_reading(mut client: Client, stop: Arc<AtomicBool>) -> thread::JoinHandle<()> {
    client.set_timeout(Some(Duration::from_millis(100)));
    thread::spawn(move || {
        while !stop.load(Ordering::Relaxed) {
            let _ = client.ws.read();
        }
    })
}

#[test]
fn dashboard_shows_live_connections_in_headless_chromium() {
    let server = Server::start(&["--shards", "2", "--node-id", "dash-node-1"]);
    let stop = Arc::new(AtomicBool::new(false));
    let mut threads = Vec::new();
    for _ in 0..SUBSCRIBERS {
        let mut client = Client::connect(&server, "/ws");
        client.subscribe("news");
        threads.push(keep_reading(client, stop.clone()));
    }
    // A publisher keeps messages flowing so the charts have something to show.
    let mut publisher = Client::connect(&server, "/ws");
    let publishing = stop.clone();
    threads.push(thread::spawn(move || {
        let mut i = 0u64;
        while !publishing.load(Ordering::Relaxed) {
            publisher.send_json(json!({"op": "pub", "ch": "news", "data": {"n": i}}));
            i += 1;
            thread::sleep(Duration::from_millis(20)); // pacing, not waiting
        }
    }));

    // Test clients, the publisher, and the page's own WebSocket.
    let expected = SUBSCRIBERS + 2;
    let screenshot = format!("{}/dashboard.png", env!("CARGO_TARGET_TMPDIR"));
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients");
    let output = Command::new("node")
        .arg(format!("{dir}/dashboard.mjs"))
        .arg(format!("http://{}/", server.addr))
        .arg(expected.to_string())
        .arg(&screenshot)
        .arg("30")
        .current_dir(dir)
        .output()
        .expect("node (installed by scripts/test.sh)");
    stop.store(true, Ordering::Relaxed);
    for thread in threads {
        thread.join().unwrap();
    }
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "dashboard check failed (Chromium and playwright-core come from scripts/test.sh):\n{stdout}\n{stderr}"
    );
    let result: Value = serde_json::from_str(stdout.trim()).expect("one JSON line");
    assert_eq!(result["ok"], true);
    assert_eq!(result["connections"], expected);
    assert_eq!(result["shards"], 2);
    assert_eq!(result["node"], "dash-node-1", "the header names the node");
    let png = std::fs::read(&screenshot).expect("screenshot saved");
    assert!(png.starts_with(b"\x89PNG"), "a PNG screenshot");
}
