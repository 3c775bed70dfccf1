//! The wasm host: compiles components (cached across restarts), pre-
//! instantiates them, and runs each delivered event in a fresh instance taken
//! from wasmtime's pooling allocator, as Spin does per request.
//!
//! Components are kept from hurting each other: the pool has a share for
//! every component (its `max_in_flight`), each instance has a memory limit
//! (its component's `max_memory`), and a guest that runs long is moved to a
//! slower CPU lane (see [`lanes`]) and stopped at the handler timeout.
//!
//! The guest's `pub` and `sub` calls are answered by a [`MessagingCtx`] the
//! dispatcher supplies per component, so this layer knows nothing of brokers.
//! Besides messaging, a component gets what Spin gives one: outbound HTTP to
//! its `allowed_outbound_hosts`, its variables, and the key-value stores of
//! its `key_value_stores` (its [`Grants`]).

pub mod bindings;
mod grants;
mod imports;
mod keyvalue;
mod lanes;
mod messaging;
mod outbound_http;
mod stdio;
mod variables;

pub use grants::Grants;
pub use messaging::{MessagingCtx, MessagingError};
pub use stdio::ComponentOutput;

use crate::cloudevents::Event;
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};
use std::time::{Duration, Instant};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::error::Context as _;
use wasmtime::{
    Config, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store, UpdateDeadline,
};
use wasmtime_wasi::{WasiCtx, WasiCtxView, WasiView};
use wasmtime_wasi_http::{WasiHttpCtx, WasiHttpCtxView, WasiHttpView};

/// Where compiled components are cached.
#[derive(Clone, Debug, Default)]
pub enum CacheSetting {
    /// wasmtime's default cache directory (`~/.cache/wasmtime`).
    #[default]
    Default,
    /// A wasmtime cache config file (Spin's `--cache`).
    File(PathBuf),
    /// Compile every time.
    Disabled,
}

/// How the host runs components.
#[derive(Clone, Debug)]
pub struct HostOptions {
    /// The compiled-code cache.
    pub cache: CacheSetting,
    /// Instances come from a pre-allocated pool (fast); off, each instance
    /// maps its memory anew (the baseline the benchmark compares against).
    pub pooling: bool,
    /// How long one `on-receive` may run, from the moment its instance is
    /// created, before it is stopped.
    pub handler_timeout: Duration,
}

impl Default for HostOptions {
    fn default() -> Self {
        HostOptions {
            cache: CacheSetting::Default,
            pooling: true,
            handler_timeout: Duration::from_secs(30),
        }
    }
}

/// What the instance pool must hold: the sum of the components' concurrency
/// bounds, so that no component ever waits for another's instances, and the
/// largest memory limit among them.
#[derive(Clone, Copy, Debug)]
pub struct PoolSize {
    /// Instances that may exist at once.
    pub instances: u32,
    /// The largest linear memory an instance may grow to, in bytes.
    pub max_memory: u64,
}

/// The most instances one pool may hold: each reserves address space for
/// its memories, and 2,048 of them reserve about 16 TiB of the 128 TiB a
/// process has.
pub const MAX_POOL_INSTANCES: u32 = 2048;

/// The period of the epoch ticker that bounds handler run time.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// The per-instance state: WASI, the component's messaging context and
/// grants, its memory limit, and what the run learnt about the links.
pub struct State {
    wasi: WasiCtx,
    table: ResourceTable,
    messaging: Arc<dyn MessagingCtx>,
    grants: Arc<Grants>,
    http: WasiHttpCtx,
    outbound: outbound_http::OutboundHttp,
    /// Key-value stores and CAS operations open now.
    kv_handles: usize,
    memory: MemoryLimit,
    /// The first `service-unavailable` or `connection-lost` a messaging call
    /// of this run got.
    link_trouble: Option<String>,
}

/// Stops an instance whose memory would grow past its component's limit,
/// with an error that says so (and how to raise it).
struct MemoryLimit {
    max: u64,
}

impl wasmtime::ResourceLimiter for MemoryLimit {
    fn memory_growing(
        &mut self,
        _current: usize,
        desired: usize,
        _maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        if desired as u64 > self.max {
            wasmtime::bail!(
                "the component's memory would grow to {}, over its limit of {} (`max_memory` in its [[trigger.messaging]] entry)",
                mib(desired as u64),
                mib(self.max)
            );
        }
        Ok(true)
    }

    fn table_growing(
        &mut self,
        _current: usize,
        desired: usize,
        maximum: Option<usize>,
    ) -> wasmtime::Result<bool> {
        Ok(maximum.is_none_or(|max| desired <= max))
    }
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
        }
    }
}

impl WasiHttpView for State {
    fn http(&mut self) -> WasiHttpCtxView<'_> {
        WasiHttpCtxView {
            ctx: &mut self.http,
            table: &mut self.table,
            hooks: &mut self.outbound,
        }
    }
}

/// What one instance runs as: names for its log lines, its environment and
/// the context its messaging calls go to.
#[derive(Clone)]
pub struct InstanceIdentity {
    /// The app's name.
    pub app: String,
    /// The component id.
    pub component: String,
    /// Environment variables granted by the manifest.
    pub environment: Vec<(String, String)>,
    /// Answers the guest's `pub` and `sub` calls.
    pub messaging: Arc<dyn MessagingCtx>,
    /// Where its stdout and stderr go.
    pub output: Arc<ComponentOutput>,
    /// The largest its linear memory may grow, in bytes.
    pub max_memory: u64,
    /// Its variables, key-value stores and outbound hosts.
    pub grants: Arc<Grants>,
}

/// A size for people: whole MiB when it is one.
fn mib(bytes: u64) -> String {
    if bytes.is_multiple_of(1 << 20) {
        format!("{} MiB", bytes >> 20)
    } else {
        format!("{:.1} MiB", bytes as f64 / f64::from(1 << 20))
    }
}

/// Why an `on-receive` run did not succeed.
#[derive(Clone, Debug)]
pub struct HandlerFailure {
    /// What happened: the guest's error, the trap, the timeout, or why the
    /// instance could not be created.
    pub error: String,
    /// Set when a messaging call of the run found a link down
    /// (`service-unavailable`, `connection-lost`): then the failure may be
    /// the provider's, not the guest's.
    pub link_trouble: Option<String>,
}

/// A component compiled and linked, ready to instantiate per message.
#[derive(Clone)]
pub struct PreparedComponent {
    pre: bindings::ServicePre<State>,
    /// Whether its handlers have lately run long.
    history: Arc<lanes::History>,
}

/// The wasmtime engine and linker shared by every app in the process.
pub struct Host {
    engine: Engine,
    linker: Linker<State>,
    options: HostOptions,
    lanes: Arc<lanes::Lanes>,
    cache: Option<wasmtime::Cache>,
    ticker_stop: Arc<AtomicBool>,
}

impl Host {
    /// Builds the engine: async support, epoch interruption, the pooling
    /// allocator sized for `pool`, and the compiled-code cache.
    pub fn new(options: HostOptions, pool: PoolSize) -> anyhow::Result<Host> {
        let mut config = Config::new();
        config.wasm_component_model(true).epoch_interruption(true);
        let cache = match &options.cache {
            CacheSetting::Disabled => None,
            CacheSetting::Default => Some(
                wasmtime::Cache::from_file(None)
                    .context("cannot set up the compiled-code cache")?,
            ),
            CacheSetting::File(path) => Some(
                wasmtime::Cache::from_file(Some(path))
                    .with_context(|| format!("cannot read the cache config {}", path.display()))?,
            ),
        };
        config.cache(cache.clone());
        if options.pooling {
            anyhow::ensure!(
                (1..=MAX_POOL_INSTANCES).contains(&pool.instances),
                "the components may run {} instances at once (the sum of their `max_in_flight`); one process holds at most {MAX_POOL_INSTANCES}: lower `max_in_flight`, or run the apps in several processes",
                pool.instances
            );
            let n = pool.instances;
            let mut config_pool = PoolingAllocationConfig::new();
            config_pool
                .total_component_instances(n)
                .total_core_instances(n * 16)
                .total_memories(n * 2)
                .total_tables(n * 8)
                .total_stacks(n)
                .max_core_instances_per_component(32)
                .max_memories_per_component(4)
                .max_tables_per_component(16)
                .max_memory_size(usize::try_from(pool.max_memory).unwrap_or(usize::MAX));
            config.allocation_strategy(InstanceAllocationStrategy::Pooling(config_pool));
        }
        let engine = Engine::new(&config)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
        messaging::add_to_linker(&mut linker)?;
        add_platform_to_linker(&mut linker)?;

        let ticker_stop = Arc::new(AtomicBool::new(false));
        let (weak, stop) = (engine.weak(), ticker_stop.clone());
        std::thread::Builder::new()
            .name("epoch-ticker".into())
            .spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    match weak.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                }
            })?;
        Ok(Host {
            engine,
            linker,
            options,
            lanes: lanes::Lanes::new(),
            cache,
            ticker_stop,
        })
    }

    /// Compiles (or loads from the cache) and pre-instantiates a component;
    /// fails when it does not fit the `service` world.
    pub fn prepare(&self, path: &Path) -> anyhow::Result<PreparedComponent> {
        let component = Component::from_file(&self.engine, path)
            .with_context(|| format!("cannot load the component {}", path.display()))?;
        let pre = match self.linker.instantiate_pre(&component) {
            Ok(pre) => pre,
            Err(e) => {
                return Err(match imports::unhosted(&self.engine, &component) {
                    Some(why) => anyhow::anyhow!("{} {why}", path.display()),
                    None => anyhow::Error::from(e).context(format!(
                        "{} cannot be linked with what this host provides",
                        path.display()
                    )),
                });
            }
        };
        let pre = bindings::ServicePre::new(pre).with_context(|| {
            format!(
                "{} does not export wasi:messaging/handler@0.1.0-draft",
                path.display()
            )
        })?;
        Ok(PreparedComponent {
            pre,
            history: Arc::default(),
        })
    }

    /// Runs `on-receive` for one event in a fresh instance, within the
    /// handler timeout (counted from the instance's creation).
    pub async fn handle(
        &self,
        component: &PreparedComponent,
        who: &InstanceIdentity,
        event: Event,
    ) -> Result<(), HandlerFailure> {
        let mut wasi = WasiCtx::builder();
        wasi.stdout(stdio::LogStream::new(&who.output, "stdout"))
            .stderr(stdio::LogStream::new(&who.output, "stderr"))
            .envs(&who.environment);
        let timeout = self.options.handler_timeout;
        let deadline = Instant::now() + timeout;
        let state = State {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            messaging: who.messaging.clone(),
            grants: who.grants.clone(),
            http: WasiHttpCtx::new(),
            outbound: outbound_http::OutboundHttp {
                grants: who.grants.clone(),
                deadline,
            },
            kv_handles: 0,
            memory: MemoryLimit {
                max: who.max_memory,
            },
            link_trouble: None,
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.memory);
        let timed_out = move || {
            format!(
                "on-receive ran longer than the handler timeout of {}",
                humantime::format_duration(timeout)
            )
        };
        let run = self.lanes.enter(&component.history);
        let on_tick = run.clone();
        // A run that starts in the long lane waits for its turn before it
        // runs at all.
        store.set_epoch_deadline(if run.starts_long() { 0 } else { 1 });
        // Runs at every epoch tick while the guest executes: a guest that
        // computes past the deadline is stopped here, and one that has run a
        // while waits for the long lane's turn.
        store.epoch_deadline_callback(move |_| {
            if Instant::now() >= deadline {
                wasmtime::bail!(timed_out());
            }
            Ok(match on_tick.tick() {
                None => UpdateDeadline::Yield(1),
                Some(turn) => UpdateDeadline::YieldCustom(1, Box::pin(turn)),
            })
        });
        let call = async {
            let instance = component.pre.instantiate_async(&mut store).await?;
            instance
                .wasi_messaging_handler()
                .call_on_receive(&mut store, &event.into())
                .await
        };
        // A guest waiting in a host call (a sleep, a slow broker) is stopped
        // here.
        let result = tokio::time::timeout(timeout, call).await;
        run.finish();
        let error = match result {
            Ok(Ok(Ok(()))) => return Ok(()),
            Ok(Ok(Err(e))) => format!("on-receive returned an error: {}", MessagingError::from(e)),
            Ok(Err(trap)) => {
                tracing::debug!(app = %who.app, component = %who.component, "on-receive trapped: {trap:?}");
                format!("on-receive trapped: {}", trap.root_cause())
            }
            Err(_) => timed_out(),
        };
        Err(HandlerFailure {
            error,
            link_trouble: store.into_data().link_trouble,
        })
    }

    /// How many components were loaded from the compiled-code cache rather
    /// than compiled; `None` with the cache off.
    pub fn cache_hits(&self) -> Option<usize> {
        self.cache.as_ref().map(wasmtime::Cache::cache_hits)
    }
}

/// Spin's variables and key-value interfaces, and the WASI proposals for
/// settings and state (see `wit/deps/README.md`).
fn add_platform_to_linker(linker: &mut Linker<State>) -> anyhow::Result<()> {
    use wasmtime::component::HasSelf;
    bindings::spin_variables::add_to_linker::<State, HasSelf<State>>(linker, |s| s)?;
    bindings::spin_key_value::add_to_linker::<State, HasSelf<State>>(linker, |s| s)?;
    bindings::kv_store::add_to_linker::<State, HasSelf<State>>(linker, |s| s)?;
    bindings::kv_atomics::add_to_linker::<State, HasSelf<State>>(linker, |s| s)?;
    bindings::kv_batch::add_to_linker::<State, HasSelf<State>>(linker, |s| s)?;
    bindings::wasi_config::add_to_linker::<State, HasSelf<State>>(linker, |s| s)?;
    wasmtime_wasi_config::add_to_linker(linker, |s: &mut State| {
        wasmtime_wasi_config::WasiConfig::from(&s.grants.config)
    })?;
    Ok(())
}

impl Drop for Host {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}
