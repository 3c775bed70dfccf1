//! Dispatch: binds each app's channels to its links, pushes deliveries to
//! component handlers (bounded concurrency, retries with backoff, then the
//! dead-letter channel), answers the guests' `pub`/`sub` calls with the app's
//! permissions, and drains in-flight handlers on shutdown.

use crate::app::{App, Channel, ChannelKind, ComponentSpec};
use crate::broker::{Broker, BrokerError, Delivery, SubscribeMode, Subscription};
use crate::cloudevents::{Event, json};
use crate::host::bindings::Channel as WitChannel;
use crate::host::{
    ComponentOutput, Host, InstanceIdentity, MessagingCtx, MessagingError, PreparedComponent,
};
use async_trait::async_trait;
use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::{Arc, Mutex, Weak};
use std::time::Duration;
use tokio::sync::Semaphore;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Runs handlers for every app of a provider and tracks them for shutdown.
pub struct Dispatcher {
    host: Arc<Host>,
    tasks: TaskTracker,
    stop: CancellationToken,
}

/// What a shutdown did with the handlers that were running.
#[derive(Debug, Default, PartialEq, Eq)]
pub struct DrainReport {
    /// Whether every in-flight handler finished before the deadline.
    pub drained: bool,
}

impl Dispatcher {
    /// A dispatcher running components on `host`.
    pub fn new(host: Arc<Host>) -> Arc<Dispatcher> {
        Arc::new(Dispatcher {
            host,
            tasks: TaskTracker::new(),
            stop: CancellationToken::new(),
        })
    }

    /// Stops taking deliveries, then waits up to `deadline` for the handlers
    /// under way. Events of handlers cut off are left unacknowledged, so a
    /// broker that redelivers will.
    pub async fn drain(&self, deadline: Duration) -> DrainReport {
        self.stop.cancel();
        self.tasks.close();
        let drained = tokio::time::timeout(deadline, self.tasks.wait())
            .await
            .is_ok();
        DrainReport { drained }
    }

    fn spawn_pump(
        self: &Arc<Self>,
        component: Arc<ComponentRuntime>,
        channel: Channel,
        sub: Box<dyn Subscription>,
        stop: CancellationToken,
    ) {
        let this = self.clone();
        self.tasks
            .spawn(async move { this.pump(component, channel, sub, stop).await });
    }

    /// Pulls deliveries only when a handler slot is free, so a slow component
    /// pushes back on its broker instead of piling events up in memory.
    async fn pump(
        self: Arc<Self>,
        component: Arc<ComponentRuntime>,
        channel: Channel,
        mut sub: Box<dyn Subscription>,
        stop: CancellationToken,
    ) {
        loop {
            let permit = tokio::select! {
                p = component.in_flight.clone().acquire_owned() => p.expect("the semaphore is never closed"),
                _ = stop.cancelled() => return,
            };
            let delivery = tokio::select! {
                d = sub.next() => d,
                _ = stop.cancelled() => return,
            };
            let Some(delivery) = delivery else {
                tracing::warn!(app = %component.app_name, component = %component.spec.id, channel = %channel.name, "the broker ended the subscription");
                return;
            };
            let (this, component, channel) = (self.clone(), component.clone(), channel.clone());
            self.tasks.spawn(async move {
                this.handle(&component, &channel, delivery).await;
                drop(permit);
            });
            // Let competing consumers in this process take their turn.
            tokio::task::yield_now().await;
        }
    }

    async fn handle(&self, component: &ComponentRuntime, channel: &Channel, delivery: Delivery) {
        let (event, first_attempt, ack) = delivery.into_parts();
        let mut attempt = first_attempt;
        loop {
            let error = match self
                .host
                .handle(&component.prepared, &component.identity, event.clone())
                .await
            {
                Ok(Ok(())) => {
                    if let Err(e) = ack.ack().await {
                        tracing::warn!(event_id = %event.id, channel = %channel.name, "cannot acknowledge a handled event: {e}");
                    }
                    return;
                }
                Ok(Err(e)) => format!("on-receive returned an error: {e}"),
                Err(trap) => format!("on-receive trapped: {trap:?}"),
            };
            tracing::warn!(
                app = %component.app_name, component = %component.spec.id, channel = %channel.name,
                event_id = %event.id, attempt, max_attempts = channel.max_attempts, "{error}"
            );
            if attempt >= channel.max_attempts {
                break;
            }
            let backoff = Duration::from_millis(100 * 2u64.pow((attempt - 1).min(6)));
            tokio::select! {
                _ = tokio::time::sleep(backoff) => {}
                _ = self.stop.cancelled() => {
                    // Shutting down: hand the event back for redelivery.
                    let _ = ack.nack().await;
                    return;
                }
            }
            attempt += 1;
        }
        let app = component.app.upgrade();
        let dead_letter = app
            .as_ref()
            .zip(channel.dead_letter.as_ref())
            .and_then(|(a, dl)| a.app.channels.get(dl).map(|c| (a, c)));
        if let Some((app, dl)) = dead_letter {
            match app.send(dl, &event).await {
                Ok(()) => {
                    tracing::warn!(event_id = %event.id, channel = %channel.name, dead_letter = %dl.name, "event dead-lettered after {} failed attempts", channel.max_attempts);
                    let _ = ack.ack().await;
                }
                Err(e) => {
                    tracing::error!(event_id = %event.id, channel = %channel.name, "cannot dead-letter to `{}` ({e}); handing the event back to the broker", dl.name);
                    let _ = ack.nack().await;
                }
            }
        } else {
            tracing::error!(
                event_id = %event.id, channel = %channel.name, event = %String::from_utf8_lossy(&json::encode(&event)),
                "event dropped after {} failed attempts; it is logged here in full (declare `dead_letter` on the channel to keep such events)",
                channel.max_attempts
            );
            let _ = ack.ack().await;
        }
    }
}

/// One app at run time: its channels bound to connected links, its
/// components prepared, its dynamic subscriptions.
pub struct AppRuntime {
    /// The app as declared.
    pub app: App,
    links: BTreeMap<String, Arc<dyn Broker>>,
    components: Vec<Arc<ComponentRuntime>>,
    dispatcher: Arc<Dispatcher>,
    /// Dynamic subscriptions by token; a token is meaningful only here.
    dynamic: Mutex<HashMap<String, CancellationToken>>,
    stop: CancellationToken,
}

struct ComponentRuntime {
    app_name: String,
    app: Weak<AppRuntime>,
    spec: ComponentSpec,
    prepared: PreparedComponent,
    identity: InstanceIdentity,
    in_flight: Arc<Semaphore>,
}

impl AppRuntime {
    /// Binds an app to its links and prepared components. `links` must hold
    /// every link the app's channels use; `components` every component, with
    /// where its output goes.
    pub fn new(
        app: App,
        links: BTreeMap<String, Arc<dyn Broker>>,
        components: HashMap<String, (PreparedComponent, Arc<ComponentOutput>)>,
        dispatcher: Arc<Dispatcher>,
    ) -> Arc<AppRuntime> {
        Arc::new_cyclic(|weak: &Weak<AppRuntime>| {
            let components = app
                .components
                .iter()
                .map(|spec| {
                    Arc::new(ComponentRuntime {
                        app_name: app.name.clone(),
                        app: weak.clone(),
                        spec: spec.clone(),
                        prepared: components[&spec.id].0.clone(),
                        identity: InstanceIdentity {
                            app: app.name.clone(),
                            component: spec.id.clone(),
                            environment: spec.environment.clone(),
                            messaging: Arc::new(ComponentCtx {
                                app: weak.clone(),
                                component: spec.id.clone(),
                            }),
                            output: components[&spec.id].1.clone(),
                        },
                        in_flight: Arc::new(Semaphore::new(spec.max_in_flight)),
                    })
                })
                .collect();
            AppRuntime {
                links,
                components,
                stop: dispatcher.stop.child_token(),
                dispatcher,
                dynamic: Mutex::default(),
                app,
            }
        })
    }

    /// Declares the app's channels to their links and starts every
    /// component's subscriptions from the manifest. What a link that is down
    /// cannot take now is attached in the background once it is back, so one
    /// broker being away stops neither the start nor the other links' work.
    pub async fn start(self: &Arc<Self>) -> anyhow::Result<()> {
        let mut down = HashSet::new();
        for channel in self.app.channels.values() {
            let subscribers: Vec<_> = self
                .components
                .iter()
                .filter(|c| c.spec.subscriptions.contains(&channel.name))
                .map(|c| Some(c.clone()))
                .collect();
            let units = if subscribers.is_empty() {
                vec![None]
            } else {
                subscribers
            };
            for subscriber in units {
                if down.contains(&channel.link) {
                    self.attach_later(channel.clone(), subscriber);
                    continue;
                }
                match self.attach(channel, subscriber.as_ref()).await {
                    Ok(()) => {}
                    Err((what, e)) if e.is_transient() => {
                        tracing::warn!(app = %self.app.name, link = %channel.link, "{what}: {e}; attaching the link's channels once it is back");
                        down.insert(channel.link.clone());
                        self.attach_later(channel.clone(), subscriber);
                    }
                    Err((what, e)) => anyhow::bail!("app `{}`: {what}: {e}", self.app.name),
                }
            }
        }
        Ok(())
    }

    /// Declares `channel` to its link and, given a subscriber, subscribes it
    /// and starts its pump. An error says which step failed.
    async fn attach(
        &self,
        channel: &Channel,
        subscriber: Option<&Arc<ComponentRuntime>>,
    ) -> Result<(), (String, BrokerError)> {
        let link = self.link(channel);
        match channel.kind {
            ChannelKind::Queue => link.declare_queue(&channel.address, &channel.group).await,
            ChannelKind::Topic => link.declare_topic(&channel.address).await,
        }
        .map_err(|e| {
            let what = format!("cannot declare {} `{}`", channel.kind, channel.name);
            (what, e)
        })?;
        if let Some(component) = subscriber {
            let sub = link
                .subscribe(&channel.address, subscribe_mode(channel))
                .await
                .map_err(|e| {
                    let what = format!(
                        "cannot subscribe component `{}` to `{}`",
                        component.spec.id, channel.name
                    );
                    (what, e)
                })?;
            self.dispatcher
                .spawn_pump(component.clone(), channel.clone(), sub, self.stop.clone());
        }
        Ok(())
    }

    /// Retries `attach`, with backoff, until it succeeds or the app stops.
    fn attach_later(self: &Arc<Self>, channel: Channel, subscriber: Option<Arc<ComponentRuntime>>) {
        let (app, stop) = (Arc::downgrade(self), self.stop.clone());
        self.dispatcher.tasks.spawn(async move {
            let mut backoff = Duration::from_millis(200);
            loop {
                tokio::select! {
                    _ = stop.cancelled() => return,
                    _ = tokio::time::sleep(backoff) => {}
                }
                let Some(app) = app.upgrade() else { return };
                match app.attach(&channel, subscriber.as_ref()).await {
                    Ok(()) => {
                        tracing::info!(app = %app.app.name, link = %channel.link, channel = %channel.name, "channel attached to its link");
                        return;
                    }
                    Err((_, e)) if e.is_transient() => {
                        backoff = (backoff * 2).min(Duration::from_secs(5))
                    }
                    Err((what, e)) => {
                        tracing::error!(app = %app.app.name, link = %channel.link, "{what}: {e}; giving up");
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
        event: &Event,
    ) -> Result<(), MessagingError> {
        let channel = self.app.channels.get(channel).ok_or_else(|| {
            MessagingError::QueueOrTopicNotFound(format!(
                "app `{}` declares no channel `{channel}`",
                self.app.name
            ))
        })?;
        self.send(channel, event).await
    }

    /// Watches a channel: every event published on it from now on, without
    /// taking events away from a queue's consumers.
    pub async fn watch(&self, channel: &str) -> Result<Box<dyn Subscription>, MessagingError> {
        let channel = self.app.channels.get(channel).ok_or_else(|| {
            MessagingError::QueueOrTopicNotFound(format!(
                "app `{}` declares no channel `{channel}`",
                self.app.name
            ))
        })?;
        Ok(self
            .link(channel)
            .subscribe(&channel.address, SubscribeMode::Topic)
            .await?)
    }

    /// How many dynamic subscriptions are active.
    pub fn dynamic_subscriptions(&self) -> usize {
        self.dynamic.lock().unwrap().len()
    }

    fn link(&self, channel: &Channel) -> &Arc<dyn Broker> {
        &self.links[&channel.link]
    }

    /// Checks an event against the CloudEvents rules and the payload limits,
    /// then hands it to the channel's link.
    async fn send(&self, channel: &Channel, event: &Event) -> Result<(), MessagingError> {
        event.validate().map_err(|e| {
            MessagingError::UnsupportedMessageFormat(format!("not a valid CloudEvent: {e}"))
        })?;
        let link = self.link(channel);
        let size = event.payload_len();
        for (limit, whose) in [
            (channel.max_payload, "channel"),
            (link.max_payload(), "link"),
        ] {
            if let Some(limit) = limit
                && size > limit
            {
                return Err(MessagingError::PayloadTooLarge(format!(
                    "{size} bytes of data exceed the {whose} limit of {limit} bytes for `{}`",
                    channel.name
                )));
            }
        }
        Ok(link.publish(&channel.address, event).await?)
    }

    /// Finds a channel a guest named, checking that its kind matches.
    fn channel_for(&self, requested: &WitChannel) -> Result<&Channel, MessagingError> {
        let (name, kind) = match requested {
            WitChannel::Queue(n) => (n, ChannelKind::Queue),
            WitChannel::Topic(n) => (n, ChannelKind::Topic),
        };
        match self.app.channels.get(name) {
            Some(c) if c.kind == kind => Ok(c),
            Some(c) => Err(MessagingError::QueueOrTopicNotFound(format!(
                "`{name}` is declared as a {}, not a {kind}",
                c.kind
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
}

impl ComponentCtx {
    fn parts(&self) -> Result<(Arc<AppRuntime>, Arc<ComponentRuntime>), MessagingError> {
        let app = self
            .app
            .upgrade()
            .ok_or_else(|| MessagingError::ServiceUnavailable("the app is stopping".into()))?;
        let component = app
            .components
            .iter()
            .find(|c| c.spec.id == self.component)
            .cloned()
            .expect("a context exists only for its app's components");
        Ok((app, component))
    }
}

#[async_trait]
impl MessagingCtx for ComponentCtx {
    async fn publish(&self, channel: WitChannel, event: Event) -> Result<(), MessagingError> {
        let (app, component) = self.parts()?;
        let channel = app.channel_for(&channel)?;
        if !component.spec.publish.contains(&channel.name) {
            return Err(MessagingError::InsufficientPermissions(format!(
                "component `{}` may not publish to `{}`: add it to `publish` in the component's [[trigger.messaging]] entry",
                self.component, channel.name
            )));
        }
        app.send(channel, &event).await
    }

    async fn subscribe(&self, channel: WitChannel) -> Result<String, MessagingError> {
        let (app, component) = self.parts()?;
        let channel = app.channel_for(&channel)?.clone();
        if !component.spec.may_consume(&channel.name) {
            return Err(MessagingError::InsufficientPermissions(format!(
                "component `{}` may not subscribe to `{}`: add it to `subscribe` in the component's [[trigger.messaging]] entry",
                self.component, channel.name
            )));
        }
        let sub = app
            .link(&channel)
            .subscribe(&channel.address, subscribe_mode(&channel))
            .await?;
        let token = format!("{}-{}", app.app.name, uuid::Uuid::new_v4());
        let stop = app.stop.child_token();
        app.dynamic
            .lock()
            .unwrap()
            .insert(token.clone(), stop.clone());
        tracing::info!(app = %app.app.name, component = %self.component, channel = %channel.name, "subscribed at run time");
        app.dispatcher.spawn_pump(component, channel, sub, stop);
        Ok(token)
    }

    async fn unsubscribe(&self, token: String) -> Result<(), MessagingError> {
        let (app, _) = self.parts()?;
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
