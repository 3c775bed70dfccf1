//! Fault tests on the durable queues (JetStream, Redis streams, RabbitMQ,
//! Kafka), with real provider processes and the test's own brokers:
//!
//! - events through a queue from an app's first start while the broker is
//!   restarted (stopped as an operator stops it, SIGTERM: a broker killed
//!   outright may itself redeliver what it had acknowledged, RabbitMQ a
//!   second's worth) and the provider is killed (SIGKILL) and restarted: every
//!   event handled at least once, duplicates only among those in flight,
//!   poison events dead-lettered;
//! - SIGTERM under load: nothing lost, nothing handled twice, and what the
//!   stopped provider had taken but not started reaches the next one at once.
//!
//! Events are counted by id and the counts printed (sent / handled /
//! duplicates / dead-lettered / lost). `FAULT_EVENTS` (default 3,000) and
//! `FAULT_ROUNDS` (default 1: one broker restart, two provider kills) set
//! the size; `scripts/faults.sh` runs the full-length version.

use crate::links::PrivateServer;
use crate::redis::redis_server_persistent;
use crate::support::*;
use messaging_provider::broker::{Broker, SubscribeMode};
use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

pub(crate) fn scale(name: &str, default: usize) -> usize {
    std::env::var(name)
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(default)
}

/// Every hundredth event is poison: its handler always fails.
pub(crate) fn is_poison(i: usize) -> bool {
    i % 100 == 42
}

/// The app: `work` relayed by the probe to `done`, failures dead-lettered
/// to `dead`; all three on the link `bus`. `extra_env` adds to the probe's
/// environment, `settings` to its trigger's.
fn relay_app(base: &str, extra_env: &str, settings: &str) -> AppDir {
    write_app(&format!(
        r#"spin_manifest_version = 2
[application]
name = "faults"
[application.trigger.messaging.channels]
work = {{ kind = "queue", link = "bus", address = "{base}.work", max_attempts = 3, retry_delay = "200ms", max_retry_delay = "1s", dead_letter = "dead" }}
done = {{ kind = "queue", link = "bus", address = "{base}.done" }}
results = {{ kind = "topic", address = "{base}.results" }}
dead = {{ kind = "queue", link = "bus", address = "{base}.dead" }}
[[trigger.messaging]]
component = "relay"
subscriptions = ["work"]
publish = ["done", "results"]
{settings}
[component.relay]
source = "{{probe}}"
environment = {{ PROBE_OUT = "queue:done"{extra_env} }}
"#
    ))
}

/// What came out of the queue, by event id.
#[derive(Default)]
pub(crate) struct Tally {
    handled: HashMap<String, usize>,
    dead: HashMap<String, usize>,
    /// Handled events by the `handledby` the probe put on them (`-`: none).
    pub by: HashMap<String, usize>,
    /// The `handledby` of each handling, by event id.
    handlers: HashMap<String, Vec<String>>,
}

impl Tally {
    /// Handlings of an event by a `handledby` that had handled it before.
    pub(crate) fn again_by_the_same(&self) -> usize {
        self.handlers
            .values()
            .map(|by| by.len() - by.iter().collect::<std::collections::HashSet<_>>().len())
            .sum()
    }

    pub(crate) fn report(&self, label: &str, sent: usize) -> Report {
        let done = |ids: &HashMap<String, usize>| {
            ids.keys()
                .cloned()
                .collect::<std::collections::HashSet<_>>()
        };
        let (handled, dead) = (done(&self.handled), done(&self.dead));
        let report = Report {
            sent,
            handled: handled.len(),
            duplicates: self
                .handled
                .values()
                .chain(self.dead.values())
                .map(|n| n - 1)
                .sum(),
            dead_lettered: dead.len(),
            lost: sent - handled.union(&dead).count(),
            poison_handled: handled.iter().filter(|id| id.starts_with("poison")).count(),
            good_dead: dead.iter().filter(|id| !id.starts_with("poison")).count(),
        };
        eprintln!(
            "{label}: sent {} / handled {} / duplicates {} / dead-lettered {} / lost {}",
            report.sent, report.handled, report.duplicates, report.dead_lettered, report.lost
        );
        report
    }
}

#[derive(Debug, PartialEq, Eq)]
pub(crate) struct Report {
    pub sent: usize,
    pub handled: usize,
    pub duplicates: usize,
    pub dead_lettered: usize,
    pub lost: usize,
    pub poison_handled: usize,
    pub good_dead: usize,
}

/// Reads `done` and `dead` through the test's own link (which rides out
/// broker restarts as the provider's does), counting and acknowledging.
pub(crate) async fn read_out(bus: Arc<dyn Broker>, base: &str, tally: Arc<Mutex<Tally>>) {
    for (name, dead) in [("done", false), ("dead", true)] {
        let address = format!("{base}.{name}");
        bus.declare_queue(&address, &address).await.unwrap();
        let mut sub = bus
            .subscribe(
                &address,
                SubscribeMode::Queue {
                    group: address.clone(),
                },
            )
            .await
            .unwrap();
        let tally = tally.clone();
        tokio::spawn(async move {
            while let Some(d) = sub.next().await {
                let (e, _, ack) = d.into_parts();
                let _ = ack.ack().await;
                let mut t = tally.lock().unwrap();
                if !dead {
                    let by = e.extension("handledby").unwrap_or("-").to_string();
                    *t.by.entry(by.clone()).or_default() += 1;
                    t.handlers.entry(e.id.clone()).or_default().push(by);
                }
                let ids = if dead { &mut t.dead } else { &mut t.handled };
                *ids.entry(e.id).or_default() += 1;
            }
        });
    }
}

/// Puts `n` events (every hundredth poison) on `work`, 16 at a time.
pub(crate) async fn preload(bus: &Arc<dyn Broker>, base: &str, n: usize) {
    preload_range(bus, base, 0..n).await;
}

/// Puts the events numbered `range` on `work`, as [`preload`] does.
pub(crate) async fn preload_range(bus: &Arc<dyn Broker>, base: &str, range: Range<usize>) {
    let work = format!("{base}.work");
    bus.declare_queue(&work, &work).await.unwrap();
    let mut tasks = tokio::task::JoinSet::new();
    for lane in 0..16 {
        let (bus, work, range) = (bus.clone(), work.clone(), range.clone());
        tasks.spawn(async move {
            for i in (range.start + lane..range.end).step_by(16) {
                let e = if is_poison(i) {
                    event(&format!("poison-{i}"), "probe.fail")
                } else {
                    event(&format!("e{i}"), "t")
                };
                if let Err(error) = bus.publish(&work, &e).await {
                    panic!("preloading {} on {work}: {error}", e.id);
                }
            }
        });
    }
    while let Some(done) = tasks.join_next().await {
        done.unwrap();
    }
}

/// A provider process running the app, quiet, and ready.
fn provider(app: &Path, rc: &Path) -> Running {
    let running = run(&[
        "up",
        "-q",
        "-f",
        app.to_str().unwrap(),
        "--runtime-config-file",
        rc.to_str().unwrap(),
        "--log-dir",
        "",
    ]);
    running.wait_for("stdout", "Ready");
    running
}

fn sigkill(p: &mut Running) {
    let _ = p.child.kill();
    let _ = p.child.wait();
}

pub(crate) async fn wait_for_progress(
    tally: &Arc<Mutex<Tally>>,
    at_least: usize,
    within: Duration,
) {
    if let Err(stuck) = progress(tally, at_least, within).await {
        panic!("{stuck}");
    }
}

/// The same, naming what `provider` logged (its guests' lines left out)
/// when it is stuck.
pub(crate) async fn wait_for_progress_of(
    tally: &Arc<Mutex<Tally>>,
    at_least: usize,
    within: Duration,
    provider: &Running,
) {
    if let Err(stuck) = progress(tally, at_least, within).await {
        panic!(
            "{stuck}\nthe provider logged:\n{}",
            own_log(provider).join("\n")
        );
    }
}

/// What a provider logged itself: its stderr without its guests' lines.
pub(crate) fn own_log(provider: &Running) -> Vec<String> {
    let log = provider.stderr.lock().unwrap();
    log.iter()
        .filter(|l| !l.contains("INFO guest"))
        .cloned()
        .collect()
}

/// Waits until `at_least` events came out; says what is missing if not.
async fn progress(
    tally: &Arc<Mutex<Tally>>,
    at_least: usize,
    within: Duration,
) -> Result<(), String> {
    let start = Instant::now();
    loop {
        let progress = {
            let t = tally.lock().unwrap();
            t.handled.len() + t.dead.len()
        };
        if progress >= at_least {
            return Ok(());
        }
        if start.elapsed() > within {
            let t = tally.lock().unwrap();
            let missing: Vec<String> = (0..at_least)
                .map(|i| {
                    if is_poison(i) {
                        format!("poison-{i}")
                    } else {
                        format!("e{i}")
                    }
                })
                .filter(|id| !t.handled.contains_key(id) && !t.dead.contains_key(id))
                .take(20)
                .collect();
            return Err(format!(
                "stuck at {progress} of {at_least} events; missing (first 20 when all are due): {missing:?}"
            ));
        }
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
}

/// How a link's broker takes a killed provider's place back, and how much
/// it may redeliver.
struct Recovery {
    /// How long the killed provider's place is kept before a new one starts.
    pause_after_kill: Duration,
    /// What one provider may have taken beyond its handlers: the pulled
    /// batch, prefetch or read-ahead.
    taken_ahead: usize,
    /// Whether each round also restarts the broker (between its two
    /// provider kills).
    broker_restarts: bool,
}

/// Brokers that hand a dead consumer's events on by themselves.
const AT_ONCE: Recovery = Recovery {
    pause_after_kill: Duration::ZERO,
    taken_ahead: 64,
    broker_restarts: true,
};

/// Events through a queue on a private `server` while the broker is
/// restarted and the provider killed and restarted, `FAULT_ROUNDS` times.
async fn survives_broker_restarts_and_provider_kills(
    label: &str,
    mut server: PrivateServer,
    settings: impl Fn(u16) -> String,
    recovery: Recovery,
) {
    let n = scale("FAULT_EVENTS", 3000);
    let rounds = scale("FAULT_ROUNDS", 1);
    let base = unique("faults");
    let rc = link_config("bus", &settings(server.port));
    let app = relay_app(&base, "", "");

    let bus = crate::conformance::connect(&settings(server.port)).await;
    preload(&bus, &base, n).await;
    let tally = Arc::new(Mutex::new(Tally::default()));
    read_out(bus.clone(), &base, tally.clone()).await;
    let start = Instant::now();
    let mut p = provider(&app.manifest, rc.path());
    let patience = Duration::from_secs(120) + Duration::from_millis(20 * n as u64);

    // Each round: the provider killed, the broker restarted, the provider
    // killed again, at evenly spread points of progress.
    let steps = rounds * 3;
    for step in 0..steps {
        wait_for_progress_of(&tally, n * (step + 1) / (steps + 1), patience, &p).await;
        if step % 3 == 1 && recovery.broker_restarts {
            eprintln!("{label}: {:.1?}: restarting the broker", start.elapsed());
            server.stop();
            server.restart();
        } else {
            eprintln!("{label}: {:.1?}: killing the provider", start.elapsed());
            sigkill(&mut p);
            tokio::time::sleep(recovery.pause_after_kill).await;
            p = provider(&app.manifest, rc.path());
        }
    }
    wait_for_progress_of(&tally, n, patience, &p).await;
    // Late duplicates have a moment to show.
    tokio::time::sleep(Duration::from_secs(2)).await;
    p.terminate();
    assert_eq!(p.wait_exit(Duration::from_secs(30)), 0, "{}", p.recent());
    let report = tally.lock().unwrap().report(label, n);
    eprintln!(
        "{label}: {n} events, {} broker restart(s), {} provider kill(s), in {:.1}s",
        if recovery.broker_restarts { rounds } else { 0 },
        if recovery.broker_restarts {
            rounds * 2
        } else {
            rounds * 3
        },
        start.elapsed().as_secs_f64()
    );
    assert_eq!(report.lost, 0);
    assert_eq!((report.poison_handled, report.good_dead), (0, 0));
    assert_eq!(
        report.dead_lettered,
        (0..n).filter(|&i| is_poison(i)).count()
    );
    // At most what was in flight at each disruption: the handlers of the
    // provider (64) and what its subscription had taken ahead, plus what
    // the test's own reader (the same link) had taken.
    let bound = steps * (64 + 2 * recovery.taken_ahead);
    assert!(
        report.duplicates <= bound,
        "{} duplicates, more than {bound} could be in flight",
        report.duplicates
    );
}

/// SIGTERM while the queue is busy: the stopped provider finishes what it
/// started, hands back what it had taken but not started, and the next one
/// handles the rest. The brokers' own redelivery timeouts are 60 s, so
/// finishing well within them shows the hand-back was at once.
async fn sigterm_under_load_loses_and_duplicates_nothing(label: &str, settings: &str) {
    let n = scale("FAULT_EVENTS", 3000).min(5000);
    let base = unique("sigterm");
    let rc = link_config("bus", settings);
    let app = relay_app(&base, ", PROBE_DELAY_MS = \"2\"", "");
    let bus = crate::conformance::connect(settings).await;
    preload(&bus, &base, n).await;
    let tally = Arc::new(Mutex::new(Tally::default()));
    read_out(bus.clone(), &base, tally.clone()).await;

    let mut first = provider(&app.manifest, rc.path());
    wait_for_progress_of(&tally, n / 3, Duration::from_secs(120), &first).await;
    first.terminate();
    assert_eq!(
        first.wait_exit(Duration::from_secs(30)),
        0,
        "{}",
        first.all()
    );
    let stopped = Instant::now();
    if std::env::var("FAULT_DEBUG").is_ok() {
        for l in own_log(&first) {
            eprintln!("first: {l}");
        }
    }
    let mut second = provider(&app.manifest, rc.path());
    wait_for_progress_of(&tally, n, Duration::from_secs(45), &second).await;
    let rest = stopped.elapsed();
    tokio::time::sleep(Duration::from_secs(2)).await;
    second.terminate();
    assert_eq!(
        second.wait_exit(Duration::from_secs(30)),
        0,
        "{}",
        second.all()
    );
    let report = tally.lock().unwrap().report(label, n);
    let handed_back: Vec<String> = first
        .stderr
        .lock()
        .unwrap()
        .iter()
        .filter(|l| l.contains("handed back"))
        .cloned()
        .collect();
    eprintln!(
        "{label}: the second provider finished {rest:.1?} after the first stopped; the first said: {handed_back:?}"
    );
    assert_eq!((report.lost, report.duplicates), (0, 0));
    assert_eq!((report.poison_handled, report.good_dead), (0, 0));
}

pub(crate) fn nats_settings(port: u16) -> String {
    format!(
        "type = \"nats\"\njetstream = true\nurl = \"nats://127.0.0.1:{port}\"\nack_wait = \"10s\"\n"
    )
}

fn redis_settings(port: u16) -> String {
    format!("type = \"redis\"\nurl = \"redis://127.0.0.1:{port}\"\nclaim_after = \"10s\"\n")
}

pub(crate) fn amqp_settings(port: u16) -> String {
    format!("type = \"amqp\"\nurl = \"amqp://guest:guest@127.0.0.1:{port}/%2f\"\n")
}

#[tokio::test(flavor = "multi_thread")]
async fn jetstream_survives_broker_restarts_and_provider_kills() {
    let server = PrivateServer::start(crate::nats::nats_server);
    survives_broker_restarts_and_provider_kills("jetstream", server, nats_settings, AT_ONCE).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_streams_survive_broker_restarts_and_provider_kills() {
    let server = PrivateServer::start(redis_server_persistent);
    survives_broker_restarts_and_provider_kills("redis", server, redis_settings, AT_ONCE).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rabbitmq_survives_broker_restarts_and_provider_kills() {
    let server = PrivateServer::start(crate::amqp::rabbitmq);
    survives_broker_restarts_and_provider_kills("rabbitmq", server, amqp_settings, AT_ONCE).await;
}

/// On a private tansu (the Kafka-protocol broker here): the provider killed
/// and restarted. tansu drops a dead member from its group only when a
/// later JoinGroup comes after the member's session timeout (Kafka drops it
/// when the timeout passes), so the test waits out the link's 6 s
/// `session_timeout` before it starts the next provider (6 s: a 2 s one
/// let tansu expire live members under load).
#[tokio::test(flavor = "multi_thread")]
async fn kafka_survives_provider_kills() {
    let server = PrivateServer::start(crate::kafka::tansu_server);
    let recovery = Recovery {
        broker_restarts: false,
        ..KAFKA
    };
    survives_broker_restarts_and_provider_kills("kafka", server, kafka_settings, recovery).await;
}

/// The same with tansu itself restarted (it keeps its data in SQLite)
/// between the kills, with the producers' idempotence off. Where tansu
/// differs from Kafka: with it on, the test failed 3 of 3 runs here, and
/// tansu's log (`PRIVATE_SERVER_LOG`, kept for one of them) shows its
/// SQLite engine panicking after the restart while it checked an idempotent
/// producer's sequence (`lite.rs:503`, "more or less than one row" from
/// `producer_select_for_update`); its storage task was gone from then on,
/// so it answered every produce, fetch and group request with an error
/// (`Storage(UnableToSend)`) and the group stalled. Kafka keeps an
/// idempotent producer's state across its restarts, so the link's default
/// stays on; what this test shows (nothing lost, duplicates only in
/// flight) does not depend on it.
#[tokio::test(flavor = "multi_thread")]
async fn kafka_survives_broker_restarts_and_provider_kills() {
    let server = PrivateServer::start(crate::kafka::tansu_server);
    let settings = |port| format!("{}idempotence = false\n", kafka_settings(port));
    survives_broker_restarts_and_provider_kills("kafka", server, settings, KAFKA).await;
}

/// How a Kafka (tansu) group takes a killed provider's place back.
const KAFKA: Recovery = Recovery {
    pause_after_kill: Duration::from_secs(7),
    taken_ahead: 256,
    broker_restarts: true,
};

/// Replicas join and leave a Kafka queue's group under a flood (four
/// partitions, a private tansu): a second provider joins, and once it has
/// handled events the first stops (SIGTERM); then a third joins. Nothing
/// is lost, poison events are dead-lettered, every replica handles a share,
/// and no replica handles again what it had read ahead when its partitions
/// were revoked (see the bounds below). Handlers take 50 ms, 8 at a time
/// per replica, so that the
/// flood outlasts the joins (tansu holds a joining follower for 3 s; the
/// session timeout stays at its 10 s default, above that).
#[tokio::test(flavor = "multi_thread")]
async fn kafka_replicas_join_and_leave_under_a_flood() {
    let server = PrivateServer::start(crate::kafka::tansu_server);
    let settings = format!(
        "type = \"kafka\"\nbrokers = [\"127.0.0.1:{}\"]\nreplication_factor = 1\npartitions = 4\n",
        server.port
    );
    let n = scale("FAULT_EVENTS", 3000);
    let base = unique("rebalance");
    let rc = link_config("bus", &settings);
    let replica = |name: &str| {
        relay_app(
            &base,
            &format!(", PROBE_NAME = \"{name}\", PROBE_DELAY_MS = \"50\""),
            "max_in_flight = 8",
        )
    };
    let apps = [replica("a"), replica("b"), replica("c")];
    let bus = crate::conformance::connect(&settings).await;
    preload(&bus, &base, n).await;
    let tally = Arc::new(Mutex::new(Tally::default()));
    read_out(bus.clone(), &base, tally.clone()).await;
    let takes_part = |name: &'static str| {
        let tally = tally.clone();
        async move {
            let start = Instant::now();
            while !tally.lock().unwrap().by.contains_key(name) {
                assert!(
                    start.elapsed() < Duration::from_secs(60),
                    "replica {name} was given no partition within 60 s"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            }
        }
    };

    let mut a = provider(&apps[0].manifest, rc.path());
    takes_part("a").await;
    let mut b = provider(&apps[1].manifest, rc.path());
    takes_part("b").await;
    a.terminate();
    assert_eq!(a.wait_exit(Duration::from_secs(30)), 0, "{}", a.recent());
    let mut c = provider(&apps[2].manifest, rc.path());
    takes_part("c").await;
    let progress = {
        let t = tally.lock().unwrap();
        t.handled.len() + t.dead.len()
    };
    assert!(
        progress < n,
        "the flood ended before the third replica joined"
    );
    wait_for_progress(&tally, n, Duration::from_secs(120)).await;
    tokio::time::sleep(Duration::from_secs(2)).await;
    for p in [&mut b, &mut c] {
        p.terminate();
        assert_eq!(p.wait_exit(Duration::from_secs(30)), 0, "{}", p.recent());
    }
    let t = tally.lock().unwrap();
    let report = t.report("kafka rebalance", n);
    eprintln!("kafka rebalance: handled by replica: {:?}", t.by);
    let refused: Vec<String> = [&a, &b, &c]
        .iter()
        .flat_map(|p| p.stderr.lock().unwrap().clone())
        .filter(|l| l.contains("committing"))
        .collect();
    eprintln!("kafka rebalance: commits refused: {refused:?}");
    if std::env::var("FAULT_DEBUG").is_ok() {
        for (name, p) in [("a", &a), ("b", &b), ("c", &c)] {
            for l in p
                .stderr
                .lock()
                .unwrap()
                .iter()
                .filter(|l| l.contains("Kafka"))
            {
                eprintln!("{name}: {l}");
            }
        }
    }
    assert_eq!(report.lost, 0);
    assert_eq!((report.poison_handled, report.good_dead), (0, 0));
    assert_eq!(
        report.dead_lettered,
        (0..n).filter(|&i| is_poison(i)).count()
    );
    // What a replica had read ahead and not handed out is dropped when its
    // partitions are revoked, not handled again: the same replica handles
    // an event twice only when a partition it was working on comes back to
    // it, at most its handlers (8) at each revocation it went through
    // (about four; more when tansu, under load, rebalances again).
    let revocations: usize = [&a, &b, &c]
        .iter()
        .map(|p| {
            let log = p.stderr.lock().unwrap();
            log.iter()
                .filter(|l| l.contains("partitions revoked"))
                .count()
        })
        .sum();
    let again = t.again_by_the_same();
    eprintln!(
        "kafka rebalance: handled twice by the same replica: {again}; revocations: {revocations}"
    );
    assert!(
        again <= 8 * revocations,
        "{again} events handled twice by the same replica, more than its 8 handlers at each of {revocations} revocations"
    );
    // Across replicas: what was in flight at a handover, and, on tansu,
    // what two members took at once while its coordinator let a joining
    // member have partitions their last owner had not given up (up to 152
    // seen, against 12-20 otherwise; Kafka's coordinator waits for every
    // member before it hands out a new generation's partitions).
    assert!(
        report.duplicates <= n / 10,
        "{} duplicates",
        report.duplicates
    );
}

fn kafka_settings(port: u16) -> String {
    format!(
        "type = \"kafka\"\nbrokers = [\"127.0.0.1:{port}\"]\nreplication_factor = 1\nsession_timeout = \"6s\"\n"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn jetstream_sigterm_under_load_loses_and_duplicates_nothing() {
    let settings = "type = \"nats\"\njetstream = true\nack_wait = \"60s\"\n";
    sigterm_under_load_loses_and_duplicates_nothing("jetstream", settings).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn redis_streams_sigterm_under_load_loses_and_duplicates_nothing() {
    let settings = "type = \"redis\"\nclaim_after = \"60s\"\n";
    sigterm_under_load_loses_and_duplicates_nothing("redis", settings).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rabbitmq_sigterm_under_load_loses_and_duplicates_nothing() {
    sigterm_under_load_loses_and_duplicates_nothing("rabbitmq", "type = \"amqp\"\n").await;
}

/// On a private tansu keeping its records in SQLite. Not on the shared
/// one, whose records are in memory: that engine answers a fetch from the
/// middle of a record batch with the batches after it, so the second
/// provider, resuming at the offset the first committed there, skipped the
/// rest of that batch (3 to 9 of 3,000 events, in about 1 run of 6 beside
/// the other Kafka tests, when batches were larger; `scripts/tansu-midbatch.py`
/// shows it). Kafka, and tansu on SQLite, serve the batch that holds the
/// offset. `scripts/test.sh` runs it on its own, after the other tests:
/// alone it passes (0 lost, 0 twice, about 18 s; 9 of 9 runs on
/// 2026-12-04), but beside the other fault tests its group never started
/// in 3 of 4 runs (nothing handled in 120 s). A shared tansu on SQLite, in
/// the same state, gave the member its partitions and then answered none
/// of its heartbeats; that the private one does the same is likely, not
/// shown.
#[tokio::test(flavor = "multi_thread")]
async fn kafka_sigterm_under_load_loses_and_duplicates_nothing() {
    let server = PrivateServer::start(crate::kafka::tansu_server);
    sigterm_under_load_loses_and_duplicates_nothing("kafka", &kafka_settings(server.port)).await;
}
