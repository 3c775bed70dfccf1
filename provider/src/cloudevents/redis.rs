//! Redis has no CloudEvents binding, so this one follows the others:
//! - pub/sub carries only a payload: structured mode (the JSON format,
//!   [`json::encode`] / [`json::decode_or_wrap`]);
//! - stream entries are field/value maps: binary mode, a `ce-<attribute>`
//!   field per attribute (`datacontenttype` included, values raw) and the data
//!   in a `data` field.
//!
//! Readers accept both modes on both: a pub/sub payload that is not a
//! CloudEvents JSON document, or a stream entry without `ce-` fields, is a
//! plain message and is wrapped (a plain stream entry's fields become a JSON
//! object, unless it has only a `data` field).

use super::binary::BinaryMode;
use super::{Event, JSON_FORMAT, inbound, is_structured, json};
use std::borrow::Cow;

/// Stream-entry binary mode.
pub const STREAM_FIELDS: BinaryMode = BinaryMode {
    prefixes: &["ce-"],
    percent_encoded: false,
    content_type_as_attribute: true,
};

/// The stream field that holds the data.
pub const DATA_FIELD: &str = "data";
/// The stream field that marks a structured-mode entry.
pub const CONTENT_TYPE_FIELD: &str = "content-type";

/// The fields of a stream entry.
pub fn encode_fields(event: &Event) -> Vec<(Vec<u8>, Vec<u8>)> {
    let mut fields: Vec<(Vec<u8>, Vec<u8>)> = STREAM_FIELDS
        .write(event)
        .into_iter()
        .map(|(k, v)| (k.into_bytes(), v.into_bytes()))
        .collect();
    if let Some(data) = &event.data {
        fields.push((DATA_FIELD.into(), data.clone()));
    }
    fields
}

/// The event in a stream entry. Field names and values are bytes as they
/// came; names that are not UTF-8 are read as [`inbound::text`], so that an
/// attribute field with such a name is an invalid attribute and any other
/// is kept.
pub fn decode_fields(fields: &[(Vec<u8>, Vec<u8>)], origin: (&str, &str)) -> Result<Event, String> {
    let field = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name.as_bytes()))
            .map(|(_, v)| v.as_slice())
    };
    let content_type = field(CONTENT_TYPE_FIELD).map(String::from_utf8_lossy);
    if is_structured(content_type.as_deref()) {
        return json::decode(field(DATA_FIELD).unwrap_or_default());
    }
    let named: Vec<(Cow<str>, &[u8])> = fields
        .iter()
        .filter(|(k, _)| k != DATA_FIELD.as_bytes())
        .map(|(k, v)| (inbound::text(k), v.as_slice()))
        .collect();
    let data = field(DATA_FIELD).map(<[u8]>::to_vec);
    if let Some(event) =
        STREAM_FIELDS.read(named.iter().map(|(k, v)| (k.as_ref(), *v)), None, data)?
    {
        return Ok(event);
    }
    Ok(match (fields, field(DATA_FIELD)) {
        ([_], Some(data)) => Event::wrap_plain(origin.0, origin.1, None, data.to_vec()),
        (_, Some(data)) => {
            // A plain entry with a data field and others: the data is the payload.
            Event::wrap_plain(origin.0, origin.1, None, data.to_vec())
        }
        (_, None) => {
            let object: serde_json::Map<String, serde_json::Value> = named
                .into_iter()
                .map(|(k, v)| (k.into_owned(), inbound::text(v).into_owned().into()))
                .collect();
            Event::wrap_plain(
                origin.0,
                origin.1,
                Some("application/json"),
                serde_json::Value::Object(object).to_string().into_bytes(),
            )
        }
    })
}

/// Marks a structured-mode stream entry (the JSON format in `data`).
pub fn structured_fields(event: &Event) -> Vec<(Vec<u8>, Vec<u8>)> {
    vec![
        (CONTENT_TYPE_FIELD.into(), JSON_FORMAT.as_bytes().to_vec()),
        (DATA_FIELD.into(), json::encode(event)),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> Event {
        let mut e = Event::new("1", "urn:x", "t");
        e.data = Some(vec![0, 159, 146, 150]);
        e.datacontenttype = Some("application/octet-stream".into());
        e.subject = Some("a b%".into());
        e.extensions = vec![("tenant".into(), "blue".into())];
        e
    }

    #[test]
    fn every_mode_round_trips() {
        assert_eq!(
            json::decode_or_wrap(&json::encode(&sample()), ("l", "a")).unwrap(),
            sample()
        );
        assert_eq!(
            decode_fields(&encode_fields(&sample()), ("l", "a")).unwrap(),
            sample()
        );
        assert_eq!(
            decode_fields(&structured_fields(&sample()), ("l", "a")).unwrap(),
            sample()
        );
    }

    #[test]
    fn plain_messages_are_wrapped() {
        let e = json::decode_or_wrap(b"hello", ("r", "chan")).unwrap();
        assert_eq!(
            (e.source.as_str(), e.data.as_deref()),
            ("urn:trigger-messaging:r:chan", Some(&b"hello"[..]))
        );
        let e = decode_fields(&[(b"data".to_vec(), b"x".to_vec())], ("r", "s")).unwrap();
        assert_eq!(e.data.as_deref(), Some(&b"x"[..]));
        let e = decode_fields(&[(b"sku".to_vec(), b"A1".to_vec())], ("r", "s")).unwrap();
        assert_eq!(e.data.as_deref(), Some(&br#"{"sku":"A1"}"#[..]));
        assert_eq!(e.datacontenttype.as_deref(), Some("application/json"));
        let e = decode_fields(&[(b"s\xffku".to_vec(), b"A\xc3".to_vec())], ("r", "s")).unwrap();
        assert_eq!(e.data.as_deref(), Some(&br#"{"s\\xFFku":"A\\xC3"}"#[..]));
        let err = decode_fields(
            &[
                (b"ce-specversion".to_vec(), b"1.0".to_vec()),
                (b"ce-id".to_vec(), b"\xff".to_vec()),
            ],
            ("r", "s"),
        )
        .unwrap_err();
        assert!(err.contains("ce-id"), "{err}");
    }
}
