//! What a reload changed (spec/CONFIG.md §5): the per-key diff between two snapshots, each
//! change classed live or rebind, rendered for logs without secrets (sensitive values such as
//! key/cert/CA/macaroon paths and SNI show only as `<redacted>` or `<unset>`; file contents are never read
//! here).

use std::fmt;

use super::keys::{Key, ReloadClass, Value};
use super::Config;

/// One changed key.
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct KeyChange {
    /// The key.
    pub key: Key,
    /// Whether the change is live or needs a rebind.
    pub class: ReloadClass,
    /// The previous value as text (`<redacted>` for sensitive keys).
    pub old: String,
    /// The new value as text (`<redacted>` for sensitive keys).
    pub new: String,
}

impl KeyChange {
    /// The dotted key name, e.g. `"limits.chunk_bytes"`.
    pub fn name(&self) -> &'static str {
        self.key.dotted()
    }
}

/// The outcome of a successful [`ConfigHandle::reload`](super::ConfigHandle::reload).
#[derive(Clone, Debug, PartialEq, Eq)]
#[non_exhaustive]
pub struct ReloadReport {
    /// The generation now current (unchanged if nothing changed).
    pub generation: u64,
    /// Changed keys, in spec §3 order. Empty ⇒ the snapshot was not swapped.
    pub changed: Vec<KeyChange>,
}

impl ReloadReport {
    /// True when at least one changed key needs the consumer to drain and rebind listeners.
    pub fn needs_rebind(&self) -> bool {
        self.changed.iter().any(|c| c.class == ReloadClass::Rebind)
    }

    /// True when nothing changed.
    pub fn is_unchanged(&self) -> bool {
        self.changed.is_empty()
    }

    /// Dotted names of the changed keys.
    pub fn changed_keys(&self) -> Vec<&'static str> {
        self.changed.iter().map(KeyChange::name).collect()
    }

    /// Dotted names of the changed keys that took effect live.
    pub fn live_keys(&self) -> Vec<&'static str> {
        self.keys_of(ReloadClass::Live)
    }

    /// Dotted names of the changed keys that need a rebind.
    pub fn rebind_keys(&self) -> Vec<&'static str> {
        self.keys_of(ReloadClass::Rebind)
    }

    fn keys_of(&self, class: ReloadClass) -> Vec<&'static str> {
        self.changed
            .iter()
            .filter(|c| c.class == class)
            .map(KeyChange::name)
            .collect()
    }
}

impl fmt::Display for ReloadReport {
    /// `generation 3: limits.chunk_bytes 64KiB -> 32KiB (live), bind_addr … (rebind)`.
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "generation {}: ", self.generation)?;
        if self.changed.is_empty() {
            return f.write_str("no changes");
        }
        for (i, c) in self.changed.iter().enumerate() {
            if i > 0 {
                f.write_str(", ")?;
            }
            write!(
                f,
                "{} {:?} -> {:?} ({})",
                c.name(),
                c.old,
                c.new,
                c.class.as_str()
            )?;
        }
        Ok(())
    }
}

/// The keys whose values differ between `old` and `new`.
pub(crate) fn diff(old: &Config, new: &Config) -> Vec<KeyChange> {
    Key::ALL
        .into_iter()
        .filter_map(|key| {
            let (a, b) = (Value::get(old, key), Value::get(new, key));
            (a != b).then(|| {
                let (a, b) = (a.to_text(), b.to_text());
                let redact = |s: String| {
                    if key.is_sensitive() && s.is_empty() {
                        "<unset>".to_owned()
                    } else if key.is_sensitive() {
                        "<redacted>".to_owned()
                    } else {
                        s
                    }
                };
                KeyChange {
                    key,
                    class: key.reload_class(),
                    old: redact(a),
                    new: redact(b),
                }
            })
        })
        .collect()
}
