//! Whole frames in one buffer: what a server sends (unmasked, RSV bits as
//! asked) and what a client sends (masked). The server's shared frames are
//! built with their header room reserved in front instead (`frame.rs` in
//! the server); both write the header with [`FrameHeader::write`].

use crate::header::{apply_mask, FrameHeader, OpCode, MAX_HEADER};

/// Appends a frame with `header` around `payload` (its length is taken
/// from `payload`); masked when the header has a key.
pub fn push_frame(out: &mut Vec<u8>, header: FrameHeader, payload: &[u8]) {
    let header = FrameHeader {
        payload_len: payload.len() as u64,
        ..header
    };
    let mut head = [0u8; MAX_HEADER];
    let n = header.write(&mut head);
    out.extend_from_slice(&head[..n]);
    let start = out.len();
    out.extend_from_slice(payload);
    // An all-zero key (a load generator's) changes nothing: skip the pass.
    if let Some(key) = header.mask.filter(|key| *key != [0; 4]) {
        apply_mask(&mut out[start..], key, 0);
    }
}

/// A client frame: masked with `mask`, final unless `more`.
pub fn client_frame(opcode: OpCode, payload: &[u8], more: bool, mask: [u8; 4]) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAX_HEADER + payload.len());
    push_frame(
        &mut out,
        FrameHeader::client(opcode, !more, payload.len(), mask),
        payload,
    );
    out
}

/// A server frame: final, unmasked.
pub fn server_frame(opcode: OpCode, payload: &[u8]) -> Vec<u8> {
    let mut out = Vec::with_capacity(MAX_HEADER + payload.len());
    push_frame(
        &mut out,
        FrameHeader::server(opcode, payload.len()),
        payload,
    );
    out
}
