//! One app at run time: its channels bound to their links (and declared
//! there before anything is published to them or consumed from them), its
//! components, and the answers to its guests' `pub`/`sub` calls.

use super::Dispatcher;
use super::breaker::Breaker;
use crate::app::{App, Channel, ChannelKind, ComponentSpec};
use crate::broker::{Broker, BrokerError, SubscribeMode, Subscription};
use crate::cloudevents::Event;
use crate::host::bindings::Channel as WitChannel;
use crate::host::{
    ComponentOutput, Grants, InstanceIdentity, Instances, MessagingCtx, MessagingError,
    PreparedComponent,
};
use crate::metrics::{ComponentSample, SendMetrics};
use async_trait::async_trait;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::{OnceCell, Semaphore};
use tokio_util::sync::CancellationToken;

/// One app at run time.
pub struct AppRuntime {
    /// The app as declared.
    pub app: App,
    channels: BTreeMap<String, Arc<BoundChannel>>,
    components: Vec<Arc<ComponentRuntime>>,
    dispatcher: Arc<Dispatcher>,
    /// Dynamic subscriptions by token; a token is meaningful only here.
    dynamic: Mutex<HashMap<String, CancellationToken>>,
    /// Channels (or subscriptions to them) waiting for their link, by name.
    unattached: Mutex<BTreeMap<String, usize>>,
    stop: CancellationToken,
}

/// A channel with its link, and whether it is declared there yet.
pub(crate) struct BoundChannel {
    pub spec: Channel,
    link: Arc<dyn Broker>,
    declared: OnceCell<()>,
    sends: SendMetrics,
    /// Its link's `messaging.system`, for spans.
    pub system: &'static str,
}

impl BoundChannel {
    /// Where its spans happen.
    pub fn place<'a>(&'a self, app: &'a str) -> crate::traces::Place<'a> {
        crate::traces::Place {
            app,
            channel: &self.spec.name,
            system: self.system,
            address: &self.spec.address,
        }
    }
}

/// A component of an app, prepared to run.
pub(crate) struct ComponentRuntime {
    /// Its app's name, for log lines.
    pub app_name: String,
    pub app: Weak<AppRuntime>,
    pub spec: ComponentSpec,
    /// Its instances, warm ones included.
    pub instances: Arc<Instances>,
    /// Its own bound on handlers at once, shared by all its subscriptions.
    pub in_flight: Arc<Semaphore>,
    /// Slows it down while its handlers keep failing.
    pub breaker: Breaker,
    /// Handlers running now (a pump holds a slot while it waits for a
    /// delivery, so the semaphore does not tell).
    pub running: std::sync::atomic::AtomicU64,
}

impl AppRuntime {
    /// Binds an app to its links and prepared components. `links` must hold
    /// every link the app's channels use; `components` every component, with
    /// where its output goes and what it is granted.
    pub fn new(
        app: App,
        links: &BTreeMap<String, Arc<dyn Broker>>,
        mut components: HashMap<String, (PreparedComponent, Arc<ComponentOutput>, Arc<Grants>)>,
        dispatcher: Arc<Dispatcher>,
    ) -> anyhow::Result<Arc<AppRuntime>> {
        let mut channels = BTreeMap::new();
        for channel in app.channels.values() {
            let link = links.get(&channel.link).ok_or_else(|| {
                anyhow::anyhow!(
                    "link `{}` of channel `{}` is not connected",
                    channel.link,
                    channel.name
                )
            })?;
            let bound = BoundChannel {
                system: dispatcher.metrics.system(&channel.link),
                sends: dispatcher.metrics.send(
                    &app.name,
                    &channel.name,
                    &channel.link,
                    &channel.address,
                ),
                spec: channel.clone(),
                link: link.clone(),
                declared: OnceCell::new(),
            };
            channels.insert(channel.name.clone(), Arc::new(bound));
        }
        let mut prepared = Vec::new();
        for spec in &app.components {
            let (component, output, grants) = components
                .remove(&spec.id)
                .ok_or_else(|| anyhow::anyhow!("component `{}` is not prepared", spec.id))?;
            prepared.push((spec.clone(), component, output, grants));
        }
        Ok(Arc::new_cyclic(|weak: &Weak<AppRuntime>| {
            let components = prepared
                .into_iter()
                .map(|(spec, component, output, grants)| {
                    let messaging = Arc::new(ComponentCtx {
                        app: weak.clone(),
                        component: spec.id.clone(),
                        may_publish: spec.publish.clone(),
                    });
                    let identity = InstanceIdentity {
                        app: app.name.clone(),
                        component: spec.id.clone(),
                        environment: spec.environment.clone(),
                        messaging,
                        output,
                        max_memory: spec.max_memory,
                        grants,
                    };
                    let host = &dispatcher.host;
                    let reuse = spec.reuse.over(&host.reuse());
                    Arc::new(ComponentRuntime {
                        app_name: app.name.clone(),
                        app: weak.clone(),
                        instances: host.instances(&component, identity, reuse),
                        in_flight: Arc::new(Semaphore::new(spec.max_in_flight)),
                        breaker: Breaker::default(),
                        running: Default::default(),
                        spec,
                    })
                })
                .collect();
            AppRuntime {
                channels,
                components,
                stop: dispatcher.stop.child_token(),
                dispatcher,
                dynamic: Mutex::default(),
                unattached: Mutex::default(),
                app,
            }
        }))
    }

    /// Declares the app's channels and starts its subscriptions: every
    /// channel is declared before anything consumes.
    pub async fn start(self: &Arc<Self>) -> anyhow::Result<()> {
        self.declare_channels().await?;
        self.start_subscriptions().await
    }

    /// Declares every channel on its link, so that a queue keeps what is
    /// published to it before its consumers start, and a link that tells
    /// queues from topics knows which each address is. A channel whose link
    /// is down is declared later (in the background, or by the first publish
    /// to it, which fails until then); a declaration the broker refuses
    /// stops the start.
    pub async fn declare_channels(&self) -> anyhow::Result<()> {
        let mut down = HashSet::new();
        for channel in self.channels.values() {
            if down.contains(&channel.spec.link) {
                continue;
            }
            match self.declare(channel).await {
                Ok(()) => {}
                Err(e) if e.is_transient() => {
                    tracing::warn!(app = %self.app.name, link = %channel.spec.link, "cannot declare {} `{}`: {e}; its link's channels attach once it is back", channel.spec.kind, channel.spec.name);
                    down.insert(channel.spec.link.clone());
                }
                Err(e) => anyhow::bail!(
                    "app `{}`: cannot declare {} `{}`: {e}",
                    self.app.name,
                    channel.spec.kind,
                    channel.spec.name
                ),
            }
        }
        Ok(())
    }

    /// Starts every component's subscriptions from the manifest. What a link
    /// that is down cannot take now is attached in the background once it is
    /// back, so one broker being away stops neither the start nor the other
    /// links' work.
    pub async fn start_subscriptions(self: &Arc<Self>) -> anyhow::Result<()> {
        let mut down = HashSet::new();
        for channel in self.channels.values() {
            let subscribers: Vec<_> = self
                .components
                .iter()
                .filter(|c| c.spec.subscriptions.contains(&channel.spec.name))
                .cloned()
                .collect();
            if channel.declared.get().is_none() {
                down.insert(channel.spec.link.clone());
                if subscribers.is_empty() {
                    self.attach_later(channel.clone(), None);
                }
            }
            for component in subscribers {
                if down.contains(&channel.spec.link) {
                    self.attach_later(channel.clone(), Some(component));
                    continue;
                }
                match self.subscribe(channel, &component, self.stop.clone()).await {
                    Ok(()) => {}
                    Err(e) if e.is_transient() => {
                        tracing::warn!(app = %self.app.name, link = %channel.spec.link, "cannot subscribe component `{}` to `{}`: {e}; attaching once the link is back", component.spec.id, channel.spec.name);
                        down.insert(channel.spec.link.clone());
                        self.attach_later(channel.clone(), Some(component));
                    }
                    Err(e) => anyhow::bail!(
                        "app `{}`: cannot subscribe component `{}` to `{}`: {e}",
                        self.app.name,
                        component.spec.id,
                        channel.spec.name
                    ),
                }
            }
        }
        Ok(())
    }

    /// Declares `channel` on its link, once.
    async fn declare(&self, channel: &BoundChannel) -> Result<(), BrokerError> {
        let spec = &channel.spec;
        channel
            .declared
            .get_or_try_init(|| async {
                match spec.kind {
                    ChannelKind::Queue => {
                        channel.link.declare_queue(&spec.address, &spec.group).await
                    }
                    ChannelKind::Topic => channel.link.declare_topic(&spec.address).await,
                }
            })
            .await
            .map(drop)
    }

    /// Declares the channel if need be, subscribes `component` to it and
    /// starts its pump, which ends when `stop` is cancelled.
    async fn subscribe(
        &self,
        channel: &Arc<BoundChannel>,
        component: &Arc<ComponentRuntime>,
        stop: CancellationToken,
    ) -> Result<(), BrokerError> {
        self.declare(channel).await?;
        let sub = channel
            .link
            .subscribe(&channel.spec.address, subscribe_mode(&channel.spec))
            .await?;
        self.dispatcher
            .spawn_pump(component.clone(), channel.clone(), sub, stop);
        Ok(())
    }

    /// Retries declaring `channel` (and subscribing `subscriber` to it),
    /// with backoff, until it succeeds or the app stops.
    fn attach_later(
        self: &Arc<Self>,
        channel: Arc<BoundChannel>,
        subscriber: Option<Arc<ComponentRuntime>>,
    ) {
        let (app, stop) = (Arc::downgrade(self), self.stop.clone());
        *self
            .unattached
            .lock()
            .unwrap()
            .entry(channel.spec.name.clone())
            .or_default() += 1;
        let waiting = Unattached {
            app: app.clone(),
            channel: channel.spec.name.clone(),
        };
        self.dispatcher.tasks.spawn(async move {
            let _waiting = waiting;
            let mut backoff = Duration::from_millis(200);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                let Some(app) = app.upgrade() else { return };
                let attached = match &subscriber {
                    Some(component) => app.subscribe(&channel, component, app.stop.clone()).await,
                    None => app.declare(&channel).await,
                };
                match attached {
                    Ok(()) => {
                        tracing::info!(app = %app.app.name, link = %channel.spec.link, channel = %channel.spec.name, "channel attached to its link");
                        return;
                    }
                    Err(e) if e.is_transient() => {
                        backoff = (backoff * 2).min(Duration::from_secs(5))
                    }
                    Err(e) => {
                        tracing::error!(app = %app.app.name, link = %channel.spec.link, channel = %channel.spec.name, "cannot attach the channel to its link: {e}; giving up");
                        return;
                    }
                }
            }
        });
    }

    /// Publishes as an outside producer would (no component permission
    /// applies): the channel must exist, the event must be valid and fit.
    pub async fn publish_external(
        &self,
        channel: &str,
        event: impl Into<Arc<Event>>,
    ) -> Result<(), MessagingError> {
        self.send(self.named(channel)?, event.into()).await
    }

    /// Watches a channel: every event published on it from now on, without
    /// taking events away from a queue's consumers.
    pub async fn watch(&self, channel: &str) -> Result<Box<dyn Subscription>, MessagingError> {
        let channel = self.named(channel)?;
        self.declare(channel).await?;
        Ok(channel
            .link
            .subscribe(&channel.spec.address, SubscribeMode::Topic)
            .await?)
    }

    /// Channels not attached to their link yet (it was down when the app
    /// started), by name: what keeps the app from being ready.
    pub fn unattached(&self) -> Vec<String> {
        self.unattached.lock().unwrap().keys().cloned().collect()
    }

    /// Each component's state, for the metrics.
    pub fn component_samples(&self) -> impl Iterator<Item = ComponentSample> + '_ {
        self.components.iter().map(|c| {
            let (created, reused) = c.instances.counts();
            ComponentSample {
                app: self.app.name.clone(),
                component: c.spec.id.clone(),
                in_flight: c.running.load(std::sync::atomic::Ordering::Relaxed),
                idle_instances: c.instances.idle() as u64,
                created,
                reused,
                breaker_open: c.breaker.is_open(),
            }
        })
    }

    /// A component's instances (how many were created, reused, are warm).
    pub fn instances(&self, component: &str) -> Option<&Arc<Instances>> {
        self.components
            .iter()
            .find(|c| c.spec.id == component)
            .map(|c| &c.instances)
    }

    /// How many dynamic subscriptions are active.
    pub fn dynamic_subscriptions(&self) -> usize {
        self.dynamic.lock().unwrap().len()
    }

    /// A channel by the name the app gave it.
    pub(crate) fn channel(&self, name: &str) -> Option<&Arc<BoundChannel>> {
        self.channels.get(name)
    }

    fn named(&self, channel: &str) -> Result<&Arc<BoundChannel>, MessagingError> {
        self.channel(channel).ok_or_else(|| {
            MessagingError::QueueOrTopicNotFound(format!(
                "app `{}` declares no channel `{channel}`",
                self.app.name
            ))
        })
    }

    /// Checks an event against the CloudEvents rules and the payload limits,
    /// then hands it to the channel's link (declaring the channel there
    /// first if that has not happened yet).
    pub(crate) async fn send(
        &self,
        channel: &BoundChannel,
        event: Arc<Event>,
    ) -> Result<(), MessagingError> {
        event.validate().map_err(|e| {
            MessagingError::UnsupportedMessageFormat(format!("not a valid CloudEvent: {e}"))
        })?;
        let size = event.payload_len();
        for (limit, whose) in [
            (channel.spec.max_payload, "channel"),
            (channel.link.max_payload(), "link"),
        ] {
            if let Some(limit) = limit
                && size > limit
            {
                return Err(MessagingError::PayloadTooLarge(format!(
                    "{size} bytes of data exceed the {whose} limit of {limit} bytes for `{}`",
                    channel.spec.name
                )));
            }
        }
        self.declare(channel).await?;
        let mut event = event;
        let span = match crate::traces::enabled() {
            true => {
                let mut traced = (*event).clone();
                let span = crate::traces::send(&mut traced, &channel.place(&self.app.name));
                event = Arc::new(traced);
                span
            }
            false => None,
        };
        let publishing = crate::stages::start();
        let started = std::time::Instant::now();
        let published = channel
            .link
            .publish_checked(&channel.spec.address, event)
            .await;
        if let Some(span) = span {
            span.end(published.as_ref().err().map(|e| e.to_string()).as_deref());
        }
        crate::stages::record(crate::stages::Stage::Publish, publishing);
        if published.is_ok() {
            channel
                .sends
                .duration
                .observe(started.elapsed().as_secs_f64());
            channel.sends.sent.inc();
        }
        Ok(published?)
    }

    /// Finds a channel a guest named, checking that its kind matches.
    fn channel_for(&self, requested: &WitChannel) -> Result<&Arc<BoundChannel>, MessagingError> {
        let (name, kind) = match requested {
            WitChannel::Queue(n) => (n, ChannelKind::Queue),
            WitChannel::Topic(n) => (n, ChannelKind::Topic),
        };
        match self.channels.get(name) {
            Some(c) if c.spec.kind == kind => Ok(c),
            Some(c) => Err(MessagingError::QueueOrTopicNotFound(format!(
                "`{name}` is declared as a {}, not a {kind}",
                c.spec.kind
            ))),
            None => Err(MessagingError::QueueOrTopicNotFound(format!(
                "app `{}` declares no {kind} `{name}`",
                self.app.name
            ))),
        }
    }
}

fn subscribe_mode(channel: &Channel) -> SubscribeMode {
    match channel.kind {
        ChannelKind::Queue => SubscribeMode::Queue {
            group: channel.group.clone(),
        },
        ChannelKind::Topic => SubscribeMode::Topic,
    }
}

/// A component's view of its app, answering its guest's messaging calls.
struct ComponentCtx {
    app: Weak<AppRuntime>,
    component: String,
    may_publish: BTreeSet<String>,
}

impl ComponentCtx {
    fn app(&self) -> Result<Arc<AppRuntime>, MessagingError> {
        self.app
            .upgrade()
            .ok_or_else(|| MessagingError::ServiceUnavailable("the app is stopping".into()))
    }

    async fn publish_to(
        &self,
        app: &AppRuntime,
        channel: WitChannel,
        event: Event,
    ) -> Result<(), MessagingError> {
        let channel = app.channel_for(&channel)?;
        if !self.may_publish.contains(&channel.spec.name) {
            return Err(MessagingError::InsufficientPermissions(format!(
                "component `{}` may not publish to `{}`: add it to `publish` in the component's [[trigger.messaging]] entry",
                self.component, channel.spec.name
            )));
        }
        app.send(channel, Arc::new(event)).await
    }
}

/// Counts a channel as waiting for its link while it lives.
struct Unattached {
    app: Weak<AppRuntime>,
    channel: String,
}

impl Drop for Unattached {
    fn drop(&mut self) {
        let Some(app) = self.app.upgrade() else {
            return;
        };
        let mut unattached = app.unattached.lock().unwrap();
        if let Some(n) = unattached.get_mut(&self.channel) {
            *n -= 1;
            if *n == 0 {
                unattached.remove(&self.channel);
            }
        }
    }
}

#[async_trait]
impl MessagingCtx for ComponentCtx {
    async fn publish(&self, channel: WitChannel, event: Event) -> Result<(), MessagingError> {
        let app = self.app()?;
        let published = self.publish_to(&app, channel, event).await;
        if let Err(e) = &published {
            app.dispatcher
                .metrics
                .refused(&app.app.name, &self.component, e.case());
        }
        published
    }

    async fn subscribe(&self, channel: WitChannel) -> Result<String, MessagingError> {
        let app = self.app()?;
        let channel = app.channel_for(&channel)?.clone();
        let component = app
            .components
            .iter()
            .find(|c| c.spec.id == self.component)
            .cloned()
            .ok_or_else(|| {
                MessagingError::UnexpectedError(format!(
                    "component `{}` is not running",
                    self.component
                ))
            })?;
        if !component.spec.may_consume(&channel.spec.name) {
            return Err(MessagingError::InsufficientPermissions(format!(
                "component `{}` may not subscribe to `{}`: add it to `subscribe` in the component's [[trigger.messaging]] entry",
                self.component, channel.spec.name
            )));
        }
        let token = format!("{}-{}", app.app.name, uuid::Uuid::new_v4());
        let stop = app.stop.child_token();
        app.subscribe(&channel, &component, stop.clone()).await?;
        app.dynamic.lock().unwrap().insert(token.clone(), stop);
        tracing::info!(app = %app.app.name, component = %self.component, channel = %channel.spec.name, "subscribed at run time");
        Ok(token)
    }

    async fn unsubscribe(&self, token: String) -> Result<(), MessagingError> {
        let app = self.app()?;
        let stop = app.dynamic.lock().unwrap().remove(&token).ok_or_else(|| {
            MessagingError::QueueOrTopicNotFound(format!(
                "no subscription with token `{token}` in app `{}`",
                app.app.name
            ))
        })?;
        stop.cancel();
        tracing::info!(app = %app.app.name, component = %self.component, "unsubscribed at run time");
        Ok(())
    }
}
