//! The CloudEvents JSON event format (structured mode): one JSON document per
//! event, media type `application/cloudevents+json`.
//!
//! Written by hand rather than with the `cloudevents-sdk` crate because that
//! crate re-formats `time` and re-serialises JSON data, and our round trips
//! must keep every attribute and every byte of data exactly.

use super::{Event, is_json_media_type};
use base64::Engine as _;
use serde_json::value::RawValue;
use serde_json::{Map, Value};

/// Encodes an event as a JSON format document.
///
/// Data goes in `data` as JSON when the content type is JSON (or absent) and
/// the bytes are valid JSON, as a string when the content type is textual and
/// the bytes are UTF-8, and in `data_base64` otherwise.
pub fn encode(event: &Event) -> Vec<u8> {
    let mut out = Map::new();
    out.insert("specversion".into(), event.specversion.clone().into());
    out.insert("id".into(), event.id.clone().into());
    out.insert("source".into(), event.source.clone().into());
    out.insert("type".into(), event.ty.clone().into());
    for (name, value) in [
        ("datacontenttype", &event.datacontenttype),
        ("dataschema", &event.dataschema),
        ("subject", &event.subject),
        ("time", &event.time),
    ] {
        if let Some(v) = value {
            out.insert(name.into(), v.clone().into());
        }
    }
    for (name, value) in &event.extensions {
        out.insert(name.clone(), value.clone().into());
    }
    let mut doc = serde_json::to_string(&out).expect("a JSON map always serialises");
    if let Some(data) = &event.data {
        // Appended by hand so that JSON data keeps its exact bytes.
        doc.pop(); // the closing brace; the map is never empty
        doc.push(',');
        let content_type = event.datacontenttype.as_deref();
        let json_data = content_type.is_none_or(is_json_media_type) && reads_back_as_json(data);
        if json_data {
            doc.push_str("\"data\":");
            doc.push_str(std::str::from_utf8(data).expect("valid JSON is UTF-8"));
        } else if let (Some(ct), Ok(text)) = (content_type, std::str::from_utf8(data))
            && ct.trim_start().to_ascii_lowercase().starts_with("text/")
            && !is_json_media_type(ct)
        {
            doc.push_str("\"data\":");
            doc.push_str(&serde_json::to_string(text).expect("a string serialises"));
        } else {
            doc.push_str("\"data_base64\":\"");
            doc.push_str(&base64::engine::general_purpose::STANDARD.encode(data));
            doc.push('"');
        }
        doc.push('}');
    }
    doc.into_bytes()
}

/// Whether `data` can go in `data` as JSON and be read back byte for byte:
/// one JSON value that [`decode`] parses one level down in a document (so
/// within serde_json's nesting limit, no number out of range, no lone
/// surrogate), with no whitespace around it (which [`decode`] does not
/// keep), and not `null` (which means no data).
fn reads_back_as_json(data: &[u8]) -> bool {
    if data.trim_ascii() != data || data == b"null" {
        return false;
    }
    if serde_json::from_slice::<&RawValue>(data).is_err() {
        return false;
    }
    let mut nested = Vec::with_capacity(data.len() + 2);
    nested.push(b'[');
    nested.extend_from_slice(data);
    nested.push(b']');
    serde_json::from_slice::<Value>(&nested).is_ok()
}

/// Decodes a JSON format document. Extension values that are JSON numbers or
/// booleans become their JSON text. The error names what is wrong.
pub fn decode(bytes: &[u8]) -> Result<Event, String> {
    let doc: Map<String, Value> = serde_json::from_slice(bytes)
        .map_err(|e| format!("not a CloudEvents JSON document: {e}"))?;
    decode_document(&doc, bytes)
}

/// Decodes a document already parsed into `doc` from `bytes`.
fn decode_document(doc: &Map<String, Value>, bytes: &[u8]) -> Result<Event, String> {
    // `data` is read a second time as raw text, so JSON data keeps its bytes.
    #[derive(serde::Deserialize)]
    struct RawData<'a> {
        #[serde(borrow)]
        data: Option<&'a RawValue>,
    }
    let raw: RawData = serde_json::from_slice(bytes).map_err(|e| e.to_string())?;

    let mut event = Event::default();
    for (name, value) in doc {
        let text = |value: &Value| -> Result<String, String> {
            match value {
                Value::String(s) => Ok(s.clone()),
                Value::Number(n) => Ok(n.to_string()),
                Value::Bool(b) => Ok(b.to_string()),
                other => Err(format!("attribute `{name}` must be a string, got {other}")),
            }
        };
        match name.as_str() {
            "data" | "data_base64" => {}
            "specversion" => event.specversion = text(value)?,
            "id" => event.id = text(value)?,
            "source" => event.source = text(value)?,
            "type" => event.ty = text(value)?,
            "datacontenttype" => event.datacontenttype = Some(text(value)?),
            "dataschema" => event.dataschema = Some(text(value)?),
            "subject" => event.subject = Some(text(value)?),
            "time" => event.time = Some(text(value)?),
            _ if value.is_null() => {}
            _ => event.extensions.push((name.clone(), text(value)?)),
        }
    }
    match (raw.data, doc.get("data_base64")) {
        (Some(_), Some(_)) => return Err("both `data` and `data_base64` are present".into()),
        (Some(data), None) => {
            let textual = event
                .datacontenttype
                .as_deref()
                .is_some_and(|ct| !is_json_media_type(ct));
            event.data = match doc.get("data") {
                Some(Value::Null) => None,
                Some(Value::String(s)) if textual => Some(s.clone().into_bytes()),
                _ => Some(data.get().as_bytes().to_vec()),
            };
        }
        (None, Some(Value::String(b64))) => {
            event.data = Some(
                base64::engine::general_purpose::STANDARD
                    .decode(b64)
                    .map_err(|e| format!("`data_base64` is not base64: {e}"))?,
            );
        }
        (None, Some(Value::Null)) | (None, None) => {}
        (None, Some(other)) => return Err(format!("`data_base64` must be a string, got {other}")),
    }
    Ok(event)
}

/// The event in a payload that carries no metadata (Redis pub/sub, MQTT
/// 3.1.1): a JSON object with `specversion` is a CloudEvents document (and
/// an error when it does not decode); anything else is a plain message,
/// wrapped with its source naming `origin` (link, address).
pub fn decode_or_wrap(payload: &[u8], origin: (&str, &str)) -> Result<Event, String> {
    match serde_json::from_slice::<Map<String, Value>>(payload) {
        Ok(doc) if doc.contains_key("specversion") => decode_document(&doc, payload),
        _ => Ok(Event::wrap_plain(
            origin.0,
            origin.1,
            None,
            payload.to_vec(),
        )),
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn event(data: &[u8], content_type: Option<&str>) -> Event {
        let mut e = Event::new("id-1", "urn:test", "test.type");
        e.data = Some(data.to_vec());
        e.datacontenttype = content_type.map(Into::into);
        e.time = Some("2024-01-01T00:00:00.000Z".into());
        e.extensions = vec![
            ("traceparent".into(), "00-ab".into()),
            ("zeta".into(), "1".into()),
        ];
        e
    }

    #[test]
    fn round_trips_keep_every_byte() {
        for (data, ct) in [
            (&b"{ \"a\" : 1 }"[..], Some("application/json")),
            (b"{\"a\":1}", None),
            (b"hello \"world\"", Some("text/plain")),
            (b"\x00\xffbinary", Some("application/octet-stream")),
            (b"not json", None),
            (b"", Some("text/plain")),
            (b"", None),
        ] {
            let e = event(data, ct);
            let back = decode(&encode(&e)).unwrap();
            assert_eq!(back.data, e.data, "data of {ct:?}");
            assert_eq!(back.datacontenttype, e.datacontenttype);
            assert_eq!(back.time, e.time);
            let mut exts = back.extensions.clone();
            exts.sort();
            assert_eq!(exts, e.extensions);
        }
        let mut no_data = Event::new("1", "s", "t");
        no_data.subject = Some("sub".into());
        assert_eq!(decode(&encode(&no_data)).unwrap(), no_data);
    }

    #[test]
    fn json_data_is_embedded_as_json() {
        let doc = String::from_utf8(encode(&event(b"[1,2]", Some("application/json")))).unwrap();
        assert!(doc.contains("\"data\":[1,2]"), "{doc}");
    }

    #[test]
    fn reads_other_producers_documents() {
        let e = decode(br#"{"specversion":"1.0","id":"x","source":"s","type":"t","count":3,"ok":true,"data":{"k":"v"}}"#).unwrap();
        assert_eq!(e.extension("count"), Some("3"));
        assert_eq!(e.extension("ok"), Some("true"));
        assert_eq!(e.data.as_deref(), Some(&br#"{"k":"v"}"#[..]));
        assert!(
            decode(b"[]")
                .unwrap_err()
                .contains("not a CloudEvents JSON document")
        );
        assert!(
            decode(br#"{"id":1.5,"data_base64":"%%"}"#)
                .unwrap_err()
                .contains("data_base64")
        );
    }
}
