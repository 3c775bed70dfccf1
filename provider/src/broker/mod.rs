//! Broker links: the one trait every broker implements, and the registry that
//! makes a link from its runtime-config `type`. Each link type is one module.

pub mod amqp;
pub mod embedded;
pub mod kafka;
pub mod mqtt;
pub mod names;
pub mod nats;
pub mod redis;
pub mod tls;

use crate::cloudevents::Event;
use crate::cloudevents::inbound::Malformed;
use crate::config::{ConfigError, KeyPath, TomlSource};
use async_trait::async_trait;
use serde::de::DeserializeOwned;
use std::collections::BTreeMap;
use std::path::Path;
use std::sync::Arc;
use std::time::Duration;

/// How a subscriber shares a channel's events with other subscribers.
#[derive(Clone, Debug, PartialEq, Eq, Hash)]
pub enum SubscribeMode {
    /// Competing consumers: each event goes to one member of the named group.
    Queue {
        /// Consumers with the same group compete; the group outlives them.
        group: String,
    },
    /// Fan-out: this subscriber sees every event published after it joined,
    /// without taking events away from queue consumers (so it also serves
    /// watching a queue).
    Topic,
}

/// Why a broker operation failed; maps one-to-one onto the WIT error cases.
#[derive(Debug, thiserror::Error)]
pub enum BrokerError {
    /// The broker cannot be reached now.
    #[error("broker unavailable: {0}")]
    Unavailable(String),
    /// The connection broke while the operation was under way.
    #[error("connection lost: {0}")]
    ConnectionLost(String),
    /// The event exceeds what the broker accepts.
    #[error("payload of {size} bytes exceeds the broker's limit of {limit} bytes")]
    PayloadTooLarge {
        /// The payload size.
        size: usize,
        /// The broker's limit.
        limit: usize,
    },
    /// The broker answered, and did not take the event.
    #[error("delivery failed: {0}")]
    DeliveryFailed(String),
    /// The broker did not answer in time (down, restarting or overloaded):
    /// it may take the same request later.
    #[error("{0}")]
    TimedOut(String),
    /// The event cannot be put on this broker's wire.
    #[error("unsupported message format: {0}")]
    Format(String),
    /// Anything else.
    #[error("{0}")]
    Other(String),
}

impl BrokerError {
    /// Whether the broker may take the same request once it is reachable
    /// again: it did not answer, rather than refuse.
    pub fn is_transient(&self) -> bool {
        matches!(
            self,
            BrokerError::Unavailable(_) | BrokerError::ConnectionLost(_) | BrokerError::TimedOut(_)
        )
    }

    /// The error for a confirmation that did not come within `timeout`.
    pub fn unconfirmed(broker: &str, timeout: std::time::Duration) -> BrokerError {
        BrokerError::TimedOut(format!(
            "{broker} did not confirm within {}",
            humantime::format_duration(timeout)
        ))
    }
}

/// A connected broker link. Addresses are broker-side names; the provider
/// maps app channels onto them.
#[async_trait]
pub trait Broker: Send + Sync + 'static {
    /// The largest payload the broker accepts, checked before sending.
    fn max_payload(&self) -> Option<usize> {
        None
    }

    /// Publishes an event to an address declared with
    /// [`Broker::declare_queue`] or [`Broker::declare_topic`]; returns once
    /// the broker took it (or failed, in bounded time). A link that tells
    /// queues from topics refuses an address it was not told about rather
    /// than guess, since a wrong guess drops the event.
    async fn publish(&self, address: &str, event: &Event) -> Result<(), BrokerError>;

    /// [`Broker::publish`] for an event the caller has already validated
    /// and hands over: a link that keeps events in memory keeps this one,
    /// without a copy or a second check.
    async fn publish_checked(&self, address: &str, event: Arc<Event>) -> Result<(), BrokerError> {
        self.publish(address, &event).await
    }

    /// Makes sure a queue group exists, so events published before its first
    /// consumer joins are kept for it. Called before anything is published
    /// to the address or subscribed to it.
    async fn declare_queue(&self, address: &str, group: &str) -> Result<(), BrokerError> {
        let _ = (address, group);
        Ok(())
    }

    /// Says that an address is used as a topic, for brokers whose topics and
    /// queues are different things (Redis: pub/sub channel or stream).
    async fn declare_topic(&self, address: &str) -> Result<(), BrokerError> {
        let _ = address;
        Ok(())
    }

    /// Starts receiving an address's events. Dropping the subscription ends it.
    async fn subscribe(
        &self,
        address: &str,
        mode: SubscribeMode,
    ) -> Result<Box<dyn Subscription>, BrokerError>;

    /// Closes the link: acknowledgements already given reach the broker
    /// first, then pending operations fail.
    async fn close(&self) {}

    /// Whether the link is connected now, and how often it reconnected,
    /// for `/readyz` and the metrics. A link with no connection to lose
    /// (the embedded one) is always connected.
    fn connectivity(&self) -> ConnectivityState {
        ConnectivityState {
            connected: true,
            reconnects: 0,
        }
    }
}

/// A link's connection as [`Broker::connectivity`] reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct ConnectivityState {
    /// Connected to the broker now.
    pub connected: bool,
    /// How often it connected again after losing the broker.
    pub reconnects: u64,
}

/// Kept by a link where its client tells it that it connected or lost the
/// broker; cheap enough to call on every read that succeeds.
#[derive(Debug, Default)]
pub struct Connectivity {
    connected: std::sync::atomic::AtomicBool,
    ever_connected: std::sync::atomic::AtomicBool,
    reconnects: std::sync::atomic::AtomicU64,
}

impl Connectivity {
    /// The link reached its broker.
    pub fn connected(&self) {
        use std::sync::atomic::Ordering::Relaxed;
        if self.connected.load(Relaxed) || self.connected.swap(true, Relaxed) {
            return;
        }
        if self.ever_connected.swap(true, Relaxed) {
            self.reconnects.fetch_add(1, Relaxed);
        }
    }

    /// The link lost its broker (or could not reach it).
    pub fn lost(&self) {
        self.connected
            .store(false, std::sync::atomic::Ordering::Relaxed);
    }

    /// What [`Broker::connectivity`] answers.
    pub fn state(&self) -> ConnectivityState {
        use std::sync::atomic::Ordering::Relaxed;
        ConnectivityState {
            connected: self.connected.load(Relaxed),
            reconnects: self.reconnects.load(Relaxed),
        }
    }
}

/// A stream of deliveries from one subscription.
#[async_trait]
pub trait Subscription: Send {
    /// The next delivery; `None` once the subscription has ended for good.
    /// Cancel-safe: dropping the future before it completes loses nothing,
    /// so a caller may race it against a stop signal.
    async fn next(&mut self) -> Option<Delivery>;

    /// Stops taking events from the broker, for a clean shutdown. `next`
    /// then yields, promptly, what the link had already taken from the
    /// broker (prefetched or buffered, never handed out), and `None` after
    /// it, so that the dispatcher can hand those events back or handle them.
    async fn stop(&mut self);
}

/// Settles a delivery with the broker.
#[async_trait]
pub trait Acknowledge: Send + Sync {
    /// The event was handled (or dead-lettered): the broker may forget it.
    async fn ack(self: Box<Self>) -> Result<(), BrokerError>;

    /// Hands the event back, to be delivered again (to this or another
    /// consumer, counted as the next attempt) no sooner than `delay`, or as
    /// close to it as the broker allows. A link that cannot redeliver (see
    /// [`Acknowledge::redelivers`]) forgets the event.
    async fn nack(self: Box<Self>, delay: Duration) -> Result<(), BrokerError>;

    /// Whether [`Acknowledge::nack`] brings the event back with its attempt
    /// counted. Where it does not (links that deliver at most once), the
    /// dispatcher keeps a failing event and retries it itself.
    fn redelivers(&self) -> bool;

    /// How often a delivery held for a long time (a long handler, retries
    /// while a link is down) must be reported as still in progress so that
    /// the broker does not give it to another consumer meanwhile; `None` when
    /// the broker never takes a delivery back on its own.
    fn keep_alive_every(&self) -> Option<Duration> {
        None
    }

    /// Reports the delivery as still in progress.
    async fn keep_alive(&self) -> Result<(), BrokerError> {
        Ok(())
    }
}

/// One event handed to a subscriber, to be acknowledged once handled.
pub struct Delivery {
    /// The event; for a malformed message, the event that wraps it. Shared,
    /// so that a link that keeps it for a redelivery (the embedded broker)
    /// and a handler's retries use it without copies.
    event: Arc<Event>,
    /// Which delivery of the event this is, as the broker counts them where
    /// it does (1 for the first): attempts survive redelivery.
    pub attempt: u32,
    /// Why the message is not a valid CloudEvent, when it is not: it goes
    /// to the dead-letter channel, never to a handler.
    malformed: Option<String>,
    ack: Box<dyn Acknowledge>,
}

impl Delivery {
    /// Wraps a valid event with the way to settle it.
    pub fn new(event: impl Into<Arc<Event>>, attempt: u32, ack: Box<dyn Acknowledge>) -> Self {
        Delivery {
            event: event.into(),
            attempt,
            malformed: None,
            ack,
        }
    }

    /// A delivery of what a link received, admitted or not by
    /// [`inbound::admit`](crate::cloudevents::inbound::admit).
    pub fn received(
        admitted: Result<Event, Malformed>,
        attempt: u32,
        ack: Box<dyn Acknowledge>,
    ) -> Self {
        match admitted {
            Ok(event) => Delivery::new(event, attempt, ack),
            Err(malformed) => Delivery::malformed(malformed, attempt, ack),
        }
    }

    /// A delivery of a message that is not a valid CloudEvent.
    pub fn malformed(malformed: Malformed, attempt: u32, ack: Box<dyn Acknowledge>) -> Self {
        let Malformed { reason, wrapper } = malformed;
        Delivery {
            event: Arc::new(*wrapper),
            attempt,
            malformed: Some(reason),
            ack,
        }
    }

    /// The event (for a malformed message, its wrapper).
    pub fn event(&self) -> &Event {
        &self.event
    }

    /// Why the message is not a valid CloudEvent, if it is not.
    pub fn malformed_reason(&self) -> Option<&str> {
        self.malformed.as_deref()
    }

    /// Splits the delivery into its event, its attempt and its settlement.
    pub fn into_parts(self) -> (Event, u32, Box<dyn Acknowledge>) {
        (Arc::unwrap_or_clone(self.event), self.attempt, self.ack)
    }

    /// Acknowledges the delivery and takes its event, without a copy where
    /// the link kept a share of it for a redelivery (watchers, sinks).
    pub async fn ack_and_take(self) -> (Event, Result<(), BrokerError>) {
        let acked = self.ack.ack().await;
        (Arc::unwrap_or_clone(self.event), acked)
    }

    /// Splits the delivery, keeping the event shared.
    pub fn into_shared_parts(self) -> (Arc<Event>, u32, Box<dyn Acknowledge>) {
        (self.event, self.attempt, self.ack)
    }

    /// Whether the broker can take the event back (see
    /// [`Acknowledge::redelivers`]).
    pub fn redelivers(&self) -> bool {
        self.ack.redelivers()
    }
}

/// The settlement of links that deliver at most once: there is nothing to
/// tell the broker, and a nack cannot bring the event back.
pub struct NothingToSettle;

#[async_trait]
impl Acknowledge for NothingToSettle {
    async fn ack(self: Box<Self>) -> Result<(), BrokerError> {
        Ok(())
    }
    async fn nack(self: Box<Self>, _: Duration) -> Result<(), BrokerError> {
        Ok(())
    }
    fn redelivers(&self) -> bool {
        false
    }
}

/// A broker URL (or comma-separated URLs) fit for logs: user information
/// is replaced by `***`.
pub fn redact_url(urls: &str) -> String {
    urls.split(',')
        .map(|u| match (u.find("://"), u.rfind('@')) {
            (Some(scheme), Some(at)) if at > scheme => {
                format!("{}://***@{}", &u[..scheme], &u[at + 1..])
            }
            _ => u.to_string(),
        })
        .collect::<Vec<_>>()
        .join(",")
}

/// The default bound on a publish to a remote broker.
pub(crate) fn default_publish_timeout() -> std::time::Duration {
    std::time::Duration::from_secs(5)
}

/// A link type: the runtime-config `type` it answers to, its settings and how
/// it connects (the shape of Spin's `MakeKeyValueStore`).
#[async_trait]
pub trait MakeBroker: Send + Sync + 'static {
    /// The value of `type` in `[messaging_link.<name>]`.
    const TYPE: &'static str;
    /// The link's settings, deserialised strictly (unknown keys are errors).
    type Settings: DeserializeOwned + Send + Sync + 'static;
    /// Checks settings that deserialised but may still be wrong, and reads
    /// the files they name (relative to `config_dir`), so that errors are
    /// reported at their key and line when the config is loaded.
    fn check(settings: &mut Self::Settings, config_dir: &Path) -> Result<(), Invalid> {
        let _ = (settings, config_dir);
        Ok(())
    }
    /// Checks the names a channel bound to this link puts on the broker
    /// (see [`ChannelNames`]) against the broker's naming rules, so that a
    /// name it would refuse, or one its client would choke on, is reported
    /// at load at the channel's key and line. The key of the error is
    /// `address` or `group`.
    fn check_channel(settings: &Self::Settings, names: &ChannelNames) -> Result<(), Invalid> {
        let _ = (settings, names);
        Ok(())
    }
    /// A one-line description for the start-up summary; never shows secrets.
    fn describe(settings: &Self::Settings) -> String;
    /// Connects (or prepares to connect) the link named `name`.
    async fn connect(
        &self,
        name: &str,
        settings: &Self::Settings,
    ) -> anyhow::Result<Arc<dyn Broker>>;
}

/// A setting with a value its link cannot use: the key, and why.
#[derive(Debug)]
pub struct Invalid {
    /// The key within the link's table.
    pub key: &'static str,
    /// What is wrong.
    pub message: String,
}

impl Invalid {
    /// An error at `key`.
    pub fn new(key: &'static str, message: impl Into<String>) -> Self {
        Invalid {
            key,
            message: message.into(),
        }
    }
}

/// Fails with `message` at `key` unless `ok`.
pub(crate) fn require(ok: bool, key: &'static str, message: &str) -> Result<(), Invalid> {
    if ok {
        Ok(())
    } else {
        Err(Invalid::new(key, message))
    }
}

/// Checks a count or size setting against its range; the message says the
/// range and the value found.
pub(crate) fn check_range<T>(
    key: &'static str,
    value: T,
    range: std::ops::RangeInclusive<T>,
) -> Result<(), Invalid>
where
    T: PartialOrd + std::fmt::Display,
{
    require(
        range.contains(&value),
        key,
        &format!(
            "must be between {} and {} (got {value})",
            range.start(),
            range.end()
        ),
    )
}

/// Checks a duration setting against its range; the message says the range
/// and the value found.
pub(crate) fn check_duration(
    key: &'static str,
    value: Duration,
    range: std::ops::RangeInclusive<Duration>,
) -> Result<(), Invalid> {
    require(
        range.contains(&value),
        key,
        &format!(
            "must be between {} and {} (got {})",
            show_duration(*range.start()),
            show_duration(*range.end()),
            show_duration(value)
        ),
    )
}

/// A duration as people write it in a config: in the largest unit that
/// holds it whole (`24h`, `61m`, `30d`), else as humantime spells it.
pub(crate) fn show_duration(d: Duration) -> String {
    let (secs, nanos) = (d.as_secs(), d.subsec_nanos());
    match (secs, nanos) {
        (0, 0) => "0s".into(),
        (s, 0) if s % 86_400 == 0 && s >= 2 * 86_400 => format!("{}d", s / 86_400),
        (s, 0) if s % 3600 == 0 => format!("{}h", s / 3600),
        (s, 0) if s % 60 == 0 => format!("{}m", s / 60),
        (s, 0) => format!("{s}s"),
        (0, n) if n % 1_000_000 == 0 => format!("{}ms", n / 1_000_000),
        _ => humantime::format_duration(d).to_string(),
    }
}

/// The range of `publish_timeout` on every link: long enough to connect
/// (remote links also use it as their connection timeout), short enough
/// that a caller learns of a broker that does not answer.
pub(crate) const PUBLISH_TIMEOUT_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_millis(100)..=Duration::from_secs(600);

/// Checks `publish_timeout` (see [`PUBLISH_TIMEOUT_RANGE`]).
pub(crate) fn check_publish_timeout(timeout: Duration) -> Result<(), Invalid> {
    check_duration("publish_timeout", timeout, PUBLISH_TIMEOUT_RANGE)
}

/// The largest `max_payload` a link or channel may set: no broker here
/// takes more than 512 MiB, nor a component's memory much more.
pub(crate) const MAX_PAYLOAD_LIMIT: u64 = 1 << 30;

/// The largest in-memory buffer (`capacity`, `buffer`) a link may set, in
/// events: far above any need, far below what tokio's channels accept.
pub(crate) const MAX_BUFFERED_EVENTS: usize = 1 << 20;

/// Checks `batch`: how many messages a subscription takes per read.
pub(crate) fn check_batch(batch: usize) -> Result<(), Invalid> {
    check_range("batch", batch, 1..=10_000)
}

/// Checks a link setting that names something on the broker with one of
/// the rules in [`names`].
pub(crate) fn check_name(key: &'static str, value: &str, rule: names::Rule) -> Result<(), Invalid> {
    rule.map_err(|why| Invalid::new(key, format!("{} {why}", names::shown(value))))
}

/// The names a channel puts on its link's broker, given to
/// [`MakeBroker::check_channel`] when an app loads.
#[derive(Clone, Copy, Debug)]
pub struct ChannelNames<'a> {
    /// The broker-side name: subject, topic, key or routing key.
    pub address: &'a str,
    /// For a queue, the name its competing consumers share; `None` for a
    /// topic.
    pub group: Option<&'a str>,
    /// Whether events are published to the address (a component may
    /// publish to the channel, or it is a dead-letter channel), which a
    /// wildcard address cannot take.
    pub published: bool,
}

/// Checks a broker's redelivery timeout (`ack_wait`, `claim_after`): the
/// dispatcher keeps a held delivery alive every third of it, and caps the
/// delay of a nack at it.
pub(crate) fn check_redelivery_timeout(
    key: &'static str,
    timeout: std::time::Duration,
) -> Result<(), Invalid> {
    check_duration(
        key,
        timeout,
        Duration::from_secs(1)..=Duration::from_secs(86_400),
    )
}

/// A link whose settings were read and checked, ready to connect.
#[async_trait]
pub trait PreparedLink: Send + Sync {
    /// The type name, for messages.
    fn link_type(&self) -> &'static str;
    /// A one-line description without secrets.
    fn describe(&self) -> String;
    /// Checks a channel's broker-side names (see [`MakeBroker::check_channel`]).
    fn check_channel(&self, names: &ChannelNames) -> Result<(), Invalid>;
    /// Connects the link.
    async fn connect(&self, name: &str) -> anyhow::Result<Arc<dyn Broker>>;
}

struct Prepared<M: MakeBroker> {
    maker: Arc<M>,
    settings: M::Settings,
}

#[async_trait]
impl<M: MakeBroker> PreparedLink for Prepared<M> {
    fn link_type(&self) -> &'static str {
        M::TYPE
    }
    fn describe(&self) -> String {
        M::describe(&self.settings)
    }
    fn check_channel(&self, names: &ChannelNames) -> Result<(), Invalid> {
        M::check_channel(&self.settings, names)
    }
    async fn connect(&self, name: &str) -> anyhow::Result<Arc<dyn Broker>> {
        tls::install_crypto_provider();
        self.maker.connect(name, &self.settings).await
    }
}

type Preparer = Box<
    dyn Fn(&TomlSource, &KeyPath, toml::Value) -> Result<Box<dyn PreparedLink>, ConfigError>
        + Send
        + Sync,
>;

/// The link types this provider knows, keyed by runtime-config `type`.
pub struct LinkRegistry {
    types: BTreeMap<&'static str, Preparer>,
}

impl Default for LinkRegistry {
    /// Every link type built into this provider.
    fn default() -> Self {
        let mut r = LinkRegistry {
            types: BTreeMap::new(),
        };
        r.register(embedded::MakeEmbedded);
        r.register(nats::MakeNats);
        r.register(redis::MakeRedis);
        r.register(amqp::MakeAmqp);
        r.register(mqtt::MakeMqtt);
        r.register(kafka::MakeKafka);
        r
    }
}

impl LinkRegistry {
    /// Adds a link type; registering the same type twice is a programming error.
    pub fn register<M: MakeBroker>(&mut self, maker: M) {
        let maker = Arc::new(maker);
        let prepare: Preparer = Box::new(move |src, at, value| {
            let mut settings: M::Settings = src.deserialize(at, value)?;
            let config_dir = src.file().parent().unwrap_or(Path::new(""));
            M::check(&mut settings, config_dir)
                .map_err(|e| src.error(&at.key(e.key), e.message))?;
            Ok(Box::new(Prepared {
                maker: maker.clone(),
                settings,
            }) as Box<dyn PreparedLink>)
        });
        assert!(
            self.types.insert(M::TYPE, prepare).is_none(),
            "link type `{}` registered twice",
            M::TYPE
        );
    }

    /// The known type names, for messages.
    pub fn type_names(&self) -> Vec<&'static str> {
        self.types.keys().copied().collect()
    }

    /// Reads the settings of a link of type `link_type`, found at `at` in
    /// `src`. `None` when the type is unknown.
    pub fn prepare(
        &self,
        link_type: &str,
        src: &TomlSource,
        at: &KeyPath,
        settings: toml::Value,
    ) -> Option<Result<Box<dyn PreparedLink>, ConfigError>> {
        self.types.get(link_type).map(|p| p(src, at, settings))
    }
}

#[cfg(test)]
mod tests {
    use super::{Connectivity, ConnectivityState};

    #[test]
    fn connectivity_counts_reconnects_not_the_first_connection() {
        let c = Connectivity::default();
        assert!(!c.state().connected);
        c.connected();
        c.connected();
        assert_eq!(
            c.state(),
            ConnectivityState {
                connected: true,
                reconnects: 0
            }
        );
        c.lost();
        c.lost();
        assert!(!c.state().connected);
        c.connected();
        assert_eq!(
            c.state(),
            ConnectivityState {
                connected: true,
                reconnects: 1
            }
        );
    }

    #[test]
    fn urls_lose_their_credentials() {
        assert_eq!(
            super::redact_url("nats://u:secret@h:4222,nats://h2:4222"),
            "nats://***@h:4222,nats://h2:4222"
        );
        assert_eq!(super::redact_url("redis://127.0.0.1"), "redis://127.0.0.1");
    }

    #[test]
    fn ranges_say_the_range_and_the_value() {
        use std::time::Duration;
        let e = super::check_range("batch", 0usize, 1..=10).unwrap_err();
        assert_eq!(
            (e.key, e.message.as_str()),
            ("batch", "must be between 1 and 10 (got 0)")
        );
        let hour = Duration::from_secs(3600);
        let e = super::check_duration("t", hour * 25, Duration::from_millis(100)..=hour * 24)
            .unwrap_err();
        assert_eq!(e.message, "must be between 100ms and 24h (got 25h)");
        let shown: Vec<String> = [0, 61_000, 172_800_000, 1_500]
            .map(|ms| super::show_duration(Duration::from_millis(ms)))
            .into();
        assert_eq!(shown, ["0s", "61s", "2d", "1s 500ms"]);
    }
}
