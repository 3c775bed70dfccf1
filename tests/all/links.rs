//! Link behaviour every broker-backed link is tested for beyond the
//! conformance suite: reconnection after the test's own private server is
//! killed and restarted, and two provider processes sharing a queue channel.

use crate::support::*;
use messaging_provider::broker::SubscribeMode;
use messaging_provider::host::MessagingError;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

/// A probe app with local `inbox`/`results` channels and two channels on
/// the link `bus`: `feed` (subscribed) and `out` (published to).
pub fn app_on(rc_link: &str, base: &str) -> (AppDir, tempfile::NamedTempFile) {
    let rc = link_config("bus", rc_link);
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
        // `PRIVATE_SERVER_LOG=<file>` keeps what the servers print, to
        // debug a fault test; otherwise it is dropped.
        let log = || match std::env::var_os("PRIVATE_SERVER_LOG") {
            Some(file) => std::fs::OpenOptions::new()
                .create(true)
                .append(true)
                .open(file)
                .map(Stdio::from)
                .expect("PRIVATE_SERVER_LOG names a file that can be appended to"),
            None => Stdio::null(),
        };
        // A process group of its own, so that a server that forks (RabbitMQ)
        // is killed whole.
        let mut command = (self.command)(self.port, self.store.path());
        let program = command.get_program().to_string_lossy().into_owned();
        let child = command
            .process_group(0)
            .stdout(log())
            .stderr(log())
            .spawn()
            .expect("the broker server is installed");
        // Kept before the wait, so that a server that does not come up is
        // killed with this value rather than left running.
        let child = self.child.insert(child);
        // RabbitMQ takes seconds to boot, more on a loaded machine.
        let start = Instant::now();
        while std::net::TcpStream::connect(("127.0.0.1", self.port)).is_err() {
            if let Ok(Some(status)) = child.try_wait() {
                panic!(
                    "the private {program} on port {} exited ({status}) before it listened; PRIVATE_SERVER_LOG=<file> keeps its output",
                    self.port
                );
            }
            assert!(
                start.elapsed() < Duration::from_secs(60),
                "the private {program} did not listen on port {} within 60 s",
                self.port
            );
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    /// Starts the server again as `command` makes it, on the same port and
    /// with the same data directory.
    pub fn restart_as(&mut self, command: fn(u16, &std::path::Path) -> Command) {
        self.command = command;
        self.restart();
    }

    /// Stops the server as an operator would (SIGTERM to everything it
    /// started), and waits for it to exit; killed if it takes over 30 s.
    pub fn stop(&mut self) {
        if let Some(mut c) = self.child.take() {
            let _ = Command::new("kill")
                .args(["-TERM", "--", &format!("-{}", c.id())])
                .status();
            let start = Instant::now();
            while c.try_wait().unwrap().is_none() {
                if start.elapsed() > Duration::from_secs(30) {
                    self.child = Some(c);
                    return self.kill();
                }
                std::thread::sleep(Duration::from_millis(50));
            }
            // Children of the server (RabbitMQ's) go with its process group;
            // usually the group is gone already.
            let _ = Command::new("kill")
                .args(["-9", "--", &format!("-{}", c.id())])
                .stderr(Stdio::null())
                .status();
        }
    }

    /// Freezes the server (SIGSTOP): connections stay open, nothing is
    /// answered, so requests time out rather than fail.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Lets a frozen server go on (SIGCONT).
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, signal: &str) {
        if let Some(c) = &self.child {
            let status = Command::new("kill")
                .args([signal, "--", &format!("-{}", c.id())])
                .status()
                .unwrap();
            assert!(status.success(), "kill {signal}");
        }
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
    let base = unique("reconnect");
    let (app, rc) = app_on(settings, &base);
    let provider = start(&[&app.manifest], Some(rc.path())).await;
    let app = provider.app("linkapp").unwrap().clone();
    let mut results = watch(&provider, "linkapp", "results").await;

    served_while_away(&provider, &app, &mut results, "before-start").await;
    link_is_down(&provider).await;
    server.restart();
    recovers(&app, &mut results).await;
    link_is_up(&provider, 0).await;

    server.kill();
    tokio::time::sleep(Duration::from_millis(300)).await;
    served_while_away(&provider, &app, &mut results, "during").await;
    link_is_down(&provider).await;
    server.restart();
    recovers(&app, &mut results).await;
    link_is_up(&provider, 1).await;
}

/// `/readyz` names the link `bus` as down, and its metric says 0, within 10 s.
async fn link_is_down(provider: &messaging_provider::Provider) {
    let operations = provider.operations();
    let start = Instant::now();
    while !operations
        .readiness()
        .links_down
        .contains(&"bus".to_string())
    {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the link was not reported down: {:?}",
            operations.readiness()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert!(!operations.readiness().ready);
    let text = operations.metrics_text();
    assert!(
        text.lines()
            .any(|l| l.starts_with("trigger_messaging_link_up{link=\"bus\"") && l.ends_with(" 0")),
        "{text}"
    );
}

/// The provider is ready again within 10 s (the link connected, every
/// channel attached), and the metrics count `reconnects` reconnections
/// (at least: a client that noticed the loss late may flap once more).
async fn link_is_up(provider: &messaging_provider::Provider, reconnects: u64) {
    let operations = provider.operations();
    let start = Instant::now();
    while !operations.readiness().ready {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "not ready again: {:?}",
            operations.readiness()
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    let text = operations.metrics_text();
    let line = |name: &str| {
        text.lines()
            .find(|l| l.starts_with(&format!("{name}{{link=\"bus\"")))
            .unwrap_or_else(|| panic!("no {name} for link bus:\n{text}"))
            .to_string()
    };
    assert!(line("trigger_messaging_link_up").ends_with(" 1"), "{text}");
    let counted: u64 = line("trigger_messaging_link_reconnects_total")
        .rsplit(' ')
        .next()
        .and_then(|n| n.parse().ok())
        .unwrap();
    assert!(
        counted >= reconnects && (reconnects > 0 || counted == 0),
        "{counted} reconnects, expected {reconnects}:\n{text}"
    );
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
        .publish_external("feed", event(when, "t"))
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
        if app.publish_external("feed", event(&id, "t")).await.is_ok()
            && let Ok(Some(d)) =
                tokio::time::timeout(Duration::from_millis(500), results.0.next()).await
        {
            assert!(d.event().id.starts_with("after-"), "{:?}", d.event());
            return;
        }
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

/// Every subscription of one link comes back after its server restarts,
/// round after round (stopped, then killed), and a delivery taken before a
/// restart settles afterwards without hanging: two queue groups and a topic
/// recover together, and none is left waiting on the old connection.
pub async fn every_subscription_resumes_after_restarts(mut server: PrivateServer, settings: &str) {
    let link = crate::conformance::connect(settings).await;
    let base = unique("resume");
    let mut subscriptions = Vec::new();
    for (name, queue) in [("a", true), ("b", true), ("t", false)] {
        let address = format!("{base}.{name}");
        let mode = if queue {
            link.declare_queue(&address, &address).await.unwrap();
            SubscribeMode::Queue {
                group: address.clone(),
            }
        } else {
            link.declare_topic(&address).await.unwrap();
            SubscribeMode::Topic
        };
        let subscription = link.subscribe(&address, mode).await.unwrap();
        subscriptions.push((address, subscription));
    }
    for round in 0..3 {
        let mut held = Vec::new();
        for (address, subscription) in &mut subscriptions {
            held.push(resumed(&link, address, subscription, &format!("r{round}")).await);
        }
        if round == 2 {
            break;
        }
        if round == 0 {
            server.stop();
        } else {
            server.kill();
        }
        server.restart();
        for delivery in held {
            let id = delivery.event().id.clone();
            let (_, _, ack) = delivery.into_parts();
            // Ok or an error: the broker hands back what it did not get.
            assert!(
                tokio::time::timeout(Duration::from_secs(30), ack.ack())
                    .await
                    .is_ok(),
                "settling {id}, taken before the restart, hung"
            );
        }
    }
}

/// Publishes `{prefix}-N` to `address` until one comes out of
/// `subscription` (older deliveries are acknowledged and skipped), within
/// 60 s, and returns that delivery unsettled.
async fn resumed(
    link: &std::sync::Arc<dyn messaging_provider::broker::Broker>,
    address: &str,
    subscription: &mut Box<dyn messaging_provider::broker::Subscription>,
    prefix: &str,
) -> messaging_provider::broker::Delivery {
    let start = Instant::now();
    for attempt in 0.. {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the subscription to `{address}` did not resume"
        );
        if link
            .publish(address, &event(&format!("{prefix}-{attempt}"), "t"))
            .await
            .is_err()
        {
            tokio::time::sleep(Duration::from_millis(200)).await;
            continue;
        }
        let until = tokio::time::Instant::now() + Duration::from_secs(1);
        while let Ok(Some(delivery)) = tokio::time::timeout_at(until, subscription.next()).await {
            if delivery.event().id.starts_with(&format!("{prefix}-")) {
                return delivery;
            }
            let _ = delivery.into_parts().2.ack().await;
        }
    }
    unreachable!()
}

/// Two provider processes consume one queue channel: each event is handled
/// exactly once between them.
pub async fn two_processes_share_a_queue(link: &str, expect_both_take_part: bool) {
    let base = unique("shared");
    let rc = link_config("bus", link);
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
    bus.declare_topic(&format!("{base}.results")).await.unwrap();
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

/// Handlers publish to a link whose server is away (from the start, then
/// killed and restarted mid-stream, then frozen so that publishes time out
/// instead of failing): their failures use up no attempts, so
/// nothing is dead-lettered, and every event gets through once the server is
/// back. Fewer than five handlers fail in a row in each phase, so that the
/// circuit breaker (which would slow the retries down) plays no part.
/// `settings` makes the link's runtime config for the server's port.
pub async fn a_broker_outage_uses_up_no_attempts(mut server: PrivateServer, settings: &str) {
    let base = unique("outage");
    let rc = link_config("bus", settings);
    let app = write_app(&format!(
        r#"spin_manifest_version = 2
[application]
name = "outage"
[application.trigger.messaging.channels]
inbox = {{ kind = "queue", address = "{base}.inbox", max_attempts = 2, retry_delay = "100ms", max_retry_delay = "1s", dead_letter = "dlq" }}
dlq = {{ kind = "topic", address = "{base}.dlq" }}
out = {{ kind = "queue", link = "bus", address = "{base}.out" }}
[[trigger.messaging]]
component = "probe"
subscriptions = ["inbox"]
publish = ["out"]
[component.probe]
source = "{{probe}}"
"#
    ));
    let provider = start(&[&app.manifest], Some(rc.path())).await;
    let mut dlq = watch(&provider, "outage", "dlq").await;
    let forward = |id: String| {
        let mut e = event(&id, "probe.forward");
        e.subject = Some("queue:out".into());
        e
    };

    // Away from the start: many times `max_attempts` of retry delays pass.
    for i in 0..2 {
        send(&provider, "outage", "inbox", forward(format!("early-{i}"))).await;
    }
    dlq.expect_nothing(Duration::from_secs(3)).await;
    server.restart();
    let bus = provider.link("bus").unwrap().clone();
    let out = format!("{base}.out");
    let mut sub = None;
    for _ in 0..100 {
        if bus.declare_queue(&out, &out).await.is_ok() {
            sub = Some(
                bus.subscribe(&out, SubscribeMode::Queue { group: out.clone() })
                    .await
                    .unwrap(),
            );
            break;
        }
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
    let mut sub = sub.expect("the link reconnects");
    let mut seen = std::collections::BTreeSet::new();
    take_distinct(&mut sub, &mut seen, 2).await;

    // Killed and restarted under a stream of events.
    for i in 0..10 {
        if i == 4 {
            server.kill();
        }
        send(&provider, "outage", "inbox", forward(format!("during-{i}"))).await;
        if i == 5 {
            dlq.expect_nothing(Duration::from_secs(1)).await;
            server.restart();
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    take_distinct(&mut sub, &mut seen, 12).await;

    // Frozen: publishes are not refused, they go unanswered.
    server.freeze();
    for i in 0..2 {
        send(&provider, "outage", "inbox", forward(format!("frozen-{i}"))).await;
    }
    dlq.expect_nothing(Duration::from_secs(4)).await;
    server.thaw();
    take_distinct(&mut sub, &mut seen, 14).await;
    dlq.expect_nothing(Duration::from_millis(500)).await;
    provider.shutdown(Duration::from_secs(5)).await;
}

/// Takes (and acknowledges) deliveries until `expected` distinct event ids
/// were seen.
pub async fn take_distinct(
    sub: &mut Box<dyn messaging_provider::broker::Subscription>,
    seen: &mut std::collections::BTreeSet<String>,
    expected: usize,
) {
    while seen.len() < expected {
        let d = tokio::time::timeout(Duration::from_secs(20), sub.next())
            .await
            .unwrap_or_else(|_| {
                panic!(
                    "only {} of {expected} events got through: {seen:?}",
                    seen.len()
                )
            })
            .unwrap();
        let (e, _, ack) = d.into_parts();
        ack.ack().await.unwrap();
        seen.insert(e.id);
    }
}
