//! The loader: merges defaults, a config file, `RON_TRANSPORT_*` env vars and (feature `cli`)
//! `--transport.*` flags under the precedence of spec/CONFIG.md §1 — CLI > env > file >
//! defaults, per key — then validates. The environment is an injectable list so tests never
//! touch the process environment.
//!
//! One rule spans keys: `bind_addr` has a default (`127.0.0.1:0`), so when some source sets
//! `uds.path` and no source sets `bind_addr`, the default bind is dropped. Setting both
//! explicitly is a validation error (they are mutually exclusive); unset the bind with an empty
//! value (`RON_TRANSPORT_BIND_ADDR=""`, `bind_addr = ""`).

use std::collections::BTreeSet;
use std::ffi::OsString;
use std::io::Read;
use std::path::{Path, PathBuf};

use super::keys::{Key, Value};
use super::source::{document_layer, env_layer, ConfigWarning, Format, Layer, ENV_PREFIX};
use super::validate::CompiledFeatures;
use super::{Config, ConfigError, ValidConfig};

/// Config files larger than this are refused.
const MAX_CONFIG_FILE_BYTES: u64 = 4 * 1024 * 1024;

#[derive(Clone, Debug)]
enum FileSource {
    Path { path: PathBuf, required: bool },
    Inline { text: String, format: Format },
}

/// Builder merging the configuration sources. Reusable: [`ConfigLoader::load`] re-reads the
/// file each time, which is how a reload recomputes the effective config.
#[derive(Clone, Debug, Default)]
pub struct ConfigLoader {
    file: Option<FileSource>,
    env: Vec<(OsString, OsString)>,
    cli: Vec<(Key, Value)>,
    cli_config_path: Option<PathBuf>,
}

/// A loaded, validated configuration and what was noticed on the way.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Loaded {
    /// The validated configuration.
    pub config: ValidConfig,
    /// Deprecation warnings (also logged with `tracing::warn!`).
    pub warnings: Vec<ConfigWarning>,
    /// The config file that was read, if any.
    pub file: Option<PathBuf>,
}

/// The merged configuration before validation.
#[derive(Clone, Debug)]
#[non_exhaustive]
pub struct Merged {
    /// Defaults overlaid by file, env and CLI.
    pub config: Config,
    /// Deprecation warnings (already logged).
    pub warnings: Vec<ConfigWarning>,
    /// The config file that was read, if any.
    pub file: Option<PathBuf>,
}

impl ConfigLoader {
    /// Defaults only, until sources are added.
    pub fn new() -> Self {
        Self::default()
    }

    /// A config file that must exist (TOML or JSON, by extension or content). A missing file is
    /// a [`ConfigError::File`]. `--transport.config` overrides it.
    pub fn file(mut self, path: impl Into<PathBuf>) -> Self {
        self.file = Some(FileSource::Path {
            path: path.into(),
            required: true,
        });
        self
    }

    /// A config file that may be absent: if it does not exist the defaults (and other sources)
    /// apply. Any other error reading it is still an error.
    pub fn optional_file(mut self, path: impl Into<PathBuf>) -> Self {
        self.file = Some(FileSource::Path {
            path: path.into(),
            required: false,
        });
        self
    }

    /// An in-memory TOML document in place of a file.
    pub fn toml_str(mut self, text: impl Into<String>) -> Self {
        self.file = Some(FileSource::Inline {
            text: text.into(),
            format: Format::Toml,
        });
        self
    }

    /// An in-memory JSON document in place of a file.
    pub fn json_str(mut self, text: impl Into<String>) -> Self {
        self.file = Some(FileSource::Inline {
            text: text.into(),
            format: Format::Json,
        });
        self
    }

    /// Environment variables to read (only `RON_TRANSPORT_*` ones are looked at; later pairs
    /// override earlier ones). Replaces previously given variables.
    pub fn env_vars<I, K, V>(mut self, vars: I) -> Self
    where
        I: IntoIterator<Item = (K, V)>,
        K: Into<OsString>,
        V: Into<OsString>,
    {
        self.env = vars
            .into_iter()
            .map(|(k, v)| (k.into(), v.into()))
            .collect();
        self
    }

    /// Reads `RON_TRANSPORT_*` from the process environment.
    pub fn from_process_env(self) -> Self {
        let vars: Vec<_> = std::env::vars_os()
            .filter(|(k, _)| k.to_str().is_some_and(|k| k.starts_with(ENV_PREFIX)))
            .collect();
        self.env_vars(vars)
    }

    /// `--transport.*` flags (highest precedence). `--transport.config` replaces the file.
    #[cfg(feature = "cli")]
    pub fn cli(mut self, args: &super::TransportArgs) -> Self {
        self.cli = args.assignments();
        self.cli_config_path = args.config.clone();
        self
    }

    /// Merges and validates against this build's features.
    pub fn load(&self) -> Result<Loaded, ConfigError> {
        self.load_for(&CompiledFeatures::current())
    }

    /// Merges and validates against `features`.
    pub fn load_for(&self, features: &CompiledFeatures) -> Result<Loaded, ConfigError> {
        let merged = self.merge()?;
        Ok(Loaded {
            config: merged.config.validate_for(features)?,
            warnings: merged.warnings,
            file: merged.file,
        })
    }

    /// Merges the sources without validating (e.g. to feed [`ConfigHandle::reload`]).
    ///
    /// [`ConfigHandle::reload`]: super::ConfigHandle::reload
    pub fn merge(&self) -> Result<Merged, ConfigError> {
        let file_source = match &self.cli_config_path {
            Some(p) => Some(FileSource::Path {
                path: p.clone(),
                required: true,
            }),
            None => self.file.clone(),
        };
        let (file_layer, file) = match file_source {
            None => (Layer::default(), None),
            Some(FileSource::Inline { text, format }) => {
                let origin = match format {
                    Format::Toml => "inline toml",
                    Format::Json => "inline json",
                };
                (document_layer(&text, format, origin, None)?, None)
            }
            Some(FileSource::Path { path, required }) => match read_file(&path, required)? {
                None => (Layer::default(), None),
                Some(text) => {
                    let origin = format!("file {}", path.display());
                    let format = Format::detect(Some(&path), &text);
                    (
                        document_layer(&text, format, &origin, Some(&path))?,
                        Some(path),
                    )
                }
            },
        };
        let env = env_layer(&self.env)?;
        let cli = Layer {
            sets: self.cli.clone(),
            warnings: Vec::new(),
        };

        let mut config = Config::default();
        let mut explicit = BTreeSet::new();
        let mut warnings = Vec::new();
        // Lowest precedence first: later layers overwrite earlier ones key by key.
        for layer in [file_layer, env, cli] {
            for (key, value) in layer.sets {
                explicit.insert(key);
                value.set(&mut config, key);
            }
            warnings.extend(layer.warnings);
        }
        if config.uds_path.is_some() && !explicit.contains(&Key::BindAddr) {
            config.bind_addr = None;
        }
        for w in &warnings {
            tracing::warn!(
                old_key = w.old_key,
                new_key = w.new_key,
                origin = %w.origin,
                shadowed = w.shadowed,
                "{w}"
            );
        }
        Ok(Merged {
            config,
            warnings,
            file,
        })
    }
}

/// Reads a config file as UTF-8; `Ok(None)` if it is absent and not required.
fn read_file(path: &Path, required: bool) -> Result<Option<String>, ConfigError> {
    let file_err = |reason: String| ConfigError::File {
        path: path.to_path_buf(),
        reason,
    };
    let file = match std::fs::File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound && !required => {
            tracing::debug!(path = %path.display(), "transport config file absent; using defaults");
            return Ok(None);
        }
        Err(e) => return Err(file_err(format!("cannot open: {e}"))),
    };
    let mut bytes = Vec::new();
    file.take(MAX_CONFIG_FILE_BYTES + 1)
        .read_to_end(&mut bytes)
        .map_err(|e| file_err(format!("cannot read: {e}")))?;
    if bytes.len() as u64 > MAX_CONFIG_FILE_BYTES {
        return Err(file_err("larger than 4 MiB".to_owned()));
    }
    String::from_utf8(bytes)
        .map(Some)
        .map_err(|e| file_err(format!("not valid UTF-8: {e}")))
}
