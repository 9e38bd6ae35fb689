//! How setting values are written and what they become. A [`Syntax`] is
//! what a flag, an environment variable and a TOML value are read as
//! (clap's parser and serde's, so all three accept the same spellings and
//! refuse with the same messages); [`SettingValue`] turns it into the
//! field's type — the one place a pattern, a URL or a unit is parsed — and
//! [`Shown`] is the field written back for `check-config`.

use std::{net::SocketAddr, path::PathBuf, time::Duration};

use clap::{value_parser, Arg, ArgAction, ArgMatches};
use serde::{de::DeserializeOwned, Deserialize};

use crate::units::{ByteSize, HumanDuration};

/// How a setting's value is written: on the command line, in the
/// environment and in the TOML file.
pub trait Syntax: Clone + Send + Sync + DeserializeOwned + 'static {
    /// The flag's parser (and shape: a list, a flag whose value may be
    /// left out).
    fn arg(arg: Arg) -> Arg;

    /// The value clap read for flag `id`, if it was given.
    fn from_flags(matches: &ArgMatches, id: &str) -> Option<Self> {
        matches.try_get_one::<Self>(id).ok().flatten().cloned()
    }
}

/// Plain values: one, parsed by clap as the type parses.
macro_rules! scalar_syntax {
    ($($t:ty),*) => {$(
        impl Syntax for $t {
            fn arg(arg: Arg) -> Arg {
                arg.value_parser(value_parser!($t)).action(ArgAction::Set)
            }
        }
    )*};
}

scalar_syntax!(
    usize,
    u32,
    String,
    PathBuf,
    SocketAddr,
    ByteSize,
    HumanDuration,
    Switch
);

/// `true` or `false`; the bare flag means `true`.
impl Syntax for bool {
    fn arg(arg: Arg) -> Arg {
        arg.value_parser(value_parser!(bool))
            .action(ArgAction::Set)
            .num_args(0..=1)
            .default_missing_value("true")
    }
}

/// A list: a TOML array; comma-separated, or the flag repeated.
impl Syntax for Vec<String> {
    fn arg(arg: Arg) -> Arg {
        arg.value_parser(value_parser!(String))
            .action(ArgAction::Append)
            .value_delimiter(',')
    }

    fn from_flags(matches: &ArgMatches, id: &str) -> Option<Self> {
        let values = matches.try_get_many::<String>(id).ok().flatten()?;
        Some(values.cloned().collect())
    }
}

/// A feature turned on or off (`on`/`off`, also `true`/`false`).
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Switch {
    #[value(alias = "true")]
    #[serde(alias = "true")]
    On,
    #[value(alias = "false")]
    #[serde(alias = "false")]
    Off,
}

/// A setting's value as `check-config` writes it in TOML.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Shown {
    Text(String),
    Number(u64),
    Bool(bool),
    List(Vec<String>),
    /// A secret that is set: only its length is shown.
    Secret(usize),
    /// Not set.
    Unset,
}

impl Shown {
    pub fn text(value: impl ToString) -> Shown {
        Shown::Text(value.to_string())
    }
}

/// A field's type made from what a setting of syntax `S` was given.
pub trait SettingValue<S>: Sized {
    /// The field's value from `raw`; an error names setting `name` where
    /// the reason does not.
    fn from_setting(raw: S, name: &'static str) -> Result<Self, String>;
    /// The value as `check-config` writes it (it reads back the same).
    fn shown(&self) -> Shown;
}

/// Fields that are their syntax, shown as text (`Display`).
macro_rules! text_value {
    ($($t:ty),*) => {$(
        impl SettingValue<$t> for $t {
            fn from_setting(raw: $t, _: &'static str) -> Result<Self, String> {
                Ok(raw)
            }

            fn shown(&self) -> Shown {
                Shown::text(self)
            }
        }
    )*};
}

text_value!(String, SocketAddr);

impl SettingValue<usize> for usize {
    fn from_setting(raw: usize, _: &'static str) -> Result<Self, String> {
        Ok(raw)
    }

    fn shown(&self) -> Shown {
        Shown::Number(*self as u64)
    }
}

impl SettingValue<u32> for u32 {
    fn from_setting(raw: u32, _: &'static str) -> Result<Self, String> {
        Ok(raw)
    }

    fn shown(&self) -> Shown {
        Shown::Number(u64::from(*self))
    }
}

impl SettingValue<ByteSize> for usize {
    fn from_setting(raw: ByteSize, _: &'static str) -> Result<Self, String> {
        Ok(raw.0)
    }

    fn shown(&self) -> Shown {
        Shown::text(ByteSize(*self))
    }
}

impl SettingValue<HumanDuration> for Duration {
    fn from_setting(raw: HumanDuration, _: &'static str) -> Result<Self, String> {
        Ok(raw.0)
    }

    fn shown(&self) -> Shown {
        Shown::text(HumanDuration(*self))
    }
}

impl SettingValue<Switch> for bool {
    fn from_setting(raw: Switch, _: &'static str) -> Result<Self, String> {
        Ok(raw == Switch::On)
    }

    fn shown(&self) -> Shown {
        Shown::text(if *self { "on" } else { "off" })
    }
}

impl SettingValue<bool> for bool {
    fn from_setting(raw: bool, _: &'static str) -> Result<Self, String> {
        Ok(raw)
    }

    fn shown(&self) -> Shown {
        Shown::Bool(*self)
    }
}

impl SettingValue<PathBuf> for PathBuf {
    fn from_setting(raw: PathBuf, _: &'static str) -> Result<Self, String> {
        Ok(raw)
    }

    fn shown(&self) -> Shown {
        Shown::text(self.display())
    }
}

/// An optional setting: set when given, else `None` (shown as not set).
impl<S, T: SettingValue<S>> SettingValue<S> for Option<T> {
    fn from_setting(raw: S, name: &'static str) -> Result<Self, String> {
        T::from_setting(raw, name).map(Some)
    }

    fn shown(&self) -> Shown {
        self.as_ref().map_or(Shown::Unset, T::shown)
    }
}

#[cfg(test)]
mod tests {
    use clap::Command;

    use super::*;

    fn flags<S: Syntax>(args: &[&str]) -> Option<S> {
        let command = Command::new("x").arg(S::arg(Arg::new("v").long("v")));
        let matches = command.try_get_matches_from(args).unwrap();
        S::from_flags(&matches, "v")
    }

    #[test]
    fn lists_are_comma_separated_or_repeated() {
        let list = flags::<Vec<String>>(&["x", "--v", "a,b", "--v", "c"]);
        assert_eq!(list.unwrap(), ["a", "b", "c"]);
        assert_eq!(flags::<Vec<String>>(&["x"]), None);
    }

    #[test]
    fn a_bare_bool_flag_is_true() {
        assert_eq!(flags::<bool>(&["x", "--v"]), Some(true));
        assert_eq!(flags::<bool>(&["x", "--v", "false"]), Some(false));
        assert_eq!(flags::<bool>(&["x"]), None);
    }

    #[test]
    fn values_are_shown_as_they_are_written() {
        assert_eq!(
            <usize as SettingValue<ByteSize>>::shown(&(2 << 20)),
            Shown::text("2MiB")
        );
        assert_eq!(Duration::from_millis(1500).shown(), Shown::text("1500ms"));
        assert_eq!(
            <bool as SettingValue<Switch>>::shown(&false),
            Shown::text("off")
        );
        assert_eq!(
            <Option<u32> as SettingValue<u32>>::shown(&None),
            Shown::Unset
        );
    }
}
