//! The NATS link beyond the conformance suite: interoperation with a client
//! that is not ours (nats-py), and reconnection after the test's own private
//! server is killed and restarted.

use crate::links::{PrivateServer, app_on, reconnects, two_processes_share_a_queue};
use crate::support::*;

use std::process::{Command, Stdio};
use std::time::Duration;

pub fn nats_server(port: u16, store: &std::path::Path) -> Command {
    let mut c = Command::new("/usr/sbin/nats-server");
    c.args(["-a", "127.0.0.1", "-p", &port.to_string(), "-js", "-sd"])
        .arg(store);
    c
}

async fn nats_reconnects(jetstream: bool) {
    let server = PrivateServer::not_started(nats_server);
    let settings = format!(
        "type = \"nats\"\nurl = \"nats://127.0.0.1:{}\"\njetstream = {jetstream}\n",
        server.port
    );
    reconnects(server, &settings).await;
}

fn python(args: &[&str]) -> Command {
    interop("nats_client.py", args)
}

#[tokio::test]
async fn a_foreign_client_publishes_plain_and_cloudevents_and_reads_ours() {
    let base = unique("interop");
    let (app, rc) = app_on("type = \"nats\"\n", &base);
    let provider = start(&[&app.manifest], Some(rc.path())).await;

    // nats-py reads what the guest publishes to `out`...
    let reader = start_reader(python(&["read", &format!("{base}.out"), "3"]));

    // ...while the guest copies to `out` what nats-py publishes to `feed`.
    let mut results = watch(&provider, "linkapp", "results").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let status = python(&["publish", &format!("{base}.feed")])
        .status()
        .unwrap();
    assert!(status.success());
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(results.next("an event from nats-py").await);
    }
    // Handlers run side by side: put the three in the order nats-py sent them.
    got.sort_by_key(|e| match e.id.as_str() {
        "py-binary" => 1,
        "py-structured" => 2,
        _ => 0,
    });
    for event in &got {
        let id = format!("fwd-{}", event.id);
        let (case, message) =
            forward(&provider, "linkapp", &mut results, event, &id, "topic:out").await;
        assert_eq!(case, "ok", "{message}");
    }

    let plain = &got[0];
    assert_eq!(plain.ty, messaging_provider::cloudevents::PLAIN_TYPE);
    assert_eq!(
        plain.source,
        format!("urn:trigger-messaging:bus:{base}.feed")
    );
    assert_eq!(plain.datacontenttype.as_deref(), Some("text/plain"));
    assert_eq!(plain.data.as_deref(), Some(&b"plain hello"[..]));
    let binary = &got[1];
    assert_eq!(
        (binary.id.as_str(), binary.ty.as_str()),
        ("py-binary", "py.binary")
    );
    assert_eq!(binary.subject.as_deref(), Some("café au lait"));
    assert_eq!(binary.extension("pyext"), Some("yes"));
    assert_eq!(binary.datacontenttype.as_deref(), Some("application/json"));
    assert_eq!(binary.data.as_deref(), Some(&br#"{"n":1}"#[..]));
    let structured = &got[2];
    assert_eq!(
        (structured.id.as_str(), structured.data.as_deref()),
        ("py-structured", Some(&b"structured text"[..]))
    );

    let out = reader.wait_with_output().unwrap();
    let lines: Vec<serde_json::Value> = String::from_utf8(out.stdout)
        .unwrap()
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 3);
    let binary_out = lines
        .iter()
        .find(|l| l["headers"]["ce-id"] == "fwd-py-binary")
        .expect("the forwarded binary event");
    assert_eq!(binary_out["headers"]["ce-type"], "probe.item");
    assert_eq!(binary_out["headers"]["ce-subject"], "topic:out");
    assert_eq!(
        binary_out["headers"]["ce-datacontenttype"],
        "application/json"
    );
    assert_eq!(binary_out["data"], r#"{"n":1}"#);
}

#[tokio::test]
async fn core_nats_starts_without_its_server_and_recovers_from_a_restart() {
    nats_reconnects(false).await;
}

#[tokio::test]
async fn jetstream_starts_without_its_server_and_recovers_from_a_restart() {
    nats_reconnects(true).await;
}

async fn nats_subscriptions_resume(jetstream: bool) {
    let server = PrivateServer::start(nats_server);
    let settings = format!(
        "type = \"nats\"\nurl = \"nats://127.0.0.1:{}\"\njetstream = {jetstream}\npublish_timeout = \"2s\"\n",
        server.port
    );
    crate::links::every_subscription_resumes_after_restarts(server, &settings).await;
}

#[tokio::test]
async fn every_core_nats_subscription_resumes_after_restarts() {
    nats_subscriptions_resume(false).await;
}

#[tokio::test]
async fn every_jetstream_subscription_resumes_after_restarts() {
    nats_subscriptions_resume(true).await;
}

#[tokio::test]
async fn a_jetstream_outage_uses_up_no_attempts() {
    let server = PrivateServer::not_started(nats_server);
    let settings = format!(
        "type = \"nats\"\njetstream = true\nurl = \"nats://127.0.0.1:{}\"\npublish_timeout = \"1s\"\n",
        server.port
    );
    crate::links::a_broker_outage_uses_up_no_attempts(server, &settings).await;
}

#[tokio::test]
async fn the_servers_max_payload_surfaces_before_sending() {
    let base = unique("maxpayload");
    let (app, rc) = app_on("type = \"nats\"\n", &base);
    let provider = start(&[&app.manifest], Some(rc.path())).await;
    let limit = provider
        .link("bus")
        .unwrap()
        .max_payload()
        .expect("the server announces its limit");
    let mut results = watch(&provider, "linkapp", "results").await;
    let mut cmd = event("big", "probe.publish");
    cmd.subject = Some("topic:out".into());
    cmd.extensions
        .push(("mutate".into(), format!("size:{}", limit + 1)));
    let (case, message) = ask(&provider, "linkapp", &mut results, cmd).await;
    assert_eq!(case, "payload-too-large", "{message}");
    assert!(
        message.contains(&format!("link limit of {limit} bytes")),
        "{message}"
    );
}

#[tokio::test]
async fn secrets_come_from_the_environment_and_are_never_printed() {
    let rc = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        rc.path(),
        "[messaging_link.bus]\ntype = \"nats\"\nurl = \"nats://watcher:{{ nats_secret_pw }}@127.0.0.1:4222\"\n",
    )
    .unwrap();
    let (app, _) = app_on("type = \"nats\"\n", "secrets");
    let mut missing = run(&[
        "up",
        "-f",
        app.manifest.to_str().unwrap(),
        "--runtime-config-file",
        rc.path().to_str().unwrap(),
    ]);
    assert_eq!(missing.wait_exit(Duration::from_secs(30)), 1);
    missing.wait_for("stderr", "messaging_link.bus.url`: `{{ nats_secret_pw }}` needs `--variable nats_secret_pw=...` or the environment variable SPIN_VARIABLE_NATS_SECRET_PW");

    let child = Command::new(env!("CARGO_BIN_EXE_trigger-messaging"))
        .args([
            "up",
            "-f",
            app.manifest.to_str().unwrap(),
            "--runtime-config-file",
            rc.path().to_str().unwrap(),
        ])
        .env("SPIN_VARIABLE_NATS_SECRET_PW", "hunter2-secret")
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut running = Running::adopt(child);
    let link_line = running.wait_for("stdout", "bus ");
    assert!(
        link_line.contains("nats nats://***@127.0.0.1:4222"),
        "{link_line}"
    );
    running.wait_for("stdout", "Ready");
    running.terminate();
    assert_eq!(running.wait_exit(Duration::from_secs(15)), 0);
    assert!(
        !running.all().contains("hunter2"),
        "the password leaked:\n{}",
        running.all()
    );
}

#[tokio::test]
async fn two_processes_share_a_core_nats_queue() {
    two_processes_share_a_queue("type = \"nats\"\n", true).await;
}

#[tokio::test]
async fn two_processes_share_a_jetstream_queue() {
    // A JetStream pull consumer may hand a whole batch to one process, so
    // only "exactly once between them" is asserted.
    two_processes_share_a_queue("type = \"nats\"\njetstream = true\n", false).await;
}
