//! The AMQP binding, applied to RabbitMQ's AMQP 0-9-1 headers table: binary
//! mode puts each attribute in a `cloudEvents_<attribute>` header (readers
//! also accept `cloudEvents:`) and `datacontenttype` in the message's
//! content-type; structured mode is the JSON format with content-type
//! `application/cloudevents+json`. Messages with neither are wrapped.

use super::binary::BinaryMode;
use super::nats::ContentMode;
use super::{Event, JSON_FORMAT, is_structured, json};

/// AMQP binary mode.
pub const BINARY: BinaryMode = BinaryMode {
    prefixes: &["cloudEvents_", "cloudEvents:"],
    percent_encoded: false,
    content_type_as_attribute: false,
};

/// An AMQP message: headers, content type, body.
pub type Message = (Vec<(String, String)>, Option<String>, Vec<u8>);

/// The message for an event.
pub fn encode(event: &Event, mode: ContentMode) -> Message {
    match mode {
        ContentMode::Binary => (
            BINARY.write(event),
            event.datacontenttype.clone(),
            event.data.clone().unwrap_or_default(),
        ),
        ContentMode::Structured => (Vec::new(), Some(JSON_FORMAT.into()), json::encode(event)),
    }
}

/// The event in a received message; `origin` (link, address) names the
/// source of a wrapped plain message.
pub fn decode(
    headers: &[(String, String)],
    content_type: Option<&str>,
    body: &[u8],
    origin: (&str, &str),
) -> Result<Event, String> {
    if is_structured(content_type) {
        return json::decode(body);
    }
    let data = (!body.is_empty() || content_type.is_some()).then(|| body.to_vec());
    match BINARY.read(
        headers.iter().map(|(k, v)| (k.as_str(), v.as_str())),
        content_type,
        data,
    )? {
        Some(event) => Ok(event),
        None => Ok(Event::wrap_plain(
            origin.0,
            origin.1,
            content_type,
            body.to_vec(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn both_modes_round_trip_and_plain_messages_are_wrapped() {
        let mut e = Event::new("1", "urn:x", "t");
        e.datacontenttype = Some("application/json".into());
        e.data = Some(b"[1]".to_vec());
        e.extensions = vec![("tenant".into(), "a b".into())];
        for mode in [ContentMode::Binary, ContentMode::Structured] {
            let (h, ct, body) = encode(&e, mode);
            assert_eq!(decode(&h, ct.as_deref(), &body, ("l", "a")).unwrap(), e);
        }
        let (h, _, _) = encode(&e, ContentMode::Binary);
        assert!(h.contains(&("cloudEvents_tenant".into(), "a b".into())));
        let plain = decode(&[], Some("text/plain"), b"hi", ("rabbit", "q")).unwrap();
        assert_eq!(plain.source, "urn:trigger-messaging:rabbit:q");
        assert_eq!(plain.datacontenttype.as_deref(), Some("text/plain"));
    }
}
