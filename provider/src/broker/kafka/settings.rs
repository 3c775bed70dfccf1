//! A Kafka link's settings: what `[messaging_link.<name>]` takes, how it is
//! checked at load, and the librdkafka configuration it becomes.

use super::super::tls::TlsFiles;
use super::super::{
    ChannelNames, Invalid, MAX_PAYLOAD_LIMIT, check_duration, check_name, check_publish_timeout,
    check_range, names, require,
};
use crate::cloudevents::ContentMode;
use rdkafka::ClientConfig;
use serde::Deserialize;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Duration;

/// `[messaging_link.<name>]` settings of a Kafka link.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct KafkaSettings {
    /// Bootstrap servers, `host:port` each.
    #[serde(default = "default_brokers")]
    pub brokers: Vec<String>,
    /// The client id the brokers see (logs, quotas).
    #[serde(default = "default_client_id")]
    pub client_id: String,
    /// Connect over TLS (also implied by any TLS file).
    #[serde(default)]
    pub tls: bool,
    /// The CA (PEM) that signed the brokers' certificates, if not a system root.
    pub ca_file: Option<PathBuf>,
    /// A client certificate (PEM) for mutual TLS, with `key_file`.
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub key_file: Option<PathBuf>,
    /// What the TLS files hold, read by `check`.
    #[serde(skip)]
    pub tls_files: TlsFiles,
    /// SASL: `PLAIN`, `SCRAM-SHA-256` or `SCRAM-SHA-512`, with `user` and `password`.
    pub sasl_mechanism: Option<SaslMechanism>,
    /// SASL user name.
    pub user: Option<String>,
    /// SASL password.
    pub password: Option<String>,
    /// How events are written: `binary` (`ce_` headers) or `structured` (JSON).
    #[serde(default)]
    pub content_mode: ContentMode,
    /// How long a publish may take before it fails (also the connection timeout).
    #[serde(
        default = "super::super::default_publish_timeout",
        with = "humantime_serde"
    )]
    pub publish_timeout: Duration,
    /// Acknowledgements a publish waits for: `all` (every in-sync replica)
    /// or `leader`.
    #[serde(default)]
    pub acks: Acks,
    /// Idempotent production: a retried send is written once, in order.
    #[serde(default = "yes")]
    pub idempotence: bool,
    /// Compression of produced batches.
    #[serde(default)]
    pub compression: Compression,
    /// The largest record the link sends (the brokers' `message.max.bytes`).
    #[serde(default = "default_max_payload")]
    pub max_payload: u64,
    /// Create the topics channels name (and queues' retry topics) when the
    /// app starts; when false they must exist.
    #[serde(default = "yes")]
    pub create_topics: bool,
    /// Partitions of a topic the link creates.
    #[serde(default = "default_partitions")]
    pub partitions: i32,
    /// Replicas of a topic the link creates; -1 takes the brokers' default.
    #[serde(default = "default_replication_factor")]
    pub replication_factor: i32,
    /// Per topic (channel address): partitions and replicas when created.
    #[serde(default)]
    pub topics: BTreeMap<String, TopicSettings>,
    /// How long a queue consumer may go unheard before its group gives its
    /// partitions to another member (after a crash, say).
    #[serde(default = "default_session_timeout", with = "humantime_serde")]
    pub session_timeout: Duration,
}

/// How one topic is created, when the link creates it.
#[derive(Clone, Debug, Default, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TopicSettings {
    /// Partitions (the link's `partitions` when absent).
    pub partitions: Option<i32>,
    /// Replicas (the link's `replication_factor` when absent).
    pub replication_factor: Option<i32>,
}

/// SASL mechanisms the link speaks.
#[derive(Clone, Copy, Debug, Deserialize, PartialEq, Eq)]
pub enum SaslMechanism {
    /// User and password in the clear (use with TLS).
    #[serde(rename = "PLAIN")]
    Plain,
    /// Salted challenge-response, SHA-256.
    #[serde(rename = "SCRAM-SHA-256")]
    ScramSha256,
    /// Salted challenge-response, SHA-512.
    #[serde(rename = "SCRAM-SHA-512")]
    ScramSha512,
}

/// The acknowledgement a publish waits for.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Acks {
    /// Every in-sync replica has the record.
    #[default]
    All,
    /// The partition leader has it.
    Leader,
}

/// Compression of produced batches.
#[derive(Clone, Copy, Debug, Default, Deserialize, PartialEq, Eq)]
#[serde(rename_all = "lowercase")]
pub enum Compression {
    /// None.
    #[default]
    None,
    /// gzip.
    Gzip,
    /// Snappy.
    Snappy,
    /// LZ4.
    Lz4,
    /// Zstandard.
    Zstd,
}

fn yes() -> bool {
    true
}
fn default_brokers() -> Vec<String> {
    vec!["127.0.0.1:9092".into()]
}
fn default_client_id() -> String {
    "trigger-messaging".into()
}
/// Kafka's default `message.max.bytes`.
fn default_max_payload() -> u64 {
    1_048_588
}
fn default_partitions() -> i32 {
    1
}
fn default_replication_factor() -> i32 {
    -1
}
fn default_session_timeout() -> Duration {
    Duration::from_secs(10)
}

impl KafkaSettings {
    /// Checks what deserialised and reads the TLS files.
    pub fn check(&mut self, config_dir: &Path) -> Result<(), Invalid> {
        require(
            !self.brokers.is_empty(),
            "brokers",
            "must name at least one broker",
        )?;
        for broker in &self.brokers {
            check_broker_address(broker)?;
        }
        check_name(
            "client_id",
            &self.client_id,
            names::common(&self.client_id).and_then(|()| {
                match self
                    .client_id
                    .chars()
                    .find(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-')))
                {
                    Some(c) => Err(format!(
                        "may hold ASCII letters, digits, `.`, `_` and `-` only (found {c:?})"
                    )),
                    None => Ok(()),
                }
            }),
        )?;
        check_publish_timeout(self.publish_timeout)?;
        check_range("max_payload", self.max_payload, 1..=MAX_PAYLOAD_LIMIT)?;
        check_partitions("partitions", self.partitions)?;
        check_replicas("replication_factor", self.replication_factor)?;
        for topic in self.topics.values() {
            if let Some(p) = topic.partitions {
                check_partitions("topics", p)?;
            }
            if let Some(r) = topic.replication_factor {
                check_replicas("topics", r)?;
            }
        }
        for topic in self.topics.keys() {
            check_name("topics", topic, names::kafka_topic(topic, "a Kafka topic"))?;
        }
        check_duration(
            "session_timeout",
            self.session_timeout,
            Duration::from_secs(1)..=Duration::from_secs(3600),
        )?;
        require(
            !self.idempotence || self.acks == Acks::All,
            "acks",
            "idempotent production needs `acks = \"all\"` (or set `idempotence = false`)",
        )?;
        match (&self.sasl_mechanism, &self.user, &self.password) {
            (Some(_), Some(_), Some(_)) | (None, None, None) => {}
            (None, _, _) => {
                return Err(Invalid::new(
                    if self.user.is_some() {
                        "user"
                    } else {
                        "password"
                    },
                    "needs `sasl_mechanism` (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)",
                ));
            }
            (Some(_), None, _) => return Err(Invalid::new("sasl_mechanism", "needs `user`")),
            (Some(_), _, None) => return Err(Invalid::new("sasl_mechanism", "needs `password`")),
        }
        self.tls_files = TlsFiles::read(
            config_dir,
            &mut self.ca_file,
            &mut self.cert_file,
            &mut self.key_file,
        )?;
        self.tls |= self.tls_files.given_key().is_some();
        Ok(())
    }

    /// Checks a channel's topic (and its queue's group and retry topic).
    pub fn check_channel(&self, c: &ChannelNames) -> Result<(), Invalid> {
        check_name(
            "address",
            c.address,
            names::kafka_topic(c.address, "a Kafka topic"),
        )?;
        if let Some(group) = c.group {
            check_name("group", group, names::kafka_group(group))?;
            let retry = retry_topic(c.address, group);
            check_name(
                "group",
                group,
                names::kafka_topic(&retry, "a Kafka topic").map_err(|why| {
                    format!(
                        "names the retry topic {}, which {why}",
                        names::shown(&retry)
                    )
                }),
            )?;
        }
        Ok(())
    }

    /// The start-up summary line.
    pub fn describe(&self) -> String {
        format!(
            "kafka {} (topics and consumer groups, at least once for queues; {:?} mode{}{})",
            self.brokers.join(","),
            self.content_mode,
            if self.tls { ", TLS" } else { "" },
            match self.sasl_mechanism {
                Some(m) => format!(", SASL {m:?}"),
                None => String::new(),
            }
        )
    }

    /// What every client of the link shares: servers, security, timeouts.
    pub fn client_config(&self) -> ClientConfig {
        let mut c = ClientConfig::new();
        c.set("bootstrap.servers", self.brokers.join(","))
            .set("client.id", &self.client_id)
            .set(
                "socket.connection.setup.timeout.ms",
                millis(self.publish_timeout).to_string(),
            )
            .set("log.connection.close", "false");
        let protocol = match (self.tls, self.sasl_mechanism.is_some()) {
            (false, false) => "plaintext",
            (true, false) => "ssl",
            (false, true) => "sasl_plaintext",
            (true, true) => "sasl_ssl",
        };
        c.set("security.protocol", protocol);
        if let Some(ca) = &self.tls_files.ca {
            c.set("ssl.ca.pem", String::from_utf8_lossy(ca));
        }
        if let Some((cert, key)) = &self.tls_files.client {
            c.set("ssl.certificate.pem", String::from_utf8_lossy(cert))
                .set("ssl.key.pem", String::from_utf8_lossy(key));
        }
        if let (Some(m), Some(user), Some(password)) =
            (self.sasl_mechanism, &self.user, &self.password)
        {
            let mechanism = match m {
                SaslMechanism::Plain => "PLAIN",
                SaslMechanism::ScramSha256 => "SCRAM-SHA-256",
                SaslMechanism::ScramSha512 => "SCRAM-SHA-512",
            };
            c.set("sasl.mechanism", mechanism)
                .set("sasl.username", user)
                .set("sasl.password", password);
        }
        c
    }

    /// The producer's configuration.
    pub fn producer_config(&self) -> ClientConfig {
        let mut c = self.client_config();
        c.set("acks", if self.acks == Acks::All { "all" } else { "1" })
            .set("enable.idempotence", self.idempotence.to_string())
            .set(
                "compression.type",
                match self.compression {
                    Compression::None => "none",
                    Compression::Gzip => "gzip",
                    Compression::Snappy => "snappy",
                    Compression::Lz4 => "lz4",
                    Compression::Zstd => "zstd",
                },
            )
            .set(
                "message.timeout.ms",
                millis(self.publish_timeout).to_string(),
            )
            // A record is the event plus its headers: room for both.
            .set(
                "message.max.bytes",
                (self.max_payload.saturating_add(64 * 1024))
                    .min(1_000_000_000)
                    .to_string(),
            )
            .set("linger.ms", "1");
        c
    }

    /// Partitions and replicas of a topic the link creates.
    pub fn topic_shape(&self, topic: &str) -> (i32, i32) {
        let own = self.topics.get(topic);
        (
            own.and_then(|t| t.partitions).unwrap_or(self.partitions),
            own.and_then(|t| t.replication_factor)
                .unwrap_or(self.replication_factor),
        )
    }
}

/// The topic a queue's nacked events wait in before they are delivered
/// again to its group.
pub fn retry_topic(address: &str, group: &str) -> String {
    format!("{address}.retry.{group}")
}

pub(super) fn millis(d: Duration) -> u64 {
    u64::try_from(d.as_millis()).unwrap_or(u64::MAX)
}

fn check_partitions(key: &'static str, n: i32) -> Result<(), Invalid> {
    check_range(key, n, 1..=10_000)
        .map_err(|e| Invalid::new(key, format!("partitions {}", e.message)))
}

fn check_replicas(key: &'static str, n: i32) -> Result<(), Invalid> {
    require(
        n == -1 || (1..=64).contains(&n),
        key,
        &format!(
            "replication_factor must be -1 (the brokers' default) or between 1 and 64 (got {n})"
        ),
    )
}

/// `host:port`, as librdkafka reads a bootstrap server: a host name or an
/// address (IPv6 in brackets) and a port other than 0.
fn check_broker_address(broker: &str) -> Result<(), Invalid> {
    let invalid = |why: &str| {
        Invalid::new(
            "brokers",
            format!(
                "{} is not a Kafka broker address: {why} (expected host:port)",
                names::shown(broker)
            ),
        )
    };
    names::common(broker).map_err(|why| invalid(&why))?;
    let broker = broker
        .strip_prefix("PLAINTEXT://")
        .or_else(|| broker.strip_prefix("SSL://"))
        .unwrap_or(broker);
    let (host, port) = broker.rsplit_once(':').ok_or_else(|| invalid("no port"))?;
    let port: u16 = port
        .parse()
        .map_err(|_| invalid("the port is not a number from 1 to 65535"))?;
    if port == 0 {
        return Err(invalid("port 0"));
    }
    let host = host
        .strip_prefix('[')
        .and_then(|h| h.strip_suffix(']'))
        .unwrap_or(host);
    if host.is_empty()
        || host
            .chars()
            .any(|c| !(c.is_ascii_alphanumeric() || matches!(c, '.' | '-' | '_' | ':')))
    {
        return Err(invalid("the host is not a host name or an IP address"));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broker_addresses_are_host_and_port() {
        for ok in ["127.0.0.1:9092", "kafka-1.example.com:9093", "[::1]:9092"] {
            assert!(check_broker_address(ok).is_ok(), "{ok}");
        }
        for bad in [
            "localhost",
            "h:0",
            "h:99999",
            ":9092",
            "a b:1",
            "h:x",
            "h\n:1",
        ] {
            assert!(check_broker_address(bad).is_err(), "{bad:?}");
        }
    }
}
