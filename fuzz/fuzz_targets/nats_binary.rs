//! NATS messages in either mode (`nats::decode`), and `nats::encode` of
//! any event in both modes.
//! The first input byte picks the mode (see `fuzz_checks`).
#![no_main]

use fuzz_checks::{Binding, fuzz_binding};
use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| {
    for binding in [Binding::Nats] {
        fuzz_binding(binding, data);
    }
});
