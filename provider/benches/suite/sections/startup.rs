//! Start-up: from spawning `trigger-messaging up` (the relay on a core
//! NATS link) to its `Ready` line and to the first event it handled, with
//! an empty compiled-code cache (cold) and with the cache that start filled
//! (warm). The sink subscribes first; after the spawn, an order goes out
//! every few milliseconds until a shipment comes back.

use super::{READY_LIMIT, RelayApp, STOP_LIMIT, spawn_provider, write_runtime_config};
use crate::flow::{Producer, Sink, order};
use crate::links::{Link, Names};
use crate::measure::{Guest, Spread, run_id};
use crate::options::Options;
use crate::report::{Report, Table, spread, spread_json};
use anyhow::{Context as _, bail};
use serde_json::json;
use std::path::Path;
use std::time::{Duration, Instant};

/// How often an order goes out while waiting for the first shipment.
const PROBE_EVERY: Duration = Duration::from_millis(5);
/// How long the first shipment may take after the spawn.
const FIRST_EVENT_LIMIT: Duration = Duration::from_secs(120);

/// One start: to Ready and to the first handled event.
#[derive(Clone, Copy, Debug, serde::Serialize)]
struct Start {
    ready_ms: f64,
    first_event_ms: f64,
}

/// Runs the section.
pub async fn run(options: &Options, report: &mut Report) -> anyhow::Result<()> {
    let wasm = Guest::Rust.built()?;
    let (mut cold, mut warm) = (Vec::new(), Vec::new());
    for run in 0..options.runs {
        eprintln!("startup: run {}/{}", run + 1, options.runs);
        let cache = tempfile::tempdir()?;
        let config = cache.path().join("cache.toml");
        let directory = cache.path().join("compiled");
        std::fs::write(
            &config,
            format!("[cache]\ndirectory = \"{}\"\n", directory.display()),
        )
        .with_context(|| format!("cannot write {}", config.display()))?;
        cold.push(
            one_start(options, &wasm, &config)
                .await
                .context("cold start")?,
        );
        warm.push(
            one_start(options, &wasm, &config)
                .await
                .context("warm start")?,
        );
    }
    let mut table = Table::new(
        "Start-up: `trigger-messaging up` with the relay on core NATS (ms from the spawn)",
        &[
            "compiled-code cache",
            "to Ready",
            "to the first handled event",
        ],
    );
    let ready = |starts: &[Start]| Spread::of(starts.iter().map(|s| s.ready_ms));
    let first = |starts: &[Start]| Spread::of(starts.iter().map(|s| s.first_event_ms));
    for (name, starts) in [
        ("cold (empty)", &cold),
        ("warm (filled by the cold start)", &warm),
    ] {
        table.row(vec![
            name.into(),
            spread(ready(starts), 0),
            spread(first(starts), 0),
        ]);
    }
    table.note(format!(
        "Each start has a cache of its own (`--cache` with a wasmtime cache config whose `directory` is a fresh temporary directory); \
         the first handled event is the first shipment the sink saw, with an order published every {} ms from the spawn on.",
        PROBE_EVERY.as_millis()
    ));
    let figures = json!({
        "cold": cold,
        "warm": warm,
        "summary": {
            "cold_ready_ms": spread_json(ready(&cold)),
            "cold_first_event_ms": spread_json(first(&cold)),
            "warm_ready_ms": spread_json(ready(&warm)),
            "warm_first_event_ms": spread_json(first(&warm)),
        },
    });
    report.section("startup", &[table], figures)
}

/// Starts the provider with the cache config `cache` and times it.
async fn one_start(options: &Options, wasm: &Path, cache: &Path) -> anyhow::Result<Start> {
    let link = Link::Nats;
    let run = run_id();
    let names = Names::new(&run);
    let dir = tempfile::tempdir()?;
    let manifest = RelayApp {
        name: "bench-relay",
        names: &names,
        wasm,
        input_is_queue: true,
        trigger_lines: "",
    }
    .write(dir.path())?;
    let config = write_runtime_config(dir.path(), link)?;
    let mut sink = link.sink(&names).await?;
    let producer = link.producer(&names).await?;
    let started = Instant::now();
    let mut process = spawn_provider(
        options,
        &[manifest],
        config.as_deref(),
        &["--cache".into(), cache.display().to_string()],
        &[],
    )?;
    let ready = process.ready(READY_LIMIT).await?;
    let first = first_shipment(producer.as_ref(), sink.as_mut(), &run, started).await?;
    process.stop(STOP_LIMIT).await?;
    Ok(Start {
        ready_ms: ready.as_secs_f64() * 1e3,
        first_event_ms: first.as_secs_f64() * 1e3,
    })
}

/// Publishes an order every [`PROBE_EVERY`] until a shipment comes out;
/// returns when it did, counted from `started`.
async fn first_shipment(
    producer: &dyn Producer,
    sink: &mut dyn Sink,
    run: &str,
    started: Instant,
) -> anyhow::Result<Duration> {
    let mut probe = tokio::time::interval(PROBE_EVERY);
    let mut index = 0;
    let deadline = tokio::time::sleep(FIRST_EVENT_LIMIT);
    tokio::pin!(deadline);
    loop {
        tokio::select! {
            _ = probe.tick() => {
                producer.send(order(&format!("{run}.s."), index)).await?.await?;
                producer.finish().await?;
                index += 1;
            }
            shipment = sink.next() => {
                match shipment? {
                    Some(_) => return Ok(started.elapsed()),
                    None => bail!("the sink's subscription ended"),
                }
            }
            () = &mut deadline => bail!("no shipment within {FIRST_EVENT_LIMIT:?} of the spawn"),
        }
    }
}
