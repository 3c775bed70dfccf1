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
use super::{Event, JSON_FORMAT, is_structured, json};

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
pub fn encode_fields(event: &Event) -> Vec<(String, Vec<u8>)> {
    let mut fields: Vec<(String, Vec<u8>)> = STREAM_FIELDS
        .write(event)
        .into_iter()
        .map(|(k, v)| (k, v.into_bytes()))
        .collect();
    if let Some(data) = &event.data {
        fields.push((DATA_FIELD.into(), data.clone()));
    }
    fields
}

/// The event in a stream entry.
pub fn decode_fields(fields: &[(String, Vec<u8>)], origin: (&str, &str)) -> Result<Event, String> {
    let field = |name: &str| {
        fields
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_slice())
    };
    let content_type = field(CONTENT_TYPE_FIELD).map(String::from_utf8_lossy);
    if is_structured(content_type.as_deref()) {
        return json::decode(field(DATA_FIELD).unwrap_or_default());
    }
    let text: Vec<(&str, String)> = fields
        .iter()
        .filter(|(k, _)| k != DATA_FIELD)
        .map(|(k, v)| (k.as_str(), String::from_utf8_lossy(v).into_owned()))
        .collect();
    let data = field(DATA_FIELD).map(<[u8]>::to_vec);
    if let Some(event) =
        STREAM_FIELDS.read(text.iter().map(|(k, v)| (*k, v.as_str())), None, data)?
    {
        return Ok(event);
    }
    Ok(match (fields, field(DATA_FIELD)) {
        ([_], Some(data)) => Event::wrap_plain(origin.0, origin.1, None, data.to_vec()),
        _ => {
            let object: serde_json::Map<String, serde_json::Value> = text
                .into_iter()
                .map(|(k, v)| (k.to_string(), v.into()))
                .collect();
            let mut e = Event::wrap_plain(
                origin.0,
                origin.1,
                Some("application/json"),
                serde_json::to_vec(&object).unwrap(),
            );
            if let Some(d) = field(DATA_FIELD) {
                // A plain entry with a data field and others: keep the data as the payload.
                e.data = Some(d.to_vec());
                e.datacontenttype = None;
            }
            e
        }
    })
}

/// Marks a structured-mode stream entry (the JSON format in `data`).
pub fn structured_fields(event: &Event) -> Vec<(String, Vec<u8>)> {
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
            json::decode_or_wrap(&json::encode(&sample()), ("l", "a")),
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
        let e = json::decode_or_wrap(b"hello", ("r", "chan"));
        assert_eq!(
            (e.source.as_str(), e.data.as_deref()),
            ("urn:trigger-messaging:r:chan", Some(&b"hello"[..]))
        );
        let e = decode_fields(&[("data".into(), b"x".to_vec())], ("r", "s")).unwrap();
        assert_eq!(e.data.as_deref(), Some(&b"x"[..]));
        let e = decode_fields(&[("sku".into(), b"A1".to_vec())], ("r", "s")).unwrap();
        assert_eq!(e.data.as_deref(), Some(&br#"{"sku":"A1"}"#[..]));
        assert_eq!(e.datacontenttype.as_deref(), Some("application/json"));
    }
}
