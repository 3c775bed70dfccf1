//! Operating a running provider: its metrics, read back through a real
//! Prometheus server after events flowed; `/healthz`, `/readyz` and
//! `status`; the token rules of `/metrics`; the Grafana dashboard.

use crate::support::*;
use std::collections::BTreeSet;
use std::process::{Command, Stdio};
use std::time::{Duration, Instant};

/// `GET url`, with a bearer token if given: the status and the body.
async fn get(url: &str, token: Option<&str>) -> (u16, String) {
    let mut request = reqwest::Client::new().get(url);
    if let Some(token) = token {
        request = request.bearer_auth(token);
    }
    let response = request.send().await.unwrap();
    let status = response.status().as_u16();
    (status, response.text().await.unwrap())
}

/// Polls `url` until `check` holds for its body, for up to 20 s.
async fn until(url: &str, check: impl Fn(&str) -> bool) -> String {
    let start = Instant::now();
    loop {
        let (_, body) = get(url, None).await;
        if check(&body) {
            return body;
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "timed out waiting on {url}:\n{body}"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

/// A Prometheus server of the test's own, scraping `target` every second.
struct Prometheus {
    child: std::process::Child,
    url: String,
    _dir: tempfile::TempDir,
}

impl Prometheus {
    fn start(target: &str) -> Prometheus {
        let dir = tempfile::tempdir().unwrap();
        let config = dir.path().join("prometheus.yml");
        std::fs::write(
            &config,
            format!(
                "global:\n  scrape_interval: 1s\nscrape_configs:\n  - job_name: trigger-messaging\n    static_configs:\n      - targets: ['{target}']\n"
            ),
        )
        .unwrap();
        let port = free_port();
        let child = Command::new("prometheus")
            .arg(format!("--config.file={}", config.display()))
            .arg(format!(
                "--storage.tsdb.path={}",
                dir.path().join("data").display()
            ))
            .arg(format!("--web.listen-address=127.0.0.1:{port}"))
            .stdout(Stdio::null())
            .stderr(Stdio::null())
            .spawn()
            .expect("Prometheus is installed (scripts/test.sh installs Debian's `prometheus`)");
        Prometheus {
            child,
            url: format!("http://127.0.0.1:{port}"),
            _dir: dir,
        }
    }

    /// The value of an instant query that yields one sample, once it is
    /// `expected` (waiting up to 30 s for scrapes).
    async fn wait_for(&self, query: &str, expected: f64) {
        let start = Instant::now();
        let client = reqwest::Client::new();
        let mut last = String::new();
        while start.elapsed() < Duration::from_secs(30) {
            if let Ok(response) = client
                .get(format!("{}/api/v1/query", self.url))
                .query(&[("query", query)])
                .send()
                .await
            {
                last = response.text().await.unwrap_or_default();
                let value: Option<f64> = serde_json::from_str::<serde_json::Value>(&last)
                    .ok()
                    .and_then(|v| {
                        v["data"]["result"][0]["value"][1]
                            .as_str()
                            .and_then(|n| n.parse().ok())
                    });
                if value == Some(expected) {
                    return;
                }
            }
            tokio::time::sleep(Duration::from_millis(250)).await;
        }
        panic!("Prometheus never answered {expected} to `{query}`; last answer: {last}");
    }
}

impl Drop for Prometheus {
    fn drop(&mut self) {
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_real_prometheus_reads_what_the_events_did() {
    guests();
    let relay = repo().join("sample-apps/relay/spin.toml");
    let metrics_listen = format!("127.0.0.1:{}", free_port());
    let (mut running, url) = up(
        &[&relay],
        &["--metrics-listen", &metrics_listen, "--state-dir", ""],
    );
    let prometheus = Prometheus::start(&metrics_listen);

    cli_publish(&[
        "--url", &url, "relay", "orders", "--type", "t", "--data", "a",
    ]);
    cli_publish(&[
        "--url", &url, "relay", "orders", "--type", "t", "--data", "b",
    ]);
    // No data: refused three times (1 s, then 2 s apart), then dead-lettered.
    cli_publish(&["--url", &url, "relay", "orders", "--type", "t"]);
    let metrics = format!("http://{metrics_listen}/metrics");
    until(&metrics, |text| {
        text.contains(r#"outcome="dead_lettered"} 1"#)
    })
    .await;

    let orders = r#"app="relay",channel="orders""#;
    for (query, expected) in [
        (
            format!("sum(messaging_client_consumed_messages_total{{{orders},messaging_system=\"embedded\",messaging_destination_name=\"orders\"}})"),
            // The embedded link hands a failed event back: its two retries
            // are taken again.
            5.0,
        ),
        (format!("sum(trigger_messaging_events_total{{{orders},outcome=\"handled\"}})"), 2.0),
        (format!("sum(trigger_messaging_events_total{{{orders},outcome=\"failed\"}})"), 3.0),
        (format!("sum(trigger_messaging_events_total{{{orders},outcome=\"retried\"}})"), 2.0),
        (format!("sum(trigger_messaging_events_total{{{orders},outcome=\"dead_lettered\"}})"), 1.0),
        (format!("sum(trigger_messaging_events_total{{{orders},outcome=\"malformed\"}})"), 0.0),
        (format!("sum(messaging_process_duration_seconds_count{{{orders}}})"), 5.0),
        (
            r#"sum(messaging_client_sent_messages_total{app="relay",channel="shipments",messaging_operation_name="send"})"#.into(),
            2.0,
        ),
        (r#"sum(messaging_client_sent_messages_total{app="relay",channel="rejected"})"#.into(), 1.0),
        (r#"sum(messaging_client_operation_duration_seconds_count{app="relay",channel="shipments"})"#.into(), 2.0),
        (r#"sum(trigger_messaging_instances_created_total{app="relay",component="relay"}) > bool 0"#.into(), 1.0),
        (r#"sum(trigger_messaging_handlers_in_flight{app="relay"})"#.into(), 0.0),
        (r#"trigger_messaging_link_up{link="default",messaging_system="embedded"}"#.into(), 1.0),
        (r#"sum(trigger_messaging_circuit_breaker_open{app="relay"})"#.into(), 0.0),
    ] {
        prometheus.wait_for(&query, expected).await;
    }
    running.terminate();
    assert_eq!(running.wait_exit(Duration::from_secs(20)), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn refused_publishes_are_counted_by_error_case() {
    let app = probe_app("refusing", "", r#"publish = ["results"]"#);
    let provider = start(&[&app.manifest], None).await;
    let mut results = watch(&provider, "refusing", "results").await;
    for (id, subject) in [
        ("r-1", "topic:nowhere"),
        ("r-2", "queue:inbox"),
        ("r-3", "topic:nowhere"),
    ] {
        let mut cmd = event(id, "probe.publish");
        cmd.subject = Some(subject.into());
        ask(&provider, "refusing", &mut results, cmd).await;
    }
    let text = provider.operations().metrics_text();
    for line in [
        r#"trigger_messaging_publish_refused_total{app="refusing",component="probe",error_type="queue-or-topic-not-found"} 2"#,
        r#"trigger_messaging_publish_refused_total{app="refusing",component="probe",error_type="insufficient-permissions"} 1"#,
    ] {
        assert!(text.contains(line), "{line}\nnot in\n{text}");
    }
    provider.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test(flavor = "multi_thread")]
async fn health_and_readiness_say_what_is_not_ready() {
    guests();
    // A link whose server is not there: the app starts, but is not ready.
    let mut server = crate::links::PrivateServer::not_started(crate::redis::redis_server);
    let (app, rc) = crate::links::app_on(
        &format!(
            "type = \"redis\"\nurl = \"redis://127.0.0.1:{}\"\n",
            server.port
        ),
        &unique("ready"),
    );
    let metrics_listen = format!("127.0.0.1:{}", free_port());
    let rc_path = rc.path().display().to_string();
    let (mut running, url) = up(
        &[&app.manifest],
        &[
            "--runtime-config-file",
            &rc_path,
            "--metrics-listen",
            &metrics_listen,
        ],
    );
    for base in [url.clone(), format!("http://{metrics_listen}")] {
        let (status, body) = get(&format!("{base}/healthz"), None).await;
        assert_eq!((status, body.as_str()), (200, r#"{"status":"ok"}"#));
        let (status, body) = get(&format!("{base}/readyz"), None).await;
        assert_eq!(status, 503, "{body}");
        let readiness: serde_json::Value = serde_json::from_str(&body).unwrap();
        assert_eq!(readiness["ready"], false);
        assert_eq!(readiness["started"], true);
        assert_eq!(readiness["links_down"], serde_json::json!(["bus"]));
        assert_eq!(
            readiness["channels_unattached"],
            serde_json::json!(["linkapp/feed"]),
            "{body}"
        );
    }
    let mut status = run(&["status", "--url", &url]);
    assert_eq!(status.wait_exit(Duration::from_secs(20)), 1);
    let printed = status.all();
    assert!(printed.contains("not ready"), "{printed}");
    assert!(
        printed.contains("link `bus` is not connected to its broker"),
        "{printed}"
    );
    assert!(
        printed.contains("channel `linkapp/feed` waits for its link"),
        "{printed}"
    );
    // The metrics endpoint serves only the operations routes.
    let (status_code, body) = get(
        &format!("http://{metrics_listen}/v1/apps/linkapp/channels/inbox"),
        None,
    )
    .await;
    assert_eq!(status_code, 404, "{body}");

    // The server comes: the link connects, the channel attaches: ready.
    server.restart();
    until(&format!("{url}/readyz"), |body| {
        body.contains(r#""ready":true"#)
    })
    .await;
    let mut status = run(&["status", "--url", &format!("http://{metrics_listen}")]);
    assert_eq!(
        status.wait_exit(Duration::from_secs(20)),
        0,
        "{}",
        status.all()
    );
    assert!(
        status
            .all()
            .contains("ready (every app started, every link connected)")
    );
    running.terminate();
    assert_eq!(running.wait_exit(Duration::from_secs(20)), 0);
}

#[tokio::test(flavor = "multi_thread")]
async fn metrics_follow_the_endpoints_token_rules() {
    guests();
    let dir = tempfile::tempdir().unwrap();
    let all = dir.path().join("all.token");
    let own = dir.path().join("own.token");
    std::fs::write(&all, "every-app-token-0123456789abcdef").unwrap();
    std::fs::write(&own, "relay-only-token-0123456789abcdef").unwrap();
    let relay = repo().join("sample-apps/relay/spin.toml");
    let metrics_listen = format!("127.0.0.1:{}", free_port());
    let all_arg = all.display().to_string();
    let own_arg = format!("relay={}", own.display());
    let (mut running, url) = up(
        &[&relay],
        &[
            "--api-token-file",
            &all_arg,
            "--app-token-file",
            &own_arg,
            "--metrics-listen",
            &metrics_listen,
        ],
    );
    for base in [url.clone(), format!("http://{metrics_listen}")] {
        let metrics = format!("{base}/metrics");
        assert_eq!(get(&metrics, None).await.0, 401);
        assert_eq!(get(&metrics, Some("wrong")).await.0, 401);
        let (status, body) = get(&metrics, Some("relay-only-token-0123456789abcdef")).await;
        assert_eq!(status, 403, "{body}");
        assert!(body.contains("need a token for every app"), "{body}");
        let (status, body) = get(&metrics, Some("every-app-token-0123456789abcdef")).await;
        assert_eq!(status, 200, "{body}");
        assert!(body.ends_with("# EOF\n"), "{body}");
        // Probes need no token.
        assert_eq!(get(&format!("{base}/healthz"), None).await.0, 200);
        assert_eq!(get(&format!("{base}/readyz"), None).await.0, 200);
    }
    running.terminate();
    assert_eq!(running.wait_exit(Duration::from_secs(20)), 0);

    // Other machines could reach it: a token is required, as for the endpoint.
    let mut refused = run(&[
        "up",
        "-f",
        relay.to_str().unwrap(),
        "--metrics-listen",
        "0.0.0.0:0",
    ]);
    assert_eq!(refused.wait_exit(Duration::from_secs(20)), 1);
    assert!(
        refused
            .all()
            .contains("refusing to listen on 0.0.0.0:0 without an API token"),
        "{}",
        refused.all()
    );
}

/// Every metric name the dashboard queries is one the provider exports.
#[tokio::test]
async fn the_grafana_dashboard_queries_only_exported_metrics() {
    let path = repo().join("ops/grafana-dashboard.json");
    let dashboard: serde_json::Value =
        serde_json::from_str(&std::fs::read_to_string(&path).unwrap()).unwrap();
    let mut exprs = Vec::new();
    fn collect(value: &serde_json::Value, out: &mut Vec<String>) {
        match value {
            serde_json::Value::Object(map) => {
                for (key, v) in map {
                    match (key.as_str(), v) {
                        ("expr", serde_json::Value::String(e)) => out.push(e.clone()),
                        _ => collect(v, out),
                    }
                }
            }
            serde_json::Value::Array(items) => items.iter().for_each(|v| collect(v, out)),
            _ => {}
        }
    }
    collect(&dashboard, &mut exprs);
    assert!(exprs.len() >= 10, "{exprs:?}");
    assert!(
        dashboard["panels"]
            .as_array()
            .is_some_and(|p| !p.is_empty())
    );

    // What the provider exports, from the families it declares (a family
    // shows once it has a series: one refused publish makes the last one).
    let app = probe_app("dashboard", "", r#"publish = ["results"]"#);
    let provider = start(&[&app.manifest], None).await;
    let mut results = watch(&provider, "dashboard", "results").await;
    let mut refused = event("d-1", "probe.publish");
    refused.subject = Some("topic:nowhere".into());
    ask(&provider, "dashboard", &mut results, refused).await;
    let text = provider.operations().metrics_text();
    let mut exported = BTreeSet::new();
    for line in text.lines() {
        let mut words = line.split(' ');
        if let (Some("#"), Some("TYPE"), Some(name), Some(kind)) =
            (words.next(), words.next(), words.next(), words.next())
        {
            match kind {
                "counter" => {
                    exported.insert(format!("{name}_total"));
                }
                "histogram" => {
                    for part in ["bucket", "sum", "count"] {
                        exported.insert(format!("{name}_{part}"));
                    }
                }
                _ => {
                    exported.insert(name.to_string());
                }
            }
        }
    }
    // Label names (`by (link, messaging_system)`) are not metrics.
    let label_names: BTreeSet<String> = text
        .lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| Some(l.split_once('{')?.1.split_once('}')?.0.to_string()))
        .flat_map(|labels| {
            labels
                .split(',')
                .filter_map(|pair| pair.split_once('=').map(|(k, _)| k.to_string()))
                .collect::<Vec<_>>()
        })
        .collect();
    assert!(label_names.contains("messaging_system"), "{label_names:?}");
    let mut used = BTreeSet::new();
    for expr in &exprs {
        let mut name = String::new();
        for c in expr.chars().chain([' ']) {
            if c.is_ascii_alphanumeric() || c == '_' || c == ':' {
                name.push(c);
                continue;
            }
            if (name.starts_with("messaging_") || name.starts_with("trigger_messaging_"))
                && !label_names.contains(&name)
            {
                used.insert(std::mem::take(&mut name));
            }
            name.clear();
        }
    }
    assert!(used.len() >= 10, "{used:?}");
    let unknown: Vec<_> = used.difference(&exported).collect();
    assert!(unknown.is_empty(), "not exported: {unknown:?}\n{text}");
    provider.shutdown(Duration::from_secs(5)).await;
}
