//! Sharing the CPU between handlers, so that a guest that runs long (a loop,
//! heavy work) cannot crowd out the short handlers of other components.
//!
//! Guests run on the async runtime's worker threads and yield at every epoch
//! tick (10 ms). A handler starts in the short lane; once it has seen
//! [`SHORT_LANE_TICKS`] ticks it moves to the long lane, where it may take a
//! tick only every [`LONG_LANE_SPACING`] (between all long handlers) while
//! short handlers run, or ran within [`SHORT_LANE_QUIET`]. Otherwise long
//! ones run freely, so a long handler alone is not slowed. A component whose
//! handlers lately ran long starts new ones in the long lane, until one of
//! them finishes within the short lane's ticks: a looping component then
//! takes about a tenth of one core from its neighbours.

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU32, AtomicU64, AtomicUsize, Ordering};
use std::time::Duration;
use tokio::time::Instant;

/// Epoch ticks a handler runs in the short lane.
pub const SHORT_LANE_TICKS: u32 = 3;

/// While short handlers run, long ones get one tick per this period between
/// them all.
pub const LONG_LANE_SPACING: Duration = Duration::from_millis(100);

/// How long after the last short handler the long lane still waits: short
/// handlers come and go between events of a busy app.
pub const SHORT_LANE_QUIET: Duration = Duration::from_millis(50);

/// How many long runs a component's history remembers.
const HISTORY: u32 = 8;

/// The lanes of one host.
#[derive(Debug)]
pub struct Lanes {
    /// Handlers in the short lane now.
    short: AtomicUsize,
    /// When a handler last entered or left the short lane, in milliseconds
    /// since `epoch`.
    last_short: AtomicU64,
    epoch: Instant,
    /// When the long lane may run its next tick while short handlers wait.
    next_long_tick: tokio::sync::Mutex<Instant>,
}

/// Whether a component's handlers have lately run long: raised by each run
/// that went to the long lane, lowered by each that did not.
#[derive(Debug, Default)]
pub struct History(AtomicU32);

impl Lanes {
    pub fn new() -> Arc<Lanes> {
        Arc::new(Lanes {
            short: AtomicUsize::new(0),
            last_short: AtomicU64::new(0),
            epoch: Instant::now(),
            next_long_tick: tokio::sync::Mutex::new(Instant::now()),
        })
    }

    /// Starts a run of a component with the given history: in the short
    /// lane, unless its handlers lately ran long.
    pub fn enter(self: &Arc<Self>, history: &Arc<History>) -> Arc<Run> {
        let short = history.0.load(Ordering::Relaxed) == 0;
        if short {
            self.short.fetch_add(1, Ordering::Relaxed);
            self.saw_short();
        }
        Arc::new(Run {
            lanes: self.clone(),
            history: history.clone(),
            in_short_lane: AtomicBool::new(short),
            ticks: AtomicU32::new(0),
        })
    }

    /// Waits for the long lane's turn: at once when no short handler ran
    /// lately.
    async fn long_turn(self: Arc<Self>) {
        let mut next = self.next_long_tick.lock().await;
        if self.short_lane_busy() {
            tokio::time::sleep_until(*next).await;
        }
        *next = Instant::now() + LONG_LANE_SPACING;
    }

    fn millis(&self) -> u64 {
        u64::try_from(self.epoch.elapsed().as_millis()).unwrap_or(u64::MAX)
    }

    fn saw_short(&self) {
        self.last_short.store(self.millis(), Ordering::Relaxed);
    }

    fn short_lane_busy(&self) -> bool {
        self.short.load(Ordering::Relaxed) > 0
            || self
                .millis()
                .saturating_sub(self.last_short.load(Ordering::Relaxed))
                < SHORT_LANE_QUIET.as_millis() as u64
    }
}

/// One handler's run through the lanes.
#[derive(Debug)]
pub struct Run {
    lanes: Arc<Lanes>,
    history: Arc<History>,
    in_short_lane: AtomicBool,
    ticks: AtomicU32,
}

impl Run {
    /// Whether the run started in the long lane.
    pub fn starts_long(&self) -> bool {
        !self.in_short_lane.load(Ordering::Relaxed)
    }

    /// Counts an epoch tick; past the short lane's ticks, the long lane's
    /// turn to wait for before going on.
    pub fn tick(&self) -> Option<impl Future<Output = ()> + Send + 'static> {
        let ticks = self.ticks.fetch_add(1, Ordering::Relaxed) + 1;
        if ticks < SHORT_LANE_TICKS && self.in_short_lane.load(Ordering::Relaxed) {
            return None;
        }
        self.leave_short_lane();
        Some(self.lanes.clone().long_turn())
    }

    /// Ends the run and updates the component's history.
    pub fn finish(&self) {
        self.leave_short_lane();
        let went_long = self.ticks.load(Ordering::Relaxed) >= SHORT_LANE_TICKS;
        let history = &self.history.0;
        let _ = history.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |h| {
            Some(if went_long {
                (h + 1).min(HISTORY)
            } else {
                h.saturating_sub(1)
            })
        });
    }

    fn leave_short_lane(&self) {
        if self.in_short_lane.swap(false, Ordering::Relaxed) {
            self.lanes.short.fetch_sub(1, Ordering::Relaxed);
            self.lanes.saw_short();
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[tokio::test(start_paused = true)]
    async fn the_long_lane_waits_only_while_short_handlers_run() {
        let lanes = Lanes::new();
        tokio::time::sleep(SHORT_LANE_QUIET).await;
        let start = Instant::now();
        // Alone, long turns come one after the other.
        for _ in 0..5 {
            lanes.clone().long_turn().await;
        }
        assert!(start.elapsed() < Duration::from_millis(1));
        // With a short handler running, they are spaced.
        let short = lanes.enter(&Arc::default());
        for _ in 0..3 {
            lanes.clone().long_turn().await;
        }
        assert!(start.elapsed() >= LONG_LANE_SPACING * 2);
        short.finish();
        short.finish();
        assert_eq!(lanes.short.load(Ordering::Relaxed), 0);
        // Just after a short handler left, they are still spaced.
        let before = Instant::now();
        lanes.clone().long_turn().await;
        lanes.clone().long_turn().await;
        assert!(before.elapsed() >= LONG_LANE_SPACING);
        tokio::time::sleep(SHORT_LANE_QUIET).await;
        let quiet = Instant::now();
        lanes.clone().long_turn().await;
        assert!(quiet.elapsed() < Duration::from_millis(1));
    }

    #[test]
    fn a_component_that_ran_long_starts_long_until_a_run_is_short() {
        let lanes = Lanes::new();
        let history = Arc::new(History::default());
        let run = lanes.enter(&history);
        assert_eq!(lanes.short.load(Ordering::Relaxed), 1);
        assert!(run.tick().is_none() && run.tick().is_none());
        assert!(
            run.tick().is_some(),
            "the third tick moves it to the long lane"
        );
        assert_eq!(lanes.short.load(Ordering::Relaxed), 0);
        run.finish();
        assert_eq!(history.0.load(Ordering::Relaxed), 1);
        // The next run starts long: its first tick already waits its turn.
        let next = lanes.enter(&history);
        assert_eq!(lanes.short.load(Ordering::Relaxed), 0);
        assert!(next.tick().is_some());
        // It finished within the short lane's ticks: the history goes down,
        // and the run after it starts short again.
        next.finish();
        assert_eq!(history.0.load(Ordering::Relaxed), 0);
        assert!(lanes.enter(&history).in_short_lane.load(Ordering::Relaxed));
    }
}
