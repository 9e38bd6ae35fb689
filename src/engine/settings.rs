//! The engine's section of the settings: which engine, its brokers (their
//! URLs parsed here, once), this node's name, the prefix of everything the
//! engine names in a broker and how long a broker may stay silent. Declared
//! here (`settings::section!`) so that the engine takes its own section,
//! not the whole `Config`.

use std::time::Duration;

use clap::{value_parser, Arg, ArgAction};
use serde::Deserialize;

use super::addr::BrokerAddr;
use crate::{
    settings::{ensure, section, SettingValue, Shown, Syntax},
    units::HumanDuration,
};

/// How the nodes of one service agree (`--engine`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum EngineKind {
    /// One node on its own: ordering and history in this process.
    #[default]
    Memory,
    /// Ordering and history in Redis: one order per channel on every node.
    Redis,
    /// Fan-out over core NATS, at most once; history stays on each node.
    Nats,
}

impl EngineKind {
    pub fn as_str(self) -> &'static str {
        match self {
            EngineKind::Memory => "memory",
            EngineKind::Redis => "redis",
            EngineKind::Nats => "nats",
        }
    }
}

impl Syntax for EngineKind {
    fn arg(arg: Arg) -> Arg {
        arg.value_parser(value_parser!(EngineKind))
            .action(ArgAction::Set)
    }
}

impl SettingValue<EngineKind> for EngineKind {
    fn from_setting(raw: EngineKind, _: &'static str) -> Result<Self, String> {
        Ok(raw)
    }

    fn shown(&self) -> Shown {
        Shown::text(self.as_str())
    }
}

section! {
    /// How this node joins the others of its service.
    pub struct EngineSettings {
        /// How nodes agree: `memory` (one node), `redis` or `nats`.
        kind: EngineKind as EngineKind = EngineKind::Memory => new("engine", "ENGINE")
            .help("How nodes agree: memory (one node), redis (one order and shared history) or nats (at-most-once fan-out)")
            .readme("`memory`, `redis` or `nats`: several nodes as one service ([docs/cluster.md](docs/cluster.md))");
        /// Redis servers of the `redis` engine; channels are spread over
        /// them by a stable hash of their name.
        redis_url: Vec<BrokerAddr> as Vec<String> = Vec::new() => custom(
            "redis-url",
            "URL",
            |urls, name| urls.iter().map(|url| broker(url, "redis", name)).collect(),
            |addrs| Shown::List(addrs.iter().map(|addr| addr.shown.clone()).collect()),
        )
            .hide_env()
            .default_text("none")
            .help("Redis of the redis engine, redis://[user:password@]host[:port][/db] (port 6379); repeat (or comma-separate) to spread channels over several")
            .readme("the brokers of engine `redis` (`redis://[user:password@]host[:port][/db]`, port 6379 by default; repeat the flag or separate with commas to spread channels over several)");
        /// The NATS server of the `nats` engine.
        nats_url: Option<BrokerAddr> as String = None => custom(
            "nats-url",
            "URL",
            |url, name| broker(&url, "nats", name).map(Some),
            |addr| addr.as_ref().map_or(Shown::Unset, |addr| Shown::text(&addr.shown)),
        )
            .hide_env()
            .help("NATS of the nats engine, nats://[user:password@]host[:port] (port 4222)")
            .readme("the broker of engine `nats` (`nats://[user:password@]host[:port]`, port 4222 by default)");
        /// This node's name in logs, metrics and the records it publishes.
        node_id: String as String = default_node_id() => new("node-id", "NAME")
            .default_text("host name and a random suffix")
            .help("This node's name in logs, metrics and the dashboard")
            .readme("the node's name in logs and metrics")
            .check(|id| ensure(
                !id.is_empty() && id.len() <= 128 && !id.chars().any(char::is_whitespace),
                || "node-id must be 1 to 128 characters without spaces".into(),
            ));
        /// Prefix of every key, pub/sub channel and subject the engine uses.
        prefix: String as String = "shardcast".into() => new("engine-prefix", "PREFIX")
            .help("Prefix of the engine's Redis keys, pub/sub channels and NATS subjects")
            .readme("prefix of the engine's keys, channels and subjects in the broker")
            .check(|prefix| ensure(
                !prefix.is_empty()
                    && prefix.len() <= 64
                    && prefix.bytes().all(|b| b.is_ascii_alphanumeric() || b"_-".contains(&b)),
                || "engine-prefix must be 1 to 64 of A-Z a-z 0-9 _ -".into(),
            ));
        /// A broker that leaves a request unanswered this long (or an idle
        /// link's ping) is taken for lost: the link is dropped and made again.
        timeout: Duration as HumanDuration = Duration::from_secs(3) => new("engine-timeout", "DURATION")
            .help("Drop and remake a broker link that leaves a request (or its ping) unanswered this long")
            .readme("a silent broker is taken for lost after this")
            .check(|timeout| ensure(
                *timeout >= Duration::from_millis(100),
                || "engine-timeout must be at least 100ms".into(),
            ));
    }
}

/// Broker URL `url` of setting `name`, which must use `scheme`.
fn broker(url: &str, scheme: &'static str, name: &str) -> Result<BrokerAddr, String> {
    BrokerAddr::parse(url, scheme).map_err(|error| format!("{name}: {error}"))
}

impl EngineSettings {
    /// Each engine has the brokers it needs and no other's.
    pub fn check(&self) -> Result<(), String> {
        let (redis, nats) = (!self.redis_url.is_empty(), self.nats_url.is_some());
        match self.kind {
            EngineKind::Redis if !redis => Err("engine redis needs at least one redis-url".into()),
            EngineKind::Nats if !nats => Err("engine nats needs nats-url".into()),
            EngineKind::Memory | EngineKind::Nats if redis => {
                Err("redis-url is for engine redis".into())
            }
            EngineKind::Memory | EngineKind::Redis if nats => {
                Err("nats-url is for engine nats".into())
            }
            _ => Ok(()),
        }
    }
}

/// The host name and a random suffix: unique enough to tell nodes apart.
pub fn default_node_id() -> String {
    let mut name = [0u8; 256];
    // SAFETY: gethostname writes at most `len` bytes into the buffer.
    let ok = unsafe { libc::gethostname(name.as_mut_ptr().cast(), name.len()) } == 0;
    let len = name.iter().position(|b| *b == 0).unwrap_or(0);
    let host: String = match ok && len > 0 {
        true => String::from_utf8_lossy(&name[..len])
            .chars()
            .filter(|c| c.is_ascii_alphanumeric() || "._-".contains(*c))
            .collect(),
        false => String::new(),
    };
    let host = if host.is_empty() { "node".into() } else { host };
    let suffix = crate::random::u64() & 0xff_ffff;
    format!("{host}-{suffix:06x}")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn each_engine_needs_its_brokers_and_no_other() {
        let redis = BrokerAddr::parse("redis://h:1", "redis").unwrap();
        let with = |kind, redis_url: Vec<BrokerAddr>| EngineSettings {
            kind,
            redis_url,
            ..EngineSettings::default()
        };
        assert!(with(EngineKind::Memory, Vec::new()).check().is_ok());
        assert!(with(EngineKind::Redis, vec![redis.clone()]).check().is_ok());
        let error = with(EngineKind::Redis, Vec::new()).check().unwrap_err();
        assert!(error.contains("needs at least one redis-url"), "{error}");
        let error = with(EngineKind::Memory, vec![redis]).check().unwrap_err();
        assert!(error.contains("is for engine redis"), "{error}");
    }

    #[test]
    fn node_ids_are_unique_names() {
        let (a, b) = (default_node_id(), default_node_id());
        assert_ne!(a, b);
        assert!(!a.contains(char::is_whitespace));
    }
}
