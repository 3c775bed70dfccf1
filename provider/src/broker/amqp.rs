//! AMQP 0-9-1 links (`type = "amqp"`, RabbitMQ): every channel publishes to
//! one durable topic exchange with the address as routing key, with
//! publisher confirms. A queue channel is a durable queue (named by its
//! group) bound to the address, read by competing consumers with manual acks
//! and a prefetch window; a topic subscriber gets an exclusive queue of its
//! own. At least once for queues.
//!
//! The client connects at start (a broker that is down does not stop the
//! start; the link connects on first use) and recovers on its own after a
//! connection loss, re-declaring the topology and re-starting consumers.

use super::{
    Acknowledge, Broker, BrokerError, Delivery, MakeBroker, SubscribeMode, Subscription, redact_url,
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
use lapin::types::{AMQPValue, FieldTable};
use lapin::{
    Acker, BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use serde::Deserialize;
use std::sync::Arc;
use std::time::Duration;

/// Makes AMQP links.
pub struct MakeAmqp;

/// `[messaging_link.<name>]` settings of an AMQP link.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct AmqpSettings {
    /// `amqp://user:password@host:port/vhost`.
    #[serde(default = "default_url")]
    pub url: String,
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

    fn describe(s: &AmqpSettings) -> String {
        format!(
            "amqp {} (exchange `{}`, prefetch {}, queues at least once)",
            redact_url(&s.url),
            s.exchange,
            s.prefetch
        )
    }

    async fn connect(&self, name: &str, s: &AmqpSettings) -> anyhow::Result<Arc<dyn Broker>> {
        anyhow::ensure!(s.prefetch > 0, "`prefetch` must be at least 1");
        let broker = AmqpBroker {
            name: name.into(),
            settings: s.clone(),
            state: tokio::sync::Mutex::new(None),
        };
        if let Err(e) = broker.publisher().await {
            tracing::warn!(link = %name, url = %redact_url(&s.url), "AMQP broker not reachable yet ({e}); connecting on first use");
        }
        Ok(Arc::new(broker))
    }
}

struct AmqpBroker {
    name: String,
    settings: AmqpSettings,
    /// The connection and the confirm-mode channel publishes go through.
    state: tokio::sync::Mutex<Option<(Arc<Connection>, Channel)>>,
}

fn unavailable(link: &str, e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(format!("AMQP link `{link}`: {e}"))
}

impl AmqpBroker {
    /// The connection and publishing channel, connecting if there is none.
    async fn publisher(&self) -> Result<(Arc<Connection>, Channel), BrokerError> {
        let mut state = self.state.lock().await;
        if let Some((conn, channel)) = state.as_ref()
            && conn.status().connected()
        {
            return Ok((conn.clone(), channel.clone()));
        }
        if let Some((conn, _)) = state.as_ref()
            && !conn.status().closed()
            && !conn.status().errored()
        {
            // Recovering: fail fast instead of stacking a second connection.
            return Err(unavailable(&self.name, "the connection is being recovered"));
        }
        let properties = ConnectionProperties::default()
            .enable_auto_recover()
            .with_connection_name(format!("trigger-messaging/{}", self.name).into());
        let conn = tokio::time::timeout(
            self.settings.publish_timeout,
            Connection::connect(&self.settings.url, properties),
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

#[async_trait]
impl Broker for AmqpBroker {
    fn max_payload(&self) -> Option<usize> {
        Some(128 * 1024 * 1024) // RabbitMQ's default max_message_size
    }

    async fn publish(&self, address: &str, event: &Event) -> Result<(), BrokerError> {
        let (_, channel) = self.publisher().await?;
        let (headers, content_type, body) =
            BINARY.encode_message(event, self.settings.content_mode);
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
        let timeout = self.settings.publish_timeout;
        let confirm = async {
            channel
                .basic_publish(
                    self.settings.exchange.as_str().into(),
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
                self.name
            ))),
            Ok(Ok(Confirmation::Nack(_))) => Err(BrokerError::DeliveryFailed(
                "RabbitMQ refused the event (nack)".into(),
            )),
            Ok(Ok(_)) => Ok(()),
        }
    }

    async fn declare_queue(&self, address: &str, group: &str) -> Result<(), BrokerError> {
        let (conn, _) = self.publisher().await?;
        let channel = conn
            .create_channel()
            .await
            .map_err(|e| unavailable(&self.name, e))?;
        self.bound_queue(&channel, address, Some(group)).await?;
        let _ = channel.close(200, "declared".into()).await;
        Ok(())
    }

    async fn subscribe(
        &self,
        address: &str,
        mode: SubscribeMode,
    ) -> Result<Box<dyn Subscription>, BrokerError> {
        let (conn, _) = self.publisher().await?;
        let channel = conn
            .create_channel()
            .await
            .map_err(|e| unavailable(&self.name, e))?;
        let group = match &mode {
            SubscribeMode::Queue { group } => Some(group.as_str()),
            SubscribeMode::Topic => None,
        };
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
        Ok(Box::new(AmqpSubscription {
            link: self.name.clone(),
            address: address.into(),
            channel,
            consumer,
        }))
    }

    async fn close(&self) {
        if let Some((conn, _)) = self.state.lock().await.take() {
            let _ = conn.close(200, "shutting down".into()).await;
        }
    }
}

struct AmqpSubscription {
    link: String,
    address: String,
    channel: Channel,
    consumer: lapin::Consumer,
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

#[async_trait]
impl Subscription for AmqpSubscription {
    async fn next(&mut self) -> Option<Delivery> {
        loop {
            match self.consumer.next().await? {
                Ok(delivery) => {
                    let props = &delivery.properties;
                    let mut headers = Vec::new();
                    let mut delivery_count = None;
                    if let Some(table) = props.headers() {
                        for (k, v) in table.inner() {
                            let value = match v {
                                AMQPValue::LongString(s) => {
                                    String::from_utf8_lossy(s.as_bytes()).into_owned()
                                }
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
                        .decode_message(&headers, content_type.as_deref(), &delivery.data, (&self.link, &self.address))
                        .unwrap_or_else(|e| {
                            tracing::warn!(link = %self.link, "malformed CloudEvent ({e}); delivering it as a plain message");
                            Event::wrap_plain(&self.link, &self.address, None, delivery.data.clone())
                        });
                    let attempt =
                        delivery_count.map_or(if delivery.redelivered { 2 } else { 1 }, |n| n + 1);
                    return Some(Delivery::new(
                        event,
                        attempt,
                        Box::new(AmqpAck(delivery.acker)),
                    ));
                }
                Err(e) => {
                    tracing::warn!(link = %self.link, address = %self.address, "AMQP consumer: {e}");
                    if self.channel.wait_for_recovery(e).await.is_err() {
                        tokio::time::sleep(Duration::from_millis(500)).await;
                    }
                }
            }
        }
    }
}
