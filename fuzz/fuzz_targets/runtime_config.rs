//! The runtime configs (`RuntimeConfig::load_files`): the same bytes read
//! as Spin's runtime config (links, key-value stores, Spin's own keys) and
//! as the messaging runtime config (links only) load or fail with errors
//! that name the file and, for a part of it, the key or line; never a panic.
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
    let registry = LinkRegistry::default();
    for (spin, messaging) in [(Some(path.as_path()), None), (None, Some(path.as_path()))] {
        if let Err(errors) = RuntimeConfig::load_files(spin, messaging, &registry) {
            assert_located(&path, &errors);
        }
    }
});
