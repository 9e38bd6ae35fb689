//! The `--config` file: a TOML table whose keys are setting names. Each
//! value is read in its setting's syntax as the file is parsed, so a
//! mistake is reported with its line and column (as serde reports it for
//! any TOML file); a key that names no setting is refused the same way.
//! What the file gives is kept, unconverted, until the sources are stacked.

use std::{any::Any, collections::HashMap, fmt};

use serde::{
    de::{self, DeserializeSeed, Error as _, MapAccess, Visitor},
    Deserialize as _,
};

use super::Declared;

/// One value the file gives, in its setting's syntax.
pub type FileValue = Box<dyn Any + Send + Sync>;

/// The values a `--config` file gives, by setting name.
#[derive(Default)]
pub struct FileValues(HashMap<&'static str, FileValue>);

impl FileValues {
    /// Reads `text`, a TOML document of settings among `declared`.
    pub fn parse<C>(
        text: &str,
        declared: &[Box<dyn Declared<C>>],
    ) -> Result<Self, toml::de::Error> {
        FileSeed { declared }.deserialize(toml::Deserializer::new(text))
    }

    /// The value the file gives setting `name`, if any.
    pub fn get<S: Clone + 'static>(&self, name: &str) -> Option<S> {
        self.0.get(name)?.downcast_ref::<S>().cloned()
    }
}

/// Reads the document's table.
struct FileSeed<'a, C> {
    declared: &'a [Box<dyn Declared<C>>],
}

impl<'de, C> DeserializeSeed<'de> for FileSeed<'_, C> {
    type Value = FileValues;

    fn deserialize<D: de::Deserializer<'de>>(
        self,
        deserializer: D,
    ) -> Result<FileValues, D::Error> {
        deserializer.deserialize_map(self)
    }
}

impl<'de, C> Visitor<'de> for FileSeed<'_, C> {
    type Value = FileValues;

    fn expecting(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("a table of settings")
    }

    fn visit_map<A: MapAccess<'de>>(self, mut map: A) -> Result<FileValues, A::Error> {
        let mut values = FileValues::default();
        while let Some(index) = map.next_key_seed(KeySeed(self.declared))? {
            let setting = &self.declared[index];
            let value = map.next_value_seed(ValueSeed(setting.as_ref()))?;
            values.0.insert(setting.doc().name, value);
        }
        Ok(values)
    }
}

/// A key: the index of the setting it names.
struct KeySeed<'a, C>(&'a [Box<dyn Declared<C>>]);

impl<'de, C> DeserializeSeed<'de> for KeySeed<'_, C> {
    type Value = usize;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<usize, D::Error> {
        let key = String::deserialize(deserializer)?;
        self.0
            .iter()
            .position(|setting| setting.doc().name == key)
            .ok_or_else(|| D::Error::custom(unknown_key(&key, self.0)))
    }
}

/// Serde's words for a key no setting has.
fn unknown_key<C>(key: &str, declared: &[Box<dyn Declared<C>>]) -> String {
    let names: Vec<String> = declared
        .iter()
        .map(|setting| format!("`{}`", setting.doc().name))
        .collect();
    format!(
        "unknown field `{key}`, expected one of {}",
        names.join(", ")
    )
}

/// A value, read in its setting's syntax.
struct ValueSeed<'a, C>(&'a dyn Declared<C>);

impl<'de, C> DeserializeSeed<'de> for ValueSeed<'_, C> {
    type Value = FileValue;

    fn deserialize<D: de::Deserializer<'de>>(self, deserializer: D) -> Result<FileValue, D::Error> {
        let value = toml::Value::deserialize(deserializer)?;
        self.0
            .read_toml(value)
            .map_err(|error| D::Error::custom(error.message()))
    }
}
