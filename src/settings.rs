//! The effective settings of a resolved [`Config`], written back as the
//! lines of a `--config` TOML file (`shardcast check-config`): every
//! setting with the value the server would run with, wherever it came from
//! (flag, environment, file, default). Secrets are never written, only
//! whether they are set; settings that are not set are comments. Fed back
//! as `--config` (with the secrets in the environment), the output gives
//! the same settings.

use std::{net::SocketAddr, path::Path, time::Duration};

use crate::{
    units::{ByteSize, HumanDuration},
    Config,
};

/// One value, as the TOML file writes it; `None`: not set.
enum Value {
    Text(String),
    Number(u64),
    Bool(bool),
    List(Vec<String>),
    Secret(usize),
    Unset,
}

fn text(value: impl ToString) -> Value {
    Value::Text(value.to_string())
}

fn duration(value: Duration) -> Value {
    text(HumanDuration(value))
}

fn size(value: usize) -> Value {
    text(ByteSize(value))
}

fn optional<T>(value: Option<T>, f: impl FnOnce(T) -> Value) -> Value {
    value.map_or(Value::Unset, f)
}

fn address(value: SocketAddr) -> Value {
    text(value)
}

fn path(value: &Path) -> Value {
    text(value.display())
}

/// Every setting of `config` and its value, in the order of `--help`.
fn settings(config: &Config) -> Vec<(&'static str, Value)> {
    let c = config;
    vec![
        ("listen", address(c.listen)),
        ("shards", Value::Number(c.shards as u64)),
        ("ping-interval", duration(c.ping_interval)),
        ("ping-timeout", duration(c.ping_timeout)),
        ("max-queue-bytes", size(c.max_queue_bytes)),
        ("max-message-bytes", size(c.max_message_bytes)),
        ("max-connections", Value::Number(c.max_connections as u64)),
        (
            "max-http-connections",
            Value::Number(c.max_http_connections as u64),
        ),
        (
            "max-http-connections-per-ip",
            Value::Number(u64::from(c.max_http_connections_per_ip)),
        ),
        (
            "max-subscriptions",
            Value::Number(c.max_subscriptions as u64),
        ),
        ("handshake-timeout", duration(c.handshake_timeout)),
        ("shutdown-timeout", duration(c.shutdown_timeout)),
        ("read-buffer-bytes", size(c.read_buffer_bytes)),
        ("history-size", Value::Number(c.history_size as u64)),
        ("history-ttl", duration(c.history_ttl)),
        ("history-max-bytes", size(c.history_max_bytes)),
        ("message-timeout", duration(c.message_timeout)),
        ("send-timeout", duration(c.send_timeout)),
        ("write-delay", duration(c.write_delay)),
        (
            "compression",
            text(if c.compression { "on" } else { "off" }),
        ),
        ("compression-min-bytes", size(c.compression_min_bytes)),
        (
            "compression-level",
            Value::Number(u64::from(c.compression_level)),
        ),
        ("conflate", Value::List(c.conflate.clone())),
        ("conflate-after-bytes", size(c.conflate_after_bytes)),
        ("presence", Value::List(c.presence.clone())),
        ("presence-ttl", duration(c.presence_ttl)),
        ("idempotency-window", duration(c.idempotency_window)),
        ("webhook-url", optional(c.webhook_url.as_ref(), text)),
        ("webhook-ca", optional(c.webhook_ca.as_deref(), path)),
        (
            "webhook-secret",
            optional(c.webhook_secret.as_ref(), |s| Value::Secret(s.len())),
        ),
        ("webhook-batch", Value::Number(c.webhook_batch as u64)),
        ("vacated-grace", duration(c.vacated_grace)),
        ("drain-spread", duration(c.drain_spread)),
        ("max-memory", size(c.max_memory)),
        ("anonymous", Value::Bool(c.is_anonymous())),
        (
            "jwt-secret",
            optional(c.jwt_secret.as_ref(), |s| Value::Secret(s.len())),
        ),
        (
            "jwt-public-key",
            optional(c.jwt_public_key.as_deref(), path),
        ),
        ("jwt-audience", optional(c.jwt_audience.as_ref(), text)),
        ("jwt-issuer", optional(c.jwt_issuer.as_ref(), text)),
        ("auth-timeout", duration(c.auth_timeout)),
        (
            "api-key",
            optional(c.api_key.as_ref(), |s| Value::Secret(s.len())),
        ),
        ("admin-listen", optional(c.admin_listen, address)),
        ("allowed-origins", Value::List(c.allowed_origins.clone())),
        ("publish-rate", Value::Number(u64::from(c.publish_rate))),
        ("subscribe-rate", Value::Number(u64::from(c.subscribe_rate))),
        (
            "publish-burst",
            optional(c.publish_burst, |n| Value::Number(u64::from(n))),
        ),
        (
            "max-connections-per-ip",
            Value::Number(u64::from(c.max_connections_per_ip)),
        ),
        ("tls-cert", optional(c.tls_cert.as_deref(), path)),
        ("tls-key", optional(c.tls_key.as_deref(), path)),
        ("engine", text(c.engine.as_str())),
        (
            "redis-url",
            Value::List(
                c.redis_url
                    .iter()
                    .map(|u| without_password(u, "redis"))
                    .collect(),
            ),
        ),
        (
            "nats-url",
            optional(c.nats_url.as_deref(), |u| text(without_password(u, "nats"))),
        ),
        ("node-id", text(&c.node_id)),
        ("engine-prefix", text(&c.engine_prefix)),
        ("engine-timeout", duration(c.engine_timeout)),
    ]
}

/// A broker URL as it may be shown: with its password left out.
fn without_password(url: &str, scheme: &'static str) -> String {
    crate::engine::addr::BrokerAddr::parse(url, scheme).map_or_else(|_| url.into(), |a| a.shown)
}

/// The effective settings as the lines of a TOML file.
pub fn effective_toml(config: &Config) -> String {
    let mut out = String::from(
        "# shardcast's effective settings (flags > SHARDCAST_* environment > \
         --config file > defaults)\n",
    );
    for (name, value) in settings(config) {
        let line = match value {
            Value::Text(text) => format!("{name} = {}", toml::Value::String(text)),
            Value::Number(n) => format!("{name} = {n}"),
            Value::Bool(b) => format!("{name} = {b}"),
            Value::List(items) => {
                let items = items.into_iter().map(toml::Value::String).collect();
                format!("{name} = {}", toml::Value::Array(items))
            }
            Value::Secret(len) => format!("# {name}: set ({len} bytes), not shown"),
            Value::Unset => format!("# {name}: not set"),
        };
        out.push_str(&line);
        out.push('\n');
    }
    out
}

#[cfg(test)]
mod tests {
    use clap::{Args, Command};

    use super::*;
    use crate::config::ConfigLayer;

    /// A config with every optional setting set, as flags would make it.
    fn everything_set() -> Config {
        let flags = [
            "x",
            "--listen",
            "127.0.0.1:9000",
            "--ping-interval",
            "1500ms",
            "--max-queue-bytes",
            "2MiB",
            "--jwt-secret",
            "a-test-secret-that-is-long-enough-0123",
            "--jwt-audience",
            "aud \"quoted\"",
            "--jwt-issuer",
            "iss",
            "--api-key",
            "an-api-key-of-enough-bytes",
            "--admin-listen",
            "127.0.0.1:9001",
            "--allowed-origins",
            "https://a.example,https://*.b.example",
            "--publish-rate",
            "10",
            "--publish-burst",
            "20",
            "--write-delay",
            "2ms",
        ];
        let matches = ConfigLayer::augment_args(Command::new("x")).get_matches_from(flags);
        let layer = <ConfigLayer as clap::FromArgMatches>::from_arg_matches(&matches).unwrap();
        Config::resolve(&layer, None).unwrap()
    }

    #[test]
    fn every_flag_is_reported() {
        let flags: Vec<String> = ConfigLayer::augment_args(Command::new("x"))
            .get_arguments()
            .filter_map(|arg| arg.get_long().map(String::from))
            .collect();
        let report = effective_toml(&everything_set());
        for flag in &flags {
            let named = report.lines().any(|l| {
                l.starts_with(&format!("{flag} = ")) || l.starts_with(&format!("# {flag}:"))
            });
            assert!(named, "check-config does not report --{flag}");
        }
        assert_eq!(settings(&Config::default()).len(), flags.len());
    }

    #[test]
    fn secrets_are_never_written() {
        let report = effective_toml(&everything_set());
        assert!(!report.contains("a-test-secret"), "{report}");
        assert!(!report.contains("an-api-key"), "{report}");
        assert!(report.contains("# jwt-secret: set (38 bytes), not shown"));
        assert!(report.contains("# tls-cert: not set"));
    }

    #[test]
    fn the_report_read_back_as_a_file_gives_the_same_settings() {
        let config = everything_set();
        let report = effective_toml(&config);
        let dir = std::env::temp_dir().join(format!("shardcast-settings-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let file = dir.join("effective.toml");
        std::fs::write(&file, &report).unwrap();
        // The secrets come back from flags, as they would from the
        // environment.
        let secrets = ConfigLayer {
            jwt_secret: config.jwt_secret.clone(),
            api_key: config.api_key.clone(),
            ..ConfigLayer::default()
        };
        let again = Config::resolve(&secrets, Some(&file)).unwrap();
        std::fs::remove_dir_all(&dir).unwrap();
        assert_eq!(effective_toml(&again), report);
        assert!(report.contains("ping-interval = \"1500ms\""), "{report}");
        assert!(report.contains("max-queue-bytes = \"2MiB\""), "{report}");
    }
}
