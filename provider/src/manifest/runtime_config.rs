//! The runtime config (`--runtime-config-file`), Spin's file: binds link
//! names to brokers, as it binds store labels to backends.
//!
//! ```toml
//! [messaging_link.events]
//! type = "embedded"
//! capacity = 256
//!
//! [key_value_store.cache]
//! type = "redis"
//! url = "redis://127.0.0.1:6379"
//! ```
//!
//! A link named `default` is the embedded broker unless the file rebinds it,
//! and the key-value store `default` an SQLite file in the app's state
//! directory. Secrets stay out of the file: `password = "{{ nats_password }}"`
//! in a link takes the value of the `SPIN_VARIABLE_NATS_PASSWORD`
//! environment variable. Spin's own keys are accepted (`state_dir` and
//! `log_dir` are used too); any other unknown key is an error.
//!
//! Spin's http trigger refuses a runtime config with tables it does not
//! know, so an app with an http component gives its links in a file of
//! their own, the messaging runtime config
//! (`--messaging-runtime-config-file`), which holds only
//! `[messaging_link.<name>]` tables and which only this trigger reads.

use super::{ConfigError, ConfigErrors, KeyPath, Links, TomlSource, Variables};
use crate::broker::{ChannelNames, Invalid, LinkRegistry, PreparedLink};
use crate::keyvalue::{DEFAULT_STORE, StoreConfig};
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The table that holds link definitions.
pub const LINK_TABLE: &str = "messaging_link";

/// The table that binds key-value store labels (Spin's).
pub const KEY_VALUE_TABLE: &str = "key_value_store";

/// Top-level keys of Spin's own runtime config, which may share the file.
const SPIN_KEYS: &[&str] = &[
    "state_dir",
    "log_dir",
    "max_instance_memory",
    KEY_VALUE_TABLE,
    "sqlite_database",
    "llm_compute",
    "variables_provider",
    "config_provider",
    "client_tls",
    "outbound_networking",
    "outbound_http",
    "outbound_redis",
    "outbound_pg",
    "outbound_mysql",
    "outbound_mqtt",
    "otel",
];

/// The links and key-value stores a provider can bind to.
pub struct RuntimeConfig {
    /// Links by name, settings checked, not yet connected.
    pub links: BTreeMap<String, Box<dyn PreparedLink>>,
    /// Each link's table as written: a reload keeps a link's connection
    /// while it is unchanged.
    pub link_settings: BTreeMap<String, toml::Value>,
    /// `[key_value_store.<label>]` tables; `default` is each app's own
    /// unless rebound here.
    pub key_value_stores: BTreeMap<String, StoreConfig>,
    /// Spin's `state_dir` (`Some("")`: none), for when `--state-dir` is
    /// not given.
    pub state_dir: Option<PathBuf>,
    /// Spin's `log_dir`, likewise.
    pub log_dir: Option<PathBuf>,
}

/// Which of the two files is read.
#[derive(Clone, Copy, PartialEq, Eq)]
enum FileKind {
    /// `--runtime-config-file`: Spin's file, shared with Spin's triggers.
    Spin,
    /// `--messaging-runtime-config-file`: links only, ours alone.
    Messaging,
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
            link_settings: BTreeMap::from([(
                "default".to_string(),
                toml::Value::Table(Default::default()),
            )]),
            key_value_stores: BTreeMap::new(),
            state_dir: None,
            log_dir: None,
        }
    }

    /// Reads a runtime config file; with `None`, only the defaults exist.
    pub fn load(
        path: Option<&Path>,
        registry: &LinkRegistry,
    ) -> Result<RuntimeConfig, ConfigErrors> {
        Self::load_files(path, None, registry)
    }

    /// Reads Spin's runtime config and the messaging runtime config (links
    /// only), either or both; a link defined in both is an error.
    pub fn load_files(
        runtime_config: Option<&Path>,
        messaging_config: Option<&Path>,
        registry: &LinkRegistry,
    ) -> Result<RuntimeConfig, ConfigErrors> {
        let mut config = RuntimeConfig::embedded_default(registry);
        let mut errors = Vec::new();
        let mut defined_in: BTreeMap<String, PathBuf> = BTreeMap::new();
        let files = [
            (runtime_config, FileKind::Spin),
            (messaging_config, FileKind::Messaging),
        ];
        for (path, kind) in files {
            let Some(path) = path else { continue };
            let (src, table) = match TomlSource::read(path) {
                Ok(read) => read,
                Err(e) => {
                    errors.extend(e.0);
                    continue;
                }
            };
            let dir = path.parent().unwrap_or(Path::new("."));
            for (key, value) in table {
                let at = KeyPath::dotted(&key);
                match (key.as_str(), kind) {
                    (LINK_TABLE, _) => {
                        let toml::Value::Table(links) = value else {
                            errors.push(src.error(
                                &at,
                                format!("must be a table of links: [{LINK_TABLE}.<name>]"),
                            ));
                            continue;
                        };
                        for (name, def) in links {
                            let link_at = at.key(&name);
                            if let Some(first) = defined_in.get(&name) {
                                errors.push(src.error(
                                    &link_at,
                                    format!("link `{name}` is already defined in {}", first.display()),
                                ));
                                continue;
                            }
                            let written = def.clone();
                            match prepare_link(&src, &link_at, def, registry) {
                                Ok(link) => {
                                    defined_in.insert(name.clone(), path.to_path_buf());
                                    config.link_settings.insert(name.clone(), written);
                                    config.links.insert(name, link);
                                }
                                Err(e) => errors.push(e),
                            }
                        }
                    }
                    (KEY_VALUE_TABLE, FileKind::Spin) => {
                        let toml::Value::Table(stores) = value else {
                            errors.push(src.error(
                                &at,
                                format!("must be a table of stores: [{KEY_VALUE_TABLE}.<label>]"),
                            ));
                            continue;
                        };
                        for (label, def) in stores {
                            match store_config(&src, &at.key(&label), dir, def) {
                                Ok(store) => {
                                    config.key_value_stores.insert(label, store);
                                }
                                Err(e) => errors.push(e),
                            }
                        }
                    }
                    ("state_dir" | "log_dir", FileKind::Spin) => {
                        let Some(given) = value.as_str() else {
                            errors.push(src.error(&at, "must be a string (a directory; \"\" for none)"));
                            continue;
                        };
                        let dir = if given.is_empty() {
                            PathBuf::new()
                        } else {
                            dir.join(given)
                        };
                        if key == "state_dir" {
                            config.state_dir = Some(dir);
                        } else {
                            config.log_dir = Some(dir);
                        }
                    }
                    (spin, FileKind::Spin) if SPIN_KEYS.contains(&spin) => {}
                    (_, FileKind::Spin) => errors.push(src.error(
                        &at,
                        format!("unknown key; messaging links are defined in [{LINK_TABLE}.<name>]"),
                    )),
                    (_, FileKind::Messaging) => errors.push(src.error(
                        &at,
                        format!("the messaging runtime config holds only [{LINK_TABLE}.<name>] tables; `{key}` belongs in the runtime config (--runtime-config-file), which Spin's triggers read too"),
                    )),
                }
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

/// One `[key_value_store.<label>]` table: `type = "spin"` (with `path`,
/// relative to the file) or `"redis"` (with `url`) are checked as this
/// provider opens them; Spin's other types are kept for Spin.
fn store_config(
    src: &TomlSource,
    at: &KeyPath,
    dir: &Path,
    def: toml::Value,
) -> Result<StoreConfig, ConfigError> {
    let toml::Value::Table(mut settings) = def else {
        return Err(src.error(at, "must be a table with a `type` key"));
    };
    let store_type = match settings.remove("type") {
        Some(toml::Value::String(t)) => t,
        Some(_) => {
            return Err(src.error(
                &at.key("type"),
                "must be a string, e.g. \"spin\" or \"redis\"",
            ));
        }
        None => return Err(src.error(at, "missing `type` (\"spin\" or \"redis\")")),
    };
    let takes = match store_type.as_str() {
        "spin" => "path",
        "redis" => "url",
        _ => return Ok(StoreConfig::Unsupported { store_type }),
    };
    if let Some(key) = settings.keys().find(|k| *k != takes) {
        return Err(src.error(
            &at.key(key),
            format!("unknown key for a `{store_type}` store (it takes `{takes}`)"),
        ));
    }
    let value = match settings.remove(takes) {
        None => None,
        Some(toml::Value::String(s)) if !s.is_empty() => Some(s),
        Some(_) => return Err(src.error(&at.key(takes), "must be a non-empty string")),
    };
    if takes == "path" {
        return Ok(StoreConfig::Sqlite {
            path: value.map(|p| dir.join(p)),
        });
    }
    let url =
        value.ok_or_else(|| src.error(at, "a `redis` store needs `url` (redis://host:port)"))?;
    if let Err(e) = redis::Client::open(url.as_str()) {
        return Err(src.error(
            &at.key("url"),
            format!(
                "`{}` is not a Redis URL: {e}",
                crate::broker::redact_url(&url)
            ),
        ));
    }
    Ok(StoreConfig::Redis { url })
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
    fn check_key_value_store(&self, label: &str) -> Result<(), String> {
        match self.key_value_stores.get(label) {
            None if label == DEFAULT_STORE => Ok(()),
            None => Err(format!(
                "no key-value store `{label}`: define [{KEY_VALUE_TABLE}.{label}] in the runtime config (--runtime-config-file); only `{DEFAULT_STORE}` exists without one"
            )),
            Some(StoreConfig::Unsupported { store_type }) => Err(format!(
                "key-value store `{label}` has type `{store_type}` in the runtime config, which trigger-messaging cannot open (it opens `spin` and `redis` stores)"
            )),
            Some(_) => Ok(()),
        }
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
