//! The CloudEvents HTTP protocol binding: binary mode (attributes in `ce-`
//! headers, data as the body) and structured mode (the JSON format as the
//! body). Batched mode is refused.

use super::binary::BinaryMode;
use super::{Event, JSON_FORMAT, json};
use axum::http::{HeaderMap, HeaderName, HeaderValue, header::CONTENT_TYPE};

/// HTTP binary mode: `ce-` headers, percent-encoded; `Content-Type` is the
/// data content type.
pub const BINARY: BinaryMode = BinaryMode {
    prefixes: &["ce-"],
    percent_encoded: true,
    content_type_as_attribute: false,
};

/// Reads an event from an HTTP request or response, in whichever mode its
/// content type says.
pub fn decode(headers: &HeaderMap, body: &[u8]) -> Result<Event, String> {
    let content_type = headers
        .get(CONTENT_TYPE)
        .map(|v| {
            v.to_str()
                .map_err(|_| "the Content-Type header is not ASCII".to_string())
        })
        .transpose()?;
    let lowered = content_type.map(str::to_ascii_lowercase);
    match lowered.as_deref() {
        Some(ct) if ct.starts_with("application/cloudevents-batch") => {
            Err("batched mode (application/cloudevents-batch+json) is not supported: send one event per request".into())
        }
        _ if super::is_structured(content_type) => json::decode(body),
        _ => decode_binary(headers, content_type, body),
    }
}

fn decode_binary(
    headers: &HeaderMap,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<Event, String> {
    let mut entries = Vec::new();
    for (name, value) in headers {
        let value = value
            .to_str()
            .map_err(|_| format!("header `{name}` is not ASCII; percent-encode it"))?;
        entries.push((name.as_str(), value));
    }
    let data = (!body.is_empty() || content_type.is_some()).then(|| body.to_vec());
    BINARY.read(entries, content_type, data)?.ok_or_else(|| {
        format!(
            "no CloudEvent in the request: send ce-specversion, ce-id, ce-source and ce-type headers (binary mode) or a Content-Type of {JSON_FORMAT} (structured mode)"
        )
    })
}

/// Writes an event in binary mode: returns the headers and the body.
pub fn encode_binary(event: &Event) -> (HeaderMap, Vec<u8>) {
    let mut headers = HeaderMap::new();
    for (name, value) in BINARY.write(event) {
        headers.append(
            HeaderName::from_bytes(name.as_bytes())
                .expect("attribute names are valid header names"),
            HeaderValue::from_str(&value).expect("percent-encoded values are valid header values"),
        );
    }
    if let Some(ct) = &event.datacontenttype
        && let Ok(v) = HeaderValue::from_str(ct)
    {
        headers.insert(CONTENT_TYPE, v);
    }
    (headers, event.data.clone().unwrap_or_default())
}

/// Writes an event in structured mode: returns the headers and the body.
pub fn encode_structured(event: &Event) -> (HeaderMap, Vec<u8>) {
    let mut headers = HeaderMap::new();
    headers.insert(CONTENT_TYPE, HeaderValue::from_static(JSON_FORMAT));
    (headers, json::encode(event))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn binary_round_trip_keeps_attributes() {
        let mut e = Event::new("id 1", "urn:a b", "t.\"quoted\"");
        e.subject = Some("100% ünïcode".into());
        e.time = Some("2024-01-01T00:00:00Z".into());
        e.datacontenttype = Some("text/plain".into());
        e.data = Some(b"hi".to_vec());
        e.extensions = vec![("traceparent".into(), "00-x".into())];
        let (headers, body) = encode_binary(&e);
        assert_eq!(headers["ce-subject"], "100%25%20%C3%BCn%C3%AFcode");
        assert_eq!(decode(&headers, &body).unwrap(), e);
    }

    #[test]
    fn structured_round_trip() {
        let mut e = Event::new("1", "s", "t");
        e.data = Some(b"{\"x\":1}".to_vec());
        e.datacontenttype = Some("application/json".into());
        let (headers, body) = encode_structured(&e);
        assert_eq!(decode(&headers, &body).unwrap(), e);
    }

    #[test]
    fn a_plain_request_is_refused_with_a_hint() {
        let err = decode(&HeaderMap::new(), b"x").unwrap_err();
        assert!(err.contains("ce-specversion"), "{err}");
    }
}
