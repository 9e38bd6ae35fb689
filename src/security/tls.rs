//! TLS for `wss://` and `https://`: loads the certificate chain and private
//! key (PEM) named by `--tls-cert`/`--tls-key` into a rustls server
//! configuration (ring provider, TLS 1.2 and 1.3, ALPN `http/1.1`). The
//! handshake itself runs in the connection task (futures-rustls over
//! glommio's stream).

use std::{path::Path, sync::Arc};

use rustls::ServerConfig;
use rustls_pki_types::{pem::PemObject, CertificateDer, PrivateKeyDer};

/// Why the certificate or key could not be used.
#[derive(Debug, thiserror::Error)]
pub enum TlsError {
    #[error("cannot read certificates from {path}: {reason}")]
    Certificates { path: String, reason: String },
    #[error("no certificate in {0}")]
    NoCertificate(String),
    #[error("cannot read a private key from {path}: {reason}")]
    Key { path: String, reason: String },
    #[error("the certificate and key do not make a TLS configuration: {0}")]
    Config(#[from] rustls::Error),
}

/// A rustls server configuration from PEM files.
pub(crate) fn server_config(cert: &Path, key: &Path) -> Result<Arc<ServerConfig>, TlsError> {
    let shown = |p: &Path| p.display().to_string();
    let chain = CertificateDer::pem_file_iter(cert)
        .and_then(|certs| certs.collect::<Result<Vec<_>, _>>())
        .map_err(|e| TlsError::Certificates {
            path: shown(cert),
            reason: e.to_string(),
        })?;
    if chain.is_empty() {
        return Err(TlsError::NoCertificate(shown(cert)));
    }
    let key = PrivateKeyDer::from_pem_file(key).map_err(|e| TlsError::Key {
        path: shown(key),
        reason: e.to_string(),
    })?;
    let provider = Arc::new(rustls::crypto::ring::default_provider());
    let mut config = ServerConfig::builder_with_provider(provider)
        .with_safe_default_protocol_versions()?
        .with_no_client_auth()
        .with_single_cert(chain, key)?;
    config.alpn_protocols = vec![b"http/1.1".to_vec()];
    Ok(Arc::new(config))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn loads_a_generated_certificate_and_refuses_bad_files() {
        let dir = std::env::temp_dir().join(format!("shardcast-tls-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let certified = rcgen::generate_simple_self_signed(vec!["localhost".into()]).unwrap();
        let (cert, key) = (dir.join("cert.pem"), dir.join("key.pem"));
        std::fs::write(&cert, certified.cert.pem()).unwrap();
        std::fs::write(&key, certified.signing_key.serialize_pem()).unwrap();
        server_config(&cert, &key).unwrap();
        assert!(matches!(
            server_config(&key, &key),
            Err(TlsError::NoCertificate(_))
        ));
        assert!(matches!(
            server_config(&cert, &cert),
            Err(TlsError::Key { .. })
        ));
        assert!(matches!(
            server_config(&dir.join("missing.pem"), &key),
            Err(TlsError::Certificates { .. })
        ));
    }
}
