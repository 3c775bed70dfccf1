//! spin.toml (`manifest::load_app`): any bytes load or fail with errors that
//! name the file and, for a part of it, the key or line; never a panic.
#![no_main]

use fuzz_checks::{assert_located, scratch_dir};
use libfuzzer_sys::fuzz_target;
use messaging_provider::manifest::load_app;

fuzz_target!(|data: &[u8]| {
    // The loader reads only this file (component sources are checked to
    // exist, not read), so any input is safe to load.
    let dir = scratch_dir("manifest");
    let path = dir.join("spin.toml");
    std::fs::write(&path, data).expect("cannot write spin.toml");
    if let Err(errors) = load_app(&path, &|link| link == "default") {
        assert_located(&path, &errors);
    }
});
