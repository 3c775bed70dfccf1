//! Redis stream entries in either mode (`redis::decode_fields`: field/value
//! byte pairs, `data` the body), and `encode_fields` / `structured_fields`
//! of any event.
//! The first input byte picks the mode (see `fuzz_checks`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fuzz_checks::target("redis_fields")(data));
