//! Dead letters: what goes to a channel's dead-letter channel when one of its
//! events cannot be handled. The event itself when it is a valid CloudEvent,
//! else a valid event that wraps it (the original, in the JSON format, as its
//! data), so that the dead-letter channel always takes it; either way with
//! extension attributes that say what happened.

use crate::cloudevents::{Event, JSON_FORMAT, json};

/// The handler's last error (control characters replaced, shortened).
pub const ERROR: &str = "deadlettererror";
/// How many times the event was handed to the handler.
pub const ATTEMPTS: &str = "deadletterattempts";
/// The app, channel, link and component the event failed in.
pub const APP: &str = "deadletterapp";
/// The channel the event failed in.
pub const CHANNEL: &str = "deadletterchannel";
/// The link of that channel.
pub const LINK: &str = "deadletterlink";
/// The component whose handler failed.
pub const COMPONENT: &str = "deadlettercomponent";
/// Why the event is wrapped: what made it, or the message it came as, an
/// invalid CloudEvent.
pub const INVALID: &str = "deadletterinvalid";

/// The `type` of a dead letter that wraps an invalid event.
pub const WRAPPED_TYPE: &str = "dev.trigger-messaging.deadletter";

/// The longest error text a dead letter carries, in characters.
const MAX_ERROR: usize = 1024;

/// Where and why an event failed.
pub(crate) struct Cause<'a> {
    pub app: &'a str,
    pub component: &'a str,
    pub channel: &'a str,
    pub link: &'a str,
    pub address: &'a str,
    pub attempts: u32,
    pub error: &'a str,
    /// The event wraps a received message that was not a valid CloudEvent
    /// (see [`inbound`](crate::cloudevents::inbound)); `error` says why.
    pub malformed: bool,
}

/// The dead letter for `event`.
pub(crate) fn letter(event: &Event, cause: &Cause) -> Event {
    let (mut letter, invalid) = match event.validate() {
        Ok(()) if cause.malformed => (event.clone(), Some(cause.error.to_string())),
        Ok(()) => (event.clone(), None),
        Err(why) => {
            let mut wrapper = Event::new(
                uuid::Uuid::new_v4().to_string(),
                format!("urn:trigger-messaging:{}:{}", cause.link, cause.address),
                WRAPPED_TYPE,
            );
            wrapper.datacontenttype = Some(JSON_FORMAT.into());
            wrapper.data = Some(json::encode(event));
            (wrapper, Some(why))
        }
    };
    // A dead letter dead-lettered again says what happened last.
    letter
        .extensions
        .retain(|(name, _)| !name.starts_with("deadletter"));
    letter.extensions.extend([
        (ERROR.into(), attribute_text(cause.error)),
        (ATTEMPTS.into(), cause.attempts.to_string()),
        (APP.into(), cause.app.into()),
        (CHANNEL.into(), cause.channel.into()),
        (LINK.into(), cause.link.into()),
        (COMPONENT.into(), cause.component.into()),
    ]);
    if let Some(why) = invalid {
        letter
            .extensions
            .push((INVALID.into(), attribute_text(&why)));
    }
    letter
}

/// Text fit for a CloudEvents string attribute, which may hold no control
/// characters (and travels as a header on most brokers): those become
/// spaces, runs of whitespace one space, and the text is cut at `MAX_ERROR`.
fn attribute_text(text: &str) -> String {
    let mut out = String::with_capacity(text.len().min(MAX_ERROR));
    let mut chars = 0;
    for c in text.chars() {
        let c = if c.is_control() { ' ' } else { c };
        if c == ' ' && out.ends_with(' ') {
            continue;
        }
        if chars == MAX_ERROR {
            out.push('…');
            break;
        }
        out.push(c);
        chars += 1;
    }
    out.trim().to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    fn cause(error: &str) -> Cause<'_> {
        Cause {
            app: "shop",
            component: "billing",
            channel: "orders",
            link: "default",
            address: "shop.orders",
            attempts: 3,
            error,
            malformed: false,
        }
    }

    #[test]
    fn a_valid_event_keeps_every_attribute_and_gains_the_cause() {
        let mut event = Event::new("o-1", "urn:shop", "order.placed");
        event.data = Some(b"{\"total\":3}".to_vec());
        event.extensions = vec![
            ("tenant".into(), "blue".into()),
            (ATTEMPTS.into(), "99".into()),
        ];
        let letter = letter(&event, &cause("on-receive returned an error:\nno stock"));
        assert!(letter.validate().is_ok());
        assert_eq!(
            (letter.id.as_str(), letter.ty.as_str(), &letter.data),
            ("o-1", "order.placed", &event.data)
        );
        assert_eq!(letter.extension("tenant"), Some("blue"));
        assert_eq!(letter.extension(ATTEMPTS), Some("3"));
        assert_eq!(
            letter.extension(ERROR),
            Some("on-receive returned an error: no stock")
        );
        for (name, value) in [(APP, "shop"), (CHANNEL, "orders"), (LINK, "default")] {
            assert_eq!(letter.extension(name), Some(value));
        }
        assert_eq!(letter.extension(COMPONENT), Some("billing"));
        assert_eq!(letter.extension(INVALID), None);
    }

    #[test]
    fn an_invalid_event_is_wrapped_whole() {
        for spoil in [
            |e: &mut Event| e.time = Some("not a time".into()),
            |e: &mut Event| e.specversion = "0.3".into(),
            |e: &mut Event| e.id.clear(),
            |e: &mut Event| e.extensions.push(("Bad-Name".into(), "x".into())),
        ] {
            let mut event = Event::new("o-2", "urn:shop", "order.placed");
            event.data = Some(vec![0, 159, 146, 150]);
            spoil(&mut event);
            let letter = letter(&event, &cause("trap"));
            assert!(letter.validate().is_ok(), "{letter:?}");
            assert_eq!(letter.ty, WRAPPED_TYPE);
            assert_eq!(letter.source, "urn:trigger-messaging:default:shop.orders");
            assert_eq!(letter.datacontenttype.as_deref(), Some(JSON_FORMAT));
            let original = json::decode(letter.data.as_deref().unwrap()).unwrap();
            assert_eq!(original, event, "the original travels unchanged");
            assert!(letter.extension(INVALID).is_some());
        }
    }

    #[test]
    fn error_text_is_cut_and_has_no_control_characters() {
        let long = "x\u{0}\r\n\t".repeat(2000);
        let text = attribute_text(&long);
        assert!(!text.chars().any(char::is_control));
        assert!(text.chars().count() <= MAX_ERROR + 1);
        assert!(text.ends_with('…'));
    }
}
