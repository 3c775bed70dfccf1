//! The runtime config (`--runtime-config-file`): binds link names to brokers,
//! as Spin's runtime config binds store labels to backends.
//!
//! ```toml
//! [messaging_link.events]
//! type = "embedded"
//! capacity = 256
//! ```
//!
//! A link named `default` is the embedded broker unless the file rebinds it.
//! Secrets stay out of the file: `password = "{{ nats_password }}"` takes
//! the value of the `SPIN_VARIABLE_NATS_PASSWORD` environment variable.
//! Tables Spin itself reads (`key_value_store`, ...) are left to Spin; any
//! other unknown key is an error.

use super::{ConfigError, ConfigErrors, KeyPath, Links, TomlSource, Variables};
use crate::broker::{ChannelNames, Invalid, LinkRegistry, PreparedLink};
use std::collections::BTreeMap;
use std::path::Path;

/// The table that holds link definitions.
pub const LINK_TABLE: &str = "messaging_link";

/// Top-level tables of Spin's own runtime config, which may share the file.
const SPIN_TABLES: &[&str] = &[
    "key_value_store",
    "sqlite_database",
    "llm_compute",
    "variables_provider",
    "config_provider",
    "client_tls",
    "outbound_networking",
    "otel",
];

/// The links a provider can bind channels to.
pub struct RuntimeConfig {
    /// Links by name, settings checked, not yet connected.
    pub links: BTreeMap<String, Box<dyn PreparedLink>>,
}

impl RuntimeConfig {
    /// The config with no file: only the embedded `default` link.
    pub fn embedded_default(registry: &LinkRegistry) -> RuntimeConfig {
        let src = TomlSource::without_lines(Path::new("<built-in>"));
        let default = registry
            .prepare(
                crate::broker::embedded::MakeEmbedded::TYPE_NAME,
                &src,
                &KeyPath::default(),
                toml::Value::Table(Default::default()),
            )
            .expect("the embedded link type is always registered")
            .expect("the embedded link's defaults are valid");
        RuntimeConfig {
            links: BTreeMap::from([("default".to_string(), default)]),
        }
    }

    /// Reads a runtime config file; with `None`, only the default link exists.
    pub fn load(
        path: Option<&Path>,
        registry: &LinkRegistry,
    ) -> Result<RuntimeConfig, ConfigErrors> {
        let mut config = RuntimeConfig::embedded_default(registry);
        let Some(path) = path else { return Ok(config) };
        let (src, table) = TomlSource::read(path)?;
        let mut errors = Vec::new();
        for (key, value) in table {
            if key == LINK_TABLE {
                let at = KeyPath::dotted(LINK_TABLE);
                let toml::Value::Table(links) = value else {
                    errors.push(src.error(
                        &at,
                        format!("must be a table of links: [{LINK_TABLE}.<name>]"),
                    ));
                    continue;
                };
                for (name, def) in links {
                    match prepare_link(&src, &at.key(&name), def, registry) {
                        Ok(link) => {
                            config.links.insert(name, link);
                        }
                        Err(e) => errors.push(e),
                    }
                }
            } else if !SPIN_TABLES.contains(&key.as_str()) {
                errors.push(src.error(
                    &KeyPath::dotted(&key),
                    format!("unknown key; messaging links are defined in [{LINK_TABLE}.<name>]"),
                ));
            }
        }
        if errors.is_empty() {
            Ok(config)
        } else {
            Err(ConfigErrors(errors))
        }
    }

    /// Whether a link of this name exists.
    pub fn has_link(&self, name: &str) -> bool {
        self.links.contains_key(name)
    }
}

/// Apps loaded against a runtime config have their channels' names checked
/// against the rules of the broker each channel's link is bound to.
impl Links for RuntimeConfig {
    fn has_link(&self, name: &str) -> bool {
        self.links.contains_key(name)
    }
    fn check_channel(&self, link: &str, names: &ChannelNames) -> Result<(), Invalid> {
        self.links
            .get(link)
            .map_or(Ok(()), |l| l.check_channel(names))
    }
}

fn prepare_link(
    src: &TomlSource,
    at: &KeyPath,
    mut def: toml::Value,
    registry: &LinkRegistry,
) -> Result<Box<dyn PreparedLink>, ConfigError> {
    Variables::environment_only()
        .resolve_all(&mut def, at)
        .map_err(|(key, message)| src.error(&key, message))?;
    let toml::Value::Table(mut settings) = def else {
        return Err(src.error(at, "must be a table with a `type` key"));
    };
    let types = registry.type_names().join(", ");
    let link_type = match settings.remove("type") {
        Some(toml::Value::String(t)) => t,
        Some(_) => {
            return Err(src.error(
                &at.key("type"),
                format!("must be a string, one of: {types}"),
            ));
        }
        None => return Err(src.error(at, format!("missing `type` (one of: {types})"))),
    };
    registry
        .prepare(&link_type, src, at, toml::Value::Table(settings))
        .unwrap_or_else(|| {
            Err(src.error(
                &at.key("type"),
                format!("unknown link type `{link_type}`; known types: {types}"),
            ))
        })
}
