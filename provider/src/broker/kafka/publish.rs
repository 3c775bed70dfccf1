//! Publishing to Kafka: one idempotent producer per link, records written
//! by the CloudEvents Kafka binding, and the topics channels name created
//! (or checked) when they are declared.

use super::settings::KafkaSettings;
use super::subscribe::LinkContext;
use crate::broker::{BrokerError, Connectivity};
use crate::cloudevents::Event;
use crate::cloudevents::kafka::{self as binding, Record};
use arc_swap::ArcSwap;
use rdkafka::admin::{AdminClient, AdminOptions, NewTopic, TopicReplication};
use rdkafka::consumer::{BaseConsumer, Consumer as _};
use rdkafka::error::{KafkaError, RDKafkaErrorCode};
use rdkafka::message::{Header, OwnedHeaders};
use rdkafka::producer::{FutureProducer, FutureRecord};
use rdkafka::util::Timeout;
use std::collections::HashSet;
use std::sync::{Arc, Mutex};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Extra record headers on a queue's retry topic: which delivery of the
/// event the record is, and when it is due (Unix milliseconds).
pub const ATTEMPT_HEADER: &str = "trigger-messaging-attempt";
/// See [`ATTEMPT_HEADER`].
pub const DUE_HEADER: &str = "trigger-messaging-due";

/// A link's producer and topic administration.
pub struct Publisher {
    pub(super) link: String,
    pub(super) settings: KafkaSettings,
    /// Replaced when librdkafka declares it failed for good
    /// ([`Publisher::renew`]).
    producer: ArcSwap<FutureProducer<LinkContext>>,
    admin: AdminClient<LinkContext>,
    /// Topics known to exist: created or checked once.
    known: Mutex<HashSet<String>>,
    /// Cancelled when the link closes: queue subscriptions commit what is
    /// settled and leave their groups.
    pub(super) closing: CancellationToken,
    /// The queue subscriptions' committers, awaited when the link closes.
    pub(super) committers: TaskTracker,
    /// Queue members of this link, by group: whether each was stopped, and
    /// whether it has left. A new member of a group waits for the stopped
    /// ones to leave ([`Publisher::leaving`]), so that it joins a settled
    /// group rather than one mid-rebalance.
    pub(super) members: Mutex<Vec<Member>>,
    /// The link's, shared with its consumers.
    pub(super) connectivity: Arc<Connectivity>,
}

/// A queue subscription's membership of its group, as its link knows it.
pub(super) struct Member {
    pub group: String,
    /// Cancelled when the subscription is dropped.
    pub closed: CancellationToken,
    /// Cancelled once it has left the group.
    pub left: CancellationToken,
}

impl Publisher {
    /// Makes the producer and the admin client; neither connects before use.
    pub fn new(link: &str, settings: &KafkaSettings) -> anyhow::Result<Arc<Publisher>> {
        let connectivity = Arc::new(Connectivity::default());
        let producer = new_producer(link, settings, &connectivity)?;
        let admin = settings
            .client_config()
            .create_with_context(LinkContext::new(link, None, connectivity.clone()))?;
        Ok(Arc::new(Publisher {
            link: link.into(),
            settings: settings.clone(),
            producer: ArcSwap::from_pointee(producer),
            admin,
            known: Mutex::default(),
            closing: CancellationToken::new(),
            committers: TaskTracker::new(),
            members: Mutex::default(),
            connectivity,
        }))
    }

    /// What to wait for before joining `group`: the members of this link
    /// in it that were stopped and have not left yet. Forgets those that
    /// left.
    pub(super) fn leaving(&self, group: &str) -> Vec<CancellationToken> {
        let mut members = self.members.lock().unwrap();
        members.retain(|m| !m.left.is_cancelled());
        members
            .iter()
            .filter(|m| m.group == group && m.closed.is_cancelled())
            .map(|m| m.left.clone())
            .collect()
    }

    /// Publishes an event as the binding writes it.
    pub async fn publish(&self, topic: &str, event: &Event) -> Result<(), BrokerError> {
        let encoding = crate::stages::start();
        let record = binding::encode(event, self.settings.content_mode);
        crate::stages::record(crate::stages::Stage::Encode, encoding);
        self.send(topic, &record, &[]).await
    }

    /// Sends a record, with `extra` headers after the binding's.
    pub async fn send(
        &self,
        topic: &str,
        record: &Record,
        extra: &[(&str, &[u8])],
    ) -> Result<(), BrokerError> {
        let size = record.value.as_ref().map_or(0, Vec::len);
        let limit = usize::try_from(self.settings.max_payload).unwrap_or(usize::MAX);
        if size > limit {
            return Err(BrokerError::PayloadTooLarge { size, limit });
        }
        let out = future_record(topic, record, extra);
        let timeout = self.settings.publish_timeout;
        let producer = self.producer.load_full();
        let sent = crate::timeout::timeout(timeout, producer.send(out, Timeout::After(timeout)))
            .await
            .map_err(|_| BrokerError::unconfirmed("Kafka", timeout))?;
        match sent {
            Ok(_) => {
                self.connectivity.connected();
                Ok(())
            }
            Err((e, _)) => {
                use rdkafka::producer::Producer as _;
                if let Some(fatal) = producer.client().fatal_error() {
                    self.renew(producer, fatal);
                }
                Err(self.refused(topic, size, e))
            }
        }
    }

    /// Puts a new producer in the place of `failed`, which librdkafka
    /// declared failed for good (an idempotent producer whose sequence the
    /// broker refused, say): from then on it fails every record, and the
    /// link would publish nothing until the provider restarts. What `failed`
    /// had not confirmed comes back to its senders as errors, and is retried
    /// as any unconfirmed publish is.
    fn renew(
        &self,
        failed: Arc<FutureProducer<LinkContext>>,
        (code, reason): (RDKafkaErrorCode, String),
    ) {
        let link = &self.link;
        let fresh = match new_producer(link, &self.settings, &self.connectivity) {
            Ok(fresh) => Arc::new(fresh),
            Err(e) => {
                tracing::error!(link = %link, "Kafka: the producer failed for good ({code}: {reason}) and a new one cannot be made: {e}");
                return;
            }
        };
        let previous = self.producer.compare_and_swap(&failed, fresh);
        if Arc::ptr_eq(&*previous, &failed) {
            tracing::error!(link = %link, "Kafka: the producer failed for good ({code}: {reason}); a new producer takes its place, and what the old one had not confirmed is published again");
            // Dropping a librdkafka producer blocks (it purges, flushes and
            // joins its polling thread): not on the runtime's threads. The
            // senders it failed let go of it as their errors arrive.
            let previous = arc_swap::Guard::into_inner(previous);
            tokio::task::spawn_blocking(move || drop((previous, failed)));
        }
    }

    /// Makes librdkafka declare the link's producer failed for good, as
    /// it does when a broker refuses an idempotent producer's sequence: for
    /// tests of [`Publisher::renew`], since no broker here does it on demand.
    #[doc(hidden)]
    pub fn fail_producer_for_test(&self) {
        use rdkafka::producer::Producer as _;
        let producer = self.producer.load();
        let reason = c"failed by a test";
        // SAFETY: the client pointer is live while `producer` is, and the
        // reason is a NUL-terminated string that outlives the call.
        unsafe {
            rdkafka::bindings::rd_kafka_test_fatal_error(
                producer.client().native_ptr(),
                rdkafka::bindings::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_OUT_OF_ORDER_SEQUENCE_NUMBER,
                reason.as_ptr(),
            );
        }
    }

    /// What a failed send means to the caller.
    fn refused(&self, topic: &str, size: usize, e: KafkaError) -> BrokerError {
        use RDKafkaErrorCode as Code;
        let link = &self.link;
        match e.rdkafka_error_code() {
            Some(Code::MessageSizeTooLarge | Code::InvalidMessageSize) => {
                BrokerError::PayloadTooLarge {
                    size,
                    limit: usize::try_from(self.settings.max_payload).unwrap_or(usize::MAX),
                }
            }
            Some(Code::MessageTimedOut | Code::RequestTimedOut) => BrokerError::TimedOut(format!(
                "Kafka link `{link}` did not confirm within {}",
                humantime::format_duration(self.settings.publish_timeout)
            )),
            Some(
                Code::QueueFull
                | Code::BrokerTransportFailure
                | Code::AllBrokersDown
                | Code::NotEnoughReplicas
                | Code::NotEnoughReplicasAfterAppend
                | Code::LeaderNotAvailable
                | Code::NotLeaderForPartition
                | Code::NetworkException
                | Code::Resolve
                | Code::Fatal,
            ) => BrokerError::Unavailable(format!("Kafka link `{link}`: {e}")),
            Some(Code::UnknownTopicOrPartition | Code::UnknownTopic) => {
                BrokerError::DeliveryFailed(format!(
                    "topic `{topic}` does not exist on Kafka link `{link}`"
                ))
            }
            _ => BrokerError::DeliveryFailed(format!("Kafka link `{link}`: {e}")),
        }
    }

    /// Makes sure `topic` exists: creates it (`create_topics`), or checks
    /// that it is there. Once per topic per link.
    pub async fn ensure_topic(&self, topic: &str) -> Result<(), BrokerError> {
        if self.known.lock().unwrap().contains(topic) {
            return Ok(());
        }
        if self.settings.create_topics {
            self.create_topic(topic).await?;
        } else {
            let partitions = self.partitions(topic).await?;
            if partitions.is_empty() {
                return Err(BrokerError::Other(format!(
                    "topic `{topic}` does not exist on Kafka link `{}`, and the link does not create topics (`create_topics = false`)",
                    self.link
                )));
            }
        }
        self.connectivity.connected();
        self.known.lock().unwrap().insert(topic.to_string());
        Ok(())
    }

    async fn create_topic(&self, topic: &str) -> Result<(), BrokerError> {
        let (partitions, replicas) = self.settings.topic_shape(topic);
        let new = NewTopic::new(topic, partitions, TopicReplication::Fixed(replicas));
        let timeout = self.settings.publish_timeout;
        let options = AdminOptions::new().operation_timeout(Some(timeout));
        let created =
            crate::timeout::timeout(timeout * 2, self.admin.create_topics([&new], &options))
                .await
                .map_err(|_| BrokerError::unconfirmed("Kafka", timeout))?
                .map_err(|e| {
                    BrokerError::Unavailable(format!("Kafka link `{}`: {e}", self.link))
                })?;
        for result in created {
            match result {
                Ok(_) | Err((_, RDKafkaErrorCode::TopicAlreadyExists)) => {}
                Err((name, code)) => {
                    return Err(BrokerError::Unavailable(format!(
                        "Kafka link `{}` could not create topic `{name}`: {code}",
                        self.link
                    )));
                }
            }
        }
        Ok(())
    }

    /// The partitions of `topic` (none when it does not exist).
    pub async fn partitions(&self, topic: &str) -> Result<Vec<i32>, BrokerError> {
        let config = self.settings.client_config();
        let timeout = self.settings.publish_timeout;
        let topic = topic.to_string();
        let link = self.link.clone();
        tokio::task::spawn_blocking(move || {
            let consumer: BaseConsumer = config
                .create()
                .map_err(|e| BrokerError::Other(e.to_string()))?;
            let metadata = consumer
                .fetch_metadata(Some(&topic), timeout)
                .map_err(|e| BrokerError::Unavailable(format!("Kafka link `{link}`: {e}")))?;
            Ok(metadata
                .topics()
                .iter()
                .filter(|t| t.name() == topic && t.error().is_none())
                .flat_map(|t| t.partitions().iter().map(|p| p.id()))
                .collect())
        })
        .await
        .map_err(|e| BrokerError::Other(e.to_string()))?
    }

    /// Waits until what was sent is delivered (or `publish_timeout`).
    pub fn flush(&self) {
        use rdkafka::producer::Producer as _;
        let _ = self.producer.load().flush(self.settings.publish_timeout);
    }
}

/// A producer with the link's settings.
fn new_producer(
    link: &str,
    settings: &KafkaSettings,
    connectivity: &Arc<Connectivity>,
) -> anyhow::Result<FutureProducer<LinkContext>> {
    Ok(settings
        .producer_config()
        .create_with_context(LinkContext::new(link, None, connectivity.clone()))?)
}

/// The librdkafka record for a binding's record, with `extra` headers
/// after the binding's.
pub fn future_record<'a>(
    topic: &'a str,
    record: &'a Record,
    extra: &[(&'a str, &'a [u8])],
) -> FutureRecord<'a, [u8], [u8]> {
    let mut headers = OwnedHeaders::new_with_capacity(record.headers.len() + extra.len());
    for (key, value) in &record.headers {
        headers = headers.insert(Header {
            key,
            value: Some(value.as_slice()),
        });
    }
    for (key, value) in extra {
        headers = headers.insert(Header {
            key,
            value: Some(*value),
        });
    }
    let mut out = FutureRecord::to(topic).headers(headers);
    if let Some(value) = &record.value {
        out = out.payload(value.as_slice());
    }
    if let Some(key) = &record.key {
        out = out.key(key.as_slice());
    }
    out
}
