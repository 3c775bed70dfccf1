//! The NATS binding: binary mode puts every attribute, `datacontenttype`
//! included, in a percent-encoded `ce-<attribute>` header; structured mode is
//! the JSON format with `Content-Type: application/cloudevents+json`.
//! Messages with neither are wrapped (see [`Event::wrap_plain`]).

use super::binary::BinaryMode;
use super::{Event, JSON_FORMAT, is_structured, json};

/// NATS binary mode.
pub const BINARY: BinaryMode = BinaryMode {
    prefixes: &["ce-"],
    percent_encoded: true,
    content_type_as_attribute: true,
};

/// How events are written to NATS.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContentMode {
    /// Attributes in headers, data as the payload.
    #[default]
    Binary,
    /// The whole event as one JSON document.
    Structured,
}

/// Headers and payload for an event.
pub fn encode(event: &Event, mode: ContentMode) -> (Vec<(String, String)>, Vec<u8>) {
    match mode {
        ContentMode::Binary => (BINARY.write(event), event.data.clone().unwrap_or_default()),
        ContentMode::Structured => (
            vec![("Content-Type".into(), JSON_FORMAT.into())],
            json::encode(event),
        ),
    }
}

/// The event in a received message, in whichever mode it came; `origin`
/// (link, subject) names the source of a wrapped plain message.
pub fn decode(
    headers: &[(&str, &str)],
    payload: &[u8],
    origin: (&str, &str),
) -> Result<Event, String> {
    let content_type = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
        .map(|(_, v)| *v);
    if is_structured(content_type) {
        return json::decode(payload);
    }
    let data = (!payload.is_empty()).then(|| payload.to_vec());
    match BINARY.read(headers.iter().copied(), None, data)? {
        Some(event) => Ok(event),
        None => Ok(Event::wrap_plain(
            origin.0,
            origin.1,
            content_type,
            payload.to_vec(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Event {
        let mut e = Event::new("id 1", "urn:x", "t");
        e.datacontenttype = Some("text/plain; charset=utf-8".into());
        e.subject = Some("50% \"off\"".into());
        e.data = Some(b"hello".to_vec());
        e.extensions = vec![("traceparent".into(), "00-1".into())];
        e
    }

    #[test]
    fn both_modes_round_trip() {
        for mode in [ContentMode::Binary, ContentMode::Structured] {
            let (headers, body) = encode(&sample(), mode);
            let pairs: Vec<(&str, &str)> = headers
                .iter()
                .map(|(k, v)| (k.as_str(), v.as_str()))
                .collect();
            assert_eq!(
                decode(&pairs, &body, ("l", "s")).unwrap(),
                sample(),
                "{mode:?}"
            );
        }
        let (headers, _) = encode(&sample(), ContentMode::Binary);
        assert!(headers.contains(&("ce-subject".into(), "50%25%20%22off%22".into())));
        assert!(headers.contains(&(
            "ce-datacontenttype".into(),
            "text/plain;%20charset=utf-8".into()
        )));
    }

    #[test]
    fn plain_messages_are_wrapped() {
        let e = decode(
            &[("Content-Type", "text/plain")],
            b"hi",
            ("nats1", "orders"),
        )
        .unwrap();
        assert_eq!(e.source, "urn:trigger-messaging:nats1:orders");
        assert_eq!(e.ty, crate::cloudevents::PLAIN_TYPE);
        assert_eq!(e.datacontenttype.as_deref(), Some("text/plain"));
        assert_eq!(e.data.as_deref(), Some(&b"hi"[..]));
        assert!(e.validate().is_ok());
    }
}
