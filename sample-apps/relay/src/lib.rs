//! The relay: each order event from the `orders` queue becomes a "shipped"
//! event on the `shipments` topic. An order without data is refused, so the
//! provider retries it and then dead-letters it to `rejected`.

wit_bindgen::generate!({ world: "service", path: "../../wit" });

use exports::wasi::messaging::handler::Guest;
use wasi::messaging::pub_::publish;
use wasi::messaging::types::{Channel, Error, Event};

struct Relay;

impl Guest for Relay {
    fn on_receive(order: Event) -> Result<(), Error> {
        let Some(data) = &order.data else {
            return Err(Error::UnsupportedMessageFormat(format!("order {} has no data", order.id)));
        };
        // JSON data is kept as JSON; anything else travels as a string.
        let original = serde_json::from_slice(data)
            .unwrap_or_else(|_| serde_json::Value::String(String::from_utf8_lossy(data).into_owned()));
        let shipped = serde_json::json!({ "order": original, "status": "shipped" });

        let mut extensions = order.extensions.clone().unwrap_or_default();
        extensions.push(("relayedfrom".into(), order.id.clone()));
        let event = Event {
            specversion: "1.0".into(),
            ty: "com.example.order.shipped".into(),
            source: "urn:sample-apps:relay".into(),
            id: format!("{}-shipped", order.id),
            data: Some(serde_json::to_vec(&shipped).expect("JSON values serialise")),
            datacontenttype: Some("application/json".into()),
            dataschema: None,
            subject: order.subject.clone(),
            time: order.time.clone(),
            extensions: Some(extensions),
        };
        publish(&Channel::Topic("shipments".into()), &event)?;
        println!("order {} shipped as {}", order.id, event.id);
        Ok(())
    }
}

export!(Relay);
