//! Flat throughput: 1, 10 and 100 relay apps (each with its own channels)
//! in one in-process provider on the embedded broker; the producer spreads
//! the events round robin over the apps and sinks watch every app's
//! output. Does the total hold as apps are added?

use super::{RelayApp, in_process_provider};
use crate::flow::{Flow, Pace, Producer};
use crate::links::{Names, embedded};
use crate::measure::{Guest, Spread, run_id};
use crate::options::Options;
use crate::report::{Report, Table, number, spread, spread_json};
use anyhow::Context as _;
use serde_json::{Value, json};
use std::sync::Arc;
use std::time::Duration;

/// One app count's runs (msg/s and events, each), or why the provider refused.
type Outcome = Result<Vec<(f64, usize)>, String>;

/// Runs the section.
pub async fn run(options: &Options, report: &mut Report) -> anyhow::Result<()> {
    let counts: &[usize] = if options.quick {
        &[1, 10]
    } else {
        &[1, 10, 100]
    };
    let wasm = Guest::Rust.built()?;
    let mut results: Vec<(usize, Outcome)> = Vec::new();
    for &apps in counts {
        let mut runs = Vec::new();
        let mut refused = None;
        for run in 0..options.runs {
            eprintln!("flat: {apps} apps, run {}/{}", run + 1, options.runs);
            match one_run(options, &wasm, apps).await {
                Ok(measured) => runs.push(measured),
                Err(Refusal(why)) => {
                    refused = Some(why);
                    break;
                }
            }
        }
        results.push((apps, refused.map_or(Ok(runs), Err)));
    }
    let mut table = Table::new(
        &format!(
            "Flat throughput: relay apps in one in-process provider, embedded broker, {} events in all",
            number(options.events as f64, 0)
        ),
        &["apps", "total msg/s", "vs 1 app", "lost"],
    );
    let rate_of = |runs: &[(f64, usize)]| Spread::of(runs.iter().map(|r| r.0));
    let one = results
        .first()
        .and_then(|(_, r)| r.as_ref().ok())
        .and_then(|r| rate_of(r))
        .map(|s| s.median);
    let mut figures = Vec::new();
    let mut refusals = Vec::new();
    for (apps, result) in &results {
        match result {
            Ok(runs) => {
                let rate = rate_of(runs);
                table.row(vec![
                    number(*apps as f64, 0),
                    spread(rate, 0),
                    match (rate, one) {
                        (Some(r), Some(o)) if o > 0.0 => format!("{:.2}", r.median / o),
                        _ => "n/a".into(),
                    },
                    runs.iter().map(|r| r.1).sum::<usize>().to_string(),
                ]);
                figures.push(json!({
                    "apps": apps,
                    "rates": runs.iter().map(|r| r.0).collect::<Vec<_>>(),
                    "rate": spread_json(rate),
                }));
            }
            Err(why) => {
                table.row(vec![
                    number(*apps as f64, 0),
                    "refused".into(),
                    "–".into(),
                    "–".into(),
                ]);
                refusals.push(format!("- {apps} apps: {why}"));
                figures.push(json!({ "apps": apps, "refused": why }));
            }
        }
    }
    table.note("Each app has its own queue and topic; the events go round robin over the apps.");
    if !refusals.is_empty() {
        table.note(format!("Refused at load:\n{}", refusals.join("\n")));
    }
    report.section("flat", &[table], Value::Array(figures))
}

/// A provider that refused to load the apps (the reason), as opposed to a
/// failure of the suite.
struct Refusal(String);

/// One flood spread over `apps` apps: (msg/s, lost).
async fn one_run(
    options: &Options,
    wasm: &std::path::Path,
    apps: usize,
) -> Result<(f64, usize), Refusal> {
    let refusal =
        |e: anyhow::Error| Refusal(format!("{e:#}").lines().next().unwrap_or("").to_string());
    let id = run_id();
    let dir = tempfile::tempdir().map_err(|e| refusal(e.into()))?;
    let manifests = (0..apps)
        .map(|k| {
            let names = Names::new(&format!("{id}.{k}"));
            RelayApp {
                name: &format!("relay-{k}"),
                names: &names,
                wasm,
                input_is_queue: true,
                trigger_lines: "",
            }
            .write(&dir.path().join(format!("app-{k}")))
        })
        .collect::<anyhow::Result<Vec<_>>>()
        .map_err(refusal)?;
    let provider = in_process_provider(manifests).await.map_err(refusal)?;
    let measured = async {
        let mut flow = Flow::new(options.idle_limit());
        let mut producers: Vec<Arc<dyn Producer>> = Vec::new();
        for k in 0..apps {
            let app = provider
                .app(&format!("relay-{k}"))
                .with_context(|| format!("app relay-{k} is not loaded"))?
                .clone();
            flow.add_sink(embedded::watch(&app, "shipments").await?);
            producers.push(Arc::new(embedded::AppProducer {
                app,
                channel: "orders".into(),
            }));
        }
        let flood = flow
            .phase(producers, &format!("{id}.f."), options.events, Pace::Flood)
            .await;
        anyhow::Ok((flood.rate(), flood.lost()))
    }
    .await;
    provider.shutdown(Duration::from_secs(5)).await;
    measured.map_err(|e| Refusal(format!("the run failed: {e:#}")))
}
