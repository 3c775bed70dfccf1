//! The sample apps, end to end on the embedded broker.

use crate::support::*;
use messaging_provider::cloudevents::Event;
use std::time::Duration;

#[tokio::test]
async fn the_relay_ships_orders_and_dead_letters_empty_ones() {
    guests();
    let relay = repo().join("sample-apps/relay/spin.toml");
    let provider = start(&[&relay], None).await;
    let mut shipments = watch(&provider, "relay", "shipments").await;
    let mut rejected = watch(&provider, "relay", "rejected").await;

    let mut order = event("o-1", "com.example.order.created");
    order.data = Some(br#"{"sku":"B2","qty":3}"#.to_vec());
    order.datacontenttype = Some("application/json".into());
    order.subject = Some("customer-7".into());
    order.time = Some("2025-01-01T10:00:00Z".into());
    send(&provider, "relay", "orders", order).await;
    let shipped = shipments.next("the shipped event").await;
    assert_eq!(shipped.id, "o-1-shipped");
    assert_eq!(shipped.ty, "com.example.order.shipped");
    assert_eq!(shipped.subject.as_deref(), Some("customer-7"));
    assert_eq!(shipped.time.as_deref(), Some("2025-01-01T10:00:00Z"));
    assert_eq!(shipped.extension("relayedfrom"), Some("o-1"));
    let data: serde_json::Value = serde_json::from_slice(shipped.data.as_deref().unwrap()).unwrap();
    assert_eq!(
        data,
        serde_json::json!({"order": {"sku": "B2", "qty": 3}, "status": "shipped"})
    );

    let empty = event("o-2", "com.example.order.created");
    send(&provider, "relay", "orders", empty.clone()).await;
    let (original, cause) = dead_letter_parts(&rejected.next("the rejected order").await);
    assert_eq!(original, empty);
    assert_eq!(cause["deadletterattempts"], "3");
    assert_eq!(cause["deadletterchannel"], "orders");
    assert_eq!(cause["deadlettercomponent"], "relay");
    assert!(
        cause["deadlettererror"].contains("order o-2 has no data"),
        "{cause:?}"
    );
    shipments.expect_nothing(Duration::from_millis(300)).await;
}

/// The relay in Python and in JavaScript ships byte for byte the events the
/// Rust relay ships, from JSON data and from data that is neither JSON nor
/// UTF-8, and refuses an order without data the same way (their READMEs
/// promise "the same shipped event").
#[tokio::test(flavor = "multi_thread")]
async fn the_relay_ships_the_same_events_in_every_language() {
    guests();
    let relays = foreign_relays();
    assert!(relays.python.is_file() && relays.javascript.is_file());
    let samples = repo().join("sample-apps");
    let apps = ["relay", "relay-py", "relay-js"];
    let manifests: Vec<_> = apps
        .iter()
        .map(|app| samples.join(app).join("spin.toml"))
        .collect();
    let manifests: Vec<&std::path::Path> = manifests.iter().map(|m| m.as_path()).collect();
    let provider = start(&manifests, None).await;

    let mut json = event("o-json", "com.example.order.created");
    json.data = Some(
        r#"{"sku":"B2","qty":3,"price":2.5,"note":"grün \"fast\"\n","tags":["a","b"],"z":{"y":1,"b":null,"a":true}}"#
            .as_bytes()
            .to_vec(),
    );
    json.datacontenttype = Some("application/json".into());
    json.subject = Some("customer-7".into());
    json.time = Some("2025-01-01T10:00:00Z".into());
    json.extensions = vec![("region".into(), "eu".into())];
    let mut text = event("o-text", "com.example.order.created");
    text.data = Some(b"plain text, not JSON: \xff\xfe ok".to_vec());
    let empty = event("o-empty", "com.example.order.created");

    let mut shipped_by_rust = Vec::new();
    for app in apps {
        let mut shipments = watch(&provider, app, "shipments").await;
        let mut rejected = watch(&provider, app, "rejected").await;
        for order in [&json, &text, &empty] {
            send(&provider, app, "orders", order.clone()).await;
        }
        // Events are handled concurrently: they may ship in either order.
        let mut shipped = vec![
            shipments.next("a shipped event").await,
            shipments.next("another shipped event").await,
        ];
        shipped.sort_by(|a, b| a.id.cmp(&b.id));
        let ids: Vec<&str> = shipped.iter().map(|e| e.id.as_str()).collect();
        assert_eq!(ids, ["o-json-shipped", "o-text-shipped"], "{app}");
        if shipped_by_rust.is_empty() {
            let data = |e: &Event| String::from_utf8(e.data.clone().unwrap()).unwrap();
            assert_eq!(
                data(&shipped[0]),
                r#"{"order":{"note":"grün \"fast\"\n","price":2.5,"qty":3,"sku":"B2","tags":["a","b"],"z":{"a":true,"b":null,"y":1}},"status":"shipped"}"#
            );
            assert_eq!(
                data(&shipped[1]),
                "{\"order\":\"plain text, not JSON: \u{fffd}\u{fffd} ok\",\"status\":\"shipped\"}"
            );
            assert_eq!(shipped[0].extension("relayedfrom"), Some("o-json"));
            assert_eq!(shipped[0].extension("region"), Some("eu"));
            shipped_by_rust = shipped;
        } else {
            assert_eq!(shipped, shipped_by_rust, "{app}");
        }
        let (original, cause) = dead_letter_parts(&rejected.next("the rejected order").await);
        assert_eq!(original, empty, "{app}");
        assert!(
            cause["deadlettererror"].contains("order o-empty has no data"),
            "{app}: {cause:?}"
        );
        shipments.expect_nothing(Duration::from_millis(200)).await;
    }
    provider.shutdown(Duration::from_secs(5)).await;
}

#[tokio::test]
async fn the_watcher_subscribes_and_unsubscribes_at_run_time() {
    guests();
    let watcher = repo().join("sample-apps/watcher/spin.toml");
    let provider = start(&[&watcher], None).await;
    let mut status = watch(&provider, "watcher", "watch-status").await;
    let mut log = watch(&provider, "watcher", "watch-log").await;

    let mut start_cmd = event("c-1", "watch.start");
    start_cmd.data = Some(b"news".to_vec());
    send(&provider, "watcher", "control", start_cmd).await;
    let started = status.next("watch.started").await;
    assert_eq!(started.ty, "watch.started", "{started:?}");
    let token = started.data.unwrap();

    send(&provider, "watcher", "news", event("n-1", "news.flash")).await;
    let seen = log.next("the watched event").await;
    assert_eq!(
        (seen.id.as_str(), seen.extension("seentype")),
        ("n-1-seen", Some("news.flash"))
    );
    send(
        &provider,
        "watcher",
        "weather",
        event("w-1", "weather.report"),
    )
    .await;
    log.expect_nothing(Duration::from_millis(300)).await;

    let mut stop_cmd = event("c-2", "watch.stop");
    stop_cmd.data = Some(token);
    send(&provider, "watcher", "control", stop_cmd).await;
    assert_eq!(status.next("watch.stopped").await.ty, "watch.stopped");
    send(&provider, "watcher", "news", event("n-2", "news.flash")).await;
    log.expect_nothing(Duration::from_millis(500)).await;

    let mut bad = event("c-3", "watch.start");
    bad.data = Some(b"control".to_vec());
    send(&provider, "watcher", "control", bad).await;
    let failed = status.next("watch.failed").await;
    assert_eq!(failed.ty, "watch.failed");
    assert!(
        String::from_utf8_lossy(failed.data.as_deref().unwrap()).contains("QueueOrTopicNotFound")
    );
}

/// The relay runs unchanged on every broker: only the runtime config moves it.
#[tokio::test]
async fn the_relay_runs_on_every_broker_by_runtime_config_alone() {
    guests();
    // SAFETY: set before any provider reads it; no other test reads this variable.
    unsafe { std::env::set_var("SPIN_VARIABLE_AMQP_PASSWORD", "guest") };
    for broker in ["nats", "jetstream", "mqtt", "redis", "rabbitmq"] {
        let rc = repo().join(format!("sample-apps/runtime-config/{broker}.toml"));
        let relay = repo().join("sample-apps/relay/spin.toml");
        let provider = start(&[&relay], Some(&rc)).await;
        let mut shipments = watch(&provider, "relay", "shipments").await;
        tokio::time::sleep(Duration::from_millis(300)).await;
        let id = format!("{broker}-{}", uuid::Uuid::new_v4().simple());
        let mut order = event(&id, "com.example.order.created");
        order.data = Some(br#"{"sku":"C3"}"#.to_vec());
        order.datacontenttype = Some("application/json".into());
        send(&provider, "relay", "orders", order).await;
        let shipped = shipments.next_with_id(&format!("{id}-shipped")).await;
        assert_eq!(
            shipped.extension("relayedfrom"),
            Some(id.as_str()),
            "on {broker}"
        );
        provider.shutdown(Duration::from_secs(5)).await;
    }
}

/// The counter, in Rust, Python and JavaScript: each visit asks a local
/// HTTP API for a quote and counts in the `default` key-value store.
#[tokio::test(flavor = "multi_thread")]
async fn the_counter_calls_an_api_and_counts_in_every_language() {
    use axum::routing::get;
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let api = axum::Router::new().route("/quote", get(|| async { "Simple is better.\n" }));
    tokio::spawn(async move { axum::serve(listener, api).await.unwrap() });
    // SAFETY: set before any provider reads it; only this test reads it.
    unsafe {
        std::env::set_var(
            "SPIN_VARIABLE_API_ORIGIN",
            format!("http://127.0.0.1:{port}"),
        )
    };

    guests();
    let foreign = foreign_guests();
    for (sample, built) in [
        ("counter", None),
        ("counter-py", Some(&foreign.python)),
        ("counter-js", Some(&foreign.javascript)),
    ] {
        if let Some(built) = built {
            assert!(built.is_file(), "{} was not built", built.display());
        }
        let state = tempfile::tempdir().unwrap();
        init_logging();
        let provider = messaging_provider::Provider::load(messaging_provider::ProviderOptions {
            manifests: vec![repo().join("sample-apps").join(sample).join("spin.toml")],
            host: test_host(),
            output: messaging_provider::provider::OutputOptions {
                state_dir: messaging_provider::provider::UserPath::Given(state.path().into()),
                ..quiet()
            },
            ..Default::default()
        })
        .await
        .unwrap_or_else(|e| panic!("{sample}: {e:#}"));
        provider.start().await.unwrap();
        let mut counts = watch(&provider, sample, "counts").await;
        for n in 1..=2 {
            let id = format!("{sample}-visit-{n}");
            send(&provider, sample, "visits", event(&id, "com.example.visit")).await;
            let counted = counts.next_with_id(&format!("{id}-counted")).await;
            assert_eq!(counted.ty, "com.example.visit.counted", "{sample}");
            let data: serde_json::Value =
                serde_json::from_slice(counted.data.as_deref().unwrap()).unwrap();
            assert_eq!(
                data,
                serde_json::json!({"visits": n, "quote": "Simple is better."}),
                "{sample}"
            );
        }
        provider.shutdown(Duration::from_secs(5)).await;
        assert!(
            state.path().join("sqlite_key_value.db").is_file(),
            "{sample}"
        );
    }
}

/// The README's first command shows what its text promises: two shipments,
/// and the third order dead-lettered to `rejected` after three attempts.
#[test]
fn the_demo_shows_both_shipments_and_the_dead_lettered_order() {
    guests();
    let out = std::process::Command::new("bash")
        .arg(repo().join("scripts/demo.sh"))
        .env("PORT", free_port().to_string())
        .output()
        .unwrap();
    let (stdout, stderr) = (
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr),
    );
    assert!(out.status.success(), "{stdout}\n{stderr}");
    let events: Vec<serde_json::Value> = stdout
        .lines()
        .filter_map(|line| serde_json::from_str(line).ok())
        .filter(|v: &serde_json::Value| v.is_object())
        .collect();
    let shipped = events
        .iter()
        .filter(|e| e.get("deadletterattempts").is_none());
    assert_eq!(shipped.count(), 2, "{stdout}");
    let rejected: Vec<_> = events
        .iter()
        .filter(|e| e.get("deadletterattempts").is_some())
        .collect();
    assert_eq!(rejected.len(), 1, "{stdout}");
    assert_eq!(rejected[0]["deadletterattempts"], "3", "{stdout}");
    assert_eq!(rejected[0]["deadletterchannel"], "orders", "{stdout}");
    assert!(
        stderr.contains("watching `rejected` of app `relay`"),
        "{stderr}"
    );
}
