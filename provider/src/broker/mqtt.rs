//! MQTT links (`type = "mqtt"`, MQTT 5 by default, `version = "3.1.1"`
//! selectable): a topic channel is an MQTT topic (subscriptions may use `+`
//! and `#`); a queue channel is a shared subscription
//! `$share/<group>/<topic>`. QoS is configurable (default 1); publishes wait
//! for the broker's PUBACK (PUBCOMP at QoS 2).
//!
//! Flow control: a broker with default settings (Mosquitto) sends a client
//! at most 20 unacknowledged messages and queues 1,000 more, then silently
//! drops. So each subscription has a connection of its own that reads as
//! fast as the network allows, acknowledges an event once it is in the
//! subscription's buffer (`buffer` events, default 65,536), and hands it on
//! from there. Sessions persist across reconnects (MQTT 5 session expiry /
//! 3.1.1 clean session off), and subscriptions are renewed when the broker
//! lost the session. What remains: a consumer slower than its producers for
//! longer than its buffer lets the broker queue fill and drop; and an event
//! acknowledged into the buffer is lost if the process dies (at most once
//! past the broker).

use super::tls::TlsFiles;
use super::{
    Broker, BrokerError, ChannelNames, Connectivity, ConnectivityState, Delivery, Invalid,
    MAX_BUFFERED_EVENTS, MakeBroker, NothingToSettle, SubscribeMode, Subscription, check_duration,
    check_name, check_publish_timeout, check_range, names, require,
};
use crate::cloudevents::ContentMode;
use crate::cloudevents::Event;
use crate::cloudevents::inbound::{self, Received};
use crate::cloudevents::json;
use crate::cloudevents::mqtt::BINARY;
use async_trait::async_trait;
use bytes::Bytes;
use serde::Deserialize;
use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;
use tokio::sync::{mpsc, oneshot};

/// Makes MQTT links.
pub struct MakeMqtt;

/// The protocol version.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq, Deserialize)]
pub enum MqttVersion {
    /// MQTT 5.0: attributes as user properties.
    #[default]
    #[serde(rename = "5")]
    V5,
    /// MQTT 3.1.1: structured JSON only.
    #[serde(rename = "3.1.1")]
    V311,
}

/// `[messaging_link.<name>]` settings of an MQTT link.
#[derive(Clone, Debug, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct MqttSettings {
    /// `mqtt://host:port`, or `mqtts://host:port` for TLS (default port 8883).
    #[serde(default = "default_url")]
    pub url: String,
    /// `mqtts://`: the CA (PEM) that signed the server's certificate, if not a system root.
    pub ca_file: Option<PathBuf>,
    /// `mqtts://`: a client certificate (PEM) for mutual TLS, with `key_file`.
    pub cert_file: Option<PathBuf>,
    /// `mqtts://`: the client certificate's private key (PEM).
    pub key_file: Option<PathBuf>,
    /// What the TLS files hold, read by `check`.
    #[serde(skip)]
    pub tls_files: TlsFiles,
    /// `"5"` (default) or `"3.1.1"`.
    #[serde(default)]
    pub version: MqttVersion,
    /// 0, 1 (default) or 2.
    #[serde(default = "default_qos")]
    pub qos: u8,
    /// User name.
    pub user: Option<String>,
    /// Password.
    pub password: Option<String>,
    /// MQTT 5 only: `binary` (user properties, the default) or `structured`
    /// (JSON); 3.1.1 is always structured.
    pub content_mode: Option<ContentMode>,
    /// How long a publish waits for the broker's acknowledgement.
    #[serde(default = "super::default_publish_timeout", with = "humantime_serde")]
    pub publish_timeout: Duration,
    /// How long the broker keeps a session (and its queued messages) while
    /// its connection is down.
    #[serde(default = "default_session_expiry", with = "humantime_serde")]
    pub session_expiry: Duration,
    /// Events each subscription buffers after acknowledging them.
    #[serde(default = "default_buffer")]
    pub buffer: usize,
    /// Client ids are this prefix, the link name and a random suffix.
    #[serde(default = "default_prefix")]
    pub client_id_prefix: String,
}

fn default_url() -> String {
    "mqtt://127.0.0.1:1883".into()
}
fn default_qos() -> u8 {
    1
}
fn default_session_expiry() -> Duration {
    Duration::from_secs(300)
}
fn default_buffer() -> usize {
    65536
}
fn default_prefix() -> String {
    "trigger-messaging".into()
}

#[async_trait]
impl MakeBroker for MakeMqtt {
    const TYPE: &'static str = "mqtt";
    type Settings = MqttSettings;

    fn check(s: &mut MqttSettings, config_dir: &Path) -> Result<(), Invalid> {
        require(
            s.qos <= 2,
            "qos",
            &format!("must be 0, 1 or 2 (got {})", s.qos),
        )?;
        check_range("buffer", s.buffer, 1..=MAX_BUFFERED_EVENTS)?;
        check_publish_timeout(s.publish_timeout)?;
        check_duration("session_expiry", s.session_expiry, SESSION_EXPIRY_RANGE)?;
        check_name(
            "client_id_prefix",
            &s.client_id_prefix,
            check_client_id_prefix(&s.client_id_prefix),
        )?;
        require(
            s.user.is_some() || s.password.is_none(),
            "password",
            "needs `user`",
        )?;
        require(
            s.version == MqttVersion::V5
                || s.content_mode.is_none_or(|m| m == ContentMode::Structured),
            "content_mode",
            "MQTT 3.1.1 has no metadata: events are always structured",
        )?;
        let (_, _, tls) = host_port(&s.url)?;
        s.tls_files = TlsFiles::read(
            config_dir,
            &mut s.ca_file,
            &mut s.cert_file,
            &mut s.key_file,
        )?
        .for_url(tls, "mqtts://")?;
        Ok(())
    }

    fn check_channel(_: &MqttSettings, c: &ChannelNames) -> Result<(), Invalid> {
        check_name(
            "address",
            c.address,
            names::mqtt_topic(c.address, c.published),
        )?;
        if let Some(group) = c.group {
            let filter = shared_filter(group, c.address);
            check_name("group", group, names::mqtt_shared_filter(&filter))?;
        }
        Ok(())
    }

    fn describe(s: &MqttSettings) -> String {
        let version = match s.version {
            MqttVersion::V5 => "MQTT 5",
            MqttVersion::V311 => "MQTT 3.1.1",
        };
        format!(
            "mqtt {} ({version}, QoS {}, queues as shared subscriptions)",
            s.url, s.qos
        )
    }

    async fn connect(&self, name: &str, s: &MqttSettings) -> anyhow::Result<Arc<dyn Broker>> {
        let (host, port, tls) = host_port(&s.url).map_err(|e| anyhow::anyhow!(e.message))?;
        let tls = tls.then(|| s.tls_files.client_config()).transpose()?;
        let settings = Arc::new(LinkSettings {
            link: name.into(),
            host,
            port,
            tls,
            s: s.clone(),
            connectivity: Connectivity::default(),
        });
        let publisher = Conn::open(settings.clone(), None, None);
        for _ in 0..50 {
            if publisher.connected.load(Ordering::Relaxed) {
                break;
            }
            tokio::time::sleep(Duration::from_millis(20)).await;
        }
        if !publisher.connected.load(Ordering::Relaxed) {
            tracing::warn!(link = %name, url = %s.url, "MQTT broker not reachable yet; retrying in the background");
        }
        Ok(Arc::new(MqttBroker {
            settings,
            publisher,
            order: tokio::sync::Mutex::new(()),
        }))
    }
}

/// The range of `session_expiry`: MQTT 5 carries it as whole seconds in 32
/// bits; a session that ends with its connection would lose the events
/// queued while the link reconnects.
const SESSION_EXPIRY_RANGE: std::ops::RangeInclusive<Duration> =
    Duration::from_secs(1)..=Duration::from_secs(30 * 86_400);

/// The longest `client_id_prefix`.
const MAX_CLIENT_ID_PREFIX: usize = 64;

/// Whether a character may be part of a client id: every broker takes
/// these (MQTT 3.1.1 only promises letters and digits).
fn client_id_char(c: char) -> bool {
    c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.')
}

fn check_client_id_prefix(prefix: &str) -> names::Rule {
    if let Some(c) = prefix.chars().find(|&c| !client_id_char(c)) {
        return Err(format!(
            "may only hold letters, digits, `-`, `_` and `.` (found {c:?})"
        ));
    }
    if prefix.len() > MAX_CLIENT_ID_PREFIX {
        return Err(format!(
            "is {} characters long; at most {MAX_CLIENT_ID_PREFIX}",
            prefix.len()
        ));
    }
    Ok(())
}

/// A connection's client id: the prefix, the link name (characters a
/// broker may refuse replaced by `_`, at most 64 of them) and a random
/// suffix, so that no link name makes an id the broker refuses.
fn client_id(prefix: &str, link: &str) -> String {
    let link: String = link
        .chars()
        .take(64)
        .map(|c| if client_id_char(c) { c } else { '_' })
        .collect();
    format!(
        "{prefix}-{link}-{}",
        &uuid::Uuid::new_v4().simple().to_string()[..12]
    )
}

/// The host, port and whether TLS is on, from `mqtt://` / `tcp://` or
/// `mqtts://` / `ssl://` URLs (`host`, `host:port`, `[ipv6]:port`).
fn host_port(url: &str) -> Result<(String, u16, bool), Invalid> {
    let (rest, tls) = [
        ("mqtt://", false),
        ("tcp://", false),
        ("mqtts://", true),
        ("ssl://", true),
    ]
    .into_iter()
    .find_map(|(scheme, tls)| url.strip_prefix(scheme).map(|rest| (rest, tls)))
    .ok_or_else(|| {
        Invalid::new(
            "url",
            "must start with mqtt:// or mqtts:// (or tcp://, ssl://)",
        )
    })?;
    let rest = rest.strip_suffix('/').unwrap_or(rest);
    let bad = |why: &str| {
        Invalid::new(
            "url",
            format!("{why} (expected mqtt://host:port or mqtts://host:port)"),
        )
    };
    if rest.contains('@') {
        return Err(bad(
            "must not hold credentials: give them as `user` and `password`",
        ));
    }
    if let Some(c) = rest
        .chars()
        .find(|&c| c.is_whitespace() || c.is_control() || matches!(c, '/' | '?' | '#'))
    {
        return Err(bad(&format!("has {c:?} after the scheme")));
    }
    let default_port = if tls { 8883 } else { 1883 };
    let (host, port) = match rest.strip_prefix('[') {
        // An IPv6 address: `[addr]` or `[addr]:port`.
        Some(v6) => {
            let (host, after) = v6
                .split_once(']')
                .ok_or_else(|| bad("has an unclosed `[`"))?;
            match after {
                "" => (host, None),
                _ => (
                    host,
                    Some(
                        after
                            .strip_prefix(':')
                            .ok_or_else(|| bad("has text after `]`"))?,
                    ),
                ),
            }
        }
        None => match rest.split_once(':') {
            Some((host, port)) => (host, Some(port)),
            None => (rest, None),
        },
    };
    if host.is_empty() {
        return Err(bad("has no host"));
    }
    let port = match port {
        None => default_port,
        Some(p) => match p.parse::<u16>() {
            Ok(port) if port > 0 => port,
            _ => return Err(bad(&format!("has a bad port `{p}` (1 to 65535)"))),
        },
    };
    Ok((host.to_string(), port, tls))
}

struct LinkSettings {
    link: String,
    host: String,
    port: u16,
    /// The TLS configuration, for `mqtts://`.
    tls: Option<Arc<rustls::ClientConfig>>,
    s: MqttSettings,
    /// The publishing connection's: the link's own.
    connectivity: Connectivity,
}

/// What an event loop reports, the same for both protocol versions.
enum Ev {
    ConnAck {
        session_present: bool,
    },
    Publish {
        topic: String,
        payload: Bytes,
        properties: Vec<(String, String)>,
        content_type: Option<String>,
    },
    /// A publish left with this packet id (0 for QoS 0).
    Sent(u16),
    /// The broker acknowledged this packet id.
    Acked(u16),
    /// The broker confirmed a subscription (SUBACK).
    Subscribed,
    Down(String),
}

enum Client {
    V5(rumqttc::v5::AsyncClient),
    V3(rumqttc::AsyncClient),
}

fn qos5(q: u8) -> rumqttc::v5::mqttbytes::QoS {
    match q {
        0 => rumqttc::v5::mqttbytes::QoS::AtMostOnce,
        1 => rumqttc::v5::mqttbytes::QoS::AtLeastOnce,
        _ => rumqttc::v5::mqttbytes::QoS::ExactlyOnce,
    }
}

fn qos3(q: u8) -> rumqttc::QoS {
    match q {
        0 => rumqttc::QoS::AtMostOnce,
        1 => rumqttc::QoS::AtLeastOnce,
        _ => rumqttc::QoS::ExactlyOnce,
    }
}

/// One MQTT connection with its event loop task.
struct Conn {
    client: Client,
    filter: Option<String>,
    connected: Arc<AtomicBool>,
    /// Whether the broker holds the filter's subscription: a SUBACK, or a
    /// session that kept it.
    subscribed: tokio::sync::watch::Receiver<bool>,
    closing: Arc<AtomicBool>,
    /// Confirmations waiting for their publish to leave, in request order.
    queued: Arc<Mutex<VecDeque<oneshot::Sender<()>>>>,
    task: tokio::task::JoinHandle<()>,
}

impl Drop for Conn {
    /// Unsubscribes before disconnecting: a session left subscribed would go
    /// on taking its share of a queue's events until it expires.
    fn drop(&mut self) {
        self.closing.store(true, Ordering::Relaxed);
        let client = match &self.client {
            Client::V5(c) => Resubscribe::V5(c.clone()),
            Client::V3(c) => Resubscribe::V3(c.clone()),
        };
        let (filter, task) = (self.filter.clone(), self.task.abort_handle());
        if let Ok(handle) = tokio::runtime::Handle::try_current() {
            handle.spawn(async move {
                client.close(filter.as_deref()).await;
                tokio::time::sleep(Duration::from_secs(2)).await;
                task.abort();
            });
        } else {
            task.abort();
        }
    }
}

impl Conn {
    /// Opens a connection; with `filter`, (re)subscribes to it whenever the
    /// broker has no session, and forwards incoming publishes to `sink`.
    fn open(ls: Arc<LinkSettings>, filter: Option<String>, sink: Option<mpsc::Sender<Ev>>) -> Conn {
        let id = client_id(&ls.s.client_id_prefix, &ls.link);
        let keep_alive = Duration::from_secs(30);
        let (client, mut next): (
            Client,
            Box<dyn FnMut() -> futures::future::BoxFuture<'static, Ev> + Send>,
        ) = match ls.s.version {
            MqttVersion::V5 => {
                let mut o = rumqttc::v5::MqttOptions::new(id, ls.host.clone(), ls.port);
                o.set_keep_alive(keep_alive)
                    .set_clean_start(false)
                    .set_session_expiry_interval(Some(ls.s.session_expiry.as_secs() as u32))
                    .set_receive_maximum(Some(u16::MAX))
                    .set_max_packet_size(Some(256 * 1024 * 1024));
                if let (Some(u), Some(p)) = (&ls.s.user, &ls.s.password) {
                    o.set_credentials(u.clone(), p.clone());
                }
                if let Some(tls) = &ls.tls {
                    o.set_transport(rumqttc::Transport::tls_with_config(
                        rumqttc::TlsConfiguration::Rustls(tls.clone()),
                    ));
                }
                let (client, eventloop) = rumqttc::v5::AsyncClient::new(o, 1024);
                let eventloop = Arc::new(tokio::sync::Mutex::new(eventloop));
                (
                    Client::V5(client),
                    Box::new(move || {
                        let eventloop = eventloop.clone();
                        Box::pin(async move { poll_v5(&mut *eventloop.lock().await).await })
                    }),
                )
            }
            MqttVersion::V311 => {
                let mut o = rumqttc::MqttOptions::new(id, ls.host.clone(), ls.port);
                o.set_keep_alive(keep_alive)
                    .set_clean_session(false)
                    .set_max_packet_size(256 * 1024 * 1024, 256 * 1024 * 1024);
                if let (Some(u), Some(p)) = (&ls.s.user, &ls.s.password) {
                    o.set_credentials(u.clone(), p.clone());
                }
                if let Some(tls) = &ls.tls {
                    o.set_transport(rumqttc::Transport::tls_with_config(
                        rumqttc::TlsConfiguration::Rustls(tls.clone()),
                    ));
                }
                let (client, eventloop) = rumqttc::AsyncClient::new(o, 1024);
                let eventloop = Arc::new(tokio::sync::Mutex::new(eventloop));
                (
                    Client::V3(client),
                    Box::new(move || {
                        let eventloop = eventloop.clone();
                        Box::pin(async move { poll_v3(&mut *eventloop.lock().await).await })
                    }),
                )
            }
        };
        let connected = Arc::new(AtomicBool::new(false));
        let queued: Arc<Mutex<VecDeque<oneshot::Sender<()>>>> = Arc::default();
        let resubscribe = match &client {
            Client::V5(c) => Resubscribe::V5(c.clone()),
            Client::V3(c) => Resubscribe::V3(c.clone()),
        };
        let closing = Arc::new(AtomicBool::new(false));
        let (subscribed_tx, subscribed) = tokio::sync::watch::channel(false);
        let (flag, fifo, link, stop) = (
            connected.clone(),
            queued.clone(),
            ls.link.clone(),
            closing.clone(),
        );
        let topic_filter = filter.clone();
        let qos = ls.s.qos;
        // The publishing connection (no filter) speaks for the link.
        let tracked = filter.is_none().then(|| ls.clone());
        let task = tokio::spawn(async move {
            let mut waiting: HashMap<u16, oneshot::Sender<()>> = HashMap::new();
            let mut backoff = Duration::from_millis(100);
            // Logged once per distinct reason, not on every retry.
            let mut last_failure = None;
            loop {
                match next().await {
                    Ev::ConnAck { session_present } => {
                        backoff = Duration::from_millis(100);
                        last_failure = None;
                        if !flag.swap(true, Ordering::Relaxed) {
                            tracing::info!(link = %link, "MQTT link connected");
                        }
                        if let Some(ls) = &tracked {
                            ls.connectivity.connected();
                        }
                        if let Some(filter) = &filter {
                            if session_present {
                                subscribed_tx.send_replace(true);
                            } else {
                                resubscribe.subscribe(filter, qos).await;
                            }
                        }
                    }
                    Ev::Sent(pkid) => {
                        if let Some(done) = fifo.lock().unwrap().pop_front() {
                            if pkid == 0 {
                                let _ = done.send(());
                            } else {
                                waiting.insert(pkid, done);
                            }
                        }
                    }
                    Ev::Acked(pkid) => {
                        if let Some(done) = waiting.remove(&pkid) {
                            let _ = done.send(());
                        }
                    }
                    Ev::Subscribed => {
                        subscribed_tx.send_replace(true);
                    }
                    publish @ Ev::Publish { .. } => {
                        if let Some(sink) = &sink
                            && sink.send(publish).await.is_err()
                        {
                            return; // the subscription is gone
                        }
                    }
                    Ev::Down(_) if stop.load(Ordering::Relaxed) => return,
                    Ev::Down(e) => {
                        if let Some(ls) = &tracked {
                            ls.connectivity.lost();
                        }
                        if flag.swap(false, Ordering::Relaxed) {
                            tracing::warn!(link = %link, "MQTT link disconnected ({e}); reconnecting");
                        } else if last_failure.as_ref() != Some(&e) {
                            tracing::warn!(link = %link, "MQTT link cannot connect ({e}); retrying");
                        }
                        last_failure = Some(e);
                        // Publishes under way will not be confirmed on this connection.
                        waiting.clear();
                        fifo.lock().unwrap().clear();
                        tokio::time::sleep(backoff).await;
                        backoff = (backoff * 2).min(Duration::from_secs(5));
                    }
                }
            }
        });
        Conn {
            client,
            filter: topic_filter,
            connected,
            subscribed,
            closing,
            queued,
            task,
        }
    }
}

enum Resubscribe {
    V5(rumqttc::v5::AsyncClient),
    V3(rumqttc::AsyncClient),
}

impl Resubscribe {
    async fn close(&self, filter: Option<&str>) {
        match self {
            Resubscribe::V5(c) => {
                if let Some(f) = filter {
                    let _ = c.unsubscribe(f).await;
                }
                let _ = c.disconnect().await;
            }
            Resubscribe::V3(c) => {
                if let Some(f) = filter {
                    let _ = c.unsubscribe(f).await;
                }
                let _ = c.disconnect().await;
            }
        }
    }

    async fn subscribe(&self, filter: &str, qos: u8) {
        let result = match self {
            Resubscribe::V5(c) => c
                .subscribe(filter, qos5(qos))
                .await
                .map_err(|e| e.to_string()),
            Resubscribe::V3(c) => c
                .subscribe(filter, qos3(qos))
                .await
                .map_err(|e| e.to_string()),
        };
        if let Err(e) = result {
            tracing::warn!(filter, "MQTT subscribe failed: {e}");
        }
    }
}

async fn poll_v5(eventloop: &mut rumqttc::v5::EventLoop) -> Ev {
    use rumqttc::v5::mqttbytes::v5::Packet;
    use rumqttc::v5::{Event as E, Incoming};
    loop {
        match eventloop.poll().await {
            Ok(E::Incoming(Incoming::ConnAck(a))) => {
                return Ev::ConnAck {
                    session_present: a.session_present,
                };
            }
            Ok(E::Incoming(Packet::Publish(p))) => {
                let (properties, content_type) = p
                    .properties
                    .map(|pp| (pp.user_properties, pp.content_type))
                    .unwrap_or_default();
                return Ev::Publish {
                    topic: String::from_utf8_lossy(&p.topic).into_owned(),
                    payload: p.payload,
                    properties,
                    content_type,
                };
            }
            Ok(E::Incoming(Packet::PubAck(a))) => return Ev::Acked(a.pkid),
            Ok(E::Incoming(Packet::PubComp(a))) => return Ev::Acked(a.pkid),
            Ok(E::Incoming(Packet::SubAck(_))) => return Ev::Subscribed,
            Ok(E::Outgoing(rumqttc::Outgoing::Publish(pkid))) => return Ev::Sent(pkid),
            Ok(_) => {}
            Err(e) => return Ev::Down(e.to_string()),
        }
    }
}

async fn poll_v3(eventloop: &mut rumqttc::EventLoop) -> Ev {
    use rumqttc::{Event as E, Packet};
    loop {
        match eventloop.poll().await {
            Ok(E::Incoming(Packet::ConnAck(a))) => {
                return Ev::ConnAck {
                    session_present: a.session_present,
                };
            }
            Ok(E::Incoming(Packet::Publish(p))) => {
                return Ev::Publish {
                    topic: p.topic,
                    payload: p.payload,
                    properties: Vec::new(),
                    content_type: None,
                };
            }
            Ok(E::Incoming(Packet::PubAck(a))) => return Ev::Acked(a.pkid),
            Ok(E::Incoming(Packet::PubComp(a))) => return Ev::Acked(a.pkid),
            Ok(E::Incoming(Packet::SubAck(_))) => return Ev::Subscribed,
            Ok(E::Outgoing(rumqttc::Outgoing::Publish(pkid))) => return Ev::Sent(pkid),
            Ok(_) => {}
            Err(e) => return Ev::Down(e.to_string()),
        }
    }
}

struct MqttBroker {
    settings: Arc<LinkSettings>,
    publisher: Conn,
    /// Keeps request order equal to confirmation order.
    order: tokio::sync::Mutex<()>,
}

/// The filter a queue's consumers share: `$share/<group>/<address>`.
fn shared_filter(group: &str, address: &str) -> String {
    format!("$share/{}/{address}", share_name(group))
}

/// Shared-subscription group names may not hold `/`, `+` or `#`.
fn share_name(group: &str) -> String {
    group
        .chars()
        .map(|c| if matches!(c, '/' | '+' | '#') { '_' } else { c })
        .collect()
}

/// MQTT 5 strings (user property names and values, the content type) are
/// at most 65,535 bytes on the wire; longer ones would corrupt the packet.
fn check_string_lengths(
    user_properties: &[(String, String)],
    content_type: Option<&str>,
) -> Result<(), BrokerError> {
    let strings = user_properties
        .iter()
        .flat_map(|(k, v)| [k.as_str(), v.as_str()])
        .chain(content_type);
    for text in strings {
        if text.len() > usize::from(u16::MAX) {
            return Err(BrokerError::Format(format!(
                "an MQTT 5 property of {} bytes is longer than MQTT allows (65535 bytes): `{}…`",
                text.len(),
                text.chars().take(40).collect::<String>()
            )));
        }
    }
    Ok(())
}

#[async_trait]
impl Broker for MqttBroker {
    fn connectivity(&self) -> ConnectivityState {
        self.settings.connectivity.state()
    }

    fn max_payload(&self) -> Option<usize> {
        Some(256 * 1024 * 1024 - 64 * 1024) // the MQTT packet limit, less room for properties
    }

    async fn publish(&self, address: &str, event: &Event) -> Result<(), BrokerError> {
        if !self.publisher.connected.load(Ordering::Relaxed) {
            return Err(BrokerError::Unavailable(format!(
                "MQTT link `{}` is not connected",
                self.settings.link
            )));
        }
        let s = &self.settings.s;
        let (done, confirmed) = oneshot::channel();
        // Encoded (and checked) before taking the publish order, so that a
        // refusal leaves no confirmation waiting in the queue.
        let sent = match &self.publisher.client {
            Client::V5(c) => {
                let (user_properties, content_type, payload) =
                    crate::stages::timed(crate::stages::Stage::Encode, || {
                        BINARY.encode_message(event, s.content_mode.unwrap_or_default())
                    });
                check_string_lengths(&user_properties, content_type.as_deref())?;
                let properties = rumqttc::v5::mqttbytes::v5::PublishProperties {
                    user_properties,
                    content_type,
                    ..Default::default()
                };
                let _order = self.order.lock().await;
                self.publisher.queued.lock().unwrap().push_back(done);
                c.publish_with_properties(address, qos5(s.qos), false, payload, properties)
                    .await
                    .map_err(|e| e.to_string())
            }
            Client::V3(c) => {
                let payload =
                    crate::stages::timed(crate::stages::Stage::Encode, || json::encode(event));
                let _order = self.order.lock().await;
                self.publisher.queued.lock().unwrap().push_back(done);
                c.publish(address, qos3(s.qos), false, payload)
                    .await
                    .map_err(|e| e.to_string())
            }
        };
        sent.map_err(BrokerError::ConnectionLost)?;
        match crate::timeout::timeout(s.publish_timeout, confirmed).await {
            Ok(Ok(())) => Ok(()),
            Ok(Err(_)) => Err(BrokerError::ConnectionLost(format!(
                "MQTT link `{}` went down before the broker acknowledged",
                self.settings.link
            ))),
            Err(_) => Err(BrokerError::unconfirmed(
                "the MQTT broker",
                s.publish_timeout,
            )),
        }
    }

    async fn subscribe(
        &self,
        address: &str,
        mode: SubscribeMode,
    ) -> Result<Box<dyn Subscription>, BrokerError> {
        let filter = match mode {
            SubscribeMode::Topic => address.to_string(),
            SubscribeMode::Queue { group } => shared_filter(&group, address),
        };
        let (sink, events) = mpsc::channel(self.settings.s.buffer);
        let conn = Conn::open(self.settings.clone(), Some(filter), Some(sink));
        // When the broker is up, return once it holds the subscription, so
        // that what is published next reaches it; when it is down, the
        // connection subscribes as soon as it comes up.
        for _ in 0..100 {
            if conn.connected.load(Ordering::Relaxed) {
                let mut subscribed = conn.subscribed.clone();
                let _ = tokio::time::timeout(
                    self.settings.s.publish_timeout,
                    subscribed.wait_for(|held| *held),
                )
                .await;
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        Ok(Box::new(MqttSubscription {
            link: self.settings.link.clone(),
            version: self.settings.s.version,
            events,
            conn: Some(conn),
        }))
    }

    async fn close(&self) {
        let _ = match &self.publisher.client {
            Client::V5(c) => c.disconnect().await.map_err(drop),
            Client::V3(c) => c.disconnect().await.map_err(drop),
        };
    }
}

struct MqttSubscription {
    link: String,
    version: MqttVersion,
    events: mpsc::Receiver<Ev>,
    /// The subscription's own connection; dropped (unsubscribed) on stop.
    conn: Option<Conn>,
}

#[async_trait]
impl Subscription for MqttSubscription {
    async fn next(&mut self) -> Option<Delivery> {
        let Ev::Publish {
            topic,
            payload,
            properties,
            content_type,
        } = self.events.recv().await?
        else {
            unreachable!("only publishes are forwarded");
        };
        let decoding = crate::stages::start();
        let origin = (self.link.as_str(), topic.as_str());
        let decoded = match self.version {
            MqttVersion::V5 => {
                BINARY.decode_message(&properties, content_type.as_deref(), &payload, origin)
            }
            MqttVersion::V311 => json::decode_or_wrap(&payload, origin),
        };
        let event = inbound::admit(decoded, || Received {
            link: &self.link,
            address: &topic,
            metadata: properties.clone(),
            content_type: content_type.as_deref(),
            body: &payload,
        });
        crate::stages::record(crate::stages::Stage::Decode, decoding);
        // Acknowledged to the broker on arrival (see the module docs).
        Some(Delivery::received(event, 1, Box::new(NothingToSettle)))
    }

    /// Unsubscribes and disconnects; the events already acknowledged into
    /// the buffer still come out, to be handled before the process exits.
    async fn stop(&mut self) {
        self.events.close();
        self.conn = None;
    }
}
