//! The embedded broker: in-process, the `default` link, so local development
//! needs nothing installed. Queue groups and topic subscribers each have a
//! bounded buffer; a publish waits for room in every buffer it goes to, up to
//! `publish_timeout`, then fails without having delivered anything. A nacked
//! event comes back after its delay with its attempt counted. Nothing is kept
//! across restarts: what the buffers hold when the link closes is discarded,
//! and the log says so, with the events' ids.

use super::{
    Acknowledge, Broker, BrokerError, Delivery, Invalid, MAX_BUFFERED_EVENTS, MAX_PAYLOAD_LIMIT,
    MakeBroker, SubscribeMode, Subscription, check_publish_timeout, check_range,
};
use crate::cloudevents::inbound::{self, Received};
use crate::cloudevents::{Event, JSON_FORMAT, json};
use async_trait::async_trait;
use serde::Deserialize;
use std::collections::HashMap;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::mpsc;
use tokio_util::sync::CancellationToken;

/// Makes embedded links (`type = "embedded"`).
pub struct MakeEmbedded;

impl MakeEmbedded {
    /// The runtime-config type name.
    pub const TYPE_NAME: &'static str = "embedded";
}

/// `[messaging_link.<name>]` settings of an embedded link.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EmbeddedSettings {
    /// Events each queue group or topic subscriber can hold before publishers wait.
    #[serde(default = "default_capacity")]
    pub capacity: usize,
    /// How long a publish waits for room before failing with `delivery-failed`.
    #[serde(default = "default_publish_timeout", with = "humantime_serde")]
    pub publish_timeout: Duration,
    /// The largest payload accepted, in bytes.
    #[serde(default = "default_max_payload")]
    pub max_payload: usize,
}

fn default_capacity() -> usize {
    1024
}
fn default_publish_timeout() -> Duration {
    Duration::from_secs(5)
}
fn default_max_payload() -> usize {
    1024 * 1024
}

impl Default for EmbeddedSettings {
    fn default() -> Self {
        EmbeddedSettings {
            capacity: default_capacity(),
            publish_timeout: default_publish_timeout(),
            max_payload: default_max_payload(),
        }
    }
}

#[async_trait]
impl MakeBroker for MakeEmbedded {
    const TYPE: &'static str = Self::TYPE_NAME;
    type Settings = EmbeddedSettings;

    fn check(s: &mut EmbeddedSettings, _: &std::path::Path) -> Result<(), Invalid> {
        check_range("capacity", s.capacity, 1..=MAX_BUFFERED_EVENTS)?;
        check_publish_timeout(s.publish_timeout)?;
        check_range("max_payload", s.max_payload as u64, 1..=MAX_PAYLOAD_LIMIT)
    }

    fn describe(s: &EmbeddedSettings) -> String {
        format!(
            "embedded (in-process; capacity {}, publish timeout {}, max payload {} bytes)",
            s.capacity,
            humantime::format_duration(s.publish_timeout),
            s.max_payload
        )
    }

    async fn connect(
        &self,
        _name: &str,
        settings: &EmbeddedSettings,
    ) -> anyhow::Result<Arc<dyn Broker>> {
        Ok(Arc::new(EmbeddedBroker::new(settings.clone())))
    }
}

/// The in-process broker.
pub struct EmbeddedBroker {
    inner: Arc<Inner>,
}

struct Inner {
    settings: EmbeddedSettings,
    addresses: Mutex<HashMap<String, Address>>,
    next_id: AtomicU64,
    closed: CancellationToken,
}

#[derive(Default)]
struct Address {
    topic_subscribers: HashMap<u64, mpsc::Sender<Envelope>>,
    groups: HashMap<String, Lane>,
}

struct Envelope {
    event: Arc<Event>,
    attempt: u32,
    /// Whether the event is not a valid CloudEvent (checked once, when
    /// published).
    invalid: bool,
}

/// A bounded buffer; its receiver is shared by a queue group's competing members.
#[derive(Clone)]
struct Lane {
    tx: mpsc::Sender<Envelope>,
    rx: Arc<tokio::sync::Mutex<mpsc::Receiver<Envelope>>>,
}

impl Lane {
    fn new(capacity: usize) -> Lane {
        let (tx, rx) = mpsc::channel(capacity);
        Lane {
            tx,
            rx: Arc::new(tokio::sync::Mutex::new(rx)),
        }
    }
}

impl EmbeddedBroker {
    /// A broker with the given settings.
    pub fn new(settings: EmbeddedSettings) -> Self {
        EmbeddedBroker {
            inner: Arc::new(Inner {
                settings,
                addresses: Mutex::default(),
                next_id: AtomicU64::new(1),
                closed: CancellationToken::new(),
            }),
        }
    }

    /// Puts an event into every buffer of `address`: at once when each has
    /// room, else waiting for room (in all of them, before any gets the
    /// event) up to `publish_timeout`.
    async fn put(
        &self,
        address: &str,
        event: Arc<Event>,
        invalid: bool,
    ) -> Result<(), BrokerError> {
        if self.inner.closed.is_cancelled() {
            return Err(BrokerError::Unavailable(
                "the embedded broker is shut down".into(),
            ));
        }
        let targets: Vec<mpsc::Sender<Envelope>> = {
            let addresses = self.inner.addresses.lock().unwrap();
            match addresses.get(address) {
                Some(a) => a
                    .topic_subscribers
                    .values()
                    .cloned()
                    .chain(a.groups.values().map(|l| l.tx.clone()))
                    .collect(),
                None => Vec::new(),
            }
        };
        if targets.is_empty() {
            return Ok(());
        }
        let envelope = || Envelope {
            event: event.clone(),
            attempt: 1,
            invalid,
        };
        // Room is reserved in every buffer first, so a publish that times out
        // has delivered to no one and can be retried without duplicates.
        let mut permits = Vec::with_capacity(targets.len());
        let mut full = false;
        for tx in &targets {
            match tx.try_reserve() {
                Ok(permit) => permits.push(permit),
                Err(mpsc::error::TrySendError::Full(())) => {
                    full = true;
                    break;
                }
                // A subscriber that is gone takes nothing.
                Err(mpsc::error::TrySendError::Closed(())) => {}
            }
        }
        if full {
            drop(permits);
            permits = self.reserve_all(address, &targets).await?;
        }
        for permit in permits {
            permit.send(envelope());
        }
        Ok(())
    }

    /// Waits for room in every buffer, up to `publish_timeout`.
    async fn reserve_all<'a>(
        &self,
        address: &str,
        targets: &'a [mpsc::Sender<Envelope>],
    ) -> Result<Vec<mpsc::Permit<'a, Envelope>>, BrokerError> {
        let reserve_all = async {
            let mut permits = Vec::with_capacity(targets.len());
            for tx in targets {
                if let Ok(permit) = tx.reserve().await {
                    permits.push(permit);
                }
            }
            permits
        };
        let timeout = self.inner.settings.publish_timeout;
        let lost = || {
            BrokerError::ConnectionLost("the embedded broker shut down during the publish".into())
        };
        let permits = tokio::select! {
            biased;
            _ = self.inner.closed.cancelled() => return Err(lost()),
            r = crate::timeout::timeout(timeout, reserve_all) => r.map_err(|_| BrokerError::DeliveryFailed(format!(
                "`{address}` stayed full for {}: its consumers are not keeping up (capacity {})",
                humantime::format_duration(timeout), self.inner.settings.capacity
            )))?,
        };
        // Closing drops the buffers, which also ends the wait for room.
        if self.inner.closed.is_cancelled() {
            return Err(lost());
        }
        Ok(permits)
    }

    fn group_lane(&self, address: &str, group: &str) -> Lane {
        let mut addresses = self.inner.addresses.lock().unwrap();
        let addr = addresses.entry(address.to_string()).or_default();
        addr.groups
            .entry(group.to_string())
            .or_insert_with(|| Lane::new(self.inner.settings.capacity))
            .clone()
    }
}

#[async_trait]
impl Broker for EmbeddedBroker {
    fn max_payload(&self) -> Option<usize> {
        Some(self.inner.settings.max_payload)
    }

    async fn publish(&self, address: &str, event: &Event) -> Result<(), BrokerError> {
        // Checked here, once for every subscriber: what reaches a handler
        // is a valid event or the wrapper of an invalid one.
        let invalid = event.validate().is_err();
        self.put(address, Arc::new(event.clone()), invalid).await
    }

    async fn publish_checked(&self, address: &str, event: Arc<Event>) -> Result<(), BrokerError> {
        self.put(address, event, false).await
    }

    async fn declare_queue(&self, address: &str, group: &str) -> Result<(), BrokerError> {
        self.group_lane(address, group);
        Ok(())
    }

    async fn subscribe(
        &self,
        address: &str,
        mode: SubscribeMode,
    ) -> Result<Box<dyn Subscription>, BrokerError> {
        if self.inner.closed.is_cancelled() {
            return Err(BrokerError::Unavailable(
                "the embedded broker is shut down".into(),
            ));
        }
        let (lane, topic_id) = match mode {
            SubscribeMode::Queue { group } => (self.group_lane(address, &group), None),
            SubscribeMode::Topic => {
                let lane = Lane::new(self.inner.settings.capacity);
                let id = self.inner.next_id.fetch_add(1, Ordering::Relaxed);
                let mut addresses = self.inner.addresses.lock().unwrap();
                addresses
                    .entry(address.to_string())
                    .or_default()
                    .topic_subscribers
                    .insert(id, lane.tx.clone());
                (lane, Some(id))
            }
        };
        Ok(Box::new(EmbeddedSubscription {
            lane,
            closed: self.inner.closed.clone(),
            stopped: false,
            topic: topic_id.map(|id| (Arc::downgrade(&self.inner), address.to_string(), id)),
            address: address.to_string(),
        }))
    }

    async fn close(&self) {
        self.inner.closed.cancel();
        let addresses = std::mem::take(&mut *self.inner.addresses.lock().unwrap());
        let mut discarded = Vec::new();
        // Queue groups outlive their consumers; a topic subscriber's buffer
        // goes with its subscription.
        for (address, a) in addresses {
            for lane in a.groups.into_values() {
                if let Ok(mut rx) = lane.rx.try_lock() {
                    while let Ok(envelope) = rx.try_recv() {
                        discarded.push(format!("{address}/{}", envelope.event.id));
                    }
                }
            }
        }
        if !discarded.is_empty() {
            const SHOWN: usize = 50;
            let more = discarded.len().saturating_sub(SHOWN);
            discarded.truncate(SHOWN);
            tracing::warn!(
                "the embedded broker keeps nothing across restarts: {} queued events not yet handled are discarded: {}{}",
                discarded.len() + more,
                discarded.join(", "),
                if more > 0 {
                    format!(" and {more} more")
                } else {
                    String::new()
                }
            );
        }
    }
}

struct EmbeddedSubscription {
    lane: Lane,
    closed: CancellationToken,
    /// Set by `stop`: nothing more is taken from the lane.
    stopped: bool,
    /// For a topic subscriber: where to remove it from when dropped.
    topic: Option<(Weak<Inner>, String, u64)>,
    /// The address subscribed to, for a malformed event's wrapper.
    address: String,
}

#[async_trait]
impl Subscription for EmbeddedSubscription {
    async fn next(&mut self) -> Option<Delivery> {
        if self.stopped {
            // Events stay in the lane for the other members of the group.
            return None;
        }
        // What the buffer holds comes out before the end.
        let envelope = tokio::select! {
            biased;
            e = async { self.lane.rx.lock().await.recv().await } => e?,
            _ = self.closed.cancelled() => return None,
        };
        let attempt = envelope.attempt;
        let event = envelope.event.clone();
        let invalid = envelope.invalid;
        let ack = Box::new(EmbeddedAck {
            requeue: self.lane.tx.clone(),
            envelope,
        });
        if !invalid {
            return Some(Delivery::new(event, attempt, ack));
        }
        // The one rule for what comes in holds here too: an invalid event
        // travels whole, in the JSON format, to the dead-letter channel.
        let document = json::encode(&event);
        let admitted = inbound::admit(Ok(Event::clone(&event)), || Received {
            link: "embedded",
            address: &self.address,
            metadata: Vec::new(),
            content_type: Some(JSON_FORMAT),
            body: &document,
        });
        Some(Delivery::received(admitted, attempt, ack))
    }

    async fn stop(&mut self) {
        self.stopped = true;
    }
}

impl Drop for EmbeddedSubscription {
    fn drop(&mut self) {
        if let Some((inner, address, id)) = &self.topic
            && let Some(inner) = inner.upgrade()
        {
            let mut addresses = inner.addresses.lock().unwrap();
            if let Some(a) = addresses.get_mut(address) {
                a.topic_subscribers.remove(id);
                if a.topic_subscribers.is_empty() && a.groups.is_empty() {
                    addresses.remove(address);
                }
            }
        }
    }
}

struct EmbeddedAck {
    requeue: mpsc::Sender<Envelope>,
    envelope: Envelope,
}

#[async_trait]
impl Acknowledge for EmbeddedAck {
    async fn ack(self: Box<Self>) -> Result<(), BrokerError> {
        Ok(())
    }

    /// Requeues after `delay` from a task of its own, so that neither the
    /// delay nor a full buffer holds up the caller.
    async fn nack(self: Box<Self>, delay: Duration) -> Result<(), BrokerError> {
        let Envelope {
            event,
            attempt,
            invalid,
        } = self.envelope;
        let envelope = Envelope {
            event,
            attempt: attempt.saturating_add(1),
            invalid,
        };
        let requeue = self.requeue;
        tokio::spawn(async move {
            tokio::time::sleep(delay).await;
            let id = envelope.event.id.clone();
            if requeue.send(envelope).await.is_err() {
                tracing::warn!(event_id = %id, "the embedded broker closed before a handed-back event came round again; it is discarded");
            }
        });
        Ok(())
    }

    fn redelivers(&self) -> bool {
        true
    }
}
