//! The JSON event format: `json::decode`, and `json::decode_or_wrap` as
//! Redis pub/sub and MQTT 3.1.1 read payloads; encode → decode of any event.
//! The first input byte picks the mode (see `fuzz_checks`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fuzz_checks::target("json")(data));
