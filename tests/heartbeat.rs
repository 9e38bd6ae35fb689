//! Heartbeats: a client that answers pings stays; one that goes silent is
//! closed after --ping-interval + --ping-timeout.

mod support;

use std::{
    io::Read,
    time::{Duration, Instant},
};

use support::{Client, Server};
use tungstenite::Message;

#[test]
fn silent_client_is_dropped_and_responsive_client_stays() {
    let server = Server::start(&[
        "--shards",
        "1",
        "--ping-interval",
        "200ms",
        "--ping-timeout",
        "300ms",
    ]);
    let silent = Client::connect(&server, "/ws?sub=x");
    let mut alive = Client::connect(&server, "/ws?sub=x");
    let started = Instant::now();

    // The responsive client reads (tungstenite answers each ping) for well
    // over the interval + timeout.
    let mut pings = 0;
    alive.set_timeout(Some(Duration::from_millis(100)));
    while started.elapsed() < Duration::from_millis(1500) {
        match alive.ws.read() {
            Ok(Message::Ping(_)) => pings += 1,
            Ok(other) => panic!("unexpected {other:?}"),
            Err(tungstenite::Error::Io(e)) if e.kind() == std::io::ErrorKind::WouldBlock => {}
            Err(e) => panic!("responsive client was dropped: {e}"),
        }
        let _ = alive.ws.flush();
    }
    assert!(pings >= 2, "server pings idle connections ({pings})");

    // The silent client never read, so never answered: by now the server has
    // closed it. Its socket holds pings, then the close frame, then EOF.
    let tcp = silent.tcp();
    tcp.set_read_timeout(Some(support::DEADLINE)).unwrap();
    let mut raw = Vec::new();
    (&*tcp)
        .read_to_end(&mut raw)
        .expect("server closed the silent client");
    let close = [0x88u8, 14, 0x03, 0xE9]; // close, 14 bytes, code 1001
    assert!(
        raw.windows(4).any(|w| w == close),
        "close 1001 sent: {raw:?}"
    );
    assert!(raw.ends_with(b"ping timeout"));

    // And the responsive one is still served.
    alive.set_timeout(Some(support::DEADLINE));
    alive.send_text(r#"{"op":"ping","id":1}"#);
    assert_eq!(alive.recv_json()["op"], "pong");
    drop(silent);
}
