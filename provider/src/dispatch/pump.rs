//! A subscription's pump: takes deliveries from the broker when a handler
//! slot is free and hands each to the component its subscription serves now.
//!
//! What it serves is a [`Target`] that a reload swaps: the subscription (and
//! so what the broker has handed it) stays, new deliveries go to the new
//! version, and handlers under way finish on the old one, which they hold.

use super::Dispatcher;
use super::app::{AppRuntime, BoundChannel, ComponentRuntime};
use crate::broker::{Delivery, Subscription};
use crate::metrics::DeliveryMetrics;
use arc_swap::ArcSwap;
use futures::FutureExt as _;
use std::sync::Arc;
use std::time::Duration;
use tokio::sync::OwnedSemaphorePermit;
use tokio_util::sync::CancellationToken;

/// Where a subscription's deliveries go.
pub(crate) struct Target {
    /// Held so that the version a handler started on lives until it ends.
    pub app: Arc<AppRuntime>,
    pub component: Arc<ComponentRuntime>,
    pub channel: Arc<BoundChannel>,
    pub metrics: Arc<DeliveryMetrics>,
}

/// A running subscription, as its app knows it.
pub(crate) struct Pump {
    /// The component it serves, by id.
    pub component: String,
    /// The channel it reads, by name.
    pub channel: String,
    /// The token a guest got for it, when a guest subscribed at run time.
    pub token: Option<String>,
    pub target: ArcSwap<Target>,
    /// Cancelled to stop it: what it holds is settled.
    pub stop: CancellationToken,
    /// Cancelled once it has stopped and settled what it held.
    pub done: CancellationToken,
}

impl Dispatcher {
    /// Runs `pump` over `sub` until the pump is stopped.
    pub(crate) fn spawn_pump(self: &Arc<Self>, pump: Arc<Pump>, sub: Box<dyn Subscription>) {
        let this = self.clone();
        self.tasks.spawn(async move {
            this.pump(&pump, sub).await;
            pump.done.cancel();
        });
    }

    /// Pulls deliveries only when a handler slot of the component is free,
    /// so a slow component pushes back on its broker instead of piling
    /// events up in memory. When stopped, settles what the subscription
    /// still holds.
    async fn pump(self: &Arc<Self>, pump: &Pump, mut sub: Box<dyn Subscription>) {
        /// Deliveries a pump takes before it lets others run.
        const TURN: u32 = 8;
        let mut taken: u32 = 0;
        loop {
            let target = pump.target.load_full();
            let permit = tokio::select! {
                biased;
                _ = pump.stop.cancelled() => break,
                permit = target.component.in_flight.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break, // never closed
                },
            };
            let delivery = tokio::select! {
                biased;
                _ = pump.stop.cancelled() => break,
                delivery = sub.next() => delivery,
            };
            let Some(delivery) = delivery else {
                let c = &target.component;
                tracing::warn!(app = %c.app_name, component = %c.spec.id, channel = %target.channel.spec.name, "the broker ended the subscription");
                return;
            };
            let (target, permit) = current(pump, target, permit).await;
            target.metrics.received.inc();
            self.spawn_handler(target, delivery, permit);
            // Competing consumers in this process take turns every few
            // deliveries (a yield per delivery cost a third of the embedded
            // relay's throughput).
            taken = taken.wrapping_add(1);
            if taken.is_multiple_of(TURN) {
                tokio::task::yield_now().await;
            }
        }
        self.settle_leftovers(pump, sub).await;
    }

    /// Handles a delivery in a task of its own, holding one of the
    /// component's handler slots until it is done; the task is counted
    /// with its app's version, so that a reload knows when the old one is
    /// idle.
    fn spawn_handler(
        self: &Arc<Self>,
        target: Arc<Target>,
        delivery: Delivery,
        slot: OwnedSemaphorePermit,
    ) {
        let this = self.clone();
        let version = target.app.handlers.token();
        self.tasks.spawn(async move {
            use std::sync::atomic::Ordering::Relaxed;
            let component = &target.component;
            component.running.fetch_add(1, Relaxed);
            // Boxed: the handler's state (the wasm call's among it) is large,
            // and a task's future is moved several times on its way into the
            // scheduler; kept small, those moves copy a pointer.
            Box::pin(this.handle(component, &target.channel, &target.metrics, delivery)).await;
            component.running.fetch_sub(1, Relaxed);
            drop((slot, version));
        });
    }

    /// Stops the subscription and settles what it had taken from the broker
    /// but not handed out: handed back at once where the broker takes it
    /// back, handled here (within the shutdown deadline) where it cannot.
    async fn settle_leftovers(self: &Arc<Self>, pump: &Pump, mut sub: Box<dyn Subscription>) {
        sub.stop().await;
        let mut handed_back = 0usize;
        loop {
            let delivery = tokio::select! {
                biased;
                _ = self.deadline.cancelled() => break,
                delivery = sub.next() => delivery,
            };
            let Some(delivery) = delivery else { break };
            if delivery.redelivers() {
                let (event, _, ack) = delivery.into_shared_parts();
                if let Err(e) = ack.nack(Duration::ZERO).await {
                    tracing::warn!(event_id = %event.id, channel = %pump.channel, "cannot hand an event back ({e}); the broker redelivers it once its own timeout passes");
                }
                handed_back += 1;
                continue;
            }
            // The broker cannot take it back: this process is its only chance.
            let target = pump.target.load_full();
            let permit = tokio::select! {
                biased;
                _ = self.deadline.cancelled() => {
                    self.lost(&target.component, &target.channel, delivery.event(), "the shutdown deadline passed before it could be handled");
                    break;
                }
                permit = target.component.in_flight.clone().acquire_owned() => match permit {
                    Ok(permit) => permit,
                    Err(_) => break,
                },
            };
            target.metrics.received.inc();
            self.spawn_handler(target, delivery, permit);
        }
        if self.deadline.is_cancelled() {
            // What is buffered still comes out at once; nothing may vanish
            // without a line in the log.
            let target = pump.target.load();
            while let Some(Some(delivery)) = sub.next().now_or_never() {
                if !delivery.redelivers() {
                    self.lost(
                        &target.component,
                        &target.channel,
                        delivery.event(),
                        "the shutdown deadline passed before it could be handled",
                    );
                }
            }
        }
        if handed_back > 0 {
            let target = pump.target.load();
            tracing::info!(app = %target.component.app_name, component = %pump.component, channel = %pump.channel, "handed back {handed_back} events taken from the broker but not started");
        }
    }
}

/// The target to hand a delivery to, with a slot of its component: a
/// reload may have moved the subscription while the pump waited.
async fn current(
    pump: &Pump,
    waited_for: Arc<Target>,
    permit: OwnedSemaphorePermit,
) -> (Arc<Target>, OwnedSemaphorePermit) {
    let now = pump.target.load();
    if Arc::ptr_eq(&now, &waited_for) {
        return (waited_for, permit);
    }
    let now = arc_swap::Guard::into_inner(now);
    if Arc::ptr_eq(&now.component.in_flight, &waited_for.component.in_flight) {
        return (now, permit);
    }
    match now.component.in_flight.clone().acquire_owned().await {
        Ok(slot) => (now, slot),
        // Never closed; the old version's slot still bounds it.
        Err(_) => (waited_for, permit),
    }
}
