//! The wasm host: compiles components (once per distinct component in the
//! process, cached across restarts), pre-instantiates them, and runs each
//! delivered event in an instance of its component: a warm one kept from an
//! earlier event where the component's reuse settings allow, else a new one
//! from wasmtime's pooling allocator (see [`instances`]).
//!
//! Components are kept from hurting each other: the pool's room is shared
//! fairly between the components that are running (see [`budget`]), each
//! instance has a memory limit (its component's `max_memory`), and a guest
//! that runs long is moved to a slower CPU lane (see [`lanes`]) and stopped
//! at the handler timeout.
//!
//! The guest's `pub` and `sub` calls are answered by a [`MessagingCtx`] the
//! dispatcher supplies per component, so this layer knows nothing of brokers.
//! Besides messaging, a component gets what Spin gives one: outbound HTTP to
//! its `allowed_outbound_hosts`, its variables, and the key-value stores of
//! its `key_value_stores` (its [`Grants`]).

pub mod bindings;
mod budget;
mod grants;
mod imports;
mod instances;
mod keyvalue;
mod lanes;
mod messaging;
mod outbound_http;
mod stdio;
mod variables;

pub use grants::Grants;
pub use instances::Instances;
pub use messaging::{MessagingCtx, MessagingError};
pub use stdio::ComponentOutput;

use crate::app::InstanceReuse;
use crate::cloudevents::Event;
use crate::stages::{self, Stage};
use instances::Afterwards;
use sha2::Digest as _;
use std::collections::HashMap;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};
use wasmtime::component::{Component, Linker, ResourceTable};
use wasmtime::error::Context as _;
use wasmtime::{
    Config, Enabled, Engine, InstanceAllocationStrategy, PoolingAllocationConfig, Store,
    UpdateDeadline,
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
    /// created or taken warm, before it is stopped.
    pub handler_timeout: Duration,
    /// How many instances may be alive at once in the process (busy or
    /// warm), shared by every component (Spin's `SPIN_MAX_INSTANCE_COUNT`).
    pub max_instances: u32,
    /// How components' instances are reused where their entries do not say.
    pub reuse: InstanceReuse,
    /// A memory limit for every instance, below components' own `max_memory`
    /// (Spin's `--max-instance-memory`).
    pub max_instance_memory: Option<u64>,
    /// Compile guests with DWARF debug info, for gdb or lldb (Spin's `--debug-info`).
    pub debug_info: bool,
}

impl Default for HostOptions {
    fn default() -> Self {
        HostOptions {
            cache: CacheSetting::Default,
            pooling: true,
            handler_timeout: Duration::from_secs(30),
            max_instances: DEFAULT_MAX_INSTANCES,
            reuse: InstanceReuse::default(),
            max_instance_memory: None,
            debug_info: false,
        }
    }
}

/// The pool's room by default: Spin's.
pub const DEFAULT_MAX_INSTANCES: u32 = 1000;

/// The most instances one pool may hold: each reserves address space for
/// its memories (two of 4 GiB and their guards), and 4,096 of them reserve
/// about 40 TiB of the 128 TiB a process has.
pub const MAX_POOL_INSTANCES: u32 = 4096;

/// The largest linear memory any instance may have: wasm32's 4 GiB. Each
/// component's own `max_memory` is enforced per instance, below it.
const POOL_MAX_MEMORY: usize = 4 << 30;

/// The interface a component's handler is exported in.
const HANDLER_INTERFACE: &str = "wasi:messaging/handler@0.1.0-draft";

/// The period of the epoch ticker that bounds handler run time.
const EPOCH_TICK: Duration = Duration::from_millis(10);

/// Epoch ticks between two sweeps of idle instances past their timeout.
const TICKS_PER_SWEEP: u32 = 10;

/// The per-instance state: WASI, the component's messaging context and
/// grants, its memory limit, and what the current event's run learnt.
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
    /// The run of the event being handled.
    run: Run,
}

/// What one event's run needs besides the instance.
struct Run {
    /// When the handler timeout ends.
    deadline: Instant,
    /// The handler timeout, for its error message.
    timeout: Duration,
    /// Its turn in the CPU lanes.
    lane: Arc<lanes::Run>,
    /// The first `service-unavailable` or `connection-lost` a messaging
    /// call of this run got.
    link_trouble: Option<String>,
    /// Time spent in `publish` calls, when stages are timed.
    publishing: Duration,
    /// The handler run's trace context (`traceparent`, `tracestate`), when
    /// traces are on: what its publishes and outbound requests carry.
    trace: Option<Arc<(String, String)>>,
}

impl State {
    /// Starts the run of the next event.
    fn begin(
        &mut self,
        deadline: Instant,
        lane: Arc<lanes::Run>,
        trace: Option<Arc<(String, String)>>,
    ) {
        self.run.deadline = deadline;
        self.run.lane = lane;
        self.run.link_trouble = None;
        self.run.publishing = Duration::ZERO;
        self.outbound.deadline = deadline;
        self.outbound.trace.clone_from(&trace);
        self.run.trace = trace;
    }

    fn timed_out(&self) -> String {
        format!(
            "on-receive ran longer than the handler timeout of {}",
            humantime::format_duration(self.run.timeout)
        )
    }
}

/// Stops an instance whose memory would grow past its limit, with an error
/// that says so (and which setting raises it).
struct MemoryLimit {
    max: u64,
    /// The setting `max` comes from.
    set_by: &'static str,
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
                "the component's memory would grow to {}, over its limit of {} ({})",
                mib(desired as u64),
                mib(self.max),
                self.set_by
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

/// What a component's instances run as: names for their log lines, their
/// environment and the context their messaging calls go to.
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

/// A component compiled and linked, ready to instantiate; shared by every
/// component of the process made from the same bytes.
#[derive(Clone)]
pub struct PreparedComponent {
    pre: bindings::ServicePre<State>,
    /// Where its `on-receive` export is, found once.
    on_receive: wasmtime::component::ComponentExportIndex,
    /// The SHA-256 of its bytes: what tells a reload whether it changed.
    digest: [u8; 32],
}

impl PreparedComponent {
    /// Whether both were made from the same bytes.
    pub fn same_code(&self, other: &PreparedComponent) -> bool {
        self.digest == other.digest
    }
}

/// `on-receive` as the host calls it: the event lowered from a borrow.
type OnReceive<'a> =
    wasmtime::component::TypedFunc<(messaging::EventRef<'a>,), (Result<(), bindings::WitError>,)>;

/// The wasmtime engine and linker shared by every app in the process.
pub struct Host {
    engine: Engine,
    linker: Linker<State>,
    options: HostOptions,
    lanes: Arc<lanes::Lanes>,
    cache: Option<wasmtime::Cache>,
    budget: Arc<budget::Budget>,
    /// Components compiled so far, by the SHA-256 of their bytes, so that
    /// a thousand apps of one component share its code.
    prepared: Mutex<HashMap<[u8; 32], PreparedComponent>>,
    ticker_stop: Arc<AtomicBool>,
}

impl Host {
    /// Builds the engine: async support, epoch interruption, the pooling
    /// allocator with room for `max_instances`, and the compiled-code cache.
    pub fn new(options: HostOptions) -> anyhow::Result<Host> {
        let mut config = Config::new();
        config
            .wasm_component_model(true)
            .epoch_interruption(true)
            .debug_info(options.debug_info);
        // `perf` names guest functions when this is set: wasmtime writes
        // /tmp/perf-<pid>.map (see the README's profiling commands).
        if std::env::var_os("TRIGGER_MESSAGING_PERF_MAP").is_some() {
            config.profiler(wasmtime::ProfilingStrategy::PerfMap);
        }
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
        let n = options.max_instances;
        anyhow::ensure!(
            (1..=MAX_POOL_INSTANCES).contains(&n),
            "--max-instances must be between 1 and {MAX_POOL_INSTANCES} (got {n})"
        );
        if options.pooling {
            let mut pool = PoolingAllocationConfig::new();
            pool.total_component_instances(n)
                .total_core_instances(n * 16)
                .total_memories(n * 2)
                .total_tables(n * 8)
                .total_stacks(n)
                .max_core_instances_per_component(32)
                .max_memories_per_component(4)
                .max_tables_per_component(16)
                .max_memory_size(POOL_MAX_MEMORY)
                // A slot that a fresh instance of the same component takes
                // next is reset with memset where the pages were touched
                // (found with PAGEMAP_SCAN where the kernel has it), not
                // unmapped and faulted in again: Spin's figures. The scan
                // takes up to 1024 dirty regions (vendor/README.md).
                .linear_memory_keep_resident(2 << 20)
                .table_keep_resident(1 << 19)
                .pagemap_scan(Enabled::Auto);
            config.allocation_strategy(InstanceAllocationStrategy::Pooling(pool));
        }
        let engine = Engine::new(&config)?;
        let mut linker = Linker::new(&engine);
        wasmtime_wasi::p2::add_to_linker_async(&mut linker)?;
        wasmtime_wasi_http::p2::add_only_http_to_linker_async(&mut linker)?;
        messaging::add_to_linker(&mut linker)?;
        add_platform_to_linker(&mut linker)?;

        let budget = budget::Budget::new(n as usize);
        let ticker_stop = Arc::new(AtomicBool::new(false));
        let (weak, stop, sweep) = (engine.weak(), ticker_stop.clone(), budget.clone());
        std::thread::Builder::new()
            .name("epoch-ticker".into())
            .spawn(move || {
                let mut ticks = 0u32;
                while !stop.load(Ordering::Relaxed) {
                    std::thread::sleep(EPOCH_TICK);
                    match weak.upgrade() {
                        Some(engine) => engine.increment_epoch(),
                        None => break,
                    }
                    ticks = ticks.wrapping_add(1);
                    if ticks.is_multiple_of(TICKS_PER_SWEEP) {
                        sweep.expire_idle();
                    }
                }
            })?;
        Ok(Host {
            engine,
            linker,
            options,
            lanes: lanes::Lanes::new(),
            cache,
            budget,
            prepared: Mutex::default(),
            ticker_stop,
        })
    }

    /// Compiles (or loads from the cache) and pre-instantiates a component;
    /// fails when it does not fit the `service` world. A component whose
    /// bytes were prepared before is not compiled again.
    pub fn prepare(&self, path: &Path) -> anyhow::Result<PreparedComponent> {
        let bytes = std::fs::read(path)
            .with_context(|| format!("cannot load the component {}", path.display()))?;
        let digest: [u8; 32] = sha2::Sha256::digest(&bytes).into();
        let known = |prepared: &Mutex<HashMap<_, PreparedComponent>>| {
            let map = prepared.lock().unwrap_or_else(|e| e.into_inner());
            map.get(&digest).cloned()
        };
        if let Some(prepared) = known(&self.prepared) {
            return Ok(prepared);
        }
        let component = Component::new(&self.engine, &bytes)
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
        let pre = bindings::ServicePre::new(pre)
            .with_context(|| format!("{} does not export {HANDLER_INTERFACE}", path.display()))?;
        let on_receive = component
            .get_export_index(None, HANDLER_INTERFACE)
            .and_then(|handler| component.get_export_index(Some(&handler), "on-receive"))
            .with_context(|| format!("{} does not export {HANDLER_INTERFACE}", path.display()))?;
        let prepared = PreparedComponent {
            pre,
            on_receive,
            digest,
        };
        let mut map = self.prepared.lock().unwrap_or_else(|e| e.into_inner());
        Ok(map.entry(digest).or_insert(prepared).clone())
    }

    /// Forgets compiled components no longer in use (a reload replaced
    /// them), keeping those of `in_use`; running instances keep their own.
    pub fn forget_other_components<'a>(
        &self,
        in_use: impl IntoIterator<Item = &'a PreparedComponent>,
    ) {
        let keep: std::collections::HashSet<[u8; 32]> =
            in_use.into_iter().map(|c| c.digest).collect();
        let mut map = self.prepared.lock().unwrap_or_else(|e| e.into_inner());
        map.retain(|digest, _| keep.contains(digest));
    }

    /// The instances of one component of an app: `who` it runs as, reused
    /// as `reuse` says (its entry's settings over the provider's).
    pub fn instances(
        &self,
        component: &PreparedComponent,
        who: InstanceIdentity,
        reuse: InstanceReuse,
    ) -> Arc<Instances> {
        Instances::new(component.clone(), who, reuse, &self.budget)
    }

    /// How components' instances are reused where their entries do not say.
    pub fn reuse(&self) -> InstanceReuse {
        self.options.reuse
    }

    /// Instances alive in the process now, busy or warm.
    pub fn live_instances(&self) -> usize {
        self.budget.live()
    }

    /// Runs `on-receive` for one event in a warm instance of the component,
    /// or a new one, within the handler timeout (counted from the moment
    /// the instance is taken or its creation begins).
    /// `trace` is the run's trace context, when traces are on.
    pub async fn handle(
        &self,
        instances: &Instances,
        event: &Event,
        trace: Option<Arc<(String, String)>>,
    ) -> Result<(), HandlerFailure> {
        let taking = stages::start();
        let warm = instances.take();
        if warm.is_some() {
            stages::record(Stage::Reuse, taking);
        }
        let slot = match warm {
            Some(_) => None,
            None => Some(instances.budget.acquire(instances.holder).await),
        };
        let timeout = self.options.handler_timeout;
        let deadline = Instant::now() + timeout;
        let lane = self.lanes.enter(&instances.history);
        let run = async {
            let mut warm = match (warm, slot) {
                (Some(warm), _) => warm,
                (None, slot) => {
                    let creating = stages::start();
                    let mut store = self.store(instances, deadline, lane.clone());
                    let on_receive = match Self::instantiate(instances, &mut store).await {
                        Ok(func) => func,
                        Err(e) => return Err((e, store.into_data().run.link_trouble)),
                    };
                    stages::record(Stage::Instantiate, creating);
                    // `slot` is `Some` whenever no warm instance was taken.
                    let slot = slot.ok_or_else(|| {
                        (
                            wasmtime::format_err!("no room was taken for a new instance"),
                            None,
                        )
                    })?;
                    instances.created(store, on_receive, slot)
                }
            };
            warm.uses += 1;
            warm.store.data_mut().begin(deadline, lane.clone(), trace);
            warm.store
                .set_epoch_deadline(if lane.starts_long() { 0 } else { 1 });
            // SAFETY: `instantiate` checked this function's type as
            // `OnReceive<'static>`; the lifetime of the borrowed event is
            // not part of its component type.
            let on_receive = unsafe { OnReceive::new_unchecked(warm.on_receive) };
            let calling = stages::start();
            let result = on_receive
                .call_async(&mut warm.store, (messaging::EventRef::from(event),))
                .await
                .map(|(result,)| result);
            if let Some(calling) = calling {
                let publishing = warm.store.data().run.publishing;
                stages::add(
                    Stage::Call,
                    calling.elapsed().saturating_sub(publishing).as_nanos() as u64,
                );
            }
            Ok((warm, result))
        };
        // A guest waiting in a host call (a sleep, a slow broker) is stopped
        // here; one computing, by the epoch callback.
        let result = crate::timeout::timeout(timeout, run).await;
        lane.finish();
        let (error, link_trouble) = match result {
            Ok(Ok((warm, Ok(Ok(()))))) => {
                instances.put_back(warm, Afterwards::Succeeded);
                return Ok(());
            }
            Ok(Ok((warm, Ok(Err(e))))) => {
                let trouble = warm.store.data().run.link_trouble.clone();
                instances.put_back(warm, Afterwards::ReturnedError);
                (
                    format!("on-receive returned an error: {}", MessagingError::from(e)),
                    trouble,
                )
            }
            // A trap leaves the instance unusable: it is dropped here.
            Ok(Ok((warm, Err(trap)))) => (
                self.trapped(instances, &trap),
                warm.store.into_data().run.link_trouble,
            ),
            Ok(Err((trap, trouble))) => (self.trapped(instances, &trap), trouble),
            Err(_) => (
                format!(
                    "on-receive ran longer than the handler timeout of {}",
                    humantime::format_duration(timeout)
                ),
                None,
            ),
        };
        Err(HandlerFailure {
            error,
            link_trouble,
        })
    }

    /// Instantiates the component in `store` and finds its `on-receive`,
    /// checking its type once for all the events the instance takes.
    async fn instantiate(
        instances: &Instances,
        store: &mut Store<State>,
    ) -> wasmtime::Result<wasmtime::component::Func> {
        let component = &instances.component;
        let instance = component
            .pre
            .instance_pre()
            .instantiate_async(&mut *store)
            .await?;
        let func = instance
            .get_func(&mut *store, component.on_receive)
            .ok_or_else(|| wasmtime::format_err!("the component has no on-receive export"))?;
        func.typed::<(messaging::EventRef<'static>,), (Result<(), bindings::WitError>,)>(&*store)?;
        Ok(func)
    }

    fn trapped(&self, instances: &Instances, trap: &wasmtime::Error) -> String {
        let who = &instances.identity;
        tracing::debug!(app = %who.app, component = %who.component, "on-receive trapped: {trap:?}");
        format!("on-receive trapped: {}", trap.root_cause())
    }

    /// A store for a new instance of the component: its WASI context,
    /// grants and limits, and the epoch callback that stops it at the
    /// handler timeout and moves it to the long lane when it runs long.
    fn store(
        &self,
        instances: &Instances,
        deadline: Instant,
        lane: Arc<lanes::Run>,
    ) -> Store<State> {
        let who = &instances.identity;
        let mut wasi = WasiCtx::builder();
        wasi.stdout(stdio::LogStream::new(&who.output, "stdout"))
            .stderr(stdio::LogStream::new(&who.output, "stderr"))
            .envs(&who.environment);
        let state = State {
            wasi: wasi.build(),
            table: ResourceTable::new(),
            messaging: who.messaging.clone(),
            grants: who.grants.clone(),
            http: WasiHttpCtx::new(),
            outbound: outbound_http::OutboundHttp {
                grants: who.grants.clone(),
                deadline,
                trace: None,
            },
            kv_handles: 0,
            memory: match self.options.max_instance_memory {
                Some(cap) if cap < who.max_memory => MemoryLimit {
                    max: cap,
                    set_by: "--max-instance-memory",
                },
                _ => MemoryLimit {
                    max: who.max_memory,
                    set_by: "`max_memory` in its [[trigger.messaging]] entry",
                },
            },
            run: Run {
                deadline,
                timeout: self.options.handler_timeout,
                lane: lane.clone(),
                link_trouble: None,
                publishing: Duration::ZERO,
                trace: None,
            },
        };
        let mut store = Store::new(&self.engine, state);
        store.limiter(|s| &mut s.memory);
        // A run that starts in the long lane waits for its turn before it
        // runs at all.
        store.set_epoch_deadline(if lane.starts_long() { 0 } else { 1 });
        // Runs at every epoch tick while the guest executes: a guest that
        // computes past the deadline is stopped here, and one that has run a
        // while waits for the long lane's turn.
        store.epoch_deadline_callback(|cx| {
            let state = cx.data();
            if Instant::now() >= state.run.deadline {
                wasmtime::bail!(state.timed_out());
            }
            Ok(match state.run.lane.tick() {
                None => UpdateDeadline::Yield(1),
                Some(turn) => UpdateDeadline::YieldCustom(1, Box::pin(turn)),
            })
        });
        store
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
