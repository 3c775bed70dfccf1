//! Soak: the provider relaying on JetStream (out of process) at saturation
//! for `--soak` seconds, the producer keeping at most 5,000 events published
//! but not yet seen at the sink; the provider's resident memory sampled
//! every few seconds. Memory that keeps growing under a steady load shows
//! as a slope.

use super::{
    READY_LIMIT, RelayApp, STOP_LIMIT, describe_problem, spawn_provider, write_runtime_config,
};
use crate::flow::{Flow, Pace};
use crate::links::{Link, Names};
use crate::measure::{Guest, mib, run_id, status_bytes};
use crate::options::Options;
use crate::report::{Report, Table, number};
use serde_json::json;
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Events published but not yet seen at the sink, at most.
const BACKLOG: usize = 5_000;

/// Runs the section.
pub async fn run(options: &Options, report: &mut Report) -> anyhow::Result<()> {
    let link = Link::JetStream;
    let wasm = Guest::Rust.built()?;
    let run = run_id();
    let names = Names::new(&run);
    let dir = tempfile::tempdir()?;
    let manifest = RelayApp {
        name: "bench-relay",
        names: &names,
        wasm: &wasm,
        input_is_queue: true,
        trigger_lines: "",
    }
    .write(dir.path())?;
    let config = write_runtime_config(dir.path(), link)?;
    let every = Duration::from_secs(if options.quick { 1 } else { 5 });
    eprintln!("soak: {} s on JetStream", options.soak.as_secs());
    link.prepare(&names).await?;
    let measured = async {
        let mut flow = Flow::new(options.idle_limit());
        flow.add_sink(link.sink(&names).await?);
        let mut process = spawn_provider(options, &[manifest], config.as_deref(), &[], &[])?;
        process.ready(READY_LIMIT).await?;
        let producer = link.producer(&names).await?;
        let pid = process.pid();
        let started = Instant::now();
        let samples: Arc<Mutex<Vec<(f64, f64)>>> = Arc::default();
        let sampling = samples.clone();
        let sampler = tokio::spawn(async move {
            let mut tick = tokio::time::interval(every);
            loop {
                tick.tick().await;
                let Ok(rss) = status_bytes(pid, "VmRSS:") else {
                    return;
                };
                let sample = (started.elapsed().as_secs_f64(), mib(rss));
                sampling.lock().expect("samples lock").push(sample);
            }
        });
        let phase = flow
            .phase(
                vec![producer],
                &format!("{run}.s."),
                usize::MAX,
                Pace::Backlog {
                    limit: BACKLOG,
                    until: started + options.soak,
                },
            )
            .await;
        sampler.abort();
        process.stop(STOP_LIMIT).await?;
        let samples = samples.lock().expect("samples lock").clone();
        anyhow::Ok((phase, samples))
    }
    .await;
    if let Err(e) = link.cleanup(&names).await {
        eprintln!("warning: cleaning up after the soak: {e:#}");
    }
    let (phase, samples) = measured?;
    let rss: Vec<f64> = samples.iter().map(|s| s.1).collect();
    let first = rss.first().copied();
    let last = rss.last().copied();
    let max = rss.iter().copied().reduce(f64::max);
    let slope = slope_per_minute(&samples);
    let mut table = Table::new(
        &format!(
            "Soak: the provider relaying on JetStream for {} s at saturation (at most {} events outstanding)",
            options.soak.as_secs(),
            number(BACKLOG as f64, 0)
        ),
        &[
            "events relayed",
            "msg/s",
            "lost / duplicates",
            "VmRSS first / max / last (MiB)",
            "slope (MiB/min)",
            "samples",
        ],
    );
    let mib_cell = |x: Option<f64>| x.map_or("n/a".into(), |x| format!("{x:.1}"));
    table.row(vec![
        number(phase.received as f64, 0),
        number(phase.rate(), 0),
        format!("{} / {}", phase.lost(), phase.duplicates),
        format!(
            "{} / {} / {}",
            mib_cell(first),
            mib_cell(max),
            mib_cell(last)
        ),
        slope.map_or("n/a".into(), |s| format!("{s:+.2}")),
        samples.len().to_string(),
    ]);
    table.note(format!(
        "VmRSS of the provider every {} s from Ready; the slope is a least-squares fit over the samples.",
        every.as_secs()
    ));
    if let Some(problem) = describe_problem(&phase) {
        table.note(format!("Problem: {problem}"));
    }
    let figures = json!({
        "seconds": options.soak.as_secs(),
        "relayed": phase.received,
        "sent": phase.sent,
        "rate": phase.rate(),
        "lost": phase.lost(),
        "duplicates": phase.duplicates,
        "rss_mib": { "first": first, "max": max, "last": last },
        "slope_mib_per_minute": slope,
        "samples": samples,
    });
    report.section("soak", &[table], figures)
}

/// The least-squares slope of (seconds, MiB) samples, in MiB per minute.
fn slope_per_minute(samples: &[(f64, f64)]) -> Option<f64> {
    if samples.len() < 2 {
        return None;
    }
    let n = samples.len() as f64;
    let mean_t = samples.iter().map(|s| s.0).sum::<f64>() / n;
    let mean_m = samples.iter().map(|s| s.1).sum::<f64>() / n;
    let covariance: f64 = samples
        .iter()
        .map(|s| (s.0 - mean_t) * (s.1 - mean_m))
        .sum();
    let variance: f64 = samples.iter().map(|s| (s.0 - mean_t).powi(2)).sum();
    (variance > 0.0).then(|| covariance / variance * 60.0)
}
