//! AMQP 0-9-1 links (`type = "amqp"`, RabbitMQ): every channel publishes to
//! one durable topic exchange with the address as routing key, with
//! publisher confirms. A queue channel is a durable queue (named by its
//! group) bound to the address, read by competing consumers with manual acks
//! and a prefetch window; publishes to it are mandatory, so an event no queue
//! takes fails instead of vanishing. A topic subscriber gets an exclusive
//! queue of its own. At least once for queues.
//!
//! Classic queues keep no delivery count, so a queue event handed back with a
//! delay is republished (its bytes unchanged, plus a
//! `trigger-messaging-attempt` header) to a delay queue of its group,
//! `<group>.retry.<ms>ms`, whose messages expire after the delay back into
//! the group's queue; the original is acknowledged once the broker confirmed
//! the copy. The attempt is that header, plus one when RabbitMQ says a
//! delivery came back unsettled (`redelivered`, or a quorum queue's
//! `x-delivery-count`).
//!
//! The client connects at start (a broker that is down does not stop the
//! start; the link connects on first use). After a connection loss the next
//! publish reconnects (or fails at once while the broker is away), and each
//! subscription re-declares its queue and binding and consumes again. A
//! full-length fault run once left one of two subscriptions waiting for good
//! after a RabbitMQ restart: lapin either did not end its consumer or never
//! answered an ack on the dead connection. So a subscription also watches
//! its channel, and every round trip has a time limit.

use super::tls::TlsFiles;
use super::{
    Acknowledge, Broker, BrokerError, ChannelNames, Connectivity, ConnectivityState, Delivery,
    Invalid, MakeBroker, SubscribeMode, Subscription, check_name, check_publish_timeout,
    check_range, names, redact_url, require,
};
use crate::cloudevents::ContentMode;
use crate::cloudevents::Event;
use crate::cloudevents::amqp::BINARY;
use crate::cloudevents::inbound::{self, Received};
use async_trait::async_trait;
use futures::StreamExt as _;
use lapin::options::{
    BasicAckOptions, BasicCancelOptions, BasicConsumeOptions, BasicNackOptions,
    BasicPublishOptions, BasicQosOptions, ConfirmSelectOptions, ExchangeDeclareOptions,
    QueueBindOptions, QueueDeclareOptions,
};
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{
    Acker, BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use serde::Deserialize;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// The header that carries a republished event's attempt.
const ATTEMPT_HEADER: &str = "trigger-messaging-attempt";

/// How often a subscription checks that its channel is still open: a
/// subscription must never wait on a consumer whose connection died, even
/// when lapin does not end it.
const LIVENESS_CHECK: Duration = Duration::from_secs(1);

/// Makes AMQP links.
pub struct MakeAmqp;

/// `[messaging_link.<name>]` settings of an AMQP link.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpSettings {
    /// `amqp://user:password@host:port/vhost`, or `amqps://` for TLS.
    #[serde(default = "default_url")]
    pub url: String,
    /// `amqps://`: the CA (PEM) that signed the server's certificate, if not a system root.
    pub ca_file: Option<PathBuf>,
    /// `amqps://`: a client certificate (PEM) for mutual TLS, with `key_file`.
    pub cert_file: Option<PathBuf>,
    /// `amqps://`: the client certificate's private key (PEM).
    pub key_file: Option<PathBuf>,
    /// What the TLS files hold, read by `check`.
    #[serde(skip)]
    pub tls_files: TlsFiles,
    /// The topic exchange every channel of this link publishes to.
    #[serde(default = "default_exchange")]
    pub exchange: String,
    /// Unacknowledged deliveries a queue consumer may hold.
    #[serde(default = "default_prefetch")]
    pub prefetch: u16,
    /// How events are written: `binary` (cloudEvents_ headers) or `structured`.
    #[serde(default)]
    pub content_mode: ContentMode,
    /// How long a publish may wait for the broker's confirm.
    #[serde(default = "super::default_publish_timeout", with = "humantime_serde")]
    pub publish_timeout: Duration,
}

fn default_url() -> String {
    "amqp://guest:guest@127.0.0.1:5672/%2f".into()
}
fn default_exchange() -> String {
    "messaging".into()
}
fn default_prefetch() -> u16 {
    16
}

#[async_trait]
impl MakeBroker for MakeAmqp {
    const TYPE: &'static str = "amqp";
    type Settings = AmqpSettings;

    fn check(s: &mut AmqpSettings, config_dir: &Path) -> Result<(), Invalid> {
        check_url(&s.url)?;
        check_range("prefetch", s.prefetch, 1..=u16::MAX)?;
        check_publish_timeout(s.publish_timeout)?;
        check_name(
            "exchange",
            &s.exchange,
            names::amqp_declared_name(&s.exchange, "exchange"),
        )?;
        s.tls_files = TlsFiles::read(
            config_dir,
            &mut s.ca_file,
            &mut s.cert_file,
            &mut s.key_file,
        )?
        .for_url(s.url.starts_with("amqps://"), "amqps://")?;
        Ok(())
    }

    fn check_channel(_: &AmqpSettings, c: &ChannelNames) -> Result<(), Invalid> {
        check_name(
            "address",
            c.address,
            names::amqp_routing_key(c.address, c.published),
        )?;
        if let Some(group) = c.group {
            check_name("group", group, names::amqp_declared_name(group, "queue"))?;
        }
        Ok(())
    }

    fn describe(s: &AmqpSettings) -> String {
        format!(
            "amqp {} (exchange `{}`, prefetch {}, queues at least once)",
            redact_url(&s.url),
            s.exchange,
            s.prefetch
        )
    }

    async fn connect(&self, name: &str, s: &AmqpSettings) -> anyhow::Result<Arc<dyn Broker>> {
        let broker = AmqpBroker(Arc::new(Inner {
            name: name.into(),
            settings: s.clone(),
            state: tokio::sync::Mutex::new(None),
            queues: Mutex::default(),
            connectivity: Connectivity::default(),
        }));
        if let Err(e) = broker.0.publisher().await {
            tracing::warn!(link = %name, url = %redact_url(&s.url), "AMQP broker not reachable yet ({e}); connecting on first use");
        }
        Ok(Arc::new(broker))
    }
}

/// Parses `url` as the client will on connecting, and checks what it lets
/// through: a port other than 0 and a virtual host that fits the protocol's
/// short string (the client panics on a longer one).
fn check_url(url: &str) -> Result<(), Invalid> {
    let uri: lapin::uri::AMQPUri = url.parse().map_err(|e| {
        Invalid::new(
            "url",
            format!("`{}` is not an AMQP URL: {e} (expected amqp://user:password@host:port/vhost, or amqps://)", redact_url(url)),
        )
    })?;
    require(uri.authority.port != 0, "url", "has port 0")?;
    require(
        uri.vhost.len() <= names::AMQP_MAX_NAME,
        "url",
        &format!(
            "names a virtual host of {} bytes; AMQP allows {}",
            uri.vhost.len(),
            names::AMQP_MAX_NAME
        ),
    )
}

/// A header name or content type as an AMQP short string, refused as an
/// unsupported format when it is longer than 255 bytes (an event's
/// extension names and content type come from components, and the client
/// panics on a longer one).
fn short_string(s: String, what: &str) -> Result<lapin::types::ShortString, BrokerError> {
    let len = s.len();
    lapin::types::ShortString::try_new(s).map_err(|_| {
        BrokerError::Format(format!(
            "the AMQP {what} would be {len} bytes; AMQP allows {}",
            names::AMQP_MAX_NAME
        ))
    })
}

struct AmqpBroker(Arc<Inner>);

/// What the broker and its subscriptions share, so that either can
/// reconnect.
struct Inner {
    name: String,
    settings: AmqpSettings,
    /// The connection and the confirm-mode channel publishes go through.
    state: tokio::sync::Mutex<Option<(Arc<Connection>, Channel)>>,
    /// Addresses declared as queues: publishes to them are mandatory.
    queues: Mutex<HashSet<String>>,
    connectivity: Connectivity,
}

fn unavailable(link: &str, e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(format!("AMQP link `{link}`: {e}"))
}

impl Inner {
    /// The connection and publishing channel, connecting if there is none
    /// or the last one broke.
    async fn publisher(&self) -> Result<(Arc<Connection>, Channel), BrokerError> {
        let mut state = self.state.lock().await;
        if let Some((conn, channel)) = state.as_ref()
            && conn.status().connected()
        {
            return Ok((conn.clone(), channel.clone()));
        }
        self.connectivity.lost();
        if let Some((conn, _)) = state.take() {
            tracing::warn!(link = %self.name, "AMQP connection lost; reconnecting");
            let _ = conn.close(200, "reconnecting".into()).await;
        }
        let properties = ConnectionProperties::default()
            .with_connection_name(format!("trigger-messaging/{}", self.name).into());
        let tls = &self.settings.tls_files;
        let tls = OwnedTLSConfig {
            identity: tls
                .client
                .clone()
                .map(|(pem, key)| OwnedIdentity::PKCS8 { pem, key }),
            cert_chain: tls
                .ca
                .as_ref()
                .map(|ca| String::from_utf8_lossy(ca).into_owned()),
        };
        let runtime = lapin::runtime::default_runtime().map_err(|e| unavailable(&self.name, e))?;
        let conn = tokio::time::timeout(
            self.settings.publish_timeout,
            Connection::connect_with_config(&self.settings.url, properties, tls, runtime),
        )
        .await
        .map_err(|_| unavailable(&self.name, "connecting timed out"))?
        .map_err(|e| unavailable(&self.name, e))?;
        let conn = Arc::new(conn);
        let (link, mut events) = (self.name.clone(), conn.events_listener());
        tokio::spawn(async move {
            while let Some(event) = events.next().await {
                tracing::info!(link = %link, "AMQP link: {event:?}");
            }
        });
        let channel = conn
            .create_channel()
            .await
            .map_err(|e| unavailable(&self.name, e))?;
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await
            .map_err(|e| unavailable(&self.name, e))?;
        channel
            .exchange_declare(
                self.settings.exchange.as_str().into(),
                ExchangeKind::Topic,
                ExchangeDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                FieldTable::default(),
            )
            .await
            .map_err(|e| unavailable(&self.name, e))?;
        tracing::info!(link = %self.name, "AMQP link connected");
        self.connectivity.connected();
        *state = Some((conn.clone(), channel.clone()));
        Ok((conn, channel))
    }

    /// Declares a queue bound to `address`: durable and named for a queue
    /// group, exclusive and server-named for a topic subscriber.
    async fn bound_queue(
        &self,
        channel: &Channel,
        address: &str,
        group: Option<&str>,
    ) -> Result<String, BrokerError> {
        let options = match group {
            Some(_) => QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            None => QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
        };
        let queue = channel
            .queue_declare(group.unwrap_or("").into(), options, FieldTable::default())
            .await
            .map_err(|e| unavailable(&self.name, e))?;
        let name = queue.name().to_string();
        channel
            .queue_bind(
                name.as_str().into(),
                self.settings.exchange.as_str().into(),
                address.into(),
                QueueBindOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| unavailable(&self.name, e))?;
        Ok(name)
    }
}

impl Inner {
    /// [`Inner::consume`], bounded by the link's `publish_timeout` for each
    /// of its round trips: a broker that accepts the connection but does
    /// not answer never holds a subscription up.
    async fn consume_within(
        &self,
        address: &str,
        group: Option<&str>,
    ) -> Result<(Channel, lapin::Consumer), BrokerError> {
        let limit = self.settings.publish_timeout * 6;
        tokio::time::timeout(limit, self.consume(address, group))
            .await
            .map_err(|_| {
                unavailable(
                    &self.name,
                    format!("subscribing to `{address}` got no answer within {limit:?}"),
                )
            })?
    }

    /// Opens a channel that consumes `address`: from the group's durable
    /// queue, or from an exclusive queue of its own for a topic subscriber.
    async fn consume(
        &self,
        address: &str,
        group: Option<&str>,
    ) -> Result<(Channel, lapin::Consumer), BrokerError> {
        let (conn, _) = self.publisher().await?;
        let channel = conn
            .create_channel()
            .await
            .map_err(|e| unavailable(&self.name, e))?;
        let queue = self.bound_queue(&channel, address, group).await?;
        channel
            .basic_qos(self.settings.prefetch, BasicQosOptions::default())
            .await
            .map_err(|e| unavailable(&self.name, e))?;
        let consumer = channel
            .basic_consume(
                queue.as_str().into(),
                "".into(),
                BasicConsumeOptions::default(),
                FieldTable::default(),
            )
            .await
            .map_err(|e| unavailable(&self.name, e))?;
        Ok((channel, consumer))
    }
}

impl Inner {
    /// Publishes on the confirm-mode channel and waits for the broker's
    /// confirm; a mandatory publish no queue took fails.
    async fn publish_confirmed(
        &self,
        exchange: &str,
        routing_key: &str,
        mandatory: bool,
        body: &[u8],
        properties: BasicProperties,
    ) -> Result<(), BrokerError> {
        let (_, channel) = self.publisher().await?;
        let timeout = self.settings.publish_timeout;
        let confirm = async {
            channel
                .basic_publish(
                    exchange.into(),
                    routing_key.into(),
                    BasicPublishOptions {
                        mandatory,
                        ..Default::default()
                    },
                    body,
                    properties,
                )
                .await?
                .await
        };
        match crate::timeout::timeout(timeout, confirm).await {
            Err(_) => Err(BrokerError::unconfirmed("RabbitMQ", timeout)),
            Ok(Err(e)) => Err(BrokerError::ConnectionLost(format!(
                "AMQP link `{}`: {e}",
                self.name
            ))),
            Ok(Ok(Confirmation::Nack(_))) => Err(BrokerError::DeliveryFailed(
                "RabbitMQ refused the event (nack)".into(),
            )),
            Ok(Ok(Confirmation::Ack(Some(_)))) => Err(BrokerError::DeliveryFailed(format!(
                "no queue is bound to `{routing_key}` on exchange `{exchange}` (was the queue deleted?)"
            ))),
            Ok(Ok(_)) => Ok(()),
        }
    }

    /// Declares `<group>.retry.<ms>ms`, whose messages go back to the
    /// group's queue after `delay`. Declared again on every use: that renews
    /// its expiry, so an idle delay queue goes away on its own.
    async fn delay_queue(&self, group: &str, delay: Duration) -> Result<String, BrokerError> {
        let ms = u32::try_from(delay.as_millis()).unwrap_or(u32::MAX);
        let mut name = format!("{group}.retry.{ms}ms");
        if name.len() > 255 {
            // AMQP names are short strings; keep them so.
            use sha2::Digest as _;
            let digest = sha2::Sha256::digest(group.as_bytes());
            let hex: String = digest[..8].iter().map(|b| format!("{b:02x}")).collect();
            name = format!("trigger-messaging.retry.{hex}.{ms}ms");
        }
        let mut args = FieldTable::default();
        args.insert("x-message-ttl".into(), AMQPValue::LongUInt(ms));
        args.insert(
            "x-dead-letter-exchange".into(),
            AMQPValue::LongString("".into()),
        );
        args.insert(
            "x-dead-letter-routing-key".into(),
            AMQPValue::LongString(group.into()),
        );
        args.insert(
            "x-expires".into(),
            AMQPValue::LongUInt(ms.saturating_add(3_600_000)),
        );
        let (conn, _) = self.publisher().await?;
        let channel = conn
            .create_channel()
            .await
            .map_err(|e| unavailable(&self.name, e))?;
        let declared = channel
            .queue_declare(
                name.as_str().into(),
                QueueDeclareOptions {
                    durable: true,
                    ..Default::default()
                },
                args,
            )
            .await
            .map_err(|e| {
                BrokerError::DeliveryFailed(format!("cannot declare the delay queue `{name}`: {e}"))
            });
        let _ = channel.close(200, "declared".into()).await;
        declared.map(|_| name)
    }
}

#[async_trait]
impl Broker for AmqpBroker {
    /// The connection is checked as it is now: the link reconnects only
    /// when it next publishes or a consumer re-subscribes.
    fn connectivity(&self) -> ConnectivityState {
        let mut state = self.0.connectivity.state();
        if let Ok(guard) = self.0.state.try_lock() {
            state.connected &= guard
                .as_ref()
                .is_some_and(|(conn, _)| conn.status().connected());
        }
        state
    }

    fn max_payload(&self) -> Option<usize> {
        Some(128 * 1024 * 1024) // RabbitMQ's default max_message_size
    }

    async fn publish(&self, address: &str, event: &Event) -> Result<(), BrokerError> {
        let inner = &self.0;
        let encoding = crate::stages::start();
        let (headers, content_type, body) =
            BINARY.encode_message(event, inner.settings.content_mode);
        let mut table = FieldTable::default();
        for (k, v) in headers {
            table.insert(
                short_string(k, "header name")?,
                AMQPValue::LongString(v.into()),
            );
        }
        let mut properties = BasicProperties::default()
            .with_headers(table)
            .with_delivery_mode(2);
        if let Some(ct) = content_type {
            properties = properties.with_content_type(short_string(ct, "content type")?);
        }
        crate::stages::record(crate::stages::Stage::Encode, encoding);
        let mandatory = inner.queues.lock().unwrap().contains(address);
        inner
            .publish_confirmed(
                &inner.settings.exchange,
                address,
                mandatory,
                &body,
                properties,
            )
            .await
    }

    async fn declare_queue(&self, address: &str, group: &str) -> Result<(), BrokerError> {
        let (conn, _) = self.0.publisher().await?;
        let channel = conn
            .create_channel()
            .await
            .map_err(|e| unavailable(&self.0.name, e))?;
        self.0.bound_queue(&channel, address, Some(group)).await?;
        let _ = channel.close(200, "declared".into()).await;
        self.0.queues.lock().unwrap().insert(address.to_string());
        Ok(())
    }

    async fn subscribe(
        &self,
        address: &str,
        mode: SubscribeMode,
    ) -> Result<Box<dyn Subscription>, BrokerError> {
        let group = match mode {
            SubscribeMode::Queue { group } => Some(group),
            SubscribeMode::Topic => None,
        };
        let (channel, consumer) = self.0.consume_within(address, group.as_deref()).await?;
        Ok(Box::new(AmqpSubscription {
            inner: self.0.clone(),
            address: address.into(),
            group,
            channel: Arc::new(ChannelGuard(channel)),
            consumer: Some(consumer),
            stopping: false,
        }))
    }

    async fn close(&self) {
        if let Some((conn, _)) = self.0.state.lock().await.take() {
            let _ = conn.close(200, "shutting down".into()).await;
        }
    }
}

/// Closes a consumer's channel once the subscription and every delivery
/// from it are done with it: closing it earlier would hand back deliveries
/// whose handlers are still running (RabbitMQ requeues what a closed channel
/// did not settle), and their events would be handled twice.
struct ChannelGuard(Channel);

impl Drop for ChannelGuard {
    fn drop(&mut self) {
        let channel = self.0.clone();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let _ = channel.close(200, "unsubscribed".into()).await;
            });
        }
    }
}

/// A consumer that re-creates itself (channel, queue, binding, consumer)
/// after the connection is lost.
struct AmqpSubscription {
    inner: Arc<Inner>,
    address: String,
    group: Option<String>,
    channel: Arc<ChannelGuard>,
    consumer: Option<lapin::Consumer>,
    /// Set by `stop`: the consumer is cancelled and not re-created.
    stopping: bool,
}

/// What a queue delivery needs to be republished with a delay.
struct Republish {
    inner: Arc<Inner>,
    group: String,
    attempt: u32,
    body: Vec<u8>,
    properties: BasicProperties,
}

struct AmqpAck {
    acker: Acker,
    /// Keeps the channel open until the delivery is settled.
    channel: Arc<ChannelGuard>,
    /// How long RabbitMQ may take to take the settlement.
    timeout: Duration,
    /// For queue deliveries: a nack with a delay republishes.
    republish: Option<Republish>,
}

impl AmqpAck {
    /// Sends an ack or a nack, failing (never hanging) when the channel is
    /// gone: RabbitMQ hands back what a closed channel did not settle.
    async fn settle(
        &self,
        what: &str,
        settled: impl Future<Output = lapin::Result<bool>>,
    ) -> Result<(), BrokerError> {
        if !self.channel.0.status().connected() {
            return Err(BrokerError::ConnectionLost(format!(
                "cannot {what}: the channel closed, so RabbitMQ hands the delivery back"
            )));
        }
        match crate::timeout::timeout(self.timeout, settled).await {
            Ok(result) => result
                .map(drop)
                .map_err(|e| BrokerError::ConnectionLost(e.to_string())),
            Err(_) => Err(BrokerError::ConnectionLost(format!(
                "RabbitMQ took no {what} within {:?}",
                self.timeout
            ))),
        }
    }

    async fn requeue(&self) -> Result<(), BrokerError> {
        let options = BasicNackOptions {
            requeue: true,
            multiple: false,
        };
        self.settle("nack", self.acker.nack(options)).await
    }

    /// Publishes a copy for the next attempt to the group's delay queue.
    async fn delay(&self, r: &Republish, delay: Duration) -> Result<(), BrokerError> {
        let queue = r.inner.delay_queue(&r.group, delay).await?;
        let mut headers = r.properties.headers().clone().unwrap_or_default();
        headers.insert(
            ATTEMPT_HEADER.into(),
            AMQPValue::LongUInt(r.attempt.saturating_add(1)),
        );
        let properties = r.properties.clone().with_headers(headers);
        r.inner
            .publish_confirmed("", &queue, true, &r.body, properties)
            .await
    }
}

#[async_trait]
impl Acknowledge for AmqpAck {
    async fn ack(self: Box<Self>) -> Result<(), BrokerError> {
        self.settle("ack", self.acker.ack(BasicAckOptions::default()))
            .await
    }

    async fn nack(self: Box<Self>, delay: Duration) -> Result<(), BrokerError> {
        let Some(r) = self.republish.as_ref().filter(|_| !delay.is_zero()) else {
            return self.requeue().await;
        };
        match self.delay(r, delay).await {
            Ok(()) => self.ack().await,
            Err(e) => {
                // Without the delay queue, hold the delivery for the delay
                // and requeue it: never straight back into a tight loop.
                tracing::warn!(link = %r.inner.name, group = %r.group, "cannot republish with a delay ({e}); requeueing after it instead");
                tokio::spawn(async move {
                    tokio::time::sleep(delay).await;
                    let _ = self.requeue().await;
                });
                Ok(())
            }
        }
    }

    fn redelivers(&self) -> bool {
        self.republish.is_some()
    }
}

/// An AMQP header value as bytes: strings and byte arrays as they came (they
/// need not be UTF-8; the binding refuses an attribute that is not), other
/// types (numbers, booleans, timestamps, tables) as their text.
fn header_bytes(value: &AMQPValue) -> Vec<u8> {
    match value {
        AMQPValue::LongString(s) => s.as_bytes().to_vec(),
        AMQPValue::ShortString(s) => s.as_str().as_bytes().to_vec(),
        AMQPValue::ByteArray(b) => b.as_slice().to_vec(),
        AMQPValue::Boolean(b) => b.to_string().into_bytes(),
        AMQPValue::ShortShortInt(n) => n.to_string().into_bytes(),
        AMQPValue::ShortShortUInt(n) => n.to_string().into_bytes(),
        AMQPValue::ShortInt(n) => n.to_string().into_bytes(),
        AMQPValue::ShortUInt(n) => n.to_string().into_bytes(),
        AMQPValue::LongInt(n) => n.to_string().into_bytes(),
        AMQPValue::LongUInt(n) => n.to_string().into_bytes(),
        AMQPValue::LongLongInt(n) => n.to_string().into_bytes(),
        AMQPValue::Float(n) => n.to_string().into_bytes(),
        AMQPValue::Double(n) => n.to_string().into_bytes(),
        // The AMQP binding carries `time` as a timestamp (seconds).
        AMQPValue::Timestamp(t) => i64::try_from(*t)
            .ok()
            .and_then(|t| chrono::DateTime::from_timestamp(t, 0))
            .map_or_else(
                || t.to_string(),
                |t| t.to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
            )
            .into_bytes(),
        other => format!("{other:?}").into_bytes(),
    }
}

/// An AMQP header as a count, whatever integer type the sender chose.
fn count(value: &AMQPValue) -> Option<u32> {
    let n: i128 = match value {
        AMQPValue::ShortShortInt(n) => (*n).into(),
        AMQPValue::ShortShortUInt(n) => (*n).into(),
        AMQPValue::ShortInt(n) => (*n).into(),
        AMQPValue::ShortUInt(n) => (*n).into(),
        AMQPValue::LongInt(n) => (*n).into(),
        AMQPValue::LongUInt(n) => (*n).into(),
        AMQPValue::LongLongInt(n) => (*n).into(),
        AMQPValue::LongString(s) => std::str::from_utf8(s.as_bytes()).ok()?.parse().ok()?,
        _ => return None,
    };
    Some(u32::try_from(n.max(0)).unwrap_or(u32::MAX))
}

impl AmqpSubscription {
    fn delivery(&self, delivery: lapin::message::Delivery) -> Delivery {
        let decoding = crate::stages::start();
        let link = &self.inner.name;
        let props = &delivery.properties;
        let mut headers = Vec::new();
        let (mut carried, mut returned) = (None, None);
        if let Some(table) = props.headers() {
            for (k, v) in table.inner() {
                match k.as_str() {
                    ATTEMPT_HEADER => carried = count(v),
                    "x-delivery-count" => returned = count(v),
                    _ => {}
                }
                headers.push((k.to_string(), header_bytes(v)));
            }
        }
        let content_type = props.content_type().as_ref().map(|c| c.to_string());
        let decoded = BINARY.decode_message(
            &headers,
            content_type.as_deref(),
            &delivery.data,
            (link, &self.address),
        );
        let event = inbound::admit(decoded, || Received {
            link,
            address: &self.address,
            metadata: headers
                .iter()
                .map(|(k, v)| (k.clone(), inbound::text(v).into_owned()))
                .collect(),
            content_type: content_type.as_deref(),
            body: &delivery.data,
        });
        crate::stages::record(crate::stages::Stage::Decode, decoding);
        let returned = returned.unwrap_or(u32::from(delivery.redelivered));
        let attempt = carried.unwrap_or(1).max(1).saturating_add(returned);
        let republish = self.group.clone().map(|group| Republish {
            inner: self.inner.clone(),
            group,
            attempt,
            body: delivery.data,
            properties: delivery.properties,
        });
        let ack = AmqpAck {
            acker: delivery.acker,
            channel: self.channel.clone(),
            timeout: self.inner.settings.publish_timeout,
            republish,
        };
        Delivery::received(event, attempt, Box::new(ack))
    }
}

#[async_trait]
impl Subscription for AmqpSubscription {
    async fn next(&mut self) -> Option<Delivery> {
        loop {
            if let Some(consumer) = &mut self.consumer {
                let next = tokio::select! {
                    next = consumer.next() => Some(next),
                    () = closed(&self.channel.0) => None,
                };
                match next {
                    Some(Some(Ok(delivery))) => return Some(self.delivery(delivery)),
                    Some(Some(Err(e))) => {
                        tracing::warn!(link = %self.inner.name, address = %self.address, "AMQP consumer: {e}; re-subscribing")
                    }
                    Some(None) if self.stopping => return None,
                    Some(None) => {
                        tracing::warn!(link = %self.inner.name, address = %self.address, "AMQP consumer ended; re-subscribing")
                    }
                    None => {
                        tracing::warn!(link = %self.inner.name, address = %self.address, "AMQP channel closed under its consumer; re-subscribing")
                    }
                }
                self.consumer = None;
            }
            if self.stopping {
                return None;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            if let Ok((channel, consumer)) = self
                .inner
                .consume_within(&self.address, self.group.as_deref())
                .await
            {
                tracing::info!(link = %self.inner.name, address = %self.address, "AMQP consumer re-subscribed");
                self.channel = Arc::new(ChannelGuard(channel));
                self.consumer = Some(consumer);
            }
        }
    }

    /// Cancels the consumer: what RabbitMQ already sent (up to `prefetch`)
    /// still comes out of `next`, then the end.
    async fn stop(&mut self) {
        self.stopping = true;
        if let Some(consumer) = &self.consumer {
            let cancel = self.channel.0.basic_cancel(
                consumer.tag().as_str().into(),
                BasicCancelOptions::default(),
            );
            let cancelled = tokio::time::timeout(self.inner.settings.publish_timeout, cancel).await;
            if !matches!(cancelled, Ok(Ok(()))) {
                // The connection is gone: RabbitMQ requeued what we held.
                self.consumer = None;
            }
        }
    }
}

/// Returns once `channel` is no longer open (checked every
/// [`LIVENESS_CHECK`]).
async fn closed(channel: &Channel) {
    let mut check = tokio::time::interval(LIVENESS_CHECK);
    check.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
    loop {
        check.tick().await;
        if !channel.status().connected() {
            return;
        }
    }
}
