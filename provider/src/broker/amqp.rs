//! AMQP 0-9-1 links (`type = "amqp"`, RabbitMQ): every channel publishes to
//! one durable topic exchange with the address as routing key, with
//! publisher confirms. A queue channel is a durable queue (named by its
//! group) bound to the address, read by competing consumers with manual acks
//! and a prefetch window; a topic subscriber gets an exclusive queue of its
//! own. At least once for queues.
//!
//! The client connects at start (a broker that is down does not stop the
//! start; the link connects on first use). After a connection loss the next
//! publish reconnects (or fails at once while the broker is away), and each
//! subscription re-declares its queue and binding and consumes again.

use super::tls::TlsFiles;
use super::{
    Acknowledge, Broker, BrokerError, Delivery, Invalid, MakeBroker, SubscribeMode, Subscription,
    redact_url, require,
};
use crate::cloudevents::Event;
use crate::cloudevents::amqp::BINARY;
use crate::cloudevents::nats::ContentMode;
use async_trait::async_trait;
use futures::StreamExt as _;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicNackOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
};
use lapin::tcp::{OwnedIdentity, OwnedTLSConfig};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{
    Acker, BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use serde::Deserialize;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

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
        require(s.prefetch > 0, "prefetch", "must be at least 1")?;
        s.tls_files = TlsFiles::read(
            config_dir,
            &mut s.ca_file,
            &mut s.cert_file,
            &mut s.key_file,
        )?
        .for_url(s.url.starts_with("amqps://"), "amqps://")?;
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
        }));
        if let Err(e) = broker.0.publisher().await {
            tracing::warn!(link = %name, url = %redact_url(&s.url), "AMQP broker not reachable yet ({e}); connecting on first use");
        }
        Ok(Arc::new(broker))
    }
}

struct AmqpBroker(Arc<Inner>);

/// What the broker and its subscriptions share, so that either can
/// reconnect.
struct Inner {
    name: String,
    settings: AmqpSettings,
    /// The connection and the confirm-mode channel publishes go through.
    state: tokio::sync::Mutex<Option<(Arc<Connection>, Channel)>>,
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

#[async_trait]
impl Broker for AmqpBroker {
    fn max_payload(&self) -> Option<usize> {
        Some(128 * 1024 * 1024) // RabbitMQ's default max_message_size
    }

    async fn publish(&self, address: &str, event: &Event) -> Result<(), BrokerError> {
        let inner = &self.0;
        let (_, channel) = inner.publisher().await?;
        let (headers, content_type, body) =
            BINARY.encode_message(event, inner.settings.content_mode);
        let mut table = FieldTable::default();
        for (k, v) in headers {
            table.insert(k.into(), AMQPValue::LongString(v.into()));
        }
        let mut properties = BasicProperties::default()
            .with_headers(table)
            .with_delivery_mode(2);
        if let Some(ct) = content_type {
            properties = properties.with_content_type(ct.into());
        }
        let timeout = inner.settings.publish_timeout;
        let confirm = async {
            channel
                .basic_publish(
                    inner.settings.exchange.as_str().into(),
                    address.into(),
                    BasicPublishOptions::default(),
                    &body,
                    properties,
                )
                .await?
                .await
        };
        match tokio::time::timeout(timeout, confirm).await {
            Err(_) => Err(BrokerError::DeliveryFailed(format!(
                "RabbitMQ did not confirm within {}",
                humantime::format_duration(timeout)
            ))),
            Ok(Err(e)) => Err(BrokerError::ConnectionLost(format!(
                "AMQP link `{}`: {e}",
                inner.name
            ))),
            Ok(Ok(Confirmation::Nack(_))) => Err(BrokerError::DeliveryFailed(
                "RabbitMQ refused the event (nack)".into(),
            )),
            Ok(Ok(_)) => Ok(()),
        }
    }

    async fn declare_queue(&self, address: &str, group: &str) -> Result<(), BrokerError> {
        let (conn, _) = self.0.publisher().await?;
        let channel = conn
            .create_channel()
            .await
            .map_err(|e| unavailable(&self.0.name, e))?;
        self.0.bound_queue(&channel, address, Some(group)).await?;
        let _ = channel.close(200, "declared".into()).await;
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
        let (channel, consumer) = self.0.consume(address, group.as_deref()).await?;
        Ok(Box::new(AmqpSubscription {
            inner: self.0.clone(),
            address: address.into(),
            group,
            channel,
            consumer: Some(consumer),
        }))
    }

    async fn close(&self) {
        if let Some((conn, _)) = self.0.state.lock().await.take() {
            let _ = conn.close(200, "shutting down".into()).await;
        }
    }
}

/// A consumer that re-creates itself (channel, queue, binding, consumer)
/// after the connection is lost.
struct AmqpSubscription {
    inner: Arc<Inner>,
    address: String,
    group: Option<String>,
    channel: Channel,
    consumer: Option<lapin::Consumer>,
}

impl Drop for AmqpSubscription {
    /// Closing the channel cancels the consumer; unacknowledged deliveries go
    /// back to the queue.
    fn drop(&mut self) {
        let channel = self.channel.clone();
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                let _ = channel.close(200, "unsubscribed".into()).await;
            });
        }
    }
}

struct AmqpAck(Acker);

#[async_trait]
impl Acknowledge for AmqpAck {
    async fn ack(self: Box<Self>) -> Result<(), BrokerError> {
        self.0
            .ack(BasicAckOptions::default())
            .await
            .map(drop)
            .map_err(|e| BrokerError::ConnectionLost(e.to_string()))
    }
    async fn nack(self: Box<Self>) -> Result<(), BrokerError> {
        self.0
            .nack(BasicNackOptions {
                requeue: true,
                multiple: false,
            })
            .await
            .map(drop)
            .map_err(|e| BrokerError::ConnectionLost(e.to_string()))
    }
}

impl AmqpSubscription {
    fn delivery(&self, delivery: lapin::message::Delivery) -> Delivery {
        let link = &self.inner.name;
        let props = &delivery.properties;
        let mut headers = Vec::new();
        let mut delivery_count = None;
        if let Some(table) = props.headers() {
            for (k, v) in table.inner() {
                let value = match v {
                    AMQPValue::LongString(s) => String::from_utf8_lossy(s.as_bytes()).into_owned(),
                    AMQPValue::ShortString(s) => s.to_string(),
                    AMQPValue::LongLongInt(n) if k.as_str() == "x-delivery-count" => {
                        delivery_count = Some(*n as u32);
                        continue;
                    }
                    other => format!("{other:?}"),
                };
                headers.push((k.to_string(), value));
            }
        }
        let content_type = props.content_type().as_ref().map(|c| c.to_string());
        let event = BINARY
            .decode_message(&headers, content_type.as_deref(), &delivery.data, (link, &self.address))
            .unwrap_or_else(|e| {
                tracing::warn!(link = %link, "malformed CloudEvent ({e}); delivering it as a plain message");
                Event::wrap_plain(link, &self.address, None, delivery.data.clone())
            });
        let attempt = delivery_count.map_or(if delivery.redelivered { 2 } else { 1 }, |n| n + 1);
        Delivery::new(event, attempt, Box::new(AmqpAck(delivery.acker)))
    }
}

#[async_trait]
impl Subscription for AmqpSubscription {
    async fn next(&mut self) -> Option<Delivery> {
        loop {
            if let Some(consumer) = &mut self.consumer {
                match consumer.next().await {
                    Some(Ok(delivery)) => return Some(self.delivery(delivery)),
                    Some(Err(e)) => {
                        tracing::warn!(link = %self.inner.name, address = %self.address, "AMQP consumer: {e}; re-subscribing")
                    }
                    None => {
                        tracing::warn!(link = %self.inner.name, address = %self.address, "AMQP consumer ended; re-subscribing")
                    }
                }
                self.consumer = None;
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            if let Ok((channel, consumer)) = self
                .inner
                .consume(&self.address, self.group.as_deref())
                .await
            {
                tracing::info!(link = %self.inner.name, address = %self.address, "AMQP consumer re-subscribed");
                self.channel = channel;
                self.consumer = Some(consumer);
            }
        }
    }
}
