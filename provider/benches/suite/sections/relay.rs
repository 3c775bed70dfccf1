//! The relay section: per link, the provider running the Rust relay guest
//! against the same relay in native Rust, in the same run; then one more
//! provider run with stage timing on, for where the time goes.

use super::{
    Meter, READY_LIMIT, RelayApp, STOP_LIMIT, Side, in_process_provider, measure_side,
    spawn_native, spawn_provider, write_runtime_config,
};
use crate::flow::Flow;
use crate::links::{Link, Names, embedded};
use crate::measure::{Guest, Spread, run_id};
use crate::options::Options;
use crate::report::{Report, Table, number, spread, spread_json};
use anyhow::Context as _;
use serde_json::{Value, json};
use std::time::Duration;

/// The stages the provider times, in the order an event meets them.
const STAGES: [&str; 7] = [
    "decode",
    "instantiate",
    "reuse",
    "call",
    "encode",
    "publish",
    "settle",
];

/// A row's runs.
#[derive(Default)]
struct Row {
    provider: Vec<Side>,
    native: Vec<Side>,
    /// The stage run: each stage's (count, nanos), or why there are none.
    stages: Option<Result<Value, String>>,
}

/// Runs the section.
pub async fn run(options: &Options, report: &mut Report) -> anyhow::Result<()> {
    let wasm = Guest::Rust.built()?;
    let mut rows = Vec::new();
    for &link in &options.links {
        let mut row = Row::default();
        for run in 0..options.runs {
            eprintln!("relay: {} run {}/{}", link.name(), run + 1, options.runs);
            row.provider.push(
                provider_side(options, link, &wasm, None)
                    .await
                    .with_context(|| format!("{}: the provider relay", link.name()))?,
            );
            row.native.push(
                native_side(options, link)
                    .await
                    .with_context(|| format!("{}: the native relay", link.name()))?,
            );
        }
        eprintln!("relay: {} stage times", link.name());
        let rates: Vec<f64> = row.provider.iter().map(|side| side.rate).collect();
        let half = crate::measure::Spread::of(rates).map_or(0.0, |s| s.median / 2.0);
        row.stages = Some(stage_run(options, link, &wasm, half).await);
        rows.push((link, row));
    }
    let (tables, figures) = render(options, &rows);
    report.section("relay", &tables, figures)
}

/// How a stage run is made: paced at `rate` (half the provider's
/// saturation, so that the stages show their own cost rather than queueing
/// behind each other), its totals written to `file` by a provider out of
/// process, or read from `messaging_provider::stages` in this one.
struct StageRun<'a> {
    rate: f64,
    file: Option<&'a std::path::Path>,
}

/// One provider run of `link`: the flood and the half-load phase, or with
/// `stages` the stage run alone.
async fn provider_side(
    options: &Options,
    link: Link,
    wasm: &std::path::Path,
    stages: Option<StageRun<'_>>,
) -> anyhow::Result<Side> {
    let run = run_id();
    let names = Names::new(&run);
    let dir = tempfile::tempdir()?;
    let manifest = RelayApp {
        name: "bench-relay",
        names: &names,
        wasm,
        input_is_queue: link.input_is_queue(),
        trigger_lines: "",
    }
    .write(dir.path())?;
    let mut flow = Flow::new(options.idle_limit());
    if link == Link::Embedded {
        let provider = in_process_provider(vec![manifest]).await?;
        let app = provider
            .app("bench-relay")
            .context("the relay app is not loaded")?
            .clone();
        flow.add_sink(embedded::watch(&app, "shipments").await?);
        let producer = std::sync::Arc::new(embedded::AppProducer {
            app,
            channel: "orders".into(),
        });
        let side = match &stages {
            Some(timed) => {
                messaging_provider::stages::reset();
                messaging_provider::stages::enable();
                let side = stage_phase(options, &mut flow, producer, &run, timed.rate).await;
                messaging_provider::stages::disable();
                side
            }
            None => measure_side(options, &mut flow, producer, &run, Meter::InProcess).await,
        };
        provider.shutdown(Duration::from_secs(5)).await;
        return Ok(side);
    }
    let config = write_runtime_config(dir.path(), link)?;
    link.prepare(&names).await?;
    let measured = async {
        flow.add_sink(link.sink(&names).await?);
        let env: Vec<(&str, String)> = stages
            .as_ref()
            .and_then(|timed| timed.file)
            .map(|f| ("TRIGGER_MESSAGING_STAGE_TIMES", f.display().to_string()))
            .into_iter()
            .collect();
        let mut process = spawn_provider(options, &[manifest], config.as_deref(), &[], &env)?;
        process.ready(READY_LIMIT).await?;
        let producer = link.producer(&names).await?;
        let side = match &stages {
            Some(timed) => stage_phase(options, &mut flow, producer, &run, timed.rate).await,
            None => {
                measure_side(options, &mut flow, producer, &run, Meter::Process(&process)).await
            }
        };
        process.stop(STOP_LIMIT).await?;
        anyhow::Ok(side)
    }
    .await;
    // The sink's consumer goes before its topic does.
    flow.close().await;
    if let Err(e) = link.cleanup(&names).await {
        eprintln!("warning: cleaning up after {}: {e:#}", link.name());
    }
    measured
}

/// One native run of `link`.
async fn native_side(options: &Options, link: Link) -> anyhow::Result<Side> {
    let run = run_id();
    let names = Names::new(&run);
    let mut flow = Flow::new(options.idle_limit());
    if link == Link::Embedded {
        let native = embedded::native(&names).await?;
        let embedded::NativeEmbedded {
            producer,
            sink,
            relay,
        } = native;
        flow.add_sink(sink);
        let side = measure_side(options, &mut flow, producer, &run, Meter::InProcess).await;
        drop(relay);
        return Ok(side);
    }
    link.prepare(&names).await?;
    let measured = async {
        flow.add_sink(link.sink(&names).await?);
        let mut process = spawn_native(link, &names)?;
        process.ready(READY_LIMIT).await?;
        let producer = link.producer(&names).await?;
        let side = measure_side(options, &mut flow, producer, &run, Meter::Process(&process)).await;
        process.stop(STOP_LIMIT).await?;
        anyhow::Ok(side)
    }
    .await;
    // The sink's consumer goes before its topic does.
    flow.close().await;
    if let Err(e) = link.cleanup(&names).await {
        eprintln!("warning: cleaning up after {}: {e:#}", link.name());
    }
    measured
}

/// The stage run: out of process through `TRIGGER_MESSAGING_STAGE_TIMES`,
/// in process through `messaging_provider::stages`.
async fn stage_run(
    options: &Options,
    link: Link,
    wasm: &std::path::Path,
    rate: f64,
) -> Result<Value, String> {
    if rate <= 0.0 {
        return Err("no provider run relayed anything to pace the stage run by".into());
    }
    if link == Link::Embedded {
        let timed = StageRun { rate, file: None };
        let side = provider_side(options, link, wasm, Some(timed))
            .await
            .map_err(|e| format!("{e:#}"))?;
        warn_about(link, &side);
        return Ok(messaging_provider::stages::snapshot());
    }
    let dir = tempfile::tempdir().map_err(|e| e.to_string())?;
    let file = dir.path().join("stages.json");
    let timed = StageRun {
        rate,
        file: Some(&file),
    };
    let side = provider_side(options, link, wasm, Some(timed))
        .await
        .map_err(|e| format!("{e:#}"))?;
    warn_about(link, &side);
    let text = std::fs::read_to_string(&file).map_err(|_| {
        "the provider wrote no stage times (this build does not honour TRIGGER_MESSAGING_STAGE_TIMES)"
            .to_string()
    })?;
    serde_json::from_str(&text).map_err(|e| format!("the stage file is not JSON: {e}"))
}

/// The stage run's one phase: paced at `rate` for the half-load time.
async fn stage_phase(
    options: &Options,
    flow: &mut Flow,
    producer: std::sync::Arc<dyn crate::flow::Producer>,
    run: &str,
    rate: f64,
) -> Side {
    let phase = super::paced_phase(options, flow, producer, &format!("{run}.t."), rate).await;
    Side {
        rate: phase.rate(),
        sent: phase.sent,
        lost: phase.lost(),
        duplicates: phase.duplicates,
        problem: super::describe_problem(&phase),
        ..Side::default()
    }
}

/// Reports on stderr what went wrong in a stage run (its figures are not
/// in the tables, only its stage times).
fn warn_about(link: Link, side: &Side) {
    if let Some(problem) = &side.problem {
        eprintln!("warning: {} stage run: {problem}", link.name());
    }
}

/// The section's tables and JSON.
fn render(options: &Options, rows: &[(Link, Row)]) -> (Vec<Table>, Value) {
    let spread_of =
        |sides: &[Side], f: &dyn Fn(&Side) -> Option<f64>| Spread::of(sides.iter().filter_map(f));
    let ratio_of = |row: &Row, f: &dyn Fn(&Side) -> Option<f64>| {
        Spread::of(row.provider.iter().zip(&row.native).filter_map(|(p, n)| {
            let (p, n) = (f(p)?, f(n)?);
            (n > 0.0).then(|| p / n)
        }))
    };
    let mut throughput = Table::new(
        &format!(
            "Relay throughput: the provider (Rust relay guest) vs the same relay in native Rust, {} events",
            number(options.events as f64, 0)
        ),
        &[
            "link",
            "provider msg/s",
            "native msg/s",
            "provider / native",
            "lost / duplicates (provider; native)",
        ],
    );
    let mut latency = Table::new(
        "Relay latency, end to end (ms, p50 / p99): at saturation (the flood) and at half that rate",
        &[
            "link",
            "provider, saturated",
            "native, saturated",
            "provider, half load",
            "native, half load",
        ],
    );
    let mut resources = Table::new(
        "Relay cost: CPU time of the relay process per event, and its peak resident memory",
        &[
            "link",
            "provider CPU µs/event",
            "native CPU µs/event",
            "provider / native",
            "provider peak RSS MiB",
            "native peak RSS MiB",
        ],
    );
    let mut machine = Table::new(
        "Where the machine's CPU goes in the flood: µs per event, all cores (the relay / the suite's producer and sink / the broker and the rest), and how busy the cores were",
        &[
            "link",
            "provider side",
            "provider side, cores busy",
            "native side",
            "native side, cores busy",
        ],
    );
    let mut stages = Table::new(
        "Where the provider's time goes: µs per event in each stage (times counted), one run at half the provider's saturation rate with stage timing on",
        &[
            "link",
            "decode",
            "instantiate",
            "reuse",
            "call",
            "encode",
            "publish",
            "settle",
        ],
    );
    let mut problems = Vec::new();
    let mut figures = Vec::new();
    for (link, row) in rows {
        let name = link.name().to_string();
        let lost_dup = |sides: &[Side]| {
            let lost: usize = sides.iter().map(|s| s.lost).sum();
            let dup: usize = sides.iter().map(|s| s.duplicates).sum();
            format!("{lost} / {dup}")
        };
        throughput.row(vec![
            name.clone(),
            spread(spread_of(&row.provider, &|s| Some(s.rate)), 0),
            spread(spread_of(&row.native, &|s| Some(s.rate)), 0),
            spread(ratio_of(row, &|s| Some(s.rate)), 2),
            format!("{}; {}", lost_dup(&row.provider), lost_dup(&row.native)),
        ]);
        let pair = |sides: &[Side],
                    p50: &dyn Fn(&Side) -> Option<f64>,
                    p99: &dyn Fn(&Side) -> Option<f64>| {
            format!(
                "{} / {}",
                spread(spread_of(sides, p50), 2),
                spread(spread_of(sides, p99), 2)
            )
        };
        latency.row(vec![
            name.clone(),
            pair(&row.provider, &|s| s.saturated_p50_ms, &|s| {
                s.saturated_p99_ms
            }),
            pair(&row.native, &|s| s.saturated_p50_ms, &|s| {
                s.saturated_p99_ms
            }),
            pair(&row.provider, &|s| s.half_load_p50_ms, &|s| {
                s.half_load_p99_ms
            }),
            pair(&row.native, &|s| s.half_load_p50_ms, &|s| {
                s.half_load_p99_ms
            }),
        ]);
        resources.row(vec![
            name.clone(),
            spread(spread_of(&row.provider, &|s| s.cpu_us_per_event), 1),
            spread(spread_of(&row.native, &|s| s.cpu_us_per_event), 1),
            spread(ratio_of(row, &|s| s.cpu_us_per_event), 2),
            spread(spread_of(&row.provider, &|s| s.peak_rss_mib), 1),
            spread(spread_of(&row.native, &|s| s.peak_rss_mib), 1),
        ]);
        let split = |sides: &[Side]| {
            let relay = spread_of(sides, &|s| s.cpu_us_per_event);
            let suite = match spread_of(sides, &|s| s.suite_cpu_us_per_event) {
                Some(suite) => spread(Some(suite), 1),
                None => "(in the relay)".into(),
            };
            let rest = spread_of(sides, &|s| {
                let suite = s.suite_cpu_us_per_event.unwrap_or(0.0);
                Some(s.machine_cpu_us_per_event? - s.cpu_us_per_event? - suite)
            });
            format!("{} / {suite} / {}", spread(relay, 1), spread(rest, 1))
        };
        let busy = |sides: &[Side]| {
            spread(spread_of(sides, &|s| s.machine_busy.map(|b| b * 100.0)), 0) + " %"
        };
        machine.row(vec![
            name.clone(),
            split(&row.provider),
            busy(&row.provider),
            split(&row.native),
            busy(&row.native),
        ]);
        let mut stage_cells = vec![name.clone()];
        match &row.stages {
            Some(Ok(snapshot)) => {
                for stage in STAGES {
                    let count = snapshot[stage]["count"].as_u64().unwrap_or(0);
                    let nanos = snapshot[stage]["nanos"].as_u64().unwrap_or(0);
                    stage_cells.push(if count == 0 {
                        "– (0)".into()
                    } else {
                        format!("{:.1} ({count})", nanos as f64 / count as f64 / 1e3)
                    });
                }
            }
            Some(Err(why)) => {
                stage_cells.extend(STAGES.iter().map(|_| "n/a".to_string()));
                problems.push(format!("- {name}, stage times: {why}"));
            }
            None => stage_cells.extend(STAGES.iter().map(|_| "n/a".to_string())),
        }
        stages.row(stage_cells);
        for (side, sides) in [("provider", &row.provider), ("native", &row.native)] {
            for (i, s) in sides.iter().enumerate() {
                if let Some(problem) = &s.problem {
                    problems.push(format!("- {name}, {side}, run {}: {problem}", i + 1));
                }
            }
        }
        figures.push(json!({
            "link": name,
            "provider": row.provider,
            "native": row.native,
            "summary": {
                "provider_rate": spread_json(spread_of(&row.provider, &|s| Some(s.rate))),
                "native_rate": spread_json(spread_of(&row.native, &|s| Some(s.rate))),
                "rate_ratio": spread_json(ratio_of(row, &|s| Some(s.rate))),
                "cpu_ratio": spread_json(ratio_of(row, &|s| s.cpu_us_per_event)),
            },
            "stages": match &row.stages {
                Some(Ok(snapshot)) => snapshot.clone(),
                Some(Err(why)) => json!({ "error": why }),
                None => Value::Null,
            },
        }));
    }
    throughput.note(
        "msg/s: events out of the sink / time from the first publish to the last new receipt. \
         Ratios are per run (provider and native of the same run), then median (min–max).",
    );
    let producer_rates: Vec<String> = rows
        .iter()
        .map(|(link, row)| {
            format!(
                "{} {} / {}",
                link.name(),
                spread(spread_of(&row.provider, &|s| Some(s.producer_rate)), 0),
                spread(spread_of(&row.native, &|s| Some(s.producer_rate)), 0)
            )
        })
        .collect();
    throughput.note(format!(
        "The producer's own rate in the flood (published, and confirmed where the broker confirms; \
         provider side / native side), msg/s: {}. A relay cannot show more than its producer gives it; \
         where the broker pushes back on the producer (the embedded broker's queues hold 1,024 events) \
         the producer's rate follows the relay's.",
        producer_rates.join("; ")
    ));
    latency.note(format!(
        "Half load: the producer paced at half the rate that side reached, for {} s.",
        options.half_load_time().as_secs()
    ));
    resources.note(
        "CPU: utime + stime of the relay process (/proc/<pid>/stat) over the flood, / events. \
         The embedded row runs in the suite's process: its CPU (getrusage) and peak RSS (VmHWM, reset \
         before each run) include the producer and the sink.",
    );
    machine.note(
        "Busy CPU time of the whole machine (/proc/stat: user, nice, system, irq, softirq) over the \
         flood, / events, split into the relay process, the suite's own process (producer and sink; \
         for the in-process embedded row it holds the relay too) and the rest: the broker, and \
         anything else the machine ran. Cores busy: that time / (the flood's wall time × cores). \
         Where a side keeps the cores near 100 % busy, its rate is what the machine's CPU allows, \
         and the ratio of rates follows the machine CPU per event of the two sides. The kernel counts \
         CPU time in ticks (10 ms here), so a short flood (`--quick`) can show the rest below zero.",
    );
    stages.note(
        "Each cell: total nanoseconds / times counted, in µs, and the count. \
         decode: a broker message to an event; instantiate: a new instance; reuse: taking a warm one; \
         call: the guest's on-receive less its publishes; encode: the event to the broker's wire; \
         publish: a publish on the link, encode included, until the broker confirmed it; settle: the ack. \
         Wall-clock times, at half the provider's saturation rate so that they show each stage's own cost \
         rather than queueing. Out of process the provider writes its totals to \
         `TRIGGER_MESSAGING_STAGE_TIMES` when it stops; in process (embedded) timing is on for that run only \
         (`messaging_provider::stages`).",
    );
    if !problems.is_empty() {
        throughput.note(format!("Problems:\n{}", problems.join("\n")));
    }
    (
        vec![throughput, latency, resources, machine, stages],
        Value::Array(figures),
    )
}
