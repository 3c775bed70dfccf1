//! Warm instances: an instance takes events one after another up to its
//! reuse count, an instance that trapped, timed out, ran out of memory or
//! (by default) returned an error is never used again, idle ones are
//! dropped after the idle timeout, and one component's instance state is
//! never visible to another component or app. In Rust (the probe) and in
//! Python (`tests/fixtures/probe-py`).

use crate::support::*;
use messaging_provider::Provider;
use std::time::Duration;

/// Which instance took an event, and how many events it had taken.
async fn instance(
    provider: &Provider,
    app: &str,
    channel: &str,
    results: &mut Watch,
    id: &str,
) -> (String, u64) {
    send(provider, app, channel, event(id, "probe.instance")).await;
    let report = results.next_with_id(&format!("{id}-result")).await;
    let text = String::from_utf8(report.data.unwrap()).unwrap();
    let (name, count) = text.split_once(' ').unwrap();
    (name.to_string(), count.parse().unwrap())
}

/// A probe app whose component takes one event at a time (so that each
/// event goes to the most recently used instance) with the extra trigger
/// keys given; failing events are not retried.
fn one_at_a_time(name: &str, keys: &str) -> AppDir {
    let app = probe_app(
        name,
        "",
        &format!("publish = [\"results\"]\nmax_in_flight = 1\n{keys}"),
    );
    let text = std::fs::read_to_string(&app.manifest).unwrap().replace(
        &format!("address = \"{name}.inbox\""),
        &format!("address = \"{name}.inbox\", max_attempts = 1"),
    );
    std::fs::write(&app.manifest, text).unwrap();
    app
}

#[tokio::test]
async fn an_instance_takes_events_up_to_its_reuse_count() {
    let app = one_at_a_time("reuse3", "max_instance_reuse_count = 3");
    let provider = start(&[&app.manifest], None).await;
    let mut results = watch(&provider, "reuse3", "results").await;
    let mut seen = Vec::new();
    for i in 0..7 {
        seen.push(instance(&provider, "reuse3", "inbox", &mut results, &format!("r{i}")).await);
    }
    let counts: Vec<u64> = seen.iter().map(|(_, n)| *n).collect();
    assert_eq!(
        counts,
        [1, 2, 3, 1, 2, 3, 1],
        "globals survive within an instance: {seen:?}"
    );
    let names: Vec<&str> = seen.iter().map(|(n, _)| n.as_str()).collect();
    assert!(names[0] == names[2] && names[3] == names[5], "{names:?}");
    assert!(
        names[0] != names[3] && names[3] != names[6] && names[0] != names[6],
        "{names:?}"
    );
    let (created, reused) = provider
        .app("reuse3")
        .unwrap()
        .instances("probe")
        .unwrap()
        .counts();
    assert_eq!((created, reused), (3, 4));
}

#[tokio::test]
async fn a_reuse_count_of_one_gives_every_event_a_fresh_instance() {
    let app = one_at_a_time("fresh", "max_instance_reuse_count = 1");
    let provider = start(&[&app.manifest], None).await;
    let mut results = watch(&provider, "fresh", "results").await;
    let mut names = std::collections::BTreeSet::new();
    for i in 0..5 {
        let (name, count) =
            instance(&provider, "fresh", "inbox", &mut results, &format!("f{i}")).await;
        assert_eq!(count, 1, "a fresh instance has seen no other event");
        names.insert(name);
    }
    assert_eq!(names.len(), 5);
    let instances = provider
        .app("fresh")
        .unwrap()
        .instances("probe")
        .unwrap()
        .clone();
    assert_eq!(instances.counts(), (5, 0));
    assert_eq!(
        instances.idle(),
        0,
        "an instance at its reuse count is not kept"
    );
}

/// Runs `misbehave` between two instance reports; returns whether the
/// second came from the same instance as the first.
async fn same_instance_after(
    app: &str,
    keys: &str,
    misbehave: messaging_provider::cloudevents::Event,
) -> bool {
    let dir = one_at_a_time(app, keys);
    let provider = start(&[&dir.manifest], None).await;
    let mut results = watch(&provider, app, "results").await;
    let (before, _) = instance(&provider, app, "inbox", &mut results, "before").await;
    send(&provider, app, "inbox", misbehave).await;
    // Every misbehaviour here ends its event (no retries): wait for the
    // failure to be handled, i.e. for the component to take the next one.
    let (after, count) = instance(&provider, app, "inbox", &mut results, "after").await;
    let same = before == after;
    assert_eq!(
        count,
        if same { 2 } else { 1 },
        "globals go with the instance"
    );
    same
}

#[tokio::test]
async fn an_instance_that_trapped_is_never_used_again() {
    assert!(!same_instance_after("trapped", "", event("traps", "probe.trap")).await);
}

#[tokio::test]
async fn an_instance_past_its_memory_limit_is_never_used_again() {
    let mut hog = event("hogs", "probe.hog");
    hog.data = Some(b"128".to_vec());
    assert!(!same_instance_after("hogged", "", hog).await);
}

#[tokio::test]
async fn an_instance_that_ran_past_the_handler_timeout_is_never_used_again() {
    // The tests' handler timeout is 5 s.
    let mut sleep = event("sleeps", "probe.sleep");
    sleep.data = Some(b"6000".to_vec());
    assert!(!same_instance_after("timedout", "", sleep).await);
}

#[tokio::test]
async fn an_instance_whose_handler_failed_is_replaced_unless_the_component_says_otherwise() {
    assert!(!same_instance_after("failed", "", event("fails", "probe.fail")).await);
    assert!(
        same_instance_after(
            "failedkept",
            "reuse_instance_after_error = true",
            event("fails", "probe.fail")
        )
        .await
    );
}

#[tokio::test]
async fn an_idle_instance_is_dropped_after_the_idle_timeout() {
    let app = one_at_a_time("idle", "idle_instance_timeout = \"300ms\"");
    let provider = start(&[&app.manifest], None).await;
    let mut results = watch(&provider, "idle", "results").await;
    let (first, _) = instance(&provider, "idle", "inbox", &mut results, "i1").await;
    let (soon, count) = instance(&provider, "idle", "inbox", &mut results, "i2").await;
    assert_eq!(
        (soon.as_str(), count),
        (first.as_str(), 2),
        "taken again within the idle timeout"
    );
    let instances = provider
        .app("idle")
        .unwrap()
        .instances("probe")
        .unwrap()
        .clone();
    let dropped = tokio::time::timeout(Duration::from_secs(3), async {
        while instances.idle() > 0 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
    })
    .await;
    assert!(dropped.is_ok(), "the idle instance was not dropped");
    let (later, count) = instance(&provider, "idle", "inbox", &mut results, "i3").await;
    assert_ne!(later, first);
    assert_eq!(count, 1);
}

#[tokio::test]
async fn no_component_or_app_sees_another_ones_instance_state() {
    // Two components of one app on the same compiled code, and a second app
    // of the same component: each counts only its own events.
    let text = |name: &str| {
        format!(
            r#"spin_manifest_version = 2
[application]
name = "{name}"
[application.trigger.messaging.channels]
inbox = {{ kind = "queue", address = "{name}.inbox" }}
other = {{ kind = "queue", address = "{name}.other" }}
results = {{ kind = "topic", address = "{name}.results" }}
[[trigger.messaging]]
component = "probe"
subscriptions = ["inbox"]
publish = ["results"]
max_in_flight = 1
[[trigger.messaging]]
component = "twin"
subscriptions = ["other"]
publish = ["results"]
max_in_flight = 1
[component.probe]
source = "{{probe}}"
[component.twin]
source = "{{probe}}"
"#
        )
    };
    let (one, two) = (write_app(&text("statea")), write_app(&text("stateb")));
    let provider = start(&[&one.manifest, &two.manifest], None).await;
    let mut results_a = watch(&provider, "statea", "results").await;
    let mut results_b = watch(&provider, "stateb", "results").await;
    let mut names = std::collections::BTreeSet::new();
    for i in 0..3 {
        let (name, count) = instance(
            &provider,
            "statea",
            "inbox",
            &mut results_a,
            &format!("a{i}"),
        )
        .await;
        assert_eq!(count, i + 1);
        names.insert(name);
    }
    for (app, channel) in [
        ("statea", "other"),
        ("stateb", "inbox"),
        ("stateb", "other"),
    ] {
        let results = if app == "statea" {
            &mut results_a
        } else {
            &mut results_b
        };
        let (name, count) = instance(
            &provider,
            app,
            channel,
            results,
            &format!("{app}-{channel}"),
        )
        .await;
        assert_eq!(count, 1, "{app}/{channel} saw another component's events");
        assert!(
            names.insert(name),
            "{app}/{channel} ran in another component's instance"
        );
    }
}

#[tokio::test]
async fn a_python_component_keeps_its_globals_within_an_instance_only() {
    let wasm = python_probe();
    let manifest = |name: &str, keys: &str| {
        write_app(&format!(
            r#"spin_manifest_version = 2
[application]
name = "{name}"
[application.trigger.messaging.channels]
inbox = {{ kind = "queue", address = "{name}.inbox" }}
results = {{ kind = "topic", address = "{name}.results" }}
[[trigger.messaging]]
component = "probe"
subscriptions = ["inbox"]
publish = ["results"]
max_in_flight = 1
{keys}
[component.probe]
source = "{}"
"#,
            wasm.display()
        ))
    };
    let (warm, fresh) = (
        manifest("pywarm", "max_instance_reuse_count = 2"),
        manifest("pyfresh", "max_instance_reuse_count = 1"),
    );
    let provider = start(&[&warm.manifest, &fresh.manifest], None).await;
    let mut warm_results = watch(&provider, "pywarm", "results").await;
    let mut fresh_results = watch(&provider, "pyfresh", "results").await;
    let mut seen = Vec::new();
    for i in 0..4 {
        seen.push(
            instance(
                &provider,
                "pywarm",
                "inbox",
                &mut warm_results,
                &format!("w{i}"),
            )
            .await,
        );
    }
    let counts: Vec<u64> = seen.iter().map(|(_, n)| *n).collect();
    assert_eq!(counts, [1, 2, 1, 2], "{seen:?}");
    assert_eq!(seen[0].0, seen[1].0);
    assert_ne!(seen[1].0, seen[2].0);
    for i in 0..2 {
        let (name, count) = instance(
            &provider,
            "pyfresh",
            "inbox",
            &mut fresh_results,
            &format!("p{i}"),
        )
        .await;
        assert_eq!(count, 1);
        assert!(
            seen.iter().all(|(n, _)| *n != name),
            "another app's instance"
        );
    }
}
