//! CloudEvents: the one event model every layer shares, its validation, and
//! its mapping to each protocol binding (one submodule per binding).

pub mod amqp;
pub mod binary;
pub mod http;
pub mod inbound;
pub mod json;
pub mod kafka;
pub mod mqtt;
pub mod nats;
#[cfg(test)]
mod proptests;
pub mod redis;

pub use binary::ContentMode;

/// The media type of the CloudEvents JSON event format (structured mode).
pub const JSON_FORMAT: &str = "application/cloudevents+json";

/// The `type` given to a plain message wrapped into an event.
pub const PLAIN_TYPE: &str = "dev.trigger-messaging.plain";

/// Whether a content type says the body is a structured-mode event.
pub fn is_structured(content_type: Option<&str>) -> bool {
    content_type.is_some_and(|ct| {
        ct.trim_start()
            .to_ascii_lowercase()
            .starts_with("application/cloudevents")
    })
}

/// A CloudEvent, shaped like the WIT `event` record so that conversions to and
/// from guests are field-for-field and lose nothing. Two events are equal
/// when their attributes are, whatever the order of their extensions (brokers'
/// header maps do not keep it).
#[derive(Clone, Debug, Default, Eq)]
pub struct Event {
    /// CloudEvents `specversion`; only "1.0" is valid.
    pub specversion: String,
    /// CloudEvents `type`.
    pub ty: String,
    /// CloudEvents `source`.
    pub source: String,
    /// CloudEvents `id`.
    pub id: String,
    /// The payload bytes, exactly as published.
    pub data: Option<Vec<u8>>,
    /// CloudEvents `datacontenttype`.
    pub datacontenttype: Option<String>,
    /// CloudEvents `dataschema`.
    pub dataschema: Option<String>,
    /// CloudEvents `subject`.
    pub subject: Option<String>,
    /// CloudEvents `time`, kept as the producer wrote it.
    pub time: Option<String>,
    /// Extension attributes, in the order the producer gave them.
    pub extensions: Vec<(String, String)>,
}

impl PartialEq for Event {
    fn eq(&self, other: &Self) -> bool {
        fn sorted(e: &Event) -> Vec<&(String, String)> {
            let mut x: Vec<_> = e.extensions.iter().collect();
            x.sort();
            x
        }
        self.specversion == other.specversion
            && self.ty == other.ty
            && self.source == other.source
            && self.id == other.id
            && self.data == other.data
            && self.datacontenttype == other.datacontenttype
            && self.dataschema == other.dataschema
            && self.subject == other.subject
            && self.time == other.time
            && sorted(self) == sorted(other)
    }
}

/// Attribute names the specification defines; an extension may not reuse them.
const CONTEXT_ATTRIBUTES: &[&str] = &[
    "specversion",
    "type",
    "source",
    "id",
    "datacontenttype",
    "dataschema",
    "subject",
    "time",
    "data",
    "data_base64",
];

impl Event {
    /// An event with the required attributes set and everything else empty.
    pub fn new(id: impl Into<String>, source: impl Into<String>, ty: impl Into<String>) -> Self {
        Event {
            specversion: "1.0".into(),
            id: id.into(),
            source: source.into(),
            ty: ty.into(),
            ..Default::default()
        }
    }

    /// The payload size that channel limits are checked against.
    pub fn payload_len(&self) -> usize {
        self.data.as_ref().map_or(0, Vec::len)
    }

    /// Checks the event against the CloudEvents 1.0 rules, so that what a
    /// guest publishes is readable by every other CloudEvents consumer.
    /// The error says which attribute is wrong and why.
    pub fn validate(&self) -> Result<(), String> {
        if self.specversion != "1.0" {
            return Err(format!(
                "specversion must be \"1.0\", got {:?}",
                self.specversion
            ));
        }
        for (name, value) in [
            ("id", &self.id),
            ("source", &self.source),
            ("type", &self.ty),
        ] {
            if value.is_empty() {
                return Err(format!("attribute `{name}` must not be empty"));
            }
        }
        if let Some(time) = &self.time {
            chrono::DateTime::parse_from_rfc3339(time).map_err(|e| {
                format!("attribute `time` is not an RFC 3339 timestamp ({time:?}: {e})")
            })?;
        }
        // A name given twice has no meaning in the JSON format, which keeps
        // one of them: the event would not read back as it was sent.
        // Few extensions (the common case) are compared pairwise, without
        // allocating; many, through a set.
        let mut many = (self.extensions.len() > 16).then(std::collections::BTreeSet::new);
        for (i, (name, _)) in self.extensions.iter().enumerate() {
            validate_extension_name(name)?;
            let repeated = match &mut many {
                Some(names) => !names.insert(name.as_str()),
                None => self.extensions[..i]
                    .iter()
                    .any(|(earlier, _)| earlier == name),
            };
            if repeated {
                return Err(format!("extension `{name}` is given more than once"));
            }
        }
        let optional = [
            ("datacontenttype", &self.datacontenttype),
            ("dataschema", &self.dataschema),
            ("subject", &self.subject),
            ("time", &self.time),
        ];
        let attributes = [
            ("specversion", &self.specversion),
            ("id", &self.id),
            ("source", &self.source),
            ("type", &self.ty),
        ]
        .into_iter()
        .chain(
            optional
                .into_iter()
                .filter_map(|(name, value)| Some((name, value.as_ref()?))),
        )
        .chain(
            self.extensions
                .iter()
                .map(|(name, value)| (name.as_str(), value)),
        );
        for (name, value) in attributes {
            // Printable ASCII, the common case, needs no decoding.
            if value.bytes().all(|b| (0x20..0x7f).contains(&b)) {
                continue;
            }
            if let Some(c) = value.chars().find(|&c| !allowed_in_string(c)) {
                return Err(format!(
                    "attribute `{name}` holds {}, which a CloudEvents string may not",
                    c.escape_unicode()
                ));
            }
        }
        Ok(())
    }

    /// Wraps a message that carries no CloudEvents metadata (a plain
    /// publisher) into a valid event: a new UUID as `id`, `source`
    /// `urn:trigger-messaging:<link>:<address>`, type [`PLAIN_TYPE`], and the
    /// broker's content type as `datacontenttype` when it has one. Characters
    /// an attribute may not hold are escaped ([`inbound::printable`]).
    pub fn wrap_plain(
        link: &str,
        address: &str,
        content_type: Option<&str>,
        body: Vec<u8>,
    ) -> Event {
        use inbound::printable;
        let mut event = Event::new(
            uuid::Uuid::new_v4().to_string(),
            format!(
                "urn:trigger-messaging:{}:{}",
                printable(link),
                printable(address)
            ),
            PLAIN_TYPE,
        );
        event.datacontenttype = content_type.map(|ct| printable(ct).into_owned());
        event.data = Some(body);
        event
    }

    /// The value of an extension attribute, if the event has it.
    pub fn extension(&self, name: &str) -> Option<&str> {
        self.extensions
            .iter()
            .find(|(n, _)| n == name)
            .map(|(_, v)| v.as_str())
    }
}

/// Whether a CloudEvents string may hold `c`: not a control character
/// (U+0000-U+001F, U+007F-U+009F) nor a Unicode noncharacter (CloudEvents
/// 1.0, "Type System"). This is also what makes every attribute safe in
/// protocol headers and server-sent events.
fn allowed_in_string(c: char) -> bool {
    let noncharacter = matches!(c as u32, 0xFDD0..=0xFDEF) || (c as u32 & 0xFFFE) == 0xFFFE;
    !c.is_control() && !noncharacter
}

/// Extension names are lower-case ASCII letters and digits (CloudEvents 1.0,
/// "Attribute Naming Convention"), and must not shadow a context attribute.
pub fn validate_extension_name(name: &str) -> Result<(), String> {
    if name.is_empty()
        || !name
            .bytes()
            .all(|b| b.is_ascii_lowercase() || b.is_ascii_digit())
    {
        return Err(format!(
            "extension name {name:?} must be lower-case letters a-z and digits 0-9 only"
        ));
    }
    if CONTEXT_ATTRIBUTES.contains(&name) {
        return Err(format!(
            "extension name {name:?} is a CloudEvents context attribute"
        ));
    }
    Ok(())
}

/// Whether a media type says the data is JSON (`application/json`, `text/json`
/// or any `+json` suffix), which the JSON format embeds as JSON rather than
/// as a string or base64.
pub fn is_json_media_type(content_type: &str) -> bool {
    let essence = content_type
        .split(';')
        .next()
        .unwrap_or("")
        .trim()
        .to_ascii_lowercase();
    essence == "application/json" || essence == "text/json" || essence.ends_with("+json")
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_the_attribute() {
        let mut e = Event::new("1", "src", "t");
        assert!(e.validate().is_ok());
        e.specversion = "0.3".into();
        assert!(e.validate().unwrap_err().contains("specversion"));
        let mut e = Event::new("", "src", "t");
        assert!(e.validate().unwrap_err().contains("`id`"));
        e.id = "1".into();
        e.time = Some("yesterday".into());
        assert!(e.validate().unwrap_err().contains("`time`"));
        e.time = Some("2024-02-29T12:00:00.5+01:00".into());
        assert!(e.validate().is_ok());
        e.extensions.push(("Bad-Name".into(), "x".into()));
        assert!(e.validate().unwrap_err().contains("Bad-Name"));
        e.extensions = vec![("subject".into(), "x".into())];
        assert!(e.validate().unwrap_err().contains("context attribute"));
        type Spoil = fn(&mut Event);
        let spoilers: [(Spoil, &str); 6] = [
            (|e: &mut Event| e.id = "a\nb".into(), "`id`"),
            (|e: &mut Event| e.source = "a\rb".into(), "`source`"),
            (|e: &mut Event| e.subject = Some("\0".into()), "`subject`"),
            (|e: &mut Event| e.ty = "t\u{85}".into(), "`type`"),
            (|e: &mut Event| e.id = "\u{FFFF}".into(), "`id`"),
            (
                |e: &mut Event| e.extensions = vec![("x".into(), "\u{7f}".into())],
                "`x`",
            ),
        ];
        for (spoil, attribute) in spoilers {
            let mut e = Event::new("1", "src", "t");
            spoil(&mut e);
            let err = e.validate().unwrap_err();
            assert!(err.contains(attribute), "{err}");
        }
        let mut e = Event::new("ünï ✓ 🎉", "urn:ü", "t");
        e.subject = Some("tab-free text, \u{A0} and \u{FFFD}".into());
        assert!(e.validate().is_ok());
    }

    #[test]
    fn json_media_types() {
        assert!(is_json_media_type("application/json; charset=utf-8"));
        assert!(is_json_media_type("application/vnd.foo+json"));
        assert!(!is_json_media_type("text/plain"));
    }
}
