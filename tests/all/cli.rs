//! The `trigger-messaging` binary as users run it: `up` with its start-up
//! summary, guest output in the log, `publish` and `tail`, graceful shutdown
//! on SIGTERM, and manifest errors on the command line.

use crate::support::*;
use std::time::{Duration, Instant};

#[test]
fn up_runs_the_relay_and_publish_and_tail_drive_it() {
    let relay = repo().join("sample-apps/relay/spin.toml");
    guests();
    let (mut provider, url) = up(&[&relay], &[]);
    let summary = provider.stdout.lock().unwrap().join("\n");
    for expected in [
        "App `relay`",
        "orders           queue on link `default` as `orders`, max payload 65536 bytes, dead letters to `rejected`",
        "shipments        topic on link `default` as `shipments`",
        "relay (",
        "subscriptions: orders",
        "may publish:   shipments",
        "default          embedded (in-process",
        "Listening on http://127.0.0.1:",
    ] {
        assert!(
            summary.contains(expected),
            "summary lacks {expected:?}:\n{summary}"
        );
    }

    let tail = run(&["tail", "--url", &url, "relay", "shipments", "-n", "1"]);
    tail.wait_for("stderr", "watching `shipments` of app `relay`");
    let mut publish = run(&[
        "publish",
        "--url",
        &url,
        "relay",
        "orders",
        "--type",
        "com.example.order.created",
        "--id",
        "cli-1",
        "--data",
        r#"{"sku":"A1"}"#,
        "--content-type",
        "application/json",
        "--ext",
        "tenant=blue",
    ]);
    assert_eq!(
        publish.wait_exit(Duration::from_secs(30)),
        0,
        "{}",
        publish.all()
    );
    let line = tail.wait_for("stdout", "cli-1-shipped");
    let shipped: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        shipped["data"],
        serde_json::json!({"order": {"sku": "A1"}, "status": "shipped"})
    );
    assert_eq!(shipped["tenant"], "blue");
    assert_eq!(shipped["relayedfrom"], "cli-1");

    // Guest stdout reaches the log, prefixed with app and component.
    provider.wait_for(
        "stderr",
        "[relay/relay] order cli-1 shipped as cli-1-shipped",
    );

    let mut refused = run(&["publish", "--url", &url, "relay", "nope", "--type", "t"]);
    assert_eq!(refused.wait_exit(Duration::from_secs(30)), 1);
    refused.wait_for("stderr", "404 Not Found");

    provider.terminate();
    assert_eq!(provider.wait_exit(Duration::from_secs(15)), 0);
    provider.wait_for("stderr", "stopped cleanly");
}

#[test]
fn sigterm_lets_in_flight_handlers_finish_within_the_deadline() {
    let app = probe_app("drain", "", r#"publish = ["results"]"#);
    let (mut provider, url) = up(&[&app.manifest], &["--shutdown-timeout", "10s"]);
    let tail = run(&["tail", "--url", &url, "drain", "results", "-n", "1"]);
    tail.wait_for("stderr", "watching");
    let mut publish = run(&[
        "publish",
        "--url",
        &url,
        "drain",
        "inbox",
        "--type",
        "probe.sleep",
        "--id",
        "slow",
        "--data",
        "1500",
    ]);
    assert_eq!(
        publish.wait_exit(Duration::from_secs(30)),
        0,
        "{}",
        publish.all()
    );
    provider.wait_for("stderr", "probe got slow");
    provider.terminate();
    // The handler finishes (and publishes) during the drain, then the process exits 0.
    tail.wait_for("stdout", "slow-result");
    assert_eq!(provider.wait_exit(Duration::from_secs(15)), 0);
    provider.wait_for("stderr", "stopped cleanly");
}

#[test]
fn sigterm_gives_up_on_handlers_past_the_deadline() {
    let app = probe_app("cut", "", r#"publish = ["results"]"#);
    let (mut provider, url) = up(&[&app.manifest], &["--shutdown-timeout", "300ms"]);
    let mut publish = run(&[
        "publish",
        "--url",
        &url,
        "cut",
        "inbox",
        "--type",
        "probe.sleep",
        "--id",
        "long",
        "--data",
        "20000",
    ]);
    assert_eq!(publish.wait_exit(Duration::from_secs(30)), 0);
    provider.wait_for("stderr", "probe got long");
    let asked = Instant::now();
    provider.terminate();
    assert_eq!(provider.wait_exit(Duration::from_secs(10)), 0);
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "the deadline bounds the stop"
    );
    provider.wait_for("stderr", "stopped with handlers still running");
}

#[test]
fn an_event_that_keeps_failing_without_a_dead_letter_is_logged_in_full() {
    let app = probe_app("droplog", "", r#"publish = ["results"]"#);
    let text = std::fs::read_to_string(&app.manifest).unwrap().replace(
        "kind = \"queue\", address",
        "kind = \"queue\", max_attempts = 2, address",
    );
    std::fs::write(&app.manifest, text).unwrap();
    let (provider, url) = up(&[&app.manifest], &[]);
    let mut publish = run(&[
        "publish",
        "--url",
        &url,
        "droplog",
        "inbox",
        "--type",
        "probe.fail",
        "--id",
        "doomed",
        "--data",
        "precious",
        "--content-type",
        "text/plain",
    ]);
    assert_eq!(publish.wait_exit(Duration::from_secs(30)), 0);
    let line = provider.wait_for("stderr", "event dropped after 2 failed attempts");
    assert!(
        line.contains(r#""id":"doomed""#) && line.contains("precious"),
        "{line}"
    );
    provider.wait_for(
        "stderr",
        "on-receive returned an error: unexpected error: asked to fail",
    );
}

#[test]
fn manifest_errors_stop_the_start_with_file_key_and_line() {
    let app = write_app(
        "spin_manifest_version = 2\n[application]\nname = \"bad\"\n[application.trigger.messaging.channels.orders]\nkind = \"queue\"\ncolour = \"red\"\n",
    );
    let mut running = run(&["up", "-f", app.manifest.to_str().unwrap()]);
    assert_eq!(running.wait_exit(Duration::from_secs(30)), 1);
    let expected = format!(
        "{}:6: `application.trigger.messaging.channels.orders.colour`: unknown field `colour`",
        app.manifest.display()
    );
    running.wait_for("stderr", &expected);
    assert!(running.stdout.lock().unwrap().is_empty(), "nothing starts");
}
