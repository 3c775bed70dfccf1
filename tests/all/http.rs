//! The HTTP endpoint: both CloudEvents modes in, server-sent events out, and
//! errors that say what is wrong.

use crate::support::*;
use messaging_provider::cloudevents::{self, Event, json};
use std::time::Duration;

/// Starts a provider with the endpoint on a free port; returns its base URL.
async fn serve(provider: &messaging_provider::Provider) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let url = format!("http://{}", listener.local_addr().unwrap());
    let router = messaging_provider::http::router(provider);
    tokio::spawn(async move { axum::serve(listener, router).await });
    url
}

fn full_event(id: &str) -> Event {
    let mut e = event(id, "com.example.http");
    e.data = Some(br#"{"n":1}"#.to_vec());
    e.datacontenttype = Some("application/json".into());
    e.subject = Some("with spaces & \"quotes\" and ünïcode".into());
    e.time = Some("2024-01-02T03:04:05Z".into());
    e.dataschema = Some("urn:schema".into());
    e.extensions = vec![("traceparent".into(), "00-1-2-01".into())];
    e
}

#[tokio::test]
async fn binary_and_structured_events_reach_the_guest_intact() {
    let app = probe_app("web", "", r#"publish = ["results"]"#);
    let provider = start(&[&app.manifest], None).await;
    let url = serve(&provider).await;
    let mut results = watch(&provider, "web", "results").await;
    let client = reqwest::Client::new();
    for (mode, id) in [("binary", "h-bin"), ("structured", "h-struct")] {
        let e = full_event(id);
        let (headers, body) = match mode {
            "binary" => cloudevents::http::encode_binary(&e),
            _ => cloudevents::http::encode_structured(&e),
        };
        let response = client
            .post(format!("{url}/v1/apps/web/channels/inbox"))
            .headers(headers)
            .body(body)
            .send()
            .await
            .unwrap();
        assert_eq!(
            response.status(),
            202,
            "{mode}: {}",
            response.text().await.unwrap()
        );
        assert_eq!(
            results.next_with_id(id).await,
            e,
            "{mode} mode keeps every attribute"
        );
    }
}

#[tokio::test]
async fn get_streams_the_channel_as_server_sent_events() {
    let app = probe_app("sse", "", r#"publish = ["results"]"#);
    let provider = start(&[&app.manifest], None).await;
    let url = serve(&provider).await;
    let mut stream = reqwest::get(format!("{url}/v1/apps/sse/channels/results"))
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    assert_eq!(stream.headers()["content-type"], "text/event-stream");
    let first = tokio::time::timeout(Duration::from_secs(5), stream.chunk())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&first).contains(": subscribed"));

    let sent = full_event("sse-1");
    send(&provider, "sse", "inbox", sent.clone()).await;
    let mut text = String::new();
    while !text.contains("\n\n") {
        let chunk = tokio::time::timeout(Duration::from_secs(10), stream.chunk())
            .await
            .unwrap()
            .unwrap()
            .unwrap();
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
    let data: String = text
        .lines()
        .filter_map(|l| l.strip_prefix("data: "))
        .collect();
    assert!(text.lines().any(|l| l == "id: sse-1"), "{text}");
    assert_eq!(json::decode(data.as_bytes()).unwrap(), sent);
}

#[tokio::test]
async fn errors_answer_with_a_status_and_a_reason() {
    let app = probe_app(
        "errs",
        r#"small = { kind = "topic", max_payload = 2 }"#,
        r#"publish = ["results"]"#,
    );
    let provider = start(&[&app.manifest], None).await;
    let url = serve(&provider).await;
    let client = reqwest::Client::new();
    let post = |path: &str, e: Option<Event>| {
        let (headers, body) = match e {
            Some(e) => cloudevents::http::encode_binary(&e),
            None => (Default::default(), b"plain".to_vec()),
        };
        client
            .post(format!("{url}{path}"))
            .headers(headers)
            .body(body)
            .send()
    };
    let cases = [
        (
            "/v1/apps/nope/channels/inbox",
            Some(event("1", "t")),
            404,
            "no app `nope`",
        ),
        (
            "/v1/apps/errs/channels/nope",
            Some(event("1", "t")),
            404,
            "declares no channel `nope`",
        ),
        ("/v1/apps/errs/channels/inbox", None, 400, "ce-specversion"),
        (
            "/v1/apps/errs/channels/inbox",
            Some(event("", "t")),
            400,
            "`id` must not be empty",
        ),
        (
            "/v1/apps/errs/channels/small",
            Some(full_event("big")),
            413,
            "limit of 2 bytes",
        ),
    ];
    for (path, e, status, text) in cases {
        let response = post(path, e).await.unwrap();
        assert_eq!(response.status(), status, "{path}");
        let body: serde_json::Value =
            serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
        assert!(
            body["error"].as_str().unwrap().contains(text),
            "{path}: {body}"
        );
    }
    let batch = client
        .post(format!("{url}/v1/apps/errs/channels/inbox"))
        .header("content-type", "application/cloudevents-batch+json")
        .body("[]")
        .send()
        .await
        .unwrap();
    assert_eq!(batch.status(), 400);
    let watch = reqwest::get(format!("{url}/v1/apps/errs/channels/nope"))
        .await
        .unwrap();
    assert_eq!(watch.status(), 404);
}
