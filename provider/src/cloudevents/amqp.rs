//! The AMQP binding, applied to RabbitMQ's AMQP 0-9-1 headers table: binary
//! mode puts each attribute in a `cloudEvents_<attribute>` header (readers
//! also accept `cloudEvents:`) and `datacontenttype` in the message's
//! content-type; structured mode is the JSON format with content-type
//! `application/cloudevents+json`. Messages with neither are wrapped.
//! Encoding and decoding are [`BinaryMode::encode_message`] and
//! [`BinaryMode::decode_message`] with this mode.

use super::binary::BinaryMode;

/// AMQP binary mode.
pub const BINARY: BinaryMode = BinaryMode {
    prefixes: &["cloudEvents_", "cloudEvents:"],
    percent_encoded: false,
    content_type_as_attribute: false,
};

#[cfg(test)]
mod tests {
    use super::*;
    use crate::cloudevents::ContentMode;
    use crate::cloudevents::Event;

    #[test]
    fn both_modes_round_trip_and_plain_messages_are_wrapped() {
        let mut e = Event::new("1", "urn:x", "t");
        e.datacontenttype = Some("application/json".into());
        e.data = Some(b"[1]".to_vec());
        e.extensions = vec![("tenant".into(), "a b".into())];
        for mode in [ContentMode::Binary, ContentMode::Structured] {
            let (h, ct, body) = BINARY.encode_message(&e, mode);
            assert_eq!(
                BINARY
                    .decode_message(&h, ct.as_deref(), &body, ("l", "a"))
                    .unwrap(),
                e
            );
        }
        let (h, _, _) = BINARY.encode_message(&e, ContentMode::Binary);
        assert!(h.contains(&("cloudEvents_tenant".into(), "a b".into())));
        let plain = BINARY
            .decode_message::<&str, &[u8]>(&[], Some("text/plain"), b"hi", ("rabbit", "q"))
            .unwrap();
        assert_eq!(plain.source, "urn:trigger-messaging:rabbit:q");
        assert_eq!(plain.datacontenttype.as_deref(), Some("text/plain"));
    }
}
