//! Dispatch: queue and topic delivery across components, retries and dead
//! letters, and channels shared or kept apart across apps in one process.

use crate::support::*;
use messaging_provider::broker::{Broker, SubscribeMode};
use messaging_provider::cloudevents::Event;
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
    let (original, cause) = dead_letter_parts(&dlq.next("the dead letter").await);
    assert_eq!(
        original, failing,
        "the dead letter is the event as it was sent"
    );
    assert_eq!(cause["deadletterattempts"], "3");
    assert_eq!(cause["deadletterapp"], "retry");
    assert_eq!(cause["deadletterlink"], "default");
    assert!(
        cause["deadlettererror"].contains("asked to fail"),
        "{cause:?}"
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

// The delivery rules, on every link type: the same cases run against each.

/// A probe app whose `inbox` (a `inbox_kind`) and `out` (a queue) live on
/// the link under test; `results` and `dlq` are local topics. Retries are
/// 100 ms apart so that the cases run quickly.
pub fn app_on_link(
    name: &str,
    settings: &str,
    inbox_kind: &str,
) -> (AppDir, tempfile::NamedTempFile, String) {
    let rc = link_config("under_test", settings);
    let base = unique(name);
    let app = write_app(&format!(
        r#"spin_manifest_version = 2
[application]
name = "{name}"
[application.trigger.messaging.channels]
inbox = {{ kind = "{inbox_kind}", link = "under_test", address = "{base}.inbox", max_attempts = 3, retry_delay = "100ms", max_retry_delay = "400ms", dead_letter = "dlq" }}
out = {{ kind = "queue", link = "under_test", address = "{base}.out" }}
results = {{ kind = "topic", address = "{base}.results" }}
dlq = {{ kind = "topic", address = "{base}.dlq" }}
[[trigger.messaging]]
component = "probe"
subscriptions = ["inbox"]
publish = ["results", "out"]
[component.probe]
source = "{{probe}}"
"#
    ));
    (app, rc, base)
}

/// Puts an event on the link as any producer could, unchecked.
async fn put_raw(bus: &std::sync::Arc<dyn Broker>, address: &str, event: &Event) {
    bus.publish(address, event)
        .await
        .unwrap_or_else(|e| panic!("publish to {address}: {e}"));
}

/// Poison events of three kinds, each followed by a good one: a valid event
/// whose handler fails and one whose handler traps are tried `max_attempts`
/// times, an invalid one none (it never reaches a handler, see `inbound`);
/// each then leaves the queue for the dead-letter channel, and nothing comes
/// again.
pub async fn poison_events_leave_the_queue(settings: &str, inbox_kind: &str) {
    let (app, rc, base) = app_on_link("poison", settings, inbox_kind);
    let provider = start(&[&app.manifest], Some(rc.path())).await;
    let mut results = watch(&provider, "poison", "results").await;
    let mut dlq = watch(&provider, "poison", "dlq").await;
    let bus = provider.link("under_test").unwrap().clone();
    let inbox = format!("{base}.inbox");
    match inbox_kind {
        "queue" => bus.declare_queue(&inbox, &inbox).await.unwrap(),
        _ => bus.declare_topic(&inbox).await.unwrap(),
    }
    tokio::time::sleep(Duration::from_millis(300)).await;

    let valid = event("p-valid", "probe.fail");
    let mut bad_time = event("p-time", "probe.fail");
    bad_time.time = Some("not a time".into());
    bad_time.data = Some(b"order 7".to_vec());
    bad_time.datacontenttype = Some("text/plain".into());
    let trap = event("p-trap", "probe.trap");
    for (i, poison) in [valid, bad_time, trap].into_iter().enumerate() {
        put_raw(&bus, &inbox, &poison).await;
        let invalid = poison.validate().is_err();
        let letter = match invalid {
            true => dlq.next("the malformed message's dead letter").await,
            false => dlq.next_with_id(&poison.id).await,
        };
        let (original, cause) = dead_letter_parts(&letter);
        let attempts = if invalid { "0" } else { "3" };
        assert_eq!(cause["deadletterattempts"], attempts, "{cause:?}");
        assert_eq!(cause["deadletterchannel"], "inbox");
        assert_eq!(cause["deadletterlink"], "under_test");
        if poison.ty == "probe.fail" && !invalid {
            for attempt in 1..=3 {
                let report = results
                    .next_with_id(&format!("{}-attempt", poison.id))
                    .await;
                assert_eq!(
                    report.id,
                    format!("{}-attempt", poison.id),
                    "attempt {attempt}"
                );
            }
        }
        if invalid {
            assert_eq!(
                letter.ty,
                messaging_provider::cloudevents::inbound::MALFORMED_TYPE
            );
            let body = String::from_utf8_lossy(letter.data.as_deref().unwrap()).into_owned();
            assert!(
                body.contains("order 7"),
                "the message travels whole in the letter's data: {body}"
            );
            assert!(cause["deadletterinvalid"].contains("time"), "{cause:?}");
        } else {
            assert_eq!(original, poison, "a valid event is dead-lettered as it was");
        }
        if poison.ty == "probe.trap" {
            assert!(cause["deadlettererror"].contains("trapped"), "{cause:?}");
        }
        // No loop: nothing more comes of it, and the next event goes on.
        let good = format!("good-{i}");
        put_raw(&bus, &inbox, &event(&good, "t")).await;
        results.next_with_id(&good).await;
        dlq.expect_nothing(Duration::from_millis(1500)).await;
        results.expect_nothing(Duration::from_millis(100)).await;
    }
    provider.shutdown(Duration::from_secs(5)).await;
}

/// Every channel is declared before anything consumes: events waiting in
/// the input queue at an app's first start are handled at once, and what
/// the handlers publish to a queue nobody has declared before (its name
/// sorts last) is all kept there.
pub async fn every_channel_is_declared_before_anything_consumes(settings: &str) {
    let (app, rc, base) = app_on_link("declared", settings, "queue");
    let text = std::fs::read_to_string(&app.manifest).unwrap().replace(
        "[component.probe]\nsource",
        "[component.probe]\nenvironment = { PROBE_OUT = \"queue:out\" }\nsource",
    );
    std::fs::write(&app.manifest, text).unwrap();
    let provider = load(&[&app.manifest], Some(rc.path())).await;
    let n = 200;
    for i in 0..n {
        send(&provider, "declared", "inbox", event(&format!("d{i}"), "t")).await;
    }
    provider.start().await.unwrap();
    let bus = provider.link("under_test").unwrap().clone();
    let out = format!("{base}.out");
    bus.declare_queue(&out, &out).await.unwrap();
    let mut sub = bus
        .subscribe(&out, SubscribeMode::Queue { group: out.clone() })
        .await
        .unwrap();
    let mut seen = std::collections::BTreeSet::new();
    crate::links::take_distinct(&mut sub, &mut seen, n).await;
    provider.shutdown(Duration::from_secs(5)).await;
}

/// With one handler at a time, events are handled in the order they were
/// published (a retried event would come back after those behind it).
pub async fn one_handler_at_a_time_keeps_the_order(settings: &str, inbox_kind: &str) {
    let (app, rc, base) = app_on_link("ordered", settings, inbox_kind);
    let text = std::fs::read_to_string(&app.manifest).unwrap().replace(
        "publish = [\"results\", \"out\"]",
        "publish = [\"results\", \"out\"]\nmax_in_flight = 1",
    );
    std::fs::write(&app.manifest, text).unwrap();
    let provider = start(&[&app.manifest], Some(rc.path())).await;
    let mut results = watch(&provider, "ordered", "results").await;
    let bus = provider.link("under_test").unwrap().clone();
    let inbox = format!("{base}.inbox");
    tokio::time::sleep(Duration::from_millis(300)).await;
    let n = 100;
    for i in 0..n {
        put_raw(&bus, &inbox, &event(&format!("o{i:03}"), "t")).await;
    }
    let mut got = Vec::new();
    while got.len() < n {
        got.push(results.next("an ordered event").await.id);
    }
    let sent: Vec<String> = (0..n).map(|i| format!("o{i:03}")).collect();
    assert_eq!(got, sent);
    provider.shutdown(Duration::from_secs(5)).await;
}

macro_rules! delivery_rules {
    ($name:ident, $settings:expr, inbox: $kind:expr, keeps_queues: $keeps:expr) => {
        mod $name {
            const SETTINGS: &str = $settings;

            #[tokio::test]
            async fn poison_events_leave_the_queue() {
                super::poison_events_leave_the_queue(SETTINGS, $kind).await;
            }

            #[tokio::test]
            async fn one_handler_at_a_time_keeps_the_order() {
                super::one_handler_at_a_time_keeps_the_order(SETTINGS, $kind).await;
            }

            #[tokio::test]
            async fn every_channel_is_declared_before_anything_consumes() {
                if $keeps {
                    super::every_channel_is_declared_before_anything_consumes(SETTINGS).await;
                }
            }
        }
    };
}

delivery_rules!(on_embedded, "type = \"embedded\"\n", inbox: "queue", keeps_queues: true);
delivery_rules!(on_nats, "type = \"nats\"\n", inbox: "queue", keeps_queues: false);
delivery_rules!(on_jetstream, "type = \"nats\"\njetstream = true\nack_wait = \"5s\"\n", inbox: "queue", keeps_queues: true);
delivery_rules!(on_redis_streams, "type = \"redis\"\nclaim_after = \"5s\"\n", inbox: "queue", keeps_queues: true);
delivery_rules!(on_redis_pubsub, "type = \"redis\"\n", inbox: "topic", keeps_queues: false);
delivery_rules!(on_amqp, "type = \"amqp\"\n", inbox: "queue", keeps_queues: true);
delivery_rules!(on_mqtt, "type = \"mqtt\"\n", inbox: "queue", keeps_queues: false);
delivery_rules!(on_mqtt_3_1_1, "type = \"mqtt\"\nversion = \"3.1.1\"\n", inbox: "queue", keeps_queues: false);
delivery_rules!(on_kafka, "type = \"kafka\"\nreplication_factor = 1\n", inbox: "queue", keeps_queues: true);

/// Attempts are the broker's count, so they survive the provider: an event
/// that failed once under one provider fails twice more under the next and
/// is dead-lettered after three attempts in all.
pub async fn attempts_survive_a_restart_of_the_provider(settings: &str) {
    let (app, rc, base) = app_on_link("attempts", settings, "queue");
    let text = std::fs::read_to_string(&app.manifest).unwrap().replace(
        "retry_delay = \"100ms\", max_retry_delay = \"400ms\"",
        "retry_delay = \"2s\", max_retry_delay = \"2s\"",
    );
    std::fs::write(&app.manifest, text).unwrap();
    let first = start(&[&app.manifest], Some(rc.path())).await;
    let mut results = watch(&first, "attempts", "results").await;
    let inbox = format!("{base}.inbox");
    put_raw(
        &first.link("under_test").unwrap(),
        &inbox,
        &event("a1", "probe.fail"),
    )
    .await;
    results.next_with_id("a1-attempt").await;
    // Handed back with a 2 s delay; this provider stops meanwhile.
    tokio::time::sleep(Duration::from_millis(300)).await;
    assert!(first.shutdown(Duration::from_secs(5)).await.drained);
    drop(results);

    let second = start(&[&app.manifest], Some(rc.path())).await;
    let mut results = watch(&second, "attempts", "results").await;
    let mut dlq = watch(&second, "attempts", "dlq").await;
    let (_, cause) = dead_letter_parts(&dlq.next_with_id("a1").await);
    assert_eq!(cause["deadletterattempts"], "3", "{cause:?}");
    let mut reports = 0;
    while let Ok(Some(d)) = tokio::time::timeout(Duration::from_millis(500), results.0.next()).await
    {
        reports += usize::from(d.event().id == "a1-attempt");
    }
    assert_eq!(reports, 2, "the second provider ran attempts 2 and 3 only");
    second.shutdown(Duration::from_secs(5)).await;
}

macro_rules! broker_counted_attempts {
    ($name:ident, $settings:expr) => {
        #[tokio::test]
        async fn $name() {
            attempts_survive_a_restart_of_the_provider($settings).await;
        }
    };
}

broker_counted_attempts!(
    attempts_survive_a_restart_of_the_provider_on_jetstream,
    "type = \"nats\"\njetstream = true\nack_wait = \"10s\"\n"
);
broker_counted_attempts!(
    attempts_survive_a_restart_of_the_provider_on_redis_streams,
    "type = \"redis\"\nclaim_after = \"10s\"\n"
);
broker_counted_attempts!(
    attempts_survive_a_restart_of_the_provider_on_amqp,
    "type = \"amqp\"\n"
);
// Kafka keeps no delivery count: the attempt travels in the retry record.
broker_counted_attempts!(
    attempts_survive_a_restart_of_the_provider_on_kafka,
    "type = \"kafka\"\nreplication_factor = 1\n"
);

/// How the dead-letter link's server is away.
#[derive(Clone, Copy, PartialEq)]
enum Away {
    /// Not running: sending fails at once.
    Down,
    /// Frozen (SIGSTOP): sending goes unanswered and times out. It comes
    /// back by a restart, so that what it never answered is gone with its
    /// connections (thawed, it would still store what its socket held).
    Frozen,
}

/// The dead-letter channel lives on a private JetStream server that is away:
/// events that failed `max_attempts` times wait (handed back to their
/// broker, or kept, with growing delays), their handler never runs again,
/// and they reach the dead-letter channel once its server is back.
async fn a_dead_letter_link_that_is_away_gets_the_event_once_it_is_back(
    input_link: &str,
    away: Away,
) {
    let mut server = crate::links::PrivateServer::not_started(crate::nats::nats_server);
    if away == Away::Frozen {
        server.restart();
    }
    let rc = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        rc.path(),
        format!(
            "[messaging_link.input]\n{input_link}\n[messaging_link.dead]\ntype = \"nats\"\njetstream = true\nurl = \"nats://127.0.0.1:{}\"\npublish_timeout = \"1s\"\n",
            server.port
        ),
    )
    .unwrap();
    let base = unique("dlwait");
    let app = write_app(&format!(
        r#"spin_manifest_version = 2
[application]
name = "dlwait"
[application.trigger.messaging.channels]
inbox = {{ kind = "queue", link = "input", address = "{base}.inbox", max_attempts = 2, retry_delay = "100ms", max_retry_delay = "500ms", dead_letter = "dlq" }}
dlq = {{ kind = "queue", link = "dead", address = "{base}.dlq" }}
results = {{ kind = "topic", address = "{base}.results" }}
[[trigger.messaging]]
component = "probe"
subscriptions = ["inbox"]
publish = ["results"]
[component.probe]
source = "{{probe}}"
"#
    ));
    let provider = start(&[&app.manifest], Some(rc.path())).await;
    let mut results = watch(&provider, "dlwait", "results").await;
    tokio::time::sleep(Duration::from_millis(300)).await;
    if away == Away::Frozen {
        server.freeze();
    }
    let input = provider.link("input").unwrap().clone();
    put_raw(&input, &format!("{base}.inbox"), &event("w1", "probe.fail")).await;
    for _ in 0..2 {
        results.next_with_id("w1-attempt").await;
    }
    // The dead-letter link is away: the handler does not run again.
    results.expect_nothing(Duration::from_secs(3)).await;

    if away == Away::Frozen {
        server.kill();
    }
    server.restart();
    let dead = provider.link("dead").unwrap().clone();
    let dlq = format!("{base}.dlq");
    let mut letters = None;
    for _ in 0..100 {
        if dead.declare_queue(&dlq, &dlq).await.is_ok() {
            letters = Some(
                dead.subscribe(&dlq, SubscribeMode::Queue { group: dlq.clone() })
                    .await
                    .unwrap(),
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut letters = letters.expect("the dead-letter link reconnects");
    let (letter, _, ack) = tokio::time::timeout(Duration::from_secs(15), letters.next())
        .await
        .expect("the dead letter arrives once its link is back")
        .unwrap()
        .into_parts();
    ack.ack().await.unwrap();
    let (original, cause) = dead_letter_parts(&letter);
    assert_eq!(original.id, "w1");
    assert_eq!(cause["deadletterattempts"], "2");
    results.expect_nothing(Duration::from_millis(500)).await;
    provider.shutdown(Duration::from_secs(5)).await;
}

const REDELIVERS: &str = "type = \"nats\"\njetstream = true\n";
const CANNOT_REDELIVER: &str = "type = \"nats\"\n";

#[tokio::test]
async fn a_dead_letter_link_that_is_down_gets_the_event_once_it_is_back_from_a_broker_that_redelivers()
 {
    a_dead_letter_link_that_is_away_gets_the_event_once_it_is_back(REDELIVERS, Away::Down).await;
}

#[tokio::test]
async fn a_dead_letter_link_that_is_down_gets_the_event_once_it_is_back_from_a_broker_that_cannot()
{
    a_dead_letter_link_that_is_away_gets_the_event_once_it_is_back(CANNOT_REDELIVER, Away::Down)
        .await;
}

#[tokio::test]
async fn a_dead_letter_link_that_does_not_answer_gets_the_event_once_it_does_from_a_broker_that_redelivers()
 {
    a_dead_letter_link_that_is_away_gets_the_event_once_it_is_back(REDELIVERS, Away::Frozen).await;
}

#[tokio::test]
async fn a_dead_letter_link_that_does_not_answer_gets_the_event_once_it_does_from_a_broker_that_cannot()
 {
    a_dead_letter_link_that_is_away_gets_the_event_once_it_is_back(CANNOT_REDELIVER, Away::Frozen)
        .await;
}

#[test]
fn a_dead_letter_that_does_not_fit_or_has_nowhere_to_go_is_logged_in_full_once() {
    let app = write_app(
        r#"spin_manifest_version = 2
[application]
name = "logged"
[application.trigger.messaging.channels]
inbox = { kind = "queue", address = "logged.inbox", max_attempts = 2, retry_delay = "50ms", dead_letter = "dlq" }
plain = { kind = "queue", address = "logged.plain", max_attempts = 1 }
dlq = { kind = "topic", address = "logged.dlq", max_payload = 10 }
results = { kind = "topic", address = "logged.results" }
[[trigger.messaging]]
component = "probe"
subscriptions = ["inbox", "plain"]
publish = ["results"]
[component.probe]
source = "{probe}"
"#,
    );
    let (provider, url) = up(&[&app.manifest], &[]);
    for (channel, id) in [("inbox", "too-big"), ("plain", "no-dead-letter")] {
        cli_publish(&[
            "--url",
            &url,
            "logged",
            channel,
            "--type",
            "probe.fail",
            "--id",
            id,
            "--data",
            "a payload longer than ten bytes",
            "--content-type",
            "text/plain",
        ]);
    }
    let refused = provider.wait_for("stderr", "refused it");
    assert!(
        refused.contains("too-big") && refused.contains("a payload longer than ten bytes"),
        "{refused}"
    );
    let dropped = provider.wait_for("stderr", "declare `dead_letter`");
    assert!(
        dropped.contains("no-dead-letter") && dropped.contains("\"type\":\"probe.fail\""),
        "{dropped}"
    );
    std::thread::sleep(Duration::from_secs(2));
    let lines = provider.stderr.lock().unwrap().clone();
    for id in ["too-big", "no-dead-letter"] {
        let about = lines.iter().filter(|l| l.contains(id)).count();
        assert!(
            about <= 6,
            "{about} log lines about {id}: no loop\n{}",
            lines.join("\n")
        );
    }
}

#[test]
fn a_component_that_keeps_failing_is_slowed_until_it_succeeds() {
    let app = write_app(
        r#"spin_manifest_version = 2
[application]
name = "breaker"
[application.trigger.messaging.channels]
inbox = { kind = "queue", address = "breaker.inbox", max_attempts = 1 }
results = { kind = "topic", address = "breaker.results" }
[[trigger.messaging]]
component = "probe"
subscriptions = ["inbox"]
publish = ["results"]
max_in_flight = 1
[component.probe]
source = "{probe}"
"#,
    );
    let (provider, url) = up(&[&app.manifest], &[]);
    let post = |id: &str, ty: &str| {
        cli_publish(&["--url", &url, "breaker", "inbox", "--type", ty, "--id", id]);
    };
    for i in 0..6 {
        post(&format!("f{i}"), "probe.fail");
    }
    post("fine", "t");
    let opened = provider.wait_for("stderr", "failed on 5 new events in a row");
    assert!(opened.contains("new events one at a time"), "{opened}");
    provider.wait_for("stderr", "back to full speed");
    let lines = provider.stderr.lock().unwrap().clone();
    let at = |needle: &str| lines.iter().position(|l| l.contains(needle)).unwrap();
    assert!(
        at("failed on 5 new events in a row") < at("f5"),
        "the sixth event waited for the breaker"
    );
}

/// On a link that cannot take events back (it delivers at most once past
/// the broker), what the provider had taken when it is asked to stop is
/// handled before the stop completes: one handler at a time, 100 ms each,
/// twenty events buffered.
async fn what_was_taken_is_handled_before_the_stop(settings: &str) {
    let (app, rc, base) = app_on_link("stopping", settings, "queue");
    let text = std::fs::read_to_string(&app.manifest).unwrap().replace(
        "[component.probe]\nsource",
        "[component.probe]\nenvironment = { PROBE_DELAY_MS = \"100\" }\nsource",
    );
    let text = text.replace(
        "publish = [\"results\", \"out\"]",
        "publish = [\"results\", \"out\"]\nmax_in_flight = 1",
    );
    std::fs::write(&app.manifest, text).unwrap();
    let provider = start(&[&app.manifest], Some(rc.path())).await;
    let mut results = watch(&provider, "stopping", "results").await;
    let bus = crate::conformance::connect(settings).await;
    let inbox = format!("{base}.inbox");
    bus.declare_queue(&inbox, &inbox).await.unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    for i in 0..20 {
        put_raw(&bus, &inbox, &event(&format!("b{i}"), "t")).await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    let report = provider.shutdown(Duration::from_secs(10)).await;
    assert!(report.drained);
    let mut seen = std::collections::BTreeSet::new();
    while let Ok(Some(d)) = tokio::time::timeout(Duration::from_millis(200), results.0.next()).await
    {
        seen.insert(d.event().id.clone());
    }
    assert_eq!(
        seen.len(),
        20,
        "handled before the stop completed: {seen:?}"
    );
}

#[tokio::test]
async fn what_mqtt_had_taken_is_handled_before_the_stop() {
    what_was_taken_is_handled_before_the_stop("type = \"mqtt\"\n").await;
}

#[tokio::test]
async fn what_nats_had_taken_is_handled_before_the_stop() {
    what_was_taken_is_handled_before_the_stop("type = \"nats\"\n").await;
}
