//! Dispatch: pushes each subscription's deliveries to its component's
//! handler, settles them with the broker, and stops cleanly.
//!
//! The rules, the same on every link:
//! - A handled event is acknowledged.
//! - A handler that failed because a link of the provider was down (one of
//!   its messaging calls got `service-unavailable` or `connection-lost`) is
//!   run again after a wait, without counting an attempt: a broker restart
//!   does not use up good events' attempts.
//! - Any other failure counts an attempt (the broker's count where it keeps
//!   one, so attempts survive redelivery). Before `max_attempts`, the event
//!   is tried again after the channel's retry delay (doubling): handed back
//!   to the broker with that delay where the link redelivers, kept and
//!   retried here where it does not.
//! - At `max_attempts` (or arriving past it) the event leaves the queue: to
//!   the dead-letter channel (wrapped when it is not a valid CloudEvent, see
//!   [`dead_letter`]), or logged in full when there is none or the
//!   dead-letter channel refuses it for good (too large). When the letter
//!   cannot be sent for now (its link down or slow), the event goes back to
//!   the broker with a delay (or is kept and retried).
//!   Never a tight loop, never a silent loss.
//! - A component whose handlers keep failing is slowed by its circuit
//!   breaker (see [`breaker`]).
//! - On stop, nothing new is taken; what a subscription had taken from the
//!   broker but not started is handed back at once (or handled, where the
//!   link cannot take it back); handlers under way finish within the
//!   deadline and their acknowledgements are sent.

mod app;
pub mod breaker;
pub mod dead_letter;
mod pump;

pub use app::AppRuntime;
use app::{BoundChannel, ComponentRuntime};

use crate::broker::{Acknowledge, Delivery};
use crate::cloudevents::{Event, json};
use crate::host::{HandlerFailure, Host};
use crate::metrics::{DeliveryMetrics, Metrics};
use std::sync::Arc;
use std::time::Duration;
use tokio_util::sync::CancellationToken;
use tokio_util::task::TaskTracker;

/// Runs handlers for every app of a provider and tracks them for shutdown.
pub struct Dispatcher {
    host: Arc<Host>,
    /// Counted as events flow.
    pub metrics: Arc<Metrics>,
    tasks: TaskTracker,
    /// Cancelled to stop: no new deliveries are taken.
    stop: CancellationToken,
    /// Cancelled when the shutdown deadline passed: what is still waiting
    /// is given up (and logged).
    deadline: CancellationToken,
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
            metrics: Arc::default(),
            tasks: TaskTracker::new(),
            stop: CancellationToken::new(),
            deadline: CancellationToken::new(),
        })
    }

    /// The host its components run on.
    pub(crate) fn host(&self) -> &Arc<Host> {
        &self.host
    }

    /// Cancelled when the provider stops.
    pub(crate) fn stopping(&self) -> CancellationToken {
        self.stop.clone()
    }

    /// Stops taking deliveries, hands back what was taken but not started,
    /// then waits up to `deadline` for the handlers under way. Events of
    /// handlers cut off are left unacknowledged, so a broker that redelivers
    /// will.
    pub async fn drain(&self, deadline: Duration) -> DrainReport {
        self.stop.cancel();
        self.tasks.close();
        let drained = tokio::time::timeout(deadline, self.tasks.wait())
            .await
            .is_ok();
        if !drained {
            self.deadline.cancel();
            tracing::warn!(
                "{} handlers were still running at the shutdown deadline; their events are not acknowledged",
                self.tasks.len()
            );
            // Let the subscriptions log what they still hold.
            let _ = tokio::time::timeout(Duration::from_millis(500), self.tasks.wait()).await;
        }
        DrainReport { drained }
    }

    /// Runs one delivery to its end under the rules in the module docs.
    async fn handle(
        &self,
        component: &ComponentRuntime,
        channel: &BoundChannel,
        metrics: &DeliveryMetrics,
        delivery: Delivery,
    ) {
        let spec = &channel.spec;
        if let Some(reason) = delivery.malformed_reason().map(str::to_string) {
            // Not a valid CloudEvent: no handler sees it (see `inbound`).
            metrics.malformed.inc();
            let (wrapper, _, ack) = delivery.into_shared_parts();
            return self
                .dead_letter(component, channel, metrics, &wrapper, 0, &reason, ack)
                .await;
        }
        let (event, mut attempt, ack) = delivery.into_shared_parts();
        let event = &*event;
        // An open breaker lets new events through one at a time, after a
        // pause (the gate is held until the event is done); retries go on
        // to their end.
        let gate = match attempt {
            1 => component.breaker.gate().await,
            _ => None,
        };
        if let Some((_, pause)) = &gate
            && !self.wait(*pause, ack.as_ref()).await
        {
            return self.give_back(component, channel, event, ack).await;
        }
        let mut link_waits = 0;
        loop {
            if attempt > spec.max_attempts {
                // Back after its dead letter could not be sent (or after
                // crashes): the handler had its attempts.
                let error = format!(
                    "delivered {} times without being handled (the handler's last error is in the log)",
                    attempt - 1
                );
                return self
                    .dead_letter(
                        component,
                        channel,
                        metrics,
                        event,
                        spec.max_attempts,
                        &error,
                        ack,
                    )
                    .await;
            }
            let span = crate::traces::process(
                event,
                &component.spec.id,
                &channel.place(&component.app_name),
            );
            let running = std::time::Instant::now();
            let ran = self
                .run(component, event, ack.as_ref(), span.as_ref())
                .await;
            metrics.duration.observe(running.elapsed().as_secs_f64());
            if let Some(span) = span {
                span.end(ran.as_ref().err().map(|f| f.error.as_str()));
            }
            let failure = match ran {
                Ok(()) => {
                    metrics.handled.inc();
                    if component.breaker.succeeded() {
                        tracing::info!(app = %component.app_name, component = %component.spec.id, "a handler succeeded again: the component is back to full speed");
                    }
                    let settling = crate::stages::start();
                    if let Err(e) = ack.ack().await {
                        tracing::warn!(event_id = %event.id, channel = %spec.name, "cannot acknowledge a handled event ({e}); the broker may deliver it again");
                    }
                    crate::stages::record(crate::stages::Stage::Settle, settling);
                    return;
                }
                Err(failure) => failure,
            };
            metrics.failed.inc();
            let HandlerFailure {
                error,
                link_trouble,
            } = failure;
            if let Some(trouble) = link_trouble {
                link_waits += 1;
                let wait = spec.retry.after(link_waits);
                tracing::warn!(
                    app = %component.app_name, component = %component.spec.id, channel = %spec.name,
                    event_id = %event.id, attempt, max_attempts = spec.max_attempts,
                    "{error}; a link was down during the run ({trouble}), so this does not count as an attempt; trying again in {}",
                    humantime::format_duration(wait)
                );
                if !self.wait(wait, ack.as_ref()).await {
                    return self.give_back(component, channel, event, ack).await;
                }
                metrics.retried.inc();
                continue;
            }
            tracing::warn!(
                app = %component.app_name, component = %component.spec.id, channel = %spec.name,
                event_id = %event.id, attempt, max_attempts = spec.max_attempts, "{error}"
            );
            // A new event's first failure counts towards the breaker (link
            // troubles never get here; in-process retries have attempt > 1).
            if attempt == 1 && component.breaker.failed() {
                tracing::warn!(
                    app = %component.app_name, component = %component.spec.id,
                    "the component failed on {} new events in a row: it now takes new events one at a time, {} apart at first, until one succeeds",
                    breaker::OPEN_AFTER, humantime::format_duration(component.breaker.pause())
                );
            }
            if attempt >= spec.max_attempts {
                return self
                    .dead_letter(component, channel, metrics, event, attempt, &error, ack)
                    .await;
            }
            let wait = spec.retry.after(attempt);
            metrics.retried.inc();
            if ack.redelivers() {
                if let Err(e) = ack.nack(wait).await {
                    tracing::warn!(event_id = %event.id, channel = %spec.name, "cannot hand the event back for a retry ({e}); the broker redelivers it once its own timeout passes");
                }
                return;
            }
            if !self.wait(wait, ack.as_ref()).await {
                return self.give_back(component, channel, event, ack).await;
            }
            attempt += 1;
        }
    }

    /// Runs the handler once, telling the broker meanwhile that the delivery
    /// is still in progress where it would otherwise take it back.
    async fn run(
        &self,
        component: &ComponentRuntime,
        event: &Event,
        ack: &dyn Acknowledge,
        span: Option<&crate::traces::Span>,
    ) -> Result<(), HandlerFailure> {
        let trace = span.map(|span| Arc::new(span.headers()));
        let handler = self.host.handle(&component.instances, event, trace);
        let Some(every) = ack.keep_alive_every() else {
            return handler.await;
        };
        tokio::pin!(handler);
        loop {
            match crate::timeout::timeout(every, &mut handler).await {
                Ok(result) => return result,
                Err(_) => {
                    let _ = ack.keep_alive().await;
                }
            }
        }
    }

    /// Waits `wait` with a delivery held, keeping it alive with the broker;
    /// `false` when the provider is stopping.
    async fn wait(&self, wait: Duration, ack: &dyn Acknowledge) -> bool {
        let until = tokio::time::Instant::now() + wait;
        let step = ack.keep_alive_every().unwrap_or(wait);
        loop {
            let next = until.min(tokio::time::Instant::now() + step);
            tokio::select! {
                _ = self.stop.cancelled() => return false,
                _ = tokio::time::sleep_until(next) => {}
            }
            if next >= until {
                return true;
            }
            let _ = ack.keep_alive().await;
        }
    }

    /// Sends an event that failed for good to the channel's dead-letter
    /// channel, or logs it in full; see the module docs.
    #[allow(clippy::too_many_arguments)]
    async fn dead_letter(
        &self,
        component: &ComponentRuntime,
        channel: &BoundChannel,
        metrics: &DeliveryMetrics,
        event: &Event,
        attempts: u32,
        error: &str,
        ack: Box<dyn Acknowledge>,
    ) {
        let spec = &channel.spec;
        let Some(app) = component.app.upgrade() else {
            return self.give_back(component, channel, event, ack).await;
        };
        let Some(dl) = spec
            .dead_letter
            .as_deref()
            .and_then(|name| app.channel(name))
        else {
            tracing::error!(
                app = %component.app_name, component = %component.spec.id, channel = %spec.name,
                event_id = %event.id, event = %String::from_utf8_lossy(&json::encode(event)),
                "event dropped {}; it is logged here in full (declare `dead_letter` on the channel to keep such events)",
                why_given_up(attempts, error)
            );
            metrics.dropped.inc();
            let _ = ack.ack().await;
            return;
        };
        let letter = Arc::new(dead_letter::letter(
            event,
            &dead_letter::Cause {
                app: &component.app_name,
                component: &component.spec.id,
                channel: &spec.name,
                link: &spec.link,
                address: &spec.address,
                attempts,
                error,
                malformed: attempts == 0,
            },
        ));
        let mut waits = 0;
        loop {
            let refused = match app.send(dl, letter.clone()).await {
                Ok(()) => {
                    tracing::warn!(app = %component.app_name, channel = %spec.name, event_id = %event.id, dead_letter = %dl.spec.name, "event dead-lettered {}", why_given_up(attempts, error));
                    metrics.dead_lettered.inc();
                    let _ = ack.ack().await;
                    return;
                }
                Err(e) => e,
            };
            // Only a refusal for good ends here: anything else (the link
            // down, slow, or refusing for now) is tried again, since a lost
            // event is worse than one that waits.
            if refused.is_permanent() {
                tracing::error!(
                    app = %component.app_name, component = %component.spec.id, channel = %spec.name,
                    event_id = %event.id, event = %String::from_utf8_lossy(&json::encode(event)),
                    "event dropped {}: the dead-letter channel `{}` refused it ({refused}); it is logged here in full",
                    why_given_up(attempts, error), dl.spec.name
                );
                metrics.dropped.inc();
                let _ = ack.ack().await;
                return;
            }
            waits += 1;
            let wait = spec.retry.after(attempts.max(waits));
            if ack.redelivers() {
                tracing::error!(app = %component.app_name, channel = %spec.name, event_id = %event.id, "cannot dead-letter to `{}` ({refused}); handing the event back to the broker, to come back in {}", dl.spec.name, humantime::format_duration(wait));
                if let Err(e) = ack.nack(wait).await {
                    tracing::warn!(event_id = %event.id, channel = %spec.name, "cannot hand the event back ({e}); the broker redelivers it once its own timeout passes");
                }
                return;
            }
            tracing::error!(app = %component.app_name, channel = %spec.name, event_id = %event.id, "cannot dead-letter to `{}` ({refused}); trying again in {}", dl.spec.name, humantime::format_duration(wait));
            if !self.wait(wait, ack.as_ref()).await {
                return self.give_back(component, channel, event, ack).await;
            }
        }
    }

    /// The provider is stopping with this event not handled: back to the
    /// broker at once where it takes it, else logged in full.
    async fn give_back(
        &self,
        component: &ComponentRuntime,
        channel: &BoundChannel,
        event: &Event,
        ack: Box<dyn Acknowledge>,
    ) {
        if ack.redelivers() {
            if let Err(e) = ack.nack(Duration::ZERO).await {
                tracing::warn!(event_id = %event.id, channel = %channel.spec.name, "cannot hand the event back ({e}); the broker redelivers it once its own timeout passes");
            }
            return;
        }
        self.lost(
            component,
            channel,
            event,
            "the provider stopped before it was handled, and its link cannot take it back",
        );
    }

    /// Logs an event this process must give up, in full.
    fn lost(&self, component: &ComponentRuntime, channel: &BoundChannel, event: &Event, why: &str) {
        tracing::error!(
            app = %component.app_name, component = %component.spec.id, channel = %channel.spec.name,
            event_id = %event.id, event = %String::from_utf8_lossy(&json::encode(event)),
            "event not handled: {why}; it is logged here in full"
        );
    }
}

/// Why an event was given up, for the log: after its attempts, or at once
/// when it was not a valid CloudEvent (no attempts).
fn why_given_up(attempts: u32, error: &str) -> String {
    match attempts {
        0 => format!("on arrival, without reaching a handler ({error})"),
        n => format!("after {n} failed attempts ({error})"),
    }
}
