//! NATS links (`type = "nats"`): core NATS (a topic is a subject, a queue a
//! queue group; at most once), or with `jetstream = true` a stream per
//! address with explicit acks (a topic subscriber gets its own consumer, a
//! queue's consumers share one durable consumer; at least once). JetStream
//! counts deliveries (`num_delivered`, the attempt), takes a nack with a
//! delay, and is told a held delivery is still in progress. Its consumers
//! pull `batch` messages at a time, so that a subscription knows what it
//! holds: on stop, what was pulled but not started is handed back at once.
//!
//! The client connects at start and, if the server is not there yet, keeps
//! trying in the background; it reconnects with backoff and re-subscribes on
//! its own. While it is disconnected a publish fails at once with
//! `service-unavailable`.

use super::tls::TlsFiles;
use super::{
    Acknowledge, Broker, BrokerError, ChannelNames, Connectivity, ConnectivityState, Delivery,
    Invalid, MakeBroker, NothingToSettle, SubscribeMode, Subscription, check_batch, check_name,
    check_publish_timeout, check_redelivery_timeout, names, redact_url, require,
};
use crate::cloudevents::ContentMode;
use crate::cloudevents::Event;
use crate::cloudevents::inbound::{self, Malformed, Received};
use crate::cloudevents::nats::{decode, encode};
use async_nats::header::UNPARSED_HEADERS;
use async_nats::jetstream::{self, consumer::pull, stream};
use async_nats::{HeaderMap, connection::State};
use async_trait::async_trait;
use futures::StreamExt as _;
use serde::Deserialize;
use std::collections::HashSet;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

/// Makes NATS links.
pub struct MakeNats;

/// `[messaging_link.<name>]` settings of a NATS link.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct NatsSettings {
    /// Server URL(s), comma-separated.
    #[serde(default = "default_url")]
    pub url: String,
    /// User name (with `password`).
    pub user: Option<String>,
    /// Password (with `user`).
    pub password: Option<String>,
    /// Token authentication.
    pub token: Option<String>,
    /// A `.creds` file (JWT + NKey).
    pub credentials_file: Option<PathBuf>,
    /// Require TLS (also implied by a `tls://` URL or any TLS file).
    #[serde(default)]
    pub tls: bool,
    /// The CA (PEM) that signed the server's certificate, if not a system root.
    pub ca_file: Option<PathBuf>,
    /// A client certificate (PEM) for mutual TLS, with `key_file`.
    pub cert_file: Option<PathBuf>,
    /// The client certificate's private key (PEM).
    pub key_file: Option<PathBuf>,
    /// What the TLS files hold, read by `check`.
    #[serde(skip)]
    pub tls_files: TlsFiles,
    /// How events are written: `binary` (ce- headers) or `structured` (JSON).
    #[serde(default)]
    pub content_mode: ContentMode,
    /// How long a publish may take before it fails.
    #[serde(default = "super::default_publish_timeout", with = "humantime_serde")]
    pub publish_timeout: Duration,
    /// Use JetStream: at-least-once delivery with explicit acks.
    #[serde(default)]
    pub jetstream: bool,
    /// JetStream: how long an unacknowledged delivery waits before redelivery.
    #[serde(default = "default_ack_wait", with = "humantime_serde")]
    pub ack_wait: Duration,
    /// JetStream: streams are named this prefix + the address (dots become `_`).
    #[serde(default = "default_stream_prefix")]
    pub stream_prefix: String,
    /// JetStream: messages a subscription pulls at a time.
    #[serde(default = "default_batch")]
    pub batch: usize,
}

fn default_url() -> String {
    "nats://127.0.0.1:4222".into()
}
fn default_ack_wait() -> Duration {
    Duration::from_secs(30)
}
fn default_stream_prefix() -> String {
    "MESSAGING_".into()
}
fn default_batch() -> usize {
    32
}

/// How long one pull request waits for messages before the next one.
const PULL_EXPIRES: Duration = Duration::from_secs(1);

#[async_trait]
impl MakeBroker for MakeNats {
    const TYPE: &'static str = "nats";
    type Settings = NatsSettings;

    fn check(s: &mut NatsSettings, config_dir: &Path) -> Result<(), Invalid> {
        check_server_urls(&s.url)?;
        require(
            s.user.is_some() == s.password.is_some(),
            if s.user.is_some() { "user" } else { "password" },
            "`user` and `password` go together",
        )?;
        if let Some(file) = &mut s.credentials_file {
            *file = config_dir.join(&*file);
            check_credentials_file(file)?;
        }
        check_publish_timeout(s.publish_timeout)?;
        check_batch(s.batch)?;
        check_redelivery_timeout("ack_wait", s.ack_wait)?;
        check_name(
            "stream_prefix",
            &s.stream_prefix,
            names::jetstream_name_part(&s.stream_prefix).and_then(|()| {
                if s.stream_prefix.len() > MAX_STREAM_PREFIX {
                    Err(format!("may be at most {MAX_STREAM_PREFIX} characters"))
                } else {
                    Ok(())
                }
            }),
        )?;
        s.tls_files = TlsFiles::read(
            config_dir,
            &mut s.ca_file,
            &mut s.cert_file,
            &mut s.key_file,
        )?;
        Ok(())
    }

    fn check_channel(s: &NatsSettings, c: &ChannelNames) -> Result<(), Invalid> {
        let at_address = |rule| check_name("address", c.address, rule);
        at_address(names::nats_subject(c.address, c.published))?;
        if s.jetstream {
            let stream = stream_name(&s.stream_prefix, c.address);
            at_address(names::jetstream_derived_name("stream", &stream))?;
        }
        if let Some(group) = c.group {
            check_name("group", group, names::nats_queue_group(group))?;
            if s.jetstream {
                let consumer = js_name(group);
                check_name(
                    "group",
                    group,
                    names::jetstream_derived_name("consumer", &consumer),
                )?;
            }
        }
        Ok(())
    }

    fn describe(s: &NatsSettings) -> String {
        let mode = if s.jetstream {
            "JetStream, at least once"
        } else {
            "core, at most once"
        };
        format!(
            "nats {} ({mode}, {:?} mode)",
            redact_url(&s.url),
            s.content_mode
        )
    }

    async fn connect(&self, name: &str, s: &NatsSettings) -> anyhow::Result<Arc<dyn Broker>> {
        let link = name.to_string();
        // A failing connection is logged once per distinct reason, not on every retry.
        let last_failure = Arc::new(Mutex::new(None::<String>));
        let connectivity = Arc::new(Connectivity::default());
        let tracked = connectivity.clone();
        let mut options = async_nats::ConnectOptions::new()
            .name(format!("trigger-messaging/{name}"))
            .retry_on_initial_connect()
            .max_reconnects(None)
            .connection_timeout(s.publish_timeout)
            .event_callback(move |event| {
                let (link, last_failure, tracked) =
                    (link.clone(), last_failure.clone(), tracked.clone());
                async move {
                    match event {
                        async_nats::Event::Connected => {
                            tracked.connected();
                            *last_failure.lock().unwrap() = None;
                            tracing::info!(link = %link, "NATS link connected")
                        }
                        async_nats::Event::Disconnected => {
                            tracked.lost();
                            tracing::warn!(link = %link, "NATS link disconnected; reconnecting")
                        }
                        async_nats::Event::ClientError(e) => {
                            let e = e.to_string();
                            let mut last = last_failure.lock().unwrap();
                            if last.as_ref() != Some(&e) {
                                // async-nats gives the cause (e.g. a certificate
                                // it does not trust) only in its debug log.
                                tracing::warn!(link = %link, "NATS link cannot connect ({e}); retrying (RUST_LOG=async_nats=debug shows why)");
                                *last = Some(e);
                            }
                        }
                        other => tracing::info!(link = %link, "NATS link: {other}"),
                    }
                }
            });
        if let (Some(user), Some(password)) = (&s.user, &s.password) {
            options = options.user_and_password(user.clone(), password.clone());
        }
        if let Some(token) = &s.token {
            options = options.token(token.clone());
        }
        if let Some(file) = &s.credentials_file {
            options = options.credentials_file(file).await?;
        }
        if let Some(ca) = &s.ca_file {
            options = options.add_root_certificates(ca.clone());
        }
        if let (Some(cert), Some(key)) = (&s.cert_file, &s.key_file) {
            options = options.add_client_certificate(cert.clone(), key.clone());
        }
        options = options.require_tls(s.tls || s.tls_files.given_key().is_some());
        let client = options.connect(server_urls(&s.url)).await?;
        // Wait briefly for the first connection, so that a server that is up
        // is used from the first event; one that is down does not stop the start.
        for _ in 0..50 {
            if client.connection_state() == State::Connected {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if client.connection_state() == State::Connected {
            connectivity.connected();
        } else {
            tracing::warn!(link = %name, url = %redact_url(&s.url), "NATS server not reachable yet; retrying in the background");
        }
        let js = s.jetstream.then(|| jetstream::new(client.clone()));
        Ok(Arc::new(NatsBroker {
            name: name.into(),
            client,
            connectivity,
            js,
            settings: s.clone(),
            streams: Mutex::default(),
            informed: AtomicBool::new(false),
        }))
    }
}

struct NatsBroker {
    name: String,
    client: async_nats::Client,
    connectivity: Arc<Connectivity>,
    js: Option<jetstream::Context>,
    settings: NatsSettings,
    /// Addresses whose stream is known to exist.
    streams: Mutex<HashSet<String>>,
    /// Whether a server has told its limits (`INFO`): until then the
    /// client's limit is its own default, not the server's.
    informed: AtomicBool,
}

/// The longest `stream_prefix`: it leaves room for the address within
/// JetStream's 255-character stream names.
const MAX_STREAM_PREFIX: usize = 64;

/// The server URLs of a `url` setting: comma-separated, spaces around
/// commas allowed.
fn server_urls(url: &str) -> Vec<&str> {
    url.split(',').map(str::trim).collect()
}

/// Checks every URL of `url` as the client will parse it on connecting,
/// plus what it lets through: a host, a port other than 0, and no mix of
/// WebSocket and plain URLs (which the client refuses).
fn check_server_urls(url: &str) -> Result<(), Invalid> {
    let mut websocket = None;
    for (i, one) in server_urls(url).into_iter().enumerate() {
        let which = format!("URL {} (`{}`)", i + 1, redact_url(one));
        if one.is_empty() {
            return Err(Invalid::new(
                "url",
                format!(
                    "{which} is empty: give `nats://host:port`, comma-separated for several servers"
                ),
            ));
        }
        let addr: async_nats::ServerAddr = one.parse().map_err(|e: std::io::Error| {
            Invalid::new(
                "url",
                format!("{which}: {e} (expected nats://, tls://, ws:// or wss://host:port)"),
            )
        })?;
        require(
            !addr.host().is_empty(),
            "url",
            &format!("{which} has no host"),
        )?;
        require(addr.port() != 0, "url", &format!("{which} has port 0"))?;
        if *websocket.get_or_insert(addr.is_websocket()) != addr.is_websocket() {
            return Err(Invalid::new(
                "url",
                "mixes WebSocket (ws://, wss://) and plain (nats://, tls://) URLs, which the client refuses",
            ));
        }
    }
    Ok(())
}

/// Reads a `.creds` file and parses it as the client will (a user JWT and
/// an NKey seed), so that a wrong file is reported at load.
fn check_credentials_file(file: &Path) -> Result<(), Invalid> {
    let text = std::fs::read_to_string(file).map_err(|e| {
        Invalid::new(
            "credentials_file",
            format!("cannot read `{}`: {e}", file.display()),
        )
    })?;
    async_nats::ConnectOptions::with_credentials(&text).map_err(|e| {
        Invalid::new(
            "credentials_file",
            format!(
                "`{}` is not a NATS credentials file (a user JWT and an NKey seed, as `nsc` writes them): {e}",
                file.display()
            ),
        )
    })?;
    Ok(())
}

/// The stream an address's events are kept in, on JetStream.
fn stream_name(prefix: &str, address: &str) -> String {
    format!("{prefix}{}", js_name(address))
}

/// JetStream names may not hold `.`, `*`, `>`, spaces or path separators.
fn js_name(s: &str) -> String {
    s.chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect()
}

impl NatsBroker {
    fn check_connected(&self) -> Result<(), BrokerError> {
        match self.client.connection_state() {
            State::Connected => Ok(()),
            state => Err(BrokerError::Unavailable(format!(
                "NATS link `{}` is not connected ({state:?})",
                self.name
            ))),
        }
    }

    /// Makes sure the address's stream exists (publishing to a subject
    /// without one fails).
    async fn stream(&self, js: &jetstream::Context, address: &str) -> Result<(), BrokerError> {
        self.source(js, address, None).stream().await?;
        self.streams.lock().unwrap().insert(address.to_string());
        Ok(())
    }

    /// Where a subscription to `address` pulls from: the group's durable
    /// consumer, or (no group) a consumer of its own that sees new messages.
    fn source(&self, js: &jetstream::Context, address: &str, group: Option<&str>) -> JsSource {
        let name = stream_name(&self.settings.stream_prefix, address);
        let base = pull::Config {
            filter_subject: address.to_string(),
            ack_policy: jetstream::consumer::AckPolicy::Explicit,
            ack_wait: self.settings.ack_wait,
            ..Default::default()
        };
        let consumer = match group {
            Some(group) => pull::Config {
                durable_name: Some(js_name(group)),
                ..base
            },
            None => pull::Config {
                deliver_policy: jetstream::consumer::DeliverPolicy::New,
                inactive_threshold: Duration::from_secs(60),
                ..base
            },
        };
        JsSource {
            js: js.clone(),
            stream: stream::Config {
                name,
                subjects: vec![address.to_string()],
                ..Default::default()
            },
            consumer,
        }
    }
}

/// A JetStream consumer's stream and settings, kept so that a subscription
/// can create the consumer again when the server lost it.
#[derive(Clone)]
struct JsSource {
    js: jetstream::Context,
    stream: stream::Config,
    consumer: pull::Config,
}

impl JsSource {
    async fn stream(&self) -> Result<stream::Stream, BrokerError> {
        self.js
            .get_or_create_stream(self.stream.clone())
            .await
            .map_err(|e| {
                BrokerError::Unavailable(format!(
                    "JetStream stream `{}` for `{}`: {e}",
                    self.stream.name, self.consumer.filter_subject
                ))
            })
    }

    async fn consumer(&self) -> Result<jetstream::consumer::PullConsumer, BrokerError> {
        let stream = self.stream().await?;
        match &self.consumer.durable_name {
            Some(name) => {
                stream
                    .get_or_create_consumer(name, self.consumer.clone())
                    .await
            }
            None => stream.create_consumer(self.consumer.clone()).await,
        }
        .map_err(|e| {
            BrokerError::Unavailable(format!(
                "JetStream consumer for `{}`: {e}",
                self.consumer.filter_subject
            ))
        })
    }
}

/// The binding's headers, moved into the client's map (not copied).
fn headers_of(pairs: Vec<(String, String)>) -> HeaderMap {
    let mut headers = HeaderMap::new();
    for (k, v) in pairs {
        headers.append(k, v);
    }
    headers
}

/// A message's headers, borrowed: what the binding reads.
fn pairs_of(headers: Option<&HeaderMap>) -> Vec<(&str, &str)> {
    let Some(headers) = headers else {
        return Vec::new();
    };
    headers
        .iter()
        .flat_map(|(k, values)| values.iter().map(move |v| (k.as_ref(), v.as_str())))
        .collect()
}

/// The event in a received message, under the one rule for what comes in
/// (see [`inbound`]). A header block the client could not parse arrives in
/// [`UNPARSED_HEADERS`] (our patch to async-nats, see `vendor/README.md`).
fn event_of(
    link: &str,
    subject: &str,
    headers: Option<&HeaderMap>,
    payload: &[u8],
) -> Result<Event, Malformed> {
    crate::stages::timed(crate::stages::Stage::Decode, || {
        admitted(link, subject, headers, payload)
    })
}

fn admitted(
    link: &str,
    subject: &str,
    headers: Option<&HeaderMap>,
    payload: &[u8],
) -> Result<Event, Malformed> {
    let pairs = pairs_of(headers);
    let decoded = match pairs.iter().find(|(name, _)| *name == UNPARSED_HEADERS) {
        Some(_) => Err(
            "its NATS headers do not parse (not UTF-8, or a line that is not `name: value`)"
                .to_string(),
        ),
        None => decode(&pairs, payload, (link, subject)),
    };
    inbound::admit(decoded, || Received {
        link,
        address: subject,
        content_type: pairs
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case("content-type"))
            .map(|(_, v)| *v),
        metadata: pairs
            .iter()
            .map(|(k, v)| (k.to_string(), v.to_string()))
            .collect(),
        body: payload,
    })
}

#[async_trait]
impl Broker for NatsBroker {
    fn connectivity(&self) -> ConnectivityState {
        self.connectivity.state()
    }

    /// Checked on every publish: an atomic read once a server has told its
    /// limit (the server's `INFO` is copied out only until then).
    fn max_payload(&self) -> Option<usize> {
        if !self.informed.load(Ordering::Relaxed) {
            if self.client.server_info().max_payload == 0 {
                return None;
            }
            self.informed.store(true, Ordering::Relaxed);
        }
        Some(self.client.max_payload())
    }

    async fn publish(&self, address: &str, event: &Event) -> Result<(), BrokerError> {
        self.check_connected()?;
        let (headers, body) = crate::stages::timed(crate::stages::Stage::Encode, || {
            let (headers, body) = encode(event, self.settings.content_mode);
            (headers_of(headers), body)
        });
        let timeout = self.settings.publish_timeout;
        let timed_out = || BrokerError::unconfirmed("NATS", timeout);
        match &self.js {
            None => {
                self.client
                    .publish_with_headers(address.to_string(), headers, body.into())
                    .await
                    .map_err(|e| BrokerError::ConnectionLost(e.to_string()))?;
                crate::timeout::timeout(timeout, self.client.flush())
                    .await
                    .map_err(|_| timed_out())?
                    .map_err(|e| BrokerError::ConnectionLost(e.to_string()))
            }
            Some(js) => {
                if !self.streams.lock().unwrap().contains(address) {
                    self.stream(js, address).await?;
                }
                let ack = js
                    .publish_with_headers(address.to_string(), headers, body.into())
                    .await
                    .map_err(|e| BrokerError::ConnectionLost(e.to_string()))?;
                let stored = crate::timeout::timeout(timeout, ack)
                    .await
                    .map_err(|_| timed_out())?;
                stored.map(drop).map_err(|e| {
                    use async_nats::jetstream::context::PublishErrorKind as Kind;
                    let text = format!("JetStream did not store the event: {e}");
                    match e.kind() {
                        Kind::TimedOut => BrokerError::TimedOut(text),
                        Kind::BrokenPipe => BrokerError::ConnectionLost(text),
                        Kind::StreamNotFound => {
                            // Gone from the server: made again by the next publish.
                            self.streams.lock().unwrap().remove(address);
                            BrokerError::Unavailable(text)
                        }
                        _ => BrokerError::DeliveryFailed(text),
                    }
                })
            }
        }
    }

    async fn declare_queue(&self, address: &str, group: &str) -> Result<(), BrokerError> {
        if let Some(js) = &self.js {
            self.check_connected()?;
            self.source(js, address, Some(group)).consumer().await?;
            self.streams.lock().unwrap().insert(address.to_string());
        }
        Ok(())
    }

    async fn subscribe(
        &self,
        address: &str,
        mode: SubscribeMode,
    ) -> Result<Box<dyn Subscription>, BrokerError> {
        let link = self.name.clone();
        let Some(js) = &self.js else {
            let subscriber = match mode {
                SubscribeMode::Topic => self.client.subscribe(address.to_string()).await,
                SubscribeMode::Queue { group } => {
                    self.client
                        .queue_subscribe(address.to_string(), group)
                        .await
                }
            }
            .map_err(|e| BrokerError::Unavailable(e.to_string()))?;
            // A round trip after the SUB: the server holds the interest before
            // this returns, so what is published next reaches it.
            if self.client.connection_state() == State::Connected {
                let _ =
                    tokio::time::timeout(self.settings.publish_timeout, self.client.flush()).await;
            }
            return Ok(Box::new(CoreSubscription { link, subscriber }));
        };
        self.check_connected()?;
        let group = match &mode {
            SubscribeMode::Queue { group } => Some(group.as_str()),
            SubscribeMode::Topic => None,
        };
        let source = self.source(js, address, group);
        let consumer = source.consumer().await?;
        Ok(Box::new(JsSubscription {
            link,
            source,
            consumer: Some(consumer),
            pulling: None,
            batch: None,
            size: self.settings.batch,
            ack_wait: self.settings.ack_wait,
            stopping: false,
            failure: None,
        }))
    }

    /// Makes sure the acknowledgements given so far reached the server
    /// before the connection closes (async-nats's `drain` only queues).
    async fn close(&self) {
        let timeout = self.settings.publish_timeout;
        if self.client.connection_state() == State::Connected
            && tokio::time::timeout(timeout, self.client.flush())
                .await
                .is_err()
        {
            tracing::warn!(link = %self.name, "NATS did not confirm the last acknowledgements within {}; they may be redelivered", humantime::format_duration(timeout));
        }
        let _ = self.client.drain().await;
    }
}

/// Dropping the subscriber unsubscribes it.
struct CoreSubscription {
    link: String,
    subscriber: async_nats::Subscriber,
}

#[async_trait]
impl Subscription for CoreSubscription {
    async fn next(&mut self) -> Option<Delivery> {
        let message = self.subscriber.next().await?;
        let event = event_of(
            &self.link,
            message.subject.as_str(),
            message.headers.as_ref(),
            &message.payload,
        );
        Some(Delivery::received(event, 1, Box::new(NothingToSettle)))
    }

    /// Unsubscribes and drains: what the server sent before it took the
    /// unsubscription still comes out, then the subscription ends, so once
    /// it has ended no later message can reach it (a reload subscribes anew
    /// on another connection only then).
    async fn stop(&mut self) {
        let _ = self.subscriber.drain().await;
    }
}

/// Pulls `size` messages at a time from a consumer, re-creating the
/// consumer (and its stream) when the server lost it. A pull request runs as
/// a task the subscription keeps, so that a `next` dropped mid-request loses
/// nothing: once sent, a request's messages are always read out.
struct JsSubscription {
    link: String,
    source: JsSource,
    consumer: Option<jetstream::consumer::PullConsumer>,
    /// A pull request being sent.
    pulling: Option<tokio::task::JoinHandle<Result<Pulled, BrokerError>>>,
    /// The pull request under way.
    batch: Option<pull::Batch>,
    size: usize,
    ack_wait: Duration,
    /// Set by `stop`: no new pull request; the one under way is read out.
    stopping: bool,
    /// The last reason pulling failed, logged once per reason.
    failure: Option<String>,
}

type Pulled = (jetstream::consumer::PullConsumer, pull::Batch);

async fn pull(
    source: JsSource,
    consumer: Option<jetstream::consumer::PullConsumer>,
    size: usize,
) -> Result<Pulled, BrokerError> {
    let consumer = match consumer {
        Some(consumer) => consumer,
        None => source.consumer().await?,
    };
    let batch = consumer
        .batch()
        .max_messages(size)
        .expires(PULL_EXPIRES)
        .messages()
        .await
        .map_err(|e| BrokerError::Unavailable(format!("JetStream pull: {e}")))?;
    Ok((consumer, batch))
}

impl JsSubscription {
    fn failed(&mut self, reason: String) {
        if self.failure.as_ref() != Some(&reason) {
            tracing::warn!(link = %self.link, subject = %self.source.consumer.filter_subject, "JetStream subscription: {reason}; retrying");
            self.failure = Some(reason);
        }
    }
}

#[async_trait]
impl Subscription for JsSubscription {
    async fn next(&mut self) -> Option<Delivery> {
        loop {
            if let Some(batch) = &mut self.batch {
                // A pull request ends on its own after PULL_EXPIRES; one lost
                // with a server restart ends here.
                match crate::timeout::timeout(PULL_EXPIRES * 2, batch.next()).await {
                    Ok(Some(Ok(message))) => {
                        self.failure = None;
                        let attempt = message
                            .info()
                            .map_or(1, |i| u32::try_from(i.delivered.max(1)).unwrap_or(u32::MAX));
                        let event = event_of(
                            &self.link,
                            message.subject.as_str(),
                            message.headers.as_ref(),
                            &message.payload,
                        );
                        let ack = JsAck {
                            message,
                            ack_wait: self.ack_wait,
                        };
                        return Some(Delivery::received(event, attempt, Box::new(ack)));
                    }
                    Ok(Some(Err(e))) => {
                        self.batch = None;
                        self.consumer = None;
                        self.failed(e.to_string());
                    }
                    Ok(None) | Err(_) => self.batch = None,
                }
                continue;
            }
            let pulling = match &mut self.pulling {
                Some(pulling) => pulling,
                None if self.stopping => return None,
                None => self.pulling.insert(tokio::spawn(pull(
                    self.source.clone(),
                    self.consumer.take(),
                    self.size,
                ))),
            };
            let pulled = pulling.await;
            self.pulling = None;
            match pulled {
                Ok(Ok((consumer, batch))) => {
                    self.consumer = Some(consumer);
                    self.batch = Some(batch);
                }
                Ok(Err(e)) => {
                    self.failed(e.to_string());
                    tokio::time::sleep(Duration::from_millis(250)).await;
                }
                Err(e) => self.failed(format!("pull task failed: {e}")),
            }
        }
    }

    async fn stop(&mut self) {
        self.stopping = true;
    }
}

struct JsAck {
    message: jetstream::Message,
    ack_wait: Duration,
}

#[async_trait]
impl Acknowledge for JsAck {
    async fn ack(self: Box<Self>) -> Result<(), BrokerError> {
        self.message
            .ack()
            .await
            .map_err(|e| BrokerError::ConnectionLost(e.to_string()))
    }

    async fn nack(self: Box<Self>, delay: Duration) -> Result<(), BrokerError> {
        let delay = (!delay.is_zero()).then_some(delay);
        self.message
            .ack_with(jetstream::AckKind::Nak(delay))
            .await
            .map_err(|e| BrokerError::ConnectionLost(e.to_string()))
    }

    fn redelivers(&self) -> bool {
        true
    }

    fn keep_alive_every(&self) -> Option<Duration> {
        Some(self.ack_wait / 3)
    }

    async fn keep_alive(&self) -> Result<(), BrokerError> {
        self.message
            .ack_with(jetstream::AckKind::Progress)
            .await
            .map_err(|e| BrokerError::ConnectionLost(e.to_string()))
    }
}
