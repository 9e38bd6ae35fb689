//! Lifecycle webhooks against a receiver started by the test (a small HTTP
//! server on 127.0.0.1): every request is checked for its signature, events
//! come batched and in order per channel, a request answered 500 is sent
//! again, `channel_vacated` waits out its grace and is dropped when the
//! channel fills again within it.

mod support;

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::TcpListener,
    sync::{
        atomic::{AtomicUsize, Ordering},
        mpsc, Arc,
    },
};

use serde_json::{json, Value};
use support::{Client, Server, DEADLINE};

const SECRET: &str = "webhook-test-secret";

/// One request the receiver took: its body, parsed (at most 4 events:
/// `--webhook-batch 4` where it is set), and whether it was answered 500.
struct Received {
    body: Value,
    failed: bool,
}

/// A receiver answering 500 to its first `failures` requests, then 200;
/// checks each request's signature; hands over what it received.
fn receiver(failures: usize) -> (String, mpsc::Receiver<Received>) {
    receiver_on(failures, None)
}

trait Transport: Read + Write {}
impl<T: Read + Write> Transport for T {}

/// [`receiver`], over TLS with `tls` (its URL then `https://localhost:…`).
fn receiver_on(
    failures: usize,
    tls: Option<Arc<rustls::ServerConfig>>,
) -> (String, mpsc::Receiver<Received>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let port = listener.local_addr().unwrap().port();
    let url = match tls {
        Some(_) => format!("https://localhost:{port}/hooks"),
        None => format!("http://127.0.0.1:{port}/hooks"),
    };
    let (tx, rx) = mpsc::channel();
    let served = Arc::new(AtomicUsize::new(0));
    std::thread::spawn(move || {
        for tcp in listener.incoming() {
            let Ok(tcp) = tcp else { continue };
            tcp.set_read_timeout(Some(DEADLINE)).unwrap();
            let mut stream: Box<dyn Transport> = match &tls {
                Some(config) => {
                    let session = rustls::ServerConnection::new(config.clone()).unwrap();
                    Box::new(rustls::StreamOwned::new(session, tcp))
                }
                None => Box::new(tcp),
            };
            let mut reader = BufReader::new(&mut stream);
            let mut line = String::new();
            if reader.read_line(&mut line).is_err() {
                continue; // e.g. a TLS handshake the client gave up
            }
            assert!(line.starts_with("POST /hooks HTTP/1.1"), "{line}");
            let (mut length, mut signature) = (0, String::new());
            loop {
                let mut header = String::new();
                reader.read_line(&mut header).unwrap();
                let header = header.trim_end();
                if header.is_empty() {
                    break;
                }
                let (name, value) = header.split_once(": ").unwrap();
                match name.to_ascii_lowercase().as_str() {
                    "content-length" => length = value.parse().unwrap(),
                    "x-shardcast-signature" => signature = value.to_string(),
                    _ => {}
                }
            }
            let mut body = vec![0; length];
            reader.read_exact(&mut body).unwrap();
            let key = ring::hmac::Key::new(ring::hmac::HMAC_SHA256, SECRET.as_bytes());
            let expected = ring::hmac::sign(&key, &body);
            let hex: String = expected
                .as_ref()
                .iter()
                .map(|b| format!("{b:02x}"))
                .collect();
            assert_eq!(signature, format!("sha256={hex}"), "the signature");
            let n = served.fetch_add(1, Ordering::SeqCst);
            let failed = n < failures;
            let status = if failed {
                "500 Internal Server Error"
            } else {
                "204 No Content"
            };
            drop(reader);
            let _ = write!(stream, "HTTP/1.1 {status}\r\nContent-Length: 0\r\n\r\n");
            let _ = stream.flush();
            let body: Value = serde_json::from_slice(&body).unwrap();
            assert!(
                body["events"].as_array().unwrap().len() <= 100,
                "at most a batch"
            );
            let _ = tx.send(Received { body, failed });
        }
    });
    (url, rx)
}

/// Events delivered (from requests answered 200), until `done` holds.
fn events_until(
    rx: &mpsc::Receiver<Received>,
    mut done: impl FnMut(&[Value]) -> bool,
) -> (Vec<Value>, usize) {
    events_within(rx, None, &mut done)
}

/// Like [`events_until`], checking every request holds at most `batch_limit` events.
fn events_within(
    rx: &mpsc::Receiver<Received>,
    batch_limit: Option<usize>,
    done: &mut impl FnMut(&[Value]) -> bool,
) -> (Vec<Value>, usize) {
    let deadline = std::time::Instant::now() + DEADLINE;
    let (mut events, mut requests) = (Vec::new(), 0);
    while !done(&events) {
        let left = deadline.saturating_duration_since(std::time::Instant::now());
        let received = rx
            .recv_timeout(left)
            .unwrap_or_else(|_| panic!("no more webhooks; got {events:?}"));
        requests += 1;
        if !received.failed {
            events.extend(received.body["events"].as_array().unwrap().iter().cloned());
        }
        if let Some(limit) = batch_limit {
            assert!(
                received.body["events"].as_array().unwrap().len() <= limit,
                "over the batch: {}",
                received.body
            );
        }
    }
    (events, requests)
}

/// Adds to `events` what comes until all of them make `done` hold.
fn gather(rx: &mpsc::Receiver<Received>, events: &mut Vec<Value>, done: impl Fn(&[Value]) -> bool) {
    let seen = events.clone();
    let (more, _) = events_until(rx, |e| {
        let all: Vec<Value> = seen.iter().chain(e).cloned().collect();
        done(&all)
    });
    events.extend(more);
}

fn names(events: &[Value], ch: &str) -> Vec<String> {
    events
        .iter()
        .filter(|e| e["ch"] == ch)
        .map(|e| e["event"].as_str().unwrap().to_string())
        .collect()
}

#[test]
fn lifecycle_events_arrive_signed_batched_in_order_and_are_retried() {
    let (url, rx) = receiver(1);
    let server = Server::start(&[
        "--shards",
        "2",
        "--webhook-url",
        &url,
        "--webhook-secret",
        SECRET,
        "--webhook-batch",
        "4",
        "--vacated-grace",
        "300ms",
        "--node-id",
        "hooks-a",
    ]);
    let mut clients: Vec<Client> = (0..3).map(|_| Client::connect(&server, "/ws")).collect();
    for client in &mut clients {
        client.subscribe("room.x");
    }
    for client in &mut clients {
        client.send_json(json!({"op": "unsub", "ch": "room.x", "id": "u"}));
        assert_eq!(client.recv_json()["op"], "ack");
    }
    for client in clients {
        client.close_and_wait();
    }
    let (events, requests) = events_within(&rx, Some(4), &mut |events: &[Value]| {
        names(events, "room.x").contains(&"channel_vacated".to_string())
            && events
                .iter()
                .filter(|e| e["event"] == "disconnected")
                .count()
                == 3
    });
    // Batched: fewer requests than events, none over --webhook-batch.
    assert!(
        requests < events.len(),
        "{requests} requests for {} events",
        events.len()
    );
    // The first request was answered 500 and sent again: nothing was lost.
    assert!(requests >= 2);
    assert_eq!(
        names(&events, "room.x"),
        [
            "channel_occupied",
            "subscribed",
            "subscribed",
            "subscribed",
            "unsubscribed",
            "unsubscribed",
            "unsubscribed",
            "channel_vacated"
        ],
        "one channel's events, in order"
    );
    let count = |name: &str| events.iter().filter(|e| e["event"] == name).count();
    assert_eq!((count("connected"), count("disconnected")), (3, 3));
    let reasons: Vec<&str> = events
        .iter()
        .filter(|e| e["event"] == "disconnected")
        .map(|e| e["reason"].as_str().unwrap())
        .collect();
    assert!(reasons.iter().all(|r| *r == "normal"), "{reasons:?}");
    // Every event names the node, a time and a sequence number of its own.
    let mut seqs: Vec<u64> = events.iter().map(|e| e["seq"].as_u64().unwrap()).collect();
    assert!(events
        .iter()
        .all(|e| e["node"] == "hooks-a" && e["time_ms"].as_u64() > Some(0)));
    seqs.sort();
    seqs.dedup();
    assert_eq!(seqs.len(), events.len(), "no event twice");
    let stats = support::get_json(&server, "/api/stats");
    assert!(
        stats["total"]["webhook_failures"].as_u64() >= Some(1),
        "{}",
        stats["total"]
    );
}

#[test]
fn a_channel_that_fills_again_within_the_grace_is_not_vacated() {
    let (url, rx) = receiver(0);
    let server = Server::start(&[
        "--shards",
        "2",
        "--webhook-url",
        &url,
        "--webhook-secret",
        SECRET,
        "--vacated-grace",
        "1s",
    ]);
    let mut first = Client::connect(&server, "/ws");
    first.subscribe("doc.1");
    first.close_and_wait();
    // A reload: another connection subscribes within the grace, then goes.
    let mut again = Client::connect(&server, "/ws");
    again.subscribe("doc.1");
    again.close_and_wait();
    let (events, _) = events_until(&rx, |events| {
        names(events, "doc.1").contains(&"channel_vacated".to_string())
    });
    assert_eq!(
        names(&events, "doc.1"),
        [
            "channel_occupied",
            "subscribed",
            "unsubscribed",
            "subscribed",
            "unsubscribed",
            "channel_vacated"
        ],
        "no vacated (and no second occupied) between the two"
    );
}

/// With the Redis engine, a channel is occupied and vacated once for the
/// whole service: by the node whose subscriber came when no node had any,
/// and by the node whose subscriber left last. (`channel_occupied` waits for
/// Redis's answer, so it may follow the node's first `subscribed`.) Node
/// a's grace is short and node b's long, so a's ran out well before b's:
/// had a announced its own vacated, it would be in a's queue before its
/// next `subscribed`.
#[test]
fn occupied_and_vacated_are_sent_once_across_nodes() {
    let redis = support::brokers::Redis::start();
    let (url, rx) = receiver(0);
    let node = |id: &str, grace: &str| {
        let hooks = ["--webhook-url", &url, "--webhook-secret", SECRET];
        redis.node(id, &[&hooks[..], &["--vacated-grace", grace]].concat())
    };
    let (a, b) = (node("node-a", "100ms"), node("node-b", "1s"));
    // A node's events for room.x: (all but channel_occupied, how many of those).
    let of = |events: &[Value], node: &str| -> (Vec<String>, usize) {
        let events: Vec<Value> = events
            .iter()
            .filter(|e| e["node"] == node)
            .cloned()
            .collect();
        let all = names(&events, "room.x");
        let occupied = all.iter().filter(|n| *n == "channel_occupied").count();
        let rest = all
            .into_iter()
            .filter(|n| n != "channel_occupied")
            .collect();
        (rest, occupied)
    };
    let mut events = Vec::new();
    let mut on_a = Client::connect(&a, "/ws");
    on_a.subscribe("room.x");
    gather(&rx, &mut events, |e| {
        of(e, "node-a") == (vec!["subscribed".into()], 1)
    });
    let mut on_b = Client::connect(&b, "/ws");
    on_b.subscribe("room.x");
    on_a.close_and_wait();
    gather(&rx, &mut events, |e| {
        of(e, "node-a").0.len() == 2 && !of(e, "node-b").0.is_empty()
    });
    on_b.close_and_wait();
    gather(&rx, &mut events, |e| {
        of(e, "node-b").0.contains(&"channel_vacated".into())
    });
    // Empty everywhere: node a's next subscriber occupies it again.
    let mut again = Client::connect(&a, "/ws");
    again.subscribe("room.x");
    gather(&rx, &mut events, |e| {
        of(e, "node-a").1 == 2 && of(e, "node-a").0.len() == 3
    });
    assert_eq!(
        of(&events, "node-a"),
        (
            vec![
                "subscribed".into(),
                "unsubscribed".into(),
                "subscribed".into()
            ],
            2
        ),
        "{events:?}"
    );
    assert_eq!(
        of(&events, "node-b"),
        (
            vec![
                "subscribed".into(),
                "unsubscribed".into(),
                "channel_vacated".into()
            ],
            0
        ),
        "{events:?}"
    );
}

/// `https://` receivers: events arrive over TLS to a receiver whose
/// certificate chains to `--webhook-ca`; without it, the bundled web roots
/// do not vouch for the test's self-signed certificate, so nothing is
/// delivered and the failures are counted.
#[test]
fn events_reach_an_https_receiver_the_ca_vouches_for() {
    let cert = support::secure::TestCert::generate("webhook-https");
    let (url, rx) = receiver_on(0, Some(cert.server_config()));
    let ca = cert.cert.display().to_string();
    let server = Server::start(&[
        "--webhook-url",
        &url,
        "--webhook-secret",
        SECRET,
        "--webhook-ca",
        &ca,
    ]);
    let mut client = Client::connect(&server, "/ws");
    client.subscribe("tls.1");
    let (events, _) = events_until(&rx, |e| names(e, "tls.1").len() == 2);
    assert_eq!(names(&events, "tls.1"), ["channel_occupied", "subscribed"]);

    let untrusted = Server::start(&["--webhook-url", &url, "--webhook-secret", SECRET]);
    let mut client = Client::connect(&untrusted, "/ws");
    client.subscribe("tls.2");
    support::wait_until("refused TLS handshakes are counted", || {
        support::get_json(&untrusted, "/api/stats")["total"]["webhook_failures"].as_u64() >= Some(2)
    });
    assert!(
        rx.try_recv().is_err(),
        "nothing was delivered without the CA"
    );
}
