//! Tests of the client TLS of `shardcast::tls_client` (which the generator
//! uses for `wss://`), with a server in memory, and the handshaken pair the
//! stream tests read and write through.

#[cfg(test)]
pub(crate) mod tests {
    use std::io::{Read, Write};

    use rustls::{ClientConnection, ServerConfig, ServerConnection};
    use rustls_pki_types::{PrivateKeyDer, PrivatePkcs8KeyDer};

    use std::{path::Path, sync::Arc};

    use shardcast::tls_client::{client_config, server_name, Tls, TlsError};

    /// A self-signed certificate for `localhost` and 127.0.0.1 (PEM) and a
    /// server configuration presenting it.
    pub(crate) fn self_signed() -> (String, Arc<ServerConfig>) {
        let key = rcgen::generate_simple_self_signed(vec![
            "localhost".to_owned(),
            "127.0.0.1".to_owned(),
        ])
        .expect("rcgen makes a certificate");
        let der = PrivateKeyDer::Pkcs8(PrivatePkcs8KeyDer::from(key.signing_key.serialize_der()));
        let server =
            ServerConfig::builder_with_provider(Arc::new(rustls::crypto::ring::default_provider()))
                .with_safe_default_protocol_versions()
                .unwrap()
                .with_no_client_auth()
                .with_single_cert(vec![key.cert.der().clone()], der)
                .unwrap();
        (key.cert.pem(), Arc::new(server))
    }

    /// Moves bytes both ways until neither side has anything to send.
    fn pump(client: &mut ClientConnection, server: &mut ServerConnection) {
        loop {
            let mut wire = Vec::new();
            client.write_tls(&mut wire).unwrap();
            let to_server = wire.len();
            let mut rd = &wire[..];
            while !rd.is_empty() {
                server.read_tls(&mut rd).unwrap();
                server.process_new_packets().unwrap();
            }
            wire.clear();
            server.write_tls(&mut wire).unwrap();
            let mut rd = &wire[..];
            while !rd.is_empty() {
                client.read_tls(&mut rd).unwrap();
                client.process_new_packets().unwrap();
            }
            if to_server == 0 && wire.is_empty() {
                return;
            }
        }
    }

    /// A client and a server connection that completed their handshake in
    /// memory.
    pub(crate) fn handshaken(name: &str) -> (ClientConnection, ServerConnection) {
        let (pem, server_config) = self_signed();
        let config = Arc::new(client_config(pem.as_bytes()).unwrap());
        let mut client = ClientConnection::new(config, server_name(name).unwrap()).unwrap();
        let mut server = ServerConnection::new(server_config).unwrap();
        pump(&mut client, &mut server);
        (client, server)
    }

    #[test]
    fn trusts_the_given_self_signed_certificate_by_name_and_ip() {
        for name in ["localhost", "127.0.0.1"] {
            let (mut client, mut server) = handshaken(name);
            assert!(!client.is_handshaking() && !server.is_handshaking());
            client.writer().write_all(b"hello").unwrap();
            pump(&mut client, &mut server);
            let mut got = [0u8; 5];
            server.reader().read_exact(&mut got).unwrap();
            assert_eq!(&got, b"hello");
        }
    }

    #[test]
    fn refuses_a_certificate_for_another_name() {
        let (pem, server_config) = self_signed();
        let config = Arc::new(client_config(pem.as_bytes()).unwrap());
        let mut client =
            ClientConnection::new(config, server_name("example.com").unwrap()).unwrap();
        let mut server = ServerConnection::new(server_config).unwrap();
        let mut wire = Vec::new();
        client.write_tls(&mut wire).unwrap();
        server.read_tls(&mut &wire[..]).unwrap();
        server.process_new_packets().unwrap();
        wire.clear();
        server.write_tls(&mut wire).unwrap();
        client.read_tls(&mut &wire[..]).unwrap();
        assert!(client.process_new_packets().is_err());
    }

    #[test]
    fn a_ca_file_without_certificates_is_an_error() {
        assert!(matches!(
            client_config(b"not pem at all"),
            Err(TlsError::NoCertificate)
        ));
        let key_only = "-----BEGIN PRIVATE KEY-----\nAAAA\n-----END PRIVATE KEY-----\n";
        assert!(matches!(
            client_config(key_only.as_bytes()),
            Err(TlsError::NoCertificate)
        ));
        assert!(matches!(
            server_name("not a name!"),
            Err(TlsError::ServerName(_))
        ));
    }

    #[test]
    fn new_reports_a_missing_file() {
        let missing = Path::new("/nonexistent/ca.pem");
        assert!(matches!(
            Tls::new(missing, "localhost"),
            Err(TlsError::Read { .. })
        ));
    }
}
