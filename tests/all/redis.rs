//! The Redis link beyond the conformance suite: interoperation with
//! `redis-cli` (plain and CloudEvents messages, on pub/sub and on streams),
//! reconnection after a private server restart, two processes sharing a
//! stream queue.

use crate::links::{PrivateServer, app_on, reconnects, two_processes_share_a_queue};
use crate::support::*;
use std::process::Command;
use std::time::Duration;

fn redis_cli(args: &[&str]) -> String {
    let out = Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", "6379"])
        .args(args)
        .output()
        .expect("redis-cli is installed");
    assert!(
        out.status.success(),
        "redis-cli {args:?}: {}",
        String::from_utf8_lossy(&out.stderr)
    );
    String::from_utf8(out.stdout).unwrap()
}

/// A private Redis that keeps nothing across a restart.
pub fn redis_server(port: u16, dir: &std::path::Path) -> Command {
    redis_server_appending(port, dir, "no")
}

/// A private Redis that keeps its data across a restart: it writes its
/// append-only file before it answers, so a killed process loses nothing it
/// acknowledged (a machine crash could lose a second's worth).
pub fn redis_server_persistent(port: u16, dir: &std::path::Path) -> Command {
    let mut c = redis_server_appending(port, dir, "yes");
    c.args(["--appendfsync", "everysec"]);
    c
}

fn redis_server_appending(port: u16, dir: &std::path::Path, appendonly: &str) -> Command {
    let mut c = Command::new("redis-server");
    c.args([
        "--bind",
        "127.0.0.1",
        "--port",
        &port.to_string(),
        "--save",
        "",
    ])
    .args(["--appendonly", appendonly, "--dir"])
    .arg(dir);
    c
}

#[tokio::test]
async fn redis_cli_publishes_plain_and_cloudevents_and_reads_ours() {
    let base = unique("interop");
    let rc = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(rc.path(), "[messaging_link.bus]\ntype = \"redis\"\n").unwrap();
    let app = write_app(&format!(
        r#"spin_manifest_version = 2
[application]
name = "redisapp"
[application.trigger.messaging.channels]
inbox = {{ kind = "queue", address = "{base}.inbox" }}
results = {{ kind = "topic", address = "{base}.results" }}
feed = {{ kind = "topic", link = "bus", address = "{base}.feed" }}
jobs = {{ kind = "queue", link = "bus", address = "{base}.jobs" }}
out = {{ kind = "queue", link = "bus", address = "{base}.out" }}
[[trigger.messaging]]
component = "probe"
subscriptions = ["inbox", "feed", "jobs"]
publish = ["results", "out"]
[component.probe]
source = "{{probe}}"
"#
    ));
    let provider = start(&[&app.manifest], Some(rc.path())).await;
    let mut results = watch(&provider, "redisapp", "results").await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    // Pub/sub: a plain payload and a structured CloudEvent.
    redis_cli(&["PUBLISH", &format!("{base}.feed"), "plain text"]);
    let structured = r#"{"specversion":"1.0","id":"cli-structured","source":"urn:redis-cli","type":"cli.structured","datacontenttype":"application/json","data":{"k":[1,2]}}"#;
    redis_cli(&["PUBLISH", &format!("{base}.feed"), structured]);
    // Streams: a plain entry and a binary-mode CloudEvent.
    redis_cli(&[
        "XADD",
        &format!("{base}.jobs"),
        "*",
        "sku",
        "A1",
        "qty",
        "2",
    ]);
    redis_cli(&[
        "XADD",
        &format!("{base}.jobs"),
        "*",
        "ce-specversion",
        "1.0",
        "ce-id",
        "cli-binary",
        "ce-source",
        "urn:redis-cli",
        "ce-type",
        "cli.binary",
        "ce-datacontenttype",
        "text/plain",
        "ce-clitag",
        "x y",
        "data",
        "stream data",
    ]);
    let mut got = std::collections::BTreeMap::new();
    for _ in 0..4 {
        let e = results.next("an event from redis-cli").await;
        got.insert(
            e.data
                .clone()
                .map(|d| String::from_utf8_lossy(&d).into_owned())
                .unwrap_or_default(),
            e,
        );
    }
    let plain = &got["plain text"];
    assert_eq!(plain.ty, messaging_provider::cloudevents::PLAIN_TYPE);
    assert_eq!(
        plain.source,
        format!("urn:trigger-messaging:bus:{base}.feed")
    );
    let s = &got[r#"{"k":[1,2]}"#];
    assert_eq!(
        (s.id.as_str(), s.ty.as_str()),
        ("cli-structured", "cli.structured")
    );
    let fields: serde_json::Value =
        serde_json::from_str(got.keys().find(|k| k.contains("sku")).unwrap()).unwrap();
    assert_eq!(fields, serde_json::json!({"sku": "A1", "qty": "2"}));
    let b = &got["stream data"];
    assert_eq!(
        (b.id.as_str(), b.extension("clitag")),
        ("cli-binary", Some("x y"))
    );
    assert_eq!(b.datacontenttype.as_deref(), Some("text/plain"));

    // What the guest publishes to a queue channel is a stream entry redis-cli can read.
    assert_eq!(
        forward(&provider, "redisapp", &mut results, b, "fwd", "queue:out")
            .await
            .0,
        "ok"
    );
    let entry = redis_cli(&["XRANGE", &format!("{base}.out"), "-", "+"]);
    for expected in [
        "ce-id\nfwd",
        "ce-type\nprobe.item",
        "ce-datacontenttype\ntext/plain",
        "data\nstream data",
    ] {
        assert!(entry.contains(expected), "{expected:?} not in\n{entry}");
    }
}

#[tokio::test]
async fn redis_starts_without_its_server_and_recovers_from_a_restart() {
    let server = PrivateServer::not_started(redis_server);
    let settings = format!(
        "type = \"redis\"\nurl = \"redis://127.0.0.1:{}\"\npublish_timeout = \"1s\"\n",
        server.port
    );
    reconnects(server, &settings).await;
}

#[tokio::test]
async fn every_redis_subscription_resumes_after_restarts() {
    let server = PrivateServer::start(redis_server);
    let settings = format!(
        "type = \"redis\"\nurl = \"redis://127.0.0.1:{}\"\npublish_timeout = \"1s\"\n",
        server.port
    );
    crate::links::every_subscription_resumes_after_restarts(server, &settings).await;
}

#[tokio::test]
async fn a_redis_outage_uses_up_no_attempts() {
    let server = PrivateServer::not_started(redis_server_persistent);
    let settings = format!(
        "type = \"redis\"\nurl = \"redis://127.0.0.1:{}\"\npublish_timeout = \"1s\"\n",
        server.port
    );
    crate::links::a_broker_outage_uses_up_no_attempts(server, &settings).await;
}

#[tokio::test]
async fn two_processes_share_a_redis_stream_queue() {
    two_processes_share_a_queue("type = \"redis\"\n", false).await;
}

#[test]
fn an_address_cannot_be_both_a_topic_and_a_queue() {
    let base = unique("clash");
    let (app, rc) = app_on("type = \"redis\"\n", &base);
    let text = std::fs::read_to_string(&app.manifest)
        .unwrap()
        .replace(&format!("{base}.out"), &format!("{base}.feed"));
    let text = text.replace("out = { kind = \"topic\"", "out = { kind = \"queue\"");
    std::fs::write(&app.manifest, text).unwrap();
    let mut running = run(&[
        "up",
        "-f",
        app.manifest.to_str().unwrap(),
        "--runtime-config-file",
        rc.path().to_str().unwrap(),
    ]);
    assert_eq!(running.wait_exit(Duration::from_secs(30)), 1);
    running.wait_for(
        "stderr",
        "is used both as a topic (pub/sub) and as a queue (stream)",
    );
}

#[tokio::test]
async fn an_address_nobody_declared_is_refused_rather_than_guessed() {
    let link = crate::conformance::connect("type = \"redis\"\n").await;
    let address = unique("undeclared");
    let err = link.publish(&address, &event("e1", "t")).await.unwrap_err();
    assert!(err.to_string().contains("is not declared"), "{err}");
    let err = link
        .subscribe(&address, messaging_provider::broker::SubscribeMode::Topic)
        .await
        .err()
        .expect("refused");
    assert!(err.to_string().contains("is not declared"), "{err}");
    link.declare_queue(&address, &address).await.unwrap();
    link.publish(&address, &event("e2", "t")).await.unwrap();
    let len = redis_cli(&["XLEN", &address]);
    assert_eq!(len.trim(), "1", "the event went to the stream");
}
