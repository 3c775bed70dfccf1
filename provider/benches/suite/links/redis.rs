//! Redis: pub/sub channels (structured mode: the JSON format is the
//! payload) and streams read by a consumer group (binary mode: a `ce-`
//! field per attribute, the data in `data`). The suite's producers (PUBLISH
//! or XADD), its sink (SUBSCRIBE to the output channel, which both Redis
//! rows publish to), and the native relays: pub/sub → pub/sub, and
//! stream + consumer group (XREADGROUP COUNT 16, the provider's `batch`) →
//! pub/sub, with XACK once the PUBLISH is answered.

use super::{Handlers, Names, admitted, announce_ready, ship};
use crate::flow::{Confirm, Producer, Sink};
use anyhow::Context as _;
use async_trait::async_trait;
use futures::StreamExt as _;
use messaging_provider::cloudevents::Event;
use messaging_provider::cloudevents::json;
use messaging_provider::cloudevents::redis::{decode_fields, encode_fields};
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;

/// Where the local Redis listens.
const URL: &str = "redis://127.0.0.1:6379";
/// The provider's default `batch`: entries one XREADGROUP asks for.
const BATCH: usize = 16;
/// How long one blocking read waits (the provider's).
const BLOCK: Duration = Duration::from_millis(1000);

/// A client of the local Redis.
fn client() -> anyhow::Result<redis::Client> {
    redis::Client::open(URL).context("the Redis URL")
}

/// A command connection that reconnects on its own, as the provider's.
async fn commands() -> anyhow::Result<ConnectionManager> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(Duration::from_secs(5)))
        .set_response_timeout(Some(BLOCK + Duration::from_secs(5)))
        .set_number_of_retries(1);
    let mut connection = tokio::time::timeout(
        Duration::from_secs(5),
        client()?.get_connection_manager_with_config(config),
    )
    .await
    .map_err(|_| anyhow::anyhow!("timed out"))
    .and_then(|c| c.map_err(anyhow::Error::from))
    .context("cannot connect to Redis at 127.0.0.1:6379 (is redis-server running?)")?;
    let _: String = redis::cmd("PING")
        .query_async(&mut connection)
        .await
        .context("Redis at 127.0.0.1:6379 does not answer PING")?;
    Ok(connection)
}

/// Deletes the run's input stream (and with it the consumer group).
pub async fn cleanup(names: &Names) -> anyhow::Result<()> {
    let mut connection = commands().await?;
    let _: i64 = redis::cmd("DEL")
        .arg(&names.input)
        .query_async(&mut connection)
        .await
        .context("cannot delete the run's stream")?;
    Ok(())
}

/// Runs one command as a task of its own, so that many are in flight on the
/// multiplexed connection; the confirmation is its answer.
fn in_flight(mut connection: ConnectionManager, command: redis::Cmd) -> Confirm {
    let answer = tokio::spawn(async move {
        command
            .query_async::<redis::Value>(&mut connection)
            .await
            .map(drop)
    });
    Box::pin(async move { Ok(answer.await??) })
}

/// PUBLISHes to a channel.
struct PubSubProducer {
    connection: ConnectionManager,
    channel: String,
}

#[async_trait]
impl Producer for PubSubProducer {
    async fn send(&self, event: Event) -> anyhow::Result<Confirm> {
        let mut command = redis::cmd("PUBLISH");
        command.arg(&self.channel).arg(json::encode(&event));
        Ok(in_flight(self.connection.clone(), command))
    }
}

/// Publishes orders to the run's input channel (pub/sub).
pub async fn pubsub_producer(names: &Names) -> anyhow::Result<Arc<dyn Producer>> {
    Ok(Arc::new(PubSubProducer {
        connection: commands().await?,
        channel: names.input.clone(),
    }))
}

/// XADDs to a stream.
struct StreamProducer {
    connection: ConnectionManager,
    stream: String,
}

/// XADD of an event's fields to `stream`.
fn xadd(stream: &str, event: &Event) -> redis::Cmd {
    let mut command = redis::cmd("XADD");
    command.arg(stream).arg("*");
    for (name, value) in encode_fields(event) {
        command.arg(name).arg(value);
    }
    command
}

#[async_trait]
impl Producer for StreamProducer {
    async fn send(&self, event: Event) -> anyhow::Result<Confirm> {
        Ok(in_flight(
            self.connection.clone(),
            xadd(&self.stream, &event),
        ))
    }
}

/// Adds orders to the run's input stream.
pub async fn stream_producer(names: &Names) -> anyhow::Result<Arc<dyn Producer>> {
    Ok(Arc::new(StreamProducer {
        connection: commands().await?,
        stream: names.input.clone(),
    }))
}

/// A pub/sub subscription's messages.
type Messages = std::pin::Pin<Box<dyn futures::Stream<Item = redis::Msg> + Send>>;

/// A subscription of its own connection to `channel`.
async fn subscribe(channel: &str) -> anyhow::Result<Messages> {
    let mut pubsub = client()?
        .get_async_pubsub()
        .await
        .context("cannot connect to Redis at 127.0.0.1:6379 (is redis-server running?)")?;
    pubsub.subscribe(channel).await?;
    Ok(Box::pin(pubsub.into_on_message()))
}

/// The event in a pub/sub message.
fn event_of(message: &redis::Msg) -> anyhow::Result<Event> {
    admitted(json::decode_or_wrap(
        message.get_payload_bytes(),
        ("bench", "pubsub"),
    ))
}

/// A channel's messages.
struct PubSubSink(Messages);

#[async_trait]
impl Sink for PubSubSink {
    async fn next(&mut self) -> anyhow::Result<Option<Event>> {
        match self.0.next().await {
            Some(message) => Ok(Some(event_of(&message)?)),
            None => Ok(None),
        }
    }
}

/// Subscribes to the run's output channel.
pub async fn sink(names: &Names) -> anyhow::Result<Box<dyn Sink>> {
    Ok(Box::new(PubSubSink(subscribe(&names.output).await?)))
}

/// PUBLISH of a shipment, answered by Redis.
async fn publish(
    connection: &mut ConnectionManager,
    channel: &str,
    event: &Event,
) -> anyhow::Result<()> {
    redis::cmd("PUBLISH")
        .arg(channel)
        .arg(json::encode(event))
        .query_async::<redis::Value>(connection)
        .await?;
    Ok(())
}

/// The native relay from a pub/sub channel to a pub/sub channel.
pub async fn native_pubsub_relay(names: Names, stop: CancellationToken) -> anyhow::Result<()> {
    let connection = commands().await?;
    let mut orders = subscribe(&names.input).await?;
    announce_ready();
    let handlers = Handlers::new();
    loop {
        let message = tokio::select! {
            () = stop.cancelled() => break,
            message = orders.next() => match message {
                Some(message) => message,
                None => break,
            },
        };
        let (mut connection, output) = (connection.clone(), names.output.clone());
        handlers
            .spawn(async move {
                let shipment = ship(&event_of(&message)?)?;
                publish(&mut connection, &output, &shipment).await
            })
            .await;
    }
    handlers.drain().await;
    Ok(())
}

/// A stream entry: its id and its fields, as bytes.
type Entry = (String, Vec<(Vec<u8>, Vec<u8>)>);

/// The entries of an XREADGROUP reply, read from the raw reply as the
/// provider reads them (field names need not be UTF-8).
fn entries(reply: redis::Value) -> Vec<Entry> {
    use redis::Value;
    let bytes = |v: &Value| redis::from_redis_value_ref::<Vec<u8>>(v).ok();
    let entry = |value: Value| -> Option<Entry> {
        let Value::Array(parts) = value else {
            return None;
        };
        let mut parts = parts.into_iter();
        let id = String::from_utf8(bytes(&parts.next()?)?).ok()?;
        let fields = match parts.next() {
            Some(Value::Array(items)) => items
                .chunks_exact(2)
                .filter_map(|pair| Some((bytes(&pair[0])?, bytes(&pair[1])?)))
                .collect(),
            Some(Value::Map(pairs)) => pairs
                .iter()
                .filter_map(|(k, v)| Some((bytes(k)?, bytes(v)?)))
                .collect(),
            _ => Vec::new(),
        };
        Some((id, fields))
    };
    let streams: Vec<Value> = match reply {
        Value::Array(streams) => streams
            .into_iter()
            .filter_map(|stream| match stream {
                Value::Array(pair) => pair.into_iter().nth(1),
                _ => None,
            })
            .collect(),
        Value::Map(streams) => streams.into_iter().map(|(_, entries)| entries).collect(),
        _ => Vec::new(),
    };
    streams
        .into_iter()
        .flat_map(|entries| match entries {
            Value::Array(items) => items.into_iter().filter_map(entry).collect(),
            _ => Vec::new(),
        })
        .collect()
}

/// The native relay from a stream read by a consumer group to a pub/sub channel.
pub async fn native_stream_relay(names: Names, stop: CancellationToken) -> anyhow::Result<()> {
    let connection = commands().await?;
    let mut reads = commands().await?;
    let created: redis::RedisResult<()> = redis::cmd("XGROUP")
        .arg("CREATE")
        .arg(&names.input)
        .arg(&names.group)
        .arg("$")
        .arg("MKSTREAM")
        .query_async(&mut reads)
        .await;
    match created {
        Err(e) if e.code() != Some("BUSYGROUP") => {
            return Err(e).context("cannot create the consumer group");
        }
        _ => {}
    }
    let consumer = format!("bench-native-{}", std::process::id());
    announce_ready();
    let handlers = Handlers::new();
    while !stop.is_cancelled() {
        let read = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(&names.group)
            .arg(&consumer)
            .arg("COUNT")
            .arg(BATCH)
            .arg("BLOCK")
            .arg(BLOCK.as_millis() as u64)
            .arg("STREAMS")
            .arg(&names.input)
            .arg(">")
            .query_async::<redis::Value>(&mut reads)
            .await;
        let reply = match read {
            Ok(reply) => reply,
            Err(e) => {
                eprintln!("native relay: XREADGROUP: {e}");
                tokio::time::sleep(Duration::from_millis(500)).await;
                continue;
            }
        };
        for (id, fields) in entries(reply) {
            let mut connection = connection.clone();
            let names = names.clone();
            handlers
                .spawn(async move {
                    let order = admitted(decode_fields(&fields, ("bench", &names.input)))?;
                    publish(&mut connection, &names.output, &ship(&order)?).await?;
                    redis::cmd("XACK")
                        .arg(&names.input)
                        .arg(&names.group)
                        .arg(&id)
                        .query_async::<()>(&mut connection)
                        .await?;
                    Ok(())
                })
                .await;
        }
    }
    handlers.drain().await;
    Ok(())
}
