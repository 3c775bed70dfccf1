//! Benchmarks, each reported as a ratio against a baseline measured in the
//! same run (`cargo bench`):
//!
//! 1. per-message cost of a fresh instance + `on-receive`: the pooling
//!    allocator against on-demand allocation;
//! 2. end-to-end throughput of the relay sample (queue → wasm → topic) on the
//!    embedded broker against the same relay written in native Rust.
//!
//! The guests must be built first (`scripts/test.sh` or the README's first
//! command build them).

use async_trait::async_trait;
use messaging_provider::broker::embedded::{EmbeddedBroker, EmbeddedSettings};
use messaging_provider::broker::{Broker, SubscribeMode};
use messaging_provider::cloudevents::Event;
use messaging_provider::host::bindings::Channel;
use messaging_provider::host::{
    CacheSetting, ComponentOutput, Grants, Host, HostOptions, InstanceIdentity, MessagingCtx,
    MessagingError, PoolSize,
};
use messaging_provider::{Provider, ProviderOptions};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

/// Accepts every publish, so only the instance's own cost is measured.
struct Sink;

#[async_trait]
impl MessagingCtx for Sink {
    async fn publish(&self, _: Channel, _: Event) -> Result<(), MessagingError> {
        Ok(())
    }
    async fn subscribe(&self, _: Channel) -> Result<String, MessagingError> {
        Ok(String::new())
    }
    async fn unsubscribe(&self, _: String) -> Result<(), MessagingError> {
        Ok(())
    }
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR"))
        .parent()
        .unwrap()
        .to_path_buf()
}

fn order(i: usize) -> Event {
    let mut e = Event::new(
        format!("order-{i}"),
        "urn:bench",
        "com.example.order.created",
    );
    e.data = Some(format!(r#"{{"sku":"A{i}","qty":{}}}"#, i % 7).into_bytes());
    e.datacontenttype = Some("application/json".into());
    e
}

async fn per_message(pooling: bool, wasm: &Path, n: usize) -> Duration {
    let host = Host::new(
        HostOptions {
            pooling,
            cache: CacheSetting::Default,
            ..HostOptions::default()
        },
        PoolSize {
            instances: 64,
            max_memory: 64 << 20,
        },
    )
    .unwrap();
    let component = host.prepare(wasm).unwrap();
    let who = InstanceIdentity {
        app: "bench".into(),
        component: "relay".into(),
        environment: vec![],
        messaging: Arc::new(Sink),
        output: ComponentOutput::console("bench", "relay"),
        max_memory: 64 << 20,
        grants: Grants::none("bench", "relay"),
    };
    for i in 0..50 {
        host.handle(&component, &who, order(i)).await.unwrap();
    }
    let start = Instant::now();
    for i in 0..n {
        host.handle(&component, &who, order(i)).await.unwrap();
    }
    start.elapsed() / n as u32
}

/// The relay's transformation, in native Rust: the baseline.
fn ship(order: &Event) -> Event {
    let data: serde_json::Value = serde_json::from_slice(order.data.as_deref().unwrap()).unwrap();
    let mut e = Event::new(
        format!("{}-shipped", order.id),
        "urn:sample-apps:relay",
        "com.example.order.shipped",
    );
    e.data = Some(
        serde_json::to_vec(&serde_json::json!({ "order": data, "status": "shipped" })).unwrap(),
    );
    e.datacontenttype = Some("application/json".into());
    e.extensions = vec![("relayedfrom".into(), order.id.clone())];
    e
}

async fn native_relay(n: usize) -> f64 {
    let broker = Arc::new(EmbeddedBroker::new(EmbeddedSettings::default()));
    broker.declare_queue("orders", "orders").await.unwrap();
    let mut out = broker
        .subscribe("shipments", SubscribeMode::Topic)
        .await
        .unwrap();
    let mut input = broker
        .subscribe(
            "orders",
            SubscribeMode::Queue {
                group: "orders".into(),
            },
        )
        .await
        .unwrap();
    let relay_broker = broker.clone();
    let relay = tokio::spawn(async move {
        while let Some(d) = input.next().await {
            let (event, _, ack) = d.into_parts();
            relay_broker
                .publish("shipments", &ship(&event))
                .await
                .unwrap();
            ack.ack().await.unwrap();
        }
    });
    let source = broker.clone();
    let rate = drive(
        n,
        move |i| {
            let b = source.clone();
            async move { b.publish("orders", &order(i)).await.unwrap() }
        },
        &mut out,
    )
    .await;
    relay.abort();
    rate
}

async fn wasm_relay(n: usize) -> f64 {
    let provider = Provider::load(ProviderOptions {
        manifests: vec![repo().join("sample-apps/relay/spin.toml")],
        ..Default::default()
    })
    .await
    .unwrap();
    provider.start().await.unwrap();
    let app = provider.app("relay").unwrap().clone();
    let mut out = app.watch("shipments").await.unwrap();
    let source = app.clone();
    let rate = drive(
        n,
        move |i| {
            let app = source.clone();
            async move { app.publish_external("orders", &order(i)).await.unwrap() }
        },
        &mut out,
    )
    .await;
    provider.shutdown(Duration::from_secs(5)).await;
    rate
}

/// Publishes `n` orders from a separate task and counts shipments; returns events/s.
async fn drive<F, Fut>(
    n: usize,
    publish: F,
    out: &mut Box<dyn messaging_provider::broker::Subscription>,
) -> f64
where
    F: Fn(usize) -> Fut + Send + 'static,
    Fut: std::future::Future<Output = ()> + Send,
{
    let start = Instant::now();
    let producer = tokio::spawn(async move {
        for i in 0..n {
            publish(i).await;
        }
    });
    for _ in 0..n {
        let (_, _, ack) = out.next().await.expect("a shipment").into_parts();
        ack.ack().await.unwrap();
    }
    producer.await.unwrap();
    n as f64 / start.elapsed().as_secs_f64()
}

fn main() {
    let runtime = tokio::runtime::Runtime::new().unwrap();
    let wasm = repo().join("target/wasm/wasm32-wasip2/release/relay.wasm");
    assert!(
        wasm.exists(),
        "build the guests first: scripts/test.sh (or cargo build --release --target wasm32-wasip2 in sample-apps)"
    );
    runtime.block_on(async {
        let n = 3000;
        let on_demand = per_message(false, &wasm, n).await;
        let pooled = per_message(true, &wasm, n).await;
        println!(
            "per message (fresh instance + on-receive of the relay, {n} messages, one at a time):"
        );
        println!(
            "  on-demand allocation: {:>8.1} µs",
            on_demand.as_secs_f64() * 1e6
        );
        println!(
            "  pooling allocator:    {:>8.1} µs",
            pooled.as_secs_f64() * 1e6
        );
        println!(
            "  ratio pooling / on-demand: {:.2}",
            pooled.as_secs_f64() / on_demand.as_secs_f64()
        );

        let n = 20_000;
        let native = native_relay(n).await;
        let wasm = wasm_relay(n).await;
        println!("relay throughput, queue → handler → topic on the embedded broker ({n} events):");
        println!("  native Rust relay (baseline): {native:>9.0} events/s");
        println!("  wasm relay component:         {wasm:>9.0} events/s");
        println!("  ratio wasm / native: {:.3}", wasm / native);
    });
}
