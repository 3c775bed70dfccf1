//! This build against an earlier one (`--baseline-bin`): the relay in Rust,
//! Python and JavaScript, out of process on NATS core (queue group in,
//! subject out), through this build with its default instance reuse, this
//! build with a fresh instance per event (`max_instance_reuse_count = 1`),
//! and the earlier build as it runs by default. Both builds run in the same
//! suite run, on the same broker and guests, one after the other.

use super::{READY_LIMIT, RelayApp, STOP_LIMIT, spawn_provider, write_runtime_config};
use crate::flow::{Flow, Pace};
use crate::links::{Link, Names};
use crate::measure::{Guest, Spread, run_id};
use crate::options::Options;
use crate::report::{Report, Table, number, spread, spread_json};
use serde_json::{Value, json};
use std::path::Path;

/// The guests, in table order.
const GUESTS: [Guest; 3] = [Guest::Rust, Guest::Python, Guest::JavaScript];

/// One run: events per second and CPU of the provider process per event.
#[derive(Clone, Copy, Debug, serde::Serialize)]
struct Measured {
    rate: f64,
    cpu_us_per_event: f64,
    lost: usize,
}

/// The three ways a guest runs, in table order: (name, which build, the
/// lines added to its `[[trigger.messaging]]` entry).
const WAYS: [(&str, bool, &str); 3] = [
    ("this build", true, ""),
    (
        "this build, fresh instance per event",
        true,
        "max_instance_reuse_count = 1\n",
    ),
    ("the baseline build", false, ""),
];

/// Runs the section (only with `--baseline-bin`).
pub async fn run(options: &Options, report: &mut Report) -> anyhow::Result<()> {
    let Some(baseline) = &options.baseline_bin else {
        eprintln!("baseline: skipped (no --baseline-bin given)");
        return Ok(());
    };
    let mut rows = Vec::new();
    for guest in GUESTS {
        let wasm = guest.built()?;
        let events = match (guest, options.quick) {
            (_, true) => options.events.min(200),
            (Guest::Rust, false) => options.events,
            (_, false) => options.events.min(5_000),
        };
        let mut ways = Vec::new();
        for (name, current, lines) in WAYS {
            let mut runs = Vec::new();
            for run in 0..options.runs {
                eprintln!(
                    "baseline: {} ({name}) run {}/{}",
                    guest.name(),
                    run + 1,
                    options.runs
                );
                let mut chosen = options.clone();
                if !current {
                    chosen.provider_bin = baseline.clone();
                    chosen.provider_args.clear();
                }
                runs.push(one_run(&chosen, &wasm, lines, events).await?);
            }
            ways.push(runs);
        }
        rows.push((guest, events, ways));
    }
    let (tables, figures) = render(baseline, &rows);
    report.section("baseline", &tables, figures)
}

/// One flood through the relay of `wasm`, out of process on NATS core.
async fn one_run(
    options: &Options,
    wasm: &Path,
    trigger_lines: &str,
    events: usize,
) -> anyhow::Result<Measured> {
    let run = run_id();
    let names = Names::new(&run);
    let dir = tempfile::tempdir()?;
    let manifest = RelayApp {
        name: "bench-relay",
        names: &names,
        wasm,
        input_is_queue: true,
        trigger_lines,
    }
    .write(dir.path())?;
    let link = Link::Nats;
    let config = write_runtime_config(dir.path(), link)?;
    link.prepare(&names).await?;
    let mut flow = Flow::new(options.idle_limit());
    flow.add_sink(link.sink(&names).await?);
    let mut process = spawn_provider(options, &[manifest], config.as_deref(), &[], &[])?;
    process.ready(READY_LIMIT).await?;
    let producer = link.producer(&names).await?;
    let cpu = process.cpu()?;
    let flood = flow
        .phase(vec![producer], &format!("{run}.f."), events, Pace::Flood)
        .await;
    let cpu = process.cpu()?.saturating_sub(cpu);
    process.stop(STOP_LIMIT).await?;
    link.cleanup(&names).await?;
    Ok(Measured {
        rate: flood.rate(),
        cpu_us_per_event: cpu.as_secs_f64() * 1e6 / flood.sent.max(1) as f64,
        lost: flood.lost(),
    })
}

/// The section's table and JSON.
fn render(baseline: &Path, rows: &[(Guest, usize, Vec<Vec<Measured>>)]) -> (Vec<Table>, Value) {
    let mut table = Table::new(
        "This build against the baseline build: the relay out of process on NATS core",
        &[
            "guest",
            "events",
            "msg/s: this build",
            "fresh instance per event",
            "baseline",
            "this / baseline",
            "fresh / baseline",
            "CPU µs/event: this build",
            "fresh instance per event",
            "baseline",
            "lost",
        ],
    );
    let rate = |runs: &[Measured]| Spread::of(runs.iter().map(|m| m.rate));
    let cpu = |runs: &[Measured]| Spread::of(runs.iter().map(|m| m.cpu_us_per_event));
    let ratio = |x: Option<Spread>, base: Option<Spread>| match (x, base) {
        (Some(x), Some(b)) if b.median > 0.0 => format!("{:.2}", x.median / b.median),
        _ => "n/a".into(),
    };
    let mut figures = Vec::new();
    for (guest, events, ways) in rows {
        let (now, fresh, before) = (&ways[0], &ways[1], &ways[2]);
        table.row(vec![
            guest.name().into(),
            number(*events as f64, 0),
            spread(rate(now), 0),
            spread(rate(fresh), 0),
            spread(rate(before), 0),
            ratio(rate(now), rate(before)),
            ratio(rate(fresh), rate(before)),
            spread(cpu(now), 1),
            spread(cpu(fresh), 1),
            spread(cpu(before), 1),
            ways.iter()
                .flatten()
                .map(|m| m.lost)
                .sum::<usize>()
                .to_string(),
        ]);
        figures.push(json!({
            "guest": guest.name(),
            "events": events,
            "this_build": now,
            "fresh_instance_per_event": fresh,
            "baseline": before,
            "summary": {
                "rate": spread_json(rate(now)),
                "fresh_rate": spread_json(rate(fresh)),
                "baseline_rate": spread_json(rate(before)),
                "cpu_us_per_event": spread_json(cpu(now)),
                "fresh_cpu_us_per_event": spread_json(cpu(fresh)),
                "baseline_cpu_us_per_event": spread_json(cpu(before)),
            },
        }));
    }
    table.note(format!(
        "The baseline build is {}; it is run with its own defaults and without `--provider-arg`s. \
         CPU is the provider process's (utime + stime) over the flood, / events. Ratios are of the medians.",
        baseline.display()
    ));
    (vec![table], Value::Array(figures))
}
