//! The Spin locked app (`manifest::load_locked_app`, JSON): any bytes load
//! or fail with errors that name the file and, for a part of it, the key or
//! line; never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fuzz_checks::target("locked_app")(data));
