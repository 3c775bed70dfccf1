//! MQTT 5 messages in either mode (`mqtt::BINARY`: user properties and
//! content type), MQTT 3.1.1 payloads (`json::decode_or_wrap`), and encoding
//! any event.
//! The first input byte picks the mode (see `fuzz_checks`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fuzz_checks::target("mqtt_binary")(data));
