//! The CloudEvents HTTP protocol binding: binary mode (attributes in `ce-`
//! headers, data as the body) and structured mode (the JSON format as the
//! body). Batched mode is refused.

use super::binary::BinaryMode;
use super::{Event, JSON_FORMAT, json};
use axum::http::{HeaderMap, HeaderName, HeaderValue, header::CONTENT_TYPE};
use std::borrow::Cow;

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
    let content_type = headers.get(CONTENT_TYPE).map(|v| header_text(v.as_bytes()));
    let content_type = content_type.as_deref();
    let lowered = content_type.map(str::to_ascii_lowercase);
    match lowered.as_deref() {
        Some(ct) if ct.starts_with("application/cloudevents-batch") => {
            Err("batched mode (application/cloudevents-batch+json) is not supported: send one event per request".into())
        }
        _ if super::is_structured(content_type) => json::decode(body),
        _ => decode_binary(headers, content_type, body),
    }
}

/// A header value as text: UTF-8 when it is UTF-8, else ISO-8859-1, which
/// is what HTTP/1.1 clients have long sent for text that is not ASCII
/// (Python's `requests` and Node's `http` do, so the CloudEvents SDKs'
/// raw attribute values arrive that way). Every byte string reads as one
/// or the other.
pub fn header_text(raw: &[u8]) -> Cow<'_, str> {
    match std::str::from_utf8(raw) {
        Ok(text) => Cow::Borrowed(text),
        Err(_) => Cow::Owned(raw.iter().map(|&b| char::from(b)).collect()),
    }
}

fn decode_binary(
    headers: &HeaderMap,
    content_type: Option<&str>,
    body: &[u8],
) -> Result<Event, String> {
    // Raw values are taken as well as percent-encoded ones (the
    // CloudEvents SDKs' legacy APIs send non-ASCII values raw), in UTF-8 or
    // else ISO-8859-1 (see `header_text`).
    let values: Vec<(&str, Cow<str>)> = headers
        .iter()
        .map(|(name, value)| (name.as_str(), header_text(value.as_bytes())))
        .collect();
    let entries = values.iter().map(|(name, value)| (*name, value.as_bytes()));
    let data = (!body.is_empty() || content_type.is_some()).then(|| body.to_vec());
    BINARY.read(entries, content_type, data)?.ok_or_else(|| {
        format!(
            "no CloudEvent in the request: send ce-specversion, ce-id, ce-source and ce-type headers (binary mode) or a Content-Type of {JSON_FORMAT} (structured mode)"
        )
    })
}

/// Writes an event in binary mode: returns the headers and the body. An
/// event whose data content type is a CloudEvents format goes in structured
/// mode, since that `Content-Type` would read back as structured mode.
pub fn encode_binary(event: &Event) -> (HeaderMap, Vec<u8>) {
    if super::is_structured(event.datacontenttype.as_deref()) {
        return encode_structured(event);
    }
    let mut headers = HeaderMap::new();
    for (name, value) in BINARY.write(event) {
        // Valid events always convert: extension names are a-z0-9 and
        // values are percent-encoded to printable ASCII.
        if let (Ok(name), Ok(value)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_str(&value),
        ) {
            headers.append(name, value);
        }
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
    fn raw_values_are_read_as_utf8_else_as_latin1() {
        let mut headers = HeaderMap::new();
        for (name, value) in [("ce-specversion", "1.0"), ("ce-id", "1"), ("ce-type", "t")] {
            headers.insert(name, HeaderValue::from_static(value));
        }
        let source = |headers: &HeaderMap| decode(headers, b"").map(|e| e.source);
        headers.insert(
            "ce-source",
            HeaderValue::from_bytes("urn:ü".as_bytes()).unwrap(),
        );
        assert_eq!(source(&headers).unwrap(), "urn:ü");
        // What `requests` sends for "urn:zürich ÿ": ISO-8859-1.
        headers.insert(
            "ce-source",
            HeaderValue::from_bytes(b"urn:z\xfcrich \xff").unwrap(),
        );
        assert_eq!(source(&headers).unwrap(), "urn:zürich ÿ");
        headers.insert(
            "content-type",
            HeaderValue::from_bytes(b"text/plain; n=\xe9").unwrap(),
        );
        assert_eq!(
            decode(&headers, b"x").unwrap().datacontenttype.as_deref(),
            Some("text/plain; n=é")
        );
        // Percent-encoding stands for UTF-8 bytes alone.
        headers.insert("ce-source", HeaderValue::from_static("urn:%FF"));
        assert!(source(&headers).unwrap_err().contains("ce-source"));
    }

    #[test]
    fn a_plain_request_is_refused_with_a_hint() {
        let err = decode(&HeaderMap::new(), b"x").unwrap_err();
        assert!(err.contains("ce-specversion"), "{err}");
    }
}
