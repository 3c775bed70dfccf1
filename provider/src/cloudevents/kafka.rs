//! The Kafka binding: binary mode puts each attribute in a `ce_<attribute>`
//! record header (UTF-8, as it is) and `datacontenttype` in the
//! `content-type` header; structured mode is the JSON format with
//! `content-type: application/cloudevents+json`. In both, the record key is
//! the `partitionkey` extension, and a record's key comes back as
//! `partitionkey` when the event does not carry one. An event without data
//! is a record without a value. Records with no CloudEvent in them are
//! wrapped (see [`Event::wrap_plain`]).

use super::binary::BinaryMode;
use super::{ContentMode, Event, inbound, is_structured, json};

/// Kafka binary mode.
pub const BINARY: BinaryMode = BinaryMode {
    prefixes: &["ce_"],
    percent_encoded: false,
    content_type_as_attribute: false,
};

/// The extension whose value is the record key.
pub const PARTITION_KEY: &str = "partitionkey";

/// The header that carries the content type.
pub const CONTENT_TYPE: &str = "content-type";

/// A Kafka record, as the binding writes it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Record {
    /// The record key: the `partitionkey` extension, if any.
    pub key: Option<Vec<u8>>,
    /// Record headers.
    pub headers: Vec<(String, Vec<u8>)>,
    /// The value; `None` for a binary-mode event without data.
    pub value: Option<Vec<u8>>,
}

/// The record for an event.
pub fn encode(event: &Event, mode: ContentMode) -> Record {
    let (entries, content_type, body) = BINARY.encode_message(event, mode);
    let binary = !entries.is_empty();
    let mut headers: Vec<(String, Vec<u8>)> = entries
        .into_iter()
        .map(|(k, v)| (k, v.into_bytes()))
        .collect();
    if let Some(ct) = content_type {
        headers.push((CONTENT_TYPE.into(), ct.into_bytes()));
    }
    Record {
        key: event
            .extension(PARTITION_KEY)
            .map(|k| k.as_bytes().to_vec()),
        headers,
        value: (!binary || event.data.is_some()).then_some(body),
    }
}

/// The event in a received record, in whichever mode it came; `origin`
/// (link, topic) names the source of a wrapped plain record. Header names
/// and values, key and value are bytes as they came (a header without a
/// value reads as empty).
pub fn decode(
    headers: &[(&[u8], Option<&[u8]>)],
    key: Option<&[u8]>,
    value: Option<&[u8]>,
    origin: (&str, &str),
) -> Result<Event, String> {
    let content_type = headers
        .iter()
        .find(|(k, _)| k.eq_ignore_ascii_case(CONTENT_TYPE.as_bytes()))
        .map(|(_, v)| {
            std::str::from_utf8(v.unwrap_or_default())
                .map_err(|_| "the content-type header is not UTF-8".to_string())
        })
        .transpose()?;
    let mut event = if is_structured(content_type) {
        json::decode(value.unwrap_or_default())?
    } else {
        let named: Vec<_> = headers
            .iter()
            .map(|(k, v)| (inbound::text(k), v.unwrap_or_default()))
            .collect();
        let read = BINARY.read(
            named.iter().map(|(k, v)| (k.as_ref(), *v)),
            content_type,
            value.map(<[u8]>::to_vec),
        )?;
        match read {
            Some(event) => event,
            None => Event::wrap_plain(
                origin.0,
                origin.1,
                content_type,
                value.unwrap_or_default().to_vec(),
            ),
        }
    };
    if let Some(key) = key.filter(|k| !k.is_empty())
        && event.extension(PARTITION_KEY).is_none()
    {
        let key = inbound::printable(&inbound::text(key)).into_owned();
        event.extensions.push((PARTITION_KEY.into(), key));
    }
    Ok(event)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Event {
        let mut e = Event::new("id 1", "urn:x", "t");
        e.datacontenttype = Some("text/plain; charset=utf-8".into());
        e.subject = Some("50% \"off\" ü".into());
        e.data = Some(b"hello".to_vec());
        e.extensions = vec![
            ("traceparent".into(), "00-1".into()),
            (PARTITION_KEY.into(), "customer-7".into()),
        ];
        e
    }

    fn decoded(r: &Record, origin: (&str, &str)) -> Result<Event, String> {
        let headers: Vec<_> = r
            .headers
            .iter()
            .map(|(k, v)| (k.as_bytes(), Some(v.as_slice())))
            .collect();
        decode(&headers, r.key.as_deref(), r.value.as_deref(), origin)
    }

    #[test]
    fn both_modes_round_trip_with_the_key() {
        for mode in [ContentMode::Binary, ContentMode::Structured] {
            let record = encode(&sample(), mode);
            assert_eq!(record.key.as_deref(), Some(&b"customer-7"[..]));
            assert_eq!(decoded(&record, ("l", "t")).unwrap(), sample(), "{mode:?}");
        }
        let record = encode(&sample(), ContentMode::Binary);
        assert!(
            record
                .headers
                .contains(&("ce_subject".into(), "50% \"off\" ü".into()))
        );
        assert!(
            record
                .headers
                .contains(&("content-type".into(), b"text/plain; charset=utf-8".to_vec()))
        );
    }

    #[test]
    fn an_event_without_data_is_a_record_without_a_value() {
        let e = Event::new("1", "urn:x", "t");
        let record = encode(&e, ContentMode::Binary);
        assert_eq!((record.value, record.key), (None, None));
        let mut empty = e.clone();
        empty.data = Some(Vec::new());
        let record = encode(&empty, ContentMode::Binary);
        assert_eq!(record.value, Some(Vec::new()));
        assert_eq!(decoded(&record, ("l", "t")).unwrap(), empty);
    }

    #[test]
    fn plain_records_are_wrapped_and_keys_become_partition_keys() {
        let e = decode(
            &[(b"content-type", Some(b"text/plain"))],
            Some(b"k\xff"),
            Some(b"hi"),
            ("kafka1", "orders"),
        )
        .unwrap();
        assert_eq!(e.source, "urn:trigger-messaging:kafka1:orders");
        assert_eq!(e.data.as_deref(), Some(&b"hi"[..]));
        assert_eq!(e.extension(PARTITION_KEY), Some("k\\xFF"));
        let e = decode(&[], None, None, ("kafka1", "orders")).unwrap();
        assert_eq!(e.data.as_deref(), Some(&b""[..]));
        let err = decode(
            &[(b"ce_specversion", Some(b"1.0")), (b"ce_id", Some(b"\xff"))],
            None,
            None,
            ("l", "t"),
        )
        .unwrap_err();
        assert!(err.contains("ce_id"), "{err}");
        assert!(
            decode(&[(b"Content-Type", Some(b"\xff"))], None, None, ("l", "t"))
                .unwrap_err()
                .contains("content-type")
        );
    }
}
