//! Redis links (`type = "redis"`): a topic channel is a pub/sub channel (at
//! most once); a queue channel is a stream read by a consumer group with
//! XREADGROUP and settled with XACK (at least once). An entry not
//! acknowledged is taken over by any consumer of the group once it has been
//! idle for `claim_after` (after a crash, say), and Redis counts its
//! deliveries (the attempt). A nack sets the entry's idle time so that it
//! becomes due after the nack's delay (at most `claim_after`), to whichever
//! consumer looks first; a delivery held longer is kept fresh the same way.
//!
//! Commands go through a connection manager that reconnects on its own; each
//! subscription has its own connection (reads block) and re-subscribes after
//! the server comes back. While the server is away, a publish fails fast.

use super::tls::TlsFiles;
use super::{
    Acknowledge, Broker, BrokerError, ChannelNames, Connectivity, ConnectivityState, Delivery,
    Invalid, MakeBroker, NothingToSettle, SubscribeMode, Subscription, check_batch, check_name,
    check_publish_timeout, check_redelivery_timeout, names, redact_url,
};
use crate::cloudevents::ContentMode;
use crate::cloudevents::Event;
use crate::cloudevents::inbound::{self, Malformed, Received};
use crate::cloudevents::json;
use crate::cloudevents::redis::{DATA_FIELD, decode_fields, encode_fields, structured_fields};
use async_trait::async_trait;
use futures::StreamExt as _;
use redis::aio::{ConnectionManager, ConnectionManagerConfig};
use serde::Deserialize;
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::{Arc, Mutex};
use std::time::{Duration, Instant};

/// Makes Redis links.
pub struct MakeRedis;

/// `[messaging_link.<name>]` settings of a Redis link.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct RedisSettings {
    /// `redis://[user:password@]host:port[/db]`, or `rediss://` for TLS.
    #[serde(default = "default_url")]
    pub url: String,
    /// `rediss://`: the CA (PEM) that signed the server's certificate, if not a system root.
    pub ca_file: Option<PathBuf>,
    /// `rediss://`: a client certificate (PEM) for mutual TLS, with `key_file`.
    pub cert_file: Option<PathBuf>,
    /// `rediss://`: the client certificate's private key (PEM).
    pub key_file: Option<PathBuf>,
    /// What the TLS files hold, read by `check`.
    #[serde(skip)]
    pub tls_files: TlsFiles,
    /// How stream entries are written: `binary` (a `ce-` field per attribute)
    /// or `structured` (the JSON format in `data`). Pub/sub is always structured.
    #[serde(default)]
    pub content_mode: ContentMode,
    /// How long a publish may take before it fails.
    #[serde(default = "super::default_publish_timeout", with = "humantime_serde")]
    pub publish_timeout: Duration,
    /// How long an unacknowledged stream entry waits before another consumer
    /// of its group takes it over.
    #[serde(default = "default_claim_after", with = "humantime_serde")]
    pub claim_after: Duration,
    /// Entries fetched per read.
    #[serde(default = "default_batch")]
    pub batch: usize,
}

fn default_url() -> String {
    "redis://127.0.0.1:6379".into()
}
fn default_claim_after() -> Duration {
    Duration::from_secs(30)
}
fn default_batch() -> usize {
    16
}

/// How long one blocking read waits before checking for claims and stops.
const BLOCK: Duration = Duration::from_millis(1000);

#[async_trait]
impl MakeBroker for MakeRedis {
    const TYPE: &'static str = "redis";
    type Settings = RedisSettings;

    fn check(s: &mut RedisSettings, config_dir: &Path) -> Result<(), Invalid> {
        check_url(&s.url)?;
        check_publish_timeout(s.publish_timeout)?;
        check_batch(s.batch)?;
        check_redelivery_timeout("claim_after", s.claim_after)?;
        s.tls_files = TlsFiles::read(
            config_dir,
            &mut s.ca_file,
            &mut s.cert_file,
            &mut s.key_file,
        )?
        .for_url(s.url.starts_with("rediss://"), "rediss://")?;
        Ok(())
    }

    fn check_channel(_: &RedisSettings, c: &ChannelNames) -> Result<(), Invalid> {
        check_name(
            "address",
            c.address,
            names::redis_key(c.address, "a Redis key"),
        )?;
        if let Some(group) = c.group {
            check_name(
                "group",
                group,
                names::redis_key(group, "a Redis consumer group"),
            )?;
        }
        Ok(())
    }

    fn describe(s: &RedisSettings) -> String {
        format!(
            "redis {} (topics: pub/sub, at most once; queues: streams + consumer groups, at least once)",
            redact_url(&s.url)
        )
    }

    async fn connect(&self, name: &str, s: &RedisSettings) -> anyhow::Result<Arc<dyn Broker>> {
        let client = if s.url.starts_with("rediss://") {
            let tls = &s.tls_files;
            redis::Client::build_with_tls(
                s.url.as_str(),
                redis::TlsCertificates {
                    client_tls: tls.client.clone().map(|(client_cert, client_key)| {
                        redis::ClientTlsConfig {
                            client_cert,
                            client_key,
                        }
                    }),
                    root_cert: tls.ca.clone(),
                },
            )?
        } else {
            redis::Client::open(s.url.as_str())?
        };
        let commands = manager(&client, s.publish_timeout)
            .await
            .inspect_err(|e| tracing::warn!(link = %name, url = %redact_url(&s.url), "Redis not reachable yet ({e}); retrying on use"))
            .ok();
        let connectivity = Arc::new(Connectivity::default());
        if commands.is_some() {
            connectivity.connected();
        }
        Ok(Arc::new(RedisBroker {
            name: name.into(),
            connectivity,
            client,
            settings: s.clone(),
            commands: tokio::sync::OnceCell::new_with(commands),
            kinds: Mutex::default(),
        }))
    }
}

/// Parses `url` as the client will on connecting, and checks what it lets
/// through: a port other than 0, and no `#insecure` (certificates are
/// always verified).
fn check_url(url: &str) -> Result<(), Invalid> {
    use redis::{ConnectionAddr, IntoConnectionInfo as _};
    let info = url.into_connection_info().map_err(|e| {
        Invalid::new(
            "url",
            format!(
                "`{}` is not a Redis URL: {e} (expected redis://[user:password@]host:port[/db], rediss:// or unix://)",
                redact_url(url)
            ),
        )
    })?;
    match info.addr() {
        ConnectionAddr::Tcp(_, 0) | ConnectionAddr::TcpTls { port: 0, .. } => {
            Err(Invalid::new("url", "has port 0"))
        }
        ConnectionAddr::TcpTls { insecure: true, .. } => Err(Invalid::new(
            "url",
            "`#insecure` would skip verifying the server's certificate, which this provider does not do; give the CA as `ca_file`",
        )),
        _ => Ok(()),
    }
}

/// A reconnecting command connection, or why there is none (e.g. refused,
/// or a TLS handshake that failed).
async fn manager(client: &redis::Client, timeout: Duration) -> Result<ConnectionManager, String> {
    let config = ConnectionManagerConfig::new()
        .set_connection_timeout(Some(timeout))
        .set_response_timeout(Some(BLOCK + timeout))
        .set_number_of_retries(1);
    match tokio::time::timeout(timeout, client.get_connection_manager_with_config(config)).await {
        Ok(Ok(manager)) => Ok(manager),
        Ok(Err(e)) => Err(e.to_string()),
        Err(_) => Err("connecting timed out".into()),
    }
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Kind {
    PubSub,
    Stream,
}

struct RedisBroker {
    name: String,
    /// Told by publishes, reads and pub/sub connections how they fare.
    connectivity: Arc<Connectivity>,
    client: redis::Client,
    settings: RedisSettings,
    /// Created on first success, then reconnecting on its own; read
    /// without a lock on every publish once made.
    commands: tokio::sync::OnceCell<ConnectionManager>,
    /// What each declared address is.
    kinds: Mutex<HashMap<String, Kind>>,
}

/// Whether Redis may take the same command later: the connection is gone,
/// or the server says so (still loading its data after a restart, a
/// failover under way).
fn answers_later(e: &redis::RedisError) -> bool {
    use redis::{ErrorKind, ServerErrorKind as Server};
    e.is_io_error()
        || e.is_connection_dropped()
        || e.is_connection_refusal()
        || e.is_timeout()
        || matches!(
            e.kind(),
            ErrorKind::Server(
                Server::BusyLoading
                    | Server::TryAgain
                    | Server::ClusterDown
                    | Server::MasterDown
                    | Server::ReadOnly
            )
        )
}

fn unavailable(link: &str, e: impl std::fmt::Display) -> BrokerError {
    BrokerError::Unavailable(format!("Redis link `{link}`: {e}"))
}

impl RedisBroker {
    async fn conn(&self) -> Result<ConnectionManager, BrokerError> {
        let commands = self
            .commands
            .get_or_try_init(|| async {
                let commands = manager(&self.client, self.settings.publish_timeout)
                    .await
                    .inspect_err(|_| self.connectivity.lost())
                    .map_err(|e| unavailable(&self.name, e))?;
                self.connectivity.connected();
                Ok::<_, BrokerError>(commands)
            })
            .await?;
        Ok(commands.clone())
    }

    fn declare(&self, address: &str, kind: Kind) -> Result<(), BrokerError> {
        let mut kinds = self.kinds.lock().unwrap();
        match kinds.insert(address.to_string(), kind) {
            Some(old) if old != kind => Err(BrokerError::Other(format!(
                "`{address}` is used both as a topic (pub/sub) and as a queue (stream) on Redis link `{}`",
                self.name
            ))),
            _ => Ok(()),
        }
    }

    /// What a declared address is; an undeclared one is refused, since
    /// guessing pub/sub for a queue would drop its events.
    fn kind(&self, address: &str) -> Result<Kind, BrokerError> {
        self.kinds
            .lock()
            .unwrap()
            .get(address)
            .copied()
            .ok_or_else(|| {
                BrokerError::Other(format!(
                    "`{address}` is not declared on Redis link `{}` as a queue (stream) or a topic (pub/sub)",
                    self.name
                ))
            })
    }

    async fn ensure_group(&self, address: &str, group: &str) -> Result<(), BrokerError> {
        let mut conn = self.conn().await?;
        let created: redis::RedisResult<()> = redis::cmd("XGROUP")
            .arg("CREATE")
            .arg(address)
            .arg(group)
            .arg("$")
            .arg("MKSTREAM")
            .query_async(&mut conn)
            .await;
        match created {
            Err(e) if e.code() == Some("BUSYGROUP") => Ok(()),
            other => other.map_err(|e| unavailable(&self.name, e)),
        }
    }
}

#[async_trait]
impl Broker for RedisBroker {
    fn connectivity(&self) -> ConnectivityState {
        self.connectivity.state()
    }

    fn max_payload(&self) -> Option<usize> {
        Some(512 * 1024 * 1024) // Redis's largest string
    }

    async fn publish(&self, address: &str, event: &Event) -> Result<(), BrokerError> {
        let kind = self.kind(address)?;
        let mut conn = self.conn().await?;
        let encoding = crate::stages::start();
        let mut cmd;
        match kind {
            Kind::PubSub => {
                cmd = redis::cmd("PUBLISH");
                cmd.arg(address).arg(json::encode(event));
            }
            Kind::Stream => {
                let fields = match self.settings.content_mode {
                    ContentMode::Binary => encode_fields(event),
                    ContentMode::Structured => structured_fields(event),
                };
                cmd = redis::cmd("XADD");
                cmd.arg(address).arg("*");
                for (k, v) in fields {
                    cmd.arg(k).arg(v);
                }
            }
        }
        crate::stages::record(crate::stages::Stage::Encode, encoding);
        let timeout = self.settings.publish_timeout;
        crate::timeout::timeout(timeout, cmd.query_async::<redis::Value>(&mut conn))
            .await
            .map_err(|_| BrokerError::unconfirmed("Redis", timeout))?
            .map(|_| self.connectivity.connected())
            .map_err(|e| {
                if answers_later(&e) {
                    self.connectivity.lost();
                    unavailable(&self.name, e)
                } else {
                    BrokerError::DeliveryFailed(e.to_string())
                }
            })
    }

    async fn declare_queue(&self, address: &str, group: &str) -> Result<(), BrokerError> {
        self.declare(address, Kind::Stream)?;
        self.ensure_group(address, group).await
    }

    async fn declare_topic(&self, address: &str) -> Result<(), BrokerError> {
        self.declare(address, Kind::PubSub)
    }

    async fn subscribe(
        &self,
        address: &str,
        mode: SubscribeMode,
    ) -> Result<Box<dyn Subscription>, BrokerError> {
        let origin = (self.name.clone(), address.to_string());
        match (mode, self.kind(address)?) {
            (SubscribeMode::Topic, Kind::PubSub) => {
                let mut sub = PubSubSubscription {
                    client: self.client.clone(),
                    connectivity: self.connectivity.clone(),
                    origin,
                    stream: None,
                    stopping: false,
                };
                sub.connect()
                    .await
                    .inspect_err(|_| self.connectivity.lost())
                    .map_err(|e| unavailable(&self.name, e))?;
                self.connectivity.connected();
                Ok(Box::new(sub))
            }
            (SubscribeMode::Topic, Kind::Stream) => {
                // Watching a queue: read the stream without a group, from now on.
                let mut conn = manager(&self.client, self.settings.publish_timeout)
                    .await
                    .map_err(|e| unavailable(&self.name, e))?;
                // Start after the newest entry now, so nothing published after
                // this call is missed (`$` would mean "after the first read").
                let newest: redis::streams::StreamRangeReply = redis::cmd("XREVRANGE")
                    .arg(address)
                    .arg("+")
                    .arg("-")
                    .arg("COUNT")
                    .arg(1)
                    .query_async(&mut conn)
                    .await
                    .map_err(|e| unavailable(&self.name, e))?;
                let last = newest
                    .ids
                    .first()
                    .map_or_else(|| "0-0".to_string(), |id| id.id.clone());
                Ok(Box::new(StreamWatch {
                    conn,
                    origin,
                    last,
                    buffer: VecDeque::new(),
                    stopping: false,
                }))
            }
            (SubscribeMode::Queue { group }, _) => {
                self.declare(address, Kind::Stream)?;
                self.ensure_group(address, &group).await?;
                let conn = manager(&self.client, self.settings.publish_timeout)
                    .await
                    .map_err(|e| unavailable(&self.name, e))?;
                Ok(Box::new(GroupReader {
                    connectivity: self.connectivity.clone(),
                    reads: GroupReads {
                        conn,
                        stream: origin.1.clone(),
                        group,
                        consumer: format!(
                            "trigger-messaging-{}-{}",
                            std::process::id(),
                            uuid::Uuid::new_v4().simple()
                        ),
                        batch: self.settings.batch,
                        claim_after: self.settings.claim_after,
                    },
                    origin,
                    last_claim: Instant::now(),
                    claim_cursor: None,
                    reading: None,
                    buffer: VecDeque::new(),
                    stopping: false,
                    failure: None,
                }))
            }
        }
    }
}

struct PubSubSubscription {
    client: redis::Client,
    connectivity: Arc<Connectivity>,
    origin: (String, String),
    stream: Option<redis::aio::PubSubStream>,
    /// Set by `stop`.
    stopping: bool,
}

impl PubSubSubscription {
    async fn connect(&mut self) -> redis::RedisResult<()> {
        let mut pubsub = self.client.get_async_pubsub().await?;
        pubsub.subscribe(&self.origin.1).await?;
        self.stream = Some(pubsub.into_on_message());
        Ok(())
    }
}

impl PubSubSubscription {
    /// A pub/sub message (payload only) under the one rule for what comes
    /// in (see [`inbound`]).
    fn delivery(&self, msg: &redis::Msg) -> Delivery {
        let (link, channel) = (&self.origin.0, &self.origin.1);
        let payload = msg.get_payload_bytes();
        let event = crate::stages::timed(crate::stages::Stage::Decode, || {
            inbound::admit(json::decode_or_wrap(payload, (link, channel)), || {
                Received {
                    link,
                    address: channel,
                    metadata: Vec::new(),
                    content_type: None,
                    body: payload,
                }
            })
        });
        Delivery::received(event, 1, Box::new(NothingToSettle))
    }
}

#[async_trait]
impl Subscription for PubSubSubscription {
    async fn next(&mut self) -> Option<Delivery> {
        if self.stopping {
            // What the client already received, then the end.
            let msg = futures::FutureExt::now_or_never(self.stream.as_mut()?.next()).flatten()?;
            return Some(self.delivery(&msg));
        }
        loop {
            if let Some(stream) = &mut self.stream
                && let Some(msg) = stream.next().await
            {
                return Some(self.delivery(&msg));
            }
            // The connection ended: re-subscribe once the server is back.
            if self.stream.take().is_some() {
                self.connectivity.lost();
                tracing::warn!(link = %self.origin.0, channel = %self.origin.1, "Redis pub/sub connection lost; re-subscribing");
            }
            tokio::time::sleep(Duration::from_millis(500)).await;
            if self.connect().await.is_ok() {
                self.connectivity.connected();
                tracing::info!(link = %self.origin.0, channel = %self.origin.1, "Redis pub/sub re-subscribed");
            }
        }
    }

    async fn stop(&mut self) {
        self.stopping = true;
    }
}

/// Stream entries as (id, fields).
/// A stream entry: its id and its fields, as bytes and in order (field
/// names need not be UTF-8, and may repeat).
type Entry = (String, Vec<(Vec<u8>, Vec<u8>)>);

/// Entries read from raw replies: redis-rs' typed stream replies require
/// field names to be UTF-8, and one entry whose names are not would fail
/// every read of the stream, for good.
mod raw {
    use super::Entry;
    use redis::Value;

    fn bytes(value: &Value) -> Option<Vec<u8>> {
        redis::from_redis_value_ref::<Vec<u8>>(value).ok()
    }

    /// `[id, [field, value, ...]]`; `None` for an entry deleted since it was
    /// delivered (nil).
    fn entry(value: Value) -> Option<Entry> {
        let Value::Array(parts) = value else {
            return None;
        };
        let mut parts = parts.into_iter();
        let id = String::from_utf8(bytes(&parts.next()?)?).ok()?;
        let fields = match parts.next() {
            Some(Value::Array(items)) => items
                .chunks_exact(2)
                .filter_map(|pair| Some((bytes(&pair[0])?, bytes(&pair[1])?)))
                .collect(),
            Some(Value::Map(pairs)) => pairs
                .iter()
                .filter_map(|(k, v)| Some((bytes(k)?, bytes(v)?)))
                .collect(),
            _ => Vec::new(),
        };
        Some((id, fields))
    }

    /// An XCLAIM reply: `[entry, ...]`.
    pub(super) fn claimed(reply: Value) -> Vec<Entry> {
        match reply {
            Value::Array(items) => items.into_iter().filter_map(entry).collect(),
            _ => Vec::new(),
        }
    }

    /// An XREAD/XREADGROUP reply: `[[stream, [entry, ...]], ...]`, or a map
    /// of streams to entries (RESP3); nil when nothing came.
    pub(super) fn read(reply: Value) -> Vec<Entry> {
        let streams: Vec<Value> = match reply {
            Value::Array(streams) => streams
                .into_iter()
                .filter_map(|stream| match stream {
                    Value::Array(pair) => pair.into_iter().nth(1),
                    _ => None,
                })
                .collect(),
            Value::Map(streams) => streams.into_iter().map(|(_, entries)| entries).collect(),
            _ => Vec::new(),
        };
        streams.into_iter().flat_map(claimed).collect()
    }
}

/// The event in a stream entry, under the one rule for what comes in (see
/// [`inbound`]).
fn event_of(origin: &(String, String), fields: &[(Vec<u8>, Vec<u8>)]) -> Result<Event, Malformed> {
    crate::stages::timed(crate::stages::Stage::Decode, || admitted(origin, fields))
}

fn admitted(origin: &(String, String), fields: &[(Vec<u8>, Vec<u8>)]) -> Result<Event, Malformed> {
    inbound::admit(decode_fields(fields, (&origin.0, &origin.1)), || Received {
        link: &origin.0,
        address: &origin.1,
        metadata: fields
            .iter()
            .filter(|(name, _)| name != DATA_FIELD.as_bytes())
            .map(|(k, v)| (inbound::text(k).into_owned(), inbound::text(v).into_owned()))
            .collect(),
        content_type: None,
        body: fields
            .iter()
            .find(|(name, _)| name == DATA_FIELD.as_bytes())
            .map_or(&[], |(_, v)| v.as_slice()),
    })
}

struct StreamWatch {
    conn: ConnectionManager,
    origin: (String, String),
    last: String,
    buffer: VecDeque<Entry>,
    /// Set by `stop`: the buffer is handed out, nothing more is read.
    stopping: bool,
}

#[async_trait]
impl Subscription for StreamWatch {
    async fn next(&mut self) -> Option<Delivery> {
        loop {
            if let Some((id, fields)) = self.buffer.pop_front() {
                self.last = id;
                return Some(Delivery::received(
                    event_of(&self.origin, &fields),
                    1,
                    Box::new(NothingToSettle),
                ));
            }
            if self.stopping {
                return None;
            }
            let read: redis::RedisResult<redis::Value> = redis::cmd("XREAD")
                .arg("BLOCK")
                .arg(BLOCK.as_millis() as u64)
                .arg("STREAMS")
                .arg(&self.origin.1)
                .arg(&self.last)
                .query_async(&mut self.conn)
                .await;
            match read {
                Ok(reply) => self.buffer.extend(raw::read(reply)),
                Err(e) => {
                    tracing::debug!(link = %self.origin.0, stream = %self.origin.1, "Redis read failed: {e}");
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
            }
        }
    }

    async fn stop(&mut self) {
        self.stopping = true;
    }
}

/// Reads a stream as one consumer of a group. Each read runs as a task the
/// reader keeps, so that a `next` dropped mid-read loses nothing: the
/// entries it read are handed out by the next call.
struct GroupReader {
    origin: (String, String),
    connectivity: Arc<Connectivity>,
    reads: GroupReads,
    last_claim: Instant,
    /// Where the scan for due entries goes on, while more may be due.
    claim_cursor: Option<String>,
    /// The read under way.
    reading: Option<tokio::task::JoinHandle<redis::RedisResult<GroupRead>>>,
    buffer: VecDeque<(Entry, u32)>,
    /// Set by `stop`: nothing more is read; the buffer is handed out.
    stopping: bool,
    /// The last reason reading failed, logged once per reason.
    failure: Option<String>,
}

/// What one read of a group brought: entries with their attempts, and where
/// the scan for due entries goes on, when it is not over.
type GroupRead = (Vec<(Entry, u32)>, Option<String>);

/// What one read of a group needs.
#[derive(Clone)]
struct GroupReads {
    conn: ConnectionManager,
    stream: String,
    group: String,
    consumer: String,
    batch: usize,
    claim_after: Duration,
}

impl GroupReads {
    /// Takes over entries found due (idle for `claim_after`: their consumer
    /// is gone, or they were nacked), counting the delivery.
    async fn claim(&mut self, ids: &[String]) -> redis::RedisResult<Vec<Entry>> {
        let mut cmd = redis::cmd("XCLAIM");
        cmd.arg(&self.stream)
            .arg(&self.group)
            .arg(&self.consumer)
            .arg(0);
        for id in ids {
            cmd.arg(id);
        }
        Ok(raw::claimed(cmd.query_async(&mut self.conn).await?))
    }

    /// The delivery count of pending entries.
    async fn attempts(&mut self, entries: Vec<Entry>) -> redis::RedisResult<Vec<(Entry, u32)>> {
        let mut out = Vec::with_capacity(entries.len());
        for entry in entries {
            let pending: redis::Value = redis::cmd("XPENDING")
                .arg(&self.stream)
                .arg(&self.group)
                .arg(&entry.0)
                .arg(&entry.0)
                .arg(1)
                .query_async(&mut self.conn)
                .await?;
            let count = match pending {
                redis::Value::Array(rows) => match rows.into_iter().next() {
                    Some(redis::Value::Array(row)) => row
                        .get(3)
                        .and_then(|v| redis::from_redis_value_ref::<u32>(v).ok()),
                    _ => None,
                },
                _ => None,
            };
            out.push((entry, count.unwrap_or(1)));
        }
        Ok(out)
    }

    /// Due entries, scanning the pending list from `claim_from`, else new
    /// ones (blocking up to `BLOCK`). With the entries, where the scan of
    /// the pending list goes on, when it is not over.
    async fn read(mut self, claim_from: Option<String>) -> redis::RedisResult<GroupRead> {
        if let Some(from) = claim_from {
            let reply: redis::Value = redis::cmd("XAUTOCLAIM")
                .arg(&self.stream)
                .arg(&self.group)
                .arg(&self.consumer)
                .arg(u64::try_from(self.claim_after.as_millis()).unwrap_or(u64::MAX))
                .arg(from)
                .arg("COUNT")
                .arg(self.batch)
                .arg("JUSTID")
                .query_async(&mut self.conn)
                .await?;
            let (cursor, ids): (Option<String>, Vec<String>) = match reply {
                redis::Value::Array(parts) => (
                    parts
                        .first()
                        .and_then(|v| redis::from_redis_value_ref::<String>(v).ok())
                        .filter(|c| c != "0-0"),
                    parts
                        .get(1)
                        .and_then(|v| redis::from_redis_value_ref(v).ok())
                        .unwrap_or_default(),
                ),
                _ => (None, Vec::new()),
            };
            if !ids.is_empty() || cursor.is_some() {
                let claimed = self.claim(&ids).await?;
                return Ok((self.attempts(claimed).await?, cursor));
            }
        }
        let reply: redis::Value = redis::cmd("XREADGROUP")
            .arg("GROUP")
            .arg(&self.group)
            .arg(&self.consumer)
            .arg("COUNT")
            .arg(self.batch)
            .arg("BLOCK")
            .arg(BLOCK.as_millis() as u64)
            .arg("STREAMS")
            .arg(&self.stream)
            .arg(">")
            .query_async(&mut self.conn)
            .await?;
        Ok((raw::read(reply).into_iter().map(|e| (e, 1)).collect(), None))
    }
}

struct StreamAck {
    conn: ConnectionManager,
    stream: String,
    group: String,
    consumer: String,
    id: String,
    claim_after: Duration,
}

impl StreamAck {
    /// Claims the entry for this consumer again without counting a
    /// delivery, with its idle time set to `idle`: it is due to any consumer
    /// of the group once it has been idle for `claim_after`.
    async fn set_idle(&self, idle: Duration) -> Result<(), BrokerError> {
        redis::cmd("XCLAIM")
            .arg(&self.stream)
            .arg(&self.group)
            .arg(&self.consumer)
            .arg(0)
            .arg(&self.id)
            .arg("IDLE")
            .arg(u64::try_from(idle.as_millis()).unwrap_or(u64::MAX))
            .arg("JUSTID")
            .query_async::<redis::Value>(&mut self.conn.clone())
            .await
            .map(drop)
            .map_err(|e| BrokerError::ConnectionLost(e.to_string()))
    }
}

#[async_trait]
impl Acknowledge for StreamAck {
    async fn ack(mut self: Box<Self>) -> Result<(), BrokerError> {
        redis::cmd("XACK")
            .arg(&self.stream)
            .arg(&self.group)
            .arg(&self.id)
            .query_async::<()>(&mut self.conn)
            .await
            .map_err(|e| BrokerError::ConnectionLost(e.to_string()))
    }

    /// Due again after `delay`, capped at `claim_after`.
    async fn nack(self: Box<Self>, delay: Duration) -> Result<(), BrokerError> {
        self.set_idle(self.claim_after.saturating_sub(delay)).await
    }

    fn redelivers(&self) -> bool {
        true
    }

    fn keep_alive_every(&self) -> Option<Duration> {
        Some(self.claim_after / 3)
    }

    async fn keep_alive(&self) -> Result<(), BrokerError> {
        self.set_idle(Duration::ZERO).await
    }
}

#[async_trait]
impl Subscription for GroupReader {
    async fn next(&mut self) -> Option<Delivery> {
        loop {
            if let Some(((id, fields), attempt)) = self.buffer.pop_front() {
                let ack = StreamAck {
                    conn: self.reads.conn.clone(),
                    stream: self.reads.stream.clone(),
                    group: self.reads.group.clone(),
                    consumer: self.reads.consumer.clone(),
                    id,
                    claim_after: self.reads.claim_after,
                };
                return Some(Delivery::received(
                    event_of(&self.origin, &fields),
                    attempt,
                    Box::new(ack),
                ));
            }
            let reading = match &mut self.reading {
                Some(reading) => reading,
                None if self.stopping => return None,
                None => {
                    // Due entries are looked for about once per blocking
                    // read, so that a nack's delay is kept to within a
                    // second, and again at once while more may be due.
                    let claim_from = self.claim_cursor.take().or_else(|| {
                        (self.last_claim.elapsed() >= self.reads.claim_after.min(BLOCK)).then(
                            || {
                                self.last_claim = Instant::now();
                                "0-0".to_string()
                            },
                        )
                    });
                    self.reading
                        .insert(tokio::spawn(self.reads.clone().read(claim_from)))
                }
            };
            let read = reading.await;
            self.reading = None;
            match read {
                Ok(Ok((entries, cursor))) => {
                    self.connectivity.connected();
                    self.failure = None;
                    self.buffer.extend(entries);
                    self.claim_cursor = cursor;
                }
                Ok(Err(e)) => {
                    if answers_later(&e) {
                        self.connectivity.lost();
                    }
                    let reason = e.to_string();
                    if self.failure.as_ref() != Some(&reason) {
                        tracing::warn!(link = %self.origin.0, stream = %self.origin.1, "Redis read failed ({reason}); retrying");
                        self.failure = Some(reason);
                    }
                    if e.code() == Some("NOGROUP") {
                        // The stream was deleted: recreate it and the group.
                        let _: redis::RedisResult<()> = redis::cmd("XGROUP")
                            .arg("CREATE")
                            .arg(&self.reads.stream)
                            .arg(&self.reads.group)
                            .arg("$")
                            .arg("MKSTREAM")
                            .query_async(&mut self.reads.conn)
                            .await;
                    }
                    tokio::time::sleep(Duration::from_millis(500)).await;
                }
                Err(e) => {
                    tracing::warn!(link = %self.origin.0, stream = %self.origin.1, "Redis read task failed: {e}")
                }
            }
        }
    }

    /// Reads nothing more; the read under way and the buffer still come out.
    async fn stop(&mut self) {
        self.stopping = true;
    }
}
