//! The wasm host: every function of `pub` and `sub` through a real guest,
//! every error case the host produces, traps, timeouts, WASI grants and the
//! compiled-code cache.

use crate::support::*;
use messaging_provider::cloudevents::Event;
use messaging_provider::host::{CacheSetting, Host, HostOptions};
use std::time::Duration;

fn command(id: &str, ty: &str, subject: &str) -> Event {
    let mut e = event(id, ty);
    e.subject = Some(subject.into());
    e
}

fn mutate(mut e: Event, how: &str) -> Event {
    e.extensions.push(("mutate".into(), how.into()));
    e
}

#[tokio::test]
async fn publish_delivers_the_event_to_the_channel() {
    let app = probe_app(
        "pub",
        r#"out = { kind = "topic" }"#,
        r#"publish = ["results", "out"]"#,
    );
    let provider = start(&[&app.manifest], None).await;
    let mut results = watch(&provider, "pub", "results").await;
    let mut out = watch(&provider, "pub", "out").await;

    let mut cmd = command("p1", "probe.publish", "topic:out");
    cmd.data = Some(b"payload".to_vec());
    assert_eq!(
        ask(&provider, "pub", &mut results, cmd).await,
        ("ok".into(), "".into())
    );
    let item = out.next("the published item").await;
    assert_eq!((item.id.as_str(), item.ty.as_str()), ("p1", "probe.item"));
    assert_eq!(item.data.as_deref(), Some(&b"payload"[..]));
}

#[tokio::test]
async fn events_reach_the_guest_and_come_back_with_every_attribute() {
    let app = probe_app("fidelity", "", r#"publish = ["results"]"#);
    let provider = start(&[&app.manifest], None).await;
    let mut results = watch(&provider, "fidelity", "results").await;
    let mut e = event("full-1", "com.example.full");
    e.data = Some(vec![0, 1, 2, 255, b'{']);
    e.datacontenttype = Some("application/octet-stream".into());
    e.dataschema = Some("https://example.com/schema".into());
    e.subject = Some("a subject".into());
    e.time = Some("2024-05-06T07:08:09.123456+02:00".into());
    e.extensions = vec![
        ("traceparent".into(), "00-abc-def-01".into()),
        ("zz".into(), "last".into()),
    ];
    send(&provider, "fidelity", "inbox", e.clone()).await;
    assert_eq!(results.next_with_id("full-1").await, e);
}

#[tokio::test]
async fn publish_checks_declaration_then_permission_then_format_then_size() {
    let app = probe_app(
        "checks",
        r#"out = { kind = "topic", max_payload = 10 }
secret = { kind = "topic" }"#,
        r#"publish = ["results", "out"]"#,
    );
    let provider = start(&[&app.manifest], None).await;
    let mut results = watch(&provider, "checks", "results").await;
    let cases = [
        (
            command("c1", "probe.publish", "topic:nowhere"),
            "queue-or-topic-not-found",
            "declares no topic `nowhere`",
        ),
        (
            command("c2", "probe.publish", "queue:out"),
            "queue-or-topic-not-found",
            "declared as a topic, not a queue",
        ),
        // Undeclared wins over an invalid event.
        (
            mutate(command("c3", "probe.publish", "topic:nowhere"), "empty-id"),
            "queue-or-topic-not-found",
            "",
        ),
        (
            command("c4", "probe.publish", "topic:secret"),
            "insufficient-permissions",
            "may not publish to `secret`",
        ),
        // Permission wins over an invalid event.
        (
            mutate(command("c5", "probe.publish", "topic:secret"), "bad-time"),
            "insufficient-permissions",
            "",
        ),
        (
            mutate(
                command("c6", "probe.publish", "topic:out"),
                "bad-specversion",
            ),
            "unsupported-message-format",
            "specversion",
        ),
        (
            mutate(command("c7", "probe.publish", "topic:out"), "empty-id"),
            "unsupported-message-format",
            "`id`",
        ),
        (
            mutate(command("c8", "probe.publish", "topic:out"), "empty-source"),
            "unsupported-message-format",
            "`source`",
        ),
        (
            mutate(command("c9", "probe.publish", "topic:out"), "bad-time"),
            "unsupported-message-format",
            "RFC 3339",
        ),
        (
            mutate(
                command("c10", "probe.publish", "topic:out"),
                "bad-extension",
            ),
            "unsupported-message-format",
            "Not-Valid",
        ),
        (
            mutate(command("c11", "probe.publish", "topic:out"), "size:11"),
            "payload-too-large",
            "channel limit of 10 bytes",
        ),
        (
            mutate(command("c12", "probe.publish", "topic:out"), "size:10"),
            "ok",
            "",
        ),
    ];
    for (cmd, case, text) in cases {
        let id = cmd.id.clone();
        let (got_case, message) = ask(&provider, "checks", &mut results, cmd).await;
        assert_eq!(got_case, case, "{id}: {message}");
        assert!(
            message.contains(text),
            "{id}: {message:?} should mention {text:?}"
        );
    }
}

#[tokio::test]
async fn publish_reports_the_link_limit_a_full_queue_and_a_closed_link() {
    let rc = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(rc.path(), "[messaging_link.tight]\ntype = \"embedded\"\ncapacity = 1\npublish_timeout = \"2s\"\nmax_payload = 5\n").unwrap();
    let app = probe_app(
        "limits",
        r#"jam = { kind = "queue", link = "tight" }"#,
        r#"publish = ["results", "jam"]"#,
    );
    let provider = start(&[&app.manifest], Some(rc.path())).await;
    let mut results = watch(&provider, "limits", "results").await;

    let big = mutate(command("l1", "probe.publish", "queue:jam"), "size:6");
    let (case, message) = ask(&provider, "limits", &mut results, big).await;
    assert_eq!(case, "payload-too-large", "{message}");
    assert!(message.contains("link limit of 5 bytes"), "{message}");

    // `jam` has no consumer: the first event fills its one slot, the second waits 2 s and fails.
    assert_eq!(
        ask(
            &provider,
            "limits",
            &mut results,
            command("l2", "probe.publish", "queue:jam")
        )
        .await
        .0,
        "ok"
    );
    let (case, message) = ask(
        &provider,
        "limits",
        &mut results,
        command("l3", "probe.publish", "queue:jam"),
    )
    .await;
    assert_eq!(case, "delivery-failed", "{message}");
    assert!(message.contains("stayed full"), "{message}");

    // A publish waiting for room when the link goes down: connection lost.
    let mut slow = command("l4", "probe.publish", "queue:jam");
    slow.source = "urn:slow".into();
    let link = provider.link("tight").unwrap().clone();
    send(&provider, "limits", "inbox", slow).await;
    tokio::time::sleep(Duration::from_millis(500)).await;
    link.close().await;
    let (case, message) = outcome(&results.next_with_id("l4-result").await);
    assert_eq!(case, "connection-lost", "{message}");

    // Once the link is down, publishing fails fast.
    let (case, message) = ask(
        &provider,
        "limits",
        &mut results,
        command("l5", "probe.publish", "queue:jam"),
    )
    .await;
    assert_eq!(case, "service-unavailable", "{message}");
}

#[tokio::test]
async fn subscribe_pushes_until_unsubscribe_and_tokens_are_per_app() {
    let app = probe_app(
        "subs",
        r#"news = { kind = "topic" }
jobs = { kind = "queue" }
private = { kind = "topic" }"#,
        r#"publish = ["results"]
subscribe = ["news", "jobs"]"#,
    );
    let other = probe_app("other", "", r#"publish = ["results"]"#);
    let provider = start(&[&app.manifest, &other.manifest], None).await;
    let mut results = watch(&provider, "subs", "results").await;

    let (case, token) = ask(
        &provider,
        "subs",
        &mut results,
        command("s1", "probe.subscribe", "topic:news"),
    )
    .await;
    assert_eq!(case, "ok", "{token}");
    assert!(!token.is_empty());
    assert_eq!(provider.app("subs").unwrap().dynamic_subscriptions(), 1);
    send(&provider, "subs", "news", event("n1", "news.item")).await;
    results.next_with_id("n1").await;

    // A foreign app cannot end it, nor can an unknown token.
    let mut other_results = watch(&provider, "other", "results").await;
    let mut stop = event("o1", "probe.unsubscribe");
    stop.data = Some(token.clone().into_bytes());
    let (case, message) = ask(&provider, "other", &mut other_results, stop).await;
    assert_eq!(case, "queue-or-topic-not-found", "{message}");
    assert!(message.contains("no subscription with token"), "{message}");

    let mut stop = event("s2", "probe.unsubscribe");
    stop.data = Some(token.into_bytes());
    assert_eq!(
        ask(&provider, "subs", &mut results, stop.clone()).await.0,
        "ok"
    );
    assert_eq!(provider.app("subs").unwrap().dynamic_subscriptions(), 0);
    stop.id = "s3".into();
    assert_eq!(
        ask(&provider, "subs", &mut results, stop).await.0,
        "queue-or-topic-not-found"
    );

    send(&provider, "subs", "news", event("n2", "news.item")).await;
    results.expect_nothing(Duration::from_millis(500)).await;

    let (case, m) = ask(
        &provider,
        "subs",
        &mut results,
        command("s4", "probe.subscribe", "topic:private"),
    )
    .await;
    assert_eq!(case, "insufficient-permissions", "{m}");
    let (case, m) = ask(
        &provider,
        "subs",
        &mut results,
        command("s5", "probe.subscribe", "topic:none"),
    )
    .await;
    assert_eq!(case, "queue-or-topic-not-found", "{m}");
    let (case, m) = ask(
        &provider,
        "subs",
        &mut results,
        command("s6", "probe.subscribe", "topic:jobs"),
    )
    .await;
    assert_eq!(case, "queue-or-topic-not-found", "{m}");
    let (case, m) = ask(
        &provider,
        "subs",
        &mut results,
        command("s7", "probe.subscribe", "queue:jobs"),
    )
    .await;
    assert_eq!(case, "ok", "{m}");
}

/// Starts a provider whose handlers may run for `timeout` only.
async fn start_with_handler_timeout(
    manifest: &std::path::Path,
    timeout: Duration,
) -> messaging_provider::Provider {
    let provider = messaging_provider::Provider::load(messaging_provider::ProviderOptions {
        manifests: vec![manifest.to_path_buf()],
        host: HostOptions {
            handler_timeout: timeout,
            ..test_host()
        },
        ..Default::default()
    })
    .await
    .unwrap();
    provider.start().await.unwrap();
    provider
}

#[tokio::test]
async fn a_trap_or_a_runaway_guest_does_not_stop_the_next_message() {
    let app = probe_app("faults", "", r#"publish = ["results"]"#);
    let text = std::fs::read_to_string(&app.manifest).unwrap().replace(
        "kind = \"queue\", address",
        "kind = \"queue\", max_attempts = 1, address",
    );
    std::fs::write(&app.manifest, text).unwrap();
    let provider = start_with_handler_timeout(&app.manifest, Duration::from_millis(500)).await;
    let mut results = watch(&provider, "faults", "results").await;
    send(&provider, "faults", "inbox", event("t1", "probe.trap")).await;
    send(&provider, "faults", "inbox", event("t2", "probe.spin")).await;
    send(&provider, "faults", "inbox", event("t3", "after.faults")).await;
    results.next_with_id("t3").await;
}

#[tokio::test]
async fn a_guest_waiting_in_a_host_call_is_stopped_at_the_handler_timeout() {
    // A sleeping guest runs no wasm, so no epoch check stops it: the
    // timeout around the whole call does.
    let app = probe_app(
        "sleepy",
        r#"dlq = { kind = "topic", address = "sleepy.dlq" }"#,
        r#"publish = ["results"]"#,
    );
    let text = std::fs::read_to_string(&app.manifest).unwrap().replace(
        "kind = \"queue\", address",
        "kind = \"queue\", max_attempts = 1, dead_letter = \"dlq\", address",
    );
    std::fs::write(&app.manifest, text).unwrap();
    let provider = start_with_handler_timeout(&app.manifest, Duration::from_millis(500)).await;
    let mut dlq = watch(&provider, "sleepy", "dlq").await;
    let mut long_sleep = event("zz", "probe.sleep");
    long_sleep.data = Some(b"60000".to_vec());
    let sent = std::time::Instant::now();
    send(&provider, "sleepy", "inbox", long_sleep).await;
    let (_, cause) = dead_letter_parts(&dlq.next("the timed-out event").await);
    assert!(
        cause["deadlettererror"].contains("longer than the handler timeout of 500ms"),
        "{cause:?}"
    );
    assert!(
        sent.elapsed() < Duration::from_secs(5),
        "stopped after {:?}",
        sent.elapsed()
    );
}

#[tokio::test]
async fn guests_get_only_declared_environment_and_no_files() {
    let app = probe_app("wasi", "", r#"publish = ["results"]"#);
    let text =
        std::fs::read_to_string(&app.manifest).unwrap() + "environment = { GREETING = \"hi\" }\n";
    std::fs::write(&app.manifest, text).unwrap();
    let provider = start(&[&app.manifest], None).await;
    let mut results = watch(&provider, "wasi", "results").await;
    let (case, report) = ask(
        &provider,
        "wasi",
        &mut results,
        event("w1", "probe.inspect"),
    )
    .await;
    assert_eq!(case, "ok");
    assert_eq!(report, "env=[GREETING=hi] files=hidden");
}

#[tokio::test]
async fn compiled_components_are_cached_across_restarts() {
    let dir = tempfile::tempdir().unwrap();
    let config = dir.path().join("cache.toml");
    std::fs::write(
        &config,
        format!("[cache]\ndirectory = {:?}\n", dir.path().join("cache")),
    )
    .unwrap();
    let options = || HostOptions {
        cache: CacheSetting::File(config.clone()),
        ..test_host()
    };
    let probe = &guests().probe;

    let first = Host::new(options()).unwrap();
    first.prepare(probe).unwrap();
    assert_eq!(first.cache_hits(), Some(0));
    drop(first);
    let second = Host::new(options()).unwrap();
    second.prepare(probe).unwrap();
    assert_eq!(second.cache_hits(), Some(1), "a restart must not recompile");
}

#[test]
fn a_component_importing_what_the_host_lacks_is_refused_naming_each_import() {
    let host = Host::new(test_host()).unwrap();
    let error = match host.prepare(&guests().unhosted) {
        Ok(_) => panic!("a component with unhosted imports was prepared"),
        Err(e) => format!("{e:#}"),
    };
    assert!(
        error.contains("imports what this host does not provide"),
        "{error}"
    );
    assert!(
        error.contains("acme:gadget/gadget@1.0.0: not hosted by trigger-messaging"),
        "{error}"
    );
    assert!(
        error.contains(
            "wasi:keyvalue/store@0.2.0-draft: this host provides wasi:keyvalue@0.2.0-draft2"
        ),
        "{error}"
    );
    // What the probe imports (wasi:http, wasi:keyvalue, wasi:config, Spin's
    // variables and key-value) is all hosted.
    host.prepare(&guests().probe).unwrap();
}

#[test]
fn guest_output_reaches_the_console_with_no_log_filter_set() {
    let app = probe_app("chatty-default", "", r#"publish = ["results"]"#);
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut command = std::process::Command::new(env!("CARGO_BIN_EXE_trigger-messaging"));
    command
        .args([
            "up",
            "-f",
            app.manifest.to_str().unwrap(),
            "--messaging-listen",
            &listen,
        ])
        .env_remove("RUST_LOG")
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped());
    let mut running = Running::adopt(command.spawn().unwrap());
    running.wait_for("stdout", "Ready");
    cli_publish(&[
        "--url",
        &format!("http://{listen}"),
        "chatty-default",
        "inbox",
        "--type",
        "note",
        "--id",
        "n-1",
    ]);
    running.wait_for("stdout", "[chatty-default/probe] probe got n-1 (note)");
    running.terminate();
    assert_eq!(running.wait_exit(Duration::from_secs(20)), 0);
}
