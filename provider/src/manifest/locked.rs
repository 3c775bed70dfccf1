//! The Spin locked app (`spin.lock`, JSON) that `spin up` writes and hands to
//! trigger plugins through `SPIN_LOCKED_URL`. It holds the same messaging
//! settings as the spin.toml it came from, so validation is shared with
//! [`super::load_app`]; errors point at the spin.toml keys (with lines, when
//! the lock names a spin.toml that can still be read).

use super::spin::{AppParts, ComponentParts, Links, NamedLinks, TRIGGER_TYPE, build_app};
use super::variables::{VariableDecl, Variables};
use super::{ConfigError, ConfigErrors, KeyPath, TomlSource};
use crate::app::App;
use serde::Deserialize;
use serde_json::{Map, Value};
use sha2::Digest as _;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// The newest `spin_lock_version` this reader understands (Spin writes 0,
/// or 1 when the lock has `must_understand` entries).
const LOCK_VERSION: u64 = 1;

/// `must_understand` entries this reader processes: it checks the host
/// requirements they point at and rejects every one it cannot meet.
const UNDERSTOOD: &[&str] = &["host_requirements", "component_host_requirements"];

/// Host features (`host_requirements`) this trigger provides: none yet
/// (`local_service_chaining` is about HTTP).
const SUPPORTED_HOST_REQUIREMENTS: &[&str] = &[];

#[derive(Deserialize)]
struct LockedApp {
    spin_lock_version: u64,
    #[serde(default)]
    must_understand: Vec<String>,
    #[serde(default)]
    metadata: Map<String, Value>,
    #[serde(default)]
    host_requirements: BTreeMap<String, Value>,
    #[serde(default)]
    variables: BTreeMap<String, LockedVariable>,
    triggers: Vec<LockedTrigger>,
    components: Vec<LockedComponent>,
}

#[derive(Deserialize)]
struct LockedVariable {
    default: Option<String>,
    #[serde(default)]
    secret: bool,
    description: Option<String>,
}

#[derive(Deserialize)]
struct LockedTrigger {
    trigger_type: String,
    trigger_config: Value,
}

#[derive(Deserialize)]
struct LockedComponent {
    id: String,
    source: LockedSource,
    #[serde(default)]
    env: BTreeMap<String, String>,
    #[serde(default)]
    files: Vec<Value>,
    #[serde(default)]
    dependencies: Map<String, Value>,
    #[serde(default)]
    host_requirements: BTreeMap<String, Value>,
    /// `[component.<id>.variables]`, templates unresolved.
    #[serde(default)]
    config: BTreeMap<String, String>,
    #[serde(default)]
    metadata: LockedComponentMetadata,
}

/// The permissions Spin keeps in a component's `metadata`.
#[derive(Default, Deserialize)]
struct LockedComponentMetadata {
    #[serde(default)]
    allowed_outbound_hosts: Vec<String>,
    #[serde(default)]
    key_value_stores: Vec<String>,
}

/// A content reference: a URL, or the bytes inline (base64) with a digest.
#[derive(Deserialize)]
struct LockedSource {
    content_type: String,
    source: Option<String>,
    inline: Option<String>,
    digest: Option<String>,
}

/// Where a locked app is and what `spin up` said about it.
#[derive(Clone, Debug)]
pub struct LockedAppLocation {
    /// The lock file (from `SPIN_LOCKED_URL`).
    pub lock: PathBuf,
    /// `SPIN_WORKING_DIR`: a directory Spin made for this run, where inline
    /// component sources are written out.
    pub working_dir: PathBuf,
    /// `SPIN_LOCAL_APP_DIR`: the spin.toml's directory for local apps.
    pub local_app_dir: Option<PathBuf>,
}

/// Loads the messaging part of a Spin locked app. `known_link` says which
/// link names exist; names are checked against the rules every broker
/// shares ([`load_locked_app_with_links`] checks them against each link's
/// broker too).
pub fn load_locked_app(
    location: &LockedAppLocation,
    known_link: &dyn Fn(&str) -> bool,
) -> Result<App, ConfigErrors> {
    load_locked_app_with_links(location, &NamedLinks(known_link))
}

/// Loads the messaging part of a Spin locked app, checking its channels
/// against the links they are bound to (e.g. a [`super::RuntimeConfig`]).
pub fn load_locked_app_with_links(
    location: &LockedAppLocation,
    links: &dyn Links,
) -> Result<App, ConfigErrors> {
    let lock_src = TomlSource::without_lines(&location.lock);
    let text = std::fs::read(&location.lock).map_err(|e| {
        ConfigError::file(&location.lock, format!("cannot read the locked app: {e}"))
    })?;
    let json: Value = serde_json::from_slice(&text).map_err(|e| ConfigError {
        line: Some(e.line()),
        ..ConfigError::file(
            &location.lock,
            format!("not a valid locked app (JSON): {e}"),
        )
    })?;
    let root = KeyPath::default();
    let locked: LockedApp = lock_src.deserialize(&root, json)?;
    let mut errors = Vec::new();
    if locked.spin_lock_version > LOCK_VERSION {
        errors.push(lock_src.error(
            &root.key("spin_lock_version"),
            format!(
                "version {} is newer than this trigger-messaging understands ({LOCK_VERSION}); upgrade the plugin",
                locked.spin_lock_version
            ),
        ));
    }
    for (i, item) in locked.must_understand.iter().enumerate() {
        if !UNDERSTOOD.contains(&item.as_str()) {
            errors.push(lock_src.error(
                &root.key("must_understand").index(i),
                format!("the app needs `{item}`, which this version of trigger-messaging does not understand; upgrade the plugin"),
            ));
        }
    }
    let ours: Vec<&LockedTrigger> = locked
        .triggers
        .iter()
        .filter(|t| t.trigger_type == TRIGGER_TYPE)
        .collect();
    let used: Vec<&str> = ours
        .iter()
        .filter_map(|t| t.trigger_config.get("component")?.as_str())
        .collect();
    let mut unmet: Vec<String> = required(&locked.host_requirements).collect();
    for c in locked
        .components
        .iter()
        .filter(|c| used.contains(&c.id.as_str()))
    {
        unmet.extend(required(&c.host_requirements));
    }
    unmet.sort();
    unmet.dedup();
    if !unmet.is_empty() {
        errors.push(lock_src.error(
            &root.key("host_requirements"),
            format!(
                "this application requires features that the messaging trigger does not provide: {}",
                unmet.join(", ")
            ),
        ));
    }

    // Errors about what the user wrote point at their spin.toml when it is
    // still there; otherwise at the lock, by the same key paths.
    let origin = locked
        .metadata
        .get("origin")
        .and_then(Value::as_str)
        .and_then(|u| url::Url::parse(u).ok()?.to_file_path().ok());
    let (src, origin) = match origin.as_deref().map(TomlSource::read) {
        Some(Ok((src, _))) => (src, origin.unwrap()),
        _ => (
            TomlSource::without_lines(&location.lock),
            location.lock.clone(),
        ),
    };

    let decls = locked
        .variables
        .into_iter()
        .map(|(name, v)| {
            let decl = VariableDecl {
                required: v.default.is_none(),
                default: v.default,
                secret: v.secret,
                description: v.description,
            };
            (name, decl)
        })
        .collect();
    let variables = Variables::new(decls)
        .map_err(|(name, msg)| src.error(&KeyPath::dotted("variables").key(name), msg))?;
    let to_toml = |v: Value, at: KeyPath| {
        toml::Value::try_from(v).map_err(|e| src.error(&at, format!("cannot be read: {e}")))
    };
    let app_messaging = match locked
        .metadata
        .get("triggers")
        .and_then(|t| t.get(TRIGGER_TYPE))
    {
        Some(v) => Some(to_toml(
            v.clone(),
            KeyPath::dotted("application.trigger").key(TRIGGER_TYPE),
        )?),
        None => None,
    };
    let trigger_configs = ours.iter().map(|t| t.trigger_config.clone()).collect();
    let triggers = to_toml(
        Value::Array(trigger_configs),
        KeyPath::dotted("trigger").key(TRIGGER_TYPE),
    )?;
    let name = match locked.metadata.get("name").and_then(Value::as_str) {
        Some(name) => name.to_string(),
        None => {
            errors.push(lock_src.error(&root.key("metadata").key("name"), "the app has no name"));
            String::from("unnamed")
        }
    };

    let components: BTreeMap<&str, &LockedComponent> = locked
        .components
        .iter()
        .map(|c| (c.id.as_str(), c))
        .collect();
    let mut component = |id: &str, at: &KeyPath, errors: &mut Vec<ConfigError>| {
        let Some(c) = components.get(id) else {
            errors.push(src.error(at, format!("no component `{id}` in the locked app")));
            return None;
        };
        let key = KeyPath::dotted("component").key(id);
        if !c.dependencies.is_empty() {
            let names: Vec<&str> = c.dependencies.keys().map(String::as_str).collect();
            errors.push(src.error(
                &key.key("dependencies"),
                format!(
                    "component dependencies ({}) are not composed by trigger-messaging; compose the component first (e.g. with `wac plug`)",
                    names.join(", ")
                ),
            ));
            return None;
        }
        if !c.files.is_empty() {
            tracing::warn!(
                "component `{id}`: `files` are not mounted by trigger-messaging; the component sees no files"
            );
        }
        let path = component_source(&c.source, &location.working_dir)
            .map_err(|msg| errors.push(src.error(&key.key("source"), msg)))
            .ok()?;
        Some(ComponentParts {
            source: path,
            environment: c.env.clone().into_iter().collect(),
            variables: c.config.clone(),
            allowed_outbound_hosts: c.metadata.allowed_outbound_hosts.clone(),
            key_value_stores: c.metadata.key_value_stores.clone(),
        })
    };
    let parts = AppParts {
        src: &src,
        name,
        origin,
        dir: location.local_app_dir.clone(),
        variables,
        app_messaging,
        triggers: Some(triggers),
    };
    build_app(parts, links, &mut component, errors)
}

/// The names of host requirements that are not optional.
fn required(reqs: &BTreeMap<String, Value>) -> impl Iterator<Item = String> + '_ {
    reqs.iter()
        .filter(|(name, value)| {
            value.as_str() != Some("optional")
                && !SUPPORTED_HOST_REQUIREMENTS.contains(&name.as_str())
        })
        .map(|(name, _)| name.clone())
}

/// The Wasm file of a component: a `file://` source as it is, inline bytes
/// checked against their digest and written into the working directory.
fn component_source(source: &LockedSource, working_dir: &Path) -> Result<PathBuf, String> {
    if source.content_type != "application/wasm" {
        return Err(format!(
            "content type `{}` is not a Wasm component (application/wasm)",
            source.content_type
        ));
    }
    if let Some(inline) = &source.inline {
        use base64::Engine as _;
        let bytes = base64::engine::general_purpose::STANDARD
            .decode(inline)
            .map_err(|e| format!("the inline source is not valid base64: {e}"))?;
        let digest = format!("sha256:{:x}", sha2::Sha256::digest(&bytes));
        if let Some(expected) = &source.digest
            && expected != &digest
        {
            return Err(format!(
                "the inline source has digest {digest}, not {expected}"
            ));
        }
        // Named by content, not by component id: an id is whatever the lock
        // says, and must not choose where a file is written.
        let dir = working_dir.join("trigger-messaging");
        let path = dir.join(format!("{}.wasm", digest.replace(':', "-")));
        std::fs::create_dir_all(&dir)
            .and_then(|()| std::fs::write(&path, &bytes))
            .map_err(|e| format!("cannot write the inline source to {}: {e}", path.display()))?;
        return Ok(path);
    }
    let Some(url) = &source.source else {
        return Err("the source has neither a `source` URL nor `inline` content".into());
    };
    let path = url::Url::parse(url)
        .ok()
        .filter(|u| u.scheme() == "file")
        .and_then(|u| u.to_file_path().ok())
        .ok_or_else(|| format!("`{url}` is not a file:// URL (remote sources are fetched by `spin up`, not by the trigger)"))?;
    if !path.is_file() {
        return Err(format!(
            "{} does not exist (build the component first?)",
            path.display()
        ));
    }
    Ok(path)
}
