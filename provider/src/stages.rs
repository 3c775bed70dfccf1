//! Where an event's time goes, for the benchmark suite and for profiling a
//! deployment: decode, getting an instance (new or warm), the guest's own
//! run, encode, the broker's round trip, and settling with the broker.
//!
//! Off unless [`enable`]d (or `TRIGGER_MESSAGING_STAGE_TIMES` names a file
//! for `up` to write them to at exit); off, a stage costs one relaxed load.
//! On, each costs two clock reads and two relaxed adds: no allocation, no lock.

use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::Instant;

/// The stages of one event's way through the provider.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Stage {
    /// A link turning a broker message into an event (the binding's decode
    /// and the inbound checks).
    Decode,
    /// Creating an instance for a handler (a fresh one).
    Instantiate,
    /// Taking a warm instance for a handler.
    Reuse,
    /// The guest's `on-receive`, less the time it spent in `publish`.
    Call,
    /// Putting an event on a link's wire (the binding's encode).
    Encode,
    /// A publish on a link, its encode included, until the broker confirmed
    /// it (or, where it never confirms, it was written).
    Publish,
    /// Settling a handled event with the broker (ack).
    Settle,
}

const STAGES: [Stage; 7] = [
    Stage::Decode,
    Stage::Instantiate,
    Stage::Reuse,
    Stage::Call,
    Stage::Encode,
    Stage::Publish,
    Stage::Settle,
];

impl Stage {
    /// The stage's name in [`snapshot`]'s JSON.
    pub fn name(self) -> &'static str {
        match self {
            Stage::Decode => "decode",
            Stage::Instantiate => "instantiate",
            Stage::Reuse => "reuse",
            Stage::Call => "call",
            Stage::Encode => "encode",
            Stage::Publish => "publish",
            Stage::Settle => "settle",
        }
    }
}

static ENABLED: AtomicBool = AtomicBool::new(false);
static COUNTS: [AtomicU64; STAGES.len()] = [const { AtomicU64::new(0) }; STAGES.len()];
static NANOS: [AtomicU64; STAGES.len()] = [const { AtomicU64::new(0) }; STAGES.len()];

/// The environment variable that makes `up` (and `spin up`) time the stages
/// and write them, as JSON, to the file it names when the provider stops.
pub const STAGE_TIMES_ENV: &str = "TRIGGER_MESSAGING_STAGE_TIMES";

/// Starts timing the stages (process-wide).
pub fn enable() {
    ENABLED.store(true, Ordering::Relaxed);
}

/// Stops timing the stages.
pub fn disable() {
    ENABLED.store(false, Ordering::Relaxed);
}

/// Whether stages are timed.
pub fn enabled() -> bool {
    ENABLED.load(Ordering::Relaxed)
}

/// A point in time to measure a stage from, when timing is on.
#[inline]
pub fn start() -> Option<Instant> {
    enabled().then(Instant::now)
}

/// Adds the time since `since` (from [`start`]) to `stage`.
#[inline]
pub fn record(stage: Stage, since: Option<Instant>) {
    if let Some(since) = since {
        add(stage, since.elapsed().as_nanos() as u64);
    }
}

/// Runs `f`, timing it as `stage`.
#[inline]
pub fn timed<T>(stage: Stage, f: impl FnOnce() -> T) -> T {
    let since = start();
    let out = f();
    record(stage, since);
    out
}

/// Adds `nanos` to `stage` (for a stage measured as a difference).
#[inline]
pub fn add(stage: Stage, nanos: u64) {
    let i = stage as usize;
    COUNTS[i].fetch_add(1, Ordering::Relaxed);
    NANOS[i].fetch_add(nanos, Ordering::Relaxed);
}

/// The totals so far: for each stage, how many times it ran and for how
/// many nanoseconds in all, as a JSON object
/// (`{"decode": {"count": 1, "nanos": 2}, ...}`).
pub fn snapshot() -> serde_json::Value {
    let mut out = serde_json::Map::new();
    for stage in STAGES {
        let i = stage as usize;
        out.insert(
            stage.name().into(),
            serde_json::json!({
                "count": COUNTS[i].load(Ordering::Relaxed),
                "nanos": NANOS[i].load(Ordering::Relaxed),
            }),
        );
    }
    serde_json::Value::Object(out)
}

/// Sets every total back to zero (between benchmark runs in one process).
pub fn reset() {
    for i in 0..STAGES.len() {
        COUNTS[i].store(0, Ordering::Relaxed);
        NANOS[i].store(0, Ordering::Relaxed);
    }
}
