//! The declared settings written out: a configuration's effective
//! settings as the lines of a `--config` TOML file (`shardcast
//! check-config`: every setting with the value the server would run with,
//! wherever it came from; secrets never, only whether they are set;
//! settings not set as comments — fed back as `--config`, with the secrets
//! in the environment, it gives the same settings), and the README's table
//! of settings.

use super::{Declared, Doc, Shown};

/// The effective settings of `config` as the lines of a TOML file, in the
/// order of `--help`.
pub fn effective_toml<C>(declared: &[Box<dyn Declared<C>>], config: &C) -> String {
    let mut out = String::from(
        "# shardcast's effective settings (flags > SHARDCAST_* environment > \
         --config file > defaults)\n",
    );
    for setting in declared {
        let name = setting.doc().name;
        let line = match setting.show(config) {
            Shown::Text(text) => format!("{name} = {}", toml::Value::String(text)),
            Shown::Number(n) => format!("{name} = {n}"),
            Shown::Bool(b) => format!("{name} = {b}"),
            Shown::List(items) => {
                let items = items.into_iter().map(toml::Value::String).collect();
                format!("{name} = {}", toml::Value::Array(items))
            }
            Shown::Secret(len) => format!("# {name}: set ({len} bytes), not shown"),
            Shown::Unset => format!("# {name}: not set"),
        };
        out.push_str(&line);
        out.push('\n');
    }
    out
}

/// A setting's default as `--help` says it: in words where the
/// declaration gives them, else the default value as a file would write
/// it; `None` when nothing is set by default.
pub fn default_text(doc: &Doc, default: &Shown) -> Option<String> {
    if let Some(words) = doc.default {
        return Some(words.to_owned());
    }
    match default {
        Shown::Text(text) => Some(text.clone()),
        Shown::Number(n) => Some(n.to_string()),
        Shown::Bool(b) => Some(b.to_string()),
        Shown::List(items) if !items.is_empty() => Some(items.join(",")),
        Shown::List(_) | Shown::Secret(_) | Shown::Unset => None,
    }
}

/// The README's table of settings: flag, environment variable, default,
/// description.
pub fn readme_table<C>(declared: &[Box<dyn Declared<C>>]) -> String {
    let mut out = String::from("| Setting | Environment | Default | |\n|---|---|---|---|\n");
    for setting in declared {
        let doc = setting.doc();
        let default = match (doc.default, default_text(doc, &setting.default_shown())) {
            (Some(words), _) => words.to_owned(),
            (None, Some(value)) => format!("`{value}`"),
            (None, None) => "none".to_owned(),
        };
        out.push_str(&format!(
            "| `--{}` | `{}` | {default} | {} |\n",
            doc.name, doc.env, doc.readme
        ));
    }
    out
}
