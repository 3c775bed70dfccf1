//! One conformance suite for every link type, the embedded broker included:
//! the same cases run against each, and a link is held to exactly what it
//! claims (at-least-once links must redeliver). Broker-backed links need
//! their server running (scripts/test.sh starts any that is down); a missing
//! server fails the suite, it never skips it.

use crate::support::*;
use messaging_provider::broker::{Broker, LinkRegistry, SubscribeMode, Subscription};
use messaging_provider::cloudevents::Event;
use messaging_provider::manifest::RuntimeConfig;
use std::sync::Arc;
use std::time::Duration;

/// Connects the link `under_test` defined by a runtime-config table body.
pub async fn connect(settings: &str) -> Arc<dyn Broker> {
    let file = link_config("under_test", settings);
    let config = RuntimeConfig::load(Some(file.path()), &LinkRegistry::default()).unwrap();
    config.links["under_test"]
        .connect("under_test")
        .await
        .unwrap()
}

fn full_event(id: &str) -> Event {
    let mut e = Event::new(id, "urn:conformance", "com.example.conformance");
    e.data = Some(vec![0, 1, 2, 0xff, b'\n', b' ']);
    e.datacontenttype = Some("application/octet-stream".into());
    e.dataschema = Some("urn:schema:1".into());
    e.subject = Some("with space, \"quotes\", 100% and ünïcode".into());
    e.time = Some("2024-02-29T23:59:59.999+01:00".into());
    e.extensions = vec![
        ("traceparent".into(), "00-abc-def-01".into()),
        ("tenant".into(), "blue green".into()),
    ];
    e
}

async fn next(
    sub: &mut Box<dyn Subscription>,
    what: &str,
) -> (Event, u32, Box<dyn messaging_provider::broker::Acknowledge>) {
    tokio::time::timeout(Duration::from_secs(15), sub.next())
        .await
        .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
        .expect("the subscription is open")
        .into_parts()
}

async fn nothing(sub: &mut Box<dyn Subscription>, wait: Duration) {
    if let Ok(Some(d)) = tokio::time::timeout(wait, sub.next()).await {
        panic!("expected nothing, got {:?}", d.event());
    }
}

/// Gives a fresh subscription time to be registered with a remote broker.
async fn settle() {
    tokio::time::sleep(Duration::from_millis(200)).await;
}

pub async fn round_trip_keeps_every_attribute(link: Arc<dyn Broker>) {
    let address = unique("conformance.roundtrip");
    link.declare_topic(&address).await.unwrap();
    let mut sub = link
        .subscribe(&address, SubscribeMode::Topic)
        .await
        .unwrap();
    settle().await;
    let sent = full_event("rt-1");
    link.publish(&address, &sent).await.unwrap();
    let mut no_data = Event::new("rt-2", "urn:conformance", "t");
    no_data.subject = Some("s".into());
    link.publish(&address, &no_data).await.unwrap();
    let (got, attempt, ack) = next(&mut sub, "the event").await;
    ack.ack().await.unwrap();
    assert_eq!(got, sent);
    assert_eq!(attempt, 1);
    let (got, _, ack) = next(&mut sub, "the event without data").await;
    ack.ack().await.unwrap();
    assert_eq!(got, no_data);
}

pub async fn queue_members_compete_and_topic_subscribers_each_get_all(link: Arc<dyn Broker>) {
    let address = unique("conformance.kinds");
    let group = format!("{address}.group");
    link.declare_queue(&address, &group).await.unwrap();
    let mut q1 = link
        .subscribe(
            &address,
            SubscribeMode::Queue {
                group: group.clone(),
            },
        )
        .await
        .unwrap();
    let mut q2 = link
        .subscribe(
            &address,
            SubscribeMode::Queue {
                group: group.clone(),
            },
        )
        .await
        .unwrap();
    let mut t1 = link
        .subscribe(&address, SubscribeMode::Topic)
        .await
        .unwrap();
    let mut t2 = link
        .subscribe(&address, SubscribeMode::Topic)
        .await
        .unwrap();
    settle().await;
    let n = 10;
    for i in 0..n {
        link.publish(
            &address,
            &Event::new(format!("k{i}"), "urn:conformance", "t"),
        )
        .await
        .unwrap();
    }
    for t in [&mut t1, &mut t2] {
        let mut ids = Vec::new();
        for _ in 0..n {
            let (e, _, ack) = next(t, "a topic event").await;
            ack.ack().await.unwrap();
            ids.push(e.id);
        }
        ids.sort();
        let mut all: Vec<String> = (0..n).map(|i| format!("k{i}")).collect();
        all.sort();
        assert_eq!(ids, all, "each topic subscriber gets every event");
    }
    // The two queue members share the events: each exactly once between them.
    let (a, b) = tokio::join!(drain(&mut q1), drain(&mut q2));
    let mut ids: Vec<String> = a.into_iter().chain(b).collect();
    ids.sort();
    ids.dedup();
    assert_eq!(ids.len(), n, "each queue event once: {ids:?}");
}

/// Takes events until none comes for a while.
async fn drain(sub: &mut Box<dyn Subscription>) -> Vec<String> {
    let mut ids = Vec::new();
    while let Ok(Some(d)) = tokio::time::timeout(Duration::from_millis(1500), sub.next()).await {
        let (e, _, ack) = d.into_parts();
        ack.ack().await.unwrap();
        ids.push(e.id);
    }
    ids
}

pub async fn unsubscribing_stops_delivery(link: Arc<dyn Broker>) {
    let address = unique("conformance.unsub");
    link.declare_topic(&address).await.unwrap();
    let mut stays = link
        .subscribe(&address, SubscribeMode::Topic)
        .await
        .unwrap();
    let leaves = link
        .subscribe(&address, SubscribeMode::Topic)
        .await
        .unwrap();
    drop(leaves);
    settle().await;
    link.publish(&address, &Event::new("u1", "urn:conformance", "t"))
        .await
        .unwrap();
    let (e, _, ack) = next(&mut stays, "the event").await;
    ack.ack().await.unwrap();
    assert_eq!(e.id, "u1");
    let mut fresh = link
        .subscribe(&address, SubscribeMode::Topic)
        .await
        .unwrap();
    drop(stays);
    settle().await;
    link.publish(&address, &Event::new("u2", "urn:conformance", "t"))
        .await
        .unwrap();
    let (e, _, ack) = next(&mut fresh, "the second event").await;
    ack.ack().await.unwrap();
    assert_eq!(e.id, "u2");
    nothing(&mut fresh, Duration::from_millis(300)).await;
}

pub async fn a_nacked_queue_event_is_redelivered(link: Arc<dyn Broker>) {
    let address = unique("conformance.redeliver");
    let group = format!("{address}.group");
    link.declare_queue(&address, &group).await.unwrap();
    let mut q = link
        .subscribe(
            &address,
            SubscribeMode::Queue {
                group: group.clone(),
            },
        )
        .await
        .unwrap();
    settle().await;
    link.publish(&address, &Event::new("r1", "urn:conformance", "t"))
        .await
        .unwrap();
    let (e, attempt, ack) = next(&mut q, "the first delivery").await;
    assert_eq!((e.id.as_str(), attempt), ("r1", 1));
    ack.nack(Duration::ZERO).await.unwrap();
    let (e, attempt, ack) = next(&mut q, "the redelivery").await;
    assert_eq!((e.id.as_str(), attempt), ("r1", 2));
    ack.ack().await.unwrap();
    nothing(&mut q, Duration::from_millis(500)).await;
}

pub async fn a_nacked_event_is_not_redelivered_at_most_once(link: Arc<dyn Broker>) {
    let address = unique("conformance.atmostonce");
    let group = format!("{address}.group");
    let mut q = link
        .subscribe(&address, SubscribeMode::Queue { group })
        .await
        .unwrap();
    settle().await;
    link.publish(&address, &Event::new("m1", "urn:conformance", "t"))
        .await
        .unwrap();
    let (e, attempt, ack) = next(&mut q, "the delivery").await;
    assert_eq!((e.id.as_str(), attempt), ("m1", 1));
    ack.nack(Duration::ZERO).await.unwrap();
    nothing(&mut q, Duration::from_millis(500)).await;
}

pub async fn a_declared_queue_keeps_events_for_its_first_consumer(link: Arc<dyn Broker>) {
    let address = unique("conformance.durable");
    let group = format!("{address}.group");
    link.declare_queue(&address, &group).await.unwrap();
    link.publish(&address, &Event::new("d1", "urn:conformance", "t"))
        .await
        .unwrap();
    let mut q = link
        .subscribe(&address, SubscribeMode::Queue { group })
        .await
        .unwrap();
    let (e, _, ack) = next(&mut q, "the kept event").await;
    ack.ack().await.unwrap();
    assert_eq!(e.id, "d1");
}

/// A nack with a delay: the event comes back no sooner, counted as the next
/// attempt.
pub async fn a_nack_with_a_delay_comes_back_after_it(link: Arc<dyn Broker>) {
    let address = unique("conformance.delay");
    let group = format!("{address}.group");
    link.declare_queue(&address, &group).await.unwrap();
    let mut q = link
        .subscribe(&address, SubscribeMode::Queue { group })
        .await
        .unwrap();
    settle().await;
    link.publish(&address, &Event::new("n1", "urn:conformance", "t"))
        .await
        .unwrap();
    let (_, attempt, ack) = next(&mut q, "the first delivery").await;
    assert_eq!(attempt, 1);
    let delay = Duration::from_millis(1500);
    let nacked = std::time::Instant::now();
    ack.nack(delay).await.unwrap();
    let (e, attempt, ack) = next(&mut q, "the redelivery").await;
    let waited = nacked.elapsed();
    ack.ack().await.unwrap();
    assert_eq!((e.id.as_str(), attempt), ("n1", 2));
    assert!(
        waited >= delay - Duration::from_millis(100),
        "back after {waited:?}"
    );
    nothing(&mut q, Duration::from_millis(500)).await;
}

/// Stopping a subscription: `next` yields what the link had already taken
/// and then ends, promptly; nothing is lost. What is handed back reaches
/// another consumer at once (the link's own redelivery timeouts are 30 s
/// here), and what cannot be handed back was all yielded.
pub async fn stopping_yields_what_was_taken_and_loses_nothing(link: Arc<dyn Broker>) {
    let address = unique("conformance.stop");
    let group = format!("{address}.group");
    link.declare_queue(&address, &group).await.unwrap();
    let mode = SubscribeMode::Queue {
        group: group.clone(),
    };
    let mut q = link.subscribe(&address, mode.clone()).await.unwrap();
    settle().await;
    let n = 20;
    for i in 0..n {
        link.publish(
            &address,
            &Event::new(format!("s{i}"), "urn:conformance", "t"),
        )
        .await
        .unwrap();
    }
    let (first, _, ack) = next(&mut q, "the first event").await;
    ack.ack().await.unwrap();
    settle().await;
    q.stop().await;
    let mut handled = std::collections::BTreeSet::from([first.id]);
    let mut handed_back = 0;
    loop {
        let d = tokio::time::timeout(Duration::from_secs(5), q.next())
            .await
            .expect("a stopped subscription ends promptly");
        let Some(d) = d else { break };
        if d.redelivers() {
            let (_, _, ack) = d.into_parts();
            ack.nack(Duration::ZERO).await.unwrap();
            handed_back += 1;
        } else {
            let (e, _, ack) = d.into_parts();
            ack.ack().await.unwrap();
            handled.insert(e.id);
        }
    }
    drop(q);
    if handled.len() < n {
        // The rest is in the broker, or was handed back: another consumer
        // gets it now, not after a redelivery timeout.
        let mut other = link.subscribe(&address, mode).await.unwrap();
        while handled.len() < n {
            let (e, _, ack) = tokio::time::timeout(Duration::from_secs(5), other.next())
                .await
                .unwrap_or_else(|_| {
                    panic!(
                        "{} of {n} events handled, {handed_back} handed back: the rest did not come at once",
                        handled.len()
                    )
                })
                .expect("the subscription is open")
                .into_parts();
            ack.ack().await.unwrap();
            handled.insert(e.id);
        }
    }
}

/// A guest receives from and publishes to channels on the link.
pub async fn a_guest_round_trips_through_the_link(settings: &str) {
    let rc = link_config("under_test", settings);
    let base = unique("conformance.guest");
    let app = write_app(&format!(
        r#"spin_manifest_version = 2
[application]
name = "conf"
[application.trigger.messaging.channels]
inbox = {{ kind = "queue", link = "under_test", address = "{base}.inbox" }}
results = {{ kind = "topic", link = "under_test", address = "{base}.results" }}
[[trigger.messaging]]
component = "probe"
subscriptions = ["inbox"]
publish = ["results"]
[component.probe]
source = "{{probe}}"
"#
    ));
    let provider = start(&[&app.manifest], Some(rc.path())).await;
    let mut results = watch(&provider, "conf", "results").await;
    settle().await;
    let sent = full_event("guest-1");
    send(&provider, "conf", "inbox", sent.clone()).await;
    assert_eq!(results.next_with_id("guest-1").await, sent);
    provider.shutdown(Duration::from_secs(5)).await;
}

/// Runs the suite against one link configuration.
macro_rules! conformance {
    ($name:ident, $settings:expr, at_least_once: $alo:expr, durable_queues: $durable:expr) => {
        mod $name {
            use super::*;
            const SETTINGS: &str = $settings;

            #[tokio::test]
            async fn round_trip_keeps_every_attribute() {
                super::round_trip_keeps_every_attribute(connect(SETTINGS).await).await;
            }
            #[tokio::test]
            async fn queue_members_compete_and_topic_subscribers_each_get_all() {
                super::queue_members_compete_and_topic_subscribers_each_get_all(
                    connect(SETTINGS).await,
                )
                .await;
            }
            #[tokio::test]
            async fn unsubscribing_stops_delivery() {
                super::unsubscribing_stops_delivery(connect(SETTINGS).await).await;
            }
            #[tokio::test]
            async fn a_guest_round_trips_through_the_link() {
                super::a_guest_round_trips_through_the_link(SETTINGS).await;
            }
            #[tokio::test]
            async fn stopping_yields_what_was_taken_and_loses_nothing() {
                let patient = SETTINGS.replace("\"2s\"", "\"30s\"");
                super::stopping_yields_what_was_taken_and_loses_nothing(connect(&patient).await)
                    .await;
            }
            #[tokio::test]
            async fn delivery_guarantee_is_kept() {
                if $alo {
                    super::a_nacked_queue_event_is_redelivered(connect(SETTINGS).await).await;
                    super::a_nack_with_a_delay_comes_back_after_it(connect(SETTINGS).await).await;
                } else {
                    super::a_nacked_event_is_not_redelivered_at_most_once(connect(SETTINGS).await)
                        .await;
                }
                if $durable {
                    super::a_declared_queue_keeps_events_for_its_first_consumer(
                        connect(SETTINGS).await,
                    )
                    .await;
                }
            }
        }
    };
}

conformance!(embedded, "type = \"embedded\"\n", at_least_once: true, durable_queues: true);
conformance!(nats, "type = \"nats\"\nurl = \"nats://127.0.0.1:4222\"\n", at_least_once: false, durable_queues: false);
conformance!(nats_structured, "type = \"nats\"\ncontent_mode = \"structured\"\n", at_least_once: false, durable_queues: false);
conformance!(jetstream, "type = \"nats\"\njetstream = true\nack_wait = \"2s\"\n", at_least_once: true, durable_queues: true);
conformance!(redis, "type = \"redis\"\nurl = \"redis://127.0.0.1:6379\"\nclaim_after = \"2s\"\n", at_least_once: true, durable_queues: true);
conformance!(redis_structured, "type = \"redis\"\ncontent_mode = \"structured\"\n", at_least_once: true, durable_queues: true);
conformance!(amqp, "type = \"amqp\"\nurl = \"amqp://guest:guest@127.0.0.1:5672/%2f\"\n", at_least_once: true, durable_queues: true);
conformance!(amqp_structured, "type = \"amqp\"\ncontent_mode = \"structured\"\n", at_least_once: true, durable_queues: true);
conformance!(mqtt, "type = \"mqtt\"\nurl = \"mqtt://127.0.0.1:1883\"\n", at_least_once: false, durable_queues: false);
conformance!(mqtt_structured, "type = \"mqtt\"\ncontent_mode = \"structured\"\n", at_least_once: false, durable_queues: false);
conformance!(mqtt_3_1_1, "type = \"mqtt\"\nversion = \"3.1.1\"\n", at_least_once: false, durable_queues: false);
// tansu (the Kafka-protocol broker the tests run) has one node: one replica.
conformance!(kafka, "type = \"kafka\"\nbrokers = [\"127.0.0.1:9092\"]\nreplication_factor = 1\n", at_least_once: true, durable_queues: true);
conformance!(kafka_structured, "type = \"kafka\"\ncontent_mode = \"structured\"\nreplication_factor = 1\n", at_least_once: true, durable_queues: true);
