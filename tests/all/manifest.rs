//! Manifest and runtime config: every mistake is reported before anything
//! starts, with the file, the key path and the line; variables resolve.

use crate::support::*;
use messaging_provider::broker::LinkRegistry;
use messaging_provider::manifest::{ConfigError, ConfigErrors, RuntimeConfig, load_app};
use std::path::Path;

fn errors_of(toml: &str) -> (AppDir, Vec<ConfigError>) {
    let app = write_app(toml);
    let errors = load_app(&app.manifest, &|link| link == "default")
        .expect_err("the manifest must be refused")
        .0;
    (app, errors)
}

/// Asserts one of the errors is at `key`, on `line`, and says `text`.
pub fn assert_error(errors: &[ConfigError], file: &Path, key: &str, line: usize, text: &str) {
    let found = errors
        .iter()
        .find(|e| e.key == key)
        .unwrap_or_else(|| panic!("no error at `{key}` in {errors:#?}"));
    assert_eq!(found.file, file);
    assert_eq!(found.line, Some(line), "line of `{key}`: {found}");
    assert!(found.message.contains(text), "{found} should say {text:?}");
    let shown = found.to_string();
    assert!(
        shown.starts_with(&format!("{}:{line}: `{key}`: ", file.display())),
        "{shown}"
    );
}

const HEAD: &str = "spin_manifest_version = 2\n[application]\nname = \"m\"\n"; // lines 1-3

#[test]
fn unknown_keys_and_wrong_types_are_located() {
    let (app, errors) = errors_of(&format!(
        "{HEAD}[application.trigger.messaging.channels.orders]
kind = \"queue\"
colour = \"red\"
[[trigger.messaging]]
component = \"probe\"
subscriptions = [\"orders\"]
[component.probe]
source = \"{{probe}}\"
"
    ));
    assert_error(
        &errors,
        &app.manifest,
        "application.trigger.messaging.channels.orders.colour",
        6,
        "unknown field `colour`",
    );

    let (app, errors) = errors_of(&format!(
        "{HEAD}[application.trigger.messaging.channels.orders]
kind = \"stream\"
"
    ));
    assert_error(
        &errors,
        &app.manifest,
        "application.trigger.messaging.channels.orders.kind",
        5,
        "unknown variant `stream`",
    );

    let (app, errors) = errors_of(&format!(
        "{HEAD}[application.trigger.messaging.channels.orders]
kind = \"queue\"
max_payload = \"big\"
"
    ));
    assert_error(
        &errors,
        &app.manifest,
        "application.trigger.messaging.channels.orders.max_payload",
        6,
        "invalid type",
    );

    let (app, errors) = errors_of(&format!(
        "{HEAD}[application.trigger.messaging.channels]
orders = {{ kind = \"queue\" }}
[[trigger.messaging]]
component = \"probe\"
subscription = [\"orders\"]
"
    ));
    assert_error(
        &errors,
        &app.manifest,
        "trigger.messaging[0].subscription",
        8,
        "unknown field `subscription`",
    );

    let (app, errors) =
        errors_of("spin_manifest_version = 2\n[application]\nname = \"m\"\nflavour = 1\n");
    assert_error(
        &errors,
        &app.manifest,
        "application.flavour",
        4,
        "unknown field `flavour`",
    );
}

#[test]
fn references_are_checked_and_every_mistake_reported_at_once() {
    let (app, errors) = errors_of(&format!(
        "{HEAD}[application.trigger.messaging.channels]
orders = {{ kind = \"queue\", link = \"nats1\", dead_letter = \"nowhere\" }}
[[trigger.messaging]]
component = \"probe\"
subscriptions = [\"orders\"]
publish = [
  \"orders\",
  \"ghost\",
]
[[trigger.messaging]]
component = \"missing\"
[[trigger.messaging]]
component = \"nosource\"
[[trigger.messaging]]
component = \"badpath\"
[component.probe]
source = \"{{probe}}\"
[component.nosource]
description = \"no source here\"
[component.badpath]
source = \"does/not/exist.wasm\"
"
    ));
    let file = &app.manifest;
    assert_error(
        &errors,
        file,
        "application.trigger.messaging.channels.orders.link",
        5,
        "no link `nats1`",
    );
    assert_error(
        &errors,
        file,
        "application.trigger.messaging.channels.orders.dead_letter",
        5,
        "`nowhere` must be another channel",
    );
    assert_error(
        &errors,
        file,
        "trigger.messaging[0].publish[1]",
        11,
        "channel `ghost` is not declared",
    );
    assert_error(
        &errors,
        file,
        "trigger.messaging[1].component",
        14,
        "no component `missing`",
    );
    assert_error(
        &errors,
        file,
        "component.nosource.source",
        21,
        "has no `source`",
    );
    assert_error(
        &errors,
        file,
        "component.badpath.source",
        24,
        "does not exist",
    );
    assert_eq!(errors.len(), 6, "{errors:#?}");
}

#[test]
fn delivery_and_isolation_settings_are_checked_against_their_ranges() {
    let (app, errors) = errors_of(&format!(
        "{HEAD}[application.trigger.messaging.channels.orders]
kind = \"queue\"
max_attempts = 0
retry_delay = \"1ms\"
[application.trigger.messaging.channels.bills]
kind = \"queue\"
max_attempts = 5000
retry_delay = \"10s\"
max_retry_delay = \"1s\"
[application.trigger.messaging.channels.notes]
kind = \"queue\"
max_retry_delay = \"2h\"
[[trigger.messaging]]
component = \"small\"
subscriptions = [\"orders\"]
max_memory = \"512 KiB\"
max_in_flight = 5000
[[trigger.messaging]]
component = \"huge\"
max_memory = \"8 GiB\"
[component.small]
source = \"{{probe}}\"
[component.huge]
source = \"{{probe}}\"
"
    ));
    let at =
        |key: &str, line: usize, text: &str| assert_error(&errors, &app.manifest, key, line, text);
    let channel = "application.trigger.messaging.channels";
    at(
        &format!("{channel}.orders.max_attempts"),
        6,
        "between 1 and 1000",
    );
    at(
        &format!("{channel}.orders.retry_delay"),
        7,
        "between 10ms and 1h",
    );
    at(
        &format!("{channel}.bills.max_attempts"),
        10,
        "between 1 and 1000",
    );
    at(
        &format!("{channel}.bills.max_retry_delay"),
        12,
        "between `retry_delay` (10s) and 1h",
    );
    at(
        &format!("{channel}.notes.max_retry_delay"),
        15,
        "between `retry_delay` (1s) and 1h",
    );
    at(
        "trigger.messaging[0].max_memory",
        19,
        "between 1 MiB and 4 GiB",
    );
    at(
        "trigger.messaging[0].max_in_flight",
        20,
        "between 1 and 1024",
    );
    at(
        "trigger.messaging[1].max_memory",
        23,
        "between 1 MiB and 4 GiB",
    );

    let (app, errors) = errors_of(&format!(
        "{HEAD}[[trigger.messaging]]
component = \"p\"
max_memory = \"lots\"
[component.p]
source = \"{{probe}}\"
"
    ));
    assert_error(
        &errors,
        &app.manifest,
        "trigger.messaging[0].max_memory",
        6,
        "lots",
    );
}

#[test]
fn an_app_without_messaging_triggers_is_refused() {
    let (app, errors) = errors_of(HEAD);
    assert_eq!(errors[0].file, app.manifest);
    assert!(
        errors[0].message.contains("no [[trigger.messaging]]"),
        "{}",
        errors[0]
    );
}

#[test]
fn variables_resolve_from_defaults_and_environment() {
    let text = |var_default: &str| {
        format!(
            "{HEAD}[variables]
env_prefix = {{ default = \"{var_default}\" }}
[application.trigger.messaging.channels]
orders = {{ kind = \"queue\", address = \"{{{{ env_prefix }}}}.orders\" }}
[[trigger.messaging]]
component = \"probe\"
subscriptions = [\"orders\"]
[component.probe]
source = \"{{probe}}\"
"
        )
    };
    let app = write_app(&text("dev"));
    let loaded = load_app(&app.manifest, &|l| l == "default").unwrap();
    assert_eq!(loaded.channels["orders"].address, "dev.orders");

    let app = write_app(&text("dev").replace("env_prefix", "region_override"));
    // SAFETY: this test is the only one that reads this variable.
    unsafe { std::env::set_var("SPIN_VARIABLE_REGION_OVERRIDE", "eu") };
    let loaded = load_app(&app.manifest, &|l| l == "default").unwrap();
    assert_eq!(loaded.channels["orders"].address, "eu.orders");

    let app = write_app(&text("dev").replace("{{ env_prefix }}", "{{ undeclared }}"));
    let errors = load_app(&app.manifest, &|l| l == "default").unwrap_err().0;
    assert_error(
        &errors,
        &app.manifest,
        "application.trigger.messaging.channels.orders.address",
        7,
        "`undeclared` is not declared",
    );
}

pub fn runtime_config_errors(text: &str) -> (tempfile::NamedTempFile, Vec<ConfigError>) {
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(file.path(), text).unwrap();
    let errors = match RuntimeConfig::load(Some(file.path()), &LinkRegistry::default()) {
        Ok(_) => panic!("the runtime config must be refused"),
        Err(ConfigErrors(e)) => e,
    };
    (file, errors)
}

#[test]
fn runtime_config_mistakes_are_located() {
    let (f, errors) = runtime_config_errors("[messaging_link.a]\ntype = \"kafka\"\n");
    assert_error(
        &errors,
        f.path(),
        "messaging_link.a.type",
        2,
        "unknown link type `kafka`; known types: amqp, embedded, mqtt, nats, redis",
    );
    let (f, errors) = runtime_config_errors(
        "[messaging_link.a]\ntype = \"embedded\"\ncapacity = 10\nspeed = 3\n",
    );
    assert_error(
        &errors,
        f.path(),
        "messaging_link.a.speed",
        4,
        "unknown field `speed`",
    );
    let (f, errors) = runtime_config_errors(
        "[messaging_link.a]\ntype = \"embedded\"\npublish_timeout = \"soon\"\n",
    );
    assert_error(
        &errors,
        f.path(),
        "messaging_link.a.publish_timeout",
        3,
        "soon",
    );
    // Values a link cannot use are found when the file loads, not on connecting.
    for (settings, key, line, text) in [
        (
            "type = \"embedded\"\ncapacity = 0\n",
            "capacity",
            3,
            "must be at least 1",
        ),
        ("type = \"mqtt\"\nqos = 3\n", "qos", 3, "must be 0, 1 or 2"),
        (
            "type = \"mqtt\"\nversion = \"3.1.1\"\ncontent_mode = \"binary\"\n",
            "content_mode",
            4,
            "always structured",
        ),
        (
            "type = \"amqp\"\nprefetch = 0\n",
            "prefetch",
            3,
            "must be at least 1",
        ),
        ("type = \"nats\"\nuser = \"u\"\n", "user", 3, "go together"),
        (
            "type = \"nats\"\nbatch = 0\n",
            "batch",
            3,
            "between 1 and 10000",
        ),
        (
            "type = \"nats\"\nack_wait = \"10ms\"\n",
            "ack_wait",
            3,
            "between 1s and 24h",
        ),
        (
            "type = \"redis\"\nclaim_after = \"0s\"\n",
            "claim_after",
            3,
            "between 1s and 24h",
        ),
        (
            "type = \"redis\"\nbatch = 100000\n",
            "batch",
            3,
            "between 1 and 10000",
        ),
    ] {
        let (f, errors) = runtime_config_errors(&format!("[messaging_link.a]\n{settings}"));
        assert_error(
            &errors,
            f.path(),
            &format!("messaging_link.a.{key}"),
            line,
            text,
        );
    }
    let (f, errors) = runtime_config_errors("[messaging_links.a]\ntype = \"embedded\"\n");
    assert_error(&errors, f.path(), "messaging_links", 1, "unknown key");
    let (f, errors) = runtime_config_errors("[messaging_link.a]\ncapacity = 1\n");
    assert_error(&errors, f.path(), "messaging_link.a", 1, "missing `type`");
    let (f, errors) = runtime_config_errors("[messaging_link.a\n");
    assert_eq!(errors[0].file, f.path());
    assert_eq!(errors[0].line, Some(1));
    assert!(errors[0].message.contains("not valid TOML"));

    // Spin's own tables may share the file.
    let file = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(
        file.path(),
        "[key_value_store.default]\ntype = \"redis\"\n[messaging_link.x]\ntype = \"embedded\"\n",
    )
    .unwrap();
    let config = RuntimeConfig::load(Some(file.path()), &LinkRegistry::default()).unwrap();
    assert!(config.has_link("x") && config.has_link("default"));
}

#[tokio::test]
async fn app_names_must_be_unique_across_manifests() {
    let a = probe_app("same", "", r#"publish = ["results"]"#);
    let b = probe_app("same", "", r#"publish = ["results"]"#);
    let err = messaging_provider::Provider::load(messaging_provider::ProviderOptions {
        manifests: vec![a.manifest.clone(), b.manifest.clone()],
        host: test_host(),
        ..Default::default()
    })
    .await
    .err()
    .expect("duplicate app names are refused");
    let errors = err
        .downcast_ref::<ConfigErrors>()
        .expect("a configuration error");
    assert!(
        errors.0[0].message.contains("app `same` is already loaded"),
        "{err}"
    );
}
