//! Entry points for fuzzing the parsers that read network input: the JSON
//! envelope (WebSocket ops and HTTP publish bodies) and HTTP request heads
//! with their routing. The `cargo fuzz` targets in `fuzz/` call these, and
//! `tests/fuzz_regressions.rs` replays every kept input through them, so a
//! fixed crash stays fixed. Each also checks properties, not just "no
//! panic": what the server encodes from a parsed op is valid JSON.

use crate::{
    conn::http::{self, Route},
    protocol::{self, ClientOp, PayloadKind},
};

/// Any bytes as a client's text frame or HTTP publish body.
pub fn client_op(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    match protocol::parse_client_op(text) {
        Ok(ClientOp::Pub { ch, data, id, .. }) => {
            let frame = protocol::encode_msg(&ch, 1, PayloadKind::Json, data.as_bytes());
            assert_valid_json(&frame);
            if let Some(id) = id {
                assert_valid_json(&protocol::encode_ack(id, Some(1)));
            }
        }
        Ok(ClientOp::Sub { id: Some(id), .. }) => {
            assert_valid_json(&protocol::encode_sub_ack(id, 1, "e-1", Some(true)));
        }
        Ok(_) => {}
        Err(error) => assert_valid_json(&protocol::encode_err(&error)),
    }
    if let Ok(publish) = protocol::parse_http_publish(text) {
        let frame =
            protocol::encode_msg(&publish.ch, 1, PayloadKind::Json, publish.data.as_bytes());
        assert_valid_json(&frame);
    }
}

/// Any bytes as the start of an HTTP request.
pub fn http_request(data: &[u8]) {
    match http::parse_head(data) {
        Ok(Some(head)) => {
            assert!(head.len <= data.len(), "head longer than the input");
            if let Ok(Route::WebSocket(http::Session::Json { subscribe, .. })) =
                http::route(&head, 8)
            {
                assert!(subscribe.len() <= 8);
            }
        }
        Ok(None) => {}
        Err(error) => {
            let response = http::error_response(&error, false);
            assert!(response.starts_with(b"HTTP/1.1 4") || response.starts_with(b"HTTP/1.1 5"));
        }
    }
    let _ = http::percent_decode(&String::from_utf8_lossy(data));
}

/// The payload of one unfragmented server frame must be well-formed JSON, by
/// the same grammar the server checks publications with. (A publication's
/// `data` is relayed verbatim, so a number like `8e8888887`, valid JSON that
/// some parsers cannot represent, is passed through as sent.)
fn assert_valid_json(frame: &[u8]) {
    let start = match frame[1] & 0x7f {
        126 => 4,
        127 => 10,
        _ => 2,
    };
    if let Err(e) = serde_json::from_slice::<Box<serde_json::value::RawValue>>(&frame[start..]) {
        panic!(
            "server encoded invalid JSON ({e}): {:?}",
            String::from_utf8_lossy(&frame[start..])
        );
    }
}
