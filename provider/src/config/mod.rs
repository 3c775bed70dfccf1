//! Configuration errors and where they are: the error type every loader
//! reports (file, key path, line) and the TOML reader that finds lines for
//! key paths. Below both the manifest loaders and the broker links' settings,
//! so that neither reaches into the other for them.

mod locate;

pub use locate::{KeyPath, TomlSource};

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
