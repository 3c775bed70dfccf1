//! Core NATS: the suite's producer and sink (the sink also reads JetStream
//! rows' output, which core subscribers of the subject see), and the
//! native relay: a queue-group subscriber that publishes each shipment and
//! flushes, as the provider's NATS link does for every publish.

use super::{Handlers, Names, admitted, announce_ready, ship};
use crate::flow::{Confirm, Producer, Sink, confirmed};
use anyhow::Context as _;
use async_nats::HeaderMap;
use async_trait::async_trait;
use futures::StreamExt as _;
use messaging_provider::cloudevents::nats::{decode, encode};
use messaging_provider::cloudevents::{ContentMode, Event};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Where the local NATS server listens.
pub const URL: &str = "nats://127.0.0.1:4222";

/// A client of the local NATS server, or an error that names it.
pub async fn connect() -> anyhow::Result<async_nats::Client> {
    async_nats::ConnectOptions::new()
        .connection_timeout(Duration::from_secs(5))
        .connect(URL)
        .await
        .context(
            "cannot connect to NATS at 127.0.0.1:4222 (is nats-server running, with JetStream?)",
        )
}

/// An event's binary-mode headers and body (the provider's default mode).
pub fn message(event: &Event) -> (HeaderMap, Vec<u8>) {
    let (pairs, body) = encode(event, ContentMode::Binary);
    let mut headers = HeaderMap::new();
    for (name, value) in pairs {
        headers.append(name.as_str(), value.as_str());
    }
    (headers, body)
}

/// The event in a received message.
pub fn event_of(message: &async_nats::Message) -> anyhow::Result<Event> {
    let pairs: Vec<(String, String)> = message
        .headers
        .iter()
        .flat_map(|headers| headers.iter())
        .flat_map(|(name, values)| {
            values
                .iter()
                .map(move |v| (name.to_string(), v.to_string()))
        })
        .collect();
    admitted(decode(
        &pairs,
        &message.payload,
        ("bench", message.subject.as_str()),
    ))
}

/// Publishes to a subject.
struct NatsProducer {
    client: async_nats::Client,
    subject: String,
}

#[async_trait]
impl Producer for NatsProducer {
    async fn send(&self, event: Event) -> anyhow::Result<Confirm> {
        let (headers, body) = message(&event);
        self.client
            .publish_with_headers(self.subject.clone(), headers, body.into())
            .await?;
        Ok(confirmed())
    }

    async fn finish(&self) -> anyhow::Result<()> {
        Ok(self.client.flush().await?)
    }
}

/// Publishes orders to the run's input subject (core NATS: nothing to confirm).
pub async fn producer(names: &Names) -> anyhow::Result<Arc<dyn Producer>> {
    Ok(Arc::new(NatsProducer {
        client: connect().await?,
        subject: names.input.clone(),
    }))
}

/// A subject's subscriber.
struct NatsSink(async_nats::Subscriber);

#[async_trait]
impl Sink for NatsSink {
    async fn next(&mut self) -> anyhow::Result<Option<Event>> {
        match self.0.next().await {
            Some(message) => Ok(Some(event_of(&message)?)),
            None => Ok(None),
        }
    }
}

/// Subscribes to the run's output subject.
pub async fn sink(names: &Names) -> anyhow::Result<Box<dyn Sink>> {
    let client = connect().await?;
    let subscriber = client.subscribe(names.output.clone()).await?;
    // The subscription is in place on the server once a round trip is done.
    client.flush().await?;
    Ok(Box::new(NatsSink(subscriber)))
}

/// The native relay on core NATS.
pub async fn native_relay(names: Names, stop: CancellationToken) -> anyhow::Result<()> {
    let client = connect().await?;
    let mut orders = client
        .queue_subscribe(names.input.clone(), names.group.clone())
        .await?;
    client.flush().await?;
    announce_ready();
    let handlers = Handlers::new();
    loop {
        let delivery = tokio::select! {
            () = stop.cancelled() => break,
            delivery = orders.next() => match delivery {
                Some(delivery) => delivery,
                None => break,
            },
        };
        let (client, output) = (client.clone(), names.output.clone());
        handlers
            .spawn(async move {
                let order = event_of(&delivery)?;
                let (headers, body) = message(&ship(&order)?);
                client
                    .publish_with_headers(output, headers, body.into())
                    .await?;
                client.flush().await?;
                Ok(())
            })
            .await;
    }
    let _ = orders.unsubscribe().await;
    handlers.drain().await;
    client.flush().await?;
    Ok(())
}
