//! TLS for client connections (`wss://`: `shardcast sub`/`pub` and the
//! load generator): the rustls client configuration, which trusts exactly
//! the CA or self-signed certificate given with `--tls-ca` and names the
//! server as the URL or `--tls-server-name` says, and the handshake over a
//! glommio `TcpStream`. The crypto provider (ring) is passed explicitly,
//! never taken from a process-wide default. No socket I/O here beyond the
//! handshake. The generator's crate tests it with a server in memory.

use std::{io, path::Path, sync::Arc};

use futures_rustls::{client::TlsStream, TlsConnector};
use glommio::net::TcpStream;
use rustls::{ClientConfig, RootCertStore};
use rustls_pki_types::{pem::PemObject, CertificateDer, ServerName};

/// Why TLS could not be set up (before any connection is made).
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    /// The `--tls-ca` file could not be read.
    #[error("cannot read the CA file {path}: {source}")]
    Read { path: String, source: io::Error },
    /// The file is not PEM, or a certificate in it is malformed.
    #[error("the CA file is not valid PEM: {0}")]
    Pem(#[from] rustls_pki_types::pem::Error),
    /// The file holds no `CERTIFICATE` section.
    #[error("the CA file holds no certificate")]
    NoCertificate,
    /// rustls refused a certificate as a trust anchor.
    #[error("cannot trust the certificate: {0}")]
    Root(rustls::Error),
    /// Protocol versions the provider cannot offer (not expected with ring).
    #[error("TLS configuration: {0}")]
    Config(rustls::Error),
    /// `--tls-server-name` is neither a DNS name nor an IP address.
    #[error("invalid TLS server name {0:?}")]
    ServerName(String),
}

/// A client configuration trusting every certificate in `ca_pem` (PEM), with
/// the ring provider and rustls' safe default protocol versions.
pub fn client_config(ca_pem: &[u8]) -> Result<ClientConfig, TlsError> {
    let mut roots = RootCertStore::empty();
    for cert in CertificateDer::pem_slice_iter(ca_pem) {
        roots.add(cert?).map_err(TlsError::Root)?;
    }
    if roots.is_empty() {
        return Err(TlsError::NoCertificate);
    }
    config_trusting(roots)
}

/// A client configuration trusting the web's roots (Mozilla's, bundled by
/// `webpki-roots`): for servers with public certificates.
pub fn web_roots_config() -> Result<ClientConfig, TlsError> {
    let roots = RootCertStore {
        roots: webpki_roots::TLS_SERVER_ROOTS.to_vec(),
    };
    config_trusting(roots)
}

fn config_trusting(roots: RootCertStore) -> Result<ClientConfig, TlsError> {
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    Ok(ClientConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()
        .map_err(TlsError::Config)?
        .with_root_certificates(roots)
        .with_no_client_auth())
}

/// Parses the name the server's certificate must carry (DNS name or IP).
pub fn server_name(name: &str) -> Result<ServerName<'static>, TlsError> {
    ServerName::try_from(name.to_owned()).map_err(|_| TlsError::ServerName(name.to_owned()))
}

/// What every TLS connection of a run shares: the configuration (one, so
/// sessions can be resumed) and the server name to send and verify.
#[derive(Clone)]
pub struct Tls {
    connector: TlsConnector,
    name: ServerName<'static>,
}

impl Tls {
    /// Reads the CA from `ca_path`; the server must present a certificate
    /// for `name`.
    pub fn new(ca_path: &Path, name: &str) -> Result<Tls, TlsError> {
        let pem = std::fs::read(ca_path).map_err(|source| TlsError::Read {
            path: ca_path.display().to_string(),
            source,
        })?;
        Tls::with_config(client_config(&pem)?, name)
    }

    /// Connections made with `config` to a server that must present a
    /// certificate for `name`.
    pub fn with_config(config: ClientConfig, name: &str) -> Result<Tls, TlsError> {
        Ok(Tls {
            connector: TlsConnector::from(Arc::new(config)),
            name: server_name(name)?,
        })
    }

    /// Performs the TLS handshake on a (possibly still connecting) socket.
    pub async fn connect(&self, tcp: TcpStream) -> io::Result<TlsStream<TcpStream>> {
        self.connector.connect(self.name.clone(), tcp).await
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_file_without_certificates_is_an_error() {
        assert!(matches!(
            client_config(b"not pem at all"),
            Err(TlsError::NoCertificate)
        ));
        assert!(matches!(
            server_name("not a name!"),
            Err(TlsError::ServerName(_))
        ));
        let missing = Path::new("/nonexistent/ca.pem");
        assert!(matches!(
            Tls::new(missing, "localhost"),
            Err(TlsError::Read { .. })
        ));
    }
}
