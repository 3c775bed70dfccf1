//! The wasm host: compiles components (cached across restarts), pre-
//! instantiates them, and runs each delivered event in a fresh instance taken
//! from wasmtime's pooling allocator, as Spin does per request.
//!
//! The guest's `pub` and `sub` calls are answered by a [`MessagingCtx`] the
//! dispatcher supplies per component, so this layer knows nothing of brokers.

pub mod bindings;
mod messaging;
mod stdio;

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
    /// How many instances may exist at once: the pool's size, and the bound
    /// handlers wait on (so a burst queues instead of failing to instantiate).
    pub max_instances: u32,
    /// How long one `on-receive` may run before it is stopped with a trap.
    pub handler_timeout: Duration,
}

impl Default for HostOptions {
    fn default() -> Self {
        HostOptions {
            cache: CacheSetting::Default,
            pooling: true,
            max_instances: 256,
            handler_timeout: Duration::from_secs(30),
        }
    }
}

/// The period of the epoch ticker that bounds handler run time.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// The per-instance state: WASI and the component's messaging context.
pub struct State {
    wasi: WasiCtx,
    table: ResourceTable,
    messaging: Arc<dyn MessagingCtx>,
}

impl WasiView for State {
    fn ctx(&mut self) -> WasiCtxView<'_> {
        WasiCtxView {
            ctx: &mut self.wasi,
            table: &mut self.table,
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
}

/// A component compiled and linked, ready to instantiate per message.
#[derive(Clone)]
pub struct PreparedComponent {
    pre: bindings::ServicePre<State>,
}

/// The wasmtime engine and linker shared by every app in the process.
pub struct Host {
    engine: Engine,
    linker: Linker<State>,
    options: HostOptions,
    instances: tokio::sync::Semaphore,
    cache: Option<wasmtime::Cache>,
    ticker_stop: Arc<AtomicBool>,
}

impl Host {
    /// Builds the engine: async support, epoch interruption, the pooling
    /// allocator and the compiled-code cache.
    pub fn new(options: HostOptions) -> anyhow::Result<Host> {
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
            let mut pool = PoolingAllocationConfig::new();
            let n = options.max_instances;
            pool.total_component_instances(n)
                .total_core_instances(n * 8)
                .total_memories(n * 2)
                .total_tables(n * 8)
                .total_stacks(n)
                .max_core_instances_per_component(32)
                .max_memories_per_component(4)
                .max_tables_per_component(16)
                .max_memory_size(256 << 20);
            config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        }
        let engine = Engine::new(&config)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        messaging::add_to_linker(&mut linker)?;

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
        let instances = tokio::sync::Semaphore::new(options.max_instances as usize);
        Ok(Host {
            engine,
            linker,
            options,
            instances,
            cache,
            ticker_stop,
        })
    }

    /// Compiles (or loads from the cache) and pre-instantiates a component;
    /// fails when it does not fit the `service` world.
    pub fn prepare(&self, path: &Path) -> anyhow::Result<PreparedComponent> {
        let component = Component::from_file(&self.engine, path)
            .with_context(|| format!("cannot load the component {}", path.display()))?;
        let pre = self.linker.instantiate_pre(&component).with_context(|| {
            format!(
                "{} imports something this host does not provide",
                path.display()
            )
        })?;
        let pre = bindings::ServicePre::new(pre).with_context(|| {
            format!(
                "{} does not export wasi:messaging/handler@0.1.0-draft",
                path.display()
            )
        })?;
        Ok(PreparedComponent { pre })
    }

    /// Runs `on-receive` for one event in a fresh instance. The outer error is
    /// a trap (or a failed instantiation), the inner one the guest's answer.
    pub async fn handle(
        &self,
        component: &PreparedComponent,
        who: &InstanceIdentity,
        event: Event,
    ) -> anyhow::Result<Result<(), MessagingError>> {
        let _slot = self
            .instances
            .acquire()
            .await
            .expect("the semaphore is never closed");
        let mut wasi = WasiCtx::builder();
        wasi.stdout(stdio::LogStream::new(&who.output, "stdout"))
            .stderr(stdio::LogStream::new(&who.output, "stderr"))
            .envs(&who.environment);
        let state = State {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            messaging: who.messaging.clone(),
        };
        let mut store = Store::new(&self.engine, state);
        let deadline = Instant::now() + self.options.handler_timeout;
        let timeout = self.options.handler_timeout;
        store.set_epoch_deadline(1);
        store.epoch_deadline_callback(move |_| {
            if Instant::now() >= deadline {
                wasmtime::bail!(
                    "on-receive ran longer than the handler timeout of {}",
                    humantime::format_duration(timeout)
                );
            }
            Ok(UpdateDeadline::Yield(1))
        });
        let instance = component.pre.instantiate_async(&mut store).await?;
        let result = instance
            .wasi_messaging_handler()
            .call_on_receive(&mut store, &event.into())
            .await?;
        Ok(result.map_err(MessagingError::from))
    }

    /// How many components were loaded from the compiled-code cache rather
    /// than compiled; `None` with the cache off.
    pub fn cache_hits(&self) -> Option<usize> {
        self.cache.as_ref().map(wasmtime::Cache::cache_hits)
    }
}

impl Drop for Host {
    fn drop(&mut self) {
        self.ticker_stop.store(true, Ordering::Relaxed);
    }
}
