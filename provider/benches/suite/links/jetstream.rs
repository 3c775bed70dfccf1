//! NATS JetStream: the run's streams (named as the provider names them:
//! `MESSAGING_` + the address with other characters than letters, digits,
//! `-` and `_` as `_`), the suite's producer (waiting for each PubAck), and
//! the native relay: the group's durable pull consumer, 32 messages a pull,
//! each order acknowledged once JetStream stored its shipment. The sink is
//! core NATS's (see `nats.rs`): core subscribers see what the stream stores.

use super::nats::{connect, event_of, message};
use super::{Handlers, Names, announce_ready, ship};
use crate::flow::{Confirm, Producer};
use anyhow::Context as _;
use async_nats::jetstream::{self, consumer::pull, stream};
use async_trait::async_trait;
use futures::StreamExt as _;
use messaging_provider::cloudevents::Event;
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// The provider's default `stream_prefix`.
const STREAM_PREFIX: &str = "MESSAGING_";
/// The provider's default `batch`: messages a pull asks for.
const BATCH: usize = 32;
/// How long one pull waits for messages (the provider's).
const PULL_EXPIRES: Duration = Duration::from_secs(1);
/// The provider's default `ack_wait`.
const ACK_WAIT: Duration = Duration::from_secs(30);

/// A JetStream name from an address or group, as the provider makes it.
fn js_name(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

/// The stream an address's events are kept in.
fn stream_config(address: &str) -> stream::Config {
    stream::Config {
        name: format!("{STREAM_PREFIX}{}", js_name(address)),
        subjects: vec![address.to_string()],
        ..Default::default()
    }
}

/// A JetStream context on a new client.
async fn context() -> anyhow::Result<jetstream::Context> {
    Ok(jetstream::new(connect().await?))
}

/// Creates the run's input and output streams, as the provider would.
pub async fn prepare(names: &Names) -> anyhow::Result<()> {
    let js = context().await?;
    for address in [&names.input, &names.output] {
        js.get_or_create_stream(stream_config(address))
            .await
            .with_context(|| format!("cannot create the JetStream stream for `{address}` (is JetStream enabled on the NATS server?)"))?;
    }
    Ok(())
}

/// Deletes the run's streams (and with them the durable consumer).
pub async fn cleanup(names: &Names) -> anyhow::Result<()> {
    let js = context().await?;
    for address in [&names.input, &names.output] {
        let name = stream_config(address).name;
        if let Err(e) = js.delete_stream(&name).await {
            eprintln!("warning: cannot delete the JetStream stream {name}: {e}");
        }
    }
    Ok(())
}

/// Publishes to a stream's subject.
struct JsProducer {
    js: jetstream::Context,
    subject: String,
}

#[async_trait]
impl Producer for JsProducer {
    async fn send(&self, event: Event) -> anyhow::Result<Confirm> {
        let (headers, body) = message(&event);
        let ack = self
            .js
            .publish_with_headers(self.subject.clone(), headers, body.into())
            .await?;
        Ok(Box::pin(async move {
            ack.await?;
            Ok(())
        }))
    }
}

/// Publishes orders to the run's input stream, each confirmed by its PubAck.
pub async fn producer(names: &Names) -> anyhow::Result<Arc<dyn Producer>> {
    Ok(Arc::new(JsProducer {
        js: context().await?,
        subject: names.input.clone(),
    }))
}

/// The native relay on JetStream.
pub async fn native_relay(names: Names, stop: CancellationToken) -> anyhow::Result<()> {
    let js = context().await?;
    let stream = js
        .get_or_create_stream(stream_config(&names.input))
        .await
        .context("cannot create the input stream")?;
    js.get_or_create_stream(stream_config(&names.output))
        .await
        .context("cannot create the output stream")?;
    let consumer: jetstream::consumer::PullConsumer = stream
        .get_or_create_consumer(
            &js_name(&names.group),
            pull::Config {
                durable_name: Some(js_name(&names.group)),
                filter_subject: names.input.clone(),
                ack_policy: jetstream::consumer::AckPolicy::Explicit,
                ack_wait: ACK_WAIT,
                ..Default::default()
            },
        )
        .await
        .context("cannot create the durable consumer")?;
    announce_ready();
    let handlers = Handlers::new();
    'pulling: while !stop.is_cancelled() {
        // One pull at a time, the next once this one is read out, as the
        // provider's subscription pulls.
        let mut batch = consumer
            .batch()
            .max_messages(BATCH)
            .expires(PULL_EXPIRES)
            .messages()
            .await
            .context("JetStream pull")?;
        loop {
            let next = tokio::select! {
                () = stop.cancelled() => break 'pulling,
                next = batch.next() => next,
            };
            let delivery = match next {
                Some(Ok(delivery)) => delivery,
                Some(Err(e)) => {
                    eprintln!("native relay: JetStream pull: {e}");
                    break;
                }
                None => break,
            };
            let (js, output) = (js.clone(), names.output.clone());
            handlers
                .spawn(async move {
                    let order = event_of(&delivery)?;
                    let (headers, body) = message(&ship(&order)?);
                    js.publish_with_headers(output, headers, body.into())
                        .await?
                        .await?;
                    delivery
                        .ack()
                        .await
                        .map_err(|e| anyhow::anyhow!("ack: {e}"))?;
                    Ok(())
                })
                .await;
        }
    }
    handlers.drain().await;
    // Acknowledgements are queued by the client: make sure they left.
    js.client().flush().await?;
    Ok(())
}
