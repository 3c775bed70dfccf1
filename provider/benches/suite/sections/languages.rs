//! Guest languages: the same relay in Rust, Python (componentize-py) and
//! JavaScript (componentize-js), on the embedded broker in process, with
//! the provider's default instance handling, with a fresh instance for
//! every event (`max_instance_reuse_count = 1`), with instances kept for
//! 1,000 events instead of 128 (what an interpreted guest gains from fewer
//! instances to make), and with instances mapped anew instead of taken from
//! the pooling allocator (the comparison the old `dispatch` bench made).

use super::{RelayApp, quiet_output, unknown_key};
use crate::flow::{Flow, Pace};
use crate::links::{Names, embedded};
use crate::measure::{Guest, Spread, own_cpu, run_id};
use crate::options::Options;
use crate::report::{Report, Table, number, spread, spread_json};
use anyhow::Context as _;
use messaging_provider::host::HostOptions;
use messaging_provider::{Provider, ProviderOptions};
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

/// The guests, in table order.
const GUESTS: [Guest; 3] = [Guest::Rust, Guest::Python, Guest::JavaScript];

/// A way of running the guests.
struct Variant {
    /// Its name in the tables.
    name: &'static str,
    /// Its key in the JSON.
    key: &'static str,
    /// Lines it adds to the component's `[[trigger.messaging]]` entry.
    trigger_lines: &'static str,
    /// Whether instances come from the pooling allocator.
    pooling: bool,
}

/// The variants, in table order.
const VARIANTS: [Variant; 4] = [
    Variant {
        name: "default",
        key: "default",
        trigger_lines: "",
        pooling: true,
    },
    Variant {
        name: "fresh instance per event",
        key: "fresh_instance_per_event",
        trigger_lines: "max_instance_reuse_count = 1\n",
        pooling: true,
    },
    Variant {
        name: "reuse 1,000",
        key: "reuse_1000",
        trigger_lines: "max_instance_reuse_count = 1000\n",
        pooling: true,
    },
    Variant {
        name: "pooling off",
        key: "pooling_off",
        trigger_lines: "",
        pooling: false,
    },
];

/// One run: events per second and CPU per event.
#[derive(Clone, Copy, Debug, serde::Serialize)]
struct Measured {
    rate: f64,
    cpu_us_per_event: f64,
    lost: usize,
}

/// A variant's runs, or why it could not run.
type Runs = Result<Vec<Measured>, String>;

/// Runs the section.
pub async fn run(options: &Options, report: &mut Report) -> anyhow::Result<()> {
    let events = if options.quick {
        options.events.min(200)
    } else {
        options.events.min(5_000)
    };
    let mut results: Vec<(Guest, Vec<Runs>)> = Vec::new();
    for guest in GUESTS {
        let wasm = guest.built()?;
        let mut variants = Vec::new();
        for variant in &VARIANTS {
            let mut runs = Vec::new();
            let mut outcome = Ok(());
            for run in 0..options.runs {
                eprintln!(
                    "languages: {} ({}) run {}/{}",
                    guest.name(),
                    variant.name,
                    run + 1,
                    options.runs
                );
                match one_run(options, &wasm, variant, events).await {
                    Ok(measured) => runs.push(measured),
                    Err(e) if unknown_key(&e) => {
                        outcome = Err(format!(
                            "n/a: this provider does not know `{}` (its load error: {})",
                            variant.trigger_lines.trim(),
                            first_line(&e)
                        ));
                        break;
                    }
                    Err(e) => {
                        return Err(e).with_context(|| {
                            format!("the {} relay ({})", guest.name(), variant.name)
                        });
                    }
                }
            }
            variants.push(outcome.map(|()| runs));
        }
        results.push((guest, variants));
    }
    let (tables, figures) = render(events, &results);
    report.section("languages", &tables, figures)
}

/// What a load error says about the unknown key, without the temporary
/// file's path and the list of known keys.
fn first_line(e: &anyhow::Error) -> String {
    let text = format!("{e:#}");
    let line = text
        .lines()
        .find(|l| l.contains("unknown field"))
        .unwrap_or_default();
    let from_key = line.find('`').map_or(line, |at| &line[at..]);
    from_key
        .split(", expected")
        .next()
        .unwrap_or(from_key)
        .trim()
        .to_string()
}

/// One flood through the guest's relay.
async fn one_run(
    options: &Options,
    wasm: &std::path::Path,
    variant: &Variant,
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
        trigger_lines: variant.trigger_lines,
    }
    .write(dir.path())?;
    let provider = Provider::load(ProviderOptions {
        manifests: vec![manifest],
        output: quiet_output(),
        host: HostOptions {
            pooling: variant.pooling,
            ..HostOptions::default()
        },
        ..Default::default()
    })
    .await?;
    provider.start().await?;
    let app = provider
        .app("bench-relay")
        .context("the relay app is not loaded")?
        .clone();
    let mut flow = Flow::new(options.idle_limit());
    flow.add_sink(embedded::watch(&app, "shipments").await?);
    let producer = Arc::new(embedded::AppProducer {
        app,
        channel: "orders".into(),
    });
    let cpu = own_cpu();
    let flood = flow
        .phase(vec![producer], &format!("{run}.f."), events, Pace::Flood)
        .await;
    let cpu = own_cpu().saturating_sub(cpu);
    provider.shutdown(Duration::from_secs(5)).await;
    Ok(Measured {
        rate: flood.rate(),
        cpu_us_per_event: cpu.as_secs_f64() * 1e6 / flood.sent.max(1) as f64,
        lost: flood.lost(),
    })
}

/// The section's table and JSON.
fn render(events: usize, results: &[(Guest, Vec<Runs>)]) -> (Vec<Table>, Value) {
    let mut columns = vec![
        "guest".to_string(),
        "msg/s".into(),
        "CPU µs/event".into(),
        "msg/s vs Rust".into(),
        "CPU vs Rust".into(),
    ];
    for variant in &VARIANTS[1..] {
        columns.push(format!("msg/s, {}", variant.name));
        columns.push(format!("CPU µs/event, {}", variant.name));
    }
    columns.push("lost".into());
    let columns: Vec<&str> = columns.iter().map(String::as_str).collect();
    let mut table = Table::new(
        &format!(
            "Guest languages: the relay on the embedded broker, in process, {} events",
            number(events as f64, 0)
        ),
        &columns,
    );
    let rate = |runs: &Runs| {
        runs.as_ref()
            .ok()
            .and_then(|r| Spread::of(r.iter().map(|m| m.rate)))
    };
    let cpu = |runs: &Runs| {
        runs.as_ref()
            .ok()
            .and_then(|r| Spread::of(r.iter().map(|m| m.cpu_us_per_event)))
    };
    let cell = |runs: &Runs, value: Option<Spread>, decimals| match runs {
        Err(why) => why.split(':').next().unwrap_or("n/a").to_string(),
        Ok(_) => spread(value, decimals),
    };
    let rust = &results[0].1[0];
    let (rust_rate, rust_cpu) = (rate(rust).map(|s| s.median), cpu(rust).map(|s| s.median));
    let mut figures = Vec::new();
    let mut notes = Vec::new();
    for (guest, variants) in results {
        let default = &variants[0];
        let ratio = |x: Option<Spread>, base: Option<f64>| match (x, base) {
            (Some(x), Some(b)) if b > 0.0 => format!("{:.2}", x.median / b),
            _ => "n/a".into(),
        };
        let lost: usize = variants
            .iter()
            .filter_map(|v| v.as_ref().ok())
            .flatten()
            .map(|m| m.lost)
            .sum();
        let mut row = vec![
            guest.name().into(),
            cell(default, rate(default), 0),
            cell(default, cpu(default), 1),
            ratio(rate(default), rust_rate),
            ratio(cpu(default), rust_cpu),
        ];
        for runs in &variants[1..] {
            row.push(cell(runs, rate(runs), 0));
            row.push(cell(runs, cpu(runs), 1));
        }
        row.push(lost.to_string());
        table.row(row);
        let mut figure = serde_json::Map::new();
        figure.insert("guest".into(), json!(guest.name()));
        for (variant, runs) in VARIANTS.iter().zip(variants) {
            if let Err(why) = runs {
                let note = format!("- {}: {why}", variant.name);
                if !notes.contains(&note) {
                    notes.push(note);
                }
            }
            figure.insert(
                variant.key.into(),
                json!({
                    "runs": runs_json(runs),
                    "rate": spread_json(rate(runs)),
                    "cpu_us_per_event": spread_json(cpu(runs)),
                }),
            );
        }
        figures.push(Value::Object(figure));
    }
    table.note(
        "Ratios are of the medians. CPU is the suite's whole process (getrusage), producer and sink included. \
         \"Fresh instance per event\" sets `max_instance_reuse_count = 1` on the component, \
         \"reuse 1,000\" `max_instance_reuse_count = 1000` (the default is 128); \
         \"pooling off\" maps each instance's memory anew (`--disable-pooling`).",
    );
    if !notes.is_empty() {
        table.note(notes.join("\n"));
    }
    (vec![table], Value::Array(figures))
}

/// A variant's runs as JSON, or why it could not run.
fn runs_json(runs: &Runs) -> Value {
    match runs {
        Ok(runs) => json!(runs),
        Err(why) => json!({ "error": why }),
    }
}
