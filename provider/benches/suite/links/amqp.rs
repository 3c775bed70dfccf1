//! RabbitMQ (AMQP 0-9-1, lapin): everything goes through the provider's
//! durable topic exchange `messaging` with the address as routing key; a
//! queue channel is a durable queue named by its group. The suite's
//! producer (mandatory publishes with confirms), its sink (an exclusive
//! queue bound to the output), and the native relay: the group's queue with
//! prefetch 16 and manual acks, each order acknowledged once RabbitMQ
//! confirmed its shipment.

use super::{Handlers, Names, admitted, announce_ready, ship};
use crate::flow::{Confirm, Producer, Sink};
use anyhow::{Context as _, bail};
use async_trait::async_trait;
use futures::StreamExt as _;
use lapin::options::{
    BasicAckOptions, BasicConsumeOptions, BasicPublishOptions, BasicQosOptions,
    ConfirmSelectOptions, ExchangeDeclareOptions, QueueBindOptions, QueueDeclareOptions,
    QueueDeleteOptions,
};
use lapin::types::{AMQPValue, FieldTable};
use lapin::{
    BasicProperties, Channel, Confirmation, Connection, ConnectionProperties, ExchangeKind,
};
use messaging_provider::cloudevents::amqp::BINARY;
use messaging_provider::cloudevents::{ContentMode, Event};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The local RabbitMQ, as guest.
const URL: &str = "amqp://guest:guest@127.0.0.1:5672/%2f";
/// The provider's default `exchange`.
const EXCHANGE: &str = "messaging";
/// The provider's default `prefetch`.
const PREFETCH: u16 = 16;
/// How long a publish waits for its confirm (the provider's `publish_timeout`).
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);

/// A connection to the local RabbitMQ, or an error that names it.
async fn connect() -> anyhow::Result<Connection> {
    let runtime = lapin::runtime::default_runtime().context("lapin's runtime")?;
    tokio::time::timeout(
        Duration::from_secs(5),
        Connection::connect_with_runtime(URL, ConnectionProperties::default(), runtime),
    )
    .await
    .map_err(|_| anyhow::anyhow!("timed out"))
    .and_then(|c| c.map_err(anyhow::Error::from))
    .context("cannot connect to RabbitMQ (AMQP) at 127.0.0.1:5672 as guest (is rabbitmq-server running?)")
}

/// A channel with the exchange declared, in confirm mode when asked.
async fn channel(connection: &Connection, confirms: bool) -> anyhow::Result<Channel> {
    let channel = connection.create_channel().await?;
    if confirms {
        channel
            .confirm_select(ConfirmSelectOptions::default())
            .await?;
    }
    channel
        .exchange_declare(
            EXCHANGE.into(),
            ExchangeKind::Topic,
            ExchangeDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok(channel)
}

/// Declares the run's durable queue (named by the group) bound to the input,
/// as the provider declares a queue channel.
async fn declare_queue(channel: &Channel, names: &Names) -> anyhow::Result<()> {
    channel
        .queue_declare(
            names.group.as_str().into(),
            QueueDeclareOptions {
                durable: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_bind(
            names.group.as_str().into(),
            EXCHANGE.into(),
            names.input.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    Ok(())
}

/// Declares the run's queue before either relay starts.
pub async fn prepare(names: &Names) -> anyhow::Result<()> {
    let connection = connect().await?;
    declare_queue(&channel(&connection, false).await?, names).await?;
    let _ = connection.close(200, "prepared".into()).await;
    Ok(())
}

/// Deletes the run's queue.
pub async fn cleanup(names: &Names) -> anyhow::Result<()> {
    let connection = connect().await?;
    let channel = connection.create_channel().await?;
    channel
        .queue_delete(names.group.as_str().into(), QueueDeleteOptions::default())
        .await
        .with_context(|| format!("cannot delete the queue {}", names.group))?;
    let _ = connection.close(200, "cleaned up".into()).await;
    Ok(())
}

/// An event in binary mode: `cloudEvents_` headers, content type, body.
fn message(event: &Event) -> (BasicProperties, Vec<u8>) {
    let (headers, content_type, body) = BINARY.encode_message(event, ContentMode::Binary);
    let mut table = FieldTable::default();
    for (name, value) in headers {
        table.insert(name.into(), AMQPValue::LongString(value.into()));
    }
    let mut properties = BasicProperties::default()
        .with_headers(table)
        .with_delivery_mode(2);
    if let Some(content_type) = content_type {
        properties = properties.with_content_type(content_type.into());
    }
    (properties, body)
}

/// The event in a delivery.
fn event_of(delivery: &lapin::message::Delivery, address: &str) -> anyhow::Result<Event> {
    let mut headers: Vec<(String, Vec<u8>)> = Vec::new();
    if let Some(table) = delivery.properties.headers() {
        for (name, value) in table.inner() {
            let value = match value {
                AMQPValue::LongString(s) => s.as_bytes().to_vec(),
                AMQPValue::ShortString(s) => s.as_str().as_bytes().to_vec(),
                other => format!("{other:?}").into_bytes(),
            };
            headers.push((name.to_string(), value));
        }
    }
    let content_type = delivery
        .properties
        .content_type()
        .as_ref()
        .map(|c| c.to_string());
    admitted(BINARY.decode_message(
        &headers,
        content_type.as_deref(),
        &delivery.data,
        ("bench", address),
    ))
}

/// Waits for a publish's confirm; a nack or a returned message is an error.
async fn confirmed(confirm: lapin::PublisherConfirm) -> anyhow::Result<()> {
    match tokio::time::timeout(PUBLISH_TIMEOUT, confirm).await {
        Ok(Ok(Confirmation::Ack(None))) => Ok(()),
        Ok(Ok(Confirmation::Ack(Some(_)))) => {
            bail!("RabbitMQ returned the message: no queue took it")
        }
        Ok(Ok(other)) => bail!("RabbitMQ did not take the message: {other:?}"),
        Ok(Err(e)) => Err(e.into()),
        Err(_) => bail!("no confirm within {PUBLISH_TIMEOUT:?}"),
    }
}

/// Publishes to the exchange with the input's routing key.
struct AmqpProducer {
    _connection: Connection,
    channel: Channel,
    routing_key: String,
}

#[async_trait]
impl Producer for AmqpProducer {
    async fn send(&self, event: Event) -> anyhow::Result<Confirm> {
        let (properties, body) = message(&event);
        let confirm = self
            .channel
            .basic_publish(
                EXCHANGE.into(),
                self.routing_key.as_str().into(),
                BasicPublishOptions {
                    mandatory: true,
                    ..Default::default()
                },
                &body,
                properties,
            )
            .await?;
        Ok(Box::pin(confirmed(confirm)))
    }
}

/// Publishes orders to the run's queue (mandatory, with confirms).
pub async fn producer(names: &Names) -> anyhow::Result<Arc<dyn Producer>> {
    let connection = connect().await?;
    let channel = channel(&connection, true).await?;
    Ok(Arc::new(AmqpProducer {
        _connection: connection,
        channel,
        routing_key: names.input.clone(),
    }))
}

/// Consumes the sink's exclusive queue.
struct AmqpSink {
    _connection: Connection,
    consumer: lapin::Consumer,
    address: String,
}

#[async_trait]
impl Sink for AmqpSink {
    async fn next(&mut self) -> anyhow::Result<Option<Event>> {
        match self.consumer.next().await {
            Some(delivery) => Ok(Some(event_of(&delivery?, &self.address)?)),
            None => Ok(None),
        }
    }
}

/// Reads the run's output through an exclusive queue of its own (no acks).
pub async fn sink(names: &Names) -> anyhow::Result<Box<dyn Sink>> {
    let connection = connect().await?;
    let channel = channel(&connection, false).await?;
    let queue = channel
        .queue_declare(
            "".into(),
            QueueDeclareOptions {
                exclusive: true,
                auto_delete: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    channel
        .queue_bind(
            queue.name().clone(),
            EXCHANGE.into(),
            names.output.as_str().into(),
            QueueBindOptions::default(),
            FieldTable::default(),
        )
        .await?;
    let consumer = channel
        .basic_consume(
            queue.name().clone(),
            "".into(),
            BasicConsumeOptions {
                no_ack: true,
                ..Default::default()
            },
            FieldTable::default(),
        )
        .await?;
    Ok(Box::new(AmqpSink {
        _connection: connection,
        consumer,
        address: names.output.clone(),
    }))
}

/// The native relay on RabbitMQ.
pub async fn native_relay(names: Names, stop: CancellationToken) -> anyhow::Result<()> {
    let connection = connect().await?;
    let publisher = channel(&connection, true).await?;
    let consuming = channel(&connection, false).await?;
    declare_queue(&consuming, &names).await?;
    consuming
        .basic_qos(PREFETCH, BasicQosOptions::default())
        .await?;
    let mut orders = consuming
        .basic_consume(
            names.group.as_str().into(),
            "".into(),
            BasicConsumeOptions::default(),
            FieldTable::default(),
        )
        .await?;
    announce_ready();
    let handlers = Handlers::new();
    loop {
        let delivery = tokio::select! {
            () = stop.cancelled() => break,
            delivery = orders.next() => match delivery {
                Some(Ok(delivery)) => delivery,
                Some(Err(e)) => {
                    eprintln!("native relay: AMQP consumer: {e}");
                    break;
                }
                None => break,
            },
        };
        let (publisher, names) = (publisher.clone(), names.clone());
        handlers
            .spawn(async move {
                let shipment = ship(&event_of(&delivery, &names.input)?)?;
                let (properties, body) = message(&shipment);
                let confirm = publisher
                    .basic_publish(
                        EXCHANGE.into(),
                        names.output.as_str().into(),
                        BasicPublishOptions::default(),
                        &body,
                        properties,
                    )
                    .await?;
                confirmed(confirm).await?;
                delivery.acker.ack(BasicAckOptions::default()).await?;
                Ok(())
            })
            .await;
    }
    handlers.drain().await;
    let _ = connection.close(200, "stopping".into()).await;
    Ok(())
}
