//! The AMQP link beyond the conformance suite: interoperation with a client
//! that is not ours (pika), and two processes sharing a queue.

use crate::links::{PrivateServer, app_on, reconnects, two_processes_share_a_queue};
use crate::support::*;
use std::process::Command;

fn pika(args: &[&str]) -> Command {
    interop("amqp_client.py", args)
}

#[tokio::test]
async fn a_foreign_client_publishes_plain_and_cloudevents_and_reads_ours() {
    let base = unique("interop");
    let (app, rc) = app_on("type = \"amqp\"\n", &base);
    let provider = start(&[&app.manifest], Some(rc.path())).await;
    let mut results = watch(&provider, "linkapp", "results").await;

    let reader = start_reader(pika(&["read", "messaging", &format!("{base}.out"), "1"]));

    assert!(
        pika(&["publish", "messaging", &format!("{base}.feed")])
            .status()
            .unwrap()
            .success()
    );
    let three = results.next_in_any_order(3).await;
    let plain = three.take(|e| e.ty == messaging_provider::cloudevents::PLAIN_TYPE);
    assert_eq!(
        plain.source,
        format!("urn:trigger-messaging:bus:{base}.feed")
    );
    assert_eq!(
        (plain.datacontenttype.as_deref(), plain.data.as_deref()),
        (Some("text/plain"), Some(&b"plain hello"[..]))
    );
    let binary = three.take(|e| e.id == "py-binary");
    assert_eq!(
        (binary.id.as_str(), binary.extension("pyext")),
        ("py-binary", Some("yes"))
    );
    assert_eq!(binary.datacontenttype.as_deref(), Some("application/json"));
    let structured = three.take(|e| e.id == "py-structured");
    assert_eq!(
        (structured.id.as_str(), structured.data.as_deref()),
        ("py-structured", Some(&br#"{"s": 1}"#[..])),
        "JSON data keeps its bytes"
    );

    assert_eq!(
        forward(
            &provider,
            "linkapp",
            &mut results,
            &binary,
            "fwd",
            "topic:out"
        )
        .await
        .0,
        "ok"
    );
    let out = reader.wait_with_output().unwrap();
    let line: serde_json::Value = serde_json::from_slice(&out.stdout).expect("pika read our event");
    assert_eq!(line["headers"]["cloudEvents_id"], "fwd");
    assert_eq!(line["headers"]["cloudEvents_type"], "probe.item");
    assert_eq!(line["content_type"], "application/json");
    assert_eq!(line["data"], r#"{"n":1}"#);
}

#[tokio::test]
async fn two_processes_share_an_amqp_queue() {
    two_processes_share_a_queue("type = \"amqp\"\n", true).await;
}

/// A RabbitMQ node of the test's own (run directly, not as a service), its
/// data, and what it leaves should it crash (MnesiaCore, erl_crash.dump),
/// in the test's directory.
pub fn rabbitmq(port: u16, dir: &std::path::Path) -> Command {
    let mut c = Command::new("/usr/lib/rabbitmq/bin/rabbitmq-server");
    let plugins = dir.join("enabled_plugins");
    let _ = std::fs::write(&plugins, "");
    c.env("RABBITMQ_NODENAME", format!("test{port}@localhost"))
        .env("RABBITMQ_NODE_PORT", port.to_string())
        .env(
            "RABBITMQ_DIST_PORT",
            (port as u32 + 10000).min(65000).to_string(),
        )
        .env("RABBITMQ_MNESIA_BASE", dir.join("mnesia"))
        .env("RABBITMQ_LOG_BASE", dir.join("log"))
        .env("RABBITMQ_ENABLED_PLUGINS_FILE", &plugins)
        .env("RABBITMQ_FEATURE_FLAGS_FILE", dir.join("feature_flags"))
        .env("RABBITMQ_PLUGINS_EXPAND_DIR", dir.join("plugins-expand"))
        .env("RABBITMQ_CONFIG_FILE", dir.join("none"))
        .env("HOME", dir)
        .current_dir(dir);
    c
}

#[tokio::test]
async fn amqp_starts_without_its_server_and_recovers_from_a_restart() {
    let server = PrivateServer::not_started(rabbitmq);
    let settings = format!(
        "type = \"amqp\"\nurl = \"amqp://guest:guest@127.0.0.1:{}/%2f\"\npublish_timeout = \"2s\"\n",
        server.port
    );
    reconnects(server, &settings).await;
}

#[tokio::test]
async fn every_amqp_subscription_resumes_after_restarts() {
    let server = PrivateServer::start(rabbitmq);
    let settings = format!(
        "type = \"amqp\"\nurl = \"amqp://guest:guest@127.0.0.1:{}/%2f\"\npublish_timeout = \"2s\"\n",
        server.port
    );
    crate::links::every_subscription_resumes_after_restarts(server, &settings).await;
}

#[tokio::test]
async fn a_queue_publish_no_queue_takes_fails_instead_of_vanishing() {
    let link = crate::conformance::connect("type = \"amqp\"\n").await;
    let address = unique("mandatory");
    link.declare_queue(&address, &address).await.unwrap();
    link.publish(&address, &event("kept", "t")).await.unwrap();
    // Deleted behind the link's back: the broker would drop the event.
    let out = std::process::Command::new("rabbitmqctl")
        .args(["delete_queue", &address])
        .output()
        .expect("rabbitmqctl is installed");
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let err = link
        .publish(&address, &event("dropped", "t"))
        .await
        .unwrap_err();
    assert!(
        matches!(&err, messaging_provider::broker::BrokerError::DeliveryFailed(m) if m.contains("no queue is bound")),
        "{err}"
    );
}

#[tokio::test]
async fn names_too_long_for_amqp_are_refused_not_a_panic() {
    let link = crate::conformance::connect("type = \"amqp\"\n").await;
    let address = unique("shortstr");
    link.declare_topic(&address).await.unwrap();
    // Extension names and the content type come from components; AMQP
    // carries them as short strings (255 bytes), on which lapin panics.
    let mut long_extension = event("long-ext", "t");
    long_extension
        .extensions
        .push(("x".repeat(300), "v".into()));
    let mut long_type = event("long-ct", "t");
    long_type.datacontenttype = Some(format!("text/{}", "x".repeat(300)));
    for too_long in [long_extension, long_type] {
        let err = link.publish(&address, &too_long).await.unwrap_err();
        assert!(
            matches!(&err, messaging_provider::broker::BrokerError::Format(m) if m.contains("AMQP allows 255")),
            "{err}"
        );
    }
    link.publish(&address, &event("fine", "t")).await.unwrap();
}
