//! The one rule for what comes in (`cloudevents::inbound`), end to end on
//! every link: clients that are not ours (a raw NATS socket, redis-py, pika,
//! paho-mqtt; `tests/interop/hostile.py`) send malformed messages, bytes
//! that are not UTF-8 and invalid CloudEvents, then good events. Every good
//! event reaches the handler after them (the link is not broken, the queue
//! not stalled); every hostile one reaches the dead-letter channel whole,
//! with the reason, and never a handler.

use crate::support::*;
use messaging_provider::cloudevents::inbound::{MALFORMED_TYPE, METADATA};
use messaging_provider::dispatch::dead_letter::{ATTEMPTS, CHANNEL, INVALID};
use std::collections::BTreeSet;
use std::time::Duration;

/// Runs the hostile client (`{address}` in its arguments is the feed's
/// broker address) against an app whose `feed` channel (`kind`) is on a
/// link with `settings`, and checks where everything went.
async fn nothing_malformed_reaches_a_handler(settings: &str, kind: &str, client: &[&str]) {
    let address = unique("hostile");
    let rc = link_config("bus", settings);
    let app = write_app(&format!(
        r#"spin_manifest_version = 2
[application]
name = "hostile"
[application.trigger.messaging.channels]
feed = {{ kind = "{kind}", link = "bus", address = "{address}", dead_letter = "dlq" }}
dlq = {{ kind = "topic", address = "{address}.dlq" }}
results = {{ kind = "topic", address = "{address}.results" }}
[[trigger.messaging]]
component = "probe"
subscriptions = ["feed"]
publish = ["results"]
[component.probe]
source = "{{probe}}"
"#
    ));
    let provider = start(&[&app.manifest], Some(rc.path())).await;
    let mut results = watch(&provider, "hostile", "results").await;
    let mut dlq = watch(&provider, "hostile", "dlq").await;
    // Topic subscriptions see only what is sent after they are in place.
    tokio::time::sleep(Duration::from_millis(300)).await;

    let args: Vec<String> = client
        .iter()
        .map(|a| a.replace("{address}", &address))
        .collect();
    let args: Vec<&str> = args.iter().map(String::as_str).collect();
    let out = interop("hostile.py", &args).output().unwrap();
    assert!(
        out.status.success(),
        "the hostile client failed: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    let sent: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let names = |key: &str| -> BTreeSet<String> {
        sent[key]
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_str().unwrap().to_string())
            .collect()
    };
    let (hostile, good) = (names("hostile"), names("good"));
    assert!(hostile.len() >= 5, "{hostile:?}");

    let mut handled = std::collections::BTreeMap::new();
    while !good.iter().all(|id| handled.contains_key(id)) {
        let e = results.next("the good events, sent last").await;
        let data = String::from_utf8_lossy(e.data.as_deref().unwrap_or_default()).into_owned();
        assert!(
            !data.contains("hostile:"),
            "a malformed message reached the handler: {e:?}"
        );
        handled.insert(e.id.clone(), e);
    }
    if let Some(e) = handled.get("good-raw-utf8") {
        // Raw UTF-8 in metadata is taken as well as percent-encoding.
        assert_eq!(e.subject.as_deref(), Some("café ✓"));
    }

    let mut lettered = BTreeSet::new();
    while lettered != hostile {
        let letter = dlq.next("a dead letter for each hostile message").await;
        assert_eq!(letter.ty, MALFORMED_TYPE, "{letter:?}");
        let data = String::from_utf8_lossy(letter.data.as_deref().unwrap_or_default()).into_owned();
        let case = hostile
            .iter()
            .find(|case| data.contains(&format!("hostile:{case}")))
            .unwrap_or_else(|| panic!("a dead letter of no hostile case: {letter:?}"));
        let reason = letter.extension(INVALID).unwrap_or_default();
        assert!(!reason.is_empty(), "{case}: no reason in {letter:?}");
        assert_eq!(letter.extension(ATTEMPTS), Some("0"), "{case}");
        assert_eq!(letter.extension(CHANNEL), Some("feed"), "{case}");
        assert!(
            letter.validate().is_ok(),
            "{case}: the letter is valid CloudEvent"
        );
        assert!(lettered.insert(case.clone()), "{case} dead-lettered twice");
    }
    // Nothing else is on its way to the handler.
    results.expect_nothing(Duration::from_millis(500)).await;
}

const NATS: &str = "type = \"nats\"\nurl = \"nats://127.0.0.1:4222\"\n";
const JETSTREAM: &str = "type = \"nats\"\njetstream = true\nack_wait = \"2s\"\n";
const REDIS: &str = "type = \"redis\"\nurl = \"redis://127.0.0.1:6379\"\nclaim_after = \"2s\"\n";
const AMQP: &str = "type = \"amqp\"\nurl = \"amqp://guest:guest@127.0.0.1:5672/%2f\"\n";
const MQTT5: &str = "type = \"mqtt\"\nurl = \"mqtt://127.0.0.1:1883\"\n";
const MQTT311: &str = "type = \"mqtt\"\nurl = \"mqtt://127.0.0.1:1883\"\nversion = \"3.1.1\"\n";

#[tokio::test]
async fn nats_core_takes_any_header_bytes() {
    nothing_malformed_reaches_a_handler(NATS, "topic", &["nats", "4222", "{address}"]).await;
}

#[tokio::test]
async fn jetstream_takes_any_header_bytes() {
    nothing_malformed_reaches_a_handler(JETSTREAM, "queue", &["nats", "4222", "{address}"]).await;
}

#[tokio::test]
async fn redis_streams_take_any_field_bytes() {
    nothing_malformed_reaches_a_handler(REDIS, "queue", &["redis-stream", "{address}"]).await;
}

#[tokio::test]
async fn redis_pubsub_takes_any_payload() {
    nothing_malformed_reaches_a_handler(REDIS, "topic", &["redis-pubsub", "{address}"]).await;
}

#[tokio::test]
async fn amqp_takes_any_header_bytes() {
    nothing_malformed_reaches_a_handler(AMQP, "queue", &["amqp", "messaging", "{address}"]).await;
}

#[tokio::test]
async fn mqtt5_takes_any_properties() {
    nothing_malformed_reaches_a_handler(MQTT5, "topic", &["mqtt5", "{address}"]).await;
}

#[tokio::test]
async fn mqtt311_takes_any_payload() {
    nothing_malformed_reaches_a_handler(MQTT311, "topic", &["mqtt311", "{address}"]).await;
}

#[tokio::test]
async fn a_malformed_message_without_a_dead_letter_channel_is_logged_whole() {
    let address = unique("hostile");
    let rc = link_config("bus", NATS);
    let app = probe_app(
        "nodlq",
        &format!(r#"feed = {{ kind = "topic", link = "bus", address = "{address}" }}"#),
        r#"publish = ["results"]"#,
    );
    let text = std::fs::read_to_string(&app.manifest).unwrap().replace(
        r#"subscriptions = ["inbox"]"#,
        r#"subscriptions = ["inbox", "feed"]"#,
    );
    std::fs::write(&app.manifest, text).unwrap();
    let (mut up, _) = up(
        &[&app.manifest],
        &["--runtime-config-file", rc.path().to_str().unwrap()],
    );
    let out = interop("hostile.py", &["nats", "4222", &address])
        .output()
        .unwrap();
    assert!(out.status.success());
    // The body is in the logged event's `data_base64`.
    use base64::Engine as _;
    let body = base64::engine::general_purpose::STANDARD.encode("hostile:nats-value-not-utf8");
    let line = up.wait_for("stderr", &body);
    assert!(line.contains("without reaching a handler"), "{line}");
    assert!(
        line.contains("NATS headers do not parse"),
        "the reason: {line}"
    );
    assert!(line.contains(METADATA), "the headers: {line}");
    up.terminate();
    up.wait_exit(Duration::from_secs(10));
}

/// The CloudEvents SDKs with their defaults, as their documentation shows
/// them: Python's (current and legacy API, binary and structured mode,
/// posted and followed with `requests`) and JavaScript's (its own HTTP
/// emitter, both modes). Non-ASCII text in every string attribute and
/// extension, percent-encoded, raw UTF-8 or raw ISO-8859-1 as each sends it,
/// comes back exactly: 20 of 20.
#[test]
fn the_cloudevents_sdks_defaults_round_trip_through_the_endpoint() {
    let app = probe_app(
        "sdk",
        r#"notes = { kind = "topic" }"#,
        r#"publish = ["results"]"#,
    );
    let (mut provider, url) = up(&[&app.manifest], &[]);
    for script in ["ce_sdk.py", "ce_sdk.cjs"] {
        let args: &[&str] = match script {
            "ce_sdk.py" => &["round-trip", &url, "sdk", "notes", "20"],
            _ => &[&url, "sdk", "notes", "20"],
        };
        let out = interop(script, args).output().unwrap();
        let stdout = String::from_utf8_lossy(&out.stdout);
        assert!(
            out.status.success(),
            "{script}: {stdout}{}",
            String::from_utf8_lossy(&out.stderr)
        );
        let report: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
        assert_eq!(
            (report["sent"].as_u64(), report["events"].as_u64()),
            (Some(20), Some(20)),
            "{script}: {report}"
        );
    }
    provider.terminate();
    provider.wait_exit(Duration::from_secs(10));
}
