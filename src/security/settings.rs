//! The security section of the settings — tokens, the API key, origins,
//! TLS, and how much one client may do ([`ClientLimits`]) — declared here
//! (`settings::section!`) so that [`super::Security::load`] takes its own
//! section, not the whole `Config`. Channel patterns (`--conflate`,
//! `--presence`) and origins are parsed into their types here, once.

use std::{path::PathBuf, time::Duration};

use super::{
    origin::OriginPolicy,
    pattern::{ChannelPattern, PatternError},
};
use crate::{
    settings::{ensure, section, SettingValue, Shown},
    units::HumanDuration,
};

section! {
    /// Who may connect, subscribe and publish.
    pub struct SecuritySettings {
        /// Allow everything without a token. The default when no JWT key is
        /// configured (logged loudly); cannot be combined with one.
        anonymous: bool as bool = false => new("anonymous", "BOOL")
            .default_text("on without a JWT key")
            .show_in(|security| Shown::Bool(security.is_anonymous()))
            .help("Let anyone connect, subscribe and publish without a token (the default without a JWT key)")
            .readme("anyone may connect, subscribe and publish without a token (refused with a JWT key)");
        /// HS256 secret for connection tokens (at least 32 bytes).
        jwt_secret: Option<String> as String = None => new("jwt-secret", "SECRET")
            .secret()
            .default_text("none: anonymous mode")
            .help("HS256 secret (>= 32 bytes) verifying connection tokens; prefer the environment variable")
            .readme("connection tokens (HS256) with channel patterns: the secret, at least 32 bytes");
        /// PEM public key (RSA or EC P-256) for RS256/ES256 connection tokens.
        jwt_public_key: Option<PathBuf> as PathBuf = None => new("jwt-public-key", "FILE")
            .default_text("none: anonymous mode")
            .help("PEM public key (RSA or EC P-256) verifying RS256/ES256 connection tokens")
            .readme("connection tokens (RS256, ES256) with channel patterns: the PEM public key");
        /// Required `aud` claim, if set.
        jwt_audience: Option<String> as String = None => new("jwt-audience", "AUD")
            .default_text("not checked")
            .help("Required `aud` claim of connection tokens")
            .readme("required `aud` claim");
        /// Required `iss` claim, if set.
        jwt_issuer: Option<String> as String = None => new("jwt-issuer", "ISS")
            .default_text("not checked")
            .help("Required `iss` claim of connection tokens")
            .readme("required `iss` claim");
        /// Time a `/ws` client without a token at upgrade has to send its
        /// `auth` frame.
        auth_timeout: Duration as HumanDuration = Duration::from_secs(10) => new("auth-timeout", "DURATION")
            .help("Time a /ws client without a token has to send {\"op\":\"auth\"}")
            .readme("a `/ws` client without a token must send `{\"op\":\"auth\"}` within this")
            .check(|timeout| ensure(!timeout.is_zero(), || "auth-timeout must be above zero".into()));
        /// Key required on the HTTP API, `/metrics` and `/api/stats`.
        api_key: Option<String> as String = None => new("api-key", "KEY")
            .secret()
            .default_text("none: open")
            .help("Key (>= 16 bytes) required on POST /api/publish, /metrics and /api/stats (X-API-Key or Authorization: Bearer)")
            .readme("required on the HTTP API (`/api/*`: publish, history, channels, disconnect, …) and `/metrics`; without it, drain/disconnect/unsubscribe are served on `--admin-listen` only");
        /// Origins browsers may connect from (`Origin` header); none: any.
        allowed_origins: OriginPolicy as Vec<String> = OriginPolicy::default() => new("allowed-origins", "ORIGINS")
            .default_text("any")
            .help("Origins browsers may connect from, comma-separated (https://app.example.com, https://*.example.com)")
            .readme("browser origins allowed to connect (403 otherwise)");
        /// PEM certificate chain: serve `wss://`/`https://` with it.
        tls_cert: Option<PathBuf> as PathBuf = None => new("tls-cert", "FILE")
            .default_text("off")
            .help("PEM certificate chain: serve wss:// and https:// (with --tls-key)")
            .readme("serve `wss://` and `https://` (rustls) with this PEM certificate chain");
        /// PEM private key of `tls_cert`.
        tls_key: Option<PathBuf> as PathBuf = None => new("tls-key", "FILE")
            .default_text("off")
            .help("PEM private key of --tls-cert")
            .readme("the PEM private key of `--tls-cert`");
    }
    nested {
        /// How much one client may do.
        limits: ClientLimits;
    }
}

section! {
    /// How much one client, or one client address, may do.
    pub struct ClientLimits {
        /// Publications per second one connection may make; 0: no limit.
        publish_rate: u32 as u32 = 0 => new("publish-rate", "N")
            .help("Publications per second per connection; over it `err rate_limited` (0: no limit)")
            .readme("per-connection publish token bucket: `err rate_limited`, sustained: 1008 (0: off)");
        /// Publications one connection may make at once (token bucket
        /// size); `None`: the rate.
        publish_burst: Option<u32> as u32 = None => new("publish-burst", "N")
            .default_text("the rate")
            .help("Publications a connection may make at once before the rate applies")
            .readme("publications a connection may make at once before `--publish-rate` applies");
        /// Channel operations (`sub`, `unsub`, `presence`, `occupancy`) per
        /// second one connection may make, after a burst of
        /// `max-subscriptions`: each may make others' servers work (join and
        /// leave events, webhooks, presence pages). 0: no limit.
        subscribe_rate: u32 as u32 = 50 => new("subscribe-rate", "N")
            .help("sub/unsub/presence/occupancy ops per second per connection, after a burst of max-subscriptions; over it `err rate_limited` (0: no limit)")
            .readme("per-connection `sub`/`unsub`/`presence`/`occupancy` ops per second after a burst of `--max-subscriptions`: `err rate_limited`, sustained: 1008 (0: off)");
        /// Open connections per client address (IPv6: per /64); 0: no cap.
        max_connections_per_ip: u32 as u32 = 0 => new("max-connections-per-ip", "N")
            .help("Open connections per client IP (IPv6: per /64); over it HTTP 429 (0: no cap)")
            .readme("open connections per client address (IPv6: /64); over it: HTTP 429 (0: off)");
        /// Open connections on the public address that are not WebSocket
        /// sessions (HTTP requests, keep-alive, handshakes, TLS included);
        /// over it a new one is answered with 503 and closed (over TLS:
        /// closed).
        max_http_connections: usize as usize = 4096 => new("max-http-connections", "N")
            .help("Open plain HTTP connections (not upgraded) over which new ones get HTTP 503")
            .readme("open public connections not (yet) upgraded to WebSocket; over it: HTTP 503 and close")
            .check(|n| ensure(*n > 0, || "max-http-connections must be at least 1".into()));
        /// Of those, how many one client address (IPv6: /64) may hold; over
        /// it a new one is answered with 429 and closed, so that one address
        /// sending heads slowly cannot take every slot. 0: no cap.
        max_http_connections_per_ip: u32 as u32 = 256 => new("max-http-connections-per-ip", "N")
            .help("Of those, open per client IP (IPv6: per /64); over it HTTP 429 (0: no cap)")
            .readme("of those, per client address (IPv6: /64), so one address sending heads slowly cannot take them all; over it: HTTP 429 and close (0: off; behind a proxy, raise it)");
    }
}

impl SecuritySettings {
    /// Whether the server runs in anonymous mode: asked for with
    /// `--anonymous`, or (the default) because no JWT key is configured.
    pub fn is_anonymous(&self) -> bool {
        self.anonymous || !self.has_jwt_key()
    }

    /// Whether connection tokens are verified.
    pub fn has_jwt_key(&self) -> bool {
        self.jwt_secret.is_some() || self.jwt_public_key.is_some()
    }

    /// Settings that contradict each other.
    pub fn check(&self) -> Result<(), String> {
        let jwt = self.has_jwt_key();
        ensure(!(self.anonymous && jwt), || {
            "anonymous and a JWT key (jwt-secret, jwt-public-key) exclude each other".into()
        })?;
        ensure(
            jwt || (self.jwt_audience.is_none() && self.jwt_issuer.is_none()),
            || "jwt-audience and jwt-issuer need a JWT key".into(),
        )?;
        ensure(self.tls_cert.is_some() == self.tls_key.is_some(), || {
            "tls-cert and tls-key go together".into()
        })?;
        self.limits.check()
    }
}

impl ClientLimits {
    /// A burst needs a rate, and lets at least one through.
    pub fn check(&self) -> Result<(), String> {
        ensure(
            self.publish_rate > 0 || self.publish_burst.is_none(),
            || "publish-burst needs publish-rate".into(),
        )?;
        ensure(self.publish_burst != Some(0), || {
            "publish-burst must be at least 1".into()
        })
    }
}

/// Channel patterns (`--conflate`, `--presence`), each parsed once.
impl SettingValue<Vec<String>> for Vec<ChannelPattern> {
    fn from_setting(raw: Vec<String>, name: &'static str) -> Result<Self, String> {
        raw.iter()
            .map(|text| ChannelPattern::parse(text))
            .collect::<Result<_, PatternError>>()
            .map_err(|error| format!("{name}: {error}"))
    }

    fn shown(&self) -> Shown {
        Shown::List(self.iter().map(|p| p.as_str().to_owned()).collect())
    }
}

impl SettingValue<Vec<String>> for OriginPolicy {
    fn from_setting(raw: Vec<String>, _: &'static str) -> Result<Self, String> {
        Ok(OriginPolicy::new(&raw))
    }

    fn shown(&self) -> Shown {
        Shown::List(self.entries().to_vec())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn security_settings_that_contradict_are_refused() {
        let anonymous_with_key = SecuritySettings {
            anonymous: true,
            jwt_secret: Some("x".repeat(40)),
            ..SecuritySettings::default()
        };
        assert!(anonymous_with_key.check().unwrap_err().contains("exclude"));
        let half_tls = SecuritySettings {
            tls_cert: Some("c.pem".into()),
            ..SecuritySettings::default()
        };
        assert!(half_tls.check().unwrap_err().contains("tls-key"));
        let burst_alone = SecuritySettings {
            limits: ClientLimits {
                publish_burst: Some(5),
                ..ClientLimits::default()
            },
            ..SecuritySettings::default()
        };
        assert!(burst_alone.check().unwrap_err().contains("publish-rate"));
    }

    #[test]
    fn anonymous_mode_is_the_default_without_a_key() {
        assert!(SecuritySettings::default().is_anonymous());
        let keyed = SecuritySettings {
            jwt_public_key: Some("k.pem".into()),
            ..SecuritySettings::default()
        };
        assert!(!keyed.is_anonymous());
    }

    #[test]
    fn patterns_are_refused_with_the_setting_named() {
        let parse = |texts: &[&str]| {
            Vec::<ChannelPattern>::from_setting(
                texts.iter().map(|t| t.to_string()).collect(),
                "conflate",
            )
        };
        let patterns = parse(&["prices.*", "quotes.>"]).unwrap();
        assert!(patterns[0].matches("prices.eur"));
        assert_eq!(
            patterns.shown(),
            Shown::List(vec!["prices.*".into(), "quotes.>".into()])
        );
        let error = parse(&["a..b"]).unwrap_err();
        assert!(error.starts_with("conflate: channel pattern"), "{error}");
    }
}
