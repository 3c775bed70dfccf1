//! The naming rules of each broker, for the names the provider puts on it
//! (channel addresses, queue groups, and the names derived from them).
//! Checked when the config loads, so that a name the broker would refuse,
//! or one that a client library would choke on, is reported at its key and
//! line rather than at the first publish. Each rule returns what is wrong,
//! in words; the caller says where.

/// A name that ends up on a broker, with what the link does with it.
pub type Rule = Result<(), String>;

/// The longest NATS subject this provider accepts: the server reads a
/// subject on a protocol line of at most 4 KiB (`max_control_line`), which
/// also carries the queue group or, for JetStream, the API subject with the
/// stream and consumer names.
pub const NATS_MAX_SUBJECT: usize = 1024;
/// The longest JetStream stream or consumer name (the server's limit; the
/// names are also directory names).
pub const JETSTREAM_MAX_NAME: usize = 255;
/// The longest MQTT topic or filter: MQTT strings carry a 16-bit length.
pub const MQTT_MAX_TOPIC: usize = 65_535;
/// The longest AMQP 0-9-1 exchange, queue or routing key: a short string.
pub const AMQP_MAX_NAME: usize = 255;
/// The longest Redis key or consumer group this provider accepts: Redis
/// takes up to 512 MB, but every stream entry and pending entry repeats
/// the names, so anything longer is a mistake.
pub const REDIS_MAX_KEY: usize = 1024;

/// The longest Kafka topic: the broker's limit (topic names are also
/// directory names, with the partition number appended).
pub const KAFKA_MAX_TOPIC: usize = 249;
/// The longest Kafka consumer group this provider accepts: Kafka takes any
/// string, but a queue's retry topic is named after its group.
pub const KAFKA_MAX_GROUP: usize = 200;

/// A name shown in a message: control characters escaped, and cut short
/// when it is long.
pub fn shown(name: &str) -> String {
    const MAX_CHARS: usize = 64;
    let escaped: String = name.chars().flat_map(char::escape_debug).collect();
    if escaped.chars().count() <= MAX_CHARS {
        format!("`{escaped}`")
    } else {
        let head: String = escaped.chars().take(MAX_CHARS).collect();
        format!("`{head}…` ({} bytes)", name.len())
    }
}

/// Rules every broker shares: not empty, no control characters (NUL, line
/// breaks, escapes), which no broker takes well and no one means.
pub fn common(name: &str) -> Rule {
    if name.is_empty() {
        return Err("must not be empty".into());
    }
    if let Some(c) = name.chars().find(|c| c.is_control()) {
        return Err(format!("must not contain control characters (found {c:?})"));
    }
    Ok(())
}

fn max_len(name: &str, max: usize, what: &str) -> Rule {
    if name.len() > max {
        return Err(format!(
            "is {} bytes long; {what} may be at most {max} bytes",
            name.len()
        ));
    }
    Ok(())
}

/// A NATS subject: dot-separated tokens, none empty, no whitespace; `*`
/// and `>` are wildcards that must be whole tokens, `>` only the last.
/// `published` says whether events are published to it, which wildcards
/// cannot be. `$…` (system and JetStream API subjects) and `_INBOX.…`
/// (request replies) are reserved.
pub fn nats_subject(subject: &str, published: bool) -> Rule {
    common(subject)?;
    max_len(subject, NATS_MAX_SUBJECT, "a NATS subject")?;
    if let Some(c) = subject.chars().find(|c| c.is_whitespace()) {
        return Err(format!(
            "is not a valid NATS subject: it contains whitespace ({c:?})"
        ));
    }
    if subject.starts_with('$') {
        return Err(
            "is not usable as a NATS subject: subjects starting with `$` are reserved for the server and JetStream's API"
                .into(),
        );
    }
    if subject.starts_with("_INBOX.") {
        return Err(
            "is not usable as a NATS subject: `_INBOX.` subjects are reserved for request replies"
                .into(),
        );
    }
    let tokens: Vec<&str> = subject.split('.').collect();
    if tokens.iter().any(|t| t.is_empty()) {
        return Err(
            "is not a valid NATS subject: it has an empty token (a leading, trailing or doubled `.`)"
                .into(),
        );
    }
    for (i, token) in tokens.iter().enumerate() {
        let wildcard = *token == "*" || *token == ">";
        if !wildcard && (token.contains('*') || token.contains('>')) {
            return Err(format!(
                "is not a valid NATS subject: the wildcards `*` and `>` must be whole tokens (found `{token}`)"
            ));
        }
        if *token == ">" && i + 1 != tokens.len() {
            return Err("is not a valid NATS subject: `>` may only be the last token".into());
        }
        if wildcard && published {
            return Err(
                "holds a wildcard (`*` or `>`), so events cannot be published to it; wildcards are for channels that are only subscribed to"
                    .into(),
            );
        }
    }
    Ok(())
}

/// A NATS queue group: no whitespace (it would break the protocol line).
pub fn nats_queue_group(group: &str) -> Rule {
    common(group)?;
    max_len(group, NATS_MAX_SUBJECT, "a NATS queue group")?;
    if let Some(c) = group.chars().find(|c| c.is_whitespace()) {
        return Err(format!(
            "is not a valid NATS queue group: it contains whitespace ({c:?})"
        ));
    }
    Ok(())
}

/// A JetStream stream or consumer name as written (the stream prefix):
/// letters, digits, `-` and `_` only — no `.`, `*`, `>`, whitespace or path
/// separators, which the server refuses or cannot store.
pub fn jetstream_name_part(name: &str) -> Rule {
    match name
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || *c == '-' || *c == '_'))
    {
        Some(c) => Err(format!(
            "may only hold letters, digits, `-` and `_` (it is part of JetStream stream names; found {c:?})"
        )),
        None => Ok(()),
    }
}

/// A JetStream stream or consumer name the link derives: at most
/// [`JETSTREAM_MAX_NAME`] characters.
pub fn jetstream_derived_name(what: &str, name: &str) -> Rule {
    if name.len() > JETSTREAM_MAX_NAME {
        return Err(format!(
            "makes a JetStream {what} name of {} characters; JetStream allows {JETSTREAM_MAX_NAME}",
            name.len()
        ));
    }
    Ok(())
}

/// An MQTT topic (published) or topic filter (only subscribed): UTF-8 of at
/// most 65,535 bytes, no NUL; `+` must be a whole level and `#` the whole
/// last level, and neither may be in a topic events are published to;
/// `$…` topics are reserved for the broker (`$SYS`, `$share`).
pub fn mqtt_topic(topic: &str, published: bool) -> Rule {
    common(topic)?;
    max_len(topic, MQTT_MAX_TOPIC, "an MQTT topic")?;
    if topic.starts_with('$') {
        return Err(
            "is not usable as an MQTT topic: topics starting with `$` are reserved for the broker (`$SYS`, `$share`)"
                .into(),
        );
    }
    let levels: Vec<&str> = topic.split('/').collect();
    for (i, level) in levels.iter().enumerate() {
        let wildcard = *level == "+" || *level == "#";
        if !wildcard && (level.contains('+') || level.contains('#')) {
            return Err(format!(
                "is not a valid MQTT topic filter: the wildcards `+` and `#` must be whole levels (found `{level}`)"
            ));
        }
        if *level == "#" && i + 1 != levels.len() {
            return Err("is not a valid MQTT topic filter: `#` may only be the last level".into());
        }
        if wildcard && published {
            return Err(
                "holds a wildcard (`+` or `#`), so events cannot be published to it; wildcards are for channels that are only subscribed to"
                    .into(),
            );
        }
    }
    Ok(())
}

/// The shared subscription filter a queue channel's consumers use, within
/// MQTT's string limit.
pub fn mqtt_shared_filter(filter: &str) -> Rule {
    if filter.len() > MQTT_MAX_TOPIC {
        return Err(format!(
            "makes the shared subscription filter `$share/<group>/<address>` {} bytes long; MQTT allows {MQTT_MAX_TOPIC}",
            filter.len()
        ));
    }
    Ok(())
}

/// An AMQP 0-9-1 routing key: a short string. A key events are published
/// to may not hold the topic exchange's wildcard words `*` and `#`: the
/// key is taken literally, but the channel's own bindings would read them
/// as wildcards and take other addresses' events.
pub fn amqp_routing_key(key: &str, published: bool) -> Rule {
    common(key)?;
    max_len(key, AMQP_MAX_NAME, "an AMQP routing key")?;
    if published && key.split('.').any(|word| word == "*" || word == "#") {
        return Err(
            "holds a wildcard word (`*` or `#`), so events cannot be published to it; wildcards are for channels that are only subscribed to"
                .into(),
        );
    }
    Ok(())
}

/// An AMQP exchange or queue the provider declares: a short string, not
/// starting with `amq.` (reserved: RabbitMQ refuses to declare those).
pub fn amqp_declared_name(name: &str, what: &str) -> Rule {
    common(name)?;
    max_len(name, AMQP_MAX_NAME, &format!("an AMQP {what} name"))?;
    if name.starts_with("amq.") {
        return Err(format!(
            "starts with `amq.`, which is reserved: the broker refuses to declare such an {what}"
        ));
    }
    Ok(())
}

/// A Redis key (stream or pub/sub channel) or consumer group.
pub fn redis_key(name: &str, what: &str) -> Rule {
    common(name)?;
    max_len(name, REDIS_MAX_KEY, what)
}

/// A Kafka topic: ASCII letters, digits, `.`, `_` and `-`, at most 249
/// bytes, not `.` or `..`. Kafka warns that `.` and `_` collide in metric
/// names; both are allowed, as Kafka allows them. `__…` is reserved for
/// the broker's internal topics.
pub fn kafka_topic(topic: &str, what: &str) -> Rule {
    common(topic)?;
    max_len(topic, KAFKA_MAX_TOPIC, what)?;
    if let Some(c) = topic
        .chars()
        .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
    {
        return Err(format!(
            "is not a valid Kafka topic name: {c:?} is not allowed (only ASCII letters, digits, `.`, `_` and `-`)"
        ));
    }
    if topic == "." || topic == ".." {
        return Err("is not a valid Kafka topic name: `.` and `..` are not allowed".into());
    }
    if topic.starts_with("__") {
        return Err("starts with `__`, which Kafka reserves for its internal topics".into());
    }
    Ok(())
}

/// A Kafka consumer group this provider uses for a queue: it also names
/// the queue's retry topic, so it takes a topic's characters.
pub fn kafka_group(group: &str) -> Rule {
    common(group)?;
    max_len(group, KAFKA_MAX_GROUP, "a Kafka consumer group")?;
    kafka_topic(group, "a Kafka consumer group").map_err(|why| {
        why.replace(
            "topic name",
            "consumer group name (it also names the queue's retry topic)",
        )
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn nats_subjects_follow_the_protocol() {
        for ok in ["orders", "a.b.c", "a-b_c.d", "é.x"] {
            assert_eq!(nats_subject(ok, true), Ok(()), "{ok}");
        }
        for ok in ["a.*", "a.>", "*.b", ">"] {
            assert_eq!(nats_subject(ok, false), Ok(()), "{ok}");
            assert!(nats_subject(ok, true).is_err(), "{ok}");
        }
        for bad in [
            "", "a b", "a\tb", "a\nb", "a..b", ".a", "a.", "a*", "a.>.b", "a.b>", "$JS.API",
            "_INBOX.x", "a\0b",
        ] {
            assert!(nats_subject(bad, false).is_err(), "{bad:?}");
        }
        assert!(nats_subject(&"a".repeat(NATS_MAX_SUBJECT + 1), true).is_err());
        assert!(nats_queue_group("a b").is_err());
        assert!(nats_queue_group("a.b").is_ok());
    }

    #[test]
    fn mqtt_topics_follow_the_protocol() {
        for ok in ["a/b", "a//b", "/a", "a b", "ü"] {
            assert_eq!(mqtt_topic(ok, true), Ok(()), "{ok}");
        }
        for ok in ["a/+/b", "a/#", "#", "+"] {
            assert_eq!(mqtt_topic(ok, false), Ok(()), "{ok}");
            assert!(mqtt_topic(ok, true).is_err(), "{ok}");
        }
        for bad in ["", "a+", "a/#/b", "a#", "$SYS/x", "$share/g/a", "a\0b"] {
            assert!(mqtt_topic(bad, false).is_err(), "{bad:?}");
        }
        assert!(mqtt_topic(&"a".repeat(MQTT_MAX_TOPIC + 1), true).is_err());
    }

    #[test]
    fn kafka_names_follow_the_broker() {
        for ok in ["orders", "a.b_c-D9", "x"] {
            assert_eq!(kafka_topic(ok, "a Kafka topic"), Ok(()), "{ok}");
        }
        for bad in [
            "",
            ".",
            "..",
            "a b",
            "a/b",
            "ü",
            "^regex",
            "__consumer_offsets",
            "a\0b",
        ] {
            assert!(kafka_topic(bad, "a Kafka topic").is_err(), "{bad:?}");
        }
        assert!(kafka_topic(&"t".repeat(KAFKA_MAX_TOPIC + 1), "a Kafka topic").is_err());
        assert!(kafka_group("orders.workers").is_ok());
        assert!(kafka_group("a b").unwrap_err().contains("retry topic"));
        assert!(kafka_group(&"g".repeat(KAFKA_MAX_GROUP + 1)).is_err());
    }

    #[test]
    fn amqp_and_redis_names_fit_their_brokers() {
        assert!(amqp_routing_key("a.*.b", false).is_ok());
        assert!(amqp_routing_key("a.*.b", true).is_err());
        assert!(amqp_routing_key("a*b", true).is_ok());
        assert!(amqp_routing_key(&"k".repeat(256), false).is_err());
        assert!(amqp_declared_name("amq.topic", "exchange").is_err());
        assert!(amqp_declared_name("orders", "queue").is_ok());
        assert!(redis_key(&"k".repeat(REDIS_MAX_KEY + 1), "a Redis key").is_err());
        assert!(redis_key("a\u{7f}", "a Redis key").is_err());
        assert!(jetstream_name_part("MESSAGING_").is_ok());
        assert!(jetstream_name_part("A.B").is_err());
        assert_eq!(shown("a\nb"), "`a\\nb`");
        assert!(shown(&"x".repeat(100)).ends_with("(100 bytes)"));
    }
}
