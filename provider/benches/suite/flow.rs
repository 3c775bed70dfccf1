//! Events through a relay: the orders a producer publishes, the shipments a
//! sink reads, and the tally of one phase (a flood, a paced run, a soak):
//! how many came out, how many were lost or came twice, how long each took.
//!
//! The producer notes each event's send instant before it publishes it and
//! the sink each receipt's instant, both on one channel, so a receipt is
//! always read after its send. Event ids are `<phase prefix><index>`; the
//! relay's output ids are `<phase prefix><index>-shipped`.

use async_trait::async_trait;
use futures::StreamExt as _;
use futures::future::BoxFuture;
use futures::stream::FuturesUnordered;
use messaging_provider::cloudevents::Event;
use std::sync::Arc;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::time::{Duration, Instant};
use tokio::sync::mpsc;

/// Bytes of JSON data in each order.
pub const ORDER_DATA_BYTES: usize = 256;

/// The `index`th order of a phase: 256 bytes of JSON data (keys sorted, as
/// the relay writes them back), a subject and a time for the relay to copy.
pub fn order(prefix: &str, index: usize) -> Event {
    let mut event = Event::new(
        format!("{prefix}{index}"),
        "urn:bench:producer",
        "com.example.order.created",
    );
    let head = format!(
        r#"{{"customer":"c-{:05}","items":[{{"qty":{},"sku":"A{}"}}],"note":""#,
        index % 100_000,
        index % 7 + 1,
        index % 1000
    );
    let tail = r#""}"#;
    let pad = ORDER_DATA_BYTES.saturating_sub(head.len() + tail.len());
    let data = format!("{head}{}{tail}", "x".repeat(pad));
    debug_assert_eq!(data.len(), ORDER_DATA_BYTES);
    event.data = Some(data.into_bytes());
    event.datacontenttype = Some("application/json".into());
    event.subject = Some(format!("order/{index}"));
    event.time = Some("2025-01-01T00:00:00Z".into());
    event
}

/// What confirms a published event (the broker's ack, or nothing to wait for).
pub type Confirm = BoxFuture<'static, anyhow::Result<()>>;

/// A confirmation that is already there (brokers that confirm nothing).
pub fn confirmed() -> Confirm {
    Box::pin(async { Ok(()) })
}

/// Publishes orders into a relay's input channel.
#[async_trait]
pub trait Producer: Send + Sync {
    /// Puts the event on its way (in order with the previous ones) and
    /// returns what confirms it, so that several can be in flight.
    async fn send(&self, event: Event) -> anyhow::Result<Confirm>;

    /// How many confirmations may be awaited at once.
    fn window(&self) -> usize {
        PRODUCER_WINDOW
    }

    /// Makes sure everything sent has left for the broker (after the last
    /// event of a phase).
    async fn finish(&self) -> anyhow::Result<()> {
        Ok(())
    }
}

/// Reads the relay's output channel.
#[async_trait]
pub trait Sink: Send {
    /// The next event; `None` once the subscription ended.
    async fn next(&mut self) -> anyhow::Result<Option<Event>>;
}

/// How a producer paces itself.
#[derive(Clone, Copy, Debug)]
pub enum Pace {
    /// As fast as the broker takes them.
    Flood,
    /// This many events per second.
    Rate(f64),
    /// As fast as it goes while at most this many are published but not
    /// yet seen at the sink, until the deadline.
    Backlog { limit: usize, until: Instant },
}

/// How many missing events a phase names.
const MISSING_LISTED: usize = 8;

/// Confirmations a producer waits for at once.
const PRODUCER_WINDOW: usize = 256;

enum Note {
    Sent(usize, Instant),
    Received(String, Instant),
    ProducerDone {
        errors: usize,
        first_error: Option<String>,
    },
    SinkEnded(Option<String>),
}

/// What one phase measured.
#[derive(Clone, Debug, Default)]
pub struct Phase {
    /// Events published.
    pub sent: usize,
    /// Distinct events that came out.
    pub received: usize,
    /// Events that came out more than once (extra copies).
    pub duplicates: usize,
    /// Publishes that failed.
    pub publish_errors: usize,
    /// The first publish failure, or why the sink stopped.
    pub problem: Option<String>,
    /// From the first publish to the last new receipt.
    pub elapsed: Duration,
    /// End-to-end latency of each distinct event, sorted.
    pub latencies: Vec<Duration>,
    /// Whether the phase ended because nothing new came for the idle limit.
    pub timed_out: bool,
    /// The first few indices that never came out.
    pub missing: Vec<usize>,
    /// From the first publish to the producer's last confirmation.
    pub publish_elapsed: Duration,
}

impl Phase {
    /// Distinct events out per second of the phase.
    pub fn rate(&self) -> f64 {
        if self.elapsed.is_zero() {
            return 0.0;
        }
        self.received as f64 / self.elapsed.as_secs_f64()
    }

    /// Events published per second (confirmed, where the broker confirms):
    /// what the producer could do, a bound on what the relay can show.
    pub fn publish_rate(&self) -> f64 {
        if self.publish_elapsed.is_zero() {
            return 0.0;
        }
        self.sent as f64 / self.publish_elapsed.as_secs_f64()
    }

    /// Events published that never came out.
    pub fn lost(&self) -> usize {
        self.sent.saturating_sub(self.received)
    }

    /// The `q`-quantile of latency, in milliseconds.
    pub fn latency_ms(&self, q: f64) -> Option<f64> {
        crate::measure::quantile_ms(&self.latencies, q)
    }
}

/// A relay's input and output as the suite sees them: sinks feed one
/// channel that phases read one after another.
pub struct Flow {
    notes: mpsc::UnboundedSender<Note>,
    inbox: mpsc::UnboundedReceiver<Note>,
    sinks: Vec<tokio::task::JoinHandle<()>>,
    idle_limit: Duration,
}

impl Drop for Flow {
    fn drop(&mut self) {
        for sink in &self.sinks {
            sink.abort();
        }
    }
}

impl Flow {
    /// Stops the sinks and waits until each is dropped (a Kafka sink's
    /// consumer, say, before its topic is deleted).
    pub async fn close(mut self) {
        for sink in std::mem::take(&mut self.sinks) {
            sink.abort();
            let _ = sink.await;
        }
    }

    /// A flow whose phases end once nothing new came for `idle_limit`.
    pub fn new(idle_limit: Duration) -> Flow {
        let (notes, inbox) = mpsc::unbounded_channel();
        Flow {
            notes,
            inbox,
            sinks: Vec::new(),
            idle_limit,
        }
    }

    /// Reads `sink` from now on (several sinks may feed one flow).
    pub fn add_sink(&mut self, mut sink: Box<dyn Sink>) {
        let notes = self.notes.clone();
        self.sinks.push(tokio::spawn(async move {
            loop {
                match sink.next().await {
                    Ok(Some(event)) => {
                        if notes
                            .send(Note::Received(event.id, Instant::now()))
                            .is_err()
                        {
                            return;
                        }
                    }
                    Ok(None) => {
                        let _ = notes.send(Note::SinkEnded(None));
                        return;
                    }
                    Err(e) => {
                        let _ = notes.send(Note::SinkEnded(Some(format!("{e:#}"))));
                        return;
                    }
                }
            }
        }));
    }

    /// Publishes `count` orders (all of them, or until the pace's deadline)
    /// with ids `<prefix><index>`, spread over `producers` round robin, and
    /// tallies what comes out until every event did or nothing new came for
    /// the idle limit.
    pub async fn phase(
        &mut self,
        producers: Vec<Arc<dyn Producer>>,
        prefix: &str,
        count: usize,
        pace: Pace,
    ) -> Phase {
        let seen = Arc::new(AtomicUsize::new(0));
        let producer = tokio::spawn(produce(
            producers,
            prefix.to_string(),
            count,
            pace,
            self.notes.clone(),
            seen.clone(),
        ));
        let phase = self.tally(prefix, &seen).await;
        producer.abort();
        phase
    }

    async fn tally(&mut self, prefix: &str, seen: &AtomicUsize) -> Phase {
        let mut phase = Phase::default();
        let mut sent_at: Vec<Option<Instant>> = Vec::new();
        let mut copies: Vec<u32> = Vec::new();
        let mut first_send = None;
        let mut last_new = None;
        let mut producer_done = false;
        let mut progress = Instant::now();
        loop {
            if producer_done && phase.received >= phase.sent {
                break;
            }
            let wait = self.idle_limit.saturating_sub(progress.elapsed());
            let note = match tokio::time::timeout(wait, self.inbox.recv()).await {
                Ok(Some(note)) => note,
                Ok(None) => break,
                Err(_) => {
                    phase.timed_out = true;
                    break;
                }
            };
            match note {
                Note::Sent(index, at) => {
                    if sent_at.len() <= index {
                        sent_at.resize(index + 1, None);
                        copies.resize(index + 1, 0);
                    }
                    sent_at[index] = Some(at);
                    first_send.get_or_insert(at);
                    phase.sent += 1;
                }
                Note::Received(id, at) => {
                    let Some(index) = id
                        .strip_prefix(prefix)
                        .and_then(|rest| rest.strip_suffix("-shipped"))
                        .and_then(|n| n.parse::<usize>().ok())
                    else {
                        continue; // another phase's straggler
                    };
                    let Some(Some(sent)) = sent_at.get(index).copied() else {
                        continue;
                    };
                    copies[index] += 1;
                    if copies[index] > 1 {
                        phase.duplicates += 1;
                        continue;
                    }
                    phase.received += 1;
                    seen.store(phase.received, Ordering::Relaxed);
                    phase.latencies.push(at.saturating_duration_since(sent));
                    last_new = Some(at);
                    progress = Instant::now();
                }
                Note::ProducerDone {
                    errors,
                    first_error,
                } => {
                    producer_done = true;
                    if let Some(first) = first_send {
                        phase.publish_elapsed = Instant::now().saturating_duration_since(first);
                    }
                    phase.publish_errors = errors;
                    if first_error.is_some() {
                        phase.problem = first_error;
                    }
                    // The relay gets the whole idle limit after the last publish.
                    progress = Instant::now();
                }
                Note::SinkEnded(why) => {
                    phase.problem =
                        Some(why.unwrap_or_else(|| "the sink's subscription ended".into()));
                    break;
                }
            }
        }
        if let (Some(first), Some(last)) = (first_send, last_new) {
            phase.elapsed = last.saturating_duration_since(first);
        }
        phase.missing = sent_at
            .iter()
            .zip(&copies)
            .enumerate()
            .filter(|(_, (sent, copies))| sent.is_some() && **copies == 0)
            .map(|(index, _)| index)
            .take(MISSING_LISTED)
            .collect();
        phase.latencies.sort();
        phase
    }
}

/// The producer's side of a phase.
async fn produce(
    producers: Vec<Arc<dyn Producer>>,
    prefix: String,
    count: usize,
    pace: Pace,
    notes: mpsc::UnboundedSender<Note>,
    seen: Arc<AtomicUsize>,
) {
    let start = tokio::time::Instant::now();
    let window = producers
        .iter()
        .map(|p| p.window())
        .min()
        .unwrap_or(1)
        .max(1);
    let mut in_flight = FuturesUnordered::new();
    let (mut errors, mut first_error) = (0, None);
    let mut note_error = |e: anyhow::Error, errors: &mut usize| {
        *errors += 1;
        if first_error.is_none() {
            first_error = Some(format!("publish failed: {e:#}"));
        }
    };
    for index in 0..count {
        match pace {
            Pace::Flood => {}
            Pace::Rate(rate) => {
                tokio::time::sleep_until(start + Duration::from_secs_f64(index as f64 / rate)).await
            }
            Pace::Backlog { limit, until } => {
                if Instant::now() >= until {
                    break;
                }
                while index.saturating_sub(seen.load(Ordering::Relaxed)) >= limit {
                    if Instant::now() >= until {
                        break;
                    }
                    tokio::time::sleep(Duration::from_millis(1)).await;
                }
                if Instant::now() >= until {
                    break;
                }
            }
        }
        while in_flight.len() >= window {
            if let Some(Err(e)) = in_flight.next().await {
                note_error(e, &mut errors);
            }
        }
        // Confirmations that came meanwhile are collected without waiting.
        while let Some(Some(done)) = futures::FutureExt::now_or_never(in_flight.next()) {
            if let Err(e) = done {
                note_error(e, &mut errors);
            }
        }
        let event = order(&prefix, index);
        if notes.send(Note::Sent(index, Instant::now())).is_err() {
            return;
        }
        let producer = &producers[index % producers.len()];
        match producer.send(event).await {
            Ok(confirm) => in_flight.push(confirm),
            Err(e) => note_error(e, &mut errors),
        }
    }
    while let Some(done) = in_flight.next().await {
        if let Err(e) = done {
            note_error(e, &mut errors);
        }
    }
    for producer in &producers {
        if let Err(e) = producer.finish().await {
            note_error(e, &mut errors);
        }
    }
    let _ = notes.send(Note::ProducerDone {
        errors,
        first_error,
    });
}
