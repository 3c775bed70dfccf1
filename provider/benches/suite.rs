//! The benchmark suite: one command prints one set of tables (and writes the
//! same figures as JSON).
//!
//! ```sh
//! cargo bench -p wasi-messaging-provider --bench suite                 # full: tens of minutes
//! cargo bench -p wasi-messaging-provider --bench suite -- --quick      # small N, one run, every section
//! cargo test  -p wasi-messaging-provider --bench suite                 # quick, on the debug build (CI)
//! ```
//!
//! Without `--bench` on its command line (which `cargo bench` passes and
//! `cargo test` does not) the suite runs quick, so CI catches rot cheaply.
//!
//! Options (after `--`):
//!
//! | option | does |
//! |---|---|
//! | `--quick` | small N, one run, short phases: every section exercised |
//! | `--links embedded,nats,jetstream,mqtt,redis-pubsub,redis-streams,amqp` | the rows of the relay section (default: all) |
//! | `--sections relay,languages,startup,many-apps,flat,soak,baseline,metrics` | the sections to run (default: all; `baseline` only with `--baseline-bin`) |
//! | `--runs K` | runs per figure (default 3, quick 1); figures are `median (min–max)` |
//! | `--events N` | events per relay run (default 20,000, quick 500) |
//! | `--provider-bin PATH` | the `trigger-messaging` measured out of process (default: this build's) |
//! | `--provider-arg ARG` | passed through to `trigger-messaging up` (repeatable) |
//! | `--baseline-bin PATH` | an earlier `trigger-messaging` for the `baseline` section to compare with |
//! | `--soak SECONDS` | length of the soak (default 600, quick 10) |
//! | `--json FILE` | where the JSON goes (default `target/bench/results.json`) |
//!
//! The local brokers must be up on loopback (NATS with JetStream 4222,
//! Mosquitto 1883, Redis 6379, RabbitMQ 5672 guest/guest) for the rows that
//! use them: a broker that is down fails the suite, naming it. Missing
//! guests are built (the Rust relay with cargo, the Python and JavaScript
//! relays with componentize-py and componentize-js).
//!
//! The relay section runs each link's row twice per run: the provider with
//! the Rust relay guest (out of process, or in process for the embedded
//! broker), and the same relay as a native program with the same broker
//! client and settings (the bench binary re-executed as
//! `suite native-relay <link> ...`), both fed by a producer and read by a
//! sink in this process.

/// The allocator `trigger-messaging` runs with, so that the relays measured
/// in this process (the embedded broker's, native and provider) run as the
/// binary's do.
#[global_allocator]
static ALLOCATOR: mimalloc::MiMalloc = mimalloc::MiMalloc;

/// The suite's modules, in `benches/suite/`.
mod suite {
    /// Orders in, shipments out, and the tally of a phase.
    pub mod flow;
    /// Each link's names, producer, sink and native relay.
    pub mod links;
    /// Child processes, /proc readings, guests, summaries.
    pub mod measure;
    /// The command line.
    pub mod options;
    /// The header, the tables and the JSON.
    pub mod report;
    /// One module per section.
    pub mod sections;
}
use suite::{flow, links, measure, options, report, sections};

use anyhow::Context as _;

fn main() -> std::process::ExitCode {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let result = if args.first().map(String::as_str) == Some(links::NATIVE_RELAY_MODE) {
        native_relay(&args[1..])
    } else {
        run_suite(args)
    };
    match result {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("benchmark suite failed: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// The hidden mode the suite runs its native baselines in: one relay, until SIGTERM.
fn native_relay(args: &[String]) -> anyhow::Result<()> {
    let runtime = tokio::runtime::Runtime::new().context("cannot start the tokio runtime")?;
    let args = args.to_vec();
    on_a_worker(
        &runtime,
        async move { links::run_native_relay(&args).await },
    )
}

/// Parses the options, runs the chosen sections, prints the tables and writes the JSON.
fn run_suite(args: Vec<String>) -> anyhow::Result<()> {
    let options = options::Options::parse(args)?;
    let runtime = tokio::runtime::Runtime::new().context("cannot start the tokio runtime")?;
    on_a_worker(&runtime, async move { sections::run(&options).await })
}

/// Runs `work` as a task on the runtime's worker threads rather than on the
/// thread that blocks on it, so that the producers, sinks and relays it
/// drives wake each other without crossing to that thread.
fn on_a_worker(
    runtime: &tokio::runtime::Runtime,
    work: impl Future<Output = anyhow::Result<()>> + Send + 'static,
) -> anyhow::Result<()> {
    runtime
        .block_on(runtime.spawn(work))
        .context("the suite's main task panicked")?
}
