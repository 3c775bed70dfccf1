//! Reading what users write: the app manifest (`spin.toml`, or the locked
//! app `spin up` makes of it) and the runtime config that binds channel links
//! to brokers. Every mistake is reported
//! before anything starts, naming the file, the key path and the line.

mod locate;
mod locked;
pub mod runtime_config;
mod spin;
mod variables;

pub use locate::{KeyPath, TomlSource};
pub use locked::{LockedAppLocation, load_locked_app};
pub use runtime_config::RuntimeConfig;
pub use spin::load_app;
pub use variables::Variables;

use std::fmt;
use std::path::{Path, PathBuf};

/// One mistake in a configuration file, and where it is.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigError {
    /// The file the mistake is in.
    pub file: PathBuf,
    /// The key path, e.g. `trigger.messaging[0].publish[1]`; empty for the whole file.
    pub key: String,
    /// The 1-based line, when the file format has lines to point at.
    pub line: Option<usize>,
    /// What is wrong.
    pub message: String,
}

impl fmt::Display for ConfigError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "{}", self.file.display())?;
        if let Some(line) = self.line {
            write!(f, ":{line}")?;
        }
        if !self.key.is_empty() {
            write!(f, ": `{}`", self.key)?;
        }
        write!(f, ": {}", self.message)
    }
}

/// All the mistakes found in one load, so users fix them in one go.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ConfigErrors(pub Vec<ConfigError>);

impl fmt::Display for ConfigErrors {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        for (i, e) in self.0.iter().enumerate() {
            if i > 0 {
                writeln!(f)?;
            }
            write!(f, "{e}")?;
        }
        Ok(())
    }
}

impl std::error::Error for ConfigErrors {}

impl From<ConfigError> for ConfigErrors {
    fn from(e: ConfigError) -> Self {
        ConfigErrors(vec![e])
    }
}

impl ConfigError {
    /// An error about a whole file (unreadable, not TOML...).
    pub fn file(file: &Path, message: impl Into<String>) -> Self {
        ConfigError {
            file: file.to_path_buf(),
            key: String::new(),
            line: None,
            message: message.into(),
        }
    }
}
