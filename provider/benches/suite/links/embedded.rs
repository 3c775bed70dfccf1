//! The embedded broker, in the suite's process (it lives inside the
//! provider): the provider's apps fed with `publish_external` and read with
//! `watch`, and the native baseline of the old `dispatch` bench: an
//! embedded broker and one task that takes each order from the queue,
//! publishes its shipment and acknowledges it.

use super::{Names, ship};
use crate::flow::{Confirm, Producer, Sink, confirmed};
use anyhow::Context as _;
use async_trait::async_trait;
use messaging_provider::broker::embedded::{EmbeddedBroker, EmbeddedSettings};
use messaging_provider::broker::{Broker, SubscribeMode, Subscription};
use messaging_provider::cloudevents::Event;
use messaging_provider::dispatch::AppRuntime;
use std::sync::Arc;

/// Publishes into an app's channel as an outside producer would.
pub struct AppProducer {
    /// The app.
    pub app: Arc<AppRuntime>,
    /// The app's channel name.
    pub channel: String,
}

#[async_trait]
impl Producer for AppProducer {
    async fn send(&self, event: Event) -> anyhow::Result<Confirm> {
        self.app
            .publish_external(&self.channel, event)
            .await
            .map_err(|e| anyhow::anyhow!("{e}"))?;
        Ok(confirmed())
    }
}

/// Reads a subscription of the embedded broker (a watch of an app's
/// channel, or the native relay's output).
pub struct SubscriptionSink(pub Box<dyn Subscription>);

#[async_trait]
impl Sink for SubscriptionSink {
    async fn next(&mut self) -> anyhow::Result<Option<Event>> {
        let Some(delivery) = self.0.next().await else {
            return Ok(None);
        };
        let (event, acked) = delivery.ack_and_take().await;
        acked?;
        Ok(Some(event))
    }
}

/// An app's watch of `channel` as a sink.
pub async fn watch(app: &AppRuntime, channel: &str) -> anyhow::Result<Box<dyn Sink>> {
    let subscription = app
        .watch(channel)
        .await
        .map_err(|e| anyhow::anyhow!("cannot watch `{channel}`: {e}"))?;
    Ok(Box::new(SubscriptionSink(subscription)))
}

/// Publishes straight into an embedded broker.
struct BrokerProducer {
    broker: Arc<EmbeddedBroker>,
    address: String,
}

#[async_trait]
impl Producer for BrokerProducer {
    async fn send(&self, event: Event) -> anyhow::Result<Confirm> {
        self.broker.publish(&self.address, &event).await?;
        Ok(confirmed())
    }
}

/// The native relay on an embedded broker of its own: its producer, its
/// sink, and the relay task.
pub struct NativeEmbedded {
    /// Publishes orders into the relay's queue.
    pub producer: Arc<dyn Producer>,
    /// Reads the relay's output topic.
    pub sink: Box<dyn Sink>,
    /// The relay task, stopped when this drops.
    pub relay: AbortOnDrop,
}

/// A task that ends when its handle is dropped.
pub struct AbortOnDrop(tokio::task::JoinHandle<()>);

impl Drop for AbortOnDrop {
    fn drop(&mut self) {
        self.0.abort();
    }
}

/// Starts the native relay on a fresh embedded broker.
pub async fn native(names: &Names) -> anyhow::Result<NativeEmbedded> {
    let broker = Arc::new(EmbeddedBroker::new(EmbeddedSettings::default()));
    broker
        .declare_queue(&names.input, &names.group)
        .await
        .context("embedded broker: declare the queue")?;
    let sink = broker
        .subscribe(&names.output, SubscribeMode::Topic)
        .await
        .context("embedded broker: subscribe to the output")?;
    let mut orders = broker
        .subscribe(
            &names.input,
            SubscribeMode::Queue {
                group: names.group.clone(),
            },
        )
        .await
        .context("embedded broker: subscribe to the queue")?;
    let (relay_broker, output) = (broker.clone(), names.output.clone());
    let relay = tokio::spawn(async move {
        while let Some(delivery) = orders.next().await {
            let (order, _, ack) = delivery.into_parts();
            match ship(&order) {
                Ok(shipment) => {
                    if let Err(e) = relay_broker.publish(&output, &shipment).await {
                        eprintln!("native embedded relay: publish: {e}");
                    }
                }
                Err(e) => eprintln!("native embedded relay: {e:#}"),
            }
            let _ = ack.ack().await;
        }
    });
    Ok(NativeEmbedded {
        producer: Arc::new(BrokerProducer {
            broker,
            address: names.input.clone(),
        }),
        sink: Box::new(SubscriptionSink(sink)),
        relay: AbortOnDrop(relay),
    })
}
