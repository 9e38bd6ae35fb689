//! Who may connect, subscribe and publish: connection tokens (HS256,
//! RS256, ES256) at upgrade and in an `auth` frame, channel permissions,
//! expiry and refresh, anonymous mode, the API key and the admin listener.
//! Each rule is shown refusing what it must and allowing what it should.

mod support;

use jsonwebtoken::{Algorithm, EncodingKey};
use serde_json::json;
use support::{
    secure::{self, claims, connect_with, hs256, http_to, http_with, SECRET},
    Client, Server,
};

fn server_with_tokens(extra: &[&str]) -> Server {
    let mut args = vec!["--shards", "2", "--jwt-secret", SECRET];
    args.extend_from_slice(extra);
    Server::start(&args)
}

fn token_for(subscribe: &[&str], publish: &[&str]) -> String {
    hs256(&claims("42", 600, subscribe, publish))
}

#[test]
fn upgrades_need_a_valid_token_for_the_channels_they_name() {
    let server = server_with_tokens(&[]);
    let news = token_for(&["news"], &[]);

    // No token, or a bad one: 401 with the reason.
    let (status, body) = connect_with(&server, "/ws?sub=news", &[]).err().unwrap();
    assert_eq!(status, 401, "{body}");
    assert!(body.contains("token is required"), "{body}");
    let expired = hs256(&claims("42", -10, &["news"], &[]));
    let (status, body) = connect_with(&server, &format!("/ws?sub=news&token={expired}"), &[])
        .err()
        .unwrap();
    assert_eq!((status, body.contains("expired")), (401, true), "{body}");
    let forged = secure::sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(b"another-secret-of-enough-length-0123456789"),
        &claims("42", 600, &["news"], &[]),
    );
    let (status, body) = connect_with(&server, &format!("/ws?sub=news&token={forged}"), &[])
        .err()
        .unwrap();
    assert_eq!((status, body.contains("signature")), (401, true), "{body}");
    let (status, _) = connect_with(&server, "/ws?sub=news&token=garbage", &[])
        .err()
        .unwrap();
    assert_eq!(status, 401);
    // Raw rooms have no auth frame: they need the token at upgrade.
    let (status, _) = connect_with(&server, "/ws/news", &[]).err().unwrap();
    assert_eq!(status, 401);

    // A valid token, but for other channels: 403.
    let (status, body) = connect_with(&server, &format!("/ws?sub=sport&token={news}"), &[])
        .err()
        .unwrap();
    assert_eq!((status, body.contains("sport")), (403, true), "{body}");
    let (status, _) = connect_with(&server, &format!("/ws/sport?token={news}"), &[])
        .err()
        .unwrap();
    assert_eq!(status, 403);

    // Allowed: ?token= and Authorization: Bearer; both receive.
    let mut by_query = connect_with(&server, &format!("/ws?sub=news&token={news}"), &[]).unwrap();
    let bearer = format!("Bearer {news}");
    let mut by_header =
        connect_with(&server, "/ws?sub=news", &[("Authorization", &bearer)]).unwrap();
    let mut in_room = connect_with(&server, &format!("/ws/news?token={news}"), &[]).unwrap();
    support::wait_for_subscriptions(&server, 3);
    support::publish(&server, "news", json!("hello"));
    assert_eq!(by_query.recv_json()["data"], "hello");
    assert_eq!(by_header.recv_json()["data"], "hello");
    assert_eq!(in_room.recv(), tungstenite::Message::text("\"hello\""));

    let stats = support::get_json(&server, "/api/stats");
    assert!(
        stats["total"]["auth_failures"].as_u64().unwrap() >= 5,
        "{stats}"
    );
}

#[test]
fn the_first_frame_may_authenticate_within_the_deadline() {
    let server = server_with_tokens(&["--auth-timeout", "1s"]);

    // auth, then the token's permissions apply.
    let mut client = Client::connect(&server, "/ws");
    client.send_json(json!({"op":"auth","token":token_for(&["news"], &[]),"id":1}));
    assert_eq!(client.recv_json(), json!({"op":"ack","id":1}));
    client.subscribe("news");
    client.send_json(json!({"op":"sub","ch":"sport","id":2}));
    let err = client.recv_json();
    assert_eq!(
        (err["code"].as_str(), &err["id"]),
        (Some("forbidden"), &json!(2))
    );

    // Anything else first: err unauthorized, then 4001.
    let mut eager = Client::connect(&server, "/ws");
    eager.send_json(json!({"op":"sub","ch":"news","id":7}));
    let err = eager.recv_json();
    assert_eq!(
        (err["code"].as_str(), &err["id"]),
        (Some("unauthorized"), &json!(7))
    );
    assert_eq!(eager.expect_close().0, 4001);

    // A forged token in the auth frame: err with the reason, then 4001.
    let mut forger = Client::connect(&server, "/ws");
    let forged = secure::sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(b"another-secret-of-enough-length-0123456789"),
        &claims("42", 600, &["news"], &[]),
    );
    forger.send_json(json!({"op":"auth","token":forged,"id":"a"}));
    let err = forger.recv_json();
    assert_eq!(err["code"], "unauthorized");
    assert!(err["msg"].as_str().unwrap().contains("signature"), "{err}");
    let (code, reason, _) = forger.expect_close();
    assert_eq!((code, reason.as_str()), (4001, "unauthorized"));

    // An expired one closes with "token expired".
    let mut late = Client::connect(&server, "/ws");
    late.send_json(json!({"op":"auth","token":hs256(&claims("42", -1, &["news"], &[]))}));
    assert_eq!(late.recv_json()["code"], "unauthorized");
    assert_eq!(late.expect_close(), (4001, "token expired".into(), 0));

    // Garbage or a binary frame before auth: the same.
    let mut garbage = Client::connect(&server, "/ws");
    garbage.send_text("not json");
    assert_eq!(garbage.recv_json()["code"], "unauthorized");
    assert_eq!(garbage.expect_close().0, 4001);
    let mut binary = Client::connect(&server, "/ws");
    binary.send_binary(&[1, 2, 3]);
    assert_eq!(binary.recv_json()["code"], "unauthorized");
    assert_eq!(binary.expect_close().0, 4001);

    // Silence: closed when the deadline passes.
    let mut silent = Client::connect(&server, "/ws");
    let (code, reason, _) = silent.expect_close();
    assert_eq!((code, reason.as_str()), (4001, "authentication timed out"));

    // The authenticated client is still served.
    client.send_json(json!({"op":"ping","id":3}));
    assert_eq!(client.recv_json(), json!({"op":"pong","id":3}));
}

#[test]
fn permissions_decide_what_is_subscribed_and_published() {
    let server = server_with_tokens(&[]);
    let reader = token_for(&["news", "user.42.*", "chat.>"], &[]);
    let writer = token_for(&["chat.>"], &["chat.>"]);
    let mut subscriber = connect_with(&server, &format!("/ws?token={reader}"), &[]).unwrap();
    subscriber.subscribe("news");
    subscriber.subscribe("user.42.inbox");
    subscriber.subscribe("chat.lobby");
    for forbidden in ["user.43.inbox", "user.42", "sport"] {
        subscriber.send_json(json!({"op":"sub","ch":forbidden,"id":forbidden}));
        let err = subscriber.recv_json();
        assert_eq!(err["code"], "forbidden", "{forbidden}: {err}");
    }

    let mut publisher = connect_with(&server, &format!("/ws?token={writer}"), &[]).unwrap();
    // Outside the publish patterns: err forbidden and nothing delivered.
    publisher.send_json(json!({"op":"pub","ch":"news","data":"not yours","id":1}));
    let err = publisher.recv_json();
    assert_eq!(
        (err["code"].as_str(), &err["id"]),
        (Some("forbidden"), &json!(1))
    );
    // The reader may not publish at all.
    subscriber.send_json(json!({"op":"pub","ch":"chat.lobby","data":"x","id":9}));
    assert_eq!(subscriber.recv_json()["code"], "forbidden");
    // Allowed: acked and delivered. It is the first thing the subscriber
    // receives, so the refused publications were not delivered.
    publisher.send_json(json!({"op":"pub","ch":"chat.lobby","data":"hi","id":2}));
    assert_eq!(publisher.recv_json()["op"], "ack");
    let msg = subscriber.recv_json();
    assert_eq!(
        (msg["ch"].as_str(), &msg["data"]),
        (Some("chat.lobby"), &json!("hi"))
    );

    // A raw-room member without publish permission is closed when it sends.
    let mut room = connect_with(&server, &format!("/ws/chat.lobby?token={reader}"), &[]).unwrap();
    room.send_text("\"sneaky\"");
    let (code, reason, _) = room.expect_close();
    assert_eq!(
        (code, reason.as_str()),
        (1008, "not allowed to publish here")
    );
    publisher.send_json(json!({"op":"pub","ch":"chat.lobby","data":"after","id":3}));
    assert_eq!(publisher.recv_json()["op"], "ack");
    assert_eq!(
        subscriber.recv_json()["data"],
        "after",
        "sneaky was not delivered"
    );
}

#[test]
fn an_expiring_token_closes_the_connection_unless_refreshed() {
    let server = server_with_tokens(&["--ping-interval", "200ms"]);
    let short = hs256(&claims("42", 2, &["news", "sport"], &[]));
    let mut lapsing = connect_with(&server, &format!("/ws?sub=news&token={short}"), &[]).unwrap();
    let mut refreshing = connect_with(&server, &format!("/ws?token={short}"), &[]).unwrap();
    refreshing.subscribe("news");
    refreshing.subscribe("sport");

    // A refresh must be for the same user.
    let mut impostor = connect_with(&server, &format!("/ws?token={short}"), &[]).unwrap();
    impostor
        .send_json(json!({"op":"auth","token":hs256(&claims("43", 600, &["news"], &[])),"id":1}));
    assert_eq!(impostor.recv_json()["code"], "unauthorized");
    assert_eq!(impostor.expect_close().0, 4001);

    // Refresh with a longer token that no longer allows "sport".
    let long = hs256(&claims("42", 600, &["news"], &[]));
    refreshing.send_json(json!({"op":"auth","token":long,"id":"r"}));
    let ended = refreshing.recv_json();
    assert_eq!(ended["code"], "forbidden", "{ended}");
    assert!(ended["msg"].as_str().unwrap().contains("sport"), "{ended}");
    assert_eq!(refreshing.recv_json(), json!({"op":"ack","id":"r"}));

    // The other one is closed once its token expires.
    let (code, reason, _) = lapsing.expect_close();
    assert_eq!((code, reason.as_str()), (4001, "token expired"));

    // The refreshed one outlives the first token and still receives news.
    support::publish(&server, "sport", json!("gone"));
    support::publish(&server, "news", json!("still here"));
    assert_eq!(refreshing.recv_json()["data"], "still here");
    support::wait_until("the expired connection counted", || {
        support::get_json(&server, "/api/stats")["total"]["closed"]["token_expired"] == 1
    });
}

#[test]
fn rs256_and_es256_tokens_verify_with_a_public_key() {
    // RS256 with the fixture key pair.
    let public = secure::fixture("rsa_public.pem");
    let server = Server::start(&["--jwt-public-key", public.to_str().unwrap()]);
    let private = std::fs::read(secure::fixture("rsa_private.pem")).unwrap();
    let rsa = EncodingKey::from_rsa_pem(&private).unwrap();
    let token = secure::sign(Algorithm::RS256, &rsa, &claims("7", 600, &["news"], &[]));
    connect_with(&server, &format!("/ws?sub=news&token={token}"), &[]).expect("RS256 accepted");
    // An HS256 token signed with the public key's text: no HMAC key is
    // configured, so it is refused (no algorithm confusion).
    let confused = secure::sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(&std::fs::read(&public).unwrap()),
        &claims("7", 600, &["news"], &[]),
    );
    let (status, body) = connect_with(&server, &format!("/ws?sub=news&token={confused}"), &[])
        .err()
        .unwrap();
    assert_eq!((status, body.contains("HS256")), (401, true), "{body}");

    // ES256 with a P-256 key made here.
    let pair = rcgen::KeyPair::generate().unwrap();
    let dir = std::env::temp_dir().join(format!("shardcast-es256-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let public = dir.join("ec_public.pem");
    std::fs::write(&public, pair.public_key_pem()).unwrap();
    let server = Server::start(&["--jwt-public-key", public.to_str().unwrap()]);
    let ec = EncodingKey::from_ec_pem(pair.serialize_pem().as_bytes()).unwrap();
    let token = secure::sign(Algorithm::ES256, &ec, &claims("7", 600, &["news"], &[]));
    connect_with(&server, &format!("/ws?sub=news&token={token}"), &[]).expect("ES256 accepted");
    let other = rcgen::KeyPair::generate().unwrap();
    let other = EncodingKey::from_ec_pem(other.serialize_pem().as_bytes()).unwrap();
    let forged = secure::sign(Algorithm::ES256, &other, &claims("7", 600, &["news"], &[]));
    let (status, _) = connect_with(&server, &format!("/ws?sub=news&token={forged}"), &[])
        .err()
        .unwrap();
    assert_eq!(status, 401);
}

#[test]
fn anonymous_mode_is_the_loud_default_and_excludes_keys() {
    let (server, logs) = Server::start_logged(&[], &[("RUST_LOG", "warn")]);
    let warned = logs
        .iter()
        .take(20)
        .any(|line| line.contains("ANONYMOUS MODE"));
    assert!(warned, "anonymous mode is logged at start");
    // Everything is allowed, the auth frame included.
    let mut client = Client::connect(&server, "/ws");
    client.send_json(json!({"op":"auth","token":"anything","id":1}));
    assert_eq!(client.recv_json(), json!({"op":"ack","id":1}));
    client.subscribe("news");

    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shardcast"))
        .args(["serve", "--anonymous", "--jwt-secret", SECRET])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("exclude each other"));
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_shardcast"))
        .args(["serve", "--jwt-secret", "short"])
        .output()
        .unwrap();
    assert!(!out.status.success());
    assert!(String::from_utf8_lossy(&out.stderr).contains("at least 32 bytes"));
}

#[test]
fn the_api_key_guards_http_publish_and_admin_routes() {
    const KEY: &str = "test-api-key-0123456789";
    let server = Server::start(&["--api-key", KEY]);
    let body = json!({"ch":"news","data":1}).to_string();
    let publish =
        |headers: &[(&str, &str)]| http_with(&server, "POST", "/api/publish", headers, &body).0;
    assert_eq!(publish(&[]), 401);
    assert_eq!(publish(&[("X-API-Key", "test-api-key-0123456780")]), 401);
    assert_eq!(publish(&[("Authorization", "Bearer nope")]), 401);
    assert_eq!(publish(&[("X-API-Key", KEY)]), 200);
    assert_eq!(publish(&[("Authorization", &format!("Bearer {KEY}"))]), 200);
    for path in ["/metrics", "/api/stats"] {
        assert_eq!(http_with(&server, "GET", path, &[], "").0, 401, "{path}");
        assert_eq!(
            http_with(&server, "GET", path, &[("X-API-Key", KEY)], "").0,
            200
        );
    }
    assert_eq!(http_with(&server, "GET", "/health", &[], "").0, 200);
    // A refused request's body is not read as the next request: the server
    // answers once and closes.
    let mut stream = std::net::TcpStream::connect(server.addr).unwrap();
    stream.set_read_timeout(Some(support::DEADLINE)).unwrap();
    let smuggled = "GET /health HTTP/1.1\r\nHost: x\r\n\r\n";
    let head = format!(
        "POST /api/publish HTTP/1.1\r\nHost: x\r\nContent-Length: {}\r\n\r\n",
        smuggled.len() + 10
    );
    std::io::Write::write_all(&mut stream, head.as_bytes()).unwrap();
    let mut first = [0u8; 12];
    std::io::Read::read_exact(&mut stream, &mut first).unwrap();
    assert_eq!(&first, b"HTTP/1.1 401");
    let _ = std::io::Write::write_all(&mut stream, smuggled.as_bytes());
    let mut rest = String::new();
    let _ = std::io::Read::read_to_string(&mut stream, &mut rest);
    assert!(!rest.contains("HTTP/1.1"), "a second response: {rest}");
    let (status, stats) = http_with(&server, "GET", "/api/stats", &[("X-API-Key", KEY)], "");
    assert_eq!(status, 200);
    let stats: serde_json::Value = serde_json::from_str(&stats).unwrap();
    assert_eq!(stats["total"]["auth_failures"], 6, "{stats}");
}

#[test]
fn the_admin_listener_takes_the_admin_routes() {
    let server = server_with_tokens(&[
        "--admin-listen",
        "127.0.0.1:0",
        "--allowed-origins",
        "https://app.example.com",
    ]);
    let admin = server.admin.expect("admin address printed");
    assert_eq!(http_with(&server, "GET", "/metrics", &[], "").0, 404);
    assert_eq!(http_with(&server, "GET", "/api/stats", &[], "").0, 404);
    assert_eq!(http_with(&server, "GET", "/", &[], "").0, 404);
    assert_eq!(http_with(&server, "GET", "/health", &[], "").0, 200);
    assert_eq!(http_to(admin, "GET", "/metrics", &[], "").0, 200);
    assert_eq!(http_to(admin, "GET", "/", &[], "").0, 200);
    let body = json!({"ch":"news","data":1}).to_string();
    assert_eq!(http_to(admin, "POST", "/api/publish", &[], &body).0, 404);
    // The dashboard's feed: $stats over /ws on the admin address, no token,
    // from the dashboard's own origin (not one of the allowed ones).
    let admin_ws = support::Server {
        addr: admin,
        admin: None,
        child: std::process::Command::new("true").spawn().unwrap(),
    };
    let origin = format!("http://{admin}");
    let mut feed = connect_with(&admin_ws, "/ws", &[("Origin", &origin)]).unwrap();
    feed.subscribe("$stats");
    let stats = feed.recv_json_skipping("none");
    assert_eq!(stats["ch"], "$stats", "{stats}");
    // It may only subscribe.
    feed.send_json(json!({"op":"pub","ch":"news","data":1,"id":"p"}));
    let err = feed.recv_json_skipping("$stats");
    assert_eq!(
        (err["code"].as_str(), &err["id"]),
        (Some("forbidden"), &json!("p"))
    );
    // The public address still wants a token for it.
    let (status, _) = connect_with(&server, "/ws?sub=$stats", &[]).err().unwrap();
    assert_eq!(status, 401);
}

/// Drain, disconnect and unsubscribe act on other people's connections:
/// without `--api-key` the public listener refuses them (403
/// `api_key_required`) while publishing stays open (anonymous mode); the
/// admin listener takes them.
#[test]
fn operator_routes_need_the_api_key_or_the_admin_listener() {
    let server = Server::start(&["--admin-listen", "127.0.0.1:0"]);
    let admin = server.admin.expect("admin address printed");
    let disconnect = json!({"user": "nobody"}).to_string();
    let unsubscribe = json!({"user": "nobody", "ch": "news"}).to_string();
    for (path, body) in [
        ("/api/disconnect", disconnect.as_str()),
        ("/api/unsubscribe", unsubscribe.as_str()),
        ("/api/drain", ""),
    ] {
        let (status, text) = http_with(&server, "POST", path, &[], body);
        assert_eq!(status, 403, "{path}: {text}");
        assert!(text.contains("api_key_required"), "{text}");
    }
    let publish = json!({"ch": "news", "data": 1}).to_string();
    assert_eq!(
        http_with(&server, "POST", "/api/publish", &[], &publish).0,
        200
    );
    assert_eq!(
        http_to(admin, "POST", "/api/disconnect", &[], &disconnect),
        (200, r#"{"disconnected":0}"#.to_string())
    );
}
