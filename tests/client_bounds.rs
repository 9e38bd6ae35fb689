//! `shardcast sub` and `pub` against a malicious or broken server, played
//! by a few lines of TCP in the test (127.0.0.1, port 0): an endless or
//! trickling HTTP answer, a flood of pings whose pongs are never read, a
//! server that sends nothing after the upgrade, and one that never answers
//! the upgrade. Each ends in a bounded way — an error exit within its
//! timeout, or memory that stays bounded — never in growth or a hang.

use std::{
    io::{BufRead, BufReader, Read, Write},
    net::{SocketAddr, TcpListener, TcpStream},
    process::{Child, Command, Output, Stdio},
    sync::{
        atomic::{AtomicUsize, Ordering},
        Arc,
    },
    time::{Duration, Instant},
};

/// How long a client may take to give up on a server before the test fails.
const DEADLINE: Duration = Duration::from_secs(15);

fn shardcast(args: &[&str]) -> Child {
    Command::new(env!("CARGO_BIN_EXE_shardcast"))
        .args(args)
        .env_remove("SHARDCAST_TOKEN")
        .env_remove("SHARDCAST_API_KEY")
        .stdin(Stdio::null())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start shardcast")
}

/// Waits for the client to exit within `DEADLINE` (killing it and failing
/// otherwise); returns its output.
fn finished(mut child: Child, what: &str) -> Output {
    let deadline = Instant::now() + DEADLINE;
    while child.try_wait().unwrap().is_none() {
        if Instant::now() > deadline {
            let _ = child.kill();
            let output = child.wait_with_output().unwrap();
            panic!(
                "{what}: the client did not give up within {DEADLINE:?}: {}",
                String::from_utf8_lossy(&output.stderr)
            );
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    child.wait_with_output().unwrap()
}

/// A server on 127.0.0.1 port 0 that runs `serve` on each connection, each
/// on a thread of its own; counts the connections.
fn malicious(serve: fn(TcpStream)) -> (SocketAddr, Arc<AtomicUsize>) {
    let listener = TcpListener::bind("127.0.0.1:0").unwrap();
    let addr = listener.local_addr().unwrap();
    let connections = Arc::new(AtomicUsize::new(0));
    let counted = connections.clone();
    std::thread::spawn(move || {
        for stream in listener.incoming().map_while(Result::ok) {
            counted.fetch_add(1, Ordering::SeqCst);
            std::thread::spawn(move || serve(stream));
        }
    });
    (addr, connections)
}

/// Reads an HTTP request head (up to its blank line).
fn read_head(stream: &TcpStream) -> Vec<String> {
    let mut reader = BufReader::new(stream);
    let mut lines = Vec::new();
    loop {
        let mut line = String::new();
        if reader.read_line(&mut line).unwrap_or(0) == 0 || line == "\r\n" {
            return lines;
        }
        lines.push(line.trim_end().to_owned());
    }
}

/// Answers a WebSocket upgrade request on `stream`.
fn upgrade(stream: &mut TcpStream) {
    let head = read_head(stream);
    let key = head
        .iter()
        .find_map(|l| {
            let (name, value) = l.split_once(':')?;
            name.eq_ignore_ascii_case("sec-websocket-key")
                .then(|| value.trim().to_owned())
        })
        .expect("an upgrade request");
    let accept = tungstenite::handshake::derive_accept_key(key.as_bytes());
    let answer = format!(
        "HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Accept: {accept}\r\n\r\n"
    );
    stream.write_all(answer.as_bytes()).unwrap();
}

/// Holds the connection open without reading or writing, until the client
/// closes it.
fn hold(mut stream: TcpStream) {
    let _ = stream.read(&mut [0u8; 1]);
    // A client that wrote (its upgrade, its subscriptions) is still
    // connected: wait for it to go.
    let _ = std::io::copy(&mut stream, &mut std::io::sink());
}

#[test]
fn pub_http_refuses_an_endless_answer_after_1_mib() {
    let (addr, _) = malicious(|mut stream| {
        read_head(&stream);
        let _ = stream.write_all(b"HTTP/1.1 200 OK\r\nContent-Type: application/json\r\n\r\n");
        let chunk = [b' '; 64 << 10];
        while stream.write_all(&chunk).is_ok() {}
    });
    let url = format!("ws://{addr}");
    let output = finished(
        shardcast(&["pub", "--http", &url, "news", "1"]),
        "endless answer",
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("the answer is over 1024 KiB"), "{stderr}");
}

#[test]
fn pub_http_gives_up_on_a_trickling_answer_at_the_handshake_timeout() {
    let (addr, _) = malicious(|mut stream| {
        read_head(&stream);
        // One byte every 50 ms: each read succeeds, the answer never ends.
        for byte in b"HTTP/1.1 200 OK\r\n".iter().cycle() {
            if stream.write_all(&[*byte]).is_err() {
                return;
            }
            std::thread::sleep(Duration::from_millis(50));
        }
    });
    let url = format!("ws://{addr}");
    let started = Instant::now();
    let output = finished(
        shardcast(&[
            "pub",
            "--http",
            "--handshake-timeout",
            "1s",
            &url,
            "news",
            "1",
        ]),
        "trickling answer",
    );
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert_eq!(output.status.code(), Some(4), "{stderr}");
    assert!(stderr.contains("no complete answer within 1s"), "{stderr}");
    assert!(
        started.elapsed() < Duration::from_secs(5),
        "{:?}",
        started.elapsed()
    );
}

/// Pings sent by the flooding server: 64 MiB of pongs if all were kept.
const PINGS: usize = 500_000;

#[test]
fn sub_keeps_bounded_memory_when_its_pongs_are_never_read() {
    let (addr, _) = malicious(|mut stream| {
        upgrade(&mut stream);
        // Pings with the largest payload (125 bytes), never reading what
        // the client sends back.
        let mut ping = vec![0x89, 125];
        ping.extend_from_slice(&[b'p'; 125]);
        let batch: Vec<u8> = ping
            .iter()
            .copied()
            .cycle()
            .take(ping.len() * 1000)
            .collect();
        for _ in 0..PINGS / 1000 {
            if stream.write_all(&batch).is_err() {
                return;
            }
        }
        // Then one message: once it is printed, every ping was read.
        let msg = br#"{"op":"msg","ch":"news","seq":1,"data":"after the pings"}"#;
        let mut frame = vec![0x81, msg.len() as u8];
        frame.extend_from_slice(msg);
        let _ = stream.write_all(&frame);
        hold(stream);
    });
    let url = format!("ws://{addr}");
    let mut child = shardcast(&["sub", "--data-only", "--count", "1", &url, "news"]);
    let (code, peak_kib) = exit_and_peak_rss(&mut child);
    let mut stdout = String::new();
    child
        .stdout
        .take()
        .unwrap()
        .read_to_string(&mut stdout)
        .unwrap();
    let mut stderr = String::new();
    child
        .stderr
        .take()
        .unwrap()
        .read_to_string(&mut stderr)
        .unwrap();
    assert_eq!(code, 0, "{stderr}");
    assert_eq!(stdout.trim(), "\"after the pings\"");
    let pongs_mib = (PINGS * 131) >> 20;
    assert!(
        peak_kib < 40 << 10,
        "sub peaked at {peak_kib} KiB of RSS answering {PINGS} pings ({pongs_mib} MiB of pongs)"
    );
    eprintln!("sub's peak RSS: {peak_kib} KiB for {PINGS} pings ({pongs_mib} MiB of pongs)");
}

/// Waits (within `DEADLINE`) for `child` to exit and reaps it with wait4:
/// its exit code and its peak RSS in KiB.
fn exit_and_peak_rss(child: &mut Child) -> (i32, i64) {
    let pid = child.id() as libc::pid_t;
    let deadline = Instant::now() + DEADLINE;
    loop {
        let mut status = 0;
        // SAFETY: wait4 on our own child, writing into the two values we pass.
        let (reaped, usage) = unsafe {
            let mut usage: libc::rusage = std::mem::zeroed();
            let reaped = libc::wait4(pid, &mut status, libc::WNOHANG, &mut usage);
            (reaped, usage)
        };
        if reaped == pid {
            let code = if libc::WIFEXITED(status) {
                libc::WEXITSTATUS(status)
            } else {
                -1
            };
            return (code, usage.ru_maxrss);
        }
        if Instant::now() > deadline {
            let _ = child.kill();
            panic!("the client did not finish within {DEADLINE:?}");
        }
        std::thread::sleep(Duration::from_millis(10));
    }
}

#[test]
fn sub_takes_a_silent_server_for_lost_after_the_idle_timeout_and_reconnects() {
    let (addr, connections) = malicious(|mut stream| {
        upgrade(&mut stream);
        hold(stream);
    });
    let url = format!("ws://{addr}");
    let once = finished(
        shardcast(&["sub", "--idle-timeout", "1s", "--once", &url, "news"]),
        "silent server, --once",
    );
    let stderr = String::from_utf8_lossy(&once.stderr);
    assert_eq!(once.status.code(), Some(4), "{stderr}");
    assert!(
        stderr.contains("nothing from the server for 1s, not even a ping"),
        "{stderr}"
    );

    // Without --once it connects again.
    let before = connections.load(Ordering::SeqCst);
    let mut sub = shardcast(&["sub", "--idle-timeout", "1s", &url, "news"]);
    let deadline = Instant::now() + DEADLINE;
    while connections.load(Ordering::SeqCst) < before + 2 {
        if Instant::now() > deadline {
            let _ = sub.kill();
            panic!("sub did not reconnect: {:?}", sub.wait_with_output());
        }
        std::thread::sleep(Duration::from_millis(10));
    }
    let _ = sub.kill();
    let output = sub.wait_with_output().unwrap();
    let stderr = String::from_utf8_lossy(&output.stderr);
    assert!(stderr.contains("reconnecting"), "{stderr}");
}

#[test]
fn sub_and_pub_give_up_on_a_server_that_never_answers_the_upgrade() {
    let (addr, _) = malicious(hold);
    let url = format!("ws://{addr}");
    for command in [
        &["sub", "--once", "--handshake-timeout", "1s", &url, "news"][..],
        &["pub", "--handshake-timeout", "1s", &url, "news", "1"][..],
    ] {
        let output = finished(shardcast(command), command[0]);
        let stderr = String::from_utf8_lossy(&output.stderr);
        assert_eq!(output.status.code(), Some(4), "{stderr}");
        assert!(
            stderr.contains("no WebSocket connection within 1s"),
            "{stderr}"
        );
    }
}
