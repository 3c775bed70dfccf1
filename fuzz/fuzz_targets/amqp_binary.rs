//! AMQP messages in either mode (`amqp::BINARY.decode_message`: headers and
//! content type), and encoding any event in both modes.
//! The first input byte picks the mode (see `fuzz_checks`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fuzz_checks::target("amqp_binary")(data));
