//! HTTP requests in either mode (`http::decode`: headers and body; batched
//! mode refused), and `http::encode_binary` / `encode_structured` of any event.
//! The first input byte picks the mode (see `fuzz_checks`).
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fuzz_checks::target("http_binding")(data));
