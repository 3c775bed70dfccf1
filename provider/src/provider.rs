//! The provider: loads apps and links, runs them, and stops them gracefully.

use crate::app::App;
use crate::broker::{Broker, LinkRegistry};
use crate::dispatch::{AppRuntime, Dispatcher, DrainReport};
use crate::host::{ComponentOutput, Grants, Host, HostOptions};
use crate::keyvalue::{DEFAULT_STORE, KeyValueStore, StoreConfig, Stores};
use crate::manifest::{self, ConfigError, ConfigErrors, LockedAppLocation, RuntimeConfig};
use crate::metrics::{LinkSample, StateSample};
use anyhow::Context as _;
use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::fmt::Write as _;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

/// Where apps and links come from, and how to run them.
#[derive(Clone, Debug, Default)]
pub struct ProviderOptions {
    /// App manifests (`spin.toml` files, or directories holding one).
    pub manifests: Vec<PathBuf>,
    /// A Spin locked app (how `spin up` launches the plugin); loaded in
    /// place of `manifests`.
    pub locked: Option<LockedAppLocation>,
    /// Spin's runtime config: links, key-value stores, state and log
    /// directories.
    pub runtime_config: Option<PathBuf>,
    /// The messaging runtime config: links only, for apps whose runtime
    /// config Spin's own triggers read too.
    pub messaging_runtime_config: Option<PathBuf>,
    /// How components run.
    pub host: HostOptions,
    /// Where components' stdout and stderr go.
    pub output: OutputOptions,
    /// Pairs set in every app's `default` key-value store before it starts
    /// (Spin's `--key-value`).
    pub key_values: Vec<(String, String)>,
}

/// Where components' stdout and stderr go: Spin's `--follow`, `-q`,
/// `--log-dir`, `--state-dir` and `--truncate-logs`, with Spin's defaults.
#[derive(Clone, Debug, Default)]
pub struct OutputOptions {
    /// Whose output reaches the console.
    pub follow: Follow,
    /// Where log files go; by default `<state dir>/logs`.
    pub log_dir: UserPath,
    /// The app's state directory; by default `.spin/` beside a local app's spin.toml.
    pub state_dir: UserPath,
    /// Empty the log files at start instead of appending.
    pub truncate: bool,
}

/// Whose output reaches the console.
#[derive(Clone, Debug, Default)]
pub enum Follow {
    /// Every component's (the default).
    #[default]
    All,
    /// Nobody's (`-q`).
    None,
    /// Only these components' (`--follow <id>`, repeatable).
    Only(BTreeSet<String>),
}

/// A directory the user may give, leave to the default, or unset with `""`.
#[derive(Clone, Debug, Default)]
pub enum UserPath {
    /// Not given: the default applies.
    #[default]
    Default,
    /// Given as the empty string: none.
    Unset,
    /// Given.
    Given(PathBuf),
}

impl UserPath {
    /// Reads a command-line value, where `""` means "none".
    pub fn from_arg(arg: Option<&Path>) -> UserPath {
        match arg {
            None => UserPath::Default,
            Some(p) if p.as_os_str().is_empty() => UserPath::Unset,
            Some(p) => UserPath::Given(p.to_path_buf()),
        }
    }
}

impl OutputOptions {
    /// The runtime config's `state_dir` and `log_dir`, where the command
    /// line gave none (as Spin's triggers take them).
    fn with_runtime_config(mut self, config: &RuntimeConfig) -> OutputOptions {
        for (given, from_file) in [
            (&mut self.state_dir, &config.state_dir),
            (&mut self.log_dir, &config.log_dir),
        ] {
            if matches!(given, UserPath::Default)
                && let Some(dir) = from_file
            {
                *given = UserPath::from_arg(Some(dir));
            }
        }
        self
    }

    /// The state directory of `app` (its default key-value store lives
    /// there), if it has one.
    fn state_dir(&self, app: &App, apps: usize) -> Option<PathBuf> {
        match &self.state_dir {
            UserPath::Given(dir) if apps > 1 => Some(dir.join(&app.name)),
            UserPath::Given(dir) => Some(dir.clone()),
            UserPath::Unset => None,
            UserPath::Default => app.dir.as_ref().map(|d| d.join(".spin")),
        }
    }

    /// The log directory of `app`, if its output is written to files.
    fn log_dir(&self, app: &App, apps: usize) -> Option<PathBuf> {
        match &self.log_dir {
            // One directory for several apps: a subdirectory each.
            UserPath::Given(dir) if apps > 1 => Some(dir.join(&app.name)),
            UserPath::Given(dir) => Some(dir.clone()),
            UserPath::Unset => None,
            UserPath::Default => self.state_dir(app, apps).map(|d| d.join("logs")),
        }
    }

    fn output(
        &self,
        app: &App,
        component: &str,
        apps: usize,
    ) -> anyhow::Result<Arc<ComponentOutput>> {
        let console = match &self.follow {
            Follow::All => true,
            Follow::None => false,
            Follow::Only(ids) => ids.contains(component),
        };
        let dir = self.log_dir(app, apps);
        ComponentOutput::new(&app.name, component, console, dir.as_deref(), self.truncate)
            .context("cannot open the component log files (--log-dir, --state-dir)")
    }
}

/// Apps loaded, links connected, ready to start.
pub struct Provider {
    apps: BTreeMap<String, Arc<AppRuntime>>,
    links: BTreeMap<String, LoadedLink>,
    /// The key-value stores the apps' components use: (app, label) and
    /// where the data is.
    stores: BTreeMap<(String, String), String>,
    dispatcher: Arc<Dispatcher>,
    operations: Arc<Operations>,
}

/// What the operations routes (`/metrics`, `/readyz`) read, shared with
/// the endpoints that serve them.
pub struct Operations {
    /// What `/metrics` answers.
    registry: prometheus_client::registry::Registry,
    /// Set once every app has started.
    started: AtomicBool,
    apps: Vec<Arc<AppRuntime>>,
    links: Vec<(String, Arc<dyn Broker>)>,
}

/// A connected link, with what people and metrics are told about it.
struct LoadedLink {
    description: String,
    link_type: &'static str,
    broker: Arc<dyn Broker>,
}

/// Whether the provider is ready for work, and if not, why: what `/readyz`
/// answers.
#[derive(Debug, Clone, PartialEq, Eq, serde::Serialize, serde::Deserialize)]
pub struct Readiness {
    /// Every app started and every link connected.
    pub ready: bool,
    /// Whether every app has started (declared its channels, subscribed).
    pub started: bool,
    /// Links not connected to their broker now.
    pub links_down: Vec<String>,
    /// Channels waiting for their link, as `app/channel`.
    pub channels_unattached: Vec<String>,
}

impl Readiness {
    /// For people: ready, or what is not.
    pub fn for_people(&self, provider: &str) -> String {
        if self.ready {
            return format!("{provider}: ready (every app started, every link connected)\n");
        }
        let mut out = format!("{provider}: not ready\n");
        if !self.started {
            out.push_str("  apps still starting\n");
        }
        for link in &self.links_down {
            let _ = writeln!(out, "  link `{link}` is not connected to its broker");
        }
        for channel in &self.channels_unattached {
            let _ = writeln!(out, "  channel `{channel}` waits for its link");
        }
        out
    }
}

impl Provider {
    /// Reads every manifest and the runtime config (reporting every mistake
    /// in them at once), compiles the components and connects the links the
    /// apps use. Nothing runs until [`Provider::start`].
    pub async fn load(options: ProviderOptions) -> anyhow::Result<Provider> {
        let registry = LinkRegistry::default();
        let config = RuntimeConfig::load_files(
            options.runtime_config.as_deref(),
            options.messaging_runtime_config.as_deref(),
            &registry,
        )?;
        let output = options.output.clone().with_runtime_config(&config);
        let apps = match &options.locked {
            Some(locked) => vec![manifest::load_locked_app_with_links(locked, &config)?],
            None => load_apps(&options.manifests, &config)?,
        };

        let host = Arc::new(Host::new(options.host.clone())?);
        let dispatcher = Dispatcher::new(host.clone());

        let mut links = BTreeMap::new();
        for app in &apps {
            for channel in app.channels.values() {
                if !links.contains_key(&channel.link) {
                    let prepared = &config.links[&channel.link];
                    let broker = prepared.connect(&channel.link).await.with_context(|| {
                        format!(
                            "cannot connect link `{}` ({})",
                            channel.link,
                            prepared.link_type()
                        )
                    })?;
                    dispatcher
                        .metrics
                        .add_link(&channel.link, prepared.link_type());
                    links.insert(
                        channel.link.clone(),
                        LoadedLink {
                            description: prepared.describe(),
                            link_type: prepared.link_type(),
                            broker,
                        },
                    );
                }
            }
        }

        let mut runtimes = BTreeMap::new();
        let mut store_list = BTreeMap::new();
        let app_count = apps.len();
        let stores = Stores::default();
        for app in apps {
            let app_stores = open_stores(
                &app,
                &config,
                &stores,
                output.state_dir(&app, app_count),
                &options.key_values,
            )
            .await?;
            let mut prepared = HashMap::new();
            for c in &app.components {
                let (host, source) = (host.clone(), c.source.clone());
                let component = tokio::task::spawn_blocking(move || host.prepare(&source))
                    .await?
                    .with_context(|| format!("app `{}`, component `{}`", app.name, c.id))?;
                let component_output = output.output(&app, &c.id, app_count)?;
                let granted = c
                    .key_value_stores
                    .iter()
                    .filter_map(|label| Some((label.clone(), app_stores.get(label)?.0.clone())))
                    .collect();
                let grants = Grants::new(
                    &app.name,
                    &c.id,
                    c.variables.clone(),
                    granted,
                    c.allowed_outbound_hosts.clone(),
                );
                prepared.insert(c.id.clone(), (component, component_output, grants));
            }
            for (label, (_, description)) in app_stores {
                store_list.insert((app.name.clone(), label), description);
            }
            let app_links = links
                .iter()
                .map(|(name, link)| (name.clone(), link.broker.clone()))
                .collect();
            runtimes.insert(
                app.name.clone(),
                AppRuntime::new(app, &app_links, prepared, dispatcher.clone())?,
            );
        }
        let operations = Arc::new(Operations {
            registry: dispatcher
                .metrics
                .registry(state_sampler(&runtimes, &links)),
            started: AtomicBool::new(false),
            apps: runtimes.values().cloned().collect(),
            links: links
                .iter()
                .map(|(name, link)| (name.clone(), link.broker.clone()))
                .collect(),
        });
        Ok(Provider {
            apps: runtimes,
            links,
            stores: store_list,
            dispatcher,
            operations,
        })
    }

    /// Declares every app's channels, then starts every subscription from
    /// the manifests: nothing consumes (and so nothing publishes from a
    /// handler) before every channel is declared.
    pub async fn start(&self) -> anyhow::Result<()> {
        for app in self.apps.values() {
            app.declare_channels().await?;
        }
        for app in self.apps.values() {
            app.start_subscriptions().await?;
        }
        self.operations.started.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// What the operations routes read.
    pub fn operations(&self) -> &Arc<Operations> {
        &self.operations
    }

    /// An app by name.
    pub fn app(&self, name: &str) -> Option<&Arc<AppRuntime>> {
        self.apps.get(name)
    }

    /// A connected link by name.
    pub fn link(&self, name: &str) -> Option<&Arc<dyn Broker>> {
        self.links.get(name).map(|link| &link.broker)
    }

    /// The apps, by name.
    pub fn apps(&self) -> &BTreeMap<String, Arc<AppRuntime>> {
        &self.apps
    }

    /// What was loaded, for people: apps, channels, components, links.
    pub fn summary(&self) -> String {
        let mut out = String::new();
        for app in self.apps.values() {
            let app = &app.app;
            let _ = writeln!(out, "App `{}` ({})", app.name, app.origin.display());
            let _ = writeln!(out, "  channels:");
            for c in app.channels.values() {
                let _ = write!(
                    out,
                    "    {:<16} {} on link `{}` as `{}`",
                    c.name, c.kind, c.link, c.address
                );
                if let Some(limit) = c.max_payload {
                    let _ = write!(out, ", max payload {limit} bytes");
                }
                if let Some(dl) = &c.dead_letter {
                    let _ = write!(out, ", dead letters to `{dl}`");
                }
                out.push('\n');
            }
            let _ = writeln!(out, "  components:");
            for c in &app.components {
                let list = |names: &mut dyn Iterator<Item = &String>| {
                    let v: Vec<&str> = names.map(String::as_str).collect();
                    if v.is_empty() {
                        "-".to_string()
                    } else {
                        v.join(", ")
                    }
                };
                let _ = writeln!(out, "    {} ({})", c.id, c.source.display());
                let _ = writeln!(
                    out,
                    "      subscriptions: {}",
                    list(&mut c.subscriptions.iter())
                );
                let _ = writeln!(out, "      may publish:   {}", list(&mut c.publish.iter()));
                let _ = writeln!(
                    out,
                    "      may subscribe: {}",
                    list(&mut c.subscribe.iter())
                );
                if !c.key_value_stores.is_empty() {
                    let _ = writeln!(
                        out,
                        "      key-value:     {}",
                        list(&mut c.key_value_stores.iter())
                    );
                }
                if !c.allowed_outbound_hosts.is_empty() {
                    let _ = writeln!(out, "      outbound HTTP: {}", c.allowed_outbound_hosts);
                }
                if !c.variables.0.is_empty() {
                    let _ = writeln!(
                        out,
                        "      variables:     {}",
                        list(&mut c.variables.0.keys())
                    );
                }
            }
        }
        let _ = writeln!(out, "Links:");
        for (name, link) in &self.links {
            let _ = writeln!(out, "  {name:<16} {}", link.description);
        }
        if !self.stores.is_empty() {
            let _ = writeln!(out, "Key-value stores:");
            for ((app, label), description) in &self.stores {
                let _ = writeln!(out, "  {app}/{label:<12} {description}");
            }
        }
        out
    }

    /// Stops taking messages, hands back what was taken but not started,
    /// lets in-flight handlers finish within `deadline`, then closes the
    /// links (sending the acknowledgements given).
    pub async fn shutdown(&self, deadline: std::time::Duration) -> DrainReport {
        let report = self.dispatcher.drain(deadline).await;
        for link in self.links.values() {
            link.broker.close().await;
        }
        report
    }
}

impl Operations {
    /// Whether every app started and every link is connected, naming what is not.
    pub fn readiness(&self) -> Readiness {
        let started = self.started.load(Ordering::Relaxed);
        let links_down: Vec<String> = self
            .links
            .iter()
            .filter(|(_, link)| !link.connectivity().connected)
            .map(|(name, _)| name.clone())
            .collect();
        let channels_unattached: Vec<String> = self
            .apps
            .iter()
            .flat_map(|app| {
                app.unattached()
                    .into_iter()
                    .map(move |c| format!("{}/{c}", app.app.name))
            })
            .collect();
        Readiness {
            ready: started && links_down.is_empty() && channels_unattached.is_empty(),
            started,
            links_down,
            channels_unattached,
        }
    }

    /// The metrics, in Prometheus' text format.
    pub fn metrics_text(&self) -> String {
        crate::metrics::encode(&self.registry)
    }
}

/// Reads the apps' and links' state for each scrape.
fn state_sampler(
    apps: &BTreeMap<String, Arc<AppRuntime>>,
    links: &BTreeMap<String, LoadedLink>,
) -> impl Fn() -> StateSample + Send + Sync + 'static {
    let apps: Vec<Arc<AppRuntime>> = apps.values().cloned().collect();
    let links: Vec<(String, &'static str, Arc<dyn Broker>)> = links
        .iter()
        .map(|(name, link)| (name.clone(), link.link_type, link.broker.clone()))
        .collect();
    move || StateSample {
        components: apps
            .iter()
            .flat_map(|app| app.component_samples())
            .collect(),
        links: links
            .iter()
            .map(|(name, link_type, broker)| {
                let state = broker.connectivity();
                LinkSample {
                    link: name.clone(),
                    link_type,
                    up: state.connected,
                    reconnects: state.reconnects,
                }
            })
            .collect(),
    }
}

/// An app's open key-value stores by label, each with where its data is.
type OpenStores = BTreeMap<String, (Arc<dyn KeyValueStore>, String)>;

/// Opens the key-value stores an app's components name: `default` in its
/// state directory unless the runtime config rebinds it. `key_values` are
/// set in `default` (opened for them if no component names it). By label:
/// the store and where its data is.
async fn open_stores(
    app: &App,
    config: &RuntimeConfig,
    stores: &Stores,
    state_dir: Option<PathBuf>,
    key_values: &[(String, String)],
) -> anyhow::Result<OpenStores> {
    let default = DEFAULT_STORE.to_string();
    let labels: BTreeSet<&String> = app
        .components
        .iter()
        .flat_map(|c| &c.key_value_stores)
        .chain((!key_values.is_empty()).then_some(&default))
        .collect();
    let mut opened = BTreeMap::new();
    for label in labels {
        let store_config = match config.key_value_stores.get(label) {
            Some(c) => c.clone(),
            None if label == DEFAULT_STORE => StoreConfig::default_for(state_dir.as_deref()),
            None => anyhow::bail!("no key-value store `{label}` in the runtime config"),
        };
        let store = stores
            .open(label, &store_config)
            .with_context(|| format!("app `{}`, key-value store `{label}`", app.name))?;
        if label == DEFAULT_STORE {
            for (key, value) in key_values {
                store.set(key, value.as_bytes()).await.with_context(|| {
                    format!(
                        "--key-value {key}=...: cannot set it in app `{}`'s default store",
                        app.name
                    )
                })?;
            }
        }
        opened.insert(label.clone(), (store, store_config.describe()));
    }
    Ok(opened)
}

/// Loads every manifest, collecting all their errors, and checks that app
/// names are unique across them.
fn load_apps(manifests: &[PathBuf], config: &RuntimeConfig) -> Result<Vec<App>, ConfigErrors> {
    let defaults = [PathBuf::from("spin.toml")];
    let manifests = if manifests.is_empty() {
        &defaults[..]
    } else {
        manifests
    };
    let mut apps: Vec<App> = Vec::new();
    let mut errors = Vec::new();
    for path in manifests {
        let path = if path.is_dir() {
            path.join("spin.toml")
        } else {
            path.clone()
        };
        match manifest::load_app_with_links(&path, config) {
            Ok(app) => {
                if let Some(other) = apps.iter().find(|a| a.name == app.name) {
                    errors.push(ConfigError {
                        file: path.clone(),
                        key: "application.name".into(),
                        line: None,
                        message: format!(
                            "app `{}` is already loaded from {}; app names must be unique",
                            app.name,
                            other.origin.display()
                        ),
                    });
                } else {
                    apps.push(app);
                }
            }
            Err(e) => errors.extend(e.0),
        }
    }
    if errors.is_empty() {
        Ok(apps)
    } else {
        Err(ConfigErrors(errors))
    }
}
