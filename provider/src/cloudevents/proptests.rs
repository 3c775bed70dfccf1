//! Property tests of every decoder and encoder, bounded so that they run in
//! the normal suite (cargo-fuzz in `fuzz/` runs the same properties for
//! longer). What must hold for any input:
//! - decoding never panics, on any binding, in either mode;
//! - under the one inbound rule ([`inbound::admit`]) what comes out is a
//!   valid event: the decoded one, or a wrapper that keeps the body whole;
//! - encoding never panics, valid event or not;
//! - a valid event reads back as itself in both modes on every binding.

use super::binary::BinaryMode;
use super::inbound::{self, Received};
use super::{ContentMode, Event, allowed_in_string, amqp, http, json, kafka, mqtt, nats, redis};
use axum::http::{HeaderMap, HeaderName, HeaderValue};
use proptest::prelude::*;

/// Bindings whose binary mode goes through [`BinaryMode::decode_message`].
const MODES: [(&str, BinaryMode); 4] = [
    ("nats", nats::BINARY),
    ("amqp", amqp::BINARY),
    ("mqtt", mqtt::BINARY),
    ("http", http::BINARY),
];

/// Text a CloudEvents string may hold: any characters but the forbidden
/// ones, biased towards the ones the encoders treat specially.
fn allowed_text(min: usize) -> impl Strategy<Value = String> {
    let tricky = prop_oneof![
        Just(' '),
        Just('%'),
        Just('"'),
        Just('\\'),
        Just('ü'),
        Just('🎉'),
        Just('\u{A0}'),
        Just('\u{FFFD}'),
        any::<char>(),
        proptest::char::range('!', '~'),
    ];
    proptest::collection::vec(tricky, min..12).prop_map(|chars| {
        chars
            .into_iter()
            .filter(|&c| allowed_in_string(c))
            .collect::<String>()
    })
}

/// Any text at all, forbidden characters included.
fn any_text() -> impl Strategy<Value = String> {
    prop_oneof![
        any::<String>(),
        proptest::collection::vec(
            prop_oneof![
                Just('\n'),
                Just('\0'),
                Just('\u{7f}'),
                Just('\u{FFFF}'),
                any::<char>()
            ],
            0..8
        )
        .prop_map(String::from_iter),
    ]
}

/// Data content types, mixing the media types the encoders look at.
fn content_type() -> impl Strategy<Value = String> {
    prop_oneof![
        Just("application/json".to_string()),
        Just("text/plain; charset=utf-8".to_string()),
        Just("text/json".to_string()),
        Just("application/vnd.x+json".to_string()),
        Just("application/octet-stream".to_string()),
        Just("application/cloudevents+json".to_string()),
        Just(" Text/Plain".to_string()),
        allowed_text(0),
    ]
}

/// Data bytes: JSON values (some spaced, some deep), text, and raw bytes.
fn data() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        any::<Vec<u8>>(),
        any::<String>().prop_map(String::into_bytes),
        Just(b"null".to_vec()),
        Just(b" {\"a\": [1, 2.5e3, true]}\n".to_vec()),
        Just(b"\"\\ud800\"".to_vec()),
        Just(b"1e999".to_vec()),
        (1usize..140)
            .prop_map(|depth| ["[".repeat(depth), "]".repeat(depth)].concat().into_bytes()),
        any::<i64>().prop_map(|n| n.to_string().into_bytes()),
        any::<String>().prop_map(|s| serde_json::to_vec(&s).unwrap()),
    ]
}

/// RFC 3339 timestamps, in the shapes producers write.
fn time() -> impl Strategy<Value = String> {
    (
        1970u32..2100,
        1u32..=12,
        1u32..=28,
        0u32..24,
        0u32..60,
        proptest::option::of(0u32..1_000_000),
        prop_oneof![
            Just("Z".to_string()),
            Just("+01:30".to_string()),
            Just("-00:00".to_string())
        ],
    )
        .prop_map(|(y, mo, d, h, mi, frac, zone)| {
            let frac = frac.map(|f| format!(".{f}")).unwrap_or_default();
            format!("{y:04}-{mo:02}-{d:02}T{h:02}:{mi:02}:07{frac}{zone}")
        })
}

/// Valid events: every attribute exercised, extension names unique.
fn valid_event() -> impl Strategy<Value = Event> {
    (
        (allowed_text(1), allowed_text(1), allowed_text(1)),
        (
            proptest::option::of(data()),
            proptest::option::of(content_type()),
            proptest::option::of(allowed_text(0)),
            proptest::option::of(allowed_text(0)),
            proptest::option::of(time()),
        ),
        // A vector, not a map: names given twice must be refused as invalid.
        proptest::collection::vec(("[a-z0-9]{1,3}", allowed_text(0)), 0..4),
    )
        .prop_map(
            |((id, source, ty), (data, ct, schema, subject, time), exts)| {
                let mut e = Event::new(id, source, ty);
                e.data = data;
                e.datacontenttype = ct;
                e.dataschema = schema;
                e.subject = subject;
                e.time = time;
                e.extensions = exts
                    .into_iter()
                    .filter(|(name, _)| super::validate_extension_name(name).is_ok())
                    .collect();
                e
            },
        )
        .prop_filter("must be valid", |e| e.validate().is_ok())
}

/// Any event: attribute values and names of any text.
fn any_event() -> impl Strategy<Value = Event> {
    (
        (any_text(), any_text(), any_text(), any_text()),
        (
            proptest::option::of(any::<Vec<u8>>()),
            proptest::option::of(prop_oneof![content_type(), any_text()]),
            proptest::option::of(any_text()),
            proptest::option::of(any_text()),
        ),
        proptest::collection::vec((any_text(), any_text()), 0..4),
    )
        .prop_map(
            |((sv, id, source, ty), (data, ct, subject, time), extensions)| Event {
                specversion: sv,
                ty,
                source,
                id,
                data,
                datacontenttype: ct,
                dataschema: None,
                subject,
                time,
                extensions,
            },
        )
}

/// Metadata entry names: attribute names under every binding's prefixes,
/// in any case, and other names.
fn entry_name() -> impl Strategy<Value = String> {
    let attribute = prop_oneof![
        Just("specversion"),
        Just("id"),
        Just("source"),
        Just("type"),
        Just("time"),
        Just("subject"),
        Just("datacontenttype"),
        Just("dataschema"),
        Just("data"),
        Just("tenant"),
    ];
    let prefix = prop_oneof![
        Just(""),
        Just("ce-"),
        Just("CE-"),
        Just("cloudEvents_"),
        Just("cloudevents:"),
    ];
    prop_oneof![
        3 => (prefix, attribute).prop_map(|(p, a)| format!("{p}{a}")),
        1 => Just("content-type".to_string()),
        1 => any_text(),
    ]
}

/// Metadata entry values: good attribute values, percent escapes, any bytes.
fn entry_value() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        Just(b"1.0".to_vec()),
        Just(b"0.3".to_vec()),
        Just(b"%FF%C3".to_vec()),
        Just(b"a%0Ab".to_vec()),
        Just(b"2024-01-01T00:00:00Z".to_vec()),
        Just(b"application/cloudevents+json".to_vec()),
        "[ -~]{0,12}".prop_map(String::into_bytes),
        any::<Vec<u8>>(),
    ]
}

fn entries() -> impl Strategy<Value = Vec<(String, Vec<u8>)>> {
    proptest::collection::vec((entry_name(), entry_value()), 0..8)
}

/// Bodies: CloudEvents JSON documents (valid or not) and any bytes.
fn body() -> impl Strategy<Value = Vec<u8>> {
    prop_oneof![
        any::<Vec<u8>>(),
        any_event().prop_map(|e| json::encode(&e)),
        valid_event().prop_map(|e| json::encode(&e)),
        Just(br#"{"specversion":"1.0","id":"x","source":"s","type":"t","data":null,"data_base64":"AA=="}"#.to_vec()),
        Just(br#"{"specversion":"1.0","id":1,"source":true,"type":"t","x":null,"data_base64":"%%"}"#.to_vec()),
    ]
}

/// Puts `(name, value)` pairs in a header map, skipping what HTTP cannot carry.
fn header_map(entries: &[(String, Vec<u8>)], content_type: Option<&[u8]>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (name, value) in entries {
        if let (Ok(n), Ok(v)) = (
            HeaderName::from_bytes(name.as_bytes()),
            HeaderValue::from_bytes(value),
        ) {
            headers.append(n, v);
        }
    }
    if let Some(Ok(ct)) = content_type.map(HeaderValue::from_bytes) {
        headers.insert(axum::http::header::CONTENT_TYPE, ct);
    }
    headers
}

/// Checks the one inbound rule on a decoder's result: the event admitted is
/// valid, and a message that is not is wrapped whole in a valid event.
fn check_admit(decoded: Result<Event, String>, origin: (&str, &str), body: &[u8]) {
    match inbound::admit(decoded, || Received {
        link: origin.0,
        address: origin.1,
        metadata: vec![("name".into(), "\u{FFFF}\u{1}".into())],
        content_type: Some("text/plain\u{7f}"),
        body,
    }) {
        Ok(event) => assert_eq!(event.validate(), Ok(())),
        Err(malformed) => {
            assert_eq!(malformed.wrapper.validate(), Ok(()), "{malformed:?}");
            assert_eq!(malformed.wrapper.data.as_deref(), Some(body));
        }
    }
}

/// Binary mode cannot tell no data from empty data: both are an empty body.
fn without_empty_data(mut e: Event) -> Event {
    e.data = e.data.filter(|d| !d.is_empty());
    e
}

/// `event` read back after encoding on every binding in every mode.
fn round_trips(event: &Event) -> Vec<(String, Result<Event, String>)> {
    let origin = ("l", "a");
    let mut out = Vec::new();
    for (name, mode) in MODES {
        for content_mode in [ContentMode::Binary, ContentMode::Structured] {
            let (entries, ct, body) = mode.encode_message(event, content_mode);
            let back = mode.decode_message(&entries, ct.as_deref(), &body, origin);
            out.push((format!("{name} {content_mode:?}"), back));
        }
    }
    for content_mode in [ContentMode::Binary, ContentMode::Structured] {
        let (headers, body) = nats::encode(event, content_mode);
        out.push((
            format!("nats::encode {content_mode:?}"),
            nats::decode(&headers, &body, origin),
        ));
    }
    let (headers, body) = http::encode_binary(event);
    out.push(("http::encode_binary".into(), http::decode(&headers, &body)));
    let (headers, body) = http::encode_structured(event);
    out.push((
        "http::encode_structured".into(),
        http::decode(&headers, &body),
    ));
    out.push((
        "redis fields".into(),
        redis::decode_fields(&redis::encode_fields(event), origin),
    ));
    out.push((
        "redis structured fields".into(),
        redis::decode_fields(&redis::structured_fields(event), origin),
    ));
    out.push((
        "json::decode_or_wrap (MQTT 3.1.1, Redis pub/sub)".into(),
        json::decode_or_wrap(&json::encode(event), origin),
    ));
    out.push(("json".into(), json::decode(&json::encode(event))));
    for content_mode in [ContentMode::Binary, ContentMode::Structured] {
        let record = kafka::encode(event, content_mode);
        let headers: Vec<(&[u8], Option<&[u8]>)> = record
            .headers
            .iter()
            .map(|(k, v)| (k.as_bytes(), Some(v.as_slice())))
            .collect();
        out.push((
            format!("kafka::encode {content_mode:?}"),
            kafka::decode(
                &headers,
                record.key.as_deref(),
                record.value.as_deref(),
                origin,
            ),
        ));
    }
    out
}

proptest! {
    // Failures become named tests in this file rather than seed files.
    #![proptest_config(ProptestConfig {
        cases: 256,
        failure_persistence: None,
        ..ProptestConfig::default()
    })]

    #[test]
    fn valid_events_round_trip_on_every_binding(event in valid_event()) {
        for (how, back) in round_trips(&event) {
            let back = back.map_err(|e| TestCaseError::fail(format!("{how}: {e}")))?;
            // Only binary modes whose body is the data lose empty data.
            let loses_empty = how.contains("Binary") || how == "http::encode_binary";
            let (want, got) = if loses_empty {
                (without_empty_data(event.clone()), without_empty_data(back))
            } else {
                (event.clone(), back)
            };
            prop_assert_eq!(got, want, "{}", how);
        }
    }

    #[test]
    fn encoding_never_panics(event in any_event()) {
        let _ = round_trips(&event);
    }

    #[test]
    fn binary_decoders_admit_only_valid_events(
        entries in entries(),
        content_type in proptest::option::of(entry_value()),
        body in body(),
        link in any_text(),
        address in any_text(),
    ) {
        let origin = (link.as_str(), address.as_str());
        let ct = content_type.as_deref().map(String::from_utf8_lossy);
        for (_, mode) in MODES {
            let decoded = mode.decode_message(&entries, ct.as_deref(), &body, origin);
            check_admit(decoded, origin, &body);
        }
        let text: Vec<(String, String)> = entries
            .iter()
            .map(|(k, v)| (k.clone(), String::from_utf8_lossy(v).into_owned()))
            .collect();
        check_admit(nats::decode(&text, &body, origin), origin, &body);
        let headers = header_map(&entries, content_type.as_deref());
        check_admit(http::decode(&headers, &body), origin, &body);
        let fields: Vec<(Vec<u8>, Vec<u8>)> = entries
            .iter()
            .map(|(k, v)| (k.clone().into_bytes(), v.clone()))
            .chain(Some((b"data".to_vec(), body.clone())))
            .collect();
        check_admit(redis::decode_fields(&fields, origin), origin, &body);
        let headers: Vec<(&[u8], Option<&[u8]>)> = entries
            .iter()
            .map(|(k, v)| (k.as_bytes(), Some(v.as_slice())))
            .chain(content_type.as_deref().map(|ct| (&b"content-type"[..], Some(ct))))
            .collect();
        for key in [None, Some(&body[..body.len().min(8)])] {
            check_admit(kafka::decode(&headers, key, Some(&body), origin), origin, &body);
        }
    }

    #[test]
    fn payload_decoders_admit_only_valid_events(
        body in body(),
        link in any_text(),
        address in any_text(),
    ) {
        let origin = (link.as_str(), address.as_str());
        check_admit(json::decode(&body), origin, &body);
        check_admit(json::decode_or_wrap(&body, origin), origin, &body);
        let structured = [
            (b"content-type".to_vec(), super::JSON_FORMAT.as_bytes().to_vec()),
            (b"data".to_vec(), body.clone()),
        ];
        check_admit(redis::decode_fields(&structured, origin), origin, &body);
    }

    #[test]
    fn admitted_events_round_trip(entries in entries(), body in body()) {
        // Whatever a decoder admits is valid, so it must also re-encode.
        let origin = ("l", "a");
        let decoded = [
            json::decode(&body),
            nats::BINARY.decode_message(&entries, None, &body, origin),
            amqp::BINARY.decode_message(&entries, Some("text/plain"), &body, origin),
        ];
        for event in decoded.into_iter().filter_map(Result::ok) {
            if event.validate().is_err() {
                continue;
            }
            for (how, back) in round_trips(&event) {
                prop_assert!(back.is_ok(), "{}: {:?}", how, back);
            }
        }
    }
}

/// What the properties found, kept as plain tests.
mod regressions {
    use super::*;

    /// An event with `data` and `datacontenttype` set.
    fn with_data(data: &[u8], content_type: Option<&str>) -> Event {
        let mut e = Event::new("1", "urn:s", "t");
        e.data = Some(data.to_vec());
        e.datacontenttype = content_type.map(Into::into);
        e
    }

    #[test]
    fn json_data_that_would_not_read_back_goes_as_base64() {
        let deep = |depth: usize| ["[".repeat(depth), "]".repeat(depth)].concat();
        let mut cases: Vec<(Vec<u8>, Option<&str>)> = vec![
            // `null` read back as no data at all.
            (b"null".to_vec(), None),
            // Whitespace around JSON data was trimmed.
            (b" {\"a\":1}\n".to_vec(), Some("application/json")),
            // Parsed alone but not inside a document, or not as a value.
            (b"1e999".to_vec(), None),
            (b"\"\\ud800\"".to_vec(), None),
            // Text under a JSON media type read back with its quotes.
            (b"hi".to_vec(), Some("text/json")),
        ];
        for depth in 120..135 {
            cases.push((deep(depth).into_bytes(), None));
        }
        for (data, ct) in cases {
            let e = with_data(&data, ct);
            assert_eq!(json::decode(&json::encode(&e)), Ok(e), "{data:?} {ct:?}");
        }
        let doc = String::from_utf8(json::encode(&with_data(b"[1]", None))).unwrap();
        assert!(
            doc.ends_with(",\"data\":[1]}"),
            "JSON data stays JSON: {doc}"
        );
    }

    #[test]
    fn data_that_is_itself_an_event_travels_structured() {
        // Its content type in the protocol's content type read back as a
        // structured-mode message, which the data is not.
        let e = with_data(b"not an event", Some("application/cloudevents+json"));
        for (name, mode) in MODES {
            let (entries, ct, body) = mode.encode_message(&e, ContentMode::Binary);
            let back = mode.decode_message(&entries, ct.as_deref(), &body, ("l", "a"));
            assert_eq!(back, Ok(e.clone()), "{name}");
        }
        let (headers, body) = http::encode_binary(&e);
        assert_eq!(http::decode(&headers, &body), Ok(e));
    }

    #[test]
    fn a_content_type_that_is_not_ascii_reads_back_over_http() {
        let e = with_data(b"x", Some("text/plain; title=ünï"));
        let (headers, body) = http::encode_binary(&e);
        assert_eq!(http::decode(&headers, &body), Ok(e));
        // A Content-Type that is not UTF-8 is read as ISO-8859-1.
        let mut headers = HeaderMap::new();
        for (name, value) in [
            ("ce-specversion", "1.0"),
            ("ce-id", "1"),
            ("ce-source", "s"),
            ("ce-type", "t"),
        ] {
            headers.insert(name, HeaderValue::from_static(value));
        }
        headers.insert(
            axum::http::header::CONTENT_TYPE,
            HeaderValue::from_bytes(b"text/\xff").unwrap(),
        );
        let e = http::decode(&headers, b"x").unwrap();
        assert_eq!(e.datacontenttype.as_deref(), Some("text/ÿ"));
    }

    #[test]
    fn an_extension_given_twice_is_invalid() {
        // The JSON format keeps only one of them.
        let mut e = Event::new("1", "s", "t");
        e.extensions = vec![("x".into(), "1".into()), ("x".into(), "2".into())];
        assert!(e.validate().unwrap_err().contains("`x`"));
    }

    #[test]
    fn wrappers_are_valid_whatever_the_broker_handed_over() {
        let (link, address, ct) = ("l\u{1}", "a/\u{FFFF}/\n", "text/\u{7f}plain");
        let plain = Event::wrap_plain(link, address, Some(ct), b"x".to_vec());
        assert_eq!(plain.validate(), Ok(()));
        assert_eq!(
            plain.source,
            "urn:trigger-messaging:l\\u{1}:a/\\u{ffff}/\\u{a}"
        );
        assert_eq!(plain.datacontenttype.as_deref(), Some("text/\\u{7f}plain"));
        let malformed = inbound::admit(Err("bad".into()), || Received {
            link,
            address,
            metadata: vec![("k\u{85}".into(), "\u{FDD0}".into())],
            content_type: Some(ct),
            body: b"\xff",
        })
        .unwrap_err();
        assert_eq!(malformed.wrapper.validate(), Ok(()));
        assert_eq!(
            malformed.wrapper.extension(inbound::METADATA),
            Some(r#"{"k\\u{85}":"\\u{fdd0}"}"#)
        );
        assert_eq!(inbound::printable("ünï ✓"), "ünï ✓");
    }
}
