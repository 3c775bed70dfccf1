//! The Spin v2 app manifest. Messaging settings live where Spin allows
//! trigger-specific keys: `[application.trigger.messaging]` declares the
//! app's channels, each `[[trigger.messaging]]` entry gives one component its
//! subscriptions and permissions. Keys Spin itself owns are left to Spin,
//! except the ones read here.

use super::variables::{VariableDecl, Variables};
use super::{ConfigError, ConfigErrors, KeyPath, TomlSource};
use crate::app::{
    AllowedHosts, App, Channel, ChannelKind, ComponentSpec, ComponentVariables, Pick, RetryPolicy,
    ReuseSettings, defaults, variable_name_problem,
};
use crate::broker::{ChannelNames, Invalid, MAX_PAYLOAD_LIMIT, names, show_duration};

/// The range of `max_in_flight`: how many handlers of one component run at
/// once (the instance pool is shared fairly beyond that, see `host`).
const MAX_IN_FLIGHT: usize = 1024;
/// The range of `max_attempts`.
const MAX_ATTEMPTS: u32 = 1000;
/// The range of `retry_delay` and `max_retry_delay`.
const MIN_RETRY_DELAY: Duration = Duration::from_millis(10);
const MAX_RETRY_DELAY: Duration = Duration::from_secs(3600);
/// The range of `max_instance_reuse_count` (and of its flag).
pub const REUSE_COUNT_RANGE: std::ops::RangeInclusive<u32> = 1..=1_000_000;
/// The range of `idle_instance_timeout` (and of its flag); 0 keeps no
/// instance warm.
pub const IDLE_TIMEOUT_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::ZERO..=Duration::from_secs(3600);
/// The range of `max_memory`: wasm32 memories end at 4 GiB.
const MIN_MEMORY: u64 = 1 << 20;
const MAX_MEMORY: u64 = 4 << 30;
use serde::Deserialize;
use std::collections::{BTreeMap, BTreeSet};
use std::path::{Path, PathBuf};
use std::time::Duration;

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
    #[serde(default)]
    variables: BTreeMap<String, String>,
    #[serde(default)]
    allowed_outbound_hosts: Vec<String>,
    #[serde(default)]
    key_value_stores: Vec<String>,
}

/// `[application.trigger.messaging]`.
#[derive(Deserialize, Default)]
#[serde(deny_unknown_fields)]
struct RawAppMessaging {
    #[serde(default)]
    channels: BTreeMap<String, RawChannel>,
}

/// `[application.trigger.messaging.channels.<name>]`.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawChannel {
    kind: ChannelKind,
    link: Option<String>,
    address: Option<String>,
    group: Option<String>,
    max_payload: Option<u64>,
    max_attempts: Option<u32>,
    #[serde(default, with = "humantime_serde")]
    retry_delay: Option<Duration>,
    #[serde(default, with = "humantime_serde")]
    max_retry_delay: Option<Duration>,
    dead_letter: Option<String>,
}

/// One `[[trigger.messaging]]` entry.
#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct RawTrigger {
    #[allow(dead_code)] // Spin's trigger id; accepted, not needed here.
    id: Option<String>,
    component: toml::Value,
    #[serde(default)]
    subscriptions: Vec<String>,
    #[serde(default)]
    publish: Vec<String>,
    #[serde(default)]
    subscribe: Vec<String>,
    max_in_flight: Option<usize>,
    max_memory: Option<bytesize::ByteSize>,
    max_instance_reuse_count: Option<toml::Value>,
    idle_instance_timeout: Option<toml::Value>,
    reuse_instance_after_error: Option<bool>,
}

/// What an app loader is told about the runtime config's links: which
/// exist, and the rules each one's broker puts on the names a channel uses
/// there, so that a bad name is reported at its key and line in the app.
pub trait Links {
    /// Whether a link of this name exists (`default` always does).
    fn has_link(&self, name: &str) -> bool;
    /// Checks a channel's broker-side names against the rules of `link`,
    /// which exists; the error's key is `address` or `group`.
    fn check_channel(&self, link: &str, names: &ChannelNames) -> Result<(), Invalid>;
    /// Whether a key-value store of this label is bound to a store this
    /// provider can open (`default` always is), or why not. Without a
    /// runtime config to ask, every label is taken as bound.
    fn check_key_value_store(&self, _label: &str) -> Result<(), String> {
        Ok(())
    }
}

/// Links known by name alone: channel names are checked against the rules
/// every broker shares, not against a particular broker's.
pub(crate) struct NamedLinks<'a>(pub &'a dyn Fn(&str) -> bool);

impl Links for NamedLinks<'_> {
    fn has_link(&self, name: &str) -> bool {
        (self.0)(name)
    }
    fn check_channel(&self, _: &str, _: &ChannelNames) -> Result<(), Invalid> {
        Ok(())
    }
}

/// Loads one app from a spin.toml. `known_link` says which link names the
/// runtime config defines (`default` always exists); names are checked
/// against the rules every broker shares ([`load_app_with_links`] checks
/// them against each link's broker too).
pub fn load_app(path: &Path, known_link: &dyn Fn(&str) -> bool) -> Result<App, ConfigErrors> {
    load_app_with_links(path, &NamedLinks(known_link))
}

/// Loads one app from a spin.toml, checking its channels against the links
/// they are bound to (e.g. a [`super::RuntimeConfig`]).
pub fn load_app_with_links(path: &Path, links: &dyn Links) -> Result<App, ConfigErrors> {
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
    let base = path.parent().unwrap_or(Path::new("."));
    let parts = AppParts {
        src: &src,
        name: raw.application.name,
        origin: path.to_path_buf(),
        dir: Some(base.to_path_buf()),
        variables,
        app_messaging: raw.application.trigger.get(TRIGGER_TYPE).cloned(),
        triggers: raw.trigger.get(TRIGGER_TYPE).cloned(),
    };
    let mut component = |id: &str, at: &KeyPath, errors: &mut Vec<ConfigError>| {
        let Some(c) = raw.component.get(id) else {
            errors.push(src.error(at, format!("no component `{id}`: define [component.{id}]")));
            return None;
        };
        let source = component_source(&src, base, id, c, errors)?;
        Some(ComponentParts {
            source,
            environment: c.environment.clone().into_iter().collect(),
            variables: c.variables.clone(),
            allowed_outbound_hosts: c.allowed_outbound_hosts.clone(),
            key_value_stores: c.key_value_stores.clone(),
        })
    };
    build_app(parts, links, &mut component, errors)
}

/// What a spin.toml and a Spin locked app both hold, in spin.toml's terms:
/// errors point at spin.toml keys either way.
pub(crate) struct AppParts<'a> {
    /// Where errors point.
    pub src: &'a TomlSource,
    pub name: String,
    pub origin: PathBuf,
    pub dir: Option<PathBuf>,
    pub variables: Variables,
    /// `[application.trigger.messaging]`, templates unresolved.
    pub app_messaging: Option<toml::Value>,
    /// The `[[trigger.messaging]]` array, templates unresolved.
    pub triggers: Option<toml::Value>,
}

/// What an app's `[component.<id>]` says that this provider uses, as
/// written (templates unresolved).
pub(crate) struct ComponentParts {
    /// The Wasm file, found.
    pub source: PathBuf,
    pub environment: Vec<(String, String)>,
    /// `variables`: name to template.
    pub variables: BTreeMap<String, String>,
    pub allowed_outbound_hosts: Vec<String>,
    pub key_value_stores: Vec<String>,
}

/// Finds a component's parts, or reports why it cannot (given the key path
/// of the trigger's `component`).
pub(crate) type ComponentLookup<'a> =
    dyn FnMut(&str, &KeyPath, &mut Vec<ConfigError>) -> Option<ComponentParts> + 'a;

/// Validates the messaging parts of an app and builds the app model,
/// reporting every mistake at once (after those already in `errors`).
pub(crate) fn build_app(
    parts: AppParts,
    links: &dyn Links,
    component: &mut ComponentLookup,
    mut errors: Vec<ConfigError>,
) -> Result<App, ConfigErrors> {
    let src = parts.src;
    let app_at = KeyPath::dotted("application.trigger").key(TRIGGER_TYPE);
    let app_messaging: RawAppMessaging = match parts.app_messaging {
        Some(v) => src.deserialize(&app_at, templated(src, &parts.variables, &app_at, v)?)?,
        None => RawAppMessaging::default(),
    };
    let trig_at = KeyPath::dotted("trigger").key(TRIGGER_TYPE);
    let triggers: Vec<RawTrigger> = match parts.triggers {
        Some(v) => src.deserialize(&trig_at, templated(src, &parts.variables, &trig_at, v)?)?,
        None => Vec::new(),
    };

    // Channels events are published to: their addresses may not be wildcards.
    let published: BTreeSet<String> = triggers
        .iter()
        .flat_map(|t| t.publish.iter().cloned())
        .chain(
            app_messaging
                .channels
                .values()
                .filter_map(|c| c.dead_letter.clone()),
        )
        .collect();
    let channels = channels(
        src,
        &app_at,
        app_messaging.channels,
        links,
        &published,
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
        let Some(found) = component(&id, &at.key("component"), &mut errors) else {
            continue;
        };
        let grants = Grants::check(src, &parts.variables, &id, &found, links, &mut errors);
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
        if let Some(n) = t.max_in_flight
            && !(1..=MAX_IN_FLIGHT).contains(&n)
        {
            errors.push(src.error(
                &at.key("max_in_flight"),
                format!("must be between 1 and {MAX_IN_FLIGHT} (got {n})"),
            ));
        }
        let max_memory = t.max_memory.map_or(defaults::MAX_MEMORY, |m| m.as_u64());
        if !(MIN_MEMORY..=MAX_MEMORY).contains(&max_memory) {
            errors.push(src.error(
                &at.key("max_memory"),
                format!(
                    "must be between 1 MiB and 4 GiB (e.g. \"128 MiB\"; got {})",
                    bytesize::ByteSize::b(max_memory).display().iec()
                ),
            ));
        }
        let reuse = ReuseSettings {
            max_uses: t.max_instance_reuse_count.as_ref().and_then(|v| {
                reuse_setting(v, Pick::parse_count, REUSE_COUNT_RANGE, "1 to 1000000")
                    .map_err(|e| errors.push(src.error(&at.key("max_instance_reuse_count"), e)))
                    .ok()
            }),
            idle_timeout: t.idle_instance_timeout.as_ref().and_then(|v| {
                reuse_setting(v, Pick::parse_duration, IDLE_TIMEOUT_RANGE, "0s to 1h")
                    .map_err(|e| errors.push(src.error(&at.key("idle_instance_timeout"), e)))
                    .ok()
            }),
            after_error: t.reuse_instance_after_error,
        };
        components.push(ComponentSpec {
            reuse,
            id,
            source: found.source,
            subscriptions: t.subscriptions,
            publish: t.publish.into_iter().collect(),
            subscribe: t.subscribe.into_iter().collect(),
            max_in_flight: t.max_in_flight.unwrap_or(defaults::MAX_IN_FLIGHT),
            environment: found.environment,
            max_memory,
            variables: grants.variables,
            allowed_outbound_hosts: grants.allowed_outbound_hosts,
            key_value_stores: grants.key_value_stores,
        });
    }
    if parts.name.trim().is_empty() {
        errors.push(src.error(&KeyPath::dotted("application.name"), "must not be empty"));
    }
    if !errors.is_empty() {
        return Err(ConfigErrors(errors));
    }
    Ok(App {
        name: parts.name,
        origin: parts.origin,
        dir: parts.dir,
        channels,
        components,
    })
}

/// A component's variables, outbound hosts and key-value stores, checked
/// and resolved; what is wrong is added to `errors` (the rest still checked).
struct Grants {
    variables: ComponentVariables,
    allowed_outbound_hosts: AllowedHosts,
    key_value_stores: BTreeSet<String>,
}

impl Grants {
    fn check(
        src: &TomlSource,
        app_variables: &Variables,
        id: &str,
        found: &ComponentParts,
        links: &dyn Links,
        errors: &mut Vec<ConfigError>,
    ) -> Grants {
        let at = KeyPath::dotted("component").key(id);
        let mut variables = BTreeMap::new();
        for (name, template) in &found.variables {
            let key = at.key("variables").key(name);
            if let Some(why) = variable_name_problem(name) {
                errors.push(src.error(&key, format!("`{name}` is not a variable name: it {why}")));
                continue;
            }
            // The error names the variable and how to set it, never a value.
            match app_variables.resolve(template) {
                Ok(value) => {
                    variables.insert(name.clone(), value);
                }
                Err(why) => errors.push(src.error(&key, why)),
            }
        }
        let mut hosts = Vec::new();
        for (i, entry) in found.allowed_outbound_hosts.iter().enumerate() {
            match app_variables.resolve(entry) {
                Ok(host) => hosts.push(host),
                Err(why) => errors.push(src.error(&at.key("allowed_outbound_hosts").index(i), why)),
            }
        }
        let allowed_outbound_hosts = if hosts.len() == found.allowed_outbound_hosts.len() {
            AllowedHosts::parse(&hosts).unwrap_or_else(|(i, why)| {
                errors.push(src.error(&at.key("allowed_outbound_hosts").index(i), why));
                AllowedHosts::default()
            })
        } else {
            AllowedHosts::default()
        };
        let mut key_value_stores = BTreeSet::new();
        for (i, label) in found.key_value_stores.iter().enumerate() {
            if let Err(why) = links.check_key_value_store(label) {
                errors.push(src.error(&at.key("key_value_stores").index(i), why));
            }
            key_value_stores.insert(label.clone());
        }
        Grants {
            variables: ComponentVariables(variables),
            allowed_outbound_hosts,
            key_value_stores,
        }
    }
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

fn channels(
    src: &TomlSource,
    at: &KeyPath,
    raw: BTreeMap<String, RawChannel>,
    links: &dyn Links,
    published: &BTreeSet<String>,
    errors: &mut Vec<ConfigError>,
) -> BTreeMap<String, Channel> {
    let names: BTreeSet<String> = raw.keys().cloned().collect();
    let mut out = BTreeMap::new();
    for (name, c) in raw {
        let at = at.key("channels").key(&name);
        let name_ok =
            !name.is_empty() && !name.chars().any(|c| c.is_whitespace() || c.is_control());
        if !name_ok {
            errors.push(src.error(
                &at,
                "channel names must be non-empty and contain no whitespace",
            ));
        }
        let link = c.link.unwrap_or_else(|| "default".into());
        let link_known = links.has_link(&link);
        if !link_known {
            errors.push(src.error(&at.key("link"), format!("no link `{link}`: define [messaging_link.{link}] in the runtime config (--runtime-config-file)")));
        }
        let address_given = c.address.is_some();
        let address = c.address.unwrap_or_else(|| name.clone());
        let group_given = c.group.is_some();
        let group = c.group.unwrap_or_else(|| address.clone());
        // The rules every broker shares first; then the link's own, which
        // also cover the names the link derives from these.
        let mut names_ok = name_ok;
        for (key, value, given) in [
            ("address", &address, address_given),
            ("group", &group, group_given),
        ] {
            if given && let Err(why) = names::common(value) {
                names_ok = false;
                errors.push(src.error(&at.key(key), why));
            }
        }
        if names_ok && link_known {
            let on_broker = ChannelNames {
                address: &address,
                group: (c.kind == ChannelKind::Queue).then_some(group.as_str()),
                published: published.contains(&name),
            };
            if let Err(e) = links.check_channel(&link, &on_broker) {
                let default = match (e.key, address_given, group_given) {
                    ("address", false, _) => {
                        "; the address defaults to the channel name: set `address`"
                    }
                    ("group", _, false) => "; the group defaults to the address: set `group`",
                    _ => "",
                };
                errors.push(src.error(
                    &at.key(e.key),
                    format!("{} (on link `{link}`{default})", e.message),
                ));
            }
        }
        if let Some(n) = c.max_payload
            && !(1..=MAX_PAYLOAD_LIMIT).contains(&n)
        {
            errors.push(src.error(
                &at.key("max_payload"),
                format!("must be between 1 and {MAX_PAYLOAD_LIMIT} bytes (got {n})"),
            ));
        }
        if let Some(n) = c.max_attempts
            && !(1..=MAX_ATTEMPTS).contains(&n)
        {
            errors.push(src.error(
                &at.key("max_attempts"),
                format!("must be between 1 and {MAX_ATTEMPTS} (got {n})"),
            ));
        }
        let retry = RetryPolicy {
            delay: c.retry_delay.unwrap_or(defaults::RETRY_DELAY),
            max_delay: c.max_retry_delay.unwrap_or(defaults::MAX_RETRY_DELAY),
        };
        let show = show_duration;
        if !(MIN_RETRY_DELAY..=MAX_RETRY_DELAY).contains(&retry.delay) {
            errors.push(src.error(
                &at.key("retry_delay"),
                format!("must be between 10ms and 1h (got {})", show(retry.delay)),
            ));
        }
        if !(retry.delay..=MAX_RETRY_DELAY).contains(&retry.max_delay) {
            errors.push(src.error(
                &at.key("max_retry_delay"),
                format!(
                    "must be between `retry_delay` ({}) and 1h (got {})",
                    show(retry.delay),
                    show(retry.max_delay)
                ),
            ));
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
                group,
                name,
                kind: c.kind,
                link,
                address,
                max_payload: c.max_payload.map(|n| n as usize),
                max_attempts: c.max_attempts.unwrap_or(defaults::MAX_ATTEMPTS),
                retry,
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

/// Reads an instance reuse setting given as a number (a count, or seconds)
/// or a string in the syntax of Spin's flag (`128`, `64..256`, `500ms`,
/// `1s..5s`), and checks it against `range`.
fn reuse_setting<T: Copy + PartialOrd + std::fmt::Debug>(
    value: &toml::Value,
    parse: fn(&str) -> Result<Pick<T>, String>,
    range: std::ops::RangeInclusive<T>,
    range_text: &str,
) -> Result<Pick<T>, String> {
    let text = match value {
        toml::Value::Integer(n) => n.to_string(),
        toml::Value::String(s) => s.clone(),
        other => {
            return Err(format!(
                "expected a number or a string such as \"1..8\" or \"500ms\", got {}",
                other.type_str()
            ));
        }
    };
    let pick = parse(&text)?;
    if pick.within(range) {
        Ok(pick)
    } else {
        Err(format!("`{text}` is out of range ({range_text})"))
    }
}
