//! What "an error is located" means, for the loader property tests here
//! and the cargo-fuzz targets in `fuzz/` (which include this file by path),
//! so that both hold the loaders to one rule.

use messaging_provider::manifest::ConfigErrors;
use std::path::Path;

/// Every error names `file`; an error about a part of it names its key or
/// line. What is about the whole file (unreadable, not the format at all, a
/// top-level key missing, a document that is not an object) may name
/// neither.
pub fn assert_located(file: &Path, errors: &ConfigErrors) {
    assert_located_in(&[file], errors);
}

/// As [`assert_located`], for errors that may be in any of `files`.
pub fn assert_located_in(files: &[&Path], errors: &ConfigErrors) {
    assert!(!errors.0.is_empty(), "an empty error list");
    for e in &errors.0 {
        assert!(
            files.contains(&e.file.as_path()),
            "{e} is in none of {files:?}"
        );
        assert!(!e.message.is_empty(), "{e:?}");
        let whole_file = e.message.starts_with("cannot read")
            || e.message.starts_with("not valid TOML")
            || e.message.starts_with("not a valid locked app")
            || e.message.starts_with("missing field")
            || (e.key.is_empty() && {
                // The root: a document that is not an object at all (a
                // number, an array of the wrong length).
                e.message.contains("expected struct LockedApp")
                    || e.message.contains("expected struct RawManifest")
            });
        assert!(
            whole_file || e.line.is_some() || !e.key.is_empty(),
            "an error that names no key or line: {e:?}"
        );
    }
}
