//! One declaration per setting. Every setting of the server is declared
//! once, as a field of a *section* (a struct written with `section!`):
//! its field name and type, the syntax users write it in (`as ByteSize`),
//! its default, and a [`Setting`] builder naming it (`--max-queue-bytes`)
//! with its `--help` line, its README description and, where it has them,
//! a range check, a default in words, secrecy. From that one declaration
//! come the flag and its `SHARDCAST_*` variable (clap), the key of the
//! `--config` TOML file, the section's `Default`, the parse into the
//! field's type (once, after the sources are stacked: flag > environment >
//! file > default), `check-config`'s line and the README's table row
//! ([`render`]). Sections nest, and `Config` is the outermost one.
//!
//! This module knows no setting of shardcast's: the layers that own
//! settings (`config`, and below it `security`, `engine`, `webhook`)
//! declare their sections with it, so none of them imports `config`.
//! [`syntax`] says how values are written and turned into fields (and back
//! into text), [`file`](mod@file) reads the TOML file, [`render`] writes
//! `check-config`'s TOML and the README table.

pub mod file;
pub mod render;
pub mod syntax;

use clap::{Arg, ArgMatches};

pub use self::{
    file::FileValues,
    syntax::{SettingValue, Shown, Switch, Syntax},
};

/// Declares a section: a struct of settings (and of nested sections), its
/// `Default` and its [`Section`] list. Each setting is
///
/// ```text
/// /// The field's documentation.
/// field: FieldType as Syntax = default_expression => new("name", "VALUE")
///     .help("the --help line").readme("the README's description");
/// ```
///
/// where `new(..)` (or `custom(..)`) and the calls after it are
/// [`Setting`]'s, typed for this field. Nested sections follow in a
/// `nested { field: Section; }` block.
macro_rules! section {
    (
        $(#[$meta:meta])*
        pub struct $section:ident {
            $(
                $(#[doc = $doc:literal])*
                $field:ident: $ty:ty as $syntax:ty = $default:expr =>
                    $make:ident($($make_args:tt)*) $(.$method:ident($($args:tt)*))*;
            )*
        }
        $(
            nested {
                $( $(#[doc = $nested_doc:literal])* $nested:ident: $nested_ty:ty; )*
            }
        )?
    ) => {
        $(#[$meta])*
        #[derive(Debug, Clone)]
        pub struct $section {
            $( $(#[doc = $doc])* pub $field: $ty, )*
            $($( $(#[doc = $nested_doc])* pub $nested: $nested_ty, )*)?
        }

        impl Default for $section {
            fn default() -> Self {
                $section {
                    $( $field: $default, )*
                    $($( $nested: Default::default(), )*)?
                }
            }
        }

        impl $crate::settings::Section for $section {
            fn declarations() -> Vec<Box<dyn $crate::settings::Declared<Self>>> {
                let mut all: Vec<Box<dyn $crate::settings::Declared<Self>>> = Vec::new();
                $(
                    let setting =
                        $crate::settings::Setting::<Self, $ty, $syntax>::$make($($make_args)*)
                            $(.$method($($args)*))*;
                    all.push(Box::new(setting.at($crate::settings::Field {
                        get: |section| &section.$field,
                        get_mut: |section| &mut section.$field,
                        default: || $default,
                    })));
                )*
                $($(
                    $crate::settings::nest(
                        &mut all,
                        |section: &Self| &section.$nested,
                        |section: &mut Self| &mut section.$nested,
                    );
                )*)?
                all
            }
        }
    };
}
pub(crate) use section;

/// A struct of settings declared with `section!`.
pub trait Section: Default + 'static {
    /// Its settings and those of the sections it holds, in order.
    fn declarations() -> Vec<Box<dyn Declared<Self>>>;
}

/// What `--help`, the README and `check-config` say of one setting.
#[derive(Debug, Clone)]
pub struct Doc {
    /// The flag (`--name`) and the TOML key.
    pub name: &'static str,
    /// The environment variable: `SHARDCAST_` and the name in upper case.
    pub env: String,
    /// What `--help` calls the value (`SIZE`, `DURATION`).
    pub value_name: &'static str,
    /// The `--help` line, without the default.
    pub help: &'static str,
    /// The README table's description (Markdown).
    pub readme: &'static str,
    /// The default in words, where the value does not say it (computed
    /// from the machine, or nothing set).
    pub default: Option<&'static str>,
    /// A secret: `check-config` shows only its length, `--help` not its
    /// environment value.
    pub secret: bool,
    /// `--help` does not show its environment value (a URL that may carry
    /// a password).
    pub hide_env: bool,
}

/// The environment variable of setting `name`.
pub fn env_name(name: &str) -> String {
    format!("SHARDCAST_{}", name.to_uppercase().replace('-', "_"))
}

/// Ok when `ok`, else the reason `why` gives (a check's message).
pub fn ensure(ok: bool, why: impl FnOnce() -> String) -> Result<(), String> {
    if ok {
        Ok(())
    } else {
        Err(why())
    }
}

/// One setting of section `C`: a field of type `T` written as `S`. Built
/// by `section!`, which then binds it to its field ([`Setting::at`]).
pub struct Setting<C, T, S> {
    doc: Doc,
    parse: fn(S, &'static str) -> Result<T, String>,
    show: fn(&T) -> Shown,
    show_in: Option<fn(&C) -> Shown>,
    check: fn(&T) -> Result<(), String>,
}

impl<C, T: SettingValue<S>, S: Syntax> Setting<C, T, S> {
    /// Setting `name`, its value called `value_name` in `--help`, parsed
    /// and shown as its type says ([`SettingValue`]).
    pub fn new(name: &'static str, value_name: &'static str) -> Self {
        Setting::custom(name, value_name, T::from_setting, T::shown)
    }
}

impl<C, T, S: Syntax> Setting<C, T, S> {
    /// Setting `name`, parsed by `parse` (given the setting's name for its
    /// messages) and shown by `show`.
    pub fn custom(
        name: &'static str,
        value_name: &'static str,
        parse: fn(S, &'static str) -> Result<T, String>,
        show: fn(&T) -> Shown,
    ) -> Self {
        Setting {
            doc: Doc {
                name,
                env: env_name(name),
                value_name,
                help: "",
                readme: "",
                default: None,
                secret: false,
                hide_env: false,
            },
            parse,
            show,
            show_in: None,
            check: |_| Ok(()),
        }
    }

    /// The `--help` line.
    pub fn help(mut self, text: &'static str) -> Self {
        self.doc.help = text;
        self
    }

    /// The README table's description.
    pub fn readme(mut self, text: &'static str) -> Self {
        self.doc.readme = text;
        self
    }

    /// The default in words (`--help` and the README), for a default the
    /// value does not say.
    pub fn default_text(mut self, text: &'static str) -> Self {
        self.doc.default = Some(text);
        self
    }

    /// A secret: never shown, only whether it is set and its length.
    pub fn secret(mut self) -> Self {
        self.doc.secret = true;
        self
    }

    /// Its environment value is not shown by `--help`.
    pub fn hide_env(mut self) -> Self {
        self.doc.hide_env = true;
        self
    }

    /// A check of the value on its own (a range), whose error quotes it.
    pub fn check(mut self, check: fn(&T) -> Result<(), String>) -> Self {
        self.check = check;
        self
    }

    /// `check-config` shows what `show` makes of the whole section
    /// instead of the value (`anonymous`: whether the server will be).
    pub fn show_in(mut self, show: fn(&C) -> Shown) -> Self {
        self.show_in = Some(show);
        self
    }

    /// The setting bound to its field.
    pub fn at(self, field: Field<C, T>) -> Bound<C, T, S> {
        Bound {
            setting: self,
            field,
        }
    }
}

/// Where a setting's value lives in its section, and its default.
pub struct Field<C, T> {
    pub get: fn(&C) -> &T,
    pub get_mut: fn(&mut C) -> &mut T,
    pub default: fn() -> T,
}

/// A [`Setting`] bound to its field: what [`Declared`] needs.
pub struct Bound<C, T, S> {
    setting: Setting<C, T, S>,
    field: Field<C, T>,
}

/// One setting of a section `C`, whatever its type: what the sources,
/// `check-config` and the README go through.
pub trait Declared<C>: Send + Sync {
    /// Its names and texts.
    fn doc(&self) -> &Doc;
    /// Its flag (and environment variable).
    fn arg(&self) -> Arg;
    /// Its value in the TOML file, read in its syntax.
    fn read_toml(&self, value: toml::Value) -> Result<file::FileValue, toml::de::Error>;
    /// Sets its field from the first source that gives it (flag or
    /// environment, then file); the error quotes what is wrong.
    fn apply(&self, config: &mut C, sources: &Sources<'_>) -> Result<(), String>;
    /// Checks its field's value on its own.
    fn check(&self, config: &C) -> Result<(), String>;
    /// Its value as `check-config` writes it.
    fn show(&self, config: &C) -> Shown;
    /// Its default as `--help` and the README show it.
    fn default_shown(&self) -> Shown;
}

impl<C, T, S: Syntax> Declared<C> for Bound<C, T, S> {
    fn doc(&self) -> &Doc {
        &self.setting.doc
    }

    fn arg(&self) -> Arg {
        let doc = &self.setting.doc;
        let help = match render::default_text(doc, &self.default_shown()) {
            Some(default) => format!("{} [default: {default}]", doc.help),
            None => doc.help.to_owned(),
        };
        S::arg(
            Arg::new(doc.name)
                .long(doc.name)
                .env(doc.env.clone())
                .value_name(doc.value_name)
                .help(help)
                .hide_env_values(doc.secret || doc.hide_env),
        )
    }

    fn read_toml(&self, value: toml::Value) -> Result<file::FileValue, toml::de::Error> {
        Ok(Box::new(value.try_into::<S>()?))
    }

    fn apply(&self, config: &mut C, sources: &Sources<'_>) -> Result<(), String> {
        let name = self.setting.doc.name;
        if let Some(raw) = sources.get::<S>(name) {
            *(self.field.get_mut)(config) = (self.setting.parse)(raw, name)?;
        }
        Ok(())
    }

    fn check(&self, config: &C) -> Result<(), String> {
        (self.setting.check)((self.field.get)(config))
    }

    fn show(&self, config: &C) -> Shown {
        let shown = match self.setting.show_in {
            Some(show) => show(config),
            None => (self.setting.show)((self.field.get)(config)),
        };
        match (self.setting.doc.secret, shown) {
            (true, Shown::Text(text)) => Shown::Secret(text.len()),
            (_, shown) => shown,
        }
    }

    fn default_shown(&self) -> Shown {
        (self.setting.show)(&(self.field.default)())
    }
}

/// The settings of a section `N` held in field of `C`, seen from `C`.
struct Nested<C, N> {
    get: fn(&C) -> &N,
    get_mut: fn(&mut C) -> &mut N,
    inner: Box<dyn Declared<N>>,
}

impl<C, N> Declared<C> for Nested<C, N> {
    fn doc(&self) -> &Doc {
        self.inner.doc()
    }

    fn arg(&self) -> Arg {
        self.inner.arg()
    }

    fn read_toml(&self, value: toml::Value) -> Result<file::FileValue, toml::de::Error> {
        self.inner.read_toml(value)
    }

    fn apply(&self, config: &mut C, sources: &Sources<'_>) -> Result<(), String> {
        self.inner.apply((self.get_mut)(config), sources)
    }

    fn check(&self, config: &C) -> Result<(), String> {
        self.inner.check((self.get)(config))
    }

    fn show(&self, config: &C) -> Shown {
        self.inner.show((self.get)(config))
    }

    fn default_shown(&self) -> Shown {
        self.inner.default_shown()
    }
}

/// Adds the settings of section `N`, held in the field `get` reaches, to
/// `all` (those of `C`).
pub fn nest<C: 'static, N: Section>(
    all: &mut Vec<Box<dyn Declared<C>>>,
    get: fn(&C) -> &N,
    get_mut: fn(&mut C) -> &mut N,
) {
    for inner in N::declarations() {
        all.push(Box::new(Nested {
            get,
            get_mut,
            inner,
        }));
    }
}

/// Where settings come from, first first: flags and environment variables
/// (clap's matches), then the TOML file. What neither gives keeps its
/// default.
pub struct Sources<'a> {
    pub flags: Option<&'a ArgMatches>,
    pub file: &'a FileValues,
}

impl Sources<'_> {
    /// The value setting `name` is given, in its syntax.
    pub fn get<S: Syntax>(&self, name: &str) -> Option<S> {
        self.flags
            .and_then(|matches| S::from_flags(matches, name))
            .or_else(|| self.file.get::<S>(name))
    }
}
