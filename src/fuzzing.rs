//! Entry points for fuzzing the parsers that read network input: the JSON
//! envelope (WebSocket ops and HTTP publish bodies) and HTTP request heads
//! with their routing. The `cargo fuzz` targets in `fuzz/` call these, and
//! `tests/fuzz_regressions.rs` replays every kept input through them, so a
//! fixed crash stays fixed. Each also checks properties, not just "no
//! panic": what the server encodes from a parsed op is valid JSON; a delta
//! frame of any bytes is valid JSON whose string gives the bytes back; a
//! permessage-deflate answer, read as an offer, is agreed to the same way;
//! inflating any bytes never passes its limit.

use crate::{
    conn::{
        deflate::Inflater,
        extension,
        http::{self, Route},
        msgpack,
    },
    protocol::{self, ClientOp, PayloadKind},
};

/// Any bytes as a client's frame (text: a JSON op or HTTP publish body;
/// any: a delta, a compressed message, a MessagePack op).
pub fn client_op(data: &[u8]) {
    // Bytes, whatever they are: as a delta, as a compressed message, as a
    // MessagePack op.
    delta_frame(data);
    // Any bytes as a MessagePack op: what it becomes is JSON the op parser reads.
    match msgpack::parse_op(data) {
        Ok(msgpack::Op::Json(text)) | Ok(msgpack::Op::BinaryPub { op: text, .. }) => {
            assert!(serde_json::from_str::<serde_json::Value>(&text).is_ok());
            let _ = protocol::parse_client_op(&text);
        }
        Err(refused) => assert_valid_json(&protocol::encode_err(&refused.error())),
    }
    let limit = 1 << 16;
    if let Ok(inflated) = Inflater::default().inflate(data, limit) {
        assert!(inflated.len() <= limit, "inflated past the limit");
    }
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
            assert_valid_json(&protocol::encode_sub_ack(id, 1, "e-1", Some(true), true));
        }
        Ok(_) => {}
        Err(error) => assert_valid_json(&protocol::encode_err(&error)),
    }
    if let Ok(publish) = crate::api::parse_publish(text, usize::MAX) {
        for publication in &publish.publications {
            let frame = protocol::encode_msg(
                &publication.ch,
                1,
                PayloadKind::Json,
                publication.data.as_bytes(),
            );
            assert_valid_json(&frame);
        }
        let seqs: Vec<_> = (0..publish.publications.len() as u64).map(Ok).collect();
        let (_, body) = crate::api::publish_answer(publish.single, &seqs);
        serde_json::from_slice::<serde::de::IgnoredAny>(&body).expect("valid JSON");
    }
    for kick in [
        crate::api::parse_disconnect(text),
        crate::api::parse_unsubscribe(text),
    ] {
        if let Ok(crate::api::Kick::Disconnect { reason, .. }) = kick {
            assert!(reason.len() <= crate::api::MAX_CLOSE_REASON);
        }
    }
}

/// Any bytes as a delta: its frame is JSON, and the string decodes back.
fn delta_frame(delta: &[u8]) {
    let frame = protocol::encode_msg_delta("c", 2, delta);
    assert_valid_json(&frame);
    let envelope: serde_json::Value =
        serde_json::from_slice(crate::frame::payload_of(&frame)).expect("valid JSON");
    let back: Vec<u8> = envelope["data"]
        .as_str()
        .expect("a string")
        .chars()
        .map(|c| u8::try_from(u32::from(c)).expect("one byte per character"))
        .collect();
    assert_eq!(back, delta, "the delta string gives its bytes back");
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
            if let Some(agreed) = head.ws_extensions.as_deref().and_then(extension::negotiate) {
                assert!((8..=15).contains(&agreed.window_bits));
                let again = extension::negotiate(&agreed.response)
                    .expect("our answer is an offer we accept");
                assert_eq!(
                    again, agreed,
                    "the answer, read as an offer, agrees the same"
                );
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
