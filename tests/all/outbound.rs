//! Outbound HTTP from a handler: only to `allowed_outbound_hosts` (Spin's
//! syntax, `{{ variables }}` included), refused with `HTTP-request-denied`
//! and a log line otherwise, redirects checked hop by hop, and requests
//! bounded by the handler timeout. The probe calls a local test server.

use crate::support::*;
use axum::Router;
use axum::response::{IntoResponse, Redirect};
use axum::routing::get;
use std::time::{Duration, Instant};

/// A local API: `/hello` answers, `/to/<port>` redirects to `/hello` on
/// another port of 127.0.0.1 by the name `localhost`, `/slow` answers after
/// 20 s. Returns its port.
pub async fn api_server() -> u16 {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let port = listener.local_addr().unwrap().port();
    let app = Router::new()
        .route("/hello", get(|| async { "hello from the API" }))
        .route(
            "/to/{port}",
            get(
                |axum::extract::Path(port): axum::extract::Path<u16>| async move {
                    Redirect::temporary(&format!("http://localhost:{port}/hello")).into_response()
                },
            ),
        )
        .route(
            "/slow",
            get(|| async {
                tokio::time::sleep(Duration::from_secs(20)).await;
                "late"
            }),
        );
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    port
}

fn http_get(id: &str, url: &str) -> messaging_provider::cloudevents::Event {
    let mut e = event(id, "probe.http");
    e.data = Some(url.as_bytes().to_vec());
    e
}

fn outbound_app(name: &str, hosts: &str, app_tables: &str) -> AppDir {
    probe_app_granted(
        name,
        app_tables,
        &format!("allowed_outbound_hosts = {hosts}"),
    )
}

#[tokio::test]
async fn only_allowed_hosts_are_reached() {
    let port = api_server().await;
    let other = api_server().await;
    let app = outbound_app(
        "outbound",
        &format!(r#"["http://127.0.0.1:{port}", "http://*.invalid:*"]"#),
        "",
    );
    let provider = start(&[&app.manifest], None).await;
    let mut results = watch(&provider, "outbound", "results").await;
    let cases = [
        (
            format!("http://127.0.0.1:{port}/hello"),
            "200 hello from the API",
        ),
        // Another port, the same host by name, https: each a different destination.
        (
            format!("http://127.0.0.1:{other}/hello"),
            "error ErrorCode::HttpRequestDenied",
        ),
        (
            format!("http://localhost:{port}/hello"),
            "error ErrorCode::HttpRequestDenied",
        ),
        (
            format!("https://127.0.0.1:{port}/hello"),
            "error ErrorCode::HttpRequestDenied",
        ),
        (
            "http://example.com/".to_string(),
            "error ErrorCode::HttpRequestDenied",
        ),
    ];
    for (i, (url, expected)) in cases.iter().enumerate() {
        let (case, data) = ask(
            &provider,
            "outbound",
            &mut results,
            http_get(&format!("get-{i}"), url),
        )
        .await;
        assert_eq!((case.as_str(), data.as_str()), ("ok", *expected), "{url}");
    }
}

#[tokio::test]
async fn a_redirect_to_a_refused_host_is_refused() {
    let port = api_server().await;
    let target = api_server().await;
    let app = outbound_app(
        "redirected",
        &format!(r#"["http://127.0.0.1:{port}", "http://localhost:{port}"]"#),
        "",
    );
    let provider = start(&[&app.manifest], None).await;
    let mut results = watch(&provider, "redirected", "results").await;

    // Not followed: the guest sees the redirect itself.
    let url = format!("http://127.0.0.1:{port}/to/{target}");
    let (_, data) = ask(&provider, "redirected", &mut results, http_get("r-1", &url)).await;
    assert!(data.starts_with("307 "), "{data}");
    // Followed by the guest: the next hop is a request of its own, refused.
    let mut follow = http_get("r-2", &url);
    follow.extensions.push(("follow".into(), "yes".into()));
    let (_, data) = ask(&provider, "redirected", &mut results, follow).await;
    assert_eq!(data, "error ErrorCode::HttpRequestDenied");
    // A redirect to an allowed host is followed to its end.
    let mut allowed = http_get("r-3", &format!("http://127.0.0.1:{port}/to/{port}"));
    allowed.extensions.push(("follow".into(), "yes".into()));
    let (_, data) = ask(&provider, "redirected", &mut results, allowed).await;
    assert_eq!(data, "200 hello from the API");
}

#[tokio::test]
async fn variables_in_the_allow_list_are_resolved() {
    let port = api_server().await;
    let app = outbound_app(
        "templated",
        r#"["http://{{ api_host }}:{{ api_port }}"]"#,
        r#"[variables]
api_host = { default = "127.0.0.1" }
api_port = { required = true }"#,
    );
    // The required variable from the environment, as Spin takes it.
    unsafe { std::env::set_var("SPIN_VARIABLE_API_PORT", port.to_string()) };
    let provider = start(&[&app.manifest], None).await;
    let mut results = watch(&provider, "templated", "results").await;
    let (_, data) = ask(
        &provider,
        "templated",
        &mut results,
        http_get("t-1", &format!("http://127.0.0.1:{port}/hello")),
    )
    .await;
    assert_eq!(data, "200 hello from the API");
    let summary = provider.summary();
    assert!(
        summary.contains(&format!("outbound HTTP: http://127.0.0.1:{port}")),
        "{summary}"
    );
}

#[tokio::test]
async fn a_slow_server_times_out_within_the_handler_timeout() {
    let port = api_server().await;
    let app = outbound_app("patient", &format!(r#"["http://127.0.0.1:{port}"]"#), "");
    let host = messaging_provider::host::HostOptions {
        handler_timeout: Duration::from_secs(3),
        ..test_host()
    };
    let provider = start_with_host(&app.manifest, host).await;
    let mut results = watch(&provider, "patient", "results").await;
    let start = Instant::now();
    let (case, data) = ask(
        &provider,
        "patient",
        &mut results,
        http_get("slow-1", &format!("http://127.0.0.1:{port}/slow")),
    )
    .await;
    // The guest gets the timeout as an error it can report, before the
    // handler itself is stopped.
    assert_eq!(case, "ok");
    assert_eq!(data, "error ErrorCode::ConnectionReadTimeout");
    assert!(
        start.elapsed() < Duration::from_secs(3),
        "{:?}",
        start.elapsed()
    );
}

#[test]
fn bad_allow_list_entries_are_reported_at_their_key_and_line() {
    guests();
    for (hosts, says) in [
        (r#"["example.com"]"#, "does not contain a scheme"),
        (
            r#"["http://ok.example", "tcp://x"]"#,
            "no port was provided",
        ),
        (r#"["http://{{ nowhere }}"]"#, "not declared"),
        (r#"["http://a.*.example"]"#, "first label"),
    ] {
        let app = outbound_app("bad", hosts, "");
        let errors = messaging_provider::manifest::load_app(&app.manifest, &|l| l == "default")
            .unwrap_err()
            .to_string();
        assert!(errors.contains("spin.toml:14"), "{errors}");
        assert!(
            errors.contains("`component.probe.allowed_outbound_hosts["),
            "{errors}"
        );
        assert!(errors.contains(says), "{hosts}: {errors}");
    }
}
