//! What one server API client can make the server hold is bounded and
//! counted (`docs/api.md`, issue 24): a history page stops at its byte
//! bound and the next page goes on from there; answers a client does not
//! read count against `--max-memory`, which then refuses history pages;
//! idempotency keys count against it too, and a full store refuses new
//! keys rather than forgetting others' before their window ends.

mod support;

use std::{
    io::Write,
    net::{IpAddr, Ipv4Addr, SocketAddr, TcpStream},
};

use serde_json::{json, Value};
use support::{
    secure::{claims, connect_with, hs256, secured_server, with_api_key, API_KEY},
    wait_until, Server,
};

/// A request with the API key; (status, body as JSON).
fn api(server: &Server, method: &str, path: &str, body: &str) -> (u16, Value) {
    let (status, text) = with_api_key(server, method, path, body);
    let json = serde_json::from_str(&text).unwrap_or_else(|e| panic!("{path}: {e}: {text}"));
    (status, json)
}

/// The memory the node's budget counts, over all shards.
fn counted(server: &Server) -> u64 {
    let stats = support::get_json_with(server, "/api/stats", API_KEY);
    stats["total"]["memory_counted_bytes"].as_u64().unwrap()
}

/// A raw room of `count` texts of `len` control characters (JSON escapes
/// each as six bytes), as the room member sent them; waits until history
/// holds them all.
fn room_of_control_texts(server: &Server, room: &str, count: u64, len: usize) -> String {
    let token = hs256(&claims("writer", 300, &[room], &[room]));
    let mut member = connect_with(server, &format!("/ws/{room}?echo=0&token={token}"), &[])
        .expect("room member");
    let text = "\u{1}".repeat(len);
    for _ in 0..count {
        member.send_text(&text);
    }
    wait_until(&format!("{count} texts in {room}'s history"), || {
        let path = format!("/api/history/{room}?since={}&limit=1", count - 1);
        api(server, "GET", &path, "").1["seq"] == count
    });
    text
}

#[test]
fn a_history_page_stops_at_its_byte_bound_and_the_rest_follows_once() {
    let server = secured_server(&[]);
    // 60,000 control characters answer as 360 KB each: two fit in the
    // 1 MiB page, whatever the limit (it held all 1,000 before).
    let text = room_of_control_texts(&server, "big", 8, 60_000);
    let mut since = 0;
    let mut seen = Vec::new();
    let mut pages = 0;
    loop {
        let path = format!("/api/history/big?since={since}&limit=1000");
        let (status, text_body) = with_api_key(&server, "GET", &path, "");
        assert_eq!(status, 200, "{text_body:.200}");
        assert!(
            text_body.len() <= (1 << 20) + 1024,
            "a page of {} bytes",
            text_body.len()
        );
        let page: Value = serde_json::from_str(&text_body).unwrap();
        assert_eq!(page["complete"], true, "since={since}");
        let listed = page["publications"].as_array().unwrap();
        for publication in listed {
            assert_eq!(publication["text"].as_str(), Some(text.as_str()));
            seen.push(publication["seq"].as_u64().unwrap());
        }
        pages += 1;
        if page["more"] == false {
            break;
        }
        assert_eq!(listed.len(), 2, "cut at the byte bound: {since}");
        since = *seen.last().unwrap();
        assert!(pages < 8, "paging never ends: {seen:?}");
    }
    assert_eq!(seen, (1..=8).collect::<Vec<_>>(), "each once, in order");
    assert_eq!(pages, 4);
}

/// Sends a history request from its own source address (127.0.0.x) on a
/// socket with a small receive buffer, and never reads the answer.
fn unread_history_request(server: &Server, n: u8, path: &str) -> TcpStream {
    let source = SocketAddr::new(IpAddr::V4(Ipv4Addr::new(127, 0, 1, n)), 0);
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket.set_recv_buffer_size(4096).unwrap();
    socket.bind(&source.into()).expect("bind source address");
    socket.connect(&server.addr.into()).expect("connect");
    let mut stream: TcpStream = socket.into();
    let request = format!("GET {path} HTTP/1.1\r\nHost: x\r\nX-API-Key: {API_KEY}\r\n\r\n");
    stream.write_all(request.as_bytes()).unwrap();
    stream
}

#[test]
fn unread_answers_count_against_max_memory_which_then_refuses_history() {
    // 16 MiB per shard; answers held for a minute.
    let server = secured_server(&[
        "--max-memory",
        "32MiB",
        "--handshake-timeout",
        "60s",
        "--max-message-bytes",
        "4MiB",
        "--max-queue-bytes",
        "32MiB",
    ]);
    // One publication is listed whatever its size: 24 MB once escaped,
    // more than the kernel's socket buffers take (`tcp_wmem`, 4 MiB at
    // most by default) and than a shard's budget.
    room_of_control_texts(&server, "big", 1, 4_000_000);
    let path = "/api/history/big";
    let before = counted(&server);
    let mut unread = Vec::new();
    let refused = loop {
        // One unread answer puts its shard over its budget; the next
        // request that lands there is refused.
        assert!(
            unread.len() < 40,
            "never refused; {} counted",
            counted(&server)
        );
        unread.push(unread_history_request(
            &server,
            unread.len() as u8 + 1,
            path,
        ));
        let (status, answer) = api(&server, "GET", path, "");
        if status != 200 {
            break (status, answer);
        }
    };
    assert_eq!(
        (refused.0, refused.1["error"].as_str()),
        (503, Some("over_capacity")),
        "{}",
        refused.1
    );
    let held = counted(&server) - before;
    assert!(
        held >= 16 << 20,
        "{} unread answers: {held} bytes counted",
        unread.len()
    );
    // Their clients go: their answers are no longer held, nor counted.
    drop(unread);
    wait_until("the unread answers to be dropped", || {
        counted(&server) < before + (1 << 20)
    });
    assert_eq!(api(&server, "GET", path, "").0, 200);
}

#[test]
fn idempotency_keys_are_counted_and_a_full_store_refuses_new_ones_without_forgetting() {
    // One shard of the least budget, 4 MiB: each key of 120 bytes counts
    // about 320, so about 13,000 fill it.
    let server = Server::start(&[
        "--shards",
        "1",
        "--max-memory",
        "4MiB",
        "--api-key",
        API_KEY,
        "--idempotency-window",
        "1h",
    ]);
    let before = counted(&server);
    let batch = |i: usize| {
        let messages: Vec<Value> = (0..1000)
            .map(|_| json!({"ch": "orders", "data": 1}))
            .collect();
        json!({"messages": messages, "idempotency_key": format!("{i:0>120}")}).to_string()
    };
    let first = api(&server, "POST", "/api/publish", &batch(0));
    assert_eq!(first.0, 200, "{}", first.1);
    let mut accepted = 1000;
    let refused = (1..40)
        .find_map(|i| {
            let (status, answer) = api(&server, "POST", "/api/publish", &batch(i));
            let published = answer["seqs"]
                .as_array()
                .map_or(0, |s| s.iter().filter(|s| s.is_u64()).count());
            accepted += published;
            (status != 200).then_some((i, status, answer))
        })
        .unwrap_or_else(|| panic!("never refused; {} bytes counted", counted(&server)));
    let (last, status, answer) = refused;
    assert_eq!(
        (status, answer["error"].as_str()),
        (503, Some("over_capacity")),
        "{answer}"
    );
    let keys_bytes = counted(&server) - before;
    assert!(
        keys_bytes >= accepted as u64 * 120,
        "{accepted} keys: {keys_bytes} bytes counted"
    );
    // Nothing of a refused key was published; a new key is refused too.
    let single = json!({"ch": "orders", "data": 2, "idempotency_key": "late"}).to_string();
    let (status, answer) = api(&server, "POST", "/api/publish", &single);
    assert_eq!(
        (status, answer["error"].as_str()),
        (503, Some("over_capacity"))
    );
    // The first keys are still remembered: their retries publish nothing.
    let again = api(&server, "POST", "/api/publish", &batch(0));
    assert_eq!(again, first, "batch 0 retried after {last} others");
    // Publishing without a key goes on, after exactly what was accepted.
    let seq = support::publish_with_key(&server, "orders", json!("marker"), API_KEY);
    assert_eq!(seq, accepted as u64 + 1);
    let stats = support::get_json_with(&server, "/api/stats", API_KEY);
    assert!(
        stats["total"]["idempotency_refused"].as_u64() >= Some(1),
        "{stats}"
    );
}
