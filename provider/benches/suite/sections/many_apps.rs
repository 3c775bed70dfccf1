//! Many apps in one process: 1, 10, 100 and 1,000 copies of the relay app
//! (distinct names and addresses, the embedded broker, default settings)
//! in one `trigger-messaging up` with many `-f`: time to `Ready`, resident
//! memory once ready, and memory per app beyond the first. A provider that
//! refuses a count at start is reported with its error line.

use super::{READY_LIMIT, RelayApp, STOP_LIMIT, spawn_provider};
use crate::links::Names;
use crate::measure::{Guest, Spread, Started, mib, run_id};
use crate::options::Options;
use crate::report::{Report, Table, number, spread, spread_json};
use serde_json::{Value, json};
use std::time::Duration;

/// How long after `Ready` memory is read (background work settles).
const SETTLE: Duration = Duration::from_millis(500);

/// One start with `apps` apps.
#[derive(Clone, Debug, serde::Serialize)]
struct Start {
    ready_s: f64,
    rss_mib: f64,
}

/// Runs the section.
pub async fn run(options: &Options, report: &mut Report) -> anyhow::Result<()> {
    let counts: &[usize] = if options.quick {
        &[1, 10, 100]
    } else {
        &[1, 10, 100, 1000]
    };
    let wasm = Guest::Rust.built()?;
    let mut results: Vec<(usize, Result<Vec<Start>, String>)> = Vec::new();
    for &apps in counts {
        let mut starts = Vec::new();
        let mut refused = None;
        for run in 0..options.runs {
            eprintln!("many apps: {apps} apps, run {}/{}", run + 1, options.runs);
            let dir = tempfile::tempdir()?;
            let id = run_id();
            let manifests = (0..apps)
                .map(|k| {
                    let names = Names::new(&format!("{id}.{k}"));
                    RelayApp {
                        name: &format!("relay-{k}"),
                        names: &names,
                        wasm: &wasm,
                        input_is_queue: true,
                        trigger_lines: "",
                    }
                    .write(&dir.path().join(format!("app-{k}")))
                })
                .collect::<anyhow::Result<Vec<_>>>()?;
            let limit = READY_LIMIT + Duration::from_millis(200) * apps as u32;
            let mut process = spawn_provider(options, &manifests, None, &[], &[])?;
            match process.wait_ready(limit).await? {
                Started::Ready(after) => {
                    tokio::time::sleep(SETTLE).await;
                    let rss = process.rss()?;
                    starts.push(Start {
                        ready_s: after.as_secs_f64(),
                        rss_mib: mib(rss),
                    });
                    process.stop(STOP_LIMIT).await?;
                }
                Started::Refused(why) => {
                    refused = Some(error_line(&why));
                    break;
                }
            }
        }
        results.push((apps, refused.map_or(Ok(starts), Err)));
    }
    let rss_of = |starts: &[Start]| Spread::of(starts.iter().map(|s| s.rss_mib));
    let one_app = results
        .iter()
        .find(|(apps, _)| *apps == 1)
        .and_then(|(_, r)| r.as_ref().ok())
        .and_then(|s| rss_of(s))
        .map(|s| s.median);
    let mut table = Table::new(
        "Many apps in one `trigger-messaging up` (the relay app, embedded broker, default settings)",
        &[
            "apps",
            "to Ready (s)",
            "VmRSS after Ready (MiB)",
            "per app beyond the first (MiB)",
        ],
    );
    let mut figures = Vec::new();
    let mut refusals = Vec::new();
    for (apps, result) in &results {
        match result {
            Ok(starts) => {
                let rss = rss_of(starts);
                let per_app = match (rss, one_app) {
                    (Some(rss), Some(one)) if *apps > 1 => {
                        format!("{:.2}", (rss.median - one) / (*apps - 1) as f64)
                    }
                    _ => "–".into(),
                };
                table.row(vec![
                    number(*apps as f64, 0),
                    spread(Spread::of(starts.iter().map(|s| s.ready_s)), 2),
                    spread(rss, 1),
                    per_app,
                ]);
                figures.push(json!({
                    "apps": apps,
                    "starts": starts,
                    "ready_s": spread_json(Spread::of(starts.iter().map(|s| s.ready_s))),
                    "rss_mib": spread_json(rss),
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
    table.note(format!(
        "VmRSS is read {} ms after Ready; per app: (VmRSS with N apps − with 1) / (N − 1), medians.",
        SETTLE.as_millis()
    ));
    if !refusals.is_empty() {
        table.note(format!("Refused at start:\n{}", refusals.join("\n")));
    }
    report.section("many-apps", &[table], Value::Array(figures))
}

/// The line of a refusal that says why (the provider's error), not the whole stderr.
fn error_line(why: &str) -> String {
    why.lines()
        .rev()
        .find(|l| {
            let l = l.to_ascii_lowercase();
            l.contains("error") || l.contains("instances") || l.contains("refuse")
        })
        .or_else(|| why.lines().last())
        .unwrap_or(why)
        .trim()
        .chars()
        .take(400)
        .collect()
}
