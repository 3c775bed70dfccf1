//! The one rule for what comes in, on every link and the HTTP endpoint: any
//! bytes decode without failing (the link's connection goes on), what
//! decodes is validated as `publish` validates, and a message that is not a
//! valid CloudEvent is kept whole, wrapped in a valid event of type
//! [`MALFORMED_TYPE`], with the reason, so that it can go to the channel's
//! dead-letter channel (or the log) instead of reaching a handler.

use super::Event;
use std::borrow::Cow;

/// The `type` of the event that wraps a received message that is not a
/// valid CloudEvent: its data is the message body, exactly as received.
pub const MALFORMED_TYPE: &str = "dev.trigger-messaging.malformed";

/// The extension attribute that carries the received message's metadata
/// (headers, properties or fields), as a JSON object of text values.
pub const METADATA: &str = "receivedmetadata";

/// A received message as it came off the wire, for when it is malformed.
pub struct Received<'a> {
    /// The link it arrived on.
    pub link: &'a str,
    /// The broker address (subject, topic, queue, stream) it arrived on.
    pub address: &'a str,
    /// Its metadata, as text (see [`text`]).
    pub metadata: Vec<(String, String)>,
    /// The protocol's content type, if it has one.
    pub content_type: Option<&'a str>,
    /// The body, exactly as received.
    pub body: &'a [u8],
}

/// A received message that is not a valid CloudEvent.
#[derive(Debug)]
pub struct Malformed {
    /// What is wrong with it.
    pub reason: String,
    /// A valid event that carries it whole (see [`MALFORMED_TYPE`]); boxed,
    /// as this is the rare case.
    pub wrapper: Box<Event>,
}

/// Admits a decoded event if it is valid. Otherwise the message, which
/// `received` describes (called only then, so valid events cost nothing
/// more), is wrapped with the reason.
pub fn admit<'a>(
    decoded: Result<Event, String>,
    received: impl FnOnce() -> Received<'a>,
) -> Result<Event, Malformed> {
    let reason = match decoded {
        Ok(event) => match event.validate() {
            Ok(()) => return Ok(event),
            Err(why) => format!("not a valid CloudEvent: {why}"),
        },
        Err(why) => format!("cannot decode the message: {why}"),
    };
    let received = received();
    // What the broker handed over may hold characters an attribute may not
    // (a control character in a topic or content type); they are escaped so
    // that the wrapper is valid whatever came.
    let mut wrapper = Event::new(
        uuid::Uuid::new_v4().to_string(),
        format!(
            "urn:trigger-messaging:{}:{}",
            printable(received.link),
            printable(received.address)
        ),
        MALFORMED_TYPE,
    );
    wrapper.datacontenttype = received.content_type.map(|ct| printable(ct).into_owned());
    wrapper.data = Some(received.body.to_vec());
    if !received.metadata.is_empty() {
        let metadata: serde_json::Map<String, serde_json::Value> = received
            .metadata
            .into_iter()
            .map(|(name, value)| {
                (
                    printable(&name).into_owned(),
                    printable(&value).into_owned().into(),
                )
            })
            .collect();
        wrapper.extensions.push((
            METADATA.into(),
            serde_json::Value::Object(metadata).to_string(),
        ));
    }
    Err(Malformed {
        reason,
        wrapper: Box::new(wrapper),
    })
}

/// Bytes as text: UTF-8 as it is, any other byte as `\xNN`, so that nothing
/// is lost when metadata that is not UTF-8 is logged or dead-lettered.
pub fn text(bytes: &[u8]) -> Cow<'_, str> {
    if let Ok(text) = std::str::from_utf8(bytes) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(bytes.len() + 8);
    for chunk in bytes.utf8_chunks() {
        out.push_str(chunk.valid());
        for b in chunk.invalid() {
            out.push_str(&format!("\\x{b:02X}"));
        }
    }
    Cow::Owned(out)
}

/// Text with every character a CloudEvents string may not hold (controls,
/// noncharacters) written as `\u{NN}`, for attributes made from what a
/// broker handed over, so that the event they go in is valid.
pub fn printable(text: &str) -> Cow<'_, str> {
    if text.chars().all(super::allowed_in_string) {
        return Cow::Borrowed(text);
    }
    let mut out = String::with_capacity(text.len() + 8);
    for c in text.chars() {
        if super::allowed_in_string(c) {
            out.push(c);
        } else {
            out.extend(c.escape_unicode());
        }
    }
    Cow::Owned(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn received() -> Received<'static> {
        Received {
            link: "nats1",
            address: "orders",
            metadata: vec![("ce-specversion".into(), "0.3".into())],
            content_type: Some("text/plain"),
            body: &[0xff, 0x00, b'x'],
        }
    }

    #[test]
    fn valid_events_pass_and_the_rest_is_wrapped_whole() {
        let good = Event::new("1", "s", "t");
        assert_eq!(admit(Ok(good.clone()), received).unwrap(), good);
        let mut old = good.clone();
        old.specversion = "0.3".into();
        for (decoded, why) in [
            (Ok(old), "specversion"),
            (Ok(Event::new("", "s", "t")), "`id`"),
            (Err("bad JSON".to_string()), "bad JSON"),
        ] {
            let malformed = admit(decoded, received).unwrap_err();
            assert!(malformed.reason.contains(why), "{}", malformed.reason);
            let w = malformed.wrapper;
            assert!(w.validate().is_ok());
            assert_eq!(w.ty, MALFORMED_TYPE);
            assert_eq!(w.source, "urn:trigger-messaging:nats1:orders");
            assert_eq!(w.data.as_deref(), Some(&[0xff, 0x00, b'x'][..]));
            assert_eq!(w.datacontenttype.as_deref(), Some("text/plain"));
            assert_eq!(w.extension(METADATA), Some(r#"{"ce-specversion":"0.3"}"#));
        }
    }

    #[test]
    fn text_escapes_only_what_is_not_utf8() {
        assert_eq!(text("é ok".as_bytes()), "é ok");
        assert_eq!(text(b"a\xffb\xc3"), "a\\xFFb\\xC3");
    }
}
