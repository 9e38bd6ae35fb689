//! The core NATS text protocol, the part a publisher-subscriber needs:
//! `CONNECT`, `PUB`, `SUB`, `UNSUB` and `PONG` written, and the server's
//! `INFO`, `MSG`, `PING`, `PONG`, `+OK` and `-ERR` read, whole or in pieces.
//! No I/O.

use bytes::{Buf, Bytes, BytesMut};

/// Longest control line accepted from the server (an `INFO` is a few KB).
const MAX_LINE: usize = 64 << 10;
/// Largest message body accepted (NATS's own ceiling is 64 MiB).
const MAX_BODY: usize = 64 << 20;

/// What the server said.
#[derive(Debug, Clone, PartialEq, Eq)]
pub(crate) enum ServerOp {
    Info,
    /// A message on `subject` for subscription `sid`.
    Msg {
        subject: Bytes,
        sid: u64,
        body: Bytes,
    },
    Ping,
    Pong,
    Ok,
    Err(String),
}

/// The server's output could not be read: the connection is dropped.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
#[error("unreadable output from NATS: {0}")]
pub(crate) struct NatsError(pub String);

/// The next complete operation at the front of `buf`, taken off it; `None`
/// until one has fully arrived.
pub(crate) fn next_op(buf: &mut BytesMut) -> Result<Option<ServerOp>, NatsError> {
    let Some(end) = memchr::memmem::find(buf, b"\r\n") else {
        if buf.len() > MAX_LINE {
            return Err(NatsError("control line too long".into()));
        }
        return Ok(None);
    };
    let line = &buf[..end];
    let verb_end = memchr::memchr(b' ', line).unwrap_or(line.len());
    let verb = line[..verb_end].to_ascii_uppercase();
    let op = match verb.as_slice() {
        b"MSG" => {
            let fields: Vec<&[u8]> = line[verb_end..]
                .split(|b| *b == b' ' || *b == b'\t')
                .filter(|f| !f.is_empty())
                .collect();
            // MSG <subject> <sid> [reply-to] <#bytes>
            let (subject, sid, len) = match fields.as_slice() {
                [subject, sid, len] | [subject, sid, _, len] => (*subject, *sid, *len),
                _ => return Err(NatsError("malformed MSG".into())),
            };
            let number = |digits: &[u8]| super::record::parse_u64(digits);
            let (Some(sid), Some(len)) = (number(sid), number(len)) else {
                return Err(NatsError("malformed MSG numbers".into()));
            };
            let len = len as usize;
            if len > MAX_BODY {
                return Err(NatsError("message body too large".into()));
            }
            let total = end + 2 + len + 2;
            if buf.len() < total {
                return Ok(None);
            }
            if &buf[total - 2..total] != b"\r\n" {
                return Err(NatsError("message body not followed by CRLF".into()));
            }
            let subject = Bytes::copy_from_slice(subject);
            let mut taken = buf.split_to(total).freeze();
            let body = taken.split_off(end + 2).slice(..len);
            return Ok(Some(ServerOp::Msg { subject, sid, body }));
        }
        b"INFO" => ServerOp::Info,
        b"PING" => ServerOp::Ping,
        b"PONG" => ServerOp::Pong,
        b"+OK" => ServerOp::Ok,
        b"-ERR" => ServerOp::Err(String::from_utf8_lossy(&line[verb_end..]).trim().into()),
        _ => {
            return Err(NatsError(format!(
                "unknown operation {:?}",
                String::from_utf8_lossy(&verb)
            )))
        }
    };
    buf.advance(end + 2);
    Ok(Some(op))
}

/// `CONNECT` (no echo of our own publications, no `+OK`s) then `PING`,
/// whose `PONG` says the server took it.
pub(crate) fn connect(out: &mut BytesMut, name: &str, user: Option<&str>, password: Option<&str>) {
    let mut options = serde_json::json!({
        "verbose": false, "pedantic": false, "echo": false, "name": name,
        "lang": "rust", "version": env!("CARGO_PKG_VERSION"), "protocol": 1,
    });
    if let Some(user) = user {
        options["user"] = user.into();
    }
    if let Some(password) = password {
        options["pass"] = password.into();
    }
    out.extend_from_slice(b"CONNECT ");
    out.extend_from_slice(options.to_string().as_bytes());
    out.extend_from_slice(b"\r\nPING\r\n");
}

/// `PUB <subject> <#bytes>` and the body.
pub(crate) fn publish(out: &mut BytesMut, subject: &[u8], body: &[u8]) {
    out.extend_from_slice(b"PUB ");
    out.extend_from_slice(subject);
    out.extend_from_slice(b" ");
    out.extend_from_slice(itoa::Buffer::new().format(body.len()).as_bytes());
    out.extend_from_slice(b"\r\n");
    out.extend_from_slice(body);
    out.extend_from_slice(b"\r\n");
}

/// `SUB <subject> <sid>`.
pub(crate) fn subscribe(out: &mut BytesMut, subject: &[u8], sid: u64) {
    out.extend_from_slice(b"SUB ");
    out.extend_from_slice(subject);
    out.extend_from_slice(b" ");
    out.extend_from_slice(itoa::Buffer::new().format(sid).as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// `UNSUB <sid>`.
pub(crate) fn unsubscribe(out: &mut BytesMut, sid: u64) {
    out.extend_from_slice(b"UNSUB ");
    out.extend_from_slice(itoa::Buffer::new().format(sid).as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// `PING`: the server answers `PONG` (a liveness check).
pub(crate) fn ping(out: &mut BytesMut) {
    out.extend_from_slice(b"PING\r\n");
}

/// `PONG`, the answer to the server's `PING`.
pub(crate) fn pong(out: &mut BytesMut) {
    out.extend_from_slice(b"PONG\r\n");
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn server_ops_are_read_whole_or_in_pieces() {
        let wire: &[u8] = b"INFO {\"server_id\":\"x\"}\r\nMSG sc.a.b 7 5\r\nhe\r\no\r\n\
            msg sc.c 8 reply.to 0\r\n\r\nPING\r\nPONG\r\n+OK\r\n-ERR 'Authorization Violation'\r\n";
        let expected = vec![
            ServerOp::Info,
            ServerOp::Msg {
                subject: Bytes::from_static(b"sc.a.b"),
                sid: 7,
                body: Bytes::from_static(b"he\r\no"),
            },
            ServerOp::Msg {
                subject: Bytes::from_static(b"sc.c"),
                sid: 8,
                body: Bytes::new(),
            },
            ServerOp::Ping,
            ServerOp::Pong,
            ServerOp::Ok,
            ServerOp::Err("'Authorization Violation'".into()),
        ];
        for step in [1, 3, wire.len()] {
            let mut buf = BytesMut::new();
            let mut ops = Vec::new();
            for piece in wire.chunks(step) {
                buf.extend_from_slice(piece);
                while let Some(op) = next_op(&mut buf).unwrap() {
                    ops.push(op);
                }
            }
            assert_eq!(ops, expected, "in pieces of {step}");
            assert!(buf.is_empty());
        }
    }

    #[test]
    fn bad_output_is_an_error() {
        for bad in [
            &b"WHAT\r\n"[..],
            b"MSG a\r\n",
            b"MSG a b 1\r\n",
            b"MSG a 1 2\r\nxyz\r\n",
        ] {
            assert!(next_op(&mut BytesMut::from(bad)).is_err(), "{bad:?}");
        }
        let mut endless = BytesMut::from(&vec![b'x'; MAX_LINE + 1][..]);
        assert!(next_op(&mut endless).is_err());
    }

    #[test]
    fn client_ops_are_written_as_the_protocol_says() {
        let mut out = BytesMut::new();
        publish(&mut out, b"sc.a", b"hi");
        subscribe(&mut out, b"sc.a", 3);
        unsubscribe(&mut out, 3);
        pong(&mut out);
        assert_eq!(
            &out[..],
            b"PUB sc.a 2\r\nhi\r\nSUB sc.a 3\r\nUNSUB 3\r\nPONG\r\n"
        );
        let mut hello = BytesMut::new();
        connect(&mut hello, "n", Some("u"), Some("p"));
        let text = std::str::from_utf8(&hello).unwrap();
        let json: serde_json::Value = serde_json::from_str(
            text.strip_prefix("CONNECT ")
                .unwrap()
                .split("\r\n")
                .next()
                .unwrap(),
        )
        .unwrap();
        assert_eq!(json["echo"], false);
        assert_eq!(
            (json["user"].as_str(), json["pass"].as_str()),
            (Some("u"), Some("p"))
        );
        assert!(text.ends_with("\r\nPING\r\n"));
    }
}
