//! The Spin plugin: the locked app `spin up` writes, the binary launched the
//! way `spin up` launches trigger plugins (no subcommand, `SPIN_*`
//! environment, Spin's common trigger flags and hidden queries), and the
//! plugin package `spin plugins install --file` takes.

use crate::support::*;
use messaging_provider::manifest::{LockedAppLocation, load_locked_app};
use serde_json::{Value, json};
use sha2::Digest as _;
use std::path::{Path, PathBuf};
use std::process::{Command, Stdio};
use std::time::Duration;

const BIN: &str = env!("CARGO_BIN_EXE_trigger-messaging");

/// The locked app `spin up` writes for a spin.toml, following the format of
/// Spin's locked app (crate spin-locked-app) as `spin up` fills it for a
/// single-trigger-type app: metadata (with `origin` and both trigger tables),
/// variables without `required`, one trigger per `[[trigger.messaging]]`
/// (`id` defaulting to `<component>-messaging-trigger`), components with
/// `file://` sources and `env`.
fn lock_of(manifest: &Path) -> Value {
    let manifest = manifest.canonicalize().unwrap();
    let dir = manifest.parent().unwrap();
    let doc: toml::Table = toml::from_str(&std::fs::read_to_string(&manifest).unwrap()).unwrap();
    let app = &doc["application"];
    let messaging = app
        .get("trigger")
        .and_then(|t| t.get("messaging"))
        .map(|m| serde_json::to_value(m).unwrap())
        .unwrap_or(json!({}));
    let mut single = messaging.clone();
    single["type"] = json!("messaging");
    let mut metadata = json!({
        "name": app["name"].as_str(),
        "origin": url::Url::from_file_path(&manifest).unwrap().to_string(),
        "trigger": single,
        "triggers": { "messaging": messaging },
    });
    for key in ["version", "description"] {
        if let Some(v) = app.get(key) {
            metadata[key] = serde_json::to_value(v).unwrap();
        }
    }
    let mut variables = serde_json::Map::new();
    for (name, decl) in doc
        .get("variables")
        .and_then(|v| v.as_table())
        .into_iter()
        .flatten()
    {
        let mut locked = serde_json::to_value(decl).unwrap();
        locked.as_object_mut().unwrap().remove("required");
        variables.insert(name.clone(), locked);
    }
    let triggers: Vec<Value> = doc["trigger"]["messaging"]
        .as_array()
        .unwrap()
        .iter()
        .map(|t| {
            let mut config = serde_json::to_value(t).unwrap();
            let id = config
                .as_object_mut()
                .unwrap()
                .remove("id")
                .unwrap_or_else(|| {
                    json!(format!(
                        "{}-messaging-trigger",
                        t["component"].as_str().unwrap()
                    ))
                });
            json!({ "id": id, "trigger_type": "messaging", "trigger_config": config })
        })
        .collect();
    let components: Vec<Value> = doc["component"]
        .as_table()
        .unwrap()
        .iter()
        .map(|(id, c)| {
            let source = dir.join(c["source"].as_str().unwrap());
            let value = |key: &str| c.get(key).map(|v| serde_json::to_value(v).unwrap());
            let mut metadata = serde_json::Map::new();
            for key in ["allowed_outbound_hosts", "key_value_stores"] {
                if let Some(v) = value(key) {
                    metadata.insert(key.into(), v);
                }
            }
            let mut component = json!({
                "id": id,
                "source": {
                    "content_type": "application/wasm",
                    "source": url::Url::from_file_path(&source).unwrap().to_string(),
                },
                "env": value("environment").unwrap_or(json!({})),
                "metadata": metadata,
            });
            // Spin keeps a component's variables, templates unresolved, as `config`.
            if let Some(variables) = value("variables") {
                component["config"] = variables;
            }
            component
        })
        .collect();
    json!({
        "spin_lock_version": 0,
        "metadata": metadata,
        "variables": variables,
        "triggers": triggers,
        "components": components,
    })
}

/// A working directory as `spin up` makes one, holding the lock.
struct SpinUp {
    working_dir: tempfile::TempDir,
    lock: PathBuf,
    local_app_dir: Option<PathBuf>,
}

impl SpinUp {
    fn new(lock: &Value, local_app_dir: Option<&Path>) -> SpinUp {
        let working_dir = tempfile::tempdir().unwrap();
        let path = working_dir.path().join("spin.lock");
        std::fs::write(&path, serde_json::to_vec_pretty(lock).unwrap()).unwrap();
        SpinUp {
            working_dir,
            lock: path,
            local_app_dir: local_app_dir.map(Path::to_path_buf),
        }
    }

    fn location(&self) -> LockedAppLocation {
        LockedAppLocation {
            lock: self.lock.clone(),
            working_dir: self.working_dir.path().to_path_buf(),
            local_app_dir: self.local_app_dir.clone(),
        }
    }

    /// The plugin process as `spin up` starts it: the plugin's arguments
    /// only, Spin's variables in its environment, stdio piped for the test.
    fn command(&self, bin: &str, args: &[&str]) -> Command {
        let mut c = Command::new(bin);
        c.args(args)
            .env("RUST_LOG", "info")
            .env(
                "SPIN_LOCKED_URL",
                url::Url::from_file_path(&self.lock).unwrap().to_string(),
            )
            .env("SPIN_WORKING_DIR", self.working_dir.path())
            .env("SPIN_VERSION", "3.4.1")
            .env("SPIN_VERSION_MAJOR", "3")
            .env("SPIN_VERSION_MINOR", "4")
            .env("SPIN_VERSION_PATCH", "1")
            .env("SPIN_BIN_PATH", "/usr/local/bin/spin")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped());
        if let Some(dir) = &self.local_app_dir {
            c.env("SPIN_LOCAL_APP_DIR", dir);
        }
        c
    }

    fn launch(&self, bin: &str, args: &[&str]) -> Running {
        Running::adopt(self.command(bin, args).spawn().unwrap())
    }
}

/// Summary lines that do not name files (those differ between a manifest
/// path as given and the canonical one in the lock).
fn summary_without_paths(running: &Running) -> Vec<String> {
    running
        .stdout
        .lock()
        .unwrap()
        .iter()
        .take_while(|l| !l.starts_with("Listening") && !l.starts_with("Ready"))
        .filter(|l| !l.contains(".toml") && !l.contains(".wasm"))
        .cloned()
        .collect()
}

/// Publishes with `trigger-messaging publish` and expects it to succeed.
fn publish_order(url: &str, id: &str) {
    cli_publish(&[
        "--url",
        url,
        "relay",
        "orders",
        "--type",
        "com.example.order.created",
        "--id",
        id,
        "--data",
        r#"{"sku":"S1"}"#,
        "--content-type",
        "application/json",
    ]);
}

#[test]
fn spin_up_launch_runs_the_relay_sample_exactly_like_up() {
    guests();
    let manifest = repo()
        .join("sample-apps/relay/spin.toml")
        .canonicalize()
        .unwrap();
    let app_dir = manifest.parent().unwrap();
    let spin = SpinUp::new(&lock_of(&manifest), Some(app_dir));
    let state = tempfile::tempdir().unwrap();
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let url = format!("http://{listen}");
    let state_dir = state.path().to_str().unwrap();
    let mut launched = spin.launch(BIN, &["--listen", &listen, "--state-dir", state_dir]);
    launched.wait_for("stdout", "Ready");
    let (mut by_up, _) = up(&[&manifest], &["--state-dir", state_dir]);
    assert_eq!(
        summary_without_paths(&launched),
        summary_without_paths(&by_up)
    );
    assert!(
        launched.stdout.lock().unwrap()[0]
            .contains(&format!("App `relay` ({})", manifest.display())),
        "the app is named after the spin.toml the lock came from:\n{}",
        launched.all()
    );
    by_up.terminate();
    assert_eq!(by_up.wait_exit(Duration::from_secs(20)), 0);

    let tail = run(&["tail", "--url", &url, "relay", "shipments", "-n", "1"]);
    tail.wait_for("stderr", "watching `shipments`");
    publish_order(&url, "spin-1");
    let line = tail.wait_for("stdout", "spin-1-shipped");
    let shipped: Value = serde_json::from_str(&line).unwrap();
    assert_eq!(shipped["data"]["status"], "shipped");
    launched.wait_for("stdout", "[relay/relay] order spin-1 shipped");

    // Spin's default log directory is `<state dir>/logs`, one file per stream.
    let log = std::fs::read_to_string(state.path().join("logs/relay_stdout.txt")).unwrap();
    assert!(
        log.contains("order spin-1 shipped as spin-1-shipped"),
        "{log}"
    );

    // `spin up` forwards Ctrl+C as SIGTERM.
    launched.terminate();
    assert_eq!(
        launched.wait_exit(Duration::from_secs(20)),
        0,
        "{}",
        launched.all()
    );
    launched.wait_for("stderr", "stopped cleanly");
}

/// Two probe components on one topic, so output can be told apart.
fn two_probes(name: &str) -> AppDir {
    write_app(&format!(
        r#"spin_manifest_version = 2
[application]
name = "{name}"
[application.trigger.messaging.channels]
news = {{ kind = "topic", address = "{name}.news" }}
[[trigger.messaging]]
component = "alpha"
subscriptions = ["news"]
[[trigger.messaging]]
component = "beta"
subscriptions = ["news"]
[component.alpha]
source = "{{probe}}"
[component.beta]
source = "{{probe}}"
"#
    ))
}

fn publish_news(url: &str, app: &str, id: &str) {
    cli_publish(&["--url", url, app, "news", "--type", "note", "--id", id]);
}

#[test]
fn follow_quiet_and_log_dir_choose_where_component_output_goes() {
    let app = two_probes("chatty");
    let logs = tempfile::tempdir().unwrap();
    let log_dir = logs.path().to_str().unwrap();

    // Launched by Spin with --follow: only alpha on the console, both in files.
    let spin = SpinUp::new(&lock_of(&app.manifest), Some(app.dir.path()));
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let mut launched = spin.launch(
        BIN,
        &[
            "--listen",
            &listen,
            "--follow",
            "alpha",
            "--log-dir",
            log_dir,
        ],
    );
    launched.wait_for("stdout", "Ready");
    publish_news(&format!("http://{listen}"), "chatty", "n-1");
    launched.wait_for("stdout", "[chatty/alpha] probe got n-1");
    let read = |file: &str| std::fs::read_to_string(logs.path().join(file)).unwrap_or_default();
    wait_until(|| read("beta_stdout.txt").contains("probe got n-1"));
    assert!(read("alpha_stdout.txt").contains("probe got n-1 (note)"));
    assert!(
        !launched.all().contains("[chatty/beta]"),
        "{}",
        launched.all()
    );
    launched.terminate();
    assert_eq!(launched.wait_exit(Duration::from_secs(20)), 0);

    // `up -q`: nobody on the console; the log files are appended to.
    let (mut quiet, url) = up(&[&app.manifest], &["-q", "--log-dir", log_dir]);
    publish_news(&url, "chatty", "n-2");
    wait_until(|| {
        read("alpha_stdout.txt").contains("probe got n-2")
            && read("beta_stdout.txt").contains("probe got n-2")
    });
    assert!(
        read("alpha_stdout.txt").contains("probe got n-1"),
        "appended, not truncated"
    );
    assert!(!quiet.all().contains("probe got"), "{}", quiet.all());
    quiet.terminate();
    assert_eq!(quiet.wait_exit(Duration::from_secs(20)), 0);

    // By default a local app logs under `.spin/logs` beside its spin.toml, as Spin does.
    let (mut plain, url) = up(&[&app.manifest], &["--truncate-logs"]);
    publish_news(&url, "chatty", "n-3");
    let default_log = app.dir.path().join(".spin/logs/alpha_stdout.txt");
    wait_until(|| {
        std::fs::read_to_string(&default_log)
            .unwrap_or_default()
            .contains("probe got n-3")
    });
    plain.terminate();
    assert_eq!(plain.wait_exit(Duration::from_secs(20)), 0);
}

fn wait_until(condition: impl Fn() -> bool) {
    let start = std::time::Instant::now();
    while !condition() {
        assert!(start.elapsed() < Duration::from_secs(30), "timed out");
        std::thread::sleep(Duration::from_millis(50));
    }
}

/// An app whose channel addresses take `stage` (default `dev`) and `team`
/// (required) from its variables.
fn variables_app(name: &str) -> AppDir {
    write_app(&format!(
        r#"spin_manifest_version = 2
[application]
name = "{name}"
[variables]
stage = {{ default = "dev" }}
team = {{ required = true }}
[application.trigger.messaging.channels]
inbox = {{ kind = "queue", address = "{{{{ stage }}}}.{name}.inbox" }}
results = {{ kind = "topic", address = "{{{{ team }}}}.{name}.results" }}
[[trigger.messaging]]
component = "probe"
subscriptions = ["inbox"]
publish = ["results"]
[component.probe]
source = "{{probe}}"
"#
    ))
}

#[test]
fn variables_in_the_lock_resolve_from_defaults_then_spin_variable_environment() {
    guests();
    let app = variables_app("vars");
    let spin = SpinUp::new(&lock_of(&app.manifest), Some(app.dir.path()));
    let mut launched = Running::adopt(
        spin.command(BIN, &["--state-dir", ""])
            .env("SPIN_VARIABLE_TEAM", "blue")
            .spawn()
            .unwrap(),
    );
    launched.wait_for("stdout", "as `dev.vars.inbox`");
    launched.wait_for("stdout", "as `blue.vars.results`");
    launched.terminate();
    assert_eq!(launched.wait_exit(Duration::from_secs(20)), 0);
    assert!(
        !app.dir.path().join(".spin").exists(),
        "--state-dir \"\" means no state directory"
    );

    let mut missing = spin.launch(BIN, &[]);
    assert_eq!(missing.wait_exit(Duration::from_secs(20)), 1);
    let err = missing.all();
    assert!(err.contains("SPIN_VARIABLE_TEAM"), "{err}");
    assert!(
        err.contains("spin.toml:"),
        "points at the spin.toml line: {err}"
    );
}

#[test]
fn spin_variable_flags_come_before_the_environment_and_read_files() {
    guests();
    let app = variables_app("flagged");
    let dir = app.dir.path();
    std::fs::write(dir.join("vars.json"), r#"{"stage": "qa", "team": "green"}"#).unwrap();
    std::fs::write(dir.join("team.txt"), "red").unwrap();
    let spin = SpinUp::new(&lock_of(&app.manifest), Some(dir));
    let vars_json = format!("@{}", dir.join("vars.json").display());
    let team_file = format!("team=@{}", dir.join("team.txt").display());
    // The flag wins over SPIN_VARIABLE_TEAM; later flags over earlier ones.
    let mut launched = Running::adopt(
        spin.command(
            BIN,
            &[
                "--state-dir",
                "",
                "--variable",
                &vars_json,
                "--variable",
                &team_file,
            ],
        )
        .env("SPIN_VARIABLE_TEAM", "blue")
        .spawn()
        .unwrap(),
    );
    launched.wait_for("stdout", "as `qa.flagged.inbox`");
    launched.wait_for("stdout", "as `red.flagged.results`");
    launched.wait_for("stdout", "Ready");
    launched.terminate();
    assert_eq!(launched.wait_exit(Duration::from_secs(20)), 0);

    for (flag, expected) in [
        (
            "team",
            "expected KEY=VALUE, KEY=@FILE, @FILE.json or @FILE.toml",
        ),
        ("@vars.yaml", "variable files must end in .json or .toml"),
        (
            "team=@/nonexistent/team.txt",
            "cannot read /nonexistent/team.txt",
        ),
        ("@/nonexistent/v.toml", "cannot read /nonexistent/v.toml"),
    ] {
        let mut refused = spin.launch(BIN, &["--variable", flag]);
        assert_ne!(refused.wait_exit(Duration::from_secs(20)), 0, "{flag}");
        let all = refused.all();
        assert!(all.contains(expected), "{flag}: {all}");
    }
    std::fs::write(dir.join("bad.toml"), "team = 3").unwrap();
    let bad = format!("@{}", dir.join("bad.toml").display());
    let mut refused = spin.launch(BIN, &["--variable", &bad]);
    assert_eq!(refused.wait_exit(Duration::from_secs(20)), 1);
    assert!(
        refused
            .all()
            .contains("bad.toml is not a TOML table of strings"),
        "{}",
        refused.all()
    );
}

#[test]
fn every_flag_spins_triggers_share_is_taken() {
    // The http trigger's own flags stay its own; every other one of Spin
    // 4's common trigger flags is ours too, so `spin up` hands it to both.
    const HTTP_ONLY: &[&str] = &[
        "--listen",
        "--tls-cert",
        "--tls-key",
        "--http1-max-buf-size",
        "--find-free-port",
        "--format",
        "--max-instance-concurrent-reuse-count",
        "--request-timeout",
    ];
    let ours = our_flags();
    for flag in SPIN_HTTP_TRIGGER_FLAGS {
        if !HTTP_ONLY.contains(flag) {
            assert!(
                ours.iter().any(|f| f == flag),
                "{flag} is not taken: {ours:?}"
            );
        }
    }
    // Each parses with Spin's syntax.
    let help = Command::new(BIN).arg("--help-args-only").output().unwrap();
    let help = String::from_utf8_lossy(&help.stdout);
    for flag in [
        "--variable",
        "--key-value",
        "--sqlite",
        "--max-instance-memory",
        "--debug-info",
    ] {
        assert!(help.contains(flag), "{flag}: {help}");
    }
    for (args, expected) in [
        (&["--key-value", "novalue"][..], "expected KEY=VALUE"),
        (
            &["--max-instance-memory", "12"][..],
            "must be between 1048576",
        ),
        (
            &["--max-instance-memory", "lots"][..],
            "expected a number of bytes",
        ),
    ] {
        let out = Command::new(BIN)
            .args(["up", "-f", "/nonexistent"])
            .args(args)
            .output()
            .unwrap();
        assert_eq!(out.status.code(), Some(2), "{args:?}");
        let err = String::from_utf8_lossy(&out.stderr);
        assert!(err.contains(expected), "{args:?}: {err}");
    }
}

fn probe_lock(name: &str, trigger: &str) -> (AppDir, Value) {
    let app = probe_app(name, "", trigger);
    let lock = lock_of(&app.manifest);
    (app, lock)
}

fn load_error(spin: &SpinUp) -> String {
    load_locked_app(&spin.location(), &|link| link == "default")
        .expect_err("the locked app must be rejected")
        .to_string()
}

#[test]
fn parts_of_a_lock_the_trigger_does_not_understand_are_rejected() {
    guests();
    let (app, lock) = probe_lock("picky", r#"publish = ["results"]"#);
    let spin = SpinUp::new(&lock, Some(app.dir.path()));
    let loaded = load_locked_app(&spin.location(), &|link| link == "default").unwrap();
    assert_eq!(loaded.name, "picky");
    assert_eq!(loaded.components[0].id, "probe");

    let with = |edit: &dyn Fn(&mut Value)| {
        let mut lock = lock.clone();
        edit(&mut lock);
        load_error(&SpinUp::new(&lock, None))
    };
    let err = with(&|l| l["must_understand"] = json!(["host_requirements", "time_travel"]));
    assert!(
        err.contains("`must_understand[1]`: the app needs `time_travel`"),
        "{err}"
    );
    let err = with(&|l| {
        l["spin_lock_version"] = json!(1);
        l["must_understand"] = json!(["host_requirements"]);
        l["host_requirements"] = json!({"local_service_chaining": "required"});
    });
    assert!(err.contains("`host_requirements`: this application requires features that the messaging trigger does not provide: local_service_chaining"), "{err}");
    let err = with(&|l| l["components"][0]["host_requirements"] = json!({"gpu": "required"}));
    assert!(err.contains("does not provide: gpu"), "{err}");
    // An optional requirement is no requirement.
    let mut optional = lock.clone();
    optional["host_requirements"] = json!({"local_service_chaining": "optional"});
    load_locked_app(&SpinUp::new(&optional, None).location(), &|_| true).unwrap();

    let err = with(&|l| l["spin_lock_version"] = json!(7));
    assert!(
        err.contains("`spin_lock_version`: version 7 is newer"),
        "{err}"
    );
    let err = with(
        &|l| l["components"][0]["dependencies"] = json!({"example:lib/util": {"source": {"content_type": "application/wasm", "source": "file:///x.wasm"}}}),
    );
    assert!(err.contains("`component.probe.dependencies`: component dependencies (example:lib/util) are not composed"), "{err}");
}

#[test]
fn errors_in_a_lock_point_at_the_spin_toml_it_came_from() {
    guests();
    let (app, lock) = probe_lock("pointed", "publish = [\"results\", \"nowhere\"]");
    let manifest = app.manifest.canonicalize().unwrap();
    let err = load_error(&SpinUp::new(&lock, None));
    assert!(
        err.contains(&format!(
            "{}:11: `trigger.messaging[0].publish[1]`: channel `nowhere` is not declared",
            manifest.display()
        )),
        "{err}"
    );

    // Without the spin.toml, the same key path in the lock file.
    let mut orphan = lock.clone();
    orphan["metadata"]["origin"] = json!("file:///nonexistent/spin.toml");
    let spin = SpinUp::new(&orphan, None);
    let err = load_error(&spin);
    assert!(
        err.contains(&format!(
            "{}: `trigger.messaging[0].publish[1]`",
            spin.lock.display()
        )),
        "{err}"
    );

    let mut missing = lock.clone();
    missing["components"][0]["source"]["source"] = json!("file:///nonexistent/probe.wasm");
    let err = load_error(&SpinUp::new(&missing, None));
    assert!(
        err.contains("`component.probe.source`: /nonexistent/probe.wasm does not exist"),
        "{err}"
    );
    missing["components"][0]["source"]["source"] = json!("https://example.com/probe.wasm");
    let err = load_error(&SpinUp::new(&missing, None));
    assert!(err.contains("is not a file:// URL"), "{err}");

    let mut linked = lock.clone();
    linked["metadata"]["triggers"]["messaging"]["channels"]["inbox"]["link"] = json!("nats");
    let err = load_error(&SpinUp::new(&linked, None));
    assert!(
        err.contains("no link `nats`: define [messaging_link.nats]"),
        "{err}"
    );

    let working = tempfile::tempdir().unwrap();
    let garbled = working.path().join("spin.lock");
    std::fs::write(&garbled, "{\n  \"spin_lock_version\": 0,\n  oops\n}").unwrap();
    let err = load_locked_app(
        &LockedAppLocation {
            lock: garbled.clone(),
            working_dir: working.path().into(),
            local_app_dir: None,
        },
        &|_| true,
    )
    .err()
    .unwrap()
    .to_string();
    assert!(
        err.starts_with(&format!(
            "{}:3: not a valid locked app (JSON)",
            garbled.display()
        )),
        "{err}"
    );
}

#[test]
fn inline_sources_are_checked_against_their_digest_and_written_to_the_working_dir() {
    use base64::Engine as _;
    guests();
    let bytes = std::fs::read(&guests().probe).unwrap();
    let (_app, mut lock) = probe_lock("inline", r#"publish = ["results"]"#);
    lock["components"][0]["source"] = json!({
        "content_type": "application/wasm",
        "inline": base64::engine::general_purpose::STANDARD.encode(&bytes),
        "digest": format!("sha256:{:x}", sha2::Sha256::digest(&bytes)),
    });
    let spin = SpinUp::new(&lock, None);
    let app = load_locked_app(&spin.location(), &|_| true).unwrap();
    let source = &app.components[0].source;
    assert!(
        source.starts_with(spin.working_dir.path()),
        "{}",
        source.display()
    );
    assert_eq!(std::fs::read(source).unwrap(), bytes);

    lock["components"][0]["source"]["digest"] = json!("sha256:0000");
    let err = load_error(&SpinUp::new(&lock, None));
    assert!(
        err.contains("the inline source has digest sha256:"),
        "{err}"
    );
    assert!(err.contains("not sha256:0000"), "{err}");
}

#[test]
fn spin_queries_are_answered_without_an_app() {
    // `spin up --help`: the options' help on stdout.
    let out = Command::new(BIN).arg("--help-args-only").output().unwrap();
    assert!(out.status.success());
    let help = String::from_utf8(out.stdout).unwrap();
    for flag in [
        "--runtime-config-file",
        "--state-dir",
        "--log-dir",
        "--follow",
        "--quiet",
        "--disable-cache",
        "--cache",
        "--messaging-listen",
        "--messaging-runtime-config-file",
    ] {
        assert!(help.contains(flag), "{flag} missing from:\n{help}");
    }
    assert!(
        !help.contains("--launch-metadata-only"),
        "hidden flags stay hidden:\n{help}"
    );

    // Several trigger types: which flags are ours, as JSON on stderr only.
    let out = Command::new(BIN)
        .arg("--launch-metadata-only")
        .output()
        .unwrap();
    assert!(out.status.success());
    assert!(out.stdout.is_empty());
    let meta: Value = serde_json::from_slice(&out.stderr).unwrap();
    let flags = meta["all_flags"].as_array().unwrap();
    assert!(
        flags.contains(&json!({"long": "--quiet", "short": "-q"})),
        "{meta}"
    );
    assert!(
        flags.contains(&json!({"long": "--runtime-config-file"})),
        "{meta}"
    );
    assert!(
        flags.contains(&json!({"long": "--log-dir", "short": "-L"})),
        "{meta}"
    );
    // Flags Spin's http trigger owns are not claimed: `spin up` would hand
    // them to both triggers.
    for owned in ["--listen", "--tls-cert", "--tls-key", "--find-free-port"] {
        assert!(
            flags.iter().all(|f| f["long"] != owned),
            "{owned} is claimed: {meta}"
        );
    }

    // No subcommand and no Spin: the usual usage error.
    let out = Command::new(BIN)
        .env_remove("SPIN_LOCKED_URL")
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&out.stderr).contains("Usage: trigger-messaging <COMMAND>"));
}

#[test]
fn precompose_only_checks_the_lock_and_runs_nothing() {
    guests();
    let (app, lock) = probe_lock("checked", r#"publish = ["results"]"#);
    let spin = SpinUp::new(&lock, Some(app.dir.path()));
    let out = spin.command(BIN, &["--precompose-only"]).output().unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    assert!(!String::from_utf8_lossy(&out.stdout).contains("Ready"));

    let mut bad = lock.clone();
    bad["must_understand"] = json!(["time_travel"]);
    let out = SpinUp::new(&bad, None)
        .command(BIN, &["--precompose-only"])
        .output()
        .unwrap();
    assert_eq!(out.status.code(), Some(1));
    assert!(String::from_utf8_lossy(&out.stderr).contains("time_travel"));
}

/// What `spin plugins install --file` does with a manifest: pick the package
/// for this platform, check its sha256, unpack it into
/// `<data dir>/plugins/<name>/`; the executable named like the plugin.
fn install(manifest: &Value, data_dir: &Path) -> PathBuf {
    let (os, arch) = xtask::platform().unwrap();
    let package = manifest["packages"]
        .as_array()
        .unwrap()
        .iter()
        .find(|p| p["os"] == os && p["arch"] == arch)
        .expect("a package for this platform");
    let archive = url::Url::parse(package["url"].as_str().unwrap())
        .unwrap()
        .to_file_path()
        .unwrap();
    let bytes = std::fs::read(&archive).unwrap();
    assert_eq!(
        package["sha256"],
        format!("{:x}", sha2::Sha256::digest(&bytes))
    );
    let dir = data_dir
        .join("plugins")
        .join(manifest["name"].as_str().unwrap());
    std::fs::create_dir_all(&dir).unwrap();
    let status = Command::new("tar")
        .arg("-xzf")
        .arg(&archive)
        .arg("-C")
        .arg(&dir)
        .status()
        .unwrap();
    assert!(status.success());
    dir.join(manifest["name"].as_str().unwrap())
}

#[test]
fn the_plugin_package_installs_and_runs_as_spin_runs_it() {
    guests();
    let metadata = xtask::PluginMetadata::read(&repo().join("spin-plugin.toml")).unwrap();
    let out = tempfile::tempdir().unwrap();
    let packaged = xtask::package(&metadata, Path::new(BIN), out.path()).unwrap();
    let manifest: Value =
        serde_json::from_slice(&std::fs::read(&packaged.manifest).unwrap()).unwrap();

    // Spin's plugin manifest schema: required fields, nothing extra, os/arch values.
    let schema: Value = serde_json::from_slice(
        &std::fs::read(repo().join("tests/fixtures/spin/plugin-manifest-schema-0.1.json")).unwrap(),
    )
    .unwrap();
    let validator = jsonschema::validator_for(&schema).unwrap();
    let errors: Vec<String> = validator
        .iter_errors(&manifest)
        .map(|e| e.to_string())
        .collect();
    assert!(errors.is_empty(), "{errors:?}\n{manifest:#}");
    let mut extra = manifest.clone();
    extra["packages"][0]["checksum"] = json!("x");
    assert!(
        !validator.is_valid(&extra),
        "the schema forbids extra properties"
    );

    // spin-plugin.toml is the source of truth.
    assert_eq!(manifest["name"], "trigger-messaging");
    assert_eq!(manifest["version"], metadata.version.as_str());
    assert_eq!(
        manifest["spinCompatibility"],
        metadata.spin_compatibility.as_str()
    );
    assert_eq!(manifest["license"], metadata.license.as_str());
    assert_eq!(manifest["description"], metadata.description.as_str());
    // `spin plugins` shows a homepage to users: none until the project has a real one.
    assert_eq!(manifest.get("homepage"), None, "{manifest:#}");
    let package = &manifest["packages"][0];
    assert_eq!(manifest["packages"].as_array().unwrap().len(), 1);
    assert_eq!(
        (
            package["os"].as_str().unwrap(),
            package["arch"].as_str().unwrap()
        ),
        xtask::platform().unwrap()
    );
    let url = package["url"].as_str().unwrap();
    assert!(url.starts_with("file:///"), "{url}");
    assert_eq!(
        url::Url::parse(url).unwrap().to_file_path().unwrap(),
        packaged.archive
    );
    let sha = package["sha256"].as_str().unwrap();
    assert!(
        sha.len() == 64
            && sha
                .chars()
                .all(|c| c.is_ascii_digit() || ('a'..='f').contains(&c)),
        "{sha}"
    );

    // The archive holds one executable, named like the plugin, at its top.
    let listing = Command::new("tar")
        .arg("-tvzf")
        .arg(&packaged.archive)
        .output()
        .unwrap();
    let listing = String::from_utf8(listing.stdout).unwrap();
    let entries: Vec<&str> = listing.lines().collect();
    assert_eq!(entries.len(), 1, "{listing}");
    assert!(entries[0].starts_with("-rwxr-xr-x"), "{listing}");
    assert!(entries[0].ends_with(" trigger-messaging"), "{listing}");

    // Packaging the same binary again changes nothing Spin would reinstall.
    let again = xtask::package(&metadata, Path::new(BIN), out.path()).unwrap();
    let manifest_again: Value =
        serde_json::from_slice(&std::fs::read(&again.manifest).unwrap()).unwrap();
    assert_eq!(manifest_again["packages"][0]["sha256"], sha);

    // Installed as Spin installs it, the plugin answers `spin up --help` and runs an app.
    let data_dir = tempfile::tempdir().unwrap();
    let installed = install(&manifest, data_dir.path());
    let help = Command::new(&installed)
        .arg("--help-args-only")
        .output()
        .unwrap();
    assert!(help.status.success());
    assert!(String::from_utf8_lossy(&help.stdout).contains("--runtime-config-file"));
    let (app, lock) = probe_lock("installed", r#"publish = ["results"]"#);
    let spin = SpinUp::new(&lock, Some(app.dir.path()));
    let mut launched = spin.launch(installed.to_str().unwrap(), &[]);
    launched.wait_for("stdout", "Ready");
    launched.terminate();
    assert_eq!(
        launched.wait_exit(Duration::from_secs(20)),
        0,
        "{}",
        launched.all()
    );
}

/// The flags Spin 4.0.2's http trigger claims in its `--launch-metadata-only`
/// answer: its own (crates/trigger-http) and every trigger's common ones
/// (crates/trigger, crates/runtime-factors).
const SPIN_HTTP_TRIGGER_FLAGS: &[&str] = &[
    "--listen",
    "--tls-cert",
    "--tls-key",
    "--http1-max-buf-size",
    "--find-free-port",
    "--format",
    "--max-instance-reuse-count",
    "--max-instance-concurrent-reuse-count",
    "--request-timeout",
    "--idle-instance-timeout",
    "-L",
    "--log-dir",
    "--truncate-logs",
    "--disable-cache",
    "--cache",
    "--disable-pooling",
    "--debug-info",
    "--follow",
    "-q",
    "--quiet",
    "--runtime-config-file",
    "--state-dir",
    "--allow-transient-write",
    "--experimental-wasi-otel",
    "--key-value",
    "--sqlite",
    "--max-instance-memory",
    "--variable",
    "--help-args-only",
    "--launch-metadata-only",
];

/// The top-level runtime-config keys Spin's http trigger reads; any other
/// stops it (`unused runtime config key(s)`).
const SPIN_RUNTIME_CONFIG_KEYS: &[&str] = &[
    "state_dir",
    "log_dir",
    "max_instance_memory",
    "key_value_store",
    "sqlite_database",
    "llm_compute",
    "variables_provider",
    "config_provider",
    "outbound_networking",
    "client_tls",
    "outbound_http",
];

/// Splits `spin up`'s trigger arguments between the triggers of an app with
/// several trigger types, as Spin does (src/commands/up.rs): a flag starts a
/// group, the next argument not starting with `-` is its value, and a group
/// goes to every trigger whose launch metadata names its flag; a flag no
/// trigger names is an error.
fn route_as_spin_up(args: &[&str], triggers: &[Vec<String>]) -> Result<Vec<Vec<String>>, String> {
    let mut groups: Vec<Vec<String>> = Vec::new();
    for arg in args {
        match groups.last_mut() {
            Some(group)
                if !arg.starts_with('-') && group.len() == 1 && group[0].starts_with('-') =>
            {
                group.push(arg.to_string())
            }
            _ => groups.push(vec![arg.to_string()]),
        }
    }
    let mut routed = vec![Vec::new(); triggers.len()];
    for group in groups {
        let mut claimed = false;
        for (flags, args) in triggers.iter().zip(&mut routed) {
            if flags.contains(&group[0]) {
                args.extend(group.iter().cloned());
                claimed = true;
            }
        }
        if !claimed {
            return Err(format!("Unrecognised trigger option {:?}", group[0]));
        }
    }
    Ok(routed)
}

/// The flags this plugin claims, from its `--launch-metadata-only` answer.
fn our_flags() -> Vec<String> {
    let out = Command::new(BIN)
        .arg("--launch-metadata-only")
        .output()
        .unwrap();
    let meta: Value = serde_json::from_slice(&out.stderr).unwrap();
    meta["all_flags"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|f| [f.get("long"), f.get("short")])
        .flatten()
        .map(|f| f.as_str().unwrap().to_string())
        .collect()
}

#[tokio::test(flavor = "multi_thread")]
async fn a_mixed_app_runs_under_spin_up_with_its_links_in_a_file_of_their_own() {
    // Written by hand from Spin's locked-app format: an HTTP trigger whose
    // component needs service chaining and has a secret with no value, and a
    // messaging worker with metadata, `files`, variables (`config`), outbound
    // hosts and a key-value store. The messaging trigger takes only its part.
    guests();
    let api = crate::outbound::api_server().await;
    let text = std::fs::read_to_string(repo().join("tests/fixtures/spin/mixed.lock.json"))
        .unwrap()
        .replace(
            "{probe}",
            url::Url::from_file_path(&guests().probe).unwrap().as_str(),
        )
        .replace("{api_port}", &api.to_string());
    let spin = SpinUp::new(&serde_json::from_str(&text).unwrap(), None);
    let app = load_locked_app(&spin.location(), &|link| link == "default").unwrap();
    assert_eq!(app.name, "mixed");
    assert_eq!(app.channels["jobs"].address, "mixed.jobs");
    assert_eq!(app.components.len(), 1);
    let worker = &app.components[0];
    assert_eq!((worker.id.as_str(), worker.max_in_flight), ("worker", 4));
    assert_eq!(worker.subscriptions, ["jobs"]);
    assert!(
        worker
            .environment
            .contains(&("FROM_SPIN_UP_E".into(), "yes".into()))
    );

    // The runtime config both triggers get holds only what Spin's http
    // trigger reads; the links are in the messaging runtime config.
    let files = tempfile::tempdir().unwrap();
    let runtime_config = files.path().join("runtime-config.toml");
    std::fs::write(&runtime_config, "state_dir = \"state\"\n\n[key_value_store.default]\ntype = \"spin\"\npath = \"kv/default.db\"\n").unwrap();
    let spin_tables: toml::Table =
        toml::from_str(&std::fs::read_to_string(&runtime_config).unwrap()).unwrap();
    assert!(
        spin_tables
            .keys()
            .all(|k| SPIN_RUNTIME_CONFIG_KEYS.contains(&k.as_str()))
    );
    let links = files.path().join("links.toml");
    std::fs::write(
        &links,
        "[messaging_link.default]\ntype = \"nats\"\nurl = \"nats://127.0.0.1:4222\"\n",
    )
    .unwrap();

    // What the user types after `spin up`, routed as Spin routes it.
    let port = free_port();
    let listen = format!("127.0.0.1:{port}");
    let (rc, links) = (runtime_config.to_str().unwrap(), links.to_str().unwrap());
    let typed = [
        "--listen",
        "127.0.0.1:3000",
        "--runtime-config-file",
        rc,
        "--messaging-runtime-config-file",
        links,
        "--messaging-listen",
        &listen,
        "--log-dir",
        "",
    ];
    let http_flags: Vec<String> = SPIN_HTTP_TRIGGER_FLAGS
        .iter()
        .map(|f| f.to_string())
        .collect();
    let routed = route_as_spin_up(&typed, &[http_flags, our_flags()]).unwrap();
    let (to_http, to_us) = (&routed[0], &routed[1]);
    assert_eq!(
        to_http,
        &[
            "--listen",
            "127.0.0.1:3000",
            "--runtime-config-file",
            rc,
            "--log-dir",
            ""
        ]
    );
    assert_eq!(
        to_us,
        &[
            "--runtime-config-file",
            rc,
            "--messaging-runtime-config-file",
            links,
            "--messaging-listen",
            &listen,
            "--log-dir",
            ""
        ]
    );

    // And it runs: jobs in, the worker's reports out, over NATS.
    let args: Vec<&str> = to_us.iter().map(String::as_str).collect();
    let mut launched = spin.launch(BIN, &args);
    launched.wait_for("stderr", "`files` are not mounted");
    launched.wait_for("stdout", "Ready");
    launched.wait_for("stdout", "nats://127.0.0.1:4222");
    let url = format!("http://{listen}");
    let tail = run(&["tail", "--url", &url, "mixed", "results", "-n", "4"]);
    tail.wait_for("stderr", "watching `results`");
    cli_publish(&[
        "--url", &url, "mixed", "jobs", "--type", "job", "--id", "j-1",
    ]);
    let copy = tail.wait_for("stdout", "\"j-1\"");
    assert!(copy.contains(r#""handledby":"worker""#), "{copy}");
    // Its variables, its outbound hosts and its key-value store, from the lock.
    let api_url = format!("http://127.0.0.1:{api}/hello");
    cli_publish(&[
        "--url",
        &url,
        "mixed",
        "jobs",
        "--type",
        "probe.variables",
        "--id",
        "j-2",
        "--data",
        "api_url",
    ]);
    tail.wait_for("stdout", &format!("api_url={api_url}|{api_url}"));
    cli_publish(&[
        "--url",
        &url,
        "mixed",
        "jobs",
        "--type",
        "probe.http",
        "--id",
        "j-3",
        "--data",
        &api_url,
    ]);
    tail.wait_for("stdout", "200 hello from the API");
    cli_publish(&[
        "--url",
        &url,
        "mixed",
        "jobs",
        "--type",
        "probe.kv",
        "--id",
        "j-4",
        "--subject",
        "default",
        "--data",
        "incr jobs",
    ]);
    tail.wait_for("stdout", "\"j-4-result\"");
    launched.terminate();
    assert_eq!(launched.wait_exit(Duration::from_secs(20)), 0);
    // The default store is where the runtime config put it, as Spin's http
    // trigger would open it.
    assert!(files.path().join("kv/default.db").is_file());
}
