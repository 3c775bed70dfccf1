//! The MQTT binding. MQTT 5: binary mode puts each attribute in a user
//! property named as the attribute (no prefix) and `datacontenttype` in the
//! PUBLISH content type; structured mode is the JSON format with content type
//! `application/cloudevents+json` ([`BinaryMode::encode_message`] /
//! [`BinaryMode::decode_message`] with [`BINARY`]). MQTT 3.1.1 has no
//! metadata: structured mode only ([`json::encode`] /
//! [`json::decode_or_wrap`](super::json::decode_or_wrap)). A message without
//! `specversion` is plain and is wrapped.

use super::binary::BinaryMode;
#[cfg(doc)]
use super::json;

/// MQTT 5 binary mode.
pub const BINARY: BinaryMode = BinaryMode {
    prefixes: &[""],
    percent_encoded: false,
    content_type_as_attribute: false,
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloudevents::ContentMode;
    use crate::cloudevents::{Event, json};

    #[test]
    fn every_mode_round_trips() {
        let mut e = Event::new("1", "urn:x", "t");
        e.datacontenttype = Some("text/plain".into());
        e.data = Some(b"hi".to_vec());
        e.extensions = vec![("tenant".into(), "a".into())];
        for mode in [ContentMode::Binary, ContentMode::Structured] {
            let (p, ct, body) = BINARY.encode_message(&e, mode);
            assert_eq!(
                BINARY
                    .decode_message(&p, ct.as_deref(), &body, ("l", "t"))
                    .unwrap(),
                e
            );
        }
        assert_eq!(
            json::decode_or_wrap(&json::encode(&e), ("l", "t")).unwrap(),
            e
        );
        let plain = BINARY
            .decode_message(&[("note", "x")], Some("text/plain"), b"raw", ("m", "a/b"))
            .unwrap();
        assert_eq!(
            (plain.source.as_str(), plain.data.as_deref()),
            ("urn:trigger-messaging:m:a/b", Some(&b"raw"[..]))
        );
        assert_eq!(
            json::decode_or_wrap(b"raw", ("m", "a"))
                .unwrap()
                .data
                .as_deref(),
            Some(&b"raw"[..])
        );
    }
}
