//! Binary content mode, shared by every binding that has metadata: the
//! attributes travel as prefixed metadata entries (`ce-` headers for HTTP and
//! NATS, `cloudEvents_` for AMQP, no prefix for MQTT 5 user properties), the
//! data as the body. Bindings differ only in the prefix, whether values are
//! percent-encoded, and whether `datacontenttype` travels as an attribute or
//! as the protocol's own content type.

use super::{Event, JSON_FORMAT, is_structured, json};
use percent_encoding::{AsciiSet, CONTROLS, percent_decode, utf8_percent_encode};
use std::borrow::Cow;

/// How a binding writes events: attributes as protocol metadata (binary
/// mode) or the whole event as one JSON document (structured mode). Readers
/// accept both.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, serde::Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum ContentMode {
    /// Attributes in headers, data as the payload.
    #[default]
    Binary,
    /// The whole event as one JSON document.
    Structured,
}

/// Characters the HTTP and NATS bindings percent-encode in values: space,
/// `"`, `%` and everything outside printable ASCII.
const UNSAFE: &AsciiSet = &CONTROLS.add(b' ').add(b'"').add(b'%');

/// How one binding writes attributes as metadata.
#[derive(Clone, Copy, Debug)]
pub struct BinaryMode {
    /// Prefixes that mark an entry as an attribute; the first is written,
    /// all are read (AMQP readers accept `cloudEvents_` and `cloudEvents:`).
    pub prefixes: &'static [&'static str],
    /// Whether values are percent-encoded.
    pub percent_encoded: bool,
    /// Whether `datacontenttype` is a prefixed entry (NATS) rather than the
    /// protocol's content type (HTTP, AMQP, MQTT 5).
    pub content_type_as_attribute: bool,
}

impl BinaryMode {
    /// The metadata entries for an event (everything but the data).
    pub fn write(&self, event: &Event) -> Vec<(String, String)> {
        let prefix = self.prefixes[0];
        let mut out = Vec::with_capacity(6 + event.extensions.len());
        let mut put = |name: &str, value: &str| {
            let value = if self.percent_encoded {
                Cow::from(utf8_percent_encode(value, UNSAFE)).into_owned()
            } else {
                value.to_string()
            };
            out.push(([prefix, name].concat(), value));
        };
        put("specversion", &event.specversion);
        put("id", &event.id);
        put("source", &event.source);
        put("type", &event.ty);
        let content_type = event
            .datacontenttype
            .as_ref()
            .filter(|_| self.content_type_as_attribute);
        for (name, value) in [
            ("datacontenttype", content_type),
            ("dataschema", event.dataschema.as_ref()),
            ("subject", event.subject.as_ref()),
            ("time", event.time.as_ref()),
        ] {
            if let Some(v) = value {
                put(name, v);
            }
        }
        for (name, value) in &event.extensions {
            put(name, value);
        }
        out
    }

    /// Reads an event from metadata entries (values as the bytes that came);
    /// `None` when there is no `specversion` entry (a plain message).
    /// `content_type` is the protocol's content type, used when
    /// `datacontenttype` is not an attribute here. Percent-encoded bindings
    /// also take raw UTF-8 values (be liberal in what you accept); a value
    /// that is not UTF-8 either way is an error naming its entry.
    pub fn read<'a>(
        &self,
        entries: impl IntoIterator<Item = (&'a str, &'a [u8])>,
        content_type: Option<&str>,
        data: Option<Vec<u8>>,
    ) -> Result<Option<Event>, String> {
        let mut event = Event {
            data,
            ..Default::default()
        };
        if !self.content_type_as_attribute {
            event.datacontenttype = content_type.map(Into::into);
        }
        let mut found = false;
        for (key, raw) in entries {
            let Some(attr) = self.attribute_name(key) else {
                continue;
            };
            found |= attr == "specversion";
            let value = if self.percent_encoded {
                percent_decode(raw)
                    .decode_utf8()
                    .map_err(|_| format!("`{key}` does not percent-decode to UTF-8"))?
                    .into_owned()
            } else {
                String::from_utf8(raw.to_vec()).map_err(|_| format!("`{key}` is not UTF-8"))?
            };
            match &*attr {
                "specversion" => event.specversion = value,
                "id" => event.id = value,
                "source" => event.source = value,
                "type" => event.ty = value,
                "dataschema" => event.dataschema = Some(value),
                "subject" => event.subject = Some(value),
                "time" => event.time = Some(value),
                "datacontenttype" if self.content_type_as_attribute => {
                    event.datacontenttype = Some(value)
                }
                "datacontenttype" => {
                    return Err(format!(
                        "the data content type goes in the protocol's content type, not `{key}`"
                    ));
                }
                _ => event.extensions.push((attr.into_owned(), value)),
            }
        }
        Ok(found.then_some(event))
    }

    /// A whole message for an event: metadata entries, the protocol content
    /// type, and the body. Structured mode carries the JSON format instead,
    /// as does binary mode when the data content type is a CloudEvents format
    /// that would go in the protocol's content type (it would read back as
    /// structured mode).
    pub fn encode_message(
        &self,
        event: &Event,
        mode: ContentMode,
    ) -> (Vec<(String, String)>, Option<String>, Vec<u8>) {
        let binary_unreadable =
            !self.content_type_as_attribute && is_structured(event.datacontenttype.as_deref());
        let mode = if binary_unreadable {
            ContentMode::Structured
        } else {
            mode
        };
        match mode {
            ContentMode::Binary => {
                let content_type = event
                    .datacontenttype
                    .clone()
                    .filter(|_| !self.content_type_as_attribute);
                (
                    self.write(event),
                    content_type,
                    event.data.clone().unwrap_or_default(),
                )
            }
            ContentMode::Structured => (Vec::new(), Some(JSON_FORMAT.into()), json::encode(event)),
        }
    }

    /// The event in a received message, in whichever mode it came; a message
    /// with no CloudEvent in it is wrapped, its source naming `origin`
    /// (link, address).
    pub fn decode_message<K: AsRef<str>, V: AsRef<[u8]>>(
        &self,
        entries: &[(K, V)],
        content_type: Option<&str>,
        body: &[u8],
        origin: (&str, &str),
    ) -> Result<Event, String> {
        if is_structured(content_type) {
            return json::decode(body);
        }
        let data = (!body.is_empty() || content_type.is_some()).then(|| body.to_vec());
        match self.read(
            entries.iter().map(|(k, v)| (k.as_ref(), v.as_ref())),
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

    /// The attribute an entry carries, lowercased (copied only when it
    /// had capitals).
    fn attribute_name<'k>(&self, key: &'k str) -> Option<Cow<'k, str>> {
        self.prefixes.iter().find_map(|p| {
            let head = key.get(..p.len())?;
            let name = &key[p.len()..];
            (head.eq_ignore_ascii_case(p) && !name.is_empty()).then(|| {
                if name.bytes().any(|b| b.is_ascii_uppercase()) {
                    Cow::Owned(name.to_ascii_lowercase())
                } else {
                    Cow::Borrowed(name)
                }
            })
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    const AMQP_LIKE: BinaryMode = BinaryMode {
        prefixes: &["cloudEvents_", "cloudEvents:"],
        percent_encoded: false,
        content_type_as_attribute: false,
    };

    #[test]
    fn reads_every_accepted_prefix_and_finds_plain_messages() {
        let e = AMQP_LIKE
            .read(
                [
                    ("cloudEvents:id", &b"1"[..]),
                    ("cloudEvents_specversion", b"1.0"),
                    ("cloudEvents_type", b"t"),
                    ("other", b"x"),
                ],
                Some("text/plain"),
                None,
            )
            .unwrap()
            .unwrap();
        assert_eq!(
            (e.id.as_str(), e.ty.as_str(), e.datacontenttype.as_deref()),
            ("1", "t", Some("text/plain"))
        );
        assert_eq!(
            AMQP_LIKE.read([("other", &b"x"[..])], None, None).unwrap(),
            None
        );
        assert_eq!(
            AMQP_LIKE
                .read([("cloudEvents_id", &b"1"[..])], None, None)
                .unwrap(),
            None,
            "no specversion, no CloudEvent"
        );
    }

    #[test]
    fn values_may_be_raw_utf8_or_percent_encoded_but_must_be_utf8() {
        const PERCENT: BinaryMode = BinaryMode {
            prefixes: &["ce-"],
            percent_encoded: true,
            content_type_as_attribute: true,
        };
        let read = |mode: BinaryMode, subject: &[u8]| {
            mode.read(
                [
                    ("ce-specversion", &b"1.0"[..]),
                    ("ce-subject", subject),
                    ("cloudEvents_subject", subject),
                    ("cloudEvents_specversion", b"1.0"),
                ],
                None,
                None,
            )
            .map(|e| e.unwrap().subject.unwrap())
        };
        assert_eq!(read(PERCENT, "ünï".as_bytes()).unwrap(), "ünï");
        assert_eq!(read(PERCENT, b"%C3%BCn%C3%AF").unwrap(), "ünï");
        assert_eq!(read(AMQP_LIKE, "ünï".as_bytes()).unwrap(), "ünï");
        for bad in [&b"\xff"[..], b"%FF", b"a%C3"] {
            assert!(read(PERCENT, bad).unwrap_err().contains("ce-subject"));
        }
        assert!(read(AMQP_LIKE, b"\xff").unwrap_err().contains("not UTF-8"));
    }
}
