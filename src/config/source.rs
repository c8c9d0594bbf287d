//! Configuration sources turned into [`Layer`]s of `(Key, Value)` assignments: TOML and JSON
//! documents (bare, or wrapped in a `transport` table) and `RON_TRANSPORT_*` environment
//! variables. Unknown keys are errors naming the key path; value errors name the key. The
//! deprecated alias `limits.max_body_bytes` (env `RON_TRANSPORT_MAX_BODY_BYTES`) maps to
//! `limits.max_frame_bytes` with a [`ConfigWarning`]; within one source the new key wins.
//!
//! Precedence between layers is the loader's business, not this module's.

use std::ffi::OsString;
use std::fmt;
use std::path::Path;

use super::keys::{FileValue, Key, Value};
use super::ConfigError;

/// The prefix of every environment variable read by this crate.
pub const ENV_PREFIX: &str = "RON_TRANSPORT_";

/// The deprecated file key (spec/CONFIG.md §9) and its replacement.
pub const DEPRECATED_MAX_BODY: &str = "limits.max_body_bytes";
/// The deprecated env var alias of `RON_TRANSPORT_MAX_FRAME_BYTES`.
pub const DEPRECATED_MAX_BODY_ENV: &str = "RON_TRANSPORT_MAX_BODY_BYTES";

/// A config document format.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Format {
    /// TOML (preferred).
    Toml,
    /// JSON.
    Json,
}

impl Format {
    /// By extension (`.toml` / `.json`, case-insensitive); otherwise by content: a document
    /// whose first non-blank character is `{` is JSON, anything else TOML.
    pub fn detect(path: Option<&Path>, text: &str) -> Format {
        let ext = path
            .and_then(Path::extension)
            .and_then(|e| e.to_str())
            .map(str::to_ascii_lowercase);
        match ext.as_deref() {
            Some("toml") => Format::Toml,
            Some("json") => Format::Json,
            _ if text.trim_start().starts_with('{') => Format::Json,
            _ => Format::Toml,
        }
    }
}

/// A non-fatal finding while loading: a deprecated key was used.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ConfigWarning {
    /// The deprecated key or env var that was used.
    pub old_key: &'static str,
    /// Its replacement.
    pub new_key: &'static str,
    /// Where it was found (`file <path>`, `env`, `inline toml`…).
    pub origin: String,
    /// True when the new key was also set in the same source, so the old one was ignored.
    pub shadowed: bool,
}

impl fmt::Display for ConfigWarning {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(
            f,
            "deprecated key `{}` ({}) is an alias of `{}` and will be removed in v2",
            self.old_key, self.origin, self.new_key
        )?;
        if self.shadowed {
            write!(
                f,
                "; ignored because `{}` is also set (the new key wins)",
                self.new_key
            )?;
        }
        Ok(())
    }
}

/// The assignments one source makes, in source order.
#[derive(Debug, Default)]
pub(crate) struct Layer {
    pub(crate) sets: Vec<(Key, Value)>,
    pub(crate) warnings: Vec<ConfigWarning>,
}

impl Layer {
    /// Folds a deprecated max-body alias into the layer (the new key wins if present).
    fn resolve_alias(
        &mut self,
        alias: Option<Value>,
        old_key: &'static str,
        new_key: &'static str,
        origin: &str,
    ) {
        let Some(v) = alias else { return };
        let shadowed = self.sets.iter().any(|(k, _)| *k == Key::MaxFrameBytes);
        if !shadowed {
            self.sets.push((Key::MaxFrameBytes, v));
        }
        self.warnings.push(ConfigWarning {
            old_key,
            new_key,
            origin: origin.to_owned(),
            shadowed,
        });
    }
}

/// Parses a config document into a layer. `origin` names the source in errors and warnings;
/// `path` (if from a file) is used for syntax errors.
pub(crate) fn document_layer(
    text: &str,
    format: Format,
    origin: &str,
    path: Option<&Path>,
) -> Result<Layer, ConfigError> {
    let syntax = |reason: String| match path {
        Some(p) => ConfigError::File {
            path: p.to_path_buf(),
            reason,
        },
        None => ConfigError::Parse {
            key: origin.to_owned(),
            value: String::new(),
            reason,
        },
    };
    let root = match format {
        Format::Toml => {
            let table: toml::Table = toml::from_str(text)
                .map_err(|e| syntax(format!("invalid TOML: {}", e.to_string().trim_end())))?;
            from_toml(toml::Value::Table(table))
        }
        Format::Json => {
            let v: serde_json::Value =
                serde_json::from_str(text).map_err(|e| syntax(format!("invalid JSON: {e}")))?;
            from_json(v)
        }
    };
    let FileValue::Table(entries) = root else {
        return Err(syntax("the document must be a table/object".to_owned()));
    };
    // A document wrapped in `[transport]` holds only that table.
    let (prefix, entries) = match entries.iter().position(|(k, _)| k == "transport") {
        Some(i) => {
            if let Some((other, _)) = entries.iter().find(|(k, _)| k != "transport") {
                return Err(ConfigError::UnknownKey {
                    key: other.clone(),
                    origin: origin.to_owned(),
                });
            }
            match entries.into_iter().nth(i) {
                Some((_, FileValue::Table(inner))) => ("transport.", inner),
                Some((_, other)) => {
                    return Err(ConfigError::Parse {
                        key: "transport".to_owned(),
                        value: format!("<{}>", other.type_name()),
                        reason: "expected a table".to_owned(),
                    })
                }
                None => unreachable!("index found by position()"),
            }
        }
        None => ("", entries),
    };

    let mut layer = Layer::default();
    let mut alias = None;
    for (name, value) in &entries {
        if let Some(key) = Key::from_dotted(name) {
            layer.sets.push((key, Value::from_file(key, value)?));
            continue;
        }
        let section_prefix = format!("{name}.");
        if !Key::ALL
            .iter()
            .any(|k| k.dotted().starts_with(&section_prefix))
        {
            return Err(ConfigError::UnknownKey {
                key: format!("{prefix}{name}"),
                origin: origin.to_owned(),
            });
        }
        let FileValue::Table(fields) = value else {
            return Err(ConfigError::Parse {
                key: name.clone(),
                value: format!("<{}>", value.type_name()),
                reason: "expected a table".to_owned(),
            });
        };
        for (field, v) in fields {
            let dotted = format!("{name}.{field}");
            if dotted == DEPRECATED_MAX_BODY {
                alias = Some(
                    Value::from_file(Key::MaxFrameBytes, v)
                        .map_err(|e| rename_key(e, DEPRECATED_MAX_BODY))?,
                );
                continue;
            }
            match Key::from_dotted(&dotted) {
                Some(key) => layer.sets.push((key, Value::from_file(key, v)?)),
                None => {
                    return Err(ConfigError::UnknownKey {
                        key: format!("{prefix}{dotted}"),
                        origin: origin.to_owned(),
                    })
                }
            }
        }
    }
    layer.resolve_alias(
        alias,
        DEPRECATED_MAX_BODY,
        Key::MaxFrameBytes.dotted(),
        origin,
    );
    Ok(layer)
}

/// Parses `RON_TRANSPORT_*` variables (others are ignored) into a layer. Unknown variables
/// with the prefix are errors (a typo must not silently fall back to a default).
pub(crate) fn env_layer(vars: &[(OsString, OsString)]) -> Result<Layer, ConfigError> {
    let mut layer = Layer::default();
    let mut alias = None;
    for (name, value) in vars {
        let Some(name) = name.to_str() else { continue };
        if !name.starts_with(ENV_PREFIX) {
            continue;
        }
        let key = if name == DEPRECATED_MAX_BODY_ENV {
            None
        } else {
            Some(
                Key::from_env_var(name).ok_or_else(|| ConfigError::UnknownKey {
                    key: name.to_owned(),
                    origin: "env".to_owned(),
                })?,
            )
        };
        let text = value.to_str().ok_or_else(|| ConfigError::Parse {
            key: name.to_owned(),
            value: value.to_string_lossy().into_owned(),
            reason: "not valid UTF-8".to_owned(),
        })?;
        match key {
            Some(key) => {
                let v = Value::from_text(key, text, name)?;
                // The last occurrence of a variable wins, like in a real environment.
                layer.sets.retain(|(k, _)| *k != key);
                layer.sets.push((key, v));
            }
            None => alias = Some(Value::from_text(Key::MaxFrameBytes, text, name)?),
        }
    }
    layer.resolve_alias(
        alias,
        DEPRECATED_MAX_BODY_ENV,
        Key::MaxFrameBytes.env_var(),
        "env",
    );
    Ok(layer)
}

fn rename_key(e: ConfigError, key: &str) -> ConfigError {
    match e {
        ConfigError::Parse { value, reason, .. } => ConfigError::Parse {
            key: key.to_owned(),
            value,
            reason,
        },
        other => other,
    }
}

fn from_toml(v: toml::Value) -> FileValue {
    match v {
        toml::Value::String(s) => FileValue::Str(s),
        toml::Value::Integer(i) => FileValue::Int(i128::from(i)),
        toml::Value::Float(_) => FileValue::Float,
        toml::Value::Boolean(b) => FileValue::Bool(b),
        toml::Value::Datetime(_) => FileValue::Other("a datetime"),
        toml::Value::Array(a) => FileValue::Array(a.into_iter().map(from_toml).collect()),
        toml::Value::Table(t) => {
            FileValue::Table(t.into_iter().map(|(k, v)| (k, from_toml(v))).collect())
        }
    }
}

fn from_json(v: serde_json::Value) -> FileValue {
    match v {
        serde_json::Value::String(s) => FileValue::Str(s),
        serde_json::Value::Number(n) => match (n.as_i64(), n.as_u64()) {
            (Some(i), _) => FileValue::Int(i128::from(i)),
            (None, Some(u)) => FileValue::Int(i128::from(u)),
            (None, None) => FileValue::Float,
        },
        serde_json::Value::Bool(b) => FileValue::Bool(b),
        serde_json::Value::Null => FileValue::Other("null"),
        serde_json::Value::Array(a) => FileValue::Array(a.into_iter().map(from_json).collect()),
        // serde_json's map keeps the last of duplicate keys; we keep document order otherwise.
        serde_json::Value::Object(o) => {
            FileValue::Table(o.into_iter().map(|(k, v)| (k, from_json(v))).collect())
        }
    }
}
