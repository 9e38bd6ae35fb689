//! Broker addresses as users write them:
//! `redis://[user:password@]host[:port][/db]` (port 6379) and
//! `nats://[user:password@]host[:port]` (port 4222), parsed by the `url`
//! crate (IPv6 literals in brackets, percent-encoded credentials). Parsed and
//! checked when the configuration is, resolved to socket addresses when a
//! shard starts (before it accepts anyone, so the lookup blocks no client),
//! and looked up again before each reconnect off the shard's thread
//! ([`lookup`]): a managed Redis's failover moves its name to the new
//! primary.

use std::net::{SocketAddr, ToSocketAddrs};

use percent_encoding::percent_decode_str;
use url::{Host, Url};

/// Why a broker URL was refused (each ends start-up: the configuration is
/// wrong). The URL is quoted as written, or without its password once it
/// parsed.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum AddrError {
    #[error("`{url}` must start with {scheme}://")]
    Scheme { url: String, scheme: &'static str },
    /// `rediss://`: the Redis link does not speak TLS.
    #[error("`{0}` asks for TLS (rediss://), which the Redis link does not speak: use redis://")]
    Tls(String),
    #[error("`{url}` is not a valid URL: {reason}")]
    Syntax {
        url: String,
        reason: url::ParseError,
    },
    #[error("`{0}` has no host")]
    Host(String),
    #[error("`{0}` has a database that is not a number")]
    Database(String),
    /// A path (NATS), a query or a fragment: nothing reads them.
    #[error("`{url}` has {part}, which a {scheme}:// URL does not take")]
    Extra {
        url: String,
        scheme: &'static str,
        part: &'static str,
    },
    #[error("`{0}` has a user or password that is not percent-encoded UTF-8")]
    Credentials(String),
    #[error("`{url}` does not resolve: {reason}")]
    Resolve { url: String, reason: String },
}

/// A broker's address and credentials.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct BrokerAddr {
    /// `host:port` (the scheme's port when the URL names none; an IPv6
    /// address in brackets), to look up.
    pub host_port: String,
    pub user: Option<String>,
    pub password: Option<String>,
    /// Redis's logical database (`/db`), 0 by default.
    pub database: u32,
    /// `scheme://host:port[/db]`: the URL without its credentials, for logs.
    pub shown: String,
}

impl BrokerAddr {
    /// Parses `text`, which must use `scheme` (`redis` or `nats`).
    pub fn parse(text: &str, scheme: &'static str) -> Result<Self, AddrError> {
        let url = parse_url(text, scheme)?;
        let host = host(&url).ok_or_else(|| AddrError::Host(redacted(&url)))?;
        let port = url.port().unwrap_or(default_port(scheme));
        let database = database(&url, scheme)?;
        let (user, password) = credentials(&url, text)?;
        let host_port = format!("{host}:{port}");
        let database_part = match database {
            0 => String::new(),
            n => format!("/{n}"),
        };
        Ok(BrokerAddr {
            shown: format!("{scheme}://{host_port}{database_part}"),
            host_port,
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

/// The port a `scheme://` URL without one means.
fn default_port(scheme: &str) -> u16 {
    match scheme {
        "nats" => 4222,
        _ => 6379,
    }
}

/// `text` as a URL of `scheme` (any case), with no query or fragment.
fn parse_url(text: &str, scheme: &'static str) -> Result<Url, AddrError> {
    let written = |prefix: &str| {
        text.get(..prefix.len())
            .is_some_and(|start| start.eq_ignore_ascii_case(prefix))
    };
    if scheme == "redis" && written("rediss://") {
        return Err(AddrError::Tls(text.into()));
    }
    if !written(&format!("{scheme}://")) {
        return Err(AddrError::Scheme {
            url: text.into(),
            scheme,
        });
    }
    let url = Url::parse(text).map_err(|reason| AddrError::Syntax {
        url: text.into(),
        reason,
    })?;
    let extra = |part| AddrError::Extra {
        url: redacted(&url),
        scheme,
        part,
    };
    if url.query().is_some() {
        return Err(extra("a query"));
    }
    if url.fragment().is_some() {
        return Err(extra("a fragment"));
    }
    Ok(url)
}

/// The host to look up: a name as a web URL's host is read (IDNA, so a
/// Unicode name resolves; IPv4 in any of its forms), or an IPv6 literal in
/// brackets. A broker scheme's host is opaque to the `url` crate, hence
/// parsed again here.
fn host(url: &Url) -> Option<String> {
    match url.host()? {
        Host::Domain(opaque) => {
            let name = percent_decode_str(opaque).decode_utf8().ok()?;
            Host::parse(&name).ok().map(|host| host.to_string())
        }
        host => Some(host.to_string()),
    }
}

/// Redis's `/db` (0 without one); NATS takes no path.
fn database(url: &Url, scheme: &'static str) -> Result<u32, AddrError> {
    match (url.path(), scheme) {
        ("" | "/", _) => Ok(0),
        (path, "redis") => path[1..]
            .parse()
            .map_err(|_| AddrError::Database(redacted(url))),
        _ => Err(AddrError::Extra {
            url: redacted(url),
            scheme,
            part: "a path",
        }),
    }
}

/// The user and password, percent-decoded. A user alone (`secret@host`) is
/// the password, as Redis's `requirepass` and NATS tokens have it; an empty
/// one after a user (`user:@host`, which the `url` crate drops) is kept.
fn credentials(url: &Url, text: &str) -> Result<(Option<String>, Option<String>), AddrError> {
    let decode = |part: &str| {
        percent_decode_str(part)
            .decode_utf8()
            .map(String::from)
            .map_err(|_| AddrError::Credentials(redacted(url)))
    };
    let user = Some(decode(url.username())?).filter(|user| !user.is_empty());
    let password = url.password().map(decode).transpose()?;
    Ok(match (user, password) {
        (Some(user), None) if !text.contains(":@") => (None, Some(user)),
        (Some(user), None) => (Some(user), Some(String::new())),
        pair => pair,
    })
}

/// `url` without its password, to quote in an error.
fn redacted(url: &Url) -> String {
    let mut url = url.clone();
    let _ = url.set_password(None);
    url.into()
}

/// `host_port` looked up again on the executor's blocking thread (a
/// lookup blocks; a shard must not): the address it resolves to now, or
/// `known` if it does not resolve (logged as `what`).
pub(crate) async fn lookup(host_port: &str, known: SocketAddr, what: &str) -> SocketAddr {
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
pub(crate) fn resolve(host_port: &str) -> Result<SocketAddr, String> {
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
    fn a_url_without_a_port_takes_its_schemes_default() {
        let parse = |url, scheme| BrokerAddr::parse(url, scheme).unwrap();
        let redis = parse("redis://cache.internal", "redis");
        assert_eq!(redis.host_port, "cache.internal:6379");
        assert_eq!(redis.shown, "redis://cache.internal:6379");
        assert_eq!(parse("redis://h/3", "redis").host_port, "h:6379");
        assert_eq!(parse("REDIS://h/3", "redis").database, 3, "any case");
        assert_eq!(parse("redis://h:7000/", "redis").database, 0);
        assert_eq!(parse("nats://h", "nats").host_port, "h:4222");
        assert_eq!(parse("nats://h/", "nats").host_port, "h:4222");
        assert!(parse("redis://localhost", "redis")
            .resolve()
            .is_ok_and(|a| a.port() == 6379));
    }

    #[test]
    fn ipv6_literals_keep_their_brackets_to_be_looked_up() {
        let v6 = BrokerAddr::parse("redis://[::1]:7000/2", "redis").unwrap();
        assert_eq!((v6.host_port.as_str(), v6.database), ("[::1]:7000", 2));
        assert_eq!(v6.resolve().map(|a| a.port()), Ok(7000));
        let v6 = BrokerAddr::parse("nats://u:p@[2001:db8::1]", "nats").unwrap();
        assert_eq!(v6.host_port, "[2001:db8::1]:4222");
        assert!(BrokerAddr::parse("redis://[::1%eth0]:1", "redis").is_err());
    }

    #[test]
    fn names_are_read_as_a_web_urls_host() {
        let host = |url| BrokerAddr::parse(url, "redis").unwrap().host_port;
        assert_eq!(host("redis://Cache.Example:1"), "cache.example:1");
        assert_eq!(host("redis://bücher.example"), "xn--bcher-kva.example:6379");
        assert_eq!(host("redis://0x7f.1:1"), "127.0.0.1:1");
    }

    #[test]
    fn credentials_are_percent_decoded() {
        let addr = BrokerAddr::parse("redis://app%40eu:p%3Ass%2F@h/1", "redis").unwrap();
        assert_eq!(addr.user.as_deref(), Some("app@eu"));
        assert_eq!(addr.password.as_deref(), Some("p:ss/"));
        assert_eq!(addr.shown, "redis://h:6379/1", "no credentials in logs");
        let lone = BrokerAddr::parse("nats://s3cret@h", "nats").unwrap();
        assert_eq!(
            (lone.user, lone.password.as_deref()),
            (None, Some("s3cret"))
        );
        let empty = BrokerAddr::parse("redis://app:@h", "redis").unwrap();
        assert_eq!(
            (empty.user.as_deref(), empty.password.as_deref()),
            (Some("app"), Some(""))
        );
        let none = BrokerAddr::parse("redis://:@h", "redis").unwrap();
        assert_eq!((none.user, none.password), (None, None));
    }

    #[test]
    fn bad_urls_say_what_is_wrong() {
        for (url, scheme) in [
            ("http://h:1", "redis"),
            ("redis://:1", "redis"),
            ("redis://", "redis"),
            ("redis:h:1", "redis"),
            ("127.0.0.1:6379", "redis"),
            ("redis://h:99999", "redis"),
            ("redis://h:+1", "redis"),
            ("redis://h:1/x", "redis"),
            ("redis://h:1/1/2", "redis"),
            ("redis://h:1?db=2", "redis"),
            ("redis://h:1#top", "redis"),
            ("redis://h^x", "redis"),
            ("redis://p%ff@h", "redis"),
            ("redis://h:1", "nats"),
            ("nats://h:1/x", "nats"),
        ] {
            assert!(BrokerAddr::parse(url, scheme).is_err(), "{url}");
        }
        let error = |url, scheme| BrokerAddr::parse(url, scheme).unwrap_err().to_string();
        assert_eq!(error("h:1", "nats"), "`h:1` must start with nats://");
        assert!(error("rediss://h", "redis").contains("TLS"));
        assert_eq!(
            error("redis://u:pw@h/x", "redis"),
            "`redis://u@h/x` has a database that is not a number",
            "no password in errors"
        );
        assert!(error("redis://h:99999", "redis").contains("invalid port number"));
        assert!(error("nats://h/x", "nats").contains("a path"));
    }
}
