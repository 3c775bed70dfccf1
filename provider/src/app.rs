//! The app model: what an app declares, validated and resolved, independent
//! of where it was read from (a spin.toml, or a Spin locked app).

use std::collections::{BTreeMap, BTreeSet};
use std::fmt;
use std::path::PathBuf;

/// One app: its channels and the components that handle them.
#[derive(Clone, Debug)]
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
    /// Where events go after `max_attempts` failures; without it they are
    /// logged in full, as the last resort.
    pub dead_letter: Option<String>,
}

/// A component with a `[[trigger.messaging]]` entry, and what it may do.
#[derive(Clone, Debug)]
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
}

impl ComponentSpec {
    /// Whether the component may consume the channel (statically or at run time).
    pub fn may_consume(&self, channel: &str) -> bool {
        self.subscribe.contains(channel) || self.subscriptions.iter().any(|c| c == channel)
    }
}

/// Defaults the manifest can override.
pub mod defaults {
    /// Deliveries handed to a failing handler before dead-lettering.
    pub const MAX_ATTEMPTS: u32 = 3;
    /// Concurrent handlers per component.
    pub const MAX_IN_FLIGHT: usize = 64;
}
