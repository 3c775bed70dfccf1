//! The embedded broker against the broker trait: queue groups, topics,
//! back-pressure, acknowledgement and close.

use messaging_provider::broker::embedded::{EmbeddedBroker, EmbeddedSettings};
use messaging_provider::broker::{Broker, BrokerError, SubscribeMode};
use messaging_provider::cloudevents::Event;
use std::time::Duration;

fn broker(capacity: usize, timeout_ms: u64) -> EmbeddedBroker {
    EmbeddedBroker::new(EmbeddedSettings {
        capacity,
        publish_timeout: Duration::from_millis(timeout_ms),
        ..Default::default()
    })
}

fn ev(id: &str) -> Event {
    Event::new(id, "urn:embedded-test", "t")
}

fn queue(group: &str) -> SubscribeMode {
    SubscribeMode::Queue {
        group: group.into(),
    }
}

async fn next_id(sub: &mut Box<dyn messaging_provider::broker::Subscription>) -> (String, u32) {
    let d = tokio::time::timeout(Duration::from_secs(5), sub.next())
        .await
        .expect("a delivery")
        .expect("open");
    let (e, attempt, ack) = d.into_parts();
    ack.ack().await.unwrap();
    (e.id, attempt)
}

#[tokio::test]
async fn a_declared_queue_keeps_events_until_its_first_consumer() {
    let b = broker(8, 1000);
    b.declare_queue("jobs", "g").await.unwrap();
    b.publish("jobs", &ev("early")).await.unwrap();
    let mut consumer = b.subscribe("jobs", queue("g")).await.unwrap();
    assert_eq!(next_id(&mut consumer).await.0, "early");
}

#[tokio::test]
async fn queue_members_compete_topics_fan_out_and_watchers_steal_nothing() {
    let b = broker(64, 1000);
    let mut q1 = b.subscribe("addr", queue("g")).await.unwrap();
    let mut q2 = b.subscribe("addr", queue("g")).await.unwrap();
    let mut other_group = b.subscribe("addr", queue("h")).await.unwrap();
    let mut t1 = b.subscribe("addr", SubscribeMode::Topic).await.unwrap();
    let mut t2 = b.subscribe("addr", SubscribeMode::Topic).await.unwrap();
    for i in 0..10 {
        b.publish("addr", &ev(&i.to_string())).await.unwrap();
    }
    let mut group_g = Vec::new();
    for _ in 0..5 {
        group_g.push(next_id(&mut q1).await.0);
        group_g.push(next_id(&mut q2).await.0);
    }
    group_g.sort_by_key(|s| s.parse::<u32>().unwrap());
    let all: Vec<String> = (0..10).map(|i| i.to_string()).collect();
    assert_eq!(group_g, all, "group g shares the events, each once");
    for sub in [&mut other_group, &mut t1, &mut t2] {
        let mut got = Vec::new();
        for _ in 0..10 {
            got.push(next_id(sub).await.0);
        }
        assert_eq!(
            got, all,
            "another group and every topic subscriber see all events, in order"
        );
    }
}

#[tokio::test]
async fn a_full_buffer_makes_publish_wait_then_fail_without_partial_delivery() {
    let b = broker(1, 300);
    let mut fast = b.subscribe("x", SubscribeMode::Topic).await.unwrap();
    let _slow = b.subscribe("x", SubscribeMode::Topic).await.unwrap();
    b.publish("x", &ev("1")).await.unwrap();
    assert_eq!(next_id(&mut fast).await.0, "1");
    // `slow` still holds "1": "2" cannot be placed there, so it goes nowhere.
    let err = b.publish("x", &ev("2")).await.unwrap_err();
    assert!(matches!(err, BrokerError::DeliveryFailed(_)), "{err}");
    assert!(
        tokio::time::timeout(Duration::from_millis(200), fast.next())
            .await
            .is_err(),
        "no partial delivery"
    );
}

#[tokio::test]
async fn a_publish_waits_for_a_slow_consumer_instead_of_failing() {
    let b = std::sync::Arc::new(broker(1, 5000));
    let mut sub = b.subscribe("x", queue("g")).await.unwrap();
    b.publish("x", &ev("1")).await.unwrap();
    let publisher = {
        let b = b.clone();
        tokio::spawn(async move { b.publish("x", &ev("2")).await })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    assert!(
        !publisher.is_finished(),
        "the second publish waits for room"
    );
    assert_eq!(next_id(&mut sub).await.0, "1");
    publisher.await.unwrap().unwrap();
    assert_eq!(next_id(&mut sub).await.0, "2");
}

#[tokio::test]
async fn a_nacked_event_is_redelivered_with_its_attempt_counted() {
    let b = broker(8, 1000);
    let mut sub = b.subscribe("x", queue("g")).await.unwrap();
    b.publish("x", &ev("once")).await.unwrap();
    let (e, attempt, ack) = sub.next().await.unwrap().into_parts();
    assert_eq!((e.id.as_str(), attempt), ("once", 1));
    ack.nack(Duration::ZERO).await.unwrap();
    assert_eq!(next_id(&mut sub).await, ("once".to_string(), 2));
}

#[tokio::test]
async fn dropping_a_subscription_or_closing_the_broker_ends_delivery() {
    let b = broker(8, 1000);
    let t = b.subscribe("x", SubscribeMode::Topic).await.unwrap();
    drop(t);
    b.publish("x", &ev("nobody")).await.unwrap();
    let mut sub = b.subscribe("x", SubscribeMode::Topic).await.unwrap();
    b.close().await;
    assert!(
        sub.next().await.is_none(),
        "a closed broker ends subscriptions"
    );
    assert!(matches!(
        b.publish("x", &ev("late")).await,
        Err(BrokerError::Unavailable(_))
    ));
    assert!(b.subscribe("x", SubscribeMode::Topic).await.is_err());
}
