//! The MQTT binding. MQTT 5: binary mode puts each attribute in a user
//! property named as the attribute (no prefix) and `datacontenttype` in the
//! PUBLISH content type; structured mode is the JSON format with content type
//! `application/cloudevents+json`. MQTT 3.1.1 has no metadata: structured
//! mode only. A message without `specversion` is plain and is wrapped.

use super::binary::BinaryMode;
use super::nats::ContentMode;
use super::{Event, JSON_FORMAT, is_structured, json};

/// MQTT 5 binary mode.
pub const BINARY: BinaryMode = BinaryMode {
    prefixes: &[""],
    percent_encoded: false,
    content_type_as_attribute: false,
};

/// An MQTT 5 message: user properties, content type, payload.
pub type Message = (Vec<(String, String)>, Option<String>, Vec<u8>);

/// The MQTT 5 message for an event.
pub fn encode_v5(event: &Event, mode: ContentMode) -> Message {
    match mode {
        ContentMode::Binary => (
            BINARY.write(event),
            event.datacontenttype.clone(),
            event.data.clone().unwrap_or_default(),
        ),
        ContentMode::Structured => (Vec::new(), Some(JSON_FORMAT.into()), json::encode(event)),
    }
}

/// The event in an MQTT 5 message.
pub fn decode_v5(
    properties: &[(String, String)],
    content_type: Option<&str>,
    payload: &[u8],
    origin: (&str, &str),
) -> Result<Event, String> {
    if is_structured(content_type) {
        return json::decode(payload);
    }
    let data = (!payload.is_empty() || content_type.is_some()).then(|| payload.to_vec());
    match BINARY.read(
        properties.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        content_type,
        data,
    )? {
        Some(event) => Ok(event),
        None => Ok(Event::wrap_plain(
            origin.0,
            origin.1,
            content_type,
            payload.to_vec(),
        )),
    }
}

/// The MQTT 3.1.1 payload for an event: always structured.
pub fn encode_v3(event: &Event) -> Vec<u8> {
    json::encode(event)
}

/// The event in an MQTT 3.1.1 payload: a CloudEvents JSON document, or a
/// plain message.
pub fn decode_v3(payload: &[u8], origin: (&str, &str)) -> Event {
    let looks_structured =
        serde_json::from_slice::<serde_json::Map<String, serde_json::Value>>(payload)
            .is_ok_and(|m| m.contains_key("specversion"));
    match looks_structured.then(|| json::decode(payload)) {
        Some(Ok(event)) => event,
        _ => Event::wrap_plain(origin.0, origin.1, None, payload.to_vec()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_mode_round_trips() {
        let mut e = Event::new("1", "urn:x", "t");
        e.datacontenttype = Some("text/plain".into());
        e.data = Some(b"hi".to_vec());
        e.extensions = vec![("tenant".into(), "a".into())];
        for mode in [ContentMode::Binary, ContentMode::Structured] {
            let (p, ct, body) = encode_v5(&e, mode);
            assert_eq!(decode_v5(&p, ct.as_deref(), &body, ("l", "t")).unwrap(), e);
        }
        assert_eq!(decode_v3(&encode_v3(&e), ("l", "t")), e);
        let plain = decode_v5(
            &[("note".into(), "x".into())],
            Some("text/plain"),
            b"raw",
            ("m", "a/b"),
        )
        .unwrap();
        assert_eq!(
            (plain.source.as_str(), plain.data.as_deref()),
            ("urn:trigger-messaging:m:a/b", Some(&b"raw"[..]))
        );
        assert_eq!(
            decode_v3(b"raw", ("m", "a")).data.as_deref(),
            Some(&b"raw"[..])
        );
    }
}
