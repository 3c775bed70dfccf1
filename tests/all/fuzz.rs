//! Property tests of the loaders (spin.toml, the Spin locked app, the
//! runtime config), bounded so that they run in the normal suite; the
//! cargo-fuzz targets in `fuzz/` run the same properties for longer. For any
//! input, valid or mangled: loading never panics, and every error names the
//! file and, when it is about a part of the file, the key or the line.

use crate::located::assert_located;
use messaging_provider::broker::LinkRegistry;
use messaging_provider::manifest::{
    ConfigErrors, LockedAppLocation, RuntimeConfig, load_app, load_locked_app,
};
use proptest::prelude::*;
use std::path::PathBuf;

/// A directory holding an empty `probe.wasm`, which the loaders take as a
/// component (they check that the file exists, nothing more), so no guest
/// needs building.
struct Scratch {
    dir: tempfile::TempDir,
}

impl Scratch {
    fn new() -> Scratch {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("probe.wasm"), b"").unwrap();
        Scratch { dir }
    }

    fn write(&self, name: &str, bytes: &[u8]) -> PathBuf {
        let path = self.dir.path().join(name);
        std::fs::write(&path, bytes).unwrap();
        path
    }

    fn load_app(&self, bytes: &[u8]) -> (PathBuf, Option<ConfigErrors>) {
        let path = self.write("spin.toml", bytes);
        let errors = load_app(&path, &|link| link == "default").err();
        (path, errors)
    }

    fn load_runtime_config(&self, bytes: &[u8]) -> (PathBuf, Option<ConfigErrors>) {
        let path = self.write("runtime-config.toml", bytes);
        let errors = RuntimeConfig::load(Some(&path), &LinkRegistry::default()).err();
        (path, errors)
    }

    fn load_locked_app(&self, bytes: &[u8]) -> (PathBuf, Option<ConfigErrors>) {
        let lock = self.write("spin.lock", bytes);
        let location = LockedAppLocation {
            lock: lock.clone(),
            working_dir: self.dir.path().to_path_buf(),
            local_app_dir: None,
        };
        let errors = load_locked_app(&location, &|link| link == "default").err();
        (lock, errors)
    }
}

/// The seeds: the sample apps, runtime configs and the lock fixture, with
/// component sources pointing at the scratch `probe.wasm`.
fn sample_manifests() -> Vec<String> {
    let repo = crate::support::repo();
    let mut out = Vec::new();
    for app in ["relay", "watcher", "counter"] {
        let text =
            std::fs::read_to_string(repo.join("sample-apps").join(app).join("spin.toml")).unwrap();
        let source = format!("../../target/wasm/wasm32-wasip2/release/{app}.wasm");
        out.push(text.replace(&source, "probe.wasm"));
    }
    out.push(
        r#"spin_manifest_version = 2
[application]
name = "m"
[variables]
prefix = { default = "p" }
[application.trigger.messaging.channels]
inbox = { kind = "queue", address = "{{ prefix }}.inbox", group = "g", max_attempts = 2, retry_delay = "10ms", max_retry_delay = "1s", dead_letter = "dlq" }
dlq = { kind = "topic", link = "default", max_payload = 1024 }
[[trigger.messaging]]
component = "probe"
subscriptions = ["inbox"]
publish = ["dlq"]
max_in_flight = 4
max_memory = "64MiB"
[component.probe]
source = "probe.wasm"
environment = { A = "b" }
allowed_outbound_hosts = ["https://{{ prefix }}.example.com", "*://10.0.0.0/8:8000..8100", "http://[::1]:*"]
key_value_stores = ["default"]
[component.probe.variables]
api = "https://{{ prefix }}.example.com/v1"
"#
        .to_string(),
    );
    out
}

fn sample_runtime_configs() -> Vec<String> {
    let dir = crate::support::repo().join("sample-apps/runtime-config");
    let mut out: Vec<String> = std::fs::read_dir(dir)
        .unwrap()
        .map(|e| std::fs::read_to_string(e.unwrap().path()).unwrap())
        .collect();
    out.sort();
    out.push(
        "[messaging_link.events]\ntype = \"embedded\"\ncapacity = 256\npublish_timeout = \"1s\"\n\
         [messaging_link.js]\ntype = \"nats\"\njetstream = true\nbatch = 8\n\
         [key_value_store.default]\ntype = \"spin\"\npath = \"kv.db\"\n\
         [key_value_store.cache]\ntype = \"redis\"\nurl = \"redis://127.0.0.1\"\n\
         [key_value_store.cosmos]\ntype = \"azure_cosmos\"\n"
            .to_string(),
    );
    out
}

/// The lock fixture, its messaging component the scratch `probe.wasm`.
fn sample_lock(scratch: &Scratch) -> String {
    let path = crate::support::repo().join("tests/fixtures/spin/mixed.lock.json");
    let probe = url::Url::from_file_path(scratch.dir.path().join("probe.wasm")).unwrap();
    std::fs::read_to_string(path)
        .unwrap()
        .replace("{probe}", probe.as_str())
        .replace("{api_port}", "8080")
}

/// A change to a text: byte edits that break the syntax as well as the
/// values, in the way a hand edit might.
#[derive(Clone, Debug)]
enum Edit {
    Delete { at: usize, len: usize },
    Insert { at: usize, text: String },
    ReplaceLine { line: usize, text: String },
    DuplicateLine { line: usize },
}

fn edit() -> impl Strategy<Value = Edit> {
    let snippet = prop_oneof![
        any::<String>(),
        Just("\"".to_string()),
        Just("[".to_string()),
        Just("[[".to_string()),
        Just("{{ x }}".to_string()),
        Just("\n[application]\n".to_string()),
        Just("= 1".to_string()),
        Just("\u{FEFF}".to_string()),
    ];
    prop_oneof![
        (any::<usize>(), 1usize..16).prop_map(|(at, len)| Edit::Delete { at, len }),
        (any::<usize>(), snippet.clone()).prop_map(|(at, text)| Edit::Insert { at, text }),
        (any::<usize>(), toml_line()).prop_map(|(line, text)| Edit::ReplaceLine { line, text }),
        any::<usize>().prop_map(|line| Edit::DuplicateLine { line }),
    ]
}

/// A line of TOML that sets a key the loaders read to a value of any type.
fn toml_line() -> impl Strategy<Value = String> {
    let key = prop_oneof![
        Just("kind"),
        Just("link"),
        Just("address"),
        Just("group"),
        Just("max_payload"),
        Just("max_attempts"),
        Just("retry_delay"),
        Just("max_retry_delay"),
        Just("dead_letter"),
        Just("component"),
        Just("subscriptions"),
        Just("publish"),
        Just("subscribe"),
        Just("max_in_flight"),
        Just("max_memory"),
        Just("source"),
        Just("type"),
        Just("url"),
        Just("capacity"),
        Just("jetstream"),
        Just("content_mode"),
        Just("publish_timeout"),
        Just("spin_manifest_version"),
        Just("name"),
    ];
    (key, toml_value()).prop_map(|(k, v)| format!("{k} = {v}"))
}

/// TOML values, at the edges of the ranges the loaders check.
fn toml_value() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("\"\"".to_string()),
        Just("\"queue\"".to_string()),
        Just("\"topic\"".to_string()),
        Just("\"default\"".to_string()),
        Just("\"embedded\"".to_string()),
        Just("\"0s\"".to_string()),
        Just("\"99999999999h\"".to_string()),
        Just("\"1 GiB\"".to_string()),
        Just("\"{{ missing }}\"".to_string()),
        Just("0".to_string()),
        Just("-1".to_string()),
        Just("9223372036854775807".to_string()),
        Just("4294967296".to_string()),
        Just("1.5".to_string()),
        Just("nan".to_string()),
        Just("true".to_string()),
        Just("[]".to_string()),
        Just("[\"a\", \"a\"]".to_string()),
        Just("{}".to_string()),
        Just("1979-05-27T07:32:00Z".to_string()),
        "[a-z.*>#+/ -]{0,12}".prop_map(|s| format!("{s:?}")),
        any::<String>().prop_map(|s| toml::Value::String(s).to_string()),
        any::<i64>().prop_map(|n| n.to_string()),
    ]
}

fn apply(text: &str, edits: &[Edit]) -> Vec<u8> {
    let mut bytes = text.as_bytes().to_vec();
    for edit in edits {
        match edit {
            Edit::Delete { at, len } => {
                let at = at % (bytes.len() + 1);
                let end = (at + len).min(bytes.len());
                bytes.drain(at..end);
            }
            Edit::Insert { at, text } => {
                let at = at % (bytes.len() + 1);
                bytes.splice(at..at, text.bytes());
            }
            Edit::ReplaceLine { line, text } => {
                let mut lines = lines_of(&bytes);
                let i = line % lines.len();
                lines[i] = text.clone().into_bytes();
                bytes = lines.join(&b'\n');
            }
            Edit::DuplicateLine { line } => {
                let mut lines = lines_of(&bytes);
                let i = line % lines.len();
                lines.insert(i, lines[i].clone());
                bytes = lines.join(&b'\n');
            }
        }
    }
    bytes
}

fn lines_of(bytes: &[u8]) -> Vec<Vec<u8>> {
    bytes.split(|&b| b == b'\n').map(<[u8]>::to_vec).collect()
}

proptest! {
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn any_bytes_load_or_fail_with_a_location(bytes in any::<Vec<u8>>()) {
        let scratch = Scratch::new();
        for (file, errors) in [
            scratch.load_app(&bytes),
            scratch.load_runtime_config(&bytes),
            scratch.load_locked_app(&bytes),
        ] {
            // An empty runtime config is valid; the rest cannot be.
            if let Some(errors) = errors {
                assert_located(&file, &errors);
            }
        }
    }

    #[test]
    fn mangled_manifests_load_or_fail_with_a_location(
        seed in any::<prop::sample::Index>(),
        edits in proptest::collection::vec(edit(), 1..4),
    ) {
        let scratch = Scratch::new();
        let seeds = sample_manifests();
        let bytes = apply(seed.get(&seeds).as_str(), &edits);
        if let (file, Some(errors)) = scratch.load_app(&bytes) {
            assert_located(&file, &errors);
        }
    }

    #[test]
    fn mangled_runtime_configs_load_or_fail_with_a_location(
        seed in any::<prop::sample::Index>(),
        edits in proptest::collection::vec(edit(), 1..4),
    ) {
        let scratch = Scratch::new();
        let seeds = sample_runtime_configs();
        let bytes = apply(seed.get(&seeds).as_str(), &edits);
        if let (file, Some(errors)) = scratch.load_runtime_config(&bytes) {
            assert_located(&file, &errors);
        }
    }

    #[test]
    fn mangled_locks_load_or_fail_with_a_location(
        edits in proptest::collection::vec(edit(), 1..4),
    ) {
        let scratch = Scratch::new();
        let bytes = apply(&sample_lock(&scratch), &edits);
        if let (file, Some(errors)) = scratch.load_locked_app(&bytes) {
            assert_located(&file, &errors);
        }
    }
}

#[test]
fn the_seeds_load() {
    let scratch = Scratch::new();
    for text in sample_manifests() {
        let (_, errors) = scratch.load_app(text.as_bytes());
        assert!(errors.is_none(), "{}", errors.unwrap());
    }
    for text in sample_runtime_configs() {
        // The AMQP sample takes its password from the environment.
        if text.contains("amqp_password") {
            continue;
        }
        let (_, errors) = scratch.load_runtime_config(text.as_bytes());
        assert!(errors.is_none(), "{}", errors.unwrap());
    }
    let (_, errors) = scratch.load_locked_app(sample_lock(&scratch).as_bytes());
    assert!(errors.is_none(), "{}", errors.unwrap());
}

/// Inputs the fuzz targets found, kept as plain tests.
#[test]
fn fuzz_findings_stay_fixed() {
    let scratch = Scratch::new();
    // A lock that is JSON but not an object: refused at the root.
    for input in [&b"6"[..], b"[\t\t\t\t]"] {
        let (lock, errors) = scratch.load_locked_app(input);
        assert_located(&lock, &errors.expect("not a locked app"));
    }
}

/// The cargo-fuzz targets' own checks (`fuzz/src/lib.rs`), built into the
/// suite so that every target compiles and holds in every run.
#[path = "../../fuzz/src/lib.rs"]
#[allow(dead_code)]
mod fuzz_checks;

/// Every cargo-fuzz target on its committed corpus, then on random inputs
/// and on corpus entries with random bytes overwritten: `FUZZ_CASES` per
/// target (default 256), a bounded run; `scripts/fuzz.sh` runs the same
/// targets for longer under libFuzzer.
#[test]
fn every_fuzz_target_holds_on_its_corpus_and_random_inputs() {
    use proptest::collection::vec;
    use proptest::test_runner::{Config, TestRunner};
    let corpus_root = crate::support::repo().join("fuzz").join("corpus");
    let cases = crate::faults::scale("FUZZ_CASES", 256) as u32;
    for (name, target) in fuzz_checks::TARGETS {
        let mut corpus = Vec::new();
        for entry in std::fs::read_dir(corpus_root.join(name)).unwrap() {
            let path = entry.unwrap().path();
            let bytes = std::fs::read(&path).unwrap();
            if std::panic::catch_unwind(|| target(&bytes)).is_err() {
                panic!("fuzz target {name} fails on {}", path.display());
            }
            corpus.push(bytes);
        }
        assert!(!corpus.is_empty(), "fuzz target {name} has no corpus");
        let mutated = (0..corpus.len(), vec((any::<usize>(), any::<u8>()), 1..8)).prop_map(
            move |(i, writes)| {
                let mut bytes = corpus[i].clone();
                for (at, byte) in writes {
                    if !bytes.is_empty() {
                        let len = bytes.len();
                        bytes[at % len] = byte;
                    }
                }
                bytes
            },
        );
        let config = Config {
            cases,
            failure_persistence: None,
            ..Config::default()
        };
        TestRunner::new(config)
            .run(&prop_oneof![any::<Vec<u8>>(), mutated], |input| {
                target(&input);
                Ok(())
            })
            .unwrap_or_else(|e| panic!("fuzz target {name}: {e}"));
    }
    for loader in ["manifest", "locked_app", "runtime_config"] {
        let _ = std::fs::remove_dir_all(fuzz_checks::scratch_dir(loader));
    }
}
