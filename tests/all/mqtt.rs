//! The MQTT link beyond the conformance suite: a flood that a default
//! Mosquitto would partly drop, interoperation with `mosquitto_pub` /
//! `mosquitto_sub`, reconnection after a private broker restart, and two
//! processes sharing a queue.

use crate::links::{PrivateServer, reconnects, two_processes_share_a_queue};
use crate::support::*;
use messaging_provider::broker::SubscribeMode;
use std::collections::HashSet;
use std::io::Write;
use std::process::{Command, Stdio};
use std::time::Duration;
use tokio::io::{AsyncBufReadExt, BufReader, Lines};

fn mosquitto(port: u16, _dir: &std::path::Path) -> Command {
    let mut c = Command::new("mosquitto");
    c.args(["-p", &port.to_string()]);
    c
}

/// 20,000 QoS 1 messages from `mosquitto_pub`, as fast as it can send them,
/// to a queue channel whose consumers are wasm handlers: every one arrives.
#[tokio::test]
async fn a_qos1_flood_loses_nothing() {
    let base = format!("flood/{}", &uuid::Uuid::new_v4().simple().to_string()[..10]);
    let link = crate::conformance::connect("type = \"mqtt\"\n").await;
    let mut sub = link
        .subscribe(
            &base,
            SubscribeMode::Queue {
                group: "flood".into(),
            },
        )
        .await
        .unwrap();
    let n = 20_000;
    let lines: String = (0..n).map(|i| format!("m{i}\n")).collect();
    let mut publisher = Command::new("mosquitto_pub")
        .args([
            "-h",
            "127.0.0.1",
            "-p",
            "1883",
            "-q",
            "1",
            "-t",
            &base,
            "-l",
        ])
        .stdin(Stdio::piped())
        .spawn()
        .expect("mosquitto_pub is installed");
    publisher
        .stdin
        .take()
        .unwrap()
        .write_all(lines.as_bytes())
        .unwrap();
    let mut seen = HashSet::new();
    while seen.len() < n {
        let d = tokio::time::timeout(Duration::from_secs(30), sub.next())
            .await
            .unwrap_or_else(|_| panic!("only {} of {n} arrived", seen.len()))
            .unwrap();
        let (e, _, ack) = d.into_parts();
        ack.ack().await.unwrap();
        // Hand each event on slowly at first, as a busy handler would.
        if seen.len() < 50 {
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        seen.insert(String::from_utf8(e.data.unwrap()).unwrap());
    }
    assert!(publisher.wait().unwrap().success());
    assert_eq!(seen.len(), n);
}

#[tokio::test]
async fn mosquitto_clients_publish_plain_and_cloudevents_and_read_ours() {
    let base = unique("interop");
    let (app, rc) = crate::links::app_on("type = \"mqtt\"\n", &base);
    let provider = start(&[&app.manifest], Some(rc.path())).await;
    let mut results = watch(&provider, "linkapp", "results").await;
    // `-d` prints the SUBACK, so the test knows the reader is subscribed
    // before anything is forwarded; no timing guess, however loaded the
    // machine. `stdbuf` makes its stdout, a pipe here, line-buffered.
    let mut reader = tokio::process::Command::new("stdbuf")
        .args([
            "-oL",
            "mosquitto_sub",
            "-h",
            "127.0.0.1",
            "-t",
            &format!("{base}.out"),
            "-C",
            "1",
            "-d",
            "-V",
            "mqttv5",
            "-F",
            "%P|%C|%p",
        ])
        .stdout(Stdio::piped())
        .kill_on_drop(true)
        .spawn()
        .unwrap();
    let mut lines = BufReader::new(reader.stdout.take().unwrap()).lines();
    let mut out = String::new();
    let read_until = async |lines: &mut Lines<BufReader<tokio::process::ChildStdout>>,
                            out: &mut String,
                            what: &str| {
        tokio::time::timeout(Duration::from_secs(60), async {
            while let Some(line) = lines.next_line().await.unwrap() {
                out.push_str(&line);
                out.push('\n');
                if line.contains(what) {
                    return;
                }
            }
        })
        .await
        .unwrap_or_else(|_| panic!("mosquitto_sub printed no {what:?} in 60 s: {out}"));
    };
    read_until(&mut lines, &mut out, "SUBACK").await;
    let publish = |args: &[&str]| {
        let status = Command::new("mosquitto_pub")
            .args([
                "-h",
                "127.0.0.1",
                "-q",
                "1",
                "-t",
                &format!("{base}.feed"),
                "-V",
                "mqttv5",
            ])
            .args(args)
            .status()
            .unwrap();
        assert!(status.success());
    };
    publish(&[
        "-m",
        "plain hello",
        "-D",
        "publish",
        "content-type",
        "text/plain",
    ]);
    publish(&[
        "-m",
        "binary data",
        "-D",
        "publish",
        "content-type",
        "text/plain",
        "-D",
        "publish",
        "user-property",
        "specversion",
        "1.0",
        "-D",
        "publish",
        "user-property",
        "id",
        "cli-binary",
        "-D",
        "publish",
        "user-property",
        "source",
        "urn:mosquitto",
        "-D",
        "publish",
        "user-property",
        "type",
        "cli.binary",
        "-D",
        "publish",
        "user-property",
        "cliext",
        "yes",
    ]);
    let doc = r#"{"specversion":"1.0","id":"cli-structured","source":"urn:mosquitto","type":"cli.structured","data":[1]}"#;
    publish(&[
        "-m",
        doc,
        "-D",
        "publish",
        "content-type",
        "application/cloudevents+json",
    ]);

    let three = results.next_in_any_order(3).await;
    let plain = three.take(|e| e.ty == messaging_provider::cloudevents::PLAIN_TYPE);
    let binary = three.take(|e| e.id == "cli-binary");
    let structured = three.take(|e| e.id == "cli-structured");
    assert_eq!(plain.ty, messaging_provider::cloudevents::PLAIN_TYPE);
    assert_eq!(
        plain.source,
        format!("urn:trigger-messaging:bus:{base}.feed")
    );
    assert_eq!(
        (plain.datacontenttype.as_deref(), plain.data.as_deref()),
        (Some("text/plain"), Some(&b"plain hello"[..]))
    );
    assert_eq!(
        (binary.id.as_str(), binary.extension("cliext")),
        ("cli-binary", Some("yes"))
    );
    assert_eq!(binary.datacontenttype.as_deref(), Some("text/plain"));
    assert_eq!(
        (structured.id.as_str(), structured.data.as_deref()),
        ("cli-structured", Some(&b"[1]"[..]))
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
    read_until(&mut lines, &mut out, "binary data").await;
    reader.kill().await.ok();
    assert!(
        out.contains("text/plain"),
        "the content type travels as the MQTT 5 property: {out}"
    );
}

#[tokio::test]
async fn mqtt_starts_without_its_server_and_recovers_from_a_restart() {
    let server = PrivateServer::not_started(mosquitto);
    let settings = format!(
        "type = \"mqtt\"\nurl = \"mqtt://127.0.0.1:{}\"\npublish_timeout = \"1s\"\n",
        server.port
    );
    reconnects(server, &settings).await;
}

#[tokio::test]
async fn every_mqtt_subscription_resumes_after_restarts() {
    let server = PrivateServer::start(mosquitto);
    let settings = format!(
        "type = \"mqtt\"\nurl = \"mqtt://127.0.0.1:{}\"\npublish_timeout = \"1s\"\n",
        server.port
    );
    crate::links::every_subscription_resumes_after_restarts(server, &settings).await;
}

#[tokio::test]
async fn two_processes_share_an_mqtt_queue() {
    two_processes_share_a_queue("type = \"mqtt\"\n", true).await;
}

#[tokio::test]
async fn properties_too_long_for_mqtt5_are_refused_not_sent_corrupt() {
    let link = crate::conformance::connect("type = \"mqtt\"\n").await;
    let address = unique("longprop");
    link.declare_topic(&address).await.unwrap();
    let mut sub = link
        .subscribe(&address, SubscribeMode::Topic)
        .await
        .unwrap();
    // MQTT 5 strings carry a 16-bit length: a longer value would corrupt
    // the packet (and with it the link).
    let mut long_value = event("long-value", "t");
    long_value
        .extensions
        .push(("big".into(), "v".repeat(70_000)));
    let mut long_type = event("long-ct", "t");
    long_type.datacontenttype = Some(format!("text/{}", "x".repeat(70_000)));
    for too_long in [long_value, long_type] {
        let err = link.publish(&address, &too_long).await.unwrap_err();
        assert!(
            matches!(&err, messaging_provider::broker::BrokerError::Format(m) if m.contains("65535")),
            "{err}"
        );
    }
    link.publish(&address, &event("fine", "t")).await.unwrap();
    let got = tokio::time::timeout(Duration::from_secs(10), sub.next())
        .await
        .unwrap()
        .unwrap();
    assert_eq!(got.event().id, "fine");
}
