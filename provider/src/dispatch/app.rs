//! One app at run time: its channels bound to their links (and declared
//! there before anything is published to them or consumed from them), its
//! components, and the answers to its guests' `pub`/`sub` calls.

use super::Dispatcher;
use super::breaker::Breaker;
use super::pump::{Pump, Target};
use crate::app::{App, Channel, ChannelKind, ComponentSpec};
use crate::broker::{Broker, BrokerError, SubscribeMode, Subscription};
use crate::cloudevents::Event;
use crate::host::bindings::Channel as WitChannel;
use crate::host::{
    ComponentOutput, Grants, InstanceIdentity, Instances, MessagingCtx, MessagingError,
    PreparedComponent,
};
use crate::metrics::{ComponentSample, DeliveryMetrics, DeliverySource, SendMetrics};
use arc_swap::ArcSwap;
use async_trait::async_trait;
use std::collections::{BTreeMap, BTreeSet, HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::{OnceCell, Semaphore};
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// One app at run time.
pub struct AppRuntime {
    /// The app as declared.
    pub app: App,
    channels: BTreeMap<String, Arc<BoundChannel>>,
    components: Vec<Arc<ComponentRuntime>>,
    dispatcher: Arc<Dispatcher>,
    /// Its running subscriptions, from the manifest and from guests.
    pumps: Mutex<Pumps>,
    /// Subscriptions guests made at run time, by the token they got; a
    /// token is meaningful only in its app.
    dynamic: Mutex<HashMap<String, Weak<Pump>>>,
    /// Channels (or subscriptions to them) waiting for their link, by name.
    unattached: Mutex<BTreeMap<String, usize>>,
    /// Cancelled when the app stops or is replaced: ends its waits for links.
    stop: CancellationToken,
    /// The handlers running on this version of the app.
    pub(crate) handlers: TaskTracker,
}

/// An app's running subscriptions; once the app is replaced, any that
/// still attaches is stopped at once.
#[derive(Default)]
struct Pumps {
    running: Vec<Weak<Pump>>,
    retired: bool,
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
    /// where its output goes and what it is granted. A component of the
    /// `previous` version with the same bound on handlers shares it, so the
    /// bound holds while the old version's handlers finish.
    pub fn new(
        app: App,
        links: &BTreeMap<String, Arc<dyn Broker>>,
        mut components: HashMap<String, (PreparedComponent, Arc<ComponentOutput>, Arc<Grants>)>,
        dispatcher: Arc<Dispatcher>,
        previous: Option<&AppRuntime>,
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
                    let in_flight = previous
                        .and_then(|p| p.component(&spec.id))
                        .filter(|c| c.spec.max_in_flight == spec.max_in_flight)
                        .map(|c| c.in_flight.clone())
                        .unwrap_or_else(|| Arc::new(Semaphore::new(spec.max_in_flight)));
                    Arc::new(ComponentRuntime {
                        app_name: app.name.clone(),
                        app: weak.clone(),
                        instances: host.instances(&component, identity, reuse),
                        in_flight,
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
                pumps: Mutex::default(),
                dynamic: Mutex::default(),
                unattached: Mutex::default(),
                handlers: TaskTracker::new(),
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
        self.start_subscriptions_except(&HashSet::new()).await
    }

    /// [`AppRuntime::start_subscriptions`], but for the (component,
    /// channel) pairs in `running`.
    async fn start_subscriptions_except(
        self: &Arc<Self>,
        running: &HashSet<(String, String)>,
    ) -> anyhow::Result<()> {
        let mut down = HashSet::new();
        for channel in self.channels.values() {
            let subscribers: Vec<_> = self
                .components
                .iter()
                .filter(|c| c.spec.subscriptions.contains(&channel.spec.name))
                .filter(|c| !running.contains(&(c.spec.id.clone(), channel.spec.name.clone())))
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
                match self.subscribe(channel, &component, None).await {
                    Ok(_) => {}
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
    /// starts its pump; `token` is what a guest that subscribed got.
    async fn subscribe(
        self: &Arc<Self>,
        channel: &Arc<BoundChannel>,
        component: &Arc<ComponentRuntime>,
        token: Option<String>,
    ) -> Result<Arc<Pump>, BrokerError> {
        self.declare(channel).await?;
        let sub = channel
            .link
            .subscribe(&channel.spec.address, subscribe_mode(&channel.spec))
            .await?;
        let pump = Arc::new(Pump {
            component: component.spec.id.clone(),
            channel: channel.spec.name.clone(),
            token,
            target: ArcSwap::from_pointee(self.target(component, channel, None)),
            stop: self.dispatcher.stop.child_token(),
            done: CancellationToken::new(),
        });
        self.adopt(&pump);
        self.dispatcher.spawn_pump(pump.clone(), sub);
        Ok(pump)
    }

    /// Where a subscription of `component` to `channel` delivers in this
    /// version; `metrics` are the subscription's, when it had them.
    fn target(
        self: &Arc<Self>,
        component: &Arc<ComponentRuntime>,
        channel: &Arc<BoundChannel>,
        metrics: Option<Arc<DeliveryMetrics>>,
    ) -> Target {
        let spec = &channel.spec;
        let metrics = metrics.unwrap_or_else(|| {
            Arc::new(self.dispatcher.metrics.delivery(&DeliverySource {
                app: &self.app.name,
                component: &component.spec.id,
                channel: &spec.name,
                link: &spec.link,
                address: &spec.address,
            }))
        });
        Target {
            app: self.clone(),
            component: component.clone(),
            channel: channel.clone(),
            metrics,
        }
    }

    /// Counts `pump` among this version's subscriptions, or stops it at once
    /// when this version has been replaced.
    fn adopt(&self, pump: &Arc<Pump>) {
        let mut pumps = self.pumps.lock().unwrap();
        if pumps.retired {
            pump.stop.cancel();
            return;
        }
        pumps.running.retain(|p| p.strong_count() > 0);
        pumps.running.push(Arc::downgrade(pump));
    }

    /// Takes over from `old`, the version of the app this one replaces:
    /// each of its subscriptions that this version has too (the same
    /// component and channel, on the same link and address) is moved here
    /// without a pause, so the broker sees no change; the others are
    /// stopped (what they held handed back) before this version's own
    /// start, so that no topic event reaches both versions. Handlers under
    /// way finish on the old version. `declare_channels` comes first.
    pub(crate) async fn take_over(self: &Arc<Self>, old: &AppRuntime) -> anyhow::Result<Retired> {
        let mut moved = HashSet::new();
        let mut stopped = Vec::new();
        for pump in old.retire() {
            let before = pump.target.load_full();
            let here = self
                .component(&pump.component)
                .zip(self.channels.get(&pump.channel))
                .filter(|(component, channel)| {
                    let consumes = match &pump.token {
                        None => component.spec.subscriptions.contains(&pump.channel),
                        Some(_) => component.spec.may_consume(&pump.channel),
                    };
                    consumes && same_subscription(&before.channel, channel)
                });
            let Some((component, channel)) = here else {
                tracing::debug!(app = %self.app.name, component = %pump.component, channel = %pump.channel, "a subscription of the old version stops");
                pump.stop.cancel();
                stopped.push(pump);
                continue;
            };
            tracing::debug!(app = %self.app.name, component = %pump.component, channel = %pump.channel, "a subscription moves to the new version");
            let target = self.target(component, channel, Some(before.metrics.clone()));
            pump.target.store(Arc::new(target));
            self.adopt(&pump);
            match &pump.token {
                Some(token) => {
                    let mut dynamic = self.dynamic.lock().unwrap();
                    dynamic.insert(token.clone(), Arc::downgrade(&pump));
                }
                None => {
                    moved.insert((pump.component.clone(), pump.channel.clone()));
                }
            }
        }
        for pump in &stopped {
            let _ = tokio::time::timeout(SETTLE_BOUND, pump.done.cancelled()).await;
        }
        self.start_subscriptions_except(&moved).await?;
        Ok(Retired { stopped })
    }

    /// Stops everything of this version for good: the app is gone.
    pub(crate) fn remove(&self) -> Retired {
        let stopped = self.retire();
        for pump in &stopped {
            pump.stop.cancel();
        }
        Retired { stopped }
    }

    /// Marks this version replaced: no subscription attaches to it any more,
    /// its waits for links end, its warm instances are dropped (and those
    /// under way once they finish). Returns its running subscriptions.
    fn retire(&self) -> Vec<Arc<Pump>> {
        let running = {
            let mut pumps = self.pumps.lock().unwrap();
            pumps.retired = true;
            std::mem::take(&mut pumps.running)
        };
        self.stop.cancel();
        self.dynamic.lock().unwrap().clear();
        for component in &self.components {
            component.instances.retire();
        }
        self.handlers.close();
        running.iter().filter_map(Weak::upgrade).collect()
    }

    /// What its components' instances are made from.
    pub(crate) fn prepared_components(&self) -> impl Iterator<Item = &PreparedComponent> {
        self.components.iter().map(|c| c.instances.component())
    }

    /// A component by id.
    fn component(&self, id: &str) -> Option<&Arc<ComponentRuntime>> {
        self.components.iter().find(|c| c.spec.id == id)
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
                    Some(component) => app.subscribe(&channel, component, None).await.map(drop),
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
        self.component(component).map(|c| &c.instances)
    }

    /// How many dynamic subscriptions are active.
    pub fn dynamic_subscriptions(&self) -> usize {
        let dynamic = self.dynamic.lock().unwrap();
        dynamic.values().filter(|p| p.strong_count() > 0).count()
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

/// How long a reload waits for a stopped subscription to settle what it
/// held before the new version subscribes in its place.
const SETTLE_BOUND: Duration = Duration::from_secs(10);

/// What a replaced version still has under way: its stopped subscriptions
/// and its handlers.
pub(crate) struct Retired {
    stopped: Vec<Arc<Pump>>,
}

impl Retired {
    /// Waits until the old version's stopped subscriptions have settled and
    /// its handlers have finished (or the provider stops).
    pub async fn finished(self, old: &AppRuntime) {
        for pump in &self.stopped {
            pump.done.cancelled().await;
        }
        old.handlers.wait().await;
    }
}

/// Whether two channels are the same subscription on the broker: the same
/// connected link, address and kind (and group, for a queue).
fn same_subscription(old: &BoundChannel, new: &BoundChannel) -> bool {
    Arc::ptr_eq(&old.link, &new.link)
        && old.spec.address == new.spec.address
        && old.spec.kind == new.spec.kind
        && old.spec.group == new.spec.group
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
        let pump = app
            .subscribe(&channel, &component, Some(token.clone()))
            .await?;
        let mut dynamic = app.dynamic.lock().unwrap();
        dynamic.insert(token.clone(), Arc::downgrade(&pump));
        drop(dynamic);
        tracing::info!(app = %app.app.name, component = %self.component, channel = %channel.spec.name, "subscribed at run time");
        Ok(token)
    }

    async fn unsubscribe(&self, token: String) -> Result<(), MessagingError> {
        let app = self.app()?;
        let pump = app.dynamic.lock().unwrap().remove(&token).ok_or_else(|| {
            MessagingError::QueueOrTopicNotFound(format!(
                "no subscription with token `{token}` in app `{}`",
                app.app.name
            ))
        })?;
        if let Some(pump) = pump.upgrade() {
            pump.stop.cancel();
        }
        tracing::info!(app = %app.app.name, component = %self.component, "unsubscribed at run time");
        Ok(())
    }
}
