//! The NATS binding: binary mode puts every attribute, `datacontenttype`
//! included, in a percent-encoded `ce-<attribute>` header; structured mode is
//! the JSON format with `Content-Type: application/cloudevents+json`.
//! Messages with neither are wrapped (see [`Event::wrap_plain`]).

use super::ContentMode;
use super::Event;
use super::binary::BinaryMode;

/// NATS binary mode.
pub const BINARY: BinaryMode = BinaryMode {
    prefixes: &["ce-"],
    percent_encoded: true,
    content_type_as_attribute: true,
};

/// Headers and payload for an event.
pub fn encode(event: &Event, mode: ContentMode) -> (Vec<(String, String)>, Vec<u8>) {
    let (mut headers, content_type, body) = BINARY.encode_message(event, mode);
    if let Some(ct) = content_type {
        headers.push(("Content-Type".into(), ct));
    }
    (headers, body)
}

/// The event in a received message, in whichever mode it came; `origin`
/// (link, subject) names the source of a wrapped plain message.
pub fn decode<K: AsRef<str>, V: AsRef<str> + AsRef<[u8]>>(
    headers: &[(K, V)],
    payload: &[u8],
    origin: (&str, &str),
) -> Result<Event, String> {
    let content_type = headers
        .iter()
        .find(|(k, _)| k.as_ref().eq_ignore_ascii_case("content-type"))
        .map(|(_, v)| AsRef::<str>::as_ref(v));
    BINARY.decode_message(headers, content_type, payload, origin)
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
            assert_eq!(
                decode(&headers, &body, ("l", "s")).unwrap(),
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
