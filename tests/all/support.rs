//! Shared helpers: building the guest components, writing app manifests,
//! starting providers and watching channels.

#![allow(dead_code)]

use messaging_provider::broker::Subscription;
use messaging_provider::cloudevents::Event;
use messaging_provider::host::HostOptions;
use messaging_provider::{Provider, ProviderOptions};
use std::io::{BufRead, BufReader};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::{Arc, Mutex, OnceLock};
use std::time::{Duration, Instant};

/// The repository's top directory.
pub fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

/// The guest components, built once per test run from source.
pub struct Guests {
    pub probe: PathBuf,
    pub relay: PathBuf,
    pub watcher: PathBuf,
    /// Imports what the host does not provide.
    pub unhosted: PathBuf,
}

pub fn guests() -> &'static Guests {
    static GUESTS: OnceLock<Guests> = OnceLock::new();
    GUESTS.get_or_init(|| {
        for dir in ["sample-apps", "tests/fixtures"] {
            let status = Command::new(env!("CARGO"))
                .args(["build", "--release", "--target", "wasm32-wasip2"])
                .current_dir(repo().join(dir))
                .status()
                .expect("cannot run cargo");
            assert!(
                status.success(),
                "building the guests in {dir} failed (is the target installed? `rustup target add wasm32-wasip2`)"
            );
        }
        let out = repo().join("target/wasm/wasm32-wasip2/release");
        Guests {
            probe: out.join("probe.wasm"),
            relay: out.join("relay.wasm"),
            watcher: out.join("watcher.wasm"),
            unhosted: out.join("unhosted.wasm"),
        }
    })
}

/// A sample in Python (componentize-py) and JavaScript (componentize-js,
/// default features), built once per test run with the commands its READMEs
/// give.
pub struct ForeignGuests {
    pub python: PathBuf,
    pub javascript: PathBuf,
}

/// The counter in Python and JavaScript.
pub fn foreign_guests() -> &'static ForeignGuests {
    static GUESTS: OnceLock<ForeignGuests> = OnceLock::new();
    GUESTS.get_or_init(|| ForeignGuests {
        python: componentize_sample("counter-py", "counter", "counter-py.wasm"),
        javascript: build_js_sample("counter-js", "counter-js.wasm"),
    })
}

/// The relay in Python and JavaScript.
pub fn foreign_relays() -> &'static ForeignGuests {
    static RELAYS: OnceLock<ForeignGuests> = OnceLock::new();
    RELAYS.get_or_init(|| ForeignGuests {
        python: componentize_sample("relay-py", "relay", "relay-py.wasm"),
        javascript: build_js_sample("relay-js", "relay-js.wasm"),
    })
}

/// Runs `program` in `sample-apps/<dir>`, failing loudly when it cannot.
fn build_sample(dir: &str, program: &str, args: &[&str]) {
    let status = Command::new(program)
        .args(args)
        .current_dir(repo().join("sample-apps").join(dir))
        .status()
        .unwrap_or_else(|e| panic!("cannot run {program} (scripts/test.sh installs it): {e}"));
    assert!(
        status.success(),
        "`{program} {}` failed in sample-apps/{dir}",
        args.join(" ")
    );
}

/// A Python sample built with componentize-py for `world` into
/// `target/wasm/<file>`.
fn componentize_sample(dir: &str, world: &str, file: &str) -> PathBuf {
    let out = repo().join("target/wasm").join(file);
    let componentize_py = componentize_py();
    build_sample(
        dir,
        componentize_py.to_str().unwrap(),
        &[
            "-d",
            "../wit",
            "-w",
            world,
            "componentize",
            "app",
            "-o",
            out.to_str().unwrap(),
        ],
    );
    out
}

/// A JavaScript sample built with its `build.mjs` into
/// `target/wasm/<file>`, after `npm ci` when it has no `node_modules`.
fn build_js_sample(dir: &str, file: &str) -> PathBuf {
    if !repo()
        .join("sample-apps")
        .join(dir)
        .join("node_modules")
        .is_dir()
    {
        build_sample(dir, "npm", &["ci", "--no-audit", "--no-fund"]);
    }
    let out = repo().join("target/wasm").join(file);
    build_sample(dir, "node", &["build.mjs", out.to_str().unwrap()]);
    out
}

/// componentize-py, where `scripts/test.sh` installed it (pip's scripts
/// directory, which need not be on PATH).
pub fn componentize_py() -> PathBuf {
    let scripts = Command::new("python3")
        .args([
            "-c",
            "import sysconfig; print(sysconfig.get_path('scripts'))",
        ])
        .output()
        .expect("cannot run python3");
    PathBuf::from(String::from_utf8_lossy(&scripts.stdout).trim()).join("componentize-py")
}

/// The Python probe (`tests/fixtures/probe-py`), built once per test run.
pub fn python_probe() -> &'static Path {
    static PROBE: OnceLock<PathBuf> = OnceLock::new();
    PROBE.get_or_init(|| {
        let out = repo().join("target/wasm/probe-py.wasm");
        let status = Command::new(componentize_py())
            .args([
                "-d",
                "../../../wit",
                "-w",
                "service",
                "componentize",
                "app",
                "-o",
            ])
            .arg(&out)
            .current_dir(repo().join("tests/fixtures/probe-py"))
            .status()
            .expect("cannot run componentize-py (scripts/test.sh installs it)");
        assert!(status.success(), "building tests/fixtures/probe-py failed");
        out
    })
}

/// An app manifest written to a fresh directory. `{probe}` in the text
/// becomes the probe component's path.
pub struct AppDir {
    pub dir: tempfile::TempDir,
    pub manifest: PathBuf,
}

pub fn write_app(toml: &str) -> AppDir {
    let dir = tempfile::tempdir().unwrap();
    let manifest = dir.path().join("spin.toml");
    let text = toml.replace("{probe}", guests().probe.to_str().unwrap());
    std::fs::write(&manifest, text).unwrap();
    AppDir { dir, manifest }
}

/// A probe app: `inbox` queue pushed to the probe, `results` topic it
/// reports on (both on broker names of their own, so apps stay apart), plus
/// the extra channel declarations and trigger keys given.
pub fn probe_app(name: &str, channels: &str, trigger: &str) -> AppDir {
    write_app(&format!(
        r#"spin_manifest_version = 2
[application]
name = "{name}"
[application.trigger.messaging.channels]
inbox = {{ kind = "queue", address = "{name}.inbox" }}
results = {{ kind = "topic", address = "{name}.results" }}
{channels}
[[trigger.messaging]]
component = "probe"
subscriptions = ["inbox"]
{trigger}
[component.probe]
source = "{{probe}}"
"#
    ))
}

/// A probe app that reports on `results`, with more app tables (e.g.
/// `[variables]`) and more keys of `[component.probe]` (grants) given.
pub fn probe_app_granted(name: &str, app_tables: &str, component_keys: &str) -> AppDir {
    write_app(&format!(
        r#"spin_manifest_version = 2
[application]
name = "{name}"
{app_tables}
[application.trigger.messaging.channels]
inbox = {{ kind = "queue", address = "{name}.inbox" }}
results = {{ kind = "topic", address = "{name}.results" }}
[[trigger.messaging]]
component = "probe"
subscriptions = ["inbox"]
publish = ["results"]
[component.probe]
source = "{{probe}}"
{component_keys}
"#
    ))
}

/// Host options for tests: a short handler timeout.
pub fn test_host() -> HostOptions {
    HostOptions {
        handler_timeout: Duration::from_secs(5),
        ..HostOptions::default()
    }
}

/// The provider's log in tests: `RUST_LOG` (errors by default), shown with
/// a failing test's output.
pub fn init_logging() {
    static INIT: std::sync::Once = std::sync::Once::new();
    INIT.call_once(|| {
        let _ = tracing_subscriber::fmt()
            .with_env_filter(tracing_subscriber::EnvFilter::from_default_env())
            .with_test_writer()
            .try_init();
    });
}

/// Guest output in tests that run the provider in-process: to the log
/// files only (a console copy would bypass the test harness's capture).
pub fn quiet() -> messaging_provider::provider::OutputOptions {
    messaging_provider::provider::OutputOptions {
        follow: messaging_provider::provider::Follow::None,
        ..Default::default()
    }
}

/// Loads a provider, not started yet.
pub async fn load(manifests: &[&Path], runtime_config: Option<&Path>) -> Provider {
    init_logging();
    Provider::load(ProviderOptions {
        manifests: manifests.iter().map(|p| p.to_path_buf()).collect(),
        runtime_config: runtime_config.map(Path::to_path_buf),
        host: test_host(),
        output: quiet(),
        ..ProviderOptions::default()
    })
    .await
    .unwrap_or_else(|e| panic!("the provider did not load: {e:#}"))
}

/// Loads and starts a provider.
pub async fn start(manifests: &[&Path], runtime_config: Option<&Path>) -> Provider {
    let provider = load(manifests, runtime_config).await;
    provider.start().await.unwrap();
    provider
}

/// Loads and starts a provider of one app whose host runs with `host`.
pub async fn start_with_host(manifest: &Path, host: HostOptions) -> Provider {
    init_logging();
    let provider = Provider::load(ProviderOptions {
        manifests: vec![manifest.to_path_buf()],
        host,
        output: quiet(),
        ..ProviderOptions::default()
    })
    .await
    .unwrap_or_else(|e| panic!("the provider did not load: {e:#}"));
    provider.start().await.unwrap();
    provider
}

/// A watch on a channel, collecting events with a deadline.
pub struct Watch(pub Box<dyn Subscription>);

pub async fn watch(provider: &Provider, app: &str, channel: &str) -> Watch {
    Watch(provider.app(app).unwrap().watch(channel).await.unwrap())
}

/// Events that came in no set order; see [`Watch::next_in_any_order`].
pub struct InAnyOrder(pub Vec<Event>);

impl InAnyOrder {
    /// The event that `pick` chooses; a panic if none came.
    pub fn take(&self, pick: impl Fn(&Event) -> bool) -> Event {
        self.0
            .iter()
            .find(|e| pick(e))
            .cloned()
            .unwrap_or_else(|| panic!("not among the events that came: {:?}", self.0))
    }
}

impl Watch {
    /// The next event, or a panic naming what was awaited after 10 s.
    pub async fn next(&mut self, what: &str) -> Event {
        let delivery = tokio::time::timeout(Duration::from_secs(10), self.0.next())
            .await
            .unwrap_or_else(|_| panic!("timed out waiting for {what}"))
            .expect("the subscription ended");
        let (event, acked) = delivery.ack_and_take().await;
        acked.unwrap();
        event
    }

    /// The next `n` events, in whatever order they came: handlers run side
    /// by side, so events published by different handlers may overtake
    /// one another.
    pub async fn next_in_any_order(&mut self, n: usize) -> InAnyOrder {
        let mut events = Vec::with_capacity(n);
        for i in 1..=n {
            events.push(self.next(&format!("event {i} of {n}")).await);
        }
        InAnyOrder(events)
    }

    /// The next event whose id is `id`, skipping others.
    pub async fn next_with_id(&mut self, id: &str) -> Event {
        loop {
            let e = self.next(id).await;
            if e.id == id {
                return e;
            }
        }
    }

    /// Asserts nothing arrives for `wait`.
    pub async fn expect_nothing(&mut self, wait: Duration) {
        if let Ok(Some(d)) = tokio::time::timeout(wait, self.0.next()).await {
            panic!("expected no event, got {:?}", d.event());
        }
    }
}

/// `prefix.` and a random suffix: broker-side names of a test's own, so
/// tests sharing a broker stay apart.
pub fn unique(prefix: &str) -> String {
    format!(
        "{prefix}.{}",
        &uuid::Uuid::new_v4().simple().to_string()[..10]
    )
}

/// A runtime config binding the link `name` to `settings` (a link table's
/// body), in a file of its own.
pub fn link_config(name: &str, settings: &str) -> tempfile::NamedTempFile {
    let rc = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(rc.path(), format!("[messaging_link.{name}]\n{settings}")).unwrap();
    rc
}

/// An event with the given id and type, and a fixed source.
pub fn event(id: &str, ty: &str) -> Event {
    Event::new(id, "urn:tests", ty)
}

/// Publishes into an app's channel as an outside producer.
pub async fn send(provider: &Provider, app: &str, channel: &str, event: Event) {
    provider
        .app(app)
        .unwrap()
        .publish_external(channel, event)
        .await
        .unwrap_or_else(|e| panic!("publish to {app}/{channel} failed: {e}"));
}

/// A dead letter split into the event as it was sent and the attributes the
/// provider added to say what happened (`deadletter*`, by name).
pub fn dead_letter_parts(letter: &Event) -> (Event, std::collections::BTreeMap<String, String>) {
    let mut original = letter.clone();
    let (cause, kept) = letter
        .extensions
        .iter()
        .cloned()
        .partition(|(name, _)| name.starts_with("deadletter"));
    original.extensions = kept;
    (original, cause.into_iter().collect())
}

/// A probe result: (case, data).
pub fn outcome(result: &Event) -> (String, String) {
    (
        result.extension("case").unwrap_or_default().to_string(),
        String::from_utf8_lossy(result.data.as_deref().unwrap_or_default()).into_owned(),
    )
}

/// Asks the probe to do something and returns its report.
pub async fn ask(
    provider: &Provider,
    app: &str,
    results: &mut Watch,
    command: Event,
) -> (String, String) {
    let id = command.id.clone();
    send(provider, app, "inbox", command).await;
    outcome(&results.next_with_id(&format!("{id}-result")).await)
}

// The `trigger-messaging` binary, run as users run it.

pub const BIN: &str = env!("CARGO_BIN_EXE_trigger-messaging");

/// A running command whose output lines are collected as they come.
pub struct Running {
    pub child: Child,
    pub stdout: Arc<Mutex<Vec<String>>>,
    pub stderr: Arc<Mutex<Vec<String>>>,
    /// How many of its two output streams ended: both once it exited.
    closed: Arc<AtomicUsize>,
}

fn collect(
    stream: impl std::io::Read + Send + 'static,
    closed: &Arc<AtomicUsize>,
) -> Arc<Mutex<Vec<String>>> {
    let lines = Arc::new(Mutex::new(Vec::new()));
    let (sink, closed) = (lines.clone(), closed.clone());
    std::thread::spawn(move || {
        for line in BufReader::new(stream).lines().map_while(Result::ok) {
            sink.lock().unwrap().push(line);
        }
        closed.fetch_add(1, Ordering::SeqCst);
    });
    lines
}

/// Runs the provider binary with `args`, collecting its output; its log
/// filter is `info`, or `TEST_PROVIDER_LOG` when set (to debug a test).
pub fn run(args: &[&str]) -> Running {
    let child = Command::new(BIN)
        .args(args)
        .env(
            "RUST_LOG",
            std::env::var("TEST_PROVIDER_LOG").unwrap_or("info".into()),
        )
        .stdout(Stdio::piped())
        .stderr(Stdio::piped())
        .spawn()
        .unwrap();
    Running::adopt(child)
}

impl Running {
    /// Collects the output of a child started with piped stdout and stderr.
    pub fn adopt(mut child: Child) -> Running {
        let closed = Arc::new(AtomicUsize::new(0));
        let stdout = collect(child.stdout.take().unwrap(), &closed);
        let stderr = collect(child.stderr.take().unwrap(), &closed);
        Running {
            child,
            stdout,
            stderr,
            closed,
        }
    }

    /// Whether it closed both its outputs (it exited): what it has not
    /// printed yet, it never will.
    fn ended(&self) -> bool {
        self.closed.load(Ordering::SeqCst) == 2
    }

    pub fn wait_for(&self, which: &str, needle: &str) -> String {
        let lines = if which == "stdout" {
            &self.stdout
        } else {
            &self.stderr
        };
        self.wait_until(&format!("{needle:?} on {which}"), 30, || {
            lines
                .lock()
                .unwrap()
                .iter()
                .find(|l| l.contains(needle))
                .cloned()
        })
    }

    /// Polls `check` until it gives something; fails naming `what` (and
    /// showing the recent output) once `seconds` passed or the process
    /// exited without it.
    fn wait_until<T>(&self, what: &str, seconds: u64, check: impl Fn() -> Option<T>) -> T {
        let start = Instant::now();
        loop {
            let ended = self.ended();
            if let Some(found) = check() {
                return found;
            }
            assert!(!ended, "exited without {what}; got:\n{}", self.recent());
            assert!(
                start.elapsed() < Duration::from_secs(seconds),
                "no {what} within {seconds} s; got:\n{}",
                self.recent()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    /// The last lines of each stream: what a failure message should carry
    /// (a whole log pushes the message out of a log cut to its tail).
    pub fn recent(&self) -> String {
        self.streams(40)
    }

    pub fn all(&self) -> String {
        self.streams(usize::MAX)
    }

    /// Stdout and stderr, each cut to its last `shown` lines.
    fn streams(&self, shown: usize) -> String {
        fn tail(lines: &Mutex<Vec<String>>, shown: usize) -> String {
            let lines = lines.lock().unwrap();
            let skipped = lines.len().saturating_sub(shown);
            let mut text = match skipped {
                0 => String::new(),
                n => format!("({n} earlier lines left out)\n"),
            };
            text.push_str(&lines[skipped..].join("\n"));
            text
        }
        format!(
            "stdout:\n{}\nstderr:\n{}",
            tail(&self.stdout, shown),
            tail(&self.stderr, shown)
        )
    }

    pub fn terminate(&self) {
        self.signal("TERM");
    }

    /// Sends the signal named (`TERM`, `HUP`...).
    pub fn signal(&self, name: &str) {
        let status = Command::new("kill")
            .args([&format!("-{name}"), &self.child.id().to_string()])
            .status()
            .unwrap();
        assert!(status.success());
    }

    /// How many lines of stderr hold `needle` now.
    pub fn count(&self, needle: &str) -> usize {
        let lines = self.stderr.lock().unwrap();
        lines.iter().filter(|l| l.contains(needle)).count()
    }

    /// Waits until `needle` is on `n` lines of stderr.
    pub fn wait_for_count(&self, needle: &str, n: usize) {
        self.wait_until(&format!("{needle:?} on {n} lines of stderr"), 60, || {
            (self.count(needle) >= n).then_some(())
        })
    }

    pub fn wait_exit(&mut self, within: Duration) -> i32 {
        let start = Instant::now();
        loop {
            if let Some(status) = self.child.try_wait().unwrap() {
                std::thread::sleep(Duration::from_millis(100)); // let the readers drain
                return status.code().expect("exited, not killed");
            }
            assert!(
                start.elapsed() < within,
                "did not exit within {within:?}:\n{}",
                self.recent()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }
}

impl Drop for Running {
    fn drop(&mut self) {
        let _ = self.child.kill();
    }
}

pub fn free_port() -> u16 {
    std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// Runs `trigger-messaging publish` with `args` and expects it to succeed.
pub fn cli_publish(args: &[&str]) {
    let mut publish = run(&[&["publish"], args].concat());
    assert_eq!(
        publish.wait_exit(Duration::from_secs(30)),
        0,
        "{}",
        publish.all()
    );
}

pub fn up(manifests: &[&Path], extra: &[&str]) -> (Running, String) {
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let listen = format!("127.0.0.1:{port}");
    let mut args = vec!["up", "--listen", &listen];
    let paths: Vec<String> = manifests.iter().map(|m| m.display().to_string()).collect();
    for p in &paths {
        args.extend(["-f", p]);
    }
    args.extend(extra);
    let running = run(&args);
    running.wait_for("stdout", "Ready");
    (running, url)
}

// Clients that are not ours, and what the interop tests ask of them.

/// One of the foreign clients in `tests/interop/`, run with python3.
pub fn interop(script: &str, args: &[&str]) -> Command {
    let runtime = if script.ends_with(".cjs") {
        "node"
    } else {
        "python3"
    };
    let mut c = Command::new(runtime);
    c.arg(repo().join("tests/interop").join(script)).args(args);
    c
}

/// Starts a foreign reader and waits until it says on stderr that it is
/// subscribed.
pub fn start_reader(mut command: Command) -> Child {
    let mut reader = command
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
        "the foreign client did not subscribe (is it installed?)"
    );
    reader
}

/// Has the probe publish a copy of `event` (type `probe.item`, id `id`) to
/// `channel` (`topic:name` / `queue:name`); returns the probe's report.
pub async fn forward(
    provider: &Provider,
    app: &str,
    results: &mut Watch,
    event: &Event,
    id: &str,
    channel: &str,
) -> (String, String) {
    let mut cmd = event.clone();
    cmd.ty = "probe.publish".into();
    cmd.id = id.into();
    cmd.subject = Some(channel.into());
    ask(provider, app, results, cmd).await
}
