//! Who may connect, subscribe and publish, and how much: what the security
//! settings turn into, built once at start-up and shared read-only by the
//! shards (only the connection counters change, and they are atomics).
//!
//! - [`token`] verifies JWT connection tokens into a [`token::Grant`]
//!   (signatures checked with ring: [`ring_jwt`]);
//!   [`pattern`] matches the channel patterns grants carry.
//! - [`api_key`] guards HTTP publish and the admin routes.
//! - [`origin`] applies `--allowed-origins`.
//! - [`rate`] is the per-connection publish token bucket.
//! - [`ip_cap`] counts connections per client address, [`http_cap`] the
//!   connections not upgraded to WebSocket.
//! - [`tls`] builds the rustls configuration for `wss://`.
//! - [`settings`] declares the security settings this is loaded from.
//!
//! `docs/security.md` explains the model.

pub(crate) mod api_key;
pub(crate) mod http_cap;
pub(crate) mod ip_cap;
pub(crate) mod origin;
pub(crate) use shardcast_core::pattern;
pub(crate) mod rate;
pub mod ring_jwt;
pub(crate) mod settings;
pub(crate) mod tls;
pub(crate) mod token;

use std::{sync::Arc, time::Duration};

use futures_rustls::TlsAcceptor;

use self::{
    api_key::ApiKey,
    http_cap::HttpCap,
    ip_cap::IpCap,
    origin::OriginPolicy,
    rate::RateLimit,
    settings::SecuritySettings,
    tls::TlsError,
    token::{KeyError, Verifier},
};

/// The security settings, ready to use.
#[derive(Default)]
pub(crate) struct Security {
    /// `None`: anonymous mode, everything is allowed to everyone.
    pub verifier: Option<Verifier>,
    /// Time a `/ws` client may take to send its `auth` frame.
    pub auth_timeout: Duration,
    pub api_key: Option<ApiKey>,
    pub origins: OriginPolicy,
    pub publish_limit: Option<RateLimit>,
    /// `--subscribe-rate`, with a burst of `--max-subscriptions`.
    pub subscribe_limit: Option<RateLimit>,
    pub ip_cap: Option<Arc<IpCap>>,
    /// `None` (only in tests' `Security::default()`): no cap.
    pub http_cap: Option<Arc<HttpCap>>,
    /// Of `http_cap`'s connections, those per client address
    /// (`--max-http-connections-per-ip`).
    pub http_ip_cap: Option<Arc<IpCap>>,
    pub tls: Option<TlsAcceptor>,
}

impl std::fmt::Debug for Security {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Security")
            .field("verifier", &self.verifier)
            .field("api_key", &self.api_key.is_some())
            .field("origins", &self.origins)
            .field("publish_limit", &self.publish_limit)
            .field("subscribe_limit", &self.subscribe_limit)
            .field("ip_cap", &self.ip_cap)
            .field("http_cap", &self.http_cap)
            .field("http_ip_cap", &self.http_ip_cap)
            .field("tls", &self.tls.is_some())
            .finish()
    }
}

/// Why the security settings could not be loaded. Ends start-up.
#[derive(Debug, thiserror::Error)]
pub enum SecurityError {
    #[error(transparent)]
    Key(#[from] KeyError),
    #[error("cannot read jwt-public-key {path}: {source}")]
    ReadKey {
        path: String,
        source: std::io::Error,
    },
    #[error("api-key must be at least {} bytes", api_key::MIN_KEY_BYTES)]
    ShortApiKey,
    #[error(transparent)]
    Tls(#[from] TlsError),
}

impl Security {
    /// Loads keys and certificates named by `settings`. Subscriptions
    /// come in a burst of `max_subscriptions`; `seed` keys the per-IP
    /// counters' hashes.
    pub(crate) fn load(
        settings: &SecuritySettings,
        max_subscriptions: usize,
        seed: u64,
    ) -> Result<Self, SecurityError> {
        let public_key = match &settings.jwt_public_key {
            Some(path) => Some(
                std::fs::read(path).map_err(|source| SecurityError::ReadKey {
                    path: path.display().to_string(),
                    source,
                })?,
            ),
            None => None,
        };
        let verifier = if settings.jwt_secret.is_some() || public_key.is_some() {
            ring_jwt::install();
            Some(Verifier::new(
                settings.jwt_secret.as_deref(),
                public_key.as_deref(),
                settings.jwt_audience.clone(),
                settings.jwt_issuer.clone(),
            )?)
        } else {
            None
        };
        let api_key = match &settings.api_key {
            Some(key) => Some(ApiKey::new(key).ok_or(SecurityError::ShortApiKey)?),
            None => None,
        };
        let tls = match (&settings.tls_cert, &settings.tls_key) {
            (Some(cert), Some(key)) => Some(TlsAcceptor::from(tls::server_config(cert, key)?)),
            _ => None,
        };
        let limits = &settings.limits;
        Ok(Security {
            verifier,
            auth_timeout: settings.auth_timeout,
            api_key,
            origins: settings.allowed_origins.clone(),
            publish_limit: (limits.publish_rate > 0).then(|| RateLimit {
                per_second: limits.publish_rate,
                burst: limits.publish_burst.unwrap_or(limits.publish_rate),
            }),
            subscribe_limit: (limits.subscribe_rate > 0).then(|| RateLimit {
                per_second: limits.subscribe_rate,
                burst: u32::try_from(max_subscriptions)
                    .unwrap_or(u32::MAX)
                    .max(limits.subscribe_rate),
            }),
            ip_cap: (limits.max_connections_per_ip > 0)
                .then(|| IpCap::new(limits.max_connections_per_ip, seed)),
            http_cap: Some(HttpCap::new(limits.max_http_connections)),
            http_ip_cap: (limits.max_http_connections_per_ip > 0)
                .then(|| IpCap::new(limits.max_http_connections_per_ip, seed.rotate_left(32))),
            tls,
        })
    }

    pub(crate) fn is_anonymous(&self) -> bool {
        self.verifier.is_none()
    }
}
