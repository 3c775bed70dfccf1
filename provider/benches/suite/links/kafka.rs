//! Kafka (the local tansu broker): the run's topics (created as the
//! provider creates them, one partition, one replica), the suite's producer
//! (an idempotent librdkafka producer with `acks = all`, as the provider's),
//! its sink (every partition of the output topic, assigned at its end, as
//! the provider's topic subscribers), and the native relay: a consumer-group
//! member with manual offsets, each order's offset stored once its shipment
//! is confirmed, committed by librdkafka every second.

use super::{Handlers, Names, admitted, announce_ready, ship};
use crate::flow::{Confirm, Producer, Sink};
use anyhow::Context as _;
use async_trait::async_trait;
use messaging_provider::broker::kafka::publish::future_record;
use messaging_provider::broker::kafka::subscribe::raw_headers;
use messaging_provider::cloudevents::kafka::{decode, encode};
use messaging_provider::cloudevents::{ContentMode, Event};
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::client::DefaultClientContext;
use rdkafka::consumer::{Consumer as _, StreamConsumer};
use rdkafka::producer::FutureProducer;
use rdkafka::{ClientConfig, Message as _, Offset, TopicPartitionList};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Where the local Kafka-protocol broker listens.
const BROKERS: &str = "127.0.0.1:9092";
const TIMEOUT: Duration = Duration::from_secs(5);

fn config() -> ClientConfig {
    let mut c = ClientConfig::new();
    c.set("bootstrap.servers", BROKERS)
        .set("log.connection.close", "false");
    c
}

/// The producer the provider makes (its default settings).
fn new_producer() -> anyhow::Result<FutureProducer> {
    config()
        .set("acks", "all")
        .set("enable.idempotence", "true")
        .set("linger.ms", "1")
        .set("message.timeout.ms", "5000")
        .create()
        .context("cannot make a Kafka producer")
}

/// The event in a received record.
fn event_of(m: &rdkafka::message::BorrowedMessage<'_>) -> anyhow::Result<Event> {
    let headers = raw_headers(m);
    admitted(decode(&headers, m.key(), m.payload(), ("bench", "kafka")))
}

fn admin() -> anyhow::Result<AdminClient<DefaultClientContext>> {
    config()
        .create()
        .context("cannot make a Kafka admin client")
}

/// Creates the run's topics, as the provider would.
pub async fn prepare(names: &Names) -> anyhow::Result<()> {
    let admin = admin()?;
    let topics: Vec<NewTopic> = [&names.input, &names.output]
        .into_iter()
        .map(|t| NewTopic::new(t, 1, TopicReplication::Fixed(1)))
        .collect();
    let options = AdminOptions::new().operation_timeout(Some(TIMEOUT));
    for result in admin.create_topics(&topics, &options).await.context(
        "cannot create the run's topics (is the Kafka broker on 127.0.0.1:9092 running?)",
    )? {
        match result {
            Ok(_) | Err((_, rdkafka::types::RDKafkaErrorCode::TopicAlreadyExists)) => {}
            Err((topic, e)) => anyhow::bail!("cannot create topic {topic}: {e}"),
        }
    }
    Ok(())
}

/// Deletes the run's topics (the provider's retry topic included).
pub async fn cleanup(names: &Names) -> anyhow::Result<()> {
    let retry = format!("{}.retry.{}", names.input, names.group);
    let topics = [names.input.as_str(), names.output.as_str(), retry.as_str()];
    let options = AdminOptions::new().operation_timeout(Some(TIMEOUT));
    if let Err(e) = admin()?.delete_topics(&topics, &options).await {
        eprintln!("warning: cannot delete the run's Kafka topics: {e}");
    }
    Ok(())
}

struct KafkaProducer {
    producer: FutureProducer,
    topic: String,
}

#[async_trait]
impl Producer for KafkaProducer {
    async fn send(&self, event: Event) -> anyhow::Result<Confirm> {
        let r = encode(&event, ContentMode::Binary);
        let delivery = self
            .producer
            .send_result(future_record(&self.topic, &r, &[]))
            .map_err(|(e, _)| anyhow::anyhow!("Kafka produce: {e}"))?;
        Ok(Box::pin(async move {
            delivery
                .await
                .context("the producer went away")?
                .map_err(|(e, _)| anyhow::anyhow!("Kafka delivery: {e}"))?;
            Ok(())
        }))
    }
}

/// Produces orders to the run's input topic, each confirmed by the broker.
pub async fn producer(names: &Names) -> anyhow::Result<Arc<dyn Producer>> {
    Ok(Arc::new(KafkaProducer {
        producer: new_producer()?,
        topic: names.input.clone(),
    }))
}

struct KafkaSink {
    consumer: StreamConsumer,
}

#[async_trait]
impl Sink for KafkaSink {
    async fn next(&mut self) -> anyhow::Result<Option<Event>> {
        let m = self.consumer.recv().await.context("Kafka read")?;
        Ok(Some(event_of(&m)?))
    }
}

/// Reads the run's output topic from its end.
pub async fn sink(names: &Names) -> anyhow::Result<Box<dyn Sink>> {
    let consumer: StreamConsumer = config()
        .set("group.id", format!("bench.sink.{}", names.run))
        .set("enable.auto.commit", "false")
        .create()
        .context("cannot make a Kafka consumer")?;
    let topic = names.output.clone();
    let consumer = tokio::task::spawn_blocking(move || {
        let (_, high) = consumer.fetch_watermarks(&topic, 0, TIMEOUT)?;
        let mut list = TopicPartitionList::new();
        list.add_partition_offset(&topic, 0, Offset::Offset(high))?;
        consumer.assign(&list)?;
        Ok::<_, anyhow::Error>(consumer)
    })
    .await??;
    Ok(Box::new(KafkaSink { consumer }))
}

/// The native relay on Kafka.
pub async fn native_relay(names: Names, stop: CancellationToken) -> anyhow::Result<()> {
    prepare(&names).await?;
    let consumer: Arc<StreamConsumer> = Arc::new(
        config()
            .set("group.id", &names.group)
            .set("enable.auto.commit", "true")
            .set("auto.commit.interval.ms", "1000")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .create()
            .context("cannot make a Kafka consumer")?,
    );
    consumer.subscribe(&[&names.input])?;
    let producer = new_producer()?;
    announce_ready();
    let handlers = Handlers::new();
    loop {
        let m = tokio::select! {
            () = stop.cancelled() => break,
            m = consumer.recv() => m.context("Kafka read")?,
        };
        let order = event_of(&m);
        let (topic, partition, offset) = (m.topic().to_string(), m.partition(), m.offset());
        drop(m);
        let (consumer, producer, output) =
            (consumer.clone(), producer.clone(), names.output.clone());
        handlers
            .spawn(async move {
                let shipment = encode(&ship(&order?)?, ContentMode::Binary);
                producer
                    .send(future_record(&output, &shipment, &[]), TIMEOUT)
                    .await
                    .map_err(|(e, _)| anyhow::anyhow!("Kafka delivery: {e}"))?;
                consumer.store_offset(&topic, partition, offset)?;
                Ok(())
            })
            .await;
    }
    handlers.drain().await;
    // Nothing stored since the last automatic commit is not a failure.
    match consumer.commit_consumer_state(rdkafka::consumer::CommitMode::Sync) {
        Err(e) if e.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::NoOffset) => {}
        other => other?,
    }
    Ok(())
}
