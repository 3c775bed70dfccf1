//! OpenTelemetry traces, exported over OTLP/HTTP when the standard variables
//! ask for it (`OTEL_EXPORTER_OTLP_ENDPOINT` or
//! `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`; `OTEL_SERVICE_NAME`,
//! `OTEL_EXPORTER_OTLP_HEADERS`, `OTEL_BSP_*` and the rest as the SDK reads
//! them). Off by default, and then an event pays one branch.
//!
//! A handler run is a consumer span whose parent is the context the event
//! carries in the CloudEvents distributed-tracing extension (`traceparent`,
//! `tracestate`); an event published from that run carries the run's
//! context to the publish, which is a producer span and writes its own
//! context into the event it sends. So one trace follows an event through
//! apps and brokers; the run's outbound HTTP requests carry it as headers.

use crate::cloudevents::Event;
use opentelemetry::propagation::{Extractor, Injector, TextMapPropagator as _};
use opentelemetry::trace::{SpanKind, Status, TraceContextExt as _, Tracer as _};
use opentelemetry::{Context, KeyValue};
use opentelemetry_sdk::propagation::TraceContextPropagator;
use opentelemetry_sdk::trace::{SdkTracer, SdkTracerProvider};
use std::sync::OnceLock;

/// The CloudEvents extension (and HTTP header) that carries the trace context.
pub const TRACEPARENT: &str = "traceparent";
/// Its vendor-specific companion.
pub const TRACESTATE: &str = "tracestate";

struct Tracing {
    provider: SdkTracerProvider,
    tracer: SdkTracer,
    propagator: TraceContextPropagator,
}

static TRACING: OnceLock<Tracing> = OnceLock::new();

/// Starts exporting traces if the environment asks for it (call once,
/// outside any async runtime: the exporter's HTTP client blocks). `Ok(false)`
/// when it does not.
pub fn init_from_env() -> anyhow::Result<bool> {
    let set = |name: &str| std::env::var_os(name).is_some_and(|v| !v.is_empty());
    let asked = set("OTEL_EXPORTER_OTLP_ENDPOINT") || set("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT");
    let disabled = std::env::var("OTEL_SDK_DISABLED").is_ok_and(|v| v.eq_ignore_ascii_case("true"))
        || std::env::var("OTEL_TRACES_EXPORTER").is_ok_and(|v| v == "none");
    if !asked || disabled {
        return Ok(false);
    }
    for name in [
        "OTEL_EXPORTER_OTLP_PROTOCOL",
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
    ] {
        if let Ok(protocol) = std::env::var(name)
            && protocol != "http/protobuf"
        {
            anyhow::bail!(
                "{name}={protocol}: traces are exported over OTLP/HTTP only (`http/protobuf`)"
            );
        }
    }
    let exporter = opentelemetry_otlp::SpanExporter::builder()
        .with_http()
        .build()
        .map_err(|e| anyhow::anyhow!("cannot set up the OTLP trace exporter: {e}"))?;
    let mut resource = opentelemetry_sdk::Resource::builder();
    if !set("OTEL_SERVICE_NAME") {
        resource = resource.with_service_name("trigger-messaging");
    }
    let provider = SdkTracerProvider::builder()
        .with_batch_exporter(exporter)
        .with_resource(resource.build())
        .build();
    let tracer = opentelemetry::trace::TracerProvider::tracer(&provider, "trigger-messaging");
    let _ = TRACING.set(Tracing {
        provider,
        tracer,
        propagator: TraceContextPropagator::new(),
    });
    Ok(true)
}

/// Sends the spans not yet exported and stops (call at exit, outside any
/// async runtime).
pub fn shutdown() {
    if let Some(tracing) = TRACING.get()
        && let Err(e) = tracing.provider.shutdown()
    {
        tracing::warn!("traces: the last spans may not have been exported ({e})");
    }
}

/// Whether spans are made at all.
pub fn enabled() -> bool {
    TRACING.get().is_some()
}

/// Where an event is handled or published, for a span's name and attributes.
pub struct Place<'a> {
    /// The app.
    pub app: &'a str,
    /// The channel, by the app's name for it.
    pub channel: &'a str,
    /// The link's `messaging.system`.
    pub system: &'static str,
    /// The channel's address on its broker.
    pub address: &'a str,
}

/// A span under way; ended (with an error status if given) by [`Span::end`].
pub struct Span(Context);

impl Span {
    /// The trace context to hand on, as the `traceparent` and `tracestate`
    /// values (the latter empty when there is none).
    pub fn headers(&self) -> (String, String) {
        let mut carrier = Carrier::default();
        if let Some(tracing) = TRACING.get() {
            tracing.propagator.inject_context(&self.0, &mut carrier);
        }
        (carrier.traceparent, carrier.tracestate)
    }

    /// Ends the span; `error` marks it failed, with the reason.
    pub fn end(self, error: Option<&str>) {
        let span = self.0.span();
        if let Some(error) = error {
            span.set_status(Status::error(error.to_string()));
        }
        span.end();
    }
}

/// A consumer span for one handler run of `event`, child of the context the
/// event carries; `None` when traces are off.
pub fn process(event: &Event, component: &str, place: &Place) -> Option<Span> {
    let tracing = TRACING.get()?;
    let parent = tracing.propagator.extract(&EventContext(event));
    let span = tracing
        .tracer
        .span_builder(format!("process {}", place.channel))
        .with_kind(SpanKind::Consumer)
        .with_attributes(attributes(event, place, "process", Some(component)))
        .start_with_context(&tracing.tracer, &parent);
    Some(Span(parent.with_span(span)))
}

/// A producer span for publishing `event`, child of the context it carries
/// (its handler run's, or its producer's); its own context is written into
/// the event. `None` when traces are off.
pub fn send(event: &mut Event, place: &Place) -> Option<Span> {
    let tracing = TRACING.get()?;
    let parent = tracing.propagator.extract(&EventContext(event));
    let span = tracing
        .tracer
        .span_builder(format!("send {}", place.channel))
        .with_kind(SpanKind::Producer)
        .with_attributes(attributes(event, place, "send", None))
        .start_with_context(&tracing.tracer, &parent);
    let span = Span(parent.with_span(span));
    let (traceparent, tracestate) = span.headers();
    set_context(event, &traceparent, &tracestate);
    Some(span)
}

/// Writes a trace context into an event's extensions, replacing what was there.
pub fn set_context(event: &mut Event, traceparent: &str, tracestate: &str) {
    event
        .extensions
        .retain(|(name, _)| name != TRACEPARENT && name != TRACESTATE);
    if traceparent.is_empty() {
        return;
    }
    event
        .extensions
        .push((TRACEPARENT.into(), traceparent.into()));
    if !tracestate.is_empty() {
        event
            .extensions
            .push((TRACESTATE.into(), tracestate.into()));
    }
}

fn attributes(
    event: &Event,
    place: &Place,
    operation: &'static str,
    component: Option<&str>,
) -> Vec<KeyValue> {
    let mut attributes = vec![
        KeyValue::new("messaging.system", place.system),
        KeyValue::new("messaging.destination.name", place.address.to_string()),
        KeyValue::new("messaging.operation.name", operation),
        KeyValue::new("messaging.message.id", event.id.clone()),
        KeyValue::new("cloudevents.event_id", event.id.clone()),
        KeyValue::new("cloudevents.event_type", event.ty.clone()),
        KeyValue::new("cloudevents.event_source", event.source.clone()),
        KeyValue::new("trigger_messaging.app", place.app.to_string()),
        KeyValue::new("trigger_messaging.channel", place.channel.to_string()),
    ];
    if let Some(component) = component {
        attributes.push(KeyValue::new(
            "trigger_messaging.component",
            component.to_string(),
        ));
    }
    attributes
}

/// Reads `traceparent` / `tracestate` from an event's extensions.
struct EventContext<'a>(&'a Event);

impl Extractor for EventContext<'_> {
    fn get(&self, key: &str) -> Option<&str> {
        self.0.extension(key)
    }

    fn keys(&self) -> Vec<&str> {
        self.0.extensions.iter().map(|(k, _)| k.as_str()).collect()
    }
}

/// Collects what the propagator writes.
#[derive(Default)]
struct Carrier {
    traceparent: String,
    tracestate: String,
}

impl Injector for Carrier {
    fn set(&mut self, key: &str, value: String) {
        match key {
            TRACEPARENT => self.traceparent = value,
            TRACESTATE => self.tracestate = value,
            _ => {}
        }
    }
}
