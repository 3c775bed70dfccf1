//! Traces: a provider process exporting to an OTLP/HTTP receiver of the
//! test's own (decoding with the `opentelemetry-proto` definitions), an event
//! followed through two apps on two links, and into a handler's outbound
//! HTTP request.

use crate::support::*;
use axum::Router;
use axum::body::Bytes;
use axum::http::HeaderMap;
use axum::routing::{get, post};
use opentelemetry_proto::tonic::collector::trace::v1::ExportTraceServiceRequest;
use opentelemetry_proto::tonic::common::v1::any_value::Value as AnyValue;
use opentelemetry_proto::tonic::trace::v1::{Span, span::SpanKind};
use prost::Message as _;
use std::process::{Command, Stdio};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Spans received, with their service name.
type Received = Arc<Mutex<Vec<(String, Span)>>>;

/// An OTLP/HTTP receiver (`POST /v1/traces`, protobuf) on a free port.
async fn receiver() -> (u16, Received) {
    let spans: Received = Arc::default();
    let sink = spans.clone();
    let app = Router::new().route(
        "/v1/traces",
        post(move |body: Bytes| {
            let sink = sink.clone();
            async move {
                let request = ExportTraceServiceRequest::decode(body).unwrap();
                for resource in request.resource_spans {
                    let service = resource
                        .resource
                        .iter()
                        .flat_map(|r| &r.attributes)
                        .find(|kv| kv.key == "service.name")
                        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
                            AnyValue::StringValue(s) => Some(s.clone()),
                            _ => None,
                        })
                        .unwrap_or_default();
                    for scope in resource.scope_spans {
                        for span in scope.spans {
                            sink.lock().unwrap().push((service.clone(), span));
                        }
                    }
                }
                ""
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (port, spans)
}

/// An HTTP API that records the `traceparent` each request carries.
async fn api() -> (u16, Arc<Mutex<Vec<String>>>) {
    let seen: Arc<Mutex<Vec<String>>> = Arc::default();
    let sink = seen.clone();
    let app = Router::new().route(
        "/traced",
        get(move |headers: HeaderMap| {
            let sink = sink.clone();
            async move {
                let traceparent = headers
                    .get("traceparent")
                    .and_then(|v| v.to_str().ok())
                    .unwrap_or("none");
                sink.lock().unwrap().push(traceparent.to_string());
                "traced"
            }
        }),
    );
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (port, seen)
}

fn hex(bytes: &[u8]) -> String {
    bytes.iter().map(|b| format!("{b:02x}")).collect()
}

fn attribute(span: &Span, key: &str) -> Option<String> {
    span.attributes
        .iter()
        .find(|kv| kv.key == key)
        .and_then(|kv| match kv.value.as_ref()?.value.as_ref()? {
            AnyValue::StringValue(s) => Some(s.clone()),
            _ => None,
        })
}

/// The span named `name` in trace `trace`, waiting up to 20 s for it.
async fn span(spans: &Received, trace: &str, name: &str) -> Span {
    let start = Instant::now();
    loop {
        if let Some((service, span)) = spans
            .lock()
            .unwrap()
            .iter()
            .find(|(_, s)| hex(&s.trace_id) == trace && s.name == name)
        {
            assert_eq!(service, "traces-test");
            return span.clone();
        }
        assert!(
            start.elapsed() < Duration::from_secs(20),
            "no span `{name}` in trace {trace}; received: {:?}",
            spans
                .lock()
                .unwrap()
                .iter()
                .map(|(_, s)| (hex(&s.trace_id), s.name.clone()))
                .collect::<Vec<_>>()
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test(flavor = "multi_thread")]
async fn a_trace_follows_an_event_through_two_apps_on_two_links_and_into_http() {
    guests();
    let (otlp, spans) = receiver().await;
    let (api_port, seen) = api().await;
    let bus = unique("traced");
    let rc = link_config("bus", "type = \"nats\"\n");
    let first = write_app(&format!(
        r#"spin_manifest_version = 2
[application]
name = "first"
[application.trigger.messaging.channels]
inbox = {{ kind = "queue", address = "{bus}.first-inbox" }}
results = {{ kind = "topic", address = "{bus}.first-results" }}
out = {{ kind = "topic", link = "bus", address = "{bus}.between" }}
[[trigger.messaging]]
component = "probe"
subscriptions = ["inbox"]
publish = ["out", "results"]
[component.probe]
source = "{{probe}}"
allowed_outbound_hosts = ["http://127.0.0.1:{api_port}"]
"#
    ));
    let second = write_app(&format!(
        r#"spin_manifest_version = 2
[application]
name = "second"
[application.trigger.messaging.channels]
feed = {{ kind = "topic", link = "bus", address = "{bus}.between" }}
[[trigger.messaging]]
component = "probe"
subscriptions = ["feed"]
[component.probe]
source = "{{probe}}"
"#
    ));
    let port = free_port();
    let url = format!("http://127.0.0.1:{port}");
    let mut provider = Running::adopt(
        Command::new(BIN)
            .args([
                "up",
                "--listen",
                &format!("127.0.0.1:{port}"),
                "--runtime-config-file",
            ])
            .arg(rc.path())
            .arg("-f")
            .arg(&first.manifest)
            .arg("-f")
            .arg(&second.manifest)
            .env("RUST_LOG", "info")
            .env(
                "OTEL_EXPORTER_OTLP_ENDPOINT",
                format!("http://127.0.0.1:{otlp}"),
            )
            .env("OTEL_SERVICE_NAME", "traces-test")
            .env("OTEL_BSP_SCHEDULE_DELAY", "100")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    provider.wait_for("stdout", "Ready");
    provider.wait_for("stderr", "traces are exported over OTLP");

    // An event from a producer whose trace is known, forwarded by `first`
    // to the NATS link, where `second` takes it.
    let trace = "4bf92f3577b34da6a3ce929d0e0e4736";
    let root = "00f067aa0ba902b7";
    let traceparent = format!("traceparent=00-{trace}-{root}-01");
    cli_publish(&[
        "--url",
        &url,
        "first",
        "inbox",
        "--type",
        "probe.forward",
        "--subject",
        "topic:out",
        "--ext",
        &traceparent,
        "--ext",
        "tracestate=vendor=1",
    ]);
    // Publishing through the endpoint is a send of its own.
    let posted = span(&spans, trace, "send inbox").await;
    assert_eq!(hex(&posted.parent_span_id), root);
    assert_eq!(posted.kind, SpanKind::Producer as i32);
    let consumed = span(&spans, trace, "process inbox").await;
    assert_eq!(consumed.parent_span_id, posted.span_id);
    assert_eq!(consumed.kind, SpanKind::Consumer as i32);
    assert_eq!(
        attribute(&consumed, "messaging.system").as_deref(),
        Some("embedded")
    );
    assert_eq!(
        attribute(&consumed, "trigger_messaging.app").as_deref(),
        Some("first")
    );
    assert_eq!(consumed.trace_state, "vendor=1");
    let sent = span(&spans, trace, "send out").await;
    assert_eq!(sent.parent_span_id, consumed.span_id);
    assert_eq!(sent.kind, SpanKind::Producer as i32);
    assert_eq!(
        attribute(&sent, "messaging.system").as_deref(),
        Some("nats")
    );
    assert_eq!(
        attribute(&sent, "messaging.destination.name"),
        Some(format!("{bus}.between"))
    );
    let taken = span(&spans, trace, "process feed").await;
    assert_eq!(taken.parent_span_id, sent.span_id);
    assert_eq!(
        attribute(&taken, "trigger_messaging.app").as_deref(),
        Some("second")
    );
    assert_eq!(
        attribute(&taken, "messaging.system").as_deref(),
        Some("nats")
    );

    // The handler's outbound HTTP request carries its run's context.
    let trace = "0af7651916cd43dd8448eb211c80319c";
    let traceparent = format!("traceparent=00-{trace}-b7ad6b7169203331-01");
    let api_url = format!("http://127.0.0.1:{api_port}/traced");
    cli_publish(&[
        "--url",
        &url,
        "first",
        "inbox",
        "--type",
        "probe.http",
        "--data",
        &api_url,
        "--ext",
        &traceparent,
    ]);
    let run = span(&spans, trace, "process inbox").await;
    let start = Instant::now();
    while seen.lock().unwrap().is_empty() {
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the API was not called"
        );
        tokio::time::sleep(Duration::from_millis(50)).await;
    }
    assert_eq!(
        seen.lock().unwrap()[0],
        format!("00-{trace}-{}-01", hex(&run.span_id))
    );
    provider.terminate();
    assert_eq!(provider.wait_exit(Duration::from_secs(20)), 0);
}

#[test]
fn traces_are_off_without_an_endpoint_and_refuse_grpc() {
    guests();
    let app = probe_app("untraced", "", r#"publish = ["results"]"#);
    let mut refused = Running::adopt(
        Command::new(BIN)
            .args(["up", "-f"])
            .arg(&app.manifest)
            .env("OTEL_EXPORTER_OTLP_ENDPOINT", "http://127.0.0.1:4317")
            .env("OTEL_EXPORTER_OTLP_PROTOCOL", "grpc")
            .stdout(Stdio::piped())
            .stderr(Stdio::piped())
            .spawn()
            .unwrap(),
    );
    assert_eq!(refused.wait_exit(Duration::from_secs(20)), 1);
    assert!(
        refused
            .all()
            .contains("OTEL_EXPORTER_OTLP_PROTOCOL=grpc: traces are exported over OTLP/HTTP only"),
        "{}",
        refused.all()
    );
    let (mut running, _) = up(&[&app.manifest], &[]);
    assert!(
        !running.all().contains("traces are exported"),
        "{}",
        running.all()
    );
    running.terminate();
    assert_eq!(running.wait_exit(Duration::from_secs(20)), 0);
}
