//! The provider: loads apps and links, runs them, and stops them gracefully.

use crate::app::App;
use crate::broker::{Broker, LinkRegistry};
use crate::dispatch::{AppRuntime, Dispatcher, DrainReport};
use crate::host::{ComponentOutput, Grants, Host, HostOptions, PreparedComponent};
use crate::keyvalue::{DEFAULT_STORE, KeyValueStore, StoreConfig, Stores};
use crate::manifest::{self, ConfigError, ConfigErrors, LockedAppLocation, RuntimeConfig};
use crate::metrics::{LinkSample, StateSample};
use anyhow::Context as _;
use arc_swap::ArcSwap;
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

/// Apps loaded, links connected, ready to start; reloaded in place.
pub struct Provider {
    options: ProviderOptions,
    dispatcher: Arc<Dispatcher>,
    /// What runs now; a reload swaps it whole.
    loaded: Arc<ArcSwap<Loaded>>,
    /// Opened once per SQLite file for the provider's life, reloads included.
    stores: Stores,
    operations: Arc<Operations>,
    /// One reload at a time.
    reloading: tokio::sync::Mutex<()>,
    /// Links a reload replaced, closed once the old versions using them are
    /// done (or at shutdown).
    replaced_links: Arc<std::sync::Mutex<Vec<Arc<dyn Broker>>>>,
}

/// What runs now: the apps, the links they use and their key-value stores.
#[derive(Default)]
pub struct Loaded {
    apps: BTreeMap<String, Arc<AppRuntime>>,
    links: BTreeMap<String, Arc<LoadedLink>>,
    /// By (app, label).
    stores: BTreeMap<(String, String), OpenStore>,
}

impl Loaded {
    /// The apps, by name.
    pub fn apps(&self) -> &BTreeMap<String, Arc<AppRuntime>> {
        &self.apps
    }
}

/// What the operations routes (`/metrics`, `/readyz`) read, shared with
/// the endpoints that serve them.
pub struct Operations {
    /// What `/metrics` answers.
    registry: prometheus_client::registry::Registry,
    /// Set once every app has started.
    started: AtomicBool,
    loaded: Arc<ArcSwap<Loaded>>,
}

/// A connected link, with what people and metrics are told about it.
struct LoadedLink {
    description: String,
    link_type: &'static str,
    /// Its runtime-config table: while that is unchanged, a reload keeps
    /// the connection.
    settings: toml::Value,
    broker: Arc<dyn Broker>,
}

/// A key-value store an app opened, with the settings it was opened with.
#[derive(Clone)]
struct OpenStore {
    config: StoreConfig,
    store: Arc<dyn KeyValueStore>,
    description: String,
}

/// What a reload changed, for people.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct Reloaded {
    /// Apps loaded for the first time.
    pub added: Vec<String>,
    /// Apps whose manifest, components, links or stores changed.
    pub changed: Vec<String>,
    /// Apps no longer loaded.
    pub removed: Vec<String>,
    /// Links connected anew (new, or their settings changed).
    pub reconnected: Vec<String>,
    /// What the new versions could not start (a subscription the broker
    /// refused for good), with why; the rest runs.
    pub failed: Vec<String>,
}

impl Reloaded {
    /// Whether the reload found nothing to change.
    pub fn is_empty(&self) -> bool {
        *self == Reloaded::default()
    }
}

impl std::fmt::Display for Reloaded {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        if self.is_empty() {
            return f.write_str("nothing changed");
        }
        let mut parts = Vec::new();
        for (what, names) in [
            ("app added", &self.added),
            ("app reloaded", &self.changed),
            ("app removed", &self.removed),
            ("link connected anew", &self.reconnected),
        ] {
            if !names.is_empty() {
                let quoted: Vec<String> = names.iter().map(|n| format!("`{n}`")).collect();
                parts.push(format!("{what}: {}", quoted.join(", ")));
            }
        }
        if !self.failed.is_empty() {
            parts.push(format!("could not start: {}", self.failed.join("; ")));
        }
        f.write_str(&parts.join("; "))
    }
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

/// A set of apps read from the files, compiled and bound to connected
/// links, not yet running.
struct Assembled {
    loaded: Loaded,
    /// Apps new or changed (the others are the running versions).
    fresh: Vec<String>,
    /// Links connected for it (the others are the running connections).
    connected: Vec<String>,
}

impl Provider {
    /// Reads every manifest and the runtime config (reporting every mistake
    /// in them at once), compiles the components and connects the links the
    /// apps use. Nothing runs until [`Provider::start`].
    pub async fn load(options: ProviderOptions) -> anyhow::Result<Provider> {
        let host = Arc::new(Host::new(options.host.clone())?);
        let dispatcher = Dispatcher::new(host);
        let stores = Stores::default();
        let assembled = assemble(&options, &dispatcher, &stores, &Loaded::default()).await?;
        let loaded = Arc::new(ArcSwap::from_pointee(assembled.loaded));
        let operations = Arc::new(Operations {
            registry: dispatcher.metrics.registry(state_sampler(loaded.clone())),
            started: AtomicBool::new(false),
            loaded: loaded.clone(),
        });
        Ok(Provider {
            options,
            dispatcher,
            loaded,
            stores,
            operations,
            reloading: tokio::sync::Mutex::new(()),
            replaced_links: Arc::default(),
        })
    }

    /// Declares every app's channels, then starts every subscription from
    /// the manifests: nothing consumes (and so nothing publishes from a
    /// handler) before every channel is declared.
    pub async fn start(&self) -> anyhow::Result<()> {
        let loaded = self.loaded.load_full();
        for app in loaded.apps.values() {
            app.declare_channels().await?;
        }
        for app in loaded.apps.values() {
            app.start_subscriptions().await?;
        }
        self.operations.started.store(true, Ordering::Relaxed);
        Ok(())
    }

    /// Reads the files again and puts what changed in place, once
    /// [`Provider::start`] is done. Everything new is read, compiled,
    /// connected and declared first: any error leaves the running version
    /// as it was. Then, per changed app, subscriptions that stay the same
    /// move to the new version without a pause (new deliveries reach it,
    /// handlers under way finish on the old one), the others are stopped
    /// and started anew. Unchanged apps and links are left alone; a link
    /// whose settings changed is closed once the old versions using it
    /// are done.
    pub async fn reload(&self) -> anyhow::Result<Reloaded> {
        let _one_at_a_time = self.reloading.lock().await;
        let old = self.loaded.load_full();
        let assembled = assemble(&self.options, &self.dispatcher, &self.stores, &old).await?;
        for name in &assembled.fresh {
            if let Err(e) = assembled.loaded.apps[name].declare_channels().await {
                for name in &assembled.connected {
                    assembled.loaded.links[name].broker.close().await;
                }
                return Err(e);
            }
        }
        let Assembled {
            loaded,
            fresh,
            connected,
        } = assembled;
        let loaded = Arc::new(loaded);
        self.loaded.store(loaded.clone());

        let mut retiring = Vec::new();
        let mut report = Reloaded {
            reconnected: connected,
            ..Reloaded::default()
        };
        for name in &fresh {
            let app = &loaded.apps[name];
            let started = match old.apps.get(name) {
                Some(before) => {
                    report.changed.push(name.clone());
                    app.take_over(before)
                        .await
                        .map(|retired| retiring.push((before.clone(), retired)))
                }
                None => {
                    report.added.push(name.clone());
                    app.start_subscriptions().await
                }
            };
            if let Err(e) = started {
                report.failed.push(format!("{e:#}"));
            }
        }
        for (name, before) in &old.apps {
            if !loaded.apps.contains_key(name) {
                retiring.push((before.clone(), before.remove()));
                report.removed.push(name.clone());
            }
        }
        self.dispatcher.host().forget_other_components(
            loaded
                .apps
                .values()
                .flat_map(|app| app.prepared_components()),
        );
        // Links no longer used close once the old versions are done.
        let unused: Vec<Arc<dyn Broker>> = old
            .links
            .iter()
            .filter(|(name, link)| {
                loaded
                    .links
                    .get(*name)
                    .is_none_or(|now| !Arc::ptr_eq(now, link))
            })
            .map(|(_, link)| link.broker.clone())
            .collect();
        self.replaced_links
            .lock()
            .unwrap()
            .extend(unused.iter().cloned());
        if !retiring.is_empty() || !unused.is_empty() {
            let (stop, replaced) = (self.dispatcher.stopping(), self.replaced_links.clone());
            tokio::spawn(async move {
                for (app, retired) in retiring {
                    tokio::select! {
                        _ = retired.finished(&app) => {}
                        // The shutdown closes them once everything is done.
                        _ = stop.cancelled() => return,
                    }
                }
                replaced
                    .lock()
                    .unwrap()
                    .retain(|link| !unused.iter().any(|u| Arc::ptr_eq(u, link)));
                for link in unused {
                    link.close().await;
                }
            });
        }
        Ok(report)
    }

    /// The files a reload reads: manifests (or the locked app), the
    /// components' wasm files and the runtime configs; what `--watch`
    /// watches.
    pub fn watched_files(&self) -> Vec<PathBuf> {
        let loaded = self.loaded.load();
        let mut files: BTreeSet<PathBuf> = BTreeSet::new();
        match &self.options.locked {
            Some(locked) => {
                files.insert(locked.lock.clone());
            }
            None => files.extend(manifest_paths(&self.options.manifests)),
        }
        for app in loaded.apps.values() {
            files.insert(app.app.origin.clone());
            files.extend(app.app.components.iter().map(|c| c.source.clone()));
        }
        files.extend(self.options.runtime_config.clone());
        files.extend(self.options.messaging_runtime_config.clone());
        files.into_iter().collect()
    }

    /// What the operations routes read.
    pub fn operations(&self) -> &Arc<Operations> {
        &self.operations
    }

    /// An app by name, as it runs now.
    pub fn app(&self, name: &str) -> Option<Arc<AppRuntime>> {
        self.loaded.load().apps.get(name).cloned()
    }

    /// A connected link by name, as it runs now.
    pub fn link(&self, name: &str) -> Option<Arc<dyn Broker>> {
        let loaded = self.loaded.load();
        loaded.links.get(name).map(|link| link.broker.clone())
    }

    /// What runs now: the apps, by name (a reload swaps it whole).
    pub fn loaded(&self) -> &Arc<ArcSwap<Loaded>> {
        &self.loaded
    }

    /// What was loaded, for people: apps, channels, components, links.
    pub fn summary(&self) -> String {
        let loaded = self.loaded.load();
        let mut out = String::new();
        for app in loaded.apps.values() {
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
        for (name, link) in &loaded.links {
            let _ = writeln!(out, "  {name:<16} {}", link.description);
        }
        if !loaded.stores.is_empty() {
            let _ = writeln!(out, "Key-value stores:");
            for ((app, label), open) in &loaded.stores {
                let _ = writeln!(out, "  {app}/{label:<12} {}", open.description);
            }
        }
        out
    }

    /// Stops taking messages, hands back what was taken but not started,
    /// lets in-flight handlers finish within `deadline`, then closes the
    /// links (sending the acknowledgements given).
    pub async fn shutdown(&self, deadline: std::time::Duration) -> DrainReport {
        let _no_reload = self.reloading.lock().await;
        let report = self.dispatcher.drain(deadline).await;
        for link in self.loaded.load().links.values() {
            link.broker.close().await;
        }
        let replaced = std::mem::take(&mut *self.replaced_links.lock().unwrap());
        for link in replaced {
            link.close().await;
        }
        report
    }
}

impl Operations {
    /// Whether every app started and every link is connected, naming what is not.
    pub fn readiness(&self) -> Readiness {
        let started = self.started.load(Ordering::Relaxed);
        let loaded = self.loaded.load();
        let links_down: Vec<String> = loaded
            .links
            .iter()
            .filter(|(_, link)| !link.broker.connectivity().connected)
            .map(|(name, _)| name.clone())
            .collect();
        let channels_unattached: Vec<String> = loaded
            .apps
            .values()
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

/// Reads the apps' and links' state, as they run now, for each scrape.
fn state_sampler(loaded: Arc<ArcSwap<Loaded>>) -> impl Fn() -> StateSample + Send + Sync + 'static {
    move || {
        let loaded = loaded.load();
        StateSample {
            components: loaded
                .apps
                .values()
                .flat_map(|app| app.component_samples())
                .collect(),
            links: loaded
                .links
                .iter()
                .map(|(name, link)| {
                    let state = link.broker.connectivity();
                    LinkSample {
                        link: name.clone(),
                        link_type: link.link_type,
                        up: state.connected,
                        reconnects: state.reconnects,
                    }
                })
                .collect(),
        }
    }
}

/// Reads the files, compiles the components and connects the links the
/// apps use, reusing from `running` what did not change: a link whose
/// settings are the same, an app whose manifest, components, links and
/// stores are all the same. Nothing of `running` is touched; on an error,
/// the links connected here are closed again.
async fn assemble(
    options: &ProviderOptions,
    dispatcher: &Arc<Dispatcher>,
    stores: &Stores,
    running: &Loaded,
) -> anyhow::Result<Assembled> {
    let registry = LinkRegistry::default();
    let mut config = RuntimeConfig::load_files(
        options.runtime_config.as_deref(),
        options.messaging_runtime_config.as_deref(),
        &registry,
    )?;
    let output = options.output.clone().with_runtime_config(&config);
    let apps = match &options.locked {
        Some(locked) => vec![manifest::load_locked_app_with_links(locked, &config)?],
        None => load_apps(&options.manifests, &config)?,
    };

    // Compiled (or found compiled) and checked before anything connects.
    let host = dispatcher.host();
    let mut compiled = HashMap::new();
    for app in &apps {
        for c in &app.components {
            let (host, source) = (host.clone(), c.source.clone());
            let component = tokio::task::spawn_blocking(move || host.prepare(&source))
                .await?
                .with_context(|| format!("app `{}`, component `{}`", app.name, c.id))?;
            compiled.insert((app.name.clone(), c.id.clone()), component);
        }
    }

    let mut links = BTreeMap::new();
    let mut connected = Vec::new();
    for app in &apps {
        for channel in app.channels.values() {
            let name = &channel.link;
            if links.contains_key(name) {
                continue;
            }
            let settings = config
                .link_settings
                .remove(name)
                .unwrap_or_else(|| toml::Value::Table(Default::default()));
            if let Some(link) = running.links.get(name).filter(|l| l.settings == settings) {
                links.insert(name.clone(), link.clone());
                continue;
            }
            let prepared = &config.links[name];
            let broker = match prepared.connect(name).await {
                Ok(broker) => broker,
                Err(e) => {
                    for name in &connected {
                        let link: &Arc<LoadedLink> = &links[name];
                        link.broker.close().await;
                    }
                    return Err(e.context(format!(
                        "cannot connect link `{name}` ({})",
                        prepared.link_type()
                    )));
                }
            };
            dispatcher.metrics.add_link(name, prepared.link_type());
            connected.push(name.clone());
            let link = LoadedLink {
                description: prepared.describe(),
                link_type: prepared.link_type(),
                settings,
                broker,
            };
            links.insert(name.clone(), Arc::new(link));
        }
    }

    let new_links: Vec<Arc<dyn Broker>> = connected
        .iter()
        .map(|name| links[name].broker.clone())
        .collect();
    let context = Binding {
        config: &config,
        output: &output,
        options,
        dispatcher,
        stores,
        running,
        compiled: &compiled,
    };
    match bind_apps(apps, links, &context).await {
        Ok((loaded, fresh)) => Ok(Assembled {
            loaded,
            fresh,
            connected,
        }),
        Err(e) => {
            for link in new_links {
                link.close().await;
            }
            Err(e)
        }
    }
}

/// What binding apps reads: the files as read now, and what runs.
#[derive(Clone, Copy)]
struct Binding<'a> {
    config: &'a RuntimeConfig,
    output: &'a OutputOptions,
    options: &'a ProviderOptions,
    dispatcher: &'a Arc<Dispatcher>,
    stores: &'a Stores,
    running: &'a Loaded,
    /// By (app, component).
    compiled: &'a HashMap<(String, String), PreparedComponent>,
}

/// Binds the apps to `links` and their stores, keeping from what runs every
/// app that did not change. By name: the apps, and which are new or changed.
async fn bind_apps(
    apps: Vec<App>,
    links: BTreeMap<String, Arc<LoadedLink>>,
    cx: &Binding<'_>,
) -> anyhow::Result<(Loaded, Vec<String>)> {
    let Binding {
        config,
        output,
        options,
        dispatcher,
        stores,
        running,
        compiled,
    } = *cx;
    let mut loaded = Loaded {
        links,
        ..Loaded::default()
    };
    let mut fresh = Vec::new();
    let app_count = apps.len();
    let first_start = running.apps.is_empty();
    for app in apps {
        let state_dir = output.state_dir(&app, app_count);
        let app_stores = open_stores(
            &app,
            config,
            stores,
            state_dir,
            &running.stores,
            // Spin's `--key-value` seeds the stores at start, not at reloads.
            if first_start {
                &options.key_values
            } else {
                &[]
            },
        )
        .await?;
        let code = |c: &crate::app::ComponentSpec| &compiled[&(app.name.clone(), c.id.clone())];
        let before = running.apps.get(&app.name);
        let unchanged = before.is_some_and(|before| {
            before.app == app
                && app.components.iter().all(|c| {
                    before
                        .instances(&c.id)
                        .is_some_and(|i| i.component().same_code(code(c)))
                })
                && app.channels.values().all(|c| {
                    running
                        .links
                        .get(&c.link)
                        .is_some_and(|l| Arc::ptr_eq(l, &loaded.links[&c.link]))
                })
                && app_stores.iter().all(|(label, open)| {
                    running
                        .stores
                        .get(&(app.name.clone(), label.clone()))
                        .is_some_and(|was| Arc::ptr_eq(&was.store, &open.store))
                })
        });
        for (label, open) in &app_stores {
            loaded
                .stores
                .insert((app.name.clone(), label.clone()), open.clone());
        }
        if let (true, Some(before)) = (unchanged, before) {
            loaded.apps.insert(app.name.clone(), before.clone());
            continue;
        }
        let mut prepared = HashMap::new();
        for c in &app.components {
            let component_output = output.output(&app, &c.id, app_count)?;
            let granted = c
                .key_value_stores
                .iter()
                .filter_map(|label| Some((label.clone(), app_stores.get(label)?.store.clone())))
                .collect();
            let grants = Grants::new(
                &app.name,
                &c.id,
                c.variables.clone(),
                granted,
                c.allowed_outbound_hosts.clone(),
            );
            prepared.insert(c.id.clone(), (code(c).clone(), component_output, grants));
        }
        let app_links = loaded
            .links
            .iter()
            .map(|(name, link)| (name.clone(), link.broker.clone()))
            .collect();
        let name = app.name.clone();
        let runtime = AppRuntime::new(
            app,
            &app_links,
            prepared,
            dispatcher.clone(),
            before.map(|b| &**b),
        )?;
        fresh.push(name.clone());
        loaded.apps.insert(name, runtime);
    }
    Ok((loaded, fresh))
}

/// Opens the key-value stores an app's components name, by label:
/// `default` in its state directory unless the runtime config rebinds it.
/// A store the app has open already (in `running`) with the same settings
/// is kept. `key_values` are set in `default` (opened for them if no
/// component names it).
async fn open_stores(
    app: &App,
    config: &RuntimeConfig,
    stores: &Stores,
    state_dir: Option<PathBuf>,
    running: &BTreeMap<(String, String), OpenStore>,
    key_values: &[(String, String)],
) -> anyhow::Result<BTreeMap<String, OpenStore>> {
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
        if let Some(open) = running
            .get(&(app.name.clone(), label.clone()))
            .filter(|open| open.config == store_config)
        {
            opened.insert(label.clone(), open.clone());
            continue;
        }
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
        let description = store_config.describe();
        opened.insert(
            label.clone(),
            OpenStore {
                config: store_config,
                store,
                description,
            },
        );
    }
    Ok(opened)
}

/// Loads every manifest, collecting all their errors, and checks that app
/// names are unique across them.
fn load_apps(manifests: &[PathBuf], config: &RuntimeConfig) -> Result<Vec<App>, ConfigErrors> {
    let mut apps: Vec<App> = Vec::new();
    let mut errors = Vec::new();
    for path in manifest_paths(manifests) {
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

/// The spin.toml files `up` was given (a directory means its spin.toml; none
/// means `./spin.toml`).
fn manifest_paths(manifests: &[PathBuf]) -> Vec<PathBuf> {
    if manifests.is_empty() {
        return vec![PathBuf::from("spin.toml")];
    }
    manifests
        .iter()
        .map(|path| match path.is_dir() {
            true => path.join("spin.toml"),
            false => path.clone(),
        })
        .collect()
}
