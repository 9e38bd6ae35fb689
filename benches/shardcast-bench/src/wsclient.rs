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
use shardcast_wire::header::{self, FrameHeader, HeaderError, OpCode};
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

/// What a browser offers for permessage-deflate.
const DEFLATE_OFFER: &str =
    "Sec-WebSocket-Extensions: permessage-deflate; client_max_window_bits\r\n";

/// The upgrade's outcome: bytes read past the head (already WebSocket
/// data), and the extensions the server agreed to.
pub struct Upgraded {
    pub leftover: Vec<u8>,
    pub extensions: Option<String>,
}

/// Sends the upgrade request for `path` (offering permessage-deflate as a
/// browser does if `deflate`, and the subprotocol `protocol` if given) and
/// reads the response head.
pub async fn upgrade<S>(
    stream: &mut S,
    host: SocketAddr,
    path: &str,
    deflate: bool,
    protocol: Option<&str>,
) -> io::Result<Upgraded>
where
    S: AsyncRead + AsyncWrite + Unpin,
{
    let mut offer = String::from(if deflate { DEFLATE_OFFER } else { "" });
    if let Some(protocol) = protocol {
        offer.push_str(&format!("Sec-WebSocket-Protocol: {protocol}\r\n"));
    }
    let request = format!(
        "GET {path} HTTP/1.1\r\nHost: {host}\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n\
         Sec-WebSocket-Key: dGhlIHNhbXBsZSBub25jZQ==\r\nSec-WebSocket-Version: 13\r\n{offer}\r\n"
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
            let leftover = head.split_off(end + 4);
            let extensions = String::from_utf8_lossy(&head).lines().find_map(|line| {
                let (name, value) = line.split_once(':')?;
                name.eq_ignore_ascii_case("sec-websocket-extensions")
                    .then(|| value.trim().to_owned())
            });
            return Ok(Upgraded {
                leftover,
                extensions,
            });
        }
        if head.len() > 8192 {
            return Err(io::Error::other("upgrade response too long"));
        }
    }
}

/// Appends a client frame (final, masked with a zero key: a load generator
/// has no cache to poison) to `out`.
pub fn push_frame(out: &mut Vec<u8>, opcode: OpCode, payload: &[u8]) {
    let header = FrameHeader::client(opcode, true, payload.len(), [0; 4]);
    shardcast_wire::encode::push_frame(out, header, payload);
}

/// One complete frame at the start of a buffer.
#[derive(Debug, PartialEq, Eq)]
pub struct FrameRef {
    pub fin: bool,
    /// RSV1: the first frame of a compressed message.
    pub compressed: bool,
    pub opcode: OpCode,
    /// Payload range within the buffer.
    pub start: usize,
    pub end: usize,
}

/// Parses the server frame at the start of `buf`; `Ok(None)` if
/// incomplete. Server frames are unmasked.
pub fn parse_frame(buf: &[u8]) -> Result<Option<FrameRef>, HeaderError> {
    let Some((header, start)) = header::parse(buf)? else {
        return Ok(None);
    };
    let end = usize::try_from(header.payload_len)
        .ok()
        .and_then(|len| start.checked_add(len));
    Ok(end.filter(|end| buf.len() >= *end).map(|end| FrameRef {
        fin: header.fin,
        compressed: header.rsv1,
        opcode: header.opcode,
        start,
        end,
    }))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn frames_round_trip_through_the_servers_encoder() {
        for len in [0usize, 5, 125, 126, 65535, 65536] {
            let payload = vec![7u8; len];
            let frame = shardcast::frame::encode(shardcast::frame::OpCode::Text, &payload);
            let parsed = parse_frame(&frame).unwrap().unwrap();
            assert_eq!(
                (parsed.fin, parsed.opcode, parsed.end - parsed.start),
                (true, OpCode::Text, len)
            );
            assert!(!parsed.compressed);
            assert_eq!(
                parse_frame(&frame[..frame.len() - 1]),
                Ok(None),
                "incomplete"
            );
        }
    }

    #[test]
    fn client_frames_are_masked_and_readable() {
        let mut out = Vec::new();
        push_frame(&mut out, OpCode::Text, b"hello");
        assert_eq!(&out[..2], &[0x81, 0x85]);
        assert_eq!(&out[6..], b"hello");
    }
}
