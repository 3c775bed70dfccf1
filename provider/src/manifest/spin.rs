//! The Spin v2 app manifest. Messaging settings live where Spin allows
//! trigger-specific keys: `[application.trigger.messaging]` declares the
//! app's channels, each `[[trigger.messaging]]` entry gives one component its
//! subscriptions and permissions. Keys Spin itself owns are left to Spin,
//! except the ones read here.

use super::variables::{VariableDecl, Variables};
use super::{ConfigError, ConfigErrors, KeyPath, TomlSource};
use crate::app::{App, Channel, ChannelKind, ComponentSpec, defaults};
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};

/// The trigger type this provider serves.
pub const TRIGGER_TYPE: &str = "messaging";

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawManifest {
    spin_manifest_version: toml::Value,
    application: RawApplication,
    #[serde(default)]
    variables: BTreeMap<String, VariableDecl>,
    #[serde(default)]
    trigger: BTreeMap<String, toml::Value>,
    #[serde(default)]
    component: BTreeMap<String, RawComponent>,
}

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
#[allow(dead_code)] // Spin's keys, accepted so that Spin manifests load.
struct RawApplication {
    name: String,
    version: Option<String>,
    description: Option<String>,
    #[serde(default)]
    authors: Vec<String>,
    targets: Option<toml::Value>,
    tool: Option<toml::Value>,
    #[serde(default)]
    trigger: BTreeMap<String, toml::Value>,
}

/// `[component.<id>]`: only the keys this provider uses; Spin checks the rest.
#[derive(Deserialize)]
struct RawComponent {
    source: Option<toml::Value>,
    #[serde(default)]
    environment: BTreeMap<String, String>,
}

/// `[application.trigger.messaging]`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawAppMessaging {
    #[serde(default)]
    pub channels: BTreeMap<String, RawChannel>,
}

/// `[application.trigger.messaging.channels.<name>]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawChannel {
    pub kind: ChannelKind,
    pub link: Option<String>,
    pub address: Option<String>,
    pub group: Option<String>,
    pub max_payload: Option<u64>,
    pub max_attempts: Option<u32>,
    pub dead_letter: Option<String>,
}

/// One `[[trigger.messaging]]` entry.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
pub(crate) struct RawTrigger {
    #[allow(dead_code)] // Spin's trigger id; accepted, not needed here.
    pub id: Option<String>,
    pub component: toml::Value,
    #[serde(default)]
    pub subscriptions: Vec<String>,
    #[serde(default)]
    pub publish: Vec<String>,
    #[serde(default)]
    pub subscribe: Vec<String>,
    pub max_in_flight: Option<usize>,
}

/// Loads one app from a spin.toml. `known_link` says which link names the
/// runtime config defines (`default` always exists).
pub fn load_app(path: &Path, known_link: &dyn Fn(&str) -> bool) -> Result<App, ConfigErrors> {
    let (src, table) = TomlSource::read(path)?;
    let root = KeyPath::default();
    let raw: RawManifest = src.deserialize(&root, toml::Value::Table(table))?;
    let mut errors = Vec::new();

    if raw.spin_manifest_version.as_integer() != Some(2) {
        errors.push(src.error(
            &root.key("spin_manifest_version"),
            "only Spin manifest version 2 is supported (spin_manifest_version = 2)",
        ));
    }
    let variables = Variables::new(raw.variables)
        .map_err(|(name, msg)| src.error(&KeyPath::dotted("variables").key(name), msg))?;

    let app_at = KeyPath::dotted("application.trigger").key(TRIGGER_TYPE);
    let app_messaging: RawAppMessaging = match raw.application.trigger.get(TRIGGER_TYPE) {
        Some(v) => src.deserialize(&app_at, templated(&src, &variables, &app_at, v.clone())?)?,
        None => RawAppMessaging::default(),
    };
    let trig_at = KeyPath::dotted("trigger").key(TRIGGER_TYPE);
    let triggers: Vec<RawTrigger> = match raw.trigger.get(TRIGGER_TYPE) {
        Some(v) => src.deserialize(&trig_at, templated(&src, &variables, &trig_at, v.clone())?)?,
        None => Vec::new(),
    };

    let base = path.parent().unwrap_or(Path::new("."));
    let channels = channels(
        &src,
        &app_at,
        app_messaging.channels,
        known_link,
        &mut errors,
    );
    let mut components = Vec::new();
    let mut seen = BTreeSet::new();
    if triggers.is_empty() {
        errors.push(src.error(
            &trig_at,
            "the app has no [[trigger.messaging]] entry, so there is nothing to run",
        ));
    }
    for (i, t) in triggers.into_iter().enumerate() {
        let at = trig_at.index(i);
        let Some(id) = t.component.as_str().map(str::to_string) else {
            errors.push(src.error(&at.key("component"), "must name a component defined in [component.<id>] (inline components are not supported)"));
            continue;
        };
        if !seen.insert(id.clone()) {
            errors.push(src.error(
                &at.key("component"),
                format!("component `{id}` already has a [[trigger.messaging]] entry; merge them"),
            ));
            continue;
        }
        let Some(raw_component) = raw.component.get(&id) else {
            errors.push(src.error(
                &at.key("component"),
                format!("no component `{id}`: define [component.{id}]"),
            ));
            continue;
        };
        let source = component_source(&src, base, &id, raw_component, &mut errors);
        let mut check = |key: &str, names: &[String]| {
            for (j, name) in names.iter().enumerate() {
                if !channels.contains_key(name) {
                    errors.push(src.error(
                        &at.key(key).index(j),
                        format!("channel `{name}` is not declared in [application.trigger.messaging.channels]"),
                    ));
                }
            }
        };
        check("subscriptions", &t.subscriptions);
        check("publish", &t.publish);
        check("subscribe", &t.subscribe);
        if t.max_in_flight == Some(0) {
            errors.push(src.error(&at.key("max_in_flight"), "must be at least 1"));
        }
        components.push(ComponentSpec {
            id,
            source: source.unwrap_or_default(),
            subscriptions: t.subscriptions,
            publish: t.publish.into_iter().collect(),
            subscribe: t.subscribe.into_iter().collect(),
            max_in_flight: t.max_in_flight.unwrap_or(defaults::MAX_IN_FLIGHT),
            environment: raw_component.environment.clone().into_iter().collect(),
        });
    }
    if raw.application.name.trim().is_empty() {
        errors.push(src.error(&KeyPath::dotted("application.name"), "must not be empty"));
    }
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    Ok(App {
        name: raw.application.name,
        origin: path.to_path_buf(),
        channels,
        components,
    })
}

fn templated(
    src: &TomlSource,
    vars: &Variables,
    at: &KeyPath,
    mut v: toml::Value,
) -> Result<toml::Value, ConfigError> {
    vars.resolve_all(&mut v, at)
        .map_err(|(key, msg)| src.error(&key, msg))?;
    Ok(v)
}

/// Validates the declared channels; also used for Spin locked apps.
pub(crate) fn channels(
    src: &TomlSource,
    at: &KeyPath,
    raw: BTreeMap<String, RawChannel>,
    known_link: &dyn Fn(&str) -> bool,
    errors: &mut Vec<ConfigError>,
) -> BTreeMap<String, Channel> {
    let names: BTreeSet<String> = raw.keys().cloned().collect();
    let mut out = BTreeMap::new();
    for (name, c) in raw {
        let at = at.key("channels").key(&name);
        if name.is_empty() || name.chars().any(|c| c.is_whitespace() || c.is_control()) {
            errors.push(src.error(
                &at,
                "channel names must be non-empty and contain no whitespace",
            ));
        }
        let link = c.link.unwrap_or_else(|| "default".into());
        if !known_link(&link) {
            errors.push(src.error(&at.key("link"), format!("no link `{link}`: define [messaging_link.{link}] in the runtime config (--runtime-config-file)")));
        }
        let address = c.address.unwrap_or_else(|| name.clone());
        if address.is_empty() {
            errors.push(src.error(&at.key("address"), "must not be empty"));
        }
        if c.max_payload == Some(0) {
            errors.push(src.error(&at.key("max_payload"), "must be at least 1 byte"));
        }
        if c.max_attempts == Some(0) {
            errors.push(src.error(&at.key("max_attempts"), "must be at least 1"));
        }
        if let Some(dl) = &c.dead_letter
            && (!names.contains(dl) || dl == &name)
        {
            errors.push(src.error(
                &at.key("dead_letter"),
                format!("`{dl}` must be another channel declared by this app"),
            ));
        }
        out.insert(
            name.clone(),
            Channel {
                group: c.group.unwrap_or_else(|| address.clone()),
                name,
                kind: c.kind,
                link,
                address,
                max_payload: c.max_payload.map(|n| n as usize),
                max_attempts: c.max_attempts.unwrap_or(defaults::MAX_ATTEMPTS),
                dead_letter: c.dead_letter,
            },
        );
    }
    out
}

fn component_source(
    src: &TomlSource,
    base: &Path,
    id: &str,
    c: &RawComponent,
    errors: &mut Vec<ConfigError>,
) -> Option<PathBuf> {
    let at = KeyPath::dotted("component").key(id).key("source");
    match &c.source {
        None => errors.push(src.error(
            &at,
            format!("component `{id}` has no `source`: give the path of its .wasm file"),
        )),
        Some(toml::Value::String(s)) => {
            let path = base.join(s);
            if path.is_file() {
                return Some(path);
            }
            errors.push(src.error(
                &at,
                format!(
                    "{} does not exist (build the component first?)",
                    path.display()
                ),
            ));
        }
        Some(_) => errors.push(src.error(
            &at,
            "only a file path is supported as a source (not a url/digest table)",
        )),
    }
    None
}
