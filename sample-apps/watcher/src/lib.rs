//! The watcher: control events on the `control` queue start and stop
//! watching a topic at run time; every event seen on a watched topic is
//! copied to `watch-log`.
//!
//! - `watch.start` with the topic name as data subscribes, and reports the
//!   subscription token as a `watch.started` event on `watch-status`;
//! - `watch.stop` with a token as data unsubscribes (`watch.stopped`);
//! - a failure is reported as `watch.failed`, its data the error.
//!
//! A fresh instance handles each event, so the token lives with whoever
//! controls the watcher, not in the component.

wit_bindgen::generate!({ world: "service", path: "../../wit" });

use exports::wasi::messaging::handler::Guest;
use wasi::messaging::pub_::publish;
use wasi::messaging::sub::{subscribe, unsubscribe};
use wasi::messaging::types::{Channel, Error, Event};

struct Watcher;

fn report(cause: &Event, ty: &str, subject: Option<String>, data: String) -> Result<(), Error> {
    let event = Event {
        specversion: "1.0".into(),
        ty: ty.into(),
        source: "urn:sample-apps:watcher".into(),
        id: format!("{}-{ty}", cause.id),
        data: Some(data.into_bytes()),
        datacontenttype: Some("text/plain".into()),
        dataschema: None,
        subject,
        time: None,
        extensions: None,
    };
    publish(&Channel::Topic("watch-status".into()), &event)
}

fn text(event: &Event) -> String {
    String::from_utf8_lossy(event.data.as_deref().unwrap_or_default()).trim().to_string()
}

impl Guest for Watcher {
    fn on_receive(event: Event) -> Result<(), Error> {
        match event.ty.as_str() {
            "watch.start" => {
                let topic = text(&event);
                match subscribe(&Channel::Topic(topic.clone())) {
                    Ok(token) => {
                        println!("watching {topic}");
                        report(&event, "watch.started", Some(topic), token)
                    }
                    Err(e) => report(&event, "watch.failed", Some(topic), format!("{e:?}")),
                }
            }
            "watch.stop" => {
                let token = text(&event);
                match unsubscribe(&token) {
                    Ok(()) => report(&event, "watch.stopped", None, token),
                    Err(e) => report(&event, "watch.failed", None, format!("{e:?}")),
                }
            }
            _ => {
                let mut seen = event.clone();
                seen.id = format!("{}-seen", event.id);
                seen.ty = "watch.seen".into();
                seen.extensions.get_or_insert_with(Vec::new).push(("seentype".into(), event.ty.clone()));
                publish(&Channel::Topic("watch-log".into()), &seen)
            }
        }
    }
}

export!(Watcher);
