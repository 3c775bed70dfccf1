//! Manifest and runtime config: every mistake is reported before anything
//! starts, with the file, the key path and the line; variables resolve.

use crate::support::*;
use messaging_provider::broker::LinkRegistry;
use messaging_provider::manifest::{
    ConfigError, ConfigErrors, RuntimeConfig, load_app, load_app_with_links,
};
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
    let (f, errors) = runtime_config_errors("[messaging_link.a]\ntype = \"pulsar\"\n");
    assert_error(
        &errors,
        f.path(),
        "messaging_link.a.type",
        2,
        "unknown link type `pulsar`; known types: amqp, embedded, kafka, mqtt, nats, redis",
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
            "must be between 1 and 1048576 (got 0)",
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
            "must be between 1 and 65535 (got 0)",
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
        "state_dir = \"\"\n[key_value_store.default]\ntype = \"redis\"\nurl = \"redis://127.0.0.1\"\n[sqlite_database.default]\ntype = \"spin\"\n[outbound_http]\nconnection_pooling = true\n[messaging_link.x]\ntype = \"embedded\"\n",
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

// ---------------------------------------------------------------------------
// Ranges and naming rules: every number has a range and every broker-side
// name the broker's rules, checked at load and reported at file, key and
// line — and no value, however wild, makes the loader panic.

const CHANNEL: &str = "application.trigger.messaging.channels.orders";

/// An app whose queue channel `orders` has `channel` on line 6 of its table
/// and whose one trigger has `trigger` on line 10.
fn app_text(channel: &str, trigger: &str) -> String {
    format!(
        "{HEAD}[application.trigger.messaging.channels.orders]
kind = \"queue\"
{channel}
[[trigger.messaging]]
component = \"probe\"
subscriptions = [\"orders\"]
{trigger}
[component.probe]
source = \"{{probe}}\"
"
    )
}

/// 2^61: fits every integer TOML holds, far past every range.
const HUGE: &str = "2305843009213693952";
/// The largest integer TOML holds (i64::MAX).
const TOML_MAX: &str = "9223372036854775807";

#[test]
fn every_number_in_spin_toml_is_checked_against_its_range() {
    let channel_cases: &[(&str, &str, &str)] = &[
        ("max_payload", "0", "between 1 and 1073741824 bytes (got 0)"),
        ("max_payload", "1073741825", "(got 1073741825)"),
        ("max_payload", HUGE, "(got 2305843009213693952)"),
        ("max_payload", TOML_MAX, "(got 9223372036854775807)"),
        ("max_payload", "-1", "invalid value: integer `-1`"),
        ("max_payload", "1.5", "invalid type: floating point `1.5`"),
        ("max_attempts", "0", "between 1 and 1000 (got 0)"),
        ("max_attempts", "1001", "between 1 and 1000 (got 1001)"),
        (
            "max_attempts",
            HUGE,
            "invalid value: integer `2305843009213693952`",
        ),
        ("max_attempts", "-1", "invalid value: integer `-1`"),
        ("max_attempts", "2.0", "invalid type: floating point"),
        ("retry_delay", "\"9ms\"", "between 10ms and 1h (got 9ms)"),
        ("retry_delay", "\"61m\"", "between 10ms and 1h (got 61m)"),
        (
            "retry_delay",
            "\"99999999999999999999999s\"",
            "99999999999999999999999s",
        ),
        ("retry_delay", "\"-1s\"", "-1s"),
        ("retry_delay", "5", "invalid type: integer `5`"),
        (
            "max_retry_delay",
            "\"5ms\"",
            "between `retry_delay` (1s) and 1h (got 5ms)",
        ),
        ("max_retry_delay", "\"2h\"", "(got 2h)"),
    ];
    for (key, value, text) in channel_cases {
        let app = write_app(&app_text(&format!("{key} = {value}"), ""));
        let errors = load_app(&app.manifest, &|l| l == "default")
            .expect_err(&format!("{key} = {value} must be refused"))
            .0;
        assert_error(&errors, &app.manifest, &format!("{CHANNEL}.{key}"), 6, text);
    }
    let trigger_cases: &[(&str, &str, &str)] = &[
        ("max_in_flight", "0", "between 1 and 1024 (got 0)"),
        ("max_in_flight", "1025", "between 1 and 1024 (got 1025)"),
        ("max_in_flight", HUGE, "(got 2305843009213693952)"),
        ("max_in_flight", TOML_MAX, "(got 9223372036854775807)"),
        ("max_in_flight", "-1", "invalid value: integer `-1`"),
        ("max_in_flight", "1.5", "invalid type: floating point `1.5`"),
        ("max_memory", "\"1023 KiB\"", "between 1 MiB and 4 GiB"),
        ("max_memory", "\"5 GiB\"", "(e.g. \"128 MiB\"; got 5.0 GiB)"),
        ("max_memory", HUGE, "got 2.0 EiB"),
        ("max_memory", "\"16 EiB\"", "between 1 MiB and 4 GiB"),
        ("max_memory", "-1", "invalid value: integer `-1`"),
        ("max_memory", "1.5", "invalid type: floating point `1.5`"),
    ];
    for (key, value, text) in trigger_cases {
        let app = write_app(&app_text("", &format!("{key} = {value}")));
        let errors = load_app(&app.manifest, &|l| l == "default")
            .expect_err(&format!("{key} = {value} must be refused"))
            .0;
        assert_error(
            &errors,
            &app.manifest,
            &format!("trigger.messaging[0].{key}"),
            10,
            text,
        );
    }
    // Beyond what TOML holds: refused by the TOML reader, at its line.
    let app = write_app(&app_text("max_payload = 18446744073709551615", ""));
    let errors = load_app(&app.manifest, &|l| l == "default").unwrap_err().0;
    assert_eq!(errors[0].file, app.manifest);
    assert_eq!(errors[0].line, Some(6), "{}", errors[0]);
    assert!(
        errors[0].message.contains("not valid TOML"),
        "{}",
        errors[0]
    );
}

/// The errors of a runtime config holding one link `a` of `settings`, the
/// setting under test on line 3.
fn link_errors(settings: &str) -> (tempfile::NamedTempFile, Vec<ConfigError>) {
    runtime_config_errors(&format!("[messaging_link.a]\n{settings}\n"))
}

#[test]
fn every_number_in_a_link_is_checked_against_its_range() {
    let cases: &[(&str, &str, &str, &str)] = &[
        ("embedded", "capacity", "0", "between 1 and 1048576 (got 0)"),
        ("embedded", "capacity", "1048577", "(got 1048577)"),
        // Past tokio's channel limit: used to panic on the first subscription.
        ("embedded", "capacity", HUGE, "(got 2305843009213693952)"),
        (
            "embedded",
            "capacity",
            TOML_MAX,
            "(got 9223372036854775807)",
        ),
        ("embedded", "capacity", "-1", "invalid value: integer `-1`"),
        (
            "embedded",
            "capacity",
            "1.5",
            "invalid type: floating point",
        ),
        (
            "embedded",
            "publish_timeout",
            "\"99ms\"",
            "between 100ms and 10m (got 99ms)",
        ),
        ("embedded", "publish_timeout", "\"11m\"", "(got 11m)"),
        (
            "embedded",
            "publish_timeout",
            "\"99999999999999999999999s\"",
            "expected a duration",
        ),
        ("embedded", "publish_timeout", "5", "invalid type: integer"),
        (
            "embedded",
            "max_payload",
            "0",
            "between 1 and 1073741824 (got 0)",
        ),
        ("embedded", "max_payload", HUGE, "(got 2305843009213693952)"),
        (
            "embedded",
            "max_payload",
            "-1",
            "invalid value: integer `-1`",
        ),
        (
            "nats",
            "publish_timeout",
            "\"0s\"",
            "between 100ms and 10m (got 0s)",
        ),
        ("nats", "publish_timeout", "\"601s\"", "(got 601s)"),
        ("mqtt", "publish_timeout", "\"50ms\"", "(got 50ms)"),
        ("redis", "publish_timeout", "\"1d\"", "(got 24h)"),
        ("amqp", "publish_timeout", "\"0ms\"", "(got 0s)"),
        ("embedded", "max_payload", "1073741825", "(got 1073741825)"),
        (
            "nats",
            "ack_wait",
            "\"999ms\"",
            "between 1s and 24h (got 999ms)",
        ),
        ("nats", "ack_wait", "\"25h\"", "(got 25h)"),
        ("nats", "batch", "0", "between 1 and 10000 (got 0)"),
        ("nats", "batch", "10001", "(got 10001)"),
        ("nats", "batch", HUGE, "(got 2305843009213693952)"),
        ("nats", "batch", "-1", "invalid value: integer `-1`"),
        ("nats", "batch", "1.5", "invalid type: floating point"),
        ("mqtt", "qos", "3", "must be 0, 1 or 2 (got 3)"),
        ("mqtt", "qos", "256", "invalid value: integer `256`"),
        ("mqtt", "qos", "-1", "invalid value: integer `-1`"),
        ("mqtt", "qos", "1.0", "invalid type: floating point"),
        ("mqtt", "buffer", "0", "between 1 and 1048576 (got 0)"),
        ("mqtt", "buffer", "1048577", "(got 1048577)"),
        // Past tokio's channel limit: used to panic on subscribing.
        ("mqtt", "buffer", HUGE, "(got 2305843009213693952)"),
        ("mqtt", "buffer", TOML_MAX, "(got 9223372036854775807)"),
        (
            "mqtt",
            "publish_timeout",
            "\"11m\"",
            "between 100ms and 10m",
        ),
        (
            "mqtt",
            "session_expiry",
            "\"0s\"",
            "between 1s and 30d (got 0s)",
        ),
        ("mqtt", "session_expiry", "\"31days\"", "(got 31d)"),
        // Whole seconds in 32 bits on the wire: used to be cut silently.
        (
            "mqtt",
            "session_expiry",
            "\"5000000000s\"",
            "between 1s and 30d (got 5000000000s)",
        ),
        ("redis", "batch", "0", "between 1 and 10000 (got 0)"),
        ("redis", "batch", HUGE, "(got 2305843009213693952)"),
        (
            "redis",
            "claim_after",
            "\"0s\"",
            "between 1s and 24h (got 0s)",
        ),
        ("redis", "claim_after", "\"2days\"", "(got 2d)"),
        (
            "redis",
            "publish_timeout",
            "\"1ms\"",
            "between 100ms and 10m (got 1ms)",
        ),
        ("amqp", "prefetch", "0", "between 1 and 65535 (got 0)"),
        (
            "amqp",
            "prefetch",
            "65536",
            "invalid value: integer `65536`",
        ),
        (
            "amqp",
            "prefetch",
            HUGE,
            "invalid value: integer `2305843009213693952`",
        ),
        ("amqp", "prefetch", "-1", "invalid value: integer `-1`"),
        (
            "amqp",
            "publish_timeout",
            "\"1h\"",
            "between 100ms and 10m (got 1h)",
        ),
    ];
    for (link_type, key, value, text) in cases {
        let (f, errors) = link_errors(&format!("type = \"{link_type}\"\n{key} = {value}"));
        assert_error(
            &errors,
            f.path(),
            &format!("messaging_link.a.{key}"),
            3,
            text,
        );
    }
}

#[test]
fn names_in_link_settings_follow_their_brokers_rules() {
    let long = "x".repeat(256);
    let cases: &[(&str, &str, &str, &str)] = &[
        (
            "nats",
            "stream_prefix",
            "\"A.B\"",
            "may only hold letters, digits",
        ),
        (
            "nats",
            "stream_prefix",
            "\"A B\"",
            "may only hold letters, digits",
        ),
        (
            "nats",
            "stream_prefix",
            "\"A>\"",
            "may only hold letters, digits",
        ),
        (
            "nats",
            "stream_prefix",
            "\"A/B\"",
            "may only hold letters, digits",
        ),
        (
            "nats",
            "stream_prefix",
            &format!("\"{}\"", &long[..65]),
            "at most 64",
        ),
        (
            "mqtt",
            "client_id_prefix",
            "\"a b\"",
            "may only hold letters, digits",
        ),
        (
            "mqtt",
            "client_id_prefix",
            "\"a/b\"",
            "may only hold letters, digits",
        ),
        (
            "mqtt",
            "client_id_prefix",
            "\"é\"",
            "may only hold letters, digits",
        ),
        (
            "mqtt",
            "client_id_prefix",
            &format!("\"{}\"", &long[..65]),
            "at most 64",
        ),
        ("amqp", "exchange", "\"amq.topic\"", "reserved"),
        ("amqp", "exchange", "\"\"", "must not be empty"),
        (
            "amqp",
            "exchange",
            &format!("\"{long}\""),
            "256 bytes long; an AMQP exchange name may be at most 255 bytes",
        ),
        ("amqp", "exchange", "\"a\\u0001b\"", "control characters"),
    ];
    for (link_type, key, value, text) in cases {
        let (f, errors) = link_errors(&format!("type = \"{link_type}\"\n{key} = {value}"));
        assert_error(
            &errors,
            f.path(),
            &format!("messaging_link.a.{key}"),
            3,
            text,
        );
    }
}

/// A NATS credentials file: the test user of async-nats's own test suite
/// (`tests/configs/TestUser.creds`), not a credential of any real server.
const TEST_CREDS: &str = "-----BEGIN NATS USER JWT-----
eyJ0eXAiOiJKV1QiLCJhbGciOiJlZDI1NTE5LW5rZXkifQ.eyJqdGkiOiJMN1dBT1hJU0tPSUZNM1QyNEhMQ09ENzJRT1czQkNVWEdETjRKVU1SSUtHTlQ3RzdZVFRRIiwiaWF0IjoxNjUxNzkwOTgyLCJpc3MiOiJBRFRRUzdaQ0ZWSk5XNTcyNkdPWVhXNVRTQ1pGTklRU0hLMlpHWVVCQ0Q1RDc3T1ROTE9PS1pPWiIsIm5hbWUiOiJUZXN0VXNlciIsInN1YiI6IlVBRkhHNkZVRDJVVTRTREZWQUZVTDVMREZPMlhNNFdZTTc2VU5YVFBKWUpLN0VFTVlSQkhUMlZFIiwibmF0cyI6eyJwdWIiOnt9LCJzdWIiOnt9LCJzdWJzIjotMSwiZGF0YSI6LTEsInBheWxvYWQiOi0xLCJ0eXBlIjoidXNlciIsInZlcnNpb24iOjJ9fQ.bp2-Jsy33l4ayF7Ku1MNdJby4WiMKUrG-rSVYGBusAtV3xP4EdCa-zhSNUaBVIL3uYPPCQYCEoM1pCUdOnoJBg
------END NATS USER JWT------

-----BEGIN USER NKEY SEED-----
SUACH75SWCM5D2JMJM6EKLR2WDARVGZT4QC6LX3AGHSWOMVAKERABBBRWM
------END USER NKEY SEED------
";

#[test]
fn link_urls_and_files_are_checked_at_load() {
    let dir = tempfile::tempdir().unwrap();
    let creds = dir.path().join("user.creds");
    std::fs::write(&creds, TEST_CREDS).unwrap();
    let not_creds = dir.path().join("notes.txt");
    std::fs::write(&not_creds, "hello\n").unwrap();
    let truncated = dir.path().join("half.creds");
    std::fs::write(
        &truncated,
        &TEST_CREDS[..TEST_CREDS.find("-----BEGIN USER").unwrap()],
    )
    .unwrap();
    let missing = dir.path().join("missing.creds");
    let path = |p: &Path| p.display().to_string();
    let cases: Vec<(&str, &str, String, &str)> = vec![
        (
            "nats",
            "url",
            "\"http://127.0.0.1:4222\"".into(),
            "invalid scheme for NATS server URL: http",
        ),
        (
            "nats",
            "url",
            "\"nats://:4222\"".into(),
            "URL 1 (`nats://:4222`)",
        ),
        ("nats", "url", "\"nats://h:0\"".into(), "has port 0"),
        (
            "nats",
            "url",
            "\"nats://h:99999\"".into(),
            "invalid port number",
        ),
        (
            "nats",
            "url",
            "\"nats://a:4222,\"".into(),
            "URL 2 (``) is empty",
        ),
        (
            "nats",
            "url",
            "\"nats://a:4222,,nats://b\"".into(),
            "URL 2 (``) is empty",
        ),
        (
            "nats",
            "url",
            "\"nats://a:4222,ws://b:80\"".into(),
            "mixes WebSocket",
        ),
        (
            "nats",
            "url",
            "\"nats://u:hunter2@a b\"".into(),
            "nats://***@a b",
        ),
        (
            "nats",
            "credentials_file",
            format!("\"{}\"", path(&missing)),
            "cannot read",
        ),
        (
            "nats",
            "credentials_file",
            format!("\"{}\"", path(&not_creds)),
            "is not a NATS credentials file",
        ),
        (
            "nats",
            "credentials_file",
            format!("\"{}\"", path(&truncated)),
            "is not a NATS credentials file",
        ),
        (
            "nats",
            "credentials_file",
            format!("\"{}\"", path(dir.path())),
            "cannot read",
        ),
        (
            "mqtt",
            "url",
            "\"http://h\"".into(),
            "must start with mqtt://",
        ),
        ("mqtt", "url", "\"mqtt://\"".into(), "has no host"),
        ("mqtt", "url", "\"mqtt://h:0\"".into(), "bad port `0`"),
        (
            "mqtt",
            "url",
            "\"mqtt://h:70000\"".into(),
            "bad port `70000`",
        ),
        (
            "mqtt",
            "url",
            "\"mqtt://u:p@h\"".into(),
            "give them as `user` and `password`",
        ),
        (
            "mqtt",
            "url",
            "\"mqtt://h/topic\"".into(),
            "after the scheme",
        ),
        ("mqtt", "url", "\"mqtt://[::1\"".into(), "unclosed `[`"),
        ("redis", "url", "\"http://h\"".into(), "is not a Redis URL"),
        ("redis", "url", "\"redis://h:0\"".into(), "has port 0"),
        (
            "redis",
            "url",
            "\"redis://:pw@\"".into(),
            "is not a Redis URL",
        ),
        (
            "redis",
            "url",
            "\"rediss://h#insecure\"".into(),
            "`#insecure`",
        ),
        ("amqp", "url", "\"http://h\"".into(), "is not an AMQP URL"),
        (
            "amqp",
            "url",
            "\"amqp://u:secret@h:0/%2f\"".into(),
            "has port 0",
        ),
        (
            "amqp",
            "url",
            format!("\"amqp://h/{}\"", "v".repeat(256)),
            "virtual host of 256 bytes",
        ),
        (
            "amqp",
            "url",
            "\"amqp://u:secret@h/?auth_mechanism=bogus\"".into(),
            "amqp://***@h",
        ),
    ];
    for (link_type, key, value, text) in &cases {
        let (f, errors) = link_errors(&format!("type = \"{link_type}\"\n{key} = {value}"));
        assert_error(
            &errors,
            f.path(),
            &format!("messaging_link.a.{key}"),
            3,
            text,
        );
        let shown = errors[0].to_string();
        assert!(
            !shown.contains("hunter2") && !shown.contains("secret"),
            "{shown}"
        );
    }
    // What the clients take loads: several NATS servers, IPv6, credentials.
    for settings in [
        "type = \"nats\"\nurl = \"nats://a:4222, tls://b:4443,c\"".to_string(),
        format!("type = \"nats\"\ncredentials_file = \"{}\"", path(&creds)),
        "type = \"mqtt\"\nurl = \"mqtt://[::1]:1883\"".to_string(),
        "type = \"mqtt\"\nurl = \"ssl://broker.example.com/\"".to_string(),
        "type = \"redis\"\nurl = \"redis://u:p@127.0.0.1:6379/2\"".to_string(),
        "type = \"amqp\"\nurl = \"amqps://u:p@h:5671/vhost?heartbeat=10\"".to_string(),
    ] {
        let file = tempfile::NamedTempFile::new().unwrap();
        std::fs::write(file.path(), format!("[messaging_link.a]\n{settings}\n")).unwrap();
        if let Err(e) = RuntimeConfig::load(Some(file.path()), &LinkRegistry::default()) {
            panic!("{settings} must load: {e}");
        }
    }
}

/// A runtime config with a link of every broker type, none connected.
const EVERY_LINK: &str = "[messaging_link.nats]
type = \"nats\"
[messaging_link.js]
type = \"nats\"
jetstream = true
[messaging_link.mqtt]
type = \"mqtt\"
[messaging_link.redis]
type = \"redis\"
[messaging_link.amqp]
type = \"amqp\"
";

/// Loads an app whose channel `c` (`kind`, on `link`) has `address` on line
/// 7 and `group` on line 8 (either may be blank), against [`EVERY_LINK`].
/// The probe subscribes to `c` and, when `published`, publishes to it.
fn load_channel(
    link: &str,
    kind: &str,
    address: &str,
    group: &str,
    published: bool,
) -> (AppDir, Result<messaging_provider::app::App, ConfigErrors>) {
    let rc = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(rc.path(), EVERY_LINK).unwrap();
    let config = RuntimeConfig::load(Some(rc.path()), &LinkRegistry::default()).unwrap();
    let publish = if published { "\"c\"" } else { "" };
    let app = write_app(&format!(
        "{HEAD}[application.trigger.messaging.channels.c]
kind = \"{kind}\"
link = \"{link}\"
{address}
{group}
[[trigger.messaging]]
component = \"probe\"
subscribe = [\"c\"]
publish = [{publish}]
[component.probe]
source = \"{{probe}}\"
"
    ));
    let loaded = load_app_with_links(&app.manifest, &config);
    (app, loaded)
}

#[test]
fn channel_names_follow_their_brokers_rules() {
    let at = "application.trigger.messaging.channels.c";
    let long = |n: usize| "x".repeat(n);
    // (link, kind, address, group, published, key, text)
    let cases: Vec<(&str, &str, String, String, bool, &str, &str)> = vec![
        // Every broker: not empty, no control characters.
        (
            "default",
            "queue",
            "\"\"".into(),
            String::new(),
            false,
            "address",
            "must not be empty",
        ),
        (
            "default",
            "queue",
            "\"a\\nb\"".into(),
            String::new(),
            false,
            "address",
            "control characters",
        ),
        (
            "default",
            "queue",
            String::new(),
            "\"\"".into(),
            false,
            "group",
            "must not be empty",
        ),
        (
            "default",
            "queue",
            String::new(),
            "\"a\\u0007b\"".into(),
            false,
            "group",
            "control characters",
        ),
        (
            "redis",
            "topic",
            "\"a\\u0000b\"".into(),
            String::new(),
            false,
            "address",
            "control characters",
        ),
        // NATS subjects and queue groups.
        (
            "nats",
            "topic",
            "\"a b\"".into(),
            String::new(),
            false,
            "address",
            "contains whitespace",
        ),
        (
            "nats",
            "topic",
            "\"a..b\"".into(),
            String::new(),
            false,
            "address",
            "empty token",
        ),
        (
            "nats",
            "topic",
            "\".a\"".into(),
            String::new(),
            false,
            "address",
            "empty token",
        ),
        (
            "nats",
            "topic",
            "\"a.\"".into(),
            String::new(),
            false,
            "address",
            "empty token",
        ),
        (
            "nats",
            "topic",
            "\"a.>.b\"".into(),
            String::new(),
            false,
            "address",
            "`>` may only be the last token",
        ),
        (
            "nats",
            "topic",
            "\"a*\"".into(),
            String::new(),
            false,
            "address",
            "must be whole tokens",
        ),
        (
            "nats",
            "topic",
            "\"$SYS.x\"".into(),
            String::new(),
            false,
            "address",
            "reserved",
        ),
        (
            "nats",
            "topic",
            "\"_INBOX.x\"".into(),
            String::new(),
            false,
            "address",
            "reserved",
        ),
        (
            "nats",
            "topic",
            "\"a.*\"".into(),
            String::new(),
            true,
            "address",
            "cannot be published",
        ),
        (
            "nats",
            "queue",
            "\"a.>\"".into(),
            String::new(),
            true,
            "address",
            "cannot be published",
        ),
        (
            "nats",
            "topic",
            format!("\"{}\"", long(1025)),
            String::new(),
            false,
            "address",
            "1025 bytes long; a NATS subject may be at most 1024 bytes",
        ),
        (
            "nats",
            "queue",
            String::new(),
            "\"g roup\"".into(),
            false,
            "group",
            "not a valid NATS queue group",
        ),
        // JetStream's derived stream and consumer names.
        (
            "js",
            "queue",
            format!("\"{}\"", long(250)),
            "\"g\"".into(),
            false,
            "address",
            "JetStream stream name of 260 characters",
        ),
        (
            "js",
            "queue",
            String::new(),
            format!("\"{}\"", long(256)),
            false,
            "group",
            "JetStream consumer name of 256 characters",
        ),
        // MQTT topics and shared subscriptions.
        (
            "mqtt",
            "topic",
            "\"a+b\"".into(),
            String::new(),
            false,
            "address",
            "must be whole levels",
        ),
        (
            "mqtt",
            "topic",
            "\"a/#/b\"".into(),
            String::new(),
            false,
            "address",
            "`#` may only be the last level",
        ),
        (
            "mqtt",
            "topic",
            "\"$SYS/x\"".into(),
            String::new(),
            false,
            "address",
            "reserved for the broker",
        ),
        (
            "mqtt",
            "topic",
            "\"$share/g/x\"".into(),
            String::new(),
            false,
            "address",
            "reserved for the broker",
        ),
        (
            "mqtt",
            "topic",
            "\"a/+\"".into(),
            String::new(),
            true,
            "address",
            "cannot be published",
        ),
        (
            "mqtt",
            "topic",
            format!("\"{}\"", long(65_536)),
            String::new(),
            false,
            "address",
            "at most 65535 bytes",
        ),
        (
            "mqtt",
            "queue",
            "\"a\"".into(),
            format!("\"{}\"", long(65_530)),
            false,
            "group",
            "$share/<group>/<address>",
        ),
        // AMQP routing keys, queues.
        (
            "amqp",
            "topic",
            format!("\"{}\"", long(256)),
            String::new(),
            false,
            "address",
            "at most 255 bytes",
        ),
        (
            "amqp",
            "topic",
            "\"a.#\"".into(),
            String::new(),
            true,
            "address",
            "wildcard word",
        ),
        (
            "amqp",
            "queue",
            "\"orders\"".into(),
            "\"amq.orders\"".into(),
            false,
            "group",
            "starts with `amq.`",
        ),
        (
            "amqp",
            "queue",
            "\"orders\"".into(),
            format!("\"{}\"", long(256)),
            false,
            "group",
            "an AMQP queue name may be at most 255 bytes",
        ),
        // Redis keys and consumer groups.
        (
            "redis",
            "queue",
            format!("\"{}\"", long(1025)),
            "\"g\"".into(),
            false,
            "address",
            "a Redis key may be at most 1024 bytes",
        ),
        (
            "redis",
            "queue",
            String::new(),
            format!("\"{}\"", long(1025)),
            false,
            "group",
            "a Redis consumer group may be at most 1024 bytes",
        ),
    ];
    for (link, kind, address, group, published, key, text) in &cases {
        let address_line = if address.is_empty() {
            String::new()
        } else {
            format!("address = {address}")
        };
        let group_line = if group.is_empty() {
            String::new()
        } else {
            format!("group = {group}")
        };
        let (app, loaded) = load_channel(link, kind, &address_line, &group_line, *published);
        let errors = match loaded {
            Ok(_) => panic!("{link}: address {address:.40} group {group:.40} must be refused"),
            Err(e) => e.0,
        };
        // An address without `address` defaults to the channel name, a group to the address.
        let line = match *key {
            "address" if !address.is_empty() => 7,
            "group" if !group.is_empty() => 8,
            _ => 4,
        };
        assert_error(&errors, &app.manifest, &format!("{at}.{key}"), line, text);
        if *link != "default" && !text.contains("control") && !text.contains("empty") {
            assert!(
                errors[0].message.contains(&format!("on link `{link}`")),
                "{}",
                errors[0]
            );
        }
    }
    // Derived names are checked too, and the message says where they come from.
    let (app, loaded) = load_channel("amqp", "queue", "address = \"amq.x\"", "", false);
    let errors = loaded.unwrap_err().0;
    assert_error(
        &errors,
        &app.manifest,
        &format!("{at}.group"),
        4,
        "the group defaults to the address: set `group`",
    );

    // Names each broker takes load, wildcards where only subscribed.
    for (link, kind, address, published) in [
        ("nats", "queue", "orders.eu-1", true),
        ("nats", "topic", "orders.*.created", false),
        ("nats", "topic", "orders.>", false),
        ("js", "queue", "orders.eu", true),
        ("mqtt", "topic", "orders/eu/#", false),
        ("mqtt", "queue", "orders/+/created", false),
        ("mqtt", "queue", "orders eu/1", true),
        ("amqp", "queue", "orders.eu", true),
        ("amqp", "topic", "orders.#", false),
        ("redis", "queue", "orders:eu", true),
        ("default", "topic", "anything at all/.*>#+", true),
    ] {
        let (_app, loaded) = load_channel(
            link,
            kind,
            &format!("address = \"{address}\""),
            "",
            published,
        );
        if let Err(e) = loaded {
            panic!("{link} {kind} `{address}` must load: {e}");
        }
    }
}

#[test]
fn a_channel_name_used_as_address_is_checked_on_its_link() {
    let rc = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(rc.path(), EVERY_LINK).unwrap();
    let config = RuntimeConfig::load(Some(rc.path()), &LinkRegistry::default()).unwrap();
    let app = write_app(&format!(
        "{HEAD}[application.trigger.messaging.channels.\"a*b\"]
kind = \"topic\"
link = \"nats\"
[[trigger.messaging]]
component = \"probe\"
subscriptions = [\"a*b\"]
[component.probe]
source = \"{{probe}}\"
"
    ));
    let errors = load_app_with_links(&app.manifest, &config).unwrap_err().0;
    assert_error(
        &errors,
        &app.manifest,
        "application.trigger.messaging.channels.\"a*b\".address",
        4,
        "the address defaults to the channel name: set `address`",
    );
}

/// Values of every shape and size, for every setting: the loaders answer
/// each with a value or an error, never a panic.
#[test]
fn no_mutation_of_a_config_makes_the_loader_panic() {
    let long = format!("\"{}\"", "x".repeat(70_000));
    let values: Vec<&str> = vec![
        "0",
        "1",
        "-1",
        "255",
        "65536",
        "1.5",
        "-0.0",
        "nan",
        "inf",
        HUGE,
        TOML_MAX,
        "-9223372036854775808",
        "true",
        "[]",
        "{}",
        "[1, \"a\"]",
        "{ x = 1 }",
        "\"\"",
        "\" \"",
        "\"x\"",
        "\"0s\"",
        "\"1ns\"",
        "\"999999999999999999999h\"",
        "\"18446744073709551615s\"",
        "\"1 EiB\"",
        "\"-5 MiB\"",
        "\"a.*.>\"",
        "\"$SYS/#\"",
        "\"amq.x\"",
        "\"a\\u0000b\"",
        "\"\\u0085\\u2028\"",
        "\"{{ nowhere }}\"",
        "\"nats://:0,ws://[\"",
        "\"mqtt://[::1]:\"",
        "\"redis://:@/x\"",
        "\"amqp://%zz@h:1/%\"",
        "\"/dev/null\"",
        "\"/\"",
        "1979-05-27T07:32:00Z",
        &long,
    ];
    let channel_keys = [
        "kind",
        "link",
        "address",
        "group",
        "max_payload",
        "max_attempts",
        "retry_delay",
        "max_retry_delay",
        "dead_letter",
    ];
    let trigger_keys = [
        "component",
        "subscriptions",
        "publish",
        "subscribe",
        "max_in_flight",
        "max_memory",
    ];
    let rc = tempfile::NamedTempFile::new().unwrap();
    std::fs::write(rc.path(), EVERY_LINK).unwrap();
    let config = RuntimeConfig::load(Some(rc.path()), &LinkRegistry::default()).unwrap();
    let mut loads = 0;
    let mut check = |what: &str, load: &mut dyn FnMut()| {
        loads += 1;
        if std::panic::catch_unwind(std::panic::AssertUnwindSafe(load)).is_err() {
            panic!("loading with {what:.200} panicked");
        }
    };
    for value in &values {
        for key in channel_keys {
            for link in ["default", "nats", "js", "mqtt", "redis", "amqp"] {
                // A key given twice (`kind`, `link`) is a TOML error; that is fine too.
                let app = write_app(&app_text(
                    &format!("link = \"{link}\"\n{key} = {value}"),
                    "publish = [\"orders\"]",
                ));
                check(&format!("{link}: {key} = {value}"), &mut || {
                    let _ = load_app_with_links(&app.manifest, &config);
                });
            }
        }
        for key in trigger_keys {
            let app = write_app(&app_text("", &format!("{key} = {value}")));
            check(&format!("{key} = {value}"), &mut || {
                let _ = load_app_with_links(&app.manifest, &config);
            });
        }
    }
    let link_keys: &[(&str, &[&str])] = &[
        ("embedded", &["capacity", "publish_timeout", "max_payload"]),
        (
            "nats",
            &[
                "url",
                "user",
                "password",
                "token",
                "credentials_file",
                "tls",
                "ca_file",
                "cert_file",
                "key_file",
                "content_mode",
                "publish_timeout",
                "jetstream",
                "ack_wait",
                "stream_prefix",
                "batch",
            ],
        ),
        (
            "mqtt",
            &[
                "url",
                "version",
                "qos",
                "user",
                "password",
                "ca_file",
                "content_mode",
                "publish_timeout",
                "session_expiry",
                "buffer",
                "client_id_prefix",
            ],
        ),
        (
            "redis",
            &[
                "url",
                "ca_file",
                "content_mode",
                "publish_timeout",
                "claim_after",
                "batch",
            ],
        ),
        (
            "amqp",
            &[
                "url",
                "ca_file",
                "exchange",
                "prefetch",
                "content_mode",
                "publish_timeout",
            ],
        ),
    ];
    let runtime = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()
        .unwrap();
    for value in &values {
        for (link_type, keys) in link_keys {
            for key in *keys {
                let file = tempfile::NamedTempFile::new().unwrap();
                std::fs::write(
                    file.path(),
                    format!("[messaging_link.a]\ntype = \"{link_type}\"\n{key} = {value}\n"),
                )
                .unwrap();
                check(&format!("{link_type}: {key} = {value}"), &mut || {
                    let Ok(config) =
                        RuntimeConfig::load(Some(file.path()), &LinkRegistry::default())
                    else {
                        return;
                    };
                    // What an embedded link accepts, it can also use.
                    if *link_type == "embedded" {
                        runtime.block_on(async {
                            let link = config.links["a"].connect("a").await.unwrap();
                            link.declare_queue("q", "q").await.unwrap();
                            let _topic = link
                                .subscribe("t", messaging_provider::broker::SubscribeMode::Topic)
                                .await
                                .unwrap();
                        });
                    }
                });
            }
        }
    }
    assert!(loads > 3000, "{loads} loads");
}
