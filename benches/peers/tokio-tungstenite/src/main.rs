//! Benchmark peer: WebSocket pub/sub broadcast server on tokio + tokio-tungstenite.
//! Usage: peer-tokio-tungstenite <port>   — /ws?sub=<channel>&pub=<channel>
use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use futures_util::{SinkExt, StreamExt};
use tokio::net::{TcpListener, TcpStream};
use tokio::signal::unix::{signal, SignalKind};
use tokio::sync::broadcast::{self, error::RecvError};
use tokio_tungstenite::tungstenite::handshake::server::{ErrorResponse, Request, Response};
use tokio_tungstenite::tungstenite::http::StatusCode;
use tokio_tungstenite::tungstenite::Message;

type Channels = Arc<Mutex<HashMap<String, broadcast::Sender<Message>>>>;

fn channel(channels: &Channels, name: &str) -> broadcast::Sender<Message> {
    let mut map = channels.lock().unwrap();
    map.entry(name.to_owned()).or_insert_with(|| broadcast::channel(1024).0).clone()
}

async fn recv_or_pending(rx: &mut Option<broadcast::Receiver<Message>>) -> Result<Message, RecvError> {
    match rx {
        Some(rx) => rx.recv().await,
        None => std::future::pending().await,
    }
}

async fn handle(stream: TcpStream, channels: Channels) {
    let _ = stream.set_nodelay(true);
    let (mut sub, mut publ) = (None, None);
    let callback = |req: &Request, resp: Response| -> Result<Response, ErrorResponse> {
        if req.uri().path() != "/ws" {
            let mut err = ErrorResponse::new(None);
            *err.status_mut() = StatusCode::NOT_FOUND;
            return Err(err);
        }
        for pair in req.uri().query().unwrap_or("").split('&') {
            match pair.split_once('=') {
                Some(("sub", v)) => sub = Some(v.to_owned()),
                Some(("pub", v)) => publ = Some(v.to_owned()),
                _ => {}
            }
        }
        Ok(resp)
    };
    let Ok(ws) = tokio_tungstenite::accept_hdr_async(stream, callback).await else { return };

    let mut rx = sub.map(|c| channel(&channels, &c).subscribe());
    let tx = publ.map(|c| channel(&channels, &c));
    let (mut sink, mut source) = ws.split();

    loop {
        tokio::select! {
            msg = source.next() => match msg {
                Some(Ok(msg @ (Message::Text(_) | Message::Binary(_)))) => {
                    if let Some(tx) = &tx {
                        let _ = tx.send(msg); // Err only means no subscribers right now
                    }
                }
                Some(Ok(Message::Close(_))) | Some(Err(_)) | None => break,
                Some(Ok(_)) => {} // ping/pong: tungstenite queues the pong itself
            },
            msg = recv_or_pending(&mut rx) => match msg {
                Ok(msg) => {
                    if sink.send(msg).await.is_err() {
                        break;
                    }
                }
                Err(RecvError::Lagged(_)) => continue,
                Err(RecvError::Closed) => break,
            },
        }
    }
}

#[tokio::main]
async fn main() -> std::io::Result<()> {
    let port: u16 = std::env::args().nth(1).expect("usage: peer-tokio-tungstenite <port>").parse().expect("bad port");
    let listener = TcpListener::bind(("127.0.0.1", port)).await?;
    println!("listening on {port}"); // stdout is line-buffered: the newline flushes it
    let channels = Channels::default();
    let (mut term, mut int) = (signal(SignalKind::terminate())?, signal(SignalKind::interrupt())?);
    loop {
        tokio::select! {
            conn = listener.accept() => {
                if let Ok((stream, _)) = conn {
                    tokio::spawn(handle(stream, channels.clone()));
                }
            }
            _ = term.recv() => break,
            _ = int.recv() => break,
        }
    }
    Ok(())
}
