//! The runtime configs (`RuntimeConfig::load_files`): the same bytes read
//! as Spin's runtime config (links, key-value stores, Spin's own keys) and
//! as the messaging runtime config (links only) load or fail with errors
//! that name the file and, for a part of it, the key or line; never a panic.
#![no_main]

use libfuzzer_sys::fuzz_target;

fuzz_target!(|data: &[u8]| fuzz_checks::target("runtime_config")(data));
