//! The Spin locked app (`manifest::load_locked_app`, JSON): any bytes load
//! or fail with errors that name the file and, for a part of it, the key or
//! line; never a panic.
#![no_main]

use fuzz_checks::{assert_located_in, json_strings, names_special_file, scratch_dir};
use libfuzzer_sys::fuzz_target;
use messaging_provider::manifest::{LockedAppLocation, load_locked_app};

fuzz_target!(|data: &[u8]| {
    let dir = scratch_dir("locked_app");
    let mut origin = None;
    if let Ok(doc) = serde_json::from_slice::<serde_json::Value>(data) {
        // The loader reads the spin.toml `metadata.origin` names: not
        // /dev/zero and the like.
        let mut strings = Vec::new();
        json_strings(&doc, &mut strings);
        if names_special_file(strings.iter().map(String::as_str), dir) {
            return;
        }
        origin = doc["metadata"]["origin"]
            .as_str()
            .and_then(|u| url::Url::parse(u).ok()?.to_file_path().ok());
    }
    let lock = dir.join("spin.lock");
    std::fs::write(&lock, data).expect("cannot write the lock");
    let location = LockedAppLocation {
        lock: lock.clone(),
        working_dir: dir.to_path_buf(),
        local_app_dir: None,
    };
    if let Err(errors) = load_locked_app(&location, &|link| link == "default") {
        // Errors point at the lock, or at the spin.toml it came from when
        // that can be read.
        let files: Vec<&std::path::Path> = [Some(lock.as_path()), origin.as_deref()]
            .into_iter()
            .flatten()
            .collect();
        assert_located_in(&files, &errors);
    }
});
