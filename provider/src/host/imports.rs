//! What a component may import, and, for one that imports something else,
//! an error naming every such interface with a hint (the version that is
//! hosted, or how to build without it), in place of wasmtime's link error
//! about the first one.

use wasmtime::Engine;
use wasmtime::component::Component;

/// A package the linker holds: its name, its interfaces, and whether an
/// import's version is one of those it holds.
type HostedPackage = (&'static str, &'static [&'static str], fn(&str) -> bool);

/// The interfaces the linker holds.
const HOSTED: &[HostedPackage] = &[
    ("wasi:messaging", &["types", "pub", "sub"], |v| {
        v == "0.1.0-draft"
    }),
    (
        "wasi:cli",
        &[
            "environment",
            "exit",
            "stdin",
            "stdout",
            "stderr",
            "terminal-input",
            "terminal-output",
            "terminal-stdin",
            "terminal-stdout",
            "terminal-stderr",
        ],
        wasi_p2,
    ),
    ("wasi:io", &["error", "poll", "streams"], wasi_p2),
    ("wasi:clocks", &["monotonic-clock", "wall-clock"], wasi_p2),
    (
        "wasi:random",
        &["random", "insecure", "insecure-seed"],
        wasi_p2,
    ),
    ("wasi:filesystem", &["types", "preopens"], wasi_p2),
    (
        "wasi:sockets",
        &[
            "network",
            "instance-network",
            "udp",
            "udp-create-socket",
            "tcp",
            "tcp-create-socket",
            "ip-name-lookup",
        ],
        wasi_p2,
    ),
    ("wasi:http", &["types", "outgoing-handler"], wasi_p2),
    ("wasi:keyvalue", &["store", "atomics", "batch"], |v| {
        v == "0.2.0-draft2"
    }),
    ("wasi:config", &["store"], |v| {
        v == "0.2.0-draft-2024-09-27" || v == "0.2.0-rc.1"
    }),
    ("fermyon:spin", &["variables", "key-value"], |v| {
        v == "2.0.0"
    }),
];

/// WASI 0.2, any patch version (wasmtime matches them to what it hosts).
fn wasi_p2(version: &str) -> bool {
    version.starts_with("0.2.")
}

/// Whether an import of this name is hosted.
fn hosted(name: &str) -> bool {
    let (path, version) = name.split_once('@').unwrap_or((name, ""));
    let Some((package, interface)) = path.split_once('/') else {
        return false;
    };
    HOSTED.iter().any(|(p, interfaces, version_ok)| {
        *p == package && interfaces.contains(&interface) && version_ok(version)
    })
}

/// What to do about an import that is not hosted.
fn hint(name: &str) -> String {
    let (path, version) = name.split_once('@').unwrap_or((name, ""));
    let (package, interface) = path.split_once('/').unwrap_or((path, ""));
    match package {
        "wasi:keyvalue" => "this host provides wasi:keyvalue@0.2.0-draft2 (store, atomics, batch), the version Spin hosts: build against that version".into(),
        "wasi:config" => "this host provides wasi:config/store@0.2.0-draft-2024-09-27 (Spin's) and @0.2.0-rc.1".into(),
        "wasi:messaging" => "this host provides wasi:messaging@0.1.0-draft (types, pub, sub; see wit/messaging.wit)".into(),
        "spin:variables" | "spin:key-value" => format!(
            "Spin 4's asynchronous (WASIp3) `{interface}`; build with an SDK that imports fermyon:spin/{interface}@2.0.0 (spin-sdk 5), or use wasi:{}",
            if package == "spin:variables" { "config/store" } else { "keyvalue" }
        ),
        "fermyon:spin" | "spin:up" => format!(
            "Spin's `{interface}` is hosted by Spin's own triggers, not by trigger-messaging (it hosts fermyon:spin/variables and fermyon:spin/key-value)"
        ),
        p if p.starts_with("spin:") => format!(
            "`{p}` is hosted by Spin's own triggers, not by trigger-messaging"
        ),
        p if p.starts_with("wasi:") && version.starts_with("0.3") => {
            "WASI 0.3 (WASIp3) interfaces are not hosted yet: build for WASI 0.2 (wasm32-wasip2)".into()
        }
        "wasi:http" => "of wasi:http only `types` and `outgoing-handler` are hosted: a messaging component does not serve HTTP (give that part its own [[trigger.http]] component)".into(),
        _ => "not hosted by trigger-messaging; if the toolchain adds it by default, build without that feature (see the README, \"What a component can import\")".into(),
    }
}

/// Explains why `component` cannot be linked when one or more of its
/// imports are not hosted; `None` when every import is (the link failed
/// for another reason, which wasmtime's error tells).
pub fn unhosted(engine: &Engine, component: &Component) -> Option<String> {
    let missing: Vec<String> = component
        .component_type()
        .imports(engine)
        .map(|(name, _)| name)
        .filter(|name| !hosted(name))
        .map(|name| format!("\n  - {name}: {}", hint(name)))
        .collect();
    (!missing.is_empty()).then(|| {
        format!(
            "imports what this host does not provide:{}",
            missing.concat()
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn versions_decide_what_is_hosted() {
        for name in [
            "wasi:http/outgoing-handler@0.2.10",
            "wasi:cli/stdout@0.2.0",
            "wasi:keyvalue/atomics@0.2.0-draft2",
            "wasi:config/store@0.2.0-rc.1",
            "fermyon:spin/variables@2.0.0",
            "wasi:messaging/pub@0.1.0-draft",
        ] {
            assert!(hosted(name), "{name}");
        }
        for (name, says) in [
            ("wasi:keyvalue/store@0.2.0-draft", "draft2"),
            (
                "spin:variables/variables@3.0.0",
                "fermyon:spin/variables@2.0.0",
            ),
            ("fermyon:spin/llm@2.0.0", "Spin's own triggers"),
            ("wasi:http/incoming-handler@0.2.0", "[[trigger.http]]"),
            ("wasi:http/types@0.3.0-rc-2026-03-15", "WASIp3"),
            ("acme:thing/x@1.0.0", "build without"),
        ] {
            assert!(!hosted(name), "{name}");
            assert!(hint(name).contains(says), "{name}: {}", hint(name));
        }
    }
}
