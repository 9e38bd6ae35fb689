//! Broker addresses as users write them: `redis://[user:password@]host:port[/db]`
//! and `nats://[user:password@]host:port`. Parsed and checked when the
//! configuration is, resolved to socket addresses when a shard starts
//! (before it accepts anyone, so the lookup blocks no client), and looked
//! up again before each reconnect off the shard's thread ([`lookup`]): a
//! managed Redis's failover moves its name to the new primary.

use std::net::{SocketAddr, ToSocketAddrs};

/// Why a broker URL was refused.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddrError {
    #[error("`{url}` must start with {scheme}://")]
    Scheme { url: String, scheme: &'static str },
    #[error("`{0}` has no host:port")]
    HostPort(String),
    #[error("`{0}` has a database that is not a number")]
    Database(String),
    #[error("`{url}` does not resolve: {reason}")]
    Resolve { url: String, reason: String },
}

/// A broker's address and credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerAddr {
    /// `host:port`, as written.
    pub host_port: String,
    pub user: Option<String>,
    pub password: Option<String>,
    /// Redis's logical database (`/db`), 0 by default.
    pub database: u32,
    /// The URL without its password, for logs.
    pub shown: String,
}

impl BrokerAddr {
    /// Parses `url`, which must use `scheme` (`redis` or `nats`).
    pub fn parse(url: &str, scheme: &'static str) -> Result<Self, AddrError> {
        let rest = url
            .strip_prefix(scheme)
            .and_then(|r| r.strip_prefix("://"))
            .ok_or_else(|| AddrError::Scheme {
                url: url.into(),
                scheme,
            })?;
        let (credentials, rest) = match rest.rsplit_once('@') {
            Some((credentials, rest)) => (Some(credentials), rest),
            None => (None, rest),
        };
        let (host_port, database) = match rest.split_once('/') {
            Some((host_port, "")) => (host_port, 0),
            Some((host_port, db)) => (
                host_port,
                db.parse().map_err(|_| AddrError::Database(url.into()))?,
            ),
            None => (rest, 0),
        };
        let port_ok = host_port
            .rsplit_once(':')
            .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok());
        if !port_ok {
            return Err(AddrError::HostPort(url.into()));
        }
        let (user, password) = match credentials.map(|c| c.split_once(':')) {
            Some(Some((user, password))) => (
                (!user.is_empty()).then(|| user.to_string()),
                Some(password.to_string()),
            ),
            Some(None) => (None, credentials.map(str::to_string)),
            None => (None, None),
        };
        let database_part = if database == 0 {
            String::new()
        } else {
            format!("/{database}")
        };
        Ok(BrokerAddr {
            shown: format!("{scheme}://{host_port}{database_part}"),
            host_port: host_port.into(),
            user,
            password,
            database,
        })
    }

    /// The socket address to connect to (the first the name resolves to).
    pub fn resolve(&self) -> Result<SocketAddr, AddrError> {
        resolve(&self.host_port).map_err(|reason| AddrError::Resolve {
            url: self.shown.clone(),
            reason,
        })
    }
}

/// `host_port` looked up again on the executor's blocking thread (a
/// lookup blocks; a shard must not): the address it resolves to now, or
/// `known` if it does not resolve (logged as `what`).
pub async fn lookup(host_port: &str, known: SocketAddr, what: &str) -> SocketAddr {
    let name = host_port.to_owned();
    let looked_up = glommio::executor()
        .spawn_blocking(move || resolve(&name))
        .await;
    looked_up.unwrap_or_else(|reason| {
        tracing::warn!(%what, %reason, %known, "does not resolve: using the address known");
        known
    })
}

/// The first socket address `host_port` resolves to, or why none.
pub fn resolve(host_port: &str) -> Result<SocketAddr, String> {
    host_port
        .to_socket_addrs()
        .map_err(|e| e.to_string())?
        .next()
        .ok_or_else(|| "no address".to_string())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn urls_parse_with_credentials_and_database() {
        let plain = BrokerAddr::parse("redis://127.0.0.1:6379", "redis").unwrap();
        assert_eq!(
            (plain.host_port.as_str(), plain.database),
            ("127.0.0.1:6379", 0)
        );
        assert_eq!((plain.user, plain.password), (None, None));
        let full = BrokerAddr::parse("redis://app:s3:cr@t@localhost:7000/2", "redis").unwrap();
        assert_eq!(full.user.as_deref(), Some("app"));
        assert_eq!(full.password.as_deref(), Some("s3:cr@t"));
        assert_eq!(full.database, 2);
        assert_eq!(
            full.shown, "redis://localhost:7000/2",
            "no password in logs"
        );
        let password_only = BrokerAddr::parse("redis://:pw@h:1", "redis").unwrap();
        assert_eq!(
            (password_only.user, password_only.password.as_deref()),
            (None, Some("pw"))
        );
        assert!(BrokerAddr::parse("nats://10.0.0.1:4222", "nats").is_ok());
        assert!(plain_resolves());
    }

    fn plain_resolves() -> bool {
        BrokerAddr::parse("redis://127.0.0.1:6379", "redis")
            .unwrap()
            .resolve()
            .is_ok_and(|a| a.port() == 6379)
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        for (url, scheme) in [
            ("http://h:1", "redis"),
            ("redis://h", "redis"),
            ("redis://:1", "redis"),
            ("redis://h:99999", "redis"),
            ("redis://h:1/x", "redis"),
            ("redis://h:1", "nats"),
        ] {
            assert!(BrokerAddr::parse(url, scheme).is_err(), "{url}");
        }
    }
}
