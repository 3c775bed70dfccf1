//! The links the relay section has a row for: how each names a run's
//! channels on its broker, the runtime config that binds `default` to it,
//! the suite's producer and sink for it, and its native relay (one module
//! per link). Also what every native relay shares: the transformation (the
//! Rust relay guest's, in native Rust), at most [`MAX_IN_FLIGHT`] events in
//! flight, and running until SIGTERM.

/// RabbitMQ.
pub mod amqp;
/// The in-process broker.
pub mod embedded;
/// NATS JetStream.
pub mod jetstream;
/// Kafka (tansu here).
pub mod kafka;
/// MQTT 5.
pub mod mqtt;
/// Core NATS.
pub mod nats;
/// Redis pub/sub and streams.
pub mod redis;

use crate::flow::{Producer, Sink};
use anyhow::{Context as _, bail};
use messaging_provider::cloudevents::Event;
use std::future::Future;
use std::sync::Arc;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;

/// The first argument that runs the bench binary as a native relay.
pub const NATIVE_RELAY_MODE: &str = "native-relay";

/// Handlers a native relay runs at once: the provider's default `max_in_flight`.
pub const MAX_IN_FLIGHT: usize = 64;

/// A row of the relay section.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Link {
    /// The in-process broker (both sides run in the suite's process).
    Embedded,
    /// Core NATS: queue group in, subject out.
    Nats,
    /// NATS JetStream: a stream with a durable consumer in, a stream out.
    JetStream,
    /// MQTT 5 at QoS 1: a shared subscription in, a topic out.
    Mqtt,
    /// Redis pub/sub: a channel in (a topic input), a channel out.
    RedisPubSub,
    /// Redis streams: a stream with a consumer group in, pub/sub out.
    RedisStreams,
    /// RabbitMQ: a durable queue in, the `messaging` exchange out, with confirms.
    Amqp,
    /// Kafka: a topic read by a consumer group in, a topic out, acks = all.
    Kafka,
}

impl Link {
    /// Every row, in table order: a run has them all unless `--links`
    /// names others.
    pub const ALL: [Link; 8] = [
        Link::Embedded,
        Link::Nats,
        Link::JetStream,
        Link::Mqtt,
        Link::RedisPubSub,
        Link::RedisStreams,
        Link::Amqp,
        Link::Kafka,
    ];

    /// The row's name (as `--links` takes it).
    pub fn name(self) -> &'static str {
        match self {
            Link::Embedded => "embedded",
            Link::Nats => "nats",
            Link::JetStream => "jetstream",
            Link::Mqtt => "mqtt",
            Link::RedisPubSub => "redis-pubsub",
            Link::RedisStreams => "redis-streams",
            Link::Amqp => "amqp",
            Link::Kafka => "kafka",
        }
    }

    /// The row named `name`.
    pub fn parse(name: &str) -> anyhow::Result<Link> {
        Link::ALL
            .into_iter()
            .find(|l| l.name() == name)
            .with_context(|| {
                format!(
                    "unknown link `{name}` (known: {})",
                    Link::ALL.map(Link::name).join(", ")
                )
            })
    }

    /// Whether the relay's input channel is a queue (every row but Redis
    /// pub/sub, whose input is a topic).
    pub fn input_is_queue(self) -> bool {
        self != Link::RedisPubSub
    }

    /// The runtime config that binds the link `default` to this broker;
    /// `None` for the embedded broker, which `default` is without one.
    pub fn runtime_config(self) -> Option<&'static str> {
        Some(match self {
            Link::Embedded => return None,
            Link::Nats => {
                "[messaging_link.default]\ntype = \"nats\"\nurl = \"nats://127.0.0.1:4222\"\n"
            }
            Link::JetStream => {
                "[messaging_link.default]\ntype = \"nats\"\nurl = \"nats://127.0.0.1:4222\"\njetstream = true\n"
            }
            Link::Mqtt => {
                "[messaging_link.default]\ntype = \"mqtt\"\nurl = \"mqtt://127.0.0.1:1883\"\n"
            }
            Link::RedisPubSub | Link::RedisStreams => {
                "[messaging_link.default]\ntype = \"redis\"\nurl = \"redis://127.0.0.1:6379\"\n"
            }
            Link::Amqp => {
                "[messaging_link.default]\ntype = \"amqp\"\nurl = \"amqp://guest:guest@127.0.0.1:5672/%2f\"\n"
            }
            Link::Kafka => {
                "[messaging_link.default]\ntype = \"kafka\"\nbrokers = [\"127.0.0.1:9092\"]\nreplication_factor = 1\n"
            }
        })
    }

    /// The suite's producer into the run's input channel.
    pub async fn producer(self, names: &Names) -> anyhow::Result<Arc<dyn Producer>> {
        match self {
            Link::Embedded => bail!("the embedded broker is fed in process"),
            Link::Nats => nats::producer(names).await,
            Link::JetStream => jetstream::producer(names).await,
            Link::Mqtt => mqtt::producer(names).await,
            Link::RedisPubSub => redis::pubsub_producer(names).await,
            Link::RedisStreams => redis::stream_producer(names).await,
            Link::Amqp => amqp::producer(names).await,
            Link::Kafka => kafka::producer(names).await,
        }
    }

    /// The suite's sink on the run's output channel, subscribed when it returns.
    pub async fn sink(self, names: &Names) -> anyhow::Result<Box<dyn Sink>> {
        match self {
            Link::Embedded => bail!("the embedded broker is read in process"),
            Link::Nats | Link::JetStream => nats::sink(names).await,
            Link::Mqtt => mqtt::sink(names).await,
            Link::RedisPubSub | Link::RedisStreams => redis::sink(names).await,
            Link::Amqp => amqp::sink(names).await,
            Link::Kafka => kafka::sink(names).await,
        }
    }

    /// Makes what the run's channels need on the broker before either
    /// relay starts (streams, queues), so that nothing is published into
    /// the void.
    pub async fn prepare(self, names: &Names) -> anyhow::Result<()> {
        match self {
            Link::JetStream => jetstream::prepare(names).await,
            Link::Amqp => amqp::prepare(names).await,
            Link::Kafka => kafka::prepare(names).await,
            _ => Ok(()),
        }
    }

    /// Deletes what the run left on the broker (streams, queues, keys).
    pub async fn cleanup(self, names: &Names) -> anyhow::Result<()> {
        match self {
            Link::JetStream => jetstream::cleanup(names).await,
            Link::RedisStreams => redis::cleanup(names).await,
            Link::Amqp => amqp::cleanup(names).await,
            Link::Kafka => kafka::cleanup(names).await,
            _ => Ok(()),
        }
    }
}

/// A run's names on its broker: fresh for every run, so that no run sees
/// another's leftovers. They follow every broker's naming rules (dots are
/// NATS tokens, plain characters in MQTT topics, Redis keys and AMQP
/// routing keys; JetStream names turn them into `_`).
#[derive(Clone, Debug)]
pub struct Names {
    /// The run's id.
    pub run: String,
    /// The relay's input address (`orders`).
    pub input: String,
    /// The relay's output address (`shipments`).
    pub output: String,
    /// The input's queue group (the provider's default: the address).
    pub group: String,
}

impl Names {
    /// The names of run `run`.
    pub fn new(run: &str) -> Names {
        let input = format!("bench.{run}.orders");
        Names {
            run: run.to_string(),
            group: input.clone(),
            input,
            output: format!("bench.{run}.shipments"),
        }
    }

    /// The arguments that pass these names to a native relay.
    pub fn native_args(&self, link: Link) -> Vec<String> {
        vec![
            NATIVE_RELAY_MODE.into(),
            link.name().into(),
            self.run.clone(),
        ]
    }
}

/// `native-relay <link> <run>`: relays until SIGTERM.
pub async fn run_native_relay(args: &[String]) -> anyhow::Result<()> {
    let [link, run] = args else {
        bail!("usage: suite {NATIVE_RELAY_MODE} <link> <run id>");
    };
    let link = Link::parse(link)?;
    let names = Names::new(run);
    let stop = CancellationToken::new();
    let on_term = stop.clone();
    let mut term = tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate())
        .context("cannot listen for SIGTERM")?;
    tokio::spawn(async move {
        term.recv().await;
        on_term.cancel();
    });
    match link {
        Link::Embedded => bail!("the embedded native relay runs in the suite's process"),
        Link::Nats => nats::native_relay(names, stop).await,
        Link::JetStream => jetstream::native_relay(names, stop).await,
        Link::Mqtt => mqtt::native_relay(names, stop).await,
        Link::RedisPubSub => redis::native_pubsub_relay(names, stop).await,
        Link::RedisStreams => redis::native_stream_relay(names, stop).await,
        Link::Amqp => amqp::native_relay(names, stop).await,
        Link::Kafka => kafka::native_relay(names, stop).await,
    }
}

/// Tells the suite that a native relay is subscribed and relaying.
pub fn announce_ready() {
    use std::io::Write as _;
    println!("Ready: native relay");
    let _ = std::io::stdout().flush();
}

/// The Rust relay guest's transformation, in native Rust: the order's data
/// (JSON kept as JSON, anything else as a string) wrapped as
/// `{"order": <data>, "status": "shipped"}`, the extensions kept plus
/// `relayedfrom`; an order without data is refused.
pub fn ship(order: &Event) -> anyhow::Result<Event> {
    let Some(data) = &order.data else {
        bail!("order {} has no data", order.id);
    };
    let original = serde_json::from_slice(data)
        .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(data).into_owned()));
    let shipped = serde_json::json!({ "order": original, "status": "shipped" });
    let mut event = Event::new(
        format!("{}-shipped", order.id),
        "urn:sample-apps:relay",
        "com.example.order.shipped",
    );
    event.data = Some(serde_json::to_vec(&shipped)?);
    event.datacontenttype = Some("application/json".into());
    event.subject = order.subject.clone();
    event.time = order.time.clone();
    event.extensions = order.extensions.clone();
    event
        .extensions
        .push(("relayedfrom".into(), order.id.clone()));
    // What the provider checks before it publishes anything a guest gives it.
    event
        .validate()
        .map_err(|e| anyhow::anyhow!("the shipment is not valid: {e}"))?;
    Ok(event)
}

/// A decoded order checked as the provider checks what comes in
/// (`inbound::admit` for a valid event is `validate`).
pub fn admitted(decoded: Result<Event, String>) -> anyhow::Result<Event> {
    let event = decoded.map_err(|e| anyhow::anyhow!("cannot decode the order: {e}"))?;
    event
        .validate()
        .map_err(|e| anyhow::anyhow!("the order is not a valid CloudEvent: {e}"))?;
    Ok(event)
}

/// Runs a native relay's handlers, at most [`MAX_IN_FLIGHT`] at once,
/// reporting the first few failures on stderr.
#[derive(Clone)]
pub struct Handlers {
    slots: Arc<Semaphore>,
    failures: Arc<std::sync::atomic::AtomicUsize>,
}

impl Default for Handlers {
    fn default() -> Self {
        Handlers::new()
    }
}

impl Handlers {
    /// Room for [`MAX_IN_FLIGHT`] handlers.
    pub fn new() -> Handlers {
        Handlers {
            slots: Arc::new(Semaphore::new(MAX_IN_FLIGHT)),
            failures: Arc::default(),
        }
    }

    /// Waits for a free slot, then runs `handler` in a task of its own.
    pub async fn spawn(&self, handler: impl Future<Output = anyhow::Result<()>> + Send + 'static) {
        let Ok(slot) = self.slots.clone().acquire_owned().await else {
            return;
        };
        let failures = self.failures.clone();
        tokio::spawn(async move {
            let _slot = slot;
            if let Err(e) = handler.await {
                let n = failures.fetch_add(1, std::sync::atomic::Ordering::Relaxed);
                if n < 5 {
                    eprintln!("native relay: a handler failed: {e:#}");
                }
            }
        });
    }

    /// Waits until every handler under way has finished.
    pub async fn drain(&self) {
        let all = u32::try_from(MAX_IN_FLIGHT).unwrap_or(u32::MAX);
        let _ = self.slots.acquire_many(all).await;
    }
}
