//! Key-value stores from a handler: the `default` store with no config
//! (SQLite in the app's state directory, kept across events and restarts),
//! a store bound to Redis by the runtime config, the `key_value_stores`
//! allow-list, both guest interfaces (wasi:keyvalue and Spin's), and the
//! loader's checks.

use crate::support::*;
use messaging_provider::provider::{OutputOptions, UserPath};
use messaging_provider::{Provider, ProviderOptions};
use std::path::Path;

fn kv_app(name: &str, stores: &str) -> AppDir {
    probe_app_granted(name, "", &format!("key_value_stores = {stores}"))
}

fn kv(id: &str, label: &str, commands: &str) -> messaging_provider::cloudevents::Event {
    let mut e = event(id, "probe.kv");
    e.subject = Some(label.into());
    e.data = Some(commands.as_bytes().to_vec());
    e
}

async fn provider_with_state(
    app: &AppDir,
    state: &Path,
    runtime_config: Option<&Path>,
) -> Provider {
    init_logging();
    let provider = Provider::load(ProviderOptions {
        manifests: vec![app.manifest.clone()],
        runtime_config: runtime_config.map(Path::to_path_buf),
        host: test_host(),
        output: OutputOptions {
            state_dir: UserPath::Given(state.to_path_buf()),
            ..quiet()
        },
        ..ProviderOptions::default()
    })
    .await
    .unwrap_or_else(|e| panic!("{e:#}"));
    provider.start().await.unwrap();
    provider
}

#[tokio::test]
async fn the_default_store_keeps_a_counter_across_events_and_restarts() {
    let app = kv_app("counting", r#"["default"]"#);
    let state = tempfile::tempdir().unwrap();
    {
        let provider = provider_with_state(&app, state.path(), None).await;
        let mut results = watch(&provider, "counting", "results").await;
        for n in 1..=3 {
            let (_, data) = ask(
                &provider,
                "counting",
                &mut results,
                kv(&format!("c-{n}"), "default", "incr hits"),
            )
            .await;
            assert_eq!(data, n.to_string());
        }
        let (_, data) = ask(
            &provider,
            "counting",
            &mut results,
            kv(
                "c-set",
                "default",
                "set name ada; get name; keys; many name,nope; del name; get name",
            ),
        )
        .await;
        assert_eq!(data, "ok;ada;hits,name;name:ada,nope:none;ok;none");
        assert!(
            provider.summary().contains("sqlite_key_value.db"),
            "{}",
            provider.summary()
        );
        provider.shutdown(std::time::Duration::from_secs(5)).await;
    }
    // Spin's file, in Spin's place: <state dir>/sqlite_key_value.db.
    assert!(state.path().join("sqlite_key_value.db").is_file());
    let provider = provider_with_state(&app, state.path(), None).await;
    let mut results = watch(&provider, "counting", "results").await;
    let (_, data) = ask(
        &provider,
        "counting",
        &mut results,
        kv("c-4", "default", "incr hits"),
    )
    .await;
    assert_eq!(data, "4", "the count survived the restart");
}

#[tokio::test]
async fn compare_and_swap_and_spins_interface_share_the_store() {
    let app = kv_app("swapping", r#"["default"]"#);
    let state = tempfile::tempdir().unwrap();
    let provider = provider_with_state(&app, state.path(), None).await;
    let mut results = watch(&provider, "swapping", "results").await;
    let (_, data) = ask(
        &provider,
        "swapping",
        &mut results,
        kv(
            "s-1",
            "default",
            "cas k first; get k; spin-set k second; spin-get k; get k; cas k third; get k",
        ),
    )
    .await;
    assert_eq!(data, "swapped;first;ok;second;second;swapped;third");
}

#[tokio::test]
async fn a_store_not_granted_is_access_denied() {
    let app = kv_app("denied", "[]");
    let state = tempfile::tempdir().unwrap();
    let provider = provider_with_state(&app, state.path(), None).await;
    let mut results = watch(&provider, "denied", "results").await;
    let (_, data) = ask(
        &provider,
        "denied",
        &mut results,
        kv("d-1", "default", "incr x"),
    )
    .await;
    assert_eq!(data, "open Error::AccessDenied");
    let (_, data) = ask(
        &provider,
        "denied",
        &mut results,
        kv("d-2", "default", "spin-get x"),
    )
    .await;
    assert_eq!(data, "Error::AccessDenied", "Spin's interface too");
}

#[tokio::test]
async fn a_store_bound_to_redis_is_shared_by_processes() {
    let app = kv_app("redis-kv", r#"["shared"]"#);
    let rc = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        rc.path(),
        "[key_value_store.shared]\ntype = \"redis\"\nurl = \"redis://127.0.0.1:6379\"\n",
    )
    .unwrap();
    let key = unique("kv.counter");
    let state = tempfile::tempdir().unwrap();
    let provider = provider_with_state(&app, state.path(), Some(rc.path())).await;
    let mut results = watch(&provider, "redis-kv", "results").await;
    let (_, data) = ask(
        &provider,
        "redis-kv",
        &mut results,
        kv("rk-1", "shared", &format!("incr {key}; incr {key}")),
    )
    .await;
    assert_eq!(data, "1;2");
    // Stored as Spin's Redis stores keep it: the key itself, a decimal counter.
    let out = std::process::Command::new("redis-cli")
        .args(["-h", "127.0.0.1", "-p", "6379", "GET", &key])
        .output()
        .expect("redis-cli");
    assert_eq!(String::from_utf8_lossy(&out.stdout).trim(), "2");
    let (_, data) = ask(
        &provider,
        "redis-kv",
        &mut results,
        kv(
            "rk-2",
            "shared",
            &format!("cas {key} 10; get {key}; del {key}; get {key}"),
        ),
    )
    .await;
    assert_eq!(data, "swapped;10;ok;none");
}

#[test]
fn key_value_mistakes_are_located() {
    guests();
    let app = kv_app("bad-kv", r#"["default", "cache", "cosmos"]"#);
    let rc = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        rc.path(),
        r#"[key_value_store.cosmos]
type = "azure_cosmos"
account = "x"

[key_value_store.typo]
type = "redis"
urll = "redis://x"

[key_value_store.nourl]
type = "redis"
"#,
    )
    .unwrap();
    let registry = messaging_provider::broker::LinkRegistry::default();
    let errors = match messaging_provider::manifest::RuntimeConfig::load(Some(rc.path()), &registry)
    {
        Ok(_) => panic!("the runtime config loaded"),
        Err(e) => e.to_string(),
    };
    assert!(
        errors.contains(":7: `key_value_store.typo.urll`: unknown key"),
        "{errors}"
    );
    assert!(
        errors.contains("`key_value_store.nourl`: a `redis` store needs `url`"),
        "{errors}"
    );

    std::fs::write(
        rc.path(),
        "[key_value_store.cosmos]\ntype = \"azure_cosmos\"\n",
    )
    .unwrap();
    let config =
        messaging_provider::manifest::RuntimeConfig::load(Some(rc.path()), &registry).unwrap();
    let errors = messaging_provider::manifest::load_app_with_links(&app.manifest, &config)
        .unwrap_err()
        .to_string();
    assert!(
        errors.contains(
            "spin.toml:14: `component.probe.key_value_stores[1]`: no key-value store `cache`"
        ),
        "{errors}"
    );
    assert!(
        errors.contains("`component.probe.key_value_stores[2]`: key-value store `cosmos` has type `azure_cosmos`"),
        "{errors}"
    );
}

#[tokio::test]
async fn key_value_flags_seed_the_default_store_before_the_app_starts() {
    let state = tempfile::tempdir().unwrap();
    let load = |app: &AppDir, key_values: Vec<(String, String)>| {
        let options = ProviderOptions {
            manifests: vec![app.manifest.clone()],
            host: test_host(),
            output: OutputOptions {
                state_dir: UserPath::Given(state.path().to_path_buf()),
                ..quiet()
            },
            key_values,
            ..ProviderOptions::default()
        };
        async move {
            init_logging();
            let provider = Provider::load(options)
                .await
                .unwrap_or_else(|e| panic!("{e:#}"));
            provider.start().await.unwrap();
            provider
        }
    };
    let pairs = |list: &[(&str, &str)]| -> Vec<(String, String)> {
        list.iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect()
    };

    // No component names `default`: the store is opened for the flags alone.
    let other = kv_app("seeded", r#"[]"#);
    let provider = load(&other, pairs(&[("origin", "a=b"), ("empty", "")])).await;
    assert!(
        provider.summary().contains("sqlite_key_value.db"),
        "{}",
        provider.summary()
    );
    provider.shutdown(std::time::Duration::from_secs(5)).await;
    drop(provider);

    // The same state directory, a component that reads it; the last flag wins.
    let app = kv_app("seeded", r#"["default"]"#);
    let provider = load(&app, pairs(&[("second", "1"), ("second", "2")])).await;
    let mut results = watch(&provider, "seeded", "results").await;
    let (_, data) = ask(
        &provider,
        "seeded",
        &mut results,
        kv("k-1", "default", "get origin; get empty; get second"),
    )
    .await;
    assert_eq!(data, "a=b;;2");
    provider.shutdown(std::time::Duration::from_secs(5)).await;
}
