//! The counter: for each visit on the `visits` queue, asks the HTTP API
//! named by the `api_url` variable for a quote, adds one to the `visits`
//! counter in the `default` key-value store, and publishes both on the
//! `counts` topic. The same app is in Python (`counter-py`) and JavaScript
//! (`counter-js`).

wit_bindgen::generate!({ world: "counter", path: "../wit", generate_all });

use exports::wasi::messaging::handler::Guest;
use wasi::config::store as config;
use wasi::http::outgoing_handler;
use wasi::http::types::{Fields, Method, OutgoingRequest, Scheme};
use wasi::io::streams::StreamError;
use wasi::keyvalue::{atomics, store};
use wasi::messaging::pub_::publish;
use wasi::messaging::types::{Channel, Error, Event};

struct Counter;

impl Guest for Counter {
    fn on_receive(visit: Event) -> Result<(), Error> {
        let url = config::get("api_url")
            .ok()
            .flatten()
            .ok_or_else(|| Error::UnexpectedError("the variable `api_url` is not set".into()))?;
        // A failing API is worth another try: the provider retries the visit.
        let quote = get(&url).map_err(Error::ServiceUnavailable)?;
        let visits = store::open("default")
            .and_then(|bucket| atomics::increment(&bucket, "visits", 1))
            .map_err(|e| Error::UnexpectedError(format!("key-value: {e:?}")))?;
        println!("visit {} is number {visits}", visit.id);
        let counted = serde_json::json!({ "visits": visits, "quote": quote.trim() });
        publish(
            &Channel::Topic("counts".into()),
            &Event {
                specversion: "1.0".into(),
                ty: "com.example.visit.counted".into(),
                source: "urn:sample-apps:counter".into(),
                id: format!("{}-counted", visit.id),
                data: Some(counted.to_string().into_bytes()),
                datacontenttype: Some("application/json".into()),
                dataschema: None,
                subject: visit.subject.clone(),
                time: None,
                extensions: None,
            },
        )
    }
}

/// `GET url` over wasi:http: the body of a 2xx answer, or why not.
fn get(url: &str) -> Result<String, String> {
    let (scheme, rest) = url.split_once("://").ok_or_else(|| format!("{url} is not an absolute URL"))?;
    let (authority, path) = rest.find('/').map_or((rest, "/"), |i| rest.split_at(i));
    let request = OutgoingRequest::new(Fields::new());
    let _ = request.set_method(&Method::Get);
    let _ = request.set_scheme(Some(&if scheme == "https" { Scheme::Https } else { Scheme::Http }));
    let _ = request.set_authority(Some(authority));
    let _ = request.set_path_with_query(Some(path));
    let pending = outgoing_handler::handle(request, None).map_err(|e| format!("GET {url}: {e:?}"))?;
    pending.subscribe().block();
    let response = match pending.get() {
        Some(Ok(Ok(response))) => response,
        Some(Ok(Err(e))) => return Err(format!("GET {url}: {e:?}")),
        _ => return Err(format!("GET {url}: no response")),
    };
    if !(200..300).contains(&response.status()) {
        return Err(format!("GET {url}: status {}", response.status()));
    }
    let body = response.consume().map_err(|()| "no body".to_string())?;
    let stream = body.stream().map_err(|()| "no body stream".to_string())?;
    let mut bytes = Vec::new();
    loop {
        match stream.blocking_read(64 * 1024) {
            Ok(chunk) => bytes.extend(chunk),
            Err(StreamError::Closed) => break,
            Err(StreamError::LastOperationFailed(e)) => return Err(e.to_debug_string()),
        }
    }
    Ok(String::from_utf8_lossy(&bytes).into_owned())
}

export!(Counter);
