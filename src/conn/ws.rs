//! A WebSocket session after the 101: registers the connection with its
//! shard, starts its writer task, subscribes what the URL asked for, then
//! reads frames (through tungstenite) and acts on them — JSON ops on `/ws`,
//! verbatim publication in raw rooms — until either side closes. Teardown
//! (unsubscribe, free the slot) runs from a guard, so it happens even if the
//! task is cancelled or panics.

use std::{rc::Rc, time::Duration};

use async_tungstenite::{
    tungstenite::{
        error::{CapacityError, ProtocolError},
        protocol::{Role, WebSocketConfig},
        Error as WsError, Message,
    },
    WebSocketStream,
};
use bytes::Bytes;
use futures_lite::{FutureExt, StreamExt};

use super::{
    http::Session,
    outbox::{run_writer, CloseReason},
    stream::{ReadSide, SharedStream},
    Conn,
};
use crate::{
    mesh::{Payload, Reply, Skip},
    protocol::{self, ClientOp, ErrorCode, OpError, PayloadKind},
    shard::{index::Mode, Shard},
};

/// tungstenite's read buffer per connection. Small on purpose: idle
/// connections dominate memory; larger frames grow it only while read.
const READ_BUFFER_BYTES: usize = 1024;
/// How long the writer may take to flush the close frame at teardown.
const CLOSE_FLUSH_TIMEOUT: Duration = Duration::from_secs(5);
/// After our close frame, how long to wait for the client's close reply.
const CLOSE_LINGER: Duration = Duration::from_secs(1);

/// Unregisters the connection when the session ends, however it ends.
struct Registration<'a> {
    shard: &'a Shard,
    conn: Rc<Conn>,
}

impl Drop for Registration<'_> {
    fn drop(&mut self) {
        if self.conn.outbox.closing().is_none() {
            self.conn.outbox.close(CloseReason::SocketError);
        }
        self.shard.unregister(&self.conn);
    }
}

enum Event {
    Frame(Option<Result<Message, WsError>>),
    Closing,
}

/// Runs one WebSocket session to its end. The connection slot was reserved.
pub async fn serve(shard: Rc<Shard>, stream: SharedStream, leftover: Vec<u8>, session: Session) {
    let conn = shard.register();
    let registration = Registration {
        shard: &shard,
        conn: conn.clone(),
    };
    let writer = glommio::spawn_local(run_writer(conn.outbox.clone(), stream.clone()));

    let (room, echo) = match &session {
        Session::Json { subscribe } => {
            for name in subscribe {
                if let Err(error) = shard.subscribe(&conn, name, Mode::Json, None) {
                    conn.send(protocol::encode_err(&error));
                }
            }
            (None, true)
        }
        Session::Room { channel, echo } => {
            if let Err(error) = shard.subscribe(&conn, channel, Mode::Raw, None) {
                conn.send(protocol::encode_err(&error));
            }
            (Some(Bytes::copy_from_slice(channel.as_bytes())), *echo)
        }
    };

    let config = WebSocketConfig::default()
        .read_buffer_size(READ_BUFFER_BYTES)
        .write_buffer_size(0)
        .max_message_size(Some(shard.config.max_message_bytes))
        .max_frame_size(Some(shard.config.max_message_bytes));
    let side = ReadSide::new(stream.clone(), conn.outbox.clone());
    let mut ws =
        WebSocketStream::from_partially_read(side, leftover, Role::Server, Some(config)).await;

    let skip = (!echo).then_some(Skip {
        shard: shard.id as u16,
        conn: conn.id,
    });
    loop {
        let event = async { Event::Frame(ws.next().await) }
            .or(async {
                conn.outbox.closed().await;
                Event::Closing
            })
            .await;
        let message = match event {
            Event::Closing => break,
            Event::Frame(None) => {
                conn.outbox.close(CloseReason::Normal);
                break;
            }
            Event::Frame(Some(Err(error))) => {
                conn.outbox.close(close_reason(&error));
                break;
            }
            Event::Frame(Some(Ok(message))) => message,
        };
        conn.heartbeat.seen(shard.now_ms());
        match message {
            Message::Text(text) => match &room {
                Some(channel) => {
                    let payload = Payload {
                        kind: PayloadKind::Text,
                        bytes: Bytes::from(text),
                    };
                    publish(&shard, channel.clone(), payload, skip, Reply::None).await;
                }
                None => handle_op(&shard, &conn, Bytes::from(text)).await,
            },
            Message::Binary(bytes) => match &room {
                Some(channel) => {
                    let payload = Payload {
                        kind: PayloadKind::Binary,
                        bytes,
                    };
                    publish(&shard, channel.clone(), payload, skip, Reply::None).await;
                }
                None => conn.send(protocol::encode_err(&OpError::new(
                    ErrorCode::BadJson,
                    "binary frames are not part of the JSON protocol; use a raw room (/ws/<channel>)",
                    None,
                ))),
            },
            Message::Close(frame) => {
                conn.outbox.close_in_reply(frame.map(|f| u16::from(f.code)));
                break;
            }
            // tungstenite queues the pong itself (through the outbox).
            Message::Ping(_) | Message::Pong(_) | Message::Frame(_) => {}
        }
    }

    // Stop deliveries first, then let the writer flush what is queued and
    // the close frame.
    shard.unregister_subscriptions(&conn);
    let flushed = glommio::timer::timeout(CLOSE_FLUSH_TIMEOUT, async {
        writer.await;
        Ok(())
    })
    .await
    .is_ok();
    let server_closed = conn
        .outbox
        .closing()
        .is_some_and(|r| r != CloseReason::Normal);
    if flushed && server_closed {
        // Give the client a moment to answer our close before the socket
        // goes, so it sees a clean close rather than a reset.
        let _ = glommio::timer::timeout(CLOSE_LINGER, async {
            while let Some(Ok(_)) = ws.next().await {}
            Ok(())
        })
        .await;
    }
    stream.shutdown_write();
    drop(registration);
}

/// Maps a read error to how the connection closes.
fn close_reason(error: &WsError) -> CloseReason {
    match error {
        WsError::Capacity(CapacityError::MessageTooLong { .. }) => CloseReason::TooLarge,
        WsError::Capacity(_) => CloseReason::TooLarge,
        WsError::Utf8(_) => CloseReason::BadUtf8,
        WsError::Protocol(ProtocolError::ResetWithoutClosingHandshake) => CloseReason::SocketError,
        WsError::Protocol(_) => CloseReason::Protocol,
        WsError::ConnectionClosed | WsError::AlreadyClosed => CloseReason::Normal,
        _ => CloseReason::SocketError,
    }
}

/// Publishes, first waiting if the queue to the channel's owner is long.
async fn publish(shard: &Shard, ch: Bytes, payload: Payload, skip: Option<Skip>, reply: Reply) {
    if shard.is_shutting_down() {
        return;
    }
    let owner = shard.owner_of(&ch);
    if owner != shard.id {
        shard.links.wait_for_room(owner).await;
    }
    shard.publish(ch, payload, skip, reply);
}

/// Executes one JSON-protocol text frame.
async fn handle_op(shard: &Shard, conn: &Rc<Conn>, frame: Bytes) {
    // tungstenite checked that text frames are UTF-8.
    let Ok(text) = std::str::from_utf8(&frame) else {
        return;
    };
    let op = match protocol::parse_client_op(text) {
        Ok(op) => op,
        Err(error) => return conn.send(protocol::encode_err(&error)),
    };
    let result = match op {
        ClientOp::Sub { ch, id } => shard.subscribe(conn, &ch, Mode::Json, id),
        ClientOp::Unsub { ch, id } => shard.unsubscribe(conn, &ch, id),
        ClientOp::Ping { id } => {
            conn.send(protocol::encode_pong(id));
            Ok(())
        }
        ClientOp::Pub { ch, data, id } => {
            if shard.is_shutting_down() {
                Err(OpError::new(
                    ErrorCode::ShuttingDown,
                    "server is shutting down",
                    id,
                ))
            } else {
                // Both are slices of the frame: no copy of the payload.
                let ch = match ch {
                    std::borrow::Cow::Borrowed(name) => frame.slice_ref(name.as_bytes()),
                    std::borrow::Cow::Owned(name) => Bytes::from(name.into_bytes()),
                };
                let payload = Payload {
                    kind: PayloadKind::Json,
                    bytes: frame.slice_ref(data.as_bytes()),
                };
                let reply = match id {
                    Some(id) => Reply::Ack {
                        conn: conn.id,
                        id: frame.slice_ref(id.as_bytes()),
                    },
                    None => Reply::None,
                };
                publish(shard, ch, payload, None, reply).await;
                Ok(())
            }
        }
    };
    if let Err(error) = result {
        conn.send(protocol::encode_err(&error));
    }
}
