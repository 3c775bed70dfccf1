//! The `trigger-messaging` binary as users run it: `up` with its start-up
//! summary, guest output in the log, `publish` and `tail`, graceful shutdown
//! on SIGTERM, manifest errors on the command line, and the endpoint's
//! guards: API tokens, the loopback rule and https.

use crate::support::*;
use messaging_provider::http::access::{TOKEN_ENV, TOKEN_FILE_ENV};
use std::path::Path;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

#[test]
fn up_runs_the_relay_and_publish_and_tail_drive_it() {
    let relay = repo().join("sample-apps/relay/spin.toml");
    guests();
    let (mut provider, url) = up(&[&relay], &[]);
    let summary = provider.stdout.lock().unwrap().join("\n");
    for expected in [
        "App `relay`",
        "orders           queue on link `default` as `orders`, max payload 65536 bytes, dead letters to `rejected`",
        "shipments        topic on link `default` as `shipments`",
        "relay (",
        "subscriptions: orders",
        "may publish:   shipments",
        "default          embedded (in-process",
        "Listening on http://127.0.0.1:",
    ] {
        assert!(
            summary.contains(expected),
            "summary lacks {expected:?}:\n{summary}"
        );
    }

    let tail = run(&["tail", "--url", &url, "relay", "shipments", "-n", "1"]);
    tail.wait_for("stderr", "watching `shipments` of app `relay`");
    let mut publish = run(&[
        "publish",
        "--url",
        &url,
        "relay",
        "orders",
        "--type",
        "com.example.order.created",
        "--id",
        "cli-1",
        "--data",
        r#"{"sku":"A1"}"#,
        "--content-type",
        "application/json",
        "--ext",
        "tenant=blue",
    ]);
    assert_eq!(
        publish.wait_exit(Duration::from_secs(30)),
        0,
        "{}",
        publish.all()
    );
    let line = tail.wait_for("stdout", "cli-1-shipped");
    let shipped: serde_json::Value = serde_json::from_str(&line).unwrap();
    assert_eq!(
        shipped["data"],
        serde_json::json!({"order": {"sku": "A1"}, "status": "shipped"})
    );
    assert_eq!(shipped["tenant"], "blue");
    assert_eq!(shipped["relayedfrom"], "cli-1");

    // Guest stdout reaches the console, prefixed with app and component.
    provider.wait_for(
        "stdout",
        "[relay/relay] order cli-1 shipped as cli-1-shipped",
    );

    let mut refused = run(&["publish", "--url", &url, "relay", "nope", "--type", "t"]);
    assert_eq!(refused.wait_exit(Duration::from_secs(30)), 1);
    refused.wait_for("stderr", "404 Not Found");

    provider.terminate();
    assert_eq!(provider.wait_exit(Duration::from_secs(15)), 0);
    provider.wait_for("stderr", "stopped cleanly");
}

#[test]
fn sigterm_lets_in_flight_handlers_finish_within_the_deadline() {
    let app = probe_app("drain", "", r#"publish = ["results"]"#);
    let (mut provider, url) = up(&[&app.manifest], &["--shutdown-timeout", "10s"]);
    let tail = run(&["tail", "--url", &url, "drain", "results", "-n", "1"]);
    tail.wait_for("stderr", "watching");
    let mut publish = run(&[
        "publish",
        "--url",
        &url,
        "drain",
        "inbox",
        "--type",
        "probe.sleep",
        "--id",
        "slow",
        "--data",
        "1500",
    ]);
    assert_eq!(
        publish.wait_exit(Duration::from_secs(30)),
        0,
        "{}",
        publish.all()
    );
    provider.wait_for("stdout", "probe got slow");
    provider.terminate();
    // The handler finishes (and publishes) during the drain, then the process exits 0.
    tail.wait_for("stdout", "slow-result");
    assert_eq!(provider.wait_exit(Duration::from_secs(15)), 0);
    provider.wait_for("stderr", "stopped cleanly");
}

#[test]
fn sigterm_gives_up_on_handlers_past_the_deadline() {
    let app = probe_app("cut", "", r#"publish = ["results"]"#);
    let (mut provider, url) = up(&[&app.manifest], &["--shutdown-timeout", "300ms"]);
    let mut publish = run(&[
        "publish",
        "--url",
        &url,
        "cut",
        "inbox",
        "--type",
        "probe.sleep",
        "--id",
        "long",
        "--data",
        "20000",
    ]);
    assert_eq!(publish.wait_exit(Duration::from_secs(30)), 0);
    provider.wait_for("stdout", "probe got long");
    let asked = Instant::now();
    provider.terminate();
    assert_eq!(provider.wait_exit(Duration::from_secs(10)), 0);
    assert!(
        asked.elapsed() < Duration::from_secs(5),
        "the deadline bounds the stop"
    );
    provider.wait_for("stderr", "stopped with handlers still running");
}

#[test]
fn an_event_that_keeps_failing_without_a_dead_letter_is_logged_in_full() {
    let app = probe_app("droplog", "", r#"publish = ["results"]"#);
    let text = std::fs::read_to_string(&app.manifest).unwrap().replace(
        "kind = \"queue\", address",
        "kind = \"queue\", max_attempts = 2, address",
    );
    std::fs::write(&app.manifest, text).unwrap();
    let (provider, url) = up(&[&app.manifest], &[]);
    let mut publish = run(&[
        "publish",
        "--url",
        &url,
        "droplog",
        "inbox",
        "--type",
        "probe.fail",
        "--id",
        "doomed",
        "--data",
        "precious",
        "--content-type",
        "text/plain",
    ]);
    assert_eq!(publish.wait_exit(Duration::from_secs(30)), 0);
    let line = provider.wait_for("stderr", "event dropped after 2 failed attempts");
    assert!(
        line.contains(r#""id":"doomed""#) && line.contains("precious"),
        "{line}"
    );
    provider.wait_for(
        "stderr",
        "on-receive returned an error: unexpected error: asked to fail",
    );
}

#[test]
fn manifest_errors_stop_the_start_with_file_key_and_line() {
    let app = write_app(
        "spin_manifest_version = 2\n[application]\nname = \"bad\"\n[application.trigger.messaging.channels.orders]\nkind = \"queue\"\ncolour = \"red\"\n",
    );
    let mut running = run(&["up", "-f", app.manifest.to_str().unwrap()]);
    assert_eq!(running.wait_exit(Duration::from_secs(30)), 1);
    let expected = format!(
        "{}:6: `application.trigger.messaging.channels.orders.colour`: unknown field `colour`",
        app.manifest.display()
    );
    running.wait_for("stderr", &expected);
    assert!(running.stdout.lock().unwrap().is_empty(), "nothing starts");
}

/// Runs the binary with `env` added to a clean slate: no token, token file,
/// CA file or URL inherited from the test's environment. Our own log is at
/// its most detailed, so that a test can check what it never says.
fn run_env(args: &[&str], env: &[(&str, &str)]) -> Running {
    let mut command = Command::new(env!("CARGO_BIN_EXE_trigger-messaging"));
    command
        .args(args)
        .env(
            "RUST_LOG",
            "info,messaging_provider=trace,trigger_messaging=trace",
        )
        .env_remove(TOKEN_ENV)
        .env_remove(TOKEN_FILE_ENV)
        .env_remove("TRIGGER_MESSAGING_CA_FILE")
        .env_remove("TRIGGER_MESSAGING_URL")
        .envs(env.iter().copied())
        .stdout(Stdio::piped())
        .stderr(Stdio::piped());
    Running::adopt(command.spawn().unwrap())
}

/// `up` on `host` and a free port with the extra flags, run to Ready;
/// returns it and the port.
fn up_on(host: &str, manifests: &[&Path], extra: &[&str]) -> (Running, u16) {
    let port = free_port();
    let listen = format!("{host}:{port}");
    let mut args = vec!["up", "--listen", &listen];
    let paths: Vec<String> = manifests.iter().map(|m| m.display().to_string()).collect();
    for p in &paths {
        args.extend(["-f", p]);
    }
    args.extend(extra);
    let running = run_env(&args, &[]);
    running.wait_for("stdout", "Ready");
    (running, port)
}

/// Runs a client command to its end; returns its exit code and output.
fn client(args: &[&str], env: &[(&str, &str)]) -> (i32, Running) {
    let mut running = run_env(args, env);
    let code = running.wait_exit(Duration::from_secs(30));
    (code, running)
}

#[test]
fn up_refuses_an_address_other_machines_reach_without_a_token() {
    let app = probe_app("exposed", "", r#"publish = ["results"]"#);
    for host in ["0.0.0.0", "[::]"] {
        let listen = format!("{host}:{}", free_port());
        let mut up = run_env(
            &[
                "up",
                "-f",
                app.manifest.to_str().unwrap(),
                "--listen",
                &listen,
            ],
            &[],
        );
        assert_eq!(up.wait_exit(Duration::from_secs(30)), 1, "{}", up.all());
        let line = up.wait_for("stderr", "refusing to listen on");
        for expected in [listen.as_str(), TOKEN_ENV, "--api-token-file", "127.0.0.1"] {
            assert!(line.contains(expected), "{expected:?} not in {line}");
        }
        assert!(
            !up.stdout
                .lock()
                .unwrap()
                .iter()
                .any(|l| l.contains("Ready")),
            "nothing starts"
        );
    }
}

#[test]
fn tokens_guard_up_and_publish_and_tail_send_them() {
    let alpha = probe_app("alpha", "", r#"publish = ["results"]"#);
    let beta = probe_app("beta", "", r#"publish = ["results"]"#);
    let secrets = tempfile::tempdir().unwrap();
    let every = "every-app-Secret-0f3a9c";
    let alpha_only = "alpha-only-Secret-7b21de";
    let every_file = secrets.path().join("every.token");
    let alpha_file = secrets.path().join("alpha.token");
    std::fs::write(&every_file, format!("{every}\n")).unwrap();
    std::fs::write(&alpha_file, alpha_only).unwrap();
    let every_path = every_file.to_str().unwrap();
    let alpha_token_file = format!("alpha={}", alpha_file.display());
    // Any address may be served once a token guards it.
    let (mut up, port) = up_on(
        "0.0.0.0",
        &[&alpha.manifest, &beta.manifest],
        &[
            "--api-token-file",
            every_path,
            "--app-token-file",
            &alpha_token_file,
        ],
    );
    up.wait_for("stderr", "the HTTP endpoint requires an API token");
    up.wait_for("stderr", "travels unencrypted");
    let url = format!("http://127.0.0.1:{port}");
    let publish = |app: &str, id: &str, extra: &[&str], env: &[(&str, &str)]| {
        let mut args = vec![
            "publish", "--url", &url, app, "inbox", "--type", "t", "--id", id,
        ];
        args.extend(extra);
        client(&args, env)
    };

    let tail = run_env(
        &["tail", "--url", &url, "beta", "inbox", "-n", "2"],
        &[(TOKEN_ENV, every)],
    );
    tail.wait_for("stderr", "watching `inbox` of app `beta`");
    let (code, out) = publish("beta", "by-file", &["--api-token-file", every_path], &[]);
    assert_eq!(code, 0, "{}", out.all());
    let (code, out) = publish("beta", "by-env-file", &[], &[(TOKEN_FILE_ENV, every_path)]);
    assert_eq!(code, 0, "{}", out.all());
    tail.wait_for("stdout", "by-file");
    tail.wait_for("stdout", "by-env-file");
    let (code, out) = publish("alpha", "own-token", &[], &[(TOKEN_ENV, alpha_only)]);
    assert_eq!(code, 0, "{}", out.all());

    let (code, out) = publish("beta", "other-app", &[], &[(TOKEN_ENV, alpha_only)]);
    assert_eq!(code, 1);
    out.wait_for("stderr", "403 Forbidden");
    out.wait_for("stderr", "does not give access to app `beta`");
    let (code, out) = publish("beta", "no-token", &[], &[]);
    assert_eq!(code, 1);
    out.wait_for("stderr", "401 Unauthorized");
    out.wait_for("stderr", TOKEN_ENV);
    let (code, out) = publish("beta", "wrong", &[], &[(TOKEN_ENV, "not-the-token")]);
    assert_eq!(code, 1);
    out.wait_for("stderr", "401 Unauthorized");
    let (code, out) = client(&["tail", "--url", &url, "alpha", "inbox", "-n", "1"], &[]);
    assert_eq!(code, 1);
    out.wait_for("stderr", "401 Unauthorized");
    let (code, out) = publish(
        "beta",
        "both",
        &["--api-token-file", every_path],
        &[(TOKEN_ENV, every)],
    );
    assert_eq!(code, 1);
    out.wait_for("stderr", "both set");

    up.terminate();
    assert_eq!(up.wait_exit(Duration::from_secs(15)), 0);
    let log = up.all();
    for secret in [every, alpha_only] {
        assert!(!log.contains(secret), "the log shows a token:\n{log}");
    }
}

#[test]
fn up_serves_https_and_the_cli_publishes_over_it() {
    let app = probe_app("secure", "", r#"publish = ["results"]"#);
    let pki = crate::http::EndpointPki::new();
    let (cert, key, ca) = (
        pki.path("server.pem"),
        pki.path("server.key"),
        pki.path("ca.pem"),
    );
    let (mut up, port) = up_on(
        "127.0.0.1",
        &[&app.manifest],
        &[
            "--tls-cert",
            cert.to_str().unwrap(),
            "--tls-key",
            key.to_str().unwrap(),
        ],
    );
    up.wait_for("stdout", &format!("Listening on https://127.0.0.1:{port}"));
    let url = format!("https://127.0.0.1:{port}");
    let ca = ca.to_str().unwrap();
    let tail = run_env(
        &[
            "tail",
            "--url",
            &url,
            "--ca-file",
            ca,
            "secure",
            "results",
            "-n",
            "1",
        ],
        &[],
    );
    tail.wait_for("stderr", "watching");
    let (code, out) = client(
        &[
            "publish", "--url", &url, "secure", "results", "--type", "t", "--id", "over-tls",
        ],
        &[("TRIGGER_MESSAGING_CA_FILE", ca)],
    );
    assert_eq!(code, 0, "{}", out.all());
    tail.wait_for("stdout", "over-tls");
    // Without the CA, the server's certificate is not trusted.
    let (code, out) = client(
        &["publish", "--url", &url, "secure", "results", "--type", "t"],
        &[],
    );
    assert_eq!(code, 1);
    out.wait_for("stderr", "certificate");
    up.terminate();
    assert_eq!(up.wait_exit(Duration::from_secs(15)), 0);
}

#[test]
fn up_loads_more_apps_than_the_soft_open_file_limit_holds() {
    // Each app keeps two log files open: 60 apps need more than a soft
    // limit of 64 allows, so `up` must raise it to the hard limit.
    let apps: Vec<AppDir> = (0..60)
        .map(|i| probe_app(&format!("many{i}"), "", ""))
        .collect();
    let paths: Vec<String> = apps
        .iter()
        .map(|a| a.manifest.display().to_string())
        .collect();
    let listen = format!("127.0.0.1:{}", free_port());
    let mut command = Command::new("bash");
    command
        .args(["-c", r#"ulimit -Sn 64 && exec "$@""#, "bash"])
        .arg(env!("CARGO_BIN_EXE_trigger-messaging"))
        .args(["up", "--listen", &listen]);
    for path in &paths {
        command.args(["-f", path]);
    }
    command.stdout(Stdio::piped()).stderr(Stdio::piped());
    let mut running = Running::adopt(command.spawn().unwrap());
    running.wait_for("stdout", "Ready");
    assert!(
        !running.all().contains("Too many open files"),
        "{}",
        running.all()
    );
    running.terminate();
    assert_eq!(
        running.wait_exit(Duration::from_secs(30)),
        0,
        "{}",
        running.all()
    );
}
