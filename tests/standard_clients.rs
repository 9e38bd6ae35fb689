//! "Any standard WebSocket client": Python `websockets` and Node `ws` (the
//! most used client libraries) subscribe, publish and receive, with
//! permessage-deflate on as they have it by default; Python's `msgpack`
//! speaks the MessagePack protocol (`shardcast.msgpack`). Their
//! dependencies are installed by `scripts/test.sh`.

mod support;

use std::process::Command;

use support::Server;

fn run_client(program: &str, script: &str, server: &Server) {
    let dir = concat!(env!("CARGO_MANIFEST_DIR"), "/tests/clients");
    let output = Command::new(program)
        .arg(format!("{dir}/{script}"))
        .arg(format!("ws://{}", server.addr))
        .current_dir(dir)
        .output()
        .unwrap_or_else(|e| {
            panic!("cannot run {program} (install it, or run scripts/test.sh): {e}")
        });
    let stdout = String::from_utf8_lossy(&output.stdout);
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(
        output.status.success(),
        "{script} failed (dependencies come from scripts/test.sh):\n{stdout}\n{stderr}"
    );
    assert!(stdout.contains(": ok"), "{stdout}");
}

/// The client sent compressed messages that the server inflated, and the
/// server sent it compressed frames (permessage-deflate, on by default in
/// both libraries).
fn assert_compressed_both_ways(server: &Server) {
    let total = &support::get_json(server, "/api/stats")["total"];
    assert!(total["messages_inflated"].as_u64() >= Some(1), "{total}");
    assert!(
        total["deliveries_compressed"].as_u64() >= Some(1),
        "{total}"
    );
}

#[test]
fn python_websockets_client() {
    let server = Server::start(&["--shards", "2"]);
    run_client("python3", "python_client.py", &server);
    assert_compressed_both_ways(&server);
}

#[test]
fn python_msgpack_client() {
    let server = Server::start(&["--shards", "2"]);
    run_client("python3", "msgpack_client.py", &server);
}

#[test]
fn node_ws_client() {
    let server = Server::start(&["--shards", "2"]);
    run_client("node", "node_client.mjs", &server);
    assert_compressed_both_ways(&server);
}
