//! The HTTP endpoint: both CloudEvents modes in, server-sent events out, and
//! errors that say what is wrong — as JSON, whoever refuses. Hardened: any
//! event id is safe in the stream, bodies and headers are bounded in size
//! and time, watches in number; API tokens (endpoint-wide and per app) and
//! https guard it.

use crate::support::*;
use messaging_provider::Provider;
use messaging_provider::cloudevents::{self, Event, json};
use messaging_provider::http::access::{ApiToken, ApiTokens};
use messaging_provider::http::{Endpoint, EndpointOptions};
use rcgen::{
    BasicConstraints, CertificateParams, DnType, ExtendedKeyUsagePurpose, IsCa, Issuer, KeyPair,
};
use std::path::PathBuf;
use std::time::{Duration, Instant};
use tokio::io::{AsyncReadExt as _, AsyncWriteExt as _};

/// Starts the endpoint with the default options on a free port; returns it
/// (it serves until dropped) and its base URL.
async fn serve(provider: &Provider) -> (Endpoint, String) {
    serve_with(provider, EndpointOptions::default())
}

/// Starts the endpoint with `options` on a free port.
pub fn serve_with(provider: &Provider, options: EndpointOptions) -> (Endpoint, String) {
    let listener = std::net::TcpListener::bind("127.0.0.1:0").unwrap();
    let scheme = if options.tls.is_some() {
        "https"
    } else {
        "http"
    };
    let url = format!("{scheme}://{}", listener.local_addr().unwrap());
    (
        Endpoint::start_with(listener, provider, options).unwrap(),
        url,
    )
}

/// Asserts a refusal: its status, and a JSON body with its `case` and an
/// `error` saying something; returns the body.
async fn refusal(response: reqwest::Response, status: u16, case: &str) -> serde_json::Value {
    assert_eq!(response.status(), status, "{:?}", response.headers());
    let content_type = response.headers()["content-type"].clone();
    assert_eq!(content_type, "application/json");
    let body: serde_json::Value = serde_json::from_slice(&response.bytes().await.unwrap()).unwrap();
    assert_eq!(body["case"], case, "{body}");
    assert!(!body["error"].as_str().unwrap().is_empty(), "{body}");
    body
}

/// A test CA and a server certificate it signed for `localhost` and
/// `127.0.0.1`, as `ca.pem`, `server.pem` and `server.key`.
pub struct EndpointPki {
    pub dir: tempfile::TempDir,
}

impl EndpointPki {
    pub fn new() -> EndpointPki {
        let dir = tempfile::tempdir().unwrap();
        let write = |name: &str, text: String| std::fs::write(dir.path().join(name), text).unwrap();
        let ca_key = KeyPair::generate().unwrap();
        let mut ca = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca.distinguished_name
            .push(DnType::CommonName, "trigger-messaging endpoint test CA");
        write("ca.pem", ca.self_signed(&ca_key).unwrap().pem());
        let issuer = Issuer::new(ca, ca_key);
        let key = KeyPair::generate().unwrap();
        let mut server =
            CertificateParams::new(vec!["localhost".to_string(), "127.0.0.1".to_string()]).unwrap();
        server
            .distinguished_name
            .push(DnType::CommonName, "endpoint");
        server.extended_key_usages = vec![ExtendedKeyUsagePurpose::ServerAuth];
        write("server.pem", server.signed_by(&key, &issuer).unwrap().pem());
        write("server.key", key.serialize_pem());
        EndpointPki { dir }
    }

    pub fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }
}

/// The events of a server-sent event stream read so far, each as its
/// `id:` line (if any) and its joined `data:` lines.
fn sse_events(text: &str) -> Vec<(Option<String>, String)> {
    text.split("\n\n")
        .filter(|block| block.lines().any(|l| l.starts_with("data:")))
        .map(|block| {
            let id = block
                .lines()
                .find_map(|l| l.strip_prefix("id:"))
                .map(|v| v.strip_prefix(' ').unwrap_or(v).to_string());
            let data = block
                .lines()
                .filter_map(|l| l.strip_prefix("data: "))
                .collect::<Vec<_>>()
                .join("\n");
            (id, data)
        })
        .collect()
}

/// Reads a watch until an event with id `id` has arrived; returns all the
/// stream's text so far.
async fn read_until(stream: &mut reqwest::Response, text: &mut String, id: &str) {
    let deadline = Instant::now() + Duration::from_secs(10);
    while !sse_events(text)
        .iter()
        .any(|(_, data)| json::decode(data.as_bytes()).is_ok_and(|e| e.id == id))
    {
        let left = deadline.saturating_duration_since(Instant::now());
        let chunk = tokio::time::timeout(left, stream.chunk())
            .await
            .unwrap_or_else(|_| panic!("no event {id:?} within 10 s; got:\n{text}"))
            .unwrap()
            .unwrap_or_else(|| panic!("the watch ended before {id:?}; got:\n{text}"));
        text.push_str(&String::from_utf8_lossy(&chunk));
    }
}

/// Opens a watch and waits for its `: subscribed` comment.
async fn open_watch(request: reqwest::RequestBuilder) -> reqwest::Response {
    let mut stream = request.send().await.unwrap();
    assert_eq!(stream.status(), 200);
    let first = tokio::time::timeout(Duration::from_secs(10), stream.chunk())
        .await
        .unwrap()
        .unwrap()
        .unwrap();
    assert!(String::from_utf8_lossy(&first).contains(": subscribed"));
    stream
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
    let (_endpoint, url) = serve(&provider).await;
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
    let (_endpoint, url) = serve(&provider).await;
    let mut stream = reqwest::get(format!("{url}/v1/apps/sse/channels/results"))
        .await
        .unwrap();
    assert_eq!(stream.status(), 200);
    assert_eq!(
        stream.headers()["content-type"],
        "text/event-stream; charset=utf-8"
    );
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
    let (_endpoint, url) = serve(&provider).await;
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

#[tokio::test]
async fn ids_with_line_breaks_or_control_characters_never_end_a_watch() {
    let app = probe_app("ids", "", r#"publish = ["results"]"#);
    let provider = start(&[&app.manifest], None).await;
    let (_endpoint, url) = serve(&provider).await;
    let client = reqwest::Client::new();
    let channel = format!("{url}/v1/apps/ids/channels/results");
    let mut stream = open_watch(client.get(&channel)).await;
    let runtime = provider.app("ids").unwrap().clone();
    let mut sent = Vec::new();
    for (n, bad) in [
        "\n", "\r", "\r\n", "\0", "\x1b[2J", "\t", "\u{7f}", "\u{85}",
    ]
    .into_iter()
    .enumerate()
    {
        // As the provider's own publishing path takes it...
        let id = format!("broker-{n}{bad}tail");
        if runtime
            .publish_external("results", event(&id, "t"))
            .await
            .is_ok()
        {
            sent.push(id);
        }
        // ...and as an HTTP client posts it, in both modes. Whether the
        // decoder takes such an id is its own business: taken (202) or
        // refused (400, as JSON), the watch must go on.
        for structured in [false, true] {
            let id = format!("http-{n}-{structured}{bad}tail");
            let e = event(&id, "t");
            let (headers, body) = match structured {
                true => cloudevents::http::encode_structured(&e),
                false => cloudevents::http::encode_binary(&e),
            };
            let response = client
                .post(&channel)
                .headers(headers)
                .body(body)
                .send()
                .await
                .unwrap();
            match response.status().as_u16() {
                202 => sent.push(id),
                _ => {
                    refusal(response, 400, "unsupported-message-format").await;
                }
            }
        }
    }
    // Whatever got through has an empty `id:` and its real id in `data:`
    // (the SSE writer itself is checked with every such id in the unit
    // tests of `http.rs`, whether or not events carrying them are refused
    // earlier).
    send(&provider, "ids", "results", event("good-after", "t")).await;
    let mut text = String::new();
    read_until(&mut stream, &mut text, "good-after").await;
    let events = sse_events(&text);
    for id in &sent {
        let (sse_id, _) = events
            .iter()
            .find(|(_, data)| json::decode(data.as_bytes()).unwrap().id == *id)
            .unwrap_or_else(|| panic!("{id:?} missing from the stream:\n{text}"));
        assert_eq!(sse_id.as_deref(), Some(""), "{id:?}: an empty `id:`");
    }
    assert!(text.lines().any(|l| l == "id: good-after"), "{text}");
    // The watch goes on.
    send(&provider, "ids", "results", event("and-one-more", "t")).await;
    read_until(&mut stream, &mut text, "and-one-more").await;
}

#[tokio::test]
async fn a_body_past_the_limit_is_a_json_413() {
    let app = probe_app("big", "", r#"publish = ["results"]"#);
    let provider = start(&[&app.manifest], None).await;
    let options = EndpointOptions {
        max_body_bytes: 1024,
        ..EndpointOptions::default()
    };
    let (_endpoint, url) = serve_with(&provider, options);
    let client = reqwest::Client::new();
    let mut e = event("big-1", "t");
    e.data = Some(vec![b'x'; 4096]);
    e.datacontenttype = Some("text/plain".into());
    let (headers, body) = cloudevents::http::encode_binary(&e);
    // Declared by Content-Length...
    let declared = client
        .post(format!("{url}/v1/apps/big/channels/inbox"))
        .headers(headers.clone())
        .body(body.clone())
        .send()
        .await
        .unwrap();
    let answer = refusal(declared, 413, "payload-too-large").await;
    assert!(
        answer["error"].as_str().unwrap().contains("1024 bytes"),
        "{answer}"
    );
    // ...or found while reading a chunked body.
    let chunks = futures::stream::iter(
        body.chunks(512)
            .map(|c| Ok::<_, std::io::Error>(c.to_vec()))
            .collect::<Vec<_>>(),
    );
    let chunked = client
        .post(format!("{url}/v1/apps/big/channels/inbox"))
        .headers(headers)
        .body(reqwest::Body::wrap_stream(chunks))
        .send()
        .await
        .unwrap();
    refusal(chunked, 413, "payload-too-large").await;
    // A body within the limit is taken.
    let mut small = event("small-1", "t");
    small.data = Some(b"ok".to_vec());
    let (headers, body) = cloudevents::http::encode_binary(&small);
    let taken = client
        .post(format!("{url}/v1/apps/big/channels/inbox"))
        .headers(headers)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(taken.status(), 202);
}

#[tokio::test]
async fn unknown_routes_methods_and_paths_answer_json() {
    let app = probe_app("routes", "", r#"publish = ["results"]"#);
    let provider = start(&[&app.manifest], None).await;
    let (_endpoint, url) = serve(&provider).await;
    let client = reqwest::Client::new();
    let nowhere = client.get(format!("{url}/nowhere")).send().await.unwrap();
    let body = refusal(nowhere, 404, "not-found").await;
    assert!(
        body["error"].as_str().unwrap().contains("/nowhere"),
        "{body}"
    );
    let root = client.post(format!("{url}/")).send().await.unwrap();
    refusal(root, 404, "not-found").await;
    for method in [reqwest::Method::PUT, reqwest::Method::DELETE] {
        let wrong = client
            .request(
                method.clone(),
                format!("{url}/v1/apps/routes/channels/inbox"),
            )
            .send()
            .await
            .unwrap();
        let allow = wrong.headers().get("allow").cloned();
        let body = refusal(wrong, 405, "method-not-allowed").await;
        assert!(
            body["error"].as_str().unwrap().contains(method.as_str()),
            "{body}"
        );
        let allow = allow.expect("405 says what is allowed");
        assert!(allow.to_str().unwrap().contains("POST"), "{allow:?}");
    }
    let not_utf8 = client
        .get(format!("{url}/v1/apps/%FF/channels/inbox"))
        .send()
        .await
        .unwrap();
    refusal(not_utf8, 400, "bad-request").await;
    let unknown_app = client
        .get(format!("{url}/v1/apps/nope/channels/inbox"))
        .send()
        .await
        .unwrap();
    refusal(unknown_app, 404, "app-not-found").await;
}

/// An endpoint with short timeouts, for the slow-client tests.
fn impatient() -> EndpointOptions {
    EndpointOptions {
        header_read_timeout: Duration::from_secs(1),
        body_read_timeout: Duration::from_secs(1),
        ..EndpointOptions::default()
    }
}

/// Reads what the server sends until it closes the connection (or 10 s
/// pass); returns the text and how long that took.
async fn read_to_close(stream: &mut tokio::net::TcpStream) -> (String, Duration) {
    let started = Instant::now();
    let mut answer = Vec::new();
    let read = tokio::time::timeout(Duration::from_secs(10), async {
        let mut buf = [0u8; 4096];
        loop {
            match stream.read(&mut buf).await {
                Ok(0) | Err(_) => break,
                Ok(n) => answer.extend_from_slice(&buf[..n]),
            }
        }
    })
    .await;
    assert!(read.is_ok(), "the connection stayed open for 10 s");
    (
        String::from_utf8_lossy(&answer).into_owned(),
        started.elapsed(),
    )
}

#[tokio::test]
async fn a_client_slow_with_its_headers_is_cut_off() {
    let app = probe_app("slowhead", "", r#"publish = ["results"]"#);
    let provider = start(&[&app.manifest], None).await;
    let (_endpoint, url) = serve_with(&provider, impatient());
    let addr = url.strip_prefix("http://").unwrap();
    // Half a request line; and nothing at all.
    let mut partial = tokio::net::TcpStream::connect(addr).await.unwrap();
    partial
        .write_all(b"POST /v1/apps/slowhead/chan")
        .await
        .unwrap();
    let mut silent = tokio::net::TcpStream::connect(addr).await.unwrap();
    for stream in [&mut partial, &mut silent] {
        let (_, took) = read_to_close(stream).await;
        assert!(took < Duration::from_secs(5), "cut off after {took:?}");
    }
    // A byte a second never finishes the headers in time either.
    let mut dribbling = tokio::net::TcpStream::connect(addr).await.unwrap();
    let started = Instant::now();
    let request = b"GET /v1/apps/slowhead/channels/results HTTP/1.1\r\nHost: x\r\n\r\n";
    for byte in request {
        if dribbling.write_all(&[*byte]).await.is_err() {
            break;
        }
        tokio::time::sleep(Duration::from_millis(300)).await;
        assert!(
            started.elapsed() < Duration::from_secs(5),
            "a dribbling client was not cut off"
        );
    }
    let (answer, _) = read_to_close(&mut dribbling).await;
    assert!(!answer.contains("200 OK"), "{answer}");
    // The endpoint still serves everyone else.
    let ok = reqwest::get(format!("{url}/v1/apps/slowhead/channels/nope"))
        .await
        .unwrap();
    refusal(ok, 404, "queue-or-topic-not-found").await;
}

#[tokio::test]
async fn a_client_slow_with_its_body_gets_a_json_408() {
    let app = probe_app("slowbody", "", r#"publish = ["results"]"#);
    let provider = start(&[&app.manifest], None).await;
    let (_endpoint, url) = serve_with(&provider, impatient());
    let addr = url.strip_prefix("http://").unwrap();
    let mut stream = tokio::net::TcpStream::connect(addr).await.unwrap();
    stream
        .write_all(
            b"POST /v1/apps/slowbody/channels/inbox HTTP/1.1\r\nHost: x\r\n\
              ce-specversion: 1.0\r\nce-id: slow\r\nce-source: urn:t\r\nce-type: t\r\n\
              Content-Type: text/plain\r\nContent-Length: 100\r\n\r\nonly ten b",
        )
        .await
        .unwrap();
    let (answer, took) = read_to_close(&mut stream).await;
    assert!(
        answer.starts_with("HTTP/1.1 408"),
        "after {took:?}: {answer}"
    );
    assert!(took < Duration::from_secs(5), "{took:?}");
    let body = &answer[answer.find("\r\n\r\n").unwrap() + 4..];
    let body: serde_json::Value = serde_json::from_str(body).unwrap();
    assert_eq!(body["case"], "request-timeout", "{body}");
}

#[tokio::test]
async fn watches_past_the_bound_are_refused_until_one_leaves() {
    let app = probe_app("bound", "", r#"publish = ["results"]"#);
    let provider = start(&[&app.manifest], None).await;
    let options = EndpointOptions {
        max_watchers: 2,
        ..EndpointOptions::default()
    };
    let (_endpoint, url) = serve_with(&provider, options);
    let client = reqwest::Client::new();
    let channel = format!("{url}/v1/apps/bound/channels/results");
    let first = open_watch(client.get(&channel)).await;
    let _second = open_watch(client.get(&channel)).await;
    let third = client.get(&channel).send().await.unwrap();
    let body = refusal(third, 503, "too-many-watchers").await;
    assert!(body["error"].as_str().unwrap().contains('2'), "{body}");
    // Publishing still works while watches are full.
    send(&provider, "bound", "results", event("while-full", "t")).await;
    drop(first);
    // The slot comes back once the endpoint notices the watcher left (at
    // the latest when it next writes to it).
    let started = Instant::now();
    loop {
        send(&provider, "bound", "results", event("nudge", "t")).await;
        let again = client.get(&channel).send().await.unwrap();
        if again.status() == 200 {
            break;
        }
        refusal(again, 503, "too-many-watchers").await;
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the slot of a watcher that left never came back"
        );
        tokio::time::sleep(Duration::from_millis(200)).await;
    }
}

#[tokio::test]
async fn a_watcher_that_stops_reading_is_cut_off_and_holds_up_no_one() {
    let app = probe_app(
        "stalled",
        r#"feed = { kind = "topic", address = "stalled.feed" }"#,
        r#"publish = ["results"]"#,
    );
    let provider = start(&[&app.manifest], None).await;
    let options = EndpointOptions {
        max_watchers: 1,
        ..EndpointOptions::default()
    };
    let (_endpoint, url) = serve_with(&provider, options);
    let addr = url.strip_prefix("http://").unwrap();
    let mut stalled = tokio::net::TcpStream::connect(addr).await.unwrap();
    stalled
        .write_all(b"GET /v1/apps/stalled/channels/feed HTTP/1.1\r\nHost: x\r\n\r\n")
        .await
        .unwrap();
    let mut head = Vec::new();
    while !String::from_utf8_lossy(&head).contains(": subscribed") {
        let mut buf = [0u8; 1024];
        let n = tokio::time::timeout(Duration::from_secs(10), stalled.read(&mut buf))
            .await
            .unwrap()
            .unwrap();
        assert!(n > 0, "the watch closed at once");
        head.extend_from_slice(&buf[..n]);
    }
    // From here on the watcher reads nothing; publishers are not held up
    // (the channel's buffer holds 1024 events), however much comes.
    let runtime = provider.app("stalled").unwrap().clone();
    let mut e = event("flood", "t");
    e.data = Some(vec![b'x'; 8192]);
    e.datacontenttype = Some("text/plain".into());
    let started = Instant::now();
    for n in 0..3000 {
        e.id = format!("flood-{n}");
        runtime
            .publish_external("feed", e.clone())
            .await
            .unwrap_or_else(|err| panic!("publish {n} held up by the stalled watcher: {err}"));
    }
    assert!(started.elapsed() < Duration::from_secs(30));
    // The stalled watcher was cut off: its connection closes, its slot is free.
    let (_, _) = read_to_close(&mut stalled).await;
    let started = Instant::now();
    loop {
        let again = reqwest::get(format!("{url}/v1/apps/stalled/channels/feed"))
            .await
            .unwrap();
        if again.status() == 200 {
            break;
        }
        refusal(again, 503, "too-many-watchers").await;
        assert!(
            started.elapsed() < Duration::from_secs(10),
            "the slot never came back"
        );
        tokio::time::sleep(Duration::from_millis(100)).await;
    }
}

#[tokio::test]
async fn tokens_decide_who_may_publish_and_watch() {
    let alpha = probe_app("alpha", "", r#"publish = ["results"]"#);
    let beta = probe_app("beta", "", r#"publish = ["results"]"#);
    let provider = start(&[&alpha.manifest, &beta.manifest], None).await;
    let token = |t: &str| ApiToken::parse(t, "test").unwrap();
    let tokens = ApiTokens::all_apps(Some(&token("every-app-token")))
        .with_app("alpha", &token("alpha-only-token"))
        .with_app("beta", &token("beta-only-token"));
    let options = EndpointOptions {
        tokens,
        ..EndpointOptions::default()
    };
    let (_endpoint, url) = serve_with(&provider, options);
    let client = reqwest::Client::new();
    let post = |app: &str, auth: Option<&str>, id: &str| {
        let (headers, body) = cloudevents::http::encode_binary(&event(id, "t"));
        let mut request = client
            .post(format!("{url}/v1/apps/{app}/channels/results"))
            .headers(headers)
            .body(body);
        if let Some(auth) = auth {
            request = request.header("authorization", auth);
        }
        request.send()
    };

    let none = post("alpha", None, "n").await.unwrap();
    assert_eq!(none.headers()["www-authenticate"], "Bearer");
    let body = refusal(none, 401, "unauthorized").await;
    assert!(body["error"].as_str().unwrap().contains("Bearer"), "{body}");
    for wrong in [
        "Bearer not-a-token",
        "Bearer alpha-only-token2",
        "Basic YTpi",
        "Bearer",
    ] {
        let refused = post("alpha", Some(wrong), "w").await.unwrap();
        let challenge = refused.headers()["www-authenticate"]
            .to_str()
            .unwrap()
            .to_string();
        assert!(challenge.starts_with("Bearer error="), "{challenge}");
        refusal(refused, 401, "unauthorized").await;
    }
    let other = post("alpha", Some("Bearer beta-only-token"), "o")
        .await
        .unwrap();
    let body = refusal(other, 403, "forbidden").await;
    assert!(
        body["error"].as_str().unwrap().contains("`alpha`"),
        "{body}"
    );
    // Every route needs a token, known or not.
    let nowhere = client.get(format!("{url}/nowhere")).send().await.unwrap();
    refusal(nowhere, 401, "unauthorized").await;
    let watch_other = client
        .get(format!("{url}/v1/apps/alpha/channels/results"))
        .bearer_auth("beta-only-token")
        .send()
        .await
        .unwrap();
    refusal(watch_other, 403, "forbidden").await;
    // An app's token does not tell it which other apps run.
    let unknown = post("gamma", Some("Bearer alpha-only-token"), "u")
        .await
        .unwrap();
    refusal(unknown, 403, "forbidden").await;

    // The right tokens publish and watch.
    let mut watching = open_watch(
        client
            .get(format!("{url}/v1/apps/alpha/channels/results"))
            .bearer_auth("alpha-only-token"),
    )
    .await;
    let own = post("alpha", Some("Bearer alpha-only-token"), "own-token")
        .await
        .unwrap();
    assert_eq!(own.status(), 202);
    let every = post("alpha", Some("bearer every-app-token"), "every-token")
        .await
        .unwrap();
    assert_eq!(every.status(), 202);
    let mut text = String::new();
    read_until(&mut watching, &mut text, "every-token").await;
    assert!(text.contains("own-token"), "{text}");
    let beta_by_every = post("beta", Some("Bearer every-app-token"), "b")
        .await
        .unwrap();
    assert_eq!(beta_by_every.status(), 202);
}

#[tokio::test]
async fn the_endpoint_serves_https() {
    let app = probe_app("secure", "", r#"publish = ["results"]"#);
    let provider = start(&[&app.manifest], None).await;
    let pki = EndpointPki::new();
    let tls = messaging_provider::http::tls::server_config(
        &pki.path("server.pem"),
        &pki.path("server.key"),
    )
    .unwrap();
    let options = EndpointOptions {
        tls: Some(tls),
        ..EndpointOptions::default()
    };
    let (_endpoint, url) = serve_with(&provider, options);
    assert!(url.starts_with("https://127.0.0.1:"));
    let ca = reqwest::Certificate::from_pem(&std::fs::read(pki.path("ca.pem")).unwrap()).unwrap();
    let client = reqwest::Client::builder()
        .add_root_certificate(ca)
        .build()
        .unwrap();
    let channel = format!("{url}/v1/apps/secure/channels/results");
    let mut watching = open_watch(client.get(&channel)).await;
    let (headers, body) = cloudevents::http::encode_binary(&event("over-https", "t"));
    let posted = client
        .post(&channel)
        .headers(headers)
        .body(body)
        .send()
        .await
        .unwrap();
    assert_eq!(posted.status(), 202);
    let mut text = String::new();
    read_until(&mut watching, &mut text, "over-https").await;
    // Without the CA the certificate is not trusted; plain HTTP gets nothing.
    let untrusted = reqwest::get(&channel).await.unwrap_err();
    assert!(untrusted.is_connect(), "{untrusted:?}");
    let plain = reqwest::get(channel.replace("https://", "http://")).await;
    assert!(plain.is_err(), "{plain:?}");
}
