//! Metrics in Prometheus' text format. What changes per event (events taken,
//! their outcomes, handler and publish durations) is counted in counters and
//! histograms resolved once per subscription and per channel, so an event
//! costs a few atomic adds and no allocation; what is a state (instances,
//! handlers in flight, circuit breakers, links) is read when scraped.
//!
//! Names and labels follow OpenTelemetry's messaging semantic conventions
//! where they have one (`messaging_client_consumed_messages_total`,
//! `messaging_process_duration_seconds`, `messaging_client_sent_messages_total`,
//! `messaging_client_operation_duration_seconds`; labels
//! `messaging_system`, `messaging_destination_name`,
//! `messaging_operation_name`, `error_type`); ours start with
//! `trigger_messaging_`.

use prometheus_client::collector::Collector;
use prometheus_client::encoding::{DescriptorEncoder, EncodeLabelSet, EncodeMetric as _};
use prometheus_client::metrics::MetricType;
use prometheus_client::metrics::counter::{ConstCounter, Counter};
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::ConstGauge;
use prometheus_client::metrics::histogram::{Histogram, exponential_buckets};
use prometheus_client::registry::{Registry, Unit};
use std::collections::HashMap;
use std::sync::Mutex;

/// Where events are taken from: one subscription of a component to a channel.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct DeliveryLabels {
    app: String,
    component: String,
    channel: String,
    link: String,
    messaging_system: &'static str,
    messaging_destination_name: String,
}

/// What became of events of one subscription.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct OutcomeLabels {
    app: String,
    component: String,
    channel: String,
    link: String,
    messaging_system: &'static str,
    messaging_destination_name: String,
    outcome: &'static str,
}

/// Where events are published: a channel of an app.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct SendLabels {
    app: String,
    channel: String,
    link: String,
    messaging_system: &'static str,
    messaging_destination_name: String,
    messaging_operation_name: &'static str,
}

/// A guest's `publish` refused, by the interface's error case.
#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct RefusedLabels {
    app: String,
    component: String,
    error_type: &'static str,
}

type Histograms<L> = Family<L, Histogram, fn() -> Histogram>;

/// Handler and publish durations: 0.25 ms to about 8 s, doubling.
fn duration_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.00025, 2.0, 16))
}

/// The provider's metrics; the registry is assembled once apps are loaded.
pub struct Metrics {
    consumed: Family<DeliveryLabels, Counter>,
    outcomes: Family<OutcomeLabels, Counter>,
    process_duration: Histograms<DeliveryLabels>,
    sent: Family<SendLabels, Counter>,
    send_duration: Histograms<SendLabels>,
    refused: Family<RefusedLabels, Counter>,
    /// Each link's `messaging_system`, by link name.
    systems: Mutex<HashMap<String, &'static str>>,
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics {
            consumed: Family::default(),
            outcomes: Family::default(),
            process_duration: Family::new_with_constructor(duration_histogram),
            sent: Family::default(),
            send_duration: Family::new_with_constructor(duration_histogram),
            refused: Family::default(),
            systems: Mutex::default(),
        }
    }
}

/// Where a subscription takes events from, for its metrics' labels.
pub struct DeliverySource<'a> {
    /// The app.
    pub app: &'a str,
    /// The subscribing component.
    pub component: &'a str,
    /// The channel, by the app's name for it.
    pub channel: &'a str,
    /// The channel's link.
    pub link: &'a str,
    /// The channel's name on the broker.
    pub address: &'a str,
}

/// One subscription's counters, resolved once.
#[derive(Clone)]
pub struct DeliveryMetrics {
    /// Events taken from the broker.
    pub received: Counter,
    /// Events whose handler succeeded.
    pub handled: Counter,
    /// Handler runs that failed (each attempt).
    pub failed: Counter,
    /// Events handed back or kept for another attempt.
    pub retried: Counter,
    /// Events sent to the dead-letter channel.
    pub dead_lettered: Counter,
    /// Events given up without a dead-letter channel to take them (logged whole).
    pub dropped: Counter,
    /// Messages that were not valid CloudEvents on arrival.
    pub malformed: Counter,
    /// How long handler runs took.
    pub duration: Histogram,
}

/// One channel's publish counters, resolved once.
#[derive(Clone)]
pub struct SendMetrics {
    /// Events the broker confirmed.
    pub sent: Counter,
    /// How long the broker took to confirm.
    pub duration: Histogram,
}

impl Metrics {
    /// Records the `messaging_system` of a link (its type, in the semantic
    /// conventions' spelling where they have one).
    pub fn add_link(&self, link: &str, link_type: &'static str) {
        self.systems
            .lock()
            .unwrap()
            .insert(link.to_string(), messaging_system(link_type));
    }

    /// A link's `messaging_system`, as [`Metrics::add_link`] recorded it.
    pub fn system(&self, link: &str) -> &'static str {
        self.systems
            .lock()
            .unwrap()
            .get(link)
            .copied()
            .unwrap_or("unknown")
    }

    /// The counters of one subscription.
    pub fn delivery(&self, source: &DeliverySource) -> DeliveryMetrics {
        let labels = DeliveryLabels {
            app: label(source.app),
            component: label(source.component),
            channel: label(source.channel),
            link: label(source.link),
            messaging_system: self.system(source.link),
            messaging_destination_name: label(source.address),
        };
        let outcome = |outcome| {
            self.outcomes
                .get_or_create(&OutcomeLabels {
                    app: labels.app.clone(),
                    component: labels.component.clone(),
                    channel: labels.channel.clone(),
                    link: labels.link.clone(),
                    messaging_system: labels.messaging_system,
                    messaging_destination_name: labels.messaging_destination_name.clone(),
                    outcome,
                })
                .clone()
        };
        DeliveryMetrics {
            received: self.consumed.get_or_create(&labels).clone(),
            handled: outcome("handled"),
            failed: outcome("failed"),
            retried: outcome("retried"),
            dead_lettered: outcome("dead_lettered"),
            dropped: outcome("dropped"),
            malformed: outcome("malformed"),
            duration: self.process_duration.get_or_create(&labels).clone(),
        }
    }

    /// The publish counters of one channel.
    pub fn send(&self, app: &str, channel: &str, link: &str, address: &str) -> SendMetrics {
        let labels = SendLabels {
            app: label(app),
            channel: label(channel),
            link: label(link),
            messaging_system: self.system(link),
            messaging_destination_name: label(address),
            messaging_operation_name: "send",
        };
        SendMetrics {
            sent: self.sent.get_or_create(&labels).clone(),
            duration: self.send_duration.get_or_create(&labels).clone(),
        }
    }

    /// Counts a guest's `publish` refused with `error_type` (the
    /// interface's error case, e.g. `payload-too-large`).
    pub fn refused(&self, app: &str, component: &str, error_type: &'static str) {
        self.refused
            .get_or_create(&RefusedLabels {
                app: label(app),
                component: label(component),
                error_type,
            })
            .inc();
    }

    /// The registry to scrape: these metrics, and `state`'s read at each scrape.
    pub fn registry(&self, state: impl Fn() -> StateSample + Send + Sync + 'static) -> Registry {
        let mut registry = Registry::default();
        registry.register(
            "messaging_client_consumed_messages",
            "Events a subscription took from its broker",
            self.consumed.clone(),
        );
        registry.register(
            "trigger_messaging_events",
            "What became of the events taken: handled, failed (each failed run), retried, dead_lettered, dropped (no dead-letter channel; logged whole), malformed (not a CloudEvent on arrival)",
            self.outcomes.clone(),
        );
        registry.register_with_unit(
            "messaging_process_duration",
            "How long handler runs took",
            Unit::Seconds,
            self.process_duration.clone(),
        );
        registry.register(
            "messaging_client_sent_messages",
            "Events published and confirmed by the broker",
            self.sent.clone(),
        );
        registry.register_with_unit(
            "messaging_client_operation_duration",
            "How long the broker took to confirm a publish",
            Unit::Seconds,
            self.send_duration.clone(),
        );
        registry.register(
            "trigger_messaging_publish_refused",
            "Guests' publish calls refused, by the interface's error case",
            self.refused.clone(),
        );
        registry.register_collector(Box::new(StateCollector(Box::new(state))));
        registry
    }
}

/// A label value as the text format must carry it: prometheus-client writes
/// values as given, and addresses may hold quotes, backslashes and line
/// breaks (a Redis key may hold any byte).
fn label(value: &str) -> String {
    if !value.contains(['\\', '"', '\n']) {
        return value.to_string();
    }
    let mut escaped = String::with_capacity(value.len() + 8);
    for c in value.chars() {
        match c {
            '\\' => escaped.push_str("\\\\"),
            '"' => escaped.push_str("\\\""),
            '\n' => escaped.push_str("\\n"),
            c => escaped.push(c),
        }
    }
    escaped
}

/// The text a scrape gets.
pub fn encode(registry: &Registry) -> String {
    let mut text = String::new();
    // Writing to a String cannot fail.
    let _ = prometheus_client::encoding::text::encode(&mut text, registry);
    text
}

/// The content type of [`encode`]'s text.
pub const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// A link type's `messaging.system`: the semantic conventions' value where
/// they have one, else the link type.
fn messaging_system(link_type: &'static str) -> &'static str {
    match link_type {
        "amqp" => "rabbitmq",
        "nats" => "nats",
        other => other,
    }
}

/// What is true now, read at each scrape.
#[derive(Default)]
pub struct StateSample {
    /// One per component.
    pub components: Vec<ComponentSample>,
    /// One per link.
    pub links: Vec<LinkSample>,
}

/// A component's state.
pub struct ComponentSample {
    /// Its app.
    pub app: String,
    /// Its id.
    pub component: String,
    /// Handlers running now.
    pub in_flight: u64,
    /// Instances waiting warm for an event.
    pub idle_instances: u64,
    /// Instances created so far.
    pub created: u64,
    /// Events that an instance handled after its first.
    pub reused: u64,
    /// Whether its circuit breaker is open (new events one at a time).
    pub breaker_open: bool,
}

/// A link's state.
pub struct LinkSample {
    /// Its name.
    pub link: String,
    /// Its type.
    pub link_type: &'static str,
    /// Whether it is connected to its broker now.
    pub up: bool,
    /// How often it connected again after losing its broker.
    pub reconnects: u64,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct ComponentLabels {
    app: String,
    component: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct InstanceLabels {
    app: String,
    component: String,
    state: &'static str,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
struct LinkLabels {
    link: String,
    messaging_system: &'static str,
}

/// Reads the state at each scrape.
struct StateCollector(Box<dyn Fn() -> StateSample + Send + Sync>);

impl std::fmt::Debug for StateCollector {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("StateCollector")
    }
}

impl Collector for StateCollector {
    fn encode(&self, mut encoder: DescriptorEncoder) -> Result<(), std::fmt::Error> {
        let sample = (self.0)();
        let components = &sample.components;
        let labels = |c: &ComponentSample| ComponentLabels {
            app: label(&c.app),
            component: label(&c.component),
        };
        {
            let mut family = encoder.encode_descriptor(
                "trigger_messaging_handlers_in_flight",
                "Handlers running now",
                None,
                MetricType::Gauge,
            )?;
            for c in components {
                ConstGauge::new(c.in_flight as i64).encode(family.encode_family(&labels(c))?)?;
            }
        }
        {
            let mut family = encoder.encode_descriptor(
                "trigger_messaging_instances",
                "Instances alive now: busy with an event, or idle (warm)",
                None,
                MetricType::Gauge,
            )?;
            for c in components {
                for (state, n) in [("busy", c.in_flight), ("idle", c.idle_instances)] {
                    let labels = InstanceLabels {
                        app: label(&c.app),
                        component: label(&c.component),
                        state,
                    };
                    ConstGauge::new(n as i64).encode(family.encode_family(&labels)?)?;
                }
            }
        }
        for (name, help, value) in [
            (
                "trigger_messaging_instances_created",
                "Instances created",
                (|c: &ComponentSample| c.created) as fn(&ComponentSample) -> u64,
            ),
            (
                "trigger_messaging_instances_reused",
                "Events handled by an instance that had handled one before",
                |c: &ComponentSample| c.reused,
            ),
        ] {
            let mut family = encoder.encode_descriptor(name, help, None, MetricType::Counter)?;
            for c in components {
                ConstCounter::new(value(c)).encode(family.encode_family(&labels(c))?)?;
            }
        }
        {
            let mut family = encoder.encode_descriptor(
                "trigger_messaging_circuit_breaker_open",
                "1 while a component's circuit breaker is open: its handlers kept failing, so it takes new events one at a time",
                None,
                MetricType::Gauge,
            )?;
            for c in components {
                ConstGauge::new(i64::from(c.breaker_open))
                    .encode(family.encode_family(&labels(c))?)?;
            }
        }
        let link_labels = |l: &LinkSample| LinkLabels {
            link: label(&l.link),
            messaging_system: messaging_system(l.link_type),
        };
        {
            let mut family = encoder.encode_descriptor(
                "trigger_messaging_link_up",
                "1 while a link is connected to its broker",
                None,
                MetricType::Gauge,
            )?;
            for l in &sample.links {
                ConstGauge::new(i64::from(l.up)).encode(family.encode_family(&link_labels(l))?)?;
            }
        }
        let mut family = encoder.encode_descriptor(
            "trigger_messaging_link_reconnects",
            "How often a link connected again after losing its broker",
            None,
            MetricType::Counter,
        )?;
        for l in &sample.links {
            ConstCounter::new(l.reconnects).encode(family.encode_family(&link_labels(l))?)?;
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_labels_and_state_reach_the_text() {
        let metrics = Metrics::default();
        metrics.add_link("default", "nats");
        let source = DeliverySource {
            app: "relay",
            component: "relay",
            channel: "orders",
            link: "default",
            address: "relay.orders",
        };
        let delivery = metrics.delivery(&source);
        delivery.received.inc();
        delivery.handled.inc();
        delivery.duration.observe(0.002);
        metrics
            .send("relay", "shipments", "default", "relay.shipments")
            .sent
            .inc();
        metrics.refused("relay", "relay", "payload-too-large");
        let registry = metrics.registry(|| StateSample {
            components: vec![ComponentSample {
                app: "relay".into(),
                component: "relay".into(),
                in_flight: 2,
                idle_instances: 1,
                created: 3,
                reused: 7,
                breaker_open: false,
            }],
            links: vec![LinkSample {
                link: "default".into(),
                link_type: "nats",
                up: true,
                reconnects: 1,
            }],
        });
        let text = encode(&registry);
        for line in [
            r#"messaging_client_consumed_messages_total{app="relay",component="relay",channel="orders",link="default",messaging_system="nats",messaging_destination_name="relay.orders"} 1"#,
            r#"trigger_messaging_events_total{app="relay",component="relay",channel="orders",link="default",messaging_system="nats",messaging_destination_name="relay.orders",outcome="handled"} 1"#,
            r#"messaging_process_duration_seconds_count{app="relay",component="relay",channel="orders",link="default",messaging_system="nats",messaging_destination_name="relay.orders"} 1"#,
            r#"messaging_client_sent_messages_total{app="relay",channel="shipments",link="default",messaging_system="nats",messaging_destination_name="relay.shipments",messaging_operation_name="send"} 1"#,
            r#"trigger_messaging_publish_refused_total{app="relay",component="relay",error_type="payload-too-large"} 1"#,
            r#"trigger_messaging_handlers_in_flight{app="relay",component="relay"} 2"#,
            r#"trigger_messaging_instances{app="relay",component="relay",state="idle"} 1"#,
            r#"trigger_messaging_instances_created_total{app="relay",component="relay"} 3"#,
            r#"trigger_messaging_link_up{link="default",messaging_system="nats"} 1"#,
            r#"trigger_messaging_link_reconnects_total{link="default",messaging_system="nats"} 1"#,
        ] {
            assert!(text.contains(line), "{line}\nnot in\n{text}");
        }
    }

    #[test]
    fn quotes_backslashes_and_line_breaks_in_names_are_escaped() {
        let metrics = Metrics::default();
        metrics.send("app", "c", "l", "a\"b\\c\nd").sent.inc();
        let text = encode(&metrics.registry(StateSample::default));
        assert!(
            text.contains(r#"messaging_destination_name="a\"b\\c\nd""#),
            "{text}"
        );
        assert_eq!(label("plain.name"), "plain.name");
    }
}
