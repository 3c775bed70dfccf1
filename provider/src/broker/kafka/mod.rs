//! Kafka links (`type = "kafka"`), on librdkafka (the rdkafka crate, with
//! its bundled library). A channel's address is a topic. A queue channel's
//! group is a consumer group: its members compete for the topic's
//! partitions, offsets are committed once events are settled, and a nacked
//! event waits in the queue's retry topic (at least once). A topic
//! subscriber reads every partition from the end, outside any group (at
//! most once). Records follow the CloudEvents Kafka binding
//! ([`crate::cloudevents::kafka`]).
//!
//! - `settings`: what the runtime config takes, and the client configuration
//! - `publish`: the producer, and the topics created when declared
//! - `subscribe`: queue and topic subscriptions, offsets and retries

pub mod publish;
pub mod settings;
pub mod subscribe;

use super::{
    Broker, BrokerError, ChannelNames, ConnectivityState, Invalid, MakeBroker, SubscribeMode,
    Subscription,
};
use crate::cloudevents::Event;
use async_trait::async_trait;
use publish::Publisher;
use settings::{KafkaSettings, retry_topic};
use std::path::Path;
use std::sync::Arc;

/// Makes Kafka links.
pub struct MakeKafka;

#[async_trait]
impl MakeBroker for MakeKafka {
    const TYPE: &'static str = "kafka";
    type Settings = KafkaSettings;

    fn check(s: &mut KafkaSettings, config_dir: &Path) -> Result<(), Invalid> {
        s.check(config_dir)
    }

    fn check_channel(s: &KafkaSettings, names: &ChannelNames) -> Result<(), Invalid> {
        s.check_channel(names)
    }

    fn describe(s: &KafkaSettings) -> String {
        s.describe()
    }

    async fn connect(&self, name: &str, s: &KafkaSettings) -> anyhow::Result<Arc<dyn Broker>> {
        Ok(Arc::new(KafkaBroker {
            publisher: Publisher::new(name, s)?,
        }))
    }
}

struct KafkaBroker {
    publisher: Arc<Publisher>,
}

#[async_trait]
impl Broker for KafkaBroker {
    /// Down once librdkafka finds every broker down; up again at the next
    /// record read, publish confirmed or topic checked.
    fn connectivity(&self) -> ConnectivityState {
        self.publisher.connectivity.state()
    }

    fn max_payload(&self) -> Option<usize> {
        usize::try_from(self.publisher.settings.max_payload).ok()
    }

    async fn publish(&self, address: &str, event: &Event) -> Result<(), BrokerError> {
        self.publisher.publish(address, event).await
    }

    async fn declare_queue(&self, address: &str, group: &str) -> Result<(), BrokerError> {
        self.publisher.ensure_topic(address).await?;
        self.publisher
            .ensure_topic(&retry_topic(address, group))
            .await
    }

    async fn declare_topic(&self, address: &str) -> Result<(), BrokerError> {
        self.publisher.ensure_topic(address).await
    }

    async fn subscribe(
        &self,
        address: &str,
        mode: SubscribeMode,
    ) -> Result<Box<dyn Subscription>, BrokerError> {
        match mode {
            SubscribeMode::Queue { group } => {
                self.declare_queue(address, &group).await?;
                let retry = retry_topic(address, &group);
                Ok(Box::new(
                    subscribe::QueueSubscription::start(
                        self.publisher.clone(),
                        address,
                        &group,
                        &retry,
                    )
                    .await?,
                ))
            }
            SubscribeMode::Topic => {
                self.publisher.ensure_topic(address).await?;
                Ok(Box::new(
                    subscribe::TopicSubscription::start(&self.publisher, address).await?,
                ))
            }
        }
    }

    /// Commits what queue subscriptions settled, leaves their groups, and
    /// waits for what was published.
    async fn close(&self) {
        let publisher = self.publisher.clone();
        publisher.closing.cancel();
        publisher.committers.close();
        let timeout = publisher.settings.publish_timeout;
        let _ = tokio::time::timeout(timeout * 2, publisher.committers.wait()).await;
        let _ = tokio::task::spawn_blocking(move || publisher.flush()).await;
    }
}
