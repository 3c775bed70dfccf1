//! Reload: new deliveries reach the new version, nothing is lost or handled
//! twice, a broken file leaves the running version serving, and only what
//! changed is replaced (an unchanged app keeps running, an unchanged link
//! keeps its connection).

use crate::faults::{
    Tally, amqp_settings, nats_settings, own_log, preload_range, read_out, scale,
    wait_for_progress_of,
};
use crate::support::*;
use messaging_provider::broker::Broker;
use messaging_provider::provider::Provider;
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// The probe app of these tests, its component a copy in the app's own
/// directory (`component.wasm`), so a test can replace it.
struct ReloadApp {
    dir: tempfile::TempDir,
}

impl ReloadApp {
    fn new() -> ReloadApp {
        let app = ReloadApp {
            dir: tempfile::tempdir().unwrap(),
        };
        std::fs::copy(&guests().probe, app.wasm()).unwrap();
        app
    }

    fn manifest(&self) -> PathBuf {
        self.dir.path().join("spin.toml")
    }

    fn wasm(&self) -> PathBuf {
        self.dir.path().join("component.wasm")
    }

    /// Writes the manifest: `inbox` on link `inbox_link` pushed to the
    /// probe, which copies each event to `out` (a `queue:` or `topic:`
    /// channel) marked `handledby = version`.
    fn write(&self, version: &str, channels: &str, out: &str) {
        let text = format!(
            r#"spin_manifest_version = 2
[application]
name = "reloaded"
[application.trigger.messaging.channels]
{channels}
[[trigger.messaging]]
component = "probe"
subscriptions = ["inbox"]
publish = ["results", "done", "shipments"]
[component.probe]
source = "component.wasm"
environment = {{ PROBE_NAME = "{version}", PROBE_OUT = "{out}" }}
"#
        );
        replace_file(&self.manifest(), text.as_bytes());
    }
}

/// Replaces a file as builds and editors do: a new file renamed over it.
fn replace_file(path: &Path, bytes: &[u8]) {
    let next = path.with_extension("next");
    std::fs::write(&next, bytes).unwrap();
    std::fs::rename(&next, path).unwrap();
}

/// `wasm` with a custom section appended: another build of the same code.
fn rebuilt(wasm: &[u8], mark: &str) -> Vec<u8> {
    fn leb(mut n: usize, out: &mut Vec<u8>) {
        loop {
            let byte = (n & 0x7f) as u8;
            n >>= 7;
            if n == 0 {
                out.push(byte);
                return;
            }
            out.push(byte | 0x80);
        }
    }
    let name = b"reload-test";
    let mut body = Vec::new();
    leb(name.len(), &mut body);
    body.extend_from_slice(name);
    body.extend_from_slice(mark.as_bytes());
    let mut out = wasm.to_vec();
    out.push(0); // a custom section
    leb(body.len(), &mut out);
    out.extend_from_slice(&body);
    out
}

async fn handled_by(provider: &Provider, results: &mut Watch, id: &str) -> String {
    send(provider, "reloaded", "inbox", event(id, "t")).await;
    let result = results.next_with_id(id).await;
    result.extension("handledby").unwrap_or("-").to_string()
}

fn two_links(bus_timeout: &str) -> String {
    format!(
        "[messaging_link.local]\ntype = \"embedded\"\n\
         [messaging_link.bus]\ntype = \"nats\"\nurl = \"nats://127.0.0.1:4222\"\npublish_timeout = \"{bus_timeout}\"\n"
    )
}

#[tokio::test(flavor = "multi_thread")]
async fn a_reload_replaces_what_changed_and_only_that() {
    let base = unique("reload");
    let app = ReloadApp::new();
    let channels = format!(
        r#"inbox = {{ kind = "queue", link = "bus", address = "{base}.inbox" }}
results = {{ kind = "topic", link = "local", address = "{base}.results" }}
shipments = {{ kind = "topic", link = "local", address = "{base}.shipments" }}
done = {{ kind = "queue", link = "local", address = "{base}.done" }}"#
    );
    app.write("v1", &channels, "topic:results");
    let rc = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(rc.path(), two_links("5s")).unwrap();
    let provider = start(&[&app.manifest()], Some(rc.path())).await;
    let mut results = watch(&provider, "reloaded", "results").await;
    assert_eq!(handled_by(&provider, &mut results, "e1").await, "v1");

    // The manifest changed: the app is replaced, its links are kept.
    let (v1, local, bus) = (
        provider.app("reloaded").unwrap(),
        provider.link("local").unwrap(),
        provider.link("bus").unwrap(),
    );
    // The instance goes back to the pool once its handler has returned.
    let warm = Instant::now();
    while v1.instances("probe").unwrap().idle() == 0 {
        assert!(
            warm.elapsed() < Duration::from_secs(5),
            "no warm instance after e1"
        );
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    app.write("v2", &channels, "topic:results");
    let report = provider.reload().await.unwrap();
    assert_eq!(report.changed, ["reloaded"], "{report}");
    assert!(report.reconnected.is_empty(), "{report}");
    assert!(Arc::ptr_eq(&provider.link("local").unwrap(), &local));
    assert!(Arc::ptr_eq(&provider.link("bus").unwrap(), &bus));
    assert_eq!(
        v1.instances("probe").unwrap().idle(),
        0,
        "the old version's warm instances are dropped"
    );
    assert_eq!(handled_by(&provider, &mut results, "e2").await, "v2");

    // Nothing changed: nothing is replaced.
    let v2 = provider.app("reloaded").unwrap();
    let report = provider.reload().await.unwrap();
    assert!(report.is_empty(), "{report}");
    assert!(Arc::ptr_eq(&provider.app("reloaded").unwrap(), &v2));

    // A broken manifest, then a broken wasm file: the error names the file,
    // and the running version goes on serving.
    std::fs::write(app.manifest(), "spin_manifest_version = 2\n[application\n").unwrap();
    let error = format!("{:#}", provider.reload().await.unwrap_err());
    assert!(error.contains("spin.toml"), "{error}");
    assert_eq!(handled_by(&provider, &mut results, "e3").await, "v2");
    app.write("v2", &channels, "topic:results");
    replace_file(&app.wasm(), b"\0asm but not really");
    let error = format!("{:#}", provider.reload().await.unwrap_err());
    assert!(error.contains("component.wasm"), "{error}");
    assert!(Arc::ptr_eq(&provider.app("reloaded").unwrap(), &v2));
    assert_eq!(handled_by(&provider, &mut results, "e4").await, "v2");

    // Another program in the wasm file: the relay ships what comes in now.
    replace_file(&app.wasm(), &std::fs::read(&guests().relay).unwrap());
    let report = provider.reload().await.unwrap();
    assert_eq!(report.changed, ["reloaded"], "{report}");
    let mut shipments = watch(&provider, "reloaded", "shipments").await;
    let mut order = event("e5", "com.example.order");
    order.data = Some(b"{\"n\":5}".to_vec());
    send(&provider, "reloaded", "inbox", order.clone()).await;
    shipments.next_with_id("e5-shipped").await;

    // One link's settings changed: that link alone is connected anew, and
    // the app's subscription on it moves to the new connection.
    std::fs::write(rc.path(), two_links("6s")).unwrap();
    let report = provider.reload().await.unwrap();
    assert_eq!(report.reconnected, ["bus"], "{report}");
    assert_eq!(report.changed, ["reloaded"], "{report}");
    assert!(Arc::ptr_eq(&provider.link("local").unwrap(), &local));
    assert!(!Arc::ptr_eq(&provider.link("bus").unwrap(), &bus));
    order.id = "e6".into();
    send(&provider, "reloaded", "inbox", order).await;
    shipments.next_with_id("e6-shipped").await;
    provider.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn a_guest_subscription_moves_to_the_new_version_with_its_token() {
    let base = unique("reload");
    let app = ReloadApp::new();
    let channels = format!(
        r#"inbox = {{ kind = "queue", address = "{base}.inbox" }}
extra = {{ kind = "topic", address = "{base}.extra" }}
results = {{ kind = "topic", address = "{base}.results" }}
shipments = {{ kind = "topic", address = "{base}.shipments" }}
done = {{ kind = "queue", address = "{base}.done" }}"#
    );
    let write = |version: &str| {
        app.write(version, &channels, "topic:results");
        let text = std::fs::read_to_string(app.manifest()).unwrap();
        let text = text.replace("publish = [", "subscribe = [\"extra\"]\npublish = [");
        replace_file(&app.manifest(), text.as_bytes());
    };
    write("v1");
    let rc = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(rc.path(), "").unwrap();
    let provider = start(&[&app.manifest()], Some(rc.path())).await;
    let mut results = watch(&provider, "reloaded", "results").await;
    let mut subscribe = event("sub", "probe.subscribe");
    subscribe.subject = Some("topic:extra".into());
    send(&provider, "reloaded", "inbox", subscribe).await;
    let (case, token) = outcome(&results.next_with_id("sub-result").await);
    assert_eq!(case, "ok", "{token}");

    write("v2");
    provider.reload().await.unwrap();
    let app_now = provider.app("reloaded").unwrap();
    assert_eq!(app_now.dynamic_subscriptions(), 1);
    send(&provider, "reloaded", "extra", event("x1", "t")).await;
    let copied = results.next_with_id("x1").await;
    assert_eq!(copied.extension("handledby"), Some("v2"));

    // The token the old version got still ends the subscription.
    let mut unsubscribe = event("unsub", "probe.unsubscribe");
    unsubscribe.data = Some(token.into_bytes());
    send(&provider, "reloaded", "inbox", unsubscribe).await;
    let (case, message) = outcome(&results.next_with_id("unsub-result").await);
    assert_eq!(case, "ok", "{message}");
    assert_eq!(app_now.dynamic_subscriptions(), 0);
    provider.shutdown(Duration::from_secs(5)).await;
}

/// How a flood test asks the provider to reload.
#[derive(Clone, Copy, PartialEq)]
enum Ask {
    /// `up --watch` sees the files change.
    Watch,
    /// SIGHUP, after the files changed.
    Hangup,
}

/// A steady flow through a durable queue (every hundredth event poison,
/// so retries and dead letters cross the reloads too) while the app is
/// reloaded three times: a new manifest (`handledby` v1 → v2), a broken
/// wasm file (written twice: reported once, the app goes on), and a new
/// build of the component. Counted by event id: nothing lost, nothing
/// handled twice, and both versions handled events. Half the events wait
/// on the queue from the start; the other half is published once the new
/// manifest is in, so that v2 has events to handle however fast the
/// provider drained the first half.
async fn reload_under_flood(label: &str, settings: &str, ask: Ask) {
    let n = scale("RELOAD_EVENTS", 3000);
    let base = unique("reload");
    let app = ReloadApp::new();
    let channels = format!(
        r#"inbox = {{ kind = "queue", link = "bus", address = "{base}.work", max_attempts = 3, retry_delay = "200ms", max_retry_delay = "1s", dead_letter = "dead" }}
done = {{ kind = "queue", link = "bus", address = "{base}.done" }}
results = {{ kind = "topic", address = "{base}.results" }}
shipments = {{ kind = "topic", address = "{base}.shipments" }}
dead = {{ kind = "queue", link = "bus", address = "{base}.dead" }}"#
    );
    app.write("v1", &channels, "queue:done");
    let rc = link_config("bus", settings);
    let bus: Arc<dyn Broker> = crate::conformance::connect(settings).await;
    preload_range(&bus, &base, 0..n / 2).await;
    let tally = Arc::new(Mutex::new(Tally::default()));
    read_out(bus.clone(), &base, tally.clone()).await;

    let manifest = app.manifest();
    let mut args = vec![
        "up",
        "-q",
        "-f",
        manifest.to_str().unwrap(),
        "--runtime-config-file",
        rc.path().to_str().unwrap(),
        "--log-dir",
        "",
    ];
    if ask == Ask::Watch {
        args.push("--watch");
    }
    let mut p = run(&args);
    p.wait_for("stdout", "Ready");
    let start = Instant::now();
    let patience = Duration::from_secs(120) + Duration::from_millis(20 * n as u64);
    let reload = |p: &Running| {
        if ask == Ask::Hangup {
            p.signal("HUP");
        }
    };
    let broken = b"\0asm, half written".to_vec();
    let probe = std::fs::read(&guests().probe).unwrap();

    wait_for_progress_of(&tally, n / 4, patience, &p).await;
    eprintln!("{label}: {:.1?}: a new manifest", start.elapsed());
    app.write("v2", &channels, "queue:done");
    reload(&p);
    p.wait_for_count("reloaded (", 1);
    let second_half = {
        let (bus, base) = (bus.clone(), base.clone());
        tokio::spawn(async move { preload_range(&bus, &base, n / 2..n).await })
    };

    wait_for_progress_of(&tally, n / 2, patience, &p).await;
    eprintln!(
        "{label}: {:.1?}: a broken wasm file, twice",
        start.elapsed()
    );
    replace_file(&app.wasm(), &broken);
    reload(&p);
    p.wait_for_count("failed; the running version stays as it was", 1);
    replace_file(&app.wasm(), &broken);
    reload(&p);

    wait_for_progress_of(&tally, 3 * n / 4, patience, &p).await;
    eprintln!(
        "{label}: {:.1?}: a new build of the component",
        start.elapsed()
    );
    replace_file(&app.wasm(), &rebuilt(&probe, label));
    reload(&p);
    p.wait_for_count("reloaded (", 2);

    second_half.await.unwrap();
    wait_for_progress_of(&tally, n, patience, &p).await;
    // Late duplicates have a moment to show.
    tokio::time::sleep(Duration::from_secs(2)).await;
    p.terminate();
    assert_eq!(p.wait_exit(Duration::from_secs(30)), 0, "{}", p.recent());
    let report = tally.lock().unwrap().report(label, n);
    let by = tally.lock().unwrap().by.clone();
    eprintln!(
        "{label}: handled by version: {by:?}, in {:.1}s",
        start.elapsed().as_secs_f64()
    );
    // What went wrong comes first in each message: `scripts/test.sh` repeats
    // the first lines of a failure's message at the end of its output.
    let counts = format!("{report:?}, handled by version {by:?}");
    assert!(
        report.lost == 0
            && report.duplicates == 0
            && report.poison_handled == 0
            && report.good_dead == 0,
        "{label}: {counts}; the provider logged:\n{}",
        own_log(&p).join("\n")
    );
    let (v1, v2) = (by.get("v1"), by.get("v2"));
    assert!(
        v1.is_some_and(|&n| n > 0) && v2.is_some_and(|&n| n > 0) && by.len() == 2,
        "{label}: not both versions handled events: {counts}"
    );
    let reported = p.count("failed; the running version stays as it was");
    assert_eq!(
        reported,
        1,
        "{label}: the same broken file was reported {reported} times, not once:\n{}",
        own_log(&p).join("\n")
    );
}

#[tokio::test(flavor = "multi_thread")]
async fn jetstream_reload_under_flood_loses_and_duplicates_nothing() {
    reload_under_flood("jetstream reload", &nats_settings(4222), Ask::Watch).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn rabbitmq_reload_under_flood_loses_and_duplicates_nothing() {
    reload_under_flood("rabbitmq reload", &amqp_settings(5672), Ask::Hangup).await;
}
