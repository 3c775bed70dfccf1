//! NATS messages in either mode (`nats::decode`), and `nats::encode` of
//! any event in both modes.
//! The first input byte picks the mode (see `fuzz_checks`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fuzz_checks::target("nats_binary")(data));
