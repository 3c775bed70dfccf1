//! Dispatch: queue and topic delivery across components, retries and dead
//! letters, and channels shared or kept apart across apps in one process.

use crate::support::*;
use std::collections::BTreeMap;
use std::time::Duration;

fn two_probes() -> AppDir {
    write_app(
        r#"spin_manifest_version = 2
[application]
name = "pair"
[application.trigger.messaging.channels]
work = { kind = "queue" }
fanout = { kind = "topic" }
results = { kind = "topic" }
[[trigger.messaging]]
component = "a"
subscriptions = ["work", "fanout"]
publish = ["results"]
[[trigger.messaging]]
component = "b"
subscriptions = ["work", "fanout"]
publish = ["results"]
[component.a]
source = "{probe}"
environment = { PROBE_NAME = "a" }
[component.b]
source = "{probe}"
environment = { PROBE_NAME = "b" }
"#,
    )
}

#[tokio::test]
async fn a_queue_gives_each_event_to_one_consumer_a_topic_to_all() {
    let app = two_probes();
    let provider = start(&[&app.manifest], None).await;
    let mut results = watch(&provider, "pair", "results").await;

    for i in 0..20 {
        send(
            &provider,
            "pair",
            "work",
            event(&format!("q{i}"), "work.item"),
        )
        .await;
    }
    let mut handled: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for _ in 0..20 {
        let e = results.next("queue events").await;
        handled
            .entry(e.id.clone())
            .or_default()
            .push(e.extension("handledby").unwrap().to_string());
    }
    results.expect_nothing(Duration::from_millis(500)).await;
    assert_eq!(
        handled.len(),
        20,
        "every queue event handled exactly once: {handled:?}"
    );
    let by_a = handled.values().filter(|h| h[0] == "a").count();
    assert!(
        by_a > 0 && by_a < 20,
        "both consumers compete: a took {by_a} of 20"
    );

    for i in 0..5 {
        send(
            &provider,
            "pair",
            "fanout",
            event(&format!("t{i}"), "fanout.item"),
        )
        .await;
    }
    let mut seen: BTreeMap<String, Vec<String>> = BTreeMap::new();
    for _ in 0..10 {
        let e = results.next("topic events").await;
        seen.entry(e.id.clone())
            .or_default()
            .push(e.extension("handledby").unwrap().to_string());
    }
    results.expect_nothing(Duration::from_millis(500)).await;
    for (id, mut by) in seen {
        by.sort();
        assert_eq!(by, ["a", "b"], "topic event {id} reaches every subscriber");
    }
}

#[tokio::test]
async fn failing_events_are_retried_then_dead_lettered() {
    let app = probe_app(
        "retry",
        r#"dlq = { kind = "topic" }"#,
        r#"publish = ["results"]"#,
    );
    let text = std::fs::read_to_string(&app.manifest).unwrap().replace(
        "kind = \"queue\", address",
        "kind = \"queue\", max_attempts = 3, dead_letter = \"dlq\", address",
    );
    std::fs::write(&app.manifest, text).unwrap();
    let provider = start(&[&app.manifest], None).await;
    let mut results = watch(&provider, "retry", "results").await;
    let mut dlq = watch(&provider, "retry", "dlq").await;

    let mut failing = event("f1", "probe.fail");
    failing.data = Some(b"keep me".to_vec());
    send(&provider, "retry", "inbox", failing.clone()).await;
    for attempt in 1..=3 {
        results.next_with_id("f1-attempt").await;
        eprintln!("attempt {attempt} seen");
    }
    assert_eq!(
        dlq.next("the dead letter").await,
        failing,
        "the dead letter is the event as it was sent"
    );
    results.expect_nothing(Duration::from_millis(800)).await;

    // The channel goes on with the next event.
    send(&provider, "retry", "inbox", event("f2", "after.failure")).await;
    results.next_with_id("f2").await;
}

#[tokio::test]
async fn apps_share_a_channel_only_through_the_same_broker_name() {
    let producer = probe_app(
        "producer",
        r#"handoff = { kind = "queue", address = "shared.handoff" }"#,
        r#"publish = ["results", "handoff"]"#,
    );
    let consumer = write_app(
        r#"spin_manifest_version = 2
[application]
name = "consumer"
[application.trigger.messaging.channels]
incoming = { kind = "queue", address = "shared.handoff" }
results = { kind = "topic", address = "consumer.results" }
[[trigger.messaging]]
component = "probe"
subscriptions = ["incoming"]
publish = ["results"]
[component.probe]
source = "{probe}"
"#,
    );
    let bystander = write_app(
        r#"spin_manifest_version = 2
[application]
name = "bystander"
[application.trigger.messaging.channels]
handoff = { kind = "queue" }
results = { kind = "topic", address = "bystander.results" }
[[trigger.messaging]]
component = "probe"
subscriptions = ["handoff"]
publish = ["results"]
[component.probe]
source = "{probe}"
"#,
    );
    let provider = start(
        &[&producer.manifest, &consumer.manifest, &bystander.manifest],
        None,
    )
    .await;
    let mut producer_results = watch(&provider, "producer", "results").await;
    let mut consumer_results = watch(&provider, "consumer", "results").await;
    let mut bystander_results = watch(&provider, "bystander", "results").await;

    let mut cmd = event("h1", "probe.publish");
    cmd.subject = Some("queue:handoff".into());
    assert_eq!(
        ask(&provider, "producer", &mut producer_results, cmd)
            .await
            .0,
        "ok"
    );
    let got = consumer_results.next("the handed-off event").await;
    assert_eq!((got.id.as_str(), got.ty.as_str()), ("h1", "probe.item"));
    bystander_results
        .expect_nothing(Duration::from_millis(500))
        .await;

    // The consumer app does not declare `handoff`, so it cannot publish there,
    // even though another app in the process can.
    let mut cmd = event("h2", "probe.publish");
    cmd.subject = Some("queue:handoff".into());
    send(&provider, "consumer", "incoming", cmd).await;
    let (case, message) = outcome(&consumer_results.next_with_id("h2-result").await);
    assert_eq!(case, "queue-or-topic-not-found", "{message}");
}
