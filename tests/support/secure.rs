//! Test support for the security rules: signing connection tokens (HS256,
//! RS256 from tests/fixtures, ES256 with a key made here), a TLS
//! certificate generated per test (rcgen), and clients that send headers,
//! speak TLS, or connect from a chosen source address.

use std::{
    io::{Read, Write},
    net::{IpAddr, SocketAddr, TcpStream},
    path::PathBuf,
    sync::Arc,
};

use jsonwebtoken::{Algorithm, EncodingKey, Header};
use rustls::pki_types::{CertificateDer, ServerName};
use serde_json::{json, Value};
use tungstenite::{client::IntoClientRequest, http::HeaderValue, stream::MaybeTlsStream};

use super::{parse_response, Client, Server, DEADLINE};

/// The HS256 secret tests start servers with (`--jwt-secret`).
pub const SECRET: &str = "a-test-secret-that-is-long-enough-for-hs256";

pub fn unix_now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_secs()
}

/// Claims for `user`, expiring `ttl` seconds from now (negative: already
/// expired), with subscribe and publish patterns.
pub fn claims(user: &str, ttl: i64, subscribe: &[&str], publish: &[&str]) -> Value {
    json!({
        "sub": user,
        "exp": unix_now() as i64 + ttl,
        "channels": {"sub": subscribe, "pub": publish},
    })
}

pub fn sign(alg: Algorithm, key: &EncodingKey, claims: &Value) -> String {
    jsonwebtoken::encode(&Header::new(alg), claims, key).expect("sign token")
}

/// A token signed with [`SECRET`].
pub fn hs256(claims: &Value) -> String {
    sign(
        Algorithm::HS256,
        &EncodingKey::from_secret(SECRET.as_bytes()),
        claims,
    )
}

pub fn fixture(name: &str) -> PathBuf {
    PathBuf::from(env!("CARGO_MANIFEST_DIR"))
        .join("tests/fixtures")
        .join(name)
}

/// Upgrades `path` with extra request headers; the refusal's status and
/// body if the server refuses.
pub fn connect_with(
    server: &Server,
    path: &str,
    headers: &[(&str, &str)],
) -> Result<Client, (u16, String)> {
    let mut request = server.url(path).into_client_request().expect("request");
    for (name, value) in headers {
        request.headers_mut().insert(
            tungstenite::http::HeaderName::from_bytes(name.as_bytes()).unwrap(),
            HeaderValue::from_str(value).unwrap(),
        );
    }
    match tungstenite::connect(request) {
        Ok((ws, _)) => {
            let client = Client { ws };
            client.set_timeout(Some(DEADLINE));
            Ok(client)
        }
        Err(tungstenite::Error::Http(response)) => {
            let body = response
                .body()
                .as_ref()
                .map(|b| String::from_utf8_lossy(b).into_owned())
                .unwrap_or_default();
            Err((response.status().as_u16(), body))
        }
        Err(e) => panic!("upgrade of {path} failed without an HTTP answer: {e}"),
    }
}

/// Upgrades `path` from source address `source` (127.0.0.x).
pub fn connect_from(source: IpAddr, server: &Server, path: &str) -> Result<Client, u16> {
    let socket = socket2::Socket::new(socket2::Domain::IPV4, socket2::Type::STREAM, None).unwrap();
    socket
        .bind(&SocketAddr::new(source, 0).into())
        .expect("bind source address");
    socket.connect(&server.addr.into()).expect("connect");
    let stream: TcpStream = socket.into();
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    let request = server.url(path).into_client_request().unwrap();
    match tungstenite::client(request, MaybeTlsStream::Plain(stream)) {
        Ok((ws, _)) => Ok(Client { ws }),
        Err(tungstenite::HandshakeError::Failure(tungstenite::Error::Http(response))) => {
            Err(response.status().as_u16())
        }
        Err(e) => panic!("upgrade from {source} failed without an HTTP answer: {e}"),
    }
}

/// The API key tests start servers with (`--api-key`).
pub const API_KEY: &str = "a-test-api-key-0123456789abcdef";

/// A node of two shards that requires tokens (signed with [`SECRET`]) and
/// the API key ([`API_KEY`]), started with `extra` arguments too.
pub fn secured_server(extra: &[&str]) -> Server {
    let mut args = vec![
        "--shards",
        "2",
        "--jwt-secret",
        SECRET,
        "--api-key",
        API_KEY,
    ];
    args.extend_from_slice(extra);
    Server::start(&args)
}

/// A request with the API key; returns (status, body).
pub fn with_api_key(server: &Server, method: &str, path: &str, body: &str) -> (u16, String) {
    http_with(server, method, path, &[("X-API-Key", API_KEY)], body)
}

/// A raw HTTP/1.1 request with headers; returns (status, body).
pub fn http_with(
    server: &Server,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    http_to(server.addr, method, path, headers, body)
}

/// Like [`http_with`], to any address (the admin listener).
pub fn http_to(
    addr: SocketAddr,
    method: &str,
    path: &str,
    headers: &[(&str, &str)],
    body: &str,
) -> (u16, String) {
    let mut stream = TcpStream::connect(addr).expect("connect");
    stream.set_read_timeout(Some(DEADLINE)).unwrap();
    stream
        .write_all(request_text(method, path, headers, body).as_bytes())
        .unwrap();
    let mut response = String::new();
    stream.read_to_string(&mut response).expect("response");
    parse_response(&response)
}

fn request_text(method: &str, path: &str, headers: &[(&str, &str)], body: &str) -> String {
    let mut text = format!(
        "{method} {path} HTTP/1.1\r\nHost: test\r\nConnection: close\r\nContent-Length: {}\r\n",
        body.len()
    );
    for (name, value) in headers {
        text.push_str(&format!("{name}: {value}\r\n"));
    }
    text.push_str("\r\n");
    text.push_str(body);
    text
}

/// A self-signed certificate for `localhost` and 127.0.0.1, written to a
/// fresh directory for `--tls-cert`/`--tls-key`.
pub struct TestCert {
    pub cert: PathBuf,
    pub key: PathBuf,
    pub der: CertificateDer<'static>,
    key_der: Vec<u8>,
}

impl TestCert {
    pub fn generate(tag: &str) -> TestCert {
        let certified =
            rcgen::generate_simple_self_signed(vec!["localhost".into(), "127.0.0.1".into()])
                .expect("generate certificate");
        TestCert::write(tag, certified)
    }

    /// Like [`TestCert::generate`], marked as a CA (basicConstraints
    /// CA:TRUE), as `openssl req -x509` makes one by default.
    pub fn generate_ca(tag: &str) -> TestCert {
        let mut params =
            rcgen::CertificateParams::new(vec!["localhost".into(), "127.0.0.1".into()])
                .expect("certificate parameters");
        params.is_ca = rcgen::IsCa::Ca(rcgen::BasicConstraints::Unconstrained);
        let signing_key = rcgen::KeyPair::generate().expect("key");
        let cert = params.self_signed(&signing_key).expect("self-sign");
        TestCert::write(tag, rcgen::CertifiedKey { cert, signing_key })
    }

    fn write(tag: &str, certified: rcgen::CertifiedKey<rcgen::KeyPair>) -> TestCert {
        let dir = std::env::temp_dir().join(format!("shardcast-{tag}-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, certified.cert.pem()).unwrap();
        std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
        TestCert {
            cert,
            key,
            der: certified.cert.der().clone(),
            key_der: certified.signing_key.serialize_der(),
        }
    }

    /// A server configuration presenting this certificate (for receivers
    /// the tests run, such as an https webhook receiver).
    pub fn server_config(&self) -> Arc<rustls::ServerConfig> {
        let key = rustls::pki_types::PrivateKeyDer::Pkcs8(self.key_der.clone().into());
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Arc::new(
            rustls::ServerConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(vec![self.der.clone()], key)
                .expect("server certificate"),
        )
    }

    /// `--tls-cert C --tls-key K` as owned strings.
    pub fn args(&self) -> [String; 4] {
        [
            "--tls-cert".into(),
            self.cert.display().to_string(),
            "--tls-key".into(),
            self.key.display().to_string(),
        ]
    }

    /// A client configuration that trusts only this certificate.
    pub fn client_config(&self) -> Arc<rustls::ClientConfig> {
        let mut roots = rustls::RootCertStore::empty();
        roots.add(self.der.clone()).expect("trust test certificate");
        let provider = Arc::new(rustls::crypto::ring::default_provider());
        Arc::new(
            rustls::ClientConfig::builder_with_provider(provider)
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_root_certificates(roots)
                .with_no_client_auth(),
        )
    }
}

/// A TLS stream to the server, verified with `config` for `localhost`.
pub fn tls_stream(
    server: &Server,
    config: Arc<rustls::ClientConfig>,
) -> rustls::StreamOwned<rustls::ClientConnection, TcpStream> {
    let tcp = TcpStream::connect(server.addr).expect("connect");
    tcp.set_read_timeout(Some(DEADLINE)).unwrap();
    let name = ServerName::try_from("localhost").unwrap();
    let conn = rustls::ClientConnection::new(config, name).expect("client connection");
    rustls::StreamOwned::new(conn, tcp)
}

/// `wss://localhost:port/path`, trusting `config`'s roots.
pub fn connect_tls(
    server: &Server,
    path: &str,
    config: Arc<rustls::ClientConfig>,
) -> Result<Client, tungstenite::Error> {
    let url = format!("wss://localhost:{}{path}", server.addr.port());
    let tcp = TcpStream::connect(server.addr).expect("connect");
    tcp.set_read_timeout(Some(DEADLINE)).unwrap();
    let connector = tungstenite::Connector::Rustls(config);
    match tungstenite::client_tls_with_config(url, tcp, None, Some(connector)) {
        Ok((ws, _)) => Ok(Client { ws }),
        Err(tungstenite::HandshakeError::Failure(e)) => Err(e),
        Err(tungstenite::HandshakeError::Interrupted(_)) => {
            panic!("blocking handshake was interrupted")
        }
    }
}

/// An HTTPS request; returns (status, body).
pub fn https(
    server: &Server,
    config: Arc<rustls::ClientConfig>,
    method: &str,
    path: &str,
    body: &str,
) -> (u16, String) {
    let mut stream = tls_stream(server, config);
    stream
        .write_all(request_text(method, path, &[], body).as_bytes())
        .unwrap();
    let mut response = Vec::new();
    // A peer that closes without close_notify is an error to rustls; what
    // was read before it is the response.
    let _ = stream.read_to_end(&mut response);
    parse_response(&String::from_utf8_lossy(&response))
}
