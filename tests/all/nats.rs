//! The NATS link beyond the conformance suite: interoperation with a client
//! that is not ours (nats-py), and reconnection after the test's own private
//! server is killed and restarted.

use crate::support::*;
use messaging_provider::host::MessagingError;
use std::io::{BufRead, BufReader};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

fn python(args: &[&str]) -> Command {
    let mut c = Command::new("python3");
    c.arg(repo().join("tests/interop/nats_client.py"))
        .args(args);
    c
}

fn app_on(rc_link: &str, base: &str) -> (AppDir, tempfile::NamedTempFile) {
    let rc = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(rc.path(), format!("[messaging_link.bus]\n{rc_link}")).unwrap();
    let app = write_app(&format!(
        r#"spin_manifest_version = 2
[application]
name = "natsapp"
[application.trigger.messaging.channels]
inbox = {{ kind = "queue", address = "{base}.local-inbox" }}
results = {{ kind = "topic", address = "{base}.local-results" }}
feed = {{ kind = "topic", link = "bus", address = "{base}.feed" }}
out = {{ kind = "topic", link = "bus", address = "{base}.out" }}
[[trigger.messaging]]
component = "probe"
subscriptions = ["inbox", "feed"]
publish = ["results", "out"]
[component.probe]
source = "{{probe}}"
"#
    ));
    (app, rc)
}

#[tokio::test]
async fn a_foreign_client_publishes_plain_and_cloudevents_and_reads_ours() {
    let base = format!(
        "interop.{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    );
    let (app, rc) = app_on("type = \"nats\"\n", &base);
    let provider = start(&[&app.manifest], Some(rc.path())).await;

    // nats-py reads what the guest publishes to `out`...
    let mut reader = python(&["read", &format!("{base}.out"), "3"])
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    let mut ready = String::new();
    BufReader::new(reader.stderr.take().unwrap())
        .read_line(&mut ready)
        .unwrap();
    assert_eq!(
        ready.trim(),
        "ready",
        "nats-py did not subscribe (is nats-py installed?)"
    );

    // ...while the guest copies to `out` what nats-py publishes to `feed`.
    let mut results = watch(&provider, "natsapp", "results").await;
    tokio::time::sleep(Duration::from_millis(200)).await;
    let status = python(&["publish", &format!("{base}.feed")])
        .status()
        .unwrap();
    assert!(status.success());
    let mut got = Vec::new();
    for _ in 0..3 {
        got.push(results.next("an event from nats-py").await);
    }
    for event in &got {
        let mut cmd = event.clone();
        cmd.ty = "probe.publish".into();
        cmd.subject = Some("topic:out".into());
        cmd.id = format!("fwd-{}", event.id);
        let (case, message) = ask(&provider, "natsapp", &mut results, cmd).await;
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

/// A NATS server of the test's own, on a free port, killed at will.
struct PrivateServer {
    port: u16,
    child: Option<Child>,
    store: tempfile::TempDir,
}

impl PrivateServer {
    fn start() -> Self {
        let port = std::net::TcpListener::bind("127.0.0.1:0")
            .unwrap()
            .local_addr()
            .unwrap()
            .port();
        let mut s = PrivateServer {
            port,
            child: None,
            store: tempfile::tempdir().unwrap(),
        };
        s.restart();
        s
    }

    fn restart(&mut self) {
        let child = Command::new("/usr/sbin/nats-server")
            .args([
                "-a",
                "127.0.0.1",
                "-p",
                &self.port.to_string(),
                "-js",
                "-sd",
            ])
            .arg(self.store.path())
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("nats-server is installed");
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(10),
                "the private nats-server did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.child = Some(child);
    }

    fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            c.kill().unwrap();
            c.wait().unwrap();
        }
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        self.kill();
    }
}

async fn reconnects(jetstream: bool) {
    let mut server = PrivateServer::start();
    let base = format!(
        "reconnect.{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    );
    let settings = format!(
        "type = \"nats\"\nurl = \"nats://127.0.0.1:{}\"\njetstream = {jetstream}\n",
        server.port
    );
    let (app, rc) = app_on(&settings, &base);
    let provider = start(&[&app.manifest], Some(rc.path())).await;
    let app = provider.app("natsapp").unwrap().clone();
    let mut results = watch(&provider, "natsapp", "results").await;
    tokio::time::sleep(Duration::from_millis(300)).await;

    app.publish_external("feed", &event("before", "t"))
        .await
        .unwrap();
    results.next_with_id("before").await;

    server.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let err = app
        .publish_external("feed", &event("during", "t"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            MessagingError::ServiceUnavailable(_) | MessagingError::ConnectionLost(_)
        ),
        "{err}"
    );
    let mut cmd = event("guest-during", "probe.publish");
    cmd.subject = Some("topic:out".into());
    let (case, message) = ask(&provider, "natsapp", &mut results, cmd).await;
    assert!(
        case == "service-unavailable" || case == "connection-lost",
        "{case}: {message}"
    );
    // Channels on other links keep being served meanwhile.
    send(&provider, "natsapp", "inbox", event("local-during", "t")).await;
    results.next_with_id("local-during").await;

    server.restart();
    let start = Instant::now();
    while app
        .publish_external("feed", &event("after", "t"))
        .await
        .is_err()
    {
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "the link did not reconnect"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
    // The subscription resumed: the event published after the restart arrives.
    results.next_with_id("after").await;
}

#[tokio::test]
async fn core_nats_reconnects_and_resubscribes_after_a_restart() {
    reconnects(false).await;
}

#[tokio::test]
async fn jetstream_reconnects_and_resubscribes_after_a_restart() {
    reconnects(true).await;
}

#[tokio::test]
async fn the_servers_max_payload_surfaces_before_sending() {
    let base = format!(
        "maxpayload.{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    );
    let (app, rc) = app_on("type = \"nats\"\n", &base);
    let provider = start(&[&app.manifest], Some(rc.path())).await;
    let limit = provider
        .link("bus")
        .unwrap()
        .max_payload()
        .expect("the server announces its limit");
    let mut results = watch(&provider, "natsapp", "results").await;
    let mut cmd = event("big", "probe.publish");
    cmd.subject = Some("topic:out".into());
    cmd.extensions
        .push(("mutate".into(), format!("size:{}", limit + 1)));
    let (case, message) = ask(&provider, "natsapp", &mut results, cmd).await;
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
    missing.wait_for("stderr", "messaging_link.bus.url`: `{{ nats_secret_pw }}` needs the environment variable SPIN_VARIABLE_NATS_SECRET_PW");

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

/// Two provider processes consume one queue channel: each event is handled
/// exactly once between them.
async fn two_processes_share_a_queue(jetstream: bool) {
    let base = format!(
        "shared.{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    );
    let link = format!("type = \"nats\"\njetstream = {jetstream}\n");
    let rc = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(rc.path(), format!("[messaging_link.bus]\n{link}")).unwrap();
    let manifest = |who: &str| {
        write_app(&format!(
            r#"spin_manifest_version = 2
[application]
name = "shared"
[application.trigger.messaging.channels]
work = {{ kind = "queue", link = "bus", address = "{base}.work" }}
results = {{ kind = "topic", link = "bus", address = "{base}.results" }}
[[trigger.messaging]]
component = "probe"
subscriptions = ["work"]
publish = ["results"]
[component.probe]
source = "{{probe}}"
environment = {{ PROBE_NAME = "{who}" }}
"#
        ))
    };
    let (a, b) = (manifest("a"), manifest("b"));
    let rc_arg = rc.path().to_str().unwrap();
    let (mut first, _) = up(&[&a.manifest], &["--runtime-config-file", rc_arg]);
    let (mut second, _) = up(&[&b.manifest], &["--runtime-config-file", rc_arg]);

    let bus = crate::conformance::connect(&link).await;
    let mut results = bus
        .subscribe(
            &format!("{base}.results"),
            messaging_provider::broker::SubscribeMode::Topic,
        )
        .await
        .unwrap();
    tokio::time::sleep(Duration::from_millis(300)).await;
    let n = 40;
    for i in 0..n {
        bus.publish(
            &format!("{base}.work"),
            &event(&format!("w{i}"), "work.item"),
        )
        .await
        .unwrap();
    }
    let mut handled = std::collections::BTreeMap::<String, Vec<String>>::new();
    for _ in 0..n {
        let d = tokio::time::timeout(Duration::from_secs(20), results.next())
            .await
            .expect("a result")
            .unwrap();
        let (e, _, ack) = d.into_parts();
        ack.ack().await.unwrap();
        handled
            .entry(e.id.clone())
            .or_default()
            .push(e.extension("handledby").unwrap().to_string());
    }
    assert!(
        tokio::time::timeout(Duration::from_secs(1), results.next())
            .await
            .is_err(),
        "no event is handled twice"
    );
    assert_eq!(
        handled.len(),
        n,
        "every event handled exactly once: {handled:?}"
    );
    let by_a = handled.values().filter(|h| h[0] == "a").count();
    if !jetstream {
        assert!(
            by_a > 0 && by_a < n,
            "both processes take part: a handled {by_a} of {n}"
        );
    }
    for p in [&mut first, &mut second] {
        p.terminate();
        assert_eq!(p.wait_exit(Duration::from_secs(15)), 0);
    }
}

#[tokio::test]
async fn two_processes_share_a_core_nats_queue() {
    two_processes_share_a_queue(false).await;
}

#[tokio::test]
async fn two_processes_share_a_jetstream_queue() {
    two_processes_share_a_queue(true).await;
}
