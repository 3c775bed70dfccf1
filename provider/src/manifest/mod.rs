//! Reading what users write: the app manifest (`spin.toml`, or the locked
//! app `spin up` makes of it) and the runtime config that binds channel links
//! to brokers. Every mistake is reported
//! before anything starts, naming the file, the key path and the line.

mod locked;
pub mod runtime_config;
mod spin;
pub mod variables;

pub use crate::config::{ConfigError, ConfigErrors, KeyPath, TomlSource};
pub use locked::{LockedAppLocation, load_locked_app, load_locked_app_with_links};
pub use runtime_config::RuntimeConfig;
pub use spin::{IDLE_TIMEOUT_RANGE, Links, REUSE_COUNT_RANGE, load_app, load_app_with_links};
pub use variables::Variables;
