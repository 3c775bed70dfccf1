//! MQTT 5 at QoS 1 (rumqttc, as the provider): the suite's producer and
//! sink, and the native relay with the provider's MQTT settings: a
//! connection of its own for the shared subscription `$share/<group>/<topic>`
//! (persistent session, receive maximum 65535, events acknowledged on
//! arrival into a 65,536-event buffer) and a publishing connection whose
//! publishes each wait for their PUBACK.

use super::{Handlers, Names, admitted, announce_ready, ship};
use crate::flow::{Confirm, Producer, Sink};
use anyhow::{Context as _, bail};
use async_trait::async_trait;
use bytes::Bytes;
use messaging_provider::cloudevents::ContentMode;
use messaging_provider::cloudevents::Event;
use messaging_provider::cloudevents::mqtt::BINARY;
use rumqttc::v5::mqttbytes::QoS;
use rumqttc::v5::mqttbytes::v5::{Packet, PublishProperties};
use rumqttc::v5::{AsyncClient, Event as MqttEvent, MqttOptions};
use std::collections::{HashMap, VecDeque};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot, watch};
use tokio_util::sync::CancellationToken;

/// The provider's default `buffer`: events a subscription holds once acknowledged.
const BUFFER: usize = 65_536;
/// The provider's default `session_expiry`.
const SESSION_EXPIRY: Duration = Duration::from_secs(300);
/// How long a publish waits for its PUBACK (the provider's `publish_timeout`).
const PUBLISH_TIMEOUT: Duration = Duration::from_secs(5);

/// A received publish: topic, payload, user properties, content type.
type Incoming = (String, Bytes, Vec<(String, String)>, Option<String>);

/// PUBACKs matched to the publishes waiting for them: publishes leave in
/// the order they were asked for, so each packet id that leaves belongs to
/// the oldest waiting publish.
#[derive(Default)]
struct Confirms {
    queued: Mutex<VecDeque<oneshot::Sender<()>>>,
    sent: Mutex<HashMap<u16, oneshot::Sender<()>>>,
}

/// One MQTT connection, its event loop polled by a task of its own.
struct Connection {
    client: AsyncClient,
    confirms: Arc<Confirms>,
    /// Keeps publish requests in the order their confirmations queue.
    order: tokio::sync::Mutex<()>,
    task: tokio::task::JoinHandle<()>,
    stopping: Arc<std::sync::atomic::AtomicBool>,
}

impl Drop for Connection {
    fn drop(&mut self) {
        self.task.abort();
    }
}

/// How a connection is made.
struct Settings {
    /// The provider's settings (persistent session, large receive maximum)
    /// rather than a throwaway client's.
    provider_like: bool,
    /// A topic filter to subscribe to at QoS 1.
    filter: Option<String>,
    /// Where received publishes go.
    incoming: Option<mpsc::Sender<Incoming>>,
}

impl Connection {
    /// Connects (and subscribes), failing with the broker's name and port.
    async fn open(role: &str, settings: Settings) -> anyhow::Result<Connection> {
        let id = format!(
            "bench-{role}-{}",
            &uuid::Uuid::new_v4().simple().to_string()[..12]
        );
        let mut options = MqttOptions::new(id, "127.0.0.1", 1883);
        options.set_keep_alive(Duration::from_secs(30));
        if settings.provider_like {
            options
                .set_clean_start(false)
                .set_session_expiry_interval(Some(SESSION_EXPIRY.as_secs() as u32))
                .set_receive_maximum(Some(u16::MAX))
                .set_max_packet_size(Some(256 * 1024 * 1024));
        } else {
            options.set_clean_start(true);
        }
        let (client, mut eventloop) = AsyncClient::new(options, 1024);
        let confirms: Arc<Confirms> = Arc::default();
        let (ready_tx, mut ready) = watch::channel(None::<Result<(), String>>);
        let stopping = Arc::new(std::sync::atomic::AtomicBool::new(false));
        let (subscriber, filter, incoming, fifo, stop) = (
            client.clone(),
            settings.filter.clone(),
            settings.incoming,
            confirms.clone(),
            stopping.clone(),
        );
        let task = tokio::spawn(async move {
            loop {
                match eventloop.poll().await {
                    Ok(MqttEvent::Incoming(Packet::ConnAck(ack))) => match &filter {
                        Some(filter) if !ack.session_present => {
                            if let Err(e) =
                                subscriber.subscribe(filter.clone(), QoS::AtLeastOnce).await
                            {
                                let _ = ready_tx.send(Some(Err(format!("subscribe: {e}"))));
                            }
                        }
                        _ => {
                            let _ = ready_tx.send(Some(Ok(())));
                        }
                    },
                    Ok(MqttEvent::Incoming(Packet::SubAck(_))) => {
                        let _ = ready_tx.send(Some(Ok(())));
                    }
                    Ok(MqttEvent::Incoming(Packet::Publish(p))) => {
                        if let Some(incoming) = &incoming {
                            let (properties, content_type) = p
                                .properties
                                .map(|pp| (pp.user_properties, pp.content_type))
                                .unwrap_or_default();
                            let topic = String::from_utf8_lossy(&p.topic).into_owned();
                            if incoming
                                .send((topic, p.payload, properties, content_type))
                                .await
                                .is_err()
                            {
                                return;
                            }
                        }
                    }
                    Ok(MqttEvent::Outgoing(rumqttc::Outgoing::Publish(pkid))) => {
                        let waiting = fifo.queued.lock().expect("confirms lock").pop_front();
                        if let Some(done) = waiting {
                            fifo.sent.lock().expect("confirms lock").insert(pkid, done);
                        }
                    }
                    Ok(MqttEvent::Incoming(Packet::PubAck(ack))) => {
                        let waiting = fifo.sent.lock().expect("confirms lock").remove(&ack.pkid);
                        if let Some(done) = waiting {
                            let _ = done.send(());
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        if stop.load(std::sync::atomic::Ordering::Relaxed) {
                            return;
                        }
                        if ready_tx.borrow().is_none() {
                            let _ = ready_tx.send(Some(Err(e.to_string())));
                        } else {
                            eprintln!("MQTT connection: {e}; reconnecting");
                        }
                        fifo.queued.lock().expect("confirms lock").clear();
                        fifo.sent.lock().expect("confirms lock").clear();
                        tokio::time::sleep(Duration::from_millis(200)).await;
                    }
                }
            }
        });
        let connection = Connection {
            client,
            confirms,
            order: tokio::sync::Mutex::new(()),
            task,
            stopping,
        };
        let outcome =
            tokio::time::timeout(Duration::from_secs(10), ready.wait_for(Option::is_some))
                .await
                .ok()
                .and_then(Result::ok)
                .and_then(|state| (*state).clone());
        match outcome {
            Some(Ok(())) => Ok(connection),
            Some(Err(e)) => bail!(
                "cannot connect to Mosquitto (MQTT) at 127.0.0.1:1883 (is mosquitto running?): {e}"
            ),
            None => bail!("Mosquitto (MQTT) at 127.0.0.1:1883 did not answer within 10 s"),
        }
    }

    /// Publishes at QoS 1 in binary mode; the confirmation waits for the PUBACK.
    async fn publish(&self, topic: &str, event: &Event) -> anyhow::Result<oneshot::Receiver<()>> {
        let (user_properties, content_type, payload) =
            BINARY.encode_message(event, ContentMode::Binary);
        let properties = PublishProperties {
            user_properties,
            content_type,
            ..Default::default()
        };
        let (done, confirmed) = oneshot::channel();
        let _order = self.order.lock().await;
        self.confirms
            .queued
            .lock()
            .expect("confirms lock")
            .push_back(done);
        self.client
            .publish_with_properties(topic, QoS::AtLeastOnce, false, payload, properties)
            .await?;
        Ok(confirmed)
    }

    /// Unsubscribes (a persistent session would keep its share of the
    /// queue) and disconnects.
    async fn close(&self, filter: Option<&str>) {
        self.stopping
            .store(true, std::sync::atomic::Ordering::Relaxed);
        if let Some(filter) = filter {
            let _ = self.client.unsubscribe(filter).await;
        }
        let _ = self.client.disconnect().await;
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Waits for a PUBACK.
async fn acknowledged(confirmed: oneshot::Receiver<()>) -> anyhow::Result<()> {
    match tokio::time::timeout(PUBLISH_TIMEOUT, confirmed).await {
        Ok(Ok(())) => Ok(()),
        Ok(Err(_)) => bail!("the MQTT connection went down before the PUBACK"),
        Err(_) => bail!("no PUBACK within {PUBLISH_TIMEOUT:?}"),
    }
}

/// The event in a received publish.
fn event_of((topic, payload, properties, content_type): &Incoming) -> anyhow::Result<Event> {
    admitted(BINARY.decode_message(
        properties,
        content_type.as_deref(),
        payload,
        ("bench", topic),
    ))
}

/// Publishes to the input topic.
struct MqttProducer {
    connection: Connection,
    topic: String,
}

/// QoS 1 publishes the producer keeps unacknowledged: fewer than a default
/// Mosquitto's receive maximum (20). With more in flight on one connection,
/// rumqttc 0.25 was seen to hold publishes back for good (the last ones of a
/// phase never reached the broker, or a flood stopped after a few hundred).
const PRODUCER_WINDOW: usize = 16;

#[async_trait]
impl Producer for MqttProducer {
    async fn send(&self, event: Event) -> anyhow::Result<Confirm> {
        let confirmed = self.connection.publish(&self.topic, &event).await?;
        Ok(Box::pin(acknowledged(confirmed)))
    }

    fn window(&self) -> usize {
        PRODUCER_WINDOW
    }
}

/// Publishes orders to the run's input topic at QoS 1.
pub async fn producer(names: &Names) -> anyhow::Result<Arc<dyn Producer>> {
    let connection = Connection::open(
        "producer",
        Settings {
            provider_like: false,
            filter: None,
            incoming: None,
        },
    )
    .await?;
    Ok(Arc::new(MqttProducer {
        connection,
        topic: names.input.clone(),
    }))
}

/// Reads the output topic.
struct MqttSink {
    _connection: Connection,
    events: mpsc::Receiver<Incoming>,
}

#[async_trait]
impl Sink for MqttSink {
    async fn next(&mut self) -> anyhow::Result<Option<Event>> {
        match self.events.recv().await {
            Some(incoming) => Ok(Some(event_of(&incoming)?)),
            None => Ok(None),
        }
    }
}

/// Subscribes to the run's output topic at QoS 1, reading as fast as the
/// network allows (a default Mosquitto drops what a slow reader leaves).
pub async fn sink(names: &Names) -> anyhow::Result<Box<dyn Sink>> {
    let (incoming, events) = mpsc::channel(BUFFER);
    let connection = Connection::open(
        "sink",
        Settings {
            provider_like: false,
            filter: Some(names.output.clone()),
            incoming: Some(incoming),
        },
    )
    .await?;
    Ok(Box::new(MqttSink {
        _connection: connection,
        events,
    }))
}

/// The native relay on MQTT.
pub async fn native_relay(names: Names, stop: CancellationToken) -> anyhow::Result<()> {
    let filter = format!("$share/{}/{}", names.group, names.input);
    let (incoming, mut orders) = mpsc::channel(BUFFER);
    let subscription = Connection::open(
        "relay-in",
        Settings {
            provider_like: true,
            filter: Some(filter.clone()),
            incoming: Some(incoming),
        },
    )
    .await
    .context("the relay's subscription")?;
    let publisher = Arc::new(
        Connection::open(
            "relay-out",
            Settings {
                provider_like: true,
                filter: None,
                incoming: None,
            },
        )
        .await
        .context("the relay's publisher")?,
    );
    announce_ready();
    let handlers = Handlers::new();
    loop {
        let delivery = tokio::select! {
            () = stop.cancelled() => break,
            delivery = orders.recv() => match delivery {
                Some(delivery) => delivery,
                None => break,
            },
        };
        let (publisher, output) = (publisher.clone(), names.output.clone());
        handlers
            .spawn(async move {
                let shipment = ship(&event_of(&delivery)?)?;
                acknowledged(publisher.publish(&output, &shipment).await?).await
            })
            .await;
    }
    subscription.close(Some(&filter)).await;
    handlers.drain().await;
    publisher.close(None).await;
    Ok(())
}
