//! The metrics' cost on the event path: what one event adds (its counters,
//! two clock reads and the handler and publish histograms, as dispatch and
//! `send` do them), on one thread and on two threads sharing one
//! subscription's metrics (both cores, the worst case for the histograms'
//! locks). Compare with the relay section's provider CPU per event.

use crate::measure::Spread;
use crate::options::Options;
use crate::report::{Report, Table, spread, spread_json};
use messaging_provider::metrics::{DeliverySource, Metrics};
use serde_json::json;
use std::time::Instant;

/// Runs the section.
pub async fn run(options: &Options, report: &mut Report) -> anyhow::Result<()> {
    let events: u64 = if options.quick { 20_000 } else { 2_000_000 };
    let (mut one, mut two) = (Vec::new(), Vec::new());
    for run in 0..options.runs {
        eprintln!("metrics: run {}/{}", run + 1, options.runs);
        one.push(ns_per_event(events, 1));
        two.push(ns_per_event(events, 2));
    }
    let mut table = Table::new(
        "Metrics: what one event adds to the provider's CPU (ns per event)",
        &["threads", "ns per event"],
    );
    table.row(vec!["1".into(), spread(Spread::of(one.iter().copied()), 1)]);
    table.row(vec![
        "2, one subscription's metrics shared".into(),
        spread(Spread::of(two.iter().copied()), 1),
    ]);
    table.note(format!(
        "{events} events per run: per event, the delivery's `received` and `handled` counters, two clock reads around the handler and \
         its duration histogram, the publish's `sent` counter, two clock reads and its latency histogram — what an event that is \
         handled and publishes once costs in metrics. With two threads, the figure is CPU per event (both threads' time / events)."
    ));
    let figures = json!({
        "events": events,
        "one_thread_ns": one,
        "two_threads_ns": two,
        "summary": {
            "one_thread_ns": spread_json(Spread::of(one.iter().copied())),
            "two_threads_ns": spread_json(Spread::of(two.iter().copied())),
        },
    });
    report.section("metrics", &[table], figures)
}

/// CPU nanoseconds per event of the metrics work, `threads` sharing it.
fn ns_per_event(events: u64, threads: u64) -> f64 {
    let metrics = Metrics::default();
    metrics.add_link("default", "nats");
    let delivery = metrics.delivery(&DeliverySource {
        app: "bench",
        component: "relay",
        channel: "orders",
        link: "default",
        address: "bench.orders",
    });
    let send = metrics.send("bench", "shipments", "default", "bench.shipments");
    let started = Instant::now();
    std::thread::scope(|scope| {
        for _ in 0..threads {
            let (delivery, send) = (&delivery, &send);
            scope.spawn(move || {
                for _ in 0..events / threads {
                    delivery.received.inc();
                    let running = Instant::now();
                    let publishing = Instant::now();
                    send.sent.inc();
                    send.duration
                        .observe(std::hint::black_box(publishing.elapsed().as_secs_f64()));
                    delivery
                        .duration
                        .observe(std::hint::black_box(running.elapsed().as_secs_f64()));
                    delivery.handled.inc();
                }
            });
        }
    });
    started.elapsed().as_nanos() as f64 * threads as f64 / events as f64
}
