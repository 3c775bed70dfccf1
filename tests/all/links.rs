//! Link behaviour every broker-backed link is tested for beyond the
//! conformance suite: reconnection after the test's own private server is
//! killed and restarted, and two provider processes sharing a queue channel.

use crate::support::*;
use messaging_provider::host::MessagingError;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A probe app with local `inbox`/`results` channels and two channels on
/// the link `bus`: `feed` (subscribed) and `out` (published to).
pub fn app_on(rc_link: &str, base: &str) -> (AppDir, tempfile::NamedTempFile) {
    let rc = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(rc.path(), format!("[messaging_link.bus]\n{rc_link}")).unwrap();
    let app = write_app(&format!(
        r#"spin_manifest_version = 2
[application]
name = "linkapp"
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

/// A broker server of the test's own, on a free port, killed at will; the
/// shared servers are never touched.
pub struct PrivateServer {
    pub port: u16,
    command: fn(u16, &std::path::Path) -> Command,
    child: Option<Child>,
    store: tempfile::TempDir,
}

impl PrivateServer {
    /// Starts `command(port, data_dir)` and waits until it listens.
    pub fn start(command: fn(u16, &std::path::Path) -> Command) -> Self {
        let mut s = Self::not_started(command);
        s.restart();
        s
    }

    /// Picks the port and the data directory; `restart` starts the server.
    pub fn not_started(command: fn(u16, &std::path::Path) -> Command) -> Self {
        PrivateServer {
            port: free_port(),
            command,
            child: None,
            store: tempfile::tempdir().unwrap(),
        }
    }

    /// Starts the server (again) and waits until it listens.
    pub fn restart(&mut self) {
        use std::os::unix::process::CommandExt as _;
        // A process group of its own, so that a server that forks (RabbitMQ)
        // is killed whole.
        let child = (self.command)(self.port, self.store.path())
            .process_group(0)
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("the broker server is installed");
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            assert!(
                start.elapsed() < Duration::from_secs(20),
                "the private server did not start"
            );
            std::thread::sleep(Duration::from_millis(50));
        }
        self.child = Some(child);
    }

    /// Kills the server and everything it started, at once (SIGKILL).
    pub fn kill(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-9", "--", &format!("-{}", c.id())])
                .status();
            c.wait().unwrap();
        }
    }
}

impl Drop for PrivateServer {
    fn drop(&mut self) {
        self.kill();
    }
}

/// A provider starts while its link's server is not there yet, and goes on
/// after the server is killed and restarted under it: while the server is
/// away, publishing fails fast and other links keep working; once it is
/// back, the link's subscriptions come alive. `server` is not started yet;
/// `settings` makes the link's runtime config for its port.
pub async fn reconnects(mut server: PrivateServer, settings: &str) {
    let base = format!(
        "reconnect.{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    );
    let (app, rc) = app_on(settings, &base);
    let provider = start(&[&app.manifest], Some(rc.path())).await;
    let app = provider.app("linkapp").unwrap().clone();
    let mut results = watch(&provider, "linkapp", "results").await;

    served_while_away(&provider, &app, &mut results, "before-start").await;
    server.restart();
    recovers(&app, &mut results).await;

    server.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    served_while_away(&provider, &app, &mut results, "during").await;
    server.restart();
    recovers(&app, &mut results).await;
}

/// While the link's server is away: publishing to the link fails fast, for
/// the host and for a guest, and channels on other links are served.
pub async fn served_while_away(
    provider: &messaging_provider::Provider,
    app: &messaging_provider::dispatch::AppRuntime,
    results: &mut Watch,
    when: &str,
) {
    let err = app
        .publish_external("feed", &event(when, "t"))
        .await
        .unwrap_err();
    assert!(
        matches!(
            err,
            MessagingError::ServiceUnavailable(_) | MessagingError::ConnectionLost(_)
        ),
        "{err}"
    );
    let mut cmd = event(&format!("guest-{when}"), "probe.publish");
    cmd.subject = Some("topic:out".into());
    let (case, message) = ask(provider, "linkapp", results, cmd).await;
    assert!(
        case == "service-unavailable" || case == "connection-lost",
        "{case}: {message}"
    );
    let local = format!("local-{when}");
    send(provider, "linkapp", "inbox", event(&local, "t")).await;
    results.next_with_id(&local).await;
}

/// Publishing works again once the link reconnected, and the subscription
/// resumes (on some brokers a little later, so keep publishing until an
/// event published after the restart comes through).
async fn recovers(app: &messaging_provider::dispatch::AppRuntime, results: &mut Watch) {
    let start = Instant::now();
    for attempt in 0.. {
        assert!(
            start.elapsed() < Duration::from_secs(30),
            "the link did not recover"
        );
        let id = format!("after-{attempt}");
        if app.publish_external("feed", &event(&id, "t")).await.is_ok()
            && let Ok(Some(d)) =
                tokio::time::timeout(Duration::from_millis(500), results.0.next()).await
        {
            assert!(d.event.id.starts_with("after-"), "{:?}", d.event);
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Two provider processes consume one queue channel: each event is handled
/// exactly once between them.
pub async fn two_processes_share_a_queue(link: &str, expect_both_take_part: bool) {
    let base = format!(
        "shared.{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    );
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

    let bus = crate::conformance::connect(link).await;
    // Declared as the providers do, so links that tell queues from topics
    // (Redis) put the events in the queue.
    let work = format!("{base}.work");
    bus.declare_queue(&work, &work).await.unwrap();
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
    if expect_both_take_part {
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
