//! Isolation between components in one process: a good app keeps its
//! throughput and loses nothing next to misbehaving ones, instances stay
//! within their memory limit, and the HTTP endpoint answers while handlers
//! are busy.
//!
//! The good and the bad apps share the process with `ISOLATION_IDLE_APPS`
//! idle copies of the relay sample (1,000 by default).
//!
//! `ISOLATION_EVENTS` sets how many events the good app relays per
//! measurement, over seven windows (default 14,000; the README's figures
//! use 50,000), and `ISOLATION_MIN_RATIO` the share of its throughput it
//! must keep (default 0.5; 0.9 in `scripts/faults.sh`).

use crate::support::*;
use messaging_provider::Provider;
use std::collections::BTreeSet;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};

fn good_app() -> AppDir {
    probe_app("good", "", r#"publish = ["results"]"#)
}

/// One component per way of misbehaving, each on a queue of its own.
fn bad_app() -> AppDir {
    let mut text = String::from(
        r#"spin_manifest_version = 2
[application]
name = "bad"
[application.trigger.messaging.channels]
"#,
    );
    for kind in MISBEHAVIOURS {
        text += &format!("{kind} = {{ kind = \"queue\", address = \"bad.{kind}\" }}\n");
    }
    for kind in MISBEHAVIOURS {
        text += &format!(
            "[[trigger.messaging]]\ncomponent = \"{kind}\"\nsubscriptions = [\"{kind}\"]\n[component.{kind}]\nsource = \"{{probe}}\"\n"
        );
    }
    write_app(&text)
}

/// Copies of the relay sample, each on channels of its own that nothing
/// publishes to: loaded beside the good and the bad apps, they must cost
/// them nothing.
fn idle_apps(n: usize) -> Vec<AppDir> {
    let sample = std::fs::read_to_string(repo().join("sample-apps/relay/spin.toml")).unwrap();
    let relay = guests().relay.display().to_string();
    (0..n)
        .map(|i| {
            let text = sample
                .replace("name = \"relay\"", &format!("name = \"idle{i}\""))
                .replace(
                    "kind = \"queue\"",
                    &format!("kind = \"queue\"\naddress = \"idle{i}.orders\""),
                )
                .lines()
                .map(|line| match line.starts_with("source = ") {
                    true => format!("source = {relay:?}"),
                    false => line.to_string(),
                })
                .collect::<Vec<_>>()
                .join("\n");
            write_app(&text)
        })
        .collect()
}

/// How many idle apps are loaded beside the others: `ISOLATION_IDLE_APPS`,
/// 1,000 by default.
fn idle_app_count() -> usize {
    std::env::var("ISOLATION_IDLE_APPS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(1000)
}

/// Channel (and component) name, and the probe event type that misbehaves.
const MISBEHAVIOURS: [&str; 4] = ["spin", "hog", "recurse", "trap"];

/// The share of its throughput alone the good app must keep beside the
/// misbehaving ones: `ISOLATION_MIN_RATIO`, 0.9 in `scripts/faults.sh`.
/// The suite's short run, on a busy two-core machine, only checks that the
/// good app is not starved (the defect was 2.5 %): ratios there vary by a
/// tenth from run to run, and speed is not a test-suite assertion.
fn min_ratio() -> f64 {
    std::env::var("ISOLATION_MIN_RATIO")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(0.5)
}

fn events_per_measurement() -> usize {
    std::env::var("ISOLATION_EVENTS")
        .ok()
        .and_then(|n| n.parse().ok())
        .unwrap_or(14_000)
}

/// Relays `n` events through the good app; returns events per second and
/// checks every one came through exactly once.
async fn good_throughput(
    provider: &Arc<Provider>,
    results: &mut Watch,
    n: usize,
    tag: &str,
) -> f64 {
    let start = Instant::now();
    let sender = {
        let provider = provider.clone();
        let tag = tag.to_string();
        tokio::spawn(async move {
            for i in 0..n {
                send(
                    &provider,
                    "good",
                    "inbox",
                    event(&format!("{tag}-{i}"), "work.item"),
                )
                .await;
            }
        })
    };
    let mut seen = BTreeSet::new();
    while seen.len() < n {
        let e = results.next("a relayed event").await;
        if e.id.starts_with(tag) {
            assert!(seen.insert(e.id.clone()), "{} relayed twice", e.id);
        }
    }
    sender.await.unwrap();
    n as f64 / start.elapsed().as_secs_f64()
}

/// Throughput over several windows: one window varies by about ±5 % from
/// the next, so windows are compared by their median.
struct Windows {
    median: f64,
    all: Vec<f64>,
}

impl std::fmt::Display for Windows {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        let all: Vec<String> = self.all.iter().map(|w| format!("{w:.0}")).collect();
        write!(f, "{:.0} (median of {})", self.median, all.join(", "))
    }
}

const WINDOWS: usize = 7;

async fn measure(provider: &Arc<Provider>, results: &mut Watch, n: usize, tag: &str) -> Windows {
    let mut all = Vec::new();
    for i in 0..WINDOWS {
        all.push(good_throughput(provider, results, n / WINDOWS, &format!("{tag}{i}-")).await);
    }
    let mut sorted = all.clone();
    sorted.sort_by(f64::total_cmp);
    Windows {
        median: sorted[WINDOWS / 2],
        all,
    }
}

fn rss_mib() -> u64 {
    let status = std::fs::read_to_string("/proc/self/status").unwrap();
    let kb: u64 = status
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.split_whitespace().next())
        .and_then(|v| v.parse().ok())
        .unwrap();
    kb / 1024
}

/// Sends each misbehaving component `per_second` events until `stop`.
fn feed_misbehaving(
    provider: &Arc<Provider>,
    per_second: u64,
    stop: Arc<AtomicBool>,
) -> tokio::task::JoinHandle<usize> {
    let provider = provider.clone();
    tokio::spawn(async move {
        let mut sent = 0;
        let mut tick = tokio::time::interval(Duration::from_millis(1000 / per_second));
        while !stop.load(Ordering::Relaxed) {
            tick.tick().await;
            for kind in MISBEHAVIOURS {
                let mut e = event(&format!("{kind}-{sent}"), &format!("probe.{kind}"));
                e.data = Some(b"4096".to_vec());
                send(&provider, "bad", kind, e).await;
            }
            sent += 1;
        }
        sent
    })
}

/// Times one publish and one watch through the endpoint.
async fn endpoint_latency(url: &str) -> Duration {
    let client = reqwest::Client::new();
    let start = Instant::now();
    let posted = client
        .post(format!("{url}/v1/apps/good/channels/inbox"))
        .header("ce-specversion", "1.0")
        .header("ce-id", format!("http-{}", uuid::Uuid::new_v4()))
        .header("ce-source", "urn:tests")
        .header("ce-type", "work.item")
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 202);
    let watched = client
        .get(format!("{url}/v1/apps/good/channels/results"))
        .send()
        .await
        .unwrap();
    assert_eq!(watched.status(), 200);
    start.elapsed()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_good_app_keeps_its_throughput_next_to_misbehaving_ones() {
    let (good, bad) = (good_app(), bad_app());
    let idle = idle_apps(idle_app_count());
    let mut manifests = vec![good.manifest.as_path(), bad.manifest.as_path()];
    manifests.extend(idle.iter().map(|app| app.manifest.as_path()));
    let provider = Arc::new(start(&manifests, None).await);
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let _endpoint = messaging_provider::http::Endpoint::start(listener, &provider).unwrap();
    let mut results = watch(&provider, "good", "results").await;
    let n = events_per_measurement();

    good_throughput(&provider, &mut results, 300, "warm").await;
    let alone = measure(&provider, &mut results, n, "alone").await;
    let (rss_alone, latency_alone) = (rss_mib(), endpoint_latency(&url).await);

    let stop = Arc::new(AtomicBool::new(false));
    let feeder = feed_misbehaving(&provider, 20, stop.clone());
    // Let every misbehaving component fill its share of instances.
    tokio::time::sleep(Duration::from_secs(3)).await;
    let mut latencies = Vec::new();
    for _ in 0..5 {
        latencies.push(endpoint_latency(&url).await);
    }
    let beside = measure(&provider, &mut results, n, "beside").await;
    let rss_beside = rss_mib();
    stop.store(true, Ordering::Relaxed);
    let fed = feeder.await.unwrap();

    let ratio = beside.median / alone.median;
    let slowest = latencies.iter().max().unwrap();
    eprintln!(
        "isolation ({} idle apps loaded too): good app alone {alone} events/s, beside a looping, a memory-hungry, a stack-overflowing and an always-trapping component (each fed 20 events/s, {fed} each) {beside} events/s: ratio of medians {ratio:.2}; RSS {rss_alone} MiB alone, {rss_beside} MiB beside; HTTP publish + watch {latency_alone:?} alone, at most {slowest:?} beside",
        idle.len()
    );
    let floor = min_ratio();
    assert!(
        ratio >= floor,
        "the good app kept only {ratio:.2} of its throughput (at least {floor} required)"
    );
    assert!(
        *slowest < Duration::from_secs(2),
        "the HTTP endpoint took {slowest:?} to answer"
    );
}

#[tokio::test]
async fn an_instance_past_its_memory_limit_is_stopped_with_a_clear_error() {
    let app = probe_app(
        "memory",
        r#"dlq = { kind = "topic" }
roomy = { kind = "queue", address = "memory.roomy", max_attempts = 1, dead_letter = "dlq" }"#,
        r#"publish = ["results"]
[[trigger.messaging]]
component = "roomy"
subscriptions = ["roomy"]
publish = ["results"]
max_memory = "256 MiB"
[component.roomy]
source = "{probe}""#,
    );
    let text = std::fs::read_to_string(&app.manifest).unwrap().replace(
        "kind = \"queue\", address = \"memory.inbox\"",
        "kind = \"queue\", address = \"memory.inbox\", max_attempts = 1, dead_letter = \"dlq\"",
    );
    std::fs::write(&app.manifest, text).unwrap();
    let provider = start(&[&app.manifest], None).await;
    let mut results = watch(&provider, "memory", "results").await;
    let mut dlq = watch(&provider, "memory", "dlq").await;

    // Within the default 64 MiB: fine.
    let mut small = event("small", "probe.hog");
    small.data = Some(b"32".to_vec());
    assert_eq!(
        ask(&provider, "memory", &mut results, small).await,
        ("ok".into(), "held 32 MiB".into())
    );
    // Past it: stopped, and the dead letter says why.
    let mut big = event("big", "probe.hog");
    big.data = Some(b"128".to_vec());
    send(&provider, "memory", "inbox", big).await;
    let (_, cause) = dead_letter_parts(&dlq.next("the dead letter").await);
    assert!(
        cause["deadlettererror"].contains("over its limit of 64 MiB")
            && cause["deadlettererror"].contains("max_memory"),
        "{cause:?}"
    );
    // A component given more room holds more.
    let mut roomy = event("roomy", "probe.hog");
    roomy.data = Some(b"128".to_vec());
    send(&provider, "memory", "roomy", roomy).await;
    assert_eq!(
        outcome(&results.next_with_id("roomy-result").await).1,
        "held 128 MiB"
    );
    // The stack overflows into a trap, not a crash.
    send(&provider, "memory", "inbox", event("deep", "probe.recurse")).await;
    let (original, cause) = dead_letter_parts(&dlq.next("the stack overflow").await);
    assert_eq!(original.id, "deep");
    assert!(cause["deadlettererror"].contains("trapped"), "{cause:?}");
}

#[tokio::test]
async fn a_component_cannot_take_another_components_instances() {
    let app = probe_app(
        "shares",
        r#"busy = { kind = "queue", address = "shares.busy" }"#,
        r#"publish = ["results"]
[[trigger.messaging]]
component = "spinner"
subscriptions = ["busy"]
max_in_flight = 2
[component.spinner]
source = "{probe}""#,
    );
    let provider = start(&[&app.manifest], None).await;
    let mut results = watch(&provider, "shares", "results").await;
    for i in 0..10 {
        send(
            &provider,
            "shares",
            "busy",
            event(&format!("spin-{i}"), "probe.spin"),
        )
        .await;
    }
    tokio::time::sleep(Duration::from_millis(300)).await;
    // The spinner loops in both of its instances until the handler timeout
    // (5 s here); the probe's own share is untouched.
    let start = Instant::now();
    send(&provider, "shares", "inbox", event("meanwhile", "t")).await;
    results.next_with_id("meanwhile").await;
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "the probe waited {:?} behind the spinner",
        start.elapsed()
    );
}

#[tokio::test]
async fn waiting_for_a_free_instance_does_not_count_against_the_handler_timeout() {
    // One instance at a time, three handlers of 2 s each, a 5 s timeout:
    // the third waits 4 s for its turn and still succeeds.
    let app = probe_app("turns", "", "publish = [\"results\"]\nmax_in_flight = 1");
    let provider = start(&[&app.manifest], None).await;
    let mut results = watch(&provider, "turns", "results").await;
    for i in 0..3 {
        let mut e = event(&format!("slow-{i}"), "probe.sleep");
        e.data = Some(b"2000".to_vec());
        send(&provider, "turns", "inbox", e).await;
    }
    for i in 0..3 {
        let report = outcome(&results.next_with_id(&format!("slow-{i}-result")).await);
        assert_eq!(report, ("ok".into(), "slept".into()));
    }
}

#[tokio::test]
async fn max_instance_memory_caps_every_instance_below_its_own_limit() {
    let app = probe_app(
        "capped",
        r#"dlq = { kind = "topic" }"#,
        r#"publish = ["results"]
max_memory = "256 MiB""#,
    );
    let text = std::fs::read_to_string(&app.manifest).unwrap().replace(
        "kind = \"queue\", address = \"capped.inbox\"",
        "kind = \"queue\", address = \"capped.inbox\", max_attempts = 1, dead_letter = \"dlq\"",
    );
    std::fs::write(&app.manifest, text).unwrap();
    let host = messaging_provider::host::HostOptions {
        max_instance_memory: Some(48 << 20),
        ..test_host()
    };
    let provider = start_with_host(&app.manifest, host).await;
    let mut results = watch(&provider, "capped", "results").await;
    let mut dlq = watch(&provider, "capped", "dlq").await;
    let mut small = event("small", "probe.hog");
    small.data = Some(b"16".to_vec());
    assert_eq!(
        ask(&provider, "capped", &mut results, small).await,
        ("ok".into(), "held 16 MiB".into())
    );
    // 64 MiB fits the component's own 256 MiB but not the flag's 48 MiB.
    let mut big = event("big", "probe.hog");
    big.data = Some(b"64".to_vec());
    send(&provider, "capped", "inbox", big).await;
    let (_, cause) = dead_letter_parts(&dlq.next("the dead letter").await);
    assert!(
        cause["deadlettererror"].contains("over its limit of 48 MiB")
            && cause["deadlettererror"].contains("--max-instance-memory"),
        "{cause:?}"
    );
    provider.shutdown(Duration::from_secs(5)).await;
}
