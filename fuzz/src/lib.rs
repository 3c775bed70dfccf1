//! What the fuzz targets check, shared by all of them: how fuzz input becomes
//! a message on each binding, the one rule for what comes in (decode, then
//! validate, wrap what fails), the round trip of valid events, and where
//! loader errors point. A failed check panics, which libFuzzer reports as a
//! crash with the input that caused it.
//!
//! Binding targets read their first input byte as the mode (modulo 4):
//! 0. the rest is a message as text: `name: value` lines, a blank line, the
//!    body (the whole rest is the body on bindings without metadata);
//! 1. the rest is a structured-mode body (`application/cloudevents+json`);
//! 2. the rest drives [`Unstructured`] to build metadata, content type,
//!    body and origin (link and address) of any bytes;
//! 3. the rest drives [`Unstructured`] to build an event, mostly valid,
//!    which is encoded in both modes and decoded again.

use arbitrary::{Result as ArbResult, Unstructured};
use messaging_provider::broker::LinkRegistry;
use messaging_provider::cloudevents::inbound::{self, MALFORMED_TYPE, Received};
use messaging_provider::cloudevents::{
    ContentMode, Event, JSON_FORMAT, amqp, http as ce_http, json, kafka, mqtt, nats, redis,
};
use messaging_provider::manifest::{LockedAppLocation, RuntimeConfig, load_app, load_locked_app};
use std::borrow::Cow;
use std::collections::HashMap;
use std::path::Path;
use std::sync::OnceLock;

/// Where a message comes from and how it is decoded there.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Binding {
    /// The JSON format alone (`json::decode`).
    Json,
    /// NATS headers (`nats::decode`).
    Nats,
    /// AMQP headers and content type (`amqp::BINARY`).
    Amqp,
    /// MQTT 5 user properties and content type (`mqtt::BINARY`).
    Mqtt5,
    /// MQTT 3.1.1, a payload only (`json::decode_or_wrap`).
    Mqtt311,
    /// HTTP headers (`http::decode`).
    Http,
    /// Redis stream entry fields (`redis::decode_fields`).
    RedisStream,
    /// Redis pub/sub, a payload only (`json::decode_or_wrap`).
    RedisPubSub,
    /// Kafka record headers, key and value (`kafka::decode`): an entry
    /// named `key` is the record key; no body is a record without a value.
    Kafka,
}

impl Binding {
    /// Bindings whose messages are a payload and nothing else.
    fn payload_only(self) -> bool {
        matches!(
            self,
            Binding::Json | Binding::Mqtt311 | Binding::RedisPubSub
        )
    }
}

/// A received message, before any binding has looked at it.
#[derive(Debug)]
pub struct Message {
    /// Metadata entries (headers, properties, fields), `content-type` included.
    pub entries: Vec<(Vec<u8>, Vec<u8>)>,
    /// The body; `None` is a message with no body part (a stream entry with
    /// no `data` field), an empty body elsewhere.
    pub body: Option<Vec<u8>>,
    pub link: String,
    pub address: String,
}

impl Message {
    /// A message written as text: `name: value` lines up to a blank line,
    /// then the body.
    pub fn parse(binding: Binding, text: &[u8]) -> Message {
        let mut message = Message::empty();
        if binding.payload_only() {
            message.body = Some(text.to_vec());
            return message;
        }
        let split = text.windows(2).position(|w| w == b"\n\n");
        let (head, body) = match split {
            Some(at) => (&text[..at], Some(text[at + 2..].to_vec())),
            None => (text, None),
        };
        for line in head.split(|&b| b == b'\n').filter(|l| !l.is_empty()) {
            let (name, value) = match line.iter().position(|&b| b == b':') {
                Some(at) => (&line[..at], line[at + 1..].trim_ascii_start()),
                None => (line, &b""[..]),
            };
            message.entries.push((name.to_vec(), value.to_vec()));
        }
        message.body = body;
        message
    }

    /// A structured-mode message carrying `body`.
    pub fn structured(binding: Binding, body: &[u8]) -> Message {
        let mut message = Message::empty();
        if !binding.payload_only() {
            message.entries = vec![(b"content-type".to_vec(), JSON_FORMAT.as_bytes().to_vec())];
        }
        message.body = Some(body.to_vec());
        message
    }

    /// A message of any bytes, with attribute names likely.
    pub fn arbitrary(u: &mut Unstructured) -> ArbResult<Message> {
        let mut entries = Vec::new();
        for _ in 0..u.int_in_range(0..=8)? {
            entries.push((entry_name(u)?, entry_value(u)?));
        }
        Ok(Message {
            entries,
            body: if u.ratio(7, 8)? { Some(body(u)?) } else { None },
            link: u.arbitrary()?,
            address: u.arbitrary()?,
        })
    }

    fn empty() -> Message {
        Message {
            entries: Vec::new(),
            body: None,
            link: "fuzz".into(),
            address: "fuzz.address".into(),
        }
    }

    fn origin(&self) -> (&str, &str) {
        (&self.link, &self.address)
    }

    fn body(&self) -> &[u8] {
        self.body.as_deref().unwrap_or_default()
    }
}

fn lossy(bytes: &[u8]) -> String {
    String::from_utf8_lossy(bytes).into_owned()
}

fn is_content_type(name: &[u8]) -> bool {
    name.eq_ignore_ascii_case(b"content-type")
}

/// Decodes `message` as `binding` does: the decoded event (or why not), the
/// metadata and content type for [`Received`].
fn decode(
    binding: Binding,
    message: &Message,
) -> (Result<Event, String>, Vec<(String, String)>, Option<String>) {
    let origin = message.origin();
    let body = message.body();
    let text_entries: Vec<(String, String)> = message
        .entries
        .iter()
        .map(|(k, v)| (inbound::text(k).into_owned(), inbound::text(v).into_owned()))
        .collect();
    // AMQP and MQTT 5 carry the content type apart from the metadata.
    let content_type = message
        .entries
        .iter()
        .find(|(k, _)| is_content_type(k))
        .map(|(_, v)| lossy(v));
    let apart: Vec<(String, Vec<u8>)> = message
        .entries
        .iter()
        .filter(|(k, _)| !is_content_type(k))
        .map(|(k, v)| (lossy(k), v.clone()))
        .collect();
    let decoded = match binding {
        Binding::Json => json::decode(body),
        Binding::Mqtt311 | Binding::RedisPubSub => json::decode_or_wrap(body, origin),
        Binding::Nats => {
            let pairs: Vec<(String, String)> = message
                .entries
                .iter()
                .map(|(k, v)| (lossy(k), lossy(v)))
                .collect();
            nats::decode(&pairs, body, origin)
        }
        Binding::Amqp => amqp::BINARY.decode_message(&apart, content_type.as_deref(), body, origin),
        Binding::Mqtt5 => {
            let properties: Vec<(String, String)> =
                apart.iter().map(|(k, v)| (k.clone(), lossy(v))).collect();
            mqtt::BINARY.decode_message(&properties, content_type.as_deref(), body, origin)
        }
        Binding::Http => ce_http::decode(&header_map(&message.entries), body),
        Binding::RedisStream => {
            let mut fields = message.entries.clone();
            if let Some(data) = &message.body {
                fields.push((redis::DATA_FIELD.into(), data.clone()));
            }
            redis::decode_fields(&fields, origin)
        }
        Binding::Kafka => {
            let key = message
                .entries
                .iter()
                .find(|(k, _)| k == b"key")
                .map(|(_, v)| v.as_slice());
            let headers: Vec<(&[u8], Option<&[u8]>)> = message
                .entries
                .iter()
                .filter(|(k, _)| k != b"key")
                .map(|(k, v)| (k.as_slice(), Some(v.as_slice())))
                .collect();
            kafka::decode(&headers, key, message.body.as_deref(), origin)
        }
    };
    (decoded, text_entries, content_type)
}

/// The entries HTTP can carry, as a header map.
fn header_map(entries: &[(Vec<u8>, Vec<u8>)]) -> http::HeaderMap {
    let mut headers = http::HeaderMap::new();
    for (name, value) in entries {
        if let (Ok(name), Ok(value)) = (
            http::HeaderName::from_bytes(name),
            http::HeaderValue::from_bytes(value),
        ) {
            headers.append(name, value);
        }
    }
    headers
}

/// The one rule for what comes in: whatever `message` is, decoding does not
/// panic and what comes out is a valid event, the decoded one (which must
/// then round-trip on its binding) or a wrapper that keeps the body whole.
pub fn check_inbound(binding: Binding, message: &Message) {
    let (decoded, metadata, content_type) = decode(binding, message);
    let admitted = inbound::admit(decoded, || Received {
        link: &message.link,
        address: &message.address,
        metadata,
        content_type: content_type.as_deref(),
        body: message.body(),
    });
    match admitted {
        Ok(event) => {
            assert_eq!(event.validate(), Ok(()), "admitted: {event:?}");
            check_round_trip(binding, &event);
        }
        Err(malformed) => {
            let wrapper = &malformed.wrapper;
            assert_eq!(wrapper.validate(), Ok(()), "wrapper: {malformed:?}");
            assert_eq!(wrapper.ty, MALFORMED_TYPE);
            assert_eq!(wrapper.data.as_deref(), Some(message.body()));
        }
    }
}

/// `event` encoded on `binding` in each mode and decoded again; the flag
/// says the mode carries the data as the whole body, where no data and
/// empty data are the same message.
fn round_trips(
    binding: Binding,
    event: &Event,
) -> Vec<(&'static str, bool, Result<Event, String>)> {
    let origin = ("fuzz", "fuzz.address");
    let mut out = Vec::new();
    match binding {
        Binding::Json => out.push(("json", false, json::decode(&json::encode(event)))),
        Binding::Mqtt311 | Binding::RedisPubSub => out.push((
            "json::decode_or_wrap",
            false,
            json::decode_or_wrap(&json::encode(event), origin),
        )),
        Binding::Nats => {
            for (name, mode) in [
                ("nats binary", ContentMode::Binary),
                ("nats structured", ContentMode::Structured),
            ] {
                let (headers, body) = nats::encode(event, mode);
                out.push((name, true, nats::decode(&headers, &body, origin)));
            }
        }
        Binding::Amqp | Binding::Mqtt5 => {
            let binary = if binding == Binding::Amqp {
                amqp::BINARY
            } else {
                mqtt::BINARY
            };
            for (name, mode) in [
                ("binary", ContentMode::Binary),
                ("structured", ContentMode::Structured),
            ] {
                let (entries, ct, body) = binary.encode_message(event, mode);
                let back = binary.decode_message(&entries, ct.as_deref(), &body, origin);
                out.push((name, true, back));
            }
        }
        Binding::Http => {
            let (headers, body) = ce_http::encode_binary(event);
            out.push(("http binary", true, ce_http::decode(&headers, &body)));
            let (headers, body) = ce_http::encode_structured(event);
            out.push(("http structured", false, ce_http::decode(&headers, &body)));
        }
        Binding::Kafka => {
            for (name, mode) in [
                ("kafka binary", ContentMode::Binary),
                ("kafka structured", ContentMode::Structured),
            ] {
                let record = kafka::encode(event, mode);
                let headers: Vec<(&[u8], Option<&[u8]>)> = record
                    .headers
                    .iter()
                    .map(|(k, v)| (k.as_bytes(), Some(v.as_slice())))
                    .collect();
                let back = kafka::decode(
                    &headers,
                    record.key.as_deref(),
                    record.value.as_deref(),
                    origin,
                );
                out.push((name, false, back));
            }
        }
        Binding::RedisStream => {
            let fields = redis::encode_fields(event);
            out.push(("redis fields", false, redis::decode_fields(&fields, origin)));
            let fields = redis::structured_fields(event);
            out.push((
                "redis structured",
                false,
                redis::decode_fields(&fields, origin),
            ));
        }
    }
    out
}

/// Encoding never panics; a valid event reads back as itself.
pub fn check_round_trip(binding: Binding, event: &Event) {
    let valid = event.validate().is_ok();
    for (how, body_is_data, back) in round_trips(binding, event) {
        if !valid {
            continue;
        }
        let back = back.unwrap_or_else(|e| panic!("{binding:?} {how}: {e}\n{event:?}"));
        let (mut want, mut got) = (event.clone(), back);
        if body_is_data {
            want.data = want.data.filter(|d| !d.is_empty());
            got.data = got.data.filter(|d| !d.is_empty());
        }
        assert_eq!(got, want, "{binding:?} {how}");
    }
}

/// Runs the check the first byte of `data` picks (see the module docs).
pub fn fuzz_binding(binding: Binding, data: &[u8]) {
    let Some((&mode, rest)) = data.split_first() else {
        return;
    };
    match mode % 4 {
        0 => check_inbound(binding, &Message::parse(binding, rest)),
        1 => check_inbound(binding, &Message::structured(binding, rest)),
        2 => {
            if let Ok(message) = Message::arbitrary(&mut Unstructured::new(rest)) {
                check_inbound(binding, &message);
            }
        }
        _ => {
            if let Ok(event) = arbitrary_event(&mut Unstructured::new(rest)) {
                check_round_trip(binding, &event);
            }
        }
    }
}

// --- Events and messages from Unstructured ------------------------------------

/// Whether a CloudEvents string may hold `c` (as `Event::validate` rules).
fn allowed(c: char) -> bool {
    let n = c as u32;
    !c.is_control() && !(0xFDD0..=0xFDEF).contains(&n) && n & 0xFFFE != 0xFFFE
}

/// Text, cleaned of what an attribute may not hold seven times in eight.
fn text(u: &mut Unstructured) -> ArbResult<String> {
    let s: String = u.arbitrary()?;
    Ok(if u.ratio(7, 8)? {
        s.chars().filter(|&c| allowed(c)).collect()
    } else {
        s
    })
}

fn required_text(u: &mut Unstructured) -> ArbResult<String> {
    let s = text(u)?;
    Ok(if s.is_empty() && u.ratio(7, 8)? {
        "x".into()
    } else {
        s
    })
}

fn option<T>(
    u: &mut Unstructured,
    f: impl FnOnce(&mut Unstructured) -> ArbResult<T>,
) -> ArbResult<Option<T>> {
    Ok(if u.arbitrary()? { Some(f(u)?) } else { None })
}

fn time(u: &mut Unstructured) -> ArbResult<String> {
    if u.ratio(1, 8)? {
        return u.arbitrary();
    }
    let (y, mo, d) = (
        u.int_in_range(0..=9999)?,
        u.int_in_range(1..=12)?,
        u.int_in_range(1..=28)?,
    );
    let (h, mi, s) = (
        u.int_in_range(0..=23)?,
        u.int_in_range(0..=59)?,
        u.int_in_range(0..=59)?,
    );
    let frac = match u.int_in_range(0..=2)? {
        0 => String::new(),
        1 => format!(".{}", u.int_in_range(0..=999u32)?),
        _ => format!(".{}", u.arbitrary::<u64>()?),
    };
    let zone = *u.choose(&["Z", "z", "+00:00", "-23:59", "+05:30"])?;
    Ok(format!(
        "{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:{s:02}{frac}{zone}"
    ))
}

const CONTENT_TYPES: &[&str] = &[
    "application/json",
    "application/json; charset=utf-8",
    "text/plain",
    "text/json",
    "Text/Plain; charset=utf-8",
    "application/vnd.x+json",
    "application/octet-stream",
    "application/cloudevents+json",
    "application/cloudevents-batch+json",
    " application/json",
];

fn content_type(u: &mut Unstructured) -> ArbResult<String> {
    if u.arbitrary()? {
        Ok(u.choose(CONTENT_TYPES)?.to_string())
    } else {
        text(u)
    }
}

const JSON_DATA: &[&str] = &[
    "null",
    "1",
    "1e999",
    "-0.0",
    "\"\\ud800\"",
    "\"text\"",
    "{\"a\":[1,2,{\"b\":null}]}",
    " {\"a\": 1} ",
    "[]\n",
    "{}",
    "true",
];

fn data(u: &mut Unstructured) -> ArbResult<Vec<u8>> {
    Ok(match u.int_in_range(0..=3)? {
        0 => u.arbitrary()?,
        1 => u.choose(JSON_DATA)?.as_bytes().to_vec(),
        2 => {
            let depth = u.int_in_range(0..=200)?;
            ["[".repeat(depth), "]".repeat(depth)].concat().into_bytes()
        }
        _ => u.arbitrary::<String>()?.into_bytes(),
    })
}

const ATTRIBUTES: &[&str] = &[
    "specversion",
    "id",
    "source",
    "type",
    "time",
    "subject",
    "dataschema",
    "datacontenttype",
    "data",
    "data_base64",
    "traceparent",
];

/// An extension name: lower-case letters and digits mostly, else anything.
fn extension_name(u: &mut Unstructured) -> ArbResult<String> {
    Ok(match u.int_in_range(0..=7)? {
        0 => u.arbitrary()?,
        1 => u.choose(ATTRIBUTES)?.to_string(),
        _ => {
            const ALPHABET: &[u8] = b"abcdefghijklmnopqrstuvwxyz0123456789";
            let len = u.int_in_range(1..=8)?;
            let mut name = String::new();
            for _ in 0..len {
                name.push(*u.choose(ALPHABET)? as char);
            }
            name
        }
    })
}

/// An event, valid more often than not.
pub fn arbitrary_event(u: &mut Unstructured) -> ArbResult<Event> {
    let mut event = Event::new(required_text(u)?, required_text(u)?, required_text(u)?);
    if u.ratio(1, 16)? {
        event.specversion = u.arbitrary()?;
    }
    event.data = option(u, data)?;
    event.datacontenttype = option(u, content_type)?;
    event.dataschema = option(u, text)?;
    event.subject = option(u, text)?;
    event.time = option(u, time)?;
    for _ in 0..u.int_in_range(0..=4)? {
        event.extensions.push((extension_name(u)?, text(u)?));
    }
    Ok(event)
}

const PREFIXES: &[&str] = &[
    "",
    "ce-",
    "CE-",
    "Ce_",
    "cloudEvents_",
    "cloudevents:",
    "cloudEvents",
];

fn entry_name(u: &mut Unstructured) -> ArbResult<Vec<u8>> {
    Ok(match u.int_in_range(0..=5)? {
        0 => u.arbitrary()?,
        1 => b"content-type".to_vec(),
        _ => format!("{}{}", u.choose(PREFIXES)?, u.choose(ATTRIBUTES)?).into_bytes(),
    })
}

const VALUES: &[&[u8]] = &[
    b"1.0",
    b"0.3",
    b"",
    b"%",
    b"%FF%FE",
    b"%C3%A9",
    b"a%0Ab",
    b"caf\xc3\xa9",
    b"caf\xff",
    b"2024-02-29T12:00:00.5+01:00",
    b"yesterday",
    b"application/cloudevents+json",
    b"application/cloudevents-batch+json",
    b"text/plain",
];

fn entry_value(u: &mut Unstructured) -> ArbResult<Vec<u8>> {
    Ok(if u.arbitrary()? {
        u.choose(VALUES)?.to_vec()
    } else {
        u.arbitrary()?
    })
}

fn body(u: &mut Unstructured) -> ArbResult<Vec<u8>> {
    Ok(match u.int_in_range(0..=2)? {
        0 => json::encode(&arbitrary_event(u)?),
        _ => u.arbitrary()?,
    })
}

// --- Loaders --------------------------------------------------------------------

/// Every fuzz target by name, as `fuzz_targets/<name>.rs` runs it on each
/// input. The test suite runs the committed corpus and a bounded number of
/// random inputs through these same functions, so every target is built
/// and run in every CI run; `scripts/fuzz.sh` runs them under libFuzzer.
pub const TARGETS: [(&str, fn(&[u8])); 10] = [
    ("json", json_target),
    ("nats_binary", |data| fuzz_binding(Binding::Nats, data)),
    ("amqp_binary", |data| fuzz_binding(Binding::Amqp, data)),
    ("mqtt_binary", mqtt_target),
    ("http_binding", |data| fuzz_binding(Binding::Http, data)),
    ("redis_fields", |data| {
        fuzz_binding(Binding::RedisStream, data)
    }),
    ("kafka_record", |data| fuzz_binding(Binding::Kafka, data)),
    ("manifest", manifest_target),
    ("locked_app", locked_app_target),
    ("runtime_config", runtime_config_target),
];

/// The target of that name.
pub fn target(name: &str) -> fn(&[u8]) {
    TARGETS
        .iter()
        .find(|(n, _)| *n == name)
        .unwrap_or_else(|| panic!("no fuzz target {name}"))
        .1
}

/// The JSON format as it is, and as Redis pub/sub payloads are read.
fn json_target(data: &[u8]) {
    for binding in [Binding::Json, Binding::RedisPubSub] {
        fuzz_binding(binding, data);
    }
}

/// MQTT 5 with properties, and MQTT 3.1.1 payloads.
fn mqtt_target(data: &[u8]) {
    for binding in [Binding::Mqtt5, Binding::Mqtt311] {
        fuzz_binding(binding, data);
    }
}

/// spin.toml (`manifest::load_app`). The loader reads only this file
/// (component sources are checked to exist, not read), so any input is
/// safe to load.
fn manifest_target(data: &[u8]) {
    let dir = scratch_dir("manifest");
    let path = dir.join("spin.toml");
    std::fs::write(&path, data).expect("cannot write spin.toml");
    if let Err(errors) = load_app(&path, &|link| link == "default") {
        assert_located(&path, &errors);
    }
}

/// The Spin locked app (`manifest::load_locked_app`).
fn locked_app_target(data: &[u8]) {
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
        let files: Vec<&Path> = [Some(lock.as_path()), origin.as_deref()]
            .into_iter()
            .flatten()
            .collect();
        assert_located_in(&files, &errors);
    }
}

/// The same bytes read as Spin's runtime config and as the messaging
/// runtime config (`RuntimeConfig::load_files`).
fn runtime_config_target(data: &[u8]) {
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
}

/// A directory of this process's own for a loader target's files, holding
/// an empty `probe.wasm` that manifests can name as a component (the
/// loaders check that it exists, nothing more). In the system's temporary
/// directory, so that the test suite, which runs these targets too, leaves
/// nothing in the repository.
pub fn scratch_dir(target: &str) -> &'static Path {
    static DIRS: OnceLock<std::sync::Mutex<HashMap<String, &'static Path>>> = OnceLock::new();
    let mut dirs = DIRS.get_or_init(Default::default).lock().unwrap();
    dirs.entry(target.to_string()).or_insert_with(|| {
        let dir = std::env::temp_dir().join(format!(
            "trigger-messaging-fuzz-{target}-{}",
            std::process::id()
        ));
        std::fs::create_dir_all(&dir).expect("cannot make the scratch directory");
        std::fs::write(dir.join("probe.wasm"), b"").expect("cannot write probe.wasm");
        Box::leak(dir.into_boxed_path())
    })
}

#[path = "../../tests/all/located.rs"]
mod located;
pub use located::{assert_located, assert_located_in};

/// Whether any of `strings`, read as a path (relative to `base` or not) or
/// a `file:` URL, names something a loader must not be made to read while
/// fuzzing: anything but a small regular file (`/dev/zero` never ends,
/// `/dev/stdin` blocks). Inputs that do are skipped, not loaded.
pub fn names_special_file<'a>(strings: impl IntoIterator<Item = &'a str>, base: &Path) -> bool {
    // A directory is harmless: reading one fails at once.
    let risky = |path: &Path| {
        std::fs::metadata(path).is_ok_and(|m| !m.is_dir() && (!m.is_file() || m.len() > 1 << 20))
    };
    strings.into_iter().any(|s| {
        let mut paths: Vec<Cow<Path>> = vec![Path::new(s).into(), base.join(s).into()];
        if let Some(path) = url::Url::parse(s).ok().and_then(|u| u.to_file_path().ok()) {
            paths.push(path.into());
        }
        paths.iter().any(|p| risky(p))
    })
}

/// Every string in a TOML value, keys included.
pub fn toml_strings(value: &toml::Value, out: &mut Vec<String>) {
    match value {
        toml::Value::String(s) => out.push(s.clone()),
        toml::Value::Array(items) => items.iter().for_each(|v| toml_strings(v, out)),
        toml::Value::Table(table) => {
            for (k, v) in table {
                out.push(k.clone());
                toml_strings(v, out);
            }
        }
        _ => {}
    }
}

/// Every string in a JSON value, keys included.
pub fn json_strings(value: &serde_json::Value, out: &mut Vec<String>) {
    match value {
        serde_json::Value::String(s) => out.push(s.clone()),
        serde_json::Value::Array(items) => items.iter().for_each(|v| json_strings(v, out)),
        serde_json::Value::Object(map) => {
            for (k, v) in map {
                out.push(k.clone());
                json_strings(v, out);
            }
        }
        _ => {}
    }
}
