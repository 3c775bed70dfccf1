//! Subscriptions on Kafka.
//!
//! A queue is a consumer group: the group's members share the topic's
//! partitions, and a replica of the provider in the same group takes its
//! share. Offsets are committed after the handler's outcome is settled, per
//! partition up to the first event still under way, so a slow event holds
//! back the committed offset but not the events behind it (as many as the
//! dispatcher's in-flight bound lets through). A nacked event goes to the
//! queue's retry topic with its next attempt and the time it is due; the
//! group reads that topic too and holds a record back until it is due (the
//! records behind it in its partition wait behind it; the main topic never
//! waits). Attempts thus live in the records and survive restarts.
//!
//! A topic subscriber is not in a group: it is assigned every partition at
//! its end when it subscribes, so it sees every event published after that,
//! and takes nothing from anyone.

use super::publish::{ATTEMPT_HEADER, DUE_HEADER, Member, Publisher};
use crate::broker::{
    Acknowledge, BrokerError, Connectivity, Delivery, NothingToSettle, Subscription,
};
use crate::cloudevents::Event;
use crate::cloudevents::inbound::{self, Malformed, Received};
use crate::cloudevents::kafka as binding;
use async_trait::async_trait;
use rdkafka::consumer::{
    BaseConsumer, CommitMode, Consumer, ConsumerContext, Rebalance, StreamConsumer,
};
use rdkafka::error::{KafkaError, KafkaResult};
use rdkafka::message::BorrowedMessage;
use rdkafka::{ClientContext, Message as _, Offset, TopicPartitionList};
use std::collections::{BTreeSet, HashMap, VecDeque};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicUsize, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};
use tokio::time::Instant;
use tokio_util::sync::{CancellationToken, DropGuard};

/// How long settled offsets wait to be committed together.
const COMMIT_EVERY: Duration = Duration::from_millis(50);
/// How long a closed queue subscription waits for its deliveries under way
/// to be settled before it leaves the group (what is left is redelivered).
const SETTLE_GRACE: Duration = Duration::from_secs(60);

/// What librdkafka reports, in the link's log: an error once per reason
/// while it lasts; for a queue consumer, offsets committed before its
/// partitions go to another member.
pub struct LinkContext {
    link: String,
    last_error: Mutex<Option<String>>,
    tracker: Option<Arc<Tracker>>,
    /// The link's: told when librdkafka finds every broker down.
    connectivity: Arc<Connectivity>,
}

impl LinkContext {
    /// A context for the link's clients; `tracker` for a queue consumer.
    pub fn new(
        link: &str,
        tracker: Option<Arc<Tracker>>,
        connectivity: Arc<Connectivity>,
    ) -> LinkContext {
        LinkContext {
            link: link.into(),
            last_error: Mutex::default(),
            tracker,
            connectivity,
        }
    }
}

impl ClientContext for LinkContext {
    fn log(&self, _: rdkafka::config::RDKafkaLogLevel, facility: &str, message: &str) {
        tracing::debug!(link = %self.link, "librdkafka {facility}: {message}");
    }

    fn error(&self, error: KafkaError, reason: &str) {
        if error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::AllBrokersDown) {
            self.connectivity.lost();
        }
        self.warn_once(format!("{error}: {reason}"));
    }
}

impl LinkContext {
    /// Logs `reason` unless it is the one logged last: a broker that stays
    /// away does not fill the log.
    fn warn_once(&self, reason: String) {
        let mut last = self.last_error.lock().unwrap_or_else(|e| e.into_inner());
        if last.as_ref() != Some(&reason) {
            tracing::warn!(link = %self.link, "Kafka: {reason}");
            *last = Some(reason);
        }
    }
}

/// What to log for a commit's outcome: nothing when it held, or when there
/// was nothing to commit.
fn commit_failure(result: &KafkaResult<()>, offsets: &TopicPartitionList) -> Option<String> {
    let error = result.as_ref().err()?;
    if error.rdkafka_error_code() == Some(rdkafka::types::RDKafkaErrorCode::NoOffset) {
        return None;
    }
    let positions: Vec<String> = offsets
        .elements()
        .iter()
        .map(|e| match e.offset() {
            Offset::Offset(n) => format!("{}[{}]@{n}", e.topic(), e.partition()),
            _ => format!("{}[{}]", e.topic(), e.partition()),
        })
        .collect();
    Some(format!(
        "committing offsets {} failed ({error}); the events after the last commit that held are delivered again after a rebalance or a restart",
        positions.join(", ")
    ))
}

impl ConsumerContext for LinkContext {
    fn pre_rebalance(&self, consumer: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let (Rebalance::Revoke(revoked), Some(tracker)) = (rebalance, &self.tracker) {
            if revoked.count() > 0 {
                tracing::info!(link = %self.link, "Kafka: {} partitions revoked (the group rebalances)", revoked.count());
            }
            let positions = tracker.release(revoked);
            if positions.count() > 0
                && let Err(e) = consumer.commit(&positions, CommitMode::Sync)
            {
                tracing::warn!(link = %self.link, "Kafka: committing before a rebalance failed ({e}); the events since are delivered again");
            }
        }
    }

    /// Where a commit's outcome arrives, asynchronous ones included: a
    /// commit the broker refused means the events since the last one that
    /// held are delivered again after a rebalance or a restart.
    fn commit_callback(&self, result: KafkaResult<()>, offsets: &TopicPartitionList) {
        if let Some(reason) = commit_failure(&result, offsets) {
            self.warn_once(reason);
        }
    }

    fn post_rebalance(&self, _: &BaseConsumer<Self>, rebalance: &Rebalance<'_>) {
        if let Rebalance::Assign(assigned) = rebalance {
            tracing::info!(link = %self.link, "Kafka: assigned {} partitions", assigned.count());
        }
        if let Some(tracker) = &self.tracker {
            *tracker.failure.lock().unwrap() = None;
            if matches!(rebalance, Rebalance::Assign(_)) {
                tracker.joined.send_replace(true);
            }
        }
    }
}

/// The offsets of one queue subscription: handed out and not yet settled,
/// per partition, and what was committed.
pub struct Tracker {
    parts: Mutex<HashMap<(Arc<str>, i32), Part>>,
    dirty: AtomicBool,
    changed: tokio::sync::Notify,
    failure: Mutex<Option<String>>,
    /// Deliveries handed out and not yet settled.
    handed: AtomicUsize,
    /// Set once the group has given this member its share.
    joined: tokio::sync::watch::Sender<bool>,
    /// Counts the revocations: a record read before the last one is not
    /// handed out (its partition's next owner reads it again).
    assignment: AtomicU64,
}

impl Default for Tracker {
    fn default() -> Self {
        Tracker {
            parts: Mutex::default(),
            dirty: AtomicBool::new(false),
            changed: tokio::sync::Notify::new(),
            failure: Mutex::default(),
            handed: AtomicUsize::new(0),
            joined: tokio::sync::watch::Sender::new(false),
            assignment: AtomicU64::new(0),
        }
    }
}

#[derive(Default)]
struct Part {
    pending: BTreeSet<i64>,
    /// One past the highest offset received.
    next: i64,
    /// The position last sent to be committed (asynchronously: it may not
    /// have been).
    committed: i64,
    /// Where this member started reading the partition: what the group had
    /// committed.
    from: i64,
}

impl Part {
    /// The position to commit: the first event under way, else all.
    fn position(&self) -> i64 {
        self.pending.first().copied().unwrap_or(self.next)
    }
}

impl Tracker {
    /// Records a record as read; returns the assignment it was read under,
    /// read with the same lock a revocation takes, so that a record is
    /// either in the revoked positions or of the new assignment.
    fn taken(&self, topic: &Arc<str>, partition: i32, offset: i64) -> u64 {
        let mut parts = self.parts.lock().unwrap();
        let part = parts
            .entry((topic.clone(), partition))
            .or_insert_with(|| Part {
                committed: offset,
                from: offset,
                ..Part::default()
            });
        part.pending.insert(offset);
        part.next = part.next.max(offset + 1);
        self.assignment.load(Ordering::Acquire)
    }

    fn settled(&self, topic: &Arc<str>, partition: i32, offset: i64) {
        if let Some(part) = self
            .parts
            .lock()
            .unwrap()
            .get_mut(&(topic.clone(), partition))
        {
            part.pending.remove(&offset);
        }
        self.handed.fetch_sub(1, Ordering::AcqRel);
        self.dirty.store(true, Ordering::Release);
        self.changed.notify_one();
    }

    /// Positions that moved since they were last taken, marked committed.
    fn positions(&self) -> TopicPartitionList {
        self.positions_since(false)
    }

    /// Every position that moved since this member started reading, for a
    /// last, synchronous commit.
    fn final_positions(&self) -> TopicPartitionList {
        self.positions_since(true)
    }

    fn positions_since(&self, start: bool) -> TopicPartitionList {
        let mut list = TopicPartitionList::new();
        if !self.dirty.swap(false, Ordering::AcqRel) && !start {
            return list;
        }
        for ((topic, partition), part) in self.parts.lock().unwrap().iter_mut() {
            let position = part.position();
            let sent = if start { part.from } else { part.committed };
            if position > sent {
                let _ = list.add_partition_offset(topic, *partition, Offset::Offset(position));
                part.committed = position;
            }
        }
        list
    }

    /// Positions of revoked partitions, which are forgotten: their events
    /// still under way go to the partitions' next owner, and records read
    /// ahead and not handed out are dropped (the committed position is at
    /// or before them, so the next owner reads them again).
    fn release(&self, revoked: &TopicPartitionList) -> TopicPartitionList {
        let mut list = TopicPartitionList::new();
        let mut parts = self.parts.lock().unwrap();
        self.assignment.fetch_add(1, Ordering::AcqRel);
        for elem in revoked.elements() {
            let key: (Arc<str>, i32) = (elem.topic().into(), elem.partition());
            if let Some(part) = parts.remove(&key) {
                // Sent again even if sent before: an asynchronous commit
                // refused during the rebalance would otherwise be lost.
                let position = part.position();
                if position > part.from {
                    let _ = list.add_partition_offset(&key.0, key.1, Offset::Offset(position));
                }
            }
        }
        list
    }

    /// Logs a failed read, once per reason while it lasts.
    fn failed(&self, link: &str, topic: &str, e: KafkaError) {
        let reason = e.to_string();
        let mut failure = self.failure.lock().unwrap();
        if failure.as_ref() != Some(&reason) {
            tracing::warn!(link = %link, topic = %topic, "Kafka read failed ({reason}); retrying");
            *failure = Some(reason);
        }
    }

    fn under_way(&self) -> usize {
        self.handed.load(Ordering::Acquire)
    }
}

/// A record decoded and waiting to be handed out.
struct Pending {
    admitted: Result<Event, Malformed>,
    attempt: u32,
    topic: Arc<str>,
    partition: i32,
    offset: i64,
    /// For a retry record, when it is due.
    due: Option<Instant>,
    /// The assignment it was read under ([`Tracker::assignment`]).
    assignment: u64,
}

impl Pending {
    /// Read under an assignment that has since been revoked.
    fn revoked(&self, tracker: &Tracker) -> bool {
        self.assignment != tracker.assignment.load(Ordering::Acquire)
    }
}

/// Records read ahead of the dispatcher: the poll task waits while this
/// many are waiting to be handed out.
const READ_AHEAD: usize = 256;

/// A consumer-group member reading a queue's topic and its retry topic.
/// A task of its own polls the consumer and reads up to [`READ_AHEAD`]
/// records ahead, so that the group's rebalances are served while the
/// dispatcher works through what was read. (Pausing the partitions instead
/// was tried: resuming skipped records.)
pub struct QueueSubscription {
    tracker: Arc<Tracker>,
    publisher: Arc<Publisher>,
    retry_topic: Arc<str>,
    records: tokio::sync::mpsc::Receiver<Pending>,
    /// Retry records not yet due, per partition, in order.
    held: HashMap<i32, VecDeque<Pending>>,
    /// The assignment `held` belongs to.
    assignment: u64,
    stopping: bool,
    /// Dropped with the subscription: polling stops, the committer finishes.
    _closed: DropGuard,
}

impl QueueSubscription {
    /// Joins `group` on `address` and its retry topic; returns once the
    /// group has given this member its share (or after `publish_timeout`,
    /// the join going on in the background).
    pub async fn start(
        publisher: Arc<Publisher>,
        address: &str,
        group: &str,
        retry_topic: &str,
    ) -> Result<QueueSubscription, BrokerError> {
        let settings = &publisher.settings;
        let link = &publisher.link;
        // A member of this process that is leaving the group leaves first
        // (within `publish_timeout`): joining beside it would start a
        // rebalance that waits for it.
        let leaving = publisher.leaving(group);
        let _ = tokio::time::timeout(
            settings.publish_timeout,
            futures::future::join_all(leaving.iter().map(|l| l.cancelled())),
        )
        .await;
        let tracker = Arc::new(Tracker::default());
        let mut config = settings.client_config();
        let session = super::settings::millis(settings.session_timeout);
        config
            .set("group.id", group)
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false")
            .set("auto.offset.reset", "earliest")
            .set("session.timeout.ms", session.to_string())
            .set("heartbeat.interval.ms", (session / 3).max(100).to_string());
        let consumer: StreamConsumer<LinkContext> = config
            .create_with_context(LinkContext::new(
                link,
                Some(tracker.clone()),
                publisher.connectivity.clone(),
            ))
            .map_err(|e| BrokerError::Other(format!("Kafka link `{link}`: {e}")))?;
        consumer
            .subscribe(&[address, retry_topic])
            .map_err(|e| BrokerError::Unavailable(format!("Kafka link `{link}`: {e}")))?;
        let consumer = Arc::new(consumer);
        let (closed, left) = (CancellationToken::new(), CancellationToken::new());
        publisher.members.lock().unwrap().push(Member {
            group: group.into(),
            closed: closed.clone(),
            left: left.clone(),
        });
        let retry_topic: Arc<str> = retry_topic.into();
        let (sender, records) = tokio::sync::mpsc::channel(READ_AHEAD);
        let mut joined = tracker.joined.subscribe();
        tokio::spawn(
            Poller {
                consumer: consumer.clone(),
                tracker: tracker.clone(),
                link: link.clone(),
                address: address.into(),
                retry_topic: retry_topic.clone(),
                sender,
            }
            .run(closed.clone()),
        );
        publisher.committers.spawn(commit(
            consumer,
            tracker.clone(),
            closed.clone(),
            publisher.closing.clone(),
            link.clone(),
            left,
        ));
        let _ = tokio::time::timeout(settings.publish_timeout, joined.wait_for(|j| *j)).await;
        Ok(QueueSubscription {
            tracker,
            publisher,
            retry_topic,
            records,
            held: HashMap::new(),
            assignment: 0,
            stopping: false,
            _closed: closed.drop_guard(),
        })
    }

    /// Hands out a pending record with the way to settle it.
    fn deliver(&self, pending: Pending) -> Delivery {
        let Pending {
            admitted,
            attempt,
            topic,
            partition,
            offset,
            due: _,
            assignment: _,
        } = pending;
        self.tracker.handed.fetch_add(1, Ordering::AcqRel);
        let settle = |event: Arc<Event>| {
            Box::new(QueueAck {
                tracker: self.tracker.clone(),
                publisher: self.publisher.clone(),
                retry_topic: self.retry_topic.clone(),
                topic,
                partition,
                offset,
                attempt,
                event,
            })
        };
        match admitted {
            Ok(event) => {
                let event = Arc::new(event);
                Delivery::new(event.clone(), attempt, settle(event))
            }
            Err(malformed) => {
                let wrapper = Arc::new((*malformed.wrapper).clone());
                Delivery::malformed(malformed, attempt, settle(wrapper))
            }
        }
    }

    /// A held retry record that is due, if any.
    fn take_due(&mut self, now: Instant) -> Option<Pending> {
        let partition = *self
            .held
            .iter()
            .find(|(_, queue)| {
                queue
                    .front()
                    .is_some_and(|p| p.due.is_none_or(|d| d <= now))
            })?
            .0;
        let queue = self.held.get_mut(&partition)?;
        let pending = queue.pop_front()?;
        if queue.is_empty() {
            self.held.remove(&partition);
        }
        Some(pending)
    }

    fn next_due(&self) -> Option<Instant> {
        self.held
            .values()
            .filter_map(|q| q.front().and_then(|p| p.due))
            .min()
    }
}

#[async_trait]
impl Subscription for QueueSubscription {
    async fn next(&mut self) -> Option<Delivery> {
        loop {
            if self.stopping {
                return None;
            }
            let assignment = self.tracker.assignment.load(Ordering::Acquire);
            if assignment != self.assignment {
                // Held retry records of a revoked assignment are dropped.
                self.assignment = assignment;
                self.held.retain(|_, queue| {
                    queue.retain(|p| p.assignment == assignment);
                    !queue.is_empty()
                });
            }
            if let Some(pending) = self.take_due(Instant::now()) {
                return Some(self.deliver(pending));
            }
            let wake = self.next_due();
            let pending = tokio::select! {
                p = self.records.recv() => p?,
                () = sleep_until(wake) => continue,
            };
            if pending.revoked(&self.tracker) {
                continue;
            }
            // A retry record waits for its time, and what follows it in
            // its partition waits behind it: the main topic never does.
            let retry = Arc::ptr_eq(&pending.topic, &self.retry_topic);
            let waits = pending.due.is_some_and(|d| d > Instant::now());
            match self.held.get_mut(&pending.partition) {
                Some(queue) if retry => queue.push_back(pending),
                None if retry && waits => {
                    self.held
                        .entry(pending.partition)
                        .or_default()
                        .push_back(pending);
                }
                _ => return Some(self.deliver(pending)),
            }
        }
    }

    /// Takes nothing more. What was read and not handed out (retry records
    /// not yet due, buffered records) is not committed, so it is delivered
    /// again, to this group's next owner of its partition.
    async fn stop(&mut self) {
        self.stopping = true;
        self.held.clear();
        self.records.close();
    }
}

/// Polls a queue subscription's consumer, decoding what comes.
struct Poller {
    consumer: Arc<StreamConsumer<LinkContext>>,
    tracker: Arc<Tracker>,
    link: String,
    address: Arc<str>,
    retry_topic: Arc<str>,
    sender: tokio::sync::mpsc::Sender<Pending>,
}

impl Poller {
    async fn run(self, closed: CancellationToken) {
        loop {
            let received = tokio::select! {
                () = closed.cancelled() => break,
                () = self.sender.closed() => break,
                m = self.consumer.recv() => m,
            };
            let mut pending = match received {
                Ok(m) => {
                    self.consumer.context().connectivity.connected();
                    self.pending(&m)
                }
                Err(e) => {
                    self.tracker.failed(&self.link, &self.address, e);
                    tokio::time::sleep(Duration::from_millis(200)).await;
                    continue;
                }
            };
            pending.assignment =
                self.tracker
                    .taken(&pending.topic, pending.partition, pending.offset);
            let sent = tokio::select! {
                () = closed.cancelled() => break,
                sent = self.sender.send(pending) => sent,
            };
            if sent.is_err() {
                break;
            }
        }
    }

    /// Decodes a record; a retry record says its attempt and when it is due.
    fn pending(&self, m: &BorrowedMessage<'_>) -> Pending {
        // The consumer reads the address and the retry topic only.
        let retry = m.topic() == &*self.retry_topic;
        let topic = if retry {
            self.retry_topic.clone()
        } else {
            self.address.clone()
        };
        let headers = raw_headers(m);
        let (mut attempt, mut due) = (1, None);
        if retry {
            let header = |name: &str| {
                headers
                    .iter()
                    .find(|(k, _)| *k == name.as_bytes())
                    .and_then(|(_, v)| std::str::from_utf8(v.unwrap_or_default()).ok())
                    .and_then(|v| v.trim().parse::<u64>().ok())
            };
            attempt = header(ATTEMPT_HEADER)
                .and_then(|a| u32::try_from(a).ok())
                .unwrap_or(2)
                .max(2);
            due = Some(header(DUE_HEADER).map_or_else(Instant::now, |at| {
                let wait = Duration::from_millis(at.saturating_sub(unix_millis()))
                    .min(Duration::from_secs(86_400));
                Instant::now() + wait
            }));
        }
        Pending {
            admitted: admit(m, &headers, (&self.link, &self.address)),
            attempt,
            topic,
            partition: m.partition(),
            offset: m.offset(),
            due,
            // Set when the record is taken.
            assignment: 0,
        }
    }
}

async fn sleep_until(at: Option<Instant>) {
    match at {
        Some(at) => tokio::time::sleep_until(at).await,
        None => std::future::pending().await,
    }
}

/// Commits settled offsets every [`COMMIT_EVERY`] while any settle; once
/// the subscription is closed, waits for what is under way (up to
/// [`SETTLE_GRACE`], or until the link closes), commits, and leaves the
/// group.
async fn commit(
    consumer: Arc<StreamConsumer<LinkContext>>,
    tracker: Arc<Tracker>,
    closed: CancellationToken,
    link_closing: CancellationToken,
    link: String,
    left: CancellationToken,
) {
    let mut closed_at = None;
    loop {
        tokio::select! {
            () = tracker.changed.notified() => {}
            () = closed.cancelled(), if closed_at.is_none() => closed_at = Some(Instant::now()),
            () = link_closing.cancelled() => break,
            () = tokio::time::sleep(Duration::from_secs(1)), if closed_at.is_some() => {}
        }
        tokio::time::sleep(COMMIT_EVERY).await;
        let positions = tracker.positions();
        if positions.count() > 0
            && let Err(e) = consumer.commit(&positions, CommitMode::Async)
        {
            tracing::warn!(link = %link, "Kafka: committing offsets failed ({e}); they are sent again before the partitions are given up");
        }
        if let Some(at) = closed_at
            && (tracker.under_way() == 0 || at.elapsed() >= SETTLE_GRACE)
        {
            break;
        }
    }
    let _ = tokio::task::spawn_blocking(move || {
        let positions = tracker.final_positions();
        if positions.count() > 0 {
            let _ = consumer.commit(&positions, CommitMode::Sync);
        }
        // The last reference: closing leaves the group at once.
        drop(consumer);
    })
    .await;
    left.cancel();
}

/// Settles a queue delivery: an ack lets its offset be committed; a nack
/// writes the event to the retry topic, due after the delay, first.
struct QueueAck {
    tracker: Arc<Tracker>,
    publisher: Arc<Publisher>,
    retry_topic: Arc<str>,
    topic: Arc<str>,
    partition: i32,
    offset: i64,
    attempt: u32,
    event: Arc<Event>,
}

#[async_trait]
impl Acknowledge for QueueAck {
    async fn ack(self: Box<Self>) -> Result<(), BrokerError> {
        self.tracker
            .settled(&self.topic, self.partition, self.offset);
        Ok(())
    }

    async fn nack(self: Box<Self>, delay: Duration) -> Result<(), BrokerError> {
        let record = binding::encode(&self.event, self.publisher.settings.content_mode);
        let attempt = self.attempt.saturating_add(1).to_string();
        let due = unix_millis()
            .saturating_add(u64::try_from(delay.as_millis()).unwrap_or(u64::MAX))
            .to_string();
        self.publisher
            .send(
                &self.retry_topic,
                &record,
                &[
                    (ATTEMPT_HEADER, attempt.as_bytes()),
                    (DUE_HEADER, due.as_bytes()),
                ],
            )
            .await?;
        self.tracker
            .settled(&self.topic, self.partition, self.offset);
        Ok(())
    }

    fn redelivers(&self) -> bool {
        true
    }
}

/// A fan-out subscriber: every partition assigned at its end, no group.
pub struct TopicSubscription {
    consumer: Option<StreamConsumer<LinkContext>>,
    link: String,
    address: String,
    stopping: bool,
    failure: Option<String>,
}

impl TopicSubscription {
    /// Starts reading `address` after the last event it holds now.
    pub async fn start(
        publisher: &Publisher,
        address: &str,
    ) -> Result<TopicSubscription, BrokerError> {
        let link = publisher.link.clone();
        let partitions = publisher.partitions(address).await?;
        if partitions.is_empty() {
            return Err(BrokerError::Unavailable(format!(
                "Kafka link `{link}`: topic `{address}` has no partitions yet"
            )));
        }
        let mut config = publisher.settings.client_config();
        config
            .set(
                "group.id",
                format!(
                    "{}.watch.{}",
                    publisher.settings.client_id,
                    uuid::Uuid::new_v4()
                ),
            )
            .set("enable.auto.commit", "false")
            .set("enable.auto.offset.store", "false");
        let consumer: StreamConsumer<LinkContext> = config
            .create_with_context(LinkContext::new(
                &link,
                None,
                publisher.connectivity.clone(),
            ))
            .map_err(|e| BrokerError::Other(format!("Kafka link `{link}`: {e}")))?;
        let timeout = publisher.settings.publish_timeout;
        let topic = address.to_string();
        let consumer = tokio::task::spawn_blocking(move || {
            let mut list = TopicPartitionList::new();
            for p in partitions {
                let (_, high) = consumer.fetch_watermarks(&topic, p, timeout)?;
                list.add_partition_offset(&topic, p, Offset::Offset(high))?;
            }
            consumer.assign(&list)?;
            Ok::<_, KafkaError>(consumer)
        })
        .await
        .map_err(|e| BrokerError::Other(e.to_string()))?
        .map_err(|e| BrokerError::Unavailable(format!("Kafka link `{link}`: {e}")))?;
        Ok(TopicSubscription {
            consumer: Some(consumer),
            link,
            address: address.into(),
            stopping: false,
            failure: None,
        })
    }
}

#[async_trait]
impl Subscription for TopicSubscription {
    async fn next(&mut self) -> Option<Delivery> {
        loop {
            let consumer = self.consumer.as_ref().filter(|_| !self.stopping)?;
            let failed = match consumer.recv().await {
                Ok(m) => {
                    consumer.context().connectivity.connected();
                    let admitted = admit(&m, &raw_headers(&m), (&self.link, &self.address));
                    self.failure = None;
                    return Some(Delivery::received(admitted, 1, Box::new(NothingToSettle)));
                }
                Err(e) => e.to_string(),
            };
            if self.failure.as_ref() != Some(&failed) {
                tracing::warn!(link = %self.link, topic = %self.address, "Kafka read failed ({failed}); retrying");
                self.failure = Some(failed);
            }
            tokio::time::sleep(Duration::from_millis(200)).await;
        }
    }

    async fn stop(&mut self) {
        self.stopping = true;
    }
}

impl Drop for TopicSubscription {
    fn drop(&mut self) {
        // Closing a consumer blocks on the broker.
        if let Some(consumer) = self.consumer.take()
            && let Ok(runtime) = tokio::runtime::Handle::try_current()
        {
            runtime.spawn_blocking(move || drop(consumer));
        }
    }
}

/// The event in a record, by the binding and the one inbound rule: a
/// record that is not a valid CloudEvent is wrapped whole, its headers as
/// the wrapper's metadata.
fn admit(
    m: &BorrowedMessage<'_>,
    headers: &[(&[u8], Option<&[u8]>)],
    origin: (&str, &str),
) -> Result<Event, Malformed> {
    crate::stages::timed(crate::stages::Stage::Decode, || {
        let decoded = binding::decode(headers, m.key(), m.payload(), origin);
        inbound::admit(decoded, || Received {
            link: origin.0,
            address: origin.1,
            metadata: headers
                .iter()
                .map(|(k, v)| {
                    (
                        inbound::text(k).into_owned(),
                        inbound::text(v.unwrap_or_default()).into_owned(),
                    )
                })
                .collect(),
            content_type: None,
            body: m.payload().unwrap_or_default(),
        })
    })
}

/// A record's headers as bytes. rdkafka's own accessor panics on a header
/// name that is not UTF-8, which any producer may send.
pub fn raw_headers<'a>(m: &'a BorrowedMessage<'a>) -> Vec<(&'a [u8], Option<&'a [u8]>)> {
    use rdkafka::bindings as rd;
    let mut out = Vec::new();
    let mut headers: *mut rd::rd_kafka_headers_t = std::ptr::null_mut();
    // SAFETY: `m.ptr()` is the live message `m` borrows; librdkafka keeps its
    // headers, names and values with the message, so the slices handed out
    // live as long as `m`. Names are NUL-terminated C strings.
    unsafe {
        if rd::rd_kafka_message_headers(m.ptr(), &mut headers)
            != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
        {
            return out;
        }
        for index in 0.. {
            let mut name = std::ptr::null();
            let mut value = std::ptr::null();
            let mut size = 0;
            if rd::rd_kafka_header_get_all(headers, index, &mut name, &mut value, &mut size)
                != rd::rd_kafka_resp_err_t::RD_KAFKA_RESP_ERR_NO_ERROR
            {
                break;
            }
            let name = std::ffi::CStr::from_ptr(name).to_bytes();
            let value =
                (!value.is_null()).then(|| std::slice::from_raw_parts(value.cast::<u8>(), size));
            out.push((name, value));
        }
    }
    out
}

fn unix_millis() -> u64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map_or(0, |d| u64::try_from(d.as_millis()).unwrap_or(u64::MAX))
}

#[cfg(test)]
mod tests {
    use super::*;
    use rdkafka::types::RDKafkaErrorCode;

    fn offsets() -> TopicPartitionList {
        let mut list = TopicPartitionList::new();
        list.add_partition_offset("orders", 0, Offset::Offset(5))
            .unwrap();
        list.add_partition_offset("orders", 3, Offset::Offset(17))
            .unwrap();
        list
    }

    #[test]
    fn a_refused_commit_names_its_positions_and_what_follows() {
        let refused = Err(KafkaError::ConsumerCommit(
            RDKafkaErrorCode::RebalanceInProgress,
        ));
        let text = commit_failure(&refused, &offsets()).unwrap();
        assert!(text.contains("orders[0]@5, orders[3]@17"), "{text}");
        assert!(text.contains("rebalance"), "{text}");
        assert!(text.contains("delivered again"), "{text}");
        for nothing in [
            Ok(()),
            Err(KafkaError::ConsumerCommit(RDKafkaErrorCode::NoOffset)),
        ] {
            assert_eq!(commit_failure(&nothing, &offsets()), None);
        }
    }

    /// The commit callback logs a refused commit once while the reason
    /// lasts, and again when it changes.
    #[test]
    fn refused_commits_are_logged_once_per_reason() {
        #[derive(Clone, Default)]
        struct Lines(Arc<Mutex<Vec<u8>>>);
        impl std::io::Write for Lines {
            fn write(&mut self, buf: &[u8]) -> std::io::Result<usize> {
                self.0.lock().unwrap().extend_from_slice(buf);
                Ok(buf.len())
            }
            fn flush(&mut self) -> std::io::Result<()> {
                Ok(())
            }
        }
        let lines = Lines::default();
        let writer = lines.clone();
        let subscriber = tracing_subscriber::fmt()
            .with_writer(move || writer.clone())
            .with_ansi(false)
            .finish();
        let context = LinkContext::new("k1", None, Arc::default());
        tracing::subscriber::with_default(subscriber, || {
            let refused = |code| Err(KafkaError::ConsumerCommit(code));
            context.commit_callback(refused(RDKafkaErrorCode::RebalanceInProgress), &offsets());
            context.commit_callback(refused(RDKafkaErrorCode::RebalanceInProgress), &offsets());
            context.commit_callback(Ok(()), &offsets());
            context.commit_callback(refused(RDKafkaErrorCode::UnknownMemberId), &offsets());
        });
        let log = String::from_utf8(lines.0.lock().unwrap().clone()).unwrap();
        let warnings: Vec<&str> = log.lines().filter(|l| l.contains("WARN")).collect();
        assert_eq!(warnings.len(), 2, "{log}");
        assert!(
            warnings[0].contains("k1") && warnings[0].contains("orders[0]@5"),
            "{log}"
        );
        assert!(warnings[1].contains("nknown member"), "{log}");
    }
}
