//! The app model: what an app declares, validated and resolved, independent
//! of where it was read from (a spin.toml, or a Spin locked app).

mod allowed_hosts;

pub use allowed_hosts::{AllowedHosts, well_known_port};

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;
use std::time::Duration;

/// One app: its channels and the components that handle them.
#[derive(Clone, Debug, PartialEq)]
pub struct App {
    /// The app's name, from `[application] name`; unique within a provider.
    pub name: String,
    /// The file the app was read from, for messages.
    pub origin: PathBuf,
    /// The directory of a local app's spin.toml: its `.spin/` state (and
    /// log) directory lives there, as with Spin. `None` for remote apps.
    pub dir: Option<PathBuf>,
    /// Channels by the name the app's components use.
    pub channels: BTreeMap<String, Channel>,
    /// The components that have a `[[trigger.messaging]]` entry.
    pub components: Vec<ComponentSpec>,
}

/// Whether a channel's consumers compete for events or each see all of them.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ChannelKind {
    /// Each event reaches exactly one of the channel's consumers.
    Queue,
    /// Each event reaches every subscriber.
    Topic,
}

impl fmt::Display for ChannelKind {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(match self {
            ChannelKind::Queue => "queue",
            ChannelKind::Topic => "topic",
        })
    }
}

/// A channel an app declared, bound to a broker link.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Channel {
    /// The name components use in `channel::queue(name)` / `channel::topic(name)`.
    pub name: String,
    /// Queue or topic.
    pub kind: ChannelKind,
    /// The runtime-config link the channel lives on.
    pub link: String,
    /// The broker-side name (subject, topic, stream, queue...).
    pub address: String,
    /// The name competing consumers of a queue share on the broker.
    pub group: String,
    /// The largest `data` a publish may carry, in bytes.
    pub max_payload: Option<usize>,
    /// How many times a delivery is handed to a failing handler before it is
    /// dead-lettered.
    pub max_attempts: u32,
    /// How long to wait before trying a failed event again.
    pub retry: RetryPolicy,
    /// Where events go after `max_attempts` failures; without it they are
    /// logged in full, as the last resort.
    pub dead_letter: Option<String>,
}

/// A component with a `[[trigger.messaging]]` entry, and what it may do.
#[derive(Clone, Debug, PartialEq)]
pub struct ComponentSpec {
    /// The component id in the manifest.
    pub id: String,
    /// The Wasm component file.
    pub source: PathBuf,
    /// Channels pushed to its `on-receive` from start.
    pub subscriptions: Vec<String>,
    /// Channels it may publish to.
    pub publish: BTreeSet<String>,
    /// Channels it may subscribe to at run time (its start subscriptions too).
    pub subscribe: BTreeSet<String>,
    /// How many of its handlers may run at once.
    pub max_in_flight: usize,
    /// Environment variables granted to it (`[component.<id>] environment`).
    pub environment: Vec<(String, String)>,
    /// The largest its instances' linear memory may grow, in bytes.
    pub max_memory: u64,
    /// Its variables, resolved: what Spin's variables interface and
    /// `wasi:config/store` answer it.
    pub variables: ComponentVariables,
    /// Where its outbound HTTP may go (`allowed_outbound_hosts`).
    pub allowed_outbound_hosts: AllowedHosts,
    /// The key-value stores it may open, by label (`key_value_stores`).
    pub key_value_stores: BTreeSet<String>,
    /// How its instances are reused, where its entry says; the rest comes
    /// from the provider's flags.
    pub reuse: ReuseSettings,
}

/// How a component's instances are reused between events: each takes up
/// to `max_uses` events, is dropped after `idle_timeout` without one, and
/// after its handler returned an error only when `after_error`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct InstanceReuse {
    /// Events one instance takes before it is replaced (1: a fresh
    /// instance per event).
    pub max_uses: Pick<u32>,
    /// How long an idle instance is kept for the next event.
    pub idle_timeout: Pick<Duration>,
    /// Whether an instance whose handler returned an error is used again.
    pub after_error: bool,
}

impl Default for InstanceReuse {
    fn default() -> Self {
        InstanceReuse {
            max_uses: Pick::Value(defaults::MAX_INSTANCE_REUSE_COUNT),
            idle_timeout: Pick::Value(defaults::IDLE_INSTANCE_TIMEOUT),
            after_error: false,
        }
    }
}

/// The reuse settings one `[[trigger.messaging]]` entry gives; what it
/// leaves out comes from the provider-wide flags.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub struct ReuseSettings {
    /// `max_instance_reuse_count`.
    pub max_uses: Option<Pick<u32>>,
    /// `idle_instance_timeout`.
    pub idle_timeout: Option<Pick<Duration>>,
    /// `reuse_instance_after_error`.
    pub after_error: Option<bool>,
}

impl ReuseSettings {
    /// These settings over the provider-wide ones.
    pub fn over(&self, provider: &InstanceReuse) -> InstanceReuse {
        InstanceReuse {
            max_uses: self.max_uses.unwrap_or(provider.max_uses),
            idle_timeout: self.idle_timeout.unwrap_or(provider.idle_timeout),
            after_error: self.after_error.unwrap_or(provider.after_error),
        }
    }
}

/// A setting given as one value or, as Spin allows for its instance reuse
/// settings, as a range `A..B` to pick from at random for each instance (so
/// that instances made together do not all expire together).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pick<T> {
    /// Always this value.
    Value(T),
    /// Any value from the first (included) to the second (excluded).
    Between(T, T),
}

impl<T: Copy + PartialOrd> Pick<T> {
    /// Parses `A` or `A..B` with `one` for each value; `B` must be above `A`.
    pub fn parse(text: &str, one: impl Fn(&str) -> Result<T, String>) -> Result<Self, String> {
        match text.split_once("..") {
            None => one(text.trim()).map(Pick::Value),
            Some((low, high)) => {
                let (low, high) = (one(low.trim())?, one(high.trim())?);
                if low < high {
                    Ok(Pick::Between(low, high))
                } else {
                    Err(format!(
                        "the range `{text}` is empty: its end must be above its start"
                    ))
                }
            }
        }
    }

    /// Whether every value it can pick lies within `range`.
    pub fn within(&self, range: std::ops::RangeInclusive<T>) -> bool {
        match *self {
            Pick::Value(v) => range.contains(&v),
            Pick::Between(low, high) => range.contains(&low) && range.contains(&high),
        }
    }
}

impl Pick<u32> {
    /// A value for one instance.
    pub fn pick(&self) -> u32 {
        match *self {
            Pick::Value(v) => v,
            Pick::Between(low, high) => fastrand::u32(low..high),
        }
    }

    /// Parses a count (`128`) or a range of counts (`64..256`).
    pub fn parse_count(text: &str) -> Result<Self, String> {
        Pick::parse(text, |n| {
            n.parse().map_err(|_| {
                format!("expected a count or a range of counts such as `1..8`, got `{n}`")
            })
        })
    }
}

impl Pick<Duration> {
    /// A value for one instance.
    pub fn pick(&self) -> Duration {
        match *self {
            Pick::Value(v) => v,
            Pick::Between(low, high) => {
                let span = (high - low).as_nanos().min(u128::from(u64::MAX)) as u64;
                low + Duration::from_nanos(fastrand::u64(0..span))
            }
        }
    }

    /// Parses a duration as Spin's flags take it (seconds without a unit,
    /// or `500ms`, `2s`, `1m`...) or a range of them (`1s..5s`).
    pub fn parse_duration(text: &str) -> Result<Self, String> {
        Pick::parse(text, |d| {
            match d.parse::<u64>() {
            Ok(seconds) => Ok(Duration::from_secs(seconds)),
            Err(_) => humantime::parse_duration(d).map_err(|e| {
                format!("expected a duration such as `1s` or `500ms`, or a range such as `1s..5s`, got `{d}` ({e})")
            }),
        }
        })
    }
}

impl fmt::Display for Pick<u32> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Pick::Value(v) => write!(f, "{v}"),
            Pick::Between(low, high) => write!(f, "{low}..{high}"),
        }
    }
}

impl fmt::Display for Pick<Duration> {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        let show = humantime::format_duration;
        match self {
            Pick::Value(v) => write!(f, "{}", show(*v)),
            Pick::Between(low, high) => write!(f, "{}..{}", show(*low), show(*high)),
        }
    }
}

/// A component's variables (`[component.<id>.variables]`) with their
/// values resolved. Values may be secrets, so they are never printed: the
/// `Debug` form shows names only.
#[derive(Clone, Default, PartialEq, Eq)]
pub struct ComponentVariables(pub BTreeMap<String, String>);

impl fmt::Debug for ComponentVariables {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_set().entries(self.0.keys()).finish()
    }
}

/// The waits between attempts: `delay` after the first failure, doubled
/// after each further one, never more than `max_delay`. Long enough by
/// default to ride out a broker restart when the failure was the broker's.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct RetryPolicy {
    /// The wait after the first failure.
    pub delay: Duration,
    /// The longest wait.
    pub max_delay: Duration,
}

impl RetryPolicy {
    /// The wait after `failures` failures (1 for the first).
    pub fn after(&self, failures: u32) -> Duration {
        let doublings = failures.saturating_sub(1).min(31);
        self.delay
            .saturating_mul(1 << doublings)
            .min(self.max_delay)
    }
}

/// Why `name` cannot be a variable name, or `None` when it can: Spin's rule,
/// lower-case words of letters and digits, each starting with a letter,
/// joined by single `_` (`api_url`, `v2`; not `Api`, `_x`, `a__b`, `a_1`).
pub fn variable_name_problem(name: &str) -> Option<&'static str> {
    if name.is_empty() {
        return Some("must not be empty");
    }
    for word in name.split('_') {
        let mut chars = word.chars();
        match chars.next() {
            None => {
                return Some("words must be separated by a single `_`, with none at either end");
            }
            Some(c) if !c.is_ascii_lowercase() => {
                return Some("each `_`-separated word must start with a lower-case letter");
            }
            _ => {}
        }
        if !chars.all(|c| c.is_ascii_lowercase() || c.is_ascii_digit()) {
            return Some("may contain only lower-case letters, digits and `_`");
        }
    }
    None
}

impl ComponentSpec {
    /// Whether the component may consume the channel (statically or at run time).
    pub fn may_consume(&self, channel: &str) -> bool {
        self.subscribe.contains(channel) || self.subscriptions.iter().any(|c| c == channel)
    }
}

/// Defaults the manifest can override.
pub mod defaults {
    use std::time::Duration;

    /// Deliveries handed to a failing handler before dead-lettering.
    pub const MAX_ATTEMPTS: u32 = 3;
    /// Concurrent handlers per component.
    pub const MAX_IN_FLIGHT: usize = 64;
    /// The wait after a handler's first failure.
    pub const RETRY_DELAY: Duration = Duration::from_secs(1);
    /// The longest wait between attempts.
    pub const MAX_RETRY_DELAY: Duration = Duration::from_secs(60);
    /// The memory limit of one instance: 64 MiB.
    pub const MAX_MEMORY: u64 = 64 << 20;
    /// Events one instance takes before it is replaced (Spin's default for
    /// the instances it reuses).
    pub const MAX_INSTANCE_REUSE_COUNT: u32 = 128;
    /// How long an idle instance is kept (Spin's default).
    pub const IDLE_INSTANCE_TIMEOUT: Duration = Duration::from_secs(1);
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn variable_names_follow_spin() {
        for good in ["a", "api_url", "v2", "a1b2", "x_y_z"] {
            assert_eq!(variable_name_problem(good), None, "{good}");
        }
        for bad in [
            "", "Api", "1a", "_x", "x_", "a__b", "a_1", "x-y", "x.y", "ü",
        ] {
            assert!(variable_name_problem(bad).is_some(), "{bad}");
        }
    }

    #[test]
    fn retry_waits_double_up_to_their_limit() {
        let policy = RetryPolicy {
            delay: Duration::from_secs(1),
            max_delay: Duration::from_secs(10),
        };
        let waits: Vec<u64> = (1..=6).map(|n| policy.after(n).as_secs()).collect();
        assert_eq!(waits, [1, 2, 4, 8, 10, 10]);
        assert_eq!(policy.after(0), Duration::from_secs(1));
        assert_eq!(policy.after(u32::MAX), Duration::from_secs(10));
    }
}
