//! The suite's sections (one module each) and what they share: writing a
//! run's relay app and runtime config, starting the provider out of
//! process or in process, and one side of a relay measured through a flood
//! and a half-load phase.

/// This build against an earlier one.
pub mod baseline;
/// Throughput with many apps in one process.
pub mod flat;
/// The relay in Rust, Python and JavaScript.
pub mod languages;
/// Memory and start time with many apps.
pub mod many_apps;
/// The metrics' cost per event.
pub mod metrics;
/// Provider vs native, per link.
pub mod relay;
/// Memory under a long steady load.
pub mod soak;
/// Time to Ready and to the first event.
pub mod startup;

use crate::flow::{Flow, Pace, Phase, Producer};
use crate::links::{Link, Names};
use crate::measure::{Process, mib};
use crate::options::{Options, Section};
use crate::report::Report;
use anyhow::Context as _;
use messaging_provider::provider::{Follow, OutputOptions, UserPath};
use messaging_provider::{Provider, ProviderOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

/// Runs the sections asked for, printing each one's tables as it ends.
pub async fn run(options: &Options) -> anyhow::Result<()> {
    let mut report = Report::start(options);
    for &section in &options.sections {
        let started = std::time::Instant::now();
        match section {
            Section::Relay => relay::run(options, &mut report).await,
            Section::Languages => languages::run(options, &mut report).await,
            Section::Startup => startup::run(options, &mut report).await,
            Section::ManyApps => many_apps::run(options, &mut report).await,
            Section::Flat => flat::run(options, &mut report).await,
            Section::Soak => soak::run(options, &mut report).await,
            Section::Baseline => baseline::run(options, &mut report).await,
            Section::Metrics => metrics::run(options, &mut report).await,
        }
        .with_context(|| format!("section `{}`", section.name()))?;
        eprintln!(
            "(section `{}` took {:.0} s)",
            section.name(),
            started.elapsed().as_secs_f64()
        );
    }
    println!("JSON: {}", report.json_path().display());
    Ok(())
}

/// How long a provider may take to print `Ready` (a cold start compiles).
pub const READY_LIMIT: Duration = Duration::from_secs(120);
/// How long a stopping relay may drain.
pub const STOP_LIMIT: Duration = Duration::from_secs(30);

/// What goes into a relay app's manifest.
pub struct RelayApp<'a> {
    /// The app's name.
    pub name: &'a str,
    /// The run's broker names.
    pub names: &'a Names,
    /// The component.
    pub wasm: &'a Path,
    /// Whether the input channel is a queue (else a topic).
    pub input_is_queue: bool,
    /// Extra lines for the component's `[[trigger.messaging]]` entry.
    pub trigger_lines: &'a str,
}

impl RelayApp<'_> {
    /// Writes the app's spin.toml into `dir` (created) and returns its path.
    pub fn write(&self, dir: &Path) -> anyhow::Result<PathBuf> {
        std::fs::create_dir_all(dir).with_context(|| format!("cannot create {}", dir.display()))?;
        let kind = if self.input_is_queue {
            "queue"
        } else {
            "topic"
        };
        let manifest = format!(
            r#"spin_manifest_version = 2

[application]
name = "{name}"

[application.trigger.messaging.channels.orders]
kind = "{kind}"
address = "{input}"

[application.trigger.messaging.channels.shipments]
kind = "topic"
address = "{output}"

[[trigger.messaging]]
component = "relay"
subscriptions = ["orders"]
publish = ["shipments"]
{extra}
[component.relay]
source = "{wasm}"
"#,
            name = self.name,
            input = self.names.input,
            output = self.names.output,
            extra = self.trigger_lines,
            wasm = self.wasm.display(),
        );
        let path = dir.join("spin.toml");
        std::fs::write(&path, manifest)
            .with_context(|| format!("cannot write {}", path.display()))?;
        Ok(path)
    }
}

/// Writes the runtime config binding `default` to `link`; `None` for the
/// embedded broker.
pub fn write_runtime_config(dir: &Path, link: Link) -> anyhow::Result<Option<PathBuf>> {
    let Some(text) = link.runtime_config() else {
        return Ok(None);
    };
    let path = dir.join("runtime-config.toml");
    std::fs::write(&path, text).with_context(|| format!("cannot write {}", path.display()))?;
    Ok(Some(path))
}

/// `trigger-messaging up` on `manifests`, quiet, without state directory,
/// with the suite's `--provider-arg`s, `extra` arguments and environment.
pub fn spawn_provider(
    options: &Options,
    manifests: &[PathBuf],
    runtime_config: Option<&Path>,
    extra: &[String],
    env: &[(&str, String)],
) -> anyhow::Result<Process> {
    let mut command = tokio::process::Command::new(&options.provider_bin);
    command.arg("up");
    for manifest in manifests {
        command.arg("-f").arg(manifest);
    }
    if let Some(config) = runtime_config {
        command.arg("--runtime-config-file").arg(config);
    }
    command.args(["-q", "--state-dir", ""]);
    command.args(&options.provider_args).args(extra);
    for (name, value) in env {
        command.env(name, value);
    }
    Process::spawn("the provider (trigger-messaging up)", command)
}

/// The bench binary as a native relay of `link`.
pub fn spawn_native(link: Link, names: &Names) -> anyhow::Result<Process> {
    let exe = std::env::current_exe().context("cannot find the bench binary to re-run")?;
    let mut command = tokio::process::Command::new(exe);
    command.args(names.native_args(link));
    Process::spawn(&format!("the native {} relay", link.name()), command)
}

/// Output options for an in-process provider: no console output, no files.
pub fn quiet_output() -> OutputOptions {
    OutputOptions {
        follow: Follow::None,
        log_dir: UserPath::Unset,
        state_dir: UserPath::Unset,
        truncate: false,
    }
}

/// Loads (and starts) an in-process provider on `manifests`.
pub async fn in_process_provider(manifests: Vec<PathBuf>) -> anyhow::Result<Provider> {
    let provider = Provider::load(ProviderOptions {
        manifests,
        output: quiet_output(),
        ..Default::default()
    })
    .await?;
    provider.start().await?;
    Ok(provider)
}

/// One side of one relay run: throughput, latency, CPU and memory.
#[derive(Clone, Debug, Default, serde::Serialize)]
pub struct Side {
    /// Events per second through the flood.
    pub rate: f64,
    /// Events per second the producer published in the flood.
    pub producer_rate: f64,
    /// Latency at saturation (the flood), p50 and p99, ms.
    pub saturated_p50_ms: Option<f64>,
    /// See `saturated_p50_ms`.
    pub saturated_p99_ms: Option<f64>,
    /// Latency at half the flood's rate, p50 and p99, ms.
    pub half_load_p50_ms: Option<f64>,
    /// See `half_load_p50_ms`.
    pub half_load_p99_ms: Option<f64>,
    /// The rate the half-load phase was paced at.
    pub half_load_rate: f64,
    /// CPU time of the relay process per event of the flood, µs.
    pub cpu_us_per_event: Option<f64>,
    /// CPU time of the suite's own process (the producer and the sink) per
    /// event of the flood, µs; `None` in process, where the relay's figure
    /// holds it.
    pub suite_cpu_us_per_event: Option<f64>,
    /// Busy CPU time of the whole machine, all cores, per event of the
    /// flood, µs: the relay, the suite, the broker and anything else.
    pub machine_cpu_us_per_event: Option<f64>,
    /// How busy the machine's cores were through the flood (1: all of
    /// them, all the time).
    pub machine_busy: Option<f64>,
    /// Peak resident memory, MiB.
    pub peak_rss_mib: Option<f64>,
    /// Events published in the flood.
    pub sent: usize,
    /// Events lost in the flood and the half-load phase.
    pub lost: usize,
    /// Extra copies received in the flood and the half-load phase.
    pub duplicates: usize,
    /// What went wrong, if anything did.
    pub problem: Option<String>,
}

/// Where a side's CPU time and memory come from.
pub enum Meter<'a> {
    /// A relay process of its own.
    Process(&'a Process),
    /// The suite's own process (in-process runs: producer and sink included).
    InProcess,
}

impl Meter<'_> {
    /// CPU time so far.
    fn cpu(&self) -> Option<Duration> {
        match self {
            Meter::Process(p) => p.cpu().ok(),
            Meter::InProcess => Some(crate::measure::own_cpu()),
        }
    }

    /// Peak resident memory, MiB.
    fn peak_rss(&self) -> Option<f64> {
        match self {
            Meter::Process(p) => p.peak_rss().ok().map(mib),
            Meter::InProcess => crate::measure::status_bytes(crate::measure::own_pid(), "VmHWM:")
                .ok()
                .map(mib),
        }
    }
}

/// Measures one side: a flood of `options.events` orders, then a few
/// seconds paced at half the rate the flood reached.
pub async fn measure_side(
    options: &Options,
    flow: &mut Flow,
    producer: Arc<dyn Producer>,
    run: &str,
    meter: Meter<'_>,
) -> Side {
    if matches!(meter, Meter::InProcess) {
        crate::measure::reset_own_peak_rss();
    }
    let cpu_before = meter.cpu();
    let suite_before = crate::measure::own_cpu();
    let machine_before = crate::measure::machine_busy().ok();
    let started = std::time::Instant::now();
    let flood = flow
        .phase(
            vec![producer.clone()],
            &format!("{run}.f."),
            options.events,
            Pace::Flood,
        )
        .await;
    let cpu_after = meter.cpu();
    let wall = started.elapsed();
    let machine_after = crate::measure::machine_busy().ok();
    let per_event = |spent: Duration| spent.as_secs_f64() * 1e6 / flood.sent.max(1) as f64;
    let machine = machine_before
        .zip(machine_after)
        .map(|((before, cores), (after, _))| (after.saturating_sub(before), cores));
    let mut side = Side {
        rate: flood.rate(),
        producer_rate: flood.publish_rate(),
        saturated_p50_ms: flood.latency_ms(0.5),
        saturated_p99_ms: flood.latency_ms(0.99),
        cpu_us_per_event: match (cpu_before, cpu_after) {
            (Some(a), Some(b)) if flood.sent > 0 => Some(per_event(b.saturating_sub(a))),
            _ => None,
        },
        suite_cpu_us_per_event: (flood.sent > 0 && matches!(meter, Meter::Process(_)))
            .then(|| per_event(crate::measure::own_cpu().saturating_sub(suite_before))),
        machine_cpu_us_per_event: machine
            .filter(|_| flood.sent > 0)
            .map(|(busy, _)| per_event(busy)),
        machine_busy: machine
            .filter(|_| !wall.is_zero())
            .map(|(busy, cores)| busy.as_secs_f64() / (wall.as_secs_f64() * cores as f64)),
        sent: flood.sent,
        lost: flood.lost(),
        duplicates: flood.duplicates,
        problem: describe_problem(&flood),
        ..Side::default()
    };
    if side.rate > 0.0 {
        let rate = side.rate / 2.0;
        let half = paced_phase(options, flow, producer, &format!("{run}.h."), rate).await;
        side.half_load_rate = rate;
        side.half_load_p50_ms = half.latency_ms(0.5);
        side.half_load_p99_ms = half.latency_ms(0.99);
        side.lost += half.lost();
        side.duplicates += half.duplicates;
        if side.problem.is_none() {
            side.problem = describe_problem(&half);
        }
    }
    side.peak_rss_mib = meter.peak_rss();
    side
}

/// What went wrong in a phase, for the notes under a table.
pub fn describe_problem(phase: &Phase) -> Option<String> {
    let mut parts = Vec::new();
    if phase.publish_errors > 0 {
        parts.push(format!("{} publishes failed", phase.publish_errors));
    }
    if let Some(problem) = &phase.problem {
        parts.push(problem.clone());
    }
    if phase.timed_out && phase.lost() > 0 {
        let listed: Vec<String> = phase.missing.iter().map(|i| format!("#{i}")).collect();
        parts.push(format!(
            "{} of {} events never came out within the idle limit (first missing: {}{})",
            phase.lost(),
            phase.sent,
            listed.join(", "),
            if phase.lost() > listed.len() {
                ", …"
            } else {
                ""
            }
        ));
    }
    (!parts.is_empty()).then(|| parts.join("; "))
}

/// Whether a load error says the manifest holds a key this provider does
/// not know (a variant measured before the provider had it).
pub fn unknown_key(error: &anyhow::Error) -> bool {
    format!("{error:#}").contains("unknown field")
}

/// A phase paced at `rate` for the half-load time (at least 20 events).
pub async fn paced_phase(
    options: &Options,
    flow: &mut Flow,
    producer: Arc<dyn Producer>,
    prefix: &str,
    rate: f64,
) -> Phase {
    let count = ((rate * options.half_load_time().as_secs_f64()) as usize).max(20);
    flow.phase(vec![producer], prefix, count, Pace::Rate(rate))
        .await
}
