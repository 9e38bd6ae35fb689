//! The one `Config` type: the server's settings in typed sections, and
//! their three sources. Every setting is declared once, as a field of its
//! section (`settings::section!`; the `settings` module explains how that
//! one declaration makes the flag and its `SHARDCAST_*` variable, the TOML
//! key, the default, the parse, `check-config`'s line and the README row).
//! The sections about connections are in `connections`, those about
//! channels in `channels`; security, the engine and webhooks declare
//! theirs in their own modules, which need nothing of this one.
//! [`Config::resolve`] stacks the sources (flag > environment > file >
//! default), parses each setting once and checks the result. Nothing here
//! touches sockets or threads.

mod channels;
mod connections;

use std::{path::PathBuf, sync::OnceLock};

use clap::{ArgMatches, Command};
use shardcast_core::owner::MAX_SHARDS;

pub use self::{
    channels::{Compression, Conflation, History, Presence},
    connections::{default_max_memory, Heartbeat, Limits, Listeners, Timeouts},
};
pub use crate::{
    engine::settings::{default_node_id, EngineKind, EngineSettings},
    security::settings::{ClientLimits, SecuritySettings},
    webhook::settings::WebhookConfig,
};
use crate::{
    engine::Retention,
    error::ConfigError,
    settings::{ensure, render, section, Declared, FileValues, Section, Sources},
};

section! {
    /// Everything a running server needs to know. Build it with
    /// [`Config::resolve`], or start from [`Config::default`] and change
    /// fields (tests do).
    #[non_exhaustive]
    pub struct Config {
        /// Number of shards (executors, one pinned per core).
        shards: usize as usize = default_shards() => new("shards", "N")
            .default_text("the CPUs this process may use")
            .help("Number of shards, one executor pinned per core")
            .readme("one pinned executor each")
            .check(|shards| ensure(
                (1..=MAX_SHARDS).contains(shards),
                || format!("shards is {shards}, must be 1..={MAX_SHARDS}"),
            ));
    }
    nested {
        /// Where the server listens.
        listeners: Listeners;
        /// What clients may make the server hold.
        limits: Limits;
        /// How quiet a connection may be.
        heartbeat: Heartbeat;
        /// How long each step may take.
        timeouts: Timeouts;
        /// What is kept of each channel's publications.
        history: History;
        /// permessage-deflate.
        compression: Compression;
        /// Channels whose keyed publications conflate.
        conflation: Conflation;
        /// Channels with presence.
        presence: Presence;
        /// Who may connect, subscribe and publish, and how much.
        security: SecuritySettings;
        /// How this node joins others.
        engine: EngineSettings;
        /// Lifecycle webhooks.
        webhooks: WebhookConfig;
    }
}

/// The CPUs this process may run on (respects `taskset`), at least one.
pub fn default_shards() -> usize {
    core_affinity::get_core_ids()
        .map(|ids| ids.len())
        .unwrap_or(1)
        .max(1)
}

impl Config {
    /// Every setting, in the order of `--help` (built once).
    pub fn settings() -> &'static [Box<dyn Declared<Config>>] {
        static SETTINGS: OnceLock<Vec<Box<dyn Declared<Config>>>> = OnceLock::new();
        SETTINGS.get_or_init(Config::declarations)
    }

    /// Stacks the sources: `cli` (flags and environment, as clap read them)
    /// over the TOML file at `file` (if any) over the defaults, parses each
    /// setting given, then validates.
    pub fn resolve(cli: &ConfigArgs, file: Option<&PathBuf>) -> Result<Config, ConfigError> {
        let mut config = Config::default();
        let file_values = match file {
            Some(path) => read_file(path)?,
            None => FileValues::default(),
        };
        let sources = Sources {
            flags: cli.flags.as_ref(),
            file: &file_values,
        };
        for setting in Config::settings() {
            setting
                .apply(&mut config, &sources)
                .map_err(ConfigError::Invalid)?;
        }
        config.validate()?;
        Ok(config)
    }

    /// Rejects settings the server cannot run with, quoting the numbers:
    /// each setting on its own, then those that go together.
    pub fn validate(&self) -> Result<(), ConfigError> {
        for setting in Config::settings() {
            setting.check(self).map_err(ConfigError::Invalid)?;
        }
        self.limits
            .check(self.shards)
            .and_then(|()| self.engine.check())
            .and_then(|()| self.webhooks.check())
            .and_then(|()| self.security.check())
            .and_then(|()| self.listeners.check())
            .map_err(ConfigError::Invalid)
    }

    /// The effective settings as the lines of a TOML file
    /// (`check-config`).
    pub fn effective_toml(&self) -> String {
        render::effective_toml(Config::settings(), self)
    }

    /// The README's table of settings.
    pub fn readme_table() -> String {
        render::readme_table(Config::settings())
    }

    /// What the engine keeps of each channel.
    pub fn retention(&self) -> Retention {
        Retention {
            history_size: self.history.size,
            history_ttl: self.history.ttl,
            replay_bytes: self.limits.max_queue_bytes,
            presence_ttl: self.presence.ttl,
            idempotency_window: self.history.idempotency_window,
        }
    }
}

/// The settings the TOML file at `path` gives.
fn read_file(path: &PathBuf) -> Result<FileValues, ConfigError> {
    let text = std::fs::read_to_string(path).map_err(|source| ConfigError::ReadFile {
        path: path.clone(),
        source,
    })?;
    FileValues::parse(&text, Config::settings()).map_err(|source| ConfigError::ParseFile {
        path: path.clone(),
        source: Box::new(source),
    })
}

/// The settings given as flags and `SHARDCAST_*` variables: every
/// declared setting is an argument (`#[command(flatten)]` it into a
/// command), read by [`Config::resolve`].
#[derive(Debug, Clone, Default)]
pub struct ConfigArgs {
    /// What clap read; `None`: nothing given.
    flags: Option<ArgMatches>,
}

impl ConfigArgs {
    /// The settings `args` (after the program's name) and the environment
    /// give.
    pub fn parse_from<I, T>(args: I) -> Result<Self, clap::Error>
    where
        I: IntoIterator<Item = T>,
        T: Into<std::ffi::OsString> + Clone,
    {
        let command = <ConfigArgs as clap::Args>::augment_args(Command::new("shardcast"));
        let matches = command.try_get_matches_from(args)?;
        <ConfigArgs as clap::FromArgMatches>::from_arg_matches(&matches)
    }
}

impl clap::Args for ConfigArgs {
    fn augment_args(command: Command) -> Command {
        command.args(Config::settings().iter().map(|setting| setting.arg()))
    }

    fn augment_args_for_update(command: Command) -> Command {
        ConfigArgs::augment_args(command)
    }
}

impl clap::FromArgMatches for ConfigArgs {
    fn from_arg_matches(matches: &ArgMatches) -> Result<Self, clap::Error> {
        Ok(ConfigArgs {
            flags: Some(matches.clone()),
        })
    }

    fn update_from_arg_matches(&mut self, matches: &ArgMatches) -> Result<(), clap::Error> {
        self.flags = Some(matches.clone());
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use std::{path::Path, time::Duration};

    use super::*;
    use crate::settings::Shown;

    /// A file `name` holding `text` in a directory of this test's own.
    fn file(name: &str, text: &str) -> PathBuf {
        let dir = std::env::temp_dir().join(format!("shardcast-config-{}", std::process::id()));
        std::fs::create_dir_all(&dir).unwrap();
        let path = dir.join(name);
        std::fs::write(&path, text).unwrap();
        path
    }

    fn flags(args: &[&str]) -> ConfigArgs {
        ConfigArgs::parse_from(std::iter::once("shardcast").chain(args.iter().copied())).unwrap()
    }

    #[test]
    fn defaults_are_valid() {
        Config::default().validate().unwrap();
    }

    #[test]
    fn cli_overrides_file_overrides_default() {
        let path = file(
            "stacked.toml",
            "ping-interval = \"5s\"\nmax-queue-bytes = \"2MiB\"\nshards = 1\n",
        );
        let config = Config::resolve(&flags(&["--ping-interval", "250ms"]), Some(&path)).unwrap();
        assert_eq!(config.heartbeat.ping_interval, Duration::from_millis(250));
        assert_eq!(config.limits.max_queue_bytes, 2 << 20);
        assert_eq!(config.shards, 1);
        assert_eq!(config.heartbeat.ping_timeout, Duration::from_secs(10));
    }

    #[test]
    fn unknown_file_keys_are_refused() {
        let path = file("unknown.toml", "ping-intervall = \"5s\"\n");
        let err = Config::resolve(&ConfigArgs::default(), Some(&path)).unwrap_err();
        assert!(err.to_string().contains("ping-intervall"), "{err}");
        assert!(err.to_string().contains("line 1, column 1"), "{err}");
    }

    #[test]
    fn a_file_value_in_the_wrong_syntax_is_refused_where_it_is() {
        let path = file("syntax.toml", "shards = 1\nhistory-ttl = \"soon\"\n");
        let err = Config::resolve(&ConfigArgs::default(), Some(&path))
            .unwrap_err()
            .to_string();
        assert!(err.contains("line 2, column 15"), "{err}");
        assert!(err.contains("cannot read \"soon\" as a duration"), "{err}");
    }

    #[test]
    fn patterns_and_urls_are_parsed_once_into_their_types() {
        let config = Config::resolve(
            &flags(&[
                "--conflate",
                "prices.*",
                "--engine",
                "redis",
                "--redis-url",
                "redis://app:secret@h:1/2",
                "--webhook-url",
                "https://hooks.example.com/in",
            ]),
            None,
        )
        .unwrap();
        assert!(config.conflation.patterns[0].matches("prices.eur"));
        assert_eq!(config.engine.redis_url[0].database, 2);
        assert!(config.webhooks.url.as_ref().unwrap().tls);
        let error = Config::resolve(&flags(&["--presence", "a..b"]), None).unwrap_err();
        assert!(
            error.to_string().contains("presence: channel pattern"),
            "{error}"
        );
    }

    #[test]
    fn the_production_example_is_valid() {
        let path = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("docs/production.toml");
        let config = Config::resolve(&ConfigArgs::default(), Some(&path)).unwrap();
        let security = &config.security;
        assert!(security.jwt_public_key.is_some() && security.tls_cert.is_some());
        assert_eq!(security.allowed_origins.entries().len(), 2);
        let limits = &security.limits;
        assert_eq!((limits.publish_rate, limits.publish_burst), (20, Some(40)));
        assert_eq!(limits.max_connections_per_ip, 200);
        assert!(config.listeners.admin.is_some());
    }

    #[test]
    fn every_setting_has_one_name_its_variable_and_its_texts() {
        let mut names: Vec<&str> = Config::settings().iter().map(|s| s.doc().name).collect();
        let count = names.len();
        names.sort_unstable();
        names.dedup();
        assert_eq!(names.len(), count, "a name is declared twice");
        for setting in Config::settings() {
            let doc = setting.doc();
            let env = format!("SHARDCAST_{}", doc.name.to_uppercase().replace('-', "_"));
            assert_eq!(doc.env, env);
            assert!(
                !doc.help.is_empty() && !doc.readme.is_empty(),
                "{}",
                doc.name
            );
        }
    }

    /// README.md's table of settings is the declarations': names,
    /// variables, defaults and descriptions.
    #[test]
    fn the_readme_table_is_the_declarations() {
        let path = Path::new(env!("CARGO_MANIFEST_DIR")).join("README.md");
        let readme = std::fs::read_to_string(path).unwrap();
        let table: String = readme
            .lines()
            .skip_while(|line| !line.starts_with("| Setting |"))
            .take_while(|line| line.starts_with('|'))
            .map(|line| format!("{line}\n"))
            .collect();
        let declared = Config::readme_table();
        assert!(
            table == declared,
            "README.md's table of settings differs from the declarations; it should read:\n\n{declared}"
        );
    }

    /// A config with every optional setting set, as flags would make it.
    fn everything_set() -> Config {
        let config = flags(&[
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
        ]);
        Config::resolve(&config, None).unwrap()
    }

    #[test]
    fn every_flag_is_reported() {
        let flags: Vec<String> = <ConfigArgs as clap::Args>::augment_args(Command::new("x"))
            .get_arguments()
            .filter_map(|arg| arg.get_long().map(String::from))
            .collect();
        let report = everything_set().effective_toml();
        for flag in &flags {
            let named = report.lines().any(|l| {
                l.starts_with(&format!("{flag} = ")) || l.starts_with(&format!("# {flag}:"))
            });
            assert!(named, "check-config does not report --{flag}");
        }
        assert_eq!(Config::settings().len(), flags.len());
    }

    #[test]
    fn secrets_are_never_written() {
        let config = everything_set();
        let report = config.effective_toml();
        assert!(!report.contains("a-test-secret"), "{report}");
        assert!(!report.contains("an-api-key"), "{report}");
        assert!(report.contains("# jwt-secret: set (38 bytes), not shown"));
        assert!(report.contains("# tls-cert: not set"));
        let anonymous = Config::settings()
            .iter()
            .find(|s| s.doc().name == "anonymous")
            .unwrap();
        assert_eq!(anonymous.show(&config), Shown::Bool(false));
        assert_eq!(anonymous.show(&Config::default()), Shown::Bool(true));
    }

    #[test]
    fn the_report_read_back_as_a_file_gives_the_same_settings() {
        let config = everything_set();
        let report = config.effective_toml();
        let path = file("effective.toml", &report);
        // The secrets come back from flags, as they would from the
        // environment.
        let secrets = flags(&[
            "--jwt-secret",
            config.security.jwt_secret.as_deref().unwrap(),
            "--api-key",
            config.security.api_key.as_deref().unwrap(),
        ]);
        let again = Config::resolve(&secrets, Some(&path)).unwrap();
        assert_eq!(again.effective_toml(), report);
        assert!(report.contains("ping-interval = \"1500ms\""), "{report}");
        assert!(report.contains("max-queue-bytes = \"2MiB\""), "{report}");
    }

    #[test]
    fn settings_that_go_together_are_checked_across_sections() {
        let mut config = Config::default();
        config.security.tls_cert = Some("c.pem".into());
        let error = config.validate().unwrap_err().to_string();
        assert!(
            error.contains("tls-cert and tls-key go together"),
            "{error}"
        );
        let config = Config {
            shards: 4,
            limits: Limits {
                max_memory: 8 << 20,
                ..Limits::default()
            },
            ..Config::default()
        };
        let error = config.validate().unwrap_err().to_string();
        assert!(error.contains("max-memory is 8388608"), "{error}");
    }
}
