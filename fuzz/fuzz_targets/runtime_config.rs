//! The runtime config (`RuntimeConfig::load`, every link type's settings):
//! any bytes load or fail with errors that name the file and, for a part of
//! it, the key or line; never a panic.
#![no_main]

use fuzz_checks::{assert_located, names_special_file, scratch_dir, toml_strings};
use libfuzzer_sys::fuzz_target;
use messaging_provider::broker::LinkRegistry;
use messaging_provider::manifest::RuntimeConfig;

fuzz_target!(|data: &[u8]| {
    let dir = scratch_dir("runtime_config");
    // Links read the files their settings name (CA, certificate, key,
    // credentials): not /dev/zero and the like.
    if let Some(table) = std::str::from_utf8(data)
        .ok()
        .and_then(|text| text.parse::<toml::Table>().ok())
    {
        let mut strings = Vec::new();
        toml_strings(&toml::Value::Table(table), &mut strings);
        if names_special_file(strings.iter().map(String::as_str), dir) {
            return;
        }
    }
    let path = dir.join("runtime-config.toml");
    std::fs::write(&path, data).expect("cannot write the runtime config");
    if let Err(errors) = RuntimeConfig::load(Some(&path), &LinkRegistry::default()) {
        assert_located(&path, &errors);
    }
});
