//! A second server on an address that one already listens on is refused at
//! start with an error naming the address (exit 1), instead of joining the
//! port through SO_REUSEPORT and splitting clients between two independent
//! servers; the first server keeps serving. The shards of one process still
//! share their port (the first server runs two).

mod support;

use std::{
    process::{Command, Stdio},
    time::{Duration, Instant},
};

use serde_json::json;
use support::{Client, Server, DEADLINE};

#[test]
fn a_second_server_on_a_port_in_use_exits_with_an_error_naming_the_address() {
    let first = Server::start(&["--shards", "2"]);
    let addr = first.addr.to_string();
    let mut second = Command::new(env!("CARGO_BIN_EXE_shardcast"))
        .args(["serve", "--shards", "2", "--listen", &addr])
        .env("RUST_LOG", "error")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start a second shardcast");
    let deadline = Instant::now() + DEADLINE;
    let status = loop {
        if let Some(status) = second.try_wait().expect("try_wait") {
            break status;
        }
        if Instant::now() > deadline {
            let _ = second.kill();
            let output = second.wait_with_output().expect("output");
            panic!(
                "the second server did not exit; it printed {:?}",
                String::from_utf8_lossy(&output.stdout)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    };
    let output = second.wait_with_output().expect("output");
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(status.code(), Some(1), "{stderr}");
    assert!(
        stderr.contains(&format!("cannot listen on {addr}")) && stderr.contains("in use"),
        "{stderr}"
    );
    assert!(
        !String::from_utf8_lossy(&output.stdout).contains("listening"),
        "the refused server must not say it listens"
    );

    // The first server is untouched: its channel numbers its publications
    // alone, whichever of its shards a client lands on.
    let mut clients: Vec<Client> = (0..4)
        .map(|_| {
            let mut client = Client::connect(&first, "/ws");
            client.subscribe("news");
            client
        })
        .collect();
    let mut publisher = Client::connect(&first, "/ws");
    for i in 1..=3u64 {
        publisher.send_json(json!({"op": "pub", "ch": "news", "data": i, "id": i}));
    }
    for client in &mut clients {
        let mut seqs = Vec::new();
        while seqs.len() < 3 {
            let envelope = client.recv_json();
            if envelope["op"] == "msg" {
                seqs.push(envelope["seq"].as_u64().expect("seq"));
            }
        }
        assert_eq!(seqs, [1, 2, 3]);
    }
}
