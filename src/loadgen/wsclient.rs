//! The load generator's WebSocket client side: connect from a chosen source
//! address (so tens of thousands of connections do not exhaust one
//! address's ports), perform the upgrade (over plain TCP or TLS alike), parse
//! the server's frames in place from a reusable buffer, and encode client
//! frames (masked with an all-zero key: valid per RFC 6455 and free to apply,
//! so the generator spends nothing on masking). Deliberately lean: the
//! generator must not be the bottleneck.

use std::{
    io,
    net::{IpAddr, SocketAddr},
    os::fd::{FromRawFd, IntoRawFd},
};

use futures_lite::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};
use glommio::net::TcpStream;
use socket2::{Domain, Protocol, Socket, Type};

/// Opens a TCP connection from `source` (port chosen by the kernel) to
/// `server` without blocking the executor.
pub async fn connect_from(source: IpAddr, server: SocketAddr) -> io::Result<TcpStream> {
    let socket = Socket::new(
        Domain::for_address(server),
        Type::STREAM,
        Some(Protocol::TCP),
    )?;
    socket.set_nonblocking(true)?;
    // Let connect() pick the port with the full 4-tuple in view, so ports
    // still in TIME_WAIT from earlier runs (to other server ports) are
    // reused instead of exhausting the source address.
    let enable: libc::c_int = 1;
    // SAFETY: setsockopt with a valid fd and an int option.
    unsafe {
        libc::setsockopt(
            std::os::fd::AsRawFd::as_raw_fd(&socket),
            libc::IPPROTO_IP,
            libc::IP_BIND_ADDRESS_NO_PORT,
            (&enable as *const libc::c_int).cast(),
            std::mem::size_of::<libc::c_int>() as libc::socklen_t,
        );
    }
    socket.bind(&SocketAddr::new(source, 0).into())?;
    match socket.connect(&server.into()) {
        Ok(()) => {}
        Err(e) if e.raw_os_error() == Some(libc::EINPROGRESS) => {}
        Err(e) => return Err(e),
    }
    socket.set_nodelay(true)?;
    // SAFETY: a fresh TCP socket we own; glommio takes it over.
    Ok(unsafe { TcpStream::from_raw_fd(socket.into_raw_fd()) })
}

/// Sends the upgrade request for `path` and reads the response head.
/// Returns bytes read past the head (already WebSocket data).
pub async fn upgrade<S>(stream: &mut S, host: SocketAddr, path: &str) -> io::Result<Vec<u8>>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n\r\n"
    );
    // A connect still in progress makes the first send wait for writability.
    stream.write_all(request.as_bytes()).await?;
    stream.flush().await?;
    let mut head = Vec::with_capacity(256);
    let mut chunk = [0u8; 512];
    loop {
        let n = stream.read(&mut chunk).await?;
        if n == 0 {
            return Err(io::Error::new(
                io::ErrorKind::UnexpectedEof,
                "closed during upgrade",
            ));
        }
        head.extend_from_slice(&chunk[..n]);
        if let Some(end) = head.windows(4).position(|w| w == b"\r\n\r\n") {
            if !head.starts_with(b"HTTP/1.1 101") {
                let status = String::from_utf8_lossy(&head[..head.len().min(64)]).into_owned();
                return Err(io::Error::other(format!("upgrade refused: {status}")));
            }
            return Ok(head.split_off(end + 4));
        }
        if head.len() > 8192 {
            return Err(io::Error::other("upgrade response too long"));
        }
    }
}

/// Appends a client frame (final, masked with a zero key) to `out`.
pub fn push_frame(out: &mut Vec<u8>, opcode: u8, payload: &[u8]) {
    out.push(0x80 | opcode);
    let len = payload.len();
    if len < 126 {
        out.push(0x80 | len as u8);
    } else if len <= u16::MAX as usize {
        out.push(0x80 | 126);
        out.extend_from_slice(&(len as u16).to_be_bytes());
    } else {
        out.push(0x80 | 127);
        out.extend_from_slice(&(len as u64).to_be_bytes());
    }
    out.extend_from_slice(&[0, 0, 0, 0]);
    out.extend_from_slice(payload);
}

/// One complete frame at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub struct FrameRef {
    pub fin: bool,
    pub opcode: u8,
    /// Payload range within the buffer.
    pub start: usize,
    pub end: usize,
}

/// Parses the server frame at the start of `buf`; `None` if incomplete.
/// Server frames are unmasked.
pub fn parse_frame(buf: &[u8]) -> Option<FrameRef> {
    if buf.len() < 2 {
        return None;
    }
    let fin = buf[0] & 0x80 != 0;
    let opcode = buf[0] & 0x0f;
    let (len, header) = match buf[1] & 0x7f {
        126 => (
            u16::from_be_bytes(buf.get(2..4)?.try_into().ok()?) as usize,
            4,
        ),
        127 => (
            u64::from_be_bytes(buf.get(2..10)?.try_into().ok()?) as usize,
            10,
        ),
        n => (n as usize, 2),
    };
    let masked: usize = if buf[1] & 0x80 != 0 { 4 } else { 0 };
    let start: usize = header + masked;
    let end = start.checked_add(len)?;
    (buf.len() >= end).then_some(FrameRef {
        fin,
        opcode,
        start,
        end,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_through_the_servers_encoder() {
        for len in [0usize, 5, 125, 126, 65535, 65536] {
            let payload = vec![7u8; len];
            let frame = crate::frame::encode(crate::frame::OpCode::Text, &payload);
            let parsed = parse_frame(&frame).unwrap();
            assert_eq!(
                (parsed.fin, parsed.opcode, parsed.end - parsed.start),
                (true, 1, len)
            );
            assert_eq!(parse_frame(&frame[..frame.len() - 1]), None, "incomplete");
        }
    }

    #[test]
    fn client_frames_are_masked_and_readable() {
        let mut out = Vec::new();
        push_frame(&mut out, 1, b"hello");
        assert_eq!(&out[..2], &[0x81, 0x85]);
        assert_eq!(&out[6..], b"hello");
    }
}
