//! The Redis side of the wire: commands written as RESP arrays of bulk
//! strings straight into a connection's pipeline buffer, and replies and
//! pushes read with the `redis-protocol` crate's RESP3 decoder. Writing a
//! command by hand costs no allocation (the crate's encoder wants a `Vec` of
//! frames per command); decoding is the crate's. No I/O.

use bytes::{Bytes, BytesMut};
use redis_protocol::resp3::{
    decode::complete::decode_bytes_mut,
    types::{BytesFrame, Resp3Frame},
};

/// Why Redis's output could not be read: the connection is then dropped.
#[derive(Debug, thiserror::Error)]
#[error("unreadable reply from Redis: {0}")]
pub(crate) struct RespError(String);

/// Appends one command (`args` as bulk strings) to `out`.
pub(crate) fn command(out: &mut BytesMut, args: &[&[u8]]) {
    array_head(out, args.len());
    for arg in args {
        bulk(out, &[arg]);
    }
}

/// The head of a command of `len` arguments, each then written with
/// [`bulk`].
pub(crate) fn array_head(out: &mut BytesMut, len: usize) {
    out.extend_from_slice(b"*");
    out.extend_from_slice(itoa::Buffer::new().format(len).as_bytes());
    out.extend_from_slice(b"\r\n");
}

/// One argument made of `parts` end to end (a key built in place, with no
/// buffer of its own).
pub(crate) fn bulk(out: &mut BytesMut, parts: &[&[u8]]) {
    let len: usize = parts.iter().map(|p| p.len()).sum();
    out.extend_from_slice(b"$");
    out.extend_from_slice(itoa::Buffer::new().format(len).as_bytes());
    out.extend_from_slice(b"\r\n");
    for part in parts {
        out.extend_from_slice(part);
    }
    out.extend_from_slice(b"\r\n");
}

/// The next complete frame in `buf`, taken off its front; `None` until one
/// has fully arrived.
pub(crate) fn next_frame(buf: &mut BytesMut) -> Result<Option<BytesFrame>, RespError> {
    match decode_bytes_mut(buf) {
        Ok(Some((frame, _, _))) => Ok(Some(frame)),
        Ok(None) => Ok(None),
        Err(error) => Err(RespError(error.to_string())),
    }
}

/// A pub/sub message pushed to a subscribed connection: its channel and
/// data. Subscribe confirmations and other pushes give `None`.
pub(crate) fn pushed_message(frame: &BytesFrame) -> Option<(&Bytes, &Bytes)> {
    let BytesFrame::Push { data, .. } = frame else {
        return None;
    };
    match data.as_slice() {
        [kind, channel, message] if kind.as_bytes() == Some(b"message") => {
            Some((blob(channel)?, blob(message)?))
        }
        _ => None,
    }
}

/// Whether `frame` is out-of-band (a push) rather than a command's reply.
pub(crate) fn is_push(frame: &BytesFrame) -> bool {
    matches!(frame, BytesFrame::Push { .. })
}

/// An error reply's text.
pub(crate) fn error_text(frame: &BytesFrame) -> Option<String> {
    match frame {
        BytesFrame::SimpleError { data, .. } => Some(data.to_string()),
        BytesFrame::BlobError { data, .. } => Some(String::from_utf8_lossy(data).into_owned()),
        _ => None,
    }
}

/// A bulk or simple string's bytes.
pub(crate) fn blob(frame: &BytesFrame) -> Option<&Bytes> {
    match frame {
        BytesFrame::BlobString { data, .. } | BytesFrame::SimpleString { data, .. } => Some(data),
        _ => None,
    }
}

/// An integer reply (or a string of digits, as Lua numbers may come back).
pub(crate) fn integer(frame: &BytesFrame) -> Option<i64> {
    match frame {
        BytesFrame::Number { data, .. } => Some(*data),
        other => std::str::from_utf8(blob(other)?).ok()?.parse().ok(),
    }
}

/// An array reply's elements.
pub(crate) fn array(frame: &BytesFrame) -> Option<&[BytesFrame]> {
    match frame {
        BytesFrame::Array { data, .. } => Some(data),
        _ => None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn commands_are_arrays_of_bulk_strings() {
        let mut out = BytesMut::new();
        command(&mut out, &[b"PUBLISH", b"ch", b"a\r\nb"]);
        assert_eq!(
            &out[..],
            b"*3\r\n$7\r\nPUBLISH\r\n$2\r\nch\r\n$4\r\na\r\nb\r\n"
        );
        let mut parts = BytesMut::new();
        array_head(&mut parts, 2);
        bulk(&mut parts, &[b"GET"]);
        bulk(&mut parts, &[b"sc:{", b"ch", b"}:m"]);
        assert_eq!(&parts[..], b"*2\r\n$3\r\nGET\r\n$9\r\nsc:{ch}:m\r\n");
    }

    #[test]
    fn replies_and_pushes_are_told_apart_and_read_in_pieces() {
        let wire: &[u8] = b">3\r\n$7\r\nmessage\r\n$2\r\nch\r\n$5\r\nhello\r\n\
            >3\r\n$9\r\nsubscribe\r\n$2\r\nch\r\n:1\r\n\
            *2\r\n:41\r\n$4\r\nab12\r\n-NOSCRIPT No matching script\r\n";
        // Fed a byte at a time, the same frames come out.
        let mut buf = BytesMut::new();
        let mut frames = Vec::new();
        for byte in wire {
            buf.extend_from_slice(&[*byte]);
            while let Some(frame) = next_frame(&mut buf).unwrap() {
                frames.push(frame);
            }
        }
        assert_eq!(frames.len(), 4);
        let (channel, message) = pushed_message(&frames[0]).unwrap();
        assert_eq!((&channel[..], &message[..]), (&b"ch"[..], &b"hello"[..]));
        assert!(is_push(&frames[1]) && pushed_message(&frames[1]).is_none());
        let reply = array(&frames[2]).unwrap();
        assert_eq!(integer(&reply[0]), Some(41));
        assert_eq!(blob(&reply[1]).map(|b| &b[..]), Some(&b"ab12"[..]));
        assert!(error_text(&frames[3]).unwrap().starts_with("NOSCRIPT"));
        assert!(buf.is_empty());
    }

    #[test]
    fn garbage_is_an_error() {
        let mut buf = BytesMut::from(&b"?what\r\n"[..]);
        assert!(next_frame(&mut buf).is_err());
    }
}
